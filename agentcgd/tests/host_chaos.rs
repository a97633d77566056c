//! Chaos on the host (issue 13): the daemon killed with SIGKILL ten times
//! during a storm of forking and exec'ing agents, a forced overflow of the
//! BPF event ring buffer, ROOT removed and created again under a running
//! daemon, a SIGHUP storm. After each, nothing that should be placed is
//! left unplaced. The tests run one at a time (they share the host's CPUs
//! with their own storms).

use std::collections::VecDeque;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::*;

static SERIAL: Mutex<()> = Mutex::new(());

fn pids_named(comm: &str) -> Vec<u32> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim_end() == comm)
        })
        .collect()
}

fn under(fx: &Fixture, pid: u32, session: &str) -> bool {
    let s = fx.session(session);
    let cg = cgroup_of(pid);
    cg == s || cg.starts_with(&format!("{s}/"))
}

/// Agents (the forker, renamed) started at `per_s` a second, each killed
/// after `life`; its workers die with it (PR_SET_PDEATHSIG).
struct Storm {
    run: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Storm {
    fn start(agent: PathBuf, per_s: u32, life: Duration) -> Storm {
        let run = Arc::new(AtomicBool::new(true));
        let pause = Arc::new(AtomicBool::new(false));
        let (r, p) = (run.clone(), pause.clone());
        let thread = std::thread::spawn(move || {
            let mut live: VecDeque<(Instant, Child)> = VecDeque::new();
            while r.load(Ordering::Relaxed) {
                if !p.load(Ordering::Relaxed) {
                    // Half fork workers right after exec, half are exec'd
                    // by a shell that forked a child first.
                    let c = if live.len().is_multiple_of(2) {
                        Command::new(&agent).arg("2").spawn()
                    } else {
                        Command::new("/bin/sh")
                            .arg("-c")
                            .arg("sleep 5 & exec \"$0\" 1")
                            .arg(&agent)
                            .spawn()
                    };
                    if let Ok(c) = c {
                        live.push_back((Instant::now(), c));
                    }
                }
                while live.front().is_some_and(|(t, _)| t.elapsed() > life) {
                    let (_, mut c) = live.pop_front().unwrap();
                    let _ = c.kill();
                    let _ = c.wait();
                }
                std::thread::sleep(Duration::from_secs(1) / per_s);
            }
            for (_, mut c) in live {
                let _ = c.kill();
                let _ = c.wait();
            }
        });
        Storm {
            run,
            pause,
            thread: Some(thread),
        }
    }
}

impl Drop for Storm {
    fn drop(&mut self) {
        self.run.store(false, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every live agent and everything below it is in session_high; the
/// unplaced ones, described.
fn unplaced(fx: &Fixture, comm: &str) -> Vec<String> {
    let mut bad = vec![];
    for a in pids_named(comm) {
        let mut todo = vec![a];
        while let Some(p) = todo.pop() {
            if fs::metadata(format!("/proc/{p}")).is_err() {
                continue;
            }
            if !under(fx, p, "session_high") {
                bad.push(format!(
                    "{p} ({}) in {}",
                    fs::read_to_string(format!("/proc/{p}/comm"))
                        .unwrap_or_default()
                        .trim(),
                    cgroup_of(p)
                ));
            }
            for t in fs::read_dir(format!("/proc/{p}/task"))
                .into_iter()
                .flatten()
                .flatten()
            {
                for c in fs::read_to_string(t.path().join("children"))
                    .unwrap_or_default()
                    .split_whitespace()
                {
                    todo.push(c.parse().unwrap());
                }
            }
        }
    }
    bad
}

/// A fresh state file written by the daemon just started.
fn wait_fresh_state(fx: &Fixture, since: std::time::SystemTime) {
    assert!(
        wait_for(Duration::from_secs(90), || fs::metadata(fx.state())
            .and_then(|m| m.modified())
            .is_ok_and(|m| m > since)),
        "daemon did not start; log:\n{}",
        fx.log()
    );
}

#[test]
fn kill9_ten_times_during_an_agent_storm_leaves_nothing_unplaced() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mount) = env_or_skip() else { return };
    let fx = Fixture::new("kill9", mount);
    let comm = format!("agent-{}", fx.tag());
    fx.policy("10-fake.yaml", &families(fx.tag()));
    let agent = fx.build("forker.c", &comm);
    let mut daemon = fx.daemon(&["--events", "bpf", "--no-scheduler", "--no-memcg"]);
    fx.wait_ready();
    let storm = Storm::start(agent, 20, Duration::from_secs(3));
    for round in 1..=10 {
        std::thread::sleep(Duration::from_millis(700));
        daemon.kill().unwrap();
        daemon.wait().unwrap();
        // Agents start while no daemon runs.
        std::thread::sleep(Duration::from_millis(300));
        let since = std::time::SystemTime::now();
        daemon = fx.daemon(&["--events", "bpf", "--no-scheduler", "--no-memcg"]);
        wait_fresh_state(&fx, since);
        std::thread::sleep(Duration::from_secs(2));
        // Stop starting new ones for the look (those of the last few ms
        // would be caught mid-exec).
        storm.pause.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(100));
        let bad = unplaced(&fx, &comm);
        assert!(
            bad.is_empty(),
            "round {round}: 2 s after the restart, unplaced: {bad:?}; log:\n{}",
            fx.log()
        );
        assert!(
            !pids_named(&comm).is_empty(),
            "round {round}: the storm runs"
        );
        storm.pause.store(false, Ordering::Relaxed);
    }
    drop(storm);
    stop(daemon);
}

#[test]
fn ring_buffer_overflow_is_reconciled() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mount) = env_or_skip() else { return };
    let mut fx = Fixture::new("overflow", mount);
    let comm = format!("agent-{}", fx.tag());
    fx.policy("10-fake.yaml", &families(fx.tag()));
    let chain = fx.build("execchain.c", &comm);
    let daemon = fx.daemon(&["--events", "bpf", "--no-scheduler", "--no-memcg"]);
    fx.wait_ready();
    // Stop the daemon; fill the 4 MiB ring buffer with matching execs.
    nix_kill(daemon.id(), libc::SIGSTOP);
    let lost_before = fx.status_json()["procmon"]["lost_events"].as_u64().unwrap();
    // ~1.4 KB an event: 10,000 execs are three times the buffer.
    let st = Command::new(&chain).arg("10000").status().unwrap();
    assert!(st.success());
    // Agents that start behind the full buffer: their execs are lost.
    let late = fx.dir.path().join("late");
    fs::create_dir_all(&late).unwrap();
    let late_bin = late.join(&comm);
    fs::copy("/bin/sleep", &late_bin).unwrap();
    let late_agents: Vec<u32> = (0..5)
        .map(|_| fx.spawn(Command::new(&late_bin).arg("30")))
        .collect();
    nix_kill(daemon.id(), libc::SIGCONT);
    assert!(
        wait_for(Duration::from_secs(20), || fx.status_json()["procmon"]
            ["lost_events"]
            .as_u64()
            .unwrap()
            > lost_before),
        "no events were lost: the overflow did not happen"
    );
    let t = Instant::now();
    assert!(
        wait_for(Duration::from_secs(2), || late_agents
            .iter()
            .all(|p| under(&fx, *p, "session_high"))),
        "agents whose execs were lost are not placed 2 s after the daemon resumed ({:?}); log:\n{}",
        t.elapsed(),
        fx.log()
    );
    assert!(fx.log().contains("lost"), "{}", fx.log());
    stop(daemon);
}

