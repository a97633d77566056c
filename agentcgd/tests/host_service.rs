//! Host root tests of the daemon's reactions and its systemd protocol: the
//! real daemon, real BPF exit events, real commands run by the reactions
//! engine, and a real notify socket as systemd would give it.

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{env_or_skip, remove_tree, session_of, wait_for, BIN};

struct Fx {
    tag: String,
    dir: tempfile::TempDir,
    root: PathBuf,
    mount: PathBuf,
    children: Vec<Child>,
}

impl Fx {
    fn new(name: &str, mount: PathBuf) -> Fx {
        let dir = tempfile::tempdir().unwrap();
        let root = mount.join(format!("agentcg-test-{name}-{}", std::process::id()));
        fs::create_dir_all(dir.path().join("policies")).unwrap();
        fs::create_dir_all(dir.path().join("bin")).unwrap();
        let tag = common::run_tag(name);
        fs::write(
            dir.path().join("policies/10-fake.yaml"),
            format!("family: fake-agent\npriority: high\nmatch:\n  - comm: agent-{tag}\n"),
        )
        .unwrap();
        Fx {
            tag,
            dir,
            root,
            mount,
            children: vec![],
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn config(&self, text: &str) {
        fs::write(self.path("agentcgd.yaml"), text).unwrap();
    }

    fn script(&self, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.path("bin").join(name);
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// `/bin/sh` under the agent's comm.
    fn agent_bin(&self) -> PathBuf {
        let p = self.path("bin").join(format!("agent-{}", self.tag));
        if !p.exists() {
            fs::copy("/bin/sh", &p).unwrap();
        }
        p
    }

    fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg(&self.root)
            .arg("--policies")
            .arg(self.path("policies"))
            .arg("--config")
            .arg(self.path("agentcgd.yaml"))
            .arg("--state")
            .arg(self.path("state.json"))
            .arg("--no-scheduler")
            .arg("--no-memcg")
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                fs::File::create(self.path("daemon.log")).unwrap(),
            ));
        c
    }

    fn log(&self) -> String {
        fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }

    fn wait_ready(&self) {
        assert!(
            wait_for(Duration::from_secs(10), || self.path("state.json").exists()),
            "daemon did not start; log:\n{}",
            self.log()
        );
    }

    fn status(&self) -> serde_json::Value {
        let out = Command::new(BIN)
            .args(["status", "--json", "--state"])
            .arg(self.path("state.json"))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    fn reactions(&self) -> serde_json::Value {
        self.status()["reactions"].clone()
    }

    /// Run the fake agent in `cwd` with `script` (it lives long enough to
    /// be placed first).
    fn run_agent(&mut self, cwd: &Path, script: &str) -> u32 {
        fs::create_dir_all(cwd).unwrap();
        let c = common::spawn_copied(
            Command::new(self.agent_bin())
                .args(["-c", script])
                .current_dir(cwd)
                .stdout(Stdio::null()),
        );
        let pid = c.id();
        self.children.push(c);
        pid
    }

    fn reap(&mut self) {
        for c in &mut self.children {
            let _ = c.try_wait();
        }
    }
}

impl Drop for Fx {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // A test that failed before stopping its daemon must not leave it
        // running: it would place the next run's processes in its tree.
        for pid in procmon::procfs::ProcFs::default().children(std::process::id(), 64) {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&*self.root.to_string_lossy()) {
                common::nix_kill(pid, libc::SIGKILL);
            }
        }
        remove_tree(&self.root, &self.mount);
    }
}

fn stop(d: Child) {
    common::stop(d);
}

