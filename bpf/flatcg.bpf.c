/* SPDX-License-Identifier: GPL-2.0 */
/*
 * agentcg: agentcgd's flattened-cgroup sched_ext scheduler.
 *
 * The cgroup hierarchy is flattened into one level: every cgroup that has
 * runnable tasks competes directly with every other one, with its
 * hierarchical weight (hweight) as its share. The hweight is the product of
 * the cgroup's share at each level of the tree, where a share counts only
 * the siblings that are active (have runnable tasks somewhere below them):
 *
 *   root + t (100) + a (200) + x (100)     x: 1 * 200/300 * 100/400 = 1/6
 *                  |         \ y (300)     y: 1 * 200/300 * 300/400 = 1/2
 *                  \ b (100)               b: 1 * 100/300           = 1/3
 *
 * Weights and activity change rarely compared to scheduling events, so the
 * hweights are cached and recomputed lazily: any change bumps a generation
 * counter and a cgroup recomputes its hweight (walking up its ancestors) the
 * next time it is picked or becomes active.
 *
 * Which cgroup runs next is decided by cgroup virtual time: the active
 * cgroups sit in an rbtree ordered by cvtime. A CPU that needs work takes
 * the lowest (after folding in its pending charges), moves a task from that
 * cgroup's DSQ to its local DSQ and keeps to that cgroup for one slice.
 * Every task's actual runtime is charged to its cgroup as runtime / hweight
 * (ops.stopping), whichever path the task took; on top, a pick reserves one
 * slice / hweight up front, refunded when the CPU leaves the cgroup, so that
 * CPUs picking at the same time spread over cgroups and a herd of low-weight
 * cgroups cannot all start at once. A cgroup that slept keeps at most a
 * bounded credit (half the CPUs for one slice) so that it cannot burst past
 * its share when it wakes up. Inside a cgroup, tasks are ordered by their
 * own virtual time (runtime scaled by the task's weight), with the idle
 * credit capped at one slice.
 *
 * Tasks that cannot go through the cgroup queues keep making progress:
 * - woken onto an idle CPU: straight into that CPU's local DSQ;
 * - per-CPU kernel threads: their CPU's local DSQ;
 * - user tasks with a restricted cpumask (taskset): a shared fallback DSQ
 *   that a CPU serves on every other pick, so that neither side starves;
 * - exiting and migration-disabled tasks are left to the kernel (no
 *   SCX_OPS_ENQ_EXITING / SCX_OPS_ENQ_MIGRATION_DISABLED), which runs them
 *   on their local DSQ.
 * When nothing is dispatched, the kernel keeps running the previous task;
 * dispatch() treats it as a task of its cgroup so that the choice of cgroup
 * stays by cvtime.
 *
 * Kernel 7.2+ API: weights arrive through ops.cgroup_init/cgroup_set_weight
 * without SCX_OPS_HAS_CGROUP_WEIGHT; task vtime is written with
 * scx_bpf_task_set_dsq_vtime() (through the compat wrapper, which falls back
 * to a direct write on older kernels) and slices are given at insertion;
 * nothing writes p->scx directly.
 */
#include <scx/common.bpf.h>
#include "flatcg_intf.h"

char _license[] SEC("license") = "GPL";

#define FALLBACK_DSQ	(1ULL << AGCG_FALLBACK_DSQ_SHIFT)
#define MAX_PICK_TRIES	1024
/* a cgroup may lead the cgroup clock by this many slices per CPU / hweight */
#define MAX_LEAD_SLICES	8
/* period of the watchdog timer that kicks idle CPUs while work is queued */
#define GUARD_PERIOD_NS	(10ULL * 1000 * 1000)
/* a queued task that waited this long is served out of turn (watchdog: 30 s) */
#define STARVE_NS	(2ULL * 1000 * 1000 * 1000)

const volatile u32 nr_cpus = 1;			/* set by the loader */
const volatile u64 slice_ns = 20ULL * 1000 * 1000;	/* set by the loader */

UEI_DEFINE(uei);

/* cvtime of the last cgroup picked: the cgroup clock */
u64 cvtime_now;
/* bumped on weight or activity changes; expires the cached hweights */
u64 hweight_gen = 1;
/* tasks on (or on their way to) any cgroup DSQ */
s64 nr_cg_queued;
/* guard timer runs, for the sweep's period */
u64 guard_runs;
/* a cgroup whose first task waited over STARVE_NS: served by the next dispatch */
u64 rescue_cgid;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, u32);
	__type(value, u64);
	__uint(max_entries, AGCG_NR_GSTATS);
} gstats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, u64);
	__type(value, struct agcg_cgrp_stats);
	__uint(max_entries, 16384);
} cgrp_stats SEC(".maps");

struct cpu_ctx {
	u64 cur_cgid;	/* cgroup this CPU is serving, 0 for none */
	u64 cur_at;	/* when it started serving it */
	u64 reserved;	/* cvtime reserved on that cgroup at the pick */
	bool fallback_turn;	/* alternate the fallback DSQ with the cgroups */
	u64 fallback_at;	/* when it last looked at the fallback DSQ */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, u32);
	__type(value, struct cpu_ctx);
	__uint(max_entries, 1);
} cpu_ctxs SEC(".maps");

