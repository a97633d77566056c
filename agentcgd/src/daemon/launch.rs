//! `agentcgd run`: the asking process is moved into its leaf before it
//! execs its command (the socket side is crate::launch).

use crate::classify::{AgentKey, Reason};
use crate::policy::Priority;
use crate::state::{now_ms, Tracked};

use super::{Daemon, Moved};

impl Daemon {
    /// `agentcgd run`: move the asking process itself (the kernel named it)
    /// into its session before it execs its command.
    pub(super) fn handle_launch(&mut self, req: crate::launch::Request) {
        let reply = self.launch(&req);
        let _ = req.reply.send(reply);
    }

    fn launch(&mut self, req: &crate::launch::Request) -> crate::launch::Reply {
        use crate::launch::Reply;
        let fam = req.ask.family.as_ref();
        let defined = fam.and_then(|f| self.policies.family(f.as_str()));
        let priority = req
            .ask
            .priority
            .or(defined.map(|f| f.priority))
            .unwrap_or(Priority::High);
        if priority == Priority::High && !self.cfg.user_priority.may_ask_high(req.uid, &req.gids) {
            return Reply::error(format!(
                "uid {} may not ask for session_high (user_priority in {})",
                req.uid,
                self.opts.config.display()
            ));
        }
        let Ok(info) = self.procfs.read(req.pid) else {
            return Reply::error("the asking process is gone");
        };
        if info.uid != req.uid {
            return Reply::error("the asking process changed owner");
        }
        if self.opts.dry_run {
            return Reply::error("agentcgd runs with --dry-run: nothing is moved");
        }
        let family = fam.cloned().unwrap_or_else(|| {
            crate::policy::FamilyName::try_from("agentcgd-run".to_string()).expect("valid name")
        });
        let agent = self.leaves.as_ref().map(|_| AgentKey {
            pid: req.pid,
            start_ticks: info.start_ticks,
        });
        let target = match self.place_target(priority, agent, &family) {
            Ok(t) => t,
            Err(e) => {
                self.counters.errors += 1;
                return Reply::error(format!("cannot place pid {}: {e}", req.pid));
            }
        };
        self.track(
            Tracked {
                pid: req.pid,
                start_ticks: info.start_ticks,
                family: family.clone(),
                priority,
                reason: Reason::Launched { uid: req.uid },
                comm: info.comm.clone(),
                placed_at_ms: now_ms(),
                agent,
            },
            target.id,
        );
        match self.move_to(req.pid, info.start_ticks, &target) {
            Moved::Yes { .. } => {}
            Moved::TreeLost => {
                self.untrack(req.pid, info.start_ticks);
                self.rebuild_tree("a session cgroup vanished during a move");
                return Reply::error("the session cgroups were missing; try again");
            }
            _ => {
                self.untrack(req.pid, info.start_ticks);
                return Reply::error(format!("cannot move pid {}", req.pid));
            }
        }
        self.counters.placed += 1;
        *self.placed_by_family.entry(family.to_string()).or_default() += 1;
        self.steer_oom(req.pid, priority);
        log::debug!(
            "placed pid {} ({}) in {} [{family}: started by `agentcgd run`, uid {}]",
            req.pid,
            info.comm,
            priority.session(),
            req.uid
        );
        self.dirty = true;
        Reply {
            ok: true,
            error: None,
            cgroup: Some(target.rel.clone()),
            priority: Some(priority),
            family: Some(family.to_string()),
        }
    }
}
