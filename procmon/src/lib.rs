//! Process events for agentcgd: exec, fork into a tracked lineage, comm
//! changes and whole-process exit.
//!
//! Three sources, best first, each with the same output (`ProcEvent`):
//! 1. BPF tracepoints over a ring buffer, with the lineage of tracked
//!    processes and an exec prefilter in the kernel (see bpf/procmon.bpf.c).
//! 2. The netlink proc connector: pids only, enriched from /proc.
//! 3. A /proc poll: diffing successive scans (slow, last resort).
//!
//! No source runs a thread of its own: the consumer waits on `Monitor::as_fd`
//! in its own event loop and calls `Monitor::drain`, so one wake-up carries
//! an event from the kernel to the decision about it. Whatever the source,
//! `ProcEvent::Lost` tells the consumer that events were dropped, so it can
//! reconcile with a full /proc scan.

mod bpf;
mod netlink;
mod poll;
pub mod procfs;
#[cfg(test)]
mod props;

use std::os::fd::BorrowedFd;
use std::time::Duration;

pub use procfs::{ProcFs, ProcInfo};

/// The nearest tracked ancestor of a process, as the kernel-side lineage
/// knows it (pid and start time, so a reused pid is not mistaken for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ancestor {
    pub pid: u32,
    pub start_ticks: u64,
}

/// Why an `Exec` event was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// execve.
    Exec,
    /// The process changed its comm (prctl(PR_SET_NAME), process.title).
    Rename,
}

/// A process to classify: after execve or a comm change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    pub info: ProcInfo,
    pub origin: Origin,
    /// Its cgroup v2 id at the event, where the source knows it.
    pub cgroup_id: Option<u64>,
    /// Its nearest tracked ancestor (itself on a re-exec), where the source
    /// knows the lineage (BPF); None there means "in no tracked lineage".
    pub ancestor: Option<Ancestor>,
    /// `info.argv` was cut short; the whole of it is in /proc/PID/cmdline.
    pub argv_truncated: bool,
    /// `info.exe` is the path given to execve, not the resolved executable.
    pub exe_unresolved: bool,
    /// When the kernel saw it (CLOCK_MONOTONIC ns), where the source knows.
    pub at_ns: Option<u64>,
}

/// One thing that happened to a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcEvent {
    Exec(Exec),
    /// A child was forked. From BPF only for children of a tracked lineage
    /// that started outside its cgroup (they raced with a move); from the
    /// proc connector for every fork (`ancestor` None).
    Fork {
        pid: u32,
        ppid: u32,
        start_ticks: Option<u64>,
        ancestor: Option<Ancestor>,
    },
    /// A whole process (thread group) exited.
    Exit {
        pid: u32,
        /// Start time of the process that exited, when the source knows it.
        start_ticks: Option<u64>,
        /// Wait status ((code << 8) | signal), when the source knows it.
        exit_code: Option<i32>,
    },
    /// `n` events were dropped by the source (0: an unknown number).
    Lost(u64),
}

/// Which source is live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    Bpf,
    ProcConnector,
    ProcPoll,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Bpf => "bpf",
            Backend::ProcConnector => "proc_connector",
            Backend::ProcPoll => "proc_poll",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub allow_bpf: bool,
    pub allow_proc_connector: bool,
    /// Interval of the last-resort /proc poll.
    pub poll_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            allow_bpf: true,
            allow_proc_connector: true,
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// What the source has seen. `exec_seen` counts every exec on the host
/// where the source sees them all (BPF counts in the kernel, before the
/// prefilter); `exec` counts those delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    pub exec_seen: u64,
    /// Execs the kernel sent up (past the prefilter), BPF only.
    #[serde(default)]
    pub exec_passed: u64,
    pub exec: u64,
    pub exit: u64,
    /// ... of which were normal exits, queued without a wake-up (BPF).
    #[serde(default)]
    pub exit_quiet: u64,
    pub rename: u64,
    /// Children that joined a tracked lineage at fork (BPF).
    pub fork_inherited: u64,
    /// ... of which started outside the lineage's cgroup and were reported.
    pub fork_reported: u64,
    pub lost: u64,
    /// Forks the kernel-side lineage had no room for (reconciled by a scan).
    pub lineage_full: u64,
}

