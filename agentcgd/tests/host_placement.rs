//! Host root tests of placement that no process escapes: workers forked
//! without exec, argv longer than the exec event carries, a process that
//! renames itself into a rule, and the session cgroups removed under a
//! running daemon.

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::*;

/// `pid` and every process below it.
fn subtree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        if let Ok(rd) = fs::read_dir(format!("/proc/{p}/task")) {
            for t in rd.filter_map(|e| e.ok()) {
                let f = t.path().join("children");
                for c in fs::read_to_string(f).unwrap_or_default().split_whitespace() {
                    if let Ok(c) = c.parse() {
                        all.push(c);
                    }
                }
            }
        }
        i += 1;
    }
    all
}

/// 10 agents that fork 5 workers at once after exec, each worker a
/// grandchild: all 110 processes must be in session_high within 1 s of the
/// spawn, `runs` times over.
fn forking_agents_all_placed(events: &str, runs: usize) {
    let Some(mount) = env_or_skip() else { return };
    let fx = Fixture::new(&format!("fork-{events}"), mount);
    // Unique per test: daemons of tests running in parallel see every exec.
    let name = format!("fk{}-{}", &events[..1], std::process::id() % 100_000);
    fx.policy(
        "10-fork.yaml",
        &format!("family: forker\npriority: high\nmatch:\n  - comm: {name}\n"),
    );
    let bin = fx.build("forker.c", &name);
    let daemon = fx.daemon(&["--events", events, "--no-scheduler", "--no-memcg"]);
    fx.wait_ready();
    let high = fx.session("session_high");
    for run in 0..runs {
        let t0 = Instant::now();
        let mut agents = Vec::new();
        for _ in 0..10 {
            agents.push(Command::new(&bin).arg("5").spawn().unwrap());
        }
        // Placed within 1 s of the spawn, or of the last fork where the
        // host is too busy to fork 110 processes in a second.
        let mut deadline = t0 + Duration::from_secs(1);
        let mut complete = false;
        let mut last = Vec::new();
        let mut all: Vec<u32>;
        let ok = loop {
            all = agents.iter().flat_map(|a| subtree(a.id())).collect();
            if !complete && all.len() == 110 {
                complete = true;
                deadline = deadline.max(Instant::now() + Duration::from_secs(1));
            }
            let outside: Vec<(u32, String)> = all
                .iter()
                .map(|&p| (p, session_of(p)))
                .filter(|(_, cg)| cg != &high)
                .collect();
            if complete && outside.is_empty() {
                break true;
            }
            last = outside;
            if Instant::now() > deadline && (complete || t0.elapsed() > Duration::from_secs(10)) {
                break false;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        for p in all.iter().rev() {
            nix_kill(*p, libc::SIGKILL);
        }
        for mut a in agents {
            let _ = a.kill();
            let _ = a.wait();
        }
        assert!(
            ok,
            "run {run}: {} of {} processes outside {high} 1 s after spawn ({events}): {:?}\nlog:\n{}",
            last.len(),
            all.len(),
            &last[..last.len().min(10)],
            fx.log()
        );
    }
    let st = fx.status_json();
    assert_eq!(st["counters"]["errors"], 0, "{}", st["counters"]);
    stop(daemon);
}

#[test]
fn forked_workers_never_escape_bpf() {
    forking_agents_all_placed("bpf", 20);
}

#[test]
fn forked_workers_never_escape_proc_connector() {
    forking_agents_all_placed("proc-connector", 3);
}

#[test]
fn long_argv_is_read_whole_before_deciding() {
    let Some(mount) = env_or_skip() else { return };
    let mut fx = Fixture::new("longargv", mount);
    let marker = format!("agentcg-long-argv-marker-{}", std::process::id());
    // A rule on the 5th argument, which lies past the 4 KB filler.
    fx.policy(
        "10-long.yaml",
        &format!(
            "family: long\npriority: high\nmatch:\n  - argv: [\"sh\", \"-c\", \"*\", \"*\", \"{marker}\"]\n"
        ),
    );
    let daemon = fx.daemon(&["--no-scheduler", "--no-memcg"]);
    fx.wait_ready();
    let filler = "x".repeat(4096);
    let pid = fx.spawn(Command::new("sh").args(["-c", "sleep 30", &filler, &marker]));
    let high = fx.session("session_high");
    assert!(
        wait_for(Duration::from_secs(2), || session_of(pid) == high),
        "pid {pid} in {}; log:\n{}",
        session_of(pid),
        fx.log()
    );
    // At exec, not by a later scan.
    assert_eq!(fx.status_json()["counters"]["reconciles"], 1);
    stop(daemon);
}

#[test]
fn process_renaming_itself_into_a_rule_is_placed() {
    let Some(mount) = env_or_skip() else { return };
    let mut fx = Fixture::new("rename", mount);
    let name = format!("rnm-{}", std::process::id() % 100_000);
    fx.policy(
        "10-rename.yaml",
        &format!("family: renamed\npriority: high\nmatch:\n  - comm: {name}\n"),
    );
    let daemon = fx.daemon(&["--no-scheduler", "--no-memcg"]);
    fx.wait_ready();
    let go = fx.dir.path().join("go");
    // The shell waits for `go`, then renames itself (prctl(PR_SET_NAME)
    // through /proc/self/comm, as node's process.title does) and sleeps
    // in a builtin wait so nothing execs afterwards.
    let script = format!(
        "while [ ! -e {go} ]; do :; done; printf %s {name} > /proc/self/comm; sleep 30 & wait",
        go = go.display()
    );
    let pid = fx.spawn(Command::new("sh").args(["-c", &script]));
    let high = fx.session("session_high");
    std::thread::sleep(Duration::from_millis(200));
    assert_ne!(session_of(pid), high, "placed before the rename");
    fs::write(&go, "").unwrap();
    assert!(wait_for(Duration::from_secs(2), || {
        fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap_or_default()
            .trim()
            == name
    }));
    let renamed = Instant::now();
    assert!(
        wait_for(Duration::from_secs(2), || session_of(pid) == high),
        "not placed after the rename (in {}); log:\n{}",
        session_of(pid),
        fx.log()
    );
    // The goal is 100 ms; on a host with more runnable work than CPUs the
    // daemon's wake-up can lag behind that, which is noted, not failed.
    let took = renamed.elapsed();
    if took > Duration::from_millis(100) {
        let load: f64 = fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        assert!(
            load > cpus,
            "placed {took:?} after the rename (goal 100 ms) on a host with load {load}"
        );
        eprintln!("note: placed {took:?} after the rename; host load {load} > {cpus} CPUs");
    }
    stop(daemon);
}

#[test]
fn removed_session_cgroups_are_reported_and_rebuilt() {
    let Some(mount) = env_or_skip() else { return };
    let mut fx = Fixture::new("lost", mount);
    fx.policy("10-fake.yaml", &families(fx.tag()));
    let daemon = fx.daemon(&["--no-scheduler", "--no-memcg"]);
    fx.wait_ready();
    let agent = fx.tool(&format!("agent-{}", fx.tag()), "/bin/sleep");
    let first = fx.spawn(Command::new(&agent).arg("30"));
    let high = fx.session("session_high");
    assert_in_session(first, &high, "first");

    // An administrator (or a careless script) empties and removes the tree.
    fs::write(fx.mount.join("cgroup.procs"), first.to_string()).unwrap();
    // Deepest first, as cgroups must be: the agent leaves, then the
    // sessions (the daemon may remove an emptied leaf itself meanwhile).
    for s in ["session_high", "session_low"] {
        let dir = fx.root.join(s);
        for e in fs::read_dir(&dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                match fs::remove_dir(e.path()) {
                    Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                        panic!("rmdir {}: {err}", e.path().display())
                    }
                    _ => {}
                }
            }
        }
        fs::remove_dir(&dir).unwrap();
    }
    // Reported and repaired without a restart; the tracked agent is back.
    assert!(
        wait_for(Duration::from_secs(3), || session_of(first) == high),
        "tracked agent not placed again: in {}; log:\n{}",
        session_of(first),
        fx.log()
    );
    assert!(
        wait_for(Duration::from_secs(2), || {
            let st = fx.status_json();
            st["counters"]["tree_rebuilds"].as_u64() >= Some(1) && st["tree_error"].is_string()
        }),
        "status does not report the rebuild: {}",
        fx.status_json()
    );
    assert!(fx.log().contains("lost"), "log:\n{}", fx.log());
    // A new agent lands in the rebuilt tree.
    let second = fx.spawn(Command::new(&agent).arg("30"));
    assert!(
        wait_for(Duration::from_secs(2), || session_of(second) == high),
        "new agent not placed in the rebuilt tree: in {}; log:\n{}",
        session_of(second),
        fx.log()
    );
    stop(daemon);
}
