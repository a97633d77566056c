//! Host root tests: the real daemon, real BPF events, real placement on the
//! host's cgroup2 mount. Each test gets its own ROOT and policy directory.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod common;

use common::*;

#[test]
fn places_by_comm_argv_exe_and_leaves_unmatched_alone() {
    let Some(mount) = env_or_skip() else { return };
    let mut fx = Fixture::new("match", mount);
    fx.policy("10-fake.yaml", &families(fx.tag()));
    let exe_tool = fx.tool("exeagent", "/bin/sleep");
    fx.policy(
        "20-argv.yaml",
        &format!(
            "family: argv-agent\npriority: low\nmatch:\n  - argv: [\"sleep\", \"31.5\"]\n  - exe: \"{}\"\n",
            exe_tool.display()
        ),
    );
    let daemon = fx.daemon(&[]);
    fx.wait_ready();
    let by_comm = fx.tool(&format!("agent-{}", fx.tag()), "/bin/sleep");
    let p_comm = fx.spawn(Command::new(&by_comm).arg("30"));
    let p_argv = fx.spawn(Command::new("sleep").arg("31.5"));
    let p_exe = fx.spawn(Command::new(&exe_tool).arg("30"));
    let p_none = fx.spawn(Command::new("sleep").arg("32"));
    let high = fx.session("session_high");
    let low = fx.session("session_low");
    assert_in_session(p_comm, &high, "comm");
    assert_in_session(p_argv, &low, "argv");
    assert_in_session(p_exe, &low, "exe");
    let before = session_of(p_none);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        session_of(p_none),
        before,
        "unmatched process must not move"
    );
    assert!(!before.contains("agentcg-test"));
    let took = stop(daemon);
    assert!(took < Duration::from_secs(1), "SIGTERM took {took:?}");
    // Stopping leaves processes where they are.
    assert_eq!(session_of(p_comm), high);
    let st = fx.status_json();
    assert_eq!(st["running"], false);
    assert_eq!(st["procmon"]["backend"], "bpf", "{}", st["procmon"]);
}

#[test]
fn descendants_stay_with_family_and_tools_go_low() {
    let Some(mount) = env_or_skip() else { return };
    let mut fx = Fixture::new("desc", mount);
    fx.policy("10-fake.yaml", &families(fx.tag()));
    let daemon = fx.daemon(&[]);
    fx.wait_ready();
    let agent = fx.tool(&format!("agent-{}", fx.tag()), "/bin/bash");
    let tool = fx.tool(&format!("tool-{}", fx.tag()), "/bin/sleep");
    let pids = fx.dir.path().join("pids");
    // The agent forks a subshell that execs `sleep` (unmatched: inherits) and
    // runs the tool (tools rule: low).
    let script = format!(
        "sleep 30 & echo $! > {p}.child; {t} 30 & echo $! > {p}.tool; wait",
        p = pids.display(),
        t = tool.display()
    );
    let agent_pid = fx.spawn(Command::new(&agent).args(["-c", &script]));
    let read = |ext: &str| -> Option<u32> {
        fs::read_to_string(pids.with_extension(ext))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    assert!(wait_for(Duration::from_secs(3), || read("child").is_some()
        && read("tool").is_some()));
    let (child, toolp) = (read("child").unwrap(), read("tool").unwrap());
    let high = fx.session("session_high");
    let low = fx.session("session_low");
    assert_in_session(agent_pid, &high, "agent_pid");
    assert_in_session(child, &high, "child");
    assert_in_session(toolp, &low, "tool");
    // The tracker knows both as fake-agent, with the reason.
    assert!(
        wait_for(Duration::from_secs(2), || {
            let st = fx.status_json();
            let procs = st["processes"].as_array().cloned().unwrap_or_default();
            let find = |pid: u32| procs.iter().find(|p| p["pid"] == pid).cloned();
            matches!((find(child), find(toolp)), (Some(c), Some(t))
            // The subshell is a fork of the agent (same comm): caught by the
            // children walk before its exec it matched the family's rule
            // itself (a nested match, then a re-exec), else it inherited.
            if c["family"] == "fake-agent"
                && (c["reason"]["kind"] == "inherited" || c["reason"]["kind"] == "reexec")
            && t["family"] == "fake-agent" && t["reason"]["kind"] == "tool" && t["priority"] == "low")
        }),
        "status: {}",
        fx.status_json()["processes"]
    );
    stop(daemon);
}

#[test]
fn restart_after_kill9_adopts_tree_and_keeps_placing() {
    let Some(mount) = env_or_skip() else { return };
    let mut fx = Fixture::new("restart", mount);
    fx.policy("10-fake.yaml", &families(fx.tag()));
    let mut daemon = fx.daemon(&[]);
    fx.wait_ready();
    let agent = fx.tool(&format!("agent-{}", fx.tag()), "/bin/sleep");
    let first = fx.spawn(Command::new(&agent).arg("30"));
    let high = fx.session("session_high");
    assert_in_session(first, &high, "first");
    assert!(wait_for(Duration::from_secs(2), || fx.status_json()
        ["processes"]
        .as_array()
        .is_some_and(|a| a.iter().any(|p| p["pid"] == first))));
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    // Started while no daemon runs: must be found by the start-up scan.
    let during = fx.spawn(Command::new(&agent).arg("30"));
    std::thread::sleep(Duration::from_millis(100));
    assert_ne!(session_of(during), high);
    fs::remove_file(fx.state()).ok(); // wait_ready looks for a fresh state file
    let daemon = fx.daemon(&[]);
    fx.wait_ready();
    assert_eq!(session_of(first), high, "placement survived kill -9");
    assert_in_session(during, &high, "during");
    let after = fx.spawn(Command::new(&agent).arg("30"));
    assert_in_session(after, &high, "after");
    let tracked = || -> Vec<u64> {
        fx.status_json()["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pid"].as_u64().unwrap())
            .collect()
    };
    assert!(
        wait_for(Duration::from_secs(2), || [first, during, after]
            .iter()
            .all(|p| tracked().contains(&(*p as u64)))),
        "not all tracked: {:?}",
        tracked()
    );
    stop(daemon);
}

