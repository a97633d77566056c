//! Host root tests: the real BPF programs (and the proc connector) on the
//! running kernel deliver real exec/exit events.

use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use procmon::{Backend, Monitor, Options, ProcEvent};

fn is_root() -> bool {
    nix_uid() == 0
}

fn nix_uid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

fn start(opts: Options) -> (Monitor, mpsc::Receiver<ProcEvent>) {
    let (tx, rx) = mpsc::channel();
    let mon = Monitor::start(
        &opts,
        Box::new(move |ev| {
            let _ = tx.send(ev);
        }),
    )
    .expect("monitor starts");
    (mon, rx)
}

/// Wait for the exec and the exit of `child`, returning both events.
fn exec_and_exit(rx: &mpsc::Receiver<ProcEvent>, pid: u32) -> (ProcEvent, ProcEvent) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut exec, mut exit) = (None, None);
    while Instant::now() < deadline && (exec.is_none() || exit.is_none()) {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(ProcEvent::Exec(p)) if p.pid == pid => exec = Some(ProcEvent::Exec(p)),
            Ok(ev @ ProcEvent::Exit { pid: p, .. }) if p == pid => exit = Some(ev),
            _ => {}
        }
    }
    (
        exec.expect("exec event seen"),
        exit.expect("exit event seen"),
    )
}

#[test]
fn bpf_exec_and_exit_events_carry_argv_and_status() {
    if !is_root() {
        eprintln!("SKIP: needs root (CAP_BPF/CAP_PERFMON) to load BPF programs");
        return;
    }
    let (mon, rx) = start(Options {
        allow_proc_connector: false,
        ..Options::default()
    });
    assert_eq!(
        mon.backend(),
        Backend::Bpf,
        "reasons: {:?}",
        mon.fallback_reasons()
    );
    // sh -c 'exit 7' with a distinctive argument.
    let child = Command::new("/bin/sh")
        .args(["-c", "exit 7", "procmon-test-marker"])
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7));
    let (exec, exit) = exec_and_exit(&rx, pid);
    let ProcEvent::Exec(info) = exec else {
        unreachable!()
    };
    assert_eq!(
        info.argv,
        ["/bin/sh", "-c", "exit 7", "procmon-test-marker"]
    );
    assert_eq!(info.comm, "sh");
    assert_eq!(info.ppid, std::process::id());
    assert_eq!(info.uid, 0);
    assert!(info.exe.ends_with("sh") || info.exe.contains("dash") || info.exe.contains("bash"));
    assert!(info.start_ticks > 0);
    let ProcEvent::Exit {
        exit_code,
        start_ticks,
        ..
    } = exit
    else {
        unreachable!()
    };
    assert_eq!(exit_code, Some(7 << 8));
    assert_eq!(start_ticks, Some(info.start_ticks));
    assert!(
        mon.counters()
            .exec
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    mon.stop();
}

#[test]
fn bpf_start_time_matches_proc() {
    if !is_root() {
        eprintln!("SKIP: needs root to load BPF programs");
        return;
    }
    let (mon, rx) = start(Options::default());
    assert_eq!(mon.backend(), Backend::Bpf);
    let mut child = Command::new("/bin/sleep").arg("2").spawn().unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(5);
    let info = loop {
        assert!(Instant::now() < deadline, "no exec event");
        if let Ok(ProcEvent::Exec(p)) = rx.recv_timeout(Duration::from_millis(100)) {
            if p.pid == pid {
                break p;
            }
        }
    };
    let from_proc = procmon::ProcFs::default().read(pid).unwrap();
    assert_eq!(
        info.start_ticks, from_proc.start_ticks,
        "PID-reuse guard relies on this"
    );
    assert_eq!(info.exe, from_proc.exe);
    child.kill().unwrap();
    let _ = child.wait();
    let ProcEvent::Exit { exit_code, .. } = exec_and_exit_after(&rx, pid) else {
        unreachable!()
    };
    assert_eq!(exit_code, Some(libc::SIGKILL));
}

fn exec_and_exit_after(rx: &mpsc::Receiver<ProcEvent>, pid: u32) -> ProcEvent {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(ev @ ProcEvent::Exit { pid: p, .. }) = rx.recv_timeout(Duration::from_millis(100))
        {
            if p == pid {
                return ev;
            }
        }
    }
    panic!("no exit event for {pid}");
}

#[test]
fn proc_connector_fallback_delivers_events() {
    if !is_root() {
        eprintln!("SKIP: needs root (CAP_NET_ADMIN) for the proc connector");
        return;
    }
    let (mon, rx) = start(Options {
        allow_bpf: false,
        ..Options::default()
    });
    assert_eq!(mon.backend(), Backend::ProcConnector);
    assert_eq!(mon.fallback_reasons(), ["bpf: disabled"]);
    // A process that lives long enough for /proc enrichment.
    let child = Command::new("/bin/sh")
        .args(["-c", "sleep 0.3; exit 3", "netlink-marker"])
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let (exec, exit) = exec_and_exit(&rx, pid);
    let ProcEvent::Exec(info) = exec else {
        unreachable!()
    };
    assert_eq!(info.argv.last().map(String::as_str), Some("netlink-marker"));
    assert!(matches!(exit, ProcEvent::Exit { exit_code: Some(c), .. } if c == 3 << 8));
}