struct cgrp_ctx {
	u32 weight;
	u32 nr_active;		/* active children, or 1 for an active leaf */
	u32 nr_runnable;	/* runnable tasks directly in this cgroup */
	u32 queued;		/* its node is on the rbtree */
	u64 nr_pending;		/* tasks queued on its DSQ or about to be */
	u64 child_weight_sum;	/* sum of the weights of active children */
	u64 hweight;
	u64 hweight_gen;
	u64 cvtime_delta;	/* charges/refunds waiting to reach the node */
	u64 tvtime_now;		/* task vtime clock inside the cgroup */
};

struct {
	__uint(type, BPF_MAP_TYPE_CGRP_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct cgrp_ctx);
} cgrp_ctxs SEC(".maps");

/* one node per cgroup: on the rbtree while queued, in the stash otherwise */
struct cg_node {
	struct bpf_rb_node rb_node;
	u64 cvtime;
	u64 cgid;
};

private(AGCG_TREE) struct bpf_spin_lock cg_tree_lock;
private(AGCG_TREE) struct bpf_rb_root cg_tree __contains(cg_node, rb_node);

struct cg_node_stash {
	struct cg_node __kptr *node;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, u64);
	__type(value, struct cg_node_stash);
} cg_stash SEC(".maps");

struct task_ctx {
	u64 started_at;		/* when it last started running */
	u64 cgid;		/* cgroup it last ran in */
	u64 pending_cgid;	/* cgroup whose nr_pending counts it */
	u64 queued_at;		/* when it was last queued on a shared DSQ */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_ctx);
} task_ctxs SEC(".maps");

struct guard_timer {
	struct bpf_timer timer;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct guard_timer);
} guard_timer SEC(".maps");

static void gstat_inc(enum agcg_gstat idx)
{
	u32 key = idx;
	u64 *cnt = bpf_map_lookup_elem(&gstats, &key);

	if (cnt)
		(*cnt)++;
}

static bool vtime_before(u64 a, u64 b)
{
	return (s64)(a - b) < 0;
}

static bool cg_node_less(struct bpf_rb_node *a, const struct bpf_rb_node *b)
{
	struct cg_node *na = container_of(a, struct cg_node, rb_node);
	struct cg_node *nb = container_of(b, struct cg_node, rb_node);

	return vtime_before(na->cvtime, nb->cvtime);
}

static struct cgrp_ctx *cgrp_ctx_of(struct cgroup *cgrp)
{
	struct cgrp_ctx *cgc;

	cgc = bpf_cgrp_storage_get(&cgrp_ctxs, cgrp, 0, 0);
	if (!cgc)
		scx_bpf_error("no context for cgroup %llu", cgrp->kn->id);
	return cgc;
}

static struct cgrp_ctx *ancestor_ctx(struct cgroup *cgrp, int level, u64 *cgidp)
{
	struct cgrp_ctx *cgc;
	struct cgroup *anc;

	anc = bpf_cgroup_ancestor(cgrp, level);
	if (!anc) {
		scx_bpf_error("no ancestor at level %d", level);
		return NULL;
	}
	cgc = cgrp_ctx_of(anc);
	if (cgidp)
		*cgidp = anc->kn->id;
	bpf_cgroup_release(anc);
	return cgc;
}

static struct agcg_cgrp_stats *stats_of(u64 cgid)
{
	return bpf_map_lookup_elem(&cgrp_stats, &cgid);
}

/* The task left its cgroup's DSQ (it runs, or was dequeued). */
static void unpend(struct task_ctx *tctx)
{
	struct cgrp_ctx *cgc;
	struct cgroup *cgrp;
	u64 cgid = tctx->pending_cgid;

	if (!cgid)
		return;
	tctx->pending_cgid = 0;
	__sync_fetch_and_sub(&nr_cg_queued, 1);
	cgrp = bpf_cgroup_from_id(cgid);
	if (!cgrp)
		return;
	cgc = bpf_cgrp_storage_get(&cgrp_ctxs, cgrp, 0, 0);
	if (cgc)
		__sync_fetch_and_sub(&cgc->nr_pending, 1);
	bpf_cgroup_release(cgrp);
}

/* scale a CPU time to cgroup vtime: time / hweight */
static u64 scale_by_hweight(u64 ns, u64 hweight)
{
	return ns * AGCG_HWEIGHT_ONE / (hweight ?: 1);
}

/*
 * Recompute @cgrp's hweight if the generation moved, top down: each level's
 * hweight is its parent's times weight / (sum of the active siblings'
 * weights).
 */
static void refresh_hweight(struct cgroup *cgrp, struct cgrp_ctx *cgc)
{
	int level;

	if (!cgc->nr_active || cgc->hweight_gen == hweight_gen)
		return;

	gstat_inc(AGCG_GS_HWT_UPDATE);
	bpf_for(level, 0, cgrp->level + 1) {
		struct cgrp_ctx *c, *pc;
		struct agcg_cgrp_stats *st;
		bool active;
		u64 cgid = 0;

		c = ancestor_ctx(cgrp, level, &cgid);
		if (!c)
			break;

		if (!level) {
			c->hweight = AGCG_HWEIGHT_ONE;
			c->hweight_gen = hweight_gen;
		} else {
			pc = ancestor_ctx(cgrp, level - 1, NULL);
			if (!pc)
				break;

			bpf_spin_lock(&cg_tree_lock);
			active = c->nr_active;
			if (active) {
				c->hweight_gen = pc->hweight_gen;
				c->hweight = div_round_up(pc->hweight * c->weight,
							  pc->child_weight_sum ?: 1);
			}
			bpf_spin_unlock(&cg_tree_lock);
			if (!active)
				break;
		}

		st = stats_of(cgid);
		if (st)
			st->hweight = c->hweight;
	}
}

