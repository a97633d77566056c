//! The BPF source: tp_btf exec/fork/rename/exit programs feeding a ring
//! buffer, the kernel-side lineage map and the exec prefilter.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;
use std::rc::Rc;

use anyhow::Context;
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, OpenObject, RingBuffer, RingBufferBuilder};

use crate::procfs::{ns_to_ticks, split_argv, ProcInfo};
use crate::{Ancestor, Exec, KeyKind, Origin, Prefilter, ProcEvent, Seed, Stats, KEY_TEXT_MAX};

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

use intf::*;

fn cstr(bytes: &[std::os::raw::c_char]) -> String {
    let bytes: Vec<u8> = bytes
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn ancestor_of(e: &procmon_event) -> Option<Ancestor> {
    (e.flags & procmon_flags_PM_F_LINEAGE != 0).then_some(Ancestor {
        pid: e.lineage.tracked_pid,
        start_ticks: e.lineage.tracked_start,
    })
}

/// Decode one ring-buffer record. Nothing here touches /proc: the consumer
/// reads what it needs for its decision, under its own PID-reuse guard.
fn decode(data: &[u8]) -> Option<ProcEvent> {
    if data.len() < std::mem::size_of::<procmon_event>() {
        return None;
    }
    // SAFETY: the record was written by the BPF program as a procmon_event
    // and the length is checked above; read_unaligned handles alignment.
    let e: procmon_event = unsafe { std::ptr::read_unaligned(data.as_ptr().cast()) };
    let start_ticks = ns_to_ticks(e.start_ns);
    match e.kind {
        k if k == procmon_kind_PM_EXEC || k == procmon_kind_PM_RENAME => {
            let argv_len = (e.argv_len as usize).min(e.argv.len());
            let argv_bytes: Vec<u8> = e.argv[..argv_len].iter().map(|&c| c as u8).collect();
            let rename = k == procmon_kind_PM_RENAME;
            Some(ProcEvent::Exec(Exec {
                info: ProcInfo {
                    pid: e.pid,
                    ppid: e.ppid,
                    uid: e.uid,
                    comm: cstr(&e.comm),
                    exe: cstr(&e.filename),
                    argv: split_argv(&argv_bytes),
                    start_ticks,
                    kernel_thread: false,
                },
                origin: if rename { Origin::Rename } else { Origin::Exec },
                cgroup_id: Some(e.cgroup_id),
                ancestor: ancestor_of(&e),
                // A rename carries no argv or executable: read them.
                argv_truncated: rename || e.flags & procmon_flags_PM_F_ARGV_TRUNC != 0,
                exe_unresolved: true,
                at_ns: Some(e.ts_ns),
            }))
        }
        k if k == procmon_kind_PM_FORK => Some(ProcEvent::Fork {
            pid: e.pid,
            ppid: e.ppid,
            start_ticks: Some(start_ticks),
            ancestor: ancestor_of(&e),
        }),
        k if k == procmon_kind_PM_EXIT => Some(ProcEvent::Exit {
            pid: e.pid,
            start_ticks: Some(start_ticks),
            exit_code: Some(e.exit_code),
        }),
        _ => None,
    }
}

/// Decode one record of the `quiet` ring buffer: a normal exit.
fn decode_quiet(data: &[u8]) -> Option<ProcEvent> {
    if data.len() < std::mem::size_of::<procmon_exit>() {
        return None;
    }
    // SAFETY: as in decode(), a procmon_exit of checked length.
    let x: procmon_exit = unsafe { std::ptr::read_unaligned(data.as_ptr().cast()) };
    (x.kind == procmon_kind_PM_EXIT).then(|| ProcEvent::Exit {
        pid: x.pid,
        start_ticks: Some(ns_to_ticks(x.start_ns)),
        exit_code: Some(0),
    })
}

pub(crate) struct Source {
    skel: skel::ProcmonSkel<'static>,
    ring: RingBuffer<'static>,
    queue: Rc<RefCell<VecDeque<ProcEvent>>>,
    seen_lost: u64,
    delivered: Stats,
}

impl Source {
    pub(crate) fn open() -> anyhow::Result<Source> {
        // The skeleton borrows its object for as long as it lives; the
        // monitor lives as long as the daemon, so one small leak per start.
        let object: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let open = skel::ProcmonSkelBuilder::default()
            .open(object)
            .context("open BPF object")?;
        let mut skel = open.load().context("load BPF programs")?;
        skel.attach().context("attach tracepoints")?;

        let queue: Rc<RefCell<VecDeque<ProcEvent>>> = Rc::default();
        let q = queue.clone();
        let quiet = queue.clone();
        let mut builder = RingBufferBuilder::new();
        // Consumed in this order: the normal exits that came before a
        // wake-up go first, as they happened first.
        builder
            .add(&skel.maps.quiet, move |data: &[u8]| {
                if let Some(ev) = decode_quiet(data) {
                    quiet.borrow_mut().push_back(ev);
                }
                0
            })
            .context("ring buffer")?
            .add(&skel.maps.events, move |data: &[u8]| {
                if let Some(ev) = decode(data) {
                    q.borrow_mut().push_back(ev);
                }
                0
            })
            .context("ring buffer")?;
        let ring = builder.build().context("ring buffer")?;
        Ok(Source {
            skel,
            ring,
            queue,
            seen_lost: 0,
            delivered: Stats::default(),
        })
    }

    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the ring buffer's epoll fd lives as long as `self.ring`.
        unsafe { BorrowedFd::borrow_raw(self.ring.epoll_fd()) }
    }

    fn bss(&self) -> &skel::types::bss {
        self.skel
            .maps
            .bss_data
            .as_deref()
            .expect("procmon .bss is mmapped")
    }

    fn bss_mut(&mut self) -> &mut skel::types::bss {
        self.skel
            .maps
            .bss_data
            .as_deref_mut()
            .expect("procmon .bss is mmapped")
    }

    /// A counter the BPF programs write concurrently.
    fn counter(v: &u64) -> u64 {
        // SAFETY: a u64 in the mmapped .bss; volatile because BPF writes it.
        unsafe { std::ptr::read_volatile(v) }
    }

    pub(crate) fn drain(&mut self, out: &mut dyn FnMut(ProcEvent)) {
        if let Err(e) = self.ring.consume() {
            log::warn!("procmon ring buffer: {e}");
        }
        let events: Vec<ProcEvent> = self.queue.borrow_mut().drain(..).collect();
        for ev in events {
            match &ev {
                ProcEvent::Exec(x) if x.origin == Origin::Rename => self.delivered.rename += 1,
                ProcEvent::Exec(_) => self.delivered.exec += 1,
                ProcEvent::Exit { .. } => self.delivered.exit += 1,
                _ => {}
            }
            out(ev);
        }
        // Lost events are reported after what did arrive, so the consumer's
        // reconciling scan comes after all of it.
        let lost = Self::counter(&self.bss().nr_lost);
        if lost > self.seen_lost {
            let n = lost - self.seen_lost;
            self.seen_lost = lost;
            out(ProcEvent::Lost(n));
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        let b = self.bss();
        Stats {
            exec_seen: Self::counter(&b.nr_exec),
            exec_passed: Self::counter(&b.nr_exec_passed),
            exec: self.delivered.exec,
            exit: self.delivered.exit,
            exit_quiet: Self::counter(&b.nr_exit_quiet),
            rename: self.delivered.rename,
            fork_inherited: Self::counter(&b.nr_fork_inherited),
            fork_reported: Self::counter(&b.nr_fork_moved),
            lost: Self::counter(&b.nr_lost),
            lineage_full: Self::counter(&b.nr_lineage_full),
        }
    }

    /// Duplicates of the programs' fds, for reading their miss counts
    /// from another thread.
    pub(crate) fn miss_probe(&self) -> std::io::Result<crate::MissProbe> {
        use std::os::fd::AsFd;
        let p = &self.skel.progs;
        let fds = [
            p.procmon_exec.as_fd(),
            p.procmon_fork.as_fd(),
            p.procmon_rename.as_fd(),
            p.procmon_exit.as_fd(),
        ]
        .iter()
        .map(|fd| fd.try_clone_to_owned())
        .collect::<std::io::Result<Vec<_>>>()?;
        Ok(crate::MissProbe { fds })
    }

    pub(crate) fn seed(&self, pid: u32, seed: Seed) -> anyhow::Result<()> {
        let v = procmon_lineage {
            tracked_pid: seed.ancestor.pid,
            pad: 0,
            tracked_start: seed.ancestor.start_ticks,
            cgroup_id: seed.cgroup_id,
        };
        // SAFETY: procmon_lineage is plain old data without padding holes
        // (explicit `pad`), viewed as its bytes for the map update.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&v as *const procmon_lineage).cast::<u8>(),
                std::mem::size_of::<procmon_lineage>(),
            )
        };
        self.skel
            .maps
            .lineage
            .update(&pid.to_ne_bytes(), bytes, MapFlags::ANY)
            .with_context(|| format!("lineage map: seed pid {pid}"))
    }

    pub(crate) fn unseed(&self, pid: u32) {
        let _ = self.skel.maps.lineage.delete(&pid.to_ne_bytes());
    }

    pub(crate) fn set_prefilter(&mut self, pf: &Prefilter) -> anyhow::Result<()> {
        // Let everything through while the trie is rewritten.
        self.set_flags(true, true, true, true);
        let (mut argv0, mut exe) = (false, false);
        {
            let trie = &self.skel.maps.prefilter;
            let old: Vec<Vec<u8>> = trie.keys().collect();
            for k in old {
                let _ = trie.delete(&k);
            }
            for key in &pf.keys {
                trie.update(&trie_key(key), &[1u8], MapFlags::ANY)
                    .with_context(|| format!("prefilter: add {key:?}"))?;
                argv0 |= key.kind == KeyKind::Argv0;
                exe |= key.kind == KeyKind::Exe;
            }
        }
        self.set_flags(true, pf.pass_all.is_some(), argv0, exe);
        Ok(())
    }

    fn set_flags(&mut self, on: bool, pass_all: bool, argv0: bool, exe: bool) {
        let b = self.bss_mut();
        // The .bss is shared with the programs, which read these per event.
        // SAFETY: aligned u32 fields of the mmapped .bss.
        unsafe {
            std::ptr::write_volatile(&mut b.filter_on, on as u32);
            std::ptr::write_volatile(&mut b.pass_all, pass_all as u32);
            std::ptr::write_volatile(&mut b.want_argv0, argv0 as u32);
            std::ptr::write_volatile(&mut b.want_exe, exe as u32);
        }
    }
}

