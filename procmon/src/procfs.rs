//! /proc parsing: the one place that knows the layout of /proc/PID files.
//!
//! Used for the start-up scan, the reconciling scan after lost events, for
//! enriching proc-connector events (which carry only pids), and for the
//! PID-reuse guard (start time in /proc/PID/stat).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// What we know about one process, from any source.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub comm: String,
    /// Absolute path of the executable where known, else the exec filename.
    pub exe: String,
    pub argv: Vec<String>,
    /// Start time in clock ticks since boot (/proc/PID/stat field 22); with
    /// the pid it identifies one process across PID reuse.
    pub start_ticks: u64,
    /// Kernel threads have no user space and are never placed.
    pub kernel_thread: bool,
}

/// The fields of /proc/PID/stat we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    pub comm: String,
    pub state: char,
    pub ppid: u32,
    pub flags: u64,
    /// User and system CPU time in clock ticks (fields 14, 15).
    pub utime: u64,
    pub stime: u64,
    /// Threads in the process (field 20).
    pub threads: u32,
    pub start_ticks: u64,
    /// Resident pages (field 24; the same count as statm's resident).
    pub rss_pages: u64,
}

const PF_KTHREAD: u64 = 0x0020_0000;

const PF_EXITING: u64 = 0x4;

impl Stat {
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }

    /// The process is exiting or dead (a zombie, or its last thread past
    /// PF_EXITING): nothing of it can be read any more (cmdline and
    /// environ are empty), and it is not placed. PF_EXITING is set before
    /// the exit tracepoint fires, so without it the exit is still to come
    /// and sees a lineage seed made before this read. (A process whose main
    /// thread alone exited is still alive: it has other threads.)
    pub fn exiting(&self) -> bool {
        (self.flags & PF_EXITING != 0 || matches!(self.state, 'Z' | 'X' | 'x')) && self.threads <= 1
    }
}

/// Parse /proc/PID/stat. comm is between the first '(' and the *last* ')',
/// because comm itself may hold spaces, parens and even newlines.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    if close < open {
        return None;
    }
    let pid = text[..open].trim().parse().ok()?;
    let comm = text[open + 1..close].to_string();
    // One pass over the fields after comm: field 3 (state) is the first;
    // the ones we use come in ascending order.
    let mut rest = text[close + 1..].split_ascii_whitespace();
    let mut at = 2;
    let mut field = |n: usize| {
        let f = rest.nth(n - at - 1);
        at = n;
        f
    };
    let state = field(3)?.chars().next()?;
    let ppid = field(4)?.parse().ok()?;
    let flags = field(9)?.parse().ok()?;
    let utime = field(14)?.parse().ok()?;
    let stime = field(15)?.parse().ok()?;
    let threads = field(20)?.parse().ok()?;
    let start_ticks = field(22)?.parse().ok()?;
    // Field 24 (rss, pages) is missing from truncated fixtures: 0 then.
    let rss_pages = field(24).and_then(|f| f.parse().ok()).unwrap_or(0);
    Some(Stat {
        pid,
        comm,
        state,
        ppid,
        flags,
        utime,
        stime,
        threads,
        start_ticks,
        rss_pages,
    })
}

/// /proc/PID/statm, in pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Statm {
    pub size: u64,
    pub resident: u64,
    /// Resident file-backed and shared memory (RssFile + RssShmem).
    pub shared: u64,
}

impl Statm {
    /// Resident anonymous pages: resident - shared.
    pub fn anon(&self) -> u64 {
        self.resident.saturating_sub(self.shared)
    }
}

pub fn parse_statm(text: &str) -> Option<Statm> {
    let mut it = text.split_ascii_whitespace().map(|f| f.parse::<u64>());
    Some(Statm {
        size: it.next()?.ok()?,
        resident: it.next()?.ok()?,
        shared: it.next()?.ok()?,
    })
}

/// The page size in bytes.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// Split a NUL-separated argument block (/proc/PID/cmdline, or the BPF argv
/// copy) into arguments; a truncated last argument is kept.
pub fn split_argv(raw: &[u8]) -> Vec<String> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    raw.split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Real uid from the "Uid:" line of /proc/PID/status.
pub fn parse_status_uid(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_ascii_whitespace().next())
        .and_then(|u| u.parse().ok())
}