#[test]
fn agent_crash_runs_the_reaction_once_per_debounce_with_its_environment() {
    let Some(mount) = env_or_skip() else { return };
    let mut fx = Fx::new("react", mount);
    let out = fx.path("runs.log");
    let save = fx.script(
        "save",
        &format!(
            "echo \"$AGENTCG_EVENT|$AGENTCG_FAMILY|$AGENTCG_AGENT|$AGENTCG_PID|$AGENTCG_CGROUP|$AGENTCG_EXIT|$AGENTCG_CWD|$(grep '^0::' /proc/self/cgroup)\" >> {}",
            out.display()
        ),
    );
    fx.config(&format!(
        "reactions:\n  enabled: true\n  rules:\n    - name: save\n      on: [crash, oom_kill]\n      families: [fake-agent]\n      action: run\n      command: [{}]\n      user: agent\n",
        save.display()
    ));
    let daemon = fx.command().spawn().unwrap();
    fx.wait_ready();
    let ws = fx.path("ws1");
    let high = format!(
        "/{}/session_high",
        fx.root.strip_prefix(&fx.mount).unwrap().display()
    );
    let a = fx.run_agent(&ws, "sleep 0.5; exit 3");
    assert!(
        wait_for(Duration::from_secs(3), || session_of(a) == high),
        "agent not placed; log:\n{}",
        fx.log()
    );
    assert!(
        wait_for(Duration::from_secs(10), || fx.reactions()["counters"]
            ["runs"]
            == 1),
        "no run; reactions: {}\nlog:\n{}",
        fx.reactions(),
        fx.log()
    );
    let lines = fs::read_to_string(&out).unwrap();
    let f: Vec<&str> = lines.lines().next().unwrap().split('|').collect();
    assert_eq!(f[0], "crash");
    assert_eq!(f[1], "fake-agent");
    assert_eq!(f[2], format!("fake-agent-{a}"));
    assert_eq!(f[3], a.to_string());
    // The agent's own leaf: session_high/<family>-<root pid>.
    assert_eq!(
        f[4],
        fx.root
            .join("session_high")
            .join(format!("fake-agent-{a}"))
            .display()
            .to_string()
    );
    assert_eq!(f[5], "exit:3");
    assert_eq!(f[6], ws.display().to_string());
    assert!(
        !f[7].contains("agentcg-test"),
        "the action ran inside the agent tree: {}",
        f[7]
    );
    // A second crash in the same workspace within the debounce: no run.
    let b = fx.run_agent(&ws, "sleep 0.5; kill -SEGV $$");
    assert!(wait_for(Duration::from_secs(3), || session_of(b) == high));
    assert!(
        wait_for(Duration::from_secs(10), || fx.reactions()["counters"]
            ["debounced"]
            == 1),
        "{}",
        fx.reactions()
    );
    // Another workspace: runs, with the signal.
    let c = fx.run_agent(&fx.path("ws2"), "sleep 0.5; kill -SEGV $$");
    assert!(wait_for(Duration::from_secs(10), || fx.reactions()
        ["counters"]["runs"]
        == 2));
    let lines = fs::read_to_string(&out).unwrap();
    assert_eq!(lines.lines().count(), 2, "{lines}");
    let last = lines.lines().last().unwrap();
    assert!(
        last.contains(&format!("|{c}|")) && last.contains("|signal:SIGSEGV|"),
        "{last}"
    );
    // A clean exit is not a crash.
    let d = fx.run_agent(&fx.path("ws3"), "sleep 0.5; exit 0");
    assert!(wait_for(Duration::from_secs(3), || session_of(d) == high));
    std::thread::sleep(Duration::from_millis(1500));
    fx.reap();
    let r = fx.reactions();
    assert_eq!(r["counters"]["runs"], 2, "{r}");
    let rec = &r["runs"][0];
    assert_eq!(rec["exit"], "exit:0");
    assert_eq!(rec["trigger"], "crash");
    assert_eq!(rec["killed_by_timeout"], false);
    assert!(fx.log().contains("reaction save (crash of fake-agent-"));
    stop(daemon);
}

#[test]
fn a_hanging_reaction_is_killed_at_its_timeout_while_placement_goes_on() {
    let Some(mount) = env_or_skip() else { return };
    let mut fx = Fx::new("hang", mount);
    let pidfile = fx.path("hang.pid");
    let hang = fx.script(
        "hang",
        &format!("echo $$ > {}; exec sleep 600", pidfile.display()),
    );
    fx.config(&format!(
        "reactions:\n  enabled: true\n  rules:\n    - name: hang\n      on: [crash]\n      timeout_s: 3\n      action: run\n      command: [{}]\n      user: root\n",
        hang.display()
    ));
    let daemon = fx.command().spawn().unwrap();
    fx.wait_ready();
    let high = format!(
        "/{}/session_high",
        fx.root.strip_prefix(&fx.mount).unwrap().display()
    );
    let a = fx.run_agent(&fx.path("ws"), "sleep 0.3; exit 1");
    assert!(wait_for(Duration::from_secs(3), || session_of(a) == high));
    assert!(
        wait_for(Duration::from_secs(10), || fx.reactions()["running"]
            .as_array()
            .is_some_and(|r| r.len() == 1)),
        "{}\n{}",
        fx.reactions(),
        fx.log()
    );
    // The action hangs; new agents are still placed at once.
    for i in 0..3 {
        let p = fx.run_agent(&fx.path(&format!("more{i}")), "sleep 30");
        assert!(
            wait_for(Duration::from_secs(2), || session_of(p) == high),
            "placement stalled behind a hanging action; log:\n{}",
            fx.log()
        );
    }
    assert_eq!(fx.reactions()["counters"]["runs"], 0, "still running");
    assert!(
        wait_for(Duration::from_secs(10), || fx.reactions()["counters"]
            ["timed_out"]
            == 1),
        "{}",
        fx.reactions()
    );
    let rec = fx.reactions()["runs"][0].clone();
    assert_eq!(rec["killed_by_timeout"], true, "{rec}");
    assert_eq!(rec["exit"], "signal:SIGKILL");
    assert!(rec["duration_ms"].as_u64().unwrap() >= 3000, "{rec}");
    let hung: u32 = fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(2), || !Path::new(&format!(
            "/proc/{hung}"
        ))
        .exists()),
        "the hanging action {hung} survived its timeout"
    );
    assert!(
        fx.log().contains("killed at its 3 s timeout"),
        "{}",
        fx.log()
    );
    stop(daemon);
}