/*
 * Fold the pending charges (actual runtime / hweight from ops.stopping, and
 * the refund of a pick's reservation) into the node. The node must be off
 * the tree.
 *
 * The debt is capped: a cgroup may lead the cgroup clock by at most
 * MAX_LEAD_SLICES CPU-slices of its own service (nr_cpus * MAX_LEAD_SLICES
 * slices / hweight). Runtime on the paths that bypass the cvtime order
 * (affinity-restricted tasks on the fallback DSQ, which get every other
 * turn whatever their weight; tasks woken onto an idle CPU; per-CPU
 * kthreads) is charged too, and without the cap a cgroup whose taskset-
 * pinned tasks run beyond its share ran up an unbounded lead: its other
 * tasks waited longer and longer behind every other cgroup until the
 * watchdog fired (36-sched-mixed, "runnable task stall" after 30 s).
 */
static void settle(struct cg_node *node, struct cgrp_ctx *cgc)
{
	u64 delta = cgc->cvtime_delta;
	u64 max_lead;

	__sync_fetch_and_sub(&cgc->cvtime_delta, delta);
	node->cvtime += delta;

	max_lead = scale_by_hweight(slice_ns * nr_cpus * MAX_LEAD_SLICES, cgc->hweight);
	if (vtime_before(cvtime_now + max_lead, node->cvtime)) {
		node->cvtime = cvtime_now + max_lead;
		gstat_inc(AGCG_GS_LEAD_CAP);
	}
}

/*
 * A cgroup coming back from idle keeps at most a bounded credit: it may lag
 * the cgroup clock by half the CPUs' worth of one slice, i.e. run ahead of
 * the others by at most its share of nr_cpus / 2 slices. Without the cap a
 * cgroup that slept would burst past its share when it wakes up.
 */
static bool cap_idle_credit(struct cg_node *node)
{
	u64 max_credit = slice_ns * nr_cpus / 2;

	if (vtime_before(node->cvtime, cvtime_now - max_credit)) {
		node->cvtime = cvtime_now - max_credit;
		return true;
	}
	return false;
}

/* Put @cgrp on the rbtree if it is not there yet. */
static void cgrp_enqueued(struct cgroup *cgrp, struct cgrp_ctx *cgc)
{
	struct cg_node_stash *stash;
	struct cg_node *node;
	u64 cgid = cgrp->kn->id;
	bool capped;

	/* paired with the cmpxchg in pick_cgroup() */
	if (__sync_val_compare_and_swap(&cgc->queued, 0, 1))
		return;

	stash = bpf_map_lookup_elem(&cg_stash, &cgid);
	if (!stash) {
		scx_bpf_error("no node stash for cgroup %llu", cgid);
		return;
	}

	/* NULL when a CPU holds the node in pick_cgroup(): it requeues it */
	node = bpf_kptr_xchg(&stash->node, NULL);
	if (!node)
		return;

	settle(node, cgc);
	capped = cap_idle_credit(node);
	bpf_spin_lock(&cg_tree_lock);
	bpf_rbtree_add(&cg_tree, &node->rb_node, cg_node_less);
	bpf_spin_unlock(&cg_tree_lock);
	if (capped)
		gstat_inc(AGCG_GS_BUDGET_CAP);
}

static void kick_idle_cpu(const struct task_struct *p)
{
	s32 cpu = scx_bpf_pick_idle_cpu(p->cpus_ptr, 0);

	if (cpu >= 0) {
		scx_bpf_kick_cpu(cpu, SCX_KICK_IDLE);
		gstat_inc(AGCG_GS_KICK);
	}
}

s32 BPF_STRUCT_OPS(agcg_select_cpu, struct task_struct *p, s32 prev_cpu, u64 wake_flags)
{
	bool is_idle = false;
	s32 cpu;

	cpu = scx_bpf_select_cpu_dfl(p, prev_cpu, wake_flags, &is_idle);
	if (!is_idle)
		return cpu;

	/* the CPU is idle: run there now; stopping() charges the cgroup */
	gstat_inc(AGCG_GS_LOCAL);
	scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice_ns, 0);
	return cpu;
}

