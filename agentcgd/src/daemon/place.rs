//! Placement: from an exec or fork event (or a scan) to a decision, and
//! from a decision to the process in its cgroup, tracked with its lineage.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

use procmon::{Ancestor, Exec, Origin, ProcInfo, Seed};

use crate::cgroup::{cgroup_of, CgroupError, MoveError, Target};
use crate::classify::{
    inherit, own_match, protected, user_priority, AgentKey, Decision, Lineage, Reason,
};
use crate::policy::{FamilyName, Priority};
use crate::state::{now_ms, Tracked};

use super::{Daemon, Moved, Walk, DEPARTING_FOR, MAX_ANCESTRY};

impl Daemon {
    pub(super) fn on_exec(&mut self, x: Exec) {
        let Exec {
            mut info,
            origin,
            cgroup_id,
            ancestor,
            argv_truncated,
            exe_unresolved,
            at_ns,
        } = x;
        // Complete facts before deciding: the whole argv, the resolved
        // executable. A vanished process needs no decision.
        if argv_truncated {
            match self.procfs.cmdline(info.pid) {
                Ok(argv) => info.argv = argv,
                Err(e) => {
                    self.unreadable(info.pid, "cmdline", &e);
                    return;
                }
            }
        }
        if exe_unresolved && (self.needs_exe || origin == Origin::Rename) {
            match self.procfs.exe(info.pid) {
                Ok(exe) => info.exe = exe,
                Err(e) => {
                    self.unreadable(info.pid, "exe", &e);
                    return;
                }
            }
        }
        // A process already tracked (a re-exec, or a child the children
        // walk placed after the kernel stamped this event) is its own
        // lineage: the event's ancestor may predate that decision.
        let known = if let Some(me) = self.tracker.get(info.pid, info.start_ticks) {
            Some(Some(as_lineage(me)))
        } else if let Some(a) = ancestor {
            Some(self.lineage_of(a))
        } else if self.trust_kernel_lineage {
            Some(None)
        } else {
            None
        };
        let Some((decision, agent)) = self.decide(&info, known) else {
            // Re-exec into something no rule keeps: forget it, leave it be.
            if self
                .tracker
                .remove(info.pid, Some(info.start_ticks))
                .is_some()
            {
                self.monitor.unseed(info.pid);
                self.dirty = true;
            }
            return;
        };
        let moved_before = self.counters.placed;
        self.apply(info, decision, agent, cgroup_id, Walk::Children);
        if let (Some(at), true) = (at_ns, self.counters.placed > moved_before) {
            let us = monotonic_ns().saturating_sub(at) / 1000;
            self.state.placement_latency.record(us);
        }
    }

    /// A child forked by a tracked lineage outside its cgroup (BPF), or any
    /// fork (proc connector): bring it to its lineage's session.
    pub(super) fn on_fork(
        &mut self,
        pid: u32,
        ppid: u32,
        start: Option<u64>,
        ancestor: Option<Ancestor>,
    ) {
        let lin = match ancestor {
            Some(a) => self.lineage_of(a),
            None => self.tracker.get_pid(ppid).map(as_lineage),
        };
        let Some(lin) = lin else { return };
        if self.opts.dry_run {
            return;
        }
        let target = match self.place_target(lin.priority, lin.agent, &lin.family) {
            Ok(t) => t,
            Err(e) => return self.no_target(pid, lin.priority, e),
        };
        if ancestor.is_none() && cgroup_of(pid).as_deref() == Some(target.rel.as_str()) {
            return;
        }
        let Some(start) = start.or_else(|| self.procfs.start_ticks(pid)) else {
            return;
        };
        match self.move_to(pid, start, &target) {
            Moved::Yes { threads } => {
                self.counters.forks_moved += 1;
                self.dirty = true;
                log::debug!("moved forked pid {pid} (of pid {ppid}) to {}", target.rel);
                self.place_children(pid, threads, &lin);
            }
            Moved::TreeLost => self.rebuild_tree("a session cgroup vanished during a move"),
            _ => {}
        }
    }

