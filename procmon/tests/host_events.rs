//! Host root tests: the real BPF programs (and the proc connector) on the
//! running kernel deliver real exec/exit events.

use std::collections::VecDeque;
use std::process::Command;
use std::time::{Duration, Instant};

use procmon::{Backend, Monitor, Options, ProcEvent};

/// A monitor and the events it delivered but the test has not looked at.
struct Rx {
    mon: Monitor,
    queue: VecDeque<ProcEvent>,
}

impl Rx {
    fn recv_timeout(&mut self, t: Duration) -> Result<ProcEvent, ()> {
        if self.queue.is_empty() {
            let q = &mut self.queue;
            self.mon.poll(t, &mut |ev| q.push_back(ev));
        }
        self.queue.pop_front().ok_or(())
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn start(opts: Options) -> Rx {
    Rx {
        mon: Monitor::start(&opts).expect("monitor starts"),
        queue: VecDeque::new(),
    }
}

/// The BPF source, or None (after saying why) where the test cannot load
/// BPF programs.
fn start_bpf() -> Option<Rx> {
    if !is_root() {
        eprintln!("SKIP: needs root (CAP_BPF/CAP_PERFMON) to load BPF programs");
        return None;
    }
    let rx = start(Options {
        allow_proc_connector: false,
        ..Options::default()
    });
    assert_eq!(
        rx.mon.backend(),
        Backend::Bpf,
        "reasons: {:?}",
        rx.mon.fallback_reasons()
    );
    Some(rx)
}

/// Wait for the exec and the exit of `child`, returning both events.
fn exec_and_exit(rx: &mut Rx, pid: u32) -> (ProcEvent, ProcEvent) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut exec, mut exit) = (None, None);
    while Instant::now() < deadline && (exec.is_none() || exit.is_none()) {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(ProcEvent::Exec(p)) if p.info.pid == pid => exec = Some(ProcEvent::Exec(p)),
            Ok(ev @ ProcEvent::Exit { pid: p, .. }) if p == pid => exit = Some(ev),
            _ => {}
        }
    }
    (
        exec.expect("exec event seen"),
        exit.expect("exit event seen"),
    )
}

/// Run `sh -c SCRIPT MARKER` to its end and return its exec's process
/// facts with its exit's wait status and start time.
fn sh_exec_and_exit(
    rx: &mut Rx,
    script: &str,
    marker: &str,
) -> (procmon::ProcInfo, Option<i32>, Option<u64>) {
    let child = Command::new("/bin/sh")
        .args(["-c", script, marker])
        .spawn()
        .unwrap();
    let pid = child.id();
    child.wait_with_output().unwrap();
    let (exec, exit) = exec_and_exit(rx, pid);
    let (
        ProcEvent::Exec(procmon::Exec { info, .. }),
        ProcEvent::Exit {
            exit_code,
            start_ticks,
            ..
        },
    ) = (exec, exit)
    else {
        unreachable!()
    };
    (info, exit_code, start_ticks)
}

#[test]
fn bpf_exec_and_exit_events_carry_argv_and_status() {
    let Some(mut rx) = start_bpf() else {
        return;
    };
    // sh -c 'exit 7' with a distinctive argument.
    let (info, exit_code, start_ticks) = sh_exec_and_exit(&mut rx, "exit 7", "procmon-test-marker");
    assert_eq!(
        info.argv,
        ["/bin/sh", "-c", "exit 7", "procmon-test-marker"]
    );
    assert_eq!(info.comm, "sh");
    assert_eq!(info.ppid, std::process::id());
    assert_eq!(info.uid, 0);
    assert!(info.exe.ends_with("sh") || info.exe.contains("dash") || info.exe.contains("bash"));
    assert!(info.start_ticks > 0);
    assert_eq!(exit_code, Some(7 << 8));
    assert_eq!(start_ticks, Some(info.start_ticks));
    assert!(rx.mon.stats().exec >= 1);
}

#[test]
fn bpf_normal_exit_arrives_without_its_own_wake_up() {
    let Some(mut rx) = start_bpf() else {
        return;
    };
    assert!(rx.mon.quiet_flush().is_some());
    let quiet_before = rx.mon.stats().exit_quiet;
    // Monitor::poll drains the quiet ring buffer whatever woke it.
    let (info, exit_code, start_ticks) =
        sh_exec_and_exit(&mut rx, "exit 0", "procmon-quiet-marker");
    assert_eq!(exit_code, Some(0));
    assert_eq!(start_ticks, Some(info.start_ticks), "PID-reuse guard");
    assert!(
        rx.mon.stats().exit_quiet > quiet_before,
        "a status-0 exit goes to the quiet ring buffer"
    );
}

#[test]
fn bpf_start_time_matches_proc() {
    let Some(mut rx) = start_bpf() else {
        return;
    };
    let mut child = Command::new("/bin/sleep").arg("2").spawn().unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(5);
    let info = loop {
        assert!(Instant::now() < deadline, "no exec event");
        if let Ok(ProcEvent::Exec(p)) = rx.recv_timeout(Duration::from_millis(100)) {
            if p.info.pid == pid {
                break p.info;
            }
        }
    };
    let from_proc = procmon::ProcFs::default().read(pid).unwrap();
    assert_eq!(
        info.start_ticks, from_proc.start_ticks,
        "PID-reuse guard relies on this"
    );
    // The event carries the path given to execve; /proc has the resolved one.
    assert_eq!(
        std::fs::canonicalize(&info.exe).unwrap().to_string_lossy(),
        from_proc.exe
    );
    child.kill().unwrap();
    let _ = child.wait();
    let ProcEvent::Exit { exit_code, .. } = exec_and_exit_after(&mut rx, pid) else {
        unreachable!()
    };
    assert_eq!(exit_code, Some(libc::SIGKILL));
}

fn exec_and_exit_after(rx: &mut Rx, pid: u32) -> ProcEvent {
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
    let mut rx = start(Options {
        allow_bpf: false,
        ..Options::default()
    });
    assert_eq!(rx.mon.backend(), Backend::ProcConnector);
    assert_eq!(rx.mon.fallback_reasons(), ["bpf: disabled"]);
    // A process that lives long enough for /proc enrichment.
    let child = Command::new("/bin/sh")
        .args(["-c", "sleep 0.3; exit 3", "netlink-marker"])
        .spawn()
        .unwrap();
    let pid = child.id();
    // Events are enriched from /proc when drained: drain while it runs.
    let (exec, exit) = exec_and_exit(&mut rx, pid);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let ProcEvent::Exec(procmon::Exec { info, .. }) = exec else {
        unreachable!()
    };
    assert_eq!(info.argv.last().map(String::as_str), Some("netlink-marker"));
    assert!(matches!(exit, ProcEvent::Exit { exit_code: Some(c), .. } if c == 3 << 8));
}
