//! The loader: opens, loads and attaches bpf/flatcg.bpf.c through scx_utils'
//! compat macros, reads its statistics and its exit information.

use std::mem::MaybeUninit;

use anyhow::{Context, Result};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject};
use scx_utils::{compat, scx_ops_attach, scx_ops_load, scx_ops_open, uei_exited, uei_read};

use crate::stats::{GlobalCounters, RawCgroupStats};

#[allow(
    clippy::all,
    dead_code,
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    unsafe_op_in_unsafe_fn
)]
pub(crate) mod intf {
    include!(concat!(env!("OUT_DIR"), "/flatcg_intf.rs"));
}
#[allow(
    clippy::all,
    dead_code,
    unused_imports,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals
)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/flatcg_skel.rs"));
}

use skel::{FlatcgSkel, FlatcgSkelBuilder};

/// The ops name the BPF program registers (scx_utils appends a version
/// suffix, e.g. `agentcg_1.1.4_...`; the kernel shows the full name).
pub const OPS_NAME: &str = "agentcg";

/// Number of global counters in the BPF `gstats` array.
pub(crate) const NR_GSTATS: u32 = intf::agcg_gstat_AGCG_NR_GSTATS;

/// Slices a single-CPU task may wait before it is served first (see the
/// header comment of bpf/flatcg.bpf.c).
pub const STARVE_SLICES: u32 = 25;

/// Load-time parameters.
#[derive(Debug, Clone, Copy)]
pub struct LoadOpts {
    /// Slice for tasks and for a CPU's turn on a cgroup, in microseconds.
    pub slice_us: u64,
    /// `ops.timeout_ms`, the kernel's stall watchdog; 0: its default.
    pub watchdog_ms: u32,
}

/// How the scheduler left (from the kernel's `scx_exit_info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawExit {
    /// `enum scx_exit_kind`.
    pub kind: i32,
    pub exit_code: i64,
    pub reason: String,
    pub msg: String,
    /// The CPU that raised the exit, where the kernel says.
    pub cpu: Option<u32>,
    /// The kernel's debug dump of an error exit (the error site's
    /// backtrace, every CPU's run queue and tasks); empty when none.
    pub dump: String,
    /// The kernel or the BPF side asked for a restart
    /// (`SCX_ECODE_ACT_RESTART`, scx_utils' `should_restart()`).
    pub restart: bool,
}

/// A loaded and attached scheduler. Dropping it detaches it: the kernel goes
/// back to its own scheduler.
pub struct Scheduler<'obj> {
    skel: FlatcgSkel<'obj>,
    link: Option<Link>,
}

/// Online CPUs (a task allowed on fewer is affinity-restricted). The
/// kernel restarts the scheduler on CPU hotplug, so the count at load holds.
fn online_cpus() -> Result<u32> {
    let path = "/sys/devices/system/cpu/online";
    let list = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let cpus = scx_utils::read_cpulist(list.trim()).with_context(|| format!("parsing {path}"))?;
    Ok(cpus.len().max(1) as u32)
}

fn cstr(bytes: &[std::os::raw::c_char]) -> String {
    let bytes: Vec<u8> = bytes.iter().map(|&c| c as u8).collect();
    nul_terminated(&bytes)
}