    /// The tracked ancestor the kernel named, also after it exited.
    fn lineage_of(&self, a: Ancestor) -> Option<Lineage> {
        self.tracker
            .get(a.pid, a.start_ticks)
            .map(as_lineage)
            .or_else(|| self.departed.get(&(a.pid, a.start_ticks)).cloned())
    }

    /// The nearest tracked process among `p` (on re-exec) and its ancestors,
    /// by walking /proc. The walk's result is remembered for every untracked
    /// ancestor it passed (until that ancestor exits or the tracker gains an
    /// entry), so a parent that spawns many unmatched children is walked once.
    fn walk_lineage(&mut self, p: &ProcInfo) -> Option<Lineage> {
        if !self.policies.families.iter().any(|f| f.descendants) {
            return None;
        }
        if let Some(t) = self.tracker.get(p.pid, p.start_ticks) {
            return Some(as_lineage(t));
        }
        let mut walked = Vec::new();
        let mut pid = p.ppid;
        let found = loop {
            if pid <= 1 || walked.len() >= MAX_ANCESTRY {
                break None;
            }
            if let Some(t) = self.tracker.get_pid(pid) {
                // An ancestor started before its descendant; otherwise the
                // pid was reused and the chain is broken.
                break (t.start_ticks <= p.start_ticks).then(|| as_lineage(t));
            }
            if let Some((start, lin)) = self.lineage_memo.get(&pid) {
                break if *start <= p.start_ticks {
                    lin.clone()
                } else {
                    None
                };
            }
            let stat = self.procfs.stat(pid).ok()?;
            if stat.start_ticks > p.start_ticks {
                break None;
            }
            walked.push((pid, stat.start_ticks));
            pid = stat.ppid;
        };
        for (pid, start) in walked {
            self.lineage_memo.insert(pid, (start, found.clone()));
        }
        found
    }

    /// Decide for one process, given its lineage where already known; with
    /// the decision, the agent instance it belongs to.
    pub(super) fn decide(
        &mut self,
        info: &ProcInfo,
        known: Option<Option<Lineage>>,
    ) -> Option<(Decision, Option<AgentKey>)> {
        let parents = self.procfs.clone();
        if let Some(d) = own_match(&self.policies, info, &parents) {
            // An agent root may pick its session (AGENTCG_PRIORITY); decided
            // again, it keeps the pick when its environment reads empty.
            let previous =
                self.tracker
                    .get(info.pid, info.start_ticks)
                    .and_then(|t| match t.reason {
                        Reason::Rule { env, .. } => env,
                        _ => None,
                    });
            let d = user_priority(
                d,
                info,
                &self.cfg.user_priority,
                Path::new("/proc"),
                previous,
            );
            // Strict trust: a name is not enough for session_high.
            match crate::trust::gate(
                &self.cfg.trust,
                &self.policies,
                &d,
                info,
                Path::new("/proc"),
            ) {
                Ok(()) => {
                    let agent = self.agent_for_match(info, &d, known);
                    return Some((d, agent));
                }
                Err(why) => self.refuse_untrusted(info, &d, &why),
            }
        }
        let lin = match known {
            Some(lin) => lin,
            None => self.walk_lineage(info),
        }?;
        let d = inherit(&self.policies, info, &lin, &parents)?;
        Some((d, lin.agent))
    }

    /// A process that matched its family's own rule starts an agent
    /// instance, unless it runs inside one of the same family (a re-exec,
    /// a nested match): then it stays in that one.
    fn agent_for_match(
        &mut self,
        info: &ProcInfo,
        d: &Decision,
        known: Option<Option<Lineage>>,
    ) -> Option<AgentKey> {
        self.leaves.as_ref()?;
        let lin = match known {
            Some(lin) => lin,
            None => self.walk_lineage(info),
        };
        match lin {
            Some(l) if l.family == d.family && l.agent.is_some() => l.agent,
            _ => Some(AgentKey {
                pid: info.pid,
                start_ticks: info.start_ticks,
            }),
        }
    }

