/* SPDX-License-Identifier: GPL-2.0 */
/*
 * agentcg: agentcgd's flattened-cgroup sched_ext scheduler.
 *
 * Shares. Every cgroup with runnable tasks competes with every other one
 * with its hierarchical weight (hweight), the product over its ancestors
 * of its share among active siblings:
 *
 *   root + t (100) + a (200) + x (100)     x: 1 * 200/300 * 100/400 = 1/6
 *                  |         \ y (300)     y: 1 * 200/300 * 300/400 = 1/2
 *                  \ b (100)               b: 1 * 100/300           = 1/3
 *
 * Activity and weight changes bump a generation that expires the cached
 * hweights; a cgroup's is recomputed when one of its tasks runs or is charged.
 *
 * Virtual time. A task's runtime is charged to its cgroup's cvtime as
 * ran / hweight and to its own vtime as ran * 100 / weight. ops.dispatch()
 * serves the lowest cvtime (within a cgroup, task vtime) of: the first
 * cgroup of an rbtree of the cgroups with queued tasks, keyed by cvtime (a
 * stale key is refreshed first); this CPU's per-CPU DSQ; the previous task.
 * A dispatch charges its task's last run (at most a slice) ahead, settled
 * by the runtime or refunded, so CPUs deciding at once see each other's
 * choices.
 *
 * Credit. The clock is the highest settled cvtime a dispatch chose. A cgroup
 * keeps at most nr_cpus / 2 slices of credit against it as it wakes, and
 * nr_cpus of its own slices (slice / hweight) while active, what one confined
 * to a few CPUs needs to stay first there: an unusable share is not owed.
 *
 * Placement. A per-CPU kthread goes to its local DSQ, another single-CPU task
 * to its CPU's per-CPU DSQ, the rest to its cgroup's DSQ, from which a CPU
 * takes the first task it may run. A synchronous wake-up (a pipe write) goes
 * to the waker's CPU if nothing waits there, to run when the waker sleeps;
 * unless the waker fans out (woke several tasks between two sleeps): then a
 * wakee owed the waker's CPU is placed as any other, on an idle CPU, else
 * preempting a CPU it is owed.
 *
 * Aging. Cvtime order alone starves a task whose CPUs all serve a cgroup
 * confined there below its share. One that waited starve_slices slices is
 * served first: on a per-CPU DSQ by its CPU; at the head of its cgroup's DSQ
 * by a CPU that may not run it, which moves it to one that may.
 *
 * Preemption. A waking task is owed a CPU whose running task's cgroup is
 * ahead of its own by over slice / 8 in cvtime (in its own cgroup: in task
 * vtime, at most once per slice / 8 per CPU, so a producer waking a consumer
 * per message keeps its CPU for a batch). ops.select_cpu() puts it on the
 * local DSQ of its previous CPU or one of the next few, which counts as
 * running it for the rest of the waker's burst (ops.running() overwrites
 * that); ops.enqueue() claims and kicks an owed CPU itself, as the kernel
 * may skip ops.select_cpu() (queued wake-ups).
 *
 * Contexts. A cgroup's context sits in an array slot claimed in
 * ops.cgroup_init() and linked to its parent's; a task keeps its cgroup's
 * id and slot, so the hot callbacks walk the hierarchy by array lookups.
 * What can outlive a cgroup (a tree node, a reservation, a queued count)
 * holds its slot and id, checked against the slot's owner. A node's home,
 * where it waits off the tree, is the cgroup's own storage, found by id.
 *
 * Invariants (scx_bpf_error()): nr_queued counts a cgroup's DSQ tasks from
 * before the insertion (completed after ops.enqueue returns), never goes
 * negative and is 0 when the cgroup exits; while it is not 0 the cgroup's
 * node is on the tree or held by a dispatching CPU (maybe parked in its
 * home). A node is in one place. Reserved cvtime never goes negative.
 */
#include <scx/common.bpf.h>
#include "flatcg_intf.h"

char _license[] SEC("license") = "GPL";

#define PCPU_DSQ(cpu)	((1ULL << AGCG_PCPU_DSQ_SHIFT) | (u64)(cpu))
#define MAX_PICKS	1024	/* tree nodes one dispatch looks at */
#define MAX_SKIP	16	/* cgroups a CPU passes over in one dispatch (a power of 2) */
#define MAX_CGRPS	16384	/* cgroups with a cpu controller */
#define MAX_DEPTH	64	/* levels a walk up the tree covers */
#define MAX_VICTIMS	4	/* CPUs a wake-up looks at for one to preempt */

const volatile u32 nr_online = 1;		/* set by the loader */
const volatile u64 slice_ns = 5ULL * 1000 * 1000;	/* set by the loader */
const volatile u32 starve_slices = 25;		/* set by the loader */

UEI_DEFINE(uei);

/* the cgroup clock: highest settled cvtime of a cgroup a dispatch chose */
u64 cvtime_now;
/* bumped on weight or activity changes; expires the cached hweights */
u64 hweight_gen = 1;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, u32);
	__type(value, u64);
	__uint(max_entries, AGCG_NR_GSTATS);
} gstats SEC(".maps");

/* what runs on a CPU, for the preemption check of a waking task */
struct cpu_ctx {
	u64 run_cgid;		/* cgroup of the running task, 0 for none */
	u64 run_cvtime;		/* its cvtime when it started */
	u64 run_hweight;
	u64 run_tvtime;		/* the running task's vtime when it started */
	u64 run_weight;		/* ... and its weight */
	u64 run_at;
	u64 preempted_at;	/* when a wake-up of the running task's cgroup last preempted it */
	u64 res_cgid;		/* cgroup of the last dispatch's reservation */
	u32 res_slot;
	u64 reserved;		/* cvtime reserved, until a task of it runs here */
	/*
	 * What one dispatch passed over, handled after its picks (outside their loop);
	 * here, as indexed writes to the stack would multiply the verifier's states.
	 */
	u64 parked[MAX_SKIP];	/* cgroups parked in their home */
	u32 nr_parked;
	u64 aged;		/* a cgroup whose first task is old, and not for this CPU */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, u32);
	__type(value, struct cpu_ctx);
	__uint(max_entries, 1);
} cpu_ctxs SEC(".maps");

