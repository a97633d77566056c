//! The BPF backend: struct_ops on `memcg_bpf_ops` (bpf/memcg_priority.bpf.c).
//!
//! The interface comes from an out-of-tree RFC series; no released kernel
//! has it. [`detect`] looks for the type and its members in the kernel BTF
//! before anything is loaded; where absent the reason names what is missing
//! and the fallback runs. Where present, [`Backend::load`] sets the
//! program's constants (from `memcg::Config`), loads it, attaches the
//! pressure tracepoints and attaches `high_ops` to session_high and
//! `low_ops` to session_low: one struct_ops link per cgroup, created as the
//! RFC defines it ([`attach_struct_ops_to_cgroup`]: map value first, then
//! BPF_LINK_CREATE with the cgroup fd in `link_create.cgroup.relative_fd`).
//! Dropping the [`Backend`] (or the process exiting, SIGKILL included)
//! closes the link fds, which detaches the ops.

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
    /// One struct_ops link per session cgroup; dropping them detaches.
    _ops_links: Vec<OwnedFd>,
}

fn page_size() -> u64 {
    // SAFETY: plain libc query.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
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
        ro.protect_high = cfg.protect_high;
        ro.burst_pages = cfg.bpf_burst_mb * (1 << 20) / page_size();
        ro.headroom_pct = cfg.bpf_headroom_pct;
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
        let layout = OpsValueLayout::from_kernel()?;
        let fd = |p: &libbpf_rs::ProgramMut| p.as_fd().as_raw_fd();
        let common = [
            ("handle_cgroup_online", fd(&skel.progs.prio_online)),
            ("handle_cgroup_offline", fd(&skel.progs.prio_offline)),
        ];
        let high_value = layout.value(
            &[
                &common[..],
                &[
                    ("below_low", fd(&skel.progs.high_below_low)),
                    ("below_min", fd(&skel.progs.high_below_min)),
                    ("get_high_delay_ms", fd(&skel.progs.high_get_high_delay_ms)),
                ],
            ]
            .concat(),
        )?;
        let low_value = layout.value(
            &[
                &common[..],
                &[("get_high_delay_ms", fd(&skel.progs.low_get_high_delay_ms))],
            ]
            .concat(),
        )?;
        let mut ops_links = Vec::new();
        for (map, value, dir) in [
            (&skel.maps.high_ops, &high_value, &s.high),
            (&skel.maps.low_ops, &low_value, &s.low),
        ] {
            let cg = std::fs::File::open(dir).with_context(|| format!("open {}", dir.display()))?;
            // No BPF_F_ALLOW_OVERRIDE: the policy holds for the whole
            // session subtree; nothing below a session may replace it.
            let link = attach_struct_ops_to_cgroup(map, value, cg.as_raw_fd(), 0)
                .with_context(|| format!("attach struct_ops to {}", dir.display()))?;
            ops_links.push(link);
        }
        Ok(Backend {
            skel,
            _links: links,
            _ops_links: ops_links,
        })
    }

    /// A reader of the program's counters that other threads can use
    /// while this backend lives (see [`CounterView`]).
    pub(crate) fn counter_view(&self) -> Option<CounterView> {
        self.skel
            .maps
            .bss_data
            .as_deref()
            .map(|b| CounterView(b as *const skel::types::bss))
    }
}

/// Reads the BPF program's counters straight from its mmapped .bss, so that
/// `Controller::status()` shows them current without the controller thread
/// polling. Valid only while its [`Backend`] lives: the controller thread
/// takes it out of the shared slot before dropping the backend.
pub(crate) struct CounterView(*const skel::types::bss);

// SAFETY: the pointer targets the skeleton's mmap of the .bss map, which
// stays mapped while the Backend lives (see above); reads are volatile.
unsafe impl Send for CounterView {}

impl CounterView {
    pub(crate) fn read(&self) -> BpfCounters {
        // SAFETY: see CounterView; plain u64s written by BPF, read volatile.
        let b = unsafe { &(*self.0).stats };
        let r = |p: &u64| unsafe { std::ptr::read_volatile(p) };
        BpfCounters {
            pressure_events: r(&b.pressure_events),
            reclaim_events: r(&b.reclaim_events),
            burst_events: r(&b.burst_events),
            high_charges: r(&b.high_charges),
            protect_calls: r(&b.protect_calls),
            throttle_calls: r(&b.throttle_calls),
            online: r(&b.online),
            offline: r(&b.offline),
        }
    }
}

/// `BPF_F_ALLOW_OVERRIDE` (uapi): with it, a child cgroup may attach its own
/// memcg_bpf_ops over the inherited one (RFC patch "Add
/// BPF_F_ALLOW_OVERRIDE support for memcg_bpf_ops").
pub const BPF_F_ALLOW_OVERRIDE: u32 = 1;

/// The kernel's value layout of a struct_ops map for `memcg_bpf_ops`
/// (`struct bpf_struct_ops_memcg_bpf_ops { common; data; }`), read from the
/// kernel BTF: value size, offset of `data`, and the byte offset in `data` of
/// each function-pointer member by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsValueLayout {
    pub size: usize,
    pub data_off: usize,
    pub members: Vec<(String, usize)>,
}

