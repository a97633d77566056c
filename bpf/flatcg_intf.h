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
typedef long long s64;
#endif

enum agcg_consts {
	/* hierarchical weight of a cgroup that owns the whole machine */
	AGCG_HWEIGHT_ONE = 1 << 16,
	/* per-CPU dispatch queues: AGCG_PCPU_DSQ_BASE | cpu */
	AGCG_PCPU_DSQ_SHIFT = 60,
};

/*
 * Global counters, a per-CPU array indexed by these. The Rust side names
 * them in scheduler/src/stats.rs (one declaration each).
 */
enum agcg_gstat {
	AGCG_GS_LOCAL,		/* woke up on an idle CPU: straight to its local DSQ */
	AGCG_GS_CGROUP,		/* queued on its cgroup's DSQ (the weighted path) */
	AGCG_GS_SUBSET,		/* ... the same, allowed on a subset of the online CPUs */
	AGCG_GS_KTHREAD,	/* per-CPU kernel thread: its CPU's local DSQ */
	AGCG_GS_PCPU,		/* single-CPU task: its CPU's per-CPU DSQ */
	AGCG_GS_ACT,		/* a cgroup became active */
	AGCG_GS_DEACT,		/* a cgroup became idle */
	AGCG_GS_HWT_UPDATE,	/* hierarchical weights recomputed */
	AGCG_GS_PICK,		/* dispatch served the lowest-cvtime cgroup of the tree */
	AGCG_GS_PICK_PCPU,	/* ... served the per-CPU queue instead */
	AGCG_GS_PICK_PREV,	/* ... kept the previous task running instead */
	AGCG_GS_RETIRE,		/* a cgroup's queue ran empty: its node left the tree */
	AGCG_GS_SKIP,		/* a cgroup had queued tasks, none for this CPU */
	AGCG_GS_CREDIT_CAP,	/* a cgroup's credit against the clock was capped */
	AGCG_GS_KICK,		/* idle CPU kicked after a queueing */
	AGCG_GS_PREEMPT,	/* CPU preempted for a waking task behind in cvtime or vtime */
	AGCG_GS_PCPU_AGED,	/* single-CPU task served after waiting starve_slices slices */
	AGCG_GS_SUBSET_AGED,	/* task on a subset of the CPUs: the same, from its cgroup's DSQ */
	AGCG_GS_PICK_BUDGET,	/* anomaly: dispatch ran out of its pick budget */
	AGCG_GS_SKIP_BUDGET,	/* anomaly: dispatch had no room to pass over one more cgroup */
	AGCG_NR_GSTATS,
};

/*
 * A cgroup's context: the scheduler's state and its statistics, in the
 * array cgrp_ctxs at the slot ops.cgroup_init() claimed (free: cgid 0).
 * The loader reads the slots below slot_hw in one batch (scheduler/src/bpf.rs).
 */
struct agcg_cgrp_ctx {
	u64 cgid;		/* owner's cgroup id (= inode number), 0 for a free slot */
	u32 parent;		/* slot of the parent (the root: its own) */
	u32 level;		/* depth below the root cgroup */
	u32 weight;		/* cpu.weight as last seen by the scheduler */
	u32 nr_active;		/* active children, or 1 for an active leaf */
	u32 nr_runnable;	/* runnable tasks directly in this cgroup */
	s64 nr_queued;		/* tasks on its DSQ or being inserted */
	u64 queued;		/* cgid while its node is on the tree or held by a CPU, else 0 */
	u64 child_weight_sum;	/* sum of the weights of active children */
	u64 hweight;		/* hierarchical weight, AGCG_HWEIGHT_ONE = 1.0 */
	u64 hweight_gen;
	u64 cvtime;		/* cgroup vtime: runtime / hweight */
	s64 reserved;		/* part of cvtime charged ahead, not settled yet */
	u64 tvtime_now;		/* task vtime clock inside the cgroup */
	u64 cpu_time_ns;	/* time its tasks ran under this scheduler */
	u64 dispatches;		/* times one of its tasks was put on a CPU */
	u64 picks;		/* times a CPU picked it by cgroup vtime */
};

#endif /* __AGCG_FLATCG_INTF_H */
