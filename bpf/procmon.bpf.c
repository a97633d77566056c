/* SPDX-License-Identifier: GPL-2.0 */
/*
 * procmon: exec and whole-process exit events for agentcgd.
 *
 * One ring buffer carries both kinds. When the buffer is full the event is
 * counted in nr_lost so that userspace knows to reconcile from /proc.
 */
/* Plain tracing headers: scx/common.bpf.h would pull in sched_ext probes
 * that fail to load on kernels without sched_ext. */
#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "procmon_intf.h"

char _license[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} events SEC(".maps");

u64 nr_lost;
u64 nr_exec;
u64 nr_exit;

/* Thread-group exits: the group is dead once signal->live has dropped to 0. */
static __always_inline bool group_dead(struct task_struct *p)
{
	return BPF_CORE_READ(p, signal, live.counter) == 0;
}

static __always_inline void fill_common(struct procmon_event *e, struct task_struct *p)
{
	e->pid = BPF_CORE_READ(p, tgid);
	e->ppid = BPF_CORE_READ(p, real_parent, tgid);
	e->uid = BPF_CORE_READ(p, cred, uid.val);
	e->start_ns = BPF_CORE_READ(p, group_leader, start_boottime);
	bpf_probe_read_kernel_str(e->comm, sizeof(e->comm), p->comm);
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(procmon_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct procmon_event *e;
	unsigned long arg_start, arg_end;
	u64 len;

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		__sync_fetch_and_add(&nr_lost, 1);
		return 0;
	}
	e->kind = PM_EXEC;
	e->exit_code = 0;
	fill_common(e, p);
	bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), BPF_CORE_READ(bprm, filename));

	arg_start = BPF_CORE_READ(p, mm, arg_start);
	arg_end = BPF_CORE_READ(p, mm, arg_end);
	len = arg_end > arg_start ? arg_end - arg_start : 0;
	if (len > PM_ARGV_LEN)
		len = PM_ARGV_LEN;
	e->argv_len = 0;
	/* The argument pages were just written by execve, so they are resident. */
	if (len > 0 && len <= PM_ARGV_LEN &&
	    !bpf_probe_read_user(e->argv, len, (void *)arg_start))
		e->argv_len = len;

	__sync_fetch_and_add(&nr_exec, 1);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(procmon_exit, struct task_struct *p)
{
	struct procmon_event *e;
	struct signal_struct *sig;
	int code;

	if (!group_dead(p))
		return 0;

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		__sync_fetch_and_add(&nr_lost, 1);
		return 0;
	}
	e->kind = PM_EXIT;
	fill_common(e, p);
	sig = BPF_CORE_READ(p, signal);
	/* exit_group() records the status on the signal struct, not the task. */
	if (BPF_CORE_READ(sig, flags) & 0x00000004 /* SIGNAL_GROUP_EXIT */)
		code = BPF_CORE_READ(sig, group_exit_code);
	else
		code = BPF_CORE_READ(p, exit_code);
	e->exit_code = code;
	e->argv_len = 0;
	e->filename[0] = 0;

	__sync_fetch_and_add(&nr_exit, 1);
	bpf_ringbuf_submit(e, 0);
	return 0;
}
