//! The state machine, free of any clock or kernel: every function takes the
//! time it runs at, so the unit tests drive it with a fake clock.
//!
//! An agent is `Active` while any of its threads ran within the idle
//! threshold and `Idle` once none has for that long: a debounce, so a short
//! sleep (a read on a pipe, a wait for a child) is no transition. The idle
//! transition is dated when the threshold was crossed (last run +
//! threshold), whenever it was noticed; the active one when the first
//! thread ran again.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Transitions kept per agent (and per family).
pub const HISTORY: usize = 32;

/// A point on CLOCK_MONOTONIC (the clock of `bpf_ktime_get_ns()`), in ns.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct MonoTime(pub u64);

impl MonoTime {
    /// The current CLOCK_MONOTONIC time.
    pub fn now() -> MonoTime {
        let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .expect("CLOCK_MONOTONIC is always readable");
        MonoTime(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
    }

    pub fn as_nanos(self) -> u64 {
        self.0
    }

    /// `self - earlier`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: MonoTime) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl std::ops::Add<Duration> for MonoTime {
    type Output = MonoTime;

    fn add(self, d: Duration) -> MonoTime {
        MonoTime(self.0.saturating_add(d.as_nanos() as u64))
    }
}

/// What an agent (or a family) is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Active,
    Idle,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Active => "active",
            State::Idle => "idle",
        })
    }
}

/// One change of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub from: State,
    pub to: State,
    /// When it happened: the first run after idleness, or the last run +
    /// the threshold.
    pub at: MonoTime,
    /// When the monitor noticed it (`at` or later).
    pub detected: MonoTime,
}

/// A state with its history: the number of transitions, the last
/// [`HISTORY`] of them and the time spent in each state.
#[derive(Debug, Clone)]
pub(crate) struct Tracker {
    state: State,
    since: MonoTime,
    transitions: u64,
    history: VecDeque<Transition>,
    /// Time in each state up to `since` ([active, idle]).
    spent: [Duration; 2],
}

fn index(s: State) -> usize {
    match s {
        State::Active => 0,
        State::Idle => 1,
    }
}

impl Tracker {
    pub(crate) fn new(state: State, since: MonoTime) -> Tracker {
        Tracker {
            state,
            since,
            transitions: 0,
            history: VecDeque::with_capacity(HISTORY),
            spent: [Duration::ZERO; 2],
        }
    }

    pub(crate) fn state(&self) -> State {
        self.state
    }

    pub(crate) fn since(&self) -> MonoTime {
        self.since
    }

    pub(crate) fn transitions(&self) -> u64 {
        self.transitions
    }

    pub(crate) fn history(&self) -> Vec<Transition> {
        self.history.iter().copied().collect()
    }

    /// Move to `to` as of `at` (clamped to the current state's start, so
    /// time never runs backwards), noticed at `detected`. None if `to` is
    /// the current state.
    pub(crate) fn set(
        &mut self,
        to: State,
        at: MonoTime,
        detected: MonoTime,
    ) -> Option<Transition> {
        if to == self.state {
            return None;
        }
        let at = at.max(self.since);
        self.spent[index(self.state)] += at.saturating_since(self.since);
        let t = Transition {
            from: self.state,
            to,
            at,
            detected: detected.max(at),
        };
        self.state = to;
        self.since = at;
        self.transitions += 1;
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(t);
        Some(t)
    }

    /// Time spent in `s` up to `now`.
    pub(crate) fn time_in(&self, s: State, now: MonoTime) -> Duration {
        let mut d = self.spent[index(s)];
        if s == self.state {
            d += now.saturating_since(self.since);
        }
        d
    }
}

/// What an observation of an active agent says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Still active; look again at `recheck`.
    Active { recheck: MonoTime },
    /// Idle since the given time (the last activity + the threshold).
    Idle { since: MonoTime },
}

