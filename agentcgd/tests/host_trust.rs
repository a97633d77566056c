//! Host root tests of the trust boundaries (docs/security.md): promotion by
//! imitation fails closed in strict mode, policy files others can write are
//! refused, a forged state file moves nothing, a hostile policy file does
//! not stop placement, and a replaced policy directory is still watched.
//!
//! The attackers run as uid 65534 (nobody) from a directory they own.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;

use common::*;

const NOBODY: u32 = 65534;

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn chown_nobody(p: &Path) {
    std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
}

/// The forking agent (tests/fixtures/forker.c) built at `out`: with a
/// non-numeric argument it forks nothing and waits, whatever its argv.
fn build_waiter(out: &Path) {
    build_fixture("forker.c", out);
    chmod(out, 0o755);
}

/// A directory owned by nobody, where the attacker builds their imitations.
fn attacker_dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("agentcg-attack")
        .tempdir_in("/tmp")
        .unwrap();
    chmod(d.path(), 0o755);
    chown_nobody(d.path());
    d
}

/// Make `p` and the directories up to `top` nobody's.
fn own_as_nobody(top: &Path, p: &Path) {
    let mut cur = Some(p);
    while let Some(c) = cur {
        chown_nobody(c);
        if c == top {
            break;
        }
        cur = c.parent();
    }
}

struct Scene {
    /// Attacks: must not reach session_high in strict mode.
    attacks: Vec<(&'static str, u32)>,
    /// Controls: root-installed agent run by nobody; must be placed.
    controls: Vec<(&'static str, u32)>,
}

/// The policy, the attackers' and the controls' processes.
fn scene(fx: &mut Fixture, attack: &Path) -> Scene {
    let t = fx.tag().to_string();
    // Shapes of the shipped policies, with names unique to this test (a
    // daemon here sees every exec on the host).
    fx.policy(
        "10-agent.yaml",
        &format!(
            "family: agent-{t}
priority: high
match:
  - comm: cl-{t}
  - argv: [\"node*\", \"*/lib/node_modules/@x-{t}/cli/cli.js\"]
  - exe: \"*/ag-{t}/versions/*\"
"
        ),
    );
    // The root-installed agent: root-owned files in root-owned 0755
    // directories (the fixture's directory opened up for nobody to run it).
    chmod(fx.dir.path(), 0o755);
    let sys = fx.dir.path().join("sys");
    build_waiter(&sys.join("bin").join(format!("cl-{t}")));
    build_waiter(&sys.join("bin/node"));
    let script = sys.join(format!("lib/node_modules/@x-{t}/cli/cli.js"));
    fs::create_dir_all(script.parent().unwrap()).unwrap();
    fs::write(&script, "// the real agent\n").unwrap();
    chmod(&script, 0o644);
    let mut walk = script.parent().map(Path::to_path_buf);
    while let Some(d) = walk.filter(|d| d.starts_with(&sys)) {
        chmod(&d, 0o755);
        walk = d.parent().map(Path::to_path_buf);
    }

    // 1. A copy named like the agent.
    let copy = attack.join(format!("cl-{t}"));
    build_waiter(&copy);
    // 2. `exec -a node ./node x/lib/node_modules/@x/cli/cli.js`: their own
    //    "node", their own script.
    let fake_node = attack.join("node");
    build_waiter(&fake_node);
    let fake_script = attack.join(format!("x/lib/node_modules/@x-{t}/cli/cli.js"));
    fs::create_dir_all(fake_script.parent().unwrap()).unwrap();
    fs::write(&fake_script, "// a miner\n").unwrap();
    // 3. A binary where a versions/ rule looks: ~/x/ag/versions/miner.
    let miner = attack.join(format!("x/ag-{t}/versions/miner"));
    build_waiter(&miner);
    for entry in walk_all(attack) {
        chown_nobody(&entry);
    }
    own_as_nobody(attack, attack);

    let as_nobody = |c: &mut Command| {
        c.uid(NOBODY).gid(NOBODY);
    };
    let run = |fx: &mut Fixture, exe: &Path, arg0: &str, args: &[&str], cwd: &Path| {
        let mut c = Command::new(exe);
        c.arg0(arg0).args(args).current_dir(cwd);
        as_nobody(&mut c);
        fx.spawn(&mut c)
    };
    let sys_script = script.display().to_string();
    let fake_rel = format!("x/lib/node_modules/@x-{t}/cli/cli.js");
    let attacks = vec![
        (
            "a copy named like the agent",
            run(fx, &copy, &format!("cl-{t}"), &["x"], attack),
        ),
        (
            "exec -a node ./node x/.../cli.js (own node, own script)",
            run(fx, &fake_node, "node", &[&fake_rel], attack),
        ),
        (
            "the root-owned node running the attacker's script",
            run(fx, &sys.join("bin/node"), "node", &[&fake_rel], attack),
        ),
        (
            "a binary at ~/x/AGENT/versions/miner",
            run(fx, &miner, "miner", &["x"], attack),
        ),
    ];
    let controls = vec![
        (
            "the root-installed agent by name",
            run(
                fx,
                &sys.join("bin").join(format!("cl-{t}")),
                &format!("cl-{t}"),
                &["x"],
                attack,
            ),
        ),
        (
            "root's node running the root-installed script",
            run(fx, &sys.join("bin/node"), "node", &[&sys_script], attack),
        ),
    ];
    Scene { attacks, controls }
}

fn walk_all(d: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in fs::read_dir(d).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_all(&p));
        }
        out.push(p);
    }
    out
}

