//! Exits: what a tracked process leaves behind (its lineage for its
//! orphans, an agent's figures), crashes and OOM kills handed to the
//! reactions.

use std::path::Path;
use std::time::{Duration, Instant};

use procmon::ProcInfo;

use crate::classify::Reason;
use crate::observe::Watch;
use crate::policy::Priority;
use crate::state::{now_ms, OomRecord, Tracked};

use super::place::as_lineage;
use super::{Daemon, MAX_ANCESTRY, MAX_DEPARTED};

impl Daemon {
    /// A process exited: out of the tracker (or the entries waiting for
    /// their exit), its lineage kept for its orphans, a crash or an OOM
    /// kill of an agent handed on.
    pub(super) fn on_exit(&mut self, pid: u32, start_ticks: Option<u64>, exit_code: Option<i32>) {
        self.lineage_memo.remove(&pid);
        let t = self
            .tracker
            .remove(pid, start_ticks)
            .or_else(|| self.take_departing(pid, start_ticks));
        if let Some(t) = t {
            self.dirty = true;
            self.remember_departed(&t);
            self.note_agent_exit(&t, exit_code);
            // An agent's root process died by a signal or non-zero.
            let root = placed_by(&t.reason).is_none() && !matches!(t.reason, Reason::Adopted);
            if let (true, Some(ws)) = (root, exit_code) {
                let exit = reactions::Exit::from_wait_status(ws);
                if exit.is_crash() {
                    let agent = self.agent_of(&t);
                    self.reactions
                        .trigger(reactions::Trigger::Crash { agent, exit });
                }
            }
            if exit_code.is_some_and(|c| c & 0x7f == libc::SIGKILL) {
                self.note_kill(t);
            }
        }
        if self
            .agents
            .get(&pid)
            .is_some_and(|(s, _)| start_ticks.is_none_or(|st| st == *s))
        {
            self.agents.remove(&pid);
        }
    }

    fn remember_departed(&mut self, t: &Tracked) {
        let key = (t.pid, t.start_ticks);
        if self.departed.insert(key, as_lineage(t)).is_none() {
            self.departed_order.push_back(key);
        }
        while self.departed_order.len() > MAX_DEPARTED {
            if let Some(k) = self.departed_order.pop_front() {
                self.departed.remove(&k);
            }
        }
    }

    pub(super) fn handle_mem(&mut self, ev: memcg::MemEvent) {
        self.dirty = true;
        if let memcg::MemEvent::OomKill { session, count } = ev {
            let name = match session {
                memcg::SessionKind::High => Priority::High.session(),
                memcg::SessionKind::Low => Priority::Low.session(),
                memcg::SessionKind::Root => "agentcg",
            };
            log::warn!("OOM kill in {name} ({count})");
            for _ in 0..count.min(16) {
                self.state.oom_kills.push(OomRecord {
                    at_ms: now_ms(),
                    session: name.to_string(),
                    pid: None,
                    family: None,
                    comm: None,
                });
            }
            self.attribute_kills();
        }
    }

    /// A tracked process was SIGKILLed: maybe by the OOM killer.
    fn note_kill(&mut self, t: Tracked) {
        let agent = self.agent_of(&t);
        self.recent_kills.push((Instant::now(), t, agent));
        self.attribute_kills();
    }

    /// Pair OOM kills seen in memory.events with SIGKILL exits of tracked
    /// processes in the same session; the two arrive in either order.
    fn attribute_kills(&mut self) {
        const PAIRING_WINDOW: Duration = Duration::from_secs(5);
        self.recent_kills
            .retain(|(at, _, _)| at.elapsed() < PAIRING_WINDOW);
        let now = now_ms();
        let mut killed = Vec::new();
        for rec in self.state.oom_kills.iter_mut().filter(|r| r.pid.is_none()) {
            if now.saturating_sub(rec.at_ms) > PAIRING_WINDOW.as_millis() as u64 {
                continue;
            }
            if let Some(i) = self
                .recent_kills
                .iter()
                .position(|(_, t, _)| t.priority.session() == rec.session)
            {
                let (_, t, agent) = self.recent_kills.remove(i);
                log::warn!(
                    "OOM kill in {}: pid {} ({}) of family {}",
                    rec.session,
                    t.pid,
                    t.comm,
                    t.family
                );
                rec.pid = Some(t.pid);
                rec.family = Some(t.family.to_string());
                rec.comm = Some(t.comm.clone());
                killed.push((t, agent));
            }
        }
        for (t, agent) in killed {
            self.reactions
                .trigger(reactions::Trigger::OomKill { agent, pid: t.pid });
        }
        // Keep the record list bounded.
        let n = self.state.oom_kills.len();
        if n > 256 {
            self.state.oom_kills.drain(..n - 256);
        }
    }

