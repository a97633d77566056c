//! Exit diagnostics: what an agent was when its root process exited.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::{AgentUsage, Source};

/// How many exits the log keeps.
pub const EXIT_LOG_LEN: usize = 64;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
    /// The event source does not carry it (the /proc poll).
    Unknown,
}

impl ExitStatus {
    /// From a wait status ((code << 8) | signal); None: unknown.
    pub fn from_wait_status(ws: Option<i32>) -> ExitStatus {
        match ws {
            None => ExitStatus::Unknown,
            Some(ws) if ws & 0x7f != 0 => ExitStatus::Signal(ws & 0x7f),
            Some(ws) => ExitStatus::Code((ws >> 8) & 0xff),
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by signal {s}"),
            ExitStatus::Unknown => f.write_str("exit status unknown"),
        }
    }
}

/// A process of the agent that was killed (SIGKILL) while it ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KilledTool {
    pub pid: u32,
    pub comm: String,
    pub signal: i32,
}

/// What the daemon knows of the exit (the sampler adds the figures).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    pub family: String,
    pub root_pid: u32,
    /// Wait status from the exit event, where the source has it.
    pub wait_status: Option<i32>,
    pub started_at_ms: u64,
    pub killed_tools: Vec<KilledTool>,
}

/// One agent's exit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub agent: String,
    pub family: String,
    pub root_pid: u32,
    pub at_ms: u64,
    pub exit: ExitStatus,
    pub run_time_ms: u64,
    pub cpu_usec: u64,
    pub memory_peak_bytes: Option<u64>,
    /// memory.events oom_kill > 0 in its leaves; None without the memory
    /// controller (the kernel's count is not readable then).
    pub oom_killed: Option<bool>,
    pub oom_kills: Option<u64>,
    pub killed_tools: Vec<KilledTool>,
    /// Where the CPU and memory figures come from.
    pub cpu_source: Source,
    pub memory_source: Source,
}

impl ExitRecord {
    /// Build the record from the last usage seen (None: never sampled).
    pub fn new(agent: &str, info: ExitInfo, usage: Option<&AgentUsage>, at_ms: u64) -> ExitRecord {
        let u = usage.cloned().unwrap_or_default();
        ExitRecord {
            agent: agent.to_string(),
            family: info.family,
            root_pid: info.root_pid,
            at_ms,
            exit: ExitStatus::from_wait_status(info.wait_status),
            run_time_ms: at_ms.saturating_sub(info.started_at_ms),
            cpu_usec: u.cpu_usec,
            memory_peak_bytes: u.memory_peak_bytes,
            oom_killed: u.oom_kills.map(|n| n > 0),
            oom_kills: u.oom_kills,
            killed_tools: info.killed_tools,
            cpu_source: u.sources.cpu,
            memory_source: u.sources.memory_peak,
        }
    }

    /// The log line for this exit.
    pub fn log_line(&self) -> String {
        let mut s = format!(
            "agent {} exited: {}, ran {:.1} s, cpu {:.2} s",
            self.agent,
            self.exit,
            self.run_time_ms as f64 / 1000.0,
            self.cpu_usec as f64 / 1e6
        );
        if let Some(p) = self.memory_peak_bytes {
            s += &format!(", peak memory {} MiB", p / (1 << 20));
        }
        match self.oom_kills {
            Some(n) if n > 0 => s += &format!(", OOM kills {n}"),
            Some(_) => {}
            None => s += ", OOM kills unknown (no memory controller)",
        }
        if !self.killed_tools.is_empty() {
            let k: Vec<String> = self
                .killed_tools
                .iter()
                .map(|t| format!("{}[{}]", t.comm, t.pid))
                .collect();
            s += &format!(", killed: {}", k.join(" "));
        }
        s
    }
}

/// The last `EXIT_LOG_LEN` exits, oldest first.
#[derive(Debug, Clone, Default)]
pub struct ExitLog {
    records: VecDeque<ExitRecord>,
}

impl ExitLog {
    pub fn push(&mut self, r: ExitRecord) {
        if self.records.len() == EXIT_LOG_LEN {
            self.records.pop_front();
        }
        self.records.push_back(r);
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// For the state file.
    pub fn to_vec(&self) -> Vec<ExitRecord> {
        self.records.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(ws: Option<i32>) -> ExitInfo {
        ExitInfo {
            family: "aider".into(),
            root_pid: 42,
            wait_status: ws,
            started_at_ms: 1_000,
            killed_tools: vec![KilledTool {
                pid: 43,
                comm: "pytest".into(),
                signal: 9,
            }],
        }
    }

    #[test]
    fn wait_status() {
        assert_eq!(ExitStatus::from_wait_status(Some(0)), ExitStatus::Code(0));
        assert_eq!(
            ExitStatus::from_wait_status(Some(3 << 8)),
            ExitStatus::Code(3)
        );
        assert_eq!(ExitStatus::from_wait_status(Some(9)), ExitStatus::Signal(9));
        assert_eq!(ExitStatus::from_wait_status(None), ExitStatus::Unknown);
    }

    #[test]
    fn record_from_usage_and_log_line() {
        let u = AgentUsage {
            cpu_usec: 2_500_000,
            memory_peak_bytes: Some(300 << 20),
            oom_kills: Some(1),
            sources: crate::Sources {
                cpu: Source::Cgroup,
                memory_peak: Source::Cgroup,
                ..Default::default()
            },
            ..Default::default()
        };
        let r = ExitRecord::new("aider-42", info(Some(9)), Some(&u), 61_000);
        assert_eq!(r.exit, ExitStatus::Signal(9));
        assert_eq!(r.run_time_ms, 60_000);
        assert_eq!(r.oom_killed, Some(true));
        let line = r.log_line();
        assert_eq!(
            line,
            "agent aider-42 exited: killed by signal 9, ran 60.0 s, cpu 2.50 s, peak memory 300 MiB, OOM kills 1, killed: pytest[43]"
        );
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""exit":{"signal":9}"#), "{json}");
        assert_eq!(serde_json::from_str::<ExitRecord>(&json).unwrap(), r);
        // Never sampled, no exit status: unknowns, not zeros posing as facts.
        let r = ExitRecord::new("aider-42", info(None), None, 2_000);
        assert_eq!(r.oom_killed, None);
        assert_eq!(r.cpu_source, Source::None);
        assert!(r.log_line().contains("exit status unknown"));
        assert!(r.log_line().contains("OOM kills unknown"));
    }

    #[test]
    fn log_is_bounded_and_keeps_the_newest() {
        let mut log = ExitLog::default();
        for i in 0..(EXIT_LOG_LEN as u32 + 10) {
            let mut r = ExitRecord::new("a", info(Some(0)), None, 0);
            r.root_pid = i;
            log.push(r);
        }
        let v = log.to_vec();
        assert_eq!(v.len(), EXIT_LOG_LEN);
        assert_eq!(v[0].root_pid, 10);
        assert_eq!(v.last().unwrap().root_pid, EXIT_LOG_LEN as u32 + 9);
    }
}
