//! Reactive actions: what agentcgd observes (an OOM kill, an agent's crash,
//! sustained memory pressure, an idle agent) sets off configured rules that
//! log or run a command.
//!
//! The daemon hands typed [`Trigger`]s to [`Engine::trigger`], which never
//! blocks: it matches rules, applies the debounce (at most one run per rule
//! and key per interval), and puts runs on a bounded queue
//! ([`QUEUE_CAPACITY`]); a full queue drops the trigger and counts it. A
//! dispatcher thread starts at most `max_running` commands at once, each in
//! its own process group with a clean environment, as the configured user,
//! outside the agent's cgroup (in the daemon's); after `timeout_s` the whole
//! group is killed. Every run is recorded in [`Status::runs`] (bounded) and
//! logged. Pressure is sampled here, from session_high's memory.pressure.

mod config;
mod run;
pub mod users;

pub use config::{
    ActionKind, Argv, Config, ConfigError, DebouncePer, EnvName, FamilyRef, IdleCfg, PressureCfg,
    Rule, RuleName, TriggerKind, UserSpec,
};
pub use run::signal_name;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Runs waiting to start, at most.
pub const QUEUE_CAPACITY: usize = 32;
/// How often session_high's memory.pressure is read.
pub const PRESSURE_SAMPLE: Duration = Duration::from_secs(1);
/// On stop, running commands get this long before their groups are killed.
pub const STOP_GRACE: Duration = Duration::from_millis(500);

/// An agent instance: the process its family's own rule placed, with its
/// descendants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Agent {
    /// `FAMILY-ROOTPID`, as the per-agent leaves are named.
    pub id: String,
    pub family: String,
    pub root_pid: u32,
    /// Owner of the root process (for `user: agent`).
    pub uid: Option<u32>,
    /// Working directory of the root process when it was placed.
    pub cwd: Option<PathBuf>,
    /// The cgroup directory it lives in.
    pub cgroup: Option<PathBuf>,
}

impl Agent {
    pub fn new(family: &str, root_pid: u32) -> Agent {
        Agent {
            id: format!("{family}-{root_pid}"),
            family: family.to_string(),
            root_pid,
            uid: None,
            cwd: None,
            cgroup: None,
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// From a wait status ((code << 8) | signal).
    pub fn from_wait_status(ws: i32) -> Exit {
        if ws & 0x7f != 0 {
            Exit::Signal(ws & 0x7f)
        } else {
            Exit::Code((ws >> 8) & 0xff)
        }
    }

    /// A crash: a signal or a non-zero exit code.
    pub fn is_crash(self) -> bool {
        !matches!(self, Exit::Code(0))
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit:{c}"),
            Exit::Signal(s) => write!(f, "signal:{}", signal_name(*s)),
        }
    }
}

/// Something the daemon saw.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// Process `pid` of `agent` was killed by the OOM killer.
    OomKill { agent: Agent, pid: u32 },
    /// The agent's root process ended with `exit` (a crash only if
    /// [`Exit::is_crash`]; others are ignored).
    Crash { agent: Agent, exit: Exit },
    /// `session`'s memory pressure ("some avg10", percent) has been at or
    /// above a rule's threshold for `above_for`.
    Pressure {
        session: String,
        cgroup: PathBuf,
        some_avg10: f64,
        above_for: Duration,
    },
    /// The agent has been idle for `idle_for`.
    Idle { agent: Agent, idle_for: Duration },
}

impl Trigger {
    pub fn kind(&self) -> TriggerKind {
        match self {
            Trigger::OomKill { .. } => TriggerKind::OomKill,
            Trigger::Crash { .. } => TriggerKind::Crash,
            Trigger::Pressure { .. } => TriggerKind::Pressure,
            Trigger::Idle { .. } => TriggerKind::Idle,
        }
    }

