//! The daemon: wires events -> classifier -> placer -> tracker -> status.
//!
//! One thread owns all state and runs one epoll loop over the process-event
//! source, a signalfd, the policy directory's inotify fd and a mailbox
//! (eventfd + channel) for other threads' messages, so an exec event wakes
//! the thread that decides about it and nothing else. Periodic work (the
//! state file, statistics, the tree check) runs on the publisher's thread.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use procmon::{Ancestor, Exec, Monitor, Origin, ProcEvent, ProcFs, ProcInfo, Seed};

use crate::cgroup::{cgroup_of, CgroupError, MoveError, SetupReport, Target, Tree};
use crate::classify::{
    inherit, own_match, protected, user_priority, AgentKey, Decision, Lineage, Reason,
};
use crate::config::Config;
use crate::leaves::{Leaves, Reaped};
use crate::memory::Memory;
use crate::observe::{Observer, Settings, Watch};
use crate::policy::{FamilyName, PolicySet, Priority};
use crate::publish::{Publisher, Sources};
use crate::sdnotify::Notifier;
use crate::state::{
    now_ms, AgentStatus, Counters, FamilyStatus, OomRecord, PolicyStatus, ProcmonStatus, State,
    Tracked, Tracker,
};

/// Which process-event source to use (`--events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventSource {
    /// Best available: BPF, then the proc connector, then /proc polling.
    Auto,
    /// BPF exec/fork/exit tracepoints with lineage and a prefilter in the
    /// kernel (needs root, BTF).
    Bpf,
    /// The netlink proc connector (pids only; the rest read from /proc).
    ProcConnector,
    /// A /proc scan every second (misses processes shorter than that).
    Poll,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub root: PathBuf,
    pub config: PathBuf,
    pub policies: PathBuf,
    pub state: PathBuf,
    pub no_scheduler: bool,
    pub no_memcg: bool,
    pub dry_run: bool,
    pub events: EventSource,
}

/// Messages from other threads to the daemon thread.
pub enum Msg {
    Mem(memcg::MemEvent),
    /// The session cgroups are gone (found by the publisher).
    TreeLost(String),
    /// Scan /proc and place what is missing (the publisher saw the
    /// sched_ext scheduler attach: execs during the switch were seen lost).
    Reconcile(&'static str),
    /// `agentcgd run` asks to be moved (see launch.rs).
    Launch(crate::launch::Request),
    /// The policy loader thread read and parsed the policies (loader.rs).
    Loaded(Box<crate::loader::Loaded>),
}

/// Sends messages to the daemon thread and wakes it.
#[derive(Clone)]
pub struct Mailbox {
    tx: mpsc::Sender<Msg>,
    wake: Arc<EventFd>,
}

impl Mailbox {
    pub fn send(&self, m: Msg) -> Result<(), mpsc::SendError<Msg>> {
        self.tx.send(m)?;
        let _ = self.wake.write(1);
        Ok(())
    }
}

/// At most this often a changed state is handed to the publisher.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(200);
/// Nice value of the daemon's threads (see `run`).
const DAEMON_NICE: i32 = -10;
/// Bound on the ancestor walk when looking for a tracked ancestor.
const MAX_ANCESTRY: usize = 64;
/// Tracked processes that exited, kept so their surviving descendants can
/// still be attributed through the kernel-side lineage.
const MAX_DEPARTED: usize = 4096;
/// How long an entry taken out of the tracker waits for its exit event:
/// the event was queued before the scan or the move that found the process
/// gone, so it comes within one pass of the event loop.
const DEPARTING_FOR: Duration = Duration::from_secs(10);
/// Placements are logged one by one at debug level, summed up at info at
/// most this often.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

const TOKEN_PROC: u64 = 1;
const TOKEN_SIGNAL: u64 = 2;
const TOKEN_MAIL: u64 = 3;
const TOKEN_LEAVES: u64 = 5;

/// Whether a placement also places what the process forked before it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Walk {
    Children,
    No,
}

/// What a move found.
enum Moved {
    /// Moved; the process has this many threads (for the children walk).
    Yes {
        threads: u32,
    },
    /// Still there but exiting (a zombie, or past PF_EXITING): nothing
    /// moves, and its exit event is still to come or pending.
    Exiting,
    Vanished,
    Reused,
    TreeLost,
    Failed,
}

struct Daemon {
    opts: Options,
    cfg: Config,
    monitor: Monitor,
    /// The kernel follows lineages: an exec without an ancestor is in none.
    trust_kernel_lineage: bool,
    /// Some rule looks at the resolved executable.
    needs_exe: bool,
    /// Untracked pid -> (start time, its nearest tracked ancestor), for the
    /// sources without kernel lineage.
    lineage_memo: HashMap<u32, (u64, Option<Lineage>)>,
    /// Tracked processes that exited: (pid, start) -> their lineage.
    departed: HashMap<(u32, u64), Lineage>,
    departed_order: VecDeque<(u32, u64)>,
    /// Entries taken out of the tracker because their process was gone or
    /// dying (a /proc scan, a failed move) while its exit event may still
    /// be on its way: the exit is handled with them (its status is what
    /// attributes an OOM kill). Kept DEPARTING_FOR at most.
    departing: HashMap<(u32, u64), (Instant, Tracked)>,
    /// Tracked processes that died by SIGKILL lately, for OOM attribution.
    /// ... with their agent as it was then (its cwd is gone after exit).
    recent_kills: Vec<(Instant, Tracked, reactions::Agent)>,
    policies: PolicySet,
    tree: Tree,
    /// session_high, session_low.
    targets: [Target; 2],
    /// Per-agent leaves (None: `sessions.per_agent: false`, or dry-run).
    leaves: Option<Leaves>,
    procfs: ProcFs,
    tracker: Tracker,
    counters: Counters,
    placed_by_family: std::collections::BTreeMap<String, u64>,
    /// Placements since the last info summary, by family.
    summary: std::collections::BTreeMap<String, u64>,
    summary_at: Instant,
    self_pid: u32,
    state: State,
    dirty: bool,
    /// The memory controller (restarted when the tree is rebuilt).
    mem: Arc<Memory>,
    /// Activity and accounting (told of agent exits).
    observer: Arc<Observer>,
    /// Reactive actions; the daemon only hands it typed triggers.
    reactions: Arc<reactions::Engine>,
    /// Agent root processes (placed by their family's own rule), by pid:
    /// start time and what a reaction needs once the process is gone (cwd).
    agents: std::collections::HashMap<u32, (u64, reactions::Agent)>,
}