#[test]
fn root_removed_and_recreated_under_a_running_daemon() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mount) = env_or_skip() else { return };
    let mut fx = Fixture::new("rootgone", mount);
    fx.policy("10-fake.yaml", &families(fx.tag()));
    let daemon = fx.daemon(&["--no-scheduler", "--no-memcg"]);
    fx.wait_ready();
    let agent = fx.tool(&format!("agent-{}", fx.tag()), "/bin/sleep");
    let first = fx.spawn(Command::new(&agent).arg("30"));
    assert!(wait_for(Duration::from_secs(2), || under(
        &fx,
        first,
        "session_high"
    )));
    // The whole tree goes: its processes moved out, ROOT removed, then an
    // empty ROOT made again (a careless cleanup script, a reinstall).
    remove_tree(&fx.root, &fx.mount);
    assert!(!fx.root.exists(), "ROOT not removed");
    fs::create_dir(&fx.root).unwrap();
    assert!(
        wait_for(Duration::from_secs(4), || under(&fx, first, "session_high")),
        "tracked agent not placed again after ROOT came back: in {}; log:\n{}",
        cgroup_of(first),
        fx.log()
    );
    let second = fx.spawn(Command::new(&agent).arg("30"));
    assert!(
        wait_for(Duration::from_secs(2), || under(
            &fx,
            second,
            "session_high"
        )),
        "new agent not placed: in {}",
        cgroup_of(second)
    );
    assert!(wait_for(Duration::from_secs(2), || fx.status_json()
        ["counters"]["tree_rebuilds"]
        .as_u64()
        >= Some(1)));
    stop(daemon);
}

#[test]
fn sighup_storm_keeps_placing_and_reloads_coalesce() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mount) = env_or_skip() else { return };
    let mut fx = Fixture::new("hupstorm", mount);
    fx.policy("10-fake.yaml", &families(fx.tag()));
    let daemon = fx.daemon(&["--no-scheduler", "--no-memcg"]);
    fx.wait_ready();
    let agent = fx.tool(&format!("agent-{}", fx.tag()), "/bin/sleep");
    let before = fx.status_json()["counters"]["policy_reloads"]
        .as_u64()
        .unwrap();
    let mut agents = vec![];
    for i in 0..500 {
        nix_kill(daemon.id(), libc::SIGHUP);
        if i % 50 == 0 {
            agents.push(fx.spawn(Command::new(&agent).arg("30")));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        wait_for(Duration::from_secs(2), || agents.iter().all(|p| under(
            &fx,
            *p,
            "session_high"
        ))),
        "agents not placed during a SIGHUP storm; log:\n{}",
        fx.log()
    );
    assert!(wait_for(Duration::from_secs(2), || {
        let n = fx.status_json()["counters"]["policy_reloads"]
            .as_u64()
            .unwrap();
        n > before
    }));
    let reloads = fx.status_json()["counters"]["policy_reloads"]
        .as_u64()
        .unwrap()
        - before;
    assert!(
        reloads < 100,
        "500 SIGHUPs gave {reloads} reloads: not coalesced"
    );
    // Still alive and answering.
    assert!(fs::metadata(format!("/proc/{}", daemon.id())).is_ok());
    stop(daemon);
}
