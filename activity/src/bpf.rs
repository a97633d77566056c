//! The BPF backend: bpf/schedmon.bpf.c's programs, the `watched` map, the
//! per-leaf slots in the mmapped .bss and the ring buffer of idle -> active
//! edges.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use anyhow::{bail, Context};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, OpenObject, RingBuffer, RingBufferBuilder};

#[allow(
    clippy::all,
    dead_code,
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    unsafe_op_in_unsafe_fn
)]
mod intf {
    include!(concat!(env!("OUT_DIR"), "/schedmon_intf.rs"));
}
#[allow(
    clippy::all,
    dead_code,
    unused_imports,
    non_camel_case_types,
    non_snake_case
)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/schedmon_skel.rs"));
}

use intf::*;

/// Leaves the kernel side can watch at once.
pub const MAX_LEAVES: usize = schedmon_consts_SM_MAX_LEAVES as usize;

/// What the kernel has aggregated for one leaf.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    /// On-CPU time, runs going on included.
    pub runtime_ns: u64,
    pub running: u32,
    pub last_run_ns: u64,
    pub switches: u64,
    pub wakeups: u64,
}

/// One idle -> active edge.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Edge {
    pub slot: u32,
    pub gen: u64,
    pub ts_ns: u64,
}

/// A BPF program's own cost, with `kernel.bpf_stats_enabled` on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProgStats {
    pub name: String,
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

pub(crate) struct Source {
    skel: skel::SchedmonSkel<'static>,
    ring: RingBuffer<'static>,
    queue: Rc<RefCell<VecDeque<Edge>>>,
    /// Free slots, reused oldest-freed first (a program that looked a slot
    /// up just before it was freed is long done when it is reused).
    free: VecDeque<u32>,
    gen: u64,
}

impl Source {
    pub(crate) fn open() -> anyhow::Result<Source> {
        if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
            bail!("no kernel BTF (/sys/kernel/btf/vmlinux): tp_btf programs cannot load");
        }
        // The skeleton borrows its object for as long as it lives; the
        // monitor lives as long as the daemon, so one small leak per start.
        let object: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let open = skel::SchedmonSkelBuilder::default()
            .open(object)
            .context("open BPF object")?;
        let mut skel = open.load().context("load BPF programs")?;
        skel.attach()
            .context("attach tp_btf/sched_switch and sched_wakeup")?;

