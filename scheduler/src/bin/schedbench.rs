//! agentcg-schedbench: scheduler workloads for tests/bench/sched-fairness,
//! run in the VM under the kernel's scheduler and under scx_agentcg.
//!
//! - `pipe ROUNDS [CPU_A CPU_B]`: two threads pass one byte back and forth
//!   over two pipes (`perf bench sched pipe`); prints the elapsed seconds.
//!   With two CPUs, the threads are pinned one to each, so that every round
//!   trip takes the cross-CPU path (wake-up of the other CPU, both CPUs to
//!   and from idle) instead of whichever one the scheduler's placement and
//!   the moment's load make of an unpinned pair.
//! - `hackbench GROUPS LOOPS`: per group 10 sender and 10 receiver threads;
//!   every sender writes LOOPS 100-byte messages to every receiver of its
//!   group over a pipe (hackbench's pipe mode, threads); prints seconds.
//! - `wakeup SECONDS [WORKERS]`: a message thread wakes WORKERS (default 4)
//!   worker threads through pipes, every 2 ms; each worker records the delay
//!   from the write to its wake-up and spins 100 us (schbench's shape);
//!   prints `p50_us p99_us samples cycles burst_p50_us`: the wake-up delay's
//!   percentiles and count, how many times the message thread woke the
//!   workers, and the median time from its first write to the last
//!   worker's reply (what decides how many cycles fit in the run).
//! - `churn DIR COUNT`: COUNT times, makes the cgroup DIR/cN, moves itself
//!   into it, back to DIR/park (made if missing) and removes it: cgroups
//!   born and gone under the scheduler (VM case 39); prints seconds.

use std::io::{pipe, PipeReader, PipeWriter, Read, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn usage() -> ExitCode {
    eprintln!(
        "usage: agentcg-schedbench pipe ROUNDS [CPU_A CPU_B] | hackbench GROUPS LOOPS | wakeup SECONDS [WORKERS] | churn DIR COUNT"
    );
    ExitCode::from(2)
}

fn arg(args: &[String], i: usize) -> Option<u64> {
    args.get(i)?.parse().ok().filter(|&n| n > 0)
}

/// Pin the calling thread to `cpu`.
fn pin(cpu: usize) -> std::io::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)
        .and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set))
        .map_err(|e| std::io::Error::other(format!("pin to CPU {cpu}: {e}")))
}

fn pipe_bench(rounds: u64, cpus: Option<(usize, usize)>) -> std::io::Result<f64> {
    let (mut a_r, mut a_w) = pipe()?;
    let (mut b_r, mut b_w) = pipe()?;
    if let Some((a, _)) = cpus {
        pin(a)?;
    }
    let start = Instant::now();
    let peer = std::thread::spawn(move || -> std::io::Result<()> {
        if let Some((_, b)) = cpus {
            pin(b)?;
        }
        let mut buf = [0u8; 1];
        for _ in 0..rounds {
            a_r.read_exact(&mut buf)?;
            b_w.write_all(&buf)?;
        }
        Ok(())
    });
    let mut buf = [0u8; 1];
    let mine = (0..rounds).try_for_each(|_| {
        a_w.write_all(&buf)?;
        b_r.read_exact(&mut buf)
    });
    drop(a_w);
    // The peer's error (it could not pin itself) explains ours (a broken pipe).
    peer.join().expect("pipe peer panicked")?;
    mine?;
    Ok(start.elapsed().as_secs_f64())
}

