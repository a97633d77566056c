//! Typed access to the agentcg cgroup v2 tree: ROOT/{session_high,session_low}.
//!
//! Every failure is an explicit `CgroupError` naming the file; a missing
//! controller is reported, not fatal, because placement works without it.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

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
            Ok(CGROUP2_SUPER_MAGIC) => Ok(Tree { root }),
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
        fs::create_dir_all(&self.root).map_err(io_err(&self.root, "create"))?;
        for p in [Priority::High, Priority::Low] {
            let d = self.session_dir(p);
            match fs::create_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(&d, "create")(e)),
            }
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
                let f = self.session_dir(p).join("cpu.weight");
                write_file(&f, &w.to_string())?;
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
            let strays = read_pids(&dir.join("cgroup.procs"));
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
            let offered = controllers(&dir);
            let sc = dir.join("cgroup.subtree_control");
            let on = fs::read_to_string(&sc).unwrap_or_default();
            for c in WANTED.iter().chain(OPTIONAL.iter()) {
                if offered.iter().any(|o| o == c) && !on.split_whitespace().any(|x| x == *c) {
                    if let Err(e) = fs::write(&sc, format!("+{c}")) {
                        report.warnings.push(format!(
                            "cannot enable {c} for agent leaves in {}: {e}",
                            sc.display()
                        ));
                    }
                }
            }
        }
        Ok(moved)
    }

    /// The leaf `name` of session `p`, created if missing, with `weight`
    /// as its cpu.weight (where the session gives leaves the cpu
    /// controller). Memory protection reaches a leaf only if it claims
    /// it: memory.min/low "max" makes the leaf take its share of the
    /// session's (the session's own value caps it).
    pub fn leaf(
        &self,
        p: Priority,
        name: &str,
        weight: Option<u32>,
    ) -> Result<Target, CgroupError> {
        let dir = self.session_dir(p).join(name);
        match fs::create_dir(&dir) {
            Ok(()) => {
                for f in ["memory.min", "memory.low"] {
                    let path = dir.join(f);
                    if path.exists() {
                        write_file(&path, "max")?;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&dir, "create")(e)),
        }
        if let Some(w) = weight {
            set_weight(&dir, w)?;
        }
        Target::open(&dir)
    }

    /// The session as a place to move processes to.
    pub fn target(&self, p: Priority) -> Result<Target, CgroupError> {
        Target::open(&self.session_dir(p))
    }
}

/// Set cpu.weight where the cpu controller is on (a no-op otherwise).
pub fn set_weight(dir: &Path, weight: u32) -> Result<(), CgroupError> {
    let f = dir.join("cpu.weight");
    match fs::read_to_string(&f) {
        Ok(cur) if cur.trim() == weight.to_string() => Ok(()),
        Ok(_) => write_file(&f, &weight.to_string()),
        Err(_) => Ok(()),
    }
}

/// Whether any process is in `dir` or below (cgroup.events `populated`).
pub fn populated(dir: &Path) -> io::Result<bool> {
    let text = fs::read_to_string(dir.join("cgroup.events"))?;
    Ok(text
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["populated", "1"]))
}

impl Target {
    /// `dir` as a place to move processes to (cgroup.procs opened once).
    pub fn open(dir: &Path) -> Result<Target, CgroupError> {
        let id = cgroup_id(dir).map_err(io_err(dir, "stat"))?;
        let procs = dir.join("cgroup.procs");
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&procs)
            .map_err(io_err(&procs, "open"))?;
        Ok(Target {
            procs,
            file: Some(std::sync::Arc::new(file)),
            rel: rel_path(dir),
            id,
        })
    }
}

/// The cgroup v2 id of a cgroup directory (its inode number), the value
/// BPF sees as a task's cgroup id.
pub fn cgroup_id(dir: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(dir).map(|m| m.ino())
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

pub fn read_pids(file: &Path) -> Vec<u32> {
    fs::read_to_string(file)
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err(path, "write"))
}

fn controllers(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join("cgroup.controllers"))
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Make `ctrl` available in the last cgroup of `chain`'s children:
/// each cgroup in `chain` must offer it and enable it in subtree_control.
fn enable_down(chain: &[&Path], ctrl: &str) -> Result<(), String> {
    for dir in chain {
        if !controllers(dir).iter().any(|c| c == ctrl) {
            return Err(format!("not offered by {}", dir.display()));
        }
        let sc = dir.join("cgroup.subtree_control");
        let current = fs::read_to_string(&sc).unwrap_or_default();
        if current.split_whitespace().any(|c| c == ctrl) {
            continue;
        }
        fs::write(&sc, format!("+{ctrl}"))
            .map_err(|e| format!("cannot enable in {}: {e}", sc.display()))?;
    }
    Ok(())
}

/// The cgroup path of `pid` on the cgroup2 hierarchy (the `0::` line).
pub fn cgroup_of(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
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
    fn pid_files() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("cgroup.procs");
        fs::write(&f, "1\n22\n\n333\n").unwrap();
        assert_eq!(read_pids(&f), [1, 22, 333]);
        assert!(read_pids(&d.path().join("none")).is_empty());
    }
}
