//! The daemon: wires events -> classifier -> placer -> tracker -> status.
//!
//! One thread owns all state and handles messages in order; sources (process
//! events, signals, policy-directory changes) only send messages to it.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{SigSet, Signal};

use procmon::{Monitor, ProcEvent, ProcFs, ProcInfo};

use crate::cgroup::{cgroup_of, CgroupError, SetupReport, Tree};
use crate::classify::{inherit, own_match, protected, user_priority, Lineage, Reason};
use crate::config::Config;
use crate::policy::{PolicySet, Priority};
use crate::state::{
    now_ms, Counters, FamilyStatus, OomRecord, PolicyStatus, ProcmonStatus, SessionStatus, State,
    Tracked, Tracker,
};

/// Which process-event source to use (`--events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventSource {
    /// Best available: BPF, then the proc connector, then /proc polling.
    Auto,
    /// BPF sched_process_exec/exit tracepoints (needs root, BTF).
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

enum Msg {
    Proc(ProcEvent),
    Mem(memcg::MemEvent),
    Signal(Signal),
    PolicyChanged,
    /// `agentcgd run` asks to be moved (see launch.rs).
    Launch(crate::launch::Request),
}

/// How often, at most, the state file is rewritten while busy.
const STATE_WRITE_INTERVAL: Duration = Duration::from_millis(200);
/// Wait this long after a policy-file change before reloading (editors
/// write files in several steps).
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(150);
/// Nice value of the daemon's threads (see `run`).
const DAEMON_NICE: i32 = -10;
/// Bound on the ancestor walk when looking for a tracked ancestor.
const MAX_ANCESTRY: usize = 64;

struct Daemon {
    opts: Options,
    cfg: Config,
    sched: scheduler::Supervisor,
    mem: memcg::Controller,
    /// Untracked pid -> (start time, its nearest tracked ancestor).
    lineage_memo: std::collections::HashMap<u32, (u64, Option<Lineage>)>,
    /// Tracked processes that died by SIGKILL lately, for OOM attribution.
    recent_kills: Vec<(Instant, Tracked)>,
    policies: PolicySet,
    tree: Tree,
    procfs: ProcFs,
    tracker: Tracker,
    counters: Counters,
    placed_by_family: std::collections::BTreeMap<String, u64>,
    /// Session cgroup paths as /proc/PID/cgroup shows them.
    session_cg: [(Priority, String); 2],
    self_pid: u32,
    state: State,
    dirty: bool,
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let (cfg, cfg_source) = Config::load(&opts.config).map_err(anyhow::Error::msg)?;
    let policies = PolicySet::load_dir(&opts.policies)
        .map_err(|e| anyhow::anyhow!("{e}\nrefusing to start with a broken policy"))?
        .with_shared_tools(cfg.tools.clone(), &opts.config);
    if policies.families.is_empty() {
        log::warn!(
            "no policy files in {}: nothing will be placed",
            opts.policies.display()
        );
    }
    let tree = Tree::open(&opts.root).map_err(|e: CgroupError| anyhow::anyhow!("{e}"))?;

