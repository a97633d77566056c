//! agentcgd: gives AI-agent workloads their own, prioritised slice of a host.
//!
//! `agentcgd [OPTIONS] [ROOT]` runs the daemon; `check`, `status` and
//! `explain` inspect policies and what the daemon decided.

mod cgroup;
mod classify;
mod config;
mod daemon;
mod logging;
mod policy;
mod prefilter;
mod publish;
mod report;
mod sdnotify;
mod state;

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
    /// Say which rule placed (or would place) PID, and why.
    Explain {
        pid: u32,
        #[arg(long, default_value = DEFAULT_POLICIES)]
        policies: PathBuf,
        #[arg(long, default_value = DEFAULT_STATE)]
        state: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init();
    let result = match cli.cmd {
        Some(Cmd::Check { policies, config }) => report::check(&policies, &config),
        Some(Cmd::Status { json, state }) => report::status(&state, json),
        Some(Cmd::Explain {
            pid,
            policies,
            state,
        }) => report::explain(pid, &policies, &state),
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
