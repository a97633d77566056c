/* SPDX-License-Identifier: GPL-2.0 */
/*
 * memcg_priority: priority memory protection for agentcgd on kernels with
 * the memcg_bpf_ops struct_ops interface (out-of-tree RFC series "mm:
 * memcontrol: Add BPF hooks for memory controller").
 *
 * Two struct_ops maps, each attached by the loader (memcg/src/bpf.rs) to one
 * cgroup with a struct_ops link; the kernel hands the ops down to every
 * descendant memcg (handle_cgroup_online/offline are called for them):
 *
 *   high_ops -> session_high:
 *     below_low          "protected" (memory.low semantics: reclaim in the
 *                        tree takes from other cgroups first) when
 *                        protect_high; reclaim asking means the tree is
 *                        reclaiming, which is pressure.
 *     below_min          "protected" only inside a pressure window (and
 *                        protect_high).
 *     get_high_delay_ms  always 0 (session_high is never delayed): it is
 *                        called on session_high's charge path each time a
 *                        per-CPU charge batch is refilled, which makes it
 *                        the burst sensor: session_high's usage growing by
 *                        burst_pages within window_ns is pressure.
 *   low_ops  -> session_low:
 *     get_high_delay_ms  delay_ms inside a reclaim-pressure window; or,
 *                        after a burst of session_high (inside its window,
 *                        or while session_high still holds the burst's
 *                        memory), while the tightest memory limit above
 *                        session_low has less than headroom_pct % of it
 *                        free; else 0. The kernel sleeps the charging task
 *                        for that long (clamped to 2 s) after the charge,
 *                        whether or not memory.high is crossed.
 *
 * Reclaim pressure: session_high's tasks entering memcg-limit or direct
 * reclaim (vmscan tracepoints), or reclaim consulting session_high's
 * below_low. Burst pressure: the sensor above. A pressure window lasts
 * window_ns after the last event of its kind.
 *
 * Plain tracing headers only: scx/common.bpf.h would add sched_ext probes
 * that fail on kernels without sched_ext.
 */
#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "memcg_priority.h"
#include "memcg_priority_ops.h"

char _license[] SEC("license") = "GPL";

/* Set by the loader before load (memcg::Config). */
const volatile __u64 high_cgid;        /* cgroup id (kernfs ino) of session_high */
const volatile __u64 window_ns = 1000000000ULL;  /* window_ms */
const volatile __u32 delay_ms = 2000;  /* bpf_delay_ms */
const volatile bool protect_high = true;  /* protect_high */
const volatile __u64 burst_pages = 8192;  /* bpf_burst_mb in pages */
const volatile __u32 headroom_pct = 50;   /* bpf_headroom_pct */

__u64 last_reclaim_ns;  /* last reclaim pressure (session_high or the tree reclaiming) */
__u64 last_burst_ns;    /* last burst of session_high */
/* Burst sensor: session_high's usage (pages) at the start of the current
 * measuring interval, and when that interval started. */
__u64 high_ref_pages;
__u64 high_ref_ns;
/* session_high's usage before its current burst (0: no burst), and where
 * its page_counter is, so that session_low's hook can tell whether the
 * burst is still held (read with bpf_probe_read_kernel: a stale address
 * reads garbage, never faults; session_high outlives the daemon's links). */
__u64 burst_base;
__u64 high_pc;
struct memcg_prio_stats stats;

/* The vmlinux.h we build against declares struct mem_cgroup without its
 * body: the one field we read, with CO-RE relocation (matched by name
 * against the running kernel's BTF). */
struct mem_cgroup___prio {
	struct page_counter memory;
} __attribute__((preserve_access_index));

static __always_inline struct page_counter *memcg_counter(struct mem_cgroup *memcg)
{
	return &((struct mem_cgroup___prio *)memcg)->memory;
}

/* cgroup levels searched for session_high above the current task. */
#define MAX_LEVELS 16

struct mem_cgroup___css {
	struct cgroup_subsys_state css;
} __attribute__((preserve_access_index));

/* session_high's own memcg, found from memcg (session_high or one of its
 * agents' leaves, which charge through it): the burst sensor measures the
 * whole session, not whichever leaf charged last. */
static __always_inline struct mem_cgroup *session_high_of(struct mem_cgroup *memcg)
{
	int i;

	for (i = 0; i < MAX_LEVELS && memcg; i++) {
		struct mem_cgroup___css *m = (struct mem_cgroup___css *)memcg;

		if (BPF_CORE_READ(m, css.cgroup, kn, id) == high_cgid)
			return memcg;
		memcg = (struct mem_cgroup *)BPF_CORE_READ(m, css.parent);
	}
	return NULL;
}

/* Two kinds of pressure on session_high: reclaim (memory is short now) and
 * a burst (session_high is taking memory fast; short soon if near a limit). */
static __always_inline void note_reclaim(__u64 now)
{
	__sync_fetch_and_add(&stats.pressure_events, 1);
	last_reclaim_ns = now;
}

static __always_inline void note_burst(__u64 now)
{
	__sync_fetch_and_add(&stats.pressure_events, 1);
	last_burst_ns = now;
}

static __always_inline bool recent(__u64 last)
{
	return last && bpf_ktime_get_ns() - last < window_ns;
}

static __always_inline bool under_pressure(void)
{
	return recent(last_reclaim_ns) || recent(last_burst_ns);
}

