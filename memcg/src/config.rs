//! `memcg:` in agentcgd.yaml.

/// Which backend `Controller::start` may pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendChoice {
    /// BPF struct_ops where the kernel has memcg_bpf_ops, else the fallback.
    #[default]
    Auto,
    /// Only the BPF backend (off with the reason where unavailable).
    Bpf,
    /// Only the PSI + memory.events fallback.
    Fallback,
}

/// `memcg:` in agentcgd.yaml. Every key is optional; `Default` gives the
/// documented defaults (see docs/memcg.md).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Start the controller at all (`--no-memcg` overrides to false).
    pub enabled: bool,
    /// `auto` | `bpf` | `fallback`.
    pub backend: BackendChoice,
    /// PSI trigger on session_high's memory.pressure: a stall of
    /// `psi_stall_us` ("some") within `psi_window_us` is pressure.
    pub psi_stall_us: u64,
    /// PSI trigger window, 500000..=10000000 us (kernel limits).
    pub psi_window_us: u64,
    /// Pressure window: pressure ends when no pressure signal came for this
    /// long; then session_high's memory.low is restored and session_low's
    /// memory.high release starts.
    pub window_ms: u64,
    /// While throttled, session_low's memory.high is this percentage of its
    /// memory.current (1..=100; "just under current usage").
    pub throttle_pct: u64,
    /// Never throttle session_low's memory.high below this many MB.
    pub throttle_floor_mb: u64,
    /// Release session_low's memory.high in this many steps after the
    /// window ends (1..=100), the last step writing back the original.
    pub release_steps: u32,
    /// Time between release steps.
    pub release_step_ms: u64,
    /// Raise session_high's memory.low to its working set under pressure.
    pub protect_high: bool,
    /// oom_score_adj written for processes placed in session_high.
    pub oom_score_adj_high: i32,
    /// oom_score_adj written for processes placed in session_low.
    pub oom_score_adj_low: i32,
    /// memory.oom.group of session_high (kill the whole session together).
    pub oom_group_high: bool,
    /// memory.oom.group of session_low.
    pub oom_group_low: bool,
    /// BPF backend: get_high_delay_ms returned for session_low under
    /// pressure (1..=2000, the kernel's cap for memory.high penalties).
    pub bpf_delay_ms: u32,
    /// BPF backend: session_high growing by this many MB within `window_ms`
    /// is pressure (a burst), besides its tasks entering reclaim.
    pub bpf_burst_mb: u64,
    /// BPF backend: after a burst of session_high, session_low is delayed
    /// only while the tightest memory limit above it has less than this %
    /// free (100: whatever the headroom). Reclaim pressure delays it
    /// regardless.
    pub bpf_headroom_pct: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            backend: BackendChoice::Auto,
            psi_stall_us: 50_000,
            psi_window_us: 500_000,
            window_ms: 1000,
            throttle_pct: 90,
            throttle_floor_mb: 32,
            release_steps: 4,
            release_step_ms: 250,
            protect_high: true,
            oom_score_adj_high: -500,
            oom_score_adj_low: 500,
            oom_group_high: false,
            oom_group_low: false,
            bpf_delay_ms: 2000,
            bpf_burst_mb: 32,
            bpf_headroom_pct: 50,
        }
    }
}