impl OpsValueLayout {
    /// From the running kernel's BTF.
    pub fn from_kernel() -> Result<OpsValueLayout> {
        let btf = libbpf_rs::btf::Btf::from_path(VMLINUX_BTF)
            .with_context(|| format!("parse {VMLINUX_BTF}"))?;
        use libbpf_rs::btf::types::{MemberAttr, Struct};
        use libbpf_rs::btf::HasSize;
        let bit_off = |a: MemberAttr| match a {
            MemberAttr::Normal { offset } | MemberAttr::BitField { offset, .. } => {
                offset as usize / 8
            }
        };
        let vname = format!("bpf_struct_ops_{OPS_TYPE}");
        let v = btf
            .type_by_name::<Struct>(&vname)
            .ok_or_else(|| anyhow!("kernel BTF has no struct {vname}"))?;
        let data_off = v
            .iter()
            .find(|m| m.name.is_some_and(|n| n == "data"))
            .map(|m| bit_off(m.attr))
            .ok_or_else(|| anyhow!("struct {vname} has no member data"))?;
        let ops = btf
            .type_by_name::<Struct>(OPS_TYPE)
            .ok_or_else(|| anyhow!("kernel BTF has no struct {OPS_TYPE}"))?;
        let members = ops
            .iter()
            .filter_map(|m| Some((m.name?.to_string_lossy().into_owned(), bit_off(m.attr))))
            .collect();
        Ok(OpsValueLayout {
            size: v.size(),
            data_off,
            members,
        })
    }

    /// The map value: zeroed common header (state INIT, refcnt 0, as the
    /// kernel requires) and the program fd in each function-pointer slot we
    /// fill, as libbpf's `bpf_map__attach_struct_ops` writes it.
    pub fn value(&self, progs: &[(&str, i32)]) -> Result<Vec<u8>> {
        let mut v = vec![0u8; self.size];
        for (name, fd) in progs {
            let off = self
                .members
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, o)| self.data_off + o)
                .ok_or_else(|| anyhow!("kernel struct {OPS_TYPE} has no member {name}"))?;
            if off + 8 > self.size {
                bail!(
                    "member {name} at {off} outside the {}-byte value",
                    self.size
                );
            }
            v[off..off + 8].copy_from_slice(&(*fd as u64).to_ne_bytes());
        }
        Ok(v)
    }
}

/// `union bpf_attr` for BPF_LINK_CREATE as far as a struct_ops link on a
/// cgroup uses it: `link_create.{map_fd, target_fd, attach_type, flags}` and
/// `link_create.cgroup.{relative_fd, relative_id, expected_revision}`.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    map_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    relative_id: u32,
    expected_revision: u64,
}

/// Attaches a loaded struct_ops map to one cgroup, as the RFC series
/// defines it: first BPF_MAP_UPDATE_ELEM sets the map's value (the program
/// fds, see [`OpsValueLayout::value`]; the map becomes READY), then
/// BPF_LINK_CREATE(attach_type BPF_STRUCT_OPS, map fd, flags) with the
/// cgroup fd in `link_create.cgroup.relative_fd` (not `target_fd`; released
/// libbpf's `bpf_link_create` does not pass that field for struct_ops, hence
/// the raw syscall). The kernel registers the ops on the cgroup and its
/// descendants; closing the returned link fd (or the process exiting)
/// unregisters them.
pub fn attach_struct_ops_to_cgroup(
    map: &dyn libbpf_rs::MapCore,
    value: &[u8],
    cg_fd: i32,
    flags: u32,
) -> Result<OwnedFd> {
    if value.len() != map.value_size() as usize {
        bail!(
            "struct_ops value is {} bytes, the map wants {}",
            value.len(),
            map.value_size()
        );
    }
    map.update(&0u32.to_ne_bytes(), value, libbpf_rs::MapFlags::ANY)
        .context("BPF_MAP_UPDATE_ELEM (set the struct_ops value)")?;
    let attr = LinkCreateAttr {
        map_fd: map.as_fd().as_raw_fd() as u32,
        target_fd: 0,
        attach_type: libbpf_sys::BPF_STRUCT_OPS,
        flags,
        relative_fd: cg_fd as u32,
        ..Default::default()
    };
    // SAFETY: attr is a valid, fully initialised prefix of union bpf_attr;
    // the kernel reads size_of::<LinkCreateAttr>() bytes and treats the
    // rest as zero.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            libbpf_sys::BPF_LINK_CREATE as libc::c_long,
            &attr as *const LinkCreateAttr,
            std::mem::size_of::<LinkCreateAttr>() as libc::c_long,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        let hint = match e.raw_os_error() {
            Some(libc::EBUSY) => {
                " (the cgroup, an ancestor or a descendant already has memcg_bpf_ops attached)"
            }
            Some(libc::ENOENT) => " (no such memory cgroup)",
            Some(libc::EOPNOTSUPP) => " (flags not supported)",
            _ => "",
        };
        bail!("BPF_LINK_CREATE (struct_ops on cgroup): {e}{hint}");
    }
    // SAFETY: fd is a fresh link fd (O_CLOEXEC) we own; closing it detaches.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
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

    /// The struct_ops map value: prog fds at data_off + member offset,
    /// everything else (the common header: refcnt, state) zero; unknown
    /// members are errors.
    #[test]
    fn ops_value_layout() {
        let l = OpsValueLayout {
            size: 48,
            data_off: 8,
            members: OPS_MEMBERS
                .iter()
                .enumerate()
                .map(|(i, m)| (m.to_string(), i * 8))
                .collect(),
        };
        let v = l
            .value(&[("below_low", 7), ("get_high_delay_ms", 9)])
            .unwrap();
        assert_eq!(v.len(), 48);
        let slot = |o: usize| u64::from_ne_bytes(v[o..o + 8].try_into().unwrap());
        assert_eq!(slot(0), 0, "common header stays zero");
        assert_eq!(slot(8), 0, "handle_cgroup_online not set");
        assert_eq!(slot(8 + 16), 7);
        assert_eq!(slot(8 + 32), 9);
        assert!(l
            .value(&[("oom_kill", 3)])
            .unwrap_err()
            .to_string()
            .contains("no member oom_kill"));
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
