//! The observers: the activity monitor (sched_switch in BPF,
//! or cpu.stat) and the accounting sampler, on a thread of their own so
//! that nothing they read or compute delays a placement. They only read:
//! no cgroup file is written here (docs/activity.md says why cpu.idle and
//! cpu.weight are left alone).
//!
//! Data flows one way: the state writer hands the current agents in (when
//! the set changed) and the daemon hands agent exits in; what the observers
//! saw is published in `Observed`, which the state writer folds into the
//! state file, the metrics and `top`.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::state::{now_ms, Activity, FamilyActivity, Transition};

/// How often the published view is renewed (and accounting looked at).
const TICK: Duration = Duration::from_millis(1000);

/// One agent to observe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    pub id: String,
    pub family: String,
    pub root_pid: u32,
    /// Its leaf directories, high first.
    pub leaves: Vec<PathBuf>,
    /// Processes the daemon tracks for it: (pid, start ticks).
    pub pids: Vec<(u32, u64)>,
}

impl Watch {
    fn agent_ref(&self) -> accounting::AgentRef {
        accounting::AgentRef {
            id: self.id.clone(),
            leaves: self.leaves.clone(),
            pids: self.pids.clone(),
        }
    }

    fn key(&self) -> activity::AgentKey {
        activity::AgentKey::new(self.family.clone(), self.root_pid)
    }
}

enum Input {
    Agents(Vec<Watch>),
    Exit(Box<(Watch, accounting::ExitInfo)>),
    IdleAfter(Vec<u64>),
}

/// One agent's activity as published.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentView {
    pub state: Activity,
    pub state_since_ms: u64,
    pub transitions: u64,
    pub history: Vec<Transition>,
    pub cpu_percent: Option<f64>,
}

/// What the observers saw last.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// `bpf`, `cpu.stat (<why not bpf>)` or `disabled: <why>`.
    pub activity: String,
    pub agents: HashMap<String, AgentView>,
    pub families: BTreeMap<String, FamilyActivity>,
    pub usage: BTreeMap<String, accounting::AgentUsage>,
    pub exits: Vec<accounting::ExitRecord>,
    pub gpu: accounting::GpuStatus,
}

/// What the observer thread needs from the configuration.
pub struct Settings {
    pub activity: activity::Options,
    pub accounting: accounting::Config,
    /// `idle.after_s` of the reaction rules that have one.
    pub idle_after: Vec<u64>,
    pub reactions: Arc<reactions::Engine>,
}

