//! Pure parsers for cgroup v2 file texts. Every function takes the text of
//! one file and returns a typed value; unknown keys are ignored (the kernel
//! adds keys over time), malformed lines are skipped or reported as `None`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A memory limit file value (`memory.min/low/high/max`, `pids.max`): a
/// count or `max`. Serialized as the number, or the string `"max"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Bytes(u64),
    Max,
}

impl Limit {
    pub fn parse(s: &str) -> Option<Limit> {
        let s = s.trim();
        if s == "max" {
            Some(Limit::Max)
        } else {
            s.parse().ok().map(Limit::Bytes)
        }
    }
    pub fn bytes(self) -> Option<u64> {
        match self {
            Limit::Bytes(b) => Some(b),
            Limit::Max => None,
        }
    }
    /// The text the kernel accepts in the file.
    pub fn render(self) -> String {
        match self {
            Limit::Bytes(b) => b.to_string(),
            Limit::Max => "max".into(),
        }
    }
}

impl Serialize for Limit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Limit::Bytes(b) => s.serialize_u64(*b),
            Limit::Max => s.serialize_str("max"),
        }
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Limit::Bytes(n)),
            Raw::S(s) => Limit::parse(&s)
                .ok_or_else(|| serde::de::Error::custom(format!("not a limit: {s:?}"))),
        }
    }
}

/// "key value" lines (memory.events, memory.stat, cpu.stat) into a map.
pub fn parse_kv(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?;
            let v = it.next()?.parse().ok()?;
            Some((k.to_string(), v))
        })
        .collect()
}

/// `cpu.stat`. The first three keys come from the cgroup core and exist
/// without the cpu controller; the throttling keys need it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuStat {
    pub usage_usec: u64,
    pub user_usec: u64,
    pub system_usec: u64,
    /// Present with the cpu controller only.
    pub nr_periods: Option<u64>,
    pub nr_throttled: Option<u64>,
    pub throttled_usec: Option<u64>,
}

impl CpuStat {
    /// None when `usage_usec` is missing (not a cpu.stat text).
    pub fn parse(text: &str) -> Option<CpuStat> {
        let m = parse_kv(text);
        Some(CpuStat {
            usage_usec: *m.get("usage_usec")?,
            user_usec: m.get("user_usec").copied().unwrap_or(0),
            system_usec: m.get("system_usec").copied().unwrap_or(0),
            nr_periods: m.get("nr_periods").copied(),
            nr_throttled: m.get("nr_throttled").copied(),
            throttled_usec: m.get("throttled_usec").copied(),
        })
    }
}

/// `memory.events` (or `memory.events.local`) counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryEvents {
    pub low: u64,
    pub high: u64,
    pub max: u64,
    pub oom: u64,
    pub oom_kill: u64,
    pub oom_group_kill: u64,
}

impl MemoryEvents {
    pub fn parse(text: &str) -> MemoryEvents {
        let m = parse_kv(text);
        let g = |k: &str| m.get(k).copied().unwrap_or(0);
        MemoryEvents {
            low: g("low"),
            high: g("high"),
            max: g("max"),
            oom: g("oom"),
            oom_kill: g("oom_kill"),
            oom_group_kill: g("oom_group_kill"),
        }
    }
}

/// The `memory.stat` fields we use (bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStat {
    pub anon: u64,
    pub file: u64,
    pub kernel: u64,
    pub shmem: u64,
    pub sock: u64,
    pub active_file: u64,
    pub inactive_file: u64,
    pub active_anon: u64,
    pub inactive_anon: u64,
}

impl MemoryStat {
    /// None when `anon` is missing (not a memory.stat text).
    pub fn parse(text: &str) -> Option<MemoryStat> {
        let m = parse_kv(text);
        let g = |k: &str| m.get(k).copied().unwrap_or(0);
        Some(MemoryStat {
            anon: *m.get("anon")?,
            file: g("file"),
            kernel: g("kernel"),
            shmem: g("shmem"),
            sock: g("sock"),
            active_file: g("active_file"),
            inactive_file: g("inactive_file"),
            active_anon: g("active_anon"),
            inactive_anon: g("inactive_anon"),
        })
    }

