/* SPDX-License-Identifier: GPL-2.0 */
/*
 * procmon: the kernel half of agentcgd's process placement.
 *
 * Lineage. The daemon seeds `lineage` with every process it tracks (pid ->
 * nearest tracked ancestor and the cgroup it belongs in). At fork a child of
 * a process in the map inherits its entry, so a worker forked without exec
 * belongs to its agent from its first instruction; if the child was forked
 * outside that cgroup (it raced with the daemon moving its parent), a
 * PM_FORK event asks the daemon to move it. Entries leave the map at exit.
 *
 * Prefilter. Once the daemon has loaded its policies (`filter_on`), an exec
 * reaches userspace only if the process is in a tracked lineage or if its
 * comm, argv[0] (or its basename) or a component of its executable's path
 * hits `prefilter`: an LPM trie holding each rule's literal (terminated by
 * its NUL, so it matches exactly) or literal prefix (a glob's text before
 * its first wildcard). Rules that cannot be reduced to such a key set
 * `pass_all`. Exits are reported for lineage members only; comm changes
 * (prctl(PR_SET_NAME), node's process.title) for lineage members and for
 * comms that hit the prefilter. With the filter off, everything passes.
 *
 * Wake-ups. `events` carries what the daemon acts on at once (execs,
 * forks, renames, and exits with a non-zero status: a crash may trigger a
 * reaction). A normal exit only updates the daemon's books, so it goes to
 * `quiet`, submitted without a wake-up: a placed process then costs the
 * daemon one wake-up (its exec), not two. The daemon drains `quiet` first
 * whenever it wakes, and at least once a second while it tracks anything.
 * When a ring buffer is full the event is counted in nr_lost so that
 * userspace reconciles from /proc (a full `quiet` falls back to `events`).
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

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 << 10);
} quiet SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PM_LINEAGE_MAX);
	__type(key, u32);
	__type(value, struct procmon_lineage);
} lineage SEC(".maps");

/* LPM trie key: prefix length in bits over (kind, s). */
struct pf_key {
	u32 prefixlen;
	struct procmon_key k;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct pf_key);
	__type(value, u8);
} prefilter SEC(".maps");

/* argv[0] scratch, too big for the stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, char[2 * PM_PATH_LEN]);
} scratch SEC(".maps");

/* Set by userspace. */
u32 filter_on;
u32 pass_all;
u32 want_argv0;		/* the prefilter has PM_K_ARGV0 keys */
u32 want_exe;		/* ... PM_K_EXE keys */

u64 nr_lost;
u64 nr_exec;		/* every exec on the host */
u64 nr_exec_passed;	/* execs sent to userspace */
u64 nr_exit;
u64 nr_exit_quiet;	/* ... of which went to `quiet` */
u64 nr_fork_inherited;	/* children that joined a lineage at fork */
u64 nr_fork_moved;	/* ... and were outside its cgroup (PM_FORK) */
u64 nr_rename;
u64 nr_lineage_full;

/* Thread-group exits: the group is dead once signal->live has dropped to 0. */
static __always_inline bool group_dead(struct task_struct *p)
{
	return BPF_CORE_READ(p, signal, live.counter) == 0;
}

static __always_inline u64 cgroup_id_of(struct task_struct *p)
{
	return BPF_CORE_READ(p, cgroups, dfl_cgrp, kn, id);
}

static __always_inline bool hit(struct pf_key *key)
{
	key->prefixlen = 8 * sizeof(key->k);
	return bpf_map_lookup_elem(&prefilter, key) != NULL;
}

static __always_inline bool hit_comm(const char *comm)
{
	struct pf_key key = {};

	key.k.kind = PM_K_COMM;
	bpf_probe_read_kernel_str(key.k.s, sizeof(key.k.s), comm);
	return hit(&key);
}

