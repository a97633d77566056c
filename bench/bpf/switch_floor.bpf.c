/* SPDX-License-Identifier: GPL-2.0 */
/*
 * switch_floor: an empty tp_btf/sched_switch program, for
 * tests/bench/activity-overhead only. Attached alone it costs a
 * context switch what any BPF program on that tracepoint costs (the
 * tracepoint's call into BPF and the program's dispatch), so the bench can
 * tell that floor apart from what bpf/schedmon.bpf.c's body adds.
 */
#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char _license[] SEC("license") = "GPL";

SEC("tp_btf/sched_switch")
int BPF_PROG(switch_floor, bool preempt, struct task_struct *prev,
	     struct task_struct *next, unsigned int prev_state)
{
	return 0;
}