/// Build the sessions and return where to move processes.
fn setup_tree(
    tree: &Tree,
    cfg: &Config,
    dry_run: bool,
) -> anyhow::Result<(SetupReport, [Target; 2])> {
    let setup = if dry_run {
        SetupReport {
            warnings: vec!["dry-run: the cgroup tree is not created or changed".into()],
            ..SetupReport::default()
        }
    } else {
        let mut r = tree
            .setup([
                (Priority::High, cfg.sessions.high.cpu_weight),
                (Priority::Low, cfg.sessions.low.cpu_weight),
            ])
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if cfg.sessions.per_agent {
            let strays = tree
                .prepare_leaves(&mut r)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if strays > 0 {
                r.warnings.push(format!(
                    "{strays} processes sat directly in the sessions: moved to their `{}` leaves",
                    crate::cgroup::UNSORTED
                ));
            }
        }
        r
    };
    let target = |p: Priority| -> anyhow::Result<Target> {
        if dry_run {
            // Nothing is created: ids of 0 never match a real cgroup.
            let dir = tree.session_dir(p);
            return Ok(Target {
                procs: dir.join("cgroup.procs"),
                file: None,
                rel: crate::cgroup::rel_path(&dir),
                id: 0,
            });
        }
        tree.target(p)
            .map_err(|e: CgroupError| anyhow::anyhow!("{e}"))
    };
    Ok((setup, [target(Priority::High)?, target(Priority::Low)?]))
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    log::info!("agentcgd {} starting", crate::VERSION);
    let (cfg, cfg_source) = Config::load_with(&opts.config, crate::trust::FileTrust::RootOnly)
        .map_err(anyhow::Error::msg)?;
    let policies = PolicySet::load_dir_with(&opts.policies, crate::trust::FileTrust::RootOnly)
        .map_err(|e| anyhow::anyhow!("{e}\nrefusing to start with a broken policy"))?
        .with_shared_tools(cfg.tools.clone(), &opts.config);
    if policies.families.is_empty() {
        log::warn!(
            "no policy files in {}: nothing will be placed",
            opts.policies.display()
        );
    }
    let tree = Tree::open(&opts.root).map_err(|e: CgroupError| anyhow::anyhow!("{e}"))?;

    // Placement latency is mostly wake-up latency on a busy host; the
    // daemon uses little CPU, so run it at nice -10. Set before any thread
    // starts: threads inherit it.
    // SAFETY: setpriority on the calling thread has no memory effects.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, DAEMON_NICE) } != 0 {
        log::warn!(
            "cannot raise priority to nice {DAEMON_NICE}: {}",
            std::io::Error::last_os_error()
        );
    }

    // Block the signals we handle before any thread starts, so that every
    // thread inherits the mask and they arrive only through the signalfd.
    let mut mask = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        mask.add(s);
    }
    mask.thread_block().context("block signals")?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("signalfd")?;
    let wake = Arc::new(
        EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC).context("eventfd")?,
    );
    let (tx, rx) = mpsc::channel::<Msg>();
    let mailbox = Mailbox {
        tx,
        wake: wake.clone(),
    };

    let (setup, targets) = setup_tree(&tree, &cfg, opts.dry_run)?;
    if cgroupfs::mount_option("favordynmods") == Some(false) {
        // Measured in docs/benchmarks-placement.md: 6-14 ms for some moves.
        log::info!(
            "cgroup2 is mounted without favordynmods: a move into a cgroup may wait \
             for an RCU grace period (milliseconds); the mount option favordynmods \
             avoids that at some cost to forks and exits (docs/benchmarks-placement.md)"
        );
    }
    for m in &setup.missing {
        log::warn!("controller missing: {m}");
    }
    for w in &setup.warnings {
        log::warn!("{w}");
    }
    log::info!(
        "cgroup tree {} ready: controllers [{}], weights [{}]",
        tree.root.display(),
        setup.enabled.join(" "),
        setup.weights.join(" ")
    );
    if cfg.sessions.per_agent {
        log::info!(
            "agent leaves claim their session's memory protection: {}",
            if tree.recursive_prot {
                "by the kernel (cgroup2 memory_recursiveprot), no memory.min/low of their own"
            } else {
                "memory.min/low max (cgroup2 is mounted without memory_recursiveprot)"
            }
        );
    }

    let sched = Arc::new(if opts.no_scheduler {
        scheduler::Supervisor::disabled("disabled by --no-scheduler")
    } else if !cfg.scheduler.enabled {
        scheduler::Supervisor::disabled("disabled by scheduler.enabled: false")
    } else if opts.dry_run {
        scheduler::Supervisor::disabled("dry-run: scheduler not loaded")
    } else {
        scheduler::Supervisor::start(&cfg.scheduler)
    });
    log::info!("scheduler: {}", sched.status().backend);

    let mem = Arc::new(if opts.no_memcg {
        Memory::idle(memcg::Status::disabled("disabled by --no-memcg"))
    } else if opts.dry_run {
        Memory::idle(memcg::Status::disabled("dry-run: memory files not changed"))
    } else {
        Memory::start(tree.root.clone(), &cfg.memcg, mailbox.clone())
    });
    log::info!("memcg: {}", mem.status().backend);

    let monitor = start_monitor(opts.events)?;
    log::info!(
        "process events from {}{}",
        monitor.backend(),
        if monitor.fallback_reasons().is_empty() {
            String::new()
        } else {
            format!(
                " (not better because: {})",
                monitor.fallback_reasons().join("; ")
            )
        }
    );
    // Policies are read and parsed on the loader's thread: this one keeps
    // placing while a reload parses.
    let loader = {
        let mb = mailbox.clone();
        crate::loader::Loader::spawn(
            opts.policies.clone(),
            opts.config.clone(),
            crate::trust::FileTrust::RootOnly,
            Box::new(move |l| {
                let _ = mb.send(Msg::Loaded(Box::new(l)));
            }),
        )
        .context("start the policy loader")?
    };
    let reactions = Arc::new(start_reactions(&cfg, &opts, &tree, &monitor));
    {
        let mb = mailbox.clone();
        let sock = crate::launch::socket_path(&opts.state);
        match crate::launch::serve(
            &sock,
            Box::new(move |r| {
                let _ = mb.send(Msg::Launch(r));
            }),
        ) {
            Ok(()) => log::info!("`agentcgd run` requests on {}", sock.display()),
            Err(e) => log::warn!(
                "cannot serve {} ({e}): `agentcgd run` works for root only",
                sock.display()
            ),
        }
    }

    let observer = Arc::new(
        Observer::spawn(Settings {
            activity: activity::Options {
                enabled: cfg.activity.enabled && !opts.dry_run,
                idle_threshold: Duration::from_millis(cfg.activity.idle_threshold_ms),
                ..activity::Options::default()
            },
            accounting: cfg.accounting.clone(),
            idle_after: idle_thresholds(&cfg.reactions),
            reactions: reactions.clone(),
        })
        .context("start the observers")?,
    );
    let metrics = match &cfg.metrics {
        Some(m) if m.enabled => match crate::metrics::serve(m.listen.0) {
            Ok(h) => {
                // Port 0 in the config picks one: say which.
                log::debug!("metrics bound to {}", h.local_addr());
                Some(h)
            }
            Err(e) => {
                log::warn!("metrics: cannot listen on {}: {e}", m.listen.0);
                None
            }
        },
        _ => None,
    };
    let publisher = Publisher::spawn(Sources {
        path: opts.state.clone(),
        sessions: [Priority::High, Priority::Low]
            .map(|p| (p, tree.session_dir(p)))
            .to_vec(),
        sched: sched.clone(),
        mem: mem.clone(),
        reactions: reactions.clone(),
        mailbox: mailbox.clone(),
        observer: observer.clone(),
        metrics,
        misses: monitor.miss_probe(),
    })
    .context("start the state writer")?;

    let needs_exe = policies_need_exe(&policies);
    let leaves = if cfg.sessions.per_agent && !opts.dry_run {
        Some(
            Leaves::new(tree.clone(), cfg.sessions.max_agents)
                .context("inotify for the agent leaves")?,
        )
    } else {
        None
    };
    let mut d = Daemon {
        state: State {
            version: crate::VERSION.to_string(),
            daemon_pid: std::process::id(),
            running: true,
            dry_run: opts.dry_run,
            started_at_ms: now_ms(),
            root: tree.root.display().to_string(),
            cgroup: setup,
            policy: PolicyStatus {
                dir: opts.policies.display().to_string(),
                config: cfg_source,
                loaded_at_ms: now_ms(),
                last_error: None,
            },
            activity: "starting".into(),
            ..State::default()
        },
        opts,
        cfg,
        monitor,
        trust_kernel_lineage: false,
        needs_exe,
        lineage_memo: HashMap::new(),
        departed: HashMap::new(),
        departed_order: VecDeque::new(),
        departing: HashMap::new(),
        recent_kills: Vec::new(),
        policies,
        tree,
        targets,
        leaves,
        procfs: ProcFs::default(),
        tracker: Tracker::default(),
        counters: Counters::default(),
        placed_by_family: Default::default(),
        summary: Default::default(),
        summary_at: Instant::now(),
        self_pid: std::process::id(),
        dirty: true,
        reactions: reactions.clone(),
        mem: mem.clone(),
        observer,
        agents: Default::default(),
    };
    // The event source runs before the scan, so no exec falls in a gap;
    // the kernel's filter goes on once every tracked process is seeded,
    // and what queued up meanwhile is decided by walking /proc.
    d.adopt_previous_state();
    d.reconcile("start-up scan");
    d.install_prefilter();
    d.drain_events();
    d.trust_kernel_lineage = d.monitor.kernel_lineage();
    // The first state is written here, before READY=1 (the writer thread
    // takes over with the next snapshot).
    let first = d.snapshot();
    if let Err(e) = first.write(&d.opts.state) {
        log::warn!("cannot write state file {}: {e}", d.opts.state.display());
    }
    publisher.offer(first);
    // Ready for systemd (Type=notify): the tree exists, events flow and
    // what ran before us is placed.
    let mut notify = Notifier::from_env();
    notify.ready(&format!(
        "{} processes tracked; events from {}",
        d.tracker.len(),
        d.monitor.backend()
    ));

    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll")?;
    let add = |fd: std::os::fd::BorrowedFd<'_>, token: u64| {
        epoll
            .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, token))
            .context("epoll_ctl")
    };
    add(d.monitor.as_fd(), TOKEN_PROC)?;
    add(sigfd.as_fd(), TOKEN_SIGNAL)?;
    add(wake.as_fd(), TOKEN_MAIL)?;
    if let Some(l) = &d.leaves {
        add(l.as_fd(), TOKEN_LEAVES)?;
    }
    // Whatever arrived between the start-up drain and the registration
    // above may already have sent its wake-up to nobody: take it now.
    d.drain_events();

    // Every other thread is running by now: only this one gets the slice.
    short_slice_for_this_thread();

    let mut events = [EpollEvent::empty(); 8];
    let mut last_publish = Instant::now();
    let quiet_flush = d.monitor.quiet_flush();
    'run: loop {
        // What the last step opened and moved nothing into is watched or
        // given up before anything else (startup's scan included).
        if let Some(l) = &mut d.leaves {
            l.settle_unarmed();
        }
        notify.watchdog_tick();
        let mut wait: Option<Duration> = None;
        if let Some(w) = notify.watchdog_interval() {
            wait = Some(wait.map_or(w, |x| x.min(w)));
        }
        if d.dirty {
            let due = PUBLISH_INTERVAL.saturating_sub(last_publish.elapsed());
            wait = Some(wait.map_or(due, |w| w.min(due)));
        }
        if let Some(t) = d.leaves.as_ref().and_then(|l| l.retry_at()) {
            let due = t.saturating_duration_since(Instant::now());
            wait = Some(wait.map_or(due, |w| w.min(due)));
        }
        // A tracked process's normal exit wakes nobody (procmon's quiet
        // ring): it is read with the next wake-up, at the latest this one.
        if let Some(f) = quiet_flush.filter(|_| !d.tracker.is_empty()) {
            wait = Some(wait.map_or(f, |w| w.min(f)));
        }
        let timeout = match wait {
            None => EpollTimeout::NONE,
            // Round up so a wake-up is never early.
            Some(w) => {
                EpollTimeout::try_from(w + Duration::from_micros(999)).unwrap_or(EpollTimeout::MAX)
            }
        };
        let n = match epoll.wait(&mut events, timeout) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => bail!("epoll_wait: {e}"),
        };
        let ready = |t: u64| events[..n].iter().any(|e| e.data() == t);
        // Placements first: what else woke us (leaf removals above all)
        // waits for the events that came with it, the quiet exits included
        // (an emptied leaf's notice comes after its last process's exit).
        if ready(TOKEN_PROC) || quiet_flush.is_some() {
            d.drain_events();
        }
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_SIGNAL => {
                    while let Ok(Some(si)) = sigfd.read_signal() {
                        match Signal::try_from(si.ssi_signo as i32) {
                            Ok(Signal::SIGHUP) => loader.request("SIGHUP"),
                            Ok(sig) => {
                                log::info!("{sig}: stopping; placed processes stay where they are");
                                break 'run;
                            }
                            Err(_) => {}
                        }
                    }
                }
                TOKEN_MAIL => {
                    let _ = wake.read();
                    while let Ok(m) = rx.try_recv() {
                        d.handle_msg(m);
                    }
                }
                TOKEN_LEAVES => d.reap_leaves(),
                _ => {}
            }
        }
        if d.leaves
            .as_ref()
            .and_then(|l| l.retry_at())
            .is_some_and(|t| t <= Instant::now())
        {
            d.reap_leaves();
        }
        if d.dirty && last_publish.elapsed() >= PUBLISH_INTERVAL {
            if publisher.offer(d.snapshot()) {
                d.dirty = false;
            }
            last_publish = Instant::now();
            d.log_summary(false);
        }
    }
    notify.stopping();
    d.log_summary(true);
    d.state.running = false;
    // Nobody answers `agentcgd run` any more: say so with ENOENT, not a
    // refused connection to a stale socket.
    let sock = crate::launch::socket_path(&d.opts.state);
    if let Err(e) = std::fs::remove_file(&sock) {
        if e.kind() != std::io::ErrorKind::NotFound {
            log::warn!("cannot remove {}: {e}", sock.display());
        }
    }
    let last = d.snapshot();
    // Stops the event source (the BPF programs detach with it).
    drop(d);
    publisher.finish(last);
    // Detach the scheduler: the kernel is back on its own one when we exit.
    if let Ok(sched) = Arc::try_unwrap(sched) {
        sched.stop();
    }
    mem.stop();
    if let Ok(reactions) = Arc::try_unwrap(reactions) {
        reactions.stop();
    }
    Ok(())
}

