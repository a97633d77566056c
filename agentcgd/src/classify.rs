//! The classifier: which family and session a process belongs to, and why.
//! Pure, except `user_priority`, which reads one variable of an agent
//! root's environment.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use procmon::ProcInfo;

use crate::config::UserPriority;
use crate::policy::{FamilyName, ParentLookup, PolicySet, Priority, ToolRule};

/// The environment variable a user sets to pick an agent's priority.
pub const PRIORITY_ENV: &str = "AGENTCG_PRIORITY";

/// Why a decision was made; printed by `explain` and kept in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// Matched the family's own match block `block` (0-based) in `file`;
    /// `env`: the priority came from AGENTCG_PRIORITY in its environment.
    Rule {
        file: String,
        block: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        env: Option<Priority>,
    },
    /// Inherited from ancestor `ancestor` (descendants: true).
    Inherited { ancestor: u32 },
    /// A tracked process exec'd something its own rules do not match: it
    /// keeps what it had, for the reason it had it.
    Reexec { previous: Box<Reason> },
    /// Put there by `agentcgd run` on the request of user `uid`.
    Launched { uid: u32 },
    /// A descendant that matched tools rule `rule` (0-based) in `file`.
    Tool {
        file: String,
        rule: usize,
        ancestor: u32,
    },
    /// Found already in a session at start-up with no rule for it.
    Adopted,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Rule { file, block, env } => {
                write!(f, "match block {} of {file}", block + 1)?;
                match env {
                    Some(p) => write!(f, ", {PRIORITY_ENV}={p} in its environment"),
                    None => Ok(()),
                }
            }
            Reason::Inherited { ancestor } => {
                write!(f, "descendant of pid {ancestor} (descendants: true)")
            }
            Reason::Reexec { previous } => write!(f, "{previous} (kept across an exec)"),
            Reason::Launched { uid } => write!(f, "started by `agentcgd run` (uid {uid})"),
            Reason::Tool {
                file,
                rule,
                ancestor,
            } => write!(
                f,
                "tools rule {} of {file}, descendant of pid {ancestor}",
                rule + 1
            ),
            Reason::Adopted => f.write_str("adopted: already in the session at start-up"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub family: FamilyName,
    pub priority: Priority,
    pub reason: Reason,
}

/// An agent instance: its root process (the one that matched its family's
/// own rule), by pid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AgentKey {
    pub pid: u32,
    pub start_ticks: u64,
}

/// A tracked ancestor (or the process itself, on a re-exec).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    pub pid: u32,
    pub family: FamilyName,
    /// The session it is in: a tool's children stay with the tool.
    pub priority: Priority,
    /// Why it is where it is (so a re-exec names the real ancestor).
    pub reason: Reason,
    /// The agent instance it belongs to (None: no per-agent leaves).
    pub agent: Option<AgentKey>,
}

impl Lineage {
    pub fn of(pid: u32, d: &Decision, agent: Option<AgentKey>) -> Lineage {
        Lineage {
            pid,
            family: d.family.clone(),
            priority: d.priority,
            reason: d.reason.clone(),
            agent,
        }
    }

    fn launched(&self) -> bool {
        match &self.reason {
            Reason::Launched { .. } => true,
            Reason::Reexec { previous } => matches!(**previous, Reason::Launched { .. }),
            _ => false,
        }
    }
}

/// Decide for `p` by its own rules: the first family with a matching block.
pub fn own_match(set: &PolicySet, p: &ProcInfo, parents: &dyn ParentLookup) -> Option<Decision> {
    set.families.iter().find_map(|fam| {
        let block = fam.matches.iter().position(|b| b.matches(p, parents))?;
        Some(Decision {
            family: fam.family.clone(),
            priority: fam.priority,
            reason: Reason::Rule {
                file: fam.file.display().to_string(),
                block,
                env: None,
            },
        })
    })
}

