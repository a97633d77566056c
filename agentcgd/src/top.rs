//! `agentcgd top`: a live view of the agents, read from the state file the
//! daemon publishes (readable by any user, so no root needed). One row per
//! agent instance; refreshed every second; keys sort it; `q` quits.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::state::{now_ms, Activity, AgentStatus, State};

/// The column the rows are sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Cpu,
    Memory,
    Gpu,
    Pids,
    Name,
    Idle,
}

impl Sort {
    fn key(c: u8) -> Option<Sort> {
        Some(match c {
            b'c' => Sort::Cpu,
            b'm' => Sort::Memory,
            b'g' => Sort::Gpu,
            b'p' => Sort::Pids,
            b'n' => Sort::Name,
            b'i' => Sort::Idle,
            _ => return None,
        })
    }
    fn name(self) -> &'static str {
        match self {
            Sort::Cpu => "cpu",
            Sort::Memory => "memory",
            Sort::Gpu => "gpu",
            Sort::Pids => "pids",
            Sort::Name => "name",
            Sort::Idle => "idle-for",
        }
    }
}

/// Bytes as B/K/M/G with one decimal above K.
pub fn human(b: u64) -> String {
    const U: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", U[i])
    }
}

fn secs(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn cpu_of(a: &AgentStatus) -> Option<f64> {
    a.usage
        .as_ref()
        .and_then(|u| u.cpu_percent)
        .or(a.cpu_percent)
}

fn idle_for(a: &AgentStatus, now: u64) -> Option<u64> {
    (a.state == Activity::Idle).then(|| now.saturating_sub(a.state_since_ms))
}

/// The screen for one state: header lines then one row per agent, each
/// cut to `width`.
pub fn frame(s: &State, sort: Sort, reverse: bool, width: usize, now: u64) -> Vec<String> {
    let mut agents: Vec<&AgentStatus> = s.agents.iter().collect();
    let mem = |a: &AgentStatus| a.usage.as_ref().map_or(0, |u| u.memory_bytes);
    let gpu = |a: &AgentStatus| a.usage.as_ref().and_then(|u| u.gpu_memory_bytes);
    // Biggest first for figures, a-z for names.
    agents.sort_by(|a, b| {
        let o = match sort {
            Sort::Cpu => cpu_of(b)
                .unwrap_or(-1.0)
                .total_cmp(&cpu_of(a).unwrap_or(-1.0)),
            Sort::Memory => mem(b).cmp(&mem(a)),
            Sort::Gpu => gpu(b).cmp(&gpu(a)),
            Sort::Pids => b.pids.cmp(&a.pids),
            Sort::Name => a.id.cmp(&b.id),
            Sort::Idle => idle_for(b, now).cmp(&idle_for(a, now)),
        };
        o.then_with(|| a.id.cmp(&b.id))
    });
    if reverse {
        agents.reverse();
    }
    let active = s
        .agents
        .iter()
        .filter(|a| a.state == Activity::Active)
        .count();
    let mem_src = s
        .agents
        .iter()
        .find_map(|a| a.usage.as_ref().map(|u| u.sources.memory.to_string()))
        .unwrap_or_else(|| "-".into());
    let mut out = vec![
        format!(
            "agentcgd top - {} agents ({} active), state {} old, memory from {}, gpu: {}",
            s.agents.len(),
            active,
            secs(now.saturating_sub(s.updated_at_ms)),
            mem_src,
            s.gpu
        ),
        format!(
            "sort: {}{}  keys: c cpu  m memory  g gpu  p pids  n name  i idle  r reverse  q quit",
            sort.name(),
            if reverse { " (reversed)" } else { "" }
        ),
        String::new(),
        format!(
            "{:<28} {:<14} {:<8} {:<7} {:>6} {:>8} {:>8} {:>8} {:>5} {:>8}",
            "AGENT", "FAMILY", "SESSION", "STATE", "CPU%", "MEM", "PEAK", "GPU", "PIDS", "IDLE-FOR"
        ),
    ];
    for a in agents {
        let u = a.usage.as_ref();
        let state = match a.state {
            Activity::Active => "active",
            Activity::Idle => "idle",
            Activity::Unknown => "-",
        };
        out.push(format!(
            "{:<28} {:<14} {:<8} {:<7} {:>6} {:>8} {:>8} {:>8} {:>5} {:>8}",
            a.id,
            a.family,
            a.sessions(),
            state,
            cpu_of(a).map_or("-".into(), |c| format!("{c:.1}")),
            u.map_or("-".into(), |u| human(u.memory_bytes)),
            u.and_then(|u| u.memory_peak_bytes)
                .map_or("-".into(), human),
            gpu(a).map_or("-".into(), human),
            a.pids,
            idle_for(a, now).map_or("-".into(), secs),
        ));
    }
    if s.agents.is_empty() {
        out.push("(no agents)".into());
    }
    for l in &mut out {
        if l.chars().count() > width {
            *l = l.chars().take(width).collect();
        }
    }
    out
}

/// Raw terminal mode for the life of the value (keys without Enter, no
/// echo); restored on drop.
struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    fn enter() -> Option<RawMode> {
        // SAFETY: termios is plain data; tcgetattr fills it or fails.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return None;
            }
            let saved = t;
            t.c_lflag &= !(libc::ICANON | libc::ECHO);
            t.c_cc[libc::VMIN] = 0;
            t.c_cc[libc::VTIME] = 0;
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return None;
            }
            Some(RawMode { saved })
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in enter().
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.saved);
        }
        print!("\x1b[?25h\x1b[?1049l");
        let _ = std::io::stdout().flush();
    }
}

