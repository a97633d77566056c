//! The fallback backend's decisions as a pure state machine: pressure
//! windows, protection of session_high, throttling of session_low and its
//! release in steps. The fallback thread feeds it signals and timer expiries
//! and applies the actions it returns; unit tests drive it with fake time.

use std::time::{Duration, Instant};

/// Tunables, from `Config`.
#[derive(Debug, Clone)]
pub struct Params {
    pub window: Duration,
    pub throttle_pct: u64,
    pub floor: u64,
    pub release_steps: u32,
    pub release_every: Duration,
    pub protect_high: bool,
}

impl From<&crate::Config> for Params {
    fn from(c: &crate::Config) -> Self {
        Params {
            window: Duration::from_millis(c.window_ms),
            throttle_pct: c.throttle_pct,
            floor: c.throttle_floor_mb * 1_000_000,
            release_steps: c.release_steps,
            release_every: Duration::from_millis(c.release_step_ms),
            protect_high: c.protect_high,
        }
    }
}

/// What the sessions look like when a pressure signal arrives.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    /// session_high's working set (bytes).
    pub high_ws: u64,
    /// session_low's memory.current (bytes).
    pub low_current: u64,
}

/// A file write the machine wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// session_high memory.low := bytes.
    SetHighLow(u64),
    /// session_high memory.low := its original value.
    RestoreHighLow,
    /// session_low memory.high := bytes.
    SetLowHigh(u64),
    /// session_low memory.high := its original value.
    RestoreLowHigh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Active { until: Instant },
    Releasing { next: Instant, left: u32, step: u64 },
}

#[derive(Debug)]
pub struct Machine {
    p: Params,
    phase: Phase,
    /// session_high's original memory.low (never lowered below it).
    high_low_orig: u64,
    /// session_low's original memory.high (None: max).
    low_high_orig: Option<u64>,
    /// memory.low we set on session_high, if any.
    pub high_low_set: Option<u64>,
    /// memory.high we set on session_low, if any.
    pub low_high_set: Option<u64>,
    /// Pressure windows entered from idle (= throttle episodes).
    pub episodes: u64,
}

impl Machine {
    pub fn new(p: Params, high_low_orig: u64, low_high_orig: Option<u64>) -> Self {
        Machine {
            p,
            phase: Phase::Idle,
            high_low_orig,
            low_high_orig,
            high_low_set: None,
            low_high_set: None,
            episodes: 0,
        }
    }

    /// Inside a pressure window.
    pub fn active(&self) -> bool {
        matches!(self.phase, Phase::Active { .. })
    }

