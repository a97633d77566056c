//! The Supervisor: owns the scheduler's whole lifecycle on its own thread so
//! that the daemon only starts it, asks for [`Status`] and stops it.

use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::bpf::{LoadOpts, RawExit, Scheduler};
use crate::stats::{cgroup_rows, CgroupPaths, CgroupStats, GlobalStats};
use crate::Config;

use scx_utils::ScxExitKind;

// enum scx_exit_kind, as scx_utils generates it from the kernel's BTF
const EXIT_NONE: i32 = ScxExitKind::None as i32;
const EXIT_DONE: i32 = ScxExitKind::Done as i32;
const EXIT_UNREG: i32 = ScxExitKind::Unreg as i32;
const EXIT_UNREG_BPF: i32 = ScxExitKind::UnregBPF as i32;
const EXIT_UNREG_KERN: i32 = ScxExitKind::UnregKern as i32;
const EXIT_SYSRQ: i32 = ScxExitKind::SysRq as i32;
const EXIT_ERROR: i32 = ScxExitKind::Error as i32;
const EXIT_ERROR_BPF: i32 = ScxExitKind::ErrorBPF as i32;
const EXIT_ERROR_STALL: i32 = ScxExitKind::ErrorStall as i32;

/// How long the scheduler must run before its failure count is forgiven.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// Poll period of the supervising thread (bounds stop() latency).
const TICK: Duration = Duration::from_millis(50);

/// Where the kernel interfaces live (tests point these at temp dirs).
#[derive(Debug, Clone)]
pub struct Paths {
    /// `/sys/kernel/sched_ext`
    pub sched_ext: PathBuf,
    /// cgroup2 mount, `/sys/fs/cgroup`
    pub cgroup_root: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Self {
            sched_ext: PathBuf::from("/sys/kernel/sched_ext"),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        }
    }
}

/// Why the last scheduler instance left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitSummary {
    /// `error`, `error_bpf`, `stall`, `sysrq`, `unregistered`,
    /// `unregistered_bpf`, `unregistered_kernel`, `done`, `kind <n>`.
    pub kind: String,
    /// The kernel's `enum scx_exit_kind` value.
    pub kind_code: i32,
    /// The kernel's reason (e.g. "runnable task stall", "SysRq-S").
    pub reason: String,
    /// The scheduler's or kernel's message, may be empty.
    pub message: String,
    /// The CPU that raised the exit, where the kernel says.
    #[serde(default)]
    pub cpu: Option<u32>,
    /// Whether the supervisor restarts (or restarted) after it.
    pub restart: bool,
    /// Unix time of the exit, seconds.
    pub at_unix_s: u64,
}

impl ExitSummary {
    /// An error exit (stall, lockup, `scx_bpf_error()`): the kernel wrote a
    /// debug dump, which the supervisor logged.
    pub fn is_error(&self) -> bool {
        self.kind_code >= EXIT_ERROR
    }
}

/// What the supervisor is doing (serialized as one snake_case word).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedState {
    #[default]
    Starting,
    /// Our scheduler is attached.
    Running,
    /// Another sched_ext scheduler is attached.
    Foreign,
    Restarting,
    /// sched_ext is in a transient state (enabling, disabling).
    Waiting,
    /// Too many failures: the kernel's scheduler stays.
    GaveUp,
    /// No sched_ext in this kernel.
    Unsupported,
    Disabled,
    Stopped,
}

impl SchedState {
    pub fn as_str(self) -> &'static str {
        match self {
            SchedState::Starting => "starting",
            SchedState::Running => "running",
            SchedState::Foreign => "foreign",
            SchedState::Restarting => "restarting",
            SchedState::Waiting => "waiting",
            SchedState::GaveUp => "gave_up",
            SchedState::Unsupported => "unsupported",
            SchedState::Disabled => "disabled",
            SchedState::Stopped => "stopped",
        }
    }

    /// Every state, for exporters that list them all.
    pub const ALL: [SchedState; 9] = [
        SchedState::Starting,
        SchedState::Running,
        SchedState::Foreign,
        SchedState::Restarting,
        SchedState::Waiting,
        SchedState::GaveUp,
        SchedState::Unsupported,
        SchedState::Disabled,
        SchedState::Stopped,
    ];
}