/// Decide for `p` as a descendant of `lin` (its nearest tracked ancestor,
/// or itself before a re-exec): the family keeps it when `descendants` is
/// on; its own `tools` rules, then the shared ones (unless the family says
/// `shared_tools: false`), may pick another session. A process started by
/// `agentcgd run` under a family no file defines keeps its descendants, with
/// the shared tools rules.
pub fn inherit(
    set: &PolicySet,
    p: &ProcInfo,
    lin: &Lineage,
    parents: &dyn ParentLookup,
) -> Option<Decision> {
    let (own, shared): (&[ToolRule], bool) = match set.family(lin.family.as_str()) {
        Some(fam) if !fam.descendants => return None,
        Some(fam) => (&fam.tools, fam.shared_tools),
        None if lin.launched() => (&[], true),
        None => return None,
    };
    let own_file = set
        .family(lin.family.as_str())
        .map(|f| f.file.display().to_string())
        .unwrap_or_default();
    let shared_rules: &[ToolRule] = if shared { &set.shared_tools.rules } else { &[] };
    let tool = own
        .iter()
        .enumerate()
        .map(|(i, t)| (i, t, own_file.clone()))
        .chain(
            shared_rules
                .iter()
                .enumerate()
                .map(|(i, t)| (i, t, set.shared_tools.file.display().to_string())),
        )
        .find(|(_, t, _)| t.matches.iter().any(|b| b.matches(p, parents)));
    // On a re-exec the lineage is the process itself: name its ancestor.
    let reexec = lin.pid == p.pid;
    let priority = tool
        .as_ref()
        .map(|(_, t, _)| t.priority)
        .unwrap_or(lin.priority);
    let reason = match tool {
        Some((rule, _, file)) => Reason::Tool {
            file,
            rule,
            ancestor: match (&lin.reason, reexec) {
                (Reason::Tool { ancestor, .. }, true) => *ancestor,
                (Reason::Inherited { ancestor }, true) => *ancestor,
                _ => lin.pid,
            },
        },
        None if reexec => match &lin.reason {
            r @ (Reason::Inherited { .. } | Reason::Tool { .. } | Reason::Reexec { .. }) => {
                r.clone()
            }
            r => Reason::Reexec {
                previous: Box::new(r.clone()),
            },
        },
        None => Reason::Inherited { ancestor: lin.pid },
    };
    Some(Decision {
        family: lin.family.clone(),
        priority,
        reason,
    })
}

/// Apply AGENTCG_PRIORITY from an agent root's environment: only to a
/// decision by the family's own rule, only that variable is read, and its
/// value is never logged. Asking for high needs `up`'s permission.
///
/// `previous` is the choice taken when the process was placed, if it is
/// decided again (a rename, a reconciling scan): it stands when the
/// environment has nothing to show now. A process past its exit's release
/// of its memory, or one the OOM killer chose and reaped, reads empty; on
/// the policy's priority alone it would be moved to the other session as
/// it dies.
pub fn user_priority(
    d: Decision,
    p: &ProcInfo,
    up: &UserPriority,
    proc_root: &Path,
    previous: Option<Priority>,
) -> Decision {
    let Reason::Rule { file, block, .. } = &d.reason else {
        return d;
    };
    let (want, allowed_before) = match env_priority(proc_root, p.pid) {
        Ok(Some(want)) => (want, false),
        Ok(None) => return d,
        // Checked against user_priority when it was taken.
        Err(Unreadable) => match previous {
            Some(want) => (want, true),
            None => return d,
        },
    };
    if want == Priority::High
        && !allowed_before
        && !up.may_ask_high(p.uid, &groups(proc_root, p.pid))
    {
        log::info!(
            "pid {} ({}): uid {} may not ask for session_high (user_priority in agentcgd.yaml); {PRIORITY_ENV} ignored",
            p.pid,
            p.comm,
            p.uid
        );
        return d;
    }
    Decision {
        priority: want,
        reason: Reason::Rule {
            file: file.clone(),
            block: *block,
            env: Some(want),
        },
        family: d.family,
    }
}

/// The environment could not be read, or read empty (no memory behind it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreadable;

/// AGENTCG_PRIORITY of `pid` as it was at exec (/proc/PID/environ), if set
/// to `high` or `low`. Any other value is ignored (the value itself is
/// never logged).
fn env_priority(proc_root: &Path, pid: u32) -> Result<Option<Priority>, Unreadable> {
    let path = proc_root.join(pid.to_string()).join("environ");
    let value = with_environ(&path, |raw| {
        if raw.is_empty() {
            return Err(Unreadable);
        }
        let key = [PRIORITY_ENV.as_bytes(), b"="].concat();
        Ok(raw
            .split(|&b| b == 0)
            .find_map(|kv| kv.strip_prefix(key.as_slice()))
            .map(<[u8]>::to_vec))
    })
    .map_err(|_| Unreadable)??;
    let Some(value) = value else {
        return Ok(None);
    };
    match value.as_slice() {
        b"high" => Ok(Some(Priority::High)),
        b"low" => Ok(Some(Priority::Low)),
        _ => {
            log::warn!("pid {pid}: {PRIORITY_ENV} is neither `high` nor `low`: ignored");
            Ok(None)
        }
    }
}

