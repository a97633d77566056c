//! Prometheus metrics, opt-in (`metrics: {listen: "127.0.0.1:9464"}` in
//! agentcgd.yaml): the exposition is rendered from the same `State` the
//! state file holds, by the state writer, and served by a tiny HTTP listener
//! on a thread of its own (GET /metrics). A fresh registry is built for each
//! snapshot, so the series of an agent that has exited disappear with it.
//!
//! The daemon starts it with [`serve`] when `cfg.metrics` is `Some` and
//! enabled, and the state writer calls [`Handle::publish`] with each state
//! it writes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::state::{Activity, State};

/// The Prometheus text format (0.0.4): what every Prometheus version and
/// `promtool check metrics` read.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A listen address, validated while the YAML is read (so the error has
/// its line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ListenAddr(pub SocketAddr);

impl TryFrom<String> for ListenAddr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
            .map(ListenAddr)
            .map_err(|_| format!("metrics.listen {s:?} is not an IP:port address"))
    }
}

impl From<ListenAddr> for String {
    fn from(a: ListenAddr) -> String {
        a.0.to_string()
    }
}

/// `metrics:` in agentcgd.yaml. Absent: no metrics. Present: served on
/// `listen` (default loopback 127.0.0.1:9464) unless `enabled: false`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub listen: ListenAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: ListenAddr(SocketAddr::from(([127, 0, 0, 1], 9464))),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    family: String,
    agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeafLabels {
    family: String,
    agent: String,
    session: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

type GaugeF = Gauge<f64, std::sync::atomic::AtomicU64>;
type CounterF = Counter<f64, std::sync::atomic::AtomicU64>;

fn gauge(reg: &mut Registry, name: &str, help: &str, v: f64) {
    let g = GaugeF::default();
    g.set(v);
    reg.register(name, help, g);
}

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

/// The exposition of one state snapshot.
pub fn render(s: &State) -> String {
    let mut reg = Registry::with_prefix("agentcgd");

    // Daemon health.
    let ev = Family::<KindLabel, Counter>::default();
    ev.get_or_create(&KindLabel {
        kind: "exec".into(),
    })
    .inc_by(s.procmon.exec_events);
    ev.get_or_create(&KindLabel {
        kind: "exit".into(),
    })
    .inc_by(s.procmon.exit_events);
    reg.register(
        "process_events",
        "Process events received from the event source",
        ev,
    );
    counter(
        &mut reg,
        "lost_events",
        "Process events the source dropped (each triggers a /proc reconcile)",
        s.procmon.lost_events,
    );
    let c = &s.counters;
    counter(
        &mut reg,
        "placements",
        "Processes moved into an agentcg cgroup",
        c.placed,
    );
    counter(
        &mut reg,
        "placement_errors",
        "Placements that failed",
        c.errors,
    );
    counter(
        &mut reg,
        "tree_rebuilds",
        "Times the session cgroups were found missing and rebuilt",
        c.tree_rebuilds,
    );
    counter(
        &mut reg,
        "policy_reloads",
        "Policy reloads",
        c.policy_reloads,
    );
    gauge(
        &mut reg,
        "tracked_processes",
        "Processes the daemon tracks",
        s.processes.len() as f64,
    );
    let sched = Family::<StateLabel, Gauge>::default();
    for st in scheduler::SchedState::ALL {
        sched
            .get_or_create(&StateLabel {
                state: st.as_str().into(),
            })
            .set((st == s.scheduler.state) as i64);
    }
    reg.register(
        "scheduler_state",
        "The sched_ext supervisor's state (1 for the current one)",
        sched,
    );
    counter(
        &mut reg,
        "scheduler_restarts",
        "Times our sched_ext scheduler was attached again",
        s.scheduler.restarts as u64,
    );
    let mem = Family::<StateLabel, Gauge>::default();
    for (k, name) in [
        (memcg::BackendKind::Bpf, "bpf"),
        (memcg::BackendKind::Fallback, "fallback"),
        (memcg::BackendKind::Off, "off"),
    ] {
        mem.get_or_create(&StateLabel { state: name.into() })
            .set((k == s.memcg.kind) as i64);
    }
    reg.register(
        "memcg_backend",
        "The memory protection backend (1 for the one in use)",
        mem,
    );
    gauge(
        &mut reg,
        "gpu_available",
        "NVML answers and has a device (1) or not (0)",
        matches!(s.gpu, accounting::GpuStatus::Available { .. }) as u8 as f64,
    );
    gauge(
        &mut reg,
        "agents",
        "Agent instances now",
        s.agents.len() as f64,
    );

    // Per agent.
    let active = Family::<AgentLabels, Gauge>::default();
    let transitions = Family::<AgentLabels, Counter>::default();
    let gpu = Family::<AgentLabels, Gauge>::default();
    let cpu = Family::<LeafLabels, CounterF>::default();
    let memb = Family::<LeafLabels, Gauge>::default();
    let peak = Family::<LeafLabels, Gauge>::default();
    let oom = Family::<LeafLabels, Counter>::default();
    let procs = Family::<LeafLabels, Gauge>::default();
    for a in &s.agents {
        let l = AgentLabels {
            family: a.family.clone(),
            agent: a.id.clone(),
        };
        match a.state {
            Activity::Active => active.get_or_create(&l).set(1),
            Activity::Idle => active.get_or_create(&l).set(0),
            Activity::Unknown => 0,
        };
        transitions.get_or_create(&l).inc_by(a.transitions);
        let Some(u) = &a.usage else { continue };
        if let Some(g) = u.gpu_memory_bytes {
            gpu.get_or_create(&l).set(g as i64);
        }
        // CPU per session from cpu.stat (monotonic); from /proc the
        // per-session split is not (a tool moved between sessions takes its
        // time along), so the agent's total under session="all".
        if u.sources.cpu == accounting::Source::Proc {
            let ll = LeafLabels {
                family: a.family.clone(),
                agent: a.id.clone(),
                session: "all".into(),
            };
            cpu.get_or_create(&ll).inc_by(u.cpu_usec as f64 / 1e6);
        }
        for su in &u.sessions {
            let ll = LeafLabels {
                family: a.family.clone(),
                agent: a.id.clone(),
                session: su.session.clone(),
            };
            if u.sources.cpu == accounting::Source::Cgroup {
                cpu.get_or_create(&ll).inc_by(su.cpu_usec as f64 / 1e6);
            }
            if u.sources.memory != accounting::Source::None {
                memb.get_or_create(&ll).set(su.memory_bytes as i64);
            }
            if let Some(p) = su.memory_peak_bytes {
                peak.get_or_create(&ll).set(p as i64);
            }
            if let Some(o) = su.oom_kills {
                oom.get_or_create(&ll).inc_by(o);
            }
            procs.get_or_create(&ll).set(su.processes as i64);
        }
    }
    reg.register(
        "agent_active",
        "1 while the agent is active, 0 while idle (absent: no activity monitor)",
        active,
    );
    reg.register(
        "agent_transitions",
        "Activity transitions of the agent",
        transitions,
    );
    reg.register(
        "agent_gpu_memory_bytes",
        "GPU memory held by the agent's processes (NVML)",
        gpu,
    );
    reg.register(
        "agent_cpu_seconds",
        "CPU time of the agent's processes in one session's leaf",
        cpu,
    );
    reg.register(
        "agent_memory_bytes",
        "Memory of the agent in one session's leaf (memory.current, or RSS from /proc)",
        memb,
    );
    reg.register(
        "agent_memory_peak_bytes",
        "Peak memory of the agent in one session's leaf",
        peak,
    );
    reg.register(
        "agent_oom_kills",
        "Processes the kernel OOM-killed in the agent's leaf",
        oom,
    );
    reg.register("agent_processes", "Processes in the agent's leaf", procs);

    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &reg);
    to_prometheus_text(&out)
}

