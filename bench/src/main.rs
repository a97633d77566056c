//! agentcg-bench-placement: exec-to-placement latency benchmark.
//!
//! `agentcg-bench-placement run --rate R --count N --target REL [--timeout-ms T]`
//! spawns N probe processes (this binary, `probe` sub-command) on an absolute
//! schedule of R per second and prints, as JSON, how long each took from the
//! driver's spawn call to finding itself in the cgroup REL (the path relative
//! to the cgroup2 mount, as in the `0::` line of /proc/self/cgroup), and how
//! many were never placed within T ms.
//!
//! `agentcg-bench-placement probe REL SPAWN_NS TIMEOUT_MS ID` is the spawned
//! process: it polls /proc/self/cgroup with a back-off whose sleep is 1/10 of
//! the time waited so far (20 µs .. 100 ms), so the reading errs late by at
//! most ~10 % (plus one sleep's wake-up) while thousands of slow-to-place
//! probes do not swamp the CPUs. It writes one line to stdout (a pipe shared
//! by all probes; one write of < PIPE_BUF bytes is atomic):
//! `ID placed SPAWN_TO_PLACED_NS SPAWN_TO_MAIN_NS FIRST_CHECK(0|1)` or
//! `ID missed SPAWN_TO_MAIN_NS`.
//!
//! The figure is spawn (fork+exec) to in-cgroup: an upper bound of
//! exec-to-placement, since it includes the spawn, the exec and the probe's
//! start-up before its first check. `main_to_placed_*` (from the probe's
//! first instruction in main to in-cgroup, 0 when already placed at the
//! first check) is the matching lower bound: the exec event fires before
//! main runs.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn precise_timers() {
    // The default 50 µs timer slack would dominate the short sleeps.
    // SAFETY: plain prctl with an integer argument.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

fn sleep_ns(ns: u64) {
    std::thread::sleep(Duration::from_nanos(ns));
}

/// The cgroup2 path of this process (the `0::` line), read with one
/// lseek+read on an fd kept open (seq_file regenerates it on each read).
fn cgroup_v2_path(fd: libc::c_int, buf: &mut [u8]) -> Option<&[u8]> {
    // SAFETY: fd is open; buf is a valid writable buffer of buf.len() bytes.
    let n = unsafe {
        libc::lseek(fd, 0, libc::SEEK_SET);
        libc::read(fd, buf.as_mut_ptr().cast(), buf.len())
    };
    if n <= 0 {
        return None;
    }
    let data = &buf[..n as usize];
    data.split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"0::"))
}

fn probe(args: &[String]) -> ExitCode {
    let t_main = mono_ns();
    let [target, spawn_ns, timeout_ms, id] = args else {
        eprintln!("usage: agentcg-bench-placement probe TARGET_REL SPAWN_NS TIMEOUT_MS ID");
        return ExitCode::from(2);
    };
    let (Ok(spawn_ns), Ok(timeout_ms)) = (spawn_ns.parse::<u64>(), timeout_ms.parse::<u64>())
    else {
        eprintln!("probe: bad SPAWN_NS or TIMEOUT_MS");
        return ExitCode::from(2);
    };
    precise_timers();
    let target = target.as_bytes();
    // SAFETY: a NUL-terminated literal path.
    let fd = unsafe { libc::open(c"/proc/self/cgroup".as_ptr(), libc::O_RDONLY) };
    if fd < 0 {
        eprintln!("probe: open /proc/self/cgroup failed");
        return ExitCode::from(1);
    }
    let deadline = t_main + timeout_ms * 1_000_000;
    let mut buf = [0u8; 4096];
    let mut first = true;
    let line = loop {
        // The target or a cgroup below it (agentcgd's per-agent leaf).
        let placed = cgroup_v2_path(fd, &mut buf).is_some_and(|p| {
            p.strip_prefix(target)
                .is_some_and(|rest| rest.is_empty() || rest[0] == b'/')
        });
        let now = mono_ns();
        if placed {
            break format!(
                "{id} placed {} {} {}\n",
                now.saturating_sub(spawn_ns),
                t_main.saturating_sub(spawn_ns),
                u8::from(first)
            );
        }
        if now >= deadline {
            break format!("{id} missed {}\n", t_main.saturating_sub(spawn_ns));
        }
        first = false;
        let waited = now - t_main;
        sleep_ns((waited / 10).clamp(20_000, 100_000_000).min(deadline - now));
    };
    // One write: lines from concurrent probes must not interleave.
    // SAFETY: writing an owned buffer to fd 1.
    unsafe { libc::write(1, line.as_ptr().cast(), line.len()) };
    ExitCode::SUCCESS
}