/* argv[0] as a whole and by its basename. */
static __always_inline bool hit_argv0(struct task_struct *p)
{
	struct pf_key key = {};
	unsigned long arg_start;
	u32 zero = 0;
	long n, i, base = -1;
	char *buf;

	buf = bpf_map_lookup_elem(&scratch, &zero);
	if (!buf)
		return true;
	arg_start = BPF_CORE_READ(p, mm, arg_start);
	n = bpf_probe_read_user_str(buf, PM_PATH_LEN, (void *)arg_start);
	if (n <= 0)
		return false;
	key.k.kind = PM_K_ARGV0;
	__builtin_memcpy(key.k.s, buf, sizeof(key.k.s) - 1);
	if (hit(&key))
		return true;
	n -= 1;	/* without the NUL */
	if (n >= PM_PATH_LEN - 1)
		return true;	/* cut short: its basename is unknown, let it through */
	/* The basename's start, looked for only as far back as a key is long;
	 * a longer basename is let through. */
	for (i = 1; i <= PM_KEY_LEN; i++) {
		long at = n - i;

		if (at < 0) {
			base = 0;
			break;
		}
		if (buf[at & (PM_PATH_LEN - 1)] == '/') {
			base = at + 1;
			break;
		}
	}
	if (base < 0)
		return true;
	if (base == 0)
		return false;	/* no '/': the whole of it was looked up above */
	__builtin_memset(key.k.s, 0, sizeof(key.k.s));
	/* base < PM_PATH_LEN and the scratch is twice that: in bounds. */
	bpf_probe_read_kernel_str(key.k.s, sizeof(key.k.s), buf + (base & (PM_PATH_LEN - 1)));
	return hit(&key);
}

/* Each of the executable's last PM_EXE_DEPTH path components. */
static __always_inline bool hit_exe(struct linux_binprm *bprm)
{
	struct pf_key key = {};
	struct dentry *d, *parent;
	int i;

	key.k.kind = PM_K_EXE;
	d = BPF_CORE_READ(bprm, file, f_path.dentry);
	for (i = 0; i < PM_EXE_DEPTH && d; i++) {
		/* A shorter name leaves stale bytes past its NUL: harmless, since
		 * every trie entry either ends at its NUL or is a prefix. */
		bpf_probe_read_kernel_str(key.k.s, sizeof(key.k.s), BPF_CORE_READ(d, d_name.name));
		if (hit(&key))
			return true;
		parent = BPF_CORE_READ(d, d_parent);
		if (parent == d)
			break;
		d = parent;
	}
	return false;
}

static __always_inline bool exec_wanted(struct task_struct *p, struct linux_binprm *bprm)
{
	if (!filter_on || pass_all)
		return true;
	if (hit_comm(p->comm))
		return true;
	if (want_argv0 && hit_argv0(p))
		return true;
	return want_exe && hit_exe(bprm);
}

static __always_inline struct procmon_event *reserve(u32 kind)
{
	struct procmon_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		__sync_fetch_and_add(&nr_lost, 1);
		return NULL;
	}
	e->kind = kind;
	e->exit_code = 0;
	e->argv_len = 0;
	e->flags = 0;
	e->pad = 0;
	e->filename[0] = 0;
	return e;
}

