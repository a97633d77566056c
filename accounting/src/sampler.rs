//! The sweep: per agent, the leaves' cgroup files where the controller is
//! on, the agent's processes in /proc where it is not.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cgroupfs::Cgroup;
use procmon::procfs::{self, ProcFs};

use crate::exit::{ExitInfo, ExitRecord};
use crate::gpu::Gpu;
use crate::{now_ms, AgentRef, AgentUsage, SessionUsage, Source, Sources};

/// Bounds of the sampler.
#[derive(Debug, Clone)]
pub struct Options {
    /// At most one sweep per interval; `sample` returns the last figures
    /// when called sooner.
    pub interval: Duration,
    /// /proc processes read per sweep, over all agents (the fallback's cost
    /// bound). Past it the remaining agents' proc figures are partial
    /// (`truncated`); the starting agent rotates so none is always last.
    pub max_procs: usize,
    /// Count open fds in the /proc fallback (one readdir per process).
    pub count_fds: bool,
    /// The /proc tree (tests use a fixture).
    pub proc_root: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            interval: Duration::from_secs(2),
            max_procs: 4096,
            count_fds: true,
            proc_root: PathBuf::from("/proc"),
        }
    }
}

/// `accounting:` in agentcgd.yaml.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub enabled: bool,
    /// Sweep interval, ms (at least 100).
    pub interval_ms: u64,
    /// /proc processes read per sweep at most (fallback only).
    pub max_procs: usize,
    /// Count open fds in the /proc fallback.
    pub count_fds: bool,
    /// Ask NVML for GPU memory per process.
    pub gpu: bool,
}