/// The reactions engine, told which triggers this daemon cannot deliver.
fn start_reactions(
    cfg: &Config,
    opts: &Options,
    tree: &Tree,
    monitor: &Monitor,
) -> reactions::Engine {
    use reactions::TriggerKind;
    let mut unavailable = Vec::new();
    if !cfg.activity.enabled {
        unavailable.push((
            TriggerKind::Idle,
            "activity.enabled: false (the activity monitor is off)".to_string(),
        ));
    }
    if monitor.backend() == procmon::Backend::ProcPoll {
        unavailable.push((
            TriggerKind::Crash,
            "the /proc poll event source reports no exit status".to_string(),
        ));
    }
    reactions::Engine::start(
        cfg.reactions.clone(),
        reactions::Options {
            dry_run: opts.dry_run,
            pressure_file: Some(tree.session_dir(Priority::High).join("memory.pressure")),
            pressure_session: Priority::High.session().to_string(),
            unavailable,
            ..Default::default()
        },
    )
}

fn start_monitor(source: EventSource) -> anyhow::Result<Monitor> {
    let opts = procmon::Options {
        allow_bpf: matches!(source, EventSource::Auto | EventSource::Bpf),
        allow_proc_connector: matches!(source, EventSource::Auto | EventSource::ProcConnector),
        ..procmon::Options::default()
    };
    let mon = Monitor::start(&opts)?;
    let wanted = match source {
        EventSource::Auto => None,
        EventSource::Bpf => Some(procmon::Backend::Bpf),
        EventSource::ProcConnector => Some(procmon::Backend::ProcConnector),
        EventSource::Poll => Some(procmon::Backend::ProcPoll),
    };
    if let Some(w) = wanted {
        if mon.backend() != w {
            bail!(
                "--events {w} is not available: {}",
                mon.fallback_reasons().join("; ")
            );
        }
    }
    Ok(mon)
}

fn policies_need_exe(set: &PolicySet) -> bool {
    fn block(b: &crate::policy::MatchBlock) -> bool {
        b.exe.is_some() || b.parent.as_deref().is_some_and(block)
    }
    set.families
        .iter()
        .any(|f| f.matches.iter().any(block) || f.tools.iter().any(|t| t.matches.iter().any(block)))
}

/// CLOCK_MONOTONIC in ns, the clock of bpf_ktime_get_ns().
fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// pidfd_open(2): a handle on one process that a reused pid cannot alias.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: plain syscall; on success the fd is ours (nix has no wrapper).
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: a fresh descriptor we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The process behind `pidfd` has not exited.
fn pidfd_alive(pidfd: &OwnedFd) -> bool {
    // SAFETY: signal 0 only checks; the pointer argument may be NULL.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    rc == 0
}

/// The placing thread's EEVDF slice. An exec event wakes it from the
/// exec'ing task, nearly always onto that task's CPU; with the default
/// slice (3 ms) the woken thread waited there until the new program
/// slept, about 300 us on the development host, nice -10 or not. A slice
/// this short gives it an earlier deadline, so it preempts at once (Linux
/// 6.12+; older kernels ignore the value). 100 us is the kernel's minimum.
const PLACING_SLICE_NS: u64 = 100_000;

/// Give the calling thread [`PLACING_SLICE_NS`] as its slice, keeping its
/// nice value.
fn short_slice_for_this_thread() {
    /// `struct sched_attr` (include/uapi/linux/sched/types.h).
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
        util_min: u32,
        util_max: u32,
    }
    // SAFETY: getpriority only reads. For the calling thread it cannot
    // fail, so -1 is a nice value here, not an error.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        flags: 0,
        nice,
        priority: 0,
        runtime: PLACING_SLICE_NS,
        deadline: 0,
        period: 0,
        util_min: 0,
        util_max: 0,
    };
    // SAFETY: a valid sched_attr for the calling thread (pid 0); the
    // kernel reads `size` bytes of it.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if rc != 0 {
        log::warn!(
            "cannot shorten the placing thread's slice: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The process behind `pidfd` has exited (a zombie included): its pidfd
/// polls readable.
fn pidfd_exited(pidfd: &OwnedFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| n > 0)
}

impl Daemon {
    fn target(&self, p: Priority) -> &Target {
        &self.targets[if p == Priority::High { 0 } else { 1 }]
    }

    fn drain_events(&mut self) {
        let mut batch = Vec::new();
        self.monitor.drain(&mut |ev| batch.push(ev));
        for ev in batch {
            self.handle(ev);
        }
    }

