//! The tracker (pid -> family, session, start time) and the state file that
//! `status` and `explain` read. Written atomically (temp file + rename).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cgroup::SetupReport;
use crate::classify::{AgentKey, Reason};
use crate::policy::{FamilyName, Priority};

/// One placed (or, in dry-run, decided) process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracked {
    pub pid: u32,
    pub start_ticks: u64,
    pub family: FamilyName,
    pub priority: Priority,
    pub reason: Reason,
    pub comm: String,
    /// Unix time in ms when it was placed.
    pub placed_at_ms: u64,
    /// The agent instance it belongs to (per-agent leaves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentKey>,
}

/// pid -> tracked process; an entry is valid only for its start time.
#[derive(Debug, Default, Clone)]
pub struct Tracker {
    procs: BTreeMap<u32, Tracked>,
}

impl Tracker {
    pub fn insert(&mut self, t: Tracked) {
        self.procs.insert(t.pid, t);
    }

    /// The entry for this exact process (pid and start time).
    pub fn get(&self, pid: u32, start_ticks: u64) -> Option<&Tracked> {
        self.procs
            .get(&pid)
            .filter(|t| t.start_ticks == start_ticks)
    }

    pub fn get_pid(&self, pid: u32) -> Option<&Tracked> {
        self.procs.get(&pid)
    }

    /// Forget `pid` if it is the same process (or the start is unknown).
    pub fn remove(&mut self, pid: u32, start_ticks: Option<u64>) -> Option<Tracked> {
        match (self.procs.get(&pid), start_ticks) {
            (Some(t), Some(s)) if t.start_ticks != s => None,
            (Some(_), _) => self.procs.remove(&pid),
            (None, _) => None,
        }
    }

    /// Take out the entries whose process is gone or was replaced.
    pub fn take_dead(&mut self, mut alive: impl FnMut(&Tracked) -> bool) -> Vec<Tracked> {
        let dead: Vec<u32> = self
            .procs
            .values()
            .filter(|t| !alive(t))
            .map(|t| t.pid)
            .collect();
        dead.iter().filter_map(|p| self.procs.remove(p)).collect()
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Tracked> {
        self.procs.values()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub placed: u64,
    pub already_placed: u64,
    pub vanished: u64,
    pub pid_reused: u64,
    pub errors: u64,
    pub protected_skipped: u64,
    pub reconciles: u64,
    pub policy_reloads: u64,
    /// Children forked by a tracked lineage outside its cgroup, moved.
    #[serde(default)]
    pub forks_moved: u64,
    /// Processes placed by the children walk of a placement.
    #[serde(default)]
    pub subtree_placed: u64,
    /// Times the session cgroups were found missing and built again.
    #[serde(default)]
    pub tree_rebuilds: u64,
    /// Agents put in their family's shared leaf (sessions.max_agents).
    #[serde(default)]
    pub agents_over_cap: u64,
    /// Agent leaves removed once empty.
    #[serde(default)]
    pub leaves_removed: u64,
    /// Strict trust mode: matches refused session_high (untrusted
    /// executable or script, unlisted user).
    #[serde(default)]
    pub untrusted_refused: u64,
}

/// Exec-to-placement latency as the daemon measures it: from the kernel's
/// exec event (its CLOCK_MONOTONIC stamp) to the return of the write to
/// cgroup.procs, for processes moved at their exec. Counts per bucket;
/// `bounds_us[i]` is bucket i's upper bound, the last bucket is the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    pub bounds_us: Vec<u64>,
    pub counts: Vec<u64>,
    pub count: u64,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub max_us: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        // 10 us steps to 100 us, 50 us to 1 ms, 250 us to 5 ms, 1 ms to
        // 20 ms, 10 ms to 100 ms: fine where placements are.
        let mut bounds: Vec<u64> = (1..=10).map(|i| i * 10).collect();
        bounds.extend((3..=20).map(|i| i * 50));
        bounds.extend((5..=20).map(|i| i * 250));
        bounds.extend((6..=20).map(|i| i * 1000));
        bounds.extend((3..=10).map(|i| i * 10_000));
        let n = bounds.len() + 1;
        LatencyHistogram {
            bounds_us: bounds,
            counts: vec![0; n],
            count: 0,
            p50_us: None,
            p99_us: None,
            max_us: 0,
        }
    }
}

impl LatencyHistogram {
    pub fn record(&mut self, us: u64) {
        let i = self.bounds_us.partition_point(|&b| b < us);
        self.counts[i] += 1;
        self.count += 1;
        self.max_us = self.max_us.max(us);
    }

    /// The upper bound of the bucket holding the p-th percentile.
    pub fn percentile(&self, p: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((p / 100.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(self.bounds_us.get(i).copied().unwrap_or(self.max_us));
            }
        }
        Some(self.max_us)
    }

