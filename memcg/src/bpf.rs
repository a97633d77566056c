//! The BPF backend: struct_ops on `memcg_bpf_ops` (bpf/memcg_priority.bpf.c).
//!
//! The interface comes from an out-of-tree RFC series; no released kernel
//! has it. [`detect`] looks for the type and its members in the kernel BTF
//! before anything is loaded; where absent the reason names what is missing
//! and the fallback runs. Where present, [`Backend::load`] sets the
//! program's constants, loads it, attaches the pressure tracepoint and
//! attaches `high_ops` to session_high and `low_ops` to session_low (a
//! struct_ops link per cgroup: BPF_LINK_CREATE with the cgroup fd as target,
//! as in the RFC).

use crate::{BpfCounters, Config, Sessions};
use anyhow::{anyhow, bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

#[allow(
    clippy::all,
    dead_code,
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    unsafe_op_in_unsafe_fn
)]
mod intf {
    include!(concat!(env!("OUT_DIR"), "/memcg_priority_intf.rs"));
}
#[allow(
    clippy::all,
    dead_code,
    unused_imports,
    non_camel_case_types,
    non_snake_case
)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/memcg_priority_skel.rs"));
}

/// The struct_ops type and the members our program fills.
pub const OPS_TYPE: &str = "memcg_bpf_ops";
pub const OPS_MEMBERS: [&str; 5] = [
    "handle_cgroup_online",
    "handle_cgroup_offline",
    "below_low",
    "below_min",
    "get_high_delay_ms",
];

/// Kernel BTF of the running kernel.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Ok if the running kernel's BTF has `struct memcg_bpf_ops` with every
/// member we use; Err says what is missing.
pub fn detect() -> Result<(), String> {
    detect_in(Path::new(VMLINUX_BTF))
}

/// [`detect`] against a given BTF file.
pub fn detect_in(btf_path: &Path) -> Result<(), String> {
    if !btf_path.exists() {
        return Err(format!(
            "no kernel BTF ({} missing): cannot check for {OPS_TYPE}",
            btf_path.display()
        ));
    }
    let btf = libbpf_rs::btf::Btf::from_path(btf_path)
        .map_err(|e| format!("cannot parse kernel BTF {}: {e}", btf_path.display()))?;
    let members: Option<Vec<String>> = btf
        .type_by_name::<libbpf_rs::btf::types::Struct>(OPS_TYPE)
        .map(|s| {
            s.iter()
                .filter_map(|m| m.name.map(|n| n.to_string_lossy().into_owned()))
                .collect()
        });
    check_members(members.as_deref())
}

/// The verdict on what the BTF has (`None`: no such struct).
pub fn check_members(found: Option<&[String]>) -> Result<(), String> {
    let Some(found) = found else {
        return Err(format!(
            "kernel BTF has no struct {OPS_TYPE} (the out-of-tree memcg BPF struct_ops series is not in this kernel)"
        ));
    };
    let missing: Vec<&str> = OPS_MEMBERS
        .iter()
        .copied()
        .filter(|m| !found.iter().any(|f| f == m))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "kernel struct {OPS_TYPE} lacks member(s) {} (different version of the series)",
            missing.join(", ")
        ))
    }
}

/// The load path up to the BTF check, with nothing attached: opens the BPF
/// object (proving it was built and parses), then checks the kernel BTF.
/// Returns the program names in the object and the detection verdict.
pub fn probe_load_path() -> Result<(Vec<String>, Result<(), String>)> {
    let mut open_object = MaybeUninit::uninit();
    let open = skel::MemcgPrioritySkelBuilder::default()
        .open(&mut open_object)
        .context("open BPF object")?;
    let progs: Vec<String> = open
        .open_object()
        .progs()
        .map(|p| p.name().to_string_lossy().into_owned())
        .collect();
    Ok((progs, detect()))
}

/// A loaded and attached BPF backend (lives on the controller thread).
pub struct Backend {
    skel: skel::MemcgPrioritySkel<'static>,
    _links: Vec<libbpf_rs::Link>,
    _ops_links: Vec<OwnedFd>,
    _cg_fds: Vec<std::fs::File>,
}

fn cgroup_id(dir: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(dir)
        .with_context(|| format!("stat {}", dir.display()))?
        .ino())
}

