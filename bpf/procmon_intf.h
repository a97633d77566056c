/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Shared between bpf/procmon.bpf.c and the procmon crate (through bindgen):
 * the exec/exit event records carried over the ring buffer.
 */
#ifndef __PROCMON_INTF_H
#define __PROCMON_INTF_H

#ifndef __VMLINUX_H__
typedef unsigned int u32;
typedef int s32;
typedef unsigned long long u64;
#endif

enum procmon_consts {
	PM_COMM_LEN = 16,
	PM_PATH_LEN = 256,
	PM_ARGV_LEN = 1024, /* bounded argv: NUL-separated, truncated past this */
};

enum procmon_kind {
	PM_EXEC = 1,
	PM_EXIT = 2,
};

struct procmon_event {
	u32 kind;
	u32 pid;	 /* tgid: the process */
	u32 ppid;	 /* real parent's tgid */
	u32 uid;
	u64 start_ns;	 /* task->start_boottime, ns; /proc stat field 22 in ns */
	s32 exit_code;	 /* wait status: (code << 8) | signal, exits only */
	u32 argv_len;	 /* bytes valid in argv */
	char comm[PM_COMM_LEN];
	char filename[PM_PATH_LEN];
	char argv[PM_ARGV_LEN];
};

#endif /* __PROCMON_INTF_H */
