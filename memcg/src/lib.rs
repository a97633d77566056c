//! Priority memory protection for agentcgd's session tree
//! (`ROOT/{session_high,session_low}`).
//!
//! One interface ([`Controller`]), two backends, picked at start:
//!
//! 1. **bpf** — struct_ops on `memcg_bpf_ops` (out-of-tree RFC series
//!    "mm: memcontrol: Add BPF hooks for memory controller"):
//!    `below_low`/`below_min` protect session_high, `get_high_delay_ms`
//!    throttles session_low while session_high is under pressure (detected
//!    in BPF). Only where the kernel BTF has the type with the expected
//!    members ([`bpf::detect`]); no released kernel does.
//! 2. **fallback** — event driven, from cgroup files: a PSI trigger on
//!    session_high's memory.pressure and inotify on the memory.events of the
//!    root and both sessions. Under pressure it raises session_high's
//!    memory.low to its working set and sets session_low's memory.high just
//!    under its usage; when the pressure window ends it restores
//!    memory.low and releases memory.high in steps (see [`machine`]).
//!
//! Either way the OOM killer is steered (never used by us): placed processes
//! get `Config::oom_score_adj(high)` from the placer, and memory.oom.group of
//! each session follows the config. Kills inside the tree are counted from
//! memory.events per session and delivered as [`MemEvent::OomKill`].

pub mod bpf;
mod config;
mod fallback;
pub mod machine;

pub use config::{BackendChoice, Config};

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// The cgroup directories the controller works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sessions {
    /// The agentcg root (its memory.events count kills of the whole tree).
    pub root: PathBuf,
    /// ROOT/session_high.
    pub high: PathBuf,
    /// ROOT/session_low.
    pub low: PathBuf,
}

impl Sessions {
    /// `root`, `root/session_high`, `root/session_low`.
    pub fn under(root: impl Into<PathBuf>) -> Sessions {
        let root = root.into();
        Sessions {
            high: root.join("session_high"),
            low: root.join("session_low"),
            root,
        }
    }
}

/// Which part of the tree an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionKind {
    High,
    Low,
    /// The root itself (a process directly in ROOT, or a count the
    /// sessions' files did not explain).
    Root,
}

/// What the controller tells the daemon (from the controller's thread).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum MemEvent {
    /// memory.events oom_kill of `session` rose by `count` (the kernel
    /// killed that many processes there). The daemon attributes it to the
    /// family of a tracked process of that session that died by SIGKILL.
    OomKill { session: SessionKind, count: u64 },
    /// memory.events oom rose without (yet) a kill.
    Oom { session: SessionKind, count: u64 },
    /// session_high's pressure window started (`true`) or ended.
    Pressure { active: bool },
    /// session_low's memory.high as set now (None: restored to original).
    Throttle { low_memory_high: Option<u64> },
    /// The backend changed at run time (e.g. BPF attach failed, fallback
    /// took over) or stopped; `backend` is the new status line.
    Backend { backend: String },
}

/// Per-session counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PerSession {
    pub high: u64,
    pub low: u64,
    pub root: u64,
}

impl PerSession {
    fn add(&mut self, s: SessionKind, n: u64) {
        match s {
            SessionKind::High => self.high += n,
            SessionKind::Low => self.low += n,
            SessionKind::Root => self.root += n,
        }
    }
}

/// Which backend runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    Bpf,
    Fallback,
    #[default]
    Off,
}

/// BPF backend counters (from the program's .bss).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BpfCounters {
    /// Pressure noted, any source (each extends the window).
    pub pressure_events: u64,
    /// session_high's tasks entering memcg-limit or direct reclaim.
    pub reclaim_events: u64,
    /// session_high grew by `bpf_burst_mb` within `window_ms`.
    pub burst_events: u64,
    /// session_high charge-batch refills seen by its get_high_delay_ms.
    pub high_charges: u64,
    /// below_low/below_min answered "protected".
    pub protect_calls: u64,
    /// session_low's get_high_delay_ms returned `bpf_delay_ms`.
    pub throttle_calls: u64,
    /// handle_cgroup_online/offline calls (cgroups created/removed below
    /// the sessions, which inherit the ops).
    pub online: u64,
    pub offline: u64,
}