fn in_high(fx: &Fixture, pid: u32) -> bool {
    let high = fx.session("session_high");
    let cg = cgroup_of(pid);
    cg == high || cg.starts_with(&format!("{high}/"))
}

#[test]
fn imitation_fails_closed_in_strict_mode() {
    let Some(mount) = env_or_skip() else { return };
    let attack = attacker_dir();
    let mut fx = Fixture::new("strict", mount);
    fs::write(
        fx.dir.path().join("agentcgd.yaml"),
        "trust: {mode: strict}\n",
    )
    .unwrap();
    let s = scene(&mut fx, attack.path());
    let daemon = fx.daemon(&["--events", "proc-connector", "--no-scheduler", "--no-memcg"]);
    fx.wait_ready();
    // The controls are placed: the daemon works and the rules match.
    for (what, pid) in &s.controls {
        assert!(
            wait_for(Duration::from_secs(3), || in_high(&fx, *pid)),
            "{what} (pid {pid}) not placed in strict mode; log:\n{}",
            fx.log()
        );
    }
    for (what, pid) in &s.attacks {
        assert!(
            !in_high(&fx, *pid),
            "{what} (pid {pid}) reached session_high in strict mode"
        );
    }
    let st = fx.status_json();
    assert!(st["counters"]["untrusted_refused"].as_u64().unwrap() >= s.attacks.len() as u64);
    assert!(fx.log().contains("strict trust:"), "{}", fx.log());
    // explain says why (run as root; it shows the redacted argv).
    let pid = s.attacks[0].1;
    let out = Command::new(BIN)
        .args(["explain", &pid.to_string(), "--policies"])
        .arg(fx.policies())
        .arg("--config")
        .arg(fx.dir.path().join("agentcgd.yaml"))
        .arg("--state")
        .arg(fx.state())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("strict mode REFUSES"), "{text}");
    stop(daemon);

    // Listing the user lets their own installs in.
    fs::write(
        fx.dir.path().join("agentcgd.yaml"),
        format!("trust: {{mode: strict, users: [\"{NOBODY}\"]}}\n"),
    )
    .unwrap();
    fs::remove_file(fx.state()).ok();
    let daemon = fx.daemon(&["--events", "proc-connector", "--no-scheduler", "--no-memcg"]);
    fx.wait_ready();
    for (what, pid) in &s.attacks {
        assert!(
            wait_for(Duration::from_secs(3), || in_high(&fx, *pid)),
            "{what}: a listed user's process is promoted"
        );
    }
    stop(daemon);
}