/* @cpu's context (a branch on @cpu here would make the victim loop's cpu precise) */
static struct cpu_ctx *cpu_ctx(s32 cpu)
{
	return bpf_map_lookup_percpu_elem(&cpu_ctxs, &(u32){ 0 }, cpu);
}

/* cgroup contexts by slot (see Contexts above; flatcg_intf.h) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, u32);
	__type(value, struct agcg_cgrp_ctx);
	__uint(max_entries, MAX_CGRPS);
} cgrp_ctxs SEC(".maps");

/* one past the highest slot ever claimed: what the loader reads */
u32 slot_hw;

/* one node per cgroup: on the tree while queued, in its home (below) otherwise */
struct cg_node {
	struct bpf_rb_node rb_node;
	u64 cvtime;		/* key: the cgroup's cvtime when (re)queued */
	u64 cgid;
	u32 slot;
};

/*
 * A cgroup's own storage: its slot, for the callbacks that are handed the cgroup,
 * and its node's home. The kernel frees it with the cgroup, never reuses it for
 * another, so a node stashed by a CPU that raced the cgroup's exit goes with it.
 */
struct cgrp_home {
	struct cg_node __kptr *node;
	u32 slot;
};

struct {
	__uint(type, BPF_MAP_TYPE_CGRP_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct cgrp_home);
} cgrp_homes SEC(".maps");

private(AGCG_TREE) struct bpf_spin_lock cg_tree_lock;
private(AGCG_TREE) struct bpf_rb_root cg_tree __contains(cg_node, rb_node);
/* nodes on the tree, changed under the lock: dispatch skips an empty tree */
u32 nr_on_tree;

struct task_ctx {
	u64 started_at;		/* start of the runtime not charged yet */
	u64 cgid;		/* its cgroup (init_task, cgroup_move) */
	u32 slot;		/* ... and that cgroup's slot */
	u32 queued_slot;	/* slot of queued_cgid */
	u64 queued_cgid;	/* cgroup whose nr_queued counts it, or 0 */
	u64 queued_at;		/* when it was put on a per-CPU or its cgroup's DSQ */
	u64 reserved;		/* cvtime charged ahead for its current run */
	u64 run_ns;		/* length of its current run so far */
	u64 last_run_ns;	/* length of its last run: what a dispatch reserves */
	u32 sync_wakes;		/* synchronous wake-ups since it last slept */
	bool fans_out;		/* it woke several tasks before it last slept */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_ctx);
} task_ctxs SEC(".maps");

