//! Fake agents for the end-to-end checks. Each waits for one line on stdin
//! (so that it is in its leaf before it does anything), then prints each
//! phase it enters as `PHASE <CLOCK_MONOTONIC ns>` on stdout.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use activity::MonoTime;

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Fake {
    /// WORK_MS of CPU work, then SLEEP_MS of sleep, forever.
    Cycle { work_ms: u64, sleep_ms: u64 },
    /// Blocked in a read on stdin; each line read: WORK_MS of work.
    Block {
        #[arg(long, default_value_t = 200)]
        work_ms: u64,
    },
    /// One thread spinning among SLEEPERS sleeping threads.
    SpinAmong { sleepers: usize },
}

fn phase(name: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{name} {}", MonoTime::now().as_nanos());
    let _ = out.flush();
}

fn spin(d: Duration) {
    let end = Instant::now() + d;
    let mut x = 0u64;
    while Instant::now() < end {
        for i in 0..1000 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
}

pub fn run(f: Fake) -> ! {
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    if lines.next().is_none() {
        std::process::exit(0);
    }
    match f {
        Fake::Cycle { work_ms, sleep_ms } => loop {
            phase("work");
            spin(Duration::from_millis(work_ms));
            phase("sleep");
            std::thread::sleep(Duration::from_millis(sleep_ms));
        },
        Fake::Block { work_ms } => loop {
            phase("block");
            match lines.next() {
                Some(Ok(_)) => {
                    phase("work");
                    spin(Duration::from_millis(work_ms));
                }
                _ => std::process::exit(0),
            }
        },
        Fake::SpinAmong { sleepers } => {
            // The main thread is one of the sleepers.
            for _ in 1..sleepers {
                std::thread::spawn(|| loop {
                    std::thread::sleep(Duration::from_secs(3600));
                });
            }
            std::thread::spawn(|| loop {
                spin(Duration::from_secs(1));
            });
            phase("spin");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }
}
