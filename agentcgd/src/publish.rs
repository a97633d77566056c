//! The state publisher: a thread of its own that writes the state file
//! `status` and `explain` read, so that placement never waits for it.
//!
//! The daemon offers a snapshot when something changed (at a bounded rate,
//! dropped if the writer is still busy with the previous one); the writer
//! adds what changes on its own (scheduler, memcg and reactions status, the sessions'
//! cgroup files), writes only when the content changed, and checks once a
//! second that the session cgroups still exist.

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::cgroup::read_pids;
use crate::daemon::{Mailbox, Msg};
use crate::observe::{Observer, Watch};
use crate::policy::Priority;
use crate::state::{now_ms, SessionStatus, State};

/// How often the writer looks at the scheduler, memcg and the tree.
const REFRESH: Duration = Duration::from_secs(1);

pub struct Publisher {
    tx: Option<SyncSender<Box<State>>>,
    thread: Option<JoinHandle<()>>,
}

pub struct Sources {
    pub path: PathBuf,
    pub sessions: Vec<(Priority, PathBuf)>,
    pub sched: Arc<scheduler::Supervisor>,
    pub mem: Arc<crate::memory::Memory>,
    pub reactions: Arc<reactions::Engine>,
    pub mailbox: Mailbox,
    /// The activity monitor and the accounting sampler.
    pub observer: Arc<Observer>,
    /// The Prometheus listener, when `metrics:` is on.
    pub metrics: Option<crate::metrics::Handle>,
    /// Events the kernel skipped our BPF event programs for.
    pub misses: Option<procmon::MissProbe>,
}

