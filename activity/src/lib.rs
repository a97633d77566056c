//! The activity monitor of agentcgd: which agent is working and which one
//! is waiting (on its model, on the user), observed, never steered.
//!
//! Each agent instance has one or two leaf cgroups (`session_high/<id>`,
//! `session_low/<id>`). An agent is `Active` while any of its threads ran
//! within `idle_threshold` and `Idle` once none has for that long (a
//! debounce). Families aggregate their agents: a family is active while any
//! of its agents is.
//!
//! Two backends, best first, with the same output:
//! 1. BPF (bpf/schedmon.bpf.c): `tp_btf/sched_switch`, attached while some
//!    leaf is watched, aggregates per leaf in the kernel (runtime, wake-ups,
//!    last run, tasks on a CPU now); nothing is sent per switch. The monitor reads the
//!    aggregates in place when a leaf may have gone idle (a one-shot timer
//!    at its last run + the threshold) and the kernel sends one record when
//!    an idle leaf's task runs again, so an agent waking up is seen at once.
//! 2. cpu.stat: every `sample_interval` (500 ms) each leaf's `usage_usec`;
//!    a change is activity. Where BTF or tp_btf is missing.
//!
//! Like procmon's monitor it runs no thread: the caller puts [`Monitor::as_fd`]
//! into its epoll set and calls [`Monitor::process`] when it is readable.
//!
//! It writes no cgroup file (cpu.idle, cpu.weight or any other): see
//! docs/activity.md for why.

mod bpf;
mod cpustat;
pub mod state;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use serde::{Deserialize, Serialize};

pub use bpf::{ProgStats, MAX_LEAVES};
pub use cpustat::usage_usec;
use state::{judge, Family, Tracker, Verdict};
pub use state::{MonoTime, State, Transition, HISTORY};

/// One agent instance: its family and the pid of its root process (also
/// the name of its leaves, `<family>-<root pid>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AgentKey {
    pub family: String,
    pub root_pid: u32,
}

impl AgentKey {
    pub fn new(family: impl Into<String>, root_pid: u32) -> AgentKey {
        AgentKey {
            family: family.into(),
            root_pid,
        }
    }
}

impl fmt::Display for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.family, self.root_pid)
    }
}

/// Which backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendChoice {
    /// BPF where it loads, else cpu.stat.
    #[default]
    Auto,
    /// BPF only: where it does not load the monitor is `Disabled` (with
    /// the reason), it does not fall back.
    Bpf,
    /// cpu.stat sampling, even where BPF would load.
    CpuStat,
}

/// The backend that runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    Bpf,
    CpuStat,
    /// `enabled: false`, or BPF was required and did not load.
    Disabled,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Bpf => "bpf",
            Backend::CpuStat => "cpu.stat",
            Backend::Disabled => "disabled",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// false: nothing is loaded, nothing is read.
    pub enabled: bool,
    /// An agent none of whose threads ran for this long is idle.
    pub idle_threshold: Duration,
    pub backend: BackendChoice,
    /// How often the cpu.stat backend samples each leaf.
    pub sample_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            enabled: true,
            idle_threshold: Duration::from_millis(2000),
            backend: BackendChoice::Auto,
            sample_interval: Duration::from_millis(500),
        }
    }
}

/// Whose state changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Agent(AgentKey),
    Family(String),
}

/// A transition, as returned by [`Monitor::process`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub subject: Subject,
    pub transition: Transition,
}

/// One agent, as [`Monitor::snapshot`] sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentActivity {
    pub agent: AgentKey,
    pub state: State,
    /// Start of the current state.
    pub since: MonoTime,
    pub transitions: u64,
    /// The last [`HISTORY`] transitions, oldest first.
    pub history: Vec<Transition>,
    /// CPU time of its threads since it was first watched.
    pub runtime_ns: u64,
    /// Wake-ups of its threads since it was first watched (BPF only):
    /// counted when a thread goes to sleep, so a thread asleep now counts.
    pub wakeups: Option<u64>,
    /// Its threads on a CPU now (BPF only).
    pub running: Option<u32>,
    /// CPU use between the previous snapshot and this one, in % of one
    /// CPU (so up to 100 x CPUs); None until a first interval has passed.
    pub cpu_percent: Option<f64>,
    pub time_active: Duration,
    pub time_idle: Duration,
    /// Its watched leaves.
    pub leaves: Vec<PathBuf>,
}

