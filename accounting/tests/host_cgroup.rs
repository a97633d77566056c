//! Real processes in a real scratch cgroup on this host's cgroup2 mount:
//! the figures come from the cgroup where the file exists (cpu.stat is core
//! cgroup v2, present without the cpu controller) and from /proc where it
//! does not (memory.current needs the memory controller).

use std::time::Duration;

use accounting::{AgentRef, Gpu, Options, Sampler, Source};
use cgroupfs::Cgroup;

#[test]
fn real_leaf_cpu_from_cgroup_memory_where_available() {
    let Some(mnt) = cgroupfs::find_mount() else {
        eprintln!("SKIP: no cgroup2 mount in /proc/mounts");
        return;
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: needs root to create cgroups under {}", mnt.display());
        return;
    }
    let top = Cgroup::new(mnt.join(format!("agentcg-acct-test-{}", std::process::id())));
    let leaf = top.child("session_high").child("spin-1");
    leaf.create().unwrap();
    let mut child = std::process::Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .spawn()
        .unwrap();
    leaf.add_proc(child.id()).unwrap();
    let mut s = Sampler::new(
        Options {
            interval: Duration::ZERO,
            ..Options::default()
        },
        Gpu::unavailable("test"),
    );
    let a = AgentRef {
        id: "spin-1".into(),
        leaves: vec![leaf.path().to_path_buf()],
        pids: vec![],
    };
    s.sample(std::slice::from_ref(&a));
    std::thread::sleep(Duration::from_millis(400));
    let u = s.sample(std::slice::from_ref(&a))["spin-1"].clone();
    child.kill().unwrap();
    child.wait().unwrap();
    let has_mem = leaf.has("memory.current");
    // Empty now: the kernel says so in cgroup.events; then it can go.
    for _ in 0..100 {
        if !leaf.events().unwrap().populated {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    leaf.remove().unwrap();
    top.child("session_high").remove().unwrap();
    top.remove().unwrap();

    assert_eq!(u.sources.cpu, Source::Cgroup, "{u:?}");
    assert!(u.cpu_usec > 50_000, "400 ms of spinning: {u:?}");
    assert!(u.cpu_percent.unwrap() > 10.0, "{u:?}");
    assert_eq!(u.processes, 1);
    assert_eq!(u.sessions[0].session, "session_high");
    assert!(u.memory_bytes > 0, "{u:?}");
    let want = if has_mem {
        Source::Cgroup
    } else {
        Source::Proc
    };
    assert_eq!(u.sources.memory, want, "{u:?}");
    if !has_mem {
        assert_eq!(u.oom_kills, None, "no memory.events without the controller");
    }
}