impl Default for Config {
    fn default() -> Self {
        let o = Options::default();
        Config {
            enabled: true,
            interval_ms: o.interval.as_millis() as u64,
            max_procs: o.max_procs,
            count_fds: o.count_fds,
            gpu: true,
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), String> {
        if self.interval_ms < 100 {
            return Err(format!(
                "accounting.interval_ms {} is below 100",
                self.interval_ms
            ));
        }
        if self.max_procs == 0 {
            return Err("accounting.max_procs must be at least 1".into());
        }
        Ok(())
    }

    pub fn options(&self) -> Options {
        Options {
            interval: Duration::from_millis(self.interval_ms),
            max_procs: self.max_procs,
            count_fds: self.count_fds,
            ..Options::default()
        }
    }
}

/// Open fds are counted every this many sweeps (cached in between).
const FD_EVERY: u64 = 5;

/// What the sampler keeps per agent between sweeps (bounded: the agents of
/// the last sweep, and per agent the processes it has).
#[derive(Debug, Default)]
struct AgentState {
    last_cpu: Option<(u64, Instant)>,
    /// Highest RSS sum seen (proc fallback's peak).
    peak_rss: u64,
    /// (pid, start) -> (utime, stime) ticks at the last read.
    procs: HashMap<(u32, u64), (u64, u64)>,
    /// (pid, start) -> open fds at the last count (refreshed every
    /// `FD_EVERY` sweeps; fds change slowly and counting them is a readdir).
    fds: HashMap<(u32, u64), u64>,
    /// Ticks of processes that have exited since the sampler first saw them.
    gone: (u64, u64),
}

/// Samples agents' usage.
pub struct Sampler {
    opts: Options,
    procfs: ProcFs,
    hz: u64,
    page: u64,
    state: HashMap<String, AgentState>,
    usage: BTreeMap<String, AgentUsage>,
    last_sweep: Option<Instant>,
    rotate: usize,
    gpu: Gpu,
    /// Processes read from /proc in the last sweep (the cost figure).
    last_proc_reads: usize,
    sweeps: u64,
}

/// What a leaf's cgroup files said.
#[derive(Default)]
struct LeafRead {
    session: String,
    path: String,
    procs: Vec<u32>,
    cpu: Option<cgroupfs::CpuStat>,
    mem: Option<u64>,
    peak: Option<u64>,
    stat: Option<cgroupfs::MemoryStat>,
    oom_kill: Option<u64>,
    tasks: Option<u64>,
    io: Option<(u64, u64)>,
}

fn read_leaf(p: &Path) -> Option<LeafRead> {
    let cg = Cgroup::new(p);
    // cgroup.procs is the existence test: a leaf that is gone is skipped.
    let procs = cg.procs().ok()?;
    let session = p
        .parent()
        .and_then(|d| d.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mem = cg.memory_current().ok();
    Some(LeafRead {
        session,
        path: p.display().to_string(),
        procs,
        cpu: cg.cpu_stat().ok(),
        peak: mem.and_then(|_| cg.memory_peak().ok()),
        stat: mem.and_then(|_| cg.memory_stat().ok()),
        oom_kill: mem.and_then(|_| cg.memory_events().ok().map(|e| e.oom_kill)),
        mem,
        tasks: cg.pids_current().ok(),
        io: cg.io_stat().ok().map(|v| cgroupfs::IoStat::totals(&v)),
    })
}

/// Sum a per-leaf figure when every leaf has it.
fn all<T: Copy>(leaves: &[LeafRead], f: impl Fn(&LeafRead) -> Option<T>) -> Option<Vec<T>> {
    if leaves.is_empty() {
        return None;
    }
    leaves.iter().map(f).collect()
}

/// One process as /proc shows it.
struct ProcRead {
    key: (u32, u64),
    ticks: (u64, u64),
    rss: u64,
    threads: u64,
}

impl Sampler {
    pub fn new(opts: Options, gpu: Gpu) -> Sampler {
        Sampler {
            procfs: ProcFs::new(&opts.proc_root),
            opts,
            hz: procfs::clock_ticks_per_sec(),
            page: procfs::page_size(),
            state: HashMap::new(),
            usage: BTreeMap::new(),
            last_sweep: None,
            rotate: 0,
            gpu,
            last_proc_reads: 0,
            sweeps: 0,
        }
    }

    /// The sampler `cfg` asks for (NVML loaded if `cfg.gpu`).
    pub fn from_config(cfg: &Config) -> Sampler {
        let gpu = if cfg.gpu {
            Gpu::nvml()
        } else {
            Gpu::unavailable("accounting.gpu: false")
        };
        Sampler::new(cfg.options(), gpu)
    }

    pub fn gpu_status(&self) -> &crate::GpuStatus {
        self.gpu.status()
    }

    /// Whether NVML answers: then the devices are worth a look even
    /// while no agent runs.
    pub fn gpu_available(&self) -> bool {
        self.gpu.available()
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// Processes read from /proc by the last sweep.
    pub fn last_proc_reads(&self) -> usize {
        self.last_proc_reads
    }

    /// The figures of `agents`, swept again if `interval` has passed since
    /// the last sweep. Agents not listed are forgotten.
    pub fn sample(&mut self, agents: &[AgentRef]) -> &BTreeMap<String, AgentUsage> {
        let due = self
            .last_sweep
            .is_none_or(|t| t.elapsed() >= self.opts.interval);
        if due {
            self.sweep(agents);
        } else {
            let ids: HashSet<&str> = agents.iter().map(|a| a.id.as_str()).collect();
            self.usage.retain(|k, _| ids.contains(k.as_str()));
            self.state.retain(|k, _| ids.contains(k.as_str()));
        }
        &self.usage
    }

    /// The last figures, without sampling.
    pub fn usage(&self) -> &BTreeMap<String, AgentUsage> {
        &self.usage
    }

    /// Sweep now, whatever the interval.
    pub fn sweep(&mut self, agents: &[AgentRef]) {
        let now = Instant::now();
        self.last_sweep = Some(now);
        self.sweeps += 1;
        let ids: HashSet<&str> = agents.iter().map(|a| a.id.as_str()).collect();
        self.state.retain(|k, _| ids.contains(k.as_str()));
        self.usage.retain(|k, _| ids.contains(k.as_str()));
        let mut budget = self.opts.max_procs;
        let mut pid_owner: HashMap<u32, usize> = HashMap::new();
        let n = agents.len();
        self.rotate = if n == 0 { 0 } else { (self.rotate + 1) % n };
        let mut out: Vec<Option<AgentUsage>> = vec![None; n];
        for k in 0..n {
            let i = (self.rotate + k) % n;
            let u = self.sample_one(&agents[i], now, &mut budget, |pid| {
                pid_owner.insert(pid, i);
            });
            out[i] = Some(u);
        }
        self.last_proc_reads = self.opts.max_procs - budget;
        // GPU: map the devices' processes to agents by pid.
        let gpu = self.gpu.sample();
        let gpu_on = self.gpu.available();
        for u in out.iter_mut().flatten() {
            u.sources.gpu = if gpu_on { Source::Nvml } else { Source::None };
            u.gpu_memory_bytes = gpu_on.then_some(0);
        }
        for (pid, (mem, util)) in gpu {
            if let Some(u) = pid_owner.get(&pid).and_then(|&i| out[i].as_mut()) {
                u.gpu_memory_bytes = Some(u.gpu_memory_bytes.unwrap_or(0) + mem.unwrap_or(0));
                if let Some(x) = util {
                    u.gpu_util_percent = Some(u.gpu_util_percent.unwrap_or(0).max(x));
                }
            }
        }
        for (a, u) in agents.iter().zip(out) {
            if let Some(u) = u {
                self.usage.insert(a.id.clone(), u);
            }
        }
    }

    /// Read one agent (no interval check); `owns` is told each of its pids.
    fn sample_one(
        &mut self,
        a: &AgentRef,
        now: Instant,
        budget: &mut usize,
        mut owns: impl FnMut(u32),
    ) -> AgentUsage {
        let leaves: Vec<LeafRead> = a.leaves.iter().filter_map(|p| read_leaf(p)).collect();
        let mut u = AgentUsage {
            sampled_at_ms: now_ms(),
            ..Default::default()
        };
        let mut s = Sources::default();
        u.sessions = leaves
            .iter()
            .map(|l| SessionUsage {
                session: l.session.clone(),
                cgroup: l.path.clone(),
                processes: l.procs.len() as u64,
                ..Default::default()
            })
            .collect();

        // The agent's processes: its leaves' and those the daemon tracks.
        let mut pids: Vec<(u32, Option<u64>, usize)> = Vec::new();
        let mut seen = HashSet::new();
        for (li, l) in leaves.iter().enumerate() {
            for &p in &l.procs {
                if seen.insert(p) {
                    pids.push((p, None, li));
                }
            }
        }
        for &(p, st) in &a.pids {
            if seen.insert(p) {
                pids.push((p, Some(st), 0));
            }
        }
        for &(p, _, _) in &pids {
            owns(p);
        }

        let cgroup_cpu = all(&leaves, |l| l.cpu);
        let cgroup_mem = all(&leaves, |l| l.mem);
        let need_proc = cgroup_cpu.is_none() || cgroup_mem.is_none();

        // /proc, only for what the cgroups lack.
        let mut reads: Vec<(usize, ProcRead)> = Vec::new();
        if need_proc {
            for &(pid, start, li) in &pids {
                if *budget == 0 {
                    u.truncated = true;
                    break;
                }
                *budget -= 1;
                if let Some(r) = self.read_proc(pid, start) {
                    reads.push((li, r));
                }
            }
        }
        let count_fds = need_proc && self.opts.count_fds;
        let fd_refresh = self.sweeps % FD_EVERY == 1 || FD_EVERY == 1;
        let st = self.state.entry(a.id.clone()).or_default();
        if count_fds {
            let mut fds = HashMap::with_capacity(reads.len());
            for (_, r) in &reads {
                let n = match st.fds.get(&r.key) {
                    Some(&n) if !fd_refresh => Some(n),
                    _ => self.procfs.fd_count(r.key.0).ok(),
                };
                if let Some(n) = n {
                    fds.insert(r.key, n);
                }
            }
            u.open_fds = Some(fds.values().sum());
            st.fds = fds;
        }

        // CPU
        if let Some(cpus) = &cgroup_cpu {
            s.cpu = Source::Cgroup;
            for (i, c) in cpus.iter().enumerate() {
                u.cpu_usec += c.usage_usec;
                u.cpu_user_usec += c.user_usec;
                u.cpu_system_usec += c.system_usec;
                u.sessions[i].cpu_usec = c.usage_usec;
            }
        } else if need_proc {
            s.cpu = Source::Proc;
            let live: HashSet<u32> = pids.iter().map(|p| p.0).collect();
            let mut next: HashMap<(u32, u64), (u64, u64)> = HashMap::new();
            for (_, r) in &reads {
                next.insert(r.key, r.ticks);
            }
            for (k, v) in st.procs.drain() {
                if next.contains_key(&k) {
                    continue;
                }
                if live.contains(&k.0) && u.truncated && next.len() < self.opts.max_procs {
                    next.insert(k, v); // not read this sweep, still there
                } else {
                    st.gone.0 += v.0;
                    st.gone.1 += v.1;
                }
            }
            st.procs = next;
            let usec = |t: u64| t * 1_000_000 / self.hz;
            let (mut ut, mut stt) = st.gone;
            for v in st.procs.values() {
                ut += v.0;
                stt += v.1;
            }
            u.cpu_user_usec = usec(ut);
            u.cpu_system_usec = usec(stt);
            u.cpu_usec = u.cpu_user_usec + u.cpu_system_usec;
            for (li, r) in &reads {
                if let Some(x) = u.sessions.get_mut(*li) {
                    x.cpu_usec += usec(r.ticks.0 + r.ticks.1);
                }
            }
        }
        if s.cpu != Source::None {
            if let Some((c0, t0)) = st.last_cpu {
                let dt = now.duration_since(t0).as_micros() as f64;
                if dt > 0.0 {
                    u.cpu_percent = Some(u.cpu_usec.saturating_sub(c0) as f64 * 100.0 / dt);
                }
            }
            st.last_cpu = Some((u.cpu_usec, now));
        }

        // Memory
        if let Some(mems) = &cgroup_mem {
            s.memory = Source::Cgroup;
            for (i, m) in mems.iter().enumerate() {
                u.memory_bytes += m;
                u.sessions[i].memory_bytes = *m;
            }
            if let Some(p) = all(&leaves, |l| l.peak) {
                s.memory_peak = Source::Cgroup;
                u.memory_peak_bytes = Some(p.iter().sum());
                for (i, x) in p.iter().enumerate() {
                    u.sessions[i].memory_peak_bytes = Some(*x);
                }
            }
            if let Some(ms) = all(&leaves, |l| l.stat) {
                u.anon_bytes = Some(ms.iter().map(|m| m.anon).sum());
                u.file_bytes = Some(ms.iter().map(|m| m.file).sum());
            }
            if let Some(o) = all(&leaves, |l| l.oom_kill) {
                s.oom_kills = Source::Cgroup;
                u.oom_kills = Some(o.iter().sum());
                for (i, x) in o.iter().enumerate() {
                    u.sessions[i].oom_kills = Some(*x);
                }
            }
        } else if need_proc {
            s.memory = Source::Proc;
            s.memory_peak = Source::Proc;
            let rss: u64 = reads.iter().map(|(_, r)| r.rss).sum();
            u.memory_bytes = rss;
            st.peak_rss = st.peak_rss.max(rss);
            u.memory_peak_bytes = Some(st.peak_rss);
            for (li, r) in &reads {
                if let Some(x) = u.sessions.get_mut(*li) {
                    x.memory_bytes += r.rss;
                }
            }
        }

        // Processes and tasks
        u.processes = if leaves.is_empty() {
            // Only the tracked pids that are still those processes.
            s.pids = Source::Proc;
            reads.len() as u64
        } else {
            s.pids = Source::Cgroup;
            pids.len() as u64
        };
        if let Some(t) = all(&leaves, |l| l.tasks) {
            u.tasks = Some(t.iter().sum());
        } else if need_proc {
            u.tasks = Some(reads.iter().map(|(_, r)| r.threads).sum());
        }

        // io
        if let Some(io) = all(&leaves, |l| l.io) {
            s.io = Source::Cgroup;
            u.io_read_bytes = Some(io.iter().map(|x| x.0).sum());
            u.io_write_bytes = Some(io.iter().map(|x| x.1).sum());
        }
        u.sources = s;
        u
    }

    /// One process: /proc/PID/stat only (CPU ticks, threads, start time and
    /// RSS are all in it: one open/read/close per process).
    fn read_proc(&self, pid: u32, start: Option<u64>) -> Option<ProcRead> {
        let stat = self.procfs.stat(pid).ok()?;
        if start.is_some_and(|s| s != stat.start_ticks) || stat.is_kernel_thread() {
            return None; // pid reused, or not a user process
        }
        Some(ProcRead {
            key: (pid, stat.start_ticks),
            ticks: (stat.utime, stat.stime),
            rss: stat.rss_pages * self.page,
            threads: stat.threads as u64,
        })
    }

    /// The agent's root process exited: read it once more (its leaves keep
    /// the totals while they exist), build the record, forget the agent.
    pub fn exit(&mut self, a: &AgentRef, info: ExitInfo) -> ExitRecord {
        let mut budget = self.opts.max_procs.min(256);
        let u = self.sample_one(a, Instant::now(), &mut budget, |_| {});
        // A leaf already removed reads as nothing: keep the last sweep's.
        let last = self.usage.remove(&a.id);
        let best = match last {
            Some(l) if u.sources.cpu == Source::None || l.cpu_usec > u.cpu_usec => l,
            _ => u,
        };
        self.state.remove(&a.id);
        ExitRecord::new(&a.id, info, Some(&best), now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::fake::{device, FakeGpu};
    use std::fs;

    /// A fake /proc process: stat with utime/stime/threads/start/rss.
    fn proc_entry(root: &Path, pid: u32, start: u64, ticks: (u64, u64), rss_pages: u64) {
        let d = root.join(pid.to_string());
        fs::create_dir_all(d.join("fd")).unwrap();
        fs::write(
            d.join("stat"),
            format!(
                "{pid} (tool x) S 1 1 1 0 -1 4194560 0 0 0 0 {} {} 0 0 20 0 3 0 {start} 9999 {rss_pages} 0",
                ticks.0, ticks.1
            ),
        )
        .unwrap();
        for fd in 0..4 {
            fs::write(d.join("fd").join(fd.to_string()), "").unwrap();
        }
    }

    fn leaf(root: &Path, session: &str, id: &str, files: &[(&str, String)]) -> PathBuf {
        let d = root.join(session).join(id);
        fs::create_dir_all(&d).unwrap();
        for (f, t) in files {
            fs::write(d.join(f), t).unwrap();
        }
        d
    }

    fn opts(proc_root: &Path) -> Options {
        Options {
            interval: Duration::ZERO,
            max_procs: 100,
            count_fds: true,
            proc_root: proc_root.to_path_buf(),
        }
    }

    fn cg_files(
        usage: u64,
        mem: u64,
        peak: u64,
        ooms: u64,
        procs: &str,
    ) -> Vec<(&'static str, String)> {
        vec![
            ("cgroup.procs", procs.to_string()),
            (
                "cpu.stat",
                format!(
                    "usage_usec {usage}\nuser_usec {}\nsystem_usec {}\n",
                    usage / 2,
                    usage / 2
                ),
            ),
            ("memory.current", format!("{mem}\n")),
            ("memory.peak", format!("{peak}\n")),
            (
                "memory.stat",
                format!("anon {}\nfile {}\n", mem / 4, mem / 2),
            ),
            (
                "memory.events",
                format!("low 0\nhigh 0\nmax 0\noom 0\noom_kill {ooms}\n"),
            ),
            ("pids.current", "5\n".to_string()),
            (
                "io.stat",
                "8:0 rbytes=100 wbytes=50 rios=1 wios=1 dbytes=0 dios=0\n".to_string(),
            ),
        ]
    }

    #[test]
    fn cgroup_figures_summed_over_sessions_with_sources() {
        let t = tempfile::tempdir().unwrap();
        let h = leaf(
            t.path(),
            "session_high",
            "aider-10",
            &cg_files(3_000_000, 100 << 20, 150 << 20, 0, "10\n11\n"),
        );
        let l = leaf(
            t.path(),
            "session_low",
            "aider-10",
            &cg_files(1_000_000, 20 << 20, 30 << 20, 2, "12\n"),
        );
        let proc_root = t.path().join("proc");
        fs::create_dir_all(&proc_root).unwrap();
        let mut s = Sampler::new(opts(&proc_root), Gpu::unavailable("test"));
        let a = AgentRef {
            id: "aider-10".into(),
            leaves: vec![h.clone(), l],
            pids: vec![(10, 1)],
        };
        let u = s.sample(std::slice::from_ref(&a))["aider-10"].clone();
        assert_eq!(u.cpu_usec, 4_000_000);
        assert_eq!(u.memory_bytes, 120 << 20);
        assert_eq!(u.memory_peak_bytes, Some(180 << 20));
        assert_eq!(u.oom_kills, Some(2));
        assert_eq!(u.processes, 3);
        assert_eq!(u.tasks, Some(10));
        assert_eq!((u.io_read_bytes, u.io_write_bytes), (Some(200), Some(100)));
        assert_eq!(
            u.open_fds, None,
            "no per-process walk when the cgroups have the figures"
        );
        assert_eq!(u.cpu_percent, None, "no rate from one sample");
        assert_eq!(
            u.sources,
            Sources {
                cpu: Source::Cgroup,
                memory: Source::Cgroup,
                memory_peak: Source::Cgroup,
                oom_kills: Source::Cgroup,
                pids: Source::Cgroup,
                io: Source::Cgroup,
                gpu: Source::None
            }
        );
        assert_eq!(u.sessions.len(), 2);
        assert_eq!(
            (u.sessions[0].session.as_str(), u.sessions[0].cpu_usec),
            ("session_high", 3_000_000)
        );
        assert_eq!(
            (u.sessions[1].session.as_str(), u.sessions[1].oom_kills),
            ("session_low", Some(2))
        );
        assert_eq!(s.last_proc_reads(), 0);
        // The rate comes from the delta between two sweeps.
        std::thread::sleep(Duration::from_millis(50));
        fs::write(
            h.join("cpu.stat"),
            "usage_usec 3050000\nuser_usec 0\nsystem_usec 0\n",
        )
        .unwrap();
        let u = s.sample(std::slice::from_ref(&a))["aider-10"].clone();
        let pct = u.cpu_percent.unwrap();
        assert!(
            pct > 10.0 && pct <= 100.0,
            "50 ms of CPU in >= 50 ms: {pct}"
        );
        // An agent no longer listed is forgotten.
        assert!(s.sample(&[]).is_empty());
        assert!(s.state.is_empty());
    }

    #[test]
    fn proc_fallback_when_the_leaves_lack_controllers() {
        let t = tempfile::tempdir().unwrap();
        let pr = t.path().join("proc");
        proc_entry(&pr, 20, 500, (100, 50), 256);
        proc_entry(&pr, 21, 600, (10, 10), 128);
        // A leaf with only the core files (this host's cgroup2 has no cpu or
        // memory controller, but cpu.stat is core: drop it to force proc).
        let h = leaf(
            t.path(),
            "session_high",
            "codex-20",
            &[("cgroup.procs", "20\n21\n".into())],
        );
        let mut s = Sampler::new(opts(&pr), Gpu::unavailable("test"));
        let a = AgentRef {
            id: "codex-20".into(),
            leaves: vec![h.clone()],
            pids: vec![(20, 500)],
        };
        let hz = procfs::clock_ticks_per_sec();
        let page = procfs::page_size();
        let u = s.sample(std::slice::from_ref(&a))["codex-20"].clone();
        assert_eq!(u.sources.cpu, Source::Proc);
        assert_eq!(u.sources.memory, Source::Proc);
        assert_eq!(u.sources.oom_kills, Source::None);
        assert_eq!(u.oom_kills, None, "unknown, not zero");
        assert_eq!(u.cpu_usec, 170 * 1_000_000 / hz);
        assert_eq!(u.memory_bytes, 384 * page);
        assert_eq!(u.anon_bytes, None, "no anon/file split from /proc/PID/stat");
        assert_eq!(u.tasks, Some(6));
        assert_eq!(u.open_fds, Some(8));
        assert_eq!(u.sessions[0].memory_bytes, 384 * page);
        // Process 21 exits: its CPU time stays counted, the RSS peak stays.
        fs::remove_dir_all(pr.join("21")).unwrap();
        fs::write(h.join("cgroup.procs"), "20\n").unwrap();
        proc_entry(&pr, 20, 500, (200, 50), 64);
        let u = s.sample(std::slice::from_ref(&a))["codex-20"].clone();
        assert_eq!(u.cpu_usec, 270 * 1_000_000 / hz, "monotonic across exits");
        assert_eq!(u.memory_bytes, 64 * page);
        assert_eq!(u.memory_peak_bytes, Some(384 * page));
        // A reused pid (other start time) is not this agent's process.
        let b = AgentRef {
            id: "x-20".into(),
            leaves: vec![],
            pids: vec![(20, 999)],
        };
        let u = s.sample(&[b])["x-20"].clone();
        assert_eq!(u.memory_bytes, 0);
        assert_eq!(s.state.len(), 1, "codex-20 forgotten");
    }

    #[test]
    fn proc_reads_are_capped_per_sweep() {
        let t = tempfile::tempdir().unwrap();
        let pr = t.path().join("proc");
        let mut agents = Vec::new();
        for a in 0..5u32 {
            let mut pids = Vec::new();
            for p in 0..10u32 {
                let pid = 1000 + a * 100 + p;
                proc_entry(&pr, pid, 1, (1, 1), 1);
                pids.push((pid, 1));
            }
            agents.push(AgentRef {
                id: format!("a-{a}"),
                leaves: vec![],
                pids,
            });
        }
        let mut o = opts(&pr);
        o.max_procs = 25;
        let mut s = Sampler::new(o, Gpu::unavailable("test"));
        let u = s.sample(&agents).clone();
        assert_eq!(s.last_proc_reads(), 25);
        assert_eq!(u.values().filter(|u| u.truncated).count(), 3, "{u:?}");
        // Rotation: the agents left out change from sweep to sweep.
        let first: Vec<bool> = u.values().map(|u| u.truncated).collect();
        let second: Vec<bool> = s.sample(&agents).values().map(|u| u.truncated).collect();
        assert_ne!(first, second);
    }

    /// The daemon runs the sampler on its state-writer thread.
    #[test]
    fn sampler_is_send() {
        fn send<T: Send>() {}
        send::<Sampler>();
    }

    #[test]
    fn config() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.options().interval, Duration::from_secs(2));
        let bad = Config {
            interval_ms: 10,
            ..c.clone()
        };
        assert!(bad.validate().unwrap_err().contains("below 100"));
        let s = Sampler::from_config(&Config { gpu: false, ..c });
        assert_eq!(
            s.gpu_status().to_string(),
            "not available (accounting.gpu: false)"
        );
    }

    #[test]
    fn interval_bounds_the_sweeps() {
        let t = tempfile::tempdir().unwrap();
        let pr = t.path().join("proc");
        proc_entry(&pr, 7, 1, (1, 1), 1);
        let mut o = opts(&pr);
        o.interval = Duration::from_secs(3600);
        let mut s = Sampler::new(o, Gpu::unavailable("test"));
        let a = AgentRef {
            id: "a-7".into(),
            leaves: vec![],
            pids: vec![(7, 1)],
        };
        s.sample(std::slice::from_ref(&a));
        proc_entry(&pr, 7, 1, (1000, 1), 1);
        let u = s.sample(std::slice::from_ref(&a))["a-7"].clone();
        assert_eq!(
            u.cpu_usec,
            2 * 1_000_000 / procfs::clock_ticks_per_sec(),
            "cached"
        );
    }

    #[test]
    fn gpu_memory_mapped_to_agents_by_pid() {
        let t = tempfile::tempdir().unwrap();
        let pr = t.path().join("proc");
        fs::create_dir_all(&pr).unwrap();
        let h = leaf(
            t.path(),
            "session_high",
            "a-1",
            &cg_files(1, 1, 1, 0, "30\n31\n"),
        );
        let l = leaf(
            t.path(),
            "session_high",
            "b-2",
            &cg_files(1, 1, 1, 0, "40\n"),
        );
        let f = FakeGpu::default();
        *f.answer.lock().unwrap() = Ok(vec![
            device(0, &[(31, 1 << 30, Some(70)), (99, 5, None)]),
            device(1, &[(30, 2 << 20, None)]),
        ]);
        let mut s = Sampler::new(opts(&pr), Gpu::with_source(Box::new(f)));
        let agents = [
            AgentRef {
                id: "a-1".into(),
                leaves: vec![h],
                pids: vec![],
            },
            AgentRef {
                id: "b-2".into(),
                leaves: vec![l],
                pids: vec![],
            },
        ];
        let u = s.sample(&agents).clone();
        assert_eq!(u["a-1"].gpu_memory_bytes, Some((1 << 30) + (2 << 20)));
        assert_eq!(u["a-1"].gpu_util_percent, Some(70));
        assert_eq!(u["a-1"].sources.gpu, Source::Nvml);
        assert_eq!(u["b-2"].gpu_memory_bytes, Some(0), "a GPU, none of it used");
        assert!(matches!(s.gpu_status(), crate::GpuStatus::Available { .. }));
    }

    #[test]
    fn exit_record_keeps_the_last_figures() {
        let t = tempfile::tempdir().unwrap();
        let pr = t.path().join("proc");
        fs::create_dir_all(&pr).unwrap();
        let h = leaf(
            t.path(),
            "session_high",
            "a-1",
            &cg_files(9_000_000, 1, 64 << 20, 1, "30\n"),
        );
        let mut s = Sampler::new(opts(&pr), Gpu::unavailable("test"));
        let a = AgentRef {
            id: "a-1".into(),
            leaves: vec![h.clone()],
            pids: vec![],
        };
        s.sample(std::slice::from_ref(&a));
        fs::remove_dir_all(&h).unwrap(); // leaf removed before the exit event
        let r = s.exit(
            &a,
            ExitInfo {
                family: "a".into(),
                root_pid: 1,
                wait_status: Some(9),
                started_at_ms: 0,
                killed_tools: vec![],
            },
        );
        assert_eq!(r.cpu_usec, 9_000_000);
        assert_eq!(r.memory_peak_bytes, Some(64 << 20));
        assert_eq!(r.oom_killed, Some(true));
        assert!(s.usage().is_empty() && s.state.is_empty());
    }

    /// Real processes in /proc: a spinning child's CPU shows up and grows.
    #[test]
    fn real_proc_sampling() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = ProcFs::default().start_ticks(pid).unwrap();
        let mut s = Sampler::new(
            Options {
                interval: Duration::ZERO,
                ..Options::default()
            },
            Gpu::unavailable("test"),
        );
        let a = AgentRef {
            id: "spin-1".into(),
            leaves: vec![],
            pids: vec![(pid, start)],
        };
        s.sample(std::slice::from_ref(&a));
        std::thread::sleep(Duration::from_millis(300));
        let u = s.sample(std::slice::from_ref(&a))["spin-1"].clone();
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(u.sources.cpu, Source::Proc);
        assert!(u.cpu_usec > 0, "{u:?}");
        assert!(u.cpu_percent.unwrap() > 5.0, "a spinning shell: {u:?}");
        assert!(u.memory_bytes > 0);
        assert!(u.open_fds.unwrap() >= 3);
    }
}
