//! agentcg-bench-activity: what the activity monitor costs a workload it
//! watches, measured side by side in one process (tests/bench/activity-overhead).
//!
//! Usage: agentcg-bench-activity --leaf DIR --other DIR [--chunks N]
//!        [--cpu N] -- WORKLOAD ARGS...
//!
//! The process moves itself into the leaf cgroup DIR (so every workload it
//! starts runs there), starts the monitor's BPF backend once and then runs
//! the workload command (which prints its elapsed seconds, as
//! agentcg-schedbench does) N times, switching the monitor between chunks:
//! - `off`: nothing watched, so the programs are detached;
//! - `hook`: an empty program on the same tracepoint
//!   (bench/bpf/switch_floor.bpf.c) and nothing else: what any program
//!   there costs a switch, the floor under the two modes below;
//! - `unwatched`: watching the other, empty leaf: the programs are attached
//!   and every switch and wake-up of the host runs them (what every task
//!   not in a watched leaf pays);
//! - `on`: watching DIR: the workload's own switches are accounted.
//!
//! The modes rotate (off, hook, unwatched, on; then hook, unwatched, on,
//! off; ...), so each round of four chunks is measured within a second or so and drift
//! of the host cancels in the per-round ratio. `--cpu N` pins the workload
//! to one CPU (a pinned pipe ping-pong is the densest stream of switches
//! and wake-ups a task can make, and has no cross-CPU placement noise).
//! Prints `BENCH chunk MODE SECONDS` per chunk and, at the end,
//! `BENCH summary MODE median_s N` and `BENCH ratio MODE median_ratio` (the
//! median over rounds of the mode's time over the same round's `off`), and
//! `BENCH prog NAME RUN_CNT RUN_TIME_NS` per BPF program (non-zero while
//! kernel.bpf_stats_enabled is 1). `--only MODE` runs every chunk in one
//! mode (for the programs' own cost in that mode).

use std::mem::MaybeUninit;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use activity::{AgentKey, Backend, BackendChoice, Monitor, MonoTime, Options};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, OpenObject};

#[allow(
    clippy::all,
    dead_code,
    unused_imports,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals
)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/switch_floor_skel.rs"));
}

const MODES: [&str; 4] = ["off", "hook", "unwatched", "on"];

/// Quiet time after a mode change, before the chunk: a detach leaves RCU
/// callbacks and the program's release to run, which would otherwise land
/// in the next chunk (always an `off` one).
const SETTLE_MS: u64 = 100;

