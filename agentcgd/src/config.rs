//! agentcgd.yaml: daemon-wide settings. Every key is optional; a missing file
//! means all defaults. Unknown keys are errors, reported with file and line.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::policy::ToolRule;

/// The shipped agentcgd.yaml: its `tools:` list is also the default when a
/// host's file has no `tools:` key (or there is no file at all).
const SHIPPED: &str = include_str!("../../policies/agentcgd.yaml");

/// The shared tools rules of the shipped agentcgd.yaml.
pub fn default_tools() -> Vec<ToolRule> {
    #[derive(Deserialize)]
    struct ToolsOnly {
        #[serde(default)]
        tools: Vec<ToolRule>,
    }
    static TOOLS: std::sync::OnceLock<Vec<ToolRule>> = std::sync::OnceLock::new();
    TOOLS
        .get_or_init(|| {
            serde_norway::from_str::<ToolsOnly>(SHIPPED)
                .expect("the shipped policies/agentcgd.yaml parses (a unit test checks it)")
                .tools
        })
        .clone()
}

/// Who may ask for a priority themselves: `AGENTCG_PRIORITY=high|low` in an
/// agent's environment, `agentcgd run --priority`. Asking for low is always
/// allowed; asking for high only for the users and groups listed here (by
/// name or number; `"*"` is everyone). root always may.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserPriority {
    pub high_users: Vec<String>,
    pub high_groups: Vec<String>,
}

impl Default for UserPriority {
    fn default() -> Self {
        Self {
            high_users: vec!["*".into()],
            high_groups: vec![],
        }
    }
}

impl UserPriority {
    /// May a process of `uid` with groups `gids` ask for session_high?
    pub fn may_ask_high(&self, uid: u32, gids: &[u32]) -> bool {
        use nix::unistd::{Group, User};
        if uid == 0 || self.high_users.iter().any(|u| u == "*") {
            return true;
        }
        let user_ok = self.high_users.iter().any(|u| match u.parse::<u32>() {
            Ok(n) => n == uid,
            Err(_) => User::from_name(u)
                .ok()
                .flatten()
                .is_some_and(|x| x.uid.as_raw() == uid),
        });
        user_ok
            || self.high_groups.iter().any(|g| {
                let gid = match g.parse::<u32>() {
                    Ok(n) => Some(n),
                    Err(_) => Group::from_name(g).ok().flatten().map(|x| x.gid.as_raw()),
                };
                gid.is_some_and(|gid| gids.contains(&gid))
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// cgroup v2 cpu.weight, 1..=10000.
    pub cpu_weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sessions {
    pub high: SessionConfig,
    pub low: SessionConfig,
    /// One leaf cgroup per agent instance (`session_*/<family>-<pid>`);
    /// `false` keeps every process directly in its session cgroup.
    pub per_agent: bool,
    /// Past this many agent instances, new ones share one leaf per family
    /// and session (`<family>-shared`).
    pub max_agents: usize,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            high: SessionConfig { cpu_weight: 150 },
            low: SessionConfig { cpu_weight: 50 },
            per_agent: true,
            max_agents: 1024,
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig { cpu_weight: 100 }
    }
}

/// `activity:`: whether the activity monitor (sched_switch/sched_wakeup
/// BPF, observing only) runs, and how long a family stays quiet before
/// it counts as idle. With `enabled: false`, `status` says it is off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActivityConfig {
    pub enabled: bool,
    pub idle_threshold_ms: u64,
}

impl Default for ActivityConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            idle_threshold_ms: 2000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub sessions: Sessions,
    pub scheduler: scheduler::Config,
    pub memcg: memcg::Config,
    pub activity: ActivityConfig,
    /// Reactive actions (off unless `reactions.enabled`); see docs/reactions.md.
    pub reactions: reactions::Config,
    /// Tools rules shared by every family (tried after a family's own):
    /// test runners, package installs, compilers, builds.
    pub tools: Vec<ToolRule>,
    pub user_priority: UserPriority,
    /// Per-agent accounting (docs/accounting.md).
    pub accounting: accounting::Config,
    /// Prometheus metrics: off unless the section is present.
    pub metrics: Option<crate::metrics::MetricsConfig>,
    /// Strict mode: session_high by rule only for root-controlled
    /// executables or listed users/groups (docs/security.md).
    pub trust: crate::trust::TrustConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sessions: Sessions::default(),
            scheduler: scheduler::Config::default(),
            memcg: memcg::Config::default(),
            activity: ActivityConfig::default(),
            reactions: reactions::Config::default(),
            tools: default_tools(),
            user_priority: UserPriority::default(),
            accounting: accounting::Config::default(),
            metrics: None,
            trust: crate::trust::TrustConfig::default(),
        }
    }
}