/// What default mode does with the same attacks (docs/security.md): a
/// match is a match, so the imitations are promoted; that is why a
/// multi-user host runs strict mode.
#[test]
fn default_mode_promotes_by_name_as_documented() {
    let Some(mount) = env_or_skip() else { return };
    let attack = attacker_dir();
    let mut fx = Fixture::new("deftrust", mount);
    let s = scene(&mut fx, attack.path());
    let daemon = fx.daemon(&["--events", "proc-connector", "--no-scheduler", "--no-memcg"]);
    fx.wait_ready();
    for (what, pid) in s.attacks.iter().chain(&s.controls) {
        assert!(
            wait_for(Duration::from_secs(3), || in_high(&fx, *pid)),
            "{what} (pid {pid}) not placed in default mode"
        );
    }
    stop(daemon);
}

#[test]
fn policy_files_others_can_write_are_refused() {
    let Some(mount) = env_or_skip() else { return };
    let mut fx = Fixture::new("polperm", mount);
    fx.policy("10-fake.yaml", &families(fx.tag()));
    let f = fx.policies().join("10-fake.yaml");
    chmod(&f, 0o666);
    let out = fx.command().output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("10-fake.yaml") && err.contains("writable by everyone"),
        "{err}"
    );
    chmod(&f, 0o644);
    chmod(&fx.policies(), 0o777);
    let out = Command::new(BIN)
        .args(["check", "--policies"])
        .arg(fx.policies())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("writable by everyone"),
        "{err}"
    );
    chmod(&fx.policies(), 0o755);

    // Running: a file turned over to a user is refused at reload and the
    // last good policy places on.
    let daemon = fx.daemon(&["--events", "proc-connector", "--no-scheduler", "--no-memcg"]);
    fx.wait_ready();
    chown_nobody(&f);
    fs::write(
        &f,
        families(fx.tag()).replace("priority: high", "priority: low"),
    )
    .unwrap();
    assert!(wait_for(Duration::from_secs(3), || fx.status_json()
        ["policy"]["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("owned by uid 65534"))));
    let agent = fx.tool(&format!("agent-{}", fx.tag()), "/bin/sleep");
    let p = fx.spawn(Command::new(&agent).arg("30"));
    assert!(wait_for(Duration::from_secs(2), || in_high(&fx, p)));
    stop(daemon);
}

#[test]
fn forged_state_file_moves_nothing() {
    let Some(mount) = env_or_skip() else { return };
    let mut fx = Fixture::new("forged", mount);
    fx.policy("10-fake.yaml", &families(fx.tag()));
    let daemon = fx.daemon(&["--events", "proc-connector", "--no-scheduler", "--no-memcg"]);
    fx.wait_ready();
    // A real entry, to forge from.
    let agent = fx.tool(&format!("agent-{}", fx.tag()), "/bin/sleep");
    let a = fx.spawn(Command::new(&agent).arg("30"));
    assert!(wait_for(Duration::from_secs(3), || fx.status_json()
        ["processes"]
        .as_array()
        .is_some_and(|v| v.iter().any(|p| p["pid"] == a))));
    stop(daemon);
    // An unrelated process, and a state entry for it (its true start time).
    let victim_bin = fx.tool(&format!("victim-{}", fx.tag()), "/bin/sleep");
    let victim = fx.spawn(Command::new(&victim_bin).arg("30"));
    std::thread::sleep(Duration::from_millis(50));
    let stat = fs::read_to_string(format!("/proc/{victim}/stat")).unwrap();
    let start: u64 = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    let mut st: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(fx.state()).unwrap()).unwrap();
    let mut entry = st["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == a)
        .unwrap()
        .clone();
    entry["pid"] = victim.into();
    entry["start_ticks"] = start.into();
    st["processes"] = serde_json::json!([entry]);
    let forged = serde_json::to_string(&st).unwrap();
    // (a) root's file, 0644: the entry is not adopted, because the
    //     process is not in the session the entry names.
    // (b) the same file writable by everyone: ignored with a warning.
    for (case, mode) in [("root's 0644", 0o644), ("0666", 0o666)] {
        fs::write(fx.state(), &forged).unwrap();
        chmod(&fx.state(), mode);
        let d = fx.daemon(&["--events", "proc-connector", "--no-scheduler", "--no-memcg"]);
        // wait_ready looks for the file: wait for the daemon's own instead.
        assert!(wait_for(Duration::from_secs(60), || fs::read_to_string(
            fx.state()
        )
        .is_ok_and(|t| t != forged)));
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            !in_high(&fx, victim),
            "{case}: forged entry moved pid {victim}"
        );
        if mode == 0o666 {
            assert!(
                fx.log().contains("previous state not adopted"),
                "{}",
                fx.log()
            );
        }
        let md = fs::metadata(fx.state()).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o644, "state file mode");
        stop(d);
    }
}