/// The controller's state, for `agentcgd status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Status {
    /// `bpf: memcg_bpf_ops` | `fallback: psi+memory.events (<why not bpf>)`
    /// | `off: <reason>`.
    pub backend: String,
    pub kind: BackendKind,
    /// Why the better backend does not run (fallback) or why off.
    pub reason: Option<String>,
    /// session_high is inside a pressure window now.
    pub pressure: bool,
    /// Pressure signals received (PSI triggers, memory.events rises).
    pub pressure_signals: u64,
    /// Pressure windows entered from idle; each throttles session_low.
    pub throttle_episodes: u64,
    /// memory.low we hold on session_high now (None: original in place).
    pub high_memory_low: Option<u64>,
    /// memory.high we hold on session_low now (None: original in place).
    pub low_memory_high: Option<u64>,
    /// oom_kill increments seen in memory.events, per session.
    pub oom_kill: PerSession,
    /// oom increments seen in memory.events, per session.
    pub oom: PerSession,
    /// PSI trigger armed on session_high's memory.pressure.
    pub psi: bool,
    /// Last write/read error (the controller keeps going).
    pub last_error: Option<String>,
    pub bpf: Option<BpfCounters>,
}

impl Status {
    /// `off: <reason>` (e.g. "disabled by --no-memcg").
    pub fn disabled(reason: &str) -> Status {
        Status::off(format!("disabled ({reason})"))
    }

    pub(crate) fn off(reason: String) -> Status {
        Status {
            backend: format!("off: {reason}"),
            kind: BackendKind::Off,
            reason: Some(reason),
            ..Default::default()
        }
    }
}

pub(crate) type Sink = Box<dyn FnMut(MemEvent) + Send>;