struct RunOpts {
    rate: f64,
    count: usize,
    target: String,
    timeout_ms: u64,
    probe: std::path::PathBuf,
}

fn parse_run(args: &[String]) -> Result<RunOpts, String> {
    let mut o = RunOpts {
        rate: 100.0,
        count: 300,
        target: String::new(),
        timeout_ms: 3000,
        probe: std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--rate" => o.rate = val()?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--count" => o.count = val()?.parse().map_err(|e| format!("--count: {e}"))?,
            "--target" => o.target = val()?.clone(),
            "--timeout-ms" => {
                o.timeout_ms = val()?.parse().map_err(|e| format!("--timeout-ms: {e}"))?
            }
            "--probe" => o.probe = val()?.into(),
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    if o.target.is_empty() || !o.target.starts_with('/') {
        return Err(
            "--target REL is required: the cgroup2 path, e.g. /agentcg-bench/session_high".into(),
        );
    }
    if o.rate.is_nan() || o.rate <= 0.0 || o.count == 0 {
        return Err("--rate and --count must be positive".into());
    }
    Ok(o)
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn ms(ns: Option<u64>) -> serde_json::Value {
    ns.map_or(serde_json::Value::Null, |v| {
        serde_json::json!((v as f64 / 1e6 * 1000.0).round() / 1000.0)
    })
}

fn run(args: &[String]) -> Result<(), String> {
    let o = parse_run(args)?;
    precise_timers();
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe2: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 just returned these two fresh descriptors.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for l in BufReader::new(std::fs::File::from(rd)).lines() {
            match l {
                Ok(l) => lines.push(l),
                Err(_) => break,
            }
        }
        lines
    });
    // Reap probes as they exit so that zombies do not pile up.
    let spawning = Arc::new(AtomicBool::new(true));
    let reaper = {
        let spawning = spawning.clone();
        std::thread::spawn(move || loop {
            let mut st = 0;
            // SAFETY: waitpid on any child with a valid status pointer.
            let r = unsafe { libc::waitpid(-1, &mut st, 0) };
            if r < 0 {
                if !spawning.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };

    let period_ns = (1e9 / o.rate) as u64;
    let timeout = o.timeout_ms.to_string();
    let mut spawn_errors = 0usize;
    let mut max_lag_ns = 0u64;
    let start = mono_ns() + 1_000_000;
    let mut first_spawn = 0;
    let mut last_spawn = 0;
    for i in 0..o.count {
        let due = start + i as u64 * period_ns;
        let now = mono_ns();
        if now < due {
            sleep_ns(due - now);
        }
        let out = wr.try_clone().map_err(|e| format!("dup: {e}"))?;
        let spawn_ns = mono_ns();
        max_lag_ns = max_lag_ns.max(spawn_ns.saturating_sub(due));
        if i == 0 {
            first_spawn = spawn_ns;
        }
        last_spawn = spawn_ns;
        let r = Command::new(&o.probe)
            .arg("probe")
            .arg(&o.target)
            .arg(spawn_ns.to_string())
            .arg(&timeout)
            .arg(i.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .spawn();
        match r {
            // The reaper waits for it; dropping a Child neither kills nor waits.
            Ok(child) => drop(child),
            Err(e) => {
                if spawn_errors == 0 {
                    eprintln!("spawn {}: {e}", o.probe.display());
                }
                spawn_errors += 1;
            }
        }
    }
    spawning.store(false, Ordering::SeqCst);
    drop(wr);
    let lines = reader.join().map_err(|_| "reader thread panicked")?;
    let _ = reaper.join();

    let mut lat = Vec::new();
    let mut from_main = Vec::new();
    let mut startup = Vec::new();
    let mut missed = 0usize;
    let mut first_check = 0usize;
    let mut garbled = 0usize;
    for l in &lines {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.as_slice() {
            [_, "placed", t, s, fc] => {
                let (Ok(t), Ok(s)) = (t.parse::<u64>(), s.parse::<u64>()) else {
                    garbled += 1;
                    continue;
                };
                lat.push(t);
                from_main.push(t.saturating_sub(s));
                startup.push(s);
                first_check += usize::from(*fc == "1");
            }
            [_, "missed", s] => {
                missed += 1;
                if let Ok(s) = s.parse() {
                    startup.push(s);
                }
            }
            _ => garbled += 1,
        }
    }
    // Probes that died without reporting count as missed too.
    let silent = o.count - spawn_errors - lines.len().min(o.count - spawn_errors);
    lat.sort_unstable();
    from_main.sort_unstable();
    startup.sort_unstable();
    let span_s = (last_spawn - first_spawn) as f64 / 1e9;
    let achieved = if span_s > 0.0 {
        (o.count - 1) as f64 / span_s
    } else {
        0.0
    };
    let mean = if lat.is_empty() {
        None
    } else {
        Some(lat.iter().sum::<u64>() / lat.len() as u64)
    };
    let j = serde_json::json!({
        "rate": o.rate,
        "achieved_rate": (achieved * 10.0).round() / 10.0,
        "count": o.count,
        "target": o.target,
        "timeout_ms": o.timeout_ms,
        "placed": lat.len(),
        "missed": missed + silent + garbled,
        "missed_timeout": missed,
        "silent": silent,
        "garbled": garbled,
        "spawn_errors": spawn_errors,
        "placed_at_first_check": first_check,
        "p50_ms": ms(pct(&lat, 50.0)),
        "p90_ms": ms(pct(&lat, 90.0)),
        "p99_ms": ms(pct(&lat, 99.0)),
        "max_ms": ms(lat.last().copied()),
        "mean_ms": ms(mean),
        "main_to_placed_p50_ms": ms(pct(&from_main, 50.0)),
        "main_to_placed_p99_ms": ms(pct(&from_main, 99.0)),
        "main_to_placed_max_ms": ms(from_main.last().copied()),
        "spawn_to_main_p50_ms": ms(pct(&startup, 50.0)),
        "spawn_to_main_p99_ms": ms(pct(&startup, 99.0)),
        "max_schedule_lag_ms": ms(Some(max_lag_ns)),
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{j}").map_err(|e| e.to_string())?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("probe") => probe(&args[2..]),
        Some("run") => match run(&args[2..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("agentcg-bench-placement: {e}");
                ExitCode::from(2)
            }
        },
        _ => {
            eprintln!(
                "usage: agentcg-bench-placement run --rate R --count N --target REL \
                 [--timeout-ms T] [--probe PATH]\n       \
                 agentcg-bench-placement probe TARGET_REL SPAWN_NS TIMEOUT_MS ID"
            );
            let _ = std::io::stderr().flush();
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(pct(&v, 50.0), Some(50));
        assert_eq!(pct(&v, 99.0), Some(99));
        assert_eq!(pct(&v, 100.0), Some(100));
        assert_eq!(pct(&[7], 99.0), Some(7));
        assert_eq!(pct(&[], 50.0), None);
    }

    #[test]
    fn reads_own_cgroup() {
        let fd = unsafe { libc::open(c"/proc/self/cgroup".as_ptr(), libc::O_RDONLY) };
        assert!(fd >= 0);
        let mut buf = [0u8; 4096];
        // On a cgroup2 or hybrid host the 0:: line exists; twice, via lseek.
        let a = cgroup_v2_path(fd, &mut buf).map(<[u8]>::to_vec);
        let b = cgroup_v2_path(fd, &mut buf).map(<[u8]>::to_vec);
        assert_eq!(a, b);
    }
}