/// One family: active while any of its agents is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FamilyActivity {
    pub family: String,
    pub state: State,
    pub since: MonoTime,
    pub transitions: u64,
    pub history: Vec<Transition>,
    pub agents: usize,
    pub active_agents: usize,
    pub time_active: Duration,
    pub time_idle: Duration,
}

/// The monitor's own figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Idle -> active records from the kernel.
    pub edges: u64,
    /// ... that the ring buffer had no room for (expected 0).
    pub edges_lost: u64,
    /// Times an agent looked idle to BPF but its cpu.stat had grown: a
    /// thread that was on a CPU since before the leaf was watched.
    pub untracked_runs: u64,
    /// Looks at an agent's aggregates (timer or cpu.stat samples).
    pub checks: u64,
    /// The BPF programs' own cost (kernel.bpf_stats_enabled).
    pub programs: Vec<ProgStats>,
    /// Whether the BPF programs are attached now (only while some leaf
    /// is watched).
    #[serde(default)]
    pub attached: bool,
}

/// Everything the monitor knows at one time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub at: MonoTime,
    pub backend: Backend,
    /// Why the backend is not BPF, where it is not.
    pub reason: Option<String>,
    pub idle_threshold: Duration,
    pub agents: Vec<AgentActivity>,
    pub families: Vec<FamilyActivity>,
    pub stats: Stats,
}

struct Leaf {
    path: PathBuf,
    cgroup_id: u64,
    /// BPF slot and its generation.
    slot: Option<(u32, u64)>,
    /// BPF: `switches` at the last look; cpu.stat: unused.
    switches: u64,
    /// cpu.stat usage_usec when watched.
    usage_at_watch: u64,
    /// BPF: cpu.stat usage and the kernel's runtime at the last
    /// untracked-run check. cpu.stat backend: the last sample.
    usage_mark: u64,
    runtime_mark: u64,
}

struct Agent {
    leaves: Vec<Leaf>,
    tracker: Tracker,
    last_activity: MonoTime,
    recheck: Option<MonoTime>,
    /// A thread may be on a CPU that the kernel side has not seen switch
    /// in (a leaf added while it ran): cpu.stat is compared at each look.
    unseen: bool,
    /// When cpu.stat was last compared with the kernel side's view.
    mark_at: MonoTime,
    /// Runtime and wake-ups of leaves no longer watched.
    runtime_retired: u64,
    wakeups_retired: u64,
    /// Highest total runtime reported (runs in progress are read without a
    /// lock; the total never goes down).
    runtime_seen: u64,
    cpu_mark: (MonoTime, u64),
    cpu_percent: Option<f64>,
}

enum Engine {
    Bpf(Box<bpf::Source>),
    CpuStat { next_sample: Option<MonoTime> },
    Off,
}

const TOKEN_TIMER: u64 = 1;
const TOKEN_RING: u64 = 2;
/// CPU time cpu.stat may show beyond what the kernel side saw (switch
/// costs, a tick's worth) before it counts as a run the BPF side missed.
const UNTRACKED_SLACK_NS: u64 = 10_000_000;

/// How soon to compare cpu.stat with the kernel side's view again once a
/// thread may be running unseen.
fn untracked_look(threshold: Duration) -> Duration {
    (threshold / 10).max(Duration::from_millis(10))
}
/// cpu_percent is recomputed when the previous snapshot is this old.
const CPU_MIN_INTERVAL: Duration = Duration::from_millis(250);

