//! agentcg-schedfloor: attaches bpf/schedfloor.bpf.c, the thinnest useful
//! sched_ext scheduler (one global weighted-vtime queue), until SIGINT or
//! SIGTERM. Benchmarks only: tests/bench/sched-fairness runs it beside the
//! kernel's scheduler and scx_agentcg to show what sched_ext itself costs.
//!
//! Usage: agentcg-schedfloor [SLICE_US]   (default 5000, scx_agentcg's)

use std::mem::MaybeUninit;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use scx_utils::{compat, scx_ops_attach, scx_ops_load, scx_ops_open, uei_exited, uei_read};

#[allow(
    clippy::all,
    dead_code,
    unused_imports,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals
)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/schedfloor_skel.rs"));
}
use skel::SchedfloorSkelBuilder;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn run(slice_us: u64) -> Result<()> {
    let mut obj = MaybeUninit::uninit();
    let mut open = scx_ops_open!(
        SchedfloorSkelBuilder::default(),
        &mut obj,
        schedfloor_ops,
        None::<libbpf_rs::libbpf_sys::bpf_object_open_opts>
    )?;
    // queued wake-ups, as scx_agentcg has them: the same framework path
    open.struct_ops.schedfloor_ops_mut().flags |= *compat::SCX_OPS_ALLOW_QUEUED_WAKEUP;
    open.maps
        .rodata_data
        .as_mut()
        .context("BPF object has no .rodata")?
        .slice_ns = slice_us.saturating_mul(1000);
    let mut skel = scx_ops_load!(open, schedfloor_ops, uei)?;
    let _link = scx_ops_attach!(skel, schedfloor_ops)?;
    eprintln!("agentcg-schedfloor: attached (slice {slice_us} us)");
    while !STOP.load(Ordering::Relaxed) && !uei_exited!(&skel, uei) {
        std::thread::sleep(Duration::from_millis(100));
    }
    if uei_exited!(&skel, uei) {
        // prints the kind, reason and message, and fails for an error exit
        uei_read!(&skel, uei).report()?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let slice_us = match std::env::args().nth(1).map(|a| a.parse::<u64>()) {
        None => 5000,
        Some(Ok(us)) if us > 0 => us,
        Some(_) => {
            eprintln!("usage: agentcg-schedfloor [SLICE_US]");
            return ExitCode::from(2);
        }
    };
    // SAFETY: an async-signal-safe handler that stores an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    match run(slice_us) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentcg-schedfloor: {e:#}");
            ExitCode::FAILURE
        }
    }
}
