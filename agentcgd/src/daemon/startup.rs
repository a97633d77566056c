//! Start-up: the session tree, the services the daemon starts, what a
//! previous run left (its state file, its agent leaves), the placing
//! thread's slice.

use std::collections::HashMap;

use anyhow::bail;

use procmon::Monitor;

use crate::cgroup::{cgroup_of, CgroupError, SetupReport, Target, Tree};
use crate::classify::AgentKey;
use crate::config::Config;
use crate::policy::Priority;
use crate::state::{State, Tracked};

use super::{Daemon, EventSource, Options};

/// Build the sessions and return where to move processes.
pub(super) fn setup_tree(
    tree: &Tree,
    cfg: &Config,
    dry_run: bool,
) -> anyhow::Result<(SetupReport, [Target; 2])> {
    let setup = if dry_run {
        SetupReport {
            warnings: vec!["dry-run: the cgroup tree is not created or changed".into()],
            ..SetupReport::default()
        }
    } else {
        let mut r = tree
            .setup([
                (Priority::High, cfg.sessions.high.cpu_weight),
                (Priority::Low, cfg.sessions.low.cpu_weight),
            ])
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if cfg.sessions.per_agent {
            let strays = tree
                .prepare_leaves(&mut r)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if strays > 0 {
                r.warnings.push(format!(
                    "{strays} processes sat directly in the sessions: moved to their `{}` leaves",
                    crate::cgroup::UNSORTED
                ));
            }
        }
        r
    };
    let target = |p: Priority| -> anyhow::Result<Target> {
        if dry_run {
            // Nothing is created: ids of 0 never match a real cgroup.
            let dir = tree.session_dir(p);
            return Ok(Target {
                procs: dir.join("cgroup.procs"),
                file: None,
                rel: crate::cgroup::rel_path(&dir),
                id: 0,
            });
        }
        tree.target(p)
            .map_err(|e: CgroupError| anyhow::anyhow!("{e}"))
    };
    Ok((setup, [target(Priority::High)?, target(Priority::Low)?]))
}

/// The reactions engine, told which triggers this daemon cannot deliver.
pub(super) fn start_reactions(
    cfg: &Config,
    opts: &Options,
    tree: &Tree,
    monitor: &Monitor,
) -> reactions::Engine {
    use reactions::TriggerKind;
    let mut unavailable = Vec::new();
    if !cfg.activity.enabled {
        unavailable.push((
            TriggerKind::Idle,
            "activity.enabled: false (the activity monitor is off)".to_string(),
        ));
    }
    if monitor.backend() == procmon::Backend::ProcPoll {
        unavailable.push((
            TriggerKind::Crash,
            "the /proc poll event source reports no exit status".to_string(),
        ));
    }
    reactions::Engine::start(
        cfg.reactions.clone(),
        reactions::Options {
            dry_run: opts.dry_run,
            pressure_file: Some(tree.session_dir(Priority::High).join("memory.pressure")),
            pressure_session: Priority::High.session().to_string(),
            unavailable,
            ..Default::default()
        },
    )
}

pub(super) fn start_monitor(source: EventSource) -> anyhow::Result<Monitor> {
    let opts = procmon::Options {
        allow_bpf: matches!(source, EventSource::Auto | EventSource::Bpf),
        allow_proc_connector: matches!(source, EventSource::Auto | EventSource::ProcConnector),
        ..procmon::Options::default()
    };
    let mon = Monitor::start(&opts)?;
    let wanted = match source {
        EventSource::Auto => None,
        EventSource::Bpf => Some(procmon::Backend::Bpf),
        EventSource::ProcConnector => Some(procmon::Backend::ProcConnector),
        EventSource::Poll => Some(procmon::Backend::ProcPoll),
    };
    if let Some(w) = wanted {
        if mon.backend() != w {
            bail!(
                "--events {w} is not available: {}",
                mon.fallback_reasons().join("; ")
            );
        }
    }
    Ok(mon)
}

/// Descriptors an agent leaf holds open: its cgroup.procs (moves) and its
/// directory (the activity monitor's storage is keyed by it).
const FDS_PER_LEAF: u64 = 2;
/// Descriptors kept for everything else: BPF objects, epoll, the event
/// sources, the shared leaves, the /proc and cgroup files read and closed.
const FD_RESERVE: u64 = 128;
/// Below this many agents with leaves, a cap lowered by the open-files
/// limit is a warning.
const NOTABLE_CAP: usize = 256;

/// Raise the soft limit on open files to the hard one, and return how
/// many agents can have leaves of their own within it (at most
/// `max_agents`). The usual soft limit, 1024 (also systemd's for a
/// service), holds about 220 agents with a leaf in each session; systemd's
/// advice for programs that need many descriptors is this: raise the soft
/// limit to the hard. Agents past the cap share their family's leaf, as
/// past `sessions.max_agents`, instead of failing to be placed.
pub(super) fn agents_within_fd_limit(max_agents: usize) -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => {
            log::warn!("cannot read the open-files limit: {e}");
            return max_agents;
        }
    };
    let mut limit = soft;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => limit = hard,
            Err(e) => log::warn!("cannot raise the open-files limit from {soft} to {hard}: {e}"),
        }
    }
    let cap = leaf_cap(max_agents, limit);
    if cap < max_agents {
        // The kernel's default hard limit (4096) holds 992: a note, not a
        // warning, unless the cap is one a busy host may reach.
        let level = if cap < NOTABLE_CAP {
            log::Level::Warn
        } else {
            log::Level::Info
        };
        log::log!(
            level,
            "open files limited to {limit}: {cap} agents get leaves of their own, not \
             {max_agents} (sessions.max_agents); the others share their family's leaf. \
             Raise the hard limit (LimitNOFILE= for the service, ulimit -Hn) for more"
        );
    } else {
        log::debug!("open-files limit {limit} (was {soft}): room for {cap} agents' leaves");
    }
    cap
}