    /// Working set: anon + file - inactive_file.
    pub fn working_set(&self) -> u64 {
        self.anon + self.file.saturating_sub(self.inactive_file)
    }
}

/// One line of a PSI file ("some avg10=0.00 avg60=0.00 avg300=0.00 total=0").
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PressureLine {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    pub total_us: u64,
}

/// A PSI file (`cpu.pressure`, `memory.pressure`, `io.pressure`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Pressure {
    pub some: Option<PressureLine>,
    pub full: Option<PressureLine>,
}

impl Pressure {
    pub fn parse(text: &str) -> Pressure {
        let mut out = Pressure::default();
        for l in text.lines() {
            let mut it = l.split_whitespace();
            let kind = it.next();
            let mut p = PressureLine::default();
            let mut ok = false;
            for f in it {
                let Some((k, v)) = f.split_once('=') else {
                    continue;
                };
                match k {
                    "avg10" => p.avg10 = v.parse().unwrap_or(0.0),
                    "avg60" => p.avg60 = v.parse().unwrap_or(0.0),
                    "avg300" => p.avg300 = v.parse().unwrap_or(0.0),
                    "total" => {
                        p.total_us = v.parse().unwrap_or(0);
                        ok = true;
                    }
                    _ => {}
                }
            }
            match (kind, ok) {
                (Some("some"), true) => out.some = Some(p),
                (Some("full"), true) => out.full = Some(p),
                _ => {}
            }
        }
        out
    }
}

/// One device's line of `io.stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoStat {
    pub major: u32,
    pub minor: u32,
    pub rbytes: u64,
    pub wbytes: u64,
    pub rios: u64,
    pub wios: u64,
    pub dbytes: u64,
    pub dios: u64,
}

impl IoStat {
    /// Every well-formed device line ("8:0 rbytes=1 wbytes=2 ...").
    pub fn parse(text: &str) -> Vec<IoStat> {
        text.lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let (maj, min) = it.next()?.split_once(':')?;
                let mut s = IoStat {
                    major: maj.parse().ok()?,
                    minor: min.parse().ok()?,
                    ..IoStat::default()
                };
                for f in it {
                    let Some((k, v)) = f.split_once('=') else {
                        continue;
                    };
                    let v = v.parse().unwrap_or(0);
                    match k {
                        "rbytes" => s.rbytes = v,
                        "wbytes" => s.wbytes = v,
                        "rios" => s.rios = v,
                        "wios" => s.wios = v,
                        "dbytes" => s.dbytes = v,
                        "dios" => s.dios = v,
                        _ => {}
                    }
                }
                Some(s)
            })
            .collect()
    }

    /// (read bytes, written bytes) over all devices.
    pub fn totals(all: &[IoStat]) -> (u64, u64) {
        all.iter()
            .fold((0, 0), |(r, w), s| (r + s.rbytes, w + s.wbytes))
    }
}

/// `cgroup.events`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupEvents {
    pub populated: bool,
    pub frozen: bool,
}

impl CgroupEvents {
    pub fn parse(text: &str) -> Option<CgroupEvents> {
        let m = parse_kv(text);
        Some(CgroupEvents {
            populated: *m.get("populated")? != 0,
            frozen: m.get("frozen").copied().unwrap_or(0) != 0,
        })
    }
}

/// A cgroup v2 controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Controller {
    Cpu,
    Cpuset,
    Memory,
    Io,
    Pids,
    Hugetlb,
    Rdma,
    Misc,
    PerfEvent,
}