/// The text before the first NUL (all of it without one).
fn nul_terminated(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

impl<'obj> Scheduler<'obj> {
    /// Open, load and attach. Fails when the kernel has no sched_ext, when
    /// another scheduler is attached, or when the verifier rejects the
    /// program (the error carries libbpf's explanation).
    pub fn attach(open_object: &'obj mut MaybeUninit<OpenObject>, opts: LoadOpts) -> Result<Self> {
        let builder = FlatcgSkelBuilder::default();
        let mut open = scx_ops_open!(
            builder,
            open_object,
            agentcg_ops,
            None::<libbpf_rs::libbpf_sys::bpf_object_open_opts>
        )?;

        // a stable ops name ("agentcg") instead of scx_utils' versioned one,
        // so that /sys/kernel/sched_ext/root/ops is predictable
        let ops = open.struct_ops.agentcg_ops_mut();
        // a remote wake-up is enqueued by the target CPU (the kernel's
        // wake list) instead of by the waker under the target's rq lock;
        // ops.enqueue() does not rely on ops.select_cpu() having run.
        // 0 on kernels without the flag.
        ops.flags |= *compat::SCX_OPS_ALLOW_QUEUED_WAKEUP;
        if opts.watchdog_ms > 0 {
            ops.timeout_ms = opts.watchdog_ms;
        }
        let name = &mut ops.name;
        name.fill(0);
        for (dst, src) in name.iter_mut().zip(OPS_NAME.bytes()) {
            *dst = src as _;
        }

        let nr_online = online_cpus()?;
        let rodata = open
            .maps
            .rodata_data
            .as_mut()
            .context("BPF object has no .rodata")?;
        rodata.nr_online = nr_online;
        rodata.slice_ns = opts.slice_us.saturating_mul(1000);
        rodata.starve_slices = STARVE_SLICES;

        let mut skel = scx_ops_load!(open, agentcg_ops, uei)?;
        let link = scx_ops_attach!(skel, agentcg_ops)?;
        Ok(Self {
            skel,
            link: Some(link),
        })
    }

    /// True once the kernel has taken the scheduler down (error, sysrq,
    /// unregistration); [`Scheduler::exit_info`] says why.
    pub fn exited(&self) -> bool {
        uei_exited!(&self.skel, uei)
    }

    /// The recorded exit, if the scheduler has exited.
    pub fn exit_info(&self) -> Option<RawExit> {
        let data = self.skel.maps.data_data.as_ref()?;
        // SAFETY: plain reads of the BPF .data mapping; kind is written last
        // (with a barrier) by UEI_RECORD.
        let kind = unsafe { std::ptr::read_volatile(&data.uei.kind as *const i32) };
        if kind == 0 {
            return None;
        }
        let uei = uei_read!(&self.skel, uei);
        // UEI_RECORD filled the one-element `uei_dump` array before `kind`.
        let dump = self
            .skel
            .maps
            .data_uei_dump
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .ok()
            .flatten()
            .map(|b| nul_terminated(&b))
            .unwrap_or_default();
        Some(RawExit {
            kind,
            exit_code: data.uei.exit_code,
            reason: cstr(&data.uei.reason),
            msg: cstr(&data.uei.msg),
            cpu: u32::try_from(data.uei.exit_cpu).ok(),
            dump,
            restart: uei.should_restart(),
        })
    }

    /// Per-cgroup counters: the contexts in the slots below `slot_hw`, read
    /// in one batch (one system call, not one per slot).
    pub fn cgroup_stats(&self) -> Vec<RawCgroupStats> {
        let hw = self.skel.maps.bss_data.as_ref().map_or(0, |b| b.slot_hw);
        let mut out = Vec::new();
        if hw == 0 {
            return out;
        }
        let batch = match self
            .skel
            .maps
            .cgrp_ctxs
            .lookup_batch(hw, MapFlags::ANY, MapFlags::ANY)
        {
            Ok(batch) => batch,
            Err(e) => {
                log::debug!("scheduler statistics: batch lookup of {hw} slots failed: {e}");
                return out;
            }
        };
        for (key, val) in batch.take(hw as usize) {
            let Some(slot) = key.get(..4).and_then(|k| k.try_into().ok()) else {
                continue;
            };
            if val.len() < std::mem::size_of::<intf::agcg_cgrp_ctx>() {
                continue;
            }
            // SAFETY: length checked; the value is a struct agcg_cgrp_ctx.
            let c: intf::agcg_cgrp_ctx = unsafe { std::ptr::read_unaligned(val.as_ptr().cast()) };
            if c.cgid == 0 {
                continue;
            }
            out.push(RawCgroupStats {
                cgid: c.cgid,
                cpu_time_ns: c.cpu_time_ns,
                dispatches: c.dispatches,
                picks: c.picks,
                weight: c.weight,
                level: c.level,
                slot: u32::from_ne_bytes(slot),
                parent: c.parent,
                active: c.nr_active > 0,
                child_weight_sum: c.child_weight_sum,
            });
        }
        out
    }

    /// Global counters, summed over CPUs.
    pub fn global_stats(&self) -> GlobalCounters {
        let map = &self.skel.maps.gstats;
        let mut sums = vec![0u64; NR_GSTATS as usize];
        for (idx, sum) in sums.iter_mut().enumerate() {
            let key = (idx as u32).to_ne_bytes();
            if let Ok(Some(per_cpu)) = map.lookup_percpu(&key, MapFlags::ANY) {
                *sum = per_cpu
                    .iter()
                    .filter(|v| v.len() >= 8)
                    .map(|v| u64::from_ne_bytes(v[..8].try_into().unwrap()))
                    .sum();
            }
        }
        GlobalCounters::from_sums(&sums)
    }

    /// Detach now (also done on drop).
    pub fn detach(&mut self) {
        self.link.take();
    }
}

impl Drop for Scheduler<'_> {
    fn drop(&mut self) {
        self.detach();
    }
}
