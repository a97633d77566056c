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
        s.memcg
            .get("backend")
            .and_then(|b| b.as_str())
            .unwrap_or("-")
    );
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

fn print_reactions(v: &serde_json::Value) {
    if !v.get("enabled").and_then(|e| e.as_bool()).unwrap_or(false) {
        println!("reactions: off");
        return;
    }
    let num = |x: &serde_json::Value, k: &str| x.get(k).and_then(|n| n.as_u64()).unwrap_or(0);
    let c = v.get("counters").cloned().unwrap_or_default();
    println!(
        "reactions: {} rules{}, running {}/{}, queued {}/{}; triggers={} runs={} failed={} timed_out={} debounced={} dropped={} logged={}",
        v.get("rules").and_then(|r| r.as_array()).map_or(0, |r| r.len()),
        if v.get("dry_run").and_then(|d| d.as_bool()).unwrap_or(false) { " (dry-run)" } else { "" },
        v.get("running").and_then(|r| r.as_array()).map_or(0, |r| r.len()),
        num(v, "max_running"),
        num(v, "queued"),
        num(v, "queue_capacity"),
        num(&c, "triggers"),
        num(&c, "runs"),
        num(&c, "failed"),
        num(&c, "timed_out"),
        num(&c, "debounced"),
        num(&c, "dropped_queue_full"),
        num(&c, "logged"),
    );
    for u in v
        .get("unavailable")
        .and_then(|u| u.as_array())
        .into_iter()
        .flatten()
    {
        println!("  unavailable: {}", u.as_str().unwrap_or("?"));
    }
    if let Some(e) = v.get("last_error").and_then(|e| e.as_str()) {
        println!("  last reload REJECTED (previous reactions kept): {e}");
    }
    let runs = v
        .get("runs")
        .and_then(|r| r.as_array())
        .cloned()
        .unwrap_or_default();
    for r in runs.iter().rev().take(5) {
        let s = |k: &str| r.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
        println!(
            "  {} {}: {} -> {}{}{}{}",
            age(num(r, "started_at_ms")),
            s("rule"),
            s("event"),
            if r.get("dry_run").and_then(|d| d.as_bool()).unwrap_or(false) {
                "dry-run".to_string()
            } else if s("action") == "log" {
                "logged".to_string()
            } else {
                r.get("exit")
                    .and_then(|x| x.as_str())
                    .unwrap_or("not run")
                    .to_string()
            },
            if r.get("killed_by_timeout")
                .and_then(|k| k.as_bool())
                .unwrap_or(false)
            {
                " (killed at timeout)"
            } else {
                ""
            },
            if s("action") == "log" {
                String::new()
            } else {
                format!(" in {} ms", num(r, "duration_ms"))
            },
            r.get("error")
                .and_then(|e| e.as_str())
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
}

fn print_scheduler(v: &serde_json::Value) {
    let str_of = |k: &str| v.get(k).and_then(|b| b.as_str()).unwrap_or("-").to_string();
    let num = |x: &serde_json::Value, k: &str| x.get(k).and_then(|n| n.as_u64()).unwrap_or(0);
    println!(
        "scheduler: {} (state {})",
        str_of("backend"),
        str_of("state")
    );
    if let Some(e) = v.get("last_exit").filter(|e| !e.is_null()) {
        println!(
            "  last exit: {} {} (restarts {})",
            e.get("reason").and_then(|r| r.as_str()).unwrap_or("?"),
            e.get("message").and_then(|r| r.as_str()).unwrap_or(""),
            num(v, "restarts")
        );
    }
    if let Some(g) = v.get("global") {
        println!(
            "  dispatches: local={} cgroup={} fallbacks={}",
            num(g, "local_dispatches"),
            num(g, "cgroup_dispatches"),
            num(g, "fallbacks")
        );
    }
    for c in v
        .get("cgroups")
        .and_then(|c| c.as_array())
        .into_iter()
        .flatten()
    {
        println!(
            "  {:<32} weight={:<6} hweight={:.4} cpu={:.2}s dispatches={}",
            c.get("path").and_then(|p| p.as_str()).unwrap_or("?"),
            num(c, "weight"),
            c.get("hweight").and_then(|h| h.as_f64()).unwrap_or(0.0),
            num(c, "cpu_time_ns") as f64 / 1e9,
            num(c, "dispatches")
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
    print_trust(&cfg, &set, mine.as_ref(), &info);
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

/// Strict trust mode's verdict on a session_high decision by rule.
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
