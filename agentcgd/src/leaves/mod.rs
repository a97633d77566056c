//! Agent instances and their leaf cgroups: `session_high/<family>-<pid>`
//! for the agent and what stays with it, `session_low/<family>-<pid>` for
//! its tools sent low. A leaf is created at its first placement, watched
//! through its `cgroup.events` (inotify, no polling) and removed once it is
//! empty: at once, or, while agents come and go, with the others that
//! emptied within the same [`REMOVE_EVERY`], by the leaf remover's thread
//! ([`remover`]); past `max_agents`, new agents share `<family>-shared`.

mod remover;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;

use inotify::{Inotify, WatchDescriptor, WatchMask};

use crate::cgroup::{self, CgroupError, Target, Tree, UNSORTED};
use crate::classify::AgentKey;
use crate::policy::{FamilyName, Priority};

/// Suffix of the leaves agents share past the cap.
const SHARED: &str = "shared";
/// Agents over the cap remembered as counted (see `Leaves::over_cap_seen`).
const OVER_CAP_MEMO: usize = 4096;

fn slot(p: Priority) -> usize {
    match p {
        Priority::High => 0,
        Priority::Low => 1,
    }
}

/// One leaf cgroup we created (or adopted) and watch.
#[derive(Debug)]
struct Leaf {
    target: Target,
    dir: PathBuf,
    wd: Option<WatchDescriptor>,
}

/// An agent instance as the daemon knows it.
#[derive(Debug)]
pub struct Agent {
    /// `<family>-<root pid>`: also its leaves' name.
    pub id: String,
    pub family: FamilyName,
    pub key: AgentKey,
    pub started_at_ms: u64,
    leaves: [Option<Leaf>; 2],
}

impl Agent {
    /// Its leaves' paths as /proc/PID/cgroup shows them, high first.
    pub fn cgroups(&self) -> Vec<String> {
        self.leaves
            .iter()
            .flatten()
            .map(|l| l.target.rel.clone())
            .collect()
    }

    /// Its leaf directories, high first.
    pub fn leaf_dirs(&self) -> Vec<PathBuf> {
        self.leaves
            .iter()
            .flatten()
            .map(|l| l.dir.clone())
            .collect()
    }

    /// The leaf directory of session `p`, if it has one.
    pub fn leaf_dir(&self, p: Priority) -> Option<&std::path::Path> {
        self.leaves[slot(p)].as_ref().map(|l| l.dir.as_path())
    }
}

/// Who a watched leaf belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner {
    Agent(AgentKey, usize),
    Shared(String, usize),
    Unsorted(usize),
}

pub struct Leaves {
    tree: Tree,
    max_agents: usize,
    agents: BTreeMap<AgentKey, Agent>,
    /// Leaf name -> agent, so a reused root pid gets a name of its own.
    names: HashMap<String, AgentKey>,
    shared: HashMap<(String, usize), Leaf>,
    unsorted: [Option<Leaf>; 2],
    watch: Inotify,
    by_wd: HashMap<WatchDescriptor, Owner>,
    /// Agents put in a shared leaf because the cap was reached.
    pub over_cap: u64,
    /// Those already counted: each of an agent's processes asks for its
    /// leaf. Forgotten past OVER_CAP_MEMO (nothing tells when an agent
    /// without a leaf is gone), so one seen again after that many others
    /// counts twice.
    over_cap_seen: HashSet<AgentKey>,
    /// Watched leaves that may have emptied with no notice to come (what
    /// moved in had exited before its watch): looked at on the next pass.
    recheck: Vec<WatchDescriptor>,
    /// Removes the emptied leaves given up, in batches (REMOVE_EVERY
    /// apart), off the placing thread.
    remover: remover::Remover,
    /// What [`Leaves::reap`] last saw removed.
    #[cfg(test)]
    reaped: u64,
    /// Agent leaves created for a first move that has not happened yet,
    /// by cgroup id: their watch and settings come after it (see
    /// [`Leaves::arm`]).
    pending: HashMap<u64, Pending>,
}

/// A leaf opened in this placing step, waiting for its first move: its
/// settings and watch come after it ([`Leaves::arm`]), or it is given up
/// when the step ends with nothing in it ([`Leaves::settle_unarmed`]).
#[derive(Debug)]
struct Pending {
    owner: Owner,
    created: bool,
    weight: Option<u32>,
}