struct Args {
    leaf: PathBuf,
    other: PathBuf,
    chunks: usize,
    cpu: Option<usize>,
    only: Option<usize>,
    workload: Vec<String>,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut leaf, mut other, mut chunks, mut cpu, mut only) = (None, None, 30, None, None);
    let mut workload = Vec::new();
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--leaf" => leaf = Some(PathBuf::from(val()?)),
            "--other" => other = Some(PathBuf::from(val()?)),
            "--chunks" => chunks = val()?.parse().map_err(|e| format!("--chunks: {e}"))?,
            "--cpu" => cpu = Some(val()?.parse().map_err(|e| format!("--cpu: {e}"))?),
            "--only" => {
                let m = val()?;
                only = Some(
                    MODES
                        .iter()
                        .position(|x| *x == m)
                        .ok_or_else(|| format!("--only: no mode {m} (modes: {MODES:?})"))?,
                );
            }
            "--" => {
                workload = it.collect();
                break;
            }
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    let leaf = leaf.ok_or("--leaf DIR is required")?;
    let other = other.ok_or("--other DIR is required")?;
    if workload.is_empty() {
        return Err("no workload after --".into());
    }
    if chunks < MODES.len() {
        return Err(format!("--chunks must be at least {}", MODES.len()));
    }
    Ok(Args {
        leaf,
        other,
        chunks,
        cpu,
        only,
        workload,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Watch what `mode` wants, adding before removing so that moving between
/// `unwatched` and `on` never detaches the program, attach or detach the
/// empty program (`hook`), then let the host settle (an attach or detach
/// patches kernel text and leaves RCU work).
fn set_mode(mon: &mut Monitor, floor: &mut Floor<'_>, mode: &str, a: &Args) -> Result<(), String> {
    let leaf = AgentKey::new("bench", 1);
    let other = AgentKey::new("bench-other", 2);
    if mode == "hook" {
        floor.attach()?;
    } else {
        floor.link = None;
    }
    let r = match mode {
        "unwatched" => mon
            .watch(other, &[(a.other.clone(), 0)])
            .map(|()| mon.unwatch(&leaf)),
        "on" => mon
            .watch(leaf, &[(a.leaf.clone(), 0)])
            .map(|()| mon.unwatch(&other)),
        _ => {
            mon.unwatch(&leaf);
            mon.unwatch(&other);
            Ok(())
        }
    };
    std::thread::sleep(Duration::from_millis(SETTLE_MS));
    r.map_err(|e| format!("{e:#}"))
}

/// The empty sched_switch program, loaded once, attached in `hook` mode.
struct Floor<'obj> {
    skel: skel::SwitchFloorSkel<'obj>,
    link: Option<Link>,
}

impl<'obj> Floor<'obj> {
    fn load(obj: &'obj mut MaybeUninit<OpenObject>) -> Result<Self, String> {
        let skel = skel::SwitchFloorSkelBuilder::default()
            .open(obj)
            .and_then(|o| o.load())
            .map_err(|e| format!("load bench/bpf/switch_floor.bpf.c: {e}"))?;
        Ok(Floor { skel, link: None })
    }

    fn attach(&mut self) -> Result<(), String> {
        if self.link.is_none() {
            let link = self
                .skel
                .progs
                .switch_floor
                .attach()
                .map_err(|e| format!("attach the empty sched_switch program: {e}"))?;
            self.link = Some(link);
        }
        Ok(())
    }
}

fn run_chunk(workload: &[String]) -> Result<f64, String> {
    let out = Command::new(&workload[0])
        .args(&workload[1..])
        .output()
        .map_err(|e| format!("{}: {e}", workload[0]))?;
    if !out.status.success() {
        return Err(format!(
            "{} exited with {}: {}",
            workload[0],
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .map_err(|_| format!("{}: no seconds in its output {text:?}", workload[0]))
}

fn run(a: &Args) -> Result<(), String> {
    let procs = a.leaf.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string())
        .map_err(|e| format!("{}: {e}", procs.display()))?;
    if let Some(cpu) = a.cpu {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).map_err(|e| format!("--cpu {cpu}: {e}"))?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
            .map_err(|e| format!("pin to CPU {cpu}: {e}"))?;
    }
    let mut mon = Monitor::start(&Options {
        backend: BackendChoice::Bpf,
        idle_threshold: Duration::from_millis(2000),
        ..Options::default()
    });
    let (backend, why) = mon.backend();
    if mon.as_fd().is_none() || !matches!(backend, Backend::Bpf) {
        return Err(format!(
            "the BPF backend is not available: {}",
            why.unwrap_or("monitor off")
        ));
    }
    let mut obj = MaybeUninit::uninit();
    let mut floor = Floor::load(&mut obj)?;
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    let mut round = [0.0; MODES.len()];
    for c in 0..a.chunks {
        let r = c / MODES.len();
        let m = a.only.unwrap_or((c + r) % MODES.len());
        set_mode(&mut mon, &mut floor, MODES[m], a)?;
        let t = run_chunk(&a.workload)?;
        // Keep the monitor's state current between chunks (edges, timers).
        mon.process(MonoTime::now());
        println!("BENCH chunk {} {t:.6}", MODES[m]);
        times[m].push(t);
        round[m] = t;
        if c % MODES.len() == MODES.len() - 1 && round[0] > 0.0 {
            for (i, rt) in round.iter().enumerate() {
                ratios[i].push(rt / round[0]);
            }
        }
    }
    for p in mon.stats().programs {
        println!("BENCH prog {} {} {}", p.name, p.run_cnt, p.run_time_ns);
    }
    set_mode(&mut mon, &mut floor, "off", a)?;
    for (i, m) in MODES.iter().enumerate() {
        println!(
            "BENCH summary {m} {:.6} {}",
            median(times[i].clone()),
            times[i].len()
        );
        println!("BENCH ratio {m} {:.4}", median(ratios[i].clone()));
    }
    Ok(())
}

fn main() -> ExitCode {
    match parse().and_then(|a| run(&a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentcg-bench-activity: {e}");
            ExitCode::FAILURE
        }
    }
}
