//! What the daemon thread hands the publisher, and its log summary.

use std::time::Instant;

use crate::state::{AgentStatus, FamilyStatus, ProcmonStatus, State};

use super::{Daemon, SUMMARY_INTERVAL};

impl Daemon {
    /// Placements are debug lines; info gets a count per family.
    pub(super) fn log_summary(&mut self, now: bool) {
        if self.summary.is_empty() || (!now && self.summary_at.elapsed() < SUMMARY_INTERVAL) {
            return;
        }
        let parts: Vec<String> = self
            .summary
            .iter()
            .map(|(f, n)| format!("{f} {n}"))
            .collect();
        log::info!(
            "placed {} processes in {:.0} s: {}",
            self.summary.values().sum::<u64>(),
            self.summary_at.elapsed().as_secs_f64(),
            parts.join(", ")
        );
        self.summary.clear();
        self.summary_at = Instant::now();
    }

    /// What the publisher writes (it adds scheduler, memcg and sessions).
    pub(super) fn snapshot(&mut self) -> State {
        let st = self.monitor.stats();
        self.state.placement_latency.summarize();
        let mut s = self.state.clone();
        s.procmon = ProcmonStatus {
            backend: self.monitor.backend().to_string(),
            fallback_reasons: self.monitor.fallback_reasons().to_vec(),
            exec_events: st.exec_seen,
            exit_events: st.exit,
            lost_events: st.lost,
            stats: st,
        };
        s.counters = self.counters.clone();
        s.processes = self.tracker.iter().cloned().collect();
        if let Some(l) = &self.leaves {
            s.counters.agents_over_cap = l.over_cap;
            s.counters.leaves_removed = l.removed();
            s.agents = l
                .agents()
                .map(|a| AgentStatus {
                    id: a.id.clone(),
                    family: a.family.to_string(),
                    root_pid: a.key.pid,
                    root_start_ticks: a.key.start_ticks,
                    started_at_ms: a.started_at_ms,
                    cgroups: a.cgroups(),
                    pids: 0,
                    state: Default::default(),
                    state_since_ms: 0,
                    transitions: 0,
                    history: Vec::new(),
                    cpu_percent: None,
                    usage: None,
                })
                .collect();
        }
        s.families = self
            .policies
            .families
            .iter()
            .map(|f| FamilyStatus {
                name: f.family.to_string(),
                priority: f.priority,
                file: f.file.display().to_string(),
                live: self.tracker.iter().filter(|t| t.family == f.family).count(),
                placed_total: self
                    .placed_by_family
                    .get(f.family.as_str())
                    .copied()
                    .unwrap_or(0),
            })
            .collect();
        s
    }
}
