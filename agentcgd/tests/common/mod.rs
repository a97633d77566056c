//! The host-test fixture shared by the daemon's integration tests: its own
//! ROOT, policy directory and state file per test, the daemon under test,
//! and helpers to look at where processes are.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_agentcgd");

pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| PathBuf::from(f[1]))
}

/// Skip (with the missing thing named) unless root with a cgroup2 mount.
pub fn env_or_skip() -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: needs root to move processes between cgroups");
        return None;
    }
    let m = cgroup2_mount();
    if m.is_none() {
        eprintln!("SKIP: no cgroup2 mount on this host");
    }
    m
}

/// A tag for the processes of test `name`, at most 7 bytes (a comm is at
/// most 15): unique per test and per run, since the daemons of other
/// tests, and of another run of this one beside it, see every exec.
pub fn run_tag(name: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (name, std::process::id()).hash(&mut h);
    format!(
        "{}{:04x}",
        name.chars().take(3).collect::<String>(),
        h.finish() & 0xffff
    )
}

pub struct Fixture {
    pub tag: String,
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub mount: PathBuf,
    pub children: Vec<Child>,
    /// Daemons started here, killed on drop (a failed test must not leave
    /// one running that places the next test's processes).
    daemons: std::cell::RefCell<Vec<u32>>,
}

impl Fixture {
    pub fn new(name: &str, mount: PathBuf) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = mount.join(format!("agentcg-test-{name}-{}", std::process::id()));
        fs::create_dir_all(dir.path().join("policies")).unwrap();
        fs::create_dir_all(dir.path().join("bin")).unwrap();
        Fixture {
            tag: run_tag(name),
            dir,
            root,
            mount,
            children: vec![],
            daemons: Default::default(),
        }
    }

    /// Short unique tag, at most 7 bytes (comm is at most 15 bytes).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    pub fn policies(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state.json")
    }

    pub fn policy(&self, file: &str, text: &str) {
        fs::write(self.policies().join(file), text).unwrap();
    }

    /// A copy of a system binary under a name of our choosing (sets comm/exe).
    pub fn tool(&self, name: &str, from: &str) -> PathBuf {
        let p = self.dir.path().join("bin").join(name);
        fs::copy(from, &p).unwrap();
        p
    }

    /// tests/fixtures/SRC built under this fixture's bin/NAME.
    pub fn build(&self, src: &str, name: &str) -> PathBuf {
        let out = self.dir.path().join("bin").join(name);
        build_fixture(src, &out);
        out
    }

    /// The daemon's command line on this fixture's ROOT, policies and
    /// state file (no --config), for a run that is expected to exit.
    pub fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg(&self.root)
            .arg("--policies")
            .arg(self.policies())
            .arg("--state")
            .arg(self.state());
        c
    }

    pub fn daemon(&self, extra: &[&str]) -> Child {
        self.daemon_with(extra, |_| {})
    }

    /// [`Fixture::daemon`], its command adjusted first (limits, env).
    pub fn daemon_with(&self, extra: &[&str], adjust: impl FnOnce(&mut Command)) -> Child {
        let mut cmd = Command::new(BIN);
        cmd.arg(&self.root)
            .arg("--policies")
            .arg(self.policies())
            .arg("--config")
            .arg(self.dir.path().join("agentcgd.yaml"))
            .arg("--state")
            .arg(self.state())
            .args(extra)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                fs::File::create(self.dir.path().join("daemon.log")).unwrap(),
            ));
        adjust(&mut cmd);
        cmd.spawn()
            .inspect(|c| self.daemons.borrow_mut().push(c.id()))
            .unwrap()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Wait until the daemon has written its first state.
    pub fn wait_ready(&self) {
        assert!(
            // BPF verification of the procmon programs takes 20 s and more
            // on a loaded 2-core host: wait generously for the first state.
            // The state of the daemon started last (a restart finds the
            // previous run's file in place).
            wait_for(Duration::from_secs(90), || {
                let last = self.daemons.borrow().last().copied();
                fs::read_to_string(self.state())
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .is_some_and(|st| {
                        st["running"] == true && last.is_none_or(|pid| st["daemon_pid"] == pid)
                    })
            }),
            "daemon did not start; log:\n{}",
            self.log()
        );
    }

    pub fn spawn(&mut self, cmd: &mut Command) -> u32 {
        let c = spawn_copied(cmd.stdout(Stdio::null()));
        let pid = c.id();
        self.children.push(c);
        pid
    }

    pub fn session(&self, s: &str) -> String {
        format!(
            "/{}/{s}",
            self.root.strip_prefix(&self.mount).unwrap().display()
        )
    }

    pub fn status_json(&self) -> serde_json::Value {
        let out = Command::new(BIN)
            .args(["status", "--json", "--state"])
            .arg(self.state())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for &pid in self.daemons.borrow().iter() {
            if fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "agentcgd")
            {
                nix_kill(pid, libc::SIGKILL);
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        remove_tree(&self.root, &self.mount);
    }
}

