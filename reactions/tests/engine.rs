//! The engine with real processes: commands run, get their environment and
//! user, are debounced, time out, and the queue stays bounded.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reactions::{Agent, Config, Engine, Exit, Options, Trigger};

fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

fn config(text: &str) -> Config {
    let c: Config = serde_norway::from_str(text).unwrap();
    c.validate().unwrap();
    c.check_system().unwrap();
    c
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn agent(family: &str, pid: u32, cwd: &Path) -> Agent {
    let mut a = Agent::new(family, pid);
    a.uid = Some(0);
    a.cwd = Some(cwd.to_path_buf());
    a.cgroup = Some(PathBuf::from("/sys/fs/cgroup/agentcg/session_high"));
    a
}

fn crash(a: &Agent) -> Trigger {
    Trigger::Crash {
        agent: a.clone(),
        exit: Exit::Signal(11),
    }
}

#[test]
fn crash_runs_the_command_once_with_the_event_environment() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("env.out");
    // World-writable directory: the command may run as nobody.
    let spool = d.path().join("spool");
    fs::create_dir(&spool).unwrap();
    // SAFETY: chmod on our own temp dir.
    unsafe {
        let c = std::ffi::CString::new(spool.to_str().unwrap()).unwrap();
        libc::chmod(c.as_ptr(), 0o1777);
        let c = std::ffi::CString::new(d.path().to_str().unwrap()).unwrap();
        libc::chmod(c.as_ptr(), 0o755);
    }
    let target = spool.join("env.out");
    let cmd = script(
        d.path(),
        "dump",
        &format!("{{ id -u; env | grep -E '^(AGENTCG_|HOME=|PATH=|EXTRA=|SECRET_FROM_DAEMON=)' | sort; }} > {}", target.display()),
    );
    let root = unsafe { libc::geteuid() } == 0;
    let user = if root { "nobody" } else { "agent" };
    let cfg = config(&format!(
        "enabled: true
rules:
  - name: dump
    on: [crash]
    families: [claude-code]
    action: run
    command: [{}]
    user: {user}
    env: {{EXTRA: 'a b'}}
",
        cmd.display()
    ));
    // The daemon's own environment must not leak into actions.
    std::env::set_var("SECRET_FROM_DAEMON", "x");
    let e = Engine::start(cfg, Options::default());
    let ws = d.path().join("ws");
    e.trigger(crash(&agent("claude-code", 4711, &ws)));
    // Another family and a clean exit do not match.
    e.trigger(crash(&agent("aider", 4712, &ws)));
    e.trigger(Trigger::Crash {
        agent: agent("claude-code", 4713, &ws),
        exit: Exit::Code(0),
    });
    assert!(
        wait_for(Duration::from_secs(10), || e.status().counters.runs == 1),
        "{:#?}",
        e.status()
    );
    std::thread::sleep(Duration::from_millis(300));
    let st = e.status();
    assert_eq!(st.counters.runs, 1, "{st:#?}");
    assert_eq!(st.counters.triggers, 3);
    let rec = &st.runs[0];
    assert_eq!(rec.exit.as_deref(), Some("exit:0"), "{rec:#?}");
    assert_eq!(rec.agent.as_deref(), Some("claude-code-4711"));
    assert!(!rec.killed_by_timeout);
    let text = fs::read_to_string(&target).unwrap();
    let _ = out;
    let lines: Vec<&str> = text.lines().collect();
    if root {
        assert_eq!(lines[0], "65534", "runs as the configured user: {text}");
    }
    for want in [
        "AGENTCG_EVENT=crash",
        "AGENTCG_FAMILY=claude-code",
        "AGENTCG_AGENT=claude-code-4711",
        "AGENTCG_PID=4711",
        "AGENTCG_CGROUP=/sys/fs/cgroup/agentcg/session_high",
        "AGENTCG_EXIT=signal:SIGSEGV",
        "AGENTCG_RULE=dump",
        "EXTRA=a b",
    ] {
        assert!(lines.contains(&want), "missing {want} in:\n{text}");
    }
    assert!(
        lines.contains(&format!("AGENTCG_CWD={}", ws.display()).as_str()),
        "{text}"
    );
    assert!(!text.contains("SECRET_FROM_DAEMON"), "{text}");
    e.stop();
}