    /// Strict trust refused a match: counted, logged at debug, and at
    /// info once per executable (bounded), so imitation is visible without
    /// a log line per exec.
    fn refuse_untrusted(&mut self, info: &ProcInfo, d: &Decision, why: &str) {
        self.counters.untrusted_refused += 1;
        self.dirty = true;
        log::debug!(
            "pid {} ({}): matched {} but not promoted (strict trust): {why}",
            info.pid,
            info.comm,
            d.family
        );
        if crate::trust::first_refusal(&info.exe) {
            log::info!(
                "strict trust: {} matched family {} but gets no session_high: {why}",
                info.exe,
                d.family
            );
        }
    }

    /// Where a process of `family` in session `p` goes: its agent's leaf
    /// with per-agent leaves, the session otherwise.
    pub(super) fn place_target(
        &mut self,
        p: Priority,
        agent: Option<AgentKey>,
        family: &FamilyName,
    ) -> Result<Target, CgroupError> {
        let weight = self
            .policies
            .family(family.as_str())
            .and_then(|f| f.cpu_weight)
            .unwrap_or(100);
        match &mut self.leaves {
            // An agent's leaf that cannot be made (mkdir refused) still
            // leaves the family's shared one: placed, if not alone.
            Some(l) => l.target(p, agent, family, weight, now_ms()).or_else(|e| {
                if agent.is_none() {
                    return Err(e);
                }
                log::warn!("{e}: using the shared leaf of {family}");
                l.target(p, None, family, weight, now_ms())
            }),
            None => Ok(self.target(p).clone()),
        }
    }

    /// A leaf could not be had: the tree may be gone.
    fn no_target(&mut self, pid: u32, p: Priority, e: CgroupError) {
        if !self.tree.session_dir(p).is_dir() {
            self.rebuild_tree("a session cgroup vanished while creating a leaf");
        } else {
            self.counters.errors += 1;
            log::warn!("cannot place pid {pid}: {e}");
        }
    }

    /// Carry out a decision. `cgroup_id` is where the event saw the process;
    /// `walk` says whether to place what it forked before the move here
    /// (the children walk itself walks, so it says No).
    pub(super) fn apply(
        &mut self,
        info: ProcInfo,
        decision: Decision,
        agent: Option<AgentKey>,
        cgroup_id: Option<u64>,
        walk: Walk,
    ) {
        if let Some(why) = protected(&info, self.self_pid) {
            log::debug!("not moving pid {} ({}): {why}", info.pid, info.comm);
            self.counters.protected_skipped += 1;
            return;
        }
        let target = if self.opts.dry_run {
            self.target(decision.priority).clone()
        } else {
            match self.place_target(decision.priority, agent, &decision.family) {
                Ok(t) => t,
                Err(e) => return self.no_target(info.pid, decision.priority, e),
            }
        };
        if matches!(decision.reason, Reason::Rule { .. }) {
            self.note_agent(&info, decision.family.as_str());
        }
        let tracked = Tracked {
            pid: info.pid,
            start_ticks: info.start_ticks,
            family: decision.family.clone(),
            priority: decision.priority,
            reason: decision.reason.clone(),
            comm: info.comm.clone(),
            placed_at_ms: now_ms(),
            agent,
        };
        self.dirty = true;
        if self.opts.dry_run {
            if self
                .tracker
                .get(info.pid, info.start_ticks)
                .map(|t| t.priority)
                != Some(decision.priority)
            {
                log::info!(
                    "dry-run: would place pid {} ({}) in {} [{}: {}]",
                    info.pid,
                    info.comm,
                    decision.priority.session(),
                    decision.family,
                    decision.reason
                );
            }
            self.track(tracked, 0);
            return;
        }
        let already = match cgroup_id {
            Some(id) => id == target.id,
            None => cgroup_of(info.pid).as_deref() == Some(target.rel.as_str()),
        };
        if already {
            // Placed before (a descendant that inherited its cgroup, or a
            // re-exec): nothing moves, but it is tracked for what it forks.
            self.counters.already_placed += 1;
            if self
                .tracker
                .get(info.pid, info.start_ticks)
                .map(|t| t.priority)
                != Some(decision.priority)
            {
                self.steer_oom(info.pid, decision.priority);
            }
            self.track(tracked, target.id);
            return;
        }
        // A process tracked before this decision is seeded in the kernel:
        // its exit is reported whatever happens here.
        let before = self.tracker.get(info.pid, info.start_ticks).cloned();
        // Seed the lineage before the move: a fork from here on is either
        // inherited in the kernel or already in the children list below.
        self.seed(tracked, target.id);
        // A leaf made for this move and left empty (nothing moved) is
        // given up when this step ends (Leaves::settle_unarmed).
        match self.move_to(info.pid, info.start_ticks, &target) {
            Moved::Yes { threads } => {
                self.counters.placed += 1;
                *self
                    .placed_by_family
                    .entry(decision.family.to_string())
                    .or_default() += 1;
                *self.summary.entry(decision.family.to_string()).or_default() += 1;
                log::debug!(
                    "placed pid {} ({}) in {} [{}: {}]",
                    info.pid,
                    info.comm,
                    decision.priority.session(),
                    decision.family,
                    decision.reason
                );
                self.steer_oom(info.pid, decision.priority);
                if walk == Walk::Children {
                    let lin = Lineage::of(info.pid, &decision, agent);
                    self.place_children(info.pid, threads, &lin);
                }
            }
            Moved::TreeLost => {
                self.untrack(info.pid, info.start_ticks);
                self.rebuild_tree("a session cgroup vanished during a move");
            }
            Moved::Exiting if before.is_some() => {
                // Its exit event (pending, or still to come: it stays
                // seeded) takes the entry out, as it was, with the exit
                // status an OOM kill is attributed by.
                if let Some(prev) = before {
                    self.tracker.insert(prev);
                }
            }
            _ => {
                // Exiting before it was ever tracked, or gone.
                self.untrack(info.pid, info.start_ticks);
            }
        }
    }