/// The activity monitor. Not Send: it lives on the daemon's thread.
pub struct Monitor {
    opts: Options,
    engine: Engine,
    reason: Option<String>,
    epoll: Option<Epoll>,
    timer: Option<TimerFd>,
    timer_at: Option<MonoTime>,
    agents: BTreeMap<AgentKey, Agent>,
    /// BPF slot -> its agent.
    slots: HashMap<u32, AgentKey>,
    families: BTreeMap<String, Family>,
    changes: Vec<Change>,
    stats: Stats,
}

impl Monitor {
    /// Start the monitor. Never fails: where BPF does not load it samples
    /// cpu.stat (`backend()` says why); where the timer or epoll cannot be
    /// had it is `Disabled` with the reason.
    pub fn start(opts: &Options) -> Monitor {
        let mut m = Monitor {
            opts: opts.clone(),
            engine: Engine::Off,
            reason: None,
            epoll: None,
            timer: None,
            timer_at: None,
            agents: BTreeMap::new(),
            slots: HashMap::new(),
            families: BTreeMap::new(),
            changes: Vec::new(),
            stats: Stats::default(),
        };
        m.opts.idle_threshold = m.opts.idle_threshold.max(Duration::from_millis(10));
        m.opts.sample_interval = m.opts.sample_interval.max(Duration::from_millis(10));
        if !opts.enabled {
            m.reason = Some("activity.enabled is false".into());
            return m;
        }
        if let Err(e) = m.open() {
            m.engine = Engine::Off;
            m.epoll = None;
            m.timer = None;
            m.reason = Some(format!("{e:#}"));
            log::warn!("activity monitor disabled: {e:#}");
        }
        m
    }