/* A task of session_high (or of a cgroup below it) entering memcg-limit or
 * direct reclaim: session_high is under pressure. Classic tracepoints (no
 * argument read), stable since long before any kernel that can have
 * memcg_bpf_ops. */
static __always_inline void check_current(void)
{
	int lvl;

	for (lvl = 0; lvl < MAX_LEVELS; lvl++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(lvl);

		if (!id)
			return;
		if (id == high_cgid) {
			__sync_fetch_and_add(&stats.reclaim_events, 1);
			note_reclaim(bpf_ktime_get_ns());
			return;
		}
	}
}

SEC("tp/vmscan/mm_vmscan_memcg_reclaim_begin")
int on_memcg_reclaim(void *ctx)
{
	check_current();
	return 0;
}

SEC("tp/vmscan/mm_vmscan_direct_reclaim_begin")
int on_direct_reclaim(void *ctx)
{
	check_current();
	return 0;
}

SEC("struct_ops/high_below_low")
bool BPF_PROG(high_below_low, struct mem_cgroup *memcg)
{
	if (!protect_high)
		return false;
	/* Reclaim asked about session_high: the tree is reclaiming. */
	note_reclaim(bpf_ktime_get_ns());
	__sync_fetch_and_add(&stats.protect_calls, 1);
	return true;
}

SEC("struct_ops/high_below_min")
bool BPF_PROG(high_below_min, struct mem_cgroup *memcg)
{
	if (!protect_high || !under_pressure())
		return false;
	__sync_fetch_and_add(&stats.protect_calls, 1);
	return true;
}

/* session_high's charge path, also for its leaves (once per refilled
 * charge batch): never a delay; measures how fast session_high grows. */
SEC("struct_ops/high_get_high_delay_ms")
unsigned int BPF_PROG(high_get_high_delay_ms, struct mem_cgroup *memcg)
{
	__u64 now = bpf_ktime_get_ns();
	struct mem_cgroup *high = session_high_of(memcg);
	__u64 usage, ref = high_ref_pages;

	__sync_fetch_and_add(&stats.high_charges, 1);
	if (!high)
		return 0;
	usage = BPF_CORE_READ(memcg_counter(high), usage.counter);
	high_pc = (__u64)memcg_counter(high);
	if (now - high_ref_ns > window_ns || usage < ref) {
		high_ref_ns = now;
		high_ref_pages = usage;
		return 0;
	}
	if (usage - ref >= burst_pages) {
		__sync_fetch_and_add(&stats.burst_events, 1);
		note_burst(now);
		if (!burst_base || ref < burst_base)
			burst_base = ref;
		/* Measure the next burst from here. */
		high_ref_ns = now;
		high_ref_pages = usage;
	}
	return 0;
}

/* The tightest limit above (and at) memcg: true when less than
 * headroom_pct % of it is free. Limits of "max" (huge) do not count. */
static __always_inline bool near_limit(struct mem_cgroup *memcg)
{
	struct page_counter *pc = memcg_counter(memcg);
	int i;

	if (headroom_pct >= 100)
		return true;
	for (i = 0; i < MAX_LEVELS && pc; i++) {
		__u64 max = BPF_CORE_READ(pc, max);
		__u64 usage = BPF_CORE_READ(pc, usage.counter);

		if (max < (1ULL << 40) && usage * 100 >= max * (100 - headroom_pct))
			return true;
		pc = BPF_CORE_READ(pc, parent);
	}
	return false;
}

/* session_high still holds its last burst: its usage is burst_pages or more
 * above where the burst started. Clears the burst once it is given back. */
static __always_inline bool high_in_burst(void)
{
	struct page_counter *pc = (struct page_counter *)(unsigned long)high_pc;
	__u64 base = burst_base;

	if (!base || !pc)
		return false;
	if (BPF_CORE_READ(pc, usage.counter) >= base + burst_pages)
		return true;
	burst_base = 0;
	return false;
}

SEC("struct_ops/low_get_high_delay_ms")
unsigned int BPF_PROG(low_get_high_delay_ms, struct mem_cgroup *memcg)
{
	/* Memory is short now (reclaim on session_high's behalf or consulting
	 * its protection): delay. A burst of session_high (recent, or its
	 * memory still held): delay where a limit above session_low is near. */
	if (!recent(last_reclaim_ns) &&
	    !((recent(last_burst_ns) || high_in_burst()) && near_limit(memcg)))
		return 0;
	__sync_fetch_and_add(&stats.throttle_calls, 1);
	return delay_ms;
}

SEC("struct_ops/prio_online")
void BPF_PROG(prio_online, struct mem_cgroup *memcg)
{
	__sync_fetch_and_add(&stats.online, 1);
}

SEC("struct_ops/prio_offline")
void BPF_PROG(prio_offline, struct mem_cgroup *memcg)
{
	__sync_fetch_and_add(&stats.offline, 1);
}

SEC(".struct_ops.link")
struct memcg_bpf_ops high_ops = {
	.handle_cgroup_online = (void *)prio_online,
	.handle_cgroup_offline = (void *)prio_offline,
	.below_low = (void *)high_below_low,
	.below_min = (void *)high_below_min,
	.get_high_delay_ms = (void *)high_get_high_delay_ms,
};

SEC(".struct_ops.link")
struct memcg_bpf_ops low_ops = {
	.handle_cgroup_online = (void *)prio_online,
	.handle_cgroup_offline = (void *)prio_offline,
	.get_high_delay_ms = (void *)low_get_high_delay_ms,
};