/// Judge an active agent at `now`: `running` (one of its threads is on a
/// CPU now) and `last_activity` (the last time one of them ran).
pub(crate) fn judge(
    now: MonoTime,
    threshold: Duration,
    running: bool,
    last_activity: MonoTime,
) -> Verdict {
    let idle_at = last_activity + threshold;
    if running {
        Verdict::Active {
            recheck: (now + threshold),
        }
    } else if now >= idle_at {
        Verdict::Idle { since: idle_at }
    } else {
        Verdict::Active { recheck: idle_at }
    }
}

/// A family's state: active while any of its agents is.
#[derive(Debug, Clone)]
pub(crate) struct Family {
    pub(crate) tracker: Tracker,
    pub(crate) agents: usize,
    pub(crate) active: usize,
}

impl Family {
    /// A family whose first agent starts in `state` at `at`.
    pub(crate) fn new(state: State, at: MonoTime) -> Family {
        Family {
            tracker: Tracker::new(state, at),
            agents: 0,
            active: 0,
        }
    }

    /// An agent joins in state `s`.
    pub(crate) fn join(&mut self, s: State, at: MonoTime) -> Option<Transition> {
        self.agents += 1;
        if s == State::Active {
            self.active += 1;
        }
        self.settle(at, at)
    }

    /// An agent in state `s` leaves.
    pub(crate) fn leave(&mut self, s: State, at: MonoTime) -> Option<Transition> {
        self.agents = self.agents.saturating_sub(1);
        if s == State::Active {
            self.active = self.active.saturating_sub(1);
        }
        self.settle(at, at)
    }

    /// One of its agents went through `t`.
    pub(crate) fn agent_moved(&mut self, t: &Transition) -> Option<Transition> {
        match t.to {
            State::Active => self.active += 1,
            State::Idle => self.active = self.active.saturating_sub(1),
        }
        self.settle(t.at, t.detected)
    }

