//! agentcg-replay: replays an agent session's memory trace (memory.csv of
//! ../shared/traces) by allocating and touching anonymous pages as the trace
//! rises and unmapping them as it falls, on a timeline compressed by
//! `--speed`. It measures, per rising step, the time to map and touch the
//! new pages (the allocation latency a real agent would see under memory
//! pressure), exits 0 when the trace completes and, with `--json`, prints one
//! line of results. Killed by the OOM killer it is simply dead: the caller
//! sees the signal.

mod trace;

use anyhow::{bail, Context, Result};
use std::time::{Duration, Instant};
use trace::{parse_memory_csv, percentile, plan, scale_for_cap, Step, PAGE};

const USAGE: &str = "\
usage: agentcg-replay --trace FILE [--speed N] [--max-mb MB] [--json] [--label NAME]

Replays FILE (a memory.csv: t_s,mem_mb[,cpu_pct] with a header line) by
allocating and touching pages as the trace rises and freeing them as it
falls, with time divided by N (default 1).

  --trace FILE   memory.csv to replay (required)
  --speed N      time compression factor, > 0 (default 1)
  --max-mb MB    scale the trace down so that its peak is at most MB
  --json         print one JSON line at the end: completed, peak_mb,
                 alloc_p50_ms, alloc_p95_ms, alloc_p99_ms, alloc_max_ms,
                 steps, alloc_steps, duration_s, lag_max_ms, ...
  --label NAME   copied into the JSON line (to tell runs apart)
  -h, --help     this text

Exit status: 0 when the trace completed, 2 for usage/file errors.";

#[derive(Debug, PartialEq)]
struct Args {
    trace: String,
    speed: f64,
    max_mb: Option<f64>,
    json: bool,
    label: Option<String>,
}

fn parse_args(argv: &[String]) -> Result<Option<Args>> {
    let mut trace = None;
    let mut speed = 1.0;
    let mut max_mb = None;
    let mut json = false;
    let mut label = None;
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it
                    .next()
                    .cloned()
                    .with_context(|| format!("{name} needs a value")),
            }
        };
        let num = |name: &str, v: String| -> Result<f64> {
            let x: f64 = v
                .parse()
                .with_context(|| format!("{name}: '{v}' is not a number"))?;
            if !x.is_finite() || x <= 0.0 {
                bail!("{name} must be > 0, got {v}");
            }
            Ok(x)
        };
        match flag {
            "-h" | "--help" => return Ok(None),
            "--trace" => trace = Some(value("--trace")?),
            "--speed" => speed = num("--speed", value("--speed")?)?,
            "--max-mb" => max_mb = Some(num("--max-mb", value("--max-mb")?)?),
            "--label" => label = Some(value("--label")?),
            "--json" if inline.is_none() => json = true,
            _ => bail!("unknown argument '{a}'"),
        }
    }
    let trace = trace.context("--trace FILE is required")?;
    Ok(Some(Args {
        trace,
        speed,
        max_mb,
        json,
        label,
    }))
}

/// Anonymous memory held as a stack of mappings; grows by mapping and
/// touching, shrinks by unmapping from the top.
struct Held {
    chunks: Vec<(*mut u8, usize)>,
    bytes: u64,
}

impl Held {
    fn grow(&mut self, len: usize) -> Result<()> {
        // SAFETY: a fresh private anonymous mapping, owned by self.chunks.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            bail!("mmap {len} bytes: {}", std::io::Error::last_os_error());
        }
        let p = p as *mut u8;
        let mut off = 0;
        while off < len {
            // SAFETY: off < len, inside the mapping; volatile so the touch stays.
            unsafe { std::ptr::write_volatile(p.add(off), 1) };
            off += PAGE as usize;
        }
        self.chunks.push((p, len));
        self.bytes += len as u64;
        Ok(())
    }

    fn shrink(&mut self, mut len: usize) {
        while len > 0 {
            let Some((p, clen)) = self.chunks.pop() else {
                return;
            };
            let cut = clen.min(len);
            // SAFETY: unmapping the tail [clen-cut, clen) of a mapping we own.
            unsafe { libc::munmap(p.add(clen - cut) as *mut libc::c_void, cut) };
            if cut < clen {
                self.chunks.push((p, clen - cut));
            }
            len -= cut;
            self.bytes -= cut as u64;
        }
    }
}

#[derive(serde::Serialize)]
struct Report {
    completed: bool,
    label: Option<String>,
    trace: String,
    speed: f64,
    scale: f64,
    steps: usize,
    alloc_steps: usize,
    peak_mb: f64,
    alloc_p50_ms: f64,
    alloc_p95_ms: f64,
    alloc_p99_ms: f64,
    alloc_max_ms: f64,
    alloc_mean_ms: f64,
    alloc_total_ms: f64,
    /// Wall-clock time of the whole replay.
    duration_s: f64,
    /// Trace duration after compression (what duration_s would be with no delay).
    nominal_s: f64,
    /// Worst lateness of a step against the compressed timeline.
    lag_max_ms: f64,
}

