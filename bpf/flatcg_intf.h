/* SPDX-License-Identifier: GPL-2.0 */
/*
 * flatcg_intf.h: what agentcgd's flattened-cgroup sched_ext scheduler
 * (bpf/flatcg.bpf.c) shares with its Rust loader (scheduler/src/bpf.rs).
 */
#ifndef __AGCG_FLATCG_INTF_H
#define __AGCG_FLATCG_INTF_H

#ifndef __VMLINUX_H__
typedef unsigned int u32;
typedef unsigned long long u64;
#endif

enum agcg_consts {
	/* hierarchical weight of a cgroup that owns the whole machine */
	AGCG_HWEIGHT_ONE = 1 << 16,
	/* dispatch queue for tasks with a restricted (not single-CPU) cpumask */
	AGCG_FALLBACK_DSQ_SHIFT = 60,
};

/* Global counters, a per-CPU array indexed by these. */
enum agcg_gstat {
	AGCG_GS_LOCAL,		/* woke up on an idle CPU: straight to its local DSQ */
	AGCG_GS_CGROUP,		/* queued on its cgroup's DSQ (the weighted path) */
	AGCG_GS_PINNED,		/* per-CPU kernel thread: straight to its CPU */
	AGCG_GS_FALLBACK,	/* restricted cpumask (taskset) or no cgroup context */
	AGCG_GS_ACT,		/* a cgroup became active */
	AGCG_GS_DEACT,		/* a cgroup became idle */
	AGCG_GS_HWT_UPDATE,	/* hierarchical weights recomputed */
	AGCG_GS_PICK,		/* a CPU picked the cgroup with the lowest vtime */
	AGCG_GS_PICK_EMPTY,	/* ... which had nothing left */
	AGCG_GS_PICK_GONE,	/* ... which had been removed */
	AGCG_GS_KEEP,		/* a CPU stayed with its cgroup inside the slice */
	AGCG_GS_EXPIRE,		/* a CPU's cgroup slice expired */
	AGCG_GS_BUDGET_CAP,	/* idle credit capped on requeue */
	AGCG_GS_KICK,		/* idle CPU kicked after a queueing */
	AGCG_GS_GUARD_KICK,	/* idle CPU kicked by the guard timer (work queued) */
	AGCG_GS_AGED,		/* fallback task served early: waited over 2 slices */
	AGCG_GS_REQUEUE,	/* cgroup with queued tasks found off the tree, requeued */
	AGCG_GS_RESCUE,		/* cgroup task served out of turn after waiting 2 s */
	AGCG_GS_LEAD_CAP,	/* a cgroup's cvtime lead (debt) capped at settle */
	AGCG_NR_GSTATS,
};

/* Per-cgroup statistics, a hash keyed by cgroup id (= inode number). */
struct agcg_cgrp_stats {
	u64 cpu_time_ns;	/* time its tasks ran under this scheduler */
	u64 dispatches;		/* times one of its tasks was put on a CPU */
	u64 picks;		/* times a CPU picked it by cgroup vtime */
	u32 weight;		/* cpu.weight as last seen by the scheduler */
	u32 hweight;		/* hierarchical weight, AGCG_HWEIGHT_ONE = 1.0 */
	u32 nr_active;		/* active children (or own tasks for a leaf) */
	u32 level;		/* depth below the root cgroup */
};

#endif /* __AGCG_FLATCG_INTF_H */
