//! `agentcgd top` as a person uses it: in a terminal (tmux), as a non-root
//! user, reading a state file; the screen is read back with capture-pane.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn agent(id: &str, state: &str, cpu: f64, mem: u64, gpu: Option<u64>, since: u64) -> String {
    let family = id.rsplit_once('-').unwrap().0;
    format!(
        r#"{{"id":"{id}","family":"{family}","root_pid":1,"root_start_ticks":1,"started_at_ms":0,
        "cgroups":["/agentcg/session_high/{id}","/agentcg/session_low/{id}"],"pids":4,"state":"{state}",
        "state_since_ms":{since},"transitions":2,"history":[],"cpu_percent":null,
        "usage":{{"cpu_usec":1,"cpu_user_usec":1,"cpu_system_usec":0,"cpu_percent":{cpu},"memory_bytes":{mem},
        "memory_peak_bytes":{peak},"anon_bytes":null,"file_bytes":null,"oom_kills":null,"processes":4,
        "tasks":null,"open_fds":null,"io_read_bytes":null,"io_write_bytes":null,
        "gpu_memory_bytes":{gpu},"gpu_util_percent":null,
        "sources":{{"cpu":"cgroup","memory":"proc","memory_peak":"proc","oom_kills":"none","pids":"cgroup","io":"none","gpu":"nvml"}},
        "sessions":[],"sampled_at_ms":0}}}}"#,
        peak = mem * 2,
        gpu = gpu.map_or("null".into(), |g| g.to_string()),
    )
}

fn state(agents: &[String]) -> String {
    format!(
        r#"{{"version":"test","daemon_pid":1,"running":true,"dry_run":false,"started_at_ms":0,
        "updated_at_ms":{now},"root":"/sys/fs/cgroup/agentcg",
        "cgroup":{{"enabled":[],"missing":[],"weights":[],"warnings":[]}},
        "sessions":[],"families":[],
        "procmon":{{"backend":"bpf","fallback_reasons":[],"exec_events":0,"exit_events":0,"lost_events":0}},
        "policy":{{"dir":"","config":"","loaded_at_ms":0,"last_error":null}},
        "counters":{{"placed":0,"already_placed":0,"vanished":0,"pid_reused":0,"errors":0,"protected_skipped":0,"reconciles":0,"policy_reloads":0}},
        "activity":"bpf","oom_kills":[],"processes":[],
        "gpu":{{"state":"available","devices":[{{"index":0,"name":"Fake","memory_used_bytes":0,"memory_total_bytes":0,"processes":0}}]}},
        "agents":[{}]}}"#,
        agents.join(","),
        now = now_ms()
    )
}

fn write_state(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .unwrap()
    }
    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }
    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(Instant::now() < end, "{what}; screen:\n{s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // Our own server only (-L socket), never another session's.
        let _ = self.run(&["kill-server"]);
    }
}

/// Agent ids in screen order.
fn order(screen: &str) -> Vec<String> {
    screen
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.contains('-') && w.chars().last().is_some_and(|c| c.is_ascii_digit()))
        .map(str::to_string)
        .collect()
}

#[test]
fn top_in_tmux_sorts_refreshes_and_quits() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("SKIP: tmux not installed");
        return;
    }
    let dir = std::env::temp_dir().join(format!("agentcg-top-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.join("state.json");
    let now = now_ms();
    let three = [
        agent(
            "claude-code-101",
            "active",
            12.5,
            300 << 20,
            Some(2 << 30),
            now,
        ),
        agent("aider-202", "idle", 0.0, 900 << 20, None, now - 65_000),
        agent("codex-303", "active", 87.0, 40 << 20, None, now),
    ];
    write_state(&path, &state(&three));

    let bin = env!("CARGO_BIN_EXE_agentcgd");
    let cmd = format!("{bin} top --state {}", path.display());
    // As a non-root user where we are root (nobody can read the state file,
    // as anyone can read /run/agentcgd/state.json).
    // SAFETY: geteuid has no preconditions.
    let as_user = if unsafe { libc::geteuid() } == 0 && Path::new("/usr/sbin/runuser").exists() {
        format!("/usr/sbin/runuser -u nobody -- {cmd}")
    } else {
        cmd
    };
    let t = Tmux {
        socket: format!("agentcg-top-{}", std::process::id()),
    };
    let out = t.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "150",
        "-y",
        "30",
        &as_user,
    ]);
    assert!(out.status.success(), "{out:?}");

    let s = t.wait_for("top shows its three agents", |s| order(s).len() == 3);
    assert!(s.contains("3 agents (2 active)"), "{s}");
    assert!(s.contains("sort: cpu"), "{s}");
    assert_eq!(
        order(&s),
        ["codex-303", "claude-code-101", "aider-202"],
        "{s}"
    );
    let aider = s.lines().find(|l| l.starts_with("aider-202")).unwrap();
    assert!(
        aider.contains("high+low") && aider.contains(" idle "),
        "{aider}"
    );
    assert!(aider.contains("900.0M") && aider.contains("1m0"), "{aider}");
    let claude = s
        .lines()
        .find(|l| l.starts_with("claude-code-101"))
        .unwrap();
    assert!(
        claude.contains("2.0G") && claude.contains("12.5"),
        "{claude}"
    );

    // m: by memory.
    t.run(&["send-keys", "-t", "top", "m"]);
    let s = t.wait_for("sorted by memory", |s| s.contains("sort: memory"));
    assert_eq!(
        order(&s),
        ["aider-202", "claude-code-101", "codex-303"],
        "{s}"
    );
    // r: reversed.
    t.run(&["send-keys", "-t", "top", "r"]);
    let s = t.wait_for("reversed", |s| s.contains("(reversed)"));
    assert_eq!(
        order(&s),
        ["codex-303", "claude-code-101", "aider-202"],
        "{s}"
    );

    // The daemon writes a new state: codex exited. Gone within a refresh.
    write_state(&path, &state(&three[..2]));
    let s = t.wait_for("codex-303 gone after a refresh", |s| order(s).len() == 2);
    assert!(!s.contains("codex-303"), "{s}");

    // q quits: the pane's command ends, so the session does.
    t.run(&["send-keys", "-t", "top", "q"]);
    let end = Instant::now() + Duration::from_secs(5);
    while t.run(&["has-session", "-t", "top"]).status.success() {
        assert!(
            Instant::now() < end,
            "top did not quit on q: {}",
            t.screen()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn top_once_without_a_terminal_and_a_missing_state_file() {
    let bin = env!("CARGO_BIN_EXE_agentcgd");
    let out = Command::new(bin)
        .args(["top", "--once", "--state", "/nonexistent/state.json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read state file /nonexistent/state.json"),
        "{err}"
    );
}