/// Clock ticks per second (USER_HZ), for converting BPF nanoseconds. Asked
/// once: every exec event is converted with it.
pub fn clock_ticks_per_sec() -> u64 {
    static HZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if hz > 0 {
            hz as u64
        } else {
            100
        }
    })
}

/// Convert task->start_boottime (ns) to /proc's clock ticks, the way the
/// kernel does for /proc/PID/stat (nsec_to_clock_t: truncating division).
pub fn ns_to_ticks(ns: u64) -> u64 {
    ns / (1_000_000_000 / clock_ticks_per_sec())
}

fn clean_exe(p: &Path) -> String {
    let s = p.to_string_lossy();
    s.strip_suffix(" (deleted)").unwrap_or(&s).to_string()
}

/// A /proc tree to read from: the real one, or a fixture in tests.
#[derive(Debug, Clone)]
pub struct ProcFs {
    root: PathBuf,
}

impl Default for ProcFs {
    fn default() -> Self {
        Self::new("/proc")
    }
}

impl ProcFs {
    pub fn new(root: impl AsRef<Path>) -> Self {
        Self {
            root: root.as_ref().to_path_buf(),
        }
    }

    fn path(&self, pid: u32, file: &str) -> PathBuf {
        self.root.join(pid.to_string()).join(file)
    }

