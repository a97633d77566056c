/* SPDX-License-Identifier: GPL-2.0 */
/*
 * schedmon: the kernel half of agentcgd's activity monitor (observe only).
 *
 * `watched` maps the cgroup v2 id of each watched leaf cgroup to its slot of
 * `leaves[]` (in the .bss, mmapped by the daemon). On every context switch
 * the program charges the run that ends (prev) to the slot it started in
 * (task local storage remembers it, so a task moved while running is still
 * accounted where its run began) and, when the incoming task (next) is in a
 * watched leaf, starts a run there. A task of an unwatched cgroup costs one
 * hash lookup (next) and one task-storage lookup (prev) that finds nothing.
 *
 * Nothing is sent per switch. The daemon reads the aggregates in place;
 * the only records are idle -> active edges: when the daemon declares a
 * leaf idle it sets `idle` in its slot, and the first switch-in there
 * clears it (compare-and-swap, so one record per edge) and sends a
 * schedmon_edge. The daemon needs no polling to see an agent wake up.
 *
 * Nothing here writes a cgroup, a task or a scheduling parameter.
 */
#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "schedmon_intf.h"

char _license[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SM_MAX_LEAVES);
	__type(key, u64);	/* cgroup id */
	__type(value, u32);	/* slot */
} watched SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct schedmon_task);
} task_run SEC(".maps");

/* At most one record per watched leaf is outstanding (the daemon re-arms
 * `idle` only after it read the record), so this cannot fill up. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 << 10);
} edges SEC(".maps");

struct schedmon_leaf leaves[SM_MAX_LEAVES];

u32 nr_watched;		/* userspace: 0 turns both programs into a no-op */
u64 nr_edge_lost;	/* ring buffer full (should stay 0) */
u64 nr_no_storage;	/* task storage could not be had: a run not accounted */

static __always_inline u64 cgroup_id_of(struct task_struct *p)
{
	/* BTF pointer walk (CO-RE relocated, no helper call per hop). */
	return p->cgroups->dfl_cgrp->kn->id;
}

static __always_inline struct schedmon_leaf *leaf_of(struct task_struct *p, u32 *slot)
{
	u64 id = cgroup_id_of(p);
	u32 *s = bpf_map_lookup_elem(&watched, &id);

	if (!s)
		return NULL;
	*slot = *s & (SM_MAX_LEAVES - 1);
	return &leaves[*slot];
}

SEC("tp_btf/sched_switch")
int BPF_PROG(schedmon_switch, bool preempt, struct task_struct *prev,
	     struct task_struct *next, unsigned int prev_state)
{
	struct schedmon_task *t;
	struct schedmon_leaf *l;
	u64 now = 0;
	u32 slot;

	if (!nr_watched)
		return 0;

	/* The run of prev ends. */
	t = bpf_task_storage_get(&task_run, prev, NULL, 0);
	if (t && t->on) {
		t->on = 0;
		now = bpf_ktime_get_ns();
		l = &leaves[t->slot & (SM_MAX_LEAVES - 1)];
		if (l->generation == t->generation) {
			/* runtime first, then running, then the start sum: a reader
			 * taking running then run_start_sum only ever undercounts. */
			__sync_fetch_and_add(&l->runtime_ns, now - t->start_ns);
			__sync_fetch_and_add(&l->running, -1);
			__sync_fetch_and_sub(&l->run_start_sum, t->start_ns);
			l->last_run_ns = now;
		}
	}

	/* The run of next begins. */
	l = leaf_of(next, &slot);
	if (!l)
		return 0;
	t = bpf_task_storage_get(&task_run, next, NULL, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!t) {
		__sync_fetch_and_add(&nr_no_storage, 1);
		return 0;
	}
	if (!now)
		now = bpf_ktime_get_ns();
	t->start_ns = now;
	t->generation = l->generation;
	t->slot = slot;
	t->on = 1;
	__sync_fetch_and_add(&l->run_start_sum, now);
	__sync_fetch_and_add(&l->running, 1);
	/* A full barrier: userspace sets `idle` and then reads `switches`, so
	 * either it sees this switch-in or this program sees `idle`. */
	__sync_fetch_and_add(&l->switches, 1);
	l->last_run_ns = now;

	if (l->idle && __sync_val_compare_and_swap(&l->idle, 1, 0) == 1) {
		struct schedmon_edge *e = bpf_ringbuf_reserve(&edges, sizeof(*e), 0);

		if (!e) {
			__sync_fetch_and_add(&nr_edge_lost, 1);
			return 0;
		}
		e->slot = slot;
		e->pad = 0;
		e->generation = t->generation;
		e->ts_ns = now;
		__sync_fetch_and_add(&l->edges, 1);
		bpf_ringbuf_submit(e, 0);
	}
	return 0;
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(schedmon_wakeup, struct task_struct *p)
{
	struct schedmon_leaf *l;
	u32 slot;

	if (!nr_watched)
		return 0;
	l = leaf_of(p, &slot);
	if (l)
		__sync_fetch_and_add(&l->wakeups, 1);
	return 0;
}