/// Call `f` with /proc/PID/environ, read in as few reads as it takes: the
/// kernel copies the environment until the buffer is full or it ends, so
/// a read that leaves room is the end (no second read to see EOF). Most
/// environments fit the stack buffer: no heap on the placing path of
/// every agent root.
fn with_environ<T>(path: &Path, f: impl FnOnce(&[u8]) -> T) -> std::io::Result<T> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut stack = [0u8; 16 << 10];
    let n = file.read(&mut stack)?;
    if n < stack.len() {
        return Ok(f(&stack[..n]));
    }
    let mut heap = stack.to_vec();
    file.read_to_end(&mut heap)?;
    Ok(f(&heap))
}

/// Real gid and supplementary groups of `pid`.
pub(crate) fn groups(proc_root: &Path, pid: u32) -> Vec<u32> {
    let status =
        cgroupfs::read_text(&proc_root.join(pid.to_string()).join("status")).unwrap_or_default();
    status
        .lines()
        .filter_map(|l| {
            l.strip_prefix("Groups:").or_else(|| {
                l.strip_prefix("Gid:")
                    .map(|r| r.split_whitespace().next().unwrap_or(""))
            })
        })
        .flat_map(|r| {
            r.split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Decide a whole ancestry (oldest first, the process last) the way the
/// daemon would have as each exec'd: each process by its own rules (a match
/// that strict trust refuses does not count), else by its nearest decided
/// ancestor. Used by `explain` without the daemon.
pub fn decide_chain(
    set: &PolicySet,
    chain: &[ProcInfo],
    up: &UserPriority,
    trust: &crate::trust::TrustConfig,
    proc_root: &Path,
    parents: &dyn ParentLookup,
) -> Vec<Option<Decision>> {
    let mut lineage: Option<Lineage> = None;
    chain
        .iter()
        .map(|p| {
            let own = own_match(set, p, parents)
                .map(|d| user_priority(d, p, up, proc_root, None))
                .filter(|d| crate::trust::gate(trust, set, d, p, proc_root).is_ok());
            let d = match own {
                Some(d) => Some(d),
                None => lineage.as_ref().and_then(|l| inherit(set, p, l, parents)),
            };
            if let Some(d) = &d {
                lineage = Some(Lineage::of(p.pid, d, None));
            }
            d
        })
        .collect()
}

/// Own rules first (first match wins), then the lineage. The daemon calls
/// the two halves itself so it looks up the lineage only when needed.
#[cfg(test)]
pub fn classify(
    set: &PolicySet,
    p: &ProcInfo,
    lineage: Option<&Lineage>,
    parents: &dyn ParentLookup,
) -> Option<Decision> {
    own_match(set, p, parents).or_else(|| inherit(set, p, lineage?, parents))
}

/// Processes agentcgd must never move.
pub fn protected(p: &ProcInfo, self_pid: u32) -> Option<&'static str> {
    if p.kernel_thread || p.pid == 2 || p.ppid == 2 {
        Some("kernel thread")
    } else if p.pid == 1 {
        Some("pid 1")
    } else if p.pid == self_pid {
        Some("agentcgd itself")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{parse_family, NoParents};
    use std::path::Path;

    fn set() -> PolicySet {
        let a = parse_family(
            Path::new("10-claude.yaml"),
            "family: claude-code\npriority: high\nmatch:\n  - comm: claude\ntools:\n  - match: [{comm: pytest}, {argv: [\"python*\", \"-m\", \"pytest\"]}]\n    priority: low\n",
        )
        .unwrap();
        let b = parse_family(
            Path::new("20-aider.yaml"),
            "family: aider\npriority: low\ndescendants: false\nmatch:\n  - comm: aider\n  - comm: claude\n",
        )
        .unwrap();
        PolicySet {
            families: vec![a, b],
            ..Default::default()
        }
    }

    fn p(comm: &str, argv: &[&str]) -> ProcInfo {
        ProcInfo {
            pid: 50,
            ppid: 40,
            uid: 0,
            comm: comm.into(),
            exe: String::new(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            start_ticks: 9,
            kernel_thread: false,
        }
    }

    fn lin(f: &str) -> Lineage {
        Lineage {
            pid: 40,
            family: FamilyName::try_from(f.to_string()).unwrap(),
            priority: Priority::High,
            reason: Reason::Rule {
                file: "x".into(),
                block: 0,
                env: None,
            },
            agent: None,
        }
    }

    #[test]
    fn first_match_wins_across_files() {
        let d = classify(&set(), &p("claude", &[]), None, &NoParents).unwrap();
        assert_eq!(d.family.as_str(), "claude-code");
        assert_eq!(d.priority, Priority::High);
        assert_eq!(
            d.reason,
            Reason::Rule {
                file: "10-claude.yaml".into(),
                block: 0,
                env: None,
            }
        );
    }

    #[test]
    fn unmatched_is_untouched() {
        assert_eq!(classify(&set(), &p("vim", &[]), None, &NoParents), None);
    }

    #[test]
    fn descendants_inherit_and_tools_redirect() {
        let d = classify(
            &set(),
            &p("git", &["git", "status"]),
            Some(&lin("claude-code")),
            &NoParents,
        )
        .unwrap();
        assert_eq!(
            (d.family.as_str(), d.priority),
            ("claude-code", Priority::High)
        );
        assert_eq!(d.reason, Reason::Inherited { ancestor: 40 });

        let d = classify(
            &set(),
            &p("python3", &["python3", "-m", "pytest", "-x"]),
            Some(&lin("claude-code")),
            &NoParents,
        )
        .unwrap();
        assert_eq!(
            (d.family.as_str(), d.priority),
            ("claude-code", Priority::Low)
        );
        assert!(matches!(d.reason, Reason::Tool { rule: 0, .. }));
    }

    #[test]
    fn children_of_a_tool_stay_with_the_tool() {
        let tool = Lineage {
            priority: Priority::Low,
            ..lin("claude-code")
        };
        let d = classify(
            &set(),
            &p("sleep", &["sleep", "1"]),
            Some(&tool),
            &NoParents,
        )
        .unwrap();
        assert_eq!(
            (d.family.as_str(), d.priority),
            ("claude-code", Priority::Low)
        );
    }

    #[test]
    fn descendants_false_does_not_inherit() {
        assert_eq!(
            classify(&set(), &p("git", &[]), Some(&lin("aider")), &NoParents),
            None
        );
    }

    #[test]
    fn lineage_of_removed_family_is_ignored() {
        assert_eq!(
            classify(&set(), &p("git", &[]), Some(&lin("gone")), &NoParents),
            None
        );
    }

    fn with_shared(set: PolicySet) -> PolicySet {
        let rules = crate::config::Config::parse(
            "tools:\n  - match: [{comm: make}, {argv: [\"python*\", \"-m\", \"pytest\"]}]\n    priority: low\n",
        )
        .unwrap()
        .tools;
        set.with_shared_tools(rules, Path::new("/etc/agentcgd/agentcgd.yaml"))
    }

    #[test]
    fn shared_tools_apply_after_the_familys_own() {
        let set = with_shared(set());
        let d = classify(
            &set,
            &p("make", &["make"]),
            Some(&lin("claude-code")),
            &NoParents,
        )
        .unwrap();
        assert_eq!(d.priority, Priority::Low);
        assert_eq!(
            d.reason,
            Reason::Tool {
                file: "/etc/agentcgd/agentcgd.yaml".into(),
                rule: 0,
                ancestor: 40
            }
        );
        // The family's own rule comes first.
        let d = classify(
            &set,
            &p("python3", &["python3", "-m", "pytest"]),
            Some(&lin("claude-code")),
            &NoParents,
        )
        .unwrap();
        assert!(
            matches!(&d.reason, Reason::Tool { file, .. } if file == "10-claude.yaml"),
            "{:?}",
            d.reason
        );
    }

    #[test]
    fn family_can_override_or_drop_shared_tools() {
        let fam = parse_family(
            Path::new("30-x.yaml"),
            "family: x\npriority: high\nshared_tools: false\nmatch: [{comm: xagent}]\n",
        )
        .unwrap();
        let up = parse_family(
            Path::new("40-y.yaml"),
            "family: y\npriority: high\nmatch: [{comm: yagent}]\ntools:\n  - match: [{comm: make}]\n    priority: high\n",
        )
        .unwrap();
        let set = with_shared(PolicySet {
            families: vec![fam, up],
            ..Default::default()
        });
        let d = classify(&set, &p("make", &[]), Some(&lin("x")), &NoParents).unwrap();
        assert_eq!(d.priority, Priority::High, "shared_tools: false");
        assert_eq!(d.reason, Reason::Inherited { ancestor: 40 });
        let d = classify(&set, &p("make", &[]), Some(&lin("y")), &NoParents).unwrap();
        assert_eq!(d.priority, Priority::High, "own rule overrides");
        assert!(matches!(d.reason, Reason::Tool { rule: 0, .. }));
    }

    #[test]
    fn reexec_names_the_real_ancestor() {
        let set = set();
        // pid 50 was placed as a descendant of 40, then exec'd: still 40.
        let me = Lineage {
            pid: 50,
            reason: Reason::Inherited { ancestor: 40 },
            ..lin("claude-code")
        };
        let d = classify(&set, &p("node", &["node"]), Some(&me), &NoParents).unwrap();
        assert_eq!(d.reason, Reason::Inherited { ancestor: 40 });
        // An agent root that exec'd something its rules miss.
        let root = Lineage {
            pid: 50,
            ..lin("claude-code")
        };
        let d = classify(&set, &p("node", &["node"]), Some(&root), &NoParents).unwrap();
        assert!(matches!(d.reason, Reason::Reexec { .. }), "{:?}", d.reason);
        assert!(!d.reason.to_string().contains("pid 50"), "{}", d.reason);
    }

    #[test]
    fn launched_without_a_family_file_keeps_descendants() {
        let set = with_shared(set());
        let l = Lineage {
            reason: Reason::Launched { uid: 1000 },
            ..lin("my-bot")
        };
        let d = classify(&set, &p("bash", &["bash"]), Some(&l), &NoParents).unwrap();
        assert_eq!((d.family.as_str(), d.priority), ("my-bot", Priority::High));
        let d = classify(&set, &p("make", &["make"]), Some(&l), &NoParents).unwrap();
        assert_eq!(d.priority, Priority::Low);
    }

    fn fake_proc(pid: u32, environ: &[u8], status: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("environ"), environ).unwrap();
        std::fs::write(dir.join("status"), status).unwrap();
        d
    }

    #[test]
    fn agentcg_priority_in_the_environment() {
        let set = set();
        let claude = p("claude", &["claude"]);
        let d = own_match(&set, &claude, &NoParents).unwrap();
        let root = fake_proc(
            50,
            b"HOME=/h\0AGENTCG_PRIORITY=low\0X=1\0",
            "Gid:\t5\t5\t5\t5\nGroups:\t5 6\n",
        );
        let up = UserPriority::default();
        let got = user_priority(d.clone(), &claude, &up, root.path(), None);
        assert_eq!(got.priority, Priority::Low);
        assert!(
            got.reason.to_string().contains("AGENTCG_PRIORITY=low"),
            "{}",
            got.reason
        );
        // Not set, or a bad value: the family's priority.
        let none = fake_proc(50, b"HOME=/h\0NOT_AGENTCG_PRIORITY=low\0", "");
        assert_eq!(
            user_priority(d.clone(), &claude, &up, none.path(), None).priority,
            Priority::High
        );
        let bad = fake_proc(50, b"AGENTCG_PRIORITY=urgent\0", "");
        assert_eq!(user_priority(d.clone(), &claude, &up, bad.path(), None), d);
        // Found past the first read's 16 KiB (a 40 KiB environment).
        let mut big = b"PAD=".to_vec();
        big.resize(40 << 10, b'x');
        big.extend_from_slice(b"\0AGENTCG_PRIORITY=low\0");
        let big = fake_proc(50, &big, "");
        assert_eq!(
            user_priority(d.clone(), &claude, &up, big.path(), None).priority,
            Priority::Low
        );
        // Asking for high needs permission (uid 0 always has it).
        let mut user = claude.clone();
        user.uid = 4321;
        let low_fam = Decision {
            priority: Priority::Low,
            ..d.clone()
        };
        let high = fake_proc(
            50,
            b"AGENTCG_PRIORITY=high\0",
            "Gid:\t5\t5\t5\t5\nGroups:\t5 6\n",
        );
        let only_6 = UserPriority {
            high_users: vec![],
            high_groups: vec!["6".into()],
        };
        let only_7 = UserPriority {
            high_users: vec![],
            high_groups: vec!["7".into()],
        };
        assert_eq!(
            user_priority(low_fam.clone(), &user, &only_6, high.path(), None).priority,
            Priority::High
        );
        assert_eq!(
            user_priority(low_fam.clone(), &user, &only_7, high.path(), None).priority,
            Priority::Low
        );
        // Descendants never read it: only an agent root's own rule does.
        let desc = Decision {
            reason: Reason::Inherited { ancestor: 1 },
            ..d.clone()
        };
        assert_eq!(
            user_priority(desc.clone(), &claude, &up, root.path(), None),
            desc
        );
    }

    #[test]
    fn priority_picked_at_placement_stands_when_the_environment_reads_empty() {
        let set = set();
        let claude = p("claude", &["claude"]);
        let d = own_match(&set, &claude, &NoParents).unwrap();
        let up = UserPriority::default();
        // An exiting (or OOM-reaped) process: its environ reads empty.
        let empty = fake_proc(50, b"", "");
        let got = user_priority(d.clone(), &claude, &up, empty.path(), Some(Priority::Low));
        assert_eq!(got.priority, Priority::Low);
        assert!(
            got.reason.to_string().contains("AGENTCG_PRIORITY=low"),
            "{}",
            got.reason
        );
        // Never picked: the family's priority, as before.
        assert_eq!(
            user_priority(d.clone(), &claude, &up, empty.path(), None),
            d
        );
        // No environ file at all (EACCES, ENOENT): the same.
        let gone = tempfile::tempdir().unwrap();
        assert_eq!(
            user_priority(d.clone(), &claude, &up, gone.path(), Some(Priority::Low)).priority,
            Priority::Low
        );
        // A readable environment still decides: the variable taken away by
        // a re-exec gives the family's priority back.
        let unset = fake_proc(50, b"HOME=/h\0", "");
        assert_eq!(
            user_priority(d.clone(), &claude, &up, unset.path(), Some(Priority::Low)),
            d
        );
    }

    #[test]
    fn chain_decides_like_the_daemon() {
        let set = with_shared(set());
        let mut chain = vec![
            p("bash", &["bash"]),
            p("claude", &["claude"]),
            p("bash", &["/bin/bash", "-c", "x"]),
            p("python3", &["python3", "-m", "pytest"]),
            p("python3", &["python3", "worker.py"]),
        ];
        for (i, c) in chain.iter_mut().enumerate() {
            c.pid = 100 + i as u32;
        }
        let empty = tempfile::tempdir().unwrap();
        let decide = |chain: &[ProcInfo], trust: &crate::trust::TrustConfig| {
            decide_chain(
                &set,
                chain,
                &UserPriority::default(),
                trust,
                empty.path(),
                &NoParents,
            )
        };
        let ds = decide(&chain, &Default::default());
        assert_eq!(ds[0], None);
        let pr: Vec<_> = ds[1..]
            .iter()
            .map(|d| d.as_ref().unwrap().priority)
            .collect();
        assert_eq!(
            pr,
            [Priority::High, Priority::High, Priority::Low, Priority::Low]
        );
        assert_eq!(
            ds[2].as_ref().unwrap().reason,
            Reason::Inherited { ancestor: 101 }
        );
        assert_eq!(
            ds[4].as_ref().unwrap().reason,
            Reason::Inherited { ancestor: 103 }
        );
        // Strict trust: a user's claude whose executable cannot be verified
        // (no /proc entry here) does not count, as in the daemon, and
        // nothing below it is in its lineage either.
        let strict = crate::trust::TrustConfig {
            mode: crate::trust::TrustMode::Strict,
            ..Default::default()
        };
        for c in &mut chain {
            c.uid = 1000;
        }
        let ds = decide(&chain, &strict);
        assert_eq!(ds[1], None, "{ds:?}");
        assert_eq!(ds[2], None, "{ds:?}");
    }

    #[test]
    fn never_moves_protected() {
        let mut k = p("kworker/0:1", &[]);
        k.kernel_thread = true;
        assert_eq!(protected(&k, 999), Some("kernel thread"));
        let mut init = p("systemd", &[]);
        init.pid = 1;
        assert_eq!(protected(&init, 999), Some("pid 1"));
        assert_eq!(protected(&p("agentcgd", &[]), 50), Some("agentcgd itself"));
        assert_eq!(protected(&p("claude", &[]), 999), None);
    }
}