    /// Fill in the percentiles for the status file.
    pub fn summarize(&mut self) {
        self.p50_us = self.percentile(50.0);
        self.p99_us = self.percentile(99.0);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FamilyStatus {
    pub name: String,
    pub priority: Priority,
    pub file: String,
    pub live: usize,
    pub placed_total: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStatus {
    pub name: String,
    pub path: String,
    pub cpu_weight: Option<u32>,
    /// Pids in the session's cgroup.procs (forked children included).
    pub pids: usize,
    pub tracked: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcmonStatus {
    pub backend: String,
    pub fallback_reasons: Vec<String>,
    /// Every exec the source saw (BPF: all on the host, before the prefilter).
    pub exec_events: u64,
    pub exit_events: u64,
    pub lost_events: u64,
    #[serde(default)]
    pub stats: procmon::Stats,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub dir: String,
    pub config: String,
    pub loaded_at_ms: u64,
    /// The last reload error; the previous good policy stays in force.
    pub last_error: Option<String>,
}

/// An OOM kill seen in the tree and whom it hit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OomRecord {
    pub at_ms: u64,
    pub session: String,
    pub pid: Option<u32>,
    pub family: Option<String>,
    pub comm: Option<String>,
}

/// What the activity monitor says of an agent or a family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activity {
    Active,
    Idle,
    /// No monitor (disabled, or not yet sampled).
    #[default]
    Unknown,
}

impl std::fmt::Display for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Activity::Active => "active",
            Activity::Idle => "idle",
            Activity::Unknown => "unknown",
        })
    }
}

/// One activity transition (bounded history per agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub at_ms: u64,
    pub to: Activity,
}

/// One agent instance: a process that matched its family's own rule, and
/// every descendant that stayed in the family. Its leaves are
/// `ROOT/session_high/<id>` and, for tools sent low, `ROOT/session_low/<id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// `<family>-<root pid>`: also the leaf cgroups' name.
    pub id: String,
    pub family: String,
    pub root_pid: u32,
    pub root_start_ticks: u64,
    pub started_at_ms: u64,
    /// Leaf cgroups (paths relative to the cgroup2 mount), high first.
    pub cgroups: Vec<String>,
    /// Processes in its leaves now (tracked or forked).
    pub pids: usize,
    pub state: Activity,
    /// Unix ms of the last transition (or of the first sample).
    pub state_since_ms: u64,
    pub transitions: u64,
    #[serde(default)]
    pub history: Vec<Transition>,
    /// CPU use over the last activity interval, in % of one CPU.
    #[serde(default)]
    pub cpu_percent: Option<f64>,
    /// What it uses (accounting sampler), each figure with its source.
    #[serde(default)]
    pub usage: Option<accounting::AgentUsage>,
}

impl AgentStatus {
    /// The sessions its leaves are in: "high", "low", "high+low" ("-": none).
    pub fn sessions(&self) -> String {
        let names: Vec<&str> = self
            .cgroups
            .iter()
            .filter_map(|c| {
                if c.contains("/session_high/") {
                    Some("high")
                } else if c.contains("/session_low/") {
                    Some("low")
                } else {
                    None
                }
            })
            .collect();
        if names.is_empty() {
            "-".into()
        } else {
            names.join("+")
        }
    }
}

/// A family's activity: active while any of its agents is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FamilyActivity {
    pub state: Activity,
    pub state_since_ms: u64,
    pub transitions: u64,
    pub agents: usize,
}

/// Everything `agentcgd status` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// `VERSION (git REV)` of the daemon that wrote the file.
    #[serde(default)]
    pub version: String,
    pub daemon_pid: u32,
    pub running: bool,
    pub dry_run: bool,
    pub started_at_ms: u64,
    pub updated_at_ms: u64,
    pub root: String,
    pub cgroup: SetupReport,
    /// The last time the session cgroups were found missing (and rebuilt).
    #[serde(default)]
    pub tree_error: Option<String>,
    /// Exec-to-placement latency measured by the daemon (BPF events).
    #[serde(default)]
    pub placement_latency: LatencyHistogram,
    pub sessions: Vec<SessionStatus>,
    pub families: Vec<FamilyStatus>,
    pub procmon: ProcmonStatus,
    pub policy: PolicyStatus,
    pub counters: Counters,
    #[serde(default)]
    pub scheduler: scheduler::Status,
    #[serde(default)]
    pub memcg: memcg::Status,
    pub activity: String,
    pub oom_kills: Vec<OomRecord>,
    /// Agent instances (per-agent leaves); empty with `sessions.per_agent: false`.
    #[serde(default)]
    pub agents: Vec<AgentStatus>,
    /// Each family's activity state, by family name.
    #[serde(default)]
    pub family_activity: BTreeMap<String, FamilyActivity>,
    /// The reactions engine.
    #[serde(default)]
    pub reactions: reactions::Status,
    /// The last exits of agents (root process), oldest first (at most 64).
    #[serde(default)]
    pub exits: Vec<accounting::ExitRecord>,
    /// Whether GPU figures are available (NVML), or why not.
    #[serde(default)]
    pub gpu: accounting::GpuStatus,
    pub processes: Vec<Tracked>,
}

