//! Per-agent accounting for agentcgd: what each agent instance uses, read
//! from the kernel first and from /proc where a controller is missing, GPU
//! memory through NVML, and a bounded log of exit diagnostics.
//!
//! The daemon hands a [`Sampler`] its agents ([`AgentRef`]: id, leaf
//! cgroups, known processes) and gets an [`AgentUsage`] per agent; every
//! figure names its [`Source`]. Cost is bounded: one sweep per
//! `Options::interval` at most, at most `Options::max_procs` /proc reads per
//! sweep, state only for the agents of the last sweep.

mod exit;
pub mod gpu;
mod sampler;

use serde::{Deserialize, Serialize};

pub use exit::{ExitInfo, ExitLog, ExitRecord, ExitStatus, KilledTool, EXIT_LOG_LEN};
pub use gpu::{Gpu, GpuDevice, GpuStatus};
pub use sampler::{Config, Options, Sampler};

/// Where a figure comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The agent's leaf cgroups' files (cpu.stat, memory.current...).
    Cgroup,
    /// Sampling the agent's processes in /proc (controller missing).
    Proc,
    /// NVIDIA's management library.
    Nvml,
    /// Not known here (no controller and no /proc equivalent, no GPU).
    #[default]
    None,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Cgroup => "cgroup",
            Source::Proc => "proc",
            Source::Nvml => "nvml",
            Source::None => "none",
        })
    }
}

/// One agent as the daemon knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRef {
    /// `<family>-<root pid>`.
    pub id: String,
    /// Its leaf cgroups (absolute paths), `session_high` first. Their
    /// parent directory's name is the session.
    pub leaves: Vec<std::path::PathBuf>,
    /// Processes the daemon tracks for it: (pid, start ticks). Processes
    /// in the leaves' cgroup.procs are sampled as well.
    pub pids: Vec<(u32, u64)>,
}

/// The source of each figure of an [`AgentUsage`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sources {
    pub cpu: Source,
    pub memory: Source,
    pub memory_peak: Source,
    pub oom_kills: Source,
    pub pids: Source,
    pub io: Source,
    pub gpu: Source,
}

/// One session's part of an agent (one leaf cgroup).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionUsage {
    /// `session_high` or `session_low`.
    pub session: String,
    /// The leaf's absolute path.
    pub cgroup: String,
    pub cpu_usec: u64,
    pub memory_bytes: u64,
    pub memory_peak_bytes: Option<u64>,
    pub oom_kills: Option<u64>,
    pub processes: u64,
}

/// What one agent uses, summed over its leaves (`sessions` has each).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentUsage {
    /// CPU time since the agent started (cgroup: the leaves' cpu.stat, which
    /// keeps exited processes' time; proc: live processes' utime+stime plus
    /// what the sampler saw of processes that have exited since).
    pub cpu_usec: u64,
    pub cpu_user_usec: u64,
    pub cpu_system_usec: u64,
    /// CPU over the last sampling interval, % of one CPU (None on the first
    /// sample).
    pub cpu_percent: Option<f64>,
    /// memory.current (cgroup) or the processes' RSS (proc).
    pub memory_bytes: u64,
    /// memory.peak summed over the leaves (an upper bound of the agent's
    /// peak), or the highest RSS sum the sampler saw (proc).
    pub memory_peak_bytes: Option<u64>,
    pub anon_bytes: Option<u64>,
    pub file_bytes: Option<u64>,
    /// memory.events oom_kill over the leaves: processes the kernel
    /// OOM-killed in this agent. None without the memory controller.
    pub oom_kills: Option<u64>,
    /// Processes (thread groups) in the agent.
    pub processes: u64,
    /// Tasks (threads): pids.current, or the processes' threads (proc).
    pub tasks: Option<u64>,
    /// Open file descriptors of its processes (proc only).
    pub open_fds: Option<u64>,
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
    /// GPU memory its processes hold (NVML); None without a GPU.
    pub gpu_memory_bytes: Option<u64>,
    /// Highest SM utilisation sample of its processes over the interval, %.
    pub gpu_util_percent: Option<u32>,
    pub sources: Sources,
    pub sessions: Vec<SessionUsage>,
    /// More processes than `Options::max_procs`: the proc figures are partial.
    #[serde(default)]
    pub truncated: bool,
    /// Unix ms of the sample.
    pub sampled_at_ms: u64,
}

/// Bytes in KiB/MiB/GiB with one decimal ("512 B" below 1 KiB).
pub fn human_bytes(b: u64) -> String {
    const U: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", U[i])
}

impl AgentUsage {
    /// One line for `status`: CPU%, memory now/peak, GPU, OOM kills, and
    /// where the memory figure comes from.
    pub fn brief(&self) -> String {
        let mut s = format!(
            "cpu {} mem {}",
            self.cpu_percent.map_or("-".into(), |c| format!("{c:.1}%")),
            human_bytes(self.memory_bytes)
        );
        if let Some(p) = self.memory_peak_bytes {
            s += &format!(" (peak {})", human_bytes(p));
        }
        s += &format!(" [{}]", self.sources.memory);
        if let Some(g) = self.gpu_memory_bytes {
            s += &format!(" gpu {}", human_bytes(g));
        }
        match self.oom_kills {
            Some(n) => s += &format!(" oom_kills {n}"),
            None => s += " oom_kills ?",
        }
        s
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brief_line() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(300 << 20), "300.0 MiB");
        let u = AgentUsage {
            cpu_percent: Some(12.5),
            memory_bytes: 300 << 20,
            memory_peak_bytes: Some(600 << 20),
            gpu_memory_bytes: Some(2 << 30),
            oom_kills: None,
            sources: Sources {
                memory: Source::Proc,
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            u.brief(),
            "cpu 12.5% mem 300.0 MiB (peak 600.0 MiB) [proc] gpu 2.0 GiB oom_kills ?"
        );
    }
}
