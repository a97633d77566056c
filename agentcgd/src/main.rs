//! agentcgd: gives AI-agent workloads their own, prioritised slice of a host.
//!
//! `agentcgd [OPTIONS] [ROOT]` runs the daemon; `check`, `status` and
//! `explain` inspect policies and what the daemon decided.

mod cgroup;
mod classify;
mod config;
mod daemon;
mod launch;
mod leaves;
mod limits;
mod loader;
mod logging;
mod memory;
mod metrics;
mod observe;
mod policy;
mod prefilter;
#[cfg(test)]
mod props;
mod publish;
mod redact;
mod report;
mod sdnotify;
mod state;
mod statefile;
mod top;
mod trust;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `VERSION (git REV)`: shown by `--version`, logged at start, kept in
/// the state file for `status`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("AGENTCGD_GIT_REV"),
    ")"
);

const DEFAULT_ROOT: &str = "/sys/fs/cgroup/agentcg";
const DEFAULT_CONFIG: &str = "/etc/agentcgd/agentcgd.yaml";
const DEFAULT_POLICIES: &str = "/etc/agentcgd/policies.d";
const DEFAULT_STATE: &str = "/run/agentcgd/state.json";

#[derive(Parser, Debug)]
#[command(
    name = "agentcgd",
    version = VERSION,
    about = "Places AI-agent processes into a prioritised cgroup v2 tree by policy",
    long_about = "Places AI-agent processes into ROOT/session_high and ROOT/session_low by \
                  YAML policy (one file per agent family), sets cpu.weight, and keeps the \
                  placement as agents spawn tools. Inspect with `agentcgd status`.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// The agentcg cgroup (created if missing) on a cgroup2 mount.
    #[arg(default_value = DEFAULT_ROOT)]
    root: PathBuf,
    /// Daemon-wide settings (missing file: defaults).
    #[arg(long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Directory of per-family policy files (*.yaml).
    #[arg(long, default_value = DEFAULT_POLICIES)]
    policies: PathBuf,
    /// Where the daemon writes its state for `status` and `explain`.
    #[arg(long, default_value = DEFAULT_STATE)]
    state: PathBuf,
    /// Do not load the sched_ext scheduler.
    #[arg(long)]
    no_scheduler: bool,
    /// Do not start priority memory protection.
    #[arg(long)]
    no_memcg: bool,
    /// Decide and log, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Process-event source.
    #[arg(long, value_enum, default_value = "auto")]
    events: daemon::EventSource,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Validate the policies and config, print the effective policy.
    Check {
        #[arg(long, default_value = DEFAULT_POLICIES)]
        policies: PathBuf,
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show families, sessions, placements and backends of the running daemon.
    Status {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_STATE)]
        state: PathBuf,
    },
    /// Live view of the agents (CPU, memory, GPU, state), from the state
    /// file; keys sort, q quits. Any user may run it.
    Top {
        #[arg(long, default_value = DEFAULT_STATE)]
        state: PathBuf,
        /// Print one frame and exit (also what happens without a terminal).
        #[arg(long)]
        once: bool,
    },
    /// Say which rule placed (or would place) PID, and why.
    Explain {
        pid: u32,
        #[arg(long, default_value = DEFAULT_POLICIES)]
        policies: PathBuf,
        /// Daemon-wide settings (shared tools rules, user_priority).
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long, default_value = DEFAULT_STATE)]
        state: PathBuf,
    },
    /// Run CMD inside its session cgroup from its first instruction: asks the
    /// running daemon (any user, for their own process) to move this process,
    /// then execs CMD (with AGENTCG_PRIORITY set when --priority is given).
    Run {
        /// high or low (default: the family's priority, else high).
        #[arg(long, value_parser = parse_priority)]
        priority: Option<policy::Priority>,
        /// The family to count it under (default: its own rules decide).
        #[arg(long, value_parser = parse_family)]
        family: Option<policy::FamilyName>,
        /// The running daemon's state file (its socket sits beside it).
        #[arg(long, default_value = DEFAULT_STATE)]
        state: PathBuf,
        /// ROOT, for root without a running daemon.
        #[arg(long, default_value = DEFAULT_ROOT)]
        root: PathBuf,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
}

fn parse_priority(s: &str) -> Result<policy::Priority, String> {
    match s {
        "high" => Ok(policy::Priority::High),
        "low" => Ok(policy::Priority::Low),
        _ => Err(format!("{s:?}: want high or low")),
    }
}

fn parse_family(s: &str) -> Result<policy::FamilyName, String> {
    policy::FamilyName::try_from(s.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init();
    let result = match cli.cmd {
        Some(Cmd::Check { policies, config }) => report::check(&policies, &config),
        Some(Cmd::Status { json, state }) => report::status(&state, json),
        Some(Cmd::Top { state, once }) => top::run(&state, once),
        Some(Cmd::Explain {
            pid,
            policies,
            config,
            state,
        }) => report::explain(pid, &policies, &config, &state),
        Some(Cmd::Run {
            priority,
            family,
            state,
            root,
            cmd,
        }) => launch::run(launch::RunOptions {
            priority,
            family,
            state,
            root,
            cmd,
        }),
        None => daemon::run(daemon::Options {
            root: cli.root,
            config: cli.config,
            policies: cli.policies,
            state: cli.state,
            no_scheduler: cli.no_scheduler,
            no_memcg: cli.no_memcg,
            dry_run: cli.dry_run,
            events: cli.events,
        })
        .map_err(|e| format!("{e:#}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentcgd: {e}");
            ExitCode::from(2)
        }
    }
}