    fn handle(&mut self, ev: ProcEvent) {
        match ev {
            ProcEvent::Exec(x) => self.on_exec(x),
            ProcEvent::Fork {
                pid,
                ppid,
                start_ticks,
                ancestor,
            } => self.on_fork(pid, ppid, start_ticks, ancestor),
            ProcEvent::Exit {
                pid,
                start_ticks,
                exit_code,
            } => {
                self.lineage_memo.remove(&pid);
                let t = self
                    .tracker
                    .remove(pid, start_ticks)
                    .or_else(|| self.take_departing(pid, start_ticks));
                if let Some(t) = t {
                    self.dirty = true;
                    self.remember_departed(&t);
                    self.note_agent_exit(&t, exit_code);
                    // An agent's root process died by a signal or non-zero.
                    let root =
                        placed_by(&t.reason).is_none() && !matches!(t.reason, Reason::Adopted);
                    if let (true, Some(ws)) = (root, exit_code) {
                        let exit = reactions::Exit::from_wait_status(ws);
                        if exit.is_crash() {
                            let agent = self.agent_of(&t);
                            self.reactions
                                .trigger(reactions::Trigger::Crash { agent, exit });
                        }
                    }
                    if exit_code.is_some_and(|c| c & 0x7f == libc::SIGKILL) {
                        self.note_kill(t);
                    }
                }
                if self
                    .agents
                    .get(&pid)
                    .is_some_and(|(s, _)| start_ticks.is_none_or(|st| st == *s))
                {
                    self.agents.remove(&pid);
                }
            }
            ProcEvent::Lost(n) => {
                log::warn!("{n} process events lost: reconciling from /proc");
                self.reconcile("lost events");
            }
        }
    }

    fn handle_msg(&mut self, m: Msg) {
        match m {
            Msg::Mem(ev) => self.handle_mem(ev),
            Msg::TreeLost(why) => self.rebuild_tree(&why),
            Msg::Reconcile(why) => self.reconcile(why),
            Msg::Launch(req) => self.handle_launch(req),
            Msg::Loaded(l) => self.reload(*l),
        }
    }

    fn remember_departed(&mut self, t: &Tracked) {
        let key = (t.pid, t.start_ticks);
        if self.departed.insert(key, as_lineage(t)).is_none() {
            self.departed_order.push_back(key);
        }
        while self.departed_order.len() > MAX_DEPARTED {
            if let Some(k) = self.departed_order.pop_front() {
                self.departed.remove(&k);
            }
        }
    }

    /// The tracked ancestor the kernel named, also after it exited.
    fn lineage_of(&self, a: Ancestor) -> Option<Lineage> {
        self.tracker
            .get(a.pid, a.start_ticks)
            .map(as_lineage)
            .or_else(|| self.departed.get(&(a.pid, a.start_ticks)).cloned())
    }

    /// The nearest tracked process among `p` (on re-exec) and its ancestors,
    /// by walking /proc. The walk's result is remembered for every untracked
    /// ancestor it passed (until that ancestor exits or the tracker gains an
    /// entry), so a parent that spawns many unmatched children is walked once.
    fn walk_lineage(&mut self, p: &ProcInfo) -> Option<Lineage> {
        if !self.policies.families.iter().any(|f| f.descendants) {
            return None;
        }
        if let Some(t) = self.tracker.get(p.pid, p.start_ticks) {
            return Some(as_lineage(t));
        }
        let mut walked = Vec::new();
        let mut pid = p.ppid;
        let found = loop {
            if pid <= 1 || walked.len() >= MAX_ANCESTRY {
                break None;
            }
            if let Some(t) = self.tracker.get_pid(pid) {
                // An ancestor started before its descendant; otherwise the
                // pid was reused and the chain is broken.
                break (t.start_ticks <= p.start_ticks).then(|| as_lineage(t));
            }
            if let Some((start, lin)) = self.lineage_memo.get(&pid) {
                break if *start <= p.start_ticks {
                    lin.clone()
                } else {
                    None
                };
            }
            let stat = self.procfs.stat(pid).ok()?;
            if stat.start_ticks > p.start_ticks {
                break None;
            }
            walked.push((pid, stat.start_ticks));
            pid = stat.ppid;
        };
        for (pid, start) in walked {
            self.lineage_memo.insert(pid, (start, found.clone()));
        }
        found
    }

    /// Decide for one process, given its lineage where already known; with
    /// the decision, the agent instance it belongs to.
    fn decide(
        &mut self,
        info: &ProcInfo,
        known: Option<Option<Lineage>>,
    ) -> Option<(Decision, Option<AgentKey>)> {
        let parents = self.procfs.clone();
        if let Some(d) = own_match(&self.policies, info, &parents) {
            // An agent root may pick its session (AGENTCG_PRIORITY).
            let d = user_priority(d, info, &self.cfg.user_priority, Path::new("/proc"));
            // Strict trust: a name is not enough for session_high.
            match crate::trust::gate(
                &self.cfg.trust,
                &self.policies,
                &d,
                info,
                Path::new("/proc"),
            ) {
                Ok(()) => {
                    let agent = self.agent_for_match(info, &d, known);
                    return Some((d, agent));
                }
                Err(why) => self.refuse_untrusted(info, &d, &why),
            }
        }
        let lin = match known {
            Some(lin) => lin,
            None => self.walk_lineage(info),
        }?;
        let d = inherit(&self.policies, info, &lin, &parents)?;
        Some((d, lin.agent))
    }

    /// A process that matched its family's own rule starts an agent
    /// instance, unless it runs inside one of the same family (a re-exec,
    /// a nested match): then it stays in that one.
    fn agent_for_match(
        &mut self,
        info: &ProcInfo,
        d: &Decision,
        known: Option<Option<Lineage>>,
    ) -> Option<AgentKey> {
        self.leaves.as_ref()?;
        let lin = match known {
            Some(lin) => lin,
            None => self.walk_lineage(info),
        };
        match lin {
            Some(l) if l.family == d.family && l.agent.is_some() => l.agent,
            _ => Some(AgentKey {
                pid: info.pid,
                start_ticks: info.start_ticks,
            }),
        }
    }

    /// Where a process of `family` in session `p` goes: its agent's leaf
    /// with per-agent leaves, the session otherwise.
    fn place_target(
        &mut self,
        p: Priority,
        agent: Option<AgentKey>,
        family: &FamilyName,
    ) -> Result<Target, CgroupError> {
        let weight = self
            .policies
            .family(family.as_str())
            .and_then(|f| f.cpu_weight)
            .unwrap_or(100);
        match &mut self.leaves {
            // An agent's leaf that cannot be made (mkdir refused) still
            // leaves the family's shared one: placed, if not alone.
            Some(l) => l.target(p, agent, family, weight, now_ms()).or_else(|e| {
                if agent.is_none() {
                    return Err(e);
                }
                log::warn!("{e}: using the shared leaf of {family}");
                l.target(p, None, family, weight, now_ms())
            }),
            None => Ok(self.target(p).clone()),
        }
    }

    /// A leaf could not be had: the tree may be gone.
    fn no_target(&mut self, pid: u32, p: Priority, e: CgroupError) {
        if !self.tree.session_dir(p).is_dir() {
            self.rebuild_tree("a session cgroup vanished while creating a leaf");
        } else {
            self.counters.errors += 1;
            log::warn!("cannot place pid {pid}: {e}");
        }
    }

    /// Remove the agent leaves that became empty.
    fn reap_leaves(&mut self) {
        let Some(l) = &mut self.leaves else { return };
        let mut r = Reaped::default();
        for wd in l.notices() {
            // An exec that came meanwhile is placed before the next leaf's
            // read (a removal is housekeeping, a placement is not).
            self.drain_events();
            let Some(l) = &mut self.leaves else { return };
            l.settle(wd, &mut r);
        }
        if let Some(l) = &mut self.leaves {
            r.removed += l.remove_due();
        }
        if r.removed > 0 || !r.agents_gone.is_empty() {
            self.dirty = true;
        }
    }

    /// Strict trust refused a match: counted, logged at debug, and at
    /// info once per executable (bounded), so imitation is visible without
    /// a log line per exec.
    fn refuse_untrusted(&mut self, info: &ProcInfo, d: &Decision, why: &str) {
        self.counters.untrusted_refused += 1;
        self.dirty = true;
        log::debug!(
            "pid {} ({}): matched {} but not promoted (strict trust): {why}",
            info.pid,
            info.comm,
            d.family
        );
        if crate::trust::first_refusal(&info.exe) {
            log::info!(
                "strict trust: {} matched family {} but gets no session_high: {why}",
                info.exe,
                d.family
            );
        }
    }