    fn open(&mut self) -> anyhow::Result<()> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll")?;
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .context("timerfd")?;
        epoll
            .add(&timer, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_TIMER))
            .context("epoll_ctl")?;
        let bpf = match self.opts.backend {
            BackendChoice::CpuStat => {
                self.reason = Some("cpu.stat chosen in the configuration".into());
                None
            }
            BackendChoice::Auto | BackendChoice::Bpf => match bpf::Source::open() {
                Ok(s) => Some(s),
                Err(e) if self.opts.backend == BackendChoice::Bpf => {
                    return Err(e.context("BPF backend required"));
                }
                Err(e) => {
                    let why = format!("BPF unavailable: {e:#}");
                    log::info!(
                        "activity monitor: {why}; sampling cpu.stat every {:?}",
                        self.opts.sample_interval
                    );
                    self.reason = Some(why);
                    None
                }
            },
        };
        self.engine = match bpf {
            Some(s) => {
                epoll
                    .add(s.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_RING))
                    .context("epoll_ctl")?;
                Engine::Bpf(Box::new(s))
            }
            None => Engine::CpuStat { next_sample: None },
        };
        self.epoll = Some(epoll);
        self.timer = Some(timer);
        Ok(())
    }

    /// The backend that runs, and why it is not BPF where it is not.
    pub fn backend(&self) -> (Backend, Option<&str>) {
        let b = match self.engine {
            Engine::Bpf(_) => Backend::Bpf,
            Engine::CpuStat { .. } => Backend::CpuStat,
            Engine::Off => Backend::Disabled,
        };
        (b, self.reason.as_deref())
    }

    pub fn idle_threshold(&self) -> Duration {
        self.opts.idle_threshold
    }

    /// One fd for the caller's epoll set (EPOLLIN), readable when
    /// [`Monitor::process`] has work. None when disabled.
    pub fn as_fd(&self) -> Option<BorrowedFd<'_>> {
        self.epoll.as_ref().map(|e| e.0.as_fd())
    }

    /// Watch `agent`, whose leaves are now exactly `leaves` (path, cgroup
    /// id; an id of 0 is read from the path). Call it again when a leaf is
    /// added or removed; leaves it no longer lists stop being watched (their
    /// runtime stays in the agent's). A new agent starts `Active` (it was
    /// just placed). Errors name the leaves that could not be watched; the
    /// others are.
    pub fn watch(&mut self, agent: AgentKey, leaves: &[(PathBuf, u64)]) -> anyhow::Result<()> {
        if matches!(self.engine, Engine::Off) {
            return Ok(());
        }
        let now = MonoTime::now();
        let mut wanted = Vec::new();
        let mut errors = Vec::new();
        for (path, id) in leaves {
            match resolve_id(path, *id) {
                Ok(id) => wanted.push((path.clone(), id)),
                Err(e) => errors.push(format!("{}: {e:#}", path.display())),
            }
        }
        if !self.agents.contains_key(&agent) {
            let fam = self
                .families
                .entry(agent.family.clone())
                .or_insert_with(|| Family::new(State::Active, now));
            if let Some(t) = fam.join(State::Active, now) {
                Self::family_changed(&mut self.changes, &agent.family, t);
            }
            self.agents.insert(
                agent.clone(),
                Agent {
                    leaves: Vec::new(),
                    tracker: Tracker::new(State::Active, now),
                    last_activity: now,
                    recheck: Some(now + self.opts.idle_threshold),
                    unseen: false,
                    mark_at: now,
                    runtime_retired: 0,
                    wakeups_retired: 0,
                    runtime_seen: 0,
                    cpu_mark: (now, 0),
                    cpu_percent: None,
                },
            );
            log::debug!("activity: watching {agent}");
        }
        // Leaves no longer listed.
        let a = self.agents.get_mut(&agent).expect("inserted above");
        let (keep, gone): (Vec<Leaf>, Vec<Leaf>) = std::mem::take(&mut a.leaves)
            .into_iter()
            .partition(|l| wanted.iter().any(|(_, id)| *id == l.cgroup_id));
        a.leaves = keep;
        for l in gone {
            self.retire(&agent, l, now);
        }
        // New leaves.
        let a = self.agents.get_mut(&agent).expect("inserted above");
        let idle = a.tracker.state() == State::Idle;
        let mut added = false;
        for (path, id) in wanted {
            if a.leaves.iter().any(|l| l.cgroup_id == id) {
                continue;
            }
            added = true;
            let usage = usage_usec(&path);
            let slot = match &mut self.engine {
                Engine::Bpf(src) => match src.add(&path, idle) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        errors.push(format!("{}: {e:#}", path.display()));
                        continue;
                    }
                },
                Engine::CpuStat { .. } => {
                    if let Err(e) = &usage {
                        errors.push(format!("{}: cpu.stat usage_usec: {e}", path.display()));
                        continue;
                    }
                    None
                }
                Engine::Off => None,
            };
            let usage = usage.unwrap_or(0);
            if let Some((s, _)) = slot {
                self.slots.insert(s, agent.clone());
            }
            log::debug!(
                "activity: {agent}: leaf {} (cgroup id {id})",
                path.display()
            );
            a.leaves.push(Leaf {
                path,
                cgroup_id: id,
                slot,
                switches: 0,
                usage_at_watch: usage,
                usage_mark: usage,
                runtime_mark: 0,
            });
        }
        if idle && added && matches!(self.engine, Engine::Bpf(_)) {
            // A thread already on a CPU when its leaf is added is not seen
            // until it next switches in, and an idle agent is not looked
            // at again by itself: compare the new leaf's cpu.stat with
            // what the kernel side saw soon (check_bpf's untracked runs).
            let look = now + untracked_look(self.opts.idle_threshold);
            a.recheck = Some(a.recheck.map_or(look, |r| r.min(look)));
            a.unseen = true;
            // The new leaf's usage mark was taken just now: a look.
            a.mark_at = now;
        }
        if let Engine::CpuStat { next_sample } = &mut self.engine {
            next_sample.get_or_insert(now + self.opts.sample_interval);
        }
        self.rearm();
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("activity: {agent}: not watched: {}", errors.join("; "))
        }
    }

    /// Stop watching `agent` (it exited). Its family drops it.
    pub fn unwatch(&mut self, agent: &AgentKey) {
        let Some(mut a) = self.agents.remove(agent) else {
            return;
        };
        let now = MonoTime::now();
        for l in std::mem::take(&mut a.leaves) {
            if let (Engine::Bpf(src), Some((slot, _))) = (&mut self.engine, l.slot) {
                src.remove(slot);
                self.slots.remove(&slot);
            }
        }
        log::debug!(
            "activity: {agent}: no longer watched ({})",
            a.tracker.state()
        );
        if let Some(fam) = self.families.get_mut(&agent.family) {
            if let Some(t) = fam.leave(a.tracker.state(), now) {
                Self::family_changed(&mut self.changes, &agent.family, t);
            }
            if fam.agents == 0 {
                self.families.remove(&agent.family);
            }
        }
        self.rearm();
    }

    fn retire(&mut self, agent: &AgentKey, l: Leaf, now: MonoTime) {
        let Some(a) = self.agents.get_mut(agent) else {
            return;
        };
        match (&mut self.engine, l.slot) {
            (Engine::Bpf(src), Some((slot, _))) => {
                let c = src.read(slot, now.as_nanos());
                a.runtime_retired += c.runtime_ns;
                a.wakeups_retired += c.wakeups;
                src.remove(slot);
                self.slots.remove(&slot);
            }
            _ => {
                let u = usage_usec(&l.path)
                    .unwrap_or(l.usage_mark)
                    .max(l.usage_mark);
                a.runtime_retired += (u - l.usage_at_watch) * 1000;
            }
        }
        log::debug!(
            "activity: {agent}: leaf {} no longer watched",
            l.path.display()
        );
    }

    /// Do what is due: read the kernel's edge records, look at agents that
    /// may have gone idle, sample cpu.stat. Returns the transitions (agents
    /// and families), also logged (agents at debug, families at info).
    pub fn process(&mut self, now: MonoTime) -> Vec<Change> {
        if let Some(t) = &self.timer {
            // A one-shot timer: reading clears its readiness.
            let mut n = [0u8; 8];
            let _ = nix::unistd::read(t.as_fd().as_raw_fd(), &mut n);
            self.timer_at = None;
        }
        let mut edges = Vec::new();
        if let Engine::Bpf(src) = &mut self.engine {
            src.drain(&mut |e| edges.push(e));
        }
        for e in edges {
            self.stats.edges += 1;
            let Some(key) = self.slots.get(&e.slot).cloned() else {
                continue;
            };
            let current = self.agents.get(&key).is_some_and(|a| {
                a.leaves
                    .iter()
                    .any(|l| l.slot.is_some_and(|(s, g)| s == e.slot && g == e.gen))
            });
            if current {
                self.woke(&key, MonoTime(e.ts_ns), now);
            }
        }
        let keys: Vec<AgentKey> = self.agents.keys().cloned().collect();
        match self.engine {
            Engine::Bpf(_) => {
                for k in keys {
                    if self.agents[&k].recheck.is_some_and(|r| r <= now) {
                        self.check_bpf(&k, now);
                    }
                }
            }
            Engine::CpuStat { next_sample } => {
                if next_sample.is_some_and(|t| t <= now) {
                    for k in keys {
                        self.check_cpustat(&k, now);
                    }
                    let next = (!self.agents.is_empty()).then(|| now + self.opts.sample_interval);
                    self.engine = Engine::CpuStat { next_sample: next };
                }
            }
            Engine::Off => {}
        }
        self.rearm();
        std::mem::take(&mut self.changes)
    }

    /// The agent ran again at `at`.
    fn woke(&mut self, key: &AgentKey, at: MonoTime, now: MonoTime) {
        let threshold = self.opts.idle_threshold;
        let Some(a) = self.agents.get_mut(key) else {
            return;
        };
        a.last_activity = a.last_activity.max(at);
        a.recheck = Some(a.last_activity + threshold);
        if let Engine::Bpf(src) = &self.engine {
            for l in &a.leaves {
                if let Some((s, _)) = l.slot {
                    src.disarm(s);
                }
            }
        }
        if let Some(t) = a.tracker.set(State::Active, at, now) {
            Self::agent_changed(&mut self.changes, &mut self.families, key, t);
        }
    }

    fn check_bpf(&mut self, key: &AgentKey, now: MonoTime) {
        self.stats.checks += 1;
        let threshold = self.opts.idle_threshold;
        let Engine::Bpf(src) = &self.engine else {
            return;
        };
        let a = self.agents.get_mut(key).expect("checked agent exists");
        let mut running = 0;
        for l in &mut a.leaves {
            let (slot, _) = l.slot.expect("BPF leaves have a slot");
            let c = src.read(slot, now.as_nanos());
            running += c.running;
            if c.last_run_ns > 0 {
                a.last_activity = a.last_activity.max(MonoTime(c.last_run_ns));
            }
            l.switches = c.switches;
        }
        let verdict = judge(now, threshold, running > 0, a.last_activity);
        // A thread on a CPU since before its leaf was watched never
        // switched in under our eyes: its time shows in cpu.stat only.
        // Looked for before an agent is called idle, and at each look
        // while such a thread may be running.
        if a.unseen || matches!(verdict, Verdict::Idle { .. }) {
            let mut untracked = 0;
            for l in &mut a.leaves {
                let (slot, _) = l.slot.expect("BPF leaves have a slot");
                let runtime = src.read(slot, now.as_nanos()).runtime_ns;
                if let Ok(u) = usage_usec(&l.path) {
                    let kernel_ns = u.saturating_sub(l.usage_mark) * 1000;
                    let seen_ns = runtime.saturating_sub(l.runtime_mark);
                    if kernel_ns > seen_ns + UNTRACKED_SLACK_NS + seen_ns / 20 {
                        untracked += kernel_ns - seen_ns;
                    }
                    l.usage_mark = u;
                }
                l.runtime_mark = runtime;
            }
            a.unseen = untracked > 0;
            let prev_look = std::mem::replace(&mut a.mark_at, now);
            let look = untracked_look(threshold);
            if untracked > 0 {
                self.stats.untracked_runs += 1;
                log::debug!(
                    "activity: {key}: {} ms of CPU time in cpu.stat that the kernel side did not see switch in (a thread on a CPU since before its leaf was watched)",
                    untracked / 1_000_000
                );
                // It ran since the previous look. When that look was
                // recent, count it as running until now (an idle verdict is
                // then late by at most about one look, never early). After a
                // long gap (this look itself came late) the run may be long
                // over: it ended no earlier than the previous look plus the
                // CPU time it took there, exact for one thread that ran
                // until it blocked. Either way, look again soon.
                let at = if now.saturating_since(prev_look) <= 2 * look {
                    now
                } else {
                    (prev_look + Duration::from_nanos(untracked)).min(now)
                };
                if a.tracker.state() == State::Idle {
                    self.woke(key, at, now);
                }
                let a = self.agents.get_mut(key).expect("checked agent exists");
                a.last_activity = a.last_activity.max(at);
                a.recheck = Some(now + look);
                return;
            }
        }
        match verdict {
            Verdict::Active { recheck } => a.recheck = Some(recheck),
            Verdict::Idle { since } => {
                // Arm every leaf, then look again: a switch-in between the
                // look and the arming shows as a changed `switches`.
                for l in &a.leaves {
                    src.arm(l.slot.expect("BPF leaves have a slot").0);
                }
                let raced = a.leaves.iter().any(|l| {
                    let (slot, _) = l.slot.expect("BPF leaves have a slot");
                    src.read(slot, now.as_nanos()).switches != l.switches
                });
                if raced {
                    for l in &a.leaves {
                        src.disarm(l.slot.expect("BPF leaves have a slot").0);
                    }
                    a.last_activity = now;
                    a.recheck = Some(now + threshold);
                    return;
                }
                a.recheck = None;
                if let Some(t) = a.tracker.set(State::Idle, since, now) {
                    Self::agent_changed(&mut self.changes, &mut self.families, key, t);
                }
            }
        }
    }

    fn check_cpustat(&mut self, key: &AgentKey, now: MonoTime) {
        self.stats.checks += 1;
        let threshold = self.opts.idle_threshold;
        let a = self.agents.get_mut(key).expect("checked agent exists");
        let mut grew = false;
        for l in &mut a.leaves {
            let u = usage_usec(&l.path);
            log::trace!("activity: {key}: {}: usage_usec {u:?}", l.path.display());
            if let Ok(u) = u {
                if u > l.usage_mark {
                    grew = true;
                    l.usage_mark = u;
                }
            }
        }
        if grew {
            if a.tracker.state() == State::Idle {
                self.woke(key, now, now);
            } else {
                a.last_activity = now;
            }
            return;
        }
        let a = self.agents.get_mut(key).expect("checked agent exists");
        if a.tracker.state() == State::Active {
            if let Verdict::Idle { since } = judge(now, threshold, false, a.last_activity) {
                if let Some(t) = a.tracker.set(State::Idle, since, now) {
                    Self::agent_changed(&mut self.changes, &mut self.families, key, t);
                }
            }
        }
    }

    fn agent_changed(
        changes: &mut Vec<Change>,
        families: &mut BTreeMap<String, Family>,
        key: &AgentKey,
        t: Transition,
    ) {
        log::debug!(
            "activity: agent {key} {} -> {} (noticed after {} ms)",
            t.from,
            t.to,
            t.detected.saturating_since(t.at).as_millis()
        );
        changes.push(Change {
            subject: Subject::Agent(key.clone()),
            transition: t,
        });
        if let Some(f) = families.get_mut(&key.family) {
            if let Some(ft) = f.agent_moved(&t) {
                Self::family_changed(changes, &key.family, ft);
            }
        }
    }

    fn family_changed(changes: &mut Vec<Change>, family: &str, t: Transition) {
        log::info!("activity: family {family} {} -> {}", t.from, t.to);
        changes.push(Change {
            subject: Subject::Family(family.to_string()),
            transition: t,
        });
    }

    /// Arm the timer for the earliest thing due (a one-shot, absolute).
    fn rearm(&mut self) {
        let Some(timer) = &self.timer else {
            return;
        };
        let due = match self.engine {
            Engine::Bpf(_) => self.agents.values().filter_map(|a| a.recheck).min(),
            Engine::CpuStat { next_sample } => next_sample,
            Engine::Off => None,
        };
        if due == self.timer_at {
            return;
        }
        self.timer_at = due;
        let r = match due {
            Some(t) => timer.set(
                Expiration::OneShot(TimeSpec::from_duration(Duration::from_nanos(
                    t.as_nanos().max(1),
                ))),
                TimerSetTimeFlags::TFD_TIMER_ABSTIME,
            ),
            None => timer.unset(),
        };
        if let Err(e) = r {
            log::warn!("activity: timerfd: {e}");
        }
    }

    /// Every agent and family now. `cpu_percent` covers the time since the
    /// previous snapshot (at least 250 ms; a closer one repeats the value).
    pub fn snapshot(&mut self, now: MonoTime) -> Snapshot {
        let mut agents = Vec::with_capacity(self.agents.len());
        for (key, a) in &mut self.agents {
            let (mut runtime, mut wakeups, mut running) = (a.runtime_retired, a.wakeups_retired, 0);
            for l in &a.leaves {
                match (&self.engine, l.slot) {
                    (Engine::Bpf(src), Some((slot, _))) => {
                        let c = src.read(slot, now.as_nanos());
                        runtime += c.runtime_ns;
                        wakeups += c.wakeups;
                        running += c.running;
                    }
                    _ => {
                        let u = usage_usec(&l.path)
                            .unwrap_or(l.usage_mark)
                            .max(l.usage_at_watch);
                        runtime += (u - l.usage_at_watch) * 1000;
                    }
                }
            }
            a.runtime_seen = a.runtime_seen.max(runtime);
            let runtime = a.runtime_seen;
            let dt = now.saturating_since(a.cpu_mark.0);
            if dt >= CPU_MIN_INTERVAL {
                let pct =
                    (runtime - a.cpu_mark.1.min(runtime)) as f64 / dt.as_nanos() as f64 * 100.0;
                a.cpu_percent = Some((pct * 10.0).round() / 10.0);
                a.cpu_mark = (now, runtime);
            }
            let bpf = matches!(self.engine, Engine::Bpf(_));
            agents.push(AgentActivity {
                agent: key.clone(),
                state: a.tracker.state(),
                since: a.tracker.since(),
                transitions: a.tracker.transitions(),
                history: a.tracker.history(),
                runtime_ns: runtime,
                wakeups: bpf.then_some(wakeups),
                running: bpf.then_some(running),
                cpu_percent: a.cpu_percent,
                time_active: a.tracker.time_in(State::Active, now),
                time_idle: a.tracker.time_in(State::Idle, now),
                leaves: a.leaves.iter().map(|l| l.path.clone()).collect(),
            });
        }
        let families = self
            .families
            .iter()
            .map(|(name, f)| FamilyActivity {
                family: name.clone(),
                state: f.tracker.state(),
                since: f.tracker.since(),
                transitions: f.tracker.transitions(),
                history: f.tracker.history(),
                agents: f.agents,
                active_agents: f.active,
                time_active: f.tracker.time_in(State::Active, now),
                time_idle: f.tracker.time_in(State::Idle, now),
            })
            .collect();
        let (backend, reason) = self.backend();
        Snapshot {
            at: now,
            backend,
            reason: reason.map(str::to_string),
            idle_threshold: self.opts.idle_threshold,
            agents,
            families,
            stats: self.stats(),
        }
    }

    /// The monitor's own figures.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        if let Engine::Bpf(src) = &self.engine {
            s.edges_lost = src.edges_lost();
            s.programs = src.prog_stats();
            s.attached = src.attached();
        }
        s
    }
}