impl Controller {
    pub fn name(self) -> &'static str {
        match self {
            Controller::Cpu => "cpu",
            Controller::Cpuset => "cpuset",
            Controller::Memory => "memory",
            Controller::Io => "io",
            Controller::Pids => "pids",
            Controller::Hugetlb => "hugetlb",
            Controller::Rdma => "rdma",
            Controller::Misc => "misc",
            Controller::PerfEvent => "perf_event",
        }
    }

    pub fn from_name(s: &str) -> Option<Controller> {
        Some(match s {
            "cpu" => Controller::Cpu,
            "cpuset" => Controller::Cpuset,
            "memory" => Controller::Memory,
            "io" => Controller::Io,
            "pids" => Controller::Pids,
            "hugetlb" => Controller::Hugetlb,
            "rdma" => Controller::Rdma,
            "misc" => Controller::Misc,
            "perf_event" => Controller::PerfEvent,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `cgroup.controllers` / `cgroup.subtree_control`: a space-separated list.
/// Names this build does not know are skipped.
pub fn parse_controllers(text: &str) -> Vec<Controller> {
    let mut v: Vec<Controller> = text
        .split_whitespace()
        .filter_map(Controller::from_name)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// `cgroup.procs` / `cgroup.threads`: one id a line.
pub fn parse_pids(text: &str) -> Vec<u32> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// The cgroup2 mount point from a /proc/mounts (or /proc/self/mountinfo
/// style "dev mnt type ...") text: the first `cgroup2` entry.
pub fn cgroup2_mount(mounts: &str) -> Option<String> {
    mounts.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        let _dev = it.next()?;
        let mnt = it.next()?;
        (it.next()? == "cgroup2").then(|| unescape_mount(mnt))
    })
}

/// Whether the cgroup2 hierarchy has mount option `option` (one
/// hierarchy: every cgroup2 mount shows the same options); None without a
/// cgroup2 mount.
pub fn cgroup2_option(mounts: &str, option: &str) -> Option<bool> {
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 3 && f[2] == "cgroup2").then(|| f[3].split(',').any(|o| o == option))
    })
}