    pub fn agent(&self) -> Option<&Agent> {
        match self {
            Trigger::OomKill { agent, .. }
            | Trigger::Crash { agent, .. }
            | Trigger::Idle { agent, .. } => Some(agent),
            Trigger::Pressure { .. } => None,
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Trigger::OomKill { pid, .. } => Some(*pid),
            Trigger::Crash { agent, .. } | Trigger::Idle { agent, .. } => Some(agent.root_pid),
            Trigger::Pressure { .. } => None,
        }
    }

    fn exit(&self) -> Option<String> {
        match self {
            Trigger::OomKill { .. } => Some(Exit::Signal(libc::SIGKILL).to_string()),
            Trigger::Crash { exit, .. } => Some(exit.to_string()),
            _ => None,
        }
    }

    fn cgroup(&self) -> Option<&PathBuf> {
        match self {
            Trigger::Pressure { cgroup, .. } => Some(cgroup),
            _ => self.agent().and_then(|a| a.cgroup.as_ref()),
        }
    }

    /// Whether `rule` is about this trigger.
    fn matches(&self, rule: &Rule) -> bool {
        if !rule.on.contains(&self.kind()) {
            return false;
        }
        if let Some(a) = self.agent() {
            if !rule.families.is_empty() && !rule.families.iter().any(|f| f.as_str() == a.family) {
                return false;
            }
        }
        match self {
            Trigger::Crash { exit, .. } => exit.is_crash(),
            Trigger::Pressure {
                some_avg10,
                above_for,
                ..
            } => rule
                .pressure
                .is_some_and(|p| *some_avg10 >= p.some_avg10 && above_for.as_secs() >= p.for_s),
            Trigger::Idle { idle_for, .. } => {
                rule.idle.is_some_and(|i| idle_for.as_secs() >= i.after_s)
            }
            Trigger::OomKill { .. } => true,
        }
    }

    /// What counts as "the same" for `rule`'s debounce.
    fn debounce_key(&self, per: DebouncePer) -> String {
        match (self, self.agent()) {
            (Trigger::Pressure { session, .. }, _) => session.clone(),
            (_, Some(a)) => match per {
                DebouncePer::Agent => a.id.clone(),
                DebouncePer::Family => a.family.clone(),
                DebouncePer::Workspace => match &a.cwd {
                    Some(cwd) => format!("{}:{}", a.family, cwd.display()),
                    None => a.id.clone(),
                },
            },
            (_, None) => String::new(),
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::OomKill { agent, pid } => {
                write!(f, "oom_kill of pid {pid} of {}", agent.id)
            }
            Trigger::Crash { agent, exit } => {
                write!(f, "crash of {} (pid {}, {exit})", agent.id, agent.root_pid)
            }
            Trigger::Pressure {
                session,
                some_avg10,
                above_for,
                ..
            } => write!(
                f,
                "pressure in {session} (some avg10 {some_avg10:.1}% for {} s)",
                above_for.as_secs()
            ),
            Trigger::Idle { agent, idle_for } => {
                write!(f, "idle {} for {} s", agent.id, idle_for.as_secs())
            }
        }
    }
}

/// How the daemon runs the engine.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--dry-run`: log and record what would run, run nothing.
    pub dry_run: bool,
    /// Sampled for `pressure` triggers (session_high's memory.pressure).
    pub pressure_file: Option<PathBuf>,
    /// The session the pressure file belongs to (`session_high`).
    pub pressure_session: String,
    /// Triggers the daemon cannot deliver, with the reason (shown in status).
    pub unavailable: Vec<(TriggerKind, String)>,
    /// /etc/passwd and /etc/group (tests point these elsewhere).
    pub passwd: Option<PathBuf>,
    pub group: Option<PathBuf>,
}