    fn on_exec(&mut self, x: Exec) {
        let Exec {
            mut info,
            origin,
            cgroup_id,
            ancestor,
            argv_truncated,
            exe_unresolved,
            at_ns,
        } = x;
        // Complete facts before deciding: the whole argv, the resolved
        // executable. A vanished process needs no decision.
        if argv_truncated {
            match self.procfs.cmdline(info.pid) {
                Ok(argv) => info.argv = argv,
                Err(e) => {
                    log::debug!("pid {}: cmdline: {e}: vanished", info.pid);
                    self.counters.vanished += 1;
                    return;
                }
            }
        }
        if exe_unresolved && (self.needs_exe || origin == Origin::Rename) {
            match self.procfs.exe(info.pid) {
                Ok(exe) => info.exe = exe,
                Err(e) => {
                    log::debug!("pid {}: exe: {e}: vanished", info.pid);
                    self.counters.vanished += 1;
                    return;
                }
            }
        }
        // A process already tracked (a re-exec, or a child the children
        // walk placed after the kernel stamped this event) is its own
        // lineage: the event's ancestor may predate that decision.
        let known = if let Some(me) = self.tracker.get(info.pid, info.start_ticks) {
            Some(Some(as_lineage(me)))
        } else if let Some(a) = ancestor {
            Some(self.lineage_of(a))
        } else if self.trust_kernel_lineage {
            Some(None)
        } else {
            None
        };
        let Some((decision, agent)) = self.decide(&info, known) else {
            // Re-exec into something no rule keeps: forget it, leave it be.
            if self
                .tracker
                .remove(info.pid, Some(info.start_ticks))
                .is_some()
            {
                self.monitor.unseed(info.pid);
                self.dirty = true;
            }
            return;
        };
        let moved_before = self.counters.placed;
        self.apply(info, decision, agent, cgroup_id, Walk::Children);
        if let (Some(at), true) = (at_ns, self.counters.placed > moved_before) {
            let us = monotonic_ns().saturating_sub(at) / 1000;
            self.state.placement_latency.record(us);
        }
    }

    /// A child forked by a tracked lineage outside its cgroup (BPF), or any
    /// fork (proc connector): bring it to its lineage's session.
    fn on_fork(&mut self, pid: u32, ppid: u32, start: Option<u64>, ancestor: Option<Ancestor>) {
        let lin = match ancestor {
            Some(a) => self.lineage_of(a),
            None => self.tracker.get_pid(ppid).map(as_lineage),
        };
        let Some(lin) = lin else { return };
        if self.opts.dry_run {
            return;
        }
        let target = match self.place_target(lin.priority, lin.agent, &lin.family) {
            Ok(t) => t,
            Err(e) => return self.no_target(pid, lin.priority, e),
        };
        if ancestor.is_none() && cgroup_of(pid).as_deref() == Some(target.rel.as_str()) {
            return;
        }
        let Some(start) = start.or_else(|| self.procfs.start_ticks(pid)) else {
            return;
        };
        match self.move_to(pid, start, &target) {
            Moved::Yes { threads } => {
                self.counters.forks_moved += 1;
                self.dirty = true;
                log::debug!("moved forked pid {pid} (of pid {ppid}) to {}", target.rel);
                self.place_children(pid, threads, &lin);
            }
            Moved::TreeLost => self.rebuild_tree("a session cgroup vanished during a move"),
            _ => {}
        }
    }

    /// Track a placed process, also in the kernel-side lineage.
    fn track(&mut self, t: Tracked, cgroup_id: u64) {
        let (pid, start) = (t.pid, t.start_ticks);
        self.seed(t, cgroup_id);
        self.forget_if_exited(pid, start);
    }

    /// Track a process about to be moved, also in the kernel-side lineage;
    /// [`Daemon::move_to`] then finds whether it had exited (with the one
    /// read of its stat that the move needs anyway).
    fn seed(&mut self, t: Tracked, cgroup_id: u64) {
        // A memoized walk passed every ancestor of the process it started
        // from, so a newly tracked process changes a memoized answer only
        // if the memo holds it (it was walked as an untracked ancestor).
        if self
            .lineage_memo
            .get(&t.pid)
            .is_some_and(|(start, _)| *start == t.start_ticks)
        {
            self.lineage_memo.clear();
        }
        let seed = Seed {
            ancestor: Ancestor {
                pid: t.pid,
                start_ticks: t.start_ticks,
            },
            cgroup_id,
        };
        if let Err(e) = self.monitor.seed(t.pid, seed) {
            // Its forks are still found by the children walk and by scans.
            log::warn!("{e:#}");
            self.counters.errors += 1;
        }
        self.tracker.insert(t);
    }

    /// A process that had exited before its lineage was seeded (a zombie
    /// the children walk found, a tool that ran for a millisecond) sends
    /// no exit event any more: it would stay tracked, and its kernel-side
    /// lineage entry would wait for a reused pid. Checked after the seed,
    /// so an exit from here on is reported. (The soak run found ~2,800
    /// dead tools tracked after 20 minutes.)
    fn forget_if_exited(&mut self, pid: u32, start: u64) {
        let gone = match self.procfs.stat(pid) {
            Ok(s) => s.start_ticks != start || s.exiting(),
            Err(_) => true,
        };
        if gone {
            self.untrack(pid, start);
        }
    }

    /// Move `pid` (the process that started at `start`) into `target`. A
    /// pidfd held from before the identity check until after the write
    /// makes sure the write moved that process and not a reused pid.
    fn move_to(&mut self, pid: u32, start: u64, target: &Target) -> Moved {
        let Some(pidfd) = pidfd_open(pid) else {
            log::debug!(
                "pid {pid}: pidfd_open: {}: vanished",
                std::io::Error::last_os_error()
            );
            self.counters.vanished += 1;
            return Moved::Vanished;
        };
        let stat = match self.procfs.stat(pid) {
            // Seeded before this read: an exit from here on is reported.
            Ok(s) if s.start_ticks == start && s.exiting() => {
                log::debug!("pid {pid} exited before its move");
                self.counters.vanished += 1;
                return Moved::Exiting;
            }
            Ok(s) if s.start_ticks == start => s,
            Ok(_) => {
                self.counters.pid_reused += 1;
                log::debug!("pid {pid} was reused before placement; skipped");
                return Moved::Reused;
            }
            Err(e) => {
                log::debug!("pid {pid}: stat: {e}: vanished");
                self.counters.vanished += 1;
                return Moved::Vanished;
            }
        };
        let admitted = target.admit(pid);
        // Alive right after the write: the pid was still its, so the write
        // moved it (asked before the leaf's watch, which takes a while).
        let moved = admitted.is_ok() && pidfd_alive(&pidfd);
        if admitted.is_ok() {
            // A new agent leaf is watched from now on (see Leaves::arm).
            if let Some(l) = &mut self.leaves {
                l.arm(target.id, || pidfd_exited(&pidfd));
            }
        }
        match admitted {
            Ok(()) if moved => Moved::Yes {
                threads: stat.threads,
            },
            r @ (Ok(()) | Err(MoveError::Vanished)) => {
                log::debug!("pid {pid}: gone during the move ({r:?})");
                self.counters.vanished += 1;
                Moved::Vanished
            }
            Err(MoveError::CgroupGone(e)) => {
                log::error!("cannot place pid {pid}: {}: {e}", target.procs.display());
                Moved::TreeLost
            }
            Err(MoveError::Io(e)) => {
                self.counters.errors += 1;
                log::warn!("cannot place pid {pid} in {}: {e}", target.rel);
                Moved::Failed
            }
        }
    }

