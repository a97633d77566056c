//! `reactions:` in agentcgd.yaml.
//!
//! Syntax checks run inside deserialisation (newtypes with `TryFrom`), so the
//! YAML parser attaches the line; checks across fields of a rule
//! ([`Config::validate`]) and against the system ([`Config::check_system`])
//! name the rule, and the daemon's config loader finds its line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::users;

/// What can set a rule off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerKind {
    /// A process of an agent was killed by the OOM killer.
    OomKill,
    /// An agent's root process died by a signal or exited non-zero.
    Crash,
    /// session_high's memory pressure stayed above a threshold.
    Pressure,
    /// An agent was idle for longer than a threshold (activity monitor).
    Idle,
}

impl TriggerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::OomKill => "oom_kill",
            TriggerKind::Crash => "crash",
            TriggerKind::Pressure => "pressure",
            TriggerKind::Idle => "idle",
        }
    }
}

impl fmt::Display for TriggerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Write one log line (and a record in `status`).
    Log,
    /// Run `command` as `user`.
    Run,
}

/// Which triggers count as "the same" for the debounce interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DebouncePer {
    /// One agent instance (family and root pid).
    Agent,
    /// One family in one working directory: an agent restarted in the same
    /// directory (a crash loop) is the same workspace.
    #[default]
    Workspace,
    /// The whole family.
    Family,
}

/// A rule name: `[a-z0-9][a-z0-9_-]{0,62}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct RuleName(String);

impl TryFrom<String> for RuleName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if valid_name(&s) {
            Ok(RuleName(s))
        } else {
            Err(format!(
                "rule name {s:?} must match [a-z0-9][a-z0-9_-]{{0,62}}"
            ))
        }
    }
}

impl RuleName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RuleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// A family name as in the policies (checked for syntax only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct FamilyRef(String);

impl TryFrom<String> for FamilyRef {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if valid_name(&s) {
            Ok(FamilyRef(s))
        } else {
            Err(format!(
                "family {s:?} must match [a-z0-9][a-z0-9_-]{{0,62}}"
            ))
        }
    }
}

impl FamilyRef {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An argv list: the program is an absolute path; nothing is run through a
/// shell and no element is built from process data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct Argv(Vec<String>);

impl TryFrom<Vec<String>> for Argv {
    type Error = String;
    fn try_from(v: Vec<String>) -> Result<Self, String> {
        let Some(prog) = v.first() else {
            return Err("command must not be empty".into());
        };
        if !prog.starts_with('/') {
            return Err(format!(
                "command[0] {prog:?} must be an absolute path (nothing is looked up in PATH)"
            ));
        }
        if v.iter().any(|a| a.contains('\0')) {
            return Err("command arguments must not contain NUL".into());
        }
        Ok(Argv(v))
    }
}

impl Argv {
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// Who runs a command: `agent` (the owner of the agent's root process), a
/// user name, or a numeric uid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StrOrInt", into = "String")]
pub enum UserSpec {
    Agent,
    Name(String),
    Uid(u32),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StrOrInt {
    Int(u32),
    Str(String),
}

impl TryFrom<StrOrInt> for UserSpec {
    type Error = String;
    fn try_from(v: StrOrInt) -> Result<Self, String> {
        match v {
            StrOrInt::Int(u) => Ok(UserSpec::Uid(u)),
            StrOrInt::Str(s) if s == "agent" => Ok(UserSpec::Agent),
            StrOrInt::Str(s) => {
                if let Ok(u) = s.parse::<u32>() {
                    return Ok(UserSpec::Uid(u));
                }
                let ok = !s.is_empty()
                    && s.len() <= 32
                    && !s.starts_with('-')
                    && s.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c));
                if ok {
                    Ok(UserSpec::Name(s))
                } else {
                    Err(format!("user {s:?} is not a user name, a uid or `agent`"))
                }
            }
        }
    }
}

impl From<UserSpec> for String {
    fn from(u: UserSpec) -> String {
        u.to_string()
    }
}

impl fmt::Display for UserSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserSpec::Agent => f.write_str("agent"),
            UserSpec::Name(n) => f.write_str(n),
            UserSpec::Uid(u) => write!(f, "{u}"),
        }
    }
}

/// An environment variable name for `env:`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct EnvName(String);

impl TryFrom<String> for EnvName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && (b[0].is_ascii_alphabetic() || b[0] == b'_')
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
        if !ok {
            return Err(format!("env name {s:?} must match [A-Za-z_][A-Za-z0-9_]*"));
        }
        if s.starts_with("AGENTCG_") {
            return Err(format!("env name {s:?}: AGENTCG_* is set by agentcgd"));
        }
        Ok(EnvName(s))
    }
}