static void gstat_inc(enum agcg_gstat idx)
{
	u64 *cnt = bpf_map_lookup_elem(&gstats, &(u32){ idx });

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

static void tree_add(struct cg_node *node)
{
	bpf_spin_lock(&cg_tree_lock);
	bpf_rbtree_add(&cg_tree, &node->rb_node, cg_node_less);
	nr_on_tree++;
	bpf_spin_unlock(&cg_tree_lock);
}

/* The context in @slot if @cgid owns it (@cgid 0: whoever owns it). */
static struct agcg_cgrp_ctx *ctx_at(u32 slot, u64 cgid)
{
	struct agcg_cgrp_ctx *cgc = bpf_map_lookup_elem(&cgrp_ctxs, &slot);

	if (!cgc || (cgid && cgc->cgid != cgid))
		return NULL;
	return cgc;
}

/* @p's context, and its cgroup's in *@cgcp: its cgroup cannot exit while it holds @p. */
static struct task_ctx *task_ctxs_of(struct task_struct *p, struct agcg_cgrp_ctx **cgcp)
{
	struct task_ctx *tctx = bpf_task_storage_get(&task_ctxs, p, 0, 0);

	*cgcp = tctx ? ctx_at(tctx->slot, tctx->cgid) : NULL;
	if (!tctx)
		scx_bpf_error("no context for task %d", p->pid);
	else if (!*cgcp)
		scx_bpf_error("task %d: its cgroup %llu does not own slot %u",
			      p->pid, tctx->cgid, tctx->slot);
	return tctx;
}

/* The context of a cgroup the kernel hands us; its slot in *@slotp. */
static struct agcg_cgrp_ctx *cgrp_ctx_of(struct cgroup *cgrp, u32 *slotp)
{
	struct cgrp_home *home = bpf_cgrp_storage_get(&cgrp_homes, cgrp, 0, 0);
	struct agcg_cgrp_ctx *cgc = home ? ctx_at(home->slot, cgrp->kn->id) : NULL;

	if (!cgc)
		scx_bpf_error("no context for cgroup %llu", cgrp->kn->id);
	else if (home && slotp)
		*slotp = home->slot;
	return cgc;
}

/*
 * Swap @node (NULL: take it out) with what @cgid's home holds. When the cgroup is gone
 * @node comes back and *@gone is set: the caller drops it.
 */
static struct cg_node *swap_home(u64 cgid, struct cg_node *node, bool *gone)
{
	struct cgroup *cgrp = bpf_cgroup_from_id(cgid);
	struct cgrp_home *home = cgrp ? bpf_cgrp_storage_get(&cgrp_homes, cgrp, 0, 0) : NULL;

	*gone = !home;
	if (home)
		node = bpf_kptr_xchg(&home->node, node);
	if (cgrp)
		bpf_cgroup_release(cgrp);
	return node;
}

/* A parent outlives its children: its slot is always its own. */
static struct agcg_cgrp_ctx *parent_ctx(struct agcg_cgrp_ctx *cgc)
{
	struct agcg_cgrp_ctx *pc = ctx_at(cgc->parent, 0);

	if (!pc)
		scx_bpf_error("cgroup %llu: no parent context", cgc->cgid);
	return pc;
}

/* a CPU time as cgroup vtime: time / hweight */
static u64 scale_by_hweight(u64 ns, u64 hweight)
{
	return ns * AGCG_HWEIGHT_ONE / (hweight ?: 1);
}

/* a CPU time as task vtime: time * 100 / weight */
static u64 scale_by_weight(u64 ns, u64 weight)
{
	return ns * 100 / (weight ?: 1);
}

/* The clock follows what a cgroup has run, not what is charged ahead. */
static void advance_clock(struct agcg_cgrp_ctx *cgc)
{
	if (cgc && vtime_before(cvtime_now, cgc->cvtime - cgc->reserved))
		cvtime_now = cgc->cvtime - cgc->reserved;
}

/* Charge @delta of cvtime ahead to @cgc (negative: settle or refund it). */
static void add_reserved(struct agcg_cgrp_ctx *cgc, s64 delta)
{
	if (!cgc)
		return;
	__sync_fetch_and_add(&cgc->cvtime, delta);
	if (__sync_add_and_fetch(&cgc->reserved, delta) < 0)
		scx_bpf_error("cgroup %llu: cvtime charged ahead went negative", cgc->cgid);
}

/* The task left its cgroup's DSQ: it runs, was re-enqueued, or left us. */
static void unqueue(struct task_ctx *tctx)
{
	struct agcg_cgrp_ctx *cgc = tctx->queued_cgid ?
				    ctx_at(tctx->queued_slot, tctx->queued_cgid) : NULL;

	tctx->queued_cgid = 0;
	if (cgc && __sync_sub_and_fetch(&cgc->nr_queued, 1) < 0)
		scx_bpf_error("cgroup %llu: nr_queued went negative", cgc->cgid);
}

/*
 * Recompute @cgc's hweight if stale: the product up the tree of each level's weight
 * over its active siblings' sum. A change during the walk bumps the generation again.
 */
static void refresh_hweight(struct agcg_cgrp_ctx *cgc)
{
	struct agcg_cgrp_ctx *c = cgc, *pc;
	u64 gen = hweight_gen, hw = AGCG_HWEIGHT_ONE, sum;
	u32 i;

	if (!cgc->level || !cgc->nr_active || cgc->hweight_gen == gen)
		return;
	gstat_inc(AGCG_GS_HWT_UPDATE);
	bpf_for(i, 0, MAX_DEPTH) {
		if (!c->level || !(pc = parent_ctx(c)))
			break;
		bpf_spin_lock(&cg_tree_lock);
		sum = pc->child_weight_sum;	/* without c's weight if c just went idle */
		hw = div_round_up(hw * c->weight, sum > c->weight ? sum : c->weight);
		bpf_spin_unlock(&cg_tree_lock);
		c = pc;
	}
	cgc->hweight = hw;
	cgc->hweight_gen = gen;
}

/* Keep @cgc at most @credit of cvtime behind the clock (Credit, in the header). */
static void cap_credit(struct agcg_cgrp_ctx *cgc, u64 credit)
{
	s64 behind = cvtime_now - credit - (cgc->cvtime - cgc->reserved);

	if (behind > 0) {
		__sync_fetch_and_add(&cgc->cvtime, behind);
		gstat_inc(AGCG_GS_CREDIT_CAP);
	}
}

/* Charge @p's runtime since its start or last charge to its vtime and cvtime. */
static void charge(struct task_struct *p, struct task_ctx *tctx,
		   struct agcg_cgrp_ctx *cgc, u64 now)
{
	u64 ran = tctx->started_at && vtime_before(tctx->started_at, now) ?
		  now - tctx->started_at : 0;

	tctx->started_at = now;
	tctx->run_ns += ran;
	/* a task kept running never passes ops.running(): refresh here too */
	refresh_hweight(cgc);
	/* the reservation made when it was dispatched is part of the charge */
	__sync_fetch_and_add(&cgc->cvtime, scale_by_hweight(ran, cgc->hweight));
	if (tctx->reserved)
		add_reserved(cgc, -tctx->reserved);
	tctx->reserved = 0;
	cap_credit(cgc, scale_by_hweight(slice_ns * nr_online, cgc->hweight));
	if (!ran)
		return;

	scx_bpf_task_set_dsq_vtime(p, p->scx.dsq_vtime + scale_by_weight(ran, p->scx.weight));
	__sync_fetch_and_add(&cgc->cpu_time_ns, ran);
}

/* Put @cgc's node on the tree if it is not there (or held) already. */
static void cgrp_enqueued(struct agcg_cgrp_ctx *cgc)
{
	struct cg_node *node;
	u64 cgid = cgc->cgid;
	bool gone;

	/* paired with the retirement in pick_one(); the owner's id, as the slot is reused */
	if (__sync_val_compare_and_swap(&cgc->queued, 0, cgid))
		return;

	node = swap_home(cgid, NULL, &gone);
	if (!node) {
		scx_bpf_error("cgroup %llu: node lost (neither queued nor home)", cgid);
		return;
	}
	node->cvtime = cgc->cvtime;
	tree_add(node);
}

/* A waking task's vtime: one that slept keeps at most one slice of credit. */
static u64 wake_vtime(struct task_struct *p, struct agcg_cgrp_ctx *cgc)
{
	u64 oldest = cgc->tvtime_now - slice_ns;

	return vtime_before(p->scx.dsq_vtime, oldest) ? oldest : p->scx.dsq_vtime;
}

/* Is waking @p owed @cpu? (Preemption, in the header) */
static bool owed_cpu(s32 cpu, struct task_struct *p, struct agcg_cgrp_ctx *cgc)
{
	struct cpu_ctx *cpuc = cpu_ctx(cpu);
	u64 now = bpf_ktime_get_ns(), ran;

	if (!cpuc || !cpuc->run_cgid)
		return false;
	ran = now - cpuc->run_at;
	if (cpuc->run_cgid == cgc->cgid)
		return vtime_before(cpuc->preempted_at + slice_ns / 8, now) &&
		       vtime_before(wake_vtime(p, cgc) + slice_ns / 8,
				    cpuc->run_tvtime + scale_by_weight(ran, cpuc->run_weight));
	return vtime_before(cgc->cvtime + slice_ns / 8, cpuc->run_cvtime +
			    scale_by_hweight(ran, cpuc->run_hweight));
}

/* @cpuc's CPU runs @p of @cgc from @now, at these vtimes: what owed_cpu() reads. */
static void set_running(struct cpu_ctx *cpuc, struct task_struct *p, struct agcg_cgrp_ctx *cgc,
			u64 cvtime, u64 tvtime, u64 now)
{
	cpuc->run_cgid = cgc->cgid;
	cpuc->run_cvtime = cvtime;
	cpuc->run_hweight = cgc->hweight;
	cpuc->run_tvtime = tvtime;
	cpuc->run_weight = p->scx.weight;
	cpuc->run_at = now;
}

/*
 * @p preempts @cpu: the rest of the burst compares itself with @p there, and
 * within a cgroup owed_cpu() counts from now.
 */
static void claim_cpu(s32 cpu, struct task_struct *p, struct agcg_cgrp_ctx *cgc)
{
	struct cpu_ctx *cpuc = cpu_ctx(cpu);
	u64 now = bpf_ktime_get_ns();

	if (!cpuc || !cgc)	/* cgc: for the verifier, the callers have one */
		return;
	if (cpuc->run_cgid == cgc->cgid)
		cpuc->preempted_at = now;
	set_running(cpuc, p, cgc, cgc->cvtime, wake_vtime(p, cgc), now);
	gstat_inc(AGCG_GS_PREEMPT);
}

/*
 * A CPU @p is owed other than @skip (a sync waker's, left to last: the waker goes
 * on with work of @p's cgroup): its previous CPU or one of the next few; -1 for none.
 */
static s32 owed_cpu_near(struct task_struct *p, struct agcg_cgrp_ctx *cgc, s32 prev_cpu,
			 s32 skip)
{
	u32 nr_ids = scx_bpf_nr_cpu_ids();
	s32 cpu = prev_cpu;
	int i;

	bpf_for(i, 0, MAX_VICTIMS) {
		if (i >= nr_ids)
			break;
		if (cpu != skip && bpf_cpumask_test_cpu(cpu, p->cpus_ptr) &&
		    owed_cpu(cpu, p, cgc))
			return cpu;
		cpu = cpu + 1 < nr_ids ? cpu + 1 : 0;
	}
	return -1;
}

s32 BPF_STRUCT_OPS(agcg_select_cpu, struct task_struct *p, s32 prev_cpu, u64 wake_flags)
{
	s32 this_cpu = bpf_get_smp_processor_id(), cpu = this_cpu, victim = -1;
	struct task_struct *waker = bpf_get_current_task_btf();
	struct task_ctx *wctx = bpf_task_storage_get(&task_ctxs, waker, 0, 0);
	struct agcg_cgrp_ctx *cgc = NULL;
	bool direct, sync = false, owed_here = false;

	if (!task_ctxs_of(p, &cgc) || !cgc)
		return prev_cpu;
	if (p->nr_cpus_allowed == 1)
		cgc = NULL;	/* single-CPU tasks: ops.enqueue() decides */
	/* the waker (current) is one of our tasks */
	if (wctx && (wake_flags & SCX_WAKE_SYNC) && !(waker->flags & PF_EXITING) &&
	    bpf_cpumask_test_cpu(this_cpu, p->cpus_ptr)) {
		sync = true;
		/* a waker that wakes several tasks does not sleep after the first */
		owed_here = (wctx->fans_out || wctx->sync_wakes) && cgc && owed_cpu(this_cpu, p, cgc);
		wctx->sync_wakes++;
	}
	/*
	 * A synchronous wake-up (a pipe write) runs here when the waker sleeps; another
	 * takes an idle CPU, without the sync hint where the waker would be preempted.
	 */
	direct = sync && !owed_here && !scx_bpf_dsq_nr_queued(SCX_DSQ_LOCAL) &&
		 !scx_bpf_dsq_nr_queued(PCPU_DSQ(this_cpu));
	if (!direct)
		cpu = scx_bpf_select_cpu_dfl(p, prev_cpu, owed_here ? wake_flags & ~SCX_WAKE_SYNC :
					     wake_flags, &direct);
	if (direct) {
		gstat_inc(AGCG_GS_LOCAL);
		scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice_ns, 0);
	} else if ((cgc && (victim = owed_cpu_near(p, cgc, cpu, sync ? this_cpu : -1)) >= 0) || owed_here) {
		/* what a kick and a dispatch would pick, without the round trip */
		cpu = victim >= 0 ? victim : this_cpu;
		claim_cpu(cpu, p, cgc);
		scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice_ns, SCX_ENQ_PREEMPT);
	}
	return cpu;
}