    pub fn stat(&self, pid: u32) -> io::Result<Stat> {
        use std::io::Read;
        // open, read into the stack, close: no size probe, no heap buffer
        // (the accounting sampler reads this for every process it samples,
        // the placer once per move). stat is one line that the kernel
        // hands out whole: a read that ends in its newline is the end.
        let mut f = fs::File::open(self.path(pid, "stat"))?;
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
            if buf[n - 1] == b'\n' {
                break;
            }
        }
        std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(parse_stat)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed stat"))
    }

    /// /proc/PID/statm (memory in pages; RSS without walking the VMAs).
    pub fn statm(&self, pid: u32) -> io::Result<Statm> {
        let text = fs::read_to_string(self.path(pid, "statm"))?;
        parse_statm(&text)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed statm"))
    }

    /// Open file descriptors of `pid` (entries of /proc/PID/fd; needs the
    /// same user or CAP_SYS_PTRACE).
    pub fn fd_count(&self, pid: u32) -> io::Result<u64> {
        Ok(fs::read_dir(self.path(pid, "fd"))?.count() as u64)
    }

    /// Start time of `pid`, or None when it is gone.
    pub fn start_ticks(&self, pid: u32) -> Option<u64> {
        self.stat(pid).ok().map(|s| s.start_ticks)
    }

    /// Read everything about one process. Err(NotFound) when it vanished,
    /// which callers treat as normal.
    pub fn read(&self, pid: u32) -> io::Result<ProcInfo> {
        self.read_stat(pid, self.stat(pid)?)
    }

    /// As [`ProcFs::read`], `None` for a process that is exiting.
    fn read_live(&self, pid: u32) -> io::Result<Option<ProcInfo>> {
        let stat = self.stat(pid)?;
        if stat.exiting() {
            return Ok(None);
        }
        self.read_stat(pid, stat).map(Some)
    }

    fn read_stat(&self, pid: u32, stat: Stat) -> io::Result<ProcInfo> {
        let uid = cgroupfs::read_text(&self.path(pid, "status"))
            .ok()
            .and_then(|s| parse_status_uid(&s))
            .unwrap_or(u32::MAX);
        let argv = cgroupfs::read_bytes(&self.path(pid, "cmdline"))
            .map(|raw| split_argv(&raw))
            .unwrap_or_default();
        let exe = fs::read_link(self.path(pid, "exe"))
            .map(|p| clean_exe(&p))
            .unwrap_or_default();
        // The process may have been replaced between the reads: recheck.
        let again = self.stat(pid)?;
        if again.start_ticks != stat.start_ticks {
            return Err(io::Error::new(io::ErrorKind::NotFound, "pid reused"));
        }
        Ok(ProcInfo {
            pid,
            ppid: stat.ppid,
            uid,
            comm: again.comm,
            exe,
            argv,
            start_ticks: stat.start_ticks,
            kernel_thread: stat.is_kernel_thread(),
        })
    }

    /// The whole argv of `pid` (the caller guards against PID reuse).
    pub fn cmdline(&self, pid: u32) -> io::Result<Vec<String>> {
        cgroupfs::read_bytes(&self.path(pid, "cmdline")).map(|raw| split_argv(&raw))
    }

    /// The resolved executable of `pid` (the caller guards against PID reuse).
    pub fn exe(&self, pid: u32) -> io::Result<String> {
        fs::read_link(self.path(pid, "exe")).map(|p| clean_exe(&p))
    }

    /// The children of `pid` (all its threads' children when it has more
    /// than one thread), from /proc/PID/task/TID/children.
    pub fn children(&self, pid: u32, threads: u32) -> Vec<u32> {
        let read = |tid: u32, out: &mut Vec<u32>| {
            let f = self.path(pid, &format!("task/{tid}/children"));
            if let Ok(text) = cgroupfs::read_text(&f) {
                out.extend(
                    text.split_ascii_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        };
        let mut out = Vec::new();
        if threads <= 1 {
            read(pid, &mut out);
        } else if let Ok(rd) = fs::read_dir(self.path(pid, "task")) {
            for tid in rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()) {
                read(tid, &mut out);
            }
        }
        out
    }

    /// The executable of `pid`, only if it is still the process that started
    /// at `start_ticks` (guards against PID reuse).
    pub fn exe_if_same(&self, pid: u32, start_ticks: u64) -> Option<String> {
        let exe = fs::read_link(self.path(pid, "exe")).ok()?;
        (self.start_ticks(pid)? == start_ticks).then(|| clean_exe(&exe))
    }

    /// Every pid (thread-group leader) currently in /proc.
    pub fn pids(&self) -> io::Result<Vec<u32>> {
        let mut pids: Vec<u32> = fs::read_dir(&self.root)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect();
        pids.sort_unstable();
        Ok(pids)
    }

    /// Read every live process, parents before children (by start time,
    /// then pid), so that a classifier can inherit families down the tree.
    /// Exiting ones are left out: what could be read of them is empty, and
    /// a tracker learns of their end from their exit event.
    pub fn scan(&self) -> io::Result<Vec<ProcInfo>> {
        let mut all: Vec<ProcInfo> = self
            .pids()?
            .into_iter()
            .filter_map(|pid| self.read_live(pid).ok().flatten())
            .collect();
        all.sort_by_key(|p| (p.start_ticks, p.pid));
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat_line(comm: &str) -> String {
        format!(
            "4242 ({comm}) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100 \
             18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0"
        )
    }

    #[test]
    fn stat_plain() {
        let s = parse_stat(&stat_line("bash")).unwrap();
        assert_eq!(s.pid, 4242);
        assert_eq!(s.comm, "bash");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 17);
        assert_eq!(s.threads, 1);
        assert_eq!(s.start_ticks, 987654);
        assert_eq!((s.utime, s.stime), (1, 2));
        assert_eq!(s.rss_pages, 100);
        assert!(!s.is_kernel_thread());
    }

    #[test]
    fn statm() {
        let m = parse_statm("2570 384 320 4 0 228 0\n").unwrap();
        assert_eq!(
            (m.size, m.resident, m.shared, m.anon()),
            (2570, 384, 320, 64)
        );
        assert!(parse_statm("1 2").is_none());
        assert!(parse_statm("a b c").is_none());
        let me = ProcFs::default();
        let pid = std::process::id();
        assert!(me.statm(pid).unwrap().resident > 0);
        assert!(me.fd_count(pid).unwrap() >= 3);
        assert!(page_size() >= 4096);
    }

    #[test]
    fn stat_comm_with_spaces_parens_and_newline() {
        for comm in ["a b", "x) S 1 2 (y", "evil)", "((", "new\nline", ") 9 9 9"] {
            let s = parse_stat(&stat_line(comm)).unwrap();
            assert_eq!(s.comm, comm);
            assert_eq!(s.ppid, 17, "comm {comm:?}");
            assert_eq!(s.start_ticks, 987654, "comm {comm:?}");
        }
    }

    #[test]
    fn stat_kernel_thread_flag() {
        let line = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 3 0 0 \
                    18446744073709551615 0 0 0 0 0 0 0 2147483647 0 0 0 0 0 0 0 0 0";
        let s = parse_stat(line).unwrap();
        assert!(s.is_kernel_thread());
        assert_eq!(s.start_ticks, 3);
    }

    #[test]
    fn stat_malformed() {
        assert!(parse_stat("").is_none());
        assert!(parse_stat("12 (x").is_none());
        assert!(parse_stat("12 (x) S 1").is_none());
        assert!(parse_stat("abc (x) S 1 1 1 1 1 1").is_none());
    }

    #[test]
    fn argv_split() {
        assert_eq!(
            split_argv(b"node\0/x/cli.js\0--foo\0"),
            ["node", "/x/cli.js", "--foo"]
        );
        assert_eq!(split_argv(b"trunc\0ated"), ["trunc", "ated"]);
        assert!(split_argv(b"").is_empty());
        assert_eq!(split_argv(b"a\0\0b\0"), ["a", "", "b"]);
    }

    #[test]
    fn status_uid() {
        let text = "Name:\tbash\nUmask:\t0022\nState:\tS\nUid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(parse_status_uid(text), Some(1000));
        assert_eq!(parse_status_uid("Name: x\n"), None);
    }

    #[test]
    fn fixture_tree_scan_orders_parents_first() {
        let dir = tempfile::tempdir().unwrap();
        let write = |pid: u32, ppid: u32, start: u64, comm: &str, cmd: &[u8]| {
            let d = dir.path().join(pid.to_string());
            fs::create_dir_all(&d).unwrap();
            let stat = format!(
                "{pid} ({comm}) S {ppid} 1 1 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0 0"
            );
            fs::write(d.join("stat"), stat).unwrap();
            fs::write(d.join("status"), "Uid:\t1000\t1000\t1000\t1000\n").unwrap();
            fs::write(d.join("cmdline"), cmd).unwrap();
        };
        write(300, 200, 50, "pytest", b"python3\0-m\0pytest\0");
        write(200, 1, 10, "claude", b"node\0/usr/lib/claude\0");
        fs::create_dir_all(dir.path().join("self")).unwrap();
        let procfs = ProcFs::new(dir.path());
        let all = procfs.scan().unwrap();
        assert_eq!(all.iter().map(|p| p.pid).collect::<Vec<_>>(), [200, 300]);
        assert_eq!(all[1].argv, ["python3", "-m", "pytest"]);
        assert_eq!(all[1].uid, 1000);
        assert_eq!(all[1].ppid, 200);
        assert!(matches!(procfs.read(999), Err(e) if e.kind() == io::ErrorKind::NotFound));
    }

    #[test]
    fn real_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id();
        let procfs = ProcFs::default();
        let threads = procfs.stat(me).unwrap().threads;
        assert!(procfs.children(me, threads).contains(&child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn real_self() {
        let me = ProcFs::default().read(std::process::id()).unwrap();
        assert_eq!(me.pid, std::process::id());
        assert!(!me.argv.is_empty());
        assert!(me.exe.starts_with('/'));
        assert!(me.start_ticks > 0);
    }

    /// A scan leaves out a zombie (nothing can be read of it, and a
    /// tracker learns of its end from its exit event) and keeps the live.
    #[test]
    fn scan_leaves_out_the_exiting() {
        let mut live = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let mut zombie = std::process::Command::new("true").spawn().unwrap();
        let procfs = ProcFs::default();
        let z = zombie.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while procfs.stat(z).map(|s| s.state).ok() != Some('Z') {
            assert!(
                std::time::Instant::now() < deadline,
                "pid {z} never a zombie"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(procfs.stat(z).unwrap().exiting());
        let pids: Vec<u32> = procfs.scan().unwrap().iter().map(|p| p.pid).collect();
        assert!(!pids.contains(&z), "the zombie {z} was scanned");
        assert!(pids.contains(&live.id()), "the live child was not scanned");
        assert!(!procfs.stat(live.id()).unwrap().exiting());
        live.kill().unwrap();
        live.wait().unwrap();
        zombie.wait().unwrap();
    }
}
