//! The exec prefilter: which execs the kernel sends to the daemon besides
//! those inside a tracked lineage. Compiled from the families' own match
//! blocks (tools rules apply to descendants, which are in a lineage anyway).
//!
//! A block matches only if all its fields do, so one key per block is
//! enough: a literal (or the literal text before a glob's first wildcard)
//! of its comm, of its exe's path components, or of its argv[0]. The keys
//! over-approximate: the daemon still decides on the whole rule. A block
//! without such a literal lets every exec through, and `check` says which.

use procmon::{KeyKind, Prefilter, PrefilterKey};

use crate::policy::{Glob, MatchBlock, PolicySet};

fn is_meta(c: char) -> bool {
    matches!(c, '*' | '?' | '[')
}

/// The text before the first wildcard, and whether that is all of it.
fn literal_prefix(pattern: &str) -> (&str, bool) {
    match pattern.find(is_meta) {
        Some(i) => (&pattern[..i], false),
        None => (pattern, true),
    }
}

fn key(kind: KeyKind, text: &str, exact: bool) -> Option<PrefilterKey> {
    (!text.is_empty()).then(|| PrefilterKey {
        kind,
        text: text.to_string(),
        exact,
    })
}

/// comm is compared whole.
fn comm_key(g: &Glob) -> Option<PrefilterKey> {
    let (lit, exact) = literal_prefix(g.as_str());
    key(KeyKind::Comm, lit, exact)
}

/// argv[0] matches whole or by its basename; the kernel looks up both.
fn argv0_key(g: &Glob) -> Option<PrefilterKey> {
    let p = g.as_str();
    let (lit, exact) = literal_prefix(p);
    if exact {
        // argv[0] equal to p, or its basename equal to p: either way its
        // basename is p's last component.
        return key(KeyKind::Argv0, p.rsplit('/').next().unwrap_or(p), true);
    }
    if !lit.is_empty() {
        // Whatever `*` matches (also '/'), the whole argv[0] or its basename
        // starts with the literal prefix.
        return key(KeyKind::Argv0, lit, false);
    }
    // Leading wildcard: a literal last component after a '/' still pins
    // the basename ("*/bin/node").
    let last = p.rsplit_once('/')?.1;
    (!last.contains(is_meta)).then(|| key(KeyKind::Argv0, last, true))?
}

/// exe is a full path: a literal component ("/x/" or a literal last part)
/// must be one of the executable's path components. The kernel looks at
/// the last `procmon::EXE_DEPTH`; the literal nearest the end is taken.
fn exe_key(g: &Glob) -> Option<PrefilterKey> {
    let parts: Vec<&str> = g.as_str().split('/').collect();
    parts
        .iter()
        .enumerate()
        .rev()
        .filter(|&(i, _)| i > 0)
        .find(|(_, s)| !s.is_empty() && !s.contains(is_meta))
        .and_then(|(_, s)| key(KeyKind::Exe, s, true))
}

/// The cheapest sufficient key of one block: comm (no extra reads in the
/// kernel), then exe, then argv[0].
pub fn block_key(b: &MatchBlock) -> Option<PrefilterKey> {
    b.comm
        .as_ref()
        .and_then(comm_key)
        .or_else(|| b.exe.as_ref().and_then(exe_key))
        .or_else(|| b.argv.first().and_then(argv0_key))
}

pub fn compile(set: &PolicySet) -> Prefilter {
    let mut pf = Prefilter::default();
    for fam in &set.families {
        for (i, b) in fam.matches.iter().enumerate() {
            match block_key(b) {
                Some(k) => pf.keys.push(k),
                None if pf.pass_all.is_none() => {
                    pf.pass_all = Some(format!(
                        "match block {} of {} has no literal comm, exe component or argv[0] text",
                        i + 1,
                        fam.file.display()
                    ))
                }
                None => {}
            }
        }
    }
    pf.keys.sort();
    pf.keys.dedup();
    pf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_family;
    use std::path::Path;

    fn keys(yaml: &str) -> Prefilter {
        let fam = parse_family(Path::new("f.yaml"), yaml).unwrap();
        compile(&PolicySet {
            families: vec![fam],
            ..PolicySet::default()
        })
    }

    fn k(kind: KeyKind, text: &str, exact: bool) -> PrefilterKey {
        PrefilterKey {
            kind,
            text: text.into(),
            exact,
        }
    }

    #[test]
    fn literals_and_prefixes() {
        let pf = keys(
            "family: a\npriority: high\nmatch:\n\
             - comm: claude\n\
             - comm: 'claude*'\n\
             - argv: ['node*', '*claude-code*']\n\
             - argv: ['/usr/bin/python3', '-m', 'aider']\n\
             - argv: ['*/bin/node']\n\
             - exe: '*/claude/versions/*'\n\
             - exe: '/opt/*/bin/codex'\n",
        );
        assert_eq!(pf.pass_all, None);
        assert_eq!(
            pf.keys,
            [
                k(KeyKind::Comm, "claude", false),
                k(KeyKind::Comm, "claude", true),
                k(KeyKind::Argv0, "node", false),
                k(KeyKind::Argv0, "node", true),
                k(KeyKind::Argv0, "python3", true),
                k(KeyKind::Exe, "codex", true),
                k(KeyKind::Exe, "versions", true),
            ]
        );
    }

    #[test]
    fn comm_is_preferred_within_a_block() {
        let pf = keys("family: a\npriority: high\nmatch:\n- {comm: bash, argv: ['x*']}\n");
        assert_eq!(pf.keys, [k(KeyKind::Comm, "bash", true)]);
    }

    #[test]
    fn unreducible_blocks_pass_everything() {
        for block in [
            "- argv: ['*', '*claude*']",
            "- {uid: 1000, comm: '?x'}",
            "- comm: '*x'",
            "- exe: '*/x*'",
        ] {
            let pf = keys(&format!("family: a\npriority: high\nmatch:\n{block}\n"));
            assert!(pf.pass_all.is_some(), "{block}: {pf:?}");
        }
    }

    /// The key is an over-approximation: whatever the glob matches, the
    /// kernel's lookup of the same attribute hits the key.
    #[test]
    fn keys_over_approximate_the_globs() {
        let argv0_hits = |k: &PrefilterKey, a: &str| {
            let base = a.rsplit('/').next().unwrap();
            [a, base].iter().any(|s| {
                if k.exact {
                    *s == k.text
                } else {
                    s.starts_with(&k.text)
                }
            })
        };
        for (pattern, samples) in [
            (
                "node*",
                &["node", "node22", "/usr/bin/node", "node/x/y"][..],
            ),
            ("*/bin/node", &["/usr/bin/node", "x/bin/node"]),
            ("/usr/bin/python*", &["/usr/bin/python3.11"]),
            ("aider", &["aider", "/home/u/.local/bin/aider"]),
        ] {
            let g = Glob::try_from(pattern.to_string()).unwrap();
            let key = argv0_key(&g).unwrap();
            for s in samples {
                let matched = g.matches(s) || g.matches(s.rsplit('/').next().unwrap());
                assert!(matched, "{pattern} should match {s}");
                assert!(argv0_hits(&key, s), "{pattern} -> {key:?} misses {s}");
            }
        }
    }
}