void BPF_STRUCT_OPS(agcg_enqueue, struct task_struct *p, u64 enq_flags)
{
	struct task_ctx *tctx;
	struct cgroup *cgrp;
	struct cgrp_ctx *cgc;
	u64 tvtime;

	tctx = bpf_task_storage_get(&task_ctxs, p, 0, 0);
	if (!tctx) {
		scx_bpf_error("no context for task %d", p->pid);
		return;
	}

	/* per-CPU kernel threads: short bursts, run them on their CPU now */
	if (p->nr_cpus_allowed == 1 && (p->flags & PF_KTHREAD)) {
		gstat_inc(AGCG_GS_PINNED);
		scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice_ns, enq_flags);
		scx_bpf_kick_cpu(scx_bpf_task_cpu(p), SCX_KICK_IDLE);
		return;
	}
	if (p->nr_cpus_allowed != nr_cpus)
		goto fallback;

	cgrp = scx_bpf_task_cgroup(p);
	if (!cgrp)
		goto fallback;
	cgc = bpf_cgrp_storage_get(&cgrp_ctxs, cgrp, 0, 0);
	if (!cgc) {
		bpf_cgroup_release(cgrp);
		goto fallback;
	}

	/* a task that slept keeps at most one slice of credit */
	tvtime = p->scx.dsq_vtime;
	if (vtime_before(tvtime, cgc->tvtime_now - slice_ns))
		tvtime = cgc->tvtime_now - slice_ns;

	/*
	 * Counted before the insert, which the kernel only carries out after
	 * this callback returns: pick_cgroup() must not retire the cgroup's
	 * node while a task is on its way to the DSQ.
	 */
	unpend(tctx);
	__sync_fetch_and_add(&cgc->nr_pending, 1);
	__sync_fetch_and_add(&nr_cg_queued, 1);
	tctx->pending_cgid = cgrp->kn->id;
	tctx->queued_at = bpf_ktime_get_ns();
	scx_bpf_dsq_insert_vtime(p, cgrp->kn->id, slice_ns, tvtime, enq_flags);
	gstat_inc(AGCG_GS_CGROUP);
	cgrp_enqueued(cgrp, cgc);
	bpf_cgroup_release(cgrp);
	kick_idle_cpu(p);
	return;

fallback:
	gstat_inc(AGCG_GS_FALLBACK);
	tctx->queued_at = bpf_ktime_get_ns();
	scx_bpf_dsq_insert(p, FALLBACK_DSQ, slice_ns, enq_flags);
	kick_idle_cpu(p);
}

/*
 * Maintain the active counts and the active-children weight sums up the
 * tree when a cgroup gains its first or loses its last runnable task.
 */
static void update_active(struct cgroup *cgrp, bool runnable)
{
	struct cgrp_ctx *cgc;
	bool changed = false;
	int idx;

	cgc = cgrp_ctx_of(cgrp);
	if (!cgc)
		return;

	if (runnable) {
		if (__sync_fetch_and_add(&cgc->nr_runnable, 1))
			return;
		gstat_inc(AGCG_GS_ACT);
	} else {
		if (__sync_sub_and_fetch(&cgc->nr_runnable, 1))
			return;
		gstat_inc(AGCG_GS_DEACT);
		/* the charges that follow need the hweight it had while active */
		refresh_hweight(cgrp, cgc);
	}

	bpf_for(idx, 0, cgrp->level) {
		int level = cgrp->level - idx;
		struct cgrp_ctx *c, *pc;
		bool propagate = false;

		c = ancestor_ctx(cgrp, level, NULL);
		if (!c)
			break;
		pc = ancestor_ctx(cgrp, level - 1, NULL);
		if (!pc)
			break;

		bpf_spin_lock(&cg_tree_lock);
		if (runnable) {
			if (!c->nr_active++) {
				pc->child_weight_sum += c->weight;
				propagate = true;
			}
		} else {
			if (c->nr_active && !--c->nr_active) {
				pc->child_weight_sum -= c->weight;
				propagate = true;
			}
		}
		bpf_spin_unlock(&cg_tree_lock);

		changed = true;
		if (!propagate)
			break;
	}

	/* the root cgroup (level 0) is always active */
	if (!cgrp->level) {
		if (runnable)
			cgc->nr_active = 1;
	}

	if (changed)
		__sync_fetch_and_add(&hweight_gen, 1);
	if (runnable)
		refresh_hweight(cgrp, cgc);
}

void BPF_STRUCT_OPS(agcg_dequeue, struct task_struct *p, u64 deq_flags)
{
	struct task_ctx *tctx = bpf_task_storage_get(&task_ctxs, p, 0, 0);

	if (tctx)
		unpend(tctx);
}

void BPF_STRUCT_OPS(agcg_runnable, struct task_struct *p, u64 enq_flags)
{
	struct cgroup *cgrp = scx_bpf_task_cgroup(p);

	if (!cgrp)
		return;
	update_active(cgrp, true);
	bpf_cgroup_release(cgrp);
}

void BPF_STRUCT_OPS(agcg_quiescent, struct task_struct *p, u64 deq_flags)
{
	struct cgroup *cgrp = scx_bpf_task_cgroup(p);

	if (!cgrp)
		return;
	update_active(cgrp, false);
	bpf_cgroup_release(cgrp);
}