    /// Carry out a decision. `cgroup_id` is where the event saw the process;
    /// `walk` says whether to place what it forked before the move here
    /// (the children walk itself walks, so it says No).
    fn apply(
        &mut self,
        info: ProcInfo,
        decision: Decision,
        agent: Option<AgentKey>,
        cgroup_id: Option<u64>,
        walk: Walk,
    ) {
        if let Some(why) = protected(&info, self.self_pid) {
            log::debug!("not moving pid {} ({}): {why}", info.pid, info.comm);
            self.counters.protected_skipped += 1;
            return;
        }
        let target = if self.opts.dry_run {
            self.target(decision.priority).clone()
        } else {
            match self.place_target(decision.priority, agent, &decision.family) {
                Ok(t) => t,
                Err(e) => return self.no_target(info.pid, decision.priority, e),
            }
        };
        if matches!(decision.reason, Reason::Rule { .. }) {
            self.note_agent(&info, decision.family.as_str());
        }
        let tracked = Tracked {
            pid: info.pid,
            start_ticks: info.start_ticks,
            family: decision.family.clone(),
            priority: decision.priority,
            reason: decision.reason.clone(),
            comm: info.comm.clone(),
            placed_at_ms: now_ms(),
            agent,
        };
        self.dirty = true;
        if self.opts.dry_run {
            if self
                .tracker
                .get(info.pid, info.start_ticks)
                .map(|t| t.priority)
                != Some(decision.priority)
            {
                log::info!(
                    "dry-run: would place pid {} ({}) in {} [{}: {}]",
                    info.pid,
                    info.comm,
                    decision.priority.session(),
                    decision.family,
                    decision.reason
                );
            }
            self.track(tracked, 0);
            return;
        }
        let already = match cgroup_id {
            Some(id) => id == target.id,
            None => cgroup_of(info.pid).as_deref() == Some(target.rel.as_str()),
        };
        if already {
            // Placed before (a descendant that inherited its cgroup, or a
            // re-exec): nothing moves, but it is tracked for what it forks.
            self.counters.already_placed += 1;
            if self
                .tracker
                .get(info.pid, info.start_ticks)
                .map(|t| t.priority)
                != Some(decision.priority)
            {
                self.steer_oom(info.pid, decision.priority);
            }
            self.track(tracked, target.id);
            return;
        }
        // A process tracked before this decision is seeded in the kernel:
        // its exit is reported whatever happens here.
        let before = self.tracker.get(info.pid, info.start_ticks).cloned();
        // Seed the lineage before the move: a fork from here on is either
        // inherited in the kernel or already in the children list below.
        self.seed(tracked, target.id);
        // A leaf made for this move and left empty (nothing moved) is
        // given up when this step ends (Leaves::settle_unarmed).
        match self.move_to(info.pid, info.start_ticks, &target) {
            Moved::Yes { threads } => {
                self.counters.placed += 1;
                *self
                    .placed_by_family
                    .entry(decision.family.to_string())
                    .or_default() += 1;
                *self.summary.entry(decision.family.to_string()).or_default() += 1;
                log::debug!(
                    "placed pid {} ({}) in {} [{}: {}]",
                    info.pid,
                    info.comm,
                    decision.priority.session(),
                    decision.family,
                    decision.reason
                );
                self.steer_oom(info.pid, decision.priority);
                if walk == Walk::Children {
                    let lin = Lineage::of(info.pid, &decision, agent);
                    self.place_children(info.pid, threads, &lin);
                }
            }
            Moved::TreeLost => {
                self.untrack(info.pid, info.start_ticks);
                self.rebuild_tree("a session cgroup vanished during a move");
            }
            Moved::Exiting if before.is_some() => {
                // Its exit event (pending, or still to come: it stays
                // seeded) takes the entry out, as it was, with the exit
                // status an OOM kill is attributed by.
                if let Some(prev) = before {
                    self.tracker.insert(prev);
                }
            }
            _ => {
                // Exiting before it was ever tracked, or gone.
                self.untrack(info.pid, info.start_ticks);
            }
        }
    }

    fn untrack(&mut self, pid: u32, start: u64) {
        if let Some(t) = self.tracker.remove(pid, Some(start)) {
            self.monitor.unseed(pid);
            self.park_departing(t);
        }
    }

    /// Keep an entry taken out of the tracker for the exit event that may
    /// still come for it (see `departing`).
    fn park_departing(&mut self, t: Tracked) {
        const MAX: usize = 4096;
        if self.departing.len() >= MAX / 2 {
            self.departing
                .retain(|_, (at, _)| at.elapsed() < DEPARTING_FOR);
        }
        if self.departing.len() < MAX {
            self.departing
                .insert((t.pid, t.start_ticks), (Instant::now(), t));
        }
    }

    /// The parked entry of this exiting process, if any (and recent).
    fn take_departing(&mut self, pid: u32, start: Option<u64>) -> Option<Tracked> {
        let key = match start {
            Some(s) => (pid, s),
            None => *self.departing.keys().find(|(p, _)| *p == pid)?,
        };
        let (at, t) = self.departing.remove(&key)?;
        (at.elapsed() < DEPARTING_FOR).then_some(t)
    }

    /// Place what `pid` forked before it was moved: each child is decided
    /// as a descendant of `lin` (or by its own rule) and moved with it, and
    /// so on down the tree.
    fn place_children(&mut self, pid: u32, threads: u32, lin: &Lineage) {
        let mut stack = vec![(pid, threads, lin.clone())];
        let mut seen = 0usize;
        while let Some((parent, threads, lin)) = stack.pop() {
            for child in self.procfs.children(parent, threads) {
                seen += 1;
                if seen > 100_000 {
                    return;
                }
                let Ok(info) = self.procfs.read(child) else {
                    continue;
                };
                let Some((d, agent)) = self.decide(&info, Some(Some(lin.clone()))) else {
                    continue;
                };
                let child_lin = Lineage::of(info.pid, &d, agent);
                let threads = self.procfs.stat(info.pid).map(|s| s.threads).unwrap_or(1);
                let placed_before = self.counters.placed;
                self.apply(info, d, agent, None, Walk::No);
                if self.counters.placed > placed_before {
                    self.counters.subtree_placed += 1;
                }
                stack.push((child, threads, child_lin));
            }
        }
    }