impl State {
    pub fn read(path: &Path) -> Result<State, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read state file {}: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| format!("state file {} is malformed: {e}", path.display()))
    }

    /// Write atomically: readers see the old or the new file, never half.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        // No fsync: the file describes the running daemon and lives in /run;
        // rename is what makes it atomic for readers, and an fsync would
        // stall the event loop. statefile.rs: 0755 directory, O_EXCL|
        // O_NOFOLLOW temporary file, mode 0644.
        let mut buf = serde_json::to_vec(self)?;
        buf.write_all(b"\n")?;
        crate::statefile::write_atomic(path, &buf)
    }

    /// The previous run's state, for adoption: only a file that is root's
    /// alone (else ignored, with the reason).
    pub fn read_trusted(path: &Path) -> Result<State, String> {
        let text = crate::statefile::read_trusted(path)?;
        serde_json::from_str(&text)
            .map_err(|e| format!("state file {} is malformed: {e}", path.display()))
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(pid: u32, start: u64) -> Tracked {
        Tracked {
            pid,
            start_ticks: start,
            family: FamilyName::try_from("a".to_string()).unwrap(),
            priority: Priority::High,
            reason: Reason::Adopted,
            comm: "x".into(),
            placed_at_ms: 0,
            agent: None,
        }
    }

    #[test]
    fn tracker_guards_pid_reuse() {
        let mut tr = Tracker::default();
        tr.insert(t(10, 100));
        assert!(tr.get(10, 100).is_some());
        assert!(
            tr.get(10, 101).is_none(),
            "a reused pid is a different process"
        );
        assert!(
            tr.remove(10, Some(999)).is_none(),
            "exit of another process with the same pid"
        );
        assert!(tr.remove(10, Some(100)).is_some());
        tr.insert(t(11, 1));
        assert!(tr.remove(11, None).is_some());
        assert_eq!(tr.len(), 0);
    }

    #[test]
    fn latency_percentiles_by_bucket() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.percentile(50.0), None);
        for us in 1..=98 {
            h.record(us * 10 % 100 + 5); // 5..95 us
        }
        h.record(1500);
        h.record(250_000);
        h.summarize();
        assert_eq!(h.count, 100);
        assert!(h.p50_us.unwrap() <= 60, "{h:?}");
        assert_eq!(h.p99_us, Some(1500));
        assert_eq!(h.percentile(100.0), Some(250_000));
        assert_eq!(h.max_us, 250_000);
    }

    #[test]
    fn state_roundtrip_atomic() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("run/state.json");
        let mut s = State {
            daemon_pid: 7,
            running: true,
            ..State::default()
        };
        s.processes.push(t(5, 6));
        s.write(&path).unwrap();
        assert_eq!(State::read(&path).unwrap(), s);
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp files left behind");
        std::fs::write(&path, "{not json").unwrap();
        assert!(State::read(&path).unwrap_err().contains("malformed"));
    }

    #[test]
    fn typed_status_fields_roundtrip_and_default_when_absent() {
        let mut s = State {
            exits: vec![accounting::ExitRecord::new(
                "aider-9",
                accounting::ExitInfo {
                    family: "aider".into(),
                    root_pid: 9,
                    wait_status: Some(9),
                    started_at_ms: 1,
                    killed_tools: vec![],
                },
                None,
                5,
            )],
            gpu: accounting::GpuStatus::NotAvailable {
                reason: "no NVIDIA device".into(),
            },
            ..State::default()
        };
        s.scheduler.state = scheduler::SchedState::Running;
        s.reactions.enabled = true;
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["scheduler"]["state"], "running");
        assert_eq!(json["gpu"]["state"], "not_available");
        assert_eq!(json["exits"][0]["exit"]["signal"], 9);
        let back: State = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, s);
        // A state file from before these fields: defaults, not an error.
        let mut old = json;
        for k in ["scheduler", "memcg", "reactions", "exits", "gpu"] {
            old.as_object_mut().unwrap().remove(k);
        }
        let back: State = serde_json::from_value(old).unwrap();
        assert!(back.exits.is_empty());
        assert_eq!(back.gpu, accounting::GpuStatus::default());
    }
}
