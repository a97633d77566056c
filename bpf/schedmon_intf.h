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

/* Switch times are read once per jiffy per CPU: at most one tick (10 ms
 * at HZ=100, the slowest) before the switch they stand for. */
#define SM_TICK_LAG_NS 10000000ULL

/*
 * One watched leaf cgroup on one CPU: the value of the per-CPU array
 * `leaf_cpu`, indexed by the leaf's slot (the leaf cgroup's `watched`
 * storage names its slot). Per CPU, so that two CPUs running tasks of one
 * leaf never write the same cache line; the daemon sums the CPUs' values
 * whose `generation` is the slot's current one (a reused slot's stale
 * counters are reset by the first program that touches them).
 */
struct schedmon_leaf {
	u64 generation;		/* slot_gen[slot] when these counters began */
	u64 runtime_ns;		/* on-CPU time (sum_exec_runtime) of runs that ended
				 * on this CPU */
	u64 cur_start;		/* start of the leaf's run going on on this CPU
				 * (its tasks in a row), 0: none */
	u64 runtime_at_start;	/* runtime_ns when that run began */
	u64 last_run_ns;	/* last switch-in or switch-out of one of its tasks
				 * (to a tick: SM_TICK_LAG_NS) */
	u64 switches;		/* runs begun (a sequence number for userspace) */
	u64 wakeups;		/* its tasks' sleeps that began on this CPU (each
				 * ends in one wake-up) */
};

/* The value of `watched` (cgroup local storage) on a watched leaf. */
struct schedmon_watch {
	u32 slot;
	u32 pad;
	u64 generation;		/* slot_gen[slot] when the watch was set */
};

/* Per CPU: the last cgroup looked up in `watched` and what it
 * said, valid while `watch_epoch` is unchanged. */
struct schedmon_lookup {
	u64 cgroup_id;
	u64 epoch;
	u64 generation;
	u32 slot;
	u32 watched;
};

/* Per CPU: the run going on (the task that was switched in last), if it
 * is in a watched leaf. The next switch on that CPU ends it. */
struct schedmon_cur {
	u64 start_sum;		/* the task's sum_exec_runtime at the switch-in */
	u64 generation;
	u32 slot;
	u32 on;
	u64 tick_jiffies;	/* the jiffy tick_ns was read in */
	u64 tick_ns;		/* bpf_ktime_get_ns() at this CPU's first switch
				 * in that jiffy */
};

/* Ring-buffer record: the first switch-in in a leaf marked idle. */
struct schedmon_edge {
	u32 slot;
	u32 pad;
	u64 generation;
	u64 ts_ns;		/* bpf_ktime_get_ns() (CLOCK_MONOTONIC) */
};

#endif /* __SCHEDMON_INTF_H */