impl std::fmt::Display for SchedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Snapshot of the scheduler side for `agentcgd status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    /// `sched_ext: <ops name>` while a sched_ext scheduler runs (ours, or a
    /// foreign one: see `ours`), else `cfs: <reason>`.
    pub backend: String,
    pub state: SchedState,
    /// Our scheduler is attached now.
    pub ours: bool,
    /// Times our scheduler was (re)attached after the first time.
    pub restarts: u32,
    /// Consecutive failures counted towards `max_restarts`.
    pub failures: u32,
    pub last_exit: Option<ExitSummary>,
    /// Slice in use, microseconds.
    pub slice_us: u64,
    /// Per-cgroup statistics (ours only), sorted by path.
    pub cgroups: Vec<CgroupStats>,
    pub global: GlobalStats,
}

impl Status {
    fn new(backend: String, state: SchedState, slice_us: u64) -> Self {
        Self {
            backend,
            state,
            ours: false,
            restarts: 0,
            failures: 0,
            last_exit: None,
            slice_us,
            cgroups: Vec::new(),
            global: GlobalStats::default(),
        }
    }

    /// The per-cgroup row for `path` (e.g. `/agentcg/session_high`).
    pub fn cgroup(&self, path: &str) -> Option<&CgroupStats> {
        self.cgroups.iter().find(|c| c.path == path)
    }
}

/// What to do after the scheduler exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitAction {
    /// Restart; `failure` says whether it counts towards `max_restarts`.
    Restart { failure: bool },
    /// Deliberate unregistration: stay on the kernel's scheduler.
    Stay,
}

/// Name an exit kind and decide what follows it. Errors (including stalls)
/// and sysrq-S restart with backoff and count as failures; a kernel-side
/// unregistration (e.g. CPU hotplug) or an exit whose code asks for a
/// restart (`restart_requested`: scx_utils' `UserExitInfo::should_restart()`)
/// restarts without counting; a deliberate unregistration stays down.
pub fn classify_exit(kind: i32, restart_requested: bool) -> (String, ExitAction) {
    let name = match kind {
        EXIT_NONE => "none",
        EXIT_DONE => "done",
        EXIT_UNREG => "unregistered",
        EXIT_UNREG_BPF => "unregistered_bpf",
        EXIT_UNREG_KERN => "unregistered_kernel",
        EXIT_SYSRQ => "sysrq",
        EXIT_ERROR => "error",
        EXIT_ERROR_BPF => "error_bpf",
        EXIT_ERROR_STALL => "stall",
        _ => "",
    };
    let name = if name.is_empty() {
        format!("kind {kind}")
    } else {
        name.to_string()
    };
    let action = match kind {
        EXIT_NONE | EXIT_DONE | EXIT_UNREG => ExitAction::Stay,
        EXIT_UNREG_BPF if restart_requested => ExitAction::Restart { failure: false },
        EXIT_UNREG_BPF => ExitAction::Stay,
        EXIT_UNREG_KERN => ExitAction::Restart { failure: false },
        _ => ExitAction::Restart { failure: true },
    };
    (name, action)
}

/// " on CPU <n>" where the kernel named the CPU that raised an exit.
pub fn on_cpu(cpu: Option<u32>) -> String {
    cpu.map(|c| format!(" on CPU {c}")).unwrap_or_default()
}

/// The kernel's debug dump of an error exit, one log line per dump line:
/// what each CPU ran and had queued when the scheduler was taken down is
/// what explains a stall or a lockup, and the instance holding it is gone
/// after the restart.
fn log_dump(dump: &str) {
    let lines: Vec<&str> = dump.lines().collect();
    if lines.iter().all(|l| l.trim().is_empty()) {
        return;
    }
    log::warn!("sched_ext debug dump ({} lines):", lines.len());
    for line in lines {
        log::warn!("sched_ext dump: {line}");
    }
}

/// Exponential restart backoff: `base * 2^(failures-1)`, capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// Delay before the next attempt after `failures` consecutive failures
    /// (0 failures: no delay).
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let shift = (failures - 1).min(20);
        self.base.saturating_mul(1 << shift).min(self.max)
    }
}

/// What /sys/kernel/sched_ext says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Probe {
    /// No sched_ext in this kernel.
    Missing(String),
    Disabled,
    /// A scheduler is enabled; its ops name.
    Enabled(String),
    /// enabling/disabling: transient.
    Transient(String),
}

fn probe(dir: &Path) -> Probe {
    let state = match std::fs::read_to_string(dir.join("state")) {
        Ok(s) => s.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Probe::Missing(format!(
                "kernel has no sched_ext ({} missing: CONFIG_SCHED_CLASS_EXT off)",
                dir.display()
            ))
        }
        Err(e) => {
            return Probe::Missing(format!("cannot read {}: {e}", dir.join("state").display()))
        }
    };
    match state.as_str() {
        "disabled" => Probe::Disabled,
        "enabled" => Probe::Enabled(ops_name(dir).unwrap_or_else(|| "unknown".to_string())),
        other => Probe::Transient(other.to_string()),
    }
}

fn ops_name(dir: &Path) -> Option<String> {
    let s = std::fs::read_to_string(dir.join("root/ops")).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct Shared {
    status: Mutex<Status>,
    stop: AtomicBool,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut Status)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sleep `d` in ticks; false when asked to stop meanwhile.
    fn sleep(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if self.stopping() {
                return false;
            }
            std::thread::sleep(TICK.min(end - Instant::now()));
        }
        !self.stopping()
    }
}

/// Owns the scheduler: see the module docs. Dropping it stops it too.
pub struct Supervisor {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Supervisor {
    /// Probes /sys/kernel/sched_ext; loads and attaches our scheduler if the
    /// state is `disabled`; if another scheduler runs, does not touch it and
    /// reports it (and takes over if it later leaves). Never panics and
    /// never fails the daemon: every failure becomes a `cfs: <reason>`
    /// status. With `cfg.enabled == false` this is
    /// `Supervisor::disabled("disabled by scheduler.enabled: false")`.
    pub fn start(cfg: &Config) -> Supervisor {
        Self::start_with(cfg, Paths::default())
    }

    /// [`Supervisor::start`] against other kernel paths.
    pub fn start_with(cfg: &Config, paths: Paths) -> Supervisor {
        if !cfg.enabled {
            return Self::disabled("disabled by scheduler.enabled: false");
        }
        if let Err(e) = cfg.validate() {
            return Self::disabled(&format!("invalid configuration: {e}"));
        }
        let shared = Arc::new(Shared {
            status: Mutex::new(Status::new(
                "cfs: starting".to_string(),
                SchedState::Starting,
                cfg.slice_us,
            )),
            stop: AtomicBool::new(false),
        });
        let cfg = cfg.clone();
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("agentcg-sched".to_string())
            .spawn(move || {
                let sh2 = sh.clone();
                let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    supervise(&cfg, &paths, &sh2)
                }));
                if res.is_err() {
                    sh.update(|s| {
                        s.backend = "cfs: scheduler supervisor panicked".to_string();
                        s.state = SchedState::GaveUp;
                        s.ours = false;
                    });
                }
            });
        match thread {
            Ok(t) => Supervisor {
                shared,
                thread: Some(t),
            },
            Err(e) => Self::disabled(&format!("cannot start the supervisor thread: {e}")),
        }
    }

    /// A supervisor that runs nothing and reports `cfs: <reason>`, e.g.
    /// `Supervisor::disabled("disabled by --no-scheduler")`.
    pub fn disabled(reason: &str) -> Supervisor {
        Supervisor {
            shared: Arc::new(Shared {
                status: Mutex::new(Status::new(
                    format!("cfs: {reason}"),
                    SchedState::Disabled,
                    0,
                )),
                stop: AtomicBool::new(false),
            }),
            thread: None,
        }
    }

    /// Cheap snapshot (a clone under a mutex; statistics are refreshed by
    /// the supervising thread every `stats_interval_ms`).
    pub fn status(&self) -> Status {
        match self.shared.status.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Detach our scheduler (the kernel is back on its own scheduler when
    /// this returns) and end the thread; returns within ~100 ms.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn supervise(cfg: &Config, paths: &Paths, sh: &Shared) {
    let backoff = Backoff::default();
    let opts = LoadOpts {
        slice_us: cfg.slice_us,
        watchdog_ms: 0,
    };
    let interval = Duration::from_millis(cfg.stats_interval_ms);
    let mut failures: u32 = 0;
    let mut attaches: u32 = 0;

    loop {
        if sh.stopping() {
            break;
        }
        match probe(&paths.sched_ext) {
            Probe::Missing(why) => {
                sh.update(|s| {
                    s.backend = format!("cfs: {why}");
                    s.state = SchedState::Unsupported;
                    s.ours = false;
                });
                return;
            }
            Probe::Transient(state) => {
                log::debug!("sched_ext is {state}: waiting");
                sh.update(|s| s.state = SchedState::Waiting);
                if !sh.sleep(Duration::from_millis(100)) {
                    break;
                }
                continue;
            }
            Probe::Enabled(ops) => {
                sh.update(|s| {
                    s.backend = format!("sched_ext: {ops}");
                    s.state = SchedState::Foreign;
                    s.ours = false;
                    s.cgroups.clear();
                });
                if !sh.sleep(Duration::from_secs(1)) {
                    break;
                }
                continue;
            }
            Probe::Disabled => {}
        }

        let mut obj = MaybeUninit::uninit();
        let mut sched = match Scheduler::attach(&mut obj, opts) {
            Ok(s) => s,
            Err(e) => {
                // lost a race with another scheduler: report it, no failure
                if matches!(probe(&paths.sched_ext), Probe::Enabled(_)) {
                    continue;
                }
                failures += 1;
                let why = format!("{e:#}").replace('\n', " ");
                log::warn!("sched_ext scheduler failed to load ({failures}): {why}");
                if failures > cfg.max_restarts {
                    sh.update(|s| {
                        s.backend = format!(
                            "cfs: gave up after {failures} failures to load the scheduler: {why}"
                        );
                        s.state = SchedState::GaveUp;
                        s.failures = failures;
                        s.ours = false;
                    });
                    return;
                }
                let delay = backoff.delay(failures);
                sh.update(|s| {
                    s.backend = format!(
                        "cfs: scheduler failed to load, retrying in {} ms: {why}",
                        delay.as_millis()
                    );
                    s.state = SchedState::Restarting;
                    s.failures = failures;
                    s.ours = false;
                });
                if !sh.sleep(delay) {
                    break;
                }
                continue;
            }
        };

        let started = Instant::now();
        if attaches > 0 {
            sh.update(|s| s.restarts += 1);
        }
        attaches += 1;
        let ops = ops_name(&paths.sched_ext).unwrap_or_else(|| crate::OPS_NAME.to_string());
        log::info!("sched_ext scheduler {ops} attached");
        let mut cg_paths = CgroupPaths::scan(&paths.cgroup_root);
        let refresh = |sched: &Scheduler, cg_paths: &mut CgroupPaths, s: &mut Status| {
            let raw = sched.cgroup_stats();
            if raw.iter().any(|r| cg_paths.get(r.cgid).is_none()) {
                *cg_paths = CgroupPaths::scan(&paths.cgroup_root);
            }
            s.cgroups = cgroup_rows(&raw, cg_paths);
            s.global = sched.global_stats().into();
        };
        sh.update(|s| {
            s.backend = format!("sched_ext: {ops}");
            s.state = SchedState::Running;
            s.ours = true;
            s.failures = failures;
            refresh(&sched, &mut cg_paths, s);
        });

        // monitor until it exits or we are asked to stop
        let mut last_stats = Instant::now();
        let exit: Option<RawExit> = loop {
            if sh.stopping() {
                break None;
            }
            if sched.exited() {
                break Some(sched.exit_info().unwrap_or(RawExit {
                    kind: EXIT_ERROR,
                    exit_code: 0,
                    reason: "unknown".to_string(),
                    msg: String::new(),
                    cpu: None,
                    dump: String::new(),
                    restart: false,
                }));
            }
            if last_stats.elapsed() >= interval {
                sh.update(|s| refresh(&sched, &mut cg_paths, s));
                last_stats = Instant::now();
            }
            std::thread::sleep(TICK);
        };

        let Some(exit) = exit else {
            sched.detach();
            drop(sched);
            sh.update(|s| {
                s.backend = "cfs: scheduler stopped by agentcgd".to_string();
                s.state = SchedState::Stopped;
                s.ours = false;
            });
            return;
        };
        // keep the final statistics, then let go of the dead instance
        sh.update(|s| refresh(&sched, &mut cg_paths, s));
        drop(sched);

        if started.elapsed() >= STABLE_AFTER {
            failures = 0;
        }
        let (kind, action) = classify_exit(exit.kind, exit.restart);
        let restart = !matches!(action, ExitAction::Stay);
        if let ExitAction::Restart { failure: true } = action {
            failures += 1;
        }
        let giving_up = restart && failures > cfg.max_restarts;
        let summary = ExitSummary {
            kind: kind.clone(),
            kind_code: exit.kind,
            reason: exit.reason.clone(),
            message: exit.msg.clone(),
            cpu: exit.cpu,
            restart: restart && !giving_up,
            at_unix_s: unix_now(),
        };
        let detail = if exit.msg.is_empty() {
            exit.reason.clone()
        } else {
            format!("{} ({})", exit.reason, exit.msg)
        };
        log::warn!(
            "sched_ext scheduler exited: {kind}: {detail}{}",
            on_cpu(exit.cpu)
        );
        log_dump(&exit.dump);

        if !restart || giving_up {
            sh.update(|s| {
                s.backend = if giving_up {
                    format!("cfs: gave up after {failures} failures; last exit {kind}: {detail}")
                } else {
                    format!("cfs: scheduler unregistered ({kind}: {detail})")
                };
                s.state = if giving_up {
                    SchedState::GaveUp
                } else {
                    SchedState::Stopped
                };
                s.ours = false;
                s.failures = failures;
                s.last_exit = Some(summary);
            });
            return;
        }

        let delay = backoff.delay(failures);
        sh.update(|s| {
            s.backend = format!(
                "cfs: scheduler exited ({kind}: {detail}), restarting in {} ms",
                delay.as_millis()
            );
            s.state = SchedState::Restarting;
            s.ours = false;
            s.failures = failures;
            s.last_exit = Some(summary);
        });
        if !sh.sleep(delay) {
            break;
        }
    }
    sh.update(|s| {
        if s.state != SchedState::Unsupported && s.state != SchedState::GaveUp {
            s.state = SchedState::Stopped;
            if !s.backend.starts_with("cfs:") || s.ours {
                s.backend = "cfs: scheduler stopped by agentcgd".to_string();
            }
            s.ours = false;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff::default();
        assert_eq!(b.delay(0), Duration::ZERO);
        assert_eq!(b.delay(1), Duration::from_millis(500));
        assert_eq!(b.delay(2), Duration::from_secs(1));
        assert_eq!(b.delay(3), Duration::from_secs(2));
        assert_eq!(b.delay(10), Duration::from_secs(30));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn exit_policy() {
        assert_eq!(
            classify_exit(EXIT_UNREG, false),
            ("unregistered".into(), ExitAction::Stay)
        );
        assert_eq!(
            classify_exit(EXIT_ERROR_STALL, false),
            ("stall".into(), ExitAction::Restart { failure: true })
        );
        assert_eq!(
            classify_exit(EXIT_SYSRQ, false),
            ("sysrq".into(), ExitAction::Restart { failure: true })
        );
        assert_eq!(
            classify_exit(EXIT_UNREG_KERN, true).1,
            ExitAction::Restart { failure: false }
        );
        assert_eq!(classify_exit(EXIT_UNREG_BPF, false).1, ExitAction::Stay);
        assert_eq!(
            classify_exit(EXIT_UNREG_BPF, true).1,
            ExitAction::Restart { failure: false }
        );
        assert_eq!(classify_exit(4242, false).0, "kind 4242");
    }

    #[test]
    fn exit_summary_of_an_older_daemon_reads_without_a_cpu() {
        // A state file written before the exit's CPU was recorded.
        let old = r#"{"kind":"stall","kind_code":1026,"reason":"runnable task stall",
            "message":"","restart":true,"at_unix_s":1}"#;
        let e: ExitSummary = serde_json::from_str(old).unwrap();
        assert_eq!(e.cpu, None);
        assert!(e.is_error());
        let sysrq = ExitSummary {
            kind: "sysrq".into(),
            kind_code: EXIT_SYSRQ,
            cpu: Some(1),
            ..e
        };
        assert!(
            !sysrq.is_error(),
            "sysrq-S is no error: the kernel writes no dump"
        );
    }

    #[test]
    fn disabled_reports_reason() {
        let s = Supervisor::disabled("disabled by --no-scheduler");
        let st = s.status();
        assert_eq!(st.backend, "cfs: disabled by --no-scheduler");
        assert_eq!(st.state, SchedState::Disabled);
        assert!(!st.ours);
        s.stop();

        let cfg = Config {
            enabled: false,
            ..Config::default()
        };
        let st = Supervisor::start(&cfg).status();
        assert_eq!(st.backend, "cfs: disabled by scheduler.enabled: false");
    }

    fn wait_for(s: &Supervisor, state: SchedState) -> Status {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let st = s.status();
            if st.state == state || Instant::now() > end {
                return st;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn no_sched_ext_is_cfs() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths {
            sched_ext: dir.path().join("sched_ext"),
            cgroup_root: dir.path().to_path_buf(),
        };
        let s = Supervisor::start_with(&Config::default(), paths);
        let st = wait_for(&s, SchedState::Unsupported);
        assert_eq!(st.state, SchedState::Unsupported);
        assert!(
            st.backend.starts_with("cfs: kernel has no sched_ext"),
            "{}",
            st.backend
        );
        let t = Instant::now();
        s.stop();
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn foreign_scheduler_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let sx = dir.path().join("sched_ext");
        std::fs::create_dir_all(sx.join("root")).unwrap();
        std::fs::write(sx.join("state"), "enabled\n").unwrap();
        std::fs::write(sx.join("root/ops"), "rusty_1.0\n").unwrap();
        let paths = Paths {
            sched_ext: sx,
            cgroup_root: dir.path().to_path_buf(),
        };
        let s = Supervisor::start_with(&Config::default(), paths);
        let st = wait_for(&s, SchedState::Foreign);
        assert_eq!(st.backend, "sched_ext: rusty_1.0");
        assert!(!st.ours);
        let t = Instant::now();
        s.stop();
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn status_serializes() {
        let st = Supervisor::disabled("x").status();
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["backend"], "cfs: x");
        assert!(v["cgroups"].is_array());
        assert!(v["global"]["fallbacks"].is_number());
        assert!(v["last_exit"].is_null());
    }
}