/// /proc/mounts escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Texts as a 6.x kernel writes them.
    const CPU_STAT_CORE: &str = "usage_usec 17366992091\nuser_usec 15912301679\nsystem_usec 1454690412\nnice_usec 34809094\n";
    const CPU_STAT_CTRL: &str = "usage_usec 4801\nuser_usec 3200\nsystem_usec 1601\nnice_usec 0\ncore_sched.force_idle_usec 0\nnr_periods 10\nnr_throttled 2\nthrottled_usec 3000\nnr_bursts 0\nburst_usec 0\n";
    const MEMORY_STAT: &str = "anon 1000\nfile 500\nkernel 7\nkernel_stack 16384\npagetables 0\nsec_pagetables 0\npercpu 0\nsock 0\nvmalloc 0\nshmem 3\nzswap 0\nfile_mapped 0\nactive_anon 900\ninactive_anon 100\nactive_file 100\ninactive_file 400\nunevictable 0\npgfault 123\n";
    const IO_STAT: &str = "8:0 rbytes=1048576 wbytes=4096 rios=12 wios=1 dbytes=0 dios=0\n253:1 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n";

    #[test]
    fn limits() {
        assert_eq!(Limit::parse("max\n"), Some(Limit::Max));
        assert_eq!(Limit::parse("1048576\n"), Some(Limit::Bytes(1 << 20)));
        assert_eq!(Limit::parse("x"), None);
        assert_eq!(Limit::Max.render(), "max");
        assert_eq!(serde_json::to_string(&Limit::Max).unwrap(), "\"max\"");
        assert_eq!(serde_json::to_string(&Limit::Bytes(5)).unwrap(), "5");
        for l in [Limit::Max, Limit::Bytes(7)] {
            let t = serde_json::to_string(&l).unwrap();
            assert_eq!(serde_json::from_str::<Limit>(&t).unwrap(), l);
        }
        assert!(serde_json::from_str::<Limit>("\"lots\"").is_err());
    }

    #[test]
    fn cpu_stat_core_and_controller() {
        let c = CpuStat::parse(CPU_STAT_CORE).unwrap();
        assert_eq!(c.usage_usec, 17366992091);
        assert_eq!(c.user_usec, 15912301679);
        assert_eq!(c.system_usec, 1454690412);
        assert_eq!(
            c.nr_throttled, None,
            "no cpu controller: no throttling keys"
        );
        let c = CpuStat::parse(CPU_STAT_CTRL).unwrap();
        assert_eq!(
            (c.usage_usec, c.nr_periods, c.nr_throttled, c.throttled_usec),
            (4801, Some(10), Some(2), Some(3000))
        );
        assert_eq!(CpuStat::parse("some 1\n"), None);
    }

    #[test]
    fn memory_events_and_stat() {
        let e = MemoryEvents::parse("low 0\nhigh 12\nmax 3\noom 2\noom_kill 1\noom_group_kill 0\n");
        assert_eq!(
            e,
            MemoryEvents {
                low: 0,
                high: 12,
                max: 3,
                oom: 2,
                oom_kill: 1,
                oom_group_kill: 0
            }
        );
        assert_eq!(MemoryEvents::parse(""), MemoryEvents::default());
        let s = MemoryStat::parse(MEMORY_STAT).unwrap();
        assert_eq!(
            (s.anon, s.file, s.shmem, s.inactive_file),
            (1000, 500, 3, 400)
        );
        assert_eq!(s.working_set(), 1100);
        assert_eq!(MemoryStat::parse("file 5\n"), None);
    }

    #[test]
    fn pressure() {
        let p = Pressure::parse(
            "some avg10=1.50 avg60=0.20 avg300=0.00 total=12345\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=99\n",
        );
        let s = p.some.unwrap();
        assert_eq!(s.avg10, 1.5);
        assert_eq!(s.total_us, 12345);
        assert_eq!(p.full.unwrap().total_us, 99);
        assert_eq!(Pressure::parse("garbage"), Pressure::default());
        // cpu.pressure on an older kernel has no "full" line.
        let p = Pressure::parse("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n");
        assert!(p.some.is_some() && p.full.is_none());
    }

    #[test]
    fn io_stat() {
        let v = IoStat::parse(IO_STAT);
        assert_eq!(v.len(), 2);
        assert_eq!(
            (v[0].major, v[0].minor, v[0].rbytes, v[0].wios),
            (8, 0, 1048576, 1)
        );
        assert_eq!(IoStat::totals(&v), (1048586, 4116));
        assert!(IoStat::parse("").is_empty());
        assert!(IoStat::parse("nonsense line\n").is_empty());
    }

    #[test]
    fn cgroup_events_controllers_pids() {
        assert_eq!(
            CgroupEvents::parse("populated 1\nfrozen 0\n"),
            Some(CgroupEvents {
                populated: true,
                frozen: false
            })
        );
        assert_eq!(CgroupEvents::parse(""), None);
        assert_eq!(
            parse_controllers("cpuset cpu io memory hugetlb pids rdma misc\n"),
            [
                Controller::Cpu,
                Controller::Cpuset,
                Controller::Memory,
                Controller::Io,
                Controller::Pids,
                Controller::Hugetlb,
                Controller::Rdma,
                Controller::Misc
            ]
        );
        assert_eq!(parse_controllers("hugetlb\n"), [Controller::Hugetlb]);
        assert!(parse_controllers("\n").is_empty());
        assert_eq!(parse_pids("12\n345\n\n"), [12, 345]);
    }

    #[test]
    fn mounts() {
        let m = "tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0\n\
                 cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n\
                 cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
        assert_eq!(cgroup2_mount(m).as_deref(), Some("/sys/fs/cgroup/unified"));
        assert_eq!(
            cgroup2_mount("none /sys/fs/cgroup cgroup2 rw 0 0\n").as_deref(),
            Some("/sys/fs/cgroup")
        );
        assert_eq!(
            cgroup2_mount("none /mnt/a\\040b cgroup2 rw 0 0\n").as_deref(),
            Some("/mnt/a b")
        );
        assert_eq!(cgroup2_mount("proc /proc proc rw 0 0\n"), None);
        assert_eq!(cgroup2_option(m, "favordynmods"), Some(false));
        let systemd =
            "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nsdelegate,memory_recursiveprot 0 0\n";
        assert_eq!(cgroup2_option(systemd, "memory_recursiveprot"), Some(true));
        assert_eq!(cgroup2_option(systemd, "favordynmods"), Some(false));
        assert_eq!(
            cgroup2_option(
                "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nsdelegate,favordynmods 0 0\n",
                "favordynmods"
            ),
            Some(true)
        );
        assert_eq!(
            cgroup2_option("proc /proc proc rw 0 0\n", "favordynmods"),
            None
        );
    }
}
