/* SPDX-License-Identifier: GPL-2.0 */
/*
 * schedmon: the kernel half of agentcgd's activity monitor (observe only).
 *
 * `watched` maps the cgroup v2 id of each watched leaf cgroup to its slot.
 * On every context switch on a CPU the run that ends (prev) is the one the
 * previous switch on that CPU began, so a per-CPU record (`cur`) says
 * whether it was in a watched leaf and which: no per-task state. When the
 * incoming task (next) is in a watched leaf, a run begins there. Counters
 * are per CPU and per slot (`leaf_cpu`): no atomics across CPUs, no cache
 * line shared by two CPUs. A task of an unwatched cgroup costs one per-CPU
 * array lookup (prev) and one hash lookup (next).
 *
 * Nothing is sent per switch. The daemon reads the aggregates when it
 * wants them; the only records are idle -> active edges: when the daemon
 * declares a leaf idle it sets `slot_idle[slot]`, and the first switch-in
 * there clears it (compare-and-swap, so one record per edge) and sends a
 * schedmon_edge, so the daemon sees an agent wake up without polling.
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
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SM_MAX_LEAVES);
	__type(key, u32);
	__type(value, struct schedmon_leaf);
} leaf_cpu SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct schedmon_cur);
} cur SEC(".maps");

/* At most one record per watched leaf is outstanding (the daemon re-arms
 * `slot_idle` only after it read the record), so this cannot fill up. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 << 10);
} edges SEC(".maps");

/* Written by userspace (mmapped .bss), read here. */
u64 slot_gen[SM_MAX_LEAVES];	/* bumped each time a slot is reused */
u32 slot_idle[SM_MAX_LEAVES];	/* armed: the next switch-in sends an edge */
u32 nr_watched;			/* 0 turns both programs into a no-op */

u64 nr_edges;
u64 nr_edge_lost;		/* ring buffer full (should stay 0) */

static __always_inline u64 cgroup_id_of(struct task_struct *p)
{
	/* BTF pointer walk (CO-RE relocated, no helper call per hop). */
	return p->cgroups->dfl_cgrp->kn->id;
}

static __always_inline s32 slot_of(struct task_struct *p)
{
	u64 id = cgroup_id_of(p);
	u32 *s = bpf_map_lookup_elem(&watched, &id);

	return s ? (s32)(*s & (SM_MAX_LEAVES - 1)) : -1;
}

/* This CPU's counters of `slot`, reset if they are a reused slot's. */
static __always_inline struct schedmon_leaf *counters(u32 slot, u64 gen)
{
	struct schedmon_leaf *l = bpf_map_lookup_elem(&leaf_cpu, &slot);

	if (l && l->generation != gen) {
		__builtin_memset(l, 0, sizeof(*l));
		l->generation = gen;
	}
	return l;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(schedmon_switch, bool preempt, struct task_struct *prev,
	     struct task_struct *next, unsigned int prev_state)
{
	struct schedmon_leaf *l;
	struct schedmon_cur *c;
	u32 zero = 0, slot;
	u64 now = 0, gen;
	s32 s;

	if (!nr_watched)
		return 0;
	c = bpf_map_lookup_elem(&cur, &zero);
	if (!c)
		return 0;

	/* The run of prev, begun by the previous switch on this CPU, ends.
	 * Its length is the scheduler's own account (sum_exec_runtime, brought
	 * up to date when prev was put), the one cpu.stat adds up too. */
	if (c->on) {
		c->on = 0;
		now = bpf_ktime_get_ns();
		l = bpf_map_lookup_elem(&leaf_cpu, &c->slot);
		if (l && l->generation == c->generation) {
			l->runtime_ns += prev->se.sum_exec_runtime - c->start_sum;
			l->cur_start = 0;
			l->last_run_ns = now;
		}
	}

	/* The run of next begins. */
	s = slot_of(next);
	if (s < 0)
		return 0;
	slot = s;
	gen = slot_gen[slot & (SM_MAX_LEAVES - 1)];
	l = counters(slot, gen);
	if (!l)
		return 0;
	if (!now)
		now = bpf_ktime_get_ns();
	c->start_sum = next->se.sum_exec_runtime;
	c->generation = gen;
	c->slot = slot;
	c->on = 1;
	l->cur_start = now;
	l->last_run_ns = now;
	/* A full barrier (on this CPU's own line): userspace arms `slot_idle`
	 * and then sums `switches`, so either it sees this switch-in or this
	 * program sees the flag. */
	__sync_fetch_and_add(&l->switches, 1);

	if (slot_idle[slot & (SM_MAX_LEAVES - 1)] &&
	    __sync_val_compare_and_swap(&slot_idle[slot & (SM_MAX_LEAVES - 1)], 1, 0) == 1) {
		struct schedmon_edge *e = bpf_ringbuf_reserve(&edges, sizeof(*e), 0);

		if (!e) {
			__sync_fetch_and_add(&nr_edge_lost, 1);
			return 0;
		}
		e->slot = slot;
		e->pad = 0;
		e->generation = gen;
		e->ts_ns = now;
		__sync_fetch_and_add(&nr_edges, 1);
		bpf_ringbuf_submit(e, 0);
	}
	return 0;
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(schedmon_wakeup, struct task_struct *p)
{
	struct schedmon_leaf *l;
	s32 s;

	if (!nr_watched)
		return 0;
	s = slot_of(p);
	if (s < 0)
		return 0;
	l = counters(s, slot_gen[s & (SM_MAX_LEAVES - 1)]);
	if (l)
		l->wakeups++;
	return 0;
}
