//! agentcg-memcg-demo: runs the memcg Controller on an agentcg tree without
//! the daemon (for VM experiments and debugging).
//!
//!   agentcg-memcg-demo run ROOT [--config FILE]   start, print MemEvents as
//!       JSON lines, on SIGTERM/SIGINT stop (restoring files) and print the
//!       final status as one JSON line {"status": ...}
//!   agentcg-memcg-demo probe                      BPF load path up to the
//!       BTF check; prints JSON, exit 0
//!   agentcg-memcg-demo adj high|low [--config FILE]  the oom_score_adj the
//!       placer writes for that session
//!
//! FILE is YAML with the keys of agentcgd.yaml's `memcg:` section.

use memcg::{Config, Controller, Sessions};
use std::io::Write;

fn usage() -> ! {
    eprintln!(
        "usage: agentcg-memcg-demo run ROOT [--config FILE] | probe | adj high|low [--config FILE]"
    );
    std::process::exit(2)
}

fn load_config(args: &[String]) -> Config {
    let Some(i) = args.iter().position(|a| a == "--config") else {
        return Config::default();
    };
    let Some(f) = args.get(i + 1) else { usage() };
    let text = std::fs::read_to_string(f).unwrap_or_else(|e| {
        eprintln!("agentcg-memcg-demo: {f}: {e}");
        std::process::exit(2)
    });
    let c: Config = serde_norway::from_str(&text).unwrap_or_else(|e| {
        eprintln!("agentcg-memcg-demo: {f}: {e}");
        std::process::exit(2)
    });
    if let Err(e) = c.validate() {
        eprintln!("agentcg-memcg-demo: {f}: {e}");
        std::process::exit(2)
    }
    c
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("probe") => {
            let (progs, verdict) = memcg::bpf::probe_load_path().unwrap_or_else(|e| {
                eprintln!("agentcg-memcg-demo: {e:#}");
                std::process::exit(1)
            });
            let v = serde_json::json!({
                "programs": progs,
                "available": verdict.is_ok(),
                "reason": verdict.err(),
            });
            println!("{v}");
        }
        Some("adj") => {
            let high = match args.get(1).map(String::as_str) {
                Some("high") => true,
                Some("low") => false,
                _ => usage(),
            };
            println!("{}", load_config(&args).oom_score_adj(high));
        }
        Some("run") => {
            let Some(root) = args.get(1).filter(|a| !a.starts_with("--")) else {
                usage()
            };
            let cfg = load_config(&args);
            // Block the stop signals before the controller thread exists, so
            // that only sigwait below receives them.
            // SAFETY: plain signal mask manipulation.
            let set = unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGTERM);
                libc::sigaddset(&mut set, libc::SIGINT);
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                set
            };
            let c = Controller::start(
                Sessions::under(root),
                &cfg,
                Box::new(|e| {
                    let mut o = std::io::stdout().lock();
                    let _ = writeln!(o, "{}", serde_json::to_string(&e).unwrap());
                    let _ = o.flush();
                }),
            );
            println!("{}", serde_json::json!({ "started": c.status() }));
            let _ = std::io::stdout().flush();
            let mut sig = 0;
            // SAFETY: valid set and out pointer.
            unsafe { libc::sigwait(&set, &mut sig) };
            let st = c.status();
            let t = std::time::Instant::now();
            c.stop();
            println!(
                "{}",
                serde_json::json!({ "status": st, "stop_ms": t.elapsed().as_millis() as u64 })
            );
        }
        _ => usage(),
    }
}