    // Placement latency is mostly wake-up latency (event thread, then this
    // one) on a busy host; the daemon uses little CPU, so run it at nice
    // -10. Set before any thread starts: threads inherit it.
    // SAFETY: setpriority on the calling thread has no memory effects.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, DAEMON_NICE) } != 0 {
        log::warn!(
            "cannot raise priority to nice {DAEMON_NICE}: {}",
            std::io::Error::last_os_error()
        );
    }

    // Block the signals we handle before any thread starts, so that every
    // thread inherits the mask and only the signal thread receives them.
    let mut mask = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        mask.add(s);
    }
    mask.thread_block().context("block signals")?;
    let (tx, rx) = mpsc::channel::<Msg>();
    {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || loop {
                if let Ok(sig) = mask.wait() {
                    if tx.send(Msg::Signal(sig)).is_err() {
                        return;
                    }
                }
            })?;
    }

    let setup = if opts.dry_run {
        SetupReport {
            warnings: vec!["dry-run: the cgroup tree is not created or changed".into()],
            ..SetupReport::default()
        }
    } else {
        tree.setup([
            (Priority::High, cfg.sessions.high.cpu_weight),
            (Priority::Low, cfg.sessions.low.cpu_weight),
        ])
        .map_err(|e| anyhow::anyhow!("{e}"))?
    };
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

    let sched = if opts.no_scheduler {
        scheduler::Supervisor::disabled("disabled by --no-scheduler")
    } else if !cfg.scheduler.enabled {
        scheduler::Supervisor::disabled("disabled by scheduler.enabled: false")
    } else if opts.dry_run {
        scheduler::Supervisor::disabled("dry-run: scheduler not loaded")
    } else {
        scheduler::Supervisor::start(&cfg.scheduler)
    };
    log::info!("scheduler: {}", sched.status().backend);

    let mem = if opts.no_memcg {
        memcg::Controller::idle(memcg::Status::disabled("disabled by --no-memcg"))
    } else if opts.dry_run {
        memcg::Controller::idle(memcg::Status::disabled("dry-run: memory files not changed"))
    } else {
        let tx = tx.clone();
        memcg::Controller::start(
            memcg::Sessions::under(&tree.root),
            &cfg.memcg,
            Box::new(move |ev| {
                let _ = tx.send(Msg::Mem(ev));
            }),
        )
    };
    log::info!("memcg: {}", mem.status().backend);

    let monitor = start_monitor(opts.events, tx.clone())?;
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
    watch_policies(&opts.policies, tx.clone());
    {
        let tx = tx.clone();
        let sock = crate::launch::socket_path(&opts.state);
        match crate::launch::serve(
            &sock,
            Box::new(move |r| {
                let _ = tx.send(Msg::Launch(r));
            }),
        ) {
            Ok(()) => log::info!("`agentcgd run` requests on {}", sock.display()),
            Err(e) => log::warn!(
                "cannot serve {} ({e}): `agentcgd run` works for root only",
                sock.display()
            ),
        }
    }
    drop(tx);

    let session_cg =
        [Priority::High, Priority::Low].map(|p| (p, crate::cgroup::rel_path(&tree.session_dir(p))));
    let mut d = Daemon {
        state: State {
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
            activity: "not available: the activity monitor is not part of this release".into(),
            ..State::default()
        },
        opts,
        cfg,
        sched,
        mem,
        recent_kills: Vec::new(),
        lineage_memo: Default::default(),
        policies,
        tree,
        procfs: ProcFs::default(),
        tracker: Tracker::default(),
        counters: Counters::default(),
        placed_by_family: Default::default(),
        session_cg,
        self_pid: std::process::id(),
        dirty: true,
    };
    d.adopt_previous_state();
    d.reconcile("start-up scan");
    d.write_state(&monitor);

    let mut last_write = Instant::now();
    let mut reload_at: Option<Instant> = None;
    loop {
        let timeout = reload_at
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(STATE_WRITE_INTERVAL)
            .min(STATE_WRITE_INTERVAL);
        match rx.recv_timeout(timeout) {
            Ok(Msg::Proc(ev)) => d.handle(ev),
            Ok(Msg::Mem(ev)) => d.handle_mem(ev),
            Ok(Msg::Signal(Signal::SIGHUP)) => reload_at = Some(Instant::now()),
            Ok(Msg::Signal(sig)) => {
                log::info!("{sig}: stopping; placed processes stay where they are");
                break;
            }
            Ok(Msg::PolicyChanged) => {
                reload_at.get_or_insert(Instant::now() + RELOAD_DEBOUNCE);
            }
            Ok(Msg::Launch(req)) => d.handle_launch(req),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("all event sources stopped"),
        }
        if reload_at.is_some_and(|t| Instant::now() >= t) {
            reload_at = None;
            d.reload();
        }
        // The scheduler's statistics change on their own: refresh each second.
        if (d.dirty && last_write.elapsed() >= STATE_WRITE_INTERVAL)
            || last_write.elapsed() >= Duration::from_secs(1)
        {
            d.write_state(&monitor);
            last_write = Instant::now();
        }
    }
    monitor.stop();
    // Detach the scheduler: the kernel is back on its own one when we exit.
    let sched = std::mem::replace(
        &mut d.sched,
        scheduler::Supervisor::disabled("agentcgd stopped"),
    );
    sched.stop();
    let mem = std::mem::replace(
        &mut d.mem,
        memcg::Controller::idle(memcg::Status::disabled("agentcgd stopped")),
    );
    mem.stop();
    d.state.running = false;
    d.write_state_with(None);
    Ok(())
}