/// The running memory controller. Dropping it stops it like [`Controller::stop`].
pub struct Controller {
    status: Arc<Mutex<Status>>,
    /// The BPF backend's counters, read live by status() (None: no BPF).
    bpf_view: Arc<Mutex<Option<bpf::CounterView>>>,
    stop_w: Option<std::os::fd::OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Controller {
    /// Picks the best backend and starts it on its own thread:
    /// BPF struct_ops if `cfg.backend` allows it and the kernel BTF has
    /// `memcg_bpf_ops` with the expected members; else the PSI +
    /// memory.events fallback; else `off: <reason>` (e.g. no memory
    /// controller on the sessions, or `cfg.enabled` false).
    ///
    /// Never fails: problems become the status' reason. `sink` receives
    /// [`MemEvent`]s, called from the controller's thread.
    pub fn start(
        sessions: Sessions,
        cfg: &Config,
        sink: Box<dyn FnMut(MemEvent) + Send>,
    ) -> Controller {
        if !cfg.enabled {
            return Controller::idle(Status::disabled("memcg.enabled: false"));
        }
        if let Err(e) = cfg.validate() {
            return Controller::idle(Status::off(format!("invalid config: {e}")));
        }
        if let Err(e) = check_memory_controller(&sessions.high, &sessions.low) {
            return Controller::idle(Status::off(e));
        }
        let bpf_verdict = match cfg.backend {
            BackendChoice::Fallback => Err("memcg.backend: fallback".to_string()),
            _ => bpf::detect(),
        };
        if let (Err(e), BackendChoice::Bpf) = (&bpf_verdict, cfg.backend) {
            return Controller::idle(Status::off(format!("memcg.backend: bpf but {e}")));
        }
        let status = Arc::new(Mutex::new(Status::default()));
        let (stop_r, stop_w) = match fallback::pipe() {
            Ok(p) => p,
            Err(e) => return Controller::idle(Status::off(format!("pipe: {e}"))),
        };
        let st = status.clone();
        let bpf_view = Arc::new(Mutex::new(None));
        let view = bpf_view.clone();
        let cfg = cfg.clone();
        let thread = std::thread::Builder::new()
            .name("memcg".into())
            .spawn(move || fallback::run(sessions, cfg, bpf_verdict, st, view, stop_r, sink))
            .expect("spawn memcg thread");
        // Wait until the thread has set the backend line, so that status()
        // right after start() is meaningful. Loading and verifying the BPF
        // backend takes well under a second natively but several under
        // emulation (TCG), hence the long bound.
        for _ in 0..5000 {
            if !status.lock().unwrap().backend.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        Controller {
            status,
            bpf_view,
            stop_w: Some(stop_w),
            thread: Some(thread),
        }
    }

    /// A controller that does nothing and reports `status`.
    pub fn idle(status: Status) -> Controller {
        Controller {
            status: Arc::new(Mutex::new(status)),
            bpf_view: Arc::new(Mutex::new(None)),
            stop_w: None,
            thread: None,
        }
    }

    /// A snapshot of the state.
    pub fn status(&self) -> Status {
        let mut st = self.status.lock().unwrap().clone();
        if let Some(v) = self.bpf_view.lock().unwrap().as_ref() {
            st.bpf = Some(v.read());
        }
        st
    }

    /// Stops the thread and restores every file it changed (memory.low,
    /// memory.high, memory.oom.group back to what they were); detaches BPF.
    /// Returns in well under a second.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(w) = self.stop_w.take() {
            let _ = nixless_write(&w);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn nixless_write(fd: &std::os::fd::OwnedFd) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::fd::AsFd;
    let f = fd.as_fd().try_clone_to_owned()?;
    std::fs::File::from(f).write_all(b"x")
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Is the memory controller enabled for the session cgroups (do they have
/// memory.* files)? Err is the reason.
pub fn check_memory_controller(
    high: &std::path::Path,
    low: &std::path::Path,
) -> Result<(), String> {
    for d in [high, low] {
        let cg = cgroupfs::Cgroup::new(d);
        if !d.is_dir() {
            return Err(format!("{} does not exist", d.display()));
        }
        if !cg.has("memory.current") {
            return Err(format!(
                "no memory controller in {} (not in the parent's cgroup.subtree_control)",
                d.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_reports_off_reasons() {
        let t = tempfile::tempdir().unwrap();
        let s = Sessions::under(t.path());
        let c = Controller::start(
            s.clone(),
            &Config {
                enabled: false,
                ..Default::default()
            },
            Box::new(|_| {}),
        );
        assert_eq!(c.status().kind, BackendKind::Off);
        assert!(
            c.status().backend.starts_with("off: disabled"),
            "{}",
            c.status().backend
        );
        let c = Controller::start(s, &Config::default(), Box::new(|_| {}));
        let st = c.status();
        assert!(
            st.backend.starts_with("off: ") && st.backend.contains("does not exist"),
            "{}",
            st.backend
        );
        c.stop();
        assert_eq!(
            Status::disabled("--no-memcg").backend,
            "off: disabled (--no-memcg)"
        );
    }

    #[test]
    fn memevent_json() {
        let e = MemEvent::OomKill {
            session: SessionKind::Low,
            count: 2,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"event":"oom_kill","session":"low","count":2}"#
        );
    }

    #[test]
    fn memory_controller_check() {
        let t = tempfile::tempdir().unwrap();
        let (h, l) = (t.path().join("session_high"), t.path().join("session_low"));
        assert!(check_memory_controller(&h, &l)
            .unwrap_err()
            .contains("does not exist"));
        std::fs::create_dir_all(&h).unwrap();
        std::fs::create_dir_all(&l).unwrap();
        assert!(check_memory_controller(&h, &l)
            .unwrap_err()
            .contains("no memory controller"));
        std::fs::write(h.join("memory.current"), "0").unwrap();
        std::fs::write(l.join("memory.current"), "0").unwrap();
        check_memory_controller(&h, &l).unwrap();
    }
}