void BPF_STRUCT_OPS(agcg_enqueue, struct task_struct *p, u64 enq_flags)
{
	struct agcg_cgrp_ctx *cgc;
	struct task_ctx *tctx = task_ctxs_of(p, &cgc);
	s32 home, idle;

	if (!tctx)
		return;
	unqueue(tctx);

	if (p->nr_cpus_allowed == 1 && (p->flags & PF_KTHREAD)) {
		gstat_inc(AGCG_GS_KTHREAD);
		scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice_ns, enq_flags);
		scx_bpf_kick_cpu(scx_bpf_task_cpu(p), SCX_KICK_IDLE);
		return;
	}

	if (!cgc)
		return;
	tctx->queued_at = bpf_ktime_get_ns();
	/* the CPU a waking task would preempt: its only one, or where it woke */
	home = p->nr_cpus_allowed == 1 ? bpf_cpumask_first(p->cpus_ptr) : scx_bpf_task_cpu(p);
	if (p->nr_cpus_allowed == 1) {
		gstat_inc(AGCG_GS_PCPU);
		scx_bpf_dsq_insert(p, PCPU_DSQ(home), slice_ns, enq_flags);
		idle = scx_bpf_test_and_clear_cpu_idle(home) ? home : -1;
	} else {
		/* counted before the insertion, which the kernel completes later */
		__sync_fetch_and_add(&cgc->nr_queued, 1);
		tctx->queued_cgid = tctx->cgid;
		tctx->queued_slot = tctx->slot;
		scx_bpf_dsq_insert_vtime(p, tctx->cgid, slice_ns, wake_vtime(p, cgc), enq_flags);
		gstat_inc(p->nr_cpus_allowed < nr_online ? AGCG_GS_SUBSET : AGCG_GS_CGROUP);
		cgrp_enqueued(cgc);
		idle = scx_bpf_pick_idle_cpu(p->cpus_ptr, 0);
	}

	if (idle >= 0) {
		scx_bpf_kick_cpu(idle, SCX_KICK_IDLE);
		gstat_inc(AGCG_GS_KICK);
	} else if ((enq_flags & SCX_ENQ_WAKEUP) && owed_cpu(home, p, cgc)) {
		claim_cpu(home, p, cgc);
		scx_bpf_kick_cpu(home, SCX_KICK_PREEMPT);
	}
}

