//! Process events for agentcgd: exec and whole-process exit.
//!
//! Three sources, best first, each with the same output (`ProcEvent`):
//! 1. BPF tracepoints (`sched_process_exec`/`sched_process_exit`) over a ring
//!    buffer: pid, ppid, uid, comm, exe, bounded argv, start time, exit code.
//! 2. The netlink proc connector: pids only, enriched from /proc.
//! 3. A /proc poll: diffing successive scans (slow, last resort).
//!
//! Whatever the source, `ProcEvent::Lost` tells the consumer that some events
//! were dropped, so it can reconcile with a full /proc scan.

mod bpf;
mod netlink;
mod poll;
pub mod procfs;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use procfs::{ProcFs, ProcInfo};

/// One thing that happened to a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcEvent {
    /// A process called execve (or was found by a scan).
    Exec(ProcInfo),
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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

/// Counters shared with the monitor thread.
#[derive(Debug, Default)]
pub struct Counters {
    pub exec: AtomicU64,
    pub exit: AtomicU64,
    pub lost: AtomicU64,
}

/// Consumer of events; runs on the monitor thread, so keep it cheap.
pub type Sink = Box<dyn FnMut(ProcEvent) + Send>;

/// A running process monitor. Dropping it stops the thread.
pub struct Monitor {
    backend: Backend,
    fallback_reasons: Vec<String>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How long a source blocks before checking the stop flag.
const POLL_TICK: Duration = Duration::from_millis(100);

impl Monitor {
    /// Start the best source that works. Errors only when none does.
    pub fn start(opts: &Options, sink: Sink) -> anyhow::Result<Monitor> {
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut reasons = Vec::new();
        let mut sink = Some(sink);

        if opts.allow_bpf {
            match bpf::spawn(sink.take().unwrap(), counters.clone(), stop.clone()) {
                Ok(thread) => return Ok(Self::new(Backend::Bpf, reasons, counters, stop, thread)),
                Err((e, s)) => {
                    reasons.push(format!("bpf: {e:#}"));
                    sink = Some(s);
                }
            }
        } else {
            reasons.push("bpf: disabled".into());
        }
        if opts.allow_proc_connector {
            match netlink::spawn(sink.take().unwrap(), counters.clone(), stop.clone()) {
                Ok(thread) => {
                    return Ok(Self::new(
                        Backend::ProcConnector,
                        reasons,
                        counters,
                        stop,
                        thread,
                    ))
                }
                Err((e, s)) => {
                    reasons.push(format!("proc_connector: {e:#}"));
                    sink = Some(s);
                }
            }
        } else {
            reasons.push("proc_connector: disabled".into());
        }
        let thread = poll::spawn(
            sink.take().unwrap(),
            counters.clone(),
            stop.clone(),
            opts.poll_interval,
        )?;
        Ok(Self::new(
            Backend::ProcPoll,
            reasons,
            counters,
            stop,
            thread,
        ))
    }

    fn new(
        backend: Backend,
        fallback_reasons: Vec<String>,
        counters: Arc<Counters>,
        stop: Arc<AtomicBool>,
        thread: JoinHandle<()>,
    ) -> Self {
        Self {
            backend,
            fallback_reasons,
            counters,
            stop,
            thread: Some(thread),
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Why each better source is not the live one.
    pub fn fallback_reasons(&self) -> &[String] {
        &self.fallback_reasons
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Stop the source and wait for its thread (bounded by one poll tick).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Build an exec event from /proc, for sources that carry only a pid.
fn exec_from_proc(procfs: &ProcFs, pid: u32) -> Option<ProcEvent> {
    procfs.read(pid).ok().map(ProcEvent::Exec)
}
