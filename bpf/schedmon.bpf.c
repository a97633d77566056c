/* SPDX-License-Identifier: GPL-2.0 */
/*
 * schedmon: the kernel half of agentcgd's activity monitor (observe only).
 *
 * One program, on tp_btf/sched_switch; the daemon attaches it only while
 * it watches some leaf cgroup, so a host without agents runs nothing.
 *
 * Which cgroups: `watched` is cgroup local storage. A watched leaf carries
 * its slot (set by the daemon through a cgroup fd); every other cgroup
 * carries nothing. Each CPU also remembers the last cgroup it looked up,
 * so a stream of switches in one cgroup costs three loads and a compare.
 *
 * What: on every switch on a CPU, the run that ends (prev) is the one the
 * previous switch on that CPU began, so a per-CPU record (`cur`) says
 * whether it was in a watched leaf and which: no per-task state. When the
 * incoming task (next) is in a watched leaf, a run of that leaf begins on
 * the CPU, unless the leaf had the CPU already: then its run goes on, and
 * an agent's threads switching among themselves cost no clock read and no
 * counter but their runtime. Per leaf and CPU (`leaf_cpu`, no cache line
 * shared by two CPUs): on-CPU time (the scheduler's own sum_exec_runtime,
 * what cpu.stat adds up), the last run, the run going on, runs begun, and
 * wake-ups, counted when one of its tasks goes to sleep (each sleep ends
 * in exactly one wake-up, so no second hook on sched_wakeup is needed; it
 * would double the cost of the densest workloads). Times are read once per
 * jiffy per CPU (tick_ns).
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

/* TASK_INTERRUPTIBLE | TASK_UNINTERRUPTIBLE (include/linux/sched.h): the
 * states a task leaves only by a wake-up (stopped, traced or dead tasks
 * are not counted). */
#define TASK_SLEEPING 0x3

struct {
	__uint(type, BPF_MAP_TYPE_CGRP_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);	/* a cgroup fd (from userspace) */
	__type(value, struct schedmon_watch);
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

/* Per CPU: the last cgroup looked up in `watched`. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct schedmon_lookup);
} lookup SEC(".maps");

/* Written by userspace (mmapped .bss), read here. */
u64 watch_epoch;		/* bumped after each watch set or deleted */
u64 slot_gen[SM_MAX_LEAVES];	/* bumped each time a slot is reused */
u32 slot_idle[SM_MAX_LEAVES];	/* armed: the next switch-in sends an edge */

u64 nr_edges;
u64 nr_edge_lost;		/* ring buffer full (should stay 0) */

/*
 * The watch on p's cgroup: its slot and generation, false if none. Each
 * CPU remembers the last cgroup it looked up (in `lookup`), so a stream of switches in one cgroup (a watched agent's
 * ping-pong, or any busy unwatched task) costs three loads instead of a
 * storage lookup; `watch_epoch`, bumped by the daemon after every watch it
 * sets or deletes, drops every CPU's entry. A watch whose generation is
 * not its slot's current one is a leftover (the daemon deletes a watch
 * before it frees the slot) and is ignored.
 */
static __always_inline bool watch_of(struct task_struct *p,
				     u32 *slot, u64 *gen)
{
	u32 zero = 0;
	struct schedmon_lookup *c = bpf_map_lookup_elem(&lookup, &zero);
	struct cgroup *cgrp = p->cgroups->dfl_cgrp;
	u64 id = cgrp->kn->id, epoch = watch_epoch;
	struct schedmon_watch *w;

	if (!c)
		return false;
	if (c->cgroup_id != id || c->epoch != epoch) {
		/* dfl_cgrp is RCU-protected; a tp_btf program runs under
		 * rcu_read_lock. */
		w = bpf_cgrp_storage_get(&watched, cgrp, 0, 0);
		c->cgroup_id = id;
		c->epoch = epoch;
		c->watched = !!w;
		if (w) {
			c->slot = w->slot & (SM_MAX_LEAVES - 1);
			c->generation = w->generation;
		}
	}
	if (!c->watched)
		return false;
	*slot = c->slot & (SM_MAX_LEAVES - 1);
	*gen = c->generation;
	return *gen == slot_gen[*slot];
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

/*
 * The time of this switch, to a tick: a clock read costs more than the
 * rest of a watched switch on a VM, so each CPU reads it once per jiffy
 * and reuses it (at most SM_TICK_LAG_NS early; the daemon allows for it).
 * An edge record, rare, reads the clock itself.
 */
static __always_inline u64 tick_ns(struct schedmon_cur *c)
{
	u64 j = bpf_jiffies64();

	if (j != c->tick_jiffies) {
		c->tick_jiffies = j;
		c->tick_ns = bpf_ktime_get_ns();
	}
	return c->tick_ns;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(schedmon_switch, bool preempt, struct task_struct *prev,
	     struct task_struct *next, unsigned int prev_state)
{
	struct schedmon_leaf *l;
	struct schedmon_cur *c;
	u32 zero = 0, slot = 0;
	u64 now, gen = 0;
	bool watched;

	c = bpf_map_lookup_elem(&cur, &zero);
	if (!c)
		return 0;
	/* The idle task (pid 0) is never watched; skipping it keeps the
	 * per-CPU memo on the cgroup that runs between idle periods. */
	watched = next->pid && watch_of(next, &slot, &gen);

	/* The run of prev, begun by the previous switch on this CPU, ends.
	 * Its length is the scheduler's own account (sum_exec_runtime, brought
	 * up to date when prev was put), the one cpu.stat adds up too. */
	if (c->on) {
		l = bpf_map_lookup_elem(&leaf_cpu, &c->slot);
		if (l && l->generation == c->generation) {
			l->runtime_ns += prev->se.sum_exec_runtime - c->start_sum;
			/* prev goes to sleep: one wake-up will end it. */
			if (!preempt && (prev_state & TASK_SLEEPING))
				l->wakeups++;
			/* next is of the same leaf: the leaf keeps this CPU and
			 * its run goes on (no clock, no counters to restart). */
			if (watched && slot == c->slot && gen == c->generation) {
				c->start_sum = next->se.sum_exec_runtime;
				return 0;
			}
			l->cur_start = 0;
			l->last_run_ns = tick_ns(c);
		}
		c->on = 0;
	}

	/* A run of next's leaf begins on this CPU. */
	if (!watched)
		return 0;
	l = counters(slot, gen);
	if (!l)
		return 0;
	now = tick_ns(c);
	c->start_sum = next->se.sum_exec_runtime;
	c->generation = gen;
	c->slot = slot;
	c->on = 1;
	l->cur_start = now;
	l->runtime_at_start = l->runtime_ns;
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
		e->ts_ns = bpf_ktime_get_ns();
		__sync_fetch_and_add(&nr_edges, 1);
		bpf_ringbuf_submit(e, 0);
	}
	return 0;
}
