//! The BPF source: tp_btf exec/exit programs feeding a ring buffer.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::RingBufferBuilder;

use crate::procfs::{ns_to_ticks, split_argv, ProcFs, ProcInfo};
use crate::{Counters, ProcEvent, Sink, POLL_TICK};

#[allow(
    clippy::all,
    dead_code,
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    unsafe_op_in_unsafe_fn
)]
mod intf {
    include!(concat!(env!("OUT_DIR"), "/procmon_intf.rs"));
}
#[allow(
    clippy::all,
    dead_code,
    unused_imports,
    non_camel_case_types,
    non_snake_case
)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/procmon_skel.rs"));
}

use intf::{procmon_event, procmon_kind_PM_EXEC, procmon_kind_PM_EXIT};

fn cstr(bytes: &[std::os::raw::c_char]) -> String {
    let bytes: Vec<u8> = bytes
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Decode one ring-buffer record. Exec events get the resolved executable
/// from /proc when the process is still there (it usually is: we run
/// microseconds after the exec), else the path given to execve.
fn decode(data: &[u8], procfs: &ProcFs) -> Option<ProcEvent> {
    if data.len() < std::mem::size_of::<procmon_event>() {
        return None;
    }
    // SAFETY: the record was written by the BPF program as a procmon_event
    // and the length is checked above; read_unaligned handles alignment.
    let e: procmon_event = unsafe { std::ptr::read_unaligned(data.as_ptr().cast()) };
    let start_ticks = ns_to_ticks(e.start_ns);
    match e.kind {
        k if k == procmon_kind_PM_EXEC => {
            let argv_len = (e.argv_len as usize).min(e.argv.len());
            let argv_bytes: Vec<u8> = e.argv[..argv_len].iter().map(|&c| c as u8).collect();
            let filename = cstr(&e.filename);
            let exe = procfs.exe_if_same(e.pid, start_ticks).unwrap_or(filename);
            Some(ProcEvent::Exec(ProcInfo {
                pid: e.pid,
                ppid: e.ppid,
                uid: e.uid,
                comm: cstr(&e.comm),
                exe,
                argv: split_argv(&argv_bytes),
                start_ticks,
                kernel_thread: false,
            }))
        }
        k if k == procmon_kind_PM_EXIT => Some(ProcEvent::Exit {
            pid: e.pid,
            start_ticks: Some(start_ticks),
            exit_code: Some(e.exit_code),
        }),
        _ => None,
    }
}

type SpawnError = (anyhow::Error, Sink);

pub(crate) fn spawn(
    sink: Sink,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, SpawnError> {
    // libbpf objects are not Send: open, load and attach on the thread itself
    // and report the outcome back before returning.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    let sink = Arc::new(std::sync::Mutex::new(Some(sink)));
    let thread_sink = sink.clone();
    let thread = std::thread::Builder::new()
        .name("procmon-bpf".into())
        .spawn(move || {
            if let Err(e) = run(&thread_sink, &counters, &stop, &ready_tx) {
                let _ = ready_tx.send(Err(e));
            }
        })
        .expect("spawn procmon thread");
    let outcome = ready_rx
        .recv()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("procmon thread died")));
    match outcome {
        Ok(()) => Ok(thread),
        Err(e) => {
            let _ = thread.join();
            let s = sink.lock().unwrap().take().expect("sink returned");
            Err((e, s))
        }
    }
}

fn run(
    shared_sink: &std::sync::Mutex<Option<Sink>>,
    counters: &Counters,
    stop: &AtomicBool,
    ready: &std::sync::mpsc::Sender<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let mut open_object = MaybeUninit::uninit();
    let open = skel::ProcmonSkelBuilder::default()
        .open(&mut open_object)
        .context("open BPF object")?;
    let mut skel = open.load().context("load BPF programs")?;
    skel.attach().context("attach tracepoints")?;

    // From here on we cannot fail back to another source: take the sink.
    // The ring callback and the lost-event check below share it.
    let sink = RefCell::new(shared_sink.lock().unwrap().take().expect("sink present"));
    let procfs = ProcFs::default();
    let mut builder = RingBufferBuilder::new();
    builder
        .add(&skel.maps.events, |data: &[u8]| {
            if let Some(ev) = decode(data, &procfs) {
                match &ev {
                    ProcEvent::Exec(_) => counters.exec.fetch_add(1, Ordering::Relaxed),
                    _ => counters.exit.fetch_add(1, Ordering::Relaxed),
                };
                (sink.borrow_mut())(ev);
            }
            0
        })
        .context("ring buffer")?;
    let ring = builder.build().context("ring buffer")?;
    let _ = ready.send(Ok(()));

    let mut seen_lost = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = ring.poll(POLL_TICK) {
            if e.kind() != libbpf_rs::ErrorKind::Interrupted {
                log::warn!("procmon ring buffer poll: {e}");
            }
        }
        // nr_lost lives in .bss, memory shared with the BPF programs.
        let lost = skel
            .maps
            .bss_data
            .as_ref()
            // SAFETY: a u64 in the mmapped .bss; volatile because BPF writes it.
            .map(|b| unsafe { std::ptr::read_volatile(&b.nr_lost) })
            .unwrap_or(0);
        if lost > seen_lost {
            let n = lost - seen_lost;
            seen_lost = lost;
            counters.lost.fetch_add(n, Ordering::Relaxed);
            // Deliver what is queued first, so the consumer's reconciling
            // scan comes after every event that did arrive.
            let _ = ring.consume();
            (sink.borrow_mut())(ProcEvent::Lost(n));
        }
    }
    Ok(())
}