/// Move anything left in ROOT (e.g. grandchildren) to the mount's root
/// cgroup, then remove the tree.
pub fn remove_tree(root: &Path, mount: &Path) {
    // Deepest first: the agent leaves, the sessions, ROOT.
    let mut dirs = Vec::new();
    for s in ["session_high", "session_low"] {
        if let Ok(rd) = fs::read_dir(root.join(s)) {
            dirs.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    dirs.extend(["session_high", "session_low", ""].map(|s| root.join(s)));
    for d in &dirs {
        for pid in fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
        {
            let _ = fs::write(mount.join("cgroup.procs"), pid);
        }
    }
    for d in &dirs {
        let deadline = Instant::now() + Duration::from_secs(3);
        while fs::remove_dir(d).is_err() && d.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

pub fn cgroup_of(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .unwrap_or_default()
}

/// The session a process is in: its cgroup, with an agent leaf below
/// `session_high`/`session_low` taken as its session.
pub fn session_of(pid: u32) -> String {
    let cg = cgroup_of(pid);
    match cg.rsplit_once('/') {
        Some((parent, _))
            if parent.ends_with("/session_high") || parent.ends_with("/session_low") =>
        {
            parent.to_string()
        }
        _ => cg,
    }
}

/// Assert that `pid` is in `session` within 2 s (`what` names it).
#[track_caller]
pub fn assert_in_session(pid: u32, session: &str, what: &str) {
    assert!(
        wait_for(Duration::from_secs(2), || session_of(pid) == session),
        "{what} (pid {pid}) in {}, want {session}",
        session_of(pid)
    );
}

/// Build the C program tests/fixtures/SRC at `out` (its directory made).
pub fn build_fixture(src: &str, out: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(src);
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    let st = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(out)
        .arg(&src)
        .status()
        .expect("cc (a C compiler) is needed to build the test agents");
    assert!(st.success(), "cc {} failed", src.display());
}

pub fn stop(mut d: Child) -> Duration {
    let t = Instant::now();
    nix_kill(d.id(), libc::SIGTERM);
    let st = d.wait().unwrap();
    assert!(st.success(), "daemon exit status {st}");
    t.elapsed()
}

pub fn nix_kill(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a pid we spawned.
    unsafe { libc::kill(pid as i32, sig) };
}

/// A family whose agent and tool names are unique to one test: daemons of
/// tests running in parallel see every exec on the host.
pub fn families(tag: &str) -> String {
    format!(
        "family: fake-agent
priority: high
match:
  - comm: agent-{tag}
descendants: true
tools:
  - match: [{{comm: tool-{tag}}}]
    priority: low
"
    )
}

/// Spawn a binary that a test copied a moment ago. Until a parallel test's
/// fork child execs, it holds that copy open for writing: ETXTBSY, retry.
#[allow(dead_code)]
pub fn spawn_copied(cmd: &mut Command) -> std::process::Child {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r.unwrap(),
        }
    }
}