/// One run (or log action), for `status` and the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub rule: String,
    pub trigger: TriggerKind,
    /// The trigger, in words.
    pub event: String,
    pub agent: Option<String>,
    pub family: Option<String>,
    pub pid: Option<u32>,
    pub action: ActionKind,
    pub command: Vec<String>,
    pub user: Option<String>,
    pub dry_run: bool,
    pub started_at_ms: u64,
    pub duration_ms: u64,
    /// Time spent in the queue.
    pub queued_ms: u64,
    /// `exit:N` | `signal:NAME` of the command.
    pub exit: Option<String>,
    pub killed_by_timeout: bool,
    pub killed_by_stop: bool,
    pub error: Option<String>,
    /// The tail of its stdout and stderr.
    pub output: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Triggers handed to the engine while enabled.
    pub triggers: u64,
    /// (trigger, rule) pairs that matched.
    pub matched: u64,
    /// Suppressed by a rule's debounce.
    pub debounced: u64,
    /// Put on the queue.
    pub queued: u64,
    /// Dropped because the queue was full.
    pub dropped_queue_full: u64,
    /// Dropped from the queue when the daemon stopped.
    pub dropped_at_stop: u64,
    /// Commands started (or, in dry-run, that would have been).
    pub runs: u64,
    /// Commands that did not exit 0 (timeouts and spawn errors included).
    pub failed: u64,
    pub timed_out: u64,
    /// `action: log` lines written.
    pub logged: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleStatus {
    pub name: String,
    pub on: Vec<TriggerKind>,
    pub action: ActionKind,
    pub families: Vec<String>,
    pub debounce_s: u64,
    pub timeout_s: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Running {
    pub rule: String,
    pub agent: Option<String>,
    pub pid: Option<u32>,
    pub started_at_ms: u64,
}

/// The engine's state for `agentcgd status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    pub enabled: bool,
    pub dry_run: bool,
    pub max_running: usize,
    pub queue_capacity: usize,
    /// Waiting to start now.
    pub queued: usize,
    pub running: Vec<Running>,
    pub rules: Vec<RuleStatus>,
    /// Triggers used by a rule that cannot fire here, and why.
    pub unavailable: Vec<String>,
    pub counters: Counters,
    /// The last rejected reload (the previous reactions stay in force).
    pub last_error: Option<String>,
    /// The latest runs, oldest first.
    pub runs: Vec<RunRecord>,
}

struct Job {
    rule: Rule,
    trigger: Trigger,
    queued_at: Instant,
}

struct Inner {
    cfg: Config,
    opts: Options,
    queue: VecDeque<Job>,
    running: HashMap<u64, Running>,
    next_run: u64,
    last: HashMap<(String, String), Instant>,
    counters: Counters,
    history: VecDeque<RunRecord>,
    last_error: Option<String>,
    sampler_error: Option<String>,
    last_drop_log: Option<Instant>,
    stopping: bool,
    kill_all: bool,
}

impl Inner {
    fn dry_run(&self) -> bool {
        self.opts.dry_run || self.cfg.dry_run
    }

    fn record(&mut self, rec: RunRecord) {
        self.history.push_back(rec);
        while self.history.len() > self.cfg.history {
            self.history.pop_front();
        }
    }

    fn unavailable(&self) -> Vec<String> {
        let mut v = Vec::new();
        if !self.cfg.enabled {
            return v;
        }
        for (kind, why) in &self.opts.unavailable {
            for r in self.cfg.rules_on(*kind) {
                v.push(format!("{kind} (rule {}): {why}", r.name));
            }
        }
        if self.cfg.rules_on(TriggerKind::Pressure).next().is_some() {
            match (&self.opts.pressure_file, &self.sampler_error) {
                (None, _) => v.push("pressure: no pressure file to sample".into()),
                (Some(_), Some(e)) => v.push(format!("pressure: {e}")),
                _ => {}
            }
        }
        v
    }
}