impl EnvName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `pressure:` of a rule: session_high's memory.pressure "some avg10" at or
/// above `some_avg10` (percent) for `for_s` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PressureCfg {
    pub some_avg10: f64,
    pub for_s: u64,
}

/// `idle:` of a rule: the agent idle for `after_s` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdleCfg {
    pub after_s: u64,
}

fn default_debounce() -> u64 {
    30
}
fn default_timeout() -> u64 {
    10
}

/// One rule: when any of `on` happens (to one of `families`, if given), do
/// `action`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: RuleName,
    pub on: Vec<TriggerKind>,
    /// Only agents of these families (empty: every family).
    #[serde(default)]
    pub families: Vec<FamilyRef>,
    pub action: ActionKind,
    /// `action: run`: the argv to run.
    #[serde(default)]
    pub command: Option<Argv>,
    /// `action: run`: who runs it.
    #[serde(default)]
    pub user: Option<UserSpec>,
    /// `action: run`: extra environment.
    #[serde(default)]
    pub env: BTreeMap<EnvName, String>,
    /// At most one run per rule and `debounce_per` key in this many seconds.
    #[serde(default = "default_debounce")]
    pub debounce_s: u64,
    #[serde(default)]
    pub debounce_per: DebouncePer,
    /// `action: run`: the process group is killed after this many seconds.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
    /// Required with `on: [pressure]`.
    #[serde(default)]
    pub pressure: Option<PressureCfg>,
    /// Required with `on: [idle]`.
    #[serde(default)]
    pub idle: Option<IdleCfg>,
}

/// `reactions:`. Off unless `enabled: true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub enabled: bool,
    /// Log and record what would run; run nothing (also set by `--dry-run`).
    pub dry_run: bool,
    /// Commands running at once, 1..=16.
    pub max_running: usize,
    /// Runs kept in `status`, 1..=1000.
    pub history: usize,
    pub rules: Vec<Rule>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: false,
            dry_run: false,
            max_running: 2,
            history: 50,
            rules: Vec::new(),
        }
    }
}

/// A configuration error; `rule` names the rule it is about, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub rule: Option<String>,
    /// The key the error is about (for locating the line).
    pub key: Option<&'static str>,
    pub msg: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            Some(r) => write!(f, "reactions rule {r}: {}", self.msg),
            None => write!(f, "reactions: {}", self.msg),
        }
    }
}

fn err(rule: &Rule, key: &'static str, msg: impl Into<String>) -> ConfigError {
    ConfigError {
        rule: Some(rule.name.to_string()),
        key: Some(key),
        msg: msg.into(),
    }
}