/* Active counts and weight sums up the tree, as @p's cgroup (de)activates. */
static void update_active(struct task_struct *p, bool runnable)
{
	struct agcg_cgrp_ctx *c, *cgc, *pc;
	bool propagate;
	int idx;

	if (!task_ctxs_of(p, &cgc) || !cgc)
		return;
	if (runnable ? __sync_fetch_and_add(&cgc->nr_runnable, 1) :
		       __sync_sub_and_fetch(&cgc->nr_runnable, 1))
		return;
	gstat_inc(runnable ? AGCG_GS_ACT : AGCG_GS_DEACT);
	if (runnable)
		cap_credit(cgc, slice_ns * nr_online / 2);

	/* bottom up; each level's context is the next one's child */
	c = cgc;
	bpf_for(idx, 0, MAX_DEPTH) {
		if (!c->level || !(pc = parent_ctx(c)))
			break;

		bpf_spin_lock(&cg_tree_lock);
		propagate = runnable ? !c->nr_active++ : c->nr_active && !--c->nr_active;
		if (propagate)
			pc->child_weight_sum += runnable ? c->weight : -(s64)c->weight;
		bpf_spin_unlock(&cg_tree_lock);
		if (!propagate)
			break;
		c = pc;
	}
	/* the root (always active, hweight one) has no share to change */
	if (cgc->level)
		__sync_fetch_and_add(&hweight_gen, 1);
}

void BPF_STRUCT_OPS(agcg_runnable, struct task_struct *p, u64 enq_flags)
{
	update_active(p, true);
}

void BPF_STRUCT_OPS(agcg_quiescent, struct task_struct *p, u64 deq_flags)
{
	update_active(p, false);
}

void BPF_STRUCT_OPS(agcg_running, struct task_struct *p)
{
	struct agcg_cgrp_ctx *cgc;
	struct task_ctx *tctx = task_ctxs_of(p, &cgc);
	/* its CPU: a property change of a running task calls this from another */
	struct cpu_ctx *cpuc = cpu_ctx(scx_bpf_task_cpu(p));
	u64 now = bpf_ktime_get_ns();

	if (!tctx || !cgc || !cpuc)
		return;
	tctx->started_at = now;
	unqueue(tctx);
	refresh_hweight(cgc);
	/* racy but monotonic enough: errors are transient and bounded */
	if (vtime_before(cgc->tvtime_now, p->scx.dsq_vtime))
		cgc->tvtime_now = p->scx.dsq_vtime;

	if (cpuc->res_cgid == tctx->cgid) {
		tctx->reserved += cpuc->reserved;
		cpuc->reserved = 0;
	}
	/* its cvtime as dispatch() will see it: the reservation settles then */
	set_running(cpuc, p, cgc, cgc->cvtime - tctx->reserved, p->scx.dsq_vtime, now);
	__sync_fetch_and_add(&cgc->dispatches, 1);
}

void BPF_STRUCT_OPS(agcg_stopping, struct task_struct *p, bool runnable)
{
	struct agcg_cgrp_ctx *cgc;
	struct task_ctx *tctx = task_ctxs_of(p, &cgc);
	struct cpu_ctx *cpuc = cpu_ctx(scx_bpf_task_cpu(p));	/* as in agcg_running() */

	if (!tctx || !cgc || !cpuc)
		return;
	cpuc->run_cgid = 0;
	/* it fans out if it woke several tasks between its last two sleeps */
	if (!runnable && tctx->sync_wakes) {
		tctx->fans_out = tctx->sync_wakes > 1;
		tctx->sync_wakes = 0;
	}
	charge(p, tctx, cgc, bpf_ktime_get_ns());
	tctx->started_at = 0;
	tctx->last_run_ns = tctx->run_ns;
	tctx->run_ns = 0;
}

void BPF_STRUCT_OPS(agcg_disable, struct task_struct *p)
{
	struct task_ctx *tctx = bpf_task_storage_get(&task_ctxs, p, 0, 0);

	if (tctx)
		unqueue(tctx);
}

void BPF_STRUCT_OPS(agcg_cgroup_set_weight, struct cgroup *cgrp, u32 weight)
{
	struct agcg_cgrp_ctx *pc = NULL, *cgc = cgrp_ctx_of(cgrp, NULL);

	if (!cgc || (cgc->level && !(pc = parent_ctx(cgc))))
		return;

	bpf_spin_lock(&cg_tree_lock);
	if (pc && cgc->nr_active)
		pc->child_weight_sum += (s64)weight - cgc->weight;
	cgc->weight = weight;
	bpf_spin_unlock(&cg_tree_lock);

	__sync_fetch_and_add(&hweight_gen, 1);
}

