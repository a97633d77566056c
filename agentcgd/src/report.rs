//! The inspecting subcommands: check, status, explain.

use std::path::Path;

use procmon::ProcFs;

use crate::cgroup::cgroup_of;
use crate::classify::{decide_chain, protected, PRIORITY_ENV};
use crate::config::Config;
use crate::policy::PolicySet;
use crate::state::State;

pub fn check(policies: &Path, config: &Path) -> Result<(), String> {
    let (cfg, src) = Config::load_with(config, crate::trust::FileTrust::RootOnly)?;
    let set = PolicySet::load_dir_with(policies, crate::trust::FileTrust::RootOnly)
        .map_err(|e| e.to_string())?;
    println!("config: {src}");
    println!(
        "  sessions: session_high cpu.weight={}, session_low cpu.weight={}",
        cfg.sessions.high.cpu_weight, cfg.sessions.low.cpu_weight
    );
    println!(
        "  scheduler.enabled={} memcg.enabled={} activity.enabled={}",
        cfg.scheduler.enabled, cfg.memcg.enabled, cfg.activity.enabled
    );
    let a = &cfg.accounting;
    println!(
        "  accounting: {}; metrics: {}",
        if a.enabled {
            format!(
                "every {} ms, at most {} /proc reads a sweep, gpu {}",
                a.interval_ms,
                a.max_procs,
                if a.gpu { "on" } else { "off" }
            )
        } else {
            "off".into()
        },
        match &cfg.metrics {
            Some(m) if m.enabled => format!("http://{}/metrics", m.listen.0),
            _ => "off".into(),
        }
    );
    print_trust_mode(&cfg.trust);
    let r = &cfg.reactions;
    println!(
        "  reactions: {} ({} rules{})",
        if r.enabled { "enabled" } else { "off" },
        r.rules.len(),
        if r.dry_run { ", dry-run" } else { "" }
    );
    for rule in &r.rules {
        let on: Vec<&str> = rule.on.iter().map(|k| k.as_str()).collect();
        let what = match &rule.command {
            Some(c) => format!(
                "run {:?} as {}",
                c.as_slice(),
                rule.user
                    .as_ref()
                    .map(|u| u.to_string())
                    .unwrap_or_default()
            ),
            None => "log".to_string(),
        };
        println!(
            "     {} on [{}]: {what} (debounce {} s per {}, timeout {} s)",
            rule.name,
            on.join(" "),
            rule.debounce_s,
            format!("{:?}", rule.debounce_per).to_lowercase(),
            rule.timeout_s
        );
    }
    for rule in &r.rules {
        for f in &rule.families {
            if set.family(f.as_str()).is_none() {
                println!(
                    "     warning: reaction {} names family {} that no policy defines",
                    rule.name,
                    f.as_str()
                );
            }
        }
    }
    println!(
        "policies: {} ({} families, first match wins in this order)",
        policies.display(),
        set.families.len()
    );
    for (i, f) in set.families.iter().enumerate() {
        println!(
            "{:>3}. {} -> {} ({}) descendants={}",
            i + 1,
            f.family,
            f.priority.session(),
            f.file.display(),
            f.descendants
        );
        for (j, b) in f.matches.iter().enumerate() {
            println!(
                "       match {}: {}{}",
                j + 1,
                serde_json::to_string(b).unwrap_or_default(),
                no_prefilter_note(b)
            );
        }
        for (j, t) in f.tools.iter().enumerate() {
            println!(
                "       tools {}: -> {} when {}",
                j + 1,
                t.priority.session(),
                serde_json::to_string(&t.matches).unwrap_or_default()
            );
        }
        if !f.shared_tools {
            println!("       shared tools: off (shared_tools: false)");
        }
    }
    let pf = crate::prefilter::compile(&set);
    match &pf.pass_all {
        None => println!(
            "exec prefilter: {} keys (execs outside tracked agents reach the daemon only on a hit)",
            pf.keys.len()
        ),
        Some(why) => println!("exec prefilter: lets every exec through: {why}"),
    }
    println!(
        "shared tools ({}, after each family's own; {} rules):",
        src,
        cfg.tools.len()
    );
    for (j, t) in cfg.tools.iter().enumerate() {
        println!(
            "  {:>3}. -> {} when {}",
            j + 1,
            t.priority.session(),
            serde_json::to_string(&t.matches).unwrap_or_default()
        );
    }
    let who = &cfg.user_priority;
    println!(
        "user_priority: session_high may be asked for by users [{}] groups [{}] (and root); low by anyone",
        who.high_users.join(" "),
        who.high_groups.join(" ")
    );
    println!("ok");
    Ok(())
}