struct Shared {
    inner: Mutex<Inner>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running engine. Dropping it stops it like [`Engine::stop`].
pub struct Engine {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Engine {
    /// Start with a validated config (see [`Config::validate`] and
    /// [`Config::check_system`]). With `enabled: false` nothing runs, but
    /// [`Engine::reconfigure`] can turn it on later.
    pub fn start(cfg: Config, opts: Options) -> Engine {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                cfg,
                opts,
                queue: VecDeque::new(),
                running: HashMap::new(),
                next_run: 0,
                last: HashMap::new(),
                counters: Counters::default(),
                history: VecDeque::new(),
                last_error: None,
                sampler_error: None,
                last_drop_log: None,
                stopping: false,
                kill_all: false,
            }),
            cv: Condvar::new(),
        });
        let mut threads = Vec::new();
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("reactions".into())
                .spawn(move || dispatch(s))
                .expect("spawn reactions thread"),
        );
        if shared.lock().opts.pressure_file.is_some() {
            let s = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("reactions-psi".into())
                    .spawn(move || sample_pressure(s))
                    .expect("spawn pressure thread"),
            );
        }
        let e = Engine { shared, threads };
        e.announce();
        e
    }

    /// An engine that is off and stays off.
    pub fn off() -> Engine {
        Engine::start(Config::default(), Options::default())
    }

    fn announce(&self) {
        let g = self.shared.lock();
        if !g.cfg.enabled {
            return;
        }
        log::info!(
            "reactions: {} rules, at most {} running, queue {}{}",
            g.cfg.rules.len(),
            g.cfg.max_running,
            QUEUE_CAPACITY,
            if g.dry_run() { " (dry-run)" } else { "" }
        );
        for u in g.unavailable() {
            log::warn!("reactions: {u}");
        }
    }

    /// Whether any enabled rule listens for `kind` (lets the daemon skip
    /// gathering what only reactions need).
    pub fn wants(&self, kind: TriggerKind) -> bool {
        let g = self.shared.lock();
        g.cfg.enabled && g.cfg.rules_on(kind).next().is_some()
    }

    /// Hand over something that happened. Never blocks on a run: matching,
    /// debounce and queueing only.
    pub fn trigger(&self, t: Trigger) {
        let mut g = self.shared.lock();
        if !g.cfg.enabled || g.stopping {
            return;
        }
        g.counters.triggers += 1;
        let rules: Vec<Rule> = g
            .cfg
            .rules
            .iter()
            .filter(|r| t.matches(r))
            .cloned()
            .collect();
        for rule in rules {
            g.counters.matched += 1;
            let key = (rule.name.to_string(), t.debounce_key(rule.debounce_per));
            let now = Instant::now();
            if let Some(at) = g.last.get(&key) {
                if now.duration_since(*at) < Duration::from_secs(rule.debounce_s) {
                    g.counters.debounced += 1;
                    log::debug!("reaction {}: {t}: debounced", rule.name);
                    continue;
                }
            }
            match rule.action {
                ActionKind::Log => {
                    g.last.insert(key, now);
                    g.counters.logged += 1;
                    log::warn!("reaction {}: {t}", rule.name);
                    let rec = record(&rule, &t, ActionKind::Log, g.dry_run());
                    g.record(rec);
                }
                ActionKind::Run => {
                    if g.queue.len() >= QUEUE_CAPACITY {
                        g.counters.dropped_queue_full += 1;
                        if g.last_drop_log
                            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
                        {
                            g.last_drop_log = Some(now);
                            log::warn!(
                                "reaction {}: {t}: queue full ({QUEUE_CAPACITY}), dropped ({} dropped so far)",
                                rule.name,
                                g.counters.dropped_queue_full
                            );
                        }
                        continue;
                    }
                    g.last.insert(key, now);
                    g.counters.queued += 1;
                    g.queue.push_back(Job {
                        rule,
                        trigger: t.clone(),
                        queued_at: now,
                    });
                    self.shared.cv.notify_all();
                }
            }
        }
        // Forget debounce entries that can no longer suppress anything.
        if g.last.len() > 4096 {
            let max = g.cfg.rules.iter().map(|r| r.debounce_s).max().unwrap_or(0);
            g.last
                .retain(|_, at| at.elapsed() < Duration::from_secs(max));
        }
    }

    /// Replace the config (a reload). Debounce state of rules that keep
    /// their name is kept; queued and running commands finish.
    pub fn reconfigure(&self, cfg: Config) {
        {
            let mut g = self.shared.lock();
            let names: Vec<String> = cfg.rules.iter().map(|r| r.name.to_string()).collect();
            g.last.retain(|(rule, _), _| names.contains(rule));
            g.cfg = cfg;
            g.last_error = None;
            self.shared.cv.notify_all();
        }
        self.announce();
    }

    /// A reload was rejected: say so in status; the current config stays.
    pub fn reload_failed(&self, why: String) {
        self.shared.lock().last_error = Some(why);
    }

    pub fn status(&self) -> Status {
        let g = self.shared.lock();
        let mut running: Vec<Running> = g.running.values().cloned().collect();
        running.sort_by_key(|r| r.started_at_ms);
        Status {
            enabled: g.cfg.enabled,
            dry_run: g.dry_run(),
            max_running: g.cfg.max_running,
            queue_capacity: QUEUE_CAPACITY,
            queued: g.queue.len(),
            running,
            rules: g
                .cfg
                .rules
                .iter()
                .map(|r| RuleStatus {
                    name: r.name.to_string(),
                    on: r.on.clone(),
                    action: r.action,
                    families: r.families.iter().map(|f| f.as_str().to_string()).collect(),
                    debounce_s: r.debounce_s,
                    timeout_s: r.timeout_s,
                })
                .collect(),
            unavailable: g.unavailable(),
            counters: g.counters,
            last_error: g.last_error.clone(),
            runs: g.history.iter().cloned().collect(),
        }
    }

    /// Stop: drop what is queued, give running commands [`STOP_GRACE`],
    /// then kill their process groups. Returns within about a second.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// [`Engine::stop`] in place; the engine takes no triggers afterwards.
    pub fn shutdown(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        {
            let mut g = self.shared.lock();
            g.stopping = true;
            let n = g.queue.len() as u64;
            g.queue.clear();
            g.counters.dropped_at_stop += n;
            if n > 0 {
                log::warn!("reactions: stopping, {n} queued runs dropped");
            }
            self.shared.cv.notify_all();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let wait_idle = |limit: Duration| {
            let deadline = Instant::now() + limit;
            let mut g = self.shared.lock();
            while !g.running.is_empty() && Instant::now() < deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                g = self
                    .shared
                    .cv
                    .wait_timeout(g, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            g.running.is_empty()
        };
        if !wait_idle(STOP_GRACE) {
            self.shared.lock().kill_all = true;
            log::warn!("reactions: stopping, killing running commands");
            wait_idle(Duration::from_millis(500));
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn record(rule: &Rule, t: &Trigger, action: ActionKind, dry_run: bool) -> RunRecord {
    RunRecord {
        rule: rule.name.to_string(),
        trigger: t.kind(),
        event: t.to_string(),
        agent: t.agent().map(|a| a.id.clone()),
        family: t.agent().map(|a| a.family.clone()),
        pid: t.pid(),
        action,
        command: rule
            .command
            .as_ref()
            .map(|c| c.as_slice().to_vec())
            .unwrap_or_default(),
        user: rule.user.as_ref().map(|u| u.to_string()),
        dry_run,
        started_at_ms: now_ms(),
        duration_ms: 0,
        queued_ms: 0,
        exit: None,
        killed_by_timeout: false,
        killed_by_stop: false,
        error: None,
        output: String::new(),
    }
}

/// Start queued runs while fewer than `max_running` run.
fn dispatch(s: Arc<Shared>) {
    loop {
        let job = {
            let mut g = s.lock();
            loop {
                if g.stopping {
                    return;
                }
                if !g.queue.is_empty() && g.running.len() < g.cfg.max_running {
                    break;
                }
                g = s.cv.wait(g).unwrap_or_else(|p| p.into_inner());
            }
            let job = g.queue.pop_front().expect("queue not empty");
            g.next_run += 1;
            let id = g.next_run;
            g.running.insert(
                id,
                Running {
                    rule: job.rule.name.to_string(),
                    agent: job.trigger.agent().map(|a| a.id.clone()),
                    pid: None,
                    started_at_ms: now_ms(),
                },
            );
            (id, job)
        };
        let (id, job) = job;
        let s2 = s.clone();
        let spawned = std::thread::Builder::new()
            .name("reaction-run".into())
            .spawn(move || execute(s2, id, job));
        if let Err(e) = spawned {
            log::error!("reactions: cannot start a run thread: {e}");
            s.lock().running.remove(&id);
        }
    }
}

fn environment(job: &Job, account: &users::Account) -> Vec<(String, String)> {
    let t = &job.trigger;
    let a = t.agent();
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOME".into(), account.home.clone()),
        ("USER".into(), account.name.clone()),
        ("LOGNAME".into(), account.name.clone()),
        ("AGENTCG_RULE".into(), job.rule.name.to_string()),
        ("AGENTCG_EVENT".into(), t.kind().to_string()),
        (
            "AGENTCG_FAMILY".into(),
            a.map(|a| a.family.clone()).unwrap_or_default(),
        ),
        (
            "AGENTCG_AGENT".into(),
            a.map(|a| a.id.clone()).unwrap_or_default(),
        ),
        (
            "AGENTCG_PID".into(),
            t.pid().map(|p| p.to_string()).unwrap_or_default(),
        ),
        (
            "AGENTCG_CGROUP".into(),
            t.cgroup()
                .map(|c| c.display().to_string())
                .unwrap_or_default(),
        ),
        ("AGENTCG_EXIT".into(), t.exit().unwrap_or_default()),
        (
            "AGENTCG_CWD".into(),
            a.and_then(|a| a.cwd.as_ref())
                .map(|c| c.display().to_string())
                .unwrap_or_default(),
        ),
    ];
    match t {
        Trigger::Pressure { some_avg10, .. } => {
            env.push(("AGENTCG_PRESSURE".into(), format!("{some_avg10:.2}")))
        }
        Trigger::Idle { idle_for, .. } => {
            env.push(("AGENTCG_IDLE_S".into(), idle_for.as_secs().to_string()))
        }
        _ => {}
    }
    for (k, v) in &job.rule.env {
        env.retain(|(name, _)| name != k.as_str());
        env.push((k.as_str().to_string(), v.clone()));
    }
    env
}

fn account_for(
    job: &Job,
    passwd: &std::path::Path,
    group: &std::path::Path,
) -> Result<users::Account, String> {
    match job.rule.user.as_ref() {
        Some(UserSpec::Name(n)) => users::resolve(passwd, group, Some(n), None),
        Some(UserSpec::Uid(u)) => users::resolve(passwd, group, None, Some(*u)),
        Some(UserSpec::Agent) => match job.trigger.agent().and_then(|a| a.uid) {
            Some(u) => users::resolve(passwd, group, None, Some(u)),
            None => Err("`user: agent` but the agent's owner is unknown".into()),
        },
        None => Err("no user configured".into()),
    }
}

fn execute(s: Arc<Shared>, id: u64, job: Job) {
    let (dry_run, passwd, group) = {
        let g = s.lock();
        (
            g.dry_run(),
            g.opts
                .passwd
                .clone()
                .unwrap_or_else(|| users::PASSWD.into()),
            g.opts.group.clone().unwrap_or_else(|| users::GROUP.into()),
        )
    };
    let mut rec = record(&job.rule, &job.trigger, ActionKind::Run, dry_run);
    rec.queued_ms = job.queued_at.elapsed().as_millis() as u64;
    let started = Instant::now();
    let argv = job
        .rule
        .command
        .as_ref()
        .map(|c| c.as_slice().to_vec())
        .unwrap_or_default();
    match account_for(&job, &passwd, &group) {
        Err(e) => rec.error = Some(e),
        Ok(acct) => {
            rec.user = Some(format!("{} ({})", acct.name, acct.uid));
            let env = environment(&job, &acct);
            if dry_run {
                log::info!(
                    "dry-run: reaction {} ({}) would run {:?} as {} (uid {}) with {}",
                    job.rule.name,
                    job.trigger,
                    argv,
                    acct.name,
                    acct.uid,
                    env.iter()
                        .filter(|(k, _)| k.starts_with("AGENTCG_"))
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            } else {
                // SAFETY: geteuid has no preconditions.
                let same = unsafe { libc::geteuid() } == acct.uid;
                let creds = (!same).then(|| (acct.uid, acct.gid, acct.groups.clone()));
                let stop = || s.lock().kill_all;
                let mut started_cb = |pid: u32| {
                    if let Some(r) = s.lock().running.get_mut(&id) {
                        r.pid = Some(pid);
                    }
                };
                let out = run::run(
                    run::Spec {
                        argv: &argv,
                        env,
                        creds,
                        timeout: Duration::from_secs(job.rule.timeout_s),
                    },
                    &stop,
                    &mut started_cb,
                );
                rec.exit = out.exit;
                rec.killed_by_timeout = out.killed_by_timeout;
                rec.killed_by_stop = out.killed_by_stop;
                rec.error = out.error;
                rec.output = out.output;
                if let Some(pid) = out.pid {
                    rec.pid = rec.pid.or(Some(pid));
                }
                if !out.success && rec.error.is_none() && rec.exit.is_none() {
                    rec.error = Some("no exit status".into());
                }
            }
        }
    }
    rec.duration_ms = started.elapsed().as_millis() as u64;
    let ok = rec.error.is_none() && (dry_run || rec.exit.as_deref() == Some("exit:0"));
    let tail: String = rec
        .output
        .trim_end()
        .lines()
        .rev()
        .take(3)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join(" | ");
    let what = format!(
        "reaction {} ({}): {:?} as {}",
        rec.rule,
        rec.event,
        argv,
        rec.user.as_deref().unwrap_or("?")
    );
    if dry_run {
    } else if ok {
        log::info!("{what}: exit 0 in {} ms", rec.duration_ms);
    } else {
        log::warn!(
            "{what}: {}{} after {} ms{}",
            rec.exit.as_deref().unwrap_or("not run"),
            if rec.killed_by_timeout {
                format!(" (killed at its {} s timeout)", job.rule.timeout_s)
            } else if rec.killed_by_stop {
                " (killed: agentcgd stopping)".to_string()
            } else {
                String::new()
            },
            rec.duration_ms,
            match (&rec.error, tail.is_empty()) {
                (Some(e), _) => format!(": {e}"),
                (None, false) => format!(": {tail}"),
                (None, true) => String::new(),
            }
        );
    }
    let mut g = s.lock();
    g.counters.runs += 1;
    if !ok {
        g.counters.failed += 1;
    }
    if rec.killed_by_timeout {
        g.counters.timed_out += 1;
    }
    g.record(rec);
    g.running.remove(&id);
    s.cv.notify_all();
}

/// Follows session_high's memory.pressure for the `pressure` rules.
fn sample_pressure(s: Arc<Shared>) {
    // Per rule: since when the pressure has been at or above its threshold,
    // and whether it fired in this episode.
    let mut above: HashMap<String, (Instant, bool)> = HashMap::new();
    let mut g = s.lock();
    let mut next = Instant::now() + PRESSURE_SAMPLE;
    loop {
        // No pressure rule, nothing to sample: sleep until a reload (which
        // notifies the condvar) or the stop, so an idle daemon stays asleep.
        let has_rules =
            |c: &Config| c.enabled && c.rules_on(TriggerKind::Pressure).next().is_some();
        while !g.stopping && !has_rules(&g.cfg) {
            above.clear();
            g = s.cv.wait(g).unwrap_or_else(|p| p.into_inner());
            next = Instant::now();
        }
        // The condvar is shared: other wake-ups do not sample early.
        while !g.stopping && Instant::now() < next {
            let left = next.saturating_duration_since(Instant::now());
            g =
                s.cv.wait_timeout(g, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
        }
        if g.stopping {
            return;
        }
        next = Instant::now() + PRESSURE_SAMPLE;
        let rules: Vec<Rule> = if g.cfg.enabled {
            g.cfg.rules_on(TriggerKind::Pressure).cloned().collect()
        } else {
            Vec::new()
        };
        if rules.is_empty() {
            above.clear();
            continue;
        }
        let (Some(file), session) = (
            g.opts.pressure_file.clone(),
            g.opts.pressure_session.clone(),
        ) else {
            continue;
        };
        drop(g);
        let sample = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))
            .and_then(|t| {
                cgroupfs::Pressure::parse(&t)
                    .some
                    .map(|p| p.avg10)
                    .ok_or_else(|| format!("{}: no `some` line", file.display()))
            });
        let mut fire = Vec::new();
        let err = match sample {
            Err(e) => Some(e),
            Ok(avg10) => {
                let now = Instant::now();
                for r in &rules {
                    let p = r.pressure.expect("validated");
                    let name = r.name.to_string();
                    if avg10 >= p.some_avg10 {
                        let e = above.entry(name).or_insert((now, false));
                        let dur = now.duration_since(e.0);
                        if !e.1 && dur.as_secs() >= p.for_s {
                            e.1 = true;
                            fire.push(Trigger::Pressure {
                                session: session.clone(),
                                cgroup: file.parent().map(PathBuf::from).unwrap_or_default(),
                                some_avg10: avg10,
                                above_for: dur,
                            });
                        }
                    } else {
                        above.remove(&name);
                    }
                }
                None
            }
        };
        {
            let mut g = s.lock();
            if g.sampler_error != err {
                if let Some(e) = &err {
                    log::warn!("reactions: pressure trigger not available: {e}");
                }
                g.sampler_error = err;
            }
        }
        for t in fire {
            engine_trigger(&s, t);
        }
        g = s.lock();
    }
}

fn engine_trigger(s: &Arc<Shared>, t: Trigger) {
    // The same path as Engine::trigger, for the engine's own sampler.
    let e = Engine {
        shared: s.clone(),
        threads: Vec::new(),
    };
    e.trigger(t);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_status_decoding() {
        assert_eq!(Exit::from_wait_status(3 << 8), Exit::Code(3));
        assert_eq!(Exit::from_wait_status(9), Exit::Signal(9));
        assert!(!Exit::from_wait_status(0).is_crash());
        assert_eq!(Exit::Signal(11).to_string(), "signal:SIGSEGV");
        assert_eq!(Exit::Code(2).to_string(), "exit:2");
    }

    #[test]
    fn debounce_keys() {
        let mut a = Agent::new("claude-code", 10);
        a.cwd = Some("/w".into());
        let mut b = Agent::new("claude-code", 11);
        b.cwd = Some("/w".into());
        let t = |a: &Agent| Trigger::Crash {
            agent: a.clone(),
            exit: Exit::Code(1),
        };
        assert_eq!(
            t(&a).debounce_key(DebouncePer::Workspace),
            t(&b).debounce_key(DebouncePer::Workspace)
        );
        assert_ne!(
            t(&a).debounce_key(DebouncePer::Agent),
            t(&b).debounce_key(DebouncePer::Agent)
        );
        b.cwd = Some("/other".into());
        assert_ne!(
            t(&a).debounce_key(DebouncePer::Workspace),
            t(&b).debounce_key(DebouncePer::Workspace)
        );
        assert_eq!(
            t(&a).debounce_key(DebouncePer::Family),
            t(&b).debounce_key(DebouncePer::Family)
        );
    }
}
