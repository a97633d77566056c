//! Who agentcgd believes (docs/security.md).
//!
//! Files that decide priorities (policies, agentcgd.yaml) must be owned by
//! root and writable by no one else, and so must every directory above
//! them (a sticky directory such as /tmp is fine: no one else can replace
//! a root-owned entry there), as sshd's StrictModes asks of authorized_keys.
//!
//! In strict mode (`trust: {mode: strict}` in agentcgd.yaml) a family's own
//! rule gives session_high only to a process whose executable, and every
//! script path its rule matched in argv, is root-owned and writable only by
//! root in root-owned directories, or to a process of a listed user or
//! group. A name alone (a copy called `claude`) promotes nothing there.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use procmon::ProcInfo;

use crate::policy::MatchBlock;

/// Whether a file's owner and mode are checked when it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileTrust {
    /// The daemon and `check`: root-owned, writable by root only.
    RootOnly,
    /// Unit tests and tools that only parse.
    Any,
}

/// `trust:` in agentcgd.yaml.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustConfig {
    pub mode: TrustMode,
    /// Users (names or uids) whose agents may reach session_high from an
    /// executable they can write (their own installs) in strict mode.
    pub users: Vec<String>,
    /// The same for groups (names or gids; real or supplementary).
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrustMode {
    /// A family's match is enough (names and paths, as the policy says).
    #[default]
    Default,
    /// session_high by a family's rule needs a root-controlled executable
    /// (and matched scripts) or a listed uid/gid.
    Strict,
}

impl TrustConfig {
    pub fn strict(&self) -> bool {
        self.mode == TrustMode::Strict
    }

    /// Listed by uid or by one of `gids`.
    pub fn listed(&self, uid: u32, gids: &[u32]) -> bool {
        crate::config::UserPriority {
            high_users: self.users.clone(),
            high_groups: self.groups.clone(),
        }
        .may_ask_high(uid, gids)
    }
}

/// Refuse a file or directory that someone other than root can change.
fn owner_mode_ok(path: &Path, md: &std::fs::Metadata, allow_sticky: bool) -> Result<(), String> {
    if md.uid() != 0 {
        return Err(format!(
            "{} is owned by uid {}, not root: refused (anyone who can write it picks priorities)",
            path.display(),
            md.uid()
        ));
    }
    let mode = md.permissions().mode();
    let sticky_dir = md.is_dir() && mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !(allow_sticky && sticky_dir) {
        return Err(format!(
            "{} is writable by {} (mode {:04o}): refused; chmod go-w it",
            path.display(),
            if mode & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            },
            mode & 0o7777
        ));
    }
    Ok(())
}

/// Every directory above `path` (which is canonical) is root-owned and
/// writable by root only, or sticky.
fn ancestors_ok(path: &Path) -> Result<(), String> {
    let mut cur = path.parent();
    while let Some(dir) = cur {
        let md = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        owner_mode_ok(dir, &md, true)?;
        cur = dir.parent();
    }
    Ok(())
}

/// The policy directory (or the config file's directory) is root's.
pub fn check_dir(dir: &Path, trust: FileTrust) -> Result<(), String> {
    if trust == FileTrust::Any {
        return Ok(());
    }
    let canon = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let md = std::fs::metadata(&canon).map_err(|e| format!("{}: {e}", canon.display()))?;
    owner_mode_ok(&canon, &md, false)?;
    ancestors_ok(&canon)
}

/// Read a policy or config file: a regular file of at most `max` bytes,
/// root-owned and writable only by root (with `RootOnly`), in directories
/// only root can change. Owner and size are those of the open file.
pub fn read_file(path: &Path, trust: FileTrust, max: u64) -> std::io::Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let md = f.metadata()?;
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    if !md.is_file() {
        return Err(invalid("not a regular file".into()));
    }
    if md.len() > max {
        return Err(invalid(format!(
            "{} bytes, more than the limit of {max}: refused before parsing",
            md.len()
        )));
    }
    if trust == FileTrust::RootOnly {
        let canon = std::fs::canonicalize(path)?;
        owner_mode_ok(&canon, &md, false).map_err(invalid)?;
        ancestors_ok(&canon).map_err(invalid)?;
    }
    let mut text = String::new();
    f.take(max + 1).read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(invalid(format!(
            "more than the limit of {max} bytes: refused"
        )));
    }
    Ok(text)
}

/// Is this executable (or script) root's: the file root-owned and not
/// writable by others, every directory above it too (sticky allowed).
fn program_ok(what: &str, shown: &Path, opened: &Path) -> Result<(), String> {
    let md = std::fs::metadata(opened).map_err(|e| format!("{what} {}: {e}", shown.display()))?;
    if md.uid() != 0 || md.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "{what} {} is owned by uid {} (mode {:04o}), not a root-only file",
            shown.display(),
            md.uid(),
            md.permissions().mode() & 0o7777
        ));
    }
    let canon =
        std::fs::canonicalize(opened).map_err(|e| format!("{what} {}: {e}", shown.display()))?;
    ancestors_ok(&canon).map_err(|e| format!("{what} {}: {e}", shown.display()))
}

/// `p` named relative to the process: absolute through its root, relative
/// through its cwd (as the process itself resolved it).
fn in_process(proc_root: &Path, pid: u32, p: &str) -> PathBuf {
    let base = proc_root.join(pid.to_string());
    let path = Path::new(p);
    if path.is_absolute() {
        let rel: PathBuf = path
            .components()
            .filter(|c| !matches!(c, Component::RootDir))
            .collect();
        base.join("root").join(rel)
    } else {
        base.join("cwd").join(path)
    }
}

