//! The one typed layer over cgroup v2 files for agentcgd: the daemon's
//! tree, memcg's protection, the scheduler's statistics and per-agent
//! accounting read and write cgroup files through it.
//!
//! [`Cgroup`] is a handle on one cgroup directory; each file has a typed
//! read (and write where the file is writable), and every failure is an
//! [`Error`] naming the file. The parsers in [`parse`] are pure functions
//! over the file texts, unit-tested on what the kernel writes.
//!
//! A missing file is [`Error::Missing`]: that is how a cgroup without a
//! controller looks (no `memory.current` without `memory` in the parent's
//! `cgroup.subtree_control`), and callers fall back on it.

pub mod parse;

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub use parse::{
    cgroup2_mount, cgroup2_option, CgroupEvents, Controller, CpuStat, IoStat, Limit, MemoryEvents,
    MemoryStat, Pressure, PressureLine,
};

/// A failed cgroup file access.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file does not exist: the cgroup is gone, or the controller that
    /// provides the file is not enabled for it.
    #[error("{path}: no such file (cgroup gone or controller not enabled)")]
    Missing { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file's text is not what the kernel writes there.
    #[error("{path}: cannot parse {text:?}")]
    Parse { path: PathBuf, text: String },
    /// A value the kernel would refuse, caught before writing.
    #[error("{path}: invalid value {value:?}: {why}")]
    Invalid {
        path: PathBuf,
        value: String,
        why: &'static str,
    },
}

impl Error {
    fn io(path: PathBuf, e: io::Error) -> Error {
        if e.kind() == io::ErrorKind::NotFound {
            Error::Missing { path }
        } else {
            Error::Io { path, source: e }
        }
    }

    pub fn is_missing(&self) -> bool {
        matches!(self, Error::Missing { .. })
    }

    /// The io::ErrorKind of the failure (InvalidData for parse errors).
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Error::Missing { .. } => io::ErrorKind::NotFound,
            Error::Io { source, .. } => source.kind(),
            Error::Parse { .. } => io::ErrorKind::InvalidData,
            Error::Invalid { .. } => io::ErrorKind::InvalidInput,
        }
    }

    /// The raw OS error (EBUSY, EINVAL...) of a failed write, if any.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The memory limit files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryLimit {
    Min,
    Low,
    High,
    Max,
}

impl MemoryLimit {
    pub fn file(self) -> &'static str {
        match self {
            MemoryLimit::Min => "memory.min",
            MemoryLimit::Low => "memory.low",
            MemoryLimit::High => "memory.high",
            MemoryLimit::Max => "memory.max",
        }
    }
}

/// The PSI files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Cpu,
    Memory,
    Io,
}

impl Resource {
    pub fn pressure_file(self) -> &'static str {
        match self {
            Resource::Cpu => "cpu.pressure",
            Resource::Memory => "memory.pressure",
            Resource::Io => "io.pressure",
        }
    }
}

/// The cgroup2 mount of this machine, from /proc/mounts.
pub fn find_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/mounts").ok()?;
    cgroup2_mount(&text).map(PathBuf::from)
}

/// Whether this machine's cgroup2 hierarchy has mount option `option`
/// (`favordynmods`: a write to cgroup.procs need not wait for an RCU grace
/// period; `memory_recursiveprot`: memory.min/low reach the whole subtree);
/// None without a cgroup2 mount.
pub fn mount_option(option: &str) -> Option<bool> {
    let text = std::fs::read_to_string("/proc/mounts").ok()?;
    cgroup2_option(&text, option)
}

/// The cpu.weight a cgroup is created with.
pub const DEFAULT_CPU_WEIGHT: u32 = 100;

/// The bytes of a kernel pseudo-file (cgroup or /proc). Their size is not
/// known in advance (st_size is 0 or 4096), so unlike `fs::read` no fstat
/// and lseek are made for a size hint: open, read until EOF, close.
pub fn read_bytes(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut v = Vec::with_capacity(512);
    std::fs::File::open(path)?
        .take(u64::MAX)
        .read_to_end(&mut v)?;
    Ok(v)
}