/// Agents whose two leaves (one per session) fit in `limit` descriptors
/// beside [`FD_RESERVE`], at most `max_agents`.
fn leaf_cap(max_agents: usize, limit: u64) -> usize {
    let fit = limit.saturating_sub(FD_RESERVE) / (2 * FDS_PER_LEAF);
    max_agents.min(usize::try_from(fit).unwrap_or(usize::MAX))
}

/// The placing thread's EEVDF slice. An exec event wakes it from the
/// exec'ing task, nearly always onto that task's CPU; with the default
/// slice (3 ms) the woken thread waited there until the new program
/// slept, about 300 us on the development host, nice -10 or not. A slice
/// this short gives it an earlier deadline, so it preempts at once (Linux
/// 6.12+; older kernels ignore the value). 100 us is the kernel's minimum.
const PLACING_SLICE_NS: u64 = 100_000;

/// Give the calling thread [`PLACING_SLICE_NS`] as its slice, keeping its
/// nice value.
pub(super) fn short_slice_for_this_thread() {
    /// `struct sched_attr` (include/uapi/linux/sched/types.h).
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
        util_min: u32,
        util_max: u32,
    }
    // SAFETY: getpriority only reads. For the calling thread it cannot
    // fail, so -1 is a nice value here, not an error.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        flags: 0,
        nice,
        priority: 0,
        runtime: PLACING_SLICE_NS,
        deadline: 0,
        period: 0,
        util_min: 0,
        util_max: 0,
    };
    // SAFETY: a valid sched_attr for the calling thread (pid 0); the
    // kernel reads `size` bytes of it.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if rc != 0 {
        log::warn!(
            "cannot shorten the placing thread's slice: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Daemon {
    /// Keep the families a previous run assigned (an orphaned descendant
    /// cannot be traced to its ancestor any more), for processes that are
    /// still the same ones.
    pub(super) fn adopt_previous_state(&mut self) {
        let prev = match State::read_trusted(&self.opts.state) {
            Ok(prev) => Some(prev),
            Err(e) => {
                if self.opts.state.exists() {
                    log::warn!("previous state not adopted: {e}");
                }
                None
            }
        };
        if let Some(l) = &mut self.leaves {
            let known: HashMap<String, (AgentKey, u64)> = prev
                .iter()
                .flat_map(|s| s.agents.iter())
                .map(|a| {
                    let key = AgentKey {
                        pid: a.root_pid,
                        start_ticks: a.root_start_ticks,
                    };
                    (a.id.clone(), (key, a.started_at_ms))
                })
                .collect();
            let policies = &self.policies;
            let procfs = &self.procfs;
            let n = l.adopt(
                &known,
                |f| policies.family(f).is_some() || f == "agentcgd-run",
                |pid| procfs.start_ticks(pid),
            );
            if n > 0 {
                log::info!("adopted {n} agent leaves left by the previous run");
            }
        }
        let Some(prev) = prev else { return };
        let mut adopted = 0;
        for t in prev.processes {
            // The same process (its start time), and where a previous run
            // put it: an entry never moves a process by itself.
            let still_there =
                self.procfs.start_ticks(t.pid) == Some(t.start_ticks) && self.adoptable(&t);
            if still_there && self.policies.family(t.family.as_str()).is_some() {
                let id = match self.place_target(t.priority, t.agent, &t.family) {
                    Ok(target) => target.id,
                    Err(_) => self.target(t.priority).id,
                };
                self.track(t, id);
                adopted += 1;
            }
        }
        log::info!("adopted {adopted} processes from the previous run's state");
    }

    /// A state entry is adopted only for a process that sits in the
    /// session the entry names (or below it): the previous run moved it
    /// there. Anything else is decided afresh by the scan.
    fn adoptable(&self, t: &Tracked) -> bool {
        let session = &self.target(t.priority).rel;
        cgroup_of(t.pid).is_some_and(|cg| cg == *session || cg.starts_with(&format!("{session}/")))
    }
}

#[cfg(test)]
mod tests {
    /// The slice sched_getattr reports for the calling thread (the fair
    /// class's current slice on 6.12+, 0 before).
    fn slice_ns() -> u64 {
        let mut attr = [0u64; 7];
        // SAFETY: a zeroed buffer of 56 bytes, the size passed; the kernel
        // writes a struct sched_attr (runtime at byte 24) into it.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_sched_getattr,
                0,
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr) as u32,
                0,
            )
        };
        assert_eq!(rc, 0, "sched_getattr: {}", std::io::Error::last_os_error());
        attr[3]
    }

    #[test]
    fn agents_with_leaves_fit_the_fd_limit() {
        use super::leaf_cap;
        assert_eq!(leaf_cap(1024, 524_288), 1024);
        assert_eq!(leaf_cap(1024, 1024), 224);
        assert_eq!(leaf_cap(10, 1024), 10);
        assert_eq!(leaf_cap(1024, 168), 10);
        assert_eq!(leaf_cap(1024, 64), 0);
    }

    #[test]
    fn the_placing_thread_gets_the_short_slice() {
        let (before, after) = std::thread::spawn(|| {
            let before = slice_ns();
            super::short_slice_for_this_thread();
            (before, slice_ns())
        })
        .join()
        .unwrap();
        if before == 0 {
            eprintln!("SKIP: this kernel reports no EEVDF slice (custom slices need Linux 6.12)");
            return;
        }
        assert_eq!(after, super::PLACING_SLICE_NS, "slice before: {before} ns");
    }
}