/// A block with no literal or `prefix*` on comm, on the exe's last two
/// components, or on argv[0]'s basename makes an exec prefilter pass
/// every exec: say so.
fn no_prefilter_note(b: &crate::policy::MatchBlock) -> &'static str {
    if crate::prefilter::block_key(b).is_some() {
        ""
    } else {
        "  (note: no literal comm, exe name or argv[0] to prefilter on: every exec is checked against it)"
    }
}

fn age(ms: u64) -> String {
    let now = crate::state::now_ms();
    let s = now.saturating_sub(ms) / 1000;
    format!("{s}s ago")
}

pub fn status(state: &Path, json: bool) -> Result<(), String> {
    let s = State::read(state).map_err(|e| format!("{e}\n(is agentcgd running? see --state)"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap());
        return Ok(());
    }
    let alive = s.running && Path::new(&format!("/proc/{}", s.daemon_pid)).exists();
    println!(
        "agentcgd {} pid {} {}{} (state updated {})",
        if s.version.is_empty() {
            "?"
        } else {
            &s.version
        },
        s.daemon_pid,
        if alive { "running" } else { "not running" },
        if s.dry_run { ", dry-run" } else { "" },
        age(s.updated_at_ms)
    );
    println!("root: {}", s.root);
    println!(
        "controllers: enabled [{}]{}",
        s.cgroup.enabled.join(" "),
        if s.cgroup.missing.is_empty() {
            String::new()
        } else {
            format!(", missing: {}", s.cgroup.missing.join("; "))
        }
    );
    for w in &s.cgroup.warnings {
        println!("  warning: {w}");
    }
    println!("sessions:");
    for se in &s.sessions {
        println!(
            "  {:<13} cpu.weight={:<6} pids={:<5} tracked={}",
            se.name,
            se.cpu_weight
                .map(|w| w.to_string())
                .unwrap_or_else(|| "-".into()),
            se.pids,
            se.tracked
        );
    }
    println!("families:");
    for f in &s.families {
        println!(
            "  {:<14} -> {:<13} live={:<4} placed={:<6} {}",
            f.name,
            f.priority.session(),
            f.live,
            f.placed_total,
            f.file
        );
    }
    let c = &s.counters;
    println!(
        "placement: placed={} already={} vanished={} pid_reused={} errors={} protected={} reconciles={}",
        c.placed, c.already_placed, c.vanished, c.pid_reused, c.errors, c.protected_skipped, c.reconciles
    );
    if c.untrusted_refused > 0 {
        println!(
            "  strict trust: {} matches refused session_high (see `explain PID`)",
            c.untrusted_refused
        );
    }
    println!(
        "  subtrees: forks moved={} children placed={}; tree rebuilds={}{}",
        c.forks_moved,
        c.subtree_placed,
        c.tree_rebuilds,
        s.tree_error
            .as_deref()
            .map(|e| format!(" (last: {e})"))
            .unwrap_or_default()
    );
    let lat = &s.placement_latency;
    if let (Some(p50), Some(p99)) = (lat.p50_us, lat.p99_us) {
        println!(
            "  exec -> in cgroup: p50 <= {p50} us, p99 <= {p99} us, max {} us over {} moves at exec",
            lat.max_us, lat.count
        );
    }
    println!(
        "events: {} (exec={} exit={} lost={}){}",
        s.procmon.backend,
        s.procmon.exec_events,
        s.procmon.exit_events,
        s.procmon.lost_events,
        if s.procmon.fallback_reasons.is_empty() {
            String::new()
        } else {
            format!(
                " fallback because: {}",
                s.procmon.fallback_reasons.join("; ")
            )
        }
    );
    println!("policy: {} (config {})", s.policy.dir, s.policy.config);
    if let Some(e) = &s.policy.last_error {
        println!("  last reload REJECTED (previous policy kept): {e}");
    }
    print_scheduler(&s.scheduler);
    println!(
        "memcg: {}",
        if s.memcg.backend.is_empty() {
            "-"
        } else {
            &s.memcg.backend
        }
    );
    println!("gpu: {}", s.gpu);
    for x in s.exits.iter().rev().take(5) {
        println!("exit {}: {}", age(x.at_ms), x.log_line());
    }
    println!("activity: {}", s.activity);
    print_reactions(&s.reactions);
    for o in &s.oom_kills {
        println!(
            "oom kill {} in {}: pid {} family {} ({})",
            age(o.at_ms),
            o.session,
            o.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
            o.family.as_deref().unwrap_or("?"),
            o.comm.as_deref().unwrap_or("?")
        );
    }
    print_agents(&s);
    if !s.processes.is_empty() {
        println!("processes:");
        for p in &s.processes {
            println!(
                "  {:>7} {:<16} {:<14} {:<13} {}",
                p.pid,
                p.comm,
                p.family.as_str(),
                p.priority.session(),
                p.reason
            );
        }
    }
    Ok(())
}