    /// An agent's root process exited: the observers record its figures.
    fn note_agent_exit(&mut self, t: &Tracked, wait_status: Option<i32>) {
        let Some(key) = t
            .agent
            .filter(|k| k.pid == t.pid && k.start_ticks == t.start_ticks)
        else {
            return;
        };
        let Some(a) = self.leaves.as_ref().and_then(|l| l.agent(&key)) else {
            return;
        };
        let killed_tools = self
            .recent_kills
            .iter()
            .filter(|(_, k, _)| k.agent == Some(key) && k.pid != t.pid)
            .map(|(_, k, _)| accounting::KilledTool {
                pid: k.pid,
                comm: k.comm.clone(),
                signal: libc::SIGKILL,
            })
            .collect();
        let w = Watch {
            id: a.id.clone(),
            family: a.family.to_string(),
            root_pid: key.pid,
            leaves: a.leaf_dirs(),
            pids: Vec::new(),
        };
        let info = accounting::ExitInfo {
            family: a.family.to_string(),
            root_pid: key.pid,
            wait_status,
            started_at_ms: a.started_at_ms,
            killed_tools,
        };
        self.observer.exit(w, info);
    }

    /// Remember an agent's root process for reactions: its cwd is gone once
    /// it has exited. Only read when a rule wants crash or OOM triggers.
    pub(super) fn note_agent(&mut self, info: &ProcInfo, family: &str) {
        use reactions::TriggerKind;
        if !(self.reactions.wants(TriggerKind::Crash) || self.reactions.wants(TriggerKind::OomKill))
        {
            return;
        }
        let mut a = reactions::Agent::new(family, info.pid);
        a.uid = Some(info.uid);
        a.cwd = std::fs::read_link(format!("/proc/{}/cwd", info.pid)).ok();
        self.agents.insert(info.pid, (info.start_ticks, a));
    }

    /// The agent a tracked process belongs to: its nearest ancestor placed
    /// by its family's own rule (itself, for a root process).
    fn agent_of(&self, t: &Tracked) -> reactions::Agent {
        let mut root = t.clone();
        for _ in 0..MAX_ANCESTRY {
            let Some(ancestor) = placed_by(&root.reason) else {
                break;
            };
            match self.tracker.get_pid(ancestor) {
                Some(a) if a.start_ticks <= root.start_ticks && a.family == root.family => {
                    root = a.clone()
                }
                _ => break,
            }
        }
        let mut agent = match self.agents.get(&root.pid) {
            Some((start, a)) if *start == root.start_ticks => a.clone(),
            _ => reactions::Agent::new(root.family.as_str(), root.pid),
        };
        // Its own leaf where it has one, else its session.
        agent.cgroup = Some(
            root.agent
                .and_then(|k| {
                    self.leaves
                        .as_ref()?
                        .agent(&k)?
                        .leaf_dir(root.priority)
                        .map(Path::to_path_buf)
                })
                .unwrap_or_else(|| self.tree.session_dir(root.priority)),
        );
        agent
    }
}

/// The tracked ancestor a reason names (None: the process is its agent's
/// root, placed by its own rule or by `agentcgd run`).
fn placed_by(r: &Reason) -> Option<u32> {
    match r {
        Reason::Inherited { ancestor } | Reason::Tool { ancestor, .. } => Some(*ancestor),
        Reason::Reexec { previous } => placed_by(previous),
        Reason::Rule { .. } | Reason::Adopted | Reason::Launched { .. } => None,
    }
}