/* The candidates dispatch() compares: cgroup cvtime, then task vtime. */
struct cand {
	u64 cgid;		/* 0: none */
	u32 slot;
	u64 cvtime;
	u64 tvtime;
};

/*
 * This CPU's dispatch chose @p of @cgid (@why counts how): charge its last run, at most
 * a slice, ahead to @cgid, until @p runs here (ops.running()) or the next dispatch.
 */
static void dispatched(struct cpu_ctx *cpuc, u32 slot, u64 cgid, struct task_struct *p,
		       enum agcg_gstat why)
{
	struct agcg_cgrp_ctx *cgc = ctx_at(slot, cgid);
	struct task_ctx *tctx = p ? bpf_task_storage_get(&task_ctxs, p, 0, 0) : NULL;
	u64 last = tctx ? tctx->last_run_ns : 0;

	cpuc->res_cgid = cgid;
	cpuc->res_slot = slot;
	cpuc->reserved = cgc ? scale_by_hweight(last && last <= slice_ns ? last : slice_ns,
						cgc->hweight) : 0;
	add_reserved(cgc, cpuc->reserved);
	gstat_inc(why);
}

/* Has the task of @tctx waited starve_slices slices on a per-CPU or a cgroup DSQ? */
static bool waited_long(struct task_ctx *tctx, u64 now)
{
	return tctx && now - tctx->queued_at > starve_slices * slice_ns;
}

/* Aging: move @cgid's first task, if it waited long, to a CPU it may run. */
static void serve_aged(u64 cgid, u64 now)
{
	struct task_struct *p;
	s32 cpu;

	bpf_for_each(scx_dsq, p, cgid, 0) {
		if (!waited_long(bpf_task_storage_get(&task_ctxs, p, 0, 0), now))
			return;
		cpu = scx_bpf_pick_any_cpu(p->cpus_ptr, 0);
		if (cpu >= 0 && scx_bpf_dsq_move(BPF_FOR_EACH_ITER, p, SCX_DSQ_LOCAL_ON | cpu, 0)) {
			scx_bpf_kick_cpu(cpu, SCX_KICK_IDLE);
			gstat_inc(AGCG_GS_SUBSET_AGED);
		}
		return;
	}
}

enum pick_ret {
	PICK_DONE,	/* a task of the tree's first cgroup is on the local DSQ */
	PICK_NONE,	/* stop: the tree is empty or @best comes first */
	PICK_AGAIN,	/* look at the (new) first cgroup */
};

/*
 * Pop the tree's first cgroup unless @best comes first, and move a task of it this
 * CPU may run to the local DSQ. A stale key is refreshed (requeued, unless alone);
 * an empty cgroup's node is retired to its home, that of a cgroup with no task for
 * this CPU parked there (still queued; @cpuc names it) until dispatch() ends.
 */
static int pick_one(s32 cpu, struct cpu_ctx *cpuc, struct cand *best)
{
	struct task_struct *head;
	struct bpf_rb_node *rb;
	struct cg_node *node;
	struct agcg_cgrp_ctx *cgc;
	u32 cslot;
	u64 cgid, key;
	bool retire, alone, gone;

	bpf_spin_lock(&cg_tree_lock);
	rb = bpf_rbtree_first(&cg_tree);
	if (!rb) {
		bpf_spin_unlock(&cg_tree_lock);
		return PICK_NONE;
	}
	node = container_of(rb, struct cg_node, rb_node);
	cgid = node->cgid;
	key = node->cvtime;
	/* a candidate of another cgroup at or before the key wins here */
	if (best->cgid && best->cgid != cgid && !vtime_before(key, best->cvtime)) {
		bpf_spin_unlock(&cg_tree_lock);
		return PICK_NONE;
	}
	rb = bpf_rbtree_remove(&cg_tree, rb);
	if (rb)
		nr_on_tree--;
	alone = !nr_on_tree;
	bpf_spin_unlock(&cg_tree_lock);
	if (!rb) {
		scx_bpf_error("cgroup node vanished from the tree");
		return PICK_NONE;
	}
	node = container_of(rb, struct cg_node, rb_node);

	cslot = node->slot;
	cgc = ctx_at(cslot, cgid);
	if (!cgc) {
		/* the cgroup went away with its node on the tree */
		bpf_obj_drop(node);
		return PICK_AGAIN;
	}

	/* charged since it was keyed: requeue with the current cvtime, if not alone */
	node->cvtime = cgc->cvtime;
	if (vtime_before(key, node->cvtime) && !alone) {
		tree_add(node);
		return PICK_AGAIN;
	}
	head = __COMPAT_scx_bpf_dsq_peek(cgid);
	if (head && !cpuc->aged && !bpf_cpumask_test_cpu(cpu, head->cpus_ptr) &&
	    waited_long(bpf_task_storage_get(&task_ctxs, head, 0, 0), bpf_ktime_get_ns()))
		cpuc->aged = cgid;
	/* @best comes first: of another cgroup, the lower cvtime; of this one, task vtime */
	if (best->cgid && (best->cgid != cgid ? !vtime_before(node->cvtime, best->cvtime) :
			   !head || !vtime_before(head->scx.dsq_vtime, best->tvtime))) {
		tree_add(node);
		return PICK_NONE;
	}

	if (scx_bpf_dsq_move_to_local(cgid, 0)) {
		advance_clock(cgc);
		dispatched(cpuc, cslot, cgid, head, AGCG_GS_PICK);
		node->cvtime = cgc->cvtime;
		tree_add(node);
		__sync_fetch_and_add(&cgc->picks, 1);
		return PICK_DONE;
	}

	/* tasks queued (or on their way), none for this CPU: park it, if there is room */
	retire = cgc->nr_queued <= 0;
	if (!retire && cpuc->nr_parked >= MAX_SKIP) {
		tree_add(node);
		gstat_inc(AGCG_GS_SKIP_BUDGET);
		return PICK_NONE;
	}
	gstat_inc(retire ? AGCG_GS_RETIRE : AGCG_GS_SKIP);
	node = swap_home(cgid, node, &gone);
	if (node) {
		if (!gone)
			scx_bpf_error("cgroup %llu: its node is in two places", cgid);
		bpf_obj_drop(node);
		return gone ? PICK_AGAIN : PICK_NONE;
	}
	if (!retire) {
		cpuc->parked[cpuc->nr_parked++ & (MAX_SKIP - 1)] = cgid;
		return PICK_AGAIN;
	}
	/*
	 * Retired: an enqueue that sets queued after takes the node from its home;
	 * one that found it set counted its task before: the check below puts it back.
	 */
	__sync_val_compare_and_swap(&cgc->queued, cgid, 0);
	if (cgc->nr_queued > 0)
		cgrp_enqueued(cgc);
	return PICK_AGAIN;
}