    /// Reading `what` of `pid` failed: it vanished (counted), or the daemon
    /// could not look (counted as an error and logged, so that running out
    /// of descriptors is not taken for processes exiting).
    fn unreadable(&mut self, pid: u32, what: &str, e: &std::io::Error) -> Moved {
        if process_gone(e) {
            log::debug!("pid {pid}: {what}: {e}: vanished");
            self.counters.vanished += 1;
            Moved::Vanished
        } else {
            log::warn!("cannot place pid {pid}: {what}: {e}");
            self.counters.errors += 1;
            Moved::Failed
        }
    }

    /// Move `pid` (the process that started at `start`) into `target`. A
    /// pidfd held from before the identity check until after the write
    /// makes sure the write moved that process and not a reused pid.
    pub(super) fn move_to(&mut self, pid: u32, start: u64, target: &Target) -> Moved {
        let pidfd = match pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) => return self.unreadable(pid, "pidfd_open", &e),
        };
        let stat = match self.procfs.stat(pid) {
            // Seeded before this read: an exit from here on is reported.
            Ok(s) if s.start_ticks == start && s.exiting() => {
                log::debug!("pid {pid} exited before its move");
                self.counters.vanished += 1;
                return Moved::Exiting;
            }
            Ok(s) if s.start_ticks == start => s,
            Ok(_) => {
                self.counters.pid_reused += 1;
                log::debug!("pid {pid} was reused before placement; skipped");
                return Moved::Reused;
            }
            Err(e) => return self.unreadable(pid, "stat", &e),
        };
        let admitted = target.admit(pid);
        // Alive right after the write: the pid was still its, so the write
        // moved it (asked before the leaf's watch, which takes a while).
        let moved = admitted.is_ok() && pidfd_alive(&pidfd);
        if admitted.is_ok() {
            // A new agent leaf is watched from now on (see Leaves::arm).
            if let Some(l) = &mut self.leaves {
                l.arm(target.id);
            }
        }
        match admitted {
            Ok(()) if moved => Moved::Yes {
                threads: stat.threads,
            },
            r @ (Ok(()) | Err(MoveError::Vanished)) => {
                log::debug!("pid {pid}: gone during the move ({r:?})");
                self.counters.vanished += 1;
                Moved::Vanished
            }
            Err(MoveError::CgroupGone(e)) => {
                log::error!("cannot place pid {pid}: {}: {e}", target.procs.display());
                Moved::TreeLost
            }
            Err(MoveError::Io(e)) => {
                self.counters.errors += 1;
                log::warn!("cannot place pid {pid} in {}: {e}", target.rel);
                Moved::Failed
            }
        }
    }

    /// Place what `pid` forked before it was moved: each child is decided
    /// as a descendant of `lin` (or by its own rule) and moved with it, and
    /// so on down the tree.
    pub(super) fn place_children(&mut self, pid: u32, threads: u32, lin: &Lineage) {
        let mut stack = vec![(pid, threads, lin.clone())];
        let mut seen = 0usize;
        while let Some((parent, threads, lin)) = stack.pop() {
            for child in self.procfs.children(parent, threads) {
                seen += 1;
                if seen > 100_000 {
                    return;
                }
                let Ok(info) = self.procfs.read(child) else {
                    continue;
                };
                let Some((d, agent)) = self.decide(&info, Some(Some(lin.clone()))) else {
                    continue;
                };
                let child_lin = Lineage::of(info.pid, &d, agent);
                let threads = self.procfs.stat(info.pid).map(|s| s.threads).unwrap_or(1);
                let placed_before = self.counters.placed;
                self.apply(info, d, agent, None, Walk::No);
                if self.counters.placed > placed_before {
                    self.counters.subtree_placed += 1;
                }
                stack.push((child, threads, child_lin));
            }
        }
    }

    /// Track a placed process, also in the kernel-side lineage.
    pub(super) fn track(&mut self, t: Tracked, cgroup_id: u64) {
        let (pid, start) = (t.pid, t.start_ticks);
        self.seed(t, cgroup_id);
        self.forget_if_exited(pid, start);
    }

    /// Track a process about to be moved, also in the kernel-side lineage;
    /// [`Daemon::move_to`] then finds whether it had exited (with the one
    /// read of its stat that the move needs anyway).
    fn seed(&mut self, t: Tracked, cgroup_id: u64) {
        // A memoized walk passed every ancestor of the process it started
        // from, so a newly tracked process changes a memoized answer only
        // if the memo holds it (it was walked as an untracked ancestor).
        if self
            .lineage_memo
            .get(&t.pid)
            .is_some_and(|(start, _)| *start == t.start_ticks)
        {
            self.lineage_memo.clear();
        }
        let seed = Seed {
            ancestor: Ancestor {
                pid: t.pid,
                start_ticks: t.start_ticks,
            },
            cgroup_id,
        };
        if let Err(e) = self.monitor.seed(t.pid, seed) {
            // Its forks are still found by the children walk and by scans.
            log::warn!("{e:#}");
            self.counters.errors += 1;
        }
        self.tracker.insert(t);
    }

    /// A process that had exited before its lineage was seeded (a zombie
    /// the children walk found, a tool that ran for a millisecond) sends
    /// no exit event any more: it would stay tracked, and its kernel-side
    /// lineage entry would wait for a reused pid. Checked after the seed,
    /// so an exit from here on is reported. (The soak run found ~2,800
    /// dead tools tracked after 20 minutes.)
    fn forget_if_exited(&mut self, pid: u32, start: u64) {
        if matches!(look(&self.procfs, pid, start), Seen::Gone | Seen::Exiting) {
            self.untrack(pid, start);
        }
    }

    pub(super) fn untrack(&mut self, pid: u32, start: u64) {
        if let Some(t) = self.tracker.remove(pid, Some(start)) {
            self.monitor.unseed(pid);
            self.park_departing(t);
        }
    }

    /// Keep an entry taken out of the tracker for the exit event that may
    /// still come for it (see `departing`).
    pub(super) fn park_departing(&mut self, t: Tracked) {
        const MAX: usize = 4096;
        if self.departing.len() >= MAX / 2 {
            self.departing
                .retain(|_, (at, _)| at.elapsed() < DEPARTING_FOR);
        }
        if self.departing.len() < MAX {
            self.departing
                .insert((t.pid, t.start_ticks), (Instant::now(), t));
        }
    }

    /// The parked entry of this exiting process, if any (and recent).
    pub(super) fn take_departing(&mut self, pid: u32, start: Option<u64>) -> Option<Tracked> {
        let key = match start {
            Some(s) => (pid, s),
            None => *self.departing.keys().find(|(p, _)| *p == pid)?,
        };
        let (at, t) = self.departing.remove(&key)?;
        (at.elapsed() < DEPARTING_FOR).then_some(t)
    }

    /// Steer the OOM killer: low-priority work dies before session_high.
    pub(super) fn steer_oom(&self, pid: u32, p: Priority) {
        if self.opts.no_memcg || !self.cfg.memcg.enabled {
            return;
        }
        let adj = self.cfg.memcg.oom_score_adj(p == Priority::High);
        if let Err(e) = std::fs::write(format!("/proc/{pid}/oom_score_adj"), adj.to_string()) {
            log::debug!("oom_score_adj of pid {pid}: {e}");
        }
    }
}

