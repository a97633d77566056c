//! scx_agentcg: agentcgd's flattened-cgroup sched_ext scheduler without the
//! daemon. Runs until SIGINT/SIGTERM or until the kernel takes the scheduler
//! down; exits 0 after a signal or an unregistration, 1 after an error exit
//! or a load failure.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use scheduler::bpf::{LoadOpts, Scheduler};
use scheduler::stats::{cgroup_rows, CgroupPaths, GlobalCounters, GlobalStats};
use scheduler::supervisor::{classify_exit, on_cpu};
use scx_stats::{Meta, StatsOpener, StatsOps, StatsReader, StatsServer, StatsServerData, ToJson};

/// A flattened-cgroup sched_ext scheduler that honours cpu.weight.
#[derive(Debug, Parser)]
#[command(name = "scx_agentcg", version)]
struct Opts {
    /// Slice of a task and of a CPU's turn on a cgroup, microseconds.
    #[arg(short = 's', long = "slice-us", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(100..=1_000_000))]
    slice_us: u64,
    /// The kernel's stall watchdog: a task runnable this long without
    /// running takes the scheduler down with an error exit and a debug
    /// dump. 0: the kernel's default (30 s, also its maximum).
    #[arg(long = "watchdog-ms", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=30_000))]
    watchdog_ms: u32,
    /// Statistics interval, seconds (fractions allowed).
    #[arg(short = 'i', long = "interval", default_value_t = 2.0)]
    interval: f64,
    /// Print per-cgroup and global statistics every interval.
    #[arg(long)]
    stats: bool,
    /// With --stats: one JSON object per interval instead of a table.
    #[arg(long)]
    json: bool,
    /// Serve the global counters on this scx_stats socket (the scx
    /// schedulers' stats protocol; `scx_agentcg --monitor` reads it).
    #[arg(long, default_value = "/var/run/scx/root/stats")]
    stats_socket: std::path::PathBuf,
    /// Do not load anything: print the counters of the running scx_agentcg
    /// (from its stats socket) every interval.
    #[arg(long)]
    monitor: bool,
    /// More log output.
    #[arg(short, long)]
    verbose: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn main() {
    let opts = Opts::parse();
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(if opts.verbose { "debug" } else { "info" }),
    )
    .init();
    if !(opts.interval > 0.0 && opts.interval <= 3600.0) {
        eprintln!("scx_agentcg: -i must be in (0, 3600] seconds");
        std::process::exit(2);
    }
    // SAFETY: installing an async-signal-safe handler that stores an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    if opts.monitor {
        std::process::exit(monitor(&opts));
    }
    std::process::exit(run(&opts));
}

/// `--monitor`: the counters of a running instance, through the scx_stats
/// client.
fn monitor(opts: &Opts) -> i32 {
    let sock = opts.stats_socket.display();
    let mut client = match scx_stats::StatsClient::new()
        .set_path(&opts.stats_socket)
        .connect(None)
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("scx_agentcg: cannot connect to {sock}: {e:#}");
            return 1;
        }
    };
    while !STOP.load(Ordering::Relaxed) {
        match client.request::<GlobalCounters>("stats", vec![]) {
            Ok(c) => {
                let line: Vec<String> = c.named().iter().map(|(n, v)| format!("{n}={v}")).collect();
                println!("{}", line.join(" "));
            }
            Err(e) => {
                eprintln!("scx_agentcg: stats request to {sock} failed: {e:#}");
                return 1;
            }
        }
        std::thread::sleep(Duration::from_secs_f64(opts.interval));
    }
    0
}

/// The scx_stats server: "stats" requests are answered by the main loop,
/// which owns the BPF maps, through the server's channel pair.
fn stats_server(path: &Path) -> anyhow::Result<StatsServer<(), GlobalCounters>> {
    let open: Box<dyn StatsOpener<(), GlobalCounters>> = Box::new(|_| {
        let read: Box<dyn StatsReader<(), GlobalCounters>> = Box::new(|_args, (req, res)| {
            req.send(())?;
            res.recv()?.to_json()
        });
        Ok(read)
    });
    let data = StatsServerData::new()
        .add_meta(GlobalCounters::meta())
        .add_ops("top", StatsOps { open, close: None });
    StatsServer::new(data).set_path(path).launch()
}