impl Config {
    /// Checks ranges and relations; the error names the key (`memcg.KEY`).
    pub fn validate(&self) -> Result<(), String> {
        if !(500_000..=10_000_000).contains(&self.psi_window_us) {
            return Err(format!(
                "memcg.psi_window_us must be 500000..=10000000 (kernel PSI trigger limits), got {}",
                self.psi_window_us
            ));
        }
        if self.psi_stall_us == 0 || self.psi_stall_us > self.psi_window_us {
            return Err(format!(
                "memcg.psi_stall_us must be 1..=psi_window_us ({}), got {}",
                self.psi_window_us, self.psi_stall_us
            ));
        }
        if !(10..=600_000).contains(&self.window_ms) {
            return Err(format!(
                "memcg.window_ms must be 10..=600000, got {}",
                self.window_ms
            ));
        }
        if !(1..=100).contains(&self.throttle_pct) {
            return Err(format!(
                "memcg.throttle_pct must be 1..=100, got {}",
                self.throttle_pct
            ));
        }
        if !(1..=100).contains(&self.release_steps) {
            return Err(format!(
                "memcg.release_steps must be 1..=100, got {}",
                self.release_steps
            ));
        }
        if !(1..=60_000).contains(&self.release_step_ms) {
            return Err(format!(
                "memcg.release_step_ms must be 1..=60000, got {}",
                self.release_step_ms
            ));
        }
        for (k, v) in [
            ("oom_score_adj_high", self.oom_score_adj_high),
            ("oom_score_adj_low", self.oom_score_adj_low),
        ] {
            if !(-1000..=1000).contains(&v) {
                return Err(format!("memcg.{k} must be -1000..=1000, got {v}"));
            }
        }
        if self.oom_score_adj_high > self.oom_score_adj_low {
            return Err(format!(
                "memcg.oom_score_adj_high ({}) must not exceed memcg.oom_score_adj_low ({}): low-priority work is killed first",
                self.oom_score_adj_high, self.oom_score_adj_low
            ));
        }
        if !(1..=2000).contains(&self.bpf_delay_ms) {
            return Err(format!(
                "memcg.bpf_delay_ms must be 1..=2000, got {}",
                self.bpf_delay_ms
            ));
        }
        if !(1..=1_000_000).contains(&self.bpf_burst_mb) {
            return Err(format!(
                "memcg.bpf_burst_mb must be 1..=1000000, got {}",
                self.bpf_burst_mb
            ));
        }
        if !(1..=100).contains(&self.bpf_headroom_pct) {
            return Err(format!(
                "memcg.bpf_headroom_pct must be 1..=100, got {}",
                self.bpf_headroom_pct
            ));
        }
        Ok(())
    }

    /// oom_score_adj the placer writes to /proc/PID/oom_score_adj when it
    /// places a process in session_high (`high`) or session_low.
    pub fn oom_score_adj(&self, high: bool) -> i32 {
        if high {
            self.oom_score_adj_high
        } else {
            self.oom_score_adj_low
        }
    }

    /// The PSI trigger line written to memory.pressure.
    pub fn psi_trigger(&self) -> String {
        format!("some {} {}", self.psi_stall_us, self.psi_window_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_yaml_roundtrip() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.psi_trigger(), "some 50000 500000");
        assert_eq!(c.oom_score_adj(true), -500);
        assert_eq!(c.oom_score_adj(false), 500);
        let y: Config =
            serde_norway::from_str("enabled: true\nwindow_ms: 300\nbackend: fallback\n").unwrap();
        assert_eq!(y.window_ms, 300);
        assert_eq!(y.backend, BackendChoice::Fallback);
        assert_eq!(y.throttle_pct, 90);
        let y: Config = serde_norway::from_str("{}").unwrap();
        assert_eq!(y, Config::default());
        assert!(serde_norway::from_str::<Config>("bogus: 1\n").is_err());
        assert!(serde_norway::from_str::<Config>("backend: magic\n").is_err());
    }

    #[test]
    fn validation_names_the_key() {
        let bad = |f: fn(&mut Config)| {
            let mut c = Config::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(|c| c.psi_window_us = 100).contains("psi_window_us"));
        assert!(bad(|c| c.psi_stall_us = 0).contains("psi_stall_us"));
        assert!(bad(|c| c.psi_stall_us = 600_000).contains("psi_stall_us"));
        assert!(bad(|c| c.window_ms = 1).contains("window_ms"));
        assert!(bad(|c| c.throttle_pct = 0).contains("throttle_pct"));
        assert!(bad(|c| c.throttle_pct = 101).contains("throttle_pct"));
        assert!(bad(|c| c.release_steps = 0).contains("release_steps"));
        assert!(bad(|c| c.release_step_ms = 0).contains("release_step_ms"));
        assert!(bad(|c| c.oom_score_adj_low = 1001).contains("oom_score_adj_low"));
        assert!(bad(|c| c.oom_score_adj_high = 600).contains("must not exceed"));
        assert!(bad(|c| c.bpf_delay_ms = 0).contains("bpf_delay_ms"));
        assert!(bad(|c| c.bpf_burst_mb = 0).contains("bpf_burst_mb"));
        assert!(bad(|c| c.bpf_headroom_pct = 101).contains("bpf_headroom_pct"));
    }
}