void BPF_STRUCT_OPS(agcg_running, struct task_struct *p)
{
	struct agcg_cgrp_stats *st;
	struct task_ctx *tctx;
	struct cgroup *cgrp;
	struct cgrp_ctx *cgc;

	tctx = bpf_task_storage_get(&task_ctxs, p, 0, 0);
	if (tctx) {
		tctx->started_at = bpf_ktime_get_ns();
		unpend(tctx);
	}

	cgrp = scx_bpf_task_cgroup(p);
	if (!cgrp)
		return;
	if (tctx)
		tctx->cgid = cgrp->kn->id;
	cgc = bpf_cgrp_storage_get(&cgrp_ctxs, cgrp, 0, 0);
	/* racy but monotonic enough: errors are transient and bounded */
	if (cgc && vtime_before(cgc->tvtime_now, p->scx.dsq_vtime))
		cgc->tvtime_now = p->scx.dsq_vtime;
	st = stats_of(cgrp->kn->id);
	if (st)
		__sync_fetch_and_add(&st->dispatches, 1);
	bpf_cgroup_release(cgrp);
}

void BPF_STRUCT_OPS(agcg_stopping, struct task_struct *p, bool runnable)
{
	struct agcg_cgrp_stats *st;
	struct task_ctx *tctx;
	struct cgroup *cgrp;
	struct cgrp_ctx *cgc;
	u64 ran = 0, now = bpf_ktime_get_ns();

	tctx = bpf_task_storage_get(&task_ctxs, p, 0, 0);
	if (!tctx)
		return;
	if (tctx->started_at && now > tctx->started_at)
		ran = now - tctx->started_at;
	tctx->started_at = 0;

	/* task vtime: time actually run, scaled by the task's weight */
	scx_bpf_task_set_dsq_vtime(p, p->scx.dsq_vtime +
				   ran * 100 / (p->scx.weight ?: 1));

	cgrp = scx_bpf_task_cgroup(p);
	if (!cgrp)
		return;
	st = stats_of(cgrp->kn->id);
	if (st)
		__sync_fetch_and_add(&st->cpu_time_ns, ran);
	/*
	 * Charge the cgroup what the task actually ran, whichever path it
	 * took (cgroup queue, idle CPU, pinned, fallback, or kept running as
	 * the last runnable task), scaled by the cgroup's hweight.
	 */
	cgc = bpf_cgrp_storage_get(&cgrp_ctxs, cgrp, 0, 0);
	if (cgc && ran)
		__sync_fetch_and_add(&cgc->cvtime_delta,
				     scale_by_hweight(ran, cgc->hweight));
	bpf_cgroup_release(cgrp);
}

void BPF_STRUCT_OPS(agcg_cgroup_set_weight, struct cgroup *cgrp, u32 weight)
{
	struct agcg_cgrp_stats *st;
	struct cgrp_ctx *cgc, *pc = NULL;

	cgc = cgrp_ctx_of(cgrp);
	if (!cgc)
		return;
	if (cgrp->level) {
		pc = ancestor_ctx(cgrp, cgrp->level - 1, NULL);
		if (!pc)
			return;
	}

	bpf_spin_lock(&cg_tree_lock);
	if (pc && cgc->nr_active)
		pc->child_weight_sum += (s64)weight - cgc->weight;
	cgc->weight = weight;
	bpf_spin_unlock(&cg_tree_lock);

	/* takes effect at the next pick of any cgroup */
	__sync_fetch_and_add(&hweight_gen, 1);

	st = stats_of(cgrp->kn->id);
	if (st)
		st->weight = weight;
}

/*
 * Pop the lowest-cvtime cgroup, fold its pending charges in, and if it is
 * still the lowest, take a task from it (or keep @prev_cgid's runnable prev
 * task). On success the cgroup is charged a reservation of one slice /
 * hweight, refunded when the CPU leaves it, so that several CPUs picking at
 * once do not all land on the same cgroup (and a herd of low-weight cgroups
 * cannot all start at once); the actual runtime is charged by stopping().
 */
