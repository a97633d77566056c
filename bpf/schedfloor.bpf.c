/* SPDX-License-Identifier: GPL-2.0 */
/*
 * schedfloor: the thinnest useful sched_ext scheduler, for benchmarks only
 * (agentcg-schedfloor, tests/bench/sched-fairness). It measures what the
 * sched_ext framework itself costs on a machine, so that scx_agentcg's
 * distance from the kernel's scheduler can be split into the framework's
 * part and ours.
 *
 * One global DSQ in weighted virtual time (scx_simple's vtime mode): a
 * wake-up with an idle CPU (scx_bpf_select_cpu_dfl) goes straight to that
 * CPU's local DSQ, everything else to the global DSQ, which every CPU
 * consumes. No cgroups, no preemption, no per-CPU queues: not fair between
 * cgroups, and not meant to be. Queued wake-ups are allowed, as in
 * scx_agentcg, so both take the same framework path.
 */
#include <scx/common.bpf.h>

char _license[] SEC("license") = "GPL";

#define SHARED_DSQ	0

const volatile u64 slice_ns = 5ULL * 1000 * 1000;	/* set by the loader */

/* the highest vtime that started running: a sleeper keeps at most a slice of credit */
static u64 vtime_now;

UEI_DEFINE(uei);

s32 BPF_STRUCT_OPS(floor_select_cpu, struct task_struct *p, s32 prev_cpu, u64 wake_flags)
{
	bool is_idle = false;
	s32 cpu;

	cpu = scx_bpf_select_cpu_dfl(p, prev_cpu, wake_flags, &is_idle);
	if (is_idle)
		scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice_ns, 0);
	return cpu;
}

void BPF_STRUCT_OPS(floor_enqueue, struct task_struct *p, u64 enq_flags)
{
	u64 vtime = p->scx.dsq_vtime;

	if (time_before(vtime, vtime_now - slice_ns))
		vtime = vtime_now - slice_ns;
	scx_bpf_dsq_insert_vtime(p, SHARED_DSQ, slice_ns, vtime, enq_flags);
}

void BPF_STRUCT_OPS(floor_dispatch, s32 cpu, struct task_struct *prev)
{
	scx_bpf_dsq_move_to_local(SHARED_DSQ, 0);
}

void BPF_STRUCT_OPS(floor_running, struct task_struct *p)
{
	if (time_before(vtime_now, p->scx.dsq_vtime))
		vtime_now = p->scx.dsq_vtime;
}

void BPF_STRUCT_OPS(floor_stopping, struct task_struct *p, bool runnable)
{
	/* what the task used of its slice, scaled by the inverse of its weight */
	p->scx.dsq_vtime += (slice_ns - p->scx.slice) * 100 / p->scx.weight;
}

void BPF_STRUCT_OPS(floor_enable, struct task_struct *p)
{
	p->scx.dsq_vtime = vtime_now;
}

s32 BPF_STRUCT_OPS_SLEEPABLE(floor_init)
{
	return scx_bpf_create_dsq(SHARED_DSQ, -1);
}

void BPF_STRUCT_OPS(floor_exit, struct scx_exit_info *ei)
{
	UEI_RECORD(uei, ei);
}

SCX_OPS_DEFINE(schedfloor_ops,
	       .select_cpu		= (void *)floor_select_cpu,
	       .enqueue			= (void *)floor_enqueue,
	       .dispatch		= (void *)floor_dispatch,
	       .running			= (void *)floor_running,
	       .stopping		= (void *)floor_stopping,
	       .enable			= (void *)floor_enable,
	       .init			= (void *)floor_init,
	       .exit			= (void *)floor_exit,
	       .name			= "schedfloor");