/// One row per agent instance: where it is, what it is doing, what it costs.
fn print_agents(s: &State) {
    if s.agents.is_empty() {
        return;
    }
    println!(
        "agents: {}{}",
        s.agents.len(),
        if s.counters.agents_over_cap > 0 {
            format!(
                " ({} more shared a family leaf: sessions.max_agents)",
                s.counters.agents_over_cap
            )
        } else {
            String::new()
        }
    );
    println!(
        "  {:<24} {:<9} {:<14} {:>6} {:>9} {:>9} {:>9} {:>4} {:>5}  LEAF",
        "AGENT", "SESSIONS", "STATE", "CPU%", "MEM", "PEAK", "GPU", "OOM", "PIDS"
    );
    for a in &s.agents {
        let state = match a.state {
            crate::state::Activity::Unknown => "-".to_string(),
            st => format!("{st} {}", age(a.state_since_ms).trim_end_matches(" ago")),
        };
        let u = a.usage.as_ref();
        let bytes = |b: Option<u64>| b.map(accounting::human_bytes).unwrap_or_else(|| "-".into());
        println!(
            "  {:<24} {:<9} {:<14} {:>6} {:>9} {:>9} {:>9} {:>4} {:>5}  {}",
            a.id,
            a.sessions(),
            state,
            a.cpu_percent
                .or(u.and_then(|u| u.cpu_percent))
                .map(|c| format!("{c:.1}"))
                .unwrap_or_else(|| "-".into()),
            bytes(u.map(|u| u.memory_bytes)),
            bytes(u.and_then(|u| u.memory_peak_bytes)),
            bytes(u.and_then(|u| u.gpu_memory_bytes)),
            u.and_then(|u| u.oom_kills)
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            a.pids,
            a.cgroups.join(" ")
        );
    }
}