#[test]
fn broken_policy_refuses_start_and_reload_keeps_last_good() {
    let Some(mount) = env_or_skip() else { return };
    let mut fx = Fixture::new("broken", mount);
    fx.policy(
        "10-fake.yaml",
        &format!(
            "family: fake-agent\npriority: high\nmatch:\n  - comm: agent-{}\n    cmd: x\n",
            fx.tag()
        ),
    );
    let out = fx.command().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("10-fake.yaml:5:") && err.contains("unknown field `cmd`"),
        "{err}"
    );
    assert!(!fx.root.exists(), "nothing created on a refused start");

    let check = Command::new(BIN)
        .args(["check", "--policies"])
        .arg(fx.policies())
        .output()
        .unwrap();
    assert!(!check.status.success());
    assert!(String::from_utf8_lossy(&check.stderr).contains("10-fake.yaml:5:"));

    // Good policy: start; then break it at runtime.
    fx.policy("10-fake.yaml", &families(fx.tag()));
    let check = Command::new(BIN)
        .args(["check", "--policies"])
        .arg(fx.policies())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("fake-agent -> session_high"));
    let daemon = fx.daemon(&[]);
    fx.wait_ready();
    fx.policy("10-fake.yaml", "family: fake-agent\npriority: [\n");
    assert!(wait_for(Duration::from_secs(3), || fx.status_json()
        ["policy"]["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("10-fake.yaml:"))));
    let agent = fx.tool(&format!("agent-{}", fx.tag()), "/bin/sleep");
    let p = fx.spawn(Command::new(&agent).arg("30"));
    let high = fx.session("session_high");
    assert!(
        wait_for(Duration::from_secs(2), || session_of(p) == high),
        "last good policy still places"
    );
    // A fixed file is picked up and clears the error.
    fx.policy("10-fake.yaml", &families(fx.tag()));
    assert!(wait_for(Duration::from_secs(3), || fx.status_json()
        ["policy"]["last_error"]
        .is_null()));
    stop(daemon);
}

#[test]
fn dry_run_changes_nothing_and_explain_says_why() {
    let Some(mount) = env_or_skip() else { return };
    let mut fx = Fixture::new("dry", mount);
    fx.policy("10-fake.yaml", &families(fx.tag()));
    let daemon = fx.daemon(&["--dry-run"]);
    fx.wait_ready();
    let agent = fx.tool(&format!("agent-{}", fx.tag()), "/bin/sleep");
    let p = fx.spawn(Command::new(&agent).arg("30"));
    assert!(wait_for(Duration::from_secs(2), || fx.status_json()
        ["processes"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x["pid"] == p))));
    assert!(!fx.root.exists(), "dry-run must not create the tree");
    assert!(!session_of(p).contains("agentcg-test"));
    assert!(fx.log().contains(&format!("dry-run: would place pid {p}")));
    let out = Command::new(BIN)
        .args(["explain", &p.to_string(), "--policies"])
        .arg(fx.policies())
        .arg("--state")
        .arg(fx.state())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("family fake-agent -> session_high because match block 1 of"),
        "{text}"
    );
    let me = Command::new(BIN)
        .args(["explain", &std::process::id().to_string(), "--policies"])
        .arg(fx.policies())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&me.stdout).contains("no rule"));
    let gone = Command::new(BIN)
        .args(["explain", "999999999"])
        .output()
        .unwrap();
    assert!(!gone.status.success());
    stop(daemon);
}

