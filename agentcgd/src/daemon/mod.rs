//! The daemon: wires events -> classifier -> placer -> tracker -> status.
//!
//! One thread owns all state and runs one epoll loop over the process-event
//! source, a signalfd, the agent leaves' inotify fd and a mailbox (an
//! eventfd and a channel) for other threads' messages (the policy loader,
//! the memory controller, the publisher, `agentcgd run`), so an exec event
//! wakes the thread that decides about it and nothing else. Periodic work (the state
//! file, statistics, the tree check) runs on the publisher's thread.
//!
//! This file holds the loop and what it dispatches to; the daemon's work
//! is split by what starts it:
//! - `place`: an exec, a fork or a scan -> a decision -> the process moved
//!   and tracked with its lineage;
//! - `exits`: an exit -> the lineage kept for orphans, an agent's figures,
//!   crashes and OOM kills handed to the reactions;
//! - `launch`: `agentcgd run` asks to be placed before it execs;
//! - `repair`: emptied leaves, a lost tree, a /proc reconcile, a reload;
//! - `snapshot`: the state handed to the publisher, the log summary;
//! - `startup`: the tree, the services, what a previous run left.

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use procmon::{Monitor, ProcEvent, ProcFs};

use crate::cgroup::{CgroupError, Target, Tree};
use crate::classify::Lineage;
use crate::config::Config;
use crate::leaves::Leaves;
use crate::memory::Memory;
use crate::observe::{Observer, Settings};
use crate::policy::{PolicySet, Priority};
use crate::publish::{Publisher, Sources};
use crate::sdnotify::Notifier;
use crate::state::{now_ms, Counters, PolicyStatus, State, Tracked, Tracker};

mod exits;
mod launch;
mod place;
mod repair;
mod snapshot;
mod startup;

use repair::idle_thresholds;
use startup::{
    agents_within_fd_limit, setup_tree, short_slice_for_this_thread, start_monitor, start_reactions,
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
    /// The leaf remover's thread removed a batch of leaves (its count is
    /// in the next state).
    LeavesRemoved,
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

    // Agents with leaves of their own: as many as the open-files limit holds.
    let max_agents = if cfg.sessions.per_agent {
        agents_within_fd_limit(cfg.sessions.max_agents)
    } else {
        cfg.sessions.max_agents
    };

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
        let mailbox = mailbox.clone();
        let on_removed = Box::new(move || {
            let _ = mailbox.send(Msg::LeavesRemoved);
        });
        Some(
            Leaves::new(tree.clone(), max_agents, on_removed)
                .context("the agent leaves (inotify, the leaf remover's thread)")?,
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

fn policies_need_exe(set: &PolicySet) -> bool {
    fn block(b: &crate::policy::MatchBlock) -> bool {
        b.exe.is_some() || b.parent.as_deref().is_some_and(block)
    }
    set.families
        .iter()
        .any(|f| f.matches.iter().any(block) || f.tools.iter().any(|t| t.matches.iter().any(block)))
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
            } => self.on_exit(pid, start_ticks, exit_code),
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
            Msg::LeavesRemoved => self.dirty = true,
        }
    }
}