static bool pick_cgroup(struct cpu_ctx *cpuc, u64 prev_cgid)
{
	struct cg_node_stash *stash;
	struct agcg_cgrp_stats *st;
	struct bpf_rb_node *rb;
	struct cg_node *node, *first;
	struct cgrp_ctx *cgc;
	struct cgroup *cgrp;
	bool behind = false;
	u64 cgid, reserve;

	bpf_spin_lock(&cg_tree_lock);
	rb = bpf_rbtree_first(&cg_tree);
	if (!rb) {
		bpf_spin_unlock(&cg_tree_lock);
		return true;
	}
	rb = bpf_rbtree_remove(&cg_tree, rb);
	bpf_spin_unlock(&cg_tree_lock);
	if (!rb) {
		scx_bpf_error("cgroup node vanished from the tree");
		return true;
	}

	node = container_of(rb, struct cg_node, rb_node);
	cgid = node->cgid;

	cgrp = bpf_cgroup_from_id(cgid);
	if (!cgrp) {
		gstat_inc(AGCG_GS_PICK_GONE);
		goto out_free;
	}
	cgc = bpf_cgrp_storage_get(&cgrp_ctxs, cgrp, 0, 0);
	if (!cgc) {
		bpf_cgroup_release(cgrp);
		gstat_inc(AGCG_GS_PICK_GONE);
		goto out_free;
	}

	/* with its charges folded in, is it still the lowest? */
	settle(node, cgc);
	bpf_spin_lock(&cg_tree_lock);
	rb = bpf_rbtree_first(&cg_tree);
	if (rb) {
		first = container_of(rb, struct cg_node, rb_node);
		behind = vtime_before(first->cvtime, node->cvtime);
	}
	if (behind) {
		bpf_rbtree_add(&cg_tree, &node->rb_node, cg_node_less);
		bpf_spin_unlock(&cg_tree_lock);
		bpf_cgroup_release(cgrp);
		return false;
	}
	bpf_spin_unlock(&cg_tree_lock);

	if (vtime_before(cvtime_now, node->cvtime))
		cvtime_now = node->cvtime;

	if (!scx_bpf_dsq_move_to_local(cgid, 0) && cgid != prev_cgid) {
		bpf_cgroup_release(cgrp);
		gstat_inc(AGCG_GS_PICK_EMPTY);
		goto out_stash;
	}

	refresh_hweight(cgrp, cgc);
	bpf_cgroup_release(cgrp);

	reserve = scale_by_hweight(slice_ns, cgc->hweight);
	node->cvtime += reserve;
	bpf_spin_lock(&cg_tree_lock);
	bpf_rbtree_add(&cg_tree, &node->rb_node, cg_node_less);
	bpf_spin_unlock(&cg_tree_lock);

	cpuc->cur_cgid = cgid;
	cpuc->reserved = reserve;
	st = stats_of(cgid);
	if (st)
		__sync_fetch_and_add(&st->picks, 1);
	gstat_inc(AGCG_GS_PICK);
	return true;

out_stash:
	stash = bpf_map_lookup_elem(&cg_stash, &cgid);
	if (!stash) {
		gstat_inc(AGCG_GS_PICK_GONE);
		goto out_free;
	}
	/*
	 * Retire the node to the stash, then clear queued, then look for
	 * tasks on their way (nr_pending). An enqueue that sets queued after
	 * the clear finds the node in the stash and queues it; one that found
	 * queued still set did its counting before, so the check below sees
	 * it and takes the node back (unless that enqueue already did).
	 */
	node = bpf_kptr_xchg(&stash->node, node);
	if (node) {
		scx_bpf_error("cgroup node stash for %llu was not empty", cgid);
		goto out_free;
	}
	__sync_val_compare_and_swap(&cgc->queued, 1, 0);
	if (cgc->nr_pending) {
		node = bpf_kptr_xchg(&stash->node, NULL);
		if (node) {
			__sync_val_compare_and_swap(&cgc->queued, 0, 1);
			bpf_spin_lock(&cg_tree_lock);
			bpf_rbtree_add(&cg_tree, &node->rb_node, cg_node_less);
			bpf_spin_unlock(&cg_tree_lock);
		}
	}
	return false;

out_free:
	bpf_obj_drop(node);
	return false;
}

/* Refund the unused reservation of the cgroup this CPU is leaving. */
static void leave_cgroup(struct cpu_ctx *cpuc)
{
	struct cgrp_ctx *cgc;
	struct cgroup *cgrp;

	cgrp = bpf_cgroup_from_id(cpuc->cur_cgid);
	if (cgrp) {
		cgc = bpf_cgrp_storage_get(&cgrp_ctxs, cgrp, 0, 0);
		if (cgc)
			__sync_fetch_and_sub(&cgc->cvtime_delta, cpuc->reserved);
		bpf_cgroup_release(cgrp);
	}
	cpuc->cur_cgid = 0;
	cpuc->reserved = 0;
}

void BPF_STRUCT_OPS(agcg_dispatch, s32 cpu, struct task_struct *prev)
{
	struct task_ctx *tctx;
	struct cpu_ctx *cpuc;
	u64 now = bpf_ktime_get_ns();
	u64 prev_cgid = 0;
	u32 key = 0;

	cpuc = bpf_map_lookup_elem(&cpu_ctxs, &key);
	if (!cpuc) {
		scx_bpf_error("no cpu context");
		return;
	}

	/*
	 * @prev, still runnable, is not on any DSQ yet: when nothing is
	 * dispatched the kernel keeps running it. Treat it as a task of its
	 * cgroup for the decisions below.
	 */
	if (prev && (prev->scx.flags & SCX_TASK_QUEUED)) {
		tctx = bpf_task_storage_get(&task_ctxs, prev, 0, 0);
		if (tctx)
			prev_cgid = tctx->cgid;
	}

	/*
	 * Aging: a CPU that has not looked at the fallback DSQ for two slices
	 * does so first, whatever its turn, so that a task only this CPU may
	 * run cannot wait behind the cgroups however dispatch() was entered
	 * (the cgroup slice goes on afterwards).
	 */
	if (!vtime_before(now, cpuc->fallback_at + 2 * slice_ns)) {
		cpuc->fallback_at = now;
		if (scx_bpf_dsq_nr_queued(FALLBACK_DSQ) > 0 &&
		    scx_bpf_dsq_move_to_local(FALLBACK_DSQ, 0)) {
			gstat_inc(AGCG_GS_AGED);
			return;
		}
	}

	/* a cgroup task the guard timer found waiting over STARVE_NS */
	if (rescue_cgid) {
		u64 cgid = rescue_cgid;

		rescue_cgid = 0;
		if (scx_bpf_dsq_move_to_local(cgid, 0)) {
			gstat_inc(AGCG_GS_RESCUE);
			return;
		}
	}

	if (cpuc->cur_cgid) {
		if (vtime_before(now, cpuc->cur_at + slice_ns)) {
			if (scx_bpf_dsq_move_to_local(cpuc->cur_cgid, 0) ||
			    prev_cgid == cpuc->cur_cgid) {
				gstat_inc(AGCG_GS_KEEP);
				return;
			}
		} else {
			gstat_inc(AGCG_GS_EXPIRE);
		}
		leave_cgroup(cpuc);
	}

	cpuc->cur_at = now;

	/*
	 * Affinity-restricted tasks (taskset, partial cpumasks) wait on the
	 * fallback DSQ. Every other turn starts there, so neither they nor
	 * the cgroups can starve the other side; their runtime is charged to
	 * their cgroups by stopping().
	 */
	cpuc->fallback_turn = !cpuc->fallback_turn;
	if (cpuc->fallback_turn) {
		cpuc->fallback_at = now;
		if (scx_bpf_dsq_move_to_local(FALLBACK_DSQ, 0))
			return;
	}

	bpf_repeat(MAX_PICK_TRIES) {
		if (pick_cgroup(cpuc, prev_cgid))
			break;
	}

	if (!cpuc->cur_cgid) {
		cpuc->fallback_at = now;
		scx_bpf_dsq_move_to_local(FALLBACK_DSQ, 0);
	}
}