#[test]
fn refuses_non_cgroup2_root() {
    let Some(_) = env_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg(dir.path().join("agentcg"))
        .arg("--policies")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not on a cgroup v2"));
}

/// AGENTCG_PRIORITY in an agent root's environment picks its session; its
/// descendants follow; tools still go low; explain (no daemon) says why.
#[test]
fn agentcg_priority_env_picks_the_session() {
    let Some(mount) = env_or_skip() else { return };
    let mut fx = Fixture::new("envprio", mount);
    fx.policy("10-fake.yaml", &families(fx.tag()));
    let daemon = fx.daemon(&[]);
    fx.wait_ready();
    let agent = fx.tool(&format!("agent-{}", fx.tag()), "/bin/bash");
    let pids = fx.dir.path().join("pids");
    let script = format!("sleep 30 & echo $! > {}; wait", pids.display());
    let low_agent = fx.spawn(
        Command::new(&agent)
            .args(["-c", &script])
            .env("AGENTCG_PRIORITY", "low"),
    );
    // (`; true`: bash would exec a lone command and stop being the agent)
    let plain = fx.spawn(Command::new(&agent).args(["-c", "sleep 30; true"]));
    let bad = fx.spawn(
        Command::new(&agent)
            .args(["-c", "sleep 30; true"])
            .env("AGENTCG_PRIORITY", "secret-value-7781"),
    );
    let high = fx.session("session_high");
    let low = fx.session("session_low");
    assert!(
        wait_for(Duration::from_secs(3), || session_of(low_agent) == low),
        "AGENTCG_PRIORITY=low agent in {}",
        session_of(low_agent)
    );
    assert!(wait_for(Duration::from_secs(3), || fs::read_to_string(
        &pids
    )
    .is_ok_and(|s| !s.trim().is_empty())));
    let child: u32 = fs::read_to_string(&pids).unwrap().trim().parse().unwrap();
    assert_in_session(child, &low, "its child");
    assert_in_session(plain, &high, "plain");
    assert!(
        wait_for(Duration::from_secs(2), || session_of(bad) == high),
        "a bad value is ignored"
    );
    assert!(
        !fx.log().contains("secret-value-7781"),
        "the variable's value must never be logged"
    );
    stop(daemon);
    // explain without a daemon reads the same variable and says so.
    let out = Command::new(BIN)
        .args(["explain", &low_agent.to_string(), "--policies"])
        .arg(fx.policies())
        .arg("--state")
        .arg(fx.state())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("daemon: not running"), "{text}");
    assert!(
        text.contains("-> session_low because match block 1 of")
            && text.contains("AGENTCG_PRIORITY=low"),
        "{text}"
    );
    let out = Command::new(BIN)
        .args(["explain", &child.to_string(), "--policies"])
        .arg(fx.policies())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "-> session_low because descendant of pid {low_agent}"
        )),
        "{text}"
    );
}