        let queue: Rc<RefCell<VecDeque<Edge>>> = Rc::default();
        let q = queue.clone();
        let mut builder = RingBufferBuilder::new();
        builder
            .add(&skel.maps.edges, move |data: &[u8]| {
                if data.len() >= std::mem::size_of::<schedmon_edge>() {
                    // SAFETY: a schedmon_edge written by the BPF program,
                    // length checked; read_unaligned handles alignment.
                    let e: schedmon_edge =
                        unsafe { std::ptr::read_unaligned(data.as_ptr().cast()) };
                    q.borrow_mut().push_back(Edge {
                        slot: e.slot,
                        gen: e.generation,
                        ts_ns: e.ts_ns,
                    });
                }
                0
            })
            .context("ring buffer")?;
        let ring = builder.build().context("ring buffer")?;
        Ok(Source {
            skel,
            ring,
            queue,
            free: (0..MAX_LEAVES as u32).collect(),
            gen: 0,
        })
    }

    /// The ring buffer's epoll fd: readable when an edge is waiting.
    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the ring buffer's epoll fd lives as long as `self.ring`.
        unsafe { BorrowedFd::borrow_raw(self.ring.epoll_fd()) }
    }

    fn bss(&self) -> *mut skel::types::bss {
        let b: &skel::types::bss = self
            .skel
            .maps
            .bss_data
            .as_deref()
            .expect("schedmon .bss is mmapped");
        (b as *const skel::types::bss).cast_mut()
    }

    fn u64_at(p: *mut u64) -> &'static AtomicU64 {
        // SAFETY: an aligned u64 of the mmapped .bss, which lives as long
        // as the skeleton (the monitor); BPF reads or updates it atomically.
        unsafe { AtomicU64::from_ptr(p) }
    }

    fn u32_at(p: *mut u32) -> &'static AtomicU32 {
        // SAFETY: as for u64_at.
        unsafe { AtomicU32::from_ptr(p) }
    }

    fn slot_gen(&self, slot: u32) -> &'static AtomicU64 {
        // SAFETY: slot < MAX_LEAVES, the array's length.
        Self::u64_at(unsafe {
            std::ptr::addr_of_mut!((*self.bss()).slot_gen)
                .cast::<u64>()
                .add(slot as usize % MAX_LEAVES)
        })
    }

    fn idle_flag(&self, slot: u32) -> &'static AtomicU32 {
        // SAFETY: slot < MAX_LEAVES, the array's length.
        Self::u32_at(unsafe {
            std::ptr::addr_of_mut!((*self.bss()).slot_idle)
                .cast::<u32>()
                .add(slot as usize % MAX_LEAVES)
        })
    }

    fn set_nr_watched(&self, n: u32) {
        // SAFETY: a field of the mmapped .bss.
        Self::u32_at(unsafe { std::ptr::addr_of_mut!((*self.bss()).nr_watched) })
            .store(n, Ordering::SeqCst);
    }

    /// Watch cgroup `cgroup_id`: a fresh slot (armed when `idle`) and its
    /// entry in `watched`. Returns the slot and its generation.
    pub(crate) fn add(&mut self, cgroup_id: u64, idle: bool) -> anyhow::Result<(u32, u64)> {
        let Some(slot) = self.free.pop_front() else {
            bail!("the kernel side watches {MAX_LEAVES} leaves already");
        };
        self.gen += 1;
        let gen = self.gen;
        // The slot is not in `watched` yet: no program starts a run there.
        // Its per-CPU counters of an older generation are reset by the
        // first program that touches them, and ignored until then.
        self.slot_gen(slot).store(gen, Ordering::SeqCst);
        self.idle_flag(slot).store(idle as u32, Ordering::SeqCst);
        if let Err(e) = self.skel.maps.watched.update(
            &cgroup_id.to_ne_bytes(),
            &slot.to_ne_bytes(),
            MapFlags::ANY,
        ) {
            self.free.push_back(slot);
            return Err(e).with_context(|| format!("watched map: add cgroup {cgroup_id}"));
        }
        self.set_nr_watched((MAX_LEAVES - self.free.len()) as u32);
        Ok((slot, gen))
    }

    pub(crate) fn remove(&mut self, cgroup_id: u64, slot: u32) {
        let _ = self.skel.maps.watched.delete(&cgroup_id.to_ne_bytes());
        self.idle_flag(slot).store(0, Ordering::SeqCst);
        self.free.push_back(slot);
        self.set_nr_watched((MAX_LEAVES - self.free.len()) as u32);
    }

    /// Sum a slot's per-CPU counters of the current generation. `now_ns`
    /// completes the runs going on.
    pub(crate) fn read(&self, slot: u32, now_ns: u64) -> Counters {
        let gen = self.slot_gen(slot).load(Ordering::SeqCst);
        let mut c = Counters::default();
        let values = match self
            .skel
            .maps
            .leaf_cpu
            .lookup_percpu(&slot.to_ne_bytes(), MapFlags::ANY)
        {
            Ok(Some(v)) => v,
            Ok(None) => return c,
            Err(e) => {
                log::warn!("activity: read slot {slot}: {e}");
                return c;
            }
        };
        for v in values {
            if v.len() < std::mem::size_of::<schedmon_leaf>() {
                continue;
            }
            // SAFETY: one CPU's schedmon_leaf, length checked.
            let l: schedmon_leaf = unsafe { std::ptr::read_unaligned(v.as_ptr().cast()) };
            if l.generation != gen {
                continue;
            }
            c.runtime_ns += l.runtime_ns;
            if l.cur_start != 0 {
                c.running += 1;
                c.runtime_ns += now_ns.saturating_sub(l.cur_start);
            }
            c.last_run_ns = c.last_run_ns.max(l.last_run_ns);
            c.switches += l.switches;
            c.wakeups += l.wakeups;
        }
        c
    }

    /// Arm the edge: the next switch-in sends a record.
    pub(crate) fn arm(&self, slot: u32) {
        self.idle_flag(slot).store(1, Ordering::SeqCst);
    }

    /// Disarm; true if it was still armed (no record was or will be sent).
    pub(crate) fn disarm(&self, slot: u32) -> bool {
        self.idle_flag(slot)
            .compare_exchange(1, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    pub(crate) fn drain(&mut self, out: &mut dyn FnMut(Edge)) {
        if let Err(e) = self.ring.consume() {
            log::warn!("activity ring buffer: {e}");
        }
        let edges: Vec<Edge> = self.queue.borrow_mut().drain(..).collect();
        for e in edges {
            out(e);
        }
    }

    /// Edge records the ring buffer had no room for (expected 0).
    pub(crate) fn edges_lost(&self) -> u64 {
        // SAFETY: a field of the mmapped .bss.
        Self::u64_at(unsafe { std::ptr::addr_of_mut!((*self.bss()).nr_edge_lost) })
            .load(Ordering::Relaxed)
    }

    /// run_cnt and run_time_ns of each program, from /proc/self/fdinfo
    /// (non-zero only while `kernel.bpf_stats_enabled` is 1).
    pub(crate) fn prog_stats(&self) -> Vec<ProgStats> {
        let progs = &self.skel.progs;
        [
            ("schedmon_switch", progs.schedmon_switch.as_fd()),
            ("schedmon_wakeup", progs.schedmon_wakeup.as_fd()),
        ]
        .into_iter()
        .map(|(name, fd)| {
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
                .unwrap_or_default();
            let field = |k: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(k)?.trim().parse().ok())
                    .unwrap_or(0)
            };
            ProgStats {
                name: name.to_string(),
                run_cnt: field("run_cnt:"),
                run_time_ns: field("run_time_ns:"),
            }
        })
        .collect()
    }
}
