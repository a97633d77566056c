//! The BPF backend: bpf/schedmon.bpf.c's program (attached only while a
//! leaf is watched), the `watched` cgroup storage, the per-leaf slots in
//! the mmapped .bss and the ring buffer of idle -> active edges.

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use anyhow::{bail, Context};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject, RingBuffer, RingBufferBuilder};

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
    /// The watched leaves' cgroup fds by slot: the key that deletes a
    /// leaf's watch, even once the leaf was removed.
    fds: HashMap<u32, OwnedFd>,
    /// The program's link, held while some leaf is watched: with none,
    /// the host's switches run no program at all.
    link: Option<Link>,
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
        let skel = open.load().context("load BPF programs")?;

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
        let mut source = Source {
            skel,
            ring,
            queue,
            free: (0..MAX_LEAVES as u32).collect(),
            gen: 0,
            fds: HashMap::new(),
            link: None,
        };
        // The kernel may refuse the attach (no tp_btf): find out now, so
        // the monitor falls back at start rather than at its first leaf.
        source.attach()?;
        source.detach();
        Ok(source)
    }

    /// Attach the program (idempotent); `open` checks it works once.
    pub(crate) fn attach(&mut self) -> anyhow::Result<()> {
        if self.link.is_none() {
            let progs = &self.skel.progs;
            let switch = progs
                .schedmon_switch
                .attach()
                .context("attach tp_btf/sched_switch")?;
            self.link = Some(switch);
        }
        Ok(())
    }

    /// Detach the program: nothing is watched.
    pub(crate) fn detach(&mut self) {
        self.link = None;
    }

    pub(crate) fn attached(&self) -> bool {
        self.link.is_some()
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

    /// Drop every CPU's memo of the last cgroup looked up: call after
    /// each watch set or deleted.
    fn bump_epoch(&self) {
        // SAFETY: a field of the mmapped .bss.
        Self::u64_at(unsafe { std::ptr::addr_of_mut!((*self.bss()).watch_epoch) })
            .fetch_add(1, Ordering::SeqCst);
    }

    fn idle_flag(&self, slot: u32) -> &'static AtomicU32 {
        // SAFETY: slot < MAX_LEAVES, the array's length.
        Self::u32_at(unsafe {
            std::ptr::addr_of_mut!((*self.bss()).slot_idle)
                .cast::<u32>()
                .add(slot as usize % MAX_LEAVES)
        })
    }

    /// Watch the leaf cgroup at `path`: a fresh slot (armed when `idle`)
    /// named by the leaf's `watched` storage; the programs are attached
    /// with the first leaf. Returns the slot and its generation.
    pub(crate) fn add(&mut self, path: &Path, idle: bool) -> anyhow::Result<(u32, u64)> {
        // A cgroup directory opened read-only: the storage's key.
        let fd = OwnedFd::from(
            std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?,
        );
        let Some(slot) = self.free.pop_front() else {
            bail!("the kernel side watches {MAX_LEAVES} leaves already");
        };
        self.gen += 1;
        let gen = self.gen;
        // Nothing names the slot yet: no program starts a run there. Its
        // per-CPU counters of an older generation are reset by the first
        // program that touches them, and ignored until then.
        self.slot_gen(slot).store(gen, Ordering::SeqCst);
        self.idle_flag(slot).store(idle as u32, Ordering::SeqCst);
        let watch = schedmon_watch {
            slot,
            pad: 0,
            generation: gen,
        };
        // SAFETY: a plain C struct without padding holes, viewed as bytes.
        let value = unsafe {
            std::slice::from_raw_parts(
                (&watch as *const schedmon_watch).cast::<u8>(),
                std::mem::size_of::<schedmon_watch>(),
            )
        };
        let attached = self.attach();
        let set = attached.and_then(|()| {
            self.skel
                .maps
                .watched
                .update(&fd.as_raw_fd().to_ne_bytes(), value, MapFlags::ANY)
                .with_context(|| format!("watched storage of {}", path.display()))
        });
        if let Err(e) = set {
            self.idle_flag(slot).store(0, Ordering::SeqCst);
            self.free.push_back(slot);
            if self.fds.is_empty() {
                self.detach();
            }
            return Err(e);
        }
        self.bump_epoch();
        self.fds.insert(slot, fd);
        Ok((slot, gen))
    }

    /// Stop watching `slot`'s leaf; the programs are detached with the
    /// last one.
    pub(crate) fn remove(&mut self, slot: u32) {
        if let Some(fd) = self.fds.remove(&slot) {
            // ENOENT once the cgroup is gone (its storage went with it).
            let _ = self.skel.maps.watched.delete(&fd.as_raw_fd().to_ne_bytes());
            self.bump_epoch();
        }
        self.idle_flag(slot).store(0, Ordering::SeqCst);
        self.free.push_back(slot);
        if self.fds.is_empty() {
            self.detach();
        }
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
            if l.cur_start != 0 {
                // The leaf has had this CPU since cur_start: its tasks ran
                // that long, of which runtime_ns holds the runs that ended.
                c.running += 1;
                c.runtime_ns += l
                    .runtime_ns
                    .max(l.runtime_at_start + now_ns.saturating_sub(l.cur_start));
            } else {
                c.runtime_ns += l.runtime_ns;
            }
            c.last_run_ns = c.last_run_ns.max(l.last_run_ns);
            c.switches += l.switches;
            c.wakeups += l.wakeups;
        }
        if c.last_run_ns > 0 {
            // Stamped to a tick: the run may have been up to a tick later.
            // Later, never earlier: an agent is never idle too soon.
            c.last_run_ns = (c.last_run_ns + SM_TICK_LAG_NS as u64).min(now_ns.max(c.last_run_ns));
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
        [("schedmon_switch", progs.schedmon_switch.as_fd())]
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
