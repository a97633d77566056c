//! The agentcg cgroup v2 tree: ROOT/{session_high,session_low} and the
//! agents' leaves, built on `cgroupfs` (the one typed layer over cgroup
//! files).
//!
//! Every failure is an explicit `CgroupError` naming the file; a missing
//! controller is reported, not fatal, because placement works without it.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use cgroupfs::{Cgroup, Controller, Limit, MemoryLimit};

use crate::policy::Priority;

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// Controllers agentcgd wants for its sessions.
pub const WANTED: [&str; 2] = ["cpu", "memory"];
/// Enabled where offered, not reported when missing: they add per-agent
/// figures (pids.current, io.stat) and change nothing else.
const OPTIONAL: [&str; 2] = ["pids", "io"];
/// The leaf that takes processes found directly in a session when it turns
/// into a parent of agent leaves (cgroup v2: no internal processes).
pub const UNSORTED: &str = "unsorted";

#[derive(Debug)]
pub enum CgroupError {
    /// ROOT is not inside a cgroup2 mount (e.g. a cgroup v1 hierarchy).
    NotCgroup2 { path: PathBuf, detail: String },
    Io {
        path: PathBuf,
        op: &'static str,
        err: io::Error,
    },
}

impl fmt::Display for CgroupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CgroupError::NotCgroup2 { path, detail } => write!(
                f,
                "{} is not on a cgroup v2 (cgroup2) mount: {detail}; mount one \
                 (mount -t cgroup2 none /sys/fs/cgroup) or pass a ROOT inside it",
                path.display()
            ),
            CgroupError::Io { path, op, err } => {
                write!(f, "cannot {op} {}: {err}", path.display())
            }
        }
    }
}

impl std::error::Error for CgroupError {}

fn io_err(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |err| CgroupError::Io { path, op, err }
}

/// A cgroupfs error as ours (the file it names, the operation).
fn cg_err(op: &'static str) -> impl FnOnce(cgroupfs::Error) -> CgroupError {
    move |e| {
        let path = match &e {
            cgroupfs::Error::Missing { path }
            | cgroupfs::Error::Io { path, .. }
            | cgroupfs::Error::Parse { path, .. }
            | cgroupfs::Error::Invalid { path, .. } => path.clone(),
        };
        let err = match e {
            cgroupfs::Error::Io { source, .. } => source,
            other => io::Error::new(other.kind(), other.to_string()),
        };
        CgroupError::Io { path, op, err }
    }
}

fn controller(name: &str) -> Option<Controller> {
    [
        Controller::Cpu,
        Controller::Memory,
        Controller::Pids,
        Controller::Io,
    ]
    .into_iter()
    .find(|c| c.name() == name)
}

/// Filesystem magic of the mount holding `path`.
fn fs_magic(path: &Path) -> io::Result<i64> {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0)
        .map_err(io::Error::from)
}

/// The nearest existing ancestor of `path` (itself included).
fn existing_ancestor(path: &Path) -> Option<&Path> {
    path.ancestors().find(|p| p.exists())
}

/// `dir` as /proc/PID/cgroup shows it: relative to its cgroup2 mount.
pub fn rel_path(dir: &Path) -> String {
    let top = mount_top(dir);
    format!("/{}", dir.strip_prefix(&top).unwrap_or(dir).display())
}

/// The top of the cgroup2 mount that holds `dir`.
fn mount_top(dir: &Path) -> PathBuf {
    let mut top = dir.to_path_buf();
    while let Some(parent) = top.parent() {
        if fs_magic(parent).ok() != Some(CGROUP2_SUPER_MAGIC) {
            break;
        }
        top = parent.to_path_buf();
    }
    top
}

/// What happened while setting up the tree; shown in `status`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct SetupReport {
    pub enabled: Vec<String>,
    /// `controller: reason` for each wanted controller that is not enabled.
    pub missing: Vec<String>,
    pub weights: Vec<String>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Tree {
    pub root: PathBuf,
    /// ROOT's path in the cgroup2 hierarchy (as /proc/PID/cgroup shows it).
    rel_root: std::sync::OnceLock<String>,
    /// The hierarchy is mounted with `memory_recursiveprot`: a session's
    /// memory.min/low reach its leaves without their own claims.
    pub recursive_prot: bool,
}