/// Strict mode: may `p`, matched by `block`, be promoted to session_high?
/// Err says why not (for the log and `explain`).
pub fn verify_high(
    cfg: &TrustConfig,
    p: &ProcInfo,
    block: &MatchBlock,
    gids: &[u32],
    proc_root: &Path,
) -> Result<(), String> {
    if !cfg.strict() || cfg.listed(p.uid, gids) {
        return Ok(());
    }
    // The executable itself: /proc/PID/exe opens the very file that runs,
    // whatever its path shows; the path is needed for the directories.
    let exe_link = proc_root.join(p.pid.to_string()).join("exe");
    let exe = std::fs::read_link(&exe_link)
        .map(|l| l.display().to_string())
        .unwrap_or_else(|_| p.exe.clone());
    if exe.is_empty() || exe.ends_with(" (deleted)") {
        return Err(format!("executable {exe:?} is unknown or deleted"));
    }
    let md = std::fs::metadata(&exe_link).map_err(|e| format!("executable {exe}: {e}"))?;
    if md.uid() != 0 || md.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "executable {exe} is owned by uid {} (mode {:04o}), not a root-only file",
            md.uid(),
            md.permissions().mode() & 0o7777
        ));
    }
    program_ok(
        "executable",
        Path::new(&exe),
        &in_process(proc_root, p.pid, &exe),
    )?;
    // A script the rule matched (`node .../cli.js`, `python3 .../bin/aider`)
    // is what really runs: it must be root's too.
    for (i, _) in block.argv.iter().enumerate().skip(1) {
        let Some(arg) = p.argv.get(i) else { continue };
        if arg.contains('/') {
            program_ok("script", Path::new(arg), &in_process(proc_root, p.pid, arg))?;
        }
    }
    Ok(())
}

/// Strict mode's gate on a decision: only a session_high decision by a
/// family's own rule is checked (inherited ones follow an agent that
/// passed; `agentcgd run` and AGENTCG_PRIORITY answer to user_priority).
pub fn gate(
    cfg: &TrustConfig,
    set: &crate::policy::PolicySet,
    d: &crate::classify::Decision,
    p: &ProcInfo,
    proc_root: &Path,
) -> Result<(), String> {
    use crate::classify::Reason;
    if !cfg.strict() || d.priority != crate::policy::Priority::High {
        return Ok(());
    }
    let Reason::Rule { block, .. } = &d.reason else {
        return Ok(());
    };
    let Some(b) = set
        .family(d.family.as_str())
        .and_then(|f| f.matches.get(*block))
    else {
        return Ok(());
    };
    let gids = crate::classify::groups(proc_root, p.pid);
    verify_high(cfg, p, b, &gids, proc_root)
}

/// True the first time an executable is refused (of at most 1024
/// remembered), so the info log names each imitator once.
pub fn first_refusal(exe: &str) -> bool {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let mut g = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let seen = g.get_or_insert_with(HashSet::new);
    if seen.len() >= 1024 {
        return false;
    }
    seen.insert(exe.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn set_mode(p: &Path, m: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }

    fn is_root() -> bool {
        // SAFETY: no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn policy_files_must_be_roots_and_not_writable_by_others() {
        if !is_root() {
            eprintln!("SKIP: needs root to own the test files");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a.yaml");
        std::fs::write(&f, "x: 1\n").unwrap();
        set_mode(&f, 0o644);
        assert_eq!(read_file(&f, FileTrust::RootOnly, 100).unwrap(), "x: 1\n");
        set_mode(&f, 0o666);
        let e = read_file(&f, FileTrust::RootOnly, 100)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("writable by everyone") && e.contains("a.yaml"),
            "{e}"
        );
        set_mode(&f, 0o664);
        let e = read_file(&f, FileTrust::RootOnly, 100)
            .unwrap_err()
            .to_string();
        assert!(e.contains("writable by its group"), "{e}");
        set_mode(&f, 0o644);
        std::os::unix::fs::chown(&f, Some(65534), None).unwrap();
        let e = read_file(&f, FileTrust::RootOnly, 100)
            .unwrap_err()
            .to_string();
        assert!(e.contains("owned by uid 65534"), "{e}");
        assert!(read_file(&f, FileTrust::Any, 100).is_ok());
        std::os::unix::fs::chown(&f, Some(0), None).unwrap();
        // A world-writable (not sticky) directory above it.
        set_mode(d.path(), 0o777);
        let e = read_file(&f, FileTrust::RootOnly, 100)
            .unwrap_err()
            .to_string();
        assert!(e.contains("writable by everyone"), "{e}");
        assert!(check_dir(d.path(), FileTrust::RootOnly).is_err());
        // Sticky above is fine for a file, not for the policy dir itself.
        set_mode(d.path(), 0o1777);
        assert!(read_file(&f, FileTrust::RootOnly, 100).is_ok());
        assert!(check_dir(d.path(), FileTrust::RootOnly).is_err());
        set_mode(d.path(), 0o755);
        assert!(check_dir(d.path(), FileTrust::RootOnly).is_ok());
        // Too big: refused before it is read.
        std::fs::write(&f, "x".repeat(200)).unwrap();
        let e = read_file(&f, FileTrust::Any, 100).unwrap_err().to_string();
        assert!(e.contains("limit of 100"), "{e}");
    }
}
