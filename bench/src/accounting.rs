//! agentcg-bench-accounting: the cost of the per-agent accounting sweep.
//!
//! `agentcg-bench-accounting bench --mode cgroup|proc|proc-nofds
//!     [--agents 50] [--procs 20] [--sweeps 20] [--interval-ms 2000]
//!     [--root CGROUP_DIR]`
//! starts AGENTS x PROCS real processes (sleeping children of this one);
//! with `--mode cgroup` each agent's processes go into a real leaf
//! `ROOT/session_high/bench-<i>` (ROOT: a scratch cgroup it creates and
//! removes), and the sampler reads the leaves' files; with `proc` it gets
//! only the pids and samples /proc (`proc-nofds`: without counting fds).
//! It times SWEEPS forced sweeps by the calling thread's CPU clock and
//! prints one JSON object: CPU per sweep (mean, p50, max, in µs), that cost
//! as % of one CPU at INTERVAL, the sources the sampler used, /proc reads
//! per sweep, and this process's RSS before the sampler and after the sweeps.
//!
//! `agentcg-bench-accounting sample LEAF...` prints one agent's usage
//! (JSON) from its leaves: two sweeps 1 s apart (for the CPU rate).

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use accounting::{AgentRef, Gpu, Options, Sampler};
use cgroupfs::Cgroup;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

struct Args {
    mode: String,
    agents: usize,
    procs: usize,
    sweeps: usize,
    interval_ms: u64,
    root: Option<PathBuf>,
}

fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        mode: "cgroup".into(),
        agents: 50,
        procs: 20,
        sweeps: 20,
        interval_ms: 2000,
        root: None,
    };
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--mode" => a.mode = v()?,
            "--agents" => a.agents = v()?.parse().map_err(|e| format!("--agents: {e}"))?,
            "--procs" => a.procs = v()?.parse().map_err(|e| format!("--procs: {e}"))?,
            "--sweeps" => a.sweeps = v()?.parse().map_err(|e| format!("--sweeps: {e}"))?,
            "--interval-ms" => {
                a.interval_ms = v()?.parse().map_err(|e| format!("--interval-ms: {e}"))?
            }
            "--root" => a.root = Some(PathBuf::from(v()?)),
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    if !["cgroup", "proc", "proc-nofds"].contains(&a.mode.as_str()) {
        return Err(format!(
            "--mode {}: want cgroup, proc or proc-nofds",
            a.mode
        ));
    }
    Ok(a)
}