fn term_width() -> usize {
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it or fails.
    unsafe {
        let mut w: libc::winsize = std::mem::zeroed();
        if libc::ioctl(1, libc::TIOCGWINSZ, &mut w) == 0 && w.ws_col > 0 {
            return w.ws_col as usize;
        }
    }
    200
}

/// Wait up to `d` for a key on stdin.
fn key(d: Duration) -> Option<u8> {
    let mut p = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, d.as_millis() as i32) };
    if r <= 0 {
        return None;
    }
    let mut b = [0u8; 1];
    // SAFETY: reads at most one byte into b.
    let n = unsafe { libc::read(0, b.as_mut_ptr().cast(), 1) };
    (n == 1).then_some(b[0])
}

fn draw(path: &Path, sort: Sort, reverse: bool) -> String {
    let width = term_width();
    let lines = match State::read(path) {
        Ok(s) => frame(&s, sort, reverse, width, now_ms()),
        Err(e) => vec![format!(
            "agentcgd top: {e} (retrying every second; q quits)"
        )],
    };
    let lines: Vec<String> = lines.into_iter().map(|l| l + "\x1b[K").collect();
    lines.join("\r\n") + "\r\n\x1b[J"
}

/// Run until `q` (or, without a terminal, print one frame).
pub fn run(path: &Path, once: bool) -> Result<(), String> {
    let raw = if once { None } else { RawMode::enter() };
    let Some(_raw) = raw else {
        // No terminal (or --once): one frame, as text.
        let s = State::read(path)?;
        let mut out = std::io::stdout().lock();
        for l in frame(&s, Sort::Cpu, false, usize::MAX, now_ms()) {
            // A closed pipe (`| head`) ends the output, not an error.
            if writeln!(out, "{l}").is_err() {
                break;
            }
        }
        return Ok(());
    };
    let (mut sort, mut reverse) = (Sort::Cpu, false);
    let mut out = std::io::stdout();
    // Alternate screen, hidden cursor.
    print!("\x1b[?1049h\x1b[?25l");
    loop {
        let _ = write!(out, "\x1b[H{}", draw(path, sort, reverse));
        let _ = out.flush();
        let until = Instant::now() + Duration::from_secs(1);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match key(left) {
                Some(b'q') | Some(3) => return Ok(()),
                Some(b'r') => reverse = !reverse,
                Some(c) => match Sort::key(c) {
                    Some(s) => sort = s,
                    None => continue,
                },
                None => break,
            }
            break; // redraw at once after a key
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::AgentStatus;

    fn agent(id: &str, state: Activity, cpu: f64, mem: u64, since: u64) -> AgentStatus {
        AgentStatus {
            id: id.into(),
            family: id.rsplit_once('-').unwrap().0.into(),
            root_pid: 1,
            root_start_ticks: 1,
            started_at_ms: 0,
            cgroups: vec![format!("/agentcg/session_high/{id}")],
            pids: 3,
            state,
            state_since_ms: since,
            transitions: 0,
            history: vec![],
            cpu_percent: None,
            usage: Some(accounting::AgentUsage {
                cpu_percent: Some(cpu),
                memory_bytes: mem,
                memory_peak_bytes: Some(mem * 2),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn rows_sorted_by_the_chosen_column() {
        let s = State {
            updated_at_ms: 10_000,
            agents: vec![
                agent("claude-code-1", Activity::Active, 5.0, 300 << 20, 0),
                agent("aider-2", Activity::Idle, 0.0, 900 << 20, 4_000),
                agent("codex-3", Activity::Active, 80.0, 10 << 20, 0),
            ],
            ..State::default()
        };
        let rows = |sort, rev| -> Vec<String> {
            frame(&s, sort, rev, 200, 70_000)[4..]
                .iter()
                .map(|l| l.split_whitespace().next().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            rows(Sort::Cpu, false),
            ["codex-3", "claude-code-1", "aider-2"]
        );
        assert_eq!(
            rows(Sort::Memory, false),
            ["aider-2", "claude-code-1", "codex-3"]
        );
        assert_eq!(
            rows(Sort::Name, false),
            ["aider-2", "claude-code-1", "codex-3"]
        );
        assert_eq!(
            rows(Sort::Cpu, true),
            ["aider-2", "claude-code-1", "codex-3"]
        );
        let f = frame(&s, Sort::Cpu, false, 200, 70_000);
        assert!(f[0].contains("3 agents (2 active)"), "{}", f[0]);
        let aider = f.iter().find(|l| l.starts_with("aider-2")).unwrap();
        assert!(aider.contains(" idle "), "{aider}");
        assert!(aider.contains("1m06s"), "idle for 66 s: {aider}");
        assert!(
            aider.contains("900.0M") && aider.contains("1.8G"),
            "{aider}"
        );
        assert!(frame(&s, Sort::Cpu, false, 20, 0)
            .iter()
            .all(|l| l.len() <= 20));
    }

    #[test]
    fn sizes() {
        assert_eq!(human(512), "512B");
        assert_eq!(human(1536), "1.5K");
        assert_eq!(human(3 << 30), "3.0G");
        assert_eq!(secs(59_999), "59s");
        assert_eq!(secs(3_600_000), "1h00m");
    }
}
