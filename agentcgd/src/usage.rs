//! Glue between the state's agents and the accounting sampler: what the
//! state writer needs to fill `AgentStatus.usage`, `State.gpu` and the
//! metrics from one sweep.

// Used once the state writer runs the sampler (wiring in publish.rs /
// daemon.rs); until then only the tests use it.
#![cfg_attr(not(test), allow(dead_code))]

use std::collections::BTreeMap;
use std::path::Path;

use accounting::{AgentRef, AgentUsage, Sampler};

use crate::state::{AgentStatus, State};

/// The sampler's view of the state's agents: leaves made absolute under
/// the cgroup2 `mount` (`AgentStatus.cgroups` are relative to it), and the
/// root process (pid, start time) as a tracked pid.
pub fn agent_refs(agents: &[AgentStatus], mount: &Path) -> Vec<AgentRef> {
    agents
        .iter()
        .map(|a| AgentRef {
            id: a.id.clone(),
            leaves: a
                .cgroups
                .iter()
                .map(|c| mount.join(c.trim_start_matches('/')))
                .collect(),
            pids: vec![(a.root_pid, a.root_start_ticks)],
        })
        .collect()
}

/// Copy each agent's figures into its status; `cpu_percent` from the
/// sampler where the activity monitor left it empty.
pub fn apply(agents: &mut [AgentStatus], usage: &BTreeMap<String, AgentUsage>) {
    for a in agents {
        a.usage = usage.get(&a.id).cloned();
        if a.cpu_percent.is_none() {
            a.cpu_percent = a.usage.as_ref().and_then(|u| u.cpu_percent);
        }
    }
}

/// One pass of the state writer: sample (the sampler rate-limits itself to
/// its interval) and put the figures and the GPU status into `s`.
pub fn refresh(s: &mut State, sampler: &mut Sampler, mount: &Path) {
    let refs = agent_refs(&s.agents, mount);
    let usage = sampler.sample(&refs);
    apply(&mut s.agents, usage);
    s.gpu = sampler.gpu_status().clone();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Activity;
    use std::time::Duration;

    fn agent(id: &str, cgroups: &[&str]) -> AgentStatus {
        AgentStatus {
            id: id.into(),
            family: "aider".into(),
            root_pid: 42,
            root_start_ticks: 7,
            started_at_ms: 0,
            cgroups: cgroups.iter().map(|c| c.to_string()).collect(),
            pids: 1,
            state: Activity::Unknown,
            state_since_ms: 0,
            transitions: 0,
            history: vec![],
            cpu_percent: None,
            usage: None,
        }
    }

    #[test]
    fn refs_have_absolute_leaves_and_the_root() {
        let a = [agent(
            "aider-42",
            &[
                "/agentcg/session_high/aider-42",
                "agentcg/session_low/aider-42",
            ],
        )];
        let r = agent_refs(&a, Path::new("/sys/fs/cgroup"));
        assert_eq!(r[0].id, "aider-42");
        assert_eq!(
            r[0].leaves,
            [
                Path::new("/sys/fs/cgroup/agentcg/session_high/aider-42"),
                Path::new("/sys/fs/cgroup/agentcg/session_low/aider-42")
            ]
        );
        assert_eq!(r[0].pids, [(42, 7)]);
    }

    /// A real sweep over fixture leaves lands in the state.
    #[test]
    fn refresh_fills_usage_gpu_and_cpu_percent() {
        let t = tempfile::tempdir().unwrap();
        let leaf = t.path().join("agentcg/session_high/aider-42");
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(leaf.join("cgroup.procs"), "").unwrap();
        std::fs::write(
            leaf.join("cpu.stat"),
            "usage_usec 1000\nuser_usec 1000\nsystem_usec 0\n",
        )
        .unwrap();
        std::fs::write(leaf.join("memory.current"), "4096\n").unwrap();
        let mut sampler = Sampler::new(
            accounting::Options {
                interval: Duration::ZERO,
                proc_root: t.path().join("proc"),
                ..Default::default()
            },
            accounting::Gpu::unavailable("test"),
        );
        let mut s = State {
            agents: vec![
                agent("aider-42", &["/agentcg/session_high/aider-42"]),
                agent("gone-1", &[]),
            ],
            ..State::default()
        };
        refresh(&mut s, &mut sampler, t.path());
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(
            leaf.join("cpu.stat"),
            "usage_usec 11000\nuser_usec 1000\nsystem_usec 0\n",
        )
        .unwrap();
        refresh(&mut s, &mut sampler, t.path());
        let u = s.agents[0].usage.as_ref().unwrap();
        assert_eq!(u.memory_bytes, 4096);
        assert_eq!(u.sources.memory, accounting::Source::Cgroup);
        assert!(s.agents[0].cpu_percent.unwrap() > 0.0);
        assert_eq!(s.gpu.to_string(), "not available (test)");
    }
}