/// [`read_bytes`] as text.
pub fn read_text(path: &Path) -> io::Result<String> {
    String::from_utf8(read_bytes(path)?).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// A handle on one cgroup directory. Cheap; holds no file descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    pub fn new(path: impl Into<PathBuf>) -> Cgroup {
        Cgroup { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn child(&self, name: &str) -> Cgroup {
        Cgroup::new(self.path.join(name))
    }

    pub fn exists(&self) -> bool {
        self.path.join("cgroup.procs").exists()
    }

    /// Does the cgroup have this interface file (i.e. its controller)?
    pub fn has(&self, file: &str) -> bool {
        self.path.join(file).exists()
    }

    /// Create the cgroup (its parents too); Ok if it exists already.
    pub fn create(&self) -> Result<()> {
        std::fs::create_dir_all(&self.path).map_err(|e| Error::io(self.path.clone(), e))
    }

    /// Remove the (empty, childless) cgroup. EBUSY while it has processes
    /// or children. Ok if it is gone already.
    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_dir(&self.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r.map_err(|e| Error::io(self.path.clone(), e)),
        }
    }

    /// The cgroup id: the directory's inode number on cgroup2 (what
    /// bpf_get_current_cgroup_id() and the scheduler's maps use).
    pub fn id(&self) -> Result<u64> {
        std::fs::metadata(&self.path)
            .map(|m| m.ino())
            .map_err(|e| Error::io(self.path.clone(), e))
    }

    /// The text of `file`.
    pub fn read_raw(&self, file: &str) -> Result<String> {
        let p = self.path.join(file);
        read_text(&p).map_err(|e| Error::io(p, e))
    }

    /// Write `value` to `file` (one write(2), as the kernel wants).
    /// Write `value` to `file`. The file is opened for writing only, never
    /// created: a file a controller does not provide is "no such file"
    /// ([`Error::Missing`]), where `fs::write`'s O_CREAT would make it
    /// "permission denied".
    pub fn write_raw(&self, file: &str, value: &str) -> Result<()> {
        use std::io::Write;
        let p = self.path.join(file);
        std::fs::OpenOptions::new()
            .write(true)
            // (kernfs ignores it; a plain file standing in for one, in
            // tests, must not keep the tail of a longer old value)
            .truncate(true)
            .open(&p)
            .and_then(|mut f| f.write_all(value.as_bytes()))
            .map_err(|e| Error::io(p, e))
    }

    fn parsed<T>(&self, file: &str, f: impl FnOnce(&str) -> Option<T>) -> Result<T> {
        let text = self.read_raw(file)?;
        f(&text).ok_or_else(|| Error::Parse {
            path: self.path.join(file),
            text: text.trim().chars().take(200).collect(),
        })
    }

    /// A file holding one unsigned number.
    pub fn read_u64(&self, file: &str) -> Result<u64> {
        self.parsed(file, |t| t.trim().parse().ok())
    }

    // cpu

    pub fn cpu_stat(&self) -> Result<CpuStat> {
        self.parsed("cpu.stat", CpuStat::parse)
    }

    pub fn cpu_weight(&self) -> Result<u32> {
        self.parsed("cpu.weight", |t| t.trim().parse().ok())
    }

    /// 1..=10000, as the kernel accepts.
    pub fn set_cpu_weight(&self, w: u32) -> Result<()> {
        if !(1..=10000).contains(&w) {
            return Err(Error::Invalid {
                path: self.path.join("cpu.weight"),
                value: w.to_string(),
                why: "cpu.weight is 1..=10000",
            });
        }
        self.write_raw("cpu.weight", &w.to_string())
    }

    // memory

    pub fn memory_current(&self) -> Result<u64> {
        self.read_u64("memory.current")
    }

    /// memory.peak (kernel 5.19+).
    pub fn memory_peak(&self) -> Result<u64> {
        self.read_u64("memory.peak")
    }

    pub fn memory_limit(&self, which: MemoryLimit) -> Result<Limit> {
        self.parsed(which.file(), Limit::parse)
    }

    pub fn set_memory_limit(&self, which: MemoryLimit, l: Limit) -> Result<()> {
        self.write_raw(which.file(), &l.render())
    }

    pub fn memory_events(&self) -> Result<MemoryEvents> {
        self.read_raw("memory.events")
            .map(|t| MemoryEvents::parse(&t))
    }

    pub fn memory_stat(&self) -> Result<MemoryStat> {
        self.parsed("memory.stat", MemoryStat::parse)
    }

    pub fn pressure(&self, r: Resource) -> Result<Pressure> {
        self.read_raw(r.pressure_file())
            .map(|t| Pressure::parse(&t))
    }

    // pids, io

    pub fn pids_current(&self) -> Result<u64> {
        self.read_u64("pids.current")
    }

    pub fn io_stat(&self) -> Result<Vec<IoStat>> {
        self.read_raw("io.stat").map(|t| IoStat::parse(&t))
    }

    // cgroup core

    pub fn events(&self) -> Result<CgroupEvents> {
        self.parsed("cgroup.events", CgroupEvents::parse)
    }

    pub fn controllers(&self) -> Result<Vec<Controller>> {
        self.read_raw("cgroup.controllers")
            .map(|t| parse::parse_controllers(&t))
    }

    pub fn subtree_control(&self) -> Result<Vec<Controller>> {
        self.read_raw("cgroup.subtree_control")
            .map(|t| parse::parse_controllers(&t))
    }

    /// Enable (`true`) or disable controllers for the children, in one write.
    pub fn set_subtree_control(&self, changes: &[(Controller, bool)]) -> Result<()> {
        let text: Vec<String> = changes
            .iter()
            .map(|(c, on)| format!("{}{}", if *on { '+' } else { '-' }, c.name()))
            .collect();
        self.write_raw("cgroup.subtree_control", &text.join(" "))
    }

    /// The processes (thread-group ids) in this cgroup itself.
    pub fn procs(&self) -> Result<Vec<u32>> {
        self.read_raw("cgroup.procs").map(|t| parse::parse_pids(&t))
    }

    /// Move process `pid` (all its threads) into this cgroup.
    pub fn add_proc(&self, pid: u32) -> Result<()> {
        self.write_raw("cgroup.procs", &pid.to_string())
    }

    /// cgroup.procs opened for writing, to keep: each move is then one
    /// write(2), no path walk (the placement path).
    pub fn open_procs(&self) -> Result<std::fs::File> {
        let p = self.path.join("cgroup.procs");
        std::fs::OpenOptions::new()
            .write(true)
            // (kernfs ignores it; a plain file standing in for one, in
            // tests, must not keep the tail of a longer old value)
            .truncate(true)
            .open(&p)
            .map_err(|e| Error::io(p, e))
    }

    /// Child cgroups (directories), by name, sorted.
    pub fn children(&self) -> Result<Vec<String>> {
        let rd = std::fs::read_dir(&self.path).map_err(|e| Error::io(self.path.clone(), e))?;
        let mut v: Vec<String> = rd
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        v.sort();
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cgroup-like directory of fixture files.
    fn fixture(files: &[(&str, &str)]) -> (tempfile::TempDir, Cgroup) {
        let t = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(t.path().join("agent-1"));
        cg.create().unwrap();
        for (f, text) in files {
            std::fs::write(cg.path().join(f), text).unwrap();
        }
        (t, cg)
    }

    #[test]
    fn typed_reads_and_writes() {
        let (_t, cg) = fixture(&[
            ("cgroup.procs", "10\n11\n"),
            ("cpu.stat", "usage_usec 5\nuser_usec 3\nsystem_usec 2\n"),
            ("cpu.weight", "100\n"),
            ("memory.current", "4096\n"),
            ("memory.high", "max\n"),
            ("memory.events", "low 0\nhigh 0\nmax 0\noom 1\noom_kill 1\n"),
            ("pids.current", "2\n"),
            ("cgroup.events", "populated 1\nfrozen 0\n"),
            ("cgroup.controllers", "cpu memory pids\n"),
        ]);
        assert!(cg.exists());
        assert_eq!(cg.procs().unwrap(), [10, 11]);
        assert_eq!(cg.cpu_stat().unwrap().usage_usec, 5);
        assert_eq!(cg.cpu_weight().unwrap(), 100);
        cg.set_cpu_weight(150).unwrap();
        assert_eq!(cg.cpu_weight().unwrap(), 150);
        let e = cg.set_cpu_weight(0).unwrap_err();
        assert!(e.to_string().contains("1..=10000"), "{e}");
        assert_eq!(cg.memory_current().unwrap(), 4096);
        assert_eq!(cg.memory_limit(MemoryLimit::High).unwrap(), Limit::Max);
        cg.set_memory_limit(MemoryLimit::High, Limit::Bytes(1 << 20))
            .unwrap();
        assert_eq!(
            cg.memory_limit(MemoryLimit::High).unwrap(),
            Limit::Bytes(1 << 20)
        );
        assert_eq!(cg.memory_events().unwrap().oom_kill, 1);
        assert_eq!(cg.pids_current().unwrap(), 2);
        assert!(cg.events().unwrap().populated);
        assert_eq!(
            cg.controllers().unwrap(),
            [Controller::Cpu, Controller::Memory, Controller::Pids]
        );
        assert!(cg.id().unwrap() > 0);
    }

    #[test]
    fn missing_and_malformed_files_are_typed() {
        let (_t, cg) = fixture(&[("memory.current", "lots\n")]);
        let e = cg.memory_peak().unwrap_err();
        assert!(e.is_missing(), "{e:?}");
        assert!(e.to_string().contains("memory.peak"), "{e}");
        let e = cg.memory_current().unwrap_err();
        assert!(
            matches!(e, Error::Parse { ref text, .. } if text == "lots"),
            "{e:?}"
        );
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(cg.cpu_stat().unwrap_err().is_missing());
        assert!(!cg.has("io.stat"));
    }

    #[test]
    fn create_children_remove() {
        let t = tempfile::tempdir().unwrap();
        let root = Cgroup::new(t.path());
        let a = root.child("a");
        a.create().unwrap();
        a.create().unwrap();
        root.child("b").create().unwrap();
        assert_eq!(root.children().unwrap(), ["a", "b"]);
        a.remove().unwrap();
        a.remove().unwrap();
        assert_eq!(root.children().unwrap(), ["b"]);
    }

    /// The real cgroup2 mount: the root cgroup has cgroup.controllers and
    /// our own cgroup has cpu.stat (the core provides it without the cpu
    /// controller).
    #[test]
    fn real_mount() {
        let Some(mnt) = find_mount() else {
            eprintln!("SKIP: no cgroup2 mount in /proc/mounts");
            return;
        };
        let root = Cgroup::new(&mnt);
        root.controllers().unwrap();
        assert!(root.id().unwrap() > 0);
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let rel = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("a cgroup2 line in /proc/self/cgroup");
        let me = Cgroup::new(mnt.join(rel.trim_start_matches('/')));
        assert!(me.procs().unwrap().contains(&std::process::id()));
        if rel != "/" {
            me.cpu_stat().unwrap();
        }
    }
}