impl Config {
    /// Load `path`; a missing file gives the defaults (and says so in `source`).
    #[cfg(test)]
    pub fn load(path: &Path) -> Result<(Config, String), String> {
        Self::load_with(path, crate::trust::FileTrust::Any)
    }

    /// `load`, the file (if present) checked as `trust` says: the daemon
    /// refuses an agentcgd.yaml that someone other than root can change.
    pub fn load_with(
        path: &Path,
        trust: crate::trust::FileTrust,
    ) -> Result<(Config, String), String> {
        let text = match crate::trust::read_file(path, trust, crate::limits::MAX_FILE_BYTES) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((
                    Config::default(),
                    format!("defaults ({} not found)", path.display()),
                ))
            }
            Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
        };
        let cfg = Self::parse(&text).map_err(|e| format!("{}:{e}", path.display()))?;
        // Commands and users must exist here (refused at start, kept on reload).
        cfg.reactions
            .check_system()
            .map_err(|e| format!("{}:{}", path.display(), locate_reaction(&text, &e)))?;
        Ok((cfg, path.display().to_string()))
    }

    /// Parse and validate; errors are `LINE: message` or ` message`.
    pub fn parse(text: &str) -> Result<Config, String> {
        // An empty file (or only comments) means defaults.
        if text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            return Ok(Config::default());
        }
        crate::limits::check_depth(text).map_err(|(l, m)| format!("{l}: {m}"))?;
        let cfg: Config = serde_norway::from_str(text).map_err(|e| {
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            match e.location() {
                Some(l) => format!("{}: {msg}", l.line()),
                None => format!(" {msg}"),
            }
        })?;
        for (name, s) in [("high", &cfg.sessions.high), ("low", &cfg.sessions.low)] {
            if !(1..=10000).contains(&s.cpu_weight) {
                let line = key_line(text, "cpu_weight", name);
                return Err(format!(
                    "{}: sessions.{name}.cpu_weight {} is out of range 1..=10000",
                    line.map(|l| l.to_string()).unwrap_or_default(),
                    s.cpu_weight
                ));
            }
        }
        if cfg.sessions.max_agents == 0 {
            let line = key_line(text, "max_agents", "sessions");
            return Err(format!(
                "{}: sessions.max_agents must be at least 1 (per_agent: false turns leaves off)",
                line.map(|l| l.to_string()).unwrap_or_default()
            ));
        }
        if cfg.tools.len() > crate::limits::MAX_RULES {
            return Err(format!(
                " {} tools rules, more than the limit of {}",
                cfg.tools.len(),
                crate::limits::MAX_RULES
            ));
        }
        cfg.scheduler.validate().map_err(|e| format!(" {e}"))?;
        cfg.accounting.validate().map_err(|e| {
            let line = key_line(text, "interval_ms", "accounting")
                .or_else(|| key_line(text, "max_procs", "accounting"));
            format!("{}: {e}", line.map(|l| l.to_string()).unwrap_or_default())
        })?;
        cfg.memcg.validate().map_err(|e| format!(" memcg: {e}"))?;
        cfg.reactions
            .validate()
            .map_err(|e| locate_reaction(text, &e))?;
        Ok(cfg)
    }
}

/// `LINE: message` for a reactions error: the line of the key it is about
/// inside its rule (found by the rule's `name:`), else the rule's line,
/// else the key's line under `reactions:`.
fn locate_reaction(text: &str, e: &reactions::ConfigError) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let section = lines
        .iter()
        .position(|l| l.starts_with("reactions:"))
        .unwrap_or(0);
    let line = match &e.rule {
        Some(rule) => {
            let is_name = |l: &str| {
                let l = l.trim_start().trim_start_matches("- ").trim_start();
                l.strip_prefix("name:").is_some_and(|v| {
                    v.trim().trim_matches(|c| c == '"' || c == '\'') == rule.as_str()
                })
            };
            let start = lines
                .iter()
                .skip(section)
                .position(|l| is_name(l))
                .map(|i| i + section);
            start.map(|start| {
                // The rule ends where the next list item at its indent starts.
                let end = lines
                    .iter()
                    .enumerate()
                    .skip(start + 1)
                    .find(|(_, l)| l.trim_start().starts_with("- name:"))
                    .map(|(i, _)| i)
                    .unwrap_or(lines.len());
                e.key
                    .and_then(|k| {
                        (start..end).find(|&i| {
                            let t = lines[i].trim_start().trim_start_matches("- ");
                            t.starts_with(&format!("{k}:"))
                                || t.contains(&format!("{{{k}:"))
                                || t.contains(&format!(", {k}:"))
                        })
                    })
                    .unwrap_or(start)
                    + 1
            })
        }
        None => e.key.and_then(|k| key_line(text, k, "reactions:")),
    };
    match line {
        Some(l) => format!("{l}: {e}"),
        None => format!(" {e}"),
    }
}