/// Leaves are removed at most once per this, in one batch (an rmdir the
/// kernel refuses is tried again with the next one). Each batch of
/// removals lets the kernel's `cgroup_threadgroup_rwsem` fall back to its
/// reader-fast mode sooner (its rcu_sync), so that the next cgroup.procs
/// write waits an RCU grace period (10-20 ms here) before it moves anything
/// unless cgroup2 has `favordynmods`: one leaf removed after each agent
/// made 1-2% of placements wait that long while agents came and went
/// (docs/benchmarks-placement.md). On a quiet host a leaf still goes at
/// once.
pub const REMOVE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Leaves {
    /// `on_removed` is called from the remover's thread after a batch that
    /// removed leaves.
    pub fn new(
        tree: Tree,
        max_agents: usize,
        on_removed: Box<dyn Fn() + Send + Sync>,
    ) -> io::Result<Leaves> {
        Ok(Leaves {
            tree,
            max_agents,
            agents: BTreeMap::new(),
            names: HashMap::new(),
            shared: HashMap::new(),
            unsorted: [None, None],
            watch: Inotify::init()?,
            by_wd: HashMap::new(),
            over_cap: 0,
            over_cap_seen: HashSet::new(),
            recheck: Vec::new(),
            remover: remover::Remover::spawn(on_removed)?,
            #[cfg(test)]
            reaped: 0,
            pending: HashMap::new(),
        })
    }

    /// When the daemon should reap without a new notice: now, if a leaf
    /// is to be looked at again.
    pub fn retry_at(&self) -> Option<std::time::Instant> {
        (!self.recheck.is_empty()).then(std::time::Instant::now)
    }

    /// Leaves removed because they were empty.
    pub fn removed(&self) -> u64 {
        self.remover.removed()
    }

    /// Readable when a watched leaf's `cgroup.events` changed.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.watch.as_fd()
    }

    pub fn agents(&self) -> impl Iterator<Item = &Agent> {
        self.agents.values()
    }

    pub fn agent(&self, key: &AgentKey) -> Option<&Agent> {
        self.agents.get(key)
    }

    fn open_leaf(
        &mut self,
        p: Priority,
        name: &str,
        weight: Option<u32>,
        owner: Owner,
    ) -> Result<Leaf, CgroupError> {
        let dir = self.tree.session_dir(p).join(name);
        // A leaf given up but not removed yet is taken back (a reused pid).
        self.remover.take_back(&dir);
        let (target, created) = self.tree.open_leaf(p, name)?;
        // Its first process goes in before the rest of its set-up (a watch
        // would only report that the move populated it; a new cgroup's
        // settings can wait a move). Whatever this step moves in or not,
        // it ends watched or given up: nothing else would remove it.
        self.pending.insert(
            target.id,
            Pending {
                owner,
                created,
                weight,
            },
        );
        Ok(Leaf {
            target,
            dir,
            wd: None,
        })
    }

    /// The registered leaf of `owner`.
    fn leaf_mut(&mut self, owner: &Owner) -> Option<&mut Leaf> {
        match owner {
            Owner::Agent(k, s) => self.agents.get_mut(k)?.leaves[*s].as_mut(),
            Owner::Shared(f, s) => self.shared.get_mut(&(f.clone(), *s)),
            Owner::Unsorted(s) => self.unsorted[*s].as_mut(),
        }
    }

    /// The directory of `owner`'s leaf if it is still the cgroup `id`
    /// opened for it (not replaced or given up since).
    fn opened_dir(&mut self, owner: &Owner, id: u64) -> Option<PathBuf> {
        self.leaf_mut(owner)
            .filter(|l| l.target.id == id)
            .map(|l| l.dir.clone())
    }

    fn watch_leaf(&mut self, dir: &std::path::Path, owner: Owner) -> Option<WatchDescriptor> {
        match self
            .watch
            .watches()
            .add(dir.join("cgroup.events"), WatchMask::MODIFY)
        {
            Ok(wd) => {
                self.by_wd.insert(wd.clone(), owner);
                Some(wd)
            }
            Err(e) => {
                // Still usable; it is removed by the next reconcile instead.
                log::warn!("cannot watch {}/cgroup.events: {e}", dir.display());
                None
            }
        }
    }

    /// A process was just written into the cgroup `id`: if that is a leaf
    /// opened in this step, watch it and give it its settings now. A
    /// notice comes when it empties from here on; one that emptied before
    /// the watch was in place (what moved exited at once) sends none, so a
    /// leaf found unpopulated once watched is looked at on the next pass.
    /// (The moved process's pidfd cannot tell: the kernel marks a cgroup
    /// empty in `cgroup_exit()`, before the exiting process becomes a
    /// zombie and its pidfd readable; docs/soak.md.)
    /// True if it was waiting for its first move.
    pub fn arm(&mut self, id: u64) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        let Some(pd) = self.pending.remove(&id) else {
            return false;
        };
        let Some(dir) = self.opened_dir(&pd.owner, id) else {
            return false;
        };
        if let Err(e) = self.tree.configure_leaf(&dir, pd.created, pd.weight) {
            log::warn!("{e}");
        }
        let wd = self.watch_leaf(&dir, pd.owner.clone());
        if let Some(l) = self.leaf_mut(&pd.owner) {
            l.wd = wd.clone();
        }
        if let Some(wd) = wd {
            if !matches!(cgroup::populated(&dir), Ok(true)) {
                self.recheck.push(wd);
            }
        }
        true
    }

    /// End of a placing step: a leaf opened in it that no move armed is
    /// watched if something is in it anyway (adopted, or taken back with
    /// its processes), and given up if it is empty (its process vanished
    /// before the move, or was decided but not moved: an exiting one,
    /// listed in the leaf it left). No notice would ever come for it.
    pub fn settle_unarmed(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let ids: Vec<u64> = self.pending.keys().copied().collect();
        for id in ids {
            let Some(owner) = self.pending.get(&id).map(|pd| pd.owner.clone()) else {
                continue;
            };
            let Some(dir) = self.opened_dir(&owner, id) else {
                self.pending.remove(&id);
                continue;
            };
            match cgroup::populated(&dir) {
                Ok(false) => {
                    self.pending.remove(&id);
                    log::debug!("leaf {}: nothing moved in; given up", dir.display());
                    self.give_up(owner, dir);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.pending.remove(&id);
                    self.give_up(owner, dir);
                }
                _ => {
                    self.arm(id);
                }
            }
        }
    }

    /// Take the leaf of `owner` (at `dir`) out of the registry and put it
    /// in the next batch of removals; the agent goes with its last leaf.
    fn give_up(&mut self, owner: Owner, dir: PathBuf) -> Option<Agent> {
        if dir.exists() {
            self.remover.doom(dir);
        }
        match owner {
            Owner::Agent(k, s) => {
                let a = self.agents.get_mut(&k)?;
                a.leaves[s] = None;
                if a.leaves.iter().any(Option::is_some) {
                    return None;
                }
                let a = self.agents.remove(&k)?;
                self.names.remove(&a.id);
                Some(a)
            }
            Owner::Shared(f, s) => {
                self.shared.remove(&(f, s));
                None
            }
            Owner::Unsorted(s) => {
                self.unsorted[s] = None;
                None
            }
        }
    }

    /// Where a process of `family` in session `p` goes: its agent's leaf
    /// (created on first use), or the family's shared leaf when it has no
    /// agent or the cap is reached.
    pub fn target(
        &mut self,
        p: Priority,
        agent: Option<AgentKey>,
        family: &FamilyName,
        weight: u32,
        now_ms: u64,
    ) -> Result<Target, CgroupError> {
        let s = slot(p);
        if let Some(key) = agent {
            if let Some(a) = self.agents.get(&key) {
                if let Some(l) = &a.leaves[s] {
                    return Ok(l.target.clone());
                }
                let id = a.id.clone();
                let leaf = self.open_leaf(p, &id, Some(weight), Owner::Agent(key, s))?;
                let t = leaf.target.clone();
                self.agents.get_mut(&key).expect("present").leaves[s] = Some(leaf);
                return Ok(t);
            }
            if self.agents.len() < self.max_agents {
                let mut id = format!("{family}-{}", key.pid);
                if self.names.get(&id).is_some_and(|k| *k != key) {
                    // The pid of an agent whose leaves still hold processes.
                    id = format!("{family}-{}-{}", key.pid, key.start_ticks);
                }
                let leaf = self.open_leaf(p, &id, Some(weight), Owner::Agent(key, s))?;
                let t = leaf.target.clone();
                let mut leaves = [None, None];
                leaves[s] = Some(leaf);
                log::debug!("agent {id}: leaf {}", t.rel);
                self.names.insert(id.clone(), key);
                self.agents.insert(
                    key,
                    Agent {
                        id,
                        family: family.clone(),
                        key,
                        started_at_ms: now_ms,
                        leaves,
                    },
                );
                return Ok(t);
            }
            if self.over_cap_seen.len() >= OVER_CAP_MEMO {
                self.over_cap_seen.clear();
            }
            if self.over_cap_seen.insert(key) {
                self.over_cap += 1;
                if self.over_cap.is_power_of_two() {
                    log::warn!(
                        "{} agent instances (the cap: sessions.max_agents, or what the open-files limit holds): agent {family}-{} shares {family}-{SHARED} ({} so far)",
                        self.agents.len(),
                        key.pid,
                        self.over_cap
                    );
                }
            }
        }
        let k = (family.to_string(), s);
        if let Some(l) = self.shared.get(&k) {
            return Ok(l.target.clone());
        }
        let leaf = self.open_leaf(
            p,
            &format!("{family}-{SHARED}"),
            Some(weight),
            Owner::Shared(k.0.clone(), s),
        )?;
        let t = leaf.target.clone();
        self.shared.insert(k, leaf);
        Ok(t)
    }

    /// Set each leaf's cpu.weight from its family's (after a policy reload).
    pub fn set_weights(&self, weight: impl Fn(&str) -> u32) {
        let all = self
            .agents
            .values()
            .flat_map(|a| {
                a.leaves
                    .iter()
                    .flatten()
                    .map(move |l| (a.family.as_str(), l))
            })
            .chain(self.shared.iter().map(|((f, _), l)| (f.as_str(), l)));
        for (fam, l) in all {
            if let Err(e) = cgroup::set_weight(&l.dir, weight(fam)) {
                log::warn!("{e}");
            }
        }
    }

    /// Adopt what an earlier run left: every leaf in the sessions named
    /// like ours. `known` maps leaf names to (agent, started at ms) from the
    /// previous state file; a name it lacks is taken as `<family>-<pid>`
    /// with the start time of that pid if it still runs. Empty leaves are
    /// removed. Returns the agents adopted.
    pub fn adopt(
        &mut self,
        known: &HashMap<String, (AgentKey, u64)>,
        is_family: impl Fn(&str) -> bool,
        start_of: impl Fn(u32) -> Option<u64>,
    ) -> usize {
        let mut adopted = 0;
        for p in [Priority::High, Priority::Low] {
            let s = slot(p);
            let Ok(rd) = std::fs::read_dir(self.tree.session_dir(p)) else {
                continue;
            };
            for e in rd.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let name = e.file_name().to_string_lossy().into_owned();
                let shared_family = name
                    .strip_suffix(&format!("-{SHARED}"))
                    .filter(|f| is_family(f))
                    .map(str::to_string);
                let parsed = parse_leaf_name(&name, &is_family);
                if name != UNSORTED && shared_family.is_none() && parsed.is_none() {
                    continue; // not ours (a cgroup someone made by hand)
                }
                let dir = e.path();
                if !cgroup::populated(&dir).unwrap_or(true) {
                    self.remover.doom(dir);
                    continue;
                }
                if name == UNSORTED {
                    if let Ok(l) = self.open_leaf(p, &name, None, Owner::Unsorted(s)) {
                        self.unsorted[s] = Some(l);
                    }
                } else if let Some(f) = shared_family {
                    if let Ok(l) = self.open_leaf(p, &name, None, Owner::Shared(f.clone(), s)) {
                        self.shared.insert((f, s), l);
                    }
                } else if let Some((fam, pid)) = parsed {
                    let Ok(family) = FamilyName::try_from(fam.to_string()) else {
                        continue;
                    };
                    let (key, started) = known.get(&name).copied().unwrap_or((
                        AgentKey {
                            pid,
                            start_ticks: start_of(pid).unwrap_or(0),
                        },
                        0,
                    ));
                    let Ok(l) = self.open_leaf(p, &name, None, Owner::Agent(key, s)) else {
                        continue;
                    };
                    let a = self.agents.entry(key).or_insert_with(|| {
                        adopted += 1;
                        Agent {
                            id: name.clone(),
                            family,
                            key,
                            started_at_ms: started,
                            leaves: [None, None],
                        }
                    });
                    a.leaves[s] = Some(l);
                    self.names.insert(name, key);
                }
            }
        }
        adopted
    }

    /// Take the leaves' change notices and give up each leaf that is
    /// empty (reap_leaves, for the tests); then wait for the batch of
    /// removals if one is due. Returns the agents gone and the leaves
    /// removed since the last call.
    #[cfg(test)]
    pub fn reap(&mut self) -> (Vec<Agent>, u64) {
        let gone = self
            .notices()
            .into_iter()
            .filter_map(|wd| self.settle(wd))
            .collect();
        let now = self.remover.removed_when_idle();
        let removed = now - std::mem::replace(&mut self.reaped, now);
        (gone, removed)
    }

    /// The leaves to look at: those whose cgroup.events changed, and those
    /// to look at again. Each goes to [`Leaves::settle`] (the daemon places
    /// what arrives between two of them first).
    pub fn notices(&mut self) -> Vec<WatchDescriptor> {
        let mut buf = [0u8; 4096];
        let mut changed = std::mem::take(&mut self.recheck);
        loop {
            match self.watch.read_events(&mut buf) {
                Ok(evs) => {
                    let mut any = false;
                    for ev in evs {
                        any = true;
                        changed.push(ev.wd.clone());
                    }
                    if !any {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    log::warn!("reading leaf notices: {e}");
                    break;
                }
            }
        }
        changed.sort();
        changed.dedup();
        changed
    }

    /// Give up the leaf of `wd` if it is empty (one of [`Leaves::notices`]):
    /// it leaves the registry now and its directory goes with the next
    /// batch of removals. Returns its agent if that was its last leaf.
    pub fn settle(&mut self, wd: WatchDescriptor) -> Option<Agent> {
        let owner = self.by_wd.get(&wd).cloned()?;
        let Some(dir) = self.leaf_mut(&owner).map(|l| l.dir.clone()) else {
            self.by_wd.remove(&wd);
            return None;
        };
        // A leaf is watched from after its first process went in: not
        // populated now means every process of it has left.
        match cgroup::populated(&dir) {
            Ok(false) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // Still populated (a process came, or one of two left).
            Ok(true) => return None,
            Err(e) => {
                log::warn!("leaf {}: {e}: kept", dir.display());
                return None;
            }
        }
        let _ = self.watch.watches().remove(wd.clone());
        self.by_wd.remove(&wd);
        let gone = self.give_up(owner, dir)?;
        log::debug!("agent {}: no processes left; leaves removed", gone.id);
        Some(gone)
    }

    /// The tree was removed under us: every leaf is gone with it.
    pub fn forget_all(&mut self) {
        for wd in self.by_wd.keys().cloned().collect::<Vec<_>>() {
            let _ = self.watch.watches().remove(wd);
        }
        self.by_wd.clear();
        self.pending.clear();
        self.recheck.clear();
        self.remover.forget_all();
        self.shared.clear();
        self.unsorted = [None, None];
        for a in self.agents.values_mut() {
            a.leaves = [None, None];
        }
    }
}

