//! Agent-family policies: one YAML file per family in a policies directory.
//!
//! Files are read in name order and rules in file order; the first match
//! wins. Every validation error carries the file and line, because each check
//! runs inside deserialization where serde_norway knows the position.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use glob::{MatchOptions, Pattern};
use serde::{Deserialize, Serialize};

use procmon::ProcInfo;

use crate::trust::FileTrust;

/// The daemon-wide settings file may sit beside the families (as in the
/// repository's policies/); it is never a family.
pub const DAEMON_CONFIG_NAME: &str = "agentcgd.yaml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    Low,
}

impl Priority {
    /// The session cgroup this priority maps to.
    pub fn session(self) -> &'static str {
        match self {
            Priority::High => "session_high",
            Priority::Low => "session_low",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Priority::High => "high",
            Priority::Low => "low",
        })
    }
}

/// A family name: `[a-z0-9][a-z0-9_-]{0,62}`, so it is safe in paths and logs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FamilyName(String);

impl TryFrom<String> for FamilyName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(FamilyName(s))
        } else {
            Err(format!(
                "invalid family name {s:?}: must match [a-z0-9][a-z0-9_-]{{0,62}} (no path characters)"
            ))
        }
    }
}

impl From<FamilyName> for String {
    fn from(f: FamilyName) -> String {
        f.0
    }
}

impl FamilyName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FamilyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A shell glob; `*` also matches `/`, so `*claude-code*` matches a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Glob(Pattern);

const GLOB_OPTS: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: false,
    require_literal_leading_dot: false,
};

impl TryFrom<String> for Glob {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Pattern::new(&s)
            .map(Glob)
            .map_err(|e| format!("invalid glob {s:?}: {e}"))
    }
}

impl From<Glob> for String {
    fn from(g: Glob) -> String {
        g.0.as_str().to_string()
    }
}

impl Glob {
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn matches(&self, s: &str) -> bool {
        self.0.matches_with(s, GLOB_OPTS)
    }

    /// Matches (nearly) everything: only wildcards and `/` (`*`, `/*`,
    /// `*/*`, `?*`).
    pub fn catch_all(&self) -> bool {
        let s = self.as_str();
        s.contains('*') && s.chars().all(|c| matches!(c, '*' | '?' | '/'))
    }
}

/// One match block: every field given must match (AND).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawBlock")]
pub struct MatchBlock {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<Glob>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<Glob>,
    /// argv[i] must match argv_globs[i]; argv may be longer. argv[0] also
    /// matches by its basename, so `node` matches `/usr/bin/node`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<Glob>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The parent process must match this block.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<Box<MatchBlock>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBlock {
    comm: Option<Glob>,
    exe: Option<Glob>,
    #[serde(default)]
    argv: Vec<Glob>,
    uid: Option<u32>,
    parent: Option<Box<MatchBlock>>,
}

impl TryFrom<RawBlock> for MatchBlock {
    type Error = String;
    fn try_from(r: RawBlock) -> Result<Self, String> {
        if r.comm.is_none()
            && r.exe.is_none()
            && r.argv.is_empty()
            && r.uid.is_none()
            && r.parent.is_none()
        {
            return Err(
                "empty match block would match every process; give comm, exe, argv, uid or parent"
                    .into(),
            );
        }
        for (field, g) in [("comm", &r.comm), ("exe", &r.exe)] {
            if let Some(g) = g {
                if g.catch_all() {
                    return Err(format!(
                        "{field}: {:?} matches every process: refused (name the program, or leave {field} out)",
                        g.as_str()
                    ));
                }
            }
        }
        if !r.argv.is_empty() && r.argv.iter().all(Glob::catch_all) {
            return Err(format!(
                "argv: {:?} matches every process: refused (name the program in some position)",
                r.argv.iter().map(Glob::as_str).collect::<Vec<_>>()
            ));
        }
        if r.comm.is_none() && r.exe.is_none() && r.argv.is_empty() {
            return Err(
                "a match block needs a comm, exe or argv pattern: uid or parent alone would take every process of that user or parent"
                    .into(),
            );
        }
        if r.argv.len() > crate::limits::MAX_RULES {
            return Err(format!(
                "{} argv patterns, more than the limit of {}",
                r.argv.len(),
                crate::limits::MAX_RULES
            ));
        }
        Ok(MatchBlock {
            comm: r.comm,
            exe: r.exe,
            argv: r.argv,
            uid: r.uid,
            parent: r.parent,
        })
    }
}