    fn settle(&mut self, at: MonoTime, detected: MonoTime) -> Option<Transition> {
        let want = if self.active > 0 {
            State::Active
        } else {
            State::Idle
        };
        self.tracker.set(want, at, detected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;
    const TH: Duration = Duration::from_secs(2);

    fn t(ns: u64) -> MonoTime {
        MonoTime(ns)
    }

    /// A fake agent: a list of (start, end) runs; the monitor looks every
    /// `tick` and the debounce decides.
    fn simulate(runs: &[(u64, u64)], until: u64, tick: u64) -> Tracker {
        let mut tr = Tracker::new(State::Active, t(0));
        let mut now = 0;
        while now <= until {
            let running = runs.iter().any(|&(a, b)| a <= now && now < b);
            let last = runs
                .iter()
                .filter(|&&(a, _)| a <= now)
                .map(|&(_, b)| b.min(now))
                .max()
                .unwrap_or(0);
            if tr.state() == State::Idle && (running || last > tr.since().as_nanos()) {
                let first = runs
                    .iter()
                    .filter(|&&(a, _)| a >= tr.since().as_nanos())
                    .map(|&(a, _)| a)
                    .min()
                    .unwrap_or(now);
                tr.set(State::Active, t(first), t(now));
            }
            if tr.state() == State::Active {
                if let Verdict::Idle { since } = judge(t(now), TH, running, t(last)) {
                    tr.set(State::Idle, since, t(now));
                }
            }
            now += tick;
        }
        tr
    }

    #[test]
    fn short_sleeps_are_no_transition() {
        // 1 s of work, 1.9 s of sleep, five times: never 2 s without a run.
        let runs: Vec<(u64, u64)> = (0..5).map(|i| (i * 2900 * MS, i * 2900 * MS + S)).collect();
        let tr = simulate(&runs, 14 * S, 10 * MS);
        assert_eq!(tr.state(), State::Active);
        assert_eq!(tr.transitions(), 0, "{:?}", tr.history());
    }

    #[test]
    fn idle_two_seconds_into_each_sleep_active_at_the_next_run() {
        // 1 s of work, 4 s of sleep.
        let runs: Vec<(u64, u64)> = (0..3).map(|i| (i * 5 * S, i * 5 * S + S)).collect();
        let tr = simulate(&runs, 15 * S, 10 * MS);
        let h = tr.history();
        assert_eq!(h.len(), 5, "{h:?}");
        for (i, x) in h.iter().enumerate() {
            let cycle = (i / 2) as u64 * 5 * S;
            if i % 2 == 0 {
                assert_eq!(x.to, State::Idle);
                assert_eq!(
                    x.at,
                    t(cycle + S + 2 * S),
                    "dated at the last run + threshold"
                );
                assert!(x.detected.saturating_since(x.at) <= Duration::from_millis(10));
            } else {
                assert_eq!(x.to, State::Active);
                assert_eq!(x.at, t(cycle + 5 * S), "dated at the first run");
            }
        }
        assert_eq!(tr.state(), State::Idle);
        // 1+2 s active per cycle (the debounce), 2 s idle.
        assert_eq!(tr.time_in(State::Active, t(15 * S)), Duration::from_secs(9));
        assert_eq!(tr.time_in(State::Idle, t(15 * S)), Duration::from_secs(6));
    }

    #[test]
    fn a_running_thread_keeps_it_active_however_long_ago_it_started() {
        // One run since 0 that never ends: last switch long ago, running now.
        assert_eq!(
            judge(t(60 * S), TH, true, t(0)),
            Verdict::Active { recheck: t(62 * S) }
        );
        assert_eq!(
            judge(t(60 * S), TH, false, t(0)),
            Verdict::Idle { since: t(2 * S) }
        );
        assert_eq!(
            judge(t(S), TH, false, t(0)),
            Verdict::Active { recheck: t(2 * S) }
        );
    }

    #[test]
    fn history_is_bounded_and_counts_go_on() {
        let mut tr = Tracker::new(State::Active, t(0));
        for i in 1..=100u64 {
            let to = if i % 2 == 1 {
                State::Idle
            } else {
                State::Active
            };
            assert!(tr.set(to, t(i * S), t(i * S)).is_some());
        }
        assert_eq!(tr.transitions(), 100);
        let h = tr.history();
        assert_eq!(h.len(), HISTORY);
        assert_eq!(h.first().unwrap().at, t(69 * S), "the oldest ones dropped");
        assert_eq!(h.last().unwrap().at, t(100 * S));
        // Same state again: no transition.
        assert!(tr.set(State::Active, t(101 * S), t(101 * S)).is_none());
        assert_eq!(tr.transitions(), 100);
    }

    #[test]
    fn a_transition_is_never_dated_before_the_current_state() {
        let mut tr = Tracker::new(State::Active, t(10 * S));
        let x = tr.set(State::Idle, t(5 * S), t(12 * S)).unwrap();
        assert_eq!(x.at, t(10 * S));
        assert_eq!(tr.time_in(State::Active, t(20 * S)), Duration::ZERO);
        assert_eq!(tr.time_in(State::Idle, t(20 * S)), Duration::from_secs(10));
    }

    #[test]
    fn a_family_is_active_while_any_agent_is() {
        let mut f = Family::new(State::Active, t(0));
        assert!(f.join(State::Active, t(0)).is_none());
        assert!(f.join(State::Active, t(0)).is_none());
        let idle = |at| Transition {
            from: State::Active,
            to: State::Idle,
            at: t(at),
            detected: t(at),
        };
        let active = |at| Transition {
            from: State::Idle,
            to: State::Active,
            at: t(at),
            detected: t(at),
        };
        assert!(f.agent_moved(&idle(3 * S)).is_none(), "one still active");
        let x = f.agent_moved(&idle(4 * S)).expect("both idle");
        assert_eq!((x.to, x.at), (State::Idle, t(4 * S)));
        let x = f.agent_moved(&active(9 * S)).expect("one woke");
        assert_eq!((x.to, x.at), (State::Active, t(9 * S)));
        // The active agent exits: the family is idle from then on.
        let x = f
            .leave(State::Active, t(10 * S))
            .expect("no active agent left");
        assert_eq!(x.to, State::Idle);
        assert_eq!(f.agents, 1);
        assert_eq!(f.tracker.transitions(), 3);
    }
}