    /// The session cgroups are gone: say so, build them again and put every
    /// tracked process back.
    fn rebuild_tree(&mut self, why: &str) {
        if self.opts.dry_run {
            return;
        }
        log::error!(
            "cgroup tree {} lost ({why}): rebuilding it and placing tracked processes again",
            self.tree.root.display()
        );
        self.counters.tree_rebuilds += 1;
        self.state.tree_error = Some(format!("{why} (at {} ms)", now_ms()));
        self.dirty = true;
        // mkdir fails with EBUSY while the kernel still tears down the
        // removed cgroup of the same name: retry briefly (a rare repair,
        // not periodic work); the state writer reports the loss again
        // every second until the tree is back.
        let mut tries = 0;
        let built = loop {
            match setup_tree(&self.tree, &self.cfg, false) {
                Ok(b) => break b,
                Err(e) if tries < 20 => {
                    log::debug!("rebuilding the cgroup tree: {e:#}; retrying");
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(25));
                }
                Err(e) => {
                    log::error!("cannot rebuild the cgroup tree: {e:#}");
                    self.counters.errors += 1;
                    return;
                }
            }
        };
        self.state.cgroup = built.0;
        self.targets = built.1;
        if let Some(l) = &mut self.leaves {
            l.forget_all();
        }
        let all: Vec<Tracked> = self.tracker.iter().cloned().collect();
        let mut again = 0;
        for t in all {
            let target = match self.place_target(t.priority, t.agent, &t.family) {
                Ok(t) => t,
                Err(e) => {
                    log::warn!("pid {}: {e}", t.pid);
                    continue;
                }
            };
            if let Err(e) = self.monitor.seed(
                t.pid,
                Seed {
                    ancestor: Ancestor {
                        pid: t.pid,
                        start_ticks: t.start_ticks,
                    },
                    cgroup_id: target.id,
                },
            ) {
                log::warn!("{e:#}");
            }
            if let Moved::Yes { threads } = self.move_to(t.pid, t.start_ticks, &target) {
                again += 1;
                self.place_children(t.pid, threads, &as_lineage(&t));
            }
        }
        log::info!("cgroup tree rebuilt; {again} tracked processes placed again");
        // The memory controller's settings, PSI trigger and attachment went
        // with the old sessions: start it again, off this thread (loading
        // its BPF backend takes a while).
        let mem = self.mem.clone();
        let _ = std::thread::Builder::new()
            .name("memcg-restart".into())
            .spawn(move || mem.restart());
        self.reconcile("tree rebuilt");
    }

    /// `agentcgd run`: move the asking process itself (the kernel named it)
    /// into its session before it execs its command.
    fn handle_launch(&mut self, req: crate::launch::Request) {
        let reply = self.launch(&req);
        let _ = req.reply.send(reply);
    }

    fn launch(&mut self, req: &crate::launch::Request) -> crate::launch::Reply {
        use crate::launch::Reply;
        let fam = req.ask.family.as_ref();
        let defined = fam.and_then(|f| self.policies.family(f.as_str()));
        let priority = req
            .ask
            .priority
            .or(defined.map(|f| f.priority))
            .unwrap_or(Priority::High);
        if priority == Priority::High && !self.cfg.user_priority.may_ask_high(req.uid, &req.gids) {
            return Reply::error(format!(
                "uid {} may not ask for session_high (user_priority in {})",
                req.uid,
                self.opts.config.display()
            ));
        }
        let Ok(info) = self.procfs.read(req.pid) else {
            return Reply::error("the asking process is gone");
        };
        if info.uid != req.uid {
            return Reply::error("the asking process changed owner");
        }
        if self.opts.dry_run {
            return Reply::error("agentcgd runs with --dry-run: nothing is moved");
        }
        let family = fam.cloned().unwrap_or_else(|| {
            crate::policy::FamilyName::try_from("agentcgd-run".to_string()).expect("valid name")
        });
        let agent = self.leaves.as_ref().map(|_| AgentKey {
            pid: req.pid,
            start_ticks: info.start_ticks,
        });
        let target = match self.place_target(priority, agent, &family) {
            Ok(t) => t,
            Err(e) => {
                self.counters.errors += 1;
                return Reply::error(format!("cannot place pid {}: {e}", req.pid));
            }
        };
        self.track(
            Tracked {
                pid: req.pid,
                start_ticks: info.start_ticks,
                family: family.clone(),
                priority,
                reason: Reason::Launched { uid: req.uid },
                comm: info.comm.clone(),
                placed_at_ms: now_ms(),
                agent,
            },
            target.id,
        );
        match self.move_to(req.pid, info.start_ticks, &target) {
            Moved::Yes { .. } => {}
            Moved::TreeLost => {
                self.untrack(req.pid, info.start_ticks);
                self.rebuild_tree("a session cgroup vanished during a move");
                return Reply::error("the session cgroups were missing; try again");
            }
            _ => {
                self.untrack(req.pid, info.start_ticks);
                return Reply::error(format!("cannot move pid {}", req.pid));
            }
        }
        self.counters.placed += 1;
        *self.placed_by_family.entry(family.to_string()).or_default() += 1;
        self.steer_oom(req.pid, priority);
        log::debug!(
            "placed pid {} ({}) in {} [{family}: started by `agentcgd run`, uid {}]",
            req.pid,
            info.comm,
            priority.session(),
            req.uid
        );
        self.dirty = true;
        Reply {
            ok: true,
            error: None,
            cgroup: Some(target.rel.clone()),
            priority: Some(priority),
            family: Some(family.to_string()),
        }
    }

    fn handle_mem(&mut self, ev: memcg::MemEvent) {
        self.dirty = true;
        if let memcg::MemEvent::OomKill { session, count } = ev {
            let name = match session {
                memcg::SessionKind::High => Priority::High.session(),
                memcg::SessionKind::Low => Priority::Low.session(),
                memcg::SessionKind::Root => "agentcg",
            };
            log::warn!("OOM kill in {name} ({count})");
            for _ in 0..count.min(16) {
                self.state.oom_kills.push(OomRecord {
                    at_ms: now_ms(),
                    session: name.to_string(),
                    pid: None,
                    family: None,
                    comm: None,
                });
            }
            self.attribute_kills();
        }
    }

    /// A tracked process was SIGKILLed: maybe by the OOM killer.
    fn note_kill(&mut self, t: Tracked) {
        let agent = self.agent_of(&t);
        self.recent_kills.push((Instant::now(), t, agent));
        self.attribute_kills();
    }

    /// Pair OOM kills seen in memory.events with SIGKILL exits of tracked
    /// processes in the same session; the two arrive in either order.
    fn attribute_kills(&mut self) {
        const PAIRING_WINDOW: Duration = Duration::from_secs(5);
        self.recent_kills
            .retain(|(at, _, _)| at.elapsed() < PAIRING_WINDOW);
        let now = now_ms();
        let mut killed = Vec::new();
        for rec in self.state.oom_kills.iter_mut().filter(|r| r.pid.is_none()) {
            if now.saturating_sub(rec.at_ms) > PAIRING_WINDOW.as_millis() as u64 {
                continue;
            }
            if let Some(i) = self
                .recent_kills
                .iter()
                .position(|(_, t, _)| t.priority.session() == rec.session)
            {
                let (_, t, agent) = self.recent_kills.remove(i);
                log::warn!(
                    "OOM kill in {}: pid {} ({}) of family {}",
                    rec.session,
                    t.pid,
                    t.comm,
                    t.family
                );
                rec.pid = Some(t.pid);
                rec.family = Some(t.family.to_string());
                rec.comm = Some(t.comm.clone());
                killed.push((t, agent));
            }
        }
        for (t, agent) in killed {
            self.reactions
                .trigger(reactions::Trigger::OomKill { agent, pid: t.pid });
        }
        // Keep the record list bounded.
        let n = self.state.oom_kills.len();
        if n > 256 {
            self.state.oom_kills.drain(..n - 256);
        }
    }

    /// An agent's root process exited: the observers record its figures.
    fn note_agent_exit(&mut self, t: &Tracked, wait_status: Option<i32>) {
        let Some(key) = t
            .agent
            .filter(|k| k.pid == t.pid && k.start_ticks == t.start_ticks)
        else {
            return;
        };
        let Some(a) = self.leaves.as_ref().and_then(|l| l.agent(&key)) else {
            return;
        };
        let killed_tools = self
            .recent_kills
            .iter()
            .filter(|(_, k, _)| k.agent == Some(key) && k.pid != t.pid)
            .map(|(_, k, _)| accounting::KilledTool {
                pid: k.pid,
                comm: k.comm.clone(),
                signal: libc::SIGKILL,
            })
            .collect();
        let w = Watch {
            id: a.id.clone(),
            family: a.family.to_string(),
            root_pid: key.pid,
            leaves: a.leaf_dirs(),
            pids: Vec::new(),
        };
        let info = accounting::ExitInfo {
            family: a.family.to_string(),
            root_pid: key.pid,
            wait_status,
            started_at_ms: a.started_at_ms,
            killed_tools,
        };
        self.observer.exit(w, info);
    }

    /// Remember an agent's root process for reactions: its cwd is gone once
    /// it has exited. Only read when a rule wants crash or OOM triggers.
    fn note_agent(&mut self, info: &ProcInfo, family: &str) {
        use reactions::TriggerKind;
        if !(self.reactions.wants(TriggerKind::Crash) || self.reactions.wants(TriggerKind::OomKill))
        {
            return;
        }
        let mut a = reactions::Agent::new(family, info.pid);
        a.uid = Some(info.uid);
        a.cwd = std::fs::read_link(format!("/proc/{}/cwd", info.pid)).ok();
        self.agents.insert(info.pid, (info.start_ticks, a));
    }

    /// The agent a tracked process belongs to: its nearest ancestor placed
    /// by its family's own rule (itself, for a root process).
    fn agent_of(&self, t: &Tracked) -> reactions::Agent {
        let mut root = t.clone();
        for _ in 0..MAX_ANCESTRY {
            let Some(ancestor) = placed_by(&root.reason) else {
                break;
            };
            match self.tracker.get_pid(ancestor) {
                Some(a) if a.start_ticks <= root.start_ticks && a.family == root.family => {
                    root = a.clone()
                }
                _ => break,
            }
        }
        let mut agent = match self.agents.get(&root.pid) {
            Some((start, a)) if *start == root.start_ticks => a.clone(),
            _ => reactions::Agent::new(root.family.as_str(), root.pid),
        };
        // Its own leaf where it has one, else its session.
        agent.cgroup = Some(
            root.agent
                .and_then(|k| {
                    self.leaves
                        .as_ref()?
                        .agent(&k)?
                        .leaf_dir(root.priority)
                        .map(Path::to_path_buf)
                })
                .unwrap_or_else(|| self.tree.session_dir(root.priority)),
        );
        agent
    }

    /// Steer the OOM killer: low-priority work dies before session_high.
    fn steer_oom(&self, pid: u32, p: Priority) {
        if self.opts.no_memcg || !self.cfg.memcg.enabled {
            return;
        }
        let adj = self.cfg.memcg.oom_score_adj(p == Priority::High);
        if let Err(e) = std::fs::write(format!("/proc/{pid}/oom_score_adj"), adj.to_string()) {
            log::debug!("oom_score_adj of pid {pid}: {e}");
        }
    }

    /// Bring the tracker in line with /proc: drop the dead, place the rest.
    fn reconcile(&mut self, why: &str) {
        let procfs = self.procfs.clone();
        let gone = self
            .tracker
            .take_dead(|t| procfs.start_ticks(t.pid) == Some(t.start_ticks));
        let dropped = gone.len();
        // Their exit events may still be queued behind this scan.
        for t in gone {
            self.park_departing(t);
        }
        self.agents
            .retain(|pid, (start, _)| procfs.start_ticks(*pid) == Some(*start));
        let all = match self.procfs.scan() {
            Ok(all) => all,
            Err(e) => {
                log::error!("/proc scan failed: {e}");
                return;
            }
        };
        let before = self.counters.placed;
        for p in all {
            // Parents come first, so walks find them tracked.
            if let Some((d, agent)) = self.decide(&p, None) {
                self.apply(p, d, agent, None, Walk::Children);
            } else if self.tracker.remove(p.pid, Some(p.start_ticks)).is_some() {
                self.monitor.unseed(p.pid);
            }
        }
        self.counters.reconciles += 1;
        self.dirty = true;
        log::info!(
            "{why}: {} processes tracked, {} newly placed, {dropped} stale entries dropped",
            self.tracker.len(),
            self.counters.placed - before
        );
    }

    /// Keep the families a previous run assigned (an orphaned descendant
    /// cannot be traced to its ancestor any more), for processes that are
    /// still the same ones.
    fn adopt_previous_state(&mut self) {
        let prev = match State::read_trusted(&self.opts.state) {
            Ok(prev) => Some(prev),
            Err(e) => {
                if self.opts.state.exists() {
                    log::warn!("previous state not adopted: {e}");
                }
                None
            }
        };
        if let Some(l) = &mut self.leaves {
            let known: HashMap<String, (AgentKey, u64)> = prev
                .iter()
                .flat_map(|s| s.agents.iter())
                .map(|a| {
                    let key = AgentKey {
                        pid: a.root_pid,
                        start_ticks: a.root_start_ticks,
                    };
                    (a.id.clone(), (key, a.started_at_ms))
                })
                .collect();
            let policies = &self.policies;
            let procfs = &self.procfs;
            let n = l.adopt(
                &known,
                |f| policies.family(f).is_some() || f == "agentcgd-run",
                |pid| procfs.start_ticks(pid),
            );
            if n > 0 {
                log::info!("adopted {n} agent leaves left by the previous run");
            }
        }
        let Some(prev) = prev else { return };
        let mut adopted = 0;
        for t in prev.processes {
            // The same process (its start time), and where a previous run
            // put it: an entry never moves a process by itself.
            let still_there =
                self.procfs.start_ticks(t.pid) == Some(t.start_ticks) && self.adoptable(&t);
            if still_there && self.policies.family(t.family.as_str()).is_some() {
                let id = match self.place_target(t.priority, t.agent, &t.family) {
                    Ok(target) => target.id,
                    Err(_) => self.target(t.priority).id,
                };
                self.track(t, id);
                adopted += 1;
            }
        }
        log::info!("adopted {adopted} processes from the previous run's state");
    }

    /// A state entry is adopted only for a process that sits in the
    /// session the entry names (or below it): the previous run moved it
    /// there. Anything else is decided afresh by the scan.
    fn adoptable(&self, t: &Tracked) -> bool {
        let session = &self.target(t.priority).rel;
        cgroup_of(t.pid).is_some_and(|cg| cg == *session || cg.starts_with(&format!("{session}/")))
    }

    fn install_prefilter(&mut self) {
        let pf = crate::prefilter::compile(&self.policies);
        if let Some(why) = &pf.pass_all {
            log::info!("exec prefilter lets every exec through: {why}");
        }
        if let Err(e) = self.monitor.set_prefilter(&pf) {
            log::warn!("exec prefilter: {e:#}");
        }
    }

    /// Take what the loader thread parsed (a SIGHUP or a changed file).
    fn reload(&mut self, loaded: crate::loader::Loaded) {
        log::debug!(
            "{}: policies read and parsed in {:.1} ms on the loader thread",
            loaded.why,
            loaded.took.as_secs_f64() * 1000.0
        );
        match loaded.policies {
            Ok(set) => {
                let set = set.with_shared_tools(self.cfg.tools.clone(), &self.opts.config);
                log::info!("policies reloaded: {} families", set.families.len());
                self.needs_exe = policies_need_exe(&set);
                self.policies = set;
                self.state.policy.last_error = None;
                self.state.policy.loaded_at_ms = now_ms();
                self.counters.policy_reloads += 1;
                self.install_prefilter();
                if let Some(l) = &self.leaves {
                    let policies = &self.policies;
                    l.set_weights(|f| policies.family(f).and_then(|f| f.cpu_weight).unwrap_or(100));
                }
                self.reconcile("policy reload");
            }
            Err(e) => {
                log::error!("policy reload rejected, keeping the last good policy: {e}");
                self.state.policy.last_error = Some(e.to_string());
            }
        }
        self.reload_reactions(loaded.config);
        // A SIGHUP also checks the tree.
        if !self.opts.dry_run && self.targets.iter().any(|t| !t.procs.exists()) {
            self.rebuild_tree("session cgroups missing at reload");
        }
        self.dirty = true;
    }

    /// Re-read agentcgd.yaml for its `reactions:` (other sections need a
    /// restart); a broken file keeps the reactions in force.
    fn reload_reactions(&mut self, loaded: Result<Config, String>) {
        match loaded {
            Ok(cfg) if cfg.reactions != self.cfg.reactions => {
                log::info!("reactions reloaded: {} rules", cfg.reactions.rules.len());
                self.reactions.reconfigure(cfg.reactions.clone());
                self.observer.idle_after(idle_thresholds(&cfg.reactions));
                self.cfg.reactions = cfg.reactions;
            }
            Ok(_) => {}
            Err(e) => {
                log::error!("config reload rejected, keeping the last good reactions: {e}");
                self.reactions.reload_failed(e);
            }
        }
    }

    /// Placements are debug lines; info gets a count per family.
    fn log_summary(&mut self, now: bool) {
        if self.summary.is_empty() || (!now && self.summary_at.elapsed() < SUMMARY_INTERVAL) {
            return;
        }
        let parts: Vec<String> = self
            .summary
            .iter()
            .map(|(f, n)| format!("{f} {n}"))
            .collect();
        log::info!(
            "placed {} processes in {:.0} s: {}",
            self.summary.values().sum::<u64>(),
            self.summary_at.elapsed().as_secs_f64(),
            parts.join(", ")
        );
        self.summary.clear();
        self.summary_at = Instant::now();
    }

    /// What the publisher writes (it adds scheduler, memcg and sessions).
    fn snapshot(&mut self) -> State {
        let st = self.monitor.stats();
        self.state.placement_latency.summarize();
        let mut s = self.state.clone();
        s.procmon = ProcmonStatus {
            backend: self.monitor.backend().to_string(),
            fallback_reasons: self.monitor.fallback_reasons().to_vec(),
            exec_events: st.exec_seen,
            exit_events: st.exit,
            lost_events: st.lost,
            stats: st,
        };
        s.counters = self.counters.clone();
        s.processes = self.tracker.iter().cloned().collect();
        if let Some(l) = &self.leaves {
            s.counters.agents_over_cap = l.over_cap;
            s.counters.leaves_removed = l.removed;
            s.agents = l
                .agents()
                .map(|a| AgentStatus {
                    id: a.id.clone(),
                    family: a.family.to_string(),
                    root_pid: a.key.pid,
                    root_start_ticks: a.key.start_ticks,
                    started_at_ms: a.started_at_ms,
                    cgroups: a.cgroups(),
                    pids: 0,
                    state: Default::default(),
                    state_since_ms: 0,
                    transitions: 0,
                    history: Vec::new(),
                    cpu_percent: None,
                    usage: None,
                })
                .collect();
        }
        s.families = self
            .policies
            .families
            .iter()
            .map(|f| FamilyStatus {
                name: f.family.to_string(),
                priority: f.priority,
                file: f.file.display().to_string(),
                live: self.tracker.iter().filter(|t| t.family == f.family).count(),
                placed_total: self
                    .placed_by_family
                    .get(f.family.as_str())
                    .copied()
                    .unwrap_or(0),
            })
            .collect();
        s
    }
}

