//! The classifier: which family and session a process belongs to, and why.
//! Pure: it reads a process and the families of its ancestors, nothing else.

use std::fmt;

use serde::{Deserialize, Serialize};

use procmon::ProcInfo;

use crate::policy::{FamilyName, ParentLookup, PolicySet, Priority};

/// Why a decision was made; printed by `explain` and kept in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// Matched the family's own match block `block` (0-based) in `file`.
    Rule { file: String, block: usize },
    /// Inherited from ancestor `ancestor` (descendants: true).
    Inherited { ancestor: u32 },
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
            Reason::Rule { file, block } => write!(f, "match block {} of {file}", block + 1),
            Reason::Inherited { ancestor } => {
                write!(f, "descendant of pid {ancestor} (descendants: true)")
            }
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

/// A tracked ancestor (or the process itself, on a re-exec).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    pub pid: u32,
    pub family: FamilyName,
    /// The session it is in: a tool's children stay with the tool.
    pub priority: Priority,
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
            },
        })
    })
}

/// Decide for `p` as a descendant of `lin` (its nearest tracked ancestor,
/// or itself before a re-exec): the family keeps it when `descendants` is
/// on, and its `tools` rules may pick another session.
pub fn inherit(
    set: &PolicySet,
    p: &ProcInfo,
    lin: &Lineage,
    parents: &dyn ParentLookup,
) -> Option<Decision> {
    let fam = set.family(lin.family.as_str())?;
    if !fam.descendants {
        return None;
    }
    for (rule, tool) in fam.tools.iter().enumerate() {
        if tool.matches.iter().any(|b| b.matches(p, parents)) {
            return Some(Decision {
                family: fam.family.clone(),
                priority: tool.priority,
                reason: Reason::Tool {
                    file: fam.file.display().to_string(),
                    rule,
                    ancestor: lin.pid,
                },
            });
        }
    }
    Some(Decision {
        family: fam.family.clone(),
        priority: lin.priority,
        reason: Reason::Inherited { ancestor: lin.pid },
    })
}

/// Own rules first (first match wins), then the lineage. The daemon calls
/// the two halves itself so it looks up the lineage only when needed.
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
                block: 0
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