#[test]
fn two_crashes_within_the_debounce_run_once() {
    let d = tempfile::tempdir().unwrap();
    let count = d.path().join("count");
    let cmd = script(
        d.path(),
        "count",
        &format!("echo $AGENTCG_PID >> {}", count.display()),
    );
    let cfg = config(&format!(
        "enabled: true
rules:
  - name: ws
    on: [crash, oom_kill]
    action: run
    command: [{c}]
    user: agent
  - name: per-agent
    on: [crash]
    debounce_per: agent
    debounce_s: 30
    action: run
    command: [{c}]
    user: agent
",
        c = cmd.display()
    ));
    let e = Engine::start(cfg, Options::default());
    let ws = d.path().join("ws");
    // An agent restarted in the same workspace crashes twice, then is
    // OOM-killed: `ws` (per workspace) runs once, `per-agent` once per pid.
    e.trigger(crash(&agent("codex", 100, &ws)));
    e.trigger(crash(&agent("codex", 101, &ws)));
    e.trigger(crash(&agent("codex", 101, &ws)));
    e.trigger(Trigger::OomKill {
        agent: agent("codex", 101, &ws),
        pid: 150,
    });
    assert!(wait_for(Duration::from_secs(10), || e
        .status()
        .counters
        .runs
        == 3));
    std::thread::sleep(Duration::from_millis(300));
    let st = e.status();
    assert_eq!(st.counters.runs, 3, "{st:#?}");
    // ws: 101, 101, the OOM kill; per-agent: the second 101.
    assert_eq!(st.counters.debounced, 4, "{st:#?}");
    let by_rule = |r: &str| st.runs.iter().filter(|x| x.rule == r).count();
    assert_eq!(by_rule("ws"), 1);
    assert_eq!(by_rule("per-agent"), 2);
    e.stop();
}