impl Backend {
    /// Loads and attaches; the caller has checked [`detect`].
    pub fn load(s: &Sessions, cfg: &Config) -> Result<Backend> {
        // The skeleton borrows its OpenObject for its whole life: leak one
        // per load (once per daemon run).
        let open_object: &'static mut MaybeUninit<libbpf_rs::OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = skel::MemcgPrioritySkelBuilder::default()
            .open(open_object)
            .context("open BPF object")?;
        let ro = open
            .maps
            .rodata_data
            .as_deref_mut()
            .ok_or_else(|| anyhow!("no .rodata"))?;
        ro.high_cgid = cgroup_id(&s.high)?;
        ro.window_ns = cfg.window_ms * 1_000_000;
        ro.delay_ms = cfg.bpf_delay_ms;
        ro.protect_min = true;
        if let Err(e) = detect() {
            bail!("{e}");
        }
        let skel = open.load().context("load BPF programs (memcg_bpf_ops)")?;
        let mut links = Vec::new();
        for p in [&skel.progs.on_memcg_reclaim, &skel.progs.on_direct_reclaim] {
            match p.attach() {
                Ok(l) => links.push(l),
                Err(e) => log::warn!(
                    "memcg: pressure tracepoint {}: {e}",
                    p.name().to_string_lossy()
                ),
            }
        }
        let mut fds = Vec::new();
        let mut ops_links = Vec::new();
        for (map, dir) in [(&skel.maps.high_ops, &s.high), (&skel.maps.low_ops, &s.low)] {
            let cg = std::fs::File::open(dir).with_context(|| format!("open {}", dir.display()))?;
            let link = attach_struct_ops_to_cgroup(map.as_fd().as_raw_fd(), cg.as_raw_fd())
                .with_context(|| format!("attach struct_ops to {}", dir.display()))?;
            ops_links.push(link);
            fds.push(cg);
        }
        Ok(Backend {
            skel,
            _links: links,
            _ops_links: ops_links,
            _cg_fds: fds,
        })
    }

    pub fn counters(&self) -> BpfCounters {
        self.skel
            .maps
            .bss_data
            .as_deref()
            .map(|b| {
                // SAFETY: plain u64s in the mmapped .bss; volatile since BPF writes them.
                let r = |p: &u64| unsafe { std::ptr::read_volatile(p) };
                BpfCounters {
                    pressure_events: r(&b.stats.pressure_events),
                    protect_calls: r(&b.stats.protect_calls),
                    throttle_calls: r(&b.stats.throttle_calls),
                }
            })
            .unwrap_or_default()
    }
}

/// BPF_LINK_CREATE(struct_ops map, target = cgroup fd): the per-cgroup
/// attachment of the RFC (bpf_map__attach_struct_ops_opts with a cgroup
/// relative fd, not in released libbpf).
fn attach_struct_ops_to_cgroup(map_fd: i32, cg_fd: i32) -> Result<OwnedFd> {
    // SAFETY: zeroed opts with sz set, as libbpf requires.
    let mut opts: libbpf_sys::bpf_link_create_opts = unsafe { std::mem::zeroed() };
    opts.sz = std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _;
    // SAFETY: valid fds and opts.
    let fd =
        unsafe { libbpf_sys::bpf_link_create(map_fd, cg_fd, libbpf_sys::BPF_STRUCT_OPS, &opts) };
    if fd < 0 {
        bail!(
            "bpf_link_create: {}",
            std::io::Error::from_raw_os_error(-fd)
        );
    }
    // SAFETY: fd is a fresh link fd we own; closing it detaches.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_check() {
        assert!(check_members(None)
            .unwrap_err()
            .contains("no struct memcg_bpf_ops"));
        let all: Vec<String> = OPS_MEMBERS.iter().map(|s| s.to_string()).collect();
        check_members(Some(&all)).unwrap();
        let some: Vec<String> = all[..3].to_vec();
        let e = check_members(Some(&some)).unwrap_err();
        assert!(
            e.contains("below_min") && e.contains("get_high_delay_ms"),
            "{e}"
        );
        assert!(detect_in(Path::new("/nonexistent/btf"))
            .unwrap_err()
            .contains("no kernel BTF"));
    }

    /// The load path up to the BTF check on this (stock) kernel: the object
    /// opens and has our programs; detection says the type is missing.
    #[test]
    fn load_path_reaches_btf_check() {
        let (progs, verdict) = probe_load_path().unwrap();
        for p in [
            "high_below_low",
            "low_get_high_delay_ms",
            "on_memcg_reclaim",
        ] {
            assert!(progs.iter().any(|x| x == p), "{progs:?}");
        }
        if Path::new(VMLINUX_BTF).exists() {
            let e = verdict.unwrap_err();
            assert!(e.contains("memcg_bpf_ops"), "{e}");
        }
    }
}