/// A key of the exec prefilter: which attribute, and the text it must equal
/// (`exact`) or start with.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PrefilterKey {
    pub kind: KeyKind,
    pub text: String,
    pub exact: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyKind {
    /// /proc/PID/comm.
    Comm,
    /// argv[0], whole or its basename.
    Argv0,
    /// Any of the executable's last `EXE_DEPTH` path components.
    Exe,
}

/// Path components of the executable the kernel looks at.
pub const EXE_DEPTH: usize = 8;

/// The longest a normal exit waits in the BPF source's quiet ring buffer
/// when nothing else wakes the reader (`Monitor::quiet_flush`).
pub const QUIET_FLUSH: Duration = Duration::from_secs(1);
/// Longest literal the kernel compares; a longer one is kept as a prefix.
pub const KEY_TEXT_MAX: usize = 31;

/// Which execs the kernel sends up besides those of tracked lineages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prefilter {
    pub keys: Vec<PrefilterKey>,
    /// Some rule cannot be reduced to keys: every exec passes (why).
    pub pass_all: Option<String>,
}

/// An entry of the kernel-side lineage: the tracked process `pid` (start
/// `start_ticks`) whose descendants belong in cgroup `cgroup_id` (0: do not
/// report children forked elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seed {
    pub ancestor: Ancestor,
    pub cgroup_id: u64,
}

enum Source {
    // Boxed: the skeleton is large and there is one Source per monitor.
    Bpf(Box<bpf::Source>),
    Netlink(netlink::Source),
    Poll(poll::Source),
}

/// A running process monitor. Not Send: it lives on the consumer's thread.
pub struct Monitor {
    source: Source,
    fallback_reasons: Vec<String>,
}

impl Monitor {
    /// Start the best source that works. Errors only when none does.
    pub fn start(opts: &Options) -> anyhow::Result<Monitor> {
        let mut reasons = Vec::new();
        if opts.allow_bpf {
            match bpf::Source::open() {
                Ok(s) => return Ok(Self::new(Source::Bpf(Box::new(s)), reasons)),
                Err(e) => reasons.push(format!("bpf: {e:#}")),
            }
        } else {
            reasons.push("bpf: disabled".into());
        }
        if opts.allow_proc_connector {
            match netlink::Source::open() {
                Ok(s) => return Ok(Self::new(Source::Netlink(s), reasons)),
                Err(e) => reasons.push(format!("proc_connector: {e:#}")),
            }
        } else {
            reasons.push("proc_connector: disabled".into());
        }
        let s = poll::Source::open(opts.poll_interval)?;
        Ok(Self::new(Source::Poll(s), reasons))
    }

    fn new(source: Source, fallback_reasons: Vec<String>) -> Self {
        Self {
            source,
            fallback_reasons,
        }
    }

    pub fn backend(&self) -> Backend {
        match self.source {
            Source::Bpf(_) => Backend::Bpf,
            Source::Netlink(_) => Backend::ProcConnector,
            Source::Poll(_) => Backend::ProcPoll,
        }
    }

    /// Why each better source is not the live one.
    pub fn fallback_reasons(&self) -> &[String] {
        &self.fallback_reasons
    }

    /// How long an event may wait without making `as_fd` readable: the
    /// BPF source queues normal exits without a wake-up (they are read
    /// with the next event that wakes the reader). A caller that tracks
    /// processes drains at least this often; `None`: every event wakes.
    pub fn quiet_flush(&self) -> Option<Duration> {
        match self.source {
            Source::Bpf(_) => Some(QUIET_FLUSH),
            Source::Netlink(_) | Source::Poll(_) => None,
        }
    }