    /// When `tick` has something to do next (None: wait for signals only).
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Idle => None,
            Phase::Active { until } => Some(until),
            Phase::Releasing { next, .. } => Some(next),
        }
    }

    /// A pressure signal (PSI trigger, memory.events high/max/oom).
    pub fn pressure(&mut self, now: Instant, s: Snapshot) -> Vec<Action> {
        let mut acts = Vec::new();
        if self.phase == Phase::Idle {
            self.episodes += 1;
        }
        self.phase = Phase::Active {
            until: now + self.p.window,
        };
        if self.p.protect_high
            && s.high_ws > self.high_low_orig
            && self.high_low_set.is_none_or(|v| s.high_ws > v)
        {
            self.high_low_set = Some(s.high_ws);
            acts.push(Action::SetHighLow(s.high_ws));
        }
        let target = (s.low_current / 100 * self.p.throttle_pct).max(self.p.floor);
        let tighter = self.low_high_set.is_none_or(|v| target < v);
        let below_orig = self.low_high_orig.is_none_or(|o| target < o);
        if tighter && below_orig {
            self.low_high_set = Some(target);
            acts.push(Action::SetLowHigh(target));
        }
        acts
    }

    /// Timer expiry (call at or after `deadline()`; early calls do nothing).
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut acts = Vec::new();
        match self.phase {
            Phase::Active { until } if now >= until => {
                if self.high_low_set.take().is_some() {
                    acts.push(Action::RestoreHighLow);
                }
                match self.low_high_set {
                    Some(t) => {
                        let ceiling = self.low_high_orig.unwrap_or(t.saturating_mul(2)).max(t);
                        let step = (ceiling - t) / u64::from(self.p.release_steps);
                        self.phase = Phase::Releasing {
                            next: now + self.p.release_every,
                            left: self.p.release_steps,
                            step,
                        };
                    }
                    None => self.phase = Phase::Idle,
                }
            }
            Phase::Releasing { next, left, step } if now >= next => {
                if left <= 1 {
                    self.low_high_set = None;
                    acts.push(Action::RestoreLowHigh);
                    self.phase = Phase::Idle;
                } else {
                    let v = self.low_high_set.unwrap_or(0) + step;
                    self.low_high_set = Some(v);
                    acts.push(Action::SetLowHigh(v));
                    self.phase = Phase::Releasing {
                        next: now + self.p.release_every,
                        left: left - 1,
                        step,
                    };
                }
            }
            _ => {}
        }
        acts
    }

    /// Everything to undo now (stop).
    pub fn restore_all(&mut self) -> Vec<Action> {
        let mut acts = Vec::new();
        if self.high_low_set.take().is_some() {
            acts.push(Action::RestoreHighLow);
        }
        if self.low_high_set.take().is_some() {
            acts.push(Action::RestoreLowHigh);
        }
        self.phase = Phase::Idle;
        acts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;

    const MB: u64 = 1_000_000;

    fn params() -> Params {
        Params {
            window: Duration::from_millis(1000),
            throttle_pct: 90,
            floor: 32 * MB,
            release_steps: 4,
            release_every: Duration::from_millis(100),
            protect_high: true,
        }
    }

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    #[test]
    fn window_protects_throttles_then_releases_in_steps() {
        let t0 = Instant::now();
        let mut m = Machine::new(params(), 0, None);
        assert_eq!(m.deadline(), None);
        let a = m.pressure(
            t0,
            Snapshot {
                high_ws: 300 * MB,
                low_current: 400 * MB,
            },
        );
        assert_eq!(a, vec![SetHighLow(300 * MB), SetLowHigh(360 * MB)]);
        assert!(m.active());
        assert_eq!(m.episodes, 1);
        // a second signal inside the window extends it and only tightens
        let a = m.pressure(
            ms(t0, 500),
            Snapshot {
                high_ws: 250 * MB,
                low_current: 450 * MB,
            },
        );
        assert_eq!(a, vec![]);
        let a = m.pressure(
            ms(t0, 600),
            Snapshot {
                high_ws: 320 * MB,
                low_current: 200 * MB,
            },
        );
        assert_eq!(a, vec![SetHighLow(320 * MB), SetLowHigh(180 * MB)]);
        assert_eq!(m.episodes, 1);
        assert_eq!(m.deadline(), Some(ms(t0, 1600)));
        assert_eq!(m.tick(ms(t0, 1599)), vec![]);
        // window over: high restored, low released in 4 steps up to 2x, then restored
        assert_eq!(m.tick(ms(t0, 1600)), vec![RestoreHighLow]);
        assert!(!m.active());
        assert_eq!(m.tick(ms(t0, 1700)), vec![SetLowHigh(225 * MB)]);
        assert_eq!(m.tick(ms(t0, 1800)), vec![SetLowHigh(270 * MB)]);
        assert_eq!(m.tick(ms(t0, 1900)), vec![SetLowHigh(315 * MB)]);
        assert_eq!(m.tick(ms(t0, 2000)), vec![RestoreLowHigh]);
        assert_eq!(m.deadline(), None);
        assert_eq!((m.high_low_set, m.low_high_set), (None, None));
    }

    #[test]
    fn pressure_during_release_throttles_again() {
        let t0 = Instant::now();
        let mut m = Machine::new(params(), 0, Some(500 * MB));
        m.pressure(
            t0,
            Snapshot {
                high_ws: 0,
                low_current: 100 * MB,
            },
        );
        assert_eq!(m.low_high_set, Some(90 * MB));
        m.tick(ms(t0, 1000));
        assert_eq!(m.tick(ms(t0, 1100)), vec![SetLowHigh(192_500_000)]);
        let a = m.pressure(
            ms(t0, 1150),
            Snapshot {
                high_ws: 0,
                low_current: 150 * MB,
            },
        );
        assert_eq!(a, vec![SetLowHigh(135 * MB)]);
        assert_eq!(m.episodes, 1, "release belongs to the same episode");
        assert_eq!(m.restore_all(), vec![RestoreLowHigh]);
    }

    #[test]
    fn floor_original_limits_and_no_protect() {
        let t0 = Instant::now();
        let mut p = params();
        p.protect_high = false;
        // low already limited below the target: nothing to tighten
        let mut m = Machine::new(p.clone(), 0, Some(10 * MB));
        assert_eq!(
            m.pressure(
                t0,
                Snapshot {
                    high_ws: 5 * MB,
                    low_current: 8 * MB
                }
            ),
            vec![]
        );
        assert_eq!(m.tick(ms(t0, 1000)), vec![]);
        assert_eq!(m.deadline(), None);
        // floor
        let mut m = Machine::new(p, 0, None);
        assert_eq!(
            m.pressure(
                t0,
                Snapshot {
                    high_ws: 0,
                    low_current: 10 * MB
                }
            ),
            vec![SetLowHigh(32 * MB)]
        );
        // memory.low already above the working set: left alone
        let mut m = Machine::new(params(), 400 * MB, None);
        assert_eq!(
            m.pressure(
                t0,
                Snapshot {
                    high_ws: 300 * MB,
                    low_current: 100 * MB
                }
            ),
            vec![SetLowHigh(90 * MB)]
        );
    }
}