impl Publisher {
    pub fn spawn(src: Sources) -> std::io::Result<Publisher> {
        let (tx, rx) = mpsc::sync_channel::<Box<State>>(1);
        let thread = std::thread::Builder::new()
            .name("state-writer".into())
            .spawn(move || writer(src, rx))?;
        Ok(Publisher {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Hand over a snapshot; false when the writer has not taken the last
    /// one yet (the caller offers again later).
    pub fn offer(&self, s: State) -> bool {
        match self.tx.as_ref().map(|tx| tx.try_send(Box::new(s))) {
            Some(Ok(())) => true,
            Some(Err(TrySendError::Full(_))) => false,
            _ => true,
        }
    }

    /// Write `last` and stop the writer.
    pub fn finish(mut self, last: State) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Box::new(last));
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn writer(src: Sources, rx: mpsc::Receiver<Box<State>>) {
    let mut state: Option<State> = None;
    let mut written: Option<State> = None;
    let mut last_report: Option<std::time::Instant> = None;
    let mut sched_attached = (false, 0);
    let mut watched: Vec<Watch> = Vec::new();
    let mut missed = src.misses.as_ref().map_or(0, |p| p.misses());
    loop {
        let open = match rx.recv_timeout(REFRESH) {
            Ok(s) => {
                state = Some(*s);
                true
            }
            Err(RecvTimeoutError::Timeout) => true,
            Err(RecvTimeoutError::Disconnected) => false,
        };
        let missing: Vec<String> = src
            .sessions
            .iter()
            .filter(|(_, d)| !d.is_dir())
            .map(|(_, d)| d.display().to_string())
            .collect();
        // Reported on every pass while missing: a rebuild that failed
        // (the old cgroup still being torn down) is tried again.
        let running = state.as_ref().is_some_and(|s| s.running && !s.dry_run);
        if running && !missing.is_empty() && last_report.is_none_or(|t| t.elapsed() >= REFRESH) {
            let _ = src
                .mailbox
                .send(Msg::TreeLost(format!("missing {}", missing.join(", "))));
            last_report = Some(std::time::Instant::now());
        }
        // An event the kernel never ran our tracer for (its recursion
        // guard) is found by a reconciling /proc scan.
        if let Some(p) = &src.misses {
            let n = p.misses();
            if n > missed {
                if running {
                    log::warn!(
                        "the kernel skipped the BPF event tracers {} times: reconciling",
                        n - missed
                    );
                    let _ = src
                        .mailbox
                        .send(Msg::Reconcile("BPF tracer skipped by the kernel"));
                }
                missed = n;
            }
        }
        // Each time our scheduler attaches, have the daemon reconcile: an
        // exec during the switch to sched_ext was seen to go missing in
        // the VM (docs/benchmarks-placement.md, known issues).
        let st = src.sched.status();
        let now = (st.ours, st.restarts);
        if now != sched_attached {
            if st.ours && running {
                let _ = src
                    .mailbox
                    .send(Msg::Reconcile("sched_ext scheduler attached"));
            }
            sched_attached = now;
        }
        if let Some(s) = state.as_mut() {
            refresh(s, &src);
            // The observers follow the agents as they come and go.
            let now = watches(s, &src);
            if now != watched {
                src.observer.agents(now.clone());
                watched = now;
            }
            observed(s, &src);
            if let Some(m) = &src.metrics {
                m.publish(s);
            }
            // Compared as values, not serialized: most passes change nothing.
            s.updated_at_ms = 0;
            if written.as_ref() != Some(&*s) {
                s.updated_at_ms = now_ms();
                if let Err(e) = s.write(&src.path) {
                    log::warn!("cannot write state file {}: {e}", src.path.display());
                }
                s.updated_at_ms = 0;
                written = Some(s.clone());
            }
        }
        if !open {
            return;
        }
    }
}

/// What changes without the daemon's doing.
fn refresh(s: &mut State, src: &Sources) {
    s.scheduler = src.sched.status();
    s.memcg = src.mem.status();
    s.reactions = src.reactions.status();
    s.sessions = src
        .sessions
        .iter()
        .map(|(p, dir)| SessionStatus {
            name: p.session().into(),
            path: dir.display().to_string(),
            cpu_weight: cgroupfs::Cgroup::new(dir).cpu_weight().ok(),
            pids: session_pids(dir),
            tracked: s.processes.iter().filter(|t| t.priority == *p).count(),
        })
        .collect();
    for a in &mut s.agents {
        a.pids = src
            .sessions
            .iter()
            .map(|(_, dir)| read_pids(&dir.join(&a.id)).len())
            .sum();
    }
}

/// Processes in a session: its own and its leaves'.
fn session_pids(dir: &std::path::Path) -> usize {
    let leaves: usize = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| read_pids(&e.path()).len())
                .sum()
        })
        .unwrap_or(0);
    read_pids(dir).len() + leaves
}

/// The agents of `s` as the observers need them.
fn watches(s: &State, src: &Sources) -> Vec<Watch> {
    s.agents
        .iter()
        .map(|a| Watch {
            id: a.id.clone(),
            family: a.family.clone(),
            root_pid: a.root_pid,
            leaves: src
                .sessions
                .iter()
                .map(|(_, dir)| dir.join(&a.id))
                .filter(|d| {
                    a.cgroups
                        .iter()
                        .any(|c| d.ends_with(c.trim_start_matches('/')))
                })
                .collect(),
            pids: s
                .processes
                .iter()
                .filter(|t| {
                    t.agent
                        .is_some_and(|k| k.pid == a.root_pid && k.start_ticks == a.root_start_ticks)
                })
                .map(|t| (t.pid, t.start_ticks))
                .collect(),
        })
        .collect()
}

/// Fold what the observers saw into `s`.
fn observed(s: &mut State, src: &Sources) {
    let v = src.observer.view();
    for a in &mut s.agents {
        if let Some(x) = v.agents.get(&a.id) {
            a.state = x.state;
            a.state_since_ms = x.state_since_ms;
            a.transitions = x.transitions;
            a.history = x.history.clone();
            a.cpu_percent = x.cpu_percent;
        }
        a.usage = v.usage.get(&a.id).cloned();
    }
    s.family_activity = v.families;
    s.exits = v.exits;
    s.gpu = v.gpu;
    if !v.activity.is_empty() {
        s.activity = v.activity;
    }
}