/*
 * Lost-node sweep (guard timer): a cgroup with tasks on its DSQ must have
 * its node on the rbtree, or no CPU would ever pick it. The enqueue/retire
 * protocol keeps that true; this puts a node back if it ever is not.
 */
static long sweep_cgroup(struct bpf_map *map, u64 *cgidp, struct cg_node_stash *stash,
			 void *data)
{
	struct task_struct *p;
	struct task_ctx *tctx;
	struct cg_node *node;
	struct cgrp_ctx *cgc;
	struct cgroup *cgrp;
	u64 cgid = *cgidp;

	if (scx_bpf_dsq_nr_queued(cgid) <= 0)
		return 0;

	/* tasks queued and the node retired to the stash: put it back */
	node = bpf_kptr_xchg(&stash->node, NULL);
	if (node) {
		cgrp = bpf_cgroup_from_id(cgid);
		cgc = cgrp ? bpf_cgrp_storage_get(&cgrp_ctxs, cgrp, 0, 0) : NULL;
		if (cgrp)
			bpf_cgroup_release(cgrp);
		if (!cgc) {
			bpf_obj_drop(node);
			return 0;
		}
		gstat_inc(AGCG_GS_REQUEUE);
		__sync_val_compare_and_swap(&cgc->queued, 0, 1);
		settle(node, cgc);
		cap_idle_credit(node);
		bpf_spin_lock(&cg_tree_lock);
		bpf_rbtree_add(&cg_tree, &node->rb_node, cg_node_less);
		bpf_spin_unlock(&cg_tree_lock);
		return 0;
	}

	/* the task at its head waited too long: have the next dispatch serve it */
	p = __COMPAT_scx_bpf_dsq_peek(cgid);
	if (!p)
		return 0;
	tctx = bpf_task_storage_get(&task_ctxs, p, 0, 0);
	if (tctx && tctx->queued_at &&
	    bpf_ktime_get_ns() - tctx->queued_at > STARVE_NS) {
		rescue_cgid = cgid;
		return 1;
	}
	return 0;
}

/*
 * Guard timer, every GUARD_PERIOD_NS: while anything is queued on a shared
 * DSQ, kick every idle CPU so that it runs dispatch(). Enqueueing kicks an
 * idle CPU too, but a CPU that is on its way to idle (dispatch() found
 * nothing, the idle bit not yet set) cannot be picked then, and would
 * sleep with a task waiting that only it may run. Every 16th run it also
 * sweeps the cgroups for a node that is off the tree with tasks queued.
 */
static int guard_timerfn(void *map, int *key, struct bpf_timer *timer)
{
	s32 cpu;

	if (scx_bpf_dsq_nr_queued(FALLBACK_DSQ) > 0 || nr_cg_queued > 0) {
		bpf_for(cpu, 0, nr_cpus) {
			if (scx_bpf_test_and_clear_cpu_idle(cpu)) {
				scx_bpf_kick_cpu(cpu, SCX_KICK_IDLE);
				gstat_inc(AGCG_GS_GUARD_KICK);
			}
		}
	}
	if (!(guard_runs++ & 15) && !rescue_cgid)
		bpf_for_each_map_elem(&cg_stash, sweep_cgroup, NULL, 0);

	bpf_timer_start(timer, GUARD_PERIOD_NS, 0);
	return 0;
}

s32 BPF_STRUCT_OPS(agcg_init_task, struct task_struct *p, struct scx_init_task_args *args)
{
	struct task_ctx *tctx;
	struct cgrp_ctx *cgc;

	tctx = bpf_task_storage_get(&task_ctxs, p, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!tctx)
		return -ENOMEM;
	tctx->started_at = 0;
	tctx->cgid = 0;
	tctx->pending_cgid = 0;

	cgc = bpf_cgrp_storage_get(&cgrp_ctxs, args->cgroup, 0, 0);
	if (cgc)
		scx_bpf_task_set_dsq_vtime(p, cgc->tvtime_now);
	return 0;
}