/// The cgroup id of the cgroup at `path` (its inode number on cgroup2).
pub fn cgroup_id(path: &Path) -> std::io::Result<u64> {
    std::fs::metadata(path).map(|m| m.ino())
}

fn resolve_id(path: &Path, id: u64) -> anyhow::Result<u64> {
    if id != 0 {
        return Ok(id);
    }
    cgroup_id(path).context("cgroup id")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_loads_nothing_and_watches_nothing() {
        let mut m = Monitor::start(&Options {
            enabled: false,
            ..Options::default()
        });
        assert_eq!(m.backend().0, Backend::Disabled);
        assert!(m.backend().1.is_some_and(|r| r.contains("enabled")));
        assert!(m.as_fd().is_none());
        m.watch(AgentKey::new("x", 1), &[(PathBuf::from("/nonexistent"), 7)])
            .unwrap();
        let s = m.snapshot(MonoTime::now());
        assert!(s.agents.is_empty() && s.families.is_empty());
        assert!(m.process(MonoTime::now()).is_empty());
    }

    #[test]
    fn cpustat_backend_names_its_reason_and_refuses_a_leaf_without_cpu_stat() {
        let mut m = Monitor::start(&Options {
            backend: BackendChoice::CpuStat,
            ..Options::default()
        });
        let (b, why) = m.backend();
        assert_eq!(b, Backend::CpuStat);
        assert!(why.is_some());
        assert!(m.as_fd().is_some());
        let dir = std::env::temp_dir().join(format!("activity-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = m
            .watch(AgentKey::new("fam", 42), &[(dir.clone(), 0)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("fam-42") && err.contains("cpu.stat"), "{err}");
        // The agent is known (it starts active), with no leaf.
        let s = m.snapshot(MonoTime::now());
        assert_eq!(s.agents.len(), 1);
        assert_eq!(s.agents[0].state, State::Active);
        assert!(s.agents[0].leaves.is_empty());
        assert_eq!(s.families[0].family, "fam");
        m.unwatch(&AgentKey::new("fam", 42));
        let s = m.snapshot(MonoTime::now());
        assert!(s.agents.is_empty() && s.families.is_empty());
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn agent_key_is_the_leaf_name() {
        assert_eq!(
            AgentKey::new("claude-code", 4711).to_string(),
            "claude-code-4711"
        );
        assert_eq!(Backend::CpuStat.to_string(), "cpu.stat");
    }
}