static __always_inline void fill_common(struct procmon_event *e, struct task_struct *p,
					struct procmon_lineage *lin)
{
	e->pid = BPF_CORE_READ(p, tgid);
	e->ppid = BPF_CORE_READ(p, real_parent, tgid);
	e->uid = BPF_CORE_READ(p, cred, uid.val);
	e->start_ns = BPF_CORE_READ(p, group_leader, start_boottime);
	e->cgroup_id = cgroup_id_of(p);
	e->ts_ns = bpf_ktime_get_ns();
	bpf_probe_read_kernel_str(e->comm, sizeof(e->comm), p->comm);
	if (lin) {
		e->lineage = *lin;
		e->flags |= PM_F_LINEAGE;
	} else {
		__builtin_memset(&e->lineage, 0, sizeof(e->lineage));
	}
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(procmon_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct procmon_lineage *lin;
	struct procmon_event *e;
	unsigned long arg_start, arg_end;
	u32 pid = p->tgid;
	u64 len;

	__sync_fetch_and_add(&nr_exec, 1);
	lin = bpf_map_lookup_elem(&lineage, &pid);
	if (!lin && !exec_wanted(p, bprm))
		return 0;

	e = reserve(PM_EXEC);
	if (!e)
		return 0;
	fill_common(e, p, lin);
	bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), BPF_CORE_READ(bprm, filename));

	arg_start = BPF_CORE_READ(p, mm, arg_start);
	arg_end = BPF_CORE_READ(p, mm, arg_end);
	len = arg_end > arg_start ? arg_end - arg_start : 0;
	if (len > PM_ARGV_LEN) {
		len = PM_ARGV_LEN;
		e->flags |= PM_F_ARGV_TRUNC;
	}
	/* The argument pages were just written by execve, so they are resident. */
	if (len > 0 && len <= PM_ARGV_LEN &&
	    !bpf_probe_read_user(e->argv, len, (void *)arg_start))
		e->argv_len = len;

	__sync_fetch_and_add(&nr_exec_passed, 1);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(procmon_fork, struct task_struct *parent, struct task_struct *child)
{
	struct procmon_lineage *lin, v;
	struct procmon_event *e;
	u32 ppid, pid;

	if (child->pid != child->tgid)
		return 0;	/* a thread */
	ppid = parent->tgid;
	pid = child->tgid;
	lin = bpf_map_lookup_elem(&lineage, &ppid);
	if (!lin) {
		/*
		 * A lineage entry under the child's pid is stale: seeded for a
		 * process that had already exited (userspace decides after the
		 * exec event, the exit may come first). With pid_max 32768 a
		 * reused pid would otherwise inherit a dead agent's lineage.
		 */
		bpf_map_delete_elem(&lineage, &pid);
		return 0;
	}
	v = *lin;
	if (bpf_map_update_elem(&lineage, &pid, &v, BPF_ANY)) {
		/* Full: userspace finds the child by a reconciling scan. */
		__sync_fetch_and_add(&nr_lineage_full, 1);
		__sync_fetch_and_add(&nr_lost, 1);
		return 0;
	}
	__sync_fetch_and_add(&nr_fork_inherited, 1);
	if (!v.cgroup_id || cgroup_id_of(child) == v.cgroup_id)
		return 0;

	e = reserve(PM_FORK);
	if (!e)
		return 0;
	fill_common(e, child, &v);
	e->ppid = ppid;
	__sync_fetch_and_add(&nr_fork_moved, 1);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/task_rename")
int BPF_PROG(procmon_rename, struct task_struct *task, const char *comm)
{
	struct procmon_lineage *lin;
	struct procmon_event *e;
	u32 pid;

	/* exec renames too; the exec event covers it. Threads' names are not
	 * the process's comm. */
	if (BPF_CORE_READ_BITFIELD_PROBED(task, in_execve) || task->pid != task->tgid)
		return 0;
	pid = task->tgid;
	lin = bpf_map_lookup_elem(&lineage, &pid);
	if (!lin && filter_on && !pass_all && !hit_comm(comm))
		return 0;

	e = reserve(PM_RENAME);
	if (!e)
		return 0;
	fill_common(e, task, lin);
	/* The tracepoint fires before the new name is copied in. */
	bpf_probe_read_kernel_str(e->comm, sizeof(e->comm), comm);
	__sync_fetch_and_add(&nr_rename, 1);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(procmon_exit, struct task_struct *p)
{
	struct procmon_lineage *lin;
	struct procmon_event *e;
	struct signal_struct *sig;
	u32 pid;
	int code;

	if (!group_dead(p))
		return 0;
	pid = p->tgid;
	lin = bpf_map_lookup_elem(&lineage, &pid);
	if (!lin && filter_on)
		return 0;

	sig = BPF_CORE_READ(p, signal);
	/* exit_group() records the status on the signal struct, not the task. */
	if (BPF_CORE_READ(sig, flags) & 0x00000004 /* SIGNAL_GROUP_EXIT */)
		code = BPF_CORE_READ(sig, group_exit_code);
	else
		code = BPF_CORE_READ(p, exit_code);

	if (code == 0) {
		struct procmon_exit *x = bpf_ringbuf_reserve(&quiet, sizeof(*x), 0);

		if (x) {
			x->kind = PM_EXIT;
			x->pid = pid;
			x->start_ns = BPF_CORE_READ(p, group_leader, start_boottime);
			__sync_fetch_and_add(&nr_exit, 1);
			__sync_fetch_and_add(&nr_exit_quiet, 1);
			bpf_ringbuf_submit(x, BPF_RB_NO_WAKEUP);
			goto out;
		}
	}
	e = reserve(PM_EXIT);
	if (e) {
		fill_common(e, p, lin);
		e->exit_code = code;
		__sync_fetch_and_add(&nr_exit, 1);
		bpf_ringbuf_submit(e, 0);
	}
out:
	if (lin)
		bpf_map_delete_elem(&lineage, &pid);
	return 0;
}