#[test]
fn dry_run_logs_the_reaction_it_would_run_and_runs_nothing() {
    let Some(mount) = env_or_skip() else { return };
    let mut fx = Fx::new("rdry", mount);
    let marker = fx.path("ran");
    let touch = fx.script("touch", &format!("touch {}", marker.display()));
    fx.config(&format!(
        "reactions:\n  enabled: true\n  rules:\n    - name: t\n      on: [crash]\n      families: [fake-agent, nosuch]\n      action: run\n      command: [{}]\n      user: agent\n",
        touch.display()
    ));
    let check = Command::new(BIN)
        .args(["check", "--policies"])
        .arg(fx.path("policies"))
        .arg("--config")
        .arg(fx.path("agentcgd.yaml"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{out}");
    assert!(out.contains("reactions: enabled (1 rules)"), "{out}");
    assert!(
        out.contains("names family nosuch that no policy defines"),
        "{out}"
    );
    let daemon = fx.command().arg("--dry-run").spawn().unwrap();
    fx.wait_ready();
    let a = fx.run_agent(&fx.path("ws"), "sleep 0.5; exit 7");
    assert!(
        wait_for(Duration::from_secs(10), || fx.reactions()["counters"]
            ["runs"]
            == 1),
        "{}\n{}",
        fx.reactions(),
        fx.log()
    );
    let r = fx.reactions();
    assert_eq!(r["dry_run"], true);
    assert_eq!(r["runs"][0]["dry_run"], true);
    assert!(!marker.exists(), "dry-run ran the command");
    let log = fx.log();
    assert!(
        log.contains(&format!(
            "dry-run: reaction t (crash of fake-agent-{a} (pid {a}, exit:7)) would run"
        )) && log.contains("AGENTCG_EXIT=exit:7"),
        "{log}"
    );
    stop(daemon);
}

#[test]
fn broken_reactions_are_refused_at_start_and_kept_on_reload() {
    let Some(mount) = env_or_skip() else { return };
    let fx = Fx::new("rbroken", mount);
    fx.config("reactions:\n  enabled: true\n  rules:\n    - name: x\n      on: [crash]\n      action: run\n      command: [/bin/true]\n");
    let out = fx.command().stderr(Stdio::piped()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("agentcgd.yaml:6:") && err.contains("needs `user:`"),
        "{err}"
    );
    assert!(!fx.root.exists(), "nothing created on a refused start");
    fx.config("reactions:\n  enabled: true\n  rules:\n    - name: note\n      on: [crash]\n      action: log\n");
    let daemon = fx.command().spawn().unwrap();
    fx.wait_ready();
    assert_eq!(fx.reactions()["rules"][0]["name"], "note");
    fx.config("reactions:\n  enabled: true\n  rules:\n    - name: x\n      on: [crash]\n      action: run\n      command: [/nonexistent/cmd]\n      user: root\n");
    // SAFETY: kill(2) on the daemon we spawned.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGHUP) };
    // 15 s: a 5 s wait ran out once in a full parallel `cargo test` on 2
    // cores; a lost SIGHUP fails either way, and the log shows which it was.
    assert!(
        wait_for(Duration::from_secs(15), || fx.reactions()["last_error"]
            .as_str()
            .is_some_and(
                |e| e.contains("agentcgd.yaml:7:") && e.contains("/nonexistent/cmd")
            )),
        "{}\nlog:\n{}",
        fx.reactions(),
        fx.log()
    );
    assert_eq!(fx.reactions()["rules"][0]["name"], "note", "last good kept");
    stop(daemon);
}

#[test]
fn notifies_systemd_ready_after_setup_and_pings_the_watchdog() {
    let Some(mount) = env_or_skip() else { return };
    let fx = Fx::new("notify", mount);
    let sock_path = fx.path("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let daemon = fx
        .command()
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .spawn()
        .unwrap();
    let mut buf = [0u8; 1024];
    let recv = |buf: &mut [u8]| loop {
        match sock.recv(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    };
    let n = recv(&mut buf).expect("no READY=1 within 10 s");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.contains("READY=1"), "{msg}");
    assert!(msg.contains(&format!("MAINPID={}", daemon.id())), "{msg}");
    // Ready means the tree exists and the state is written.
    assert!(
        fx.root.join("session_high").is_dir(),
        "READY before the tree"
    );
    assert!(fx.path("state.json").exists());
    let t = Instant::now();
    let mut pings = 0;
    while pings < 3 && t.elapsed() < Duration::from_secs(5) {
        let n = recv(&mut buf).unwrap();
        if String::from_utf8_lossy(&buf[..n]) == "WATCHDOG=1" {
            pings += 1;
        }
    }
    assert_eq!(pings, 3, "watchdog pings from the main loop");
    // SAFETY: kill(2) on the daemon we spawned.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let mut stopping = false;
    while let Ok(n) = recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping);
    stop(daemon);
}

#[test]
fn version_names_the_git_revision_and_status_shows_it() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    let v = String::from_utf8_lossy(&out.stdout).to_string();
    let want = format!("agentcgd {} (git ", env!("CARGO_PKG_VERSION"));
    assert!(v.starts_with(&want), "{v}");
    let rev = v
        .trim()
        .trim_end_matches(')')
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    if let Ok(o) = Command::new("git").args(["rev-parse", "HEAD"]).output() {
        let head = String::from_utf8_lossy(&o.stdout).to_string();
        if o.status.success() && std::env::var("AGENTCGD_GIT_REV").is_err() {
            assert!(head.starts_with(&rev), "{rev} vs HEAD {head}");
        }
    }
    let Some(mount) = env_or_skip() else { return };
    let fx = Fx::new("version", mount);
    let daemon = fx.command().spawn().unwrap();
    fx.wait_ready();
    assert_eq!(
        fx.status()["version"],
        v.trim().trim_start_matches("agentcgd ")
    );
    let human = Command::new(BIN)
        .args(["status", "--state"])
        .arg(fx.path("state.json"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&human.stdout).starts_with(&format!(
        "agentcgd {}",
        v.trim().trim_start_matches("agentcgd ")
    )));
    stop(daemon);
}

/// `on: [idle]`: an agent idle for `after_s` (from the activity monitor)
/// runs the rule once per idle spell, with AGENTCG_IDLE_S; working again
/// and going idle again runs it again.
#[test]
fn idle_agent_runs_the_idle_reaction_once_per_idle_spell() {
    let Some(mount) = env_or_skip() else { return };
    let mut fx = Fx::new("idle", mount);
    let out = fx.path("idle.log");
    let save = fx.script(
        "save",
        &format!(
            "echo \"$AGENTCG_EVENT|$AGENTCG_AGENT|$AGENTCG_IDLE_S\" >> {}",
            out.display()
        ),
    );
    fx.config(&format!(
        "activity: {{idle_threshold_ms: 500}}\nreactions:\n  enabled: true\n  rules:\n    - name: idle\n      on: [idle]\n      idle: {{after_s: 2}}\n      families: [fake-agent]\n      debounce_s: 0\n      action: run\n      command: [{}]\n      user: root\n",
        save.display()
    ));
    let daemon = fx.command().spawn().unwrap();
    fx.wait_ready();
    // Idle 6 s, busy 1 s, idle: two idle spells past 2 s.
    let a = fx.run_agent(
        &fx.path("ws"),
        "sleep 6; timeout 1 sh -c 'while :; do :; done'; sleep 30",
    );
    let lines = || -> Vec<String> {
        fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    assert!(
        wait_for(Duration::from_secs(8), || !lines().is_empty()),
        "no idle run; reactions: {}\nlog:\n{}",
        fx.reactions(),
        fx.log()
    );
    let first = lines()[0].clone();
    let f: Vec<&str> = first.split('|').collect();
    assert_eq!(f[0], "idle", "{first}");
    assert_eq!(f[1], format!("fake-agent-{a}"));
    assert!(f[2].parse::<u64>().is_ok_and(|s| s >= 2), "{first}");
    // Once per spell: still one run 1.5 s later while it stays idle.
    std::thread::sleep(Duration::from_millis(1500));
    let n = lines().len();
    assert_eq!(n, 1, "{:?}", lines());
    assert!(
        wait_for(Duration::from_secs(10), || lines().len() > n),
        "the second idle spell ran nothing: {:?}\nlog:\n{}",
        lines(),
        fx.log()
    );
    assert_eq!(lines().len(), 2, "{:?}", lines());
    stop(daemon);
}
