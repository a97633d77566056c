//! agentcgd's flattened-cgroup sched_ext scheduler (`bpf/flatcg.bpf.c`), its
//! loader and the [`Supervisor`] that owns its lifecycle inside the daemon.
//!
//! - [`bpf::Scheduler`]: open/load/attach through scx_utils' compat macros,
//!   per-cgroup and global statistics, exit information.
//! - [`Supervisor`]: probes `/sys/kernel/sched_ext`, attaches our scheduler
//!   when the kernel is on its own one, leaves a foreign sched_ext scheduler
//!   alone, restarts ours with backoff after an error exit, gives up after
//!   repeated failures, and reports all of it as a [`Status`].
//! - The `scx_agentcg` binary runs the scheduler without the daemon.
//!
//! See docs/scheduler.md for the algorithm.

pub mod bpf;
pub mod stats;
pub mod supervisor;

pub use bpf::OPS_NAME;
pub use stats::{CgroupStats, GlobalStats};
pub use supervisor::{
    classify_exit, Backoff, ExitAction, ExitSummary, Paths, SchedState, Status, Supervisor,
};

/// `scheduler:` in agentcgd.yaml.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Load our scheduler at all (`--no-scheduler` overrides to false).
    pub enabled: bool,
    /// Slice of a task and of a CPU's turn on a cgroup, microseconds
    /// (100..=1_000_000; default 5000: a waking task waits at most about
    /// one slice for a hog of another cgroup that is not behind it).
    pub slice_us: u64,
    /// Consecutive failures (load errors, error exits, sysrq) after which the
    /// daemon stays on the kernel's own scheduler (0..=100; default 5). The
    /// count resets once the scheduler has run for a minute.
    pub max_restarts: u32,
    /// How often the status statistics are refreshed, milliseconds
    /// (100..=60000; default 1000).
    pub stats_interval_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            slice_us: 5_000,
            max_restarts: 5,
            stats_interval_ms: 1000,
        }
    }
}

impl Config {
    /// Check the ranges; the message names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if !(100..=1_000_000).contains(&self.slice_us) {
            return Err(format!(
                "scheduler.slice_us: {} is out of range 100..=1000000",
                self.slice_us
            ));
        }
        if self.max_restarts > 100 {
            return Err(format!(
                "scheduler.max_restarts: {} is out of range 0..=100",
                self.max_restarts
            ));
        }
        if !(100..=60_000).contains(&self.stats_interval_ms) {
            return Err(format!(
                "scheduler.stats_interval_ms: {} is out of range 100..=60000",
                self.stats_interval_ms
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn ranges() {
        let c = Config {
            slice_us: 50,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("slice_us"));
        let c = Config {
            max_restarts: 1000,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("max_restarts"));
        let c = Config {
            stats_interval_ms: 0,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("stats_interval_ms"));
    }

    #[test]
    fn serde_defaults_and_unknown_keys() {
        let c: Config = serde_json::from_str(r#"{"enabled": false}"#).unwrap();
        assert!(!c.enabled);
        assert_eq!(c.slice_us, 5_000);
        assert!(serde_json::from_str::<Config>(r#"{"bogus": 1}"#).is_err());
    }
}