fn run(args: &Args) -> Result<Report> {
    let text =
        std::fs::read_to_string(&args.trace).with_context(|| format!("reading {}", args.trace))?;
    let samples = parse_memory_csv(&text).with_context(|| args.trace.clone())?;
    let scale = scale_for_cap(&samples, args.max_mb);
    let steps: Vec<Step> = plan(&samples, args.speed, scale);
    let mut held = Held {
        chunks: Vec::new(),
        bytes: 0,
    };
    let mut lat_ms: Vec<f64> = Vec::new();
    let mut peak = 0u64;
    let mut lag_max = 0.0f64;
    let start = Instant::now();
    for s in &steps {
        let due = start + Duration::from_secs_f64(s.at_s);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else {
            lag_max = lag_max.max((now - due).as_secs_f64() * 1e3);
        }
        if s.bytes > held.bytes {
            let t = Instant::now();
            held.grow((s.bytes - held.bytes) as usize)?;
            lat_ms.push(t.elapsed().as_secs_f64() * 1e3);
        } else if s.bytes < held.bytes {
            held.shrink((held.bytes - s.bytes) as usize);
        }
        peak = peak.max(held.bytes);
    }
    let duration_s = start.elapsed().as_secs_f64();
    let total: f64 = lat_ms.iter().sum();
    let n = lat_ms.len();
    lat_ms.sort_by(f64::total_cmp);
    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    Ok(Report {
        completed: true,
        label: args.label.clone(),
        trace: args.trace.clone(),
        speed: args.speed,
        scale: r3(scale),
        steps: steps.len(),
        alloc_steps: n,
        peak_mb: r3(peak as f64 / 1e6),
        alloc_p50_ms: r3(percentile(&lat_ms, 50.0)),
        alloc_p95_ms: r3(percentile(&lat_ms, 95.0)),
        alloc_p99_ms: r3(percentile(&lat_ms, 99.0)),
        alloc_max_ms: r3(lat_ms.last().copied().unwrap_or(0.0)),
        alloc_mean_ms: r3(if n > 0 { total / n as f64 } else { 0.0 }),
        alloc_total_ms: r3(total),
        duration_s: r3(duration_s),
        nominal_s: r3(steps.last().map(|s| s.at_s).unwrap_or(0.0)),
        lag_max_ms: r3(lag_max),
    })
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("agentcg-replay: {e:#}\n(see --help)");
            std::process::exit(2);
        }
    };
    match run(&args) {
        Ok(r) => {
            if args.json {
                println!("{}", serde_json::to_string(&r).expect("report serializes"));
            } else {
                println!(
                    "agentcg-replay: completed {} in {:.2}s (nominal {:.2}s): peak {:.1} MB, alloc p50 {:.2} ms p95 {:.2} ms p99 {:.2} ms over {} steps",
                    r.trace, r.duration_s, r.nominal_s, r.peak_mb, r.alloc_p50_ms, r.alloc_p95_ms, r.alloc_p99_ms, r.alloc_steps
                );
            }
        }
        Err(e) => {
            eprintln!("agentcg-replay: {e:#}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn args() {
        let p = parse_args(&a(&[
            "--trace",
            "f",
            "--speed=50",
            "--json",
            "--max-mb",
            "100",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            p,
            Args {
                trace: "f".into(),
                speed: 50.0,
                max_mb: Some(100.0),
                json: true,
                label: None
            }
        );
        assert!(parse_args(&a(&["--help"])).unwrap().is_none());
        assert!(parse_args(&a(&[])).is_err());
        assert!(parse_args(&a(&["--trace", "f", "--speed", "0"])).is_err());
        assert!(parse_args(&a(&["--trace", "f", "--speed", "x"])).is_err());
        assert!(parse_args(&a(&["--trace", "f", "--bogus"])).is_err());
        assert!(parse_args(&a(&["--trace"])).is_err());
    }

    #[test]
    fn held_grows_and_shrinks() {
        let mut h = Held {
            chunks: Vec::new(),
            bytes: 0,
        };
        h.grow(10 * PAGE as usize).unwrap();
        h.grow(5 * PAGE as usize).unwrap();
        h.shrink(7 * PAGE as usize);
        assert_eq!(h.bytes, 8 * PAGE);
        assert_eq!(h.chunks.len(), 1);
        h.shrink(100 * PAGE as usize);
        assert_eq!(h.bytes, 0);
    }

    #[test]
    fn replays_a_small_trace() {
        let dir = std::env::temp_dir().join(format!("replay-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("memory.csv");
        std::fs::write(&f, "t_s,mem_mb,cpu_pct\n0,1,0\n1,4,0\n2,2,0\n3,6,0\n").unwrap();
        let args = Args {
            trace: f.display().to_string(),
            speed: 100.0,
            max_mb: None,
            json: true,
            label: None,
        };
        let r = run(&args).unwrap();
        assert!(r.completed);
        assert_eq!(r.alloc_steps, 3);
        assert!((r.peak_mb - 6.0).abs() < 0.01, "{}", r.peak_mb);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