/// Best-effort line of `key` after the line that mentions `section`.
fn key_line(text: &str, key: &str, section: &str) -> Option<usize> {
    let start = text.lines().position(|l| l.contains(section))?;
    text.lines()
        .enumerate()
        .skip(start)
        .find(|(_, l)| l.contains(key))
        .map(|(i, _)| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_and_accounting_sections() {
        let c = Config::parse("sessions: {}\n").unwrap();
        assert_eq!(c.metrics, None, "metrics are off by default");
        assert!(c.accounting.enabled && c.accounting.gpu);
        let c = Config::parse("metrics: {}\n").unwrap();
        assert_eq!(
            c.metrics.unwrap().listen.0.to_string(),
            "127.0.0.1:9464",
            "loopback when on"
        );
        let c = Config::parse("metrics:\n  listen: \"0.0.0.0:9100\"\n").unwrap();
        assert_eq!(c.metrics.unwrap().listen.0.port(), 9100);
        let e = Config::parse("sessions: {}\nmetrics:\n  listen: nowhere\n").unwrap_err();
        assert!(e.starts_with("3: ") && e.contains("not an IP:port"), "{e}");
        let e = Config::parse("sessions: {}\naccounting:\n  interval_ms: 5\n").unwrap_err();
        assert!(e.starts_with("3: ") && e.contains("below 100"), "{e}");
        let e = Config::parse("accounting:\n  gpus: true\n").unwrap_err();
        assert!(e.starts_with("2: ") && e.contains("unknown field"), "{e}");
    }

    #[test]
    fn defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.sessions.high.cpu_weight, 150);
        assert_eq!(c.sessions.low.cpu_weight, 50);
        assert!(c.scheduler.enabled && c.memcg.enabled && c.activity.enabled);
        assert_eq!(c.activity.idle_threshold_ms, 2000);
        assert_eq!(
            Config::parse("# only a comment\n").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn partial_and_shipped() {
        let c = Config::parse("sessions:\n  low: {cpu_weight: 10}\nscheduler: {enabled: false}\n")
            .unwrap();
        assert_eq!(c.sessions.low.cpu_weight, 10);
        assert_eq!(c.sessions.high.cpu_weight, 150);
        assert!(!c.scheduler.enabled);
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/agentcgd.yaml");
        let (c, src) = Config::load(&shipped).unwrap();
        assert_eq!(c.sessions.high.cpu_weight, 150);
        assert!(src.ends_with("agentcgd.yaml"));
    }

    #[test]
    fn errors_have_lines() {
        let e = Config::parse("sessions:\n  high: {cpu_weight: 150}\n  mid: {cpu_weight: 1}\n")
            .unwrap_err();
        assert!(
            e.starts_with("3: ") && e.contains("unknown field `mid`"),
            "{e}"
        );
        let e = Config::parse("sessions:\n  high:\n    cpu_weight: 0\n").unwrap_err();
        assert!(e.starts_with("3: ") && e.contains("out of range"), "{e}");
        let e = Config::parse("scheduler: {enabled: maybe}\n").unwrap_err();
        assert!(e.starts_with("1: "), "{e}");
    }

    #[test]
    fn reactions_errors_have_lines() {
        let text = "sessions:\n  high: {cpu_weight: 150}\nreactions:\n  enabled: true\n  rules:\n    - name: log-it\n      on: [crash]\n      action: log\n    - name: save\n      on: [crash]\n      action: run\n      command: [/bin/true]\n      timeout_s: 0\n      user: root\n";
        let e = Config::parse(text).unwrap_err();
        assert!(
            e.starts_with("13: ") && e.contains("rule save: timeout_s 0"),
            "{e}"
        );
        let e = Config::parse(
            &text
                .replace("      timeout_s: 0\n", "")
                .replace("      user: root\n", ""),
        )
        .unwrap_err();
        assert!(e.starts_with("11: ") && e.contains("needs `user:`"), "{e}");
        let e = Config::parse("reactions:\n  enabled: true\n  max_running: 99\n").unwrap_err();
        assert!(e.starts_with("3: ") && e.contains("max_running"), "{e}");
        let e = Config::parse("reactions:\n  rules:\n    - name: a\n      on: [crash]\n      action: run\n      command: [sh]\n")
            .unwrap_err();
        assert!(e.starts_with("3: ") && e.contains("absolute path"), "{e}");
        // Checked against the system at load: a missing command.
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("agentcgd.yaml");
        std::fs::write(&f, "reactions:\n  rules:\n    - name: a\n      on: [crash]\n      action: run\n      command: [/nonexistent/save]\n      user: root\n").unwrap();
        let e = Config::load(&f).unwrap_err();
        assert!(
            e.contains("agentcgd.yaml:6: ") && e.contains("/nonexistent/save"),
            "{e}"
        );
    }

    #[test]
    fn shared_tools_default_to_the_shipped_list() {
        let c = Config::parse("").unwrap();
        let blocks: usize = c.tools.iter().map(|t| t.matches.len()).sum();
        assert!(blocks > 30, "shipped tools blocks: {blocks}");
        assert!(c
            .tools
            .iter()
            .all(|t| t.priority == crate::policy::Priority::Low));
        let own = Config::parse("tools:\n  - match: [{comm: make}]\n    priority: high\n").unwrap();
        assert_eq!(own.tools.len(), 1, "a tools: key replaces the defaults");
        let none = Config::parse("tools: []\n").unwrap();
        assert!(none.tools.is_empty());
        let e =
            Config::parse("tools:\n  - match: [{comm: make}]\n    priority: mid\n").unwrap_err();
        assert!(e.starts_with("3: "), "{e}");
        // Every shipped rule can be prefiltered at exec time.
        for t in &c.tools {
            for b in &t.matches {
                assert!(
                    crate::prefilter::block_key(b).is_some(),
                    "no prefilter key: {b:?}"
                );
            }
        }
    }

    #[test]
    fn shipped_tools_catch_tool_runs_not_servers() {
        let tools = default_tools();
        let is_tool = |comm: &str, argv: &[&str]| {
            let p = procmon::ProcInfo {
                pid: 9,
                ppid: 8,
                uid: 1000,
                comm: comm.into(),
                exe: String::new(),
                argv: argv.iter().map(|s| s.to_string()).collect(),
                start_ticks: 1,
                kernel_thread: false,
            };
            tools.iter().any(|t| {
                t.matches
                    .iter()
                    .any(|b| b.matches(&p, &crate::policy::NoParents))
            })
        };
        // As the kernel shows them: #! scripts have comm = script name and
        // argv[0] = the interpreter.
        for (comm, argv) in [
            ("pytest", &["/v/bin/python3", "/v/bin/pytest", "-q"][..]),
            ("python3", &["python3", "-m", "pytest", "-x"][..]),
            (
                "pip",
                &["/usr/bin/python3", "/usr/bin/pip", "install", "x"][..],
            ),
            ("node", &["node", "/usr/bin/npm", "install"][..]),
            ("node", &["node", "/p/node_modules/.bin/jest"][..]),
            ("cargo", &["cargo", "test"][..]),
            ("go", &["go", "test", "./..."][..]),
            ("make", &["make", "-j4"][..]),
            ("clang-19", &["clang-19", "-c", "x.c"][..]),
            ("rustc", &["rustc", "--crate-name", "x"][..]),
        ] {
            assert!(is_tool(comm, argv), "{comm} {argv:?} is a tool run");
        }
        for (comm, argv) in [
            ("node", &["node", "server.js"][..]),
            ("clangd", &["clangd"][..]),
            ("git", &["git", "status"][..]),
            ("bash", &["/bin/bash", "-c", "ls"][..]),
            ("python3", &["python3", "app.py"][..]),
            ("pip", &["/usr/bin/python3", "/usr/bin/pip", "list"][..]),
        ] {
            assert!(!is_tool(comm, argv), "{comm} {argv:?} is not a tool run");
        }
    }

    #[test]
    fn user_priority_high_needs_listing() {
        let d = UserPriority::default();
        assert!(d.may_ask_high(1000, &[]), "everyone by default");
        let c =
            Config::parse("user_priority: {high_users: [\"4242\"], high_groups: [\"77\", root]}\n")
                .unwrap()
                .user_priority;
        assert!(c.may_ask_high(0, &[]), "root always");
        assert!(c.may_ask_high(4242, &[]));
        assert!(!c.may_ask_high(4243, &[5]));
        assert!(c.may_ask_high(4243, &[5, 77]));
        assert!(c.may_ask_high(4243, &[0]), "group root by name");
    }

    #[test]
    fn missing_file_is_defaults() {
        let (c, src) = Config::load(Path::new("/nonexistent/agentcgd.yaml")).unwrap();
        assert_eq!(c, Config::default());
        assert!(src.contains("not found"));
    }
}