fn run(opts: &Opts) -> i32 {
    let mut obj = MaybeUninit::uninit();
    let sched = match Scheduler::attach(
        &mut obj,
        LoadOpts {
            slice_us: opts.slice_us,
            watchdog_ms: opts.watchdog_ms,
        },
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("scx_agentcg: cannot start the scheduler: {e:#}");
            return 1;
        }
    };
    let ops = std::fs::read_to_string("/sys/kernel/sched_ext/root/ops").unwrap_or_default();
    eprintln!(
        "scx_agentcg: attached as '{}' (slice {} us)",
        ops.trim(),
        opts.slice_us
    );

    let server = match stats_server(&opts.stats_socket) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!(
                "scx_agentcg: no stats socket at {}: {e:#}",
                opts.stats_socket.display()
            );
            None
        }
    };
    let channels = server.as_ref().map(|s| s.channels());

    let cg_root = Path::new("/sys/fs/cgroup");
    let mut paths = CgroupPaths::scan(cg_root);
    let interval = Duration::from_secs_f64(opts.interval);
    let mut last = Instant::now();
    let mut prev_cpu: HashMap<u64, u64> = HashMap::new();

    loop {
        if STOP.load(Ordering::Relaxed) {
            drop(sched);
            eprintln!("scx_agentcg: detached");
            return 0;
        }
        if sched.exited() {
            let exit = sched.exit_info();
            drop(sched);
            let Some(exit) = exit else { return 1 };
            let (kind, _) = classify_exit(exit.kind, exit.restart);
            if !exit.dump.trim().is_empty() {
                eprintln!("scx_agentcg: debug dump\n{}", exit.dump.trim_end());
            }
            let on_cpu = on_cpu(exit.cpu);
            if exit.msg.is_empty() {
                eprintln!("scx_agentcg: EXIT {kind}: {}{on_cpu}", exit.reason);
            } else {
                eprintln!(
                    "scx_agentcg: EXIT {kind}: {} ({}){on_cpu}",
                    exit.reason, exit.msg
                );
            }
            return if exit.kind >= scx_utils::ScxExitKind::Error as i32 {
                1
            } else {
                0
            };
        }
        if let Some((res, req)) = &channels {
            while req.try_recv().is_ok() {
                let _ = res.send(sched.global_stats());
            }
        }
        if opts.stats && last.elapsed() >= interval {
            let secs = last.elapsed().as_secs_f64();
            last = Instant::now();
            let raw = sched.cgroup_stats();
            if raw.iter().any(|r| paths.get(r.cgid).is_none()) {
                paths = CgroupPaths::scan(cg_root);
            }
            let rows = cgroup_rows(&raw, &paths);
            let global = GlobalStats::from(sched.global_stats());
            print_stats(opts.json, secs, &rows, &global, &mut prev_cpu);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn print_stats(
    json: bool,
    secs: f64,
    rows: &[scheduler::CgroupStats],
    global: &GlobalStats,
    prev_cpu: &mut HashMap<u64, u64>,
) {
    let deltas: Vec<u64> = rows
        .iter()
        .map(|r| {
            r.cpu_time_ns
                .saturating_sub(*prev_cpu.get(&r.cgid).unwrap_or(&0))
        })
        .collect();
    for r in rows {
        prev_cpu.insert(r.cgid, r.cpu_time_ns);
    }
    if json {
        let v = serde_json::json!({
            "interval_s": secs,
            "cgroups": rows.iter().zip(&deltas).map(|(r, d)| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                v["cpu_ns_interval"] = (*d).into();
                v
            }).collect::<Vec<_>>(),
            "global": global,
        });
        println!("{v}");
        return;
    }
    println!(
        "{:<40} {:>6} {:>8} {:>10} {:>8} {:>10}",
        "cgroup", "weight", "hweight", "cpu_ms", "cpu%", "dispatches"
    );
    for (r, d) in rows.iter().zip(&deltas) {
        if *d == 0 && r.dispatches == 0 {
            continue;
        }
        println!(
            "{:<40} {:>6} {:>8.4} {:>10} {:>7.1}% {:>10}",
            r.path,
            r.weight,
            r.hweight,
            r.cpu_time_ns / 1_000_000,
            *d as f64 / (secs * 1e9) * 100.0,
            r.dispatches
        );
    }
    let counters: Vec<String> = global
        .counters
        .named()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("global: {}", counters.join(" "));
}
