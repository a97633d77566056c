/* SPDX-License-Identifier: GPL-2.0 */
/*
 * memcg_priority: priority memory protection for agentcgd on kernels with
 * the memcg_bpf_ops struct_ops interface (out-of-tree RFC series).
 *
 * Two struct_ops maps, each attached by the loader to one cgroup:
 *   high_ops -> session_high: below_low/below_min say "protected" while
 *               session_high is under pressure, so reclaim in the agentcg
 *               tree takes from the low-priority session first.
 *   low_ops  -> session_low: get_high_delay_ms returns delay_ms while
 *               session_high is under pressure, so session_low's allocations
 *               over its memory.high are throttled (the kernel sleeps the
 *               task on return to user space).
 *
 * Pressure is detected in BPF: a task of session_high entering reclaim
 * (vmscan tracepoints, current cgroup id == session_high's), or reclaim
 * asking session_high's below_low. Pressure lasts window_ns after the last
 * such event.
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

/* Set by the loader before load. */
const volatile __u64 high_cgid;       /* cgroup id (kernfs ino) of session_high */
const volatile __u64 window_ns = 1000000000ULL;
const volatile __u32 delay_ms = 2000;  /* get_high_delay_ms under pressure */
const volatile bool protect_min;       /* also answer below_min */

__u64 last_pressure_ns;
struct memcg_prio_stats stats;

static __always_inline void note_pressure(void)
{
	__sync_fetch_and_add(&stats.pressure_events, 1);
	last_pressure_ns = bpf_ktime_get_ns();
}

static __always_inline bool under_pressure(void)
{
	__u64 last = last_pressure_ns;

	return last && bpf_ktime_get_ns() - last < window_ns;
}

/* A task of session_high entering memcg-limit or direct reclaim: session_high
 * is under pressure. Classic tracepoints (no argument read), stable since
 * long before any kernel that can have memcg_bpf_ops. */
static __always_inline void check_current(void)
{
	if (bpf_get_current_cgroup_id() == high_cgid)
		note_pressure();
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
	/* Reclaim asked about session_high: the tree is reclaiming. */
	note_pressure();
	__sync_fetch_and_add(&stats.protect_calls, 1);
	return true;
}

SEC("struct_ops/high_below_min")
bool BPF_PROG(high_below_min, struct mem_cgroup *memcg)
{
	if (!protect_min || !under_pressure())
		return false;
	__sync_fetch_and_add(&stats.protect_calls, 1);
	return true;
}

SEC("struct_ops/low_get_high_delay_ms")
unsigned int BPF_PROG(low_get_high_delay_ms, struct mem_cgroup *memcg)
{
	if (!under_pressure())
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
};

SEC(".struct_ops.link")
struct memcg_bpf_ops low_ops = {
	.handle_cgroup_online = (void *)prio_online,
	.handle_cgroup_offline = (void *)prio_offline,
	.get_high_delay_ms = (void *)low_get_high_delay_ms,
};