    /// Readable when `drain` has something to deliver (but see `quiet_flush`).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.source {
            Source::Bpf(s) => s.as_fd(),
            Source::Netlink(s) => s.as_fd(),
            Source::Poll(s) => s.as_fd(),
        }
    }

    /// Deliver every event that is ready, without blocking.
    pub fn drain(&mut self, out: &mut dyn FnMut(ProcEvent)) {
        match &mut self.source {
            Source::Bpf(s) => s.drain(out),
            Source::Netlink(s) => s.drain(out),
            Source::Poll(s) => s.drain(out),
        }
    }

    /// Wait up to `timeout` for events and deliver them (for simple callers).
    pub fn poll(&mut self, timeout: Duration, out: &mut dyn FnMut(ProcEvent)) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let ready = {
            let mut fds = [PollFd::new(self.as_fd(), PollFlags::POLLIN)];
            let t = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
            poll(&mut fds, t).unwrap_or(0)
        };
        if ready > 0 || self.quiet_flush().is_some() {
            self.drain(out);
        }
    }

    pub fn stats(&self) -> Stats {
        match &self.source {
            Source::Bpf(s) => s.stats(),
            Source::Netlink(s) => s.stats,
            Source::Poll(s) => s.stats,
        }
    }

    /// A reader of the times the kernel skipped our BPF programs (BPF
    /// only): None for the other sources.
    pub fn miss_probe(&self) -> Option<MissProbe> {
        match &self.source {
            Source::Bpf(s) => s.miss_probe().ok(),
            _ => None,
        }
    }

    /// The kernel follows lineages and prefilters execs (BPF only).
    pub fn kernel_lineage(&self) -> bool {
        matches!(self.source, Source::Bpf(_))
    }

    /// Record a tracked process in the kernel-side lineage (BPF only; a
    /// no-op elsewhere).
    pub fn seed(&self, pid: u32, seed: Seed) -> anyhow::Result<()> {
        match &self.source {
            Source::Bpf(s) => s.seed(pid, seed),
            _ => Ok(()),
        }
    }

    /// Forget `pid` in the kernel-side lineage.
    pub fn unseed(&self, pid: u32) {
        if let Source::Bpf(s) = &self.source {
            s.unseed(pid)
        }
    }

    /// Install the exec prefilter and switch filtering on (BPF only).
    pub fn set_prefilter(&mut self, pf: &Prefilter) -> anyhow::Result<()> {
        match &mut self.source {
            Source::Bpf(s) => s.set_prefilter(pf),
            _ => Ok(()),
        }
    }
}

/// Build an exec event from /proc, for sources that carry only a pid.
fn exec_from_proc(procfs: &ProcFs, pid: u32) -> Option<ProcEvent> {
    procfs.read(pid).ok().map(|info| {
        ProcEvent::Exec(Exec {
            info,
            origin: Origin::Exec,
            cgroup_id: None,
            ancestor: None,
            argv_truncated: false,
            exe_unresolved: false,
            at_ns: None,
        })
    })
}

/// The kernel skips a tracing program on a CPU where it is already running
/// (its recursion guard: on a preemptible kernel, a task preempted inside
/// the exec tracer and another task's exec on that CPU): that event is
/// never seen. This reads the programs' `recursion_misses` so the caller
/// can reconcile from /proc when it rises. Send: it holds duplicated fds.
pub struct MissProbe {
    fds: Vec<std::os::fd::OwnedFd>,
}

impl MissProbe {
    /// Events skipped so far, all programs together.
    pub fn misses(&self) -> u64 {
        use std::os::fd::AsRawFd;
        self.fds
            .iter()
            .map(|fd| {
                // SAFETY: bpf_prog_info is plain old data; the kernel fills
                // at most `len` bytes of it.
                let mut info: libbpf_sys::bpf_prog_info = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
                let r = unsafe {
                    libbpf_sys::bpf_obj_get_info_by_fd(
                        fd.as_raw_fd(),
                        (&mut info as *mut libbpf_sys::bpf_prog_info).cast(),
                        &mut len,
                    )
                };
                if r == 0 {
                    info.recursion_misses
                } else {
                    0
                }
            })
            .sum()
    }
}