/// prometheus-client writes OpenMetrics, where a counter family `x` has
/// samples `x_total` and the text ends in `# EOF`. The Prometheus text
/// format names the family by its samples (`# HELP x_total`, `# TYPE
/// x_total counter`) and has no EOF marker; everything else (labels,
/// escaping, numbers) is the same for the metric types used here.
fn to_prometheus_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len());
    for l in om.lines() {
        if l == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| l.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{p}{name}_total {tail}"));
                } else {
                    out.push_str(l);
                }
            }
            None => out.push_str(l),
        }
        out.push('\n');
    }
    out
}

/// The running listener; `publish` hands it each new state.
#[derive(Clone)]
pub struct Handle {
    text: Arc<Mutex<String>>,
    addr: SocketAddr,
}

impl Handle {
    /// Render `s` and serve it from now on.
    pub fn publish(&self, s: &State) {
        let t = render(s);
        *self.text.lock().unwrap() = t;
    }

    /// The address actually bound (port 0 picks one).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Bind `addr` and serve GET /metrics on a thread of its own. The thread
/// lives as long as the process (the daemon exits to stop it).
pub fn serve(addr: SocketAddr) -> std::io::Result<Handle> {
    let listener = TcpListener::bind(addr)?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        log::warn!("metrics: listening on {addr}, not loopback: agent names and families are visible to whoever reaches it");
    } else {
        log::info!("metrics: http://{addr}/metrics");
    }
    let text = Arc::new(Mutex::new(String::new()));
    let t = text.clone();
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => {
                        if let Err(e) = answer(c, &t) {
                            log::debug!("metrics: {e}");
                        }
                    }
                    Err(e) => {
                        log::warn!("metrics: accept: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok(Handle { text, addr })
}

/// One request, one answer, close. Bounded: 8 KiB of request, 2 s timeouts.
fn answer(mut c: TcpStream, text: &Mutex<String>) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    c.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 8192];
    let mut n = 0;
    while n < buf.len() {
        let k = c.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let req = String::from_utf8_lossy(&buf[..n]);
    let line = req.lines().next().unwrap_or("");
    let mut it = line.split_whitespace();
    let (method, path) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
    let (status, ctype, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => ("200 OK", CONTENT_TYPE, text.lock().unwrap().clone()),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "agentcgd: try /metrics\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    write!(
        c,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    c.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::AgentStatus;

    fn agent(id: &str, state: Activity, cpu: u64) -> AgentStatus {
        let family = id.split('-').next().unwrap().to_string();
        AgentStatus {
            id: id.into(),
            family,
            root_pid: 1,
            root_start_ticks: 1,
            started_at_ms: 0,
            cgroups: vec![],
            pids: 2,
            state,
            state_since_ms: 0,
            transitions: 3,
            history: vec![],
            cpu_percent: None,
            usage: Some(accounting::AgentUsage {
                cpu_usec: cpu,
                memory_bytes: 1 << 20,
                gpu_memory_bytes: Some(4096),
                sources: accounting::Sources {
                    cpu: accounting::Source::Cgroup,
                    memory: accounting::Source::Proc,
                    ..Default::default()
                },
                sessions: vec![
                    accounting::SessionUsage {
                        session: "session_high".into(),
                        cgroup: format!("/sys/fs/cgroup/agentcg/session_high/{id}"),
                        cpu_usec: cpu,
                        memory_bytes: 1 << 20,
                        memory_peak_bytes: Some(2 << 20),
                        oom_kills: Some(1),
                        processes: 2,
                    },
                    accounting::SessionUsage {
                        session: "session_low".into(),
                        processes: 1,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
        }
    }

    fn state() -> State {
        let mut s = State::default();
        s.procmon.exec_events = 10;
        s.counters.placed = 4;
        s.scheduler.state = scheduler::SchedState::Running;
        s.agents = vec![
            agent("claude-10", Activity::Active, 2_500_000),
            agent("aider-20", Activity::Idle, 0),
        ];
        s
    }

    #[test]
    fn series_from_state() {
        let t = render(&state());
        for want in [
            "agentcgd_process_events_total{kind=\"exec\"} 10",
            "agentcgd_placements_total 4",
            "agentcgd_scheduler_state{state=\"running\"} 1",
            "agentcgd_scheduler_state{state=\"gave_up\"} 0",
            "agentcgd_memcg_backend{state=\"off\"} 1",
            "agentcgd_agent_active{family=\"claude\",agent=\"claude-10\"} 1",
            "agentcgd_agent_active{family=\"aider\",agent=\"aider-20\"} 0",
            "agentcgd_agent_transitions_total{family=\"claude\",agent=\"claude-10\"} 3",
            "agentcgd_agent_cpu_seconds_total{family=\"claude\",agent=\"claude-10\",session=\"session_high\"} 2.5",
            "agentcgd_agent_memory_peak_bytes{family=\"claude\",agent=\"claude-10\",session=\"session_high\"} 2097152",
            "agentcgd_agent_oom_kills_total{family=\"claude\",agent=\"claude-10\",session=\"session_high\"} 1",
            "agentcgd_agent_gpu_memory_bytes{family=\"claude\",agent=\"claude-10\"} 4096",
            "agentcgd_gpu_available 0",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
        assert!(
            t.contains("# TYPE agentcgd_placements_total counter\n"),
            "{t}"
        );
        assert!(!t.contains("# EOF"));
    }

    #[test]
    fn proc_cpu_is_one_agent_total() {
        let mut s = state();
        let u = s.agents[0].usage.as_mut().unwrap();
        u.sources.cpu = accounting::Source::Proc;
        let t = render(&s);
        assert!(
            t.contains("agentcgd_agent_cpu_seconds_total{family=\"claude\",agent=\"claude-10\",session=\"all\"} 2.5"),
            "{t}"
        );
        assert!(!t.contains("agent_cpu_seconds_total{family=\"claude\",agent=\"claude-10\",session=\"session_high\"}"));
    }

    #[test]
    fn exited_agents_series_disappear() {
        let mut s = state();
        assert!(render(&s).contains("agent=\"aider-20\""));
        s.agents.retain(|a| a.id != "aider-20");
        let t = render(&s);
        assert!(!t.contains("aider-20"), "{t}");
        assert!(t.contains("claude-10"));
    }

    /// Debian's promtool (package prometheus) validates the exposition.
    #[test]
    fn promtool_accepts_the_exposition() {
        let Ok(out) = std::process::Command::new("promtool")
            .arg("--version")
            .output()
        else {
            eprintln!("SKIP: promtool not installed (Debian package prometheus; make deps)");
            return;
        };
        assert!(out.status.success());
        let text = render(&state());
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let msg = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool: {msg}\n{text}");
        assert!(!msg.contains("error"), "promtool: {msg}");
    }

    #[test]
    fn http_listener_serves_metrics() {
        let h = serve("127.0.0.1:0".parse().unwrap()).unwrap();
        h.publish(&state());
        let get = |path: &str| {
            let mut c = TcpStream::connect(h.local_addr()).unwrap();
            write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut r = String::new();
            c.read_to_string(&mut r).unwrap();
            r
        };
        let r = get("/metrics");
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        assert!(r.contains("Content-Type: text/plain; version=0.0.4"));
        assert!(r.contains("agentcgd_agent_active{family=\"claude\""));
        assert!(get("/").starts_with("HTTP/1.1 404"));
        // A new snapshot replaces the old.
        h.publish(&State::default());
        assert!(!get("/metrics").contains("claude-10"));
    }

    #[test]
    fn config_defaults_and_errors() {
        let c: MetricsConfig = serde_norway::from_str("{}").unwrap();
        assert!(c.enabled);
        assert_eq!(c.listen.0.to_string(), "127.0.0.1:9464");
        let c: MetricsConfig = serde_norway::from_str("listen: \"[::1]:9100\"").unwrap();
        assert_eq!(c.listen.0.port(), 9100);
        let e = serde_norway::from_str::<MetricsConfig>("listen: localhost").unwrap_err();
        assert!(e.to_string().contains("not an IP:port"), "{e}");
    }
}