/// Looks up a process's parent for `parent:` blocks.
pub trait ParentLookup {
    fn parent(&self, p: &ProcInfo) -> Option<ProcInfo>;
}

/// `parent:` blocks read the parent from /proc.
impl ParentLookup for procmon::ProcFs {
    fn parent(&self, p: &ProcInfo) -> Option<ProcInfo> {
        if p.ppid == 0 {
            return None;
        }
        self.read(p.ppid).ok()
    }
}

/// No parent information (for tests and pure matching).
#[cfg(test)]
pub struct NoParents;
#[cfg(test)]
impl ParentLookup for NoParents {
    fn parent(&self, _: &ProcInfo) -> Option<ProcInfo> {
        None
    }
}

impl MatchBlock {
    pub fn matches(&self, p: &ProcInfo, parents: &dyn ParentLookup) -> bool {
        if let Some(g) = &self.comm {
            if !g.matches(&p.comm) {
                return false;
            }
        }
        if let Some(g) = &self.exe {
            if !g.matches(&p.exe) {
                return false;
            }
        }
        if let Some(uid) = self.uid {
            if p.uid != uid {
                return false;
            }
        }
        if self.argv.len() > p.argv.len() {
            return false;
        }
        for (i, (g, a)) in self.argv.iter().zip(&p.argv).enumerate() {
            let base_ok = i == 0 && g.matches(a.rsplit('/').next().unwrap_or(a));
            if !base_ok && !g.matches(a) {
                return false;
            }
        }
        match &self.parent {
            Some(pb) => parents.parent(p).is_some_and(|pp| pb.matches(&pp, parents)),
            None => true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolRule {
    #[serde(rename = "match", deserialize_with = "non_empty_blocks")]
    pub matches: Vec<MatchBlock>,
    pub priority: Priority,
}

fn non_empty_blocks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<MatchBlock>, D::Error> {
    let v = Vec::<MatchBlock>::deserialize(d)?;
    if v.is_empty() {
        return Err(serde::de::Error::custom("`match` needs at least one block"));
    }
    if v.len() > crate::limits::MAX_RULES {
        return Err(serde::de::Error::custom(format!(
            "`match` has {} blocks, more than the limit of {}",
            v.len(),
            crate::limits::MAX_RULES
        )));
    }
    Ok(v)
}

/// One agent family, as written in its file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Family {
    pub family: FamilyName,
    pub priority: Priority,
    #[serde(rename = "match", deserialize_with = "non_empty_blocks")]
    pub matches: Vec<MatchBlock>,
    /// Children that exec something unmatched stay in the family.
    #[serde(default = "default_true")]
    pub descendants: bool,
    /// Its own tools rules, tried before the shared ones of agentcgd.yaml.
    #[serde(default)]
    pub tools: Vec<ToolRule>,
    /// Whether the shared `tools:` rules of agentcgd.yaml apply after the
    /// family's own (`false`: only the family's own rules).
    #[serde(default = "default_true")]
    pub shared_tools: bool,
    /// cpu.weight of each of its agents' leaf cgroups (1..=10000; 100 when
    /// unset), so agents in one session split it as configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u32>,
    /// Where it came from (not part of the file format).
    #[serde(skip_deserializing, default)]
    pub file: PathBuf,
}

fn default_true() -> bool {
    true
}

/// A located error: `file:line: message` (or `file: message`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file.display(), l, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for PolicyError {}

/// Parse one family file's text (its size and depth bounded first).
pub fn parse_family(file: &Path, text: &str) -> Result<Family, PolicyError> {
    if text.len() as u64 > crate::limits::MAX_FILE_BYTES {
        return Err(PolicyError {
            file: file.to_path_buf(),
            line: None,
            message: format!(
                "{} bytes, more than the limit of {}: refused before parsing",
                text.len(),
                crate::limits::MAX_FILE_BYTES
            ),
        });
    }
    crate::limits::check_depth(text).map_err(|(line, message)| PolicyError {
        file: file.to_path_buf(),
        line: Some(line),
        message,
    })?;
    let mut fam: Family = serde_norway::from_str(text).map_err(|e| {
        // serde_norway puts "at line L column C" in the message; keep ours clean.
        let msg = e.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
        // serde reports a custom error on a whole sequence at its parent
        // mapping; point at the empty `match:` list instead.
        let line = if msg.contains("`match` needs") {
            empty_match_line(text)
        } else {
            None
        };
        PolicyError {
            file: file.to_path_buf(),
            line: line.or(e.location().map(|l| l.line())),
            message: msg,
        }
    })?;
    if let Some(w) = fam.cpu_weight.filter(|w| !(1..=10000).contains(w)) {
        return Err(PolicyError {
            file: file.to_path_buf(),
            line: text
                .lines()
                .position(|l| l.trim_start().starts_with("cpu_weight:"))
                .map(|i| i + 1),
            message: format!("cpu_weight {w} is out of range 1..=10000"),
        });
    }
    if fam.tools.len() > crate::limits::MAX_RULES {
        return Err(PolicyError {
            file: file.to_path_buf(),
            line: None,
            message: format!(
                "{} tools rules, more than the limit of {}",
                fam.tools.len(),
                crate::limits::MAX_RULES
            ),
        });
    }
    fam.file = file.to_path_buf();
    Ok(fam)
}

/// Line of the first `match:` key whose list is empty.
fn empty_match_line(text: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    lines.iter().enumerate().find_map(|(i, l)| {
        let t = l.trim_start().trim_start_matches("- ");
        let rest = t.strip_prefix("match:")?.trim();
        let next_is_item = lines
            .get(i + 1)
            .is_some_and(|n| n.trim_start().starts_with('-'));
        (rest == "[]" || (rest.is_empty() && !next_is_item)).then_some(i + 1)
    })
}

/// Line of the `family:` key, for errors about the whole family.
fn family_line(text: &str) -> Option<usize> {
    text.lines()
        .position(|l| l.trim_start().starts_with("family:"))
        .map(|i| i + 1)
}

/// The whole validated policy: families in file-name order, and the
/// `tools:` rules shared by every family (from agentcgd.yaml).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PolicySet {
    pub families: Vec<Family>,
    pub shared_tools: SharedTools,
}

/// The shared `tools:` rules and the file they came from (for reasons).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SharedTools {
    pub file: PathBuf,
    pub rules: Vec<ToolRule>,
}