/// Children killed and reaped, scratch cgroups removed, on every exit path.
struct Fixture {
    children: Vec<Child>,
    leaves: Vec<Cgroup>,
    top: Option<Cgroup>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        for l in &self.leaves {
            for _ in 0..100 {
                if l.remove().is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if let Some(t) = &self.top {
            let _ = t.child("session_high").remove();
            let _ = t.remove();
        }
    }
}

fn bench(a: Args) -> Result<(), String> {
    let rss_before = rss_kb();
    let mut fx = Fixture {
        children: Vec::new(),
        leaves: Vec::new(),
        top: None,
    };
    if a.mode == "cgroup" {
        let mnt = cgroupfs::find_mount().ok_or("no cgroup2 mount")?;
        let top = Cgroup::new(
            a.root
                .clone()
                .unwrap_or_else(|| mnt.join(format!("agentcg-bench-acct-{}", std::process::id()))),
        );
        // Enable what the mount offers, as agentcgd does for its tree.
        let root = Cgroup::new(&mnt);
        let offered: Vec<_> = root
            .controllers()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| {
                matches!(
                    c,
                    cgroupfs::Controller::Cpu
                        | cgroupfs::Controller::Memory
                        | cgroupfs::Controller::Pids
                        | cgroupfs::Controller::Io
                )
            })
            .collect();
        if !offered.is_empty() {
            let on: Vec<_> = offered.iter().map(|c| (*c, true)).collect();
            root.set_subtree_control(&on).map_err(|e| e.to_string())?;
        }
        top.create().map_err(|e| e.to_string())?;
        fx.top = Some(top.clone());
        let offered = top.controllers().unwrap_or_default();
        let want: Vec<_> = offered
            .into_iter()
            .filter(|c| {
                matches!(
                    c,
                    cgroupfs::Controller::Cpu
                        | cgroupfs::Controller::Memory
                        | cgroupfs::Controller::Pids
                        | cgroupfs::Controller::Io
                )
            })
            .map(|c| (c, true))
            .collect();
        if !want.is_empty() {
            top.set_subtree_control(&want).map_err(|e| e.to_string())?;
            top.child("session_high")
                .create()
                .map_err(|e| e.to_string())?;
            top.child("session_high")
                .set_subtree_control(&want)
                .map_err(|e| e.to_string())?;
        }
    }
    let mut agents = Vec::new();
    for i in 0..a.agents {
        let leaf = fx
            .top
            .as_ref()
            .map(|t| t.child("session_high").child(&format!("bench-{i}")));
        if let Some(l) = &leaf {
            l.create().map_err(|e| e.to_string())?;
            fx.leaves.push(l.clone());
        }
        let mut pids = Vec::new();
        for _ in 0..a.procs {
            let c = Command::new("sleep")
                .arg("3600")
                .stdin(Stdio::null())
                .spawn()
                .map_err(|e| format!("spawn sleep: {e}"))?;
            if let Some(l) = &leaf {
                l.add_proc(c.id()).map_err(|e| e.to_string())?;
            }
            let start = procmon::ProcFs::default()
                .start_ticks(c.id())
                .ok_or("child vanished")?;
            pids.push((c.id(), start));
            fx.children.push(c);
        }
        agents.push(AgentRef {
            id: format!("bench-{i}"),
            leaves: leaf.iter().map(|l| l.path().to_path_buf()).collect(),
            // The cgroup path gets the pids too (the daemon passes its
            // tracked ones); /proc is read only where a controller lacks.
            pids,
        });
    }
    let mut s = Sampler::new(
        Options {
            interval: Duration::from_millis(a.interval_ms),
            count_fds: a.mode != "proc-nofds",
            max_procs: 4096,
            ..Options::default()
        },
        Gpu::unavailable("benchmark"),
    );
    let rss_fixture = rss_kb();
    s.sweep(&agents); // warm-up: first sweep allocates the maps
    let mut ns = Vec::with_capacity(a.sweeps);
    for _ in 0..a.sweeps {
        let t0 = thread_cpu_ns();
        s.sweep(&agents);
        ns.push(thread_cpu_ns() - t0);
    }
    let rss_after = rss_kb();
    ns.sort_unstable();
    let mean = ns.iter().sum::<u64>() as f64 / ns.len().max(1) as f64;
    let u = s.usage().values().next().cloned().unwrap_or_default();
    let out = serde_json::json!({
        "mode": a.mode,
        "agents": a.agents,
        "procs_per_agent": a.procs,
        "sweeps": a.sweeps,
        "interval_ms": a.interval_ms,
        "cpu_us_per_sweep_mean": mean / 1000.0,
        "cpu_us_per_sweep_p50": ns.get(ns.len() / 2).copied().unwrap_or(0) as f64 / 1000.0,
        "cpu_us_per_sweep_max": ns.last().copied().unwrap_or(0) as f64 / 1000.0,
        "cpu_percent_at_interval": mean / (a.interval_ms as f64 * 1e6) * 100.0,
        "proc_reads_per_sweep": s.last_proc_reads(),
        "sources": u.sources,
        "processes_seen_first_agent": u.processes,
        "rss_kb_before_sampler": rss_fixture,
        "rss_kb_after_sweeps": rss_after,
        "rss_kb_at_start": rss_before,
    });
    println!("{out}");
    Ok(())
}

fn sample(leaves: Vec<String>) -> Result<(), String> {
    let a = AgentRef {
        id: "agent".into(),
        leaves: leaves.into_iter().map(PathBuf::from).collect(),
        pids: vec![],
    };
    let mut s = Sampler::new(
        Options {
            interval: Duration::ZERO,
            ..Options::default()
        },
        Gpu::nvml(),
    );
    s.sample(std::slice::from_ref(&a));
    std::thread::sleep(Duration::from_secs(1));
    let u = s.sample(std::slice::from_ref(&a))["agent"].clone();
    println!("{}", serde_json::to_string(&u).map_err(|e| e.to_string())?);
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let r = match args.next().as_deref() {
        Some("bench") => parse(args).and_then(bench),
        Some("sample") => sample(args.collect()),
        _ => Err("usage: agentcg-bench-accounting bench [--mode cgroup|proc|proc-nofds] [--agents N] [--procs N] [--sweeps N] [--interval-ms MS] [--root DIR] | sample LEAF...".into()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentcg-bench-accounting: {e}");
            ExitCode::from(2)
        }
    }
}