impl Tree {
    /// Check that `root` is (or would be) inside a cgroup2 mount.
    pub fn open(root: &Path) -> Result<Tree, CgroupError> {
        let root = if root.is_absolute() {
            root.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(io_err(root, "resolve"))?
                .join(root)
        };
        let anchor = existing_ancestor(&root).ok_or_else(|| CgroupError::NotCgroup2 {
            path: root.clone(),
            detail: "no part of the path exists".into(),
        })?;
        match fs_magic(anchor) {
            Ok(CGROUP2_SUPER_MAGIC) => Ok(Tree {
                root,
                rel_root: Default::default(),
                recursive_prot: cgroupfs::mount_option("memory_recursiveprot") == Some(true),
            }),
            Ok(m) => Err(CgroupError::NotCgroup2 {
                path: root.clone(),
                detail: format!("{} has filesystem type {m:#x}", anchor.display()),
            }),
            Err(e) => Err(CgroupError::NotCgroup2 {
                path: root.clone(),
                detail: format!("statfs {}: {e}", anchor.display()),
            }),
        }
    }

    pub fn session_dir(&self, p: Priority) -> PathBuf {
        self.root.join(p.session())
    }

    /// Create ROOT and the sessions, enable the wanted controllers top-down
    /// where each parent offers them, and set the weights.
    pub fn setup(&self, weights: [(Priority, u32); 2]) -> Result<SetupReport, CgroupError> {
        let mut report = SetupReport::default();
        Cgroup::new(&self.root).create().map_err(cg_err("create"))?;
        for p in [Priority::High, Priority::Low] {
            Cgroup::new(self.session_dir(p))
                .create()
                .map_err(cg_err("create"))?;
        }
        // Enable from the mount's top down to ROOT so each level offers the
        // controller to the next: ancestors' subtree_control, then ROOT's.
        let top = mount_top(&self.root);
        let chain: Vec<&Path> = {
            let mut v: Vec<&Path> = self
                .root
                .ancestors()
                .take_while(|p| p.starts_with(&top))
                .collect();
            v.reverse();
            v
        };
        for ctrl in WANTED {
            match enable_down(&chain, ctrl) {
                Ok(()) => report.enabled.push(ctrl.to_string()),
                Err(why) => report.missing.push(format!("{ctrl}: {why}")),
            }
        }
        for ctrl in OPTIONAL {
            if enable_down(&chain, ctrl).is_ok() {
                report.enabled.push(ctrl.to_string());
            }
        }
        if report.enabled.iter().any(|c| c == "cpu") {
            for (p, w) in weights {
                Cgroup::new(self.session_dir(p))
                    .set_cpu_weight(w)
                    .map_err(cg_err("write"))?;
                report.weights.push(format!("{}={w}", p.session()));
            }
        } else {
            report
                .warnings
                .push("cpu controller unavailable: cpu.weight not set".into());
        }
        Ok(report)
    }

    /// Make the sessions parents of per-agent leaves: what sits directly
    /// in a session (the flat layout of an earlier run, a write by hand)
    /// goes to its `unsorted` leaf, then the session enables for its
    /// leaves the controllers it has. Returns the pids moved.
    pub fn prepare_leaves(&self, report: &mut SetupReport) -> Result<usize, CgroupError> {
        let mut moved = 0;
        for p in [Priority::High, Priority::Low] {
            let dir = self.session_dir(p);
            let session = Cgroup::new(&dir);
            let strays = session.procs().unwrap_or_default();
            if !strays.is_empty() {
                let leaf = self.leaf(p, UNSORTED, None)?;
                for pid in strays {
                    match leaf.admit(pid) {
                        Ok(()) => moved += 1,
                        Err(MoveError::Vanished) => {}
                        Err(MoveError::CgroupGone(e) | MoveError::Io(e)) => {
                            return Err(io_err(&leaf.procs, "write")(e))
                        }
                    }
                }
            }
            let offered = session.controllers().unwrap_or_default();
            let on = session.subtree_control().unwrap_or_default();
            for c in WANTED
                .iter()
                .chain(OPTIONAL.iter())
                .filter_map(|c| controller(c))
            {
                if offered.contains(&c) && !on.contains(&c) {
                    if let Err(e) = session.set_subtree_control(&[(c, true)]) {
                        report
                            .warnings
                            .push(format!("cannot enable {} for agent leaves: {e}", c.name()));
                    }
                }
            }
        }
        Ok(moved)
    }

    /// The leaf `name` of session `p`, created if missing, with `weight`
    /// as its cpu.weight (where the session gives leaves the cpu
    /// controller) and its memory protection claimed: [`Tree::open_leaf`]
    /// then [`Tree::configure_leaf`].
    pub fn leaf(
        &self,
        p: Priority,
        name: &str,
        weight: Option<u32>,
    ) -> Result<Target, CgroupError> {
        let (target, created) = self.open_leaf(p, name)?;
        self.configure_leaf(&self.session_dir(p).join(name), created, weight)?;
        Ok(target)
    }