/* Fill @c from @p's cgroup (@p's context, or NULL); charge @p up to @now if @charge_now. */
static struct task_ctx *cand_of(struct task_struct *p, struct cand *c, bool charge_now, u64 now)
{
	struct agcg_cgrp_ctx *cgc;
	struct task_ctx *tctx = task_ctxs_of(p, &cgc);

	if (!tctx || !cgc)
		return NULL;
	if (charge_now)
		charge(p, tctx, cgc, now);
	*c = (struct cand){ .cgid = tctx->cgid, .slot = tctx->slot,
			    .cvtime = cgc->cvtime, .tvtime = p->scx.dsq_vtime };
	return tctx;
}

void BPF_STRUCT_OPS(agcg_dispatch, s32 cpu, struct task_struct *prev)
{
	struct cand best = {}, local = {};
	struct task_ctx *tctx, *prev_tctx = NULL;
	struct agcg_cgrp_ctx *cgc;
	struct task_struct *head;
	struct cpu_ctx *cpuc = cpu_ctx(cpu);
	struct cg_node *node;
	bool from_local = false, gone;
	u64 now = bpf_ktime_get_ns();
	u32 i;
	int ret = PICK_NONE;

	if (!cpuc) {
		scx_bpf_error("no context for CPU %d", cpu);
		return;
	}
	cpuc->nr_parked = 0;
	cpuc->aged = 0;
	/* the last dispatch's reservation that no task used */
	if (cpuc->reserved) {
		add_reserved(ctx_at(cpuc->res_slot, cpuc->res_cgid), -cpuc->reserved);
		cpuc->reserved = 0;
	}

	/* the previous task, still runnable: charged up to now */
	if (prev && (prev->scx.flags & SCX_TASK_QUEUED) &&
	    (prev_tctx = cand_of(prev, &best, true, now)) && cpuc->run_cgid &&
	    (cgc = ctx_at(best.slot, best.cgid)))
		set_running(cpuc, prev, cgc, best.cvtime, best.tvtime, now);

	/* the head of this CPU's single-CPU tasks */
	head = __COMPAT_scx_bpf_dsq_peek(PCPU_DSQ(cpu));
	if (head && (tctx = cand_of(head, &local, false, now))) {
		if (waited_long(tctx, now) && scx_bpf_dsq_move_to_local(PCPU_DSQ(cpu), 0)) {
			dispatched(cpuc, local.slot, local.cgid, head, AGCG_GS_PCPU_AGED);
			return;
		}
		if (!best.cgid || (best.cgid != local.cgid ?
				   !vtime_before(best.cvtime, local.cvtime) :
				   !vtime_before(best.tvtime, local.tvtime))) {
			best = local;
			from_local = true;
		}
	}

	/* unlocked: a node added just after is missed with the lock too */
	if (READ_ONCE(nr_on_tree)) {
		bpf_for(i, 0, MAX_PICKS) {
			ret = pick_one(cpu, cpuc, &best);
			if (ret != PICK_AGAIN)
				break;
		}
	}
	if (ret == PICK_AGAIN) {
		/* more cgroups than one dispatch may look at: continue later */
		gstat_inc(AGCG_GS_PICK_BUDGET);
		scx_bpf_kick_cpu(cpu, 0);
	}

	/* the cgroups passed over go back (an iterator costs even for none) */
	for (i = 0; i < cpuc->nr_parked && i < MAX_SKIP; i++) {
		node = swap_home(cpuc->parked[i], NULL, &gone);
		if (node)
			tree_add(node);
	}
	if (cpuc->aged)
		serve_aged(cpuc->aged, now);

	if (ret == PICK_DONE || !best.cgid)
		return;
	advance_clock(ctx_at(best.slot, best.cgid));
	if (from_local && scx_bpf_dsq_move_to_local(PCPU_DSQ(cpu), 0)) {
		dispatched(cpuc, best.slot, best.cgid, head, AGCG_GS_PICK_PCPU);
		return;
	}
	if (prev && prev_tctx) {
		/* nothing dispatched: the kernel keeps running @prev */
		scx_bpf_task_set_slice(prev, slice_ns);
		dispatched(cpuc, prev_tctx->slot, prev_tctx->cgid, prev, AGCG_GS_PICK_PREV);
	}
}

