/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Shared between bpf/procmon.bpf.c and the procmon crate (through bindgen):
 * the event records carried over the ring buffer, the lineage map values
 * and the exec prefilter's keys.
 */
#ifndef __PROCMON_INTF_H
#define __PROCMON_INTF_H

#ifndef __VMLINUX_H__
typedef unsigned char u8;
typedef unsigned int u32;
typedef int s32;
typedef unsigned long long u64;
#endif

enum procmon_consts {
	PM_COMM_LEN = 16,
	PM_PATH_LEN = 256,
	PM_ARGV_LEN = 1024,	/* bounded argv: NUL-separated, truncated past this */
	PM_KEY_LEN = 32,	/* prefilter strings: longer literals become prefixes */
	PM_MAX_PREFIX = 32,	/* prefix patterns the prefilter can hold */
	PM_EXE_DEPTH = 8,	/* path components of the executable looked at */
	PM_LINEAGE_MAX = 65536,	/* processes the kernel-side lineage can hold */
};

enum procmon_kind {
	PM_EXEC = 1,	/* execve: every field */
	PM_EXIT = 2,	/* whole-process exit: pid, ppid, start_ns, exit_code */
	PM_FORK = 3,	/* a tracked lineage forked a child outside its cgroup */
	PM_RENAME = 4,	/* a process leader changed its comm (prctl, process.title) */
};

enum procmon_flags {
	PM_F_LINEAGE = 1 << 0,		/* lineage holds the nearest tracked ancestor */
	PM_F_ARGV_TRUNC = 1 << 1,	/* argv is longer than PM_ARGV_LEN */
};

/*
 * The lineage map (pid -> value): seeded by the daemon for every process
 * it tracks, inherited by each child at fork, removed at exit. A child
 * forked outside `cgroup_id` (it raced with a move) is reported as PM_FORK.
 */
struct procmon_lineage {
	u32 tracked_pid;	/* nearest tracked ancestor (or the process itself) */
	u32 pad;
	u64 tracked_start;	/* its start in /proc clock ticks: guards pid reuse */
	u64 cgroup_id;		/* where the lineage belongs; 0: do not check */
};

enum procmon_key_kind {
	PM_K_COMM = 1,	/* /proc/PID/comm */
	PM_K_ARGV0 = 2,	/* argv[0], or its basename */
	PM_K_EXE = 3,	/* one path component of the executable (last PM_EXE_DEPTH) */
};

/* An exact-match key of the prefilter (hash map), zero-padded. */
struct procmon_key {
	u32 kind;
	char s[PM_KEY_LEN];
};

/* A prefix pattern of the prefilter: `s[0..len]` then anything. */
struct procmon_prefix {
	u32 kind;
	u32 len;
	char s[PM_KEY_LEN];
};

/*
 * A normal exit (status 0), on the `quiet` ring buffer, which never wakes
 * the daemon: it is read with whatever wakes the daemon next (the next
 * exec, the emptied leaf's notice) or at its periodic flush.
 */
struct procmon_exit {
	u32 kind;	 /* PM_EXIT */
	u32 pid;
	u64 start_ns;
};

struct procmon_event {
	u32 kind;
	u32 pid;	 /* tgid: the process */
	u32 ppid;	 /* real parent's tgid */
	u32 uid;
	u64 start_ns;	 /* task->start_boottime, ns; /proc stat field 22 in ns */
	u64 cgroup_id;	 /* the process's cgroup v2 id at the event */
	u64 ts_ns;	 /* bpf_ktime_get_ns() at the event (CLOCK_MONOTONIC) */
	s32 exit_code;	 /* wait status: (code << 8) | signal, exits only */
	u32 argv_len;	 /* bytes valid in argv */
	u32 flags;	 /* procmon_flags */
	u32 pad;
	struct procmon_lineage lineage;	/* valid with PM_F_LINEAGE */
	char comm[PM_COMM_LEN];
	char filename[PM_PATH_LEN];
	char argv[PM_ARGV_LEN];
};

#endif /* __PROCMON_INTF_H */
