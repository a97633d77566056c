/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Shared between bpf/schedmon.bpf.c and the activity crate (through
 * bindgen): the per-leaf aggregates in the mmapped .bss and the edge
 * records carried over the ring buffer.
 */
#ifndef __SCHEDMON_INTF_H
#define __SCHEDMON_INTF_H

#ifndef __VMLINUX_H__
typedef unsigned int u32;
typedef long long s64;
typedef unsigned long long u64;
#endif

enum schedmon_consts {
	SM_MAX_LEAVES = 4096,	/* leaf cgroups watched at once (power of two) */
};

/*
 * One watched leaf cgroup on one CPU: the value of the per-CPU array
 * `leaf_cpu`, indexed by the leaf's slot (the `watched` hash map sends a
 * cgroup id to its slot). Per CPU, so that two CPUs running tasks of one
 * leaf never write the same cache line; the daemon sums the CPUs' values
 * whose `generation` is the slot's current one (a reused slot's stale
 * counters are reset by the first program that touches them).
 */
struct schedmon_leaf {
	u64 generation;		/* slot_gen[slot] when these counters began */
	u64 runtime_ns;		/* on-CPU time (sum_exec_runtime) of runs that ended
				 * on this CPU */
	u64 cur_start;		/* start of the run going on on this CPU, 0: none */
	u64 last_run_ns;	/* last switch-in or switch-out of one of its tasks */
	u64 switches;		/* switch-ins (a sequence number for userspace) */
	u64 wakeups;		/* sched_wakeup of its tasks (on the waker's CPU) */
};

/* Per CPU: the run going on (the task that was switched in last), if it
 * is in a watched leaf. The next switch on that CPU ends it. */
struct schedmon_cur {
	u64 start_sum;		/* the task's sum_exec_runtime at the switch-in */
	u64 generation;
	u32 slot;
	u32 on;
};

/* Ring-buffer record: the first switch-in in a leaf marked idle. */
struct schedmon_edge {
	u32 slot;
	u32 pad;
	u64 generation;
	u64 ts_ns;		/* bpf_ktime_get_ns() (CLOCK_MONOTONIC) */
};

#endif /* __SCHEDMON_INTF_H */