/// The LPM trie key for a prefilter key: (prefix length in bits, kind, text).
/// An exact key includes the text's NUL, so it matches only that text.
fn trie_key(k: &crate::PrefilterKey) -> Vec<u8> {
    let kind: u32 = match k.kind {
        KeyKind::Comm => procmon_key_kind_PM_K_COMM,
        KeyKind::Argv0 => procmon_key_kind_PM_K_ARGV0,
        KeyKind::Exe => procmon_key_kind_PM_K_EXE,
    };
    let text = &k.text.as_bytes()[..k.text.len().min(KEY_TEXT_MAX)];
    let exact = k.exact && k.text.len() <= KEY_TEXT_MAX;
    let mut s = [0u8; procmon_consts_PM_KEY_LEN as usize];
    s[..text.len()].copy_from_slice(text);
    let bytes_matched = 4 + text.len() + exact as usize;
    let mut key = Vec::with_capacity(4 + 4 + s.len());
    key.extend_from_slice(&((bytes_matched * 8) as u32).to_ne_bytes());
    key.extend_from_slice(&kind.to_ne_bytes());
    key.extend_from_slice(&s);
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PrefilterKey;

    #[test]
    fn trie_keys_exact_and_prefix() {
        let k = trie_key(&PrefilterKey {
            kind: KeyKind::Comm,
            text: "claude".into(),
            exact: true,
        });
        assert_eq!(k.len(), 4 + 4 + procmon_consts_PM_KEY_LEN as usize);
        assert_eq!(u32::from_ne_bytes(k[..4].try_into().unwrap()), (4 + 7) * 8);
        assert_eq!(&k[8..15], b"claude\0");
        let p = trie_key(&PrefilterKey {
            kind: KeyKind::Argv0,
            text: "node".into(),
            exact: false,
        });
        assert_eq!(u32::from_ne_bytes(p[..4].try_into().unwrap()), (4 + 4) * 8);
        // A literal longer than the kernel compares becomes a prefix.
        let long = "x".repeat(40);
        let l = trie_key(&PrefilterKey {
            kind: KeyKind::Exe,
            text: long,
            exact: true,
        });
        assert_eq!(
            u32::from_ne_bytes(l[..4].try_into().unwrap()),
            (4 + KEY_TEXT_MAX as u32) * 8
        );
    }
}