s32 BPF_STRUCT_OPS_SLEEPABLE(agcg_cgroup_init, struct cgroup *cgrp,
			     struct scx_cgroup_init_args *args)
{
	struct agcg_cgrp_stats st = {};
	struct cg_node_stash empty = {}, *stash;
	struct cg_node *node;
	struct cgrp_ctx *cgc;
	u64 cgid = cgrp->kn->id;
	s32 ret;

	ret = scx_bpf_create_dsq(cgid, -1);
	if (ret)
		return ret;

	cgc = bpf_cgrp_storage_get(&cgrp_ctxs, cgrp, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!cgc) {
		ret = -ENOMEM;
		goto err_dsq;
	}
	cgc->weight = args->weight;
	cgc->hweight = AGCG_HWEIGHT_ONE;

	st.weight = args->weight;
	st.hweight = AGCG_HWEIGHT_ONE;
	st.level = cgrp->level;
	bpf_map_update_elem(&cgrp_stats, &cgid, &st, BPF_ANY);

	ret = bpf_map_update_elem(&cg_stash, &cgid, &empty, BPF_NOEXIST);
	if (ret) {
		if (ret != -ENOMEM)
			scx_bpf_error("cannot create node stash for %llu (%d)", cgid, ret);
		goto err_stats;
	}
	stash = bpf_map_lookup_elem(&cg_stash, &cgid);
	if (!stash) {
		ret = -ENOENT;
		goto err_stash;
	}

	node = bpf_obj_new(struct cg_node);
	if (!node) {
		ret = -ENOMEM;
		goto err_stash;
	}
	node->cgid = cgid;
	node->cvtime = cvtime_now;

	node = bpf_kptr_xchg(&stash->node, node);
	if (node) {
		bpf_obj_drop(node);
		scx_bpf_error("node stash for %llu was not empty", cgid);
		ret = -EBUSY;
		goto err_stash;
	}
	return 0;

err_stash:
	bpf_map_delete_elem(&cg_stash, &cgid);
err_stats:
	bpf_map_delete_elem(&cgrp_stats, &cgid);
err_dsq:
	scx_bpf_destroy_dsq(cgid);
	return ret;
}

void BPF_STRUCT_OPS(agcg_cgroup_exit, struct cgroup *cgrp)
{
	u64 cgid = cgrp->kn->id;

	/* a node still on the tree is freed when pick_cgroup() pops it */
	bpf_map_delete_elem(&cg_stash, &cgid);
	bpf_map_delete_elem(&cgrp_stats, &cgid);
	scx_bpf_destroy_dsq(cgid);
}

void BPF_STRUCT_OPS(agcg_cgroup_move, struct task_struct *p,
		    struct cgroup *from, struct cgroup *to)
{
	struct cgrp_ctx *from_c, *to_c;
	s64 delta;

	from_c = bpf_cgrp_storage_get(&cgrp_ctxs, from, 0, 0);
	to_c = bpf_cgrp_storage_get(&cgrp_ctxs, to, 0, 0);
	if (!from_c || !to_c)
		return;

	/* keep the task's lag relative to its cgroup's clock */
	delta = p->scx.dsq_vtime - from_c->tvtime_now;
	scx_bpf_task_set_dsq_vtime(p, to_c->tvtime_now + delta);
}

s32 BPF_STRUCT_OPS_SLEEPABLE(agcg_init)
{
	struct bpf_timer *timer;
	u32 key = 0;
	s32 ret;

	ret = scx_bpf_create_dsq(FALLBACK_DSQ, -1);
	if (ret)
		return ret;

	timer = bpf_map_lookup_elem(&guard_timer, &key);
	if (!timer)
		return -ESRCH;
	bpf_timer_init(timer, &guard_timer, CLOCK_MONOTONIC);
	bpf_timer_set_callback(timer, guard_timerfn);
	return bpf_timer_start(timer, GUARD_PERIOD_NS, 0);
}

void BPF_STRUCT_OPS(agcg_exit, struct scx_exit_info *ei)
{
	UEI_RECORD(uei, ei);
}

SCX_OPS_DEFINE(agentcg_ops,
	       .select_cpu		= (void *)agcg_select_cpu,
	       .enqueue			= (void *)agcg_enqueue,
	       .dequeue			= (void *)agcg_dequeue,
	       .dispatch		= (void *)agcg_dispatch,
	       .runnable		= (void *)agcg_runnable,
	       .running			= (void *)agcg_running,
	       .stopping		= (void *)agcg_stopping,
	       .quiescent		= (void *)agcg_quiescent,
	       .init_task		= (void *)agcg_init_task,
	       .cgroup_set_weight	= (void *)agcg_cgroup_set_weight,
	       .cgroup_init		= (void *)agcg_cgroup_init,
	       .cgroup_exit		= (void *)agcg_cgroup_exit,
	       .cgroup_move		= (void *)agcg_cgroup_move,
	       .init			= (void *)agcg_init,
	       .exit			= (void *)agcg_exit,
	       .name			= "agentcg");