/// `agentcgd run` as an ordinary user: the command is in its session from
/// its first instruction (it reads its own cgroup), the daemon tracks it,
/// and asking for session_high obeys user_priority.
#[test]
fn run_places_itself_before_exec_for_an_ordinary_user() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let Some(mount) = env_or_skip() else { return };
    let fx = Fixture::new("run", mount);
    fs::set_permissions(fx.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(
        fx.dir.path().join("agentcgd.yaml"),
        "user_priority: {high_users: [\"0\"], high_groups: []}\n",
    )
    .unwrap();
    fx.policy("10-fake.yaml", &families(fx.tag()));
    let daemon = fx.daemon(&[]);
    fx.wait_ready();
    assert!(wait_for(Duration::from_secs(5), || fx
        .dir
        .path()
        .join("agentcgd.sock")
        .exists()));
    let nobody = 65534;
    let run = |prio: &str, cmd: &[&str]| {
        Command::new(BIN)
            .args(["run", "--priority", prio, "--family", "my-bot", "--state"])
            .arg(fx.state())
            .arg("--")
            .args(cmd)
            .uid(nobody)
            .gid(nobody)
            .output()
            .unwrap()
    };
    let out = run("low", &["cat", "/proc/self/cgroup"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        // Its own agent leaf: session_low/my-bot-<pid>.
        text.lines()
            .any(|l| l.starts_with(&format!("0::{}/my-bot-", fx.session("session_low")))),
        "the command's first look at its cgroup: {text}"
    );
    let env = run("low", &["printenv", "AGENTCG_PRIORITY"]);
    assert_eq!(String::from_utf8_lossy(&env.stdout).trim(), "low");
    // nobody may not ask for session_high here.
    let out = run("high", &["true"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("may not ask for session_high"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A long-running one is tracked as started by `agentcgd run`.
    let mut child = Command::new(BIN)
        .args(["run", "--priority", "low", "--family", "my-bot", "--state"])
        .arg(fx.state())
        .args(["--", "sleep", "30"])
        .uid(nobody)
        .gid(nobody)
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(
        wait_for(Duration::from_secs(3), || {
            fx.status_json()["processes"].as_array().is_some_and(|a| {
                a.iter().any(|p| {
                    p["pid"] == pid
                    && p["family"] == "my-bot"
                    // "launched", or after the exec "reexec" of it
                    && (p["reason"]["kind"] == "launched"
                        || p["reason"]["previous"]["kind"] == "launched")
                })
            })
        }),
        "{}",
        fx.status_json()["processes"]
    );
    let _ = child.kill();
    let _ = child.wait();
    stop(daemon);
    assert!(
        !fx.dir.path().join("agentcgd.sock").exists(),
        "the stopped daemon's socket is left behind"
    );
    // Without a daemon an ordinary user is refused, never run unplaced.
    let out = run("low", &["true"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refusing to start true outside its cgroup"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_zombie_agent_found_by_the_scan_leaves_no_leaf_behind() {
    // Writing a zombie's pid to cgroup.procs succeeds and moves nothing:
    // a leaf made for it would never be populated, and no notice would
    // ever remove it (seen in VM case 22 after a reconciling scan).
    let Some(mount) = env_or_skip() else { return };
    let mut fx = Fixture::new("zombie", mount);
    fx.policy("10-fake.yaml", &families(fx.tag()));
    let agent = fx.tool(&format!("agent-{}", fx.tag()), "/bin/true");
    // Exits at once; the fixture reaps it only at its end: a zombie.
    let zpid = fx.spawn(&mut Command::new(&agent));
    assert!(wait_for(Duration::from_secs(2), || {
        fs::read_to_string(format!("/proc/{zpid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
    }));
    // A live agent too, so the scan certainly ran when it is placed.
    let live =
        fx.spawn(Command::new(fx.tool(&format!("agent-{}-l", fx.tag()), "/bin/sleep")).arg("30"));
    fx.policy(
        "20-live.yaml",
        &format!(
            "family: live-agent\npriority: high\nmatch:\n  - comm: agent-{}-l\n",
            fx.tag()
        ),
    );
    let daemon = fx.daemon(&["--no-scheduler", "--no-memcg"]);
    fx.wait_ready();
    assert_in_session(live, &fx.session("session_high"), "live agent");
    std::thread::sleep(Duration::from_millis(300));
    let leaf = fx
        .root
        .join("session_high")
        .join(format!("fake-agent-{zpid}"));
    assert!(
        !leaf.exists(),
        "a leaf for the zombie {zpid} stays: {}; log:\n{}",
        leaf.display(),
        fx.log()
    );
    stop(daemon);
}

/// Each agent instance gets its own leaves: `session_high/<family>-<pid>`
/// for it and what stays with it, `session_low/<family>-<pid>` for its
/// tools; a nested match stays in its instance; status lists the agents;
/// a leaf goes as soon as it is empty; `per_agent: false` keeps it flat.
#[test]
fn per_agent_leaves_hold_each_agent_and_go_when_empty() {
    let Some(mount) = env_or_skip() else { return };
    let mut fx = Fixture::new("leaves", mount);
    fx.policy("10-fake.yaml", &families(fx.tag()));
    let daemon = fx.daemon(&["--no-scheduler", "--no-memcg"]);
    fx.wait_ready();
    let agent = fx.tool(&format!("agent-{}", fx.tag()), "/bin/bash");
    let tool = fx.tool(&format!("tool-{}", fx.tag()), "/bin/sleep");
    let pids = fx.dir.path().join("pids");
    // Agent A: a child that inherits, a tool (low), and a nested agent
    // (matches the family's own rule inside A: stays in A).
    let script = format!(
        "sleep 30 & echo $! > {p}.child; {t} 30 & echo $! > {p}.tool; \
         {a} -c 'sleep 30' & echo $! > {p}.nested; wait",
        p = pids.display(),
        t = tool.display(),
        a = agent.display()
    );
    let a = fx.spawn(Command::new(&agent).args(["-c", &script]));
    let b = fx.spawn(Command::new(&agent).args(["-c", "sleep 30"]));
    let read = |ext: &str| -> Option<u32> {
        fs::read_to_string(pids.with_extension(ext))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    assert!(wait_for(Duration::from_secs(3), || [
        "child", "tool", "nested"
    ]
    .iter()
    .all(|e| read(e).is_some())));
    let leaf = |s: &str, pid: u32| format!("{}/fake-agent-{pid}", fx.session(s));
    let want = [
        (a, leaf("session_high", a)),
        (read("child").unwrap(), leaf("session_high", a)),
        (read("nested").unwrap(), leaf("session_high", a)),
        (read("tool").unwrap(), leaf("session_low", a)),
        (b, leaf("session_high", b)),
    ];
    for (pid, cg) in &want {
        assert!(
            wait_for(Duration::from_secs(2), || cgroup_of(*pid) == *cg),
            "pid {pid} in {}, want {cg}; log:\n{}",
            cgroup_of(*pid),
            fx.log()
        );
    }
    // status: one entry per instance, with its leaves and process count.
    let agents = |st: &serde_json::Value| st["agents"].as_array().cloned().unwrap_or_default();
    assert!(
        wait_for(Duration::from_secs(3), || {
            let st = fx.status_json();
            let list = agents(&st);
            let find = |pid: u32| list.iter().find(|x| x["root_pid"] == pid).cloned();
            matches!((find(a), find(b)), (Some(x), Some(y))
                if x["id"] == format!("fake-agent-{a}") && x["family"] == "fake-agent"
                && x["cgroups"].as_array().map(|c| c.len()) == Some(2)
                && x["pids"].as_u64() >= Some(4)
                && y["pids"].as_u64() >= Some(1))
                && list.len() == 2
        }),
        "status agents: {}",
        fx.status_json()["agents"]
    );
    // A's whole tree ends: both its leaves go, B's stays.
    for (pid, _) in &want[..4] {
        nix_kill(*pid, libc::SIGKILL);
    }
    let high_a = fx.root.join("session_high").join(format!("fake-agent-{a}"));
    let low_a = fx.root.join("session_low").join(format!("fake-agent-{a}"));
    assert!(
        wait_for(Duration::from_secs(3), || !high_a.exists()
            && !low_a.exists()),
        "empty leaves not removed: {} {}",
        high_a.exists(),
        low_a.exists()
    );
    assert!(fx
        .root
        .join("session_high")
        .join(format!("fake-agent-{b}"))
        .is_dir());
    assert!(
        wait_for(Duration::from_secs(3), || {
            let list = agents(&fx.status_json());
            list.len() == 1 && list[0]["root_pid"] == b
        }),
        "status agents after A ended: {}",
        fx.status_json()["agents"]
    );
    stop(daemon);

    // sessions.per_agent: false: the flat layout, no leaves.
    fs::write(
        fx.dir.path().join("agentcgd.yaml"),
        "sessions:\n  per_agent: false\n",
    )
    .unwrap();
    let daemon = fx.daemon(&["--no-scheduler", "--no-memcg"]);
    fx.wait_ready();
    let c = fx.spawn(Command::new(&agent).args(["-c", "sleep 30"]));
    assert!(
        wait_for(Duration::from_secs(2), || cgroup_of(c)
            == fx.session("session_high")),
        "flat layout: {}; log:\n{}",
        cgroup_of(c),
        fx.log()
    );
    assert!(fx.status_json()["agents"]
        .as_array()
        .is_none_or(|l| l.is_empty()));
    stop(daemon);
}

/// The fixture's daemon started with RLIMIT_NOFILE `soft`/`hard`, ready.
fn daemon_with_fd_limit(fx: &Fixture, soft: u64, hard: u64) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let daemon = fx.daemon_with(&["--no-scheduler", "--no-memcg"], |c| {
        // SAFETY: setrlimit is async-signal-safe; nothing else runs here.
        unsafe {
            c.pre_exec(move || {
                nix::sys::resource::setrlimit(
                    nix::sys::resource::Resource::RLIMIT_NOFILE,
                    soft,
                    hard,
                )
                .map_err(std::io::Error::from)
            });
        }
    });
    fx.wait_ready();
    daemon
}

/// The soft limit on open files a shell or systemd hands the daemon (1024)
/// holds about 220 agents (two leaves of two descriptors each): the daemon
/// raises it to the hard limit, so each agent still gets its own leaf.
/// Here with a soft limit of 64 and 30 agents at once.
#[test]
fn agents_get_their_own_leaves_past_a_low_soft_fd_limit() {
    let Some(mount) = env_or_skip() else { return };
    let mut fx = Fixture::new("fdlimit", mount);
    fx.policy("10-fake.yaml", &families(fx.tag()));
    let daemon = daemon_with_fd_limit(&fx, 64, 4096);
    let limits = fs::read_to_string(format!("/proc/{}/limits", daemon.id())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| {
            l.split_whitespace()
                .skip(3)
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let agent = fx.tool(&format!("agent-{}", fx.tag()), "/bin/bash");
    let pids: Vec<u32> = (0..30)
        .map(|_| fx.spawn(Command::new(&agent).args(["-c", "sleep 30"])))
        .collect();
    let want = |pid: u32| format!("{}/fake-agent-{pid}", fx.session("session_high"));
    let placed = wait_for(Duration::from_secs(10), || {
        pids.iter().all(|&p| cgroup_of(p) == want(p))
    });
    let elsewhere: Vec<String> = pids
        .iter()
        .filter(|&&p| cgroup_of(p) != want(p))
        .map(|&p| format!("{p}: {}", cgroup_of(p)))
        .collect();
    stop(daemon);
    assert!(
        placed,
        "agents not in their own leaves: {elsewhere:?}; log:\n{}",
        fx.log()
    );
    assert_eq!(
        open_files, "4096 4096",
        "the daemon's soft limit was not raised"
    );
}

/// Where even the hard limit on open files is short of leaves for every
/// agent, the daemon says so at start and gives the agents past what it
/// holds their family's shared leaf: placed, none failed, none taken for an
/// exit. A hard limit of 168 holds 10 agents' leaves beside the 128
/// descriptors kept for the rest.
#[test]
fn agents_past_what_the_fd_limit_holds_share_their_family_leaf() {
    let Some(mount) = env_or_skip() else { return };
    let mut fx = Fixture::new("fdhard", mount);
    fx.policy("10-fake.yaml", &families(fx.tag()));
    let daemon = daemon_with_fd_limit(&fx, 168, 168);
    let agent = fx.tool(&format!("agent-{}", fx.tag()), "/bin/bash");
    let pids: Vec<u32> = (0..30)
        .map(|_| fx.spawn(Command::new(&agent).args(["-c", "sleep 30"])))
        .collect();
    let high = fx.session("session_high");
    let own = |p: u32| cgroup_of(p) == format!("{high}/fake-agent-{p}");
    let shared = |p: u32| cgroup_of(p) == format!("{high}/fake-agent-shared");
    let placed = wait_for(Duration::from_secs(10), || {
        pids.iter().all(|&p| own(p) || shared(p))
    });
    let n_own = pids.iter().filter(|&&p| own(p)).count();
    let elsewhere: Vec<String> = pids
        .iter()
        .filter(|&&p| !own(p) && !shared(p))
        .map(|&p| format!("{p}: {}", cgroup_of(p)))
        .collect();
    // The state writer publishes what the placements counted.
    wait_for(Duration::from_secs(3), || {
        fx.status_json()["counters"]["agents_over_cap"] == 20
    });
    let st = fx.status_json();
    let log = fx.log();
    stop(daemon);
    assert!(
        log.contains("open files limited to 168: 10 agents get leaves of their own"),
        "no warning about the limit at start; log:\n{log}"
    );
    assert!(placed, "agents not placed: {elsewhere:?}; log:\n{log}");
    assert_eq!(n_own, 10, "agents with leaves of their own; log:\n{log}");
    assert_eq!(st["counters"]["agents_over_cap"], 20, "status: {st}");
    assert_eq!(st["counters"]["errors"], 0, "log:\n{log}");
    assert_eq!(st["counters"]["vanished"], 0, "log:\n{log}");
}

/// The observers at work in the daemon: an agent that alternates CPU work
/// with sleep is seen going idle and active again (status, per agent and
/// per family), its CPU and memory are accounted with their source, and
/// its root's exit is recorded with the exit code.
#[test]
fn agents_are_observed_idle_active_accounted_and_their_exit_recorded() {
    let Some(mount) = env_or_skip() else { return };
    let mut fx = Fixture::new("observe", mount);
    fx.policy("10-fake.yaml", &families(fx.tag()));
    let daemon = fx.daemon(&["--no-scheduler", "--no-memcg"]);
    fx.wait_ready();
    let agent = fx.tool(&format!("agent-{}", fx.tag()), "/bin/bash");
    // 1 s of work, 4 s of sleep, twice, then exit 3.
    let a = fx.spawn(Command::new(&agent).args([
        "-c",
        "for i in 1 2; do timeout 1 sh -c 'while :; do :; done'; sleep 4; done; exit 3",
    ]));
    let id = format!("fake-agent-{a}");
    let agent_state = |st: &serde_json::Value| {
        st["agents"]
            .as_array()
            .and_then(|l| l.iter().find(|x| x["id"] == id).cloned())
            .unwrap_or_default()
    };
    assert!(
        wait_for(Duration::from_secs(6), || agent_state(&fx.status_json())
            ["state"]
            == "idle"),
        "never idle: {}",
        agent_state(&fx.status_json())
    );
    let st = fx.status_json();
    assert_eq!(
        st["family_activity"]["fake-agent"]["state"], "idle",
        "{}",
        st["family_activity"]
    );
    assert!(
        wait_for(Duration::from_secs(6), || agent_state(&fx.status_json())
            ["state"]
            == "active"),
        "never active again: {}",
        agent_state(&fx.status_json())
    );
    let x = agent_state(&fx.status_json());
    assert!(x["transitions"].as_u64() >= Some(2), "{x}");
    // Accounting: CPU from its leaf (cpu.stat exists on every cgroup) or
    // from /proc, memory from /proc where the memory controller is off;
    // each figure names its source.
    let u = &x["usage"];
    assert!(
        u["cpu_usec"].as_u64() > Some(100_000),
        "1 s of work not accounted: {u}"
    );
    assert!(
        u["sources"]["cpu"] == "cgroup" || u["sources"]["cpu"] == "proc",
        "{u}"
    );
    assert!(u["memory_bytes"].as_u64() > Some(0), "{u}");
    // The root's exit: one record, with its code.
    assert!(
        wait_for(Duration::from_secs(12), || fx.status_json()["exits"]
            .as_array()
            .is_some_and(|e| e.iter().any(|r| r["agent"] == id))),
        "no exit record: {}",
        fx.status_json()["exits"]
    );
    let st = fx.status_json();
    let rec = st["exits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["agent"] == id)
        .cloned()
        .unwrap();
    assert_eq!(rec["exit"], serde_json::json!({"code": 3}), "{rec}");
    assert!(rec["cpu_usec"].as_u64() > Some(100_000), "{rec}");
    stop(daemon);
}

/// A restarted daemon adopts the leaves it finds (same agent, same leaf,
/// its new children go there); past `sessions.max_agents` new agents share
/// `<family>-shared` and status counts them.
#[test]
fn leaves_are_adopted_after_a_restart_and_capped() {
    let Some(mount) = env_or_skip() else { return };
    let mut fx = Fixture::new("adopt", mount);
    fx.policy("10-fake.yaml", &families(fx.tag()));
    fs::write(
        fx.dir.path().join("agentcgd.yaml"),
        "sessions:\n  max_agents: 1\n",
    )
    .unwrap();
    let mut daemon = fx.daemon(&["--no-scheduler", "--no-memcg"]);
    fx.wait_ready();
    let agent = fx.tool(&format!("agent-{}", fx.tag()), "/bin/bash");
    let pids = fx.dir.path().join("pids");
    // A: forks a child on request (a file appears), after the restart.
    let script = format!(
        "while [ ! -e {p}.go ]; do sleep 0.1; done; sleep 30 & echo $! > {p}.child; wait",
        p = pids.display()
    );
    let a = fx.spawn(Command::new(&agent).args(["-c", &script]));
    let leaf_a = format!("{}/fake-agent-{a}", fx.session("session_high"));
    assert!(
        wait_for(Duration::from_secs(2), || cgroup_of(a) == leaf_a),
        "A in {}",
        cgroup_of(a)
    );
    // Over the cap: B shares the family's leaf, and status says so.
    let b = fx.spawn(Command::new(&agent).args(["-c", "sleep 30"]));
    let shared = format!("{}/fake-agent-shared", fx.session("session_high"));
    assert!(
        wait_for(Duration::from_secs(2), || cgroup_of(b) == shared),
        "B in {}",
        cgroup_of(b)
    );
    assert!(wait_for(Duration::from_secs(3), || fx.status_json()
        ["counters"]["agents_over_cap"]
        .as_u64()
        >= Some(1)));
    // kill -9 and start again: A's leaf is adopted, not made anew.
    nix_kill(daemon.id(), libc::SIGKILL);
    let _ = daemon.wait();
    let daemon = fx.daemon(&["--no-scheduler", "--no-memcg"]);
    fx.wait_ready();
    assert!(
        wait_for(Duration::from_secs(3), || fx.status_json()["agents"]
            .as_array()
            .is_some_and(|l| l
                .iter()
                .any(|x| x["id"] == format!("fake-agent-{a}")))),
        "agent A not adopted: {}",
        fx.status_json()["agents"]
    );
    fs::write(pids.with_extension("go"), "").unwrap();
    assert!(wait_for(Duration::from_secs(3), || fs::read_to_string(
        pids.with_extension("child")
    )
    .is_ok_and(|t| !t.trim().is_empty())));
    let child: u32 = fs::read_to_string(pids.with_extension("child"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(2), || cgroup_of(child) == leaf_a),
        "A's new child in {}; log:\n{}",
        cgroup_of(child),
        fx.log()
    );
    assert_eq!(cgroup_of(b), shared);
    stop(daemon);
}

/// Context switches of each of a process's threads, summed by thread name.
fn switches_by_thread(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for t in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let comm = fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let status = fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let n: u64 = status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        *out.entry(comm.trim().to_string()).or_insert(0) += n;
    }
    out
}

/// With nothing to place and no agent to observe, the observers and the
/// pressure sampler wait for work instead of ticking: only the state
/// writer's 1-s pass wakes the daemon (its idle cost, issue 7).
#[test]
fn an_idle_daemon_wakes_only_for_the_state_pass() {
    let Some(mount) = env_or_skip() else { return };
    let fx = Fixture::new("idle", mount);
    fx.policy("10-fake.yaml", &families(fx.tag()));
    let daemon = fx.daemon(&["--no-scheduler", "--no-memcg"]);
    fx.wait_ready();
    std::thread::sleep(Duration::from_millis(1500));
    let before = switches_by_thread(daemon.id());
    std::thread::sleep(Duration::from_secs(3));
    let after = switches_by_thread(daemon.id());
    for name in ["observe", "reactions-psi"] {
        assert!(before.contains_key(name), "no {name} thread: {before:?}");
        assert_eq!(
            after.get(name),
            before.get(name),
            "{name} woke while idle: {before:?} -> {after:?}"
        );
    }
    assert!(
        after.get("state-writer") > before.get("state-writer"),
        "the state writer's pass did not run: {before:?} -> {after:?}"
    );
    stop(daemon);
}