s32 BPF_STRUCT_OPS(agcg_init_task, struct task_struct *p, struct scx_init_task_args *args)
{
	struct task_ctx *tctx = bpf_task_storage_get(&task_ctxs, p, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	struct agcg_cgrp_ctx *cgc;

	if (!tctx)
		return -ENOMEM;
	*tctx = (struct task_ctx){ .cgid = args->cgroup->kn->id };
	/* while the scheduler is disabled cgroups exit before forks stop: no fail */
	cgc = cgrp_ctx_of(args->cgroup, &tctx->slot);
	if (cgc)
		scx_bpf_task_set_dsq_vtime(p, cgc->tvtime_now);
	return 0;
}

/* Claim the lowest free slot for @cgid (the loader reads up to slot_hw): its context. */
static struct agcg_cgrp_ctx *alloc_slot(u64 cgid, u32 *slotp)
{
	u32 slot;

	bpf_for(slot, 0, MAX_CGRPS) {
		struct agcg_cgrp_ctx *cgc = bpf_map_lookup_elem(&cgrp_ctxs, &slot);

		if (cgc && !cgc->cgid && !__sync_val_compare_and_swap(&cgc->cgid, 0, cgid)) {
			if (slot_hw <= slot)
				slot_hw = slot + 1;
			*slotp = slot;
			return cgc;
		}
	}
	return NULL;
}

s32 BPF_STRUCT_OPS_SLEEPABLE(agcg_cgroup_init, struct cgroup *cgrp,
			     struct scx_cgroup_init_args *args)
{
	struct cgrp_home *home;
	struct cg_node *node;
	struct agcg_cgrp_ctx *cgc;
	u64 cgid = cgrp->kn->id;
	u32 parent = 0;
	s32 ret;

	/* the walks up the tree are bounded; cgroups this deep are refused */
	if (cgrp->level >= MAX_DEPTH)
		return -E2BIG;
	if (cgrp->level) {
		struct cgroup *up = bpf_cgroup_ancestor(cgrp, cgrp->level - 1);

		cgc = up ? cgrp_ctx_of(up, &parent) : NULL;
		if (up)
			bpf_cgroup_release(up);
		if (!cgc)
			return -ENOENT;
	}
	home = bpf_cgrp_storage_get(&cgrp_homes, cgrp, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!home)
		return -ENOMEM;
	cgc = alloc_slot(cgid, &home->slot);
	if (!cgc)
		return -ENOSPC;
	*cgc = (struct agcg_cgrp_ctx){ .cgid = cgid, .parent = cgrp->level ? parent : home->slot,
				  .level = cgrp->level, .weight = args->weight,
				  .nr_active = !cgrp->level, .hweight = AGCG_HWEIGHT_ONE,
				  .cvtime = cvtime_now };

	ret = scx_bpf_create_dsq(cgid, -1);
	if (ret)
		goto err_slot;
	node = bpf_obj_new(struct cg_node);
	if (!node) {
		scx_bpf_destroy_dsq(cgid);
		ret = -ENOMEM;
		goto err_slot;
	}
	node->cgid = cgid;
	node->slot = home->slot;
	node = bpf_kptr_xchg(&home->node, node);
	if (node)	/* a re-init (cpu controller off and on): the old one's */
		bpf_obj_drop(node);
	return 0;

err_slot:
	cgc->cgid = 0;
	return ret;
}

void BPF_STRUCT_OPS(agcg_cgroup_exit, struct cgroup *cgrp)
{
	struct cgrp_home *home = bpf_cgrp_storage_get(&cgrp_homes, cgrp, 0, 0);
	u64 cgid = cgrp->kn->id;
	struct agcg_cgrp_ctx *cgc = home ? ctx_at(home->slot, cgid) : NULL;
	struct cg_node *node = home ? bpf_kptr_xchg(&home->node, NULL) : NULL;

	if (cgc && cgc->nr_queued)
		scx_bpf_error("cgroup %llu exits with nr_queued %lld", cgid, cgc->nr_queued);
	/* one on the tree is dropped when a CPU pops it, one stashed later with the storage */
	if (node)
		bpf_obj_drop(node);
	scx_bpf_destroy_dsq(cgid);
	/* last: the slot is free for the next cgroup */
	if (cgc)
		cgc->cgid = 0;
}

void BPF_STRUCT_OPS(agcg_cgroup_move, struct task_struct *p,
		    struct cgroup *from, struct cgroup *to)
{
	struct task_ctx *tctx = bpf_task_storage_get(&task_ctxs, p, 0, 0);
	u32 to_slot;
	struct agcg_cgrp_ctx *from_c = cgrp_ctx_of(from, NULL), *to_c = cgrp_ctx_of(to, &to_slot);

	if (!tctx || !from_c || !to_c)
		return;
	unqueue(tctx);	/* it is on no DSQ now: the next ops.enqueue() counts it */
	tctx->cgid = to->kn->id;
	tctx->slot = to_slot;

	/* its reservation moves along; its lag against the task clock too */
	add_reserved(from_c, -tctx->reserved);
	add_reserved(to_c, tctx->reserved);
	scx_bpf_task_set_dsq_vtime(p, to_c->tvtime_now + (p->scx.dsq_vtime - from_c->tvtime_now));
}

s32 BPF_STRUCT_OPS_SLEEPABLE(agcg_init)
{
	u32 cpu;
	s32 ret;

	bpf_for(cpu, 0, scx_bpf_nr_cpu_ids()) {
		ret = scx_bpf_create_dsq(PCPU_DSQ(cpu), -1);
		if (ret)
			return ret;
	}
	return 0;
}

void BPF_STRUCT_OPS(agcg_exit, struct scx_exit_info *ei)
{
	UEI_RECORD(uei, ei);
}

SCX_OPS_DEFINE(agentcg_ops,
	       .select_cpu		= (void *)agcg_select_cpu,
	       .enqueue			= (void *)agcg_enqueue,
	       .dispatch		= (void *)agcg_dispatch,
	       .runnable		= (void *)agcg_runnable,
	       .running			= (void *)agcg_running,
	       .stopping		= (void *)agcg_stopping,
	       .quiescent		= (void *)agcg_quiescent,
	       .disable			= (void *)agcg_disable,
	       .init_task		= (void *)agcg_init_task,
	       .cgroup_set_weight	= (void *)agcg_cgroup_set_weight,
	       .cgroup_init		= (void *)agcg_cgroup_init,
	       .cgroup_exit		= (void *)agcg_cgroup_exit,
	       .cgroup_move		= (void *)agcg_cgroup_move,
	       .init			= (void *)agcg_init,
	       .exit			= (void *)agcg_exit,
	       .name			= "agentcg");
