//! Keeping the daemon in line with the system: emptied leaves removed,
//! a lost tree rebuilt, /proc reconciled, policies reloaded.

use std::time::Duration;

use procmon::{Ancestor, Seed};

use crate::config::Config;
use crate::state::{now_ms, Tracked};

use super::place::{as_lineage, look, Seen};
use super::startup::setup_tree;
use super::{policies_need_exe, Daemon, Moved, Walk};

impl Daemon {
    /// Remove the agent leaves that became empty.
    pub(super) fn reap_leaves(&mut self) {
        let Some(l) = &mut self.leaves else { return };
        for wd in l.notices() {
            // An exec that came meanwhile is placed before the next leaf's
            // read (a removal is housekeeping, a placement is not).
            self.drain_events();
            let Some(l) = &mut self.leaves else { return };
            if l.settle(wd).is_some() {
                self.dirty = true;
            }
        }
    }

    /// The session cgroups are gone: say so, build them again and put every
    /// tracked process back.
    pub(super) fn rebuild_tree(&mut self, why: &str) {
        if self.opts.dry_run {
            return;
        }
        log::error!(
            "cgroup tree {} lost ({why}): rebuilding it and placing tracked processes again",
            self.tree.root.display()
        );
        self.counters.tree_rebuilds += 1;
        self.state.tree_error = Some(format!("{why} (at {} ms)", now_ms()));
        self.dirty = true;
        // mkdir fails with EBUSY while the kernel still tears down the
        // removed cgroup of the same name: retry briefly (a rare repair,
        // not periodic work); the state writer reports the loss again
        // every second until the tree is back.
        let mut tries = 0;
        let built = loop {
            match setup_tree(&self.tree, &self.cfg, false) {
                Ok(b) => break b,
                Err(e) if tries < 20 => {
                    log::debug!("rebuilding the cgroup tree: {e:#}; retrying");
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(25));
                }
                Err(e) => {
                    log::error!("cannot rebuild the cgroup tree: {e:#}");
                    self.counters.errors += 1;
                    return;
                }
            }
        };
        self.state.cgroup = built.0;
        self.targets = built.1;
        if let Some(l) = &mut self.leaves {
            l.forget_all();
        }
        let all: Vec<Tracked> = self.tracker.iter().cloned().collect();
        let mut again = 0;
        for t in all {
            let target = match self.place_target(t.priority, t.agent, &t.family) {
                Ok(t) => t,
                Err(e) => {
                    log::warn!("pid {}: {e}", t.pid);
                    continue;
                }
            };
            if let Err(e) = self.monitor.seed(
                t.pid,
                Seed {
                    ancestor: Ancestor {
                        pid: t.pid,
                        start_ticks: t.start_ticks,
                    },
                    cgroup_id: target.id,
                },
            ) {
                log::warn!("{e:#}");
            }
            if let Moved::Yes { threads } = self.move_to(t.pid, t.start_ticks, &target) {
                again += 1;
                self.place_children(t.pid, threads, &as_lineage(&t));
            }
        }
        log::info!("cgroup tree rebuilt; {again} tracked processes placed again");
        // The memory controller's settings, PSI trigger and attachment went
        // with the old sessions: start it again, off this thread (loading
        // its BPF backend takes a while).
        let mem = self.mem.clone();
        let _ = std::thread::Builder::new()
            .name("memcg-restart".into())
            .spawn(move || mem.restart());
        self.reconcile("tree rebuilt");
    }

    /// Bring the tracker in line with /proc: drop the dead, place the rest.
    pub(super) fn reconcile(&mut self, why: &str) {
        let procfs = self.procfs.clone();
        // An exiting process stays: its exit event ends its tracking.
        let gone = self
            .tracker
            .take_dead(|t| !matches!(look(&procfs, t.pid, t.start_ticks), Seen::Gone));
        let dropped = gone.len();
        // Their exit events may still be queued behind this scan.
        for t in gone {
            self.park_departing(t);
        }
        self.agents
            .retain(|pid, (start, _)| !matches!(look(&procfs, *pid, *start), Seen::Gone));
        let all = match self.procfs.scan() {
            Ok(all) => all,
            Err(e) => {
                log::error!("/proc scan failed: {e}");
                return;
            }
        };
        let before = self.counters.placed;
        for p in all {
            // A tracked process on its way out stays as it is: with its
            // memory gone its cmdline and environment read empty, and a
            // decision on those would move it or drop it as it dies.
            if self.tracker.get(p.pid, p.start_ticks).is_some()
                && matches!(look(&procfs, p.pid, p.start_ticks), Seen::Exiting)
            {
                continue;
            }
            // Parents come first, so walks find them tracked.
            if let Some((d, agent)) = self.decide(&p, None) {
                self.apply(p, d, agent, None, Walk::Children);
            } else if self.tracker.remove(p.pid, Some(p.start_ticks)).is_some() {
                self.monitor.unseed(p.pid);
            }
        }
        self.counters.reconciles += 1;
        self.dirty = true;
        log::info!(
            "{why}: {} processes tracked, {} newly placed, {dropped} stale entries dropped",
            self.tracker.len(),
            self.counters.placed - before
        );
    }

    pub(super) fn install_prefilter(&mut self) {
        let pf = crate::prefilter::compile(&self.policies);
        if let Some(why) = &pf.pass_all {
            log::info!("exec prefilter lets every exec through: {why}");
        }
        if let Err(e) = self.monitor.set_prefilter(&pf) {
            log::warn!("exec prefilter: {e:#}");
        }
    }

    /// Take what the loader thread parsed (a SIGHUP or a changed file).
    pub(super) fn reload(&mut self, loaded: crate::loader::Loaded) {
        log::debug!(
            "{}: policies read and parsed in {:.1} ms on the loader thread",
            loaded.why,
            loaded.took.as_secs_f64() * 1000.0
        );
        match loaded.policies {
            Ok(set) => {
                let set = set.with_shared_tools(self.cfg.tools.clone(), &self.opts.config);
                log::info!("policies reloaded: {} families", set.families.len());
                self.needs_exe = policies_need_exe(&set);
                self.policies = set;
                self.state.policy.last_error = None;
                self.state.policy.loaded_at_ms = now_ms();
                self.counters.policy_reloads += 1;
                self.install_prefilter();
                if let Some(l) = &self.leaves {
                    let policies = &self.policies;
                    l.set_weights(|f| policies.family(f).and_then(|f| f.cpu_weight).unwrap_or(100));
                }
                self.reconcile("policy reload");
            }
            Err(e) => {
                log::error!("policy reload rejected, keeping the last good policy: {e}");
                self.state.policy.last_error = Some(e.to_string());
            }
        }
        self.reload_reactions(loaded.config);
        // A SIGHUP also checks the tree.
        if !self.opts.dry_run && self.targets.iter().any(|t| !t.procs.exists()) {
            self.rebuild_tree("session cgroups missing at reload");
        }
        self.dirty = true;
    }

    /// Re-read agentcgd.yaml for its `reactions:` (other sections need a
    /// restart); a broken file keeps the reactions in force.
    fn reload_reactions(&mut self, loaded: Result<Config, String>) {
        match loaded {
            Ok(cfg) if cfg.reactions != self.cfg.reactions => {
                log::info!("reactions reloaded: {} rules", cfg.reactions.rules.len());
                self.reactions.reconfigure(cfg.reactions.clone());
                self.observer.idle_after(idle_thresholds(&cfg.reactions));
                self.cfg.reactions = cfg.reactions;
            }
            Ok(_) => {}
            Err(e) => {
                log::error!("config reload rejected, keeping the last good reactions: {e}");
                self.reactions.reload_failed(e);
            }
        }
    }
}

/// `idle.after_s` of every reaction rule that has one.
pub(super) fn idle_thresholds(cfg: &reactions::Config) -> Vec<u64> {
    cfg.rules
        .iter()
        .filter_map(|r| r.idle.as_ref().map(|i| i.after_s))
        .collect()
}