fn hackbench(groups: u64, loops: u64) -> std::io::Result<f64> {
    const FDS: usize = 10;
    const MSG: usize = 100;
    let start = Instant::now();
    let mut threads = Vec::new();
    for _ in 0..groups {
        let mut writers: Vec<PipeWriter> = Vec::new();
        for _ in 0..FDS {
            let (mut r, w) = pipe()?;
            writers.push(w);
            threads.push(std::thread::spawn(move || -> std::io::Result<()> {
                let mut buf = [0u8; MSG];
                for _ in 0..loops * FDS as u64 {
                    r.read_exact(&mut buf)?;
                }
                Ok(())
            }));
        }
        for _ in 0..FDS {
            let mut ws: Vec<PipeWriter> = writers
                .iter()
                .map(|w| w.try_clone())
                .collect::<Result<_, _>>()?;
            threads.push(std::thread::spawn(move || -> std::io::Result<()> {
                let buf = [0u8; MSG];
                for _ in 0..loops {
                    for w in ws.iter_mut() {
                        w.write_all(&buf)?;
                    }
                }
                Ok(())
            }));
        }
    }
    for t in threads {
        t.join().expect("hackbench thread panicked")?;
    }
    Ok(start.elapsed().as_secs_f64())
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// What `wakeup` measured (see the module doc).
struct WakeStats {
    p50_us: u64,
    p99_us: u64,
    samples: usize,
    cycles: usize,
    burst_p50_us: u64,
}

fn wakeup(seconds: u64, workers: u64) -> std::io::Result<WakeStats> {
    let base = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let (mut ack_r, ack_w) = pipe()?;
    let mut kicks: Vec<PipeWriter> = Vec::new();
    let mut threads = Vec::new();
    for _ in 0..workers {
        let (mut r, w): (PipeReader, PipeWriter) = pipe()?;
        kicks.push(w);
        let mut ack = ack_w.try_clone()?;
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || -> std::io::Result<Vec<u64>> {
            let mut lat = Vec::new();
            let mut buf = [0u8; 8];
            loop {
                r.read_exact(&mut buf)?;
                let woke = base.elapsed().as_nanos() as u64;
                let sent = u64::from_ne_bytes(buf);
                if stop.load(Ordering::Relaxed) {
                    return Ok(lat);
                }
                lat.push(woke.saturating_sub(sent) / 1000);
                let spin = Instant::now();
                while spin.elapsed() < Duration::from_micros(100) {
                    std::hint::spin_loop();
                }
                ack.write_all(&[1])?;
            }
        }));
    }
    drop(ack_w);
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut buf = vec![0u8; workers as usize];
    let mut bursts = Vec::new();
    while Instant::now() < end {
        let first_write = Instant::now();
        for k in kicks.iter_mut() {
            let now = base.elapsed().as_nanos() as u64;
            k.write_all(&now.to_ne_bytes())?;
        }
        ack_r.read_exact(&mut buf)?;
        bursts.push(first_write.elapsed().as_micros() as u64);
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, Ordering::Relaxed);
    for k in kicks.iter_mut() {
        k.write_all(&0u64.to_ne_bytes())?;
    }
    let mut all = Vec::new();
    for t in threads {
        all.extend(t.join().expect("wakeup worker panicked")?);
    }
    all.sort_unstable();
    bursts.sort_unstable();
    Ok(WakeStats {
        p50_us: percentile(&all, 0.5),
        p99_us: percentile(&all, 0.99),
        samples: all.len(),
        cycles: bursts.len(),
        burst_p50_us: percentile(&bursts, 0.5),
    })
}

fn churn(dir: &std::path::Path, count: u64) -> std::io::Result<f64> {
    let park = dir.join("park");
    if !park.is_dir() {
        std::fs::create_dir(&park)?;
    }
    let pid = std::process::id().to_string();
    let start = Instant::now();
    for i in 0..count {
        let cg = dir.join(format!("c{i}"));
        std::fs::create_dir(&cg)?;
        std::fs::write(cg.join("cgroup.procs"), &pid)?;
        std::fs::write(park.join("cgroup.procs"), &pid)?;
        std::fs::remove_dir(&cg)?;
    }
    Ok(start.elapsed().as_secs_f64())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let res = match args.get(1).map(String::as_str) {
        Some("pipe") => {
            let cpus = match (args.get(3), args.get(4)) {
                (None, None) => None,
                (Some(a), Some(b)) => match (a.parse(), b.parse()) {
                    (Ok(a), Ok(b)) => Some((a, b)),
                    _ => return usage(),
                },
                _ => return usage(),
            };
            match arg(&args, 2) {
                Some(n) => pipe_bench(n, cpus).map(|s| println!("{s:.6}")),
                None => return usage(),
            }
        }
        Some("hackbench") => match (arg(&args, 2), arg(&args, 3)) {
            (Some(g), Some(l)) => hackbench(g, l).map(|s| println!("{s:.6}")),
            _ => return usage(),
        },
        Some("wakeup") => match arg(&args, 2) {
            Some(s) => wakeup(s, arg(&args, 3).unwrap_or(4)).map(|w| {
                println!(
                    "{} {} {} {} {}",
                    w.p50_us, w.p99_us, w.samples, w.cycles, w.burst_p50_us
                )
            }),
            None => return usage(),
        },
        Some("churn") => match (args.get(2), arg(&args, 3)) {
            (Some(d), Some(n)) => churn(d.as_ref(), n).map(|s| println!("{s:.4}")),
            _ => return usage(),
        },
        _ => return usage(),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentcg-schedbench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 51);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn workloads_run() {
        assert!(pipe_bench(100, None).unwrap() > 0.0);
        assert!(hackbench(1, 5).unwrap() > 0.0);
        let w = wakeup(1, 2).unwrap();
        assert!(w.samples > 0 && w.p50_us <= w.p99_us);
        // every cycle wakes both workers once
        assert!(w.cycles > 0 && w.samples == 2 * w.cycles);
        assert!(w.burst_p50_us > 0);
    }

    /// The pinned-apart ping-pong really runs its threads on the two CPUs.
    #[test]
    fn pipe_pins_each_thread() {
        if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
            eprintln!("skipped: needs 2 CPUs");
            return;
        }
        let main = std::thread::spawn(|| {
            pipe_bench(50, Some((0, 1))).unwrap();
            // pinned by pipe_bench, still
            nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap()
        });
        let set = main.join().unwrap();
        assert!(set.is_set(0).unwrap() && !set.is_set(1).unwrap());
        assert!(pin(usize::MAX / 2).is_err());
    }
}
