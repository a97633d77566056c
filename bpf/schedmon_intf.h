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
 * One watched leaf cgroup, a slot of `leaves[]` in the .bss, which the
 * daemon reads and writes in place (mmap). The `watched` hash map sends a
 * cgroup id to its slot. Counters are updated with atomics: tasks of one
 * leaf run on several CPUs at once. 128 bytes, so that two leaves never
 * share a cache line.
 */
struct schedmon_leaf {
	u64 generation;		/* userspace: bumped each time the slot is reused */
	u64 runtime_ns;		/* on-CPU time of runs that ended */
	u64 run_start_sum;	/* sum of the switch-in times of the runs going on */
	s64 running;		/* tasks of the leaf on a CPU now (exact) */
	u64 last_run_ns;	/* last switch-in or switch-out of one of its tasks */
	u64 switches;		/* switch-ins (a sequence number for userspace) */
	u64 wakeups;		/* sched_wakeup of its tasks */
	u32 idle;		/* userspace sets it on idle; the first switch-in
				 * clears it and sends one edge record */
	u32 pad;
	u64 edges;		/* edge records sent */
	u64 reserved[6];
};

/* Per task: the run going on, if any (task local storage). */
struct schedmon_task {
	u64 start_ns;		/* switch-in time */
	u64 generation;		/* the slot's gen at the switch-in */
	u32 slot;
	u32 on;			/* a run is going on */
};

/* Ring-buffer record: the first switch-in in a leaf marked idle. */
struct schedmon_edge {
	u32 slot;
	u32 pad;
	u64 generation;
	u64 ts_ns;		/* bpf_ktime_get_ns() (CLOCK_MONOTONIC) */
};

#endif /* __SCHEDMON_INTF_H */
