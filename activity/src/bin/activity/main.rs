//! agentcg-activity: agentcgd's activity monitor on its own.
//!
//! - `watch CGROUP...`: watch each leaf cgroup as one agent, print each
//!   transition, and at the end (SIGINT, SIGTERM or --duration-s) the last
//!   snapshot as JSON, with the BPF programs' own cost (run_cnt,
//!   run_time_ns; non-zero while kernel.bpf_stats_enabled is 1).
//! - `selftest SCENARIO --leaf DIR`: the end-to-end checks (fake agents in a
//!   real leaf) of the host tests and the VM case; exit code 3 when a
//!   scenario's premise did not hold on this run (run it again).
//! - `fake ...`: the fake agents themselves.

mod fake;
mod selftest;

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use activity::{AgentKey, Monitor, MonoTime, Options, Subject};
use clap::{Parser, Subcommand};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

#[derive(Parser, Debug)]
#[command(
    name = "agentcg-activity",
    version,
    about = "agentcgd's observe-only activity monitor"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Watch leaf cgroups (one agent each) and print their transitions.
    Watch {
        #[arg(long, value_enum, default_value = "auto")]
        backend: selftest::BackendArg,
        #[arg(long, default_value_t = 2000)]
        threshold_ms: u64,
        /// Stop after this many seconds (default: at SIGINT/SIGTERM).
        #[arg(long)]
        duration_s: Option<f64>,
        /// Leaf cgroups; none: the program is loaded and not attached.
        cgroups: Vec<PathBuf>,
    },
    /// End-to-end checks with a fake agent in an existing empty leaf.
    Selftest(selftest::Args),
    /// A fake agent (waits for one line on stdin, then runs).
    #[command(subcommand)]
    Fake(fake::Fake),
}

fn watch(
    backend: selftest::BackendArg,
    threshold_ms: u64,
    duration_s: Option<f64>,
    cgroups: Vec<PathBuf>,
) -> anyhow::Result<()> {
    let mut mon = Monitor::start(&Options {
        idle_threshold: Duration::from_millis(threshold_ms),
        backend: backend.choice(),
        ..Options::default()
    });
    let (b, why) = mon.backend();
    println!(
        "backend {b}{}",
        why.map(|w| format!(" ({w})")).unwrap_or_default()
    );
    if mon.as_fd().is_none() {
        anyhow::bail!("the monitor is disabled");
    }
    for (i, cg) in cgroups.iter().enumerate() {
        let name = cg
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        mon.watch(AgentKey::new(name, i as u32), &[(cg.clone(), 0)])?;
    }
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    mask.thread_block()?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
    let end = duration_s.map(|s| MonoTime::now() + Duration::from_secs_f64(s));
    println!("ready");
    loop {
        let now = MonoTime::now();
        if end.is_some_and(|e| now >= e) {
            break;
        }
        let timeout = end
            .map(|e| {
                PollTimeout::try_from(e.saturating_since(now).as_millis().max(1) as u64)
                    .unwrap_or(PollTimeout::MAX)
            })
            .unwrap_or(PollTimeout::NONE);
        let (ready, stop) = {
            let fd = mon.as_fd().expect("enabled");
            let mut fds = [
                PollFd::new(fd.as_fd(), PollFlags::POLLIN),
                PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, timeout) {
                Ok(_) => (
                    fds[0].revents().is_some_and(|r| !r.is_empty()),
                    fds[1].revents().is_some_and(|r| !r.is_empty()),
                ),
                Err(nix::errno::Errno::EINTR) => (false, false),
                Err(e) => return Err(e.into()),
            }
        };
        if stop {
            break;
        }
        if ready {
            for c in mon.process(MonoTime::now()) {
                let who = match &c.subject {
                    Subject::Agent(a) => format!("agent {a}"),
                    Subject::Family(f) => format!("family {f}"),
                };
                let t = c.transition;
                println!(
                    "transition {who} {} -> {} at_ns {} detected_ns {}",
                    t.from,
                    t.to,
                    t.at.as_nanos(),
                    t.detected.as_nanos()
                );
            }
        }
    }
    let snap = mon.snapshot(MonoTime::now());
    println!("snapshot {}", serde_json::to_string(&snap)?);
    for p in &snap.stats.programs {
        let per = if p.run_cnt > 0 {
            p.run_time_ns as f64 / p.run_cnt as f64
        } else {
            0.0
        };
        println!(
            "prog {} run_cnt {} run_time_ns {} ns_per_run {per:.1}",
            p.name, p.run_cnt, p.run_time_ns
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Fake(f) => fake::run(f),
        Cmd::Selftest(a) => selftest::run(a).inspect(|&ok| {
            println!("{}", if ok { "PASS" } else { "FAILED" });
        }),
        Cmd::Watch {
            backend,
            threshold_ms,
            duration_s,
            cgroups,
        } => watch(backend, threshold_ms, duration_s, cgroups).map(|_| true),
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) if e.downcast_ref::<selftest::Inconclusive>().is_some() => {
            eprintln!("agentcg-activity: {e:#}");
            println!("INCONCLUSIVE");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("agentcg-activity: {e:#}");
            ExitCode::from(2)
        }
    }
}