#[test]
fn hostile_policy_file_does_not_stop_placement_and_replaced_dir_is_watched() {
    let Some(mount) = env_or_skip() else { return };
    let mut fx = Fixture::new("hostile", mount);
    fx.policy("10-fake.yaml", &families(fx.tag()));
    let daemon = fx.daemon(&["--events", "proc-connector", "--no-scheduler", "--no-memcg"]);
    fx.wait_ready();
    // 70,000 levels deep (140 KB): refused before parsing; meanwhile and
    // after, agents are placed.
    fx.policy(
        "20-deep.yaml",
        &format!(
            "family: deep\npriority: high\nmatch: {}\n",
            "[".repeat(70_000)
        ),
    );
    let agent = fx.tool(&format!("agent-{}", fx.tag()), "/bin/sleep");
    let p = fx.spawn(Command::new(&agent).arg("30"));
    assert!(wait_for(Duration::from_secs(2), || in_high(&fx, p)));
    assert!(wait_for(Duration::from_secs(3), || fx.status_json()
        ["policy"]["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("nested deeper than"))));
    fs::remove_file(fx.policies().join("20-deep.yaml")).unwrap();

    // The directory moved away and created again, with a new family.
    let old = fx.dir.path().join("policies.old");
    fs::rename(fx.policies(), &old).unwrap();
    fs::create_dir(fx.policies()).unwrap();
    chmod(&fx.policies(), 0o755);
    let t = fx.tag().to_string();
    fx.policy(
        "10-new.yaml",
        &format!("family: newfam\npriority: low\nmatch:\n  - comm: new-{t}\n"),
    );
    let new_bin = fx.tool(&format!("new-{t}"), "/bin/sleep");
    assert!(
        wait_for(Duration::from_secs(3), || fx.status_json()["families"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x["name"] == "newfam"))),
        "the replaced directory was not watched; log:\n{}",
        fx.log()
    );
    let q = fx.spawn(Command::new(&new_bin).arg("30"));
    let low = fx.session("session_low");
    assert_in_session(q, &low, "q");
    // Settled: no reload loop once the new directory is watched.
    std::thread::sleep(Duration::from_secs(1));
    let reloads = || {
        fx.status_json()["counters"]["policy_reloads"]
            .as_u64()
            .unwrap()
    };
    let n = reloads();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(reloads(), n, "policies keep reloading with nothing changed");
    stop(daemon);
}

#[test]
fn explain_shows_argv_to_root_and_owner_only_and_redacts_secrets() {
    let Some(mount) = env_or_skip() else { return };
    let mut fx = Fixture::new("privacy", mount);
    fx.policy("10-fake.yaml", &families(fx.tag()));
    chmod(fx.dir.path(), 0o755);
    let key = "sk-ant-api03-abcdefghijklmnop";
    // A shell whose positional parameters hold the secrets (argv is what
    // explain shows).
    let pid = fx.spawn(Command::new("/bin/sh").args([
        "-c",
        "sleep 30; true",
        "sh",
        &format!("--api-key={key}"),
        "GITHUB_TOKEN=ghp_0123456789abcdefghij",
    ]));
    let explain = |uid: Option<u32>| {
        let mut c = Command::new(BIN);
        c.args(["explain", &pid.to_string(), "--policies"])
            .arg(fx.policies())
            .arg("--config")
            .arg(fx.dir.path().join("agentcgd.yaml"))
            .arg("--state")
            .arg(fx.state());
        if let Some(u) = uid {
            c.uid(u).gid(u);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let root = explain(None);
    assert!(root.contains("--api-key=<redacted>"), "{root}");
    assert!(root.contains("GITHUB_TOKEN=<redacted>"), "{root}");
    assert!(!root.contains(key) && !root.contains("ghp_0123"), "{root}");
    let other = explain(Some(NOBODY));
    assert!(other.contains("hidden: "), "{other}");
    assert!(!other.contains("api-key"), "{other}");
}