pub(super) fn as_lineage(t: &Tracked) -> Lineage {
    Lineage {
        pid: t.pid,
        family: t.family.clone(),
        priority: t.priority,
        reason: t.reason.clone(),
        agent: t.agent,
    }
}

/// CLOCK_MONOTONIC in ns, the clock of bpf_ktime_get_ns().
fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// pidfd_open(2): a handle on one process that a reused pid cannot alias.
fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success the fd is ours (nix has no wrapper).
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What /proc says of the process that started at `start`.
pub(super) enum Seen {
    Running,
    Exiting,
    /// Exited, or `pid` is another process now.
    Gone,
    /// The daemon could not look (EMFILE, ENOMEM): its own trouble, which
    /// must not drop a live process.
    Unknown,
}

pub(super) fn look(procfs: &procmon::ProcFs, pid: u32, start: u64) -> Seen {
    match procfs.stat(pid) {
        Ok(s) if s.start_ticks != start => Seen::Gone,
        Ok(s) if s.exiting() => Seen::Exiting,
        Ok(_) => Seen::Running,
        Err(e) if process_gone(&e) => Seen::Gone,
        Err(_) => Seen::Unknown,
    }
}

/// The process is gone (ENOENT from /proc, ESRCH from a read or a pidfd):
/// not an error, unlike the daemon's own trouble (EMFILE, ENOMEM, EACCES).
fn process_gone(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH))
}