fn start_monitor(source: EventSource, tx: mpsc::Sender<Msg>) -> anyhow::Result<Monitor> {
    let opts = procmon::Options {
        allow_bpf: matches!(source, EventSource::Auto | EventSource::Bpf),
        allow_proc_connector: matches!(source, EventSource::Auto | EventSource::ProcConnector),
        ..procmon::Options::default()
    };
    let mon = Monitor::start(
        &opts,
        Box::new(move |ev| {
            let _ = tx.send(Msg::Proc(ev));
        }),
    )?;
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

/// Reload the policies when a file in the directory changes.
fn watch_policies(dir: &Path, tx: mpsc::Sender<Msg>) {
    use inotify::{Inotify, WatchMask};
    let setup = || -> std::io::Result<Inotify> {
        let ino = Inotify::init()?;
        ino.watches().add(
            dir,
            WatchMask::CLOSE_WRITE
                | WatchMask::MOVED_TO
                | WatchMask::MOVED_FROM
                | WatchMask::DELETE
                | WatchMask::CREATE,
        )?;
        Ok(ino)
    };
    match setup() {
        Ok(mut ino) => {
            let _ = std::thread::Builder::new()
                .name("policy-watch".into())
                .spawn(move || {
                    let mut buf = [0u8; 4096];
                    while ino.read_events_blocking(&mut buf).is_ok() {
                        if tx.send(Msg::PolicyChanged).is_err() {
                            return;
                        }
                    }
                });
        }
        Err(e) => log::warn!(
            "cannot watch {} ({e}): reload policies with SIGHUP",
            dir.display()
        ),
    }
}

impl Daemon {
    fn handle(&mut self, ev: ProcEvent) {
        match ev {
            ProcEvent::Exec(info) => self.place(info),
            ProcEvent::Exit {
                pid,
                start_ticks,
                exit_code,
            } => {
                self.lineage_memo.remove(&pid);
                if let Some(t) = self.tracker.remove(pid, start_ticks) {
                    self.dirty = true;
                    if exit_code.is_some_and(|c| c & 0x7f == libc::SIGKILL) {
                        self.note_kill(t);
                    }
                }
            }
            ProcEvent::Lost(n) => {
                log::warn!("{n} process events lost: reconciling from /proc");
                self.reconcile("lost events");
            }
        }
    }

    /// The nearest tracked process among `p` (on re-exec) and its ancestors.
    /// The walk's result is remembered for every untracked ancestor it
    /// passed (until that ancestor exits or the tracker gains an entry), so
    /// a parent that spawns many unmatched children is walked once.
    fn lineage(&mut self, p: &ProcInfo) -> Option<Lineage> {
        if !self.policies.families.iter().any(|f| f.descendants) {
            return None;
        }
        let as_lineage = |t: &Tracked| Lineage {
            pid: t.pid,
            family: t.family.clone(),
            priority: t.priority,
            reason: t.reason.clone(),
        };
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

    /// Track a placed process; remembered walks may now be out of date.
    fn track(&mut self, t: Tracked) {
        self.lineage_memo.clear();
        self.tracker.insert(t);
    }

    fn place(&mut self, info: ProcInfo) {
        // Own rules first; the ancestry is read only for what they miss.
        let parents = self.procfs.clone();
        let decision = match own_match(&self.policies, &info, &parents) {
            Some(d) => Some(user_priority(
                d,
                &info,
                &self.cfg.user_priority,
                Path::new("/proc"),
            )),
            None => self
                .lineage(&info)
                .and_then(|lin| inherit(&self.policies, &info, &lin, &parents)),
        };
        let Some(decision) = decision else {
            // Re-exec into something no rule keeps: forget it, leave it be.
            if self
                .tracker
                .remove(info.pid, Some(info.start_ticks))
                .is_some()
            {
                self.dirty = true;
            }
            return;
        };
        if let Some(why) = protected(&info, self.self_pid) {
            log::debug!("not moving pid {} ({}): {why}", info.pid, info.comm);
            self.counters.protected_skipped += 1;
            return;
        }
        let tracked = Tracked {
            pid: info.pid,
            start_ticks: info.start_ticks,
            family: decision.family.clone(),
            priority: decision.priority,
            reason: decision.reason.clone(),
            comm: info.comm.clone(),
            placed_at_ms: now_ms(),
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
            self.track(tracked);
            return;
        }
        let target = &self.session_cg[if decision.priority == Priority::High {
            0
        } else {
            1
        }]
        .1;
        let already = cgroup_of(info.pid).as_deref() == Some(target.as_str());
        // PID-reuse guard: only move the process the event was about.
        match self.procfs.start_ticks(info.pid) {
            None => {
                self.counters.vanished += 1;
                return;
            }
            Some(s) if s != info.start_ticks => {
                self.counters.pid_reused += 1;
                log::debug!("pid {} was reused before placement; skipped", info.pid);
                return;
            }
            Some(_) => {}
        }
        if already {
            self.counters.already_placed += 1;
            self.steer_oom(info.pid, decision.priority);
            self.track(tracked);
            return;
        }
        match self.tree.place(info.pid, decision.priority) {
            Ok(()) => {
                self.counters.placed += 1;
                *self
                    .placed_by_family
                    .entry(decision.family.to_string())
                    .or_default() += 1;
                let msg = format!(
                    "placed pid {} ({}) in {} [{}: {}]",
                    info.pid,
                    info.comm,
                    decision.priority.session(),
                    decision.family,
                    decision.reason
                );
                if matches!(decision.reason, Reason::Rule { .. }) {
                    log::info!("{msg}");
                } else {
                    log::debug!("{msg}");
                }
                self.steer_oom(info.pid, decision.priority);
                self.track(tracked);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.counters.vanished += 1,
            Err(e) => {
                self.counters.errors += 1;
                log::warn!(
                    "cannot place pid {} ({}) in {}: {e}",
                    info.pid,
                    info.comm,
                    decision.priority.session()
                );
            }
        }
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
        if let Err(e) = self.tree.place(req.pid, priority) {
            self.counters.errors += 1;
            return Reply::error(format!("cannot move pid {}: {e}", req.pid));
        }
        self.counters.placed += 1;
        *self.placed_by_family.entry(family.to_string()).or_default() += 1;
        self.steer_oom(req.pid, priority);
        log::info!(
            "placed pid {} ({}) in {} [{family}: started by `agentcgd run`, uid {}]",
            req.pid,
            info.comm,
            priority.session(),
            req.uid
        );
        self.track(Tracked {
            pid: req.pid,
            start_ticks: info.start_ticks,
            family: family.clone(),
            priority,
            reason: Reason::Launched { uid: req.uid },
            comm: info.comm,
            placed_at_ms: now_ms(),
        });
        self.dirty = true;
        Reply {
            ok: true,
            error: None,
            cgroup: Some(crate::cgroup::rel_path(&self.tree.session_dir(priority))),
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
        self.recent_kills.push((Instant::now(), t));
        self.attribute_kills();
    }

    /// Pair OOM kills seen in memory.events with SIGKILL exits of tracked
    /// processes in the same session; the two arrive in either order.
    fn attribute_kills(&mut self) {
        const PAIRING_WINDOW: Duration = Duration::from_secs(5);
        self.recent_kills
            .retain(|(at, _)| at.elapsed() < PAIRING_WINDOW);
        let now = now_ms();
        for rec in self.state.oom_kills.iter_mut().filter(|r| r.pid.is_none()) {
            if now.saturating_sub(rec.at_ms) > PAIRING_WINDOW.as_millis() as u64 {
                continue;
            }
            if let Some(i) = self
                .recent_kills
                .iter()
                .position(|(_, t)| t.priority.session() == rec.session)
            {
                let (_, t) = self.recent_kills.remove(i);
                log::warn!(
                    "OOM kill in {}: pid {} ({}) of family {}",
                    rec.session,
                    t.pid,
                    t.comm,
                    t.family
                );
                rec.pid = Some(t.pid);
                rec.family = Some(t.family.to_string());
                rec.comm = Some(t.comm);
            }
        }
        // Keep the record list bounded.
        let n = self.state.oom_kills.len();
        if n > 256 {
            self.state.oom_kills.drain(..n - 256);
        }
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
        let dropped = self
            .tracker
            .retain(|t| procfs.start_ticks(t.pid) == Some(t.start_ticks));
        let all = match self.procfs.scan() {
            Ok(all) => all,
            Err(e) => {
                log::error!("/proc scan failed: {e}");
                return;
            }
        };
        let before = self.counters.placed;
        for p in all {
            self.place(p);
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
        let Ok(prev) = State::read(&self.opts.state) else {
            return;
        };
        let mut adopted = 0;
        for t in prev.processes {
            let still_there = self.procfs.start_ticks(t.pid) == Some(t.start_ticks);
            if still_there && self.policies.family(t.family.as_str()).is_some() {
                self.tracker.insert(t);
                adopted += 1;
            }
        }
        log::info!("adopted {adopted} processes from the previous run's state");
    }

    fn reload(&mut self) {
        match PolicySet::load_dir(&self.opts.policies) {
            Ok(set) => {
                let set = set.with_shared_tools(self.cfg.tools.clone(), &self.opts.config);
                log::info!("policies reloaded: {} families", set.families.len());
                self.policies = set;
                self.state.policy.last_error = None;
                self.state.policy.loaded_at_ms = now_ms();
                self.counters.policy_reloads += 1;
                self.reconcile("policy reload");
            }
            Err(e) => {
                log::error!("policy reload rejected, keeping the last good policy: {e}");
                self.state.policy.last_error = Some(e.to_string());
            }
        }
        self.dirty = true;
    }

    fn write_state(&mut self, monitor: &Monitor) {
        self.write_state_with(Some(monitor));
    }

    fn write_state_with(&mut self, monitor: Option<&Monitor>) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &mut self.state;
        s.updated_at_ms = now_ms();
        if let Some(monitor) = monitor {
            let c = monitor.counters();
            s.procmon = ProcmonStatus {
                backend: monitor.backend().to_string(),
                fallback_reasons: monitor.fallback_reasons().to_vec(),
                exec_events: c.exec.load(Relaxed),
                exit_events: c.exit.load(Relaxed),
                lost_events: c.lost.load(Relaxed),
            };
        }
        s.scheduler = serde_json::to_value(self.sched.status()).unwrap_or_default();
        s.memcg = serde_json::to_value(self.mem.status()).unwrap_or_default();
        s.counters = self.counters.clone();
        s.processes = self.tracker.iter().cloned().collect();
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
        s.sessions = [Priority::High, Priority::Low]
            .iter()
            .map(|&p| {
                let dir = self.tree.session_dir(p);
                let weight = std::fs::read_to_string(dir.join("cpu.weight"))
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                SessionStatus {
                    name: p.session().into(),
                    path: dir.display().to_string(),
                    cpu_weight: weight,
                    pids: self.tree.pids(p).len(),
                    tracked: self.tracker.iter().filter(|t| t.priority == p).count(),
                }
            })
            .collect();
        if let Err(e) = s.write(&self.opts.state) {
            log::warn!("cannot write state file {}: {e}", self.opts.state.display());
        }
        self.dirty = false;
    }
}