impl Config {
    /// Checks across fields and rules (the file's syntax is checked while it
    /// is read).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let top = |key, msg: String| ConfigError {
            rule: None,
            key: Some(key),
            msg,
        };
        if !(1..=16).contains(&self.max_running) {
            return Err(top(
                "max_running",
                format!("max_running {} is out of range 1..=16", self.max_running),
            ));
        }
        if !(1..=1000).contains(&self.history) {
            return Err(top(
                "history",
                format!("history {} is out of range 1..=1000", self.history),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for r in &self.rules {
            if !seen.insert(&r.name) {
                return Err(err(r, "name", "a rule of this name is defined twice"));
            }
            if r.on.is_empty() {
                return Err(err(r, "on", "`on` must name at least one trigger"));
            }
            let has = |k| r.on.contains(&k);
            match (has(TriggerKind::Pressure), &r.pressure) {
                (true, None) => {
                    return Err(err(
                        r,
                        "on",
                        "`on: pressure` needs `pressure: {some_avg10: PERCENT, for_s: SECONDS}`",
                    ))
                }
                (false, Some(_)) => {
                    return Err(err(
                        r,
                        "pressure",
                        "`pressure:` is set but `on` lacks pressure",
                    ))
                }
                (true, Some(p)) => {
                    if !(p.some_avg10 > 0.0 && p.some_avg10 <= 100.0) {
                        return Err(err(
                            r,
                            "some_avg10",
                            format!(
                                "pressure.some_avg10 {} is out of range (0, 100]",
                                p.some_avg10
                            ),
                        ));
                    }
                    if !(1..=3600).contains(&p.for_s) {
                        return Err(err(
                            r,
                            "for_s",
                            format!("pressure.for_s {} is out of range 1..=3600", p.for_s),
                        ));
                    }
                }
                (false, None) => {}
            }
            match (has(TriggerKind::Idle), &r.idle) {
                (true, None) => {
                    return Err(err(r, "on", "`on: idle` needs `idle: {after_s: SECONDS}`"))
                }
                (false, Some(_)) => {
                    return Err(err(r, "idle", "`idle:` is set but `on` lacks idle"))
                }
                (true, Some(i)) if i.after_s == 0 => {
                    return Err(err(r, "after_s", "idle.after_s must be at least 1"))
                }
                _ => {}
            }
            if !r.families.is_empty() && r.on.iter().all(|k| *k == TriggerKind::Pressure) {
                return Err(err(
                    r,
                    "families",
                    "`families` does not apply to pressure (a session, not an agent)",
                ));
            }
            if r.debounce_s > 86_400 {
                return Err(err(
                    r,
                    "debounce_s",
                    format!("debounce_s {} is out of range 0..=86400", r.debounce_s),
                ));
            }
            match r.action {
                ActionKind::Log => {
                    if r.command.is_some() || r.user.is_some() || !r.env.is_empty() {
                        return Err(err(
                            r,
                            "action",
                            "`action: log` takes no command, user or env",
                        ));
                    }
                }
                ActionKind::Run => {
                    if r.command.is_none() {
                        return Err(err(
                            r,
                            "action",
                            "`action: run` needs `command: [PATH, ARG...]`",
                        ));
                    }
                    match &r.user {
                        None => {
                            return Err(err(
                                r,
                                "action",
                                "`action: run` needs `user:` (a user name, a uid, or `agent` for the agent's owner)",
                            ))
                        }
                        Some(UserSpec::Agent) if has(TriggerKind::Pressure) => {
                            return Err(err(
                                r,
                                "user",
                                "`user: agent` cannot serve a pressure trigger (it has no agent)",
                            ))
                        }
                        _ => {}
                    }
                    if !(1..=3600).contains(&r.timeout_s) {
                        return Err(err(
                            r,
                            "timeout_s",
                            format!("timeout_s {} is out of range 1..=3600", r.timeout_s),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks against this system: every command is an executable file and
    /// every named user exists. Run at start and on reload, and by `check`.
    pub fn check_system(&self) -> Result<(), ConfigError> {
        self.check_system_with(Path::new(users::PASSWD))
    }

    pub fn check_system_with(&self, passwd: &Path) -> Result<(), ConfigError> {
        use std::os::unix::fs::PermissionsExt;
        for r in &self.rules {
            if let Some(cmd) = &r.command {
                let prog = &cmd.as_slice()[0];
                match std::fs::metadata(prog) {
                    Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {}
                    Ok(_) => {
                        return Err(err(
                            r,
                            "command",
                            format!("{prog} is not an executable file"),
                        ))
                    }
                    Err(e) => return Err(err(r, "command", format!("{prog}: {e}"))),
                }
            }
            match &r.user {
                Some(UserSpec::Name(n)) => {
                    if users::by_name(passwd, n).is_none() {
                        return Err(err(
                            r,
                            "user",
                            format!("no user {n:?} in {}", passwd.display()),
                        ));
                    }
                }
                Some(UserSpec::Uid(_)) | Some(UserSpec::Agent) | None => {}
            }
        }
        Ok(())
    }

    /// The rule names that use `kind`.
    pub fn rules_on(&self, kind: TriggerKind) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(move |r| r.on.contains(&kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        let c: Config = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn defaults_are_off() {
        let c = parse("{}").unwrap();
        assert!(!c.enabled);
        assert_eq!(c.max_running, 2);
        assert!(c.rules.is_empty());
    }

    #[test]
    fn full_rule() {
        let c = parse(
            "enabled: true
rules:
  - name: checkpoint
    on: [crash, oom_kill]
    families: [claude-code]
    action: run
    command: [/usr/bin/true, x]
    user: agent
    env: {GIT_AUTHOR_NAME: agentcgd}
  - name: squeeze
    on: [pressure]
    pressure: {some_avg10: 20, for_s: 10}
    action: log
  - name: nap
    on: [idle]
    idle: {after_s: 600}
    action: run
    command: [/bin/true]
    user: 1000
",
        )
        .unwrap();
        let r = &c.rules[0];
        assert_eq!(r.debounce_s, 30);
        assert_eq!(r.timeout_s, 10);
        assert_eq!(r.debounce_per, DebouncePer::Workspace);
        assert_eq!(r.user, Some(UserSpec::Agent));
        assert_eq!(c.rules[2].user, Some(UserSpec::Uid(1000)));
        assert_eq!(c.rules[1].pressure.unwrap().for_s, 10);
    }

    #[test]
    fn syntax_errors_carry_lines() {
        let e = serde_norway::from_str::<Config>(
            "enabled: true\nrules:\n  - name: a\n    on: [crash]\n    action: run\n    command: [bin/sh]\n",
        )
        .unwrap_err();
        // Errors inside a rule point at least at the rule's first line.
        assert_eq!(e.location().map(|l| l.line()), Some(3), "{e}");
        assert!(e.to_string().contains("rules[0]: command[0]"), "{e}");
        assert!(e.to_string().contains("absolute path"), "{e}");
        let e = serde_norway::from_str::<Config>(
            "enabled: true\nrules:\n  - name: a\n    on: [crash]\n    action: log\n  - name: b\n    on: [crash]\n    action: run\n    command: [bin/sh]\n",
        )
        .unwrap_err();
        assert_eq!(e.location().map(|l| l.line()), Some(6), "{e}");
        let e =
            serde_norway::from_str::<Config>("rules:\n  - name: a\n    on: [boom]\n").unwrap_err();
        assert!(matches!(e.location().map(|l| l.line()), Some(2 | 3)), "{e}");
        let e = serde_norway::from_str::<Config>("rules:\n  - name: A b\n").unwrap_err();
        assert_eq!(e.location().map(|l| l.line()), Some(2), "{e}");
        let e =
            serde_norway::from_str::<Config>("rules:\n  - name: a\n    shell: x\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `shell`"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_rule() {
        let cases = [
            ("- name: a\n  on: [crash]\n  action: run\n  user: root\n", "needs `command"),
            ("- name: a\n  on: [crash]\n  action: run\n  command: [/bin/true]\n", "needs `user:`"),
            ("- name: a\n  on: [crash]\n  action: log\n  command: [/bin/true]\n", "takes no command"),
            ("- name: a\n  on: [pressure]\n  action: log\n", "needs `pressure:"),
            ("- name: a\n  on: [crash]\n  pressure: {some_avg10: 5, for_s: 1}\n  action: log\n", "lacks pressure"),
            ("- name: a\n  on: [pressure]\n  pressure: {some_avg10: 0, for_s: 1}\n  action: log\n", "out of range"),
            ("- name: a\n  on: [idle]\n  action: log\n", "needs `idle:"),
            ("- name: a\n  on: []\n  action: log\n", "at least one"),
            ("- name: a\n  on: [pressure]\n  pressure: {some_avg10: 5, for_s: 1}\n  action: run\n  command: [/bin/true]\n  user: agent\n", "no agent"),
            ("- name: a\n  on: [pressure]\n  families: [x]\n  pressure: {some_avg10: 5, for_s: 1}\n  action: log\n", "does not apply"),
            ("- name: a\n  on: [crash]\n  action: run\n  command: [/bin/true]\n  user: root\n  timeout_s: 0\n", "timeout_s 0"),
            ("- name: a\n  on: [crash]\n  action: log\n- name: a\n  on: [crash]\n  action: log\n", "twice"),
        ];
        for (rules, want) in cases {
            let text = format!("rules:\n{}", indent(rules));
            let e = parse(&text).unwrap_err();
            assert!(e.contains("rule a:") && e.contains(want), "{text}\n-> {e}");
        }
        assert!(parse("max_running: 0").unwrap_err().contains("max_running"));
    }

    fn indent(s: &str) -> String {
        s.lines().map(|l| format!("  {l}\n")).collect()
    }

    #[test]
    fn system_checks() {
        let d = tempfile::tempdir().unwrap();
        let passwd = d.path().join("passwd");
        std::fs::write(
            &passwd,
            "root:x:0:0:root:/root:/bin/sh\nbob:x:1000:1000::/home/bob:/bin/sh\n",
        )
        .unwrap();
        let ok = parse("rules:\n  - name: a\n    on: [crash]\n    action: run\n    command: [/bin/sh]\n    user: bob\n")
            .unwrap();
        ok.check_system_with(&passwd).unwrap();
        let bad_user = parse("rules:\n  - name: a\n    on: [crash]\n    action: run\n    command: [/bin/sh]\n    user: carol\n")
            .unwrap();
        let e = bad_user.check_system_with(&passwd).unwrap_err();
        assert!(e.to_string().contains("no user \"carol\""), "{e}");
        assert_eq!(e.key, Some("user"));
        let missing = parse("rules:\n  - name: a\n    on: [crash]\n    action: run\n    command: [/nonexistent/x]\n    user: bob\n")
            .unwrap();
        let e = missing.check_system_with(&passwd).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x"), "{e}");
        let notexec = parse(&format!(
            "rules:\n  - name: a\n    on: [crash]\n    action: run\n    command: [{}]\n    user: bob\n",
            passwd.display()
        ))
        .unwrap();
        assert!(notexec
            .check_system_with(&passwd)
            .unwrap_err()
            .to_string()
            .contains("not an executable"));
    }
}