/// The observer thread's handle: one way in (`agents`, `exit`), one way
/// out (`view`). Dropping it stops the thread.
pub struct Observer {
    tx: Option<mpsc::Sender<Input>>,
    wake: Arc<EventFd>,
    view: Arc<Mutex<Observed>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Observer {
    pub fn spawn(settings: Settings) -> std::io::Result<Observer> {
        let wake = Arc::new(
            EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .map_err(std::io::Error::from)?,
        );
        let (tx, rx) = mpsc::channel();
        let view = Arc::new(Mutex::new(Observed::default()));
        let (w, v) = (wake.clone(), view.clone());
        // The BPF objects are not Send: the monitor is made on its thread.
        let thread = std::thread::Builder::new()
            .name("observe".into())
            .spawn(move || run(settings, rx, w, v))?;
        Ok(Observer {
            tx: Some(tx),
            wake,
            view,
            thread: Some(thread),
        })
    }

    fn send(&self, i: Input) {
        if let Some(tx) = &self.tx {
            if tx.send(i).is_ok() {
                let _ = self.wake.write(1);
            }
        }
    }

    /// The agents now (the whole set).
    pub fn agents(&self, list: Vec<Watch>) {
        self.send(Input::Agents(list));
    }

    /// An agent's root process exited: record it.
    pub fn exit(&self, w: Watch, info: accounting::ExitInfo) {
        self.send(Input::Exit(Box::new((w, info))));
    }

    /// The reaction rules' idle thresholds changed (a reload).
    pub fn idle_after(&self, after: Vec<u64>) {
        self.send(Input::IdleAfter(after));
    }

    pub fn view(&self) -> Observed {
        self.view.lock().unwrap().clone()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.tx = None;
        let _ = self.wake.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Unix ms of a monotonic instant, `at` being "now" on both clocks.
fn unix_ms(t: activity::MonoTime, at: activity::MonoTime, at_ms: u64) -> u64 {
    at_ms.saturating_sub(at.saturating_since(t).as_millis() as u64)
}

fn activity_of(s: activity::State) -> Activity {
    match s {
        activity::State::Active => Activity::Active,
        activity::State::Idle => Activity::Idle,
    }
}

const TOKEN_WAKE: u64 = 1;
const TOKEN_ACTIVITY: u64 = 2;

fn run(
    settings: Settings,
    rx: mpsc::Receiver<Input>,
    wake: Arc<EventFd>,
    view: Arc<Mutex<Observed>>,
) {
    let mut mon = activity::Monitor::start(&settings.activity);
    let mut sampler = accounting::Sampler::from_config(&settings.accounting);
    let mut exits = accounting::ExitLog::default();
    let mut idle_after = settings.idle_after.clone();
    idle_after.sort_unstable();
    let (backend, why) = mon.backend();
    let line = match (backend, why) {
        (activity::Backend::Bpf, _) => "bpf: sched_switch".to_string(),
        (b, Some(why)) => format!("{b}: {why}"),
        (b, None) => b.to_string(),
    };
    log::info!("activity: {line}");
    view.lock().unwrap().activity = line.clone();

    let Ok(epoll) = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) else {
        log::error!("observers: no epoll; activity and accounting stop");
        return;
    };
    let _ = epoll.add(
        wake.as_fd(),
        EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_WAKE),
    );
    if let Some(fd) = mon.as_fd() {
        let _ = epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_ACTIVITY));
    }
    let mut agents: BTreeMap<String, Watch> = BTreeMap::new();
    // Per agent: how many idle thresholds fired in its current idle spell.
    let mut fired: HashMap<String, usize> = HashMap::new();
    let mut events = [EpollEvent::empty(); 4];
    // None: nothing to look at (no agent, no GPU) until an input comes,
    // so an idle daemon's observer does not wake at all.
    let mut next_tick = Some(std::time::Instant::now());
    loop {
        let timeout = match next_tick {
            Some(t) => {
                let wait = t.saturating_duration_since(std::time::Instant::now());
                EpollTimeout::try_from(wait + Duration::from_millis(1)).unwrap_or(EpollTimeout::MAX)
            }
            None => EpollTimeout::NONE,
        };
        let n = epoll.wait(&mut events, timeout).unwrap_or(0);
        let mut activity_due = false;
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_WAKE => {
                    let _ = wake.read();
                }
                TOKEN_ACTIVITY => activity_due = true,
                _ => {}
            }
        }
        loop {
            let input = rx.try_recv();
            if input.is_ok() && next_tick.is_none() {
                next_tick = Some(std::time::Instant::now());
            }
            match input {
                Ok(Input::Agents(list)) => {
                    let new: BTreeMap<String, Watch> =
                        list.into_iter().map(|w| (w.id.clone(), w)).collect();
                    for (id, w) in &agents {
                        if !new.contains_key(id) {
                            mon.unwatch(&w.key());
                            fired.remove(id);
                        }
                    }
                    for (id, w) in &new {
                        if agents.get(id).map(|o| &o.leaves) != Some(&w.leaves) {
                            let leaves: Vec<(PathBuf, u64)> =
                                w.leaves.iter().map(|l| (l.clone(), 0)).collect();
                            if let Err(e) = mon.watch(w.key(), &leaves) {
                                log::debug!("activity: {id}: {e:#}");
                            }
                        }
                    }
                    agents = new;
                }
                Ok(Input::Exit(b)) => {
                    let (w, info) = *b;
                    let rec = sampler.exit(&w.agent_ref(), info);
                    log::info!("{}", rec.log_line());
                    exits.push(rec);
                }
                Ok(Input::IdleAfter(mut after)) => {
                    after.sort_unstable();
                    idle_after = after;
                    fired.clear();
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        }
        let changed = if activity_due {
            !mon.process(activity::MonoTime::now()).is_empty()
        } else {
            false
        };
        if !changed && next_tick.is_none_or(|t| std::time::Instant::now() < t) {
            continue;
        }
        next_tick = (!agents.is_empty() || sampler.gpu_available())
            .then(|| std::time::Instant::now() + TICK);
        let at = activity::MonoTime::now();
        let at_ms = now_ms();
        let snap = mon.snapshot(at);
        let refs: Vec<accounting::AgentRef> = agents.values().map(Watch::agent_ref).collect();
        let usage = sampler.sample(&refs).clone();
        let mut out = Observed {
            activity: line.clone(),
            usage,
            exits: exits.to_vec(),
            gpu: sampler.gpu_status().clone(),
            ..Observed::default()
        };
        for a in &snap.agents {
            let id = a.agent.to_string();
            out.agents.insert(
                id.clone(),
                AgentView {
                    state: activity_of(a.state),
                    state_since_ms: unix_ms(a.since, at, at_ms),
                    transitions: a.transitions,
                    history: a
                        .history
                        .iter()
                        .map(|t| Transition {
                            at_ms: unix_ms(t.at, at, at_ms),
                            to: activity_of(t.to),
                        })
                        .collect(),
                    cpu_percent: a.cpu_percent,
                },
            );
            // Idle reactions: each threshold once per idle spell.
            if a.state != activity::State::Idle {
                fired.remove(&id);
                continue;
            }
            let idle_for = at.saturating_since(a.since);
            let done = fired.entry(id.clone()).or_insert(0);
            let due = idle_after
                .iter()
                .filter(|s| idle_for.as_secs() >= **s)
                .count();
            if due > *done {
                *done = due;
                if let Some(w) = agents.get(&id) {
                    let mut agent = reactions::Agent::new(&w.family, w.root_pid);
                    agent.cgroup = w.leaves.first().cloned();
                    settings
                        .reactions
                        .trigger(reactions::Trigger::Idle { agent, idle_for });
                }
            }
        }
        for f in &snap.families {
            out.families.insert(
                f.family.clone(),
                FamilyActivity {
                    state: activity_of(f.state),
                    state_since_ms: unix_ms(f.since, at, at_ms),
                    transitions: f.transitions,
                    agents: f.agents,
                },
            );
        }
        *view.lock().unwrap() = out;
    }
}