    /// The leaf `name` of session `p`, created if missing, opened for
    /// moves: what a first move into it needs and nothing more. True if
    /// it was created here (it then has the kernel's defaults until
    /// [`Tree::configure_leaf`]).
    pub fn open_leaf(&self, p: Priority, name: &str) -> Result<(Target, bool), CgroupError> {
        let dir = self.session_dir(p).join(name);
        let created = match fs::create_dir(&dir) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(io_err(&dir, "create")(e)),
        };
        // Its path in the hierarchy follows from the root's, found once.
        let rel = self
            .rel_root
            .get_or_init(|| rel_path(&self.root))
            .trim_end_matches('/')
            .to_string();
        let target = Target::open_as(&dir, format!("{rel}/{}/{name}", p.session()))?;
        Ok((target, created))
    }

    /// Give the leaf at `dir` its settings: `weight` as its
    /// cpu.weight, and on a leaf `created` by [`Tree::open_leaf`] its claim
    /// on the session's memory protection. Memory protection reaches a
    /// leaf only if it claims it: memory.min/low "max" makes the leaf take
    /// its share of the session's (the session's own value caps it).
    pub fn configure_leaf(
        &self,
        dir: &Path,
        created: bool,
        weight: Option<u32>,
    ) -> Result<(), CgroupError> {
        let leaf = Cgroup::new(dir);
        // A file the session's controllers do not provide is missing: no
        // check before each write.
        let absent_ok = |r: Result<(), cgroupfs::Error>| match r {
            Err(cgroupfs::Error::Missing { .. }) => Ok(()),
            r => r.map_err(cg_err("write")),
        };
        if !created {
            return match weight {
                Some(w) => set_weight(dir, w),
                None => Ok(()),
            };
        }
        // Without memory_recursiveprot a child that claims nothing gets
        // none of its parent's protection; with it, the kernel hands the
        // session's protection down by usage, as these claims would.
        if !self.recursive_prot {
            for which in [MemoryLimit::Min, MemoryLimit::Low] {
                absent_ok(leaf.set_memory_limit(which, Limit::Max))?;
            }
        }
        // A new cgroup's cpu.weight is the kernel's default.
        if let Some(w) = weight.filter(|&w| w != cgroupfs::DEFAULT_CPU_WEIGHT) {
            absent_ok(leaf.set_cpu_weight(w))?;
        }
        Ok(())
    }

    /// The session as a place to move processes to.
    pub fn target(&self, p: Priority) -> Result<Target, CgroupError> {
        Target::open(&self.session_dir(p))
    }
}

/// Set cpu.weight where the cpu controller is on (a no-op otherwise).
pub fn set_weight(dir: &Path, weight: u32) -> Result<(), CgroupError> {
    let cg = Cgroup::new(dir);
    match cg.cpu_weight() {
        Ok(cur) if cur == weight => Ok(()),
        Ok(_) => cg.set_cpu_weight(weight).map_err(cg_err("write")),
        Err(_) => Ok(()),
    }
}

/// Whether any process is in `dir` or below (cgroup.events `populated`).
pub fn populated(dir: &Path) -> io::Result<bool> {
    Cgroup::new(dir)
        .events()
        .map(|e| e.populated)
        .map_err(|e| io::Error::new(e.kind(), e.to_string()))
}

impl Target {
    /// `dir` as a place to move processes to (cgroup.procs opened once).
    pub fn open(dir: &Path) -> Result<Target, CgroupError> {
        Target::open_as(dir, rel_path(dir))
    }

    /// [`Target::open`] where the path in the hierarchy is known.
    fn open_as(dir: &Path, rel: String) -> Result<Target, CgroupError> {
        let cg = Cgroup::new(dir);
        let id = cg.id().map_err(cg_err("stat"))?;
        let procs = dir.join("cgroup.procs");
        let file = cg.open_procs().map_err(cg_err("open"))?;
        Ok(Target {
            procs,
            file: Some(std::sync::Arc::new(file)),
            rel,
            id,
        })
    }
}

/// A cgroup processes are moved into.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its cgroup.procs file.
    pub procs: PathBuf,
    /// cgroup.procs kept open: each move is one write, no path walk.
    pub file: Option<std::sync::Arc<fs::File>>,
    /// Its path as /proc/PID/cgroup shows it.
    pub rel: String,
    /// Its cgroup id.
    pub id: u64,
}

/// Why a move failed.
#[derive(Debug)]
pub enum MoveError {
    /// The process is gone (ESRCH).
    Vanished,
    /// The cgroup itself is gone: the tree was removed under us.
    CgroupGone(io::Error),
    Io(io::Error),
}

impl Target {
    /// Write `pid` to cgroup.procs.
    pub fn admit(&self, pid: u32) -> Result<(), MoveError> {
        use std::io::Write;
        let pid = pid.to_string();
        let r = match &self.file {
            // One write(2) per pid: cgroup.procs takes one pid per write.
            Some(f) => (&**f).write(pid.as_bytes()).map(drop),
            None => fs::write(&self.procs, pid),
        };
        r.map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => MoveError::Vanished,
            Some(libc::ENOENT) | Some(libc::ENODEV) => MoveError::CgroupGone(e),
            _ => MoveError::Io(e),
        })
    }
}