impl PolicySet {
    /// Load every `*.yaml`/`*.yml` in `dir` (not hidden, not agentcgd.yaml).
    /// Any error rejects the whole set, so a caller keeps its last good one.
    #[cfg(test)]
    pub fn load_dir(dir: &Path) -> Result<PolicySet, PolicyError> {
        Self::load_dir_with(dir, FileTrust::Any)
    }

    /// `load_dir`, with the directory and every file checked as `trust`
    /// says (the daemon and `check`: root's, writable by root only).
    pub fn load_dir_with(dir: &Path, trust: FileTrust) -> Result<PolicySet, PolicyError> {
        let err = |m: String| PolicyError {
            file: dir.to_path_buf(),
            line: None,
            message: m,
        };
        crate::trust::check_dir(dir, trust).map_err(err)?;
        let rd = std::fs::read_dir(dir)
            .map_err(|e| err(format!("cannot read policy directory: {e}")))?;
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                !name.starts_with('.')
                    && name != DAEMON_CONFIG_NAME
                    && (name.ends_with(".yaml") || name.ends_with(".yml"))
                    && p.is_file()
            })
            .collect();
        files.sort();
        if files.len() > crate::limits::MAX_FILES {
            return Err(err(format!(
                "{} policy files, more than the limit of {}",
                files.len(),
                crate::limits::MAX_FILES
            )));
        }
        let mut set = PolicySet::default();
        let mut seen: BTreeMap<FamilyName, PathBuf> = BTreeMap::new();
        for file in files {
            let text = crate::trust::read_file(&file, trust, crate::limits::MAX_FILE_BYTES)
                .map_err(|e| PolicyError {
                    file: file.clone(),
                    line: None,
                    message: format!("cannot read: {e}"),
                })?;
            let fam = parse_family(&file, &text)?;
            if let Some(first) = seen.get(&fam.family) {
                return Err(PolicyError {
                    file: file.clone(),
                    line: family_line(&text),
                    message: format!(
                        "family {} is already defined in {}",
                        fam.family,
                        first.display()
                    ),
                });
            }
            seen.insert(fam.family.clone(), file.clone());
            set.families.push(fam);
        }
        Ok(set)
    }

    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.family.as_str() == name)
    }

    /// The same families with the shared tools rules of `file`.
    pub fn with_shared_tools(mut self, rules: Vec<ToolRule>, file: &Path) -> PolicySet {
        self.shared_tools = SharedTools {
            file: file.to_path_buf(),
            rules,
        };
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(comm: &str, exe: &str, argv: &[&str], uid: u32) -> ProcInfo {
        ProcInfo {
            pid: 100,
            ppid: 1,
            uid,
            comm: comm.into(),
            exe: exe.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            start_ticks: 1,
            kernel_thread: false,
        }
    }

    fn parse(text: &str) -> Result<Family, PolicyError> {
        parse_family(Path::new("p/x.yaml"), text)
    }

    const CLAUDE: &str = "family: claude-code
priority: high
match:
  - comm: claude
  - argv: [\"node*\", \"*claude-code*\"]
  - exe: \"/opt/agents/*/bin/claude\"
    uid: 1000
tools:
  - match: [{comm: pytest}]
    priority: low
";

    #[test]
    fn parses_full_family() {
        let f = parse(CLAUDE).unwrap();
        assert_eq!(f.family.as_str(), "claude-code");
        assert_eq!(f.priority, Priority::High);
        assert_eq!(f.matches.len(), 3);
        assert!(f.descendants, "descendants defaults to true");
        assert_eq!(f.tools[0].priority, Priority::Low);
    }

    #[test]
    fn argv_position_globs() {
        let f = parse(CLAUDE).unwrap();
        let b = &f.matches[1];
        let yes = proc(
            "node",
            "/usr/bin/node",
            &[
                "node",
                "/usr/lib/node_modules/@anthropic-ai/claude-code/cli.js",
            ],
            0,
        );
        assert!(b.matches(&yes, &NoParents));
        let full_path_argv0 = proc(
            "node",
            "/usr/bin/node",
            &["/usr/bin/node", "/x/claude-code/cli.js", "-p"],
            0,
        );
        assert!(b.matches(&full_path_argv0, &NoParents));
        let wrong_pos = proc(
            "node",
            "/usr/bin/node",
            &["node", "server.js", "claude-code"],
            0,
        );
        assert!(!b.matches(&wrong_pos, &NoParents));
        let short = proc("node", "/usr/bin/node", &["node"], 0);
        assert!(!b.matches(&short, &NoParents));
    }

    #[test]
    fn comm_exe_uid_and() {
        let f = parse(CLAUDE).unwrap();
        assert!(f.matches[0].matches(&proc("claude", "/x", &[], 5), &NoParents));
        assert!(!f.matches[0].matches(&proc("claude2", "/x", &[], 5), &NoParents));
        let b = &f.matches[2];
        assert!(b.matches(
            &proc("c", "/opt/agents/v1/bin/claude", &[], 1000),
            &NoParents
        ));
        assert!(!b.matches(
            &proc("c", "/opt/agents/v1/bin/claude", &[], 1001),
            &NoParents
        ));
        assert!(!b.matches(
            &proc("c", "/opt/other/v1/bin/claude", &[], 1000),
            &NoParents
        ));
    }

    #[test]
    fn parent_block() {
        struct P;
        impl ParentLookup for P {
            fn parent(&self, _: &ProcInfo) -> Option<ProcInfo> {
                Some(proc("sshd", "/usr/sbin/sshd", &[], 0))
            }
        }
        let f =
            parse("family: a\npriority: low\nmatch:\n  - comm: bash\n    parent: {comm: sshd}\n")
                .unwrap();
        assert!(f.matches[0].matches(&proc("bash", "", &[], 0), &P));
        assert!(!f.matches[0].matches(&proc("bash", "", &[], 0), &NoParents));
    }

    fn err_of(text: &str) -> PolicyError {
        parse(text).unwrap_err()
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = err_of("family: ok\npriority: high\nmatch:\n  - comm: x\n    bogus: 1\n");
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.message.contains("unknown field `bogus`"), "{e}");
        assert!(e.to_string().starts_with("p/x.yaml:5: "), "{e}");

        let e = err_of("family: ../etc\npriority: high\nmatch: [{comm: x}]\n");
        assert_eq!(e.line, Some(1), "{e}");
        assert!(e.message.contains("invalid family name"), "{e}");

        let e = err_of("family: a\npriority: urgent\nmatch: [{comm: x}]\n");
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("unknown variant `urgent`"), "{e}");

        let e = err_of("family: a\npriority: high\nmatch:\n  - argv: [\"[unclosed\"]\n");
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.message.contains("invalid glob"), "{e}");

        let e = err_of("family: a\npriority: high\nmatch: []\n");
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("at least one block"), "{e}");

        let e = err_of("family: a\npriority: high\nmatch:\n  - {}\n");
        assert!(e.message.contains("empty match block"), "{e}");
        assert!(e.line.is_some());

        let e = err_of("family: a\nmatch: [{comm: x}]\n");
        assert!(e.message.contains("missing field `priority`"), "{e}");

        let e = err_of("family: a\npriority: high\nmatch: [{comm: x}]\ntools:\n  - match: [{comm: y}]\n    priority: meh\n");
        assert_eq!(e.line, Some(6), "{e}");

        let e = err_of("family: a\npriority: high\nmatch:\n  - uid: -3\n");
        assert_eq!(e.line, Some(4), "{e}");

        let e = err_of("family: [a\n");
        assert!(e.line.is_some(), "syntax errors are located: {e}");

        let e = err_of("");
        assert!(!e.message.is_empty());
    }

    #[test]
    fn catch_all_patterns_are_refused() {
        for (block, what) in [
            ("{comm: \"*\"}", "comm: \"*\" matches every process"),
            ("{exe: \"*\"}", "exe: \"*\" matches every process"),
            ("{exe: \"/*\"}", "exe: \"/*\""),
            ("{argv: [\"*\"]}", "argv: [\"*\"] matches every process"),
            ("{argv: [\"*\", \"*\"], uid: 1000}", "matches every process"),
            ("{comm: \"*\", argv: [node, x.js]}", "comm: \"*\""),
            ("{uid: 1000}", "uid or parent alone"),
            ("{parent: {comm: sshd}}", "uid or parent alone"),
        ] {
            let e = err_of(&format!("family: a\npriority: high\nmatch:\n  - {block}\n"));
            assert!(e.message.contains(what), "{block}: {e}");
            assert_eq!(e.line, Some(4), "{block}: {e}");
        }
        // Wildcards in some positions of a named program are fine.
        assert!(parse("family: a\npriority: high\nmatch:\n  - {comm: \"pip*\", argv: [\"*\", \"*\", install]}\n").is_ok());
    }

    #[test]
    fn oversized_and_deep_input_is_refused_before_parsing() {
        let deep = format!("family: a\npriority: high\nmatch: {}\n", "[".repeat(70_000));
        let e = err_of(&deep);
        assert!(e.message.contains("nested deeper than"), "{e}");
        assert_eq!(e.line, Some(3));
        let big = format!(
            "family: a\npriority: high\nmatch: [{{comm: x}}]\n#{}\n",
            "x".repeat(300 * 1024)
        );
        assert!(err_of(&big).message.contains("more than the limit"));
        let many: String = (0..300).map(|i| format!("  - comm: c{i}\n")).collect();
        let e = err_of(&format!("family: a\npriority: high\nmatch:\n{many}"));
        assert!(e.message.contains("more than the limit of 256"), "{e}");
    }

    #[test]
    fn family_name_rules() {
        for ok in ["a", "claude-code", "x_1", "0abc"] {
            assert!(FamilyName::try_from(ok.to_string()).is_ok(), "{ok}");
        }
        for bad in ["", "A", "-a", "a/b", "a.b", "a b", &"x".repeat(64)] {
            assert!(FamilyName::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }

    #[test]
    fn dir_loading_order_duplicates_and_skips() {
        let d = tempfile::tempdir().unwrap();
        let w = |n: &str, t: &str| std::fs::write(d.path().join(n), t).unwrap();
        w(
            "20-b.yaml",
            "family: b\npriority: low\nmatch: [{comm: b}]\n",
        );
        w(
            "10-a.yml",
            "family: a\npriority: high\nmatch: [{comm: a}]\n",
        );
        w("agentcgd.yaml", "sessions: {}\n");
        w(".hidden.yaml", "garbage: [");
        w("README.md", "not yaml");
        let set = PolicySet::load_dir(d.path()).unwrap();
        let names: Vec<_> = set.families.iter().map(|f| f.family.as_str()).collect();
        assert_eq!(names, ["a", "b"]);

        w(
            "30-dup.yaml",
            "# comment\nfamily: a\npriority: low\nmatch: [{comm: z}]\n",
        );
        let e = PolicySet::load_dir(d.path()).unwrap_err();
        assert!(e.file.ends_with("30-dup.yaml"));
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("already defined"), "{e}");

        let e = PolicySet::load_dir(&d.path().join("missing")).unwrap_err();
        assert!(e.message.contains("cannot read policy directory"), "{e}");
    }

    #[test]
    fn shipped_policies_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let set = PolicySet::load_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
        for fam in [
            "claude-code",
            "codex",
            "gemini-cli",
            "qwen-code",
            "aider",
            "opencode",
            "copilot",
            "amp",
            "pi",
            "cline",
            "auggie",
            "openhands",
        ] {
            let f = set
                .family(fam)
                .unwrap_or_else(|| panic!("shipped policies lack {fam}"));
            // Shipped defaults: interactive agents in session_high.
            assert_eq!(f.priority, Priority::High, "{fam}");
            assert!(f.descendants && f.shared_tools, "{fam}");
            // Every block can be prefiltered at exec time.
            for b in &f.matches {
                assert!(
                    crate::prefilter::block_key(b).is_some(),
                    "{fam}: no prefilter key: {b:?}"
                );
            }
        }
    }

    /// The shipped rules against the processes the real agents showed
    /// (see each file's comments for the versions).
    #[test]
    fn shipped_policies_match_real_process_shapes() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let set = PolicySet::load_dir(&dir).unwrap();
        let nm = "/usr/local/lib/node_modules";
        let node = "/usr/bin/node";
        let cases: &[(&str, &str, &str, &[&str])] = &[
            ("claude-code", "claude", &format!("{nm}/@anthropic-ai/claude-code/bin/claude.exe"), &["/usr/local/bin/claude"]),
            ("claude-code", "claude.exe", &format!("{nm}/@anthropic-ai/claude-code/bin/claude.exe"), &[&format!("{nm}/@anthropic-ai/claude-code/bin/claude.exe")]),
            ("claude-code", "claude", "/home/u/.local/share/claude/versions/2.1.330", &["claude"]),
            ("claude-code", "node", node, &["node", "/usr/local/bin/claude"]),
            ("claude-code", "node", node, &["node", &format!("{nm}/@anthropic-ai/claude-code/cli.js")]),
            ("codex", "codex", &format!("{nm}/@openai/codex/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex"), &["x"]),
            ("codex", "codex", "/home/u/.codex/packages/app-server-daemon/releases/0.169.0-x86_64-unknown-linux-musl/bin/codex", &["x", "app-server"]),
            ("codex", "node", node, &["node", "/usr/local/bin/codex"]),
            ("gemini-cli", "node", node, &["node", "/usr/local/bin/gemini"]),
            ("gemini-cli", "node", node, &[node, "--max-old-space-size=12051", "/usr/local/bin/gemini"]),
            ("qwen-code", "node", node, &[node, "--expose-gc", &format!("{nm}/@qwen-code/qwen-code/cli.js")]),
            ("aider", "aider", "/usr/bin/python3.11", &["/v/bin/python3", "/v/bin/aider"]),
            ("opencode", "opencode", &format!("{nm}/opencode-ai/bin/opencode.exe"), &["opencode"]),
            ("copilot", "MainThread", &format!("{nm}/@github/copilot/node_modules/@github/copilot-linux-x64/copilot"), &["x"]),
            ("copilot", "node", node, &["node", "/usr/local/bin/copilot"]),
            ("amp", "amp", &format!("{nm}/@sourcegraph/amp/node_modules/@ampcode/cli/bin/amp.exe"), &["amp"]),
            ("pi", "pi", "/opt/node22/bin/node", &["pi"]),
            ("cline", ".cline", &format!("{nm}/cline/bin/.cline"), &["x"]),
            ("auggie", "node", node, &["node", "/usr/local/bin/auggie"]),
        ];
        for (fam, comm, exe, argv) in cases {
            let p = proc(comm, exe, argv, 1000);
            let got = set
                .families
                .iter()
                .find(|f| f.matches.iter().any(|b| b.matches(&p, &NoParents)))
                .map(|f| f.family.as_str());
            assert_eq!(got, Some(*fam), "{comm} {exe} {argv:?}");
        }
        // Not agents: a user's own `pi` binary, node servers, the shells.
        for (comm, exe, argv) in [
            ("pi", "/usr/local/bin/pi", &["pi"][..]),
            ("node", node, &["node", "server.js"][..]),
            ("bash", "/usr/bin/bash", &["/bin/bash", "-c", "claude"][..]),
            (
                "node",
                node,
                &[
                    "node",
                    "/usr/bin/npm",
                    "install",
                    "-g",
                    "@google/gemini-cli",
                ][..],
            ),
        ] {
            let p = proc(comm, exe, argv, 1000);
            assert!(
                !set.families
                    .iter()
                    .any(|f| f.matches.iter().any(|b| b.matches(&p, &NoParents))),
                "{comm} {argv:?} matched"
            );
        }
    }
}