/// `idle.after_s` of every reaction rule that has one.
fn idle_thresholds(cfg: &reactions::Config) -> Vec<u64> {
    cfg.rules
        .iter()
        .filter_map(|r| r.idle.as_ref().map(|i| i.after_s))
        .collect()
}

/// The tracked ancestor a reason names (None: the process is its agent's
/// root, placed by its own rule or by `agentcgd run`).
fn placed_by(r: &Reason) -> Option<u32> {
    match r {
        Reason::Inherited { ancestor } | Reason::Tool { ancestor, .. } => Some(*ancestor),
        Reason::Reexec { previous } => placed_by(previous),
        Reason::Rule { .. } | Reason::Adopted | Reason::Launched { .. } => None,
    }
}

fn as_lineage(t: &Tracked) -> Lineage {
    Lineage {
        pid: t.pid,
        family: t.family.clone(),
        priority: t.priority,
        reason: t.reason.clone(),
        agent: t.agent,
    }
}

#[cfg(test)]
mod tests {
    /// The slice sched_getattr reports for the calling thread (the fair
    /// class's current slice on 6.12+, 0 before).
    fn slice_ns() -> u64 {
        let mut attr = [0u64; 7];
        // SAFETY: a zeroed buffer of 56 bytes, the size passed; the kernel
        // writes a struct sched_attr (runtime at byte 24) into it.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_sched_getattr,
                0,
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr) as u32,
                0,
            )
        };
        assert_eq!(rc, 0, "sched_getattr: {}", std::io::Error::last_os_error());
        attr[3]
    }

    #[test]
    fn the_placing_thread_gets_the_short_slice() {
        let (before, after) = std::thread::spawn(|| {
            let before = slice_ns();
            super::short_slice_for_this_thread();
            (before, slice_ns())
        })
        .join()
        .unwrap();
        if before == 0 {
            eprintln!("SKIP: this kernel reports no EEVDF slice (custom slices need Linux 6.12)");
            return;
        }
        assert_eq!(after, super::PLACING_SLICE_NS, "slice before: {before} ns");
    }
}