/// The pids in a cgroup directory's cgroup.procs (none if it is gone).
pub fn read_pids(dir: &Path) -> Vec<u32> {
    Cgroup::new(dir).procs().unwrap_or_default()
}

fn controllers(dir: &Path) -> Vec<String> {
    Cgroup::new(dir)
        .controllers()
        .map(|v| v.iter().map(|c| c.name().to_string()).collect())
        .unwrap_or_default()
}

/// Make `ctrl` available in the last cgroup of `chain`'s children:
/// each cgroup in `chain` must offer it and enable it in subtree_control.
fn enable_down(chain: &[&Path], ctrl: &str) -> Result<(), String> {
    for dir in chain {
        if !controllers(dir).iter().any(|c| c == ctrl) {
            return Err(format!("not offered by {}", dir.display()));
        }
        let cg = Cgroup::new(dir);
        let Some(c) = controller(ctrl) else {
            return Err(format!("unknown controller {ctrl}"));
        };
        if cg.subtree_control().unwrap_or_default().contains(&c) {
            continue;
        }
        cg.set_subtree_control(&[(c, true)])
            .map_err(|e| format!("cannot enable: {e}"))?;
    }
    Ok(())
}

/// The cgroup path of `pid` on the cgroup2 hierarchy (the `0::` line).
pub fn cgroup_of(pid: u32) -> Option<String> {
    let text = cgroupfs::read_text(Path::new(&format!("/proc/{pid}/cgroup"))).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// A tree on this host's cgroup2 mount with session `p` made, for host
/// tests (None, saying so, where there is no mount).
#[cfg(test)]
pub(crate) fn scratch_tree(name: &str, p: Priority) -> Option<Tree> {
    let Some(mount) = cgroupfs::find_mount() else {
        eprintln!("SKIP: no cgroup2 mount");
        return None;
    };
    let root = mount.join(format!("agentcg-{name}-{}", std::process::id()));
    let tree = Tree::open(&root).unwrap();
    fs::create_dir_all(tree.session_dir(p)).unwrap();
    Some(tree)
}

/// Remove what is left of a [`scratch_tree`] (empty cgroups, deepest
/// first).
#[cfg(test)]
pub(crate) fn remove_scratch(tree: &Tree) {
    fn rm(dir: &Path) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rm(&e.path());
            }
        }
        let _ = fs::remove_dir(dir);
    }
    rm(&tree.root);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_cgroup2_paths() {
        let d = tempfile::tempdir().unwrap();
        let e = Tree::open(&d.path().join("agentcg")).unwrap_err();
        assert!(matches!(e, CgroupError::NotCgroup2 { .. }));
        assert!(e.to_string().contains("not on a cgroup v2"), "{e}");
    }

    #[test]
    fn rejects_cgroup_v1_hierarchy() {
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        if fs_magic(v1).ok() != Some(0x0027_e0eb) {
            eprintln!("SKIP: no cgroup v1 cpu hierarchy at {}", v1.display());
            return;
        }
        let e = Tree::open(&v1.join("agentcg")).unwrap_err();
        assert!(e.to_string().contains("0x27e0eb"), "{e}");
    }

    #[test]
    fn enable_down_reports_unoffered() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("cgroup.controllers"), "cpu io\n").unwrap();
        fs::write(d.path().join("cgroup.subtree_control"), "").unwrap();
        assert!(enable_down(&[d.path()], "cpu").is_ok());
        assert_eq!(
            fs::read_to_string(d.path().join("cgroup.subtree_control")).unwrap(),
            "+cpu"
        );
        let e = enable_down(&[d.path()], "memory").unwrap_err();
        assert!(e.contains("not offered"), "{e}");
    }

    #[test]
    fn leaf_path_in_the_hierarchy() {
        let Some(tree) = scratch_tree("leaf-rel", Priority::Low) else {
            return;
        };
        let leaf = tree.leaf(Priority::Low, "fam-1", Some(300));
        let again = tree.leaf(Priority::Low, "fam-1", None);
        let want = rel_path(&tree.session_dir(Priority::Low).join("fam-1"));
        remove_scratch(&tree);
        // Derived from ROOT's path, the same as the walk up the mount finds.
        assert_eq!(leaf.unwrap().rel, want);
        assert_eq!(again.unwrap().rel, want);
        assert!(want.ends_with("/session_low/fam-1"), "{want}");
    }

    #[test]
    fn pid_files() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("cgroup.procs");
        fs::write(&f, "1\n22\n\n333\n").unwrap();
        assert_eq!(read_pids(d.path()), [1, 22, 333]);
        assert!(read_pids(&d.path().join("none")).is_empty());
    }
}