/// The process behind `pidfd` has not exited.
fn pidfd_alive(pidfd: &OwnedFd) -> bool {
    // SAFETY: signal 0 only checks; the pointer argument may be NULL.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    rc == 0
}

#[cfg(test)]
mod tests {
    use super::{look, Seen};
    use std::fs;

    /// A stat line as the kernel writes it: pid, (comm), state, then the
    /// fields up to 24; `flags` is field 9, threads 20, start time 22.
    fn stat_line(pid: u32, state: char, flags: u64, start: u64) -> String {
        let mut f = vec!["0".to_string(); 22];
        f[0] = state.to_string(); // field 3
        f[6] = flags.to_string(); // field 9
        f[17] = "1".into(); // field 20
        f[19] = start.to_string(); // field 22
        format!("{pid} (agent) {}\n", f.join(" "))
    }

    #[test]
    fn only_a_process_proc_says_is_gone_counts_as_gone() {
        let root = tempfile::tempdir().unwrap();
        let procfs = procmon::ProcFs::new(root.path());
        let put = |pid: u32, text: &str| {
            fs::create_dir_all(root.path().join(pid.to_string())).unwrap();
            fs::write(root.path().join(format!("{pid}/stat")), text).unwrap();
        };
        put(10, &stat_line(10, 'S', 0, 500));
        // PF_EXITING
        put(11, &stat_line(11, 'R', 0x4, 500));
        // pid 12 is another process now
        put(12, &stat_line(12, 'S', 0, 900));
        // A stat the daemon cannot read (here a directory: EISDIR; in life
        // EMFILE or ENOMEM) says nothing about the process.
        fs::create_dir_all(root.path().join("13/stat")).unwrap();

        assert!(matches!(look(&procfs, 10, 500), Seen::Running));
        assert!(matches!(look(&procfs, 11, 500), Seen::Exiting));
        assert!(matches!(look(&procfs, 12, 500), Seen::Gone));
        assert!(matches!(look(&procfs, 13, 500), Seen::Unknown));
        assert!(matches!(look(&procfs, 14, 500), Seen::Gone)); // ENOENT
    }
}