#[test]
fn a_hanging_command_is_killed_at_its_timeout_without_blocking_triggers() {
    let d = tempfile::tempdir().unwrap();
    let pids = d.path().join("pids");
    let hang = script(
        d.path(),
        "hang",
        &format!(
            "sleep 600 & echo $! >> {p}; echo $$ >> {p}; wait",
            p = pids.display()
        ),
    );
    let cfg = config(&format!(
        "enabled: true
max_running: 1
rules:
  - name: hang
    on: [crash]
    debounce_s: 0
    timeout_s: 1
    action: run
    command: [{}]
    user: agent
  - name: note
    on: [crash]
    debounce_s: 0
    action: log
",
        hang.display()
    ));
    let e = Engine::start(cfg, Options::default());
    let ws = d.path().join("ws");
    e.trigger(crash(&agent("codex", 1, &ws)));
    assert!(wait_for(Duration::from_secs(5), || e
        .status()
        .running
        .len()
        == 1));
    // While it hangs, triggers are still taken (and logged) at once.
    for i in 0..5 {
        e.trigger(crash(&agent("codex", 10 + i, &ws)));
    }
    let st = e.status();
    assert_eq!(st.counters.logged, 6, "log actions are not held up");
    assert!(st.queued >= 4, "{st:#?}");
    assert!(
        wait_for(Duration::from_secs(10), || e
            .status()
            .runs
            .iter()
            .any(|r| r.killed_by_timeout)),
        "{:#?}",
        e.status()
    );
    let st = e.status();
    let rec = st.runs.iter().find(|r| r.killed_by_timeout).unwrap();
    assert_eq!(rec.exit.as_deref(), Some("signal:SIGKILL"));
    assert!(rec.duration_ms >= 1000, "{rec:#?}");
    // The whole group died, the background sleep included.
    let first: Vec<i32> = fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .take(2)
        .map(|l| l.parse().unwrap())
        .collect();
    for pid in first {
        assert!(
            wait_for(Duration::from_secs(2), || {
                let s = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                s.is_empty() || s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z'))
            }),
            "pid {pid} of the timed-out group survived"
        );
    }
    // Stopping kills what still runs and returns promptly.
    let t = Instant::now();
    e.stop();
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_hundred_triggers_at_once_fill_the_queue_and_count_drops() {
    let d = tempfile::tempdir().unwrap();
    let slow = script(d.path(), "slow", "sleep 0.2");
    let cfg = config(&format!(
        "enabled: true
max_running: 2
history: 10
rules:
  - name: slow
    on: [oom_kill]
    debounce_per: agent
    action: run
    command: [{}]
    user: agent
",
        slow.display()
    ));
    let e = Engine::start(cfg, Options::default());
    let ws = d.path().join("ws");
    for i in 0..100 {
        e.trigger(Trigger::OomKill {
            agent: agent("codex", 1000 + i, &ws),
            pid: 5000 + i,
        });
    }
    let st = e.status();
    assert_eq!(st.counters.triggers, 100);
    assert_eq!(st.counters.queued + st.counters.dropped_queue_full, 100);
    assert!(st.queued <= reactions::QUEUE_CAPACITY);
    // At most the queue plus the commands already started were accepted.
    assert!(
        st.counters.dropped_queue_full >= 100 - 32 - 2,
        "{:#?}",
        st.counters
    );
    assert!(st.running.len() <= 2);
    // Everything accepted runs to the end; nothing stalls.
    let accepted = st.counters.queued;
    assert!(
        wait_for(Duration::from_secs(60), || e.status().counters.runs
            == accepted),
        "{:#?}",
        e.status().counters
    );
    let st = e.status();
    assert_eq!(st.counters.failed, 0, "{:#?}", st.runs.last());
    assert_eq!(st.runs.len(), 10, "history is bounded by `history`");
    e.stop();
}

#[test]
fn dry_run_records_and_runs_nothing() {
    let d = tempfile::tempdir().unwrap();
    let marker = d.path().join("ran");
    let cmd = script(d.path(), "touch", &format!("touch {}", marker.display()));
    let cfg = config(&format!(
        "enabled: true\nrules:\n  - name: t\n    on: [crash]\n    action: run\n    command: [{}]\n    user: agent\n",
        cmd.display()
    ));
    let e = Engine::start(
        cfg,
        Options {
            dry_run: true,
            ..Options::default()
        },
    );
    e.trigger(crash(&agent("codex", 1, d.path())));
    assert!(wait_for(Duration::from_secs(5), || e
        .status()
        .counters
        .runs
        == 1));
    let st = e.status();
    assert!(st.dry_run && st.runs[0].dry_run);
    assert!(!marker.exists(), "dry-run ran the command");
    e.stop();
}

/// One pressure rule: session_high's "some avg10" at or above 20 for 1 s.
const SQUEEZE: &str = "enabled: true\nrules:\n  - name: squeeze\n    on: [pressure]\n    pressure: {some_avg10: 20, for_s: 1}\n    debounce_s: 0\n    action: log\n";
const CALM: &str = "some avg10=0.00 avg60=0.00 avg300=0.00 total=10\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=5\n";
const HOT: &str = "some avg10=42.50 avg60=10.00 avg300=2.00 total=900000\nfull avg10=30.00 avg60=0.00 avg300=0.00 total=5\n";

/// An engine sampling `psi` as session_high's memory.pressure.
fn pressure_engine(cfg: &str, psi: &std::path::Path) -> Engine {
    Engine::start(
        config(cfg),
        Options {
            pressure_file: Some(psi.to_path_buf()),
            pressure_session: "session_high".into(),
            ..Options::default()
        },
    )
}

#[test]
fn sustained_pressure_fires_once_per_episode() {
    let d = tempfile::tempdir().unwrap();
    let psi = d.path().join("memory.pressure");
    fs::write(&psi, CALM).unwrap();
    let e = pressure_engine(SQUEEZE, &psi);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(e.status().counters.logged, 0, "calm: nothing fires");
    fs::write(&psi, HOT).unwrap();
    assert!(wait_for(Duration::from_secs(6), || e
        .status()
        .counters
        .logged
        == 1));
    // Still above: the same episode does not fire again.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(e.status().counters.logged, 1);
    let st = e.status();
    assert!(
        st.runs[0].event.contains("session_high"),
        "{:?}",
        st.runs[0]
    );
    // Calm, then hot again: a new episode.
    fs::write(&psi, CALM).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    fs::write(&psi, HOT).unwrap();
    assert!(wait_for(Duration::from_secs(6), || e
        .status()
        .counters
        .logged
        == 2));
    // A missing file is reported as unavailable, not pretended.
    fs::remove_file(&psi).unwrap();
    assert!(wait_for(Duration::from_secs(4), || e
        .status()
        .unavailable
        .iter()
        .any(|u| u.contains("cannot read"))));
    e.stop();
}

#[test]
fn reconfigure_keeps_debounce_and_reports_unavailable_triggers() {
    let cfg = config("enabled: true\nrules:\n  - name: l\n    on: [crash]\n    action: log\n");
    let e = Engine::start(
        cfg.clone(),
        Options {
            unavailable: vec![(
                reactions::TriggerKind::Idle,
                "not available until the activity monitor exists".into(),
            )],
            ..Options::default()
        },
    );
    let d = tempfile::tempdir().unwrap();
    e.trigger(crash(&agent("codex", 1, d.path())));
    assert_eq!(e.status().counters.logged, 1);
    e.reconfigure(config(
        "enabled: true\nrules:\n  - name: l\n    on: [crash]\n    action: log\n  - name: nap\n    on: [idle]\n    idle: {after_s: 60}\n    action: log\n",
    ));
    e.trigger(crash(&agent("codex", 1, d.path())));
    let st = e.status();
    assert_eq!(st.counters.logged, 1, "debounce survives a reload");
    assert_eq!(st.counters.debounced, 1);
    assert_eq!(
        st.unavailable,
        vec!["idle (rule nap): not available until the activity monitor exists".to_string()]
    );
    e.reload_failed("agentcgd.yaml:3: bad".into());
    assert!(e.status().last_error.is_some());
    // Off: triggers are ignored entirely.
    e.reconfigure(Config::default());
    e.trigger(crash(&agent("codex", 2, d.path())));
    assert_eq!(e.status().counters.triggers, 2);
    e.stop();
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn the_shipped_workspace_checkpoint_saves_edits_without_touching_the_tree() {
    if std::process::Command::new("git")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIP: no git on this machine");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/workspace-checkpoint");
    let d = tempfile::tempdir().unwrap();
    let ws = d.path().join("repo");
    fs::create_dir_all(ws.join("src")).unwrap();
    git(&ws, &["init", "-q"]);
    fs::write(ws.join("src/a.txt"), "one\n").unwrap();
    fs::write(ws.join(".gitignore"), "*.log\n").unwrap();
    git(&ws, &["add", "-A"]);
    git(&ws, &["commit", "-qm", "base"]);
    // The agent's unsaved work: an edit, a new file, an ignored file, and a
    // staged change that must stay staged.
    fs::write(ws.join("src/a.txt"), "one\ntwo\n").unwrap();
    fs::write(ws.join("src/new.txt"), "new\n").unwrap();
    fs::write(ws.join("debug.log"), "noise\n").unwrap();
    fs::write(ws.join("staged.txt"), "s\n").unwrap();
    git(&ws, &["add", "staged.txt"]);
    let head = git(&ws, &["rev-parse", "HEAD"]);
    let status_before = git(&ws, &["status", "--porcelain"]);
    let cfg = config(&format!(
        "enabled: true\nrules:\n  - name: ckpt\n    on: [crash]\n    action: run\n    command: [{}, --keep, '2']\n    user: agent\n",
        script.display()
    ));
    let e = Engine::start(cfg, Options::default());
    // The agent ran in a subdirectory of the work tree.
    e.trigger(Trigger::Crash {
        agent: agent("claude-code", 1, &ws.join("src")),
        exit: Exit::Code(1),
    });
    assert!(wait_for(Duration::from_secs(20), || e
        .status()
        .counters
        .runs
        == 1));
    let st = e.status();
    let rec = &st.runs[0];
    assert_eq!(rec.exit.as_deref(), Some("exit:0"), "{rec:#?}");
    assert!(rec.output.contains("saved"), "{rec:#?}");
    let refs = git(
        &ws,
        &[
            "for-each-ref",
            "--format=%(refname)",
            "refs/agentcgd/checkpoints/",
        ],
    );
    let r = refs.lines().next().expect("a checkpoint ref");
    assert!(r.ends_with("-claude-code-1"), "{r}");
    assert_eq!(git(&ws, &["show", &format!("{r}:src/a.txt")]), "one\ntwo");
    assert_eq!(git(&ws, &["show", &format!("{r}:src/new.txt")]), "new");
    assert_eq!(git(&ws, &["show", &format!("{r}:staged.txt")]), "s");
    assert!(
        !git(&ws, &["ls-tree", "-r", "--name-only", r]).contains("debug.log"),
        "ignored files are not saved"
    );
    assert_eq!(git(&ws, &["rev-parse", &format!("{r}^")]), head);
    assert!(git(&ws, &["log", "-1", "--format=%B", r]).contains("crash of claude-code-1 (exit:1)"));
    // Nothing the agent left was changed.
    assert_eq!(git(&ws, &["rev-parse", "HEAD"]), head);
    assert_eq!(git(&ws, &["status", "--porcelain"]), status_before);
    assert_eq!(git(&ws, &["stash", "list"]), "");
    e.stop();
    // --keep 2: older checkpoints are pruned.
    for i in 0..2 {
        std::thread::sleep(Duration::from_millis(1100)); // distinct names
        let out = std::process::Command::new(&script)
            .args(["--keep", "2"])
            .env("AGENTCG_CWD", &ws)
            .env("AGENTCG_AGENT", format!("x-{i}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let refs = git(
        &ws,
        &[
            "for-each-ref",
            "--format=%(refname)",
            "refs/agentcgd/checkpoints/",
        ],
    );
    assert_eq!(refs.lines().count(), 2, "{refs}");
    assert!(
        !refs.contains("claude-code-1"),
        "the oldest was pruned: {refs}"
    );
    // Not a git work tree: a message, exit 0.
    let out = std::process::Command::new(&script)
        .env("AGENTCG_CWD", d.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("not in a git work tree"));
}

#[test]
fn a_pressure_rule_added_by_a_reload_is_sampled() {
    // Without a pressure rule the sampler sleeps until a reload wakes it.
    let d = tempfile::tempdir().unwrap();
    let psi = d.path().join("memory.pressure");
    fs::write(&psi, HOT).unwrap();
    let e = pressure_engine("enabled: true\nrules: []\n", &psi);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(e.status().counters.logged, 0, "no rule: nothing fires");
    e.reconfigure(config(SQUEEZE));
    assert!(
        wait_for(Duration::from_secs(6), || e.status().counters.logged == 1),
        "{:?}",
        e.status()
    );
    e.stop();
}