fn print_reactions(v: &reactions::Status) {
    if !v.enabled {
        println!("reactions: off");
        return;
    }
    let c = &v.counters;
    println!(
        "reactions: {} rules{}, running {}/{}, queued {}/{}; triggers={} runs={} failed={} timed_out={} debounced={} dropped={} logged={}",
        v.rules.len(),
        if v.dry_run { " (dry-run)" } else { "" },
        v.running.len(),
        v.max_running,
        v.queued,
        v.queue_capacity,
        c.triggers,
        c.runs,
        c.failed,
        c.timed_out,
        c.debounced,
        c.dropped_queue_full,
        c.logged,
    );
    for u in &v.unavailable {
        println!("  unavailable: {u}");
    }
    if let Some(e) = &v.last_error {
        println!("  last reload REJECTED (previous reactions kept): {e}");
    }
    for r in v.runs.iter().rev().take(5) {
        let log_action = r.action == reactions::ActionKind::Log;
        println!(
            "  {} {}: {} -> {}{}{}{}",
            age(r.started_at_ms),
            r.rule,
            r.event,
            if r.dry_run {
                "dry-run".to_string()
            } else if log_action {
                "logged".to_string()
            } else {
                r.exit.clone().unwrap_or_else(|| "not run".into())
            },
            if r.killed_by_timeout {
                " (killed at timeout)"
            } else {
                ""
            },
            if log_action {
                String::new()
            } else {
                format!(" in {} ms", r.duration_ms)
            },
            r.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
}

fn print_scheduler(v: &scheduler::Status) {
    println!("scheduler: {} (state {})", v.backend, v.state);
    if let Some(e) = &v.last_exit {
        let on_cpu = scheduler::supervisor::on_cpu(e.cpu);
        let dump = if e.is_error() {
            "; the kernel's debug dump is in the daemon's log"
        } else {
            ""
        };
        println!(
            "  last exit: {} {}{on_cpu} (restarts {}{dump})",
            e.reason, e.message, v.restarts
        );
    }
    let g = &v.global;
    println!(
        "  dispatches: local={} cgroup={} fallbacks={}",
        g.local_dispatches, g.cgroup_dispatches, g.fallbacks
    );
    for c in &v.cgroups {
        println!(
            "  {:<32} weight={:<6} hweight={:.4} cpu={:.2}s dispatches={}",
            c.path,
            c.weight,
            c.hweight,
            c.cpu_time_ns as f64 / 1e9,
            c.dispatches
        );
    }
}

/// Which rule places (or would place) `pid`, decided from its ancestry in
/// /proc the way the daemon decides at each exec, so it works without a
/// running daemon; with one, also what the daemon recorded.
pub fn explain(pid: u32, policies: &Path, config: &Path, state: &Path) -> Result<(), String> {
    let (cfg, _) = Config::load_with(config, crate::trust::FileTrust::RootOnly)?;
    let set = PolicySet::load_dir_with(policies, crate::trust::FileTrust::RootOnly)
        .map_err(|e| e.to_string())?
        .with_shared_tools(cfg.tools.clone(), config);
    let procfs = ProcFs::default();
    let info = procfs
        .read(pid)
        .map_err(|e| format!("pid {pid}: no such process ({e})"))?;
    println!(
        "pid {} ({}) ppid {} uid {}\n  exe:  {}\n  argv: {}",
        info.pid,
        info.comm,
        info.ppid,
        info.uid,
        info.exe,
        shown_argv(&info)
    );
    println!(
        "  cgroup now: {}",
        cgroup_of(pid).unwrap_or_else(|| "unknown".into())
    );
    if let Some(why) = protected(&info, u32::MAX) {
        println!("never moved: {why}");
        return Ok(());
    }
    // What a running daemon recorded, if one runs.
    let st = State::read(state)
        .ok()
        .filter(|s| s.running && Path::new(&format!("/proc/{}", s.daemon_pid)).exists());
    let tracked = st.as_ref().and_then(|s| {
        s.processes
            .iter()
            .find(|t| t.pid == pid && t.start_ticks == info.start_ticks)
            .cloned()
    });
    match (&st, &tracked) {
        (Some(_), Some(t)) => println!(
            "daemon: placed in {} as {} ({})",
            t.priority.session(),
            t.family,
            t.reason
        ),
        (Some(s), None) => println!(
            "daemon: pid {} runs; it has not placed this process",
            s.daemon_pid
        ),
        (None, _) => println!(
            "daemon: not running (no live state at {}); deciding from /proc",
            state.display()
        ),
    }
    // The ancestry, oldest first, as the daemon saw it exec by exec.
    let mut chain = vec![info.clone()];
    let mut cur = info.ppid;
    while cur > 1 && chain.len() < 64 {
        match procfs.read(cur) {
            Ok(p) if p.start_ticks <= chain.last().map(|c| c.start_ticks).unwrap_or(u64::MAX) => {
                cur = p.ppid;
                chain.push(p);
            }
            _ => break,
        }
    }
    chain.reverse();
    let decisions = decide_chain(
        &set,
        &chain,
        &cfg.user_priority,
        &cfg.trust,
        Path::new("/proc"),
        &procfs,
    );
    // An orphan (reparented to pid 1 or a subreaper) cannot be traced; the
    // daemon keeps what it recorded for such a process.
    let mine = decisions.last().cloned().flatten();
    match (mine.clone(), &tracked) {
        (Some(d), _) => {
            println!(
                "policy: family {} -> {} because {}",
                d.family,
                d.priority.session(),
                d.reason
            );
            let ancestors: Vec<String> = chain
                .iter()
                .zip(&decisions)
                .rev()
                .skip(1)
                .filter_map(|(p, d)| {
                    d.as_ref()
                        .map(|d| format!("{} ({}) {}", p.pid, p.comm, d.priority.session()))
                })
                .collect();
            if !ancestors.is_empty() {
                println!("  placed ancestors: {}", ancestors.join(" <- "));
            }
        }
        (None, Some(t)) => println!(
            "policy: no rule or traceable ancestor now; the daemon keeps it as {} ({})",
            t.family, t.reason
        ),
        (None, None) => println!(
            "policy: no rule in {} matches and no ancestor is an agent: agentcgd leaves it alone",
            policies.display()
        ),
    }
    // The trust verdict is on the process's own match (the chain's decision
    // already fell back to its lineage where strict mode refused it).
    let own = crate::classify::own_match(&set, &info, &procfs).map(|d| {
        crate::classify::user_priority(d, &info, &cfg.user_priority, Path::new("/proc"), None)
    });
    print_trust(&cfg, &set, own.as_ref(), &info);
    if std::fs::read(format!("/proc/{pid}/environ")).is_err() {
        println!(
            "  (cannot read its environment: an {PRIORITY_ENV} there is not taken into account)"
        );
    }
    Ok(())
}

/// argv for `explain`: only root and the process's owner see it, and known
/// secret shapes are masked for them too.
fn shown_argv(info: &procmon::ProcInfo) -> String {
    if crate::redact::may_see_argv(info.uid) {
        format!("{:?}", crate::redact::argv(&info.argv))
    } else {
        format!(
            "(hidden: {} arguments; only root and uid {} see them)",
            info.argv.len(),
            info.uid
        )
    }
}

/// Strict trust mode's verdict on the process's own match (a session_high
/// decision by rule).
fn print_trust(
    cfg: &Config,
    set: &PolicySet,
    d: Option<&crate::classify::Decision>,
    info: &procmon::ProcInfo,
) {
    let Some(d) = d else { return };
    if !cfg.trust.strict() {
        return;
    }
    match crate::trust::gate(&cfg.trust, set, d, info, Path::new("/proc")) {
        Ok(()) => println!("  trust: strict mode; this match may give session_high"),
        Err(why) => println!(
            "  trust: strict mode REFUSES session_high for this match: {why}; the daemon leaves it where it is (or with its agent ancestor)"
        ),
    }
}

/// `check`: which trust mode decides session_high (docs/security.md).
fn print_trust_mode(t: &crate::trust::TrustConfig) {
    if t.strict() {
        println!(
            "  trust: strict (session_high by rule only for root-owned executables and scripts, or users {:?} groups {:?})",
            t.users, t.groups
        );
    } else {
        println!(
            "  trust: default (a match is enough: names can be imitated; see docs/security.md)"
        );
    }
}