/// `<family>-<pid>` (or `<family>-<pid>-<start>`, a name made unique
/// after a pid reuse) -> (family, pid), for a family `is_family` knows.
pub fn parse_leaf_name(name: &str, is_family: impl Fn(&str) -> bool) -> Option<(&str, u32)> {
    let (head, last) = name.rsplit_once('-')?;
    let pid_start = head
        .rsplit_once('-')
        .filter(|(_, pid)| pid.parse::<u32>().is_ok())
        .filter(|_| last.bytes().all(|b| b.is_ascii_digit()));
    [
        last.parse::<u32>().ok().map(|pid| (head, pid)),
        pid_start.and_then(|(fam, pid)| pid.parse().ok().map(|pid| (fam, pid))),
    ]
    .into_iter()
    .flatten()
    .find(|(fam, _)| is_family(fam))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_names() {
        let fams = |f: &str| ["claude-code", "aider", "gpt-4"].contains(&f);
        assert_eq!(
            parse_leaf_name("claude-code-4711", fams),
            Some(("claude-code", 4711))
        );
        assert_eq!(parse_leaf_name("aider-12", fams), Some(("aider", 12)));
        assert_eq!(parse_leaf_name("aider-12-99887", fams), Some(("aider", 12)));
        assert_eq!(parse_leaf_name("gpt-4-123", fams), Some(("gpt-4", 123)));
        assert_eq!(parse_leaf_name("claude-code-shared", fams), None);
        assert_eq!(parse_leaf_name("unsorted", fams), None);
        assert_eq!(parse_leaf_name("hog-12", fams), None);
    }

    fn registry(tree: &Tree) -> Leaves {
        Leaves::new(tree.clone(), 10, Box::new(|| {})).unwrap()
    }

    /// A scratch tree with one new agent leaf `<family>-<pid>` in
    /// session_high, and a `sleep` written into it (not yet armed).
    fn agent_leaf_with_sleeper(
        family: &str,
        pid: u32,
    ) -> Option<(Tree, Leaves, Target, PathBuf, std::process::Child)> {
        let tree = cgroup::scratch_tree(&format!("leaf-{family}"), Priority::High)?;
        let mut leaves = registry(&tree);
        let key = AgentKey {
            pid,
            start_ticks: 1,
        };
        let fam = FamilyName::try_from(family.to_string()).unwrap();
        let leaf = leaves
            .target(Priority::High, Some(key), &fam, 100, 0)
            .unwrap();
        let dir = tree
            .session_dir(Priority::High)
            .join(format!("{family}-{pid}"));
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        leaf.admit(child.id()).unwrap();
        Some((tree, leaves, leaf, dir, child))
    }

    /// Arm the leaf at `dir`, hold its removal off with a cgroup made
    /// inside (as an exiting task can), end its process and take notices
    /// until its agent is given up. True if it was.
    fn give_up_held(
        leaves: &mut Leaves,
        leaf: &Target,
        dir: &std::path::Path,
        child: &mut std::process::Child,
    ) -> bool {
        assert!(leaves.arm(leaf.id), "a new agent leaf to arm");
        std::fs::create_dir(dir.join("inner")).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        for _ in 0..200 {
            if !leaves.reap().0.is_empty() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        false
    }

    /// Wait for each batch of removals as it falls due, until `dir` is
    /// gone or `ms` have passed; returns the leaves removed.
    fn reap_until_gone(leaves: &mut Leaves, dir: &std::path::Path, ms: u64) -> u64 {
        let end = std::time::Instant::now() + std::time::Duration::from_millis(ms);
        let mut removed = 0;
        while std::time::Instant::now() < end && dir.exists() {
            removed += leaves.reap().1;
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // the batch that removed it may have run since the last look
        removed + leaves.reap().1
    }

    /// An empty leaf whose rmdir is refused (here: a cgroup someone made
    /// inside it) is removed once it can be, with no further notice, by a
    /// later batch.
    #[test]
    fn refused_rmdir_is_tried_again() {
        let Some((tree, mut leaves, leaf, dir, mut child)) = agent_leaf_with_sleeper("retry", 4242)
        else {
            return;
        };
        // The notice comes; the agent is gone, the rmdir refused (EBUSY)
        // and kept for the next batch.
        let gone_agent = give_up_held(&mut leaves, &leaf, &dir, &mut child);
        leaves.remover.removed_when_idle();
        let refused = leaves.remover.queued() > 0 && dir.is_dir();
        std::fs::remove_dir(dir.join("inner")).unwrap();
        let removed = reap_until_gone(&mut leaves, &dir, 3000);
        let gone = !dir.exists();
        cgroup::remove_scratch(&tree);
        assert!(gone_agent, "no notice gave the agent up");
        assert!(
            refused,
            "the rmdir of a leaf with a cgroup inside was not refused and kept"
        );
        assert!(
            gone && removed == 1,
            "the leaf was not removed on the retry (gone {gone}, removed {removed})"
        );
        assert_eq!(leaves.remover.queued(), 0);
    }

    /// A leaf given up and then populated again from outside the registry
    /// (a pid written into it; its watch is gone, so no notice will come)
    /// is removed by a later batch once it is empty, not forgotten.
    #[test]
    fn repopulated_leaf_is_removed_once_empty() {
        let Some((tree, mut leaves, leaf, dir, mut child)) = agent_leaf_with_sleeper("again", 4246)
        else {
            return;
        };
        let gone_agent = give_up_held(&mut leaves, &leaf, &dir, &mut child);
        // A pid written into it after the give-up fills it again.
        let mut late = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        leaf.admit(late.id()).unwrap();
        std::fs::remove_dir(dir.join("inner")).unwrap();
        // A batch finds it populated: refused, and kept for later.
        reap_until_gone(&mut leaves, &dir, 1500);
        let held = dir.is_dir() && leaves.remover.queued() > 0;
        late.kill().unwrap();
        late.wait().unwrap();
        reap_until_gone(&mut leaves, &dir, 3000);
        let gone = !dir.exists();
        cgroup::remove_scratch(&tree);
        assert!(gone_agent, "no notice gave the agent up");
        assert!(held, "the repopulated leaf was dropped from the removals");
        assert!(gone, "the leaf was not removed once empty again");
    }

    /// While agents come and go, leaves are removed in batches at most
    /// REMOVE_EVERY apart: the first at once, one that empties right after
    /// it at the next batch, not before.
    #[test]
    fn removals_are_batched() {
        let Some((tree, mut leaves, leaf, dir, mut child)) = agent_leaf_with_sleeper("batch", 4244)
        else {
            return;
        };
        let fam = FamilyName::try_from("batch".to_string()).unwrap();
        let key2 = AgentKey {
            pid: 4245,
            start_ticks: 1,
        };
        let leaf2 = leaves
            .target(Priority::High, Some(key2), &fam, 100, 0)
            .unwrap();
        let dir2 = tree.session_dir(Priority::High).join("batch-4245");
        let mut child2 = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        leaf2.admit(child2.id()).unwrap();
        assert!(leaves.arm(leaf.id) && leaves.arm(leaf2.id));
        let empty = |leaves: &mut Leaves, dir: &std::path::Path| {
            // until its notice came and was taken (or kept for the batch)
            for _ in 0..200 {
                let r = leaves.reap().1;
                if r > 0 || leaves.remover.queued() > 0 || !dir.exists() {
                    return r;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            0
        };
        child.kill().unwrap();
        child.wait().unwrap();
        let first = empty(&mut leaves, &dir);
        let t0 = std::time::Instant::now();
        child2.kill().unwrap();
        child2.wait().unwrap();
        let second_at_once = empty(&mut leaves, &dir2);
        let due = leaves.remover.next_batch();
        let kept = dir2.is_dir();
        let mut second = 0;
        while second == 0 && t0.elapsed() < REMOVE_EVERY * 3 {
            second += leaves.reap().1;
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let gone = !dir2.exists();
        cgroup::remove_scratch(&tree);
        assert_eq!(first, 1, "the first emptied leaf was not removed at once");
        assert!(
            second_at_once == 0 && kept,
            "a leaf emptied right after a removal went in the same second"
        );
        assert!(
            due.is_some_and(|t| t <= t0 + REMOVE_EVERY + std::time::Duration::from_millis(50)),
            "no batch due within REMOVE_EVERY: {due:?}"
        );
        assert!(
            second == 1 && gone,
            "the second leaf was not removed at its batch"
        );
        assert!(leaves.agents.is_empty() && leaves.remover.queued() == 0);
    }

    /// A new agent leaf is watched from its first move on; if what moved
    /// exited before the watch was in place, the empty leaf is removed on
    /// the next pass though no notice will come.
    #[test]
    fn leaf_emptied_before_its_watch_is_removed() {
        let Some((tree, mut leaves, leaf, dir, mut child)) = agent_leaf_with_sleeper("arm", 4243)
        else {
            return;
        };
        child.kill().unwrap();
        child.wait().unwrap();
        let unwatched = leaves.by_wd.is_empty();
        let armed = leaves.arm(leaf.id);
        let again = leaves.arm(leaf.id);
        let due = leaves.retry_at().is_some();
        let removed = leaves.reap().1;
        let gone = !dir.exists();
        cgroup::remove_scratch(&tree);
        assert!(
            unwatched,
            "a new agent leaf was watched before its first move"
        );
        assert!(armed && !again, "arm: first {armed}, second {again}");
        assert!(due, "an exited mover did not schedule a look at its leaf");
        assert!(
            removed == 1 && gone,
            "the emptied leaf was not removed ({removed})"
        );
        assert!(leaves.agents.is_empty(), "the agent outlived its only leaf");
    }

    /// A leaf opened for a move that never happened (the process vanished
    /// first) is given up when the step ends, and removed.
    #[test]
    fn unarmed_leaf_is_given_up() {
        let Some(tree) = cgroup::scratch_tree("leaf-unarmed", Priority::High) else {
            return;
        };
        let mut leaves = registry(&tree);
        let key = AgentKey {
            pid: 4247,
            start_ticks: 1,
        };
        let fam = FamilyName::try_from("unarmed".to_string()).unwrap();
        leaves
            .target(Priority::High, Some(key), &fam, 100, 0)
            .unwrap();
        let dir = tree.session_dir(Priority::High).join("unarmed-4247");
        let made = dir.is_dir();
        leaves.settle_unarmed();
        let gone_agent = leaves.agents.is_empty() && leaves.pending.is_empty();
        let removed = leaves.reap().1;
        let gone = !dir.exists();
        cgroup::remove_scratch(&tree);
        assert!(made, "no leaf was made");
        assert!(gone_agent, "the agent of an unused leaf stayed");
        assert!(removed == 1 && gone, "the unused leaf was not removed");
    }

    /// A given-up leaf not removed yet and taken back for a process that
    /// is not moved (an exiting one, still listed in it) is given up again
    /// at the step's end: it was watched and registered before, with no
    /// notice to come, and stayed for good.
    #[test]
    fn leaf_taken_back_with_nothing_moved_is_given_up_again() {
        let Some((tree, mut leaves, leaf, dir, mut child)) = agent_leaf_with_sleeper("back", 4248)
        else {
            return;
        };
        let gone_agent = give_up_held(&mut leaves, &leaf, &dir, &mut child);
        // The same agent decided again (its leaf's name): taken back.
        let key = AgentKey {
            pid: 4248,
            start_ticks: 1,
        };
        let fam = FamilyName::try_from("back".to_string()).unwrap();
        let again = leaves
            .target(Priority::High, Some(key), &fam, 100, 0)
            .unwrap();
        let taken_back = again.id == leaf.id && leaves.remover.queued() == 0;
        leaves.settle_unarmed();
        let given_up = leaves.agents.is_empty() && leaves.remover.queued() > 0;
        std::fs::remove_dir(dir.join("inner")).unwrap();
        reap_until_gone(&mut leaves, &dir, 3000);
        let gone = !dir.exists();
        cgroup::remove_scratch(&tree);
        assert!(gone_agent, "no notice gave the agent up");
        assert!(taken_back, "the doomed leaf was not taken back");
        assert!(given_up, "the leaf taken back with nothing moved was kept");
        assert!(gone, "the leaf was not removed");
    }

    /// An adopted leaf with processes in it is watched once the step ends,
    /// and removed when they are gone.
    #[test]
    fn adopted_populated_leaf_is_watched() {
        let Some((tree, _, _, dir, mut child)) = agent_leaf_with_sleeper("adopt", 4249) else {
            return;
        };
        // A restarted daemon: a new registry over the same tree.
        let mut leaves = registry(&tree);
        let n = leaves.adopt(&HashMap::new(), |f| f == "adopt", |_| Some(1));
        leaves.settle_unarmed();
        let watched = !leaves.by_wd.is_empty() && leaves.pending.is_empty();
        child.kill().unwrap();
        child.wait().unwrap();
        for _ in 0..200 {
            leaves.reap();
            if !dir.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let gone = !dir.exists();
        cgroup::remove_scratch(&tree);
        assert_eq!(n, 1, "the leaf was not adopted");
        assert!(watched, "the adopted leaf was not watched");
        assert!(gone, "the adopted leaf was not removed once empty");
    }
}
