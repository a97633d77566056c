//! The controller thread: memory.events watching (both backends), and for
//! the fallback backend the PSI trigger and the pressure state machine.
//!
//! Event driven: it sleeps in poll(2) on the stop pipe, an inotify fd
//! (IN_MODIFY on the memory.events files) and the PSI trigger fd (POLLPRI);
//! the only timeout is the state machine's next deadline (end of a pressure
//! window or the next release step), never a fixed detection interval.

use crate::machine::{Action, Machine, Params, Snapshot};
use crate::{bpf, BackendKind, Config, MemEvent, SessionKind, Sessions, Sink, Status};
use cgroupfs::{Cgroup, Limit, MemoryEvents as Events, MemoryLimit};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub(crate) fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh fds we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A PSI trigger on a memory.pressure file: readable as POLLPRI when the
/// stall threshold is crossed within the window.
pub(crate) fn psi_trigger(file: &Path, trigger: &str) -> std::io::Result<OwnedFd> {
    let c = CString::new(file.as_os_str().as_bytes())?;
    // SAFETY: c is a valid C string.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut buf = trigger.as_bytes().to_vec();
    buf.push(0);
    // SAFETY: buf is valid for buf.len() bytes.
    if unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

fn inotify(files: &[&Path]) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    for f in files {
        let c = CString::new(f.as_os_str().as_bytes())?;
        // SAFETY: valid fd and C string.
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), libc::IN_MODIFY) } < 0 {
            let e = std::io::Error::last_os_error();
            return Err(std::io::Error::new(
                e.kind(),
                format!("inotify on {}: {e}", f.display()),
            ));
        }
    }
    Ok(fd)
}

fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 4096];
    // SAFETY: buf valid; fd is non-blocking.
    while unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

/// memory.events of root/high/low, and the deltas between two readings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TreeEvents {
    pub root: Events,
    pub high: Events,
    pub low: Events,
}

/// What changed between two readings of the tree's memory.events.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Delta {
    pub oom_kill: Vec<(SessionKind, u64)>,
    pub oom: Vec<(SessionKind, u64)>,
    /// session_high hit high/max/oom, or the tree hit its max/oom.
    pub pressure: bool,
}

impl TreeEvents {
    fn read(s: &Sessions) -> TreeEvents {
        let r = |d: &Path| Cgroup::new(d).memory_events().unwrap_or_default();
        TreeEvents {
            root: r(&s.root),
            high: r(&s.high),
            low: r(&s.low),
        }
    }

    /// memory.events are hierarchical: the root's counts include the
    /// sessions'; what the sessions do not explain is the root's own.
    pub fn delta(&self, new: &TreeEvents) -> Delta {
        let d = |a: u64, b: u64| b.saturating_sub(a);
        let split = |f: fn(&Events) -> u64| {
            let h = d(f(&self.high), f(&new.high));
            let l = d(f(&self.low), f(&new.low));
            let r = d(f(&self.root), f(&new.root)).saturating_sub(h + l);
            [
                (SessionKind::High, h),
                (SessionKind::Low, l),
                (SessionKind::Root, r),
            ]
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect::<Vec<_>>()
        };
        let pressure = d(self.high.high, new.high.high) > 0
            || d(self.high.max, new.high.max) > 0
            || d(self.high.oom, new.high.oom) > 0
            || d(self.root.max, new.root.max) > 0
            || d(self.root.oom, new.root.oom) > 0;
        Delta {
            oom_kill: split(|e| e.oom_kill),
            oom: split(|e| e.oom),
            pressure,
        }
    }
}

struct Originals {
    high_low: u64,
    low_high: Limit,
    oom_group: [(bool, Option<String>); 2],
}

struct Ctx {
    s: Sessions,
    status: Arc<Mutex<Status>>,
    sink: Sink,
}

impl Ctx {
    fn err(&self, e: impl std::fmt::Display) {
        log::warn!("memcg: {e}");
        self.status.lock().unwrap().last_error = Some(e.to_string());
    }
    fn write(&self, high: bool, file: &str, v: &str) {
        let d = if high { &self.s.high } else { &self.s.low };
        if let Err(e) = Cgroup::new(d).write_raw(file, v) {
            self.err(e);
        }
    }
}

pub(crate) fn run(
    s: Sessions,
    cfg: Config,
    bpf_verdict: Result<(), String>,
    status: Arc<Mutex<Status>>,
    bpf_view: Arc<Mutex<Option<bpf::CounterView>>>,
    stop: OwnedFd,
    sink: Sink,
) {
    let mut ctx = Ctx { s, status, sink };
    // Backend choice: BPF where detected and it loads and attaches.
    let mut bpf_backend = None;
    let why_not_bpf = match bpf_verdict {
        Ok(()) => match bpf::Backend::load(&ctx.s, &cfg) {
            Ok(b) => {
                *bpf_view.lock().unwrap() = b.counter_view();
                bpf_backend = Some(b);
                String::new()
            }
            Err(e) => format!("memcg_bpf_ops is in the kernel BTF but load/attach failed: {e:#}"),
        },
        Err(e) => e,
    };
    let orig = Originals {
        high_low: Cgroup::new(&ctx.s.high)
            .memory_limit(MemoryLimit::Low)
            .ok()
            .and_then(Limit::bytes)
            .unwrap_or(0),
        low_high: Cgroup::new(&ctx.s.low)
            .memory_limit(MemoryLimit::High)
            .unwrap_or(Limit::Max),
        oom_group: [
            (
                true,
                Cgroup::new(&ctx.s.high).read_raw("memory.oom.group").ok(),
            ),
            (
                false,
                Cgroup::new(&ctx.s.low).read_raw("memory.oom.group").ok(),
            ),
        ],
    };
    // OOM steering: memory.oom.group per session.
    for (high, want) in [(true, cfg.oom_group_high), (false, cfg.oom_group_low)] {
        ctx.write(high, "memory.oom.group", if want { "1" } else { "0" });
    }
    // Watch before the backend line is published (start() returns then).
    let files = [
        ctx.s.root.join("memory.events"),
        ctx.s.high.join("memory.events"),
        ctx.s.low.join("memory.events"),
    ];
    let ino = match inotify(&files.iter().map(|p| p.as_path()).collect::<Vec<_>>()) {
        Ok(fd) => Some(fd),
        Err(e) => {
            ctx.err(e);
            None
        }
    };
    let mut last = TreeEvents::read(&ctx.s);
    let mut machine = None;
    let mut psi = None;
    {
        let mut st = ctx.status.lock().unwrap();
        if bpf_backend.is_some() {
            st.backend = "bpf: memcg_bpf_ops".into();
            st.kind = BackendKind::Bpf;
        } else {
            match psi_trigger(&ctx.s.high.join("memory.pressure"), &cfg.psi_trigger()) {
                Ok(fd) => psi = Some(fd),
                Err(e) => {
                    st.last_error =
                        Some(format!("PSI trigger on session_high/memory.pressure: {e}"))
                }
            }
            st.psi = psi.is_some();
            let srcs = if psi.is_some() {
                "psi+memory.events"
            } else {
                "memory.events (no psi)"
            };
            st.backend = format!("fallback: {srcs} ({why_not_bpf})");
            st.kind = BackendKind::Fallback;
            st.reason = Some(why_not_bpf.clone());
            machine = Some(Machine::new(
                Params::from(&cfg),
                orig.high_low,
                orig.low_high.bytes(),
            ));
        }
        log::info!("memcg: {}", st.backend);
    }

    loop {
        let mut pfds = vec![libc::pollfd {
            fd: stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(i) = &ino {
            pfds.push(libc::pollfd {
                fd: i.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if let Some(p) = &psi {
            pfds.push(libc::pollfd {
                fd: p.as_raw_fd(),
                events: libc::POLLPRI,
                revents: 0,
            });
        }
        let timeout = machine
            .as_ref()
            .and_then(|m| m.deadline())
            .map(|d| {
                d.saturating_duration_since(Instant::now())
                    .as_millis()
                    .min(i32::MAX as u128) as i32
                    + 1
            })
            .unwrap_or(-1);
        // SAFETY: pfds is a valid array of pollfd.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                ctx.err(format!("poll: {e}"));
                break;
            }
            continue;
        }
        if pfds[0].revents != 0 {
            break;
        }
        let mut pressure = false;
        let mut k = 1;
        if let Some(i) = &ino {
            if pfds[k].revents & libc::POLLIN != 0 {
                drain(i);
                let now = TreeEvents::read(&ctx.s);
                let d = last.delta(&now);
                last = now;
                pressure |= d.pressure;
                for (sess, n) in d.oom_kill {
                    ctx.status.lock().unwrap().oom_kill.add(sess, n);
                    (ctx.sink)(MemEvent::OomKill {
                        session: sess,
                        count: n,
                    });
                }
                for (sess, n) in d.oom {
                    ctx.status.lock().unwrap().oom.add(sess, n);
                    (ctx.sink)(MemEvent::Oom {
                        session: sess,
                        count: n,
                    });
                }
            }
            k += 1;
        }
        if psi.is_some() {
            let re = pfds[k].revents;
            if re & libc::POLLPRI != 0 {
                pressure = true;
            }
            if re & (libc::POLLERR | libc::POLLNVAL) != 0 {
                ctx.err("PSI trigger on session_high went away (cgroup removed?)");
                psi = None;
                ctx.status.lock().unwrap().psi = false;
            }
        }
        if let Some(m) = machine.as_mut() {
            let was = m.active();
            let now = Instant::now();
            let mut acts = Vec::new();
            if pressure {
                ctx.status.lock().unwrap().pressure_signals += 1;
                acts.extend(m.pressure(now, snapshot(&ctx.s)));
            }
            acts.extend(m.tick(now));
            apply(&mut ctx, &orig, &acts);
            let is = m.active();
            {
                let mut st = ctx.status.lock().unwrap();
                st.pressure = is;
                st.throttle_episodes = m.episodes;
                st.high_memory_low = m.high_low_set;
                st.low_memory_high = m.low_high_set;
            }
            if was != is {
                (ctx.sink)(MemEvent::Pressure { active: is });
            }
        } else if pressure {
            ctx.status.lock().unwrap().pressure_signals += 1;
        }
    }

    // Stop: restore everything we changed.
    if let Some(m) = machine.as_mut() {
        let acts = m.restore_all();
        apply(&mut ctx, &orig, &acts);
    }
    for (high, v) in &orig.oom_group {
        if let Some(v) = v {
            ctx.write(*high, "memory.oom.group", v.trim());
        }
    }
    let mut st = ctx.status.lock().unwrap();
    if let Some(v) = bpf_view.lock().unwrap().take() {
        // The last reading stays in the status after the detach.
        st.bpf = Some(v.read());
    }
    drop(bpf_backend);
    st.pressure = false;
    st.high_memory_low = None;
    st.low_memory_high = None;
}

fn snapshot(s: &Sessions) -> Snapshot {
    let (high, low) = (Cgroup::new(&s.high), Cgroup::new(&s.low));
    let high_ws = high
        .memory_stat()
        .map(|m| m.working_set())
        .or_else(|_| high.memory_current())
        .unwrap_or(0);
    let low_current = low.memory_current().unwrap_or(0);
    Snapshot {
        high_ws,
        low_current,
    }
}

fn apply(ctx: &mut Ctx, orig: &Originals, acts: &[Action]) {
    for a in acts {
        log::debug!("memcg: {a:?}");
        match *a {
            Action::SetHighLow(v) => ctx.write(true, "memory.low", &v.to_string()),
            Action::RestoreHighLow => ctx.write(true, "memory.low", &orig.high_low.to_string()),
            Action::SetLowHigh(v) => {
                ctx.write(false, "memory.high", &v.to_string());
                (ctx.sink)(MemEvent::Throttle {
                    low_memory_high: Some(v),
                });
            }
            Action::RestoreLowHigh => {
                ctx.write(false, "memory.high", &orig.low_high.render());
                (ctx.sink)(MemEvent::Throttle {
                    low_memory_high: None,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(high: u64, max: u64, oom: u64, oom_kill: u64) -> Events {
        Events {
            high,
            max,
            oom,
            oom_kill,
            ..Default::default()
        }
    }

    #[test]
    fn deltas_split_hierarchical_counts() {
        let a = TreeEvents::default();
        let b = TreeEvents {
            root: ev(0, 5, 3, 3),
            high: ev(0, 0, 1, 1),
            low: ev(4, 0, 1, 1),
        };
        let d = a.delta(&b);
        assert!(d.pressure, "root max rose");
        assert_eq!(
            d.oom_kill,
            vec![
                (SessionKind::High, 1),
                (SessionKind::Low, 1),
                (SessionKind::Root, 1)
            ]
        );
        assert_eq!(b.delta(&b), Delta::default());
        // low hitting its (throttled) memory.high alone is not pressure on high
        let c = TreeEvents {
            root: ev(9, 5, 3, 3),
            high: b.high,
            low: ev(9, 0, 1, 1),
        };
        assert!(!b.delta(&c).pressure);
        let c = TreeEvents {
            high: ev(1, 0, 1, 1),
            ..b
        };
        assert!(b.delta(&c).pressure);
    }

    /// The whole thread against a temp-dir tree: a rise of oom_kill in
    /// session_low's memory.events (inotify) becomes an OomKill event and a
    /// pressure window: session_low's memory.high is throttled, then
    /// released and restored; stop restores oom.group and returns fast.
    #[test]
    fn thread_on_fixture_tree() {
        let t = tempfile::tempdir().unwrap();
        let s = Sessions::under(t.path());
        for d in [&s.root, &s.high, &s.low] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(
                d.join("memory.events"),
                "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
            )
            .unwrap();
            std::fs::write(d.join("memory.current"), "400000000\n").unwrap();
            std::fs::write(d.join("memory.high"), "max\n").unwrap();
            std::fs::write(d.join("memory.low"), "0\n").unwrap();
            std::fs::write(d.join("memory.oom.group"), "0\n").unwrap();
            std::fs::write(
                d.join("memory.stat"),
                "anon 300000000\nfile 0\ninactive_file 0\n",
            )
            .unwrap();
        }
        let cfg = Config {
            backend: crate::BackendChoice::Fallback,
            oom_group_low: true,
            window_ms: 50,
            release_step_ms: 10,
            release_steps: 2,
            ..Default::default()
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let c = crate::Controller::start(s.clone(), &cfg, Box::new(move |e| tx.send(e).unwrap()));
        let st = c.status();
        assert_eq!(st.kind, BackendKind::Fallback, "{st:?}");
        assert!(
            st.backend
                .starts_with("fallback: memory.events (no psi) (memcg.backend: fallback)"),
            "{}",
            st.backend
        );
        assert_eq!(
            std::fs::read_to_string(s.low.join("memory.oom.group")).unwrap(),
            "1"
        );
        std::fs::write(
            s.low.join("memory.events"),
            "low 0\nhigh 0\nmax 0\noom 1\noom_kill 1\n",
        )
        .unwrap();
        std::fs::write(
            s.root.join("memory.events"),
            "low 0\nhigh 0\nmax 1\noom 1\noom_kill 1\n",
        )
        .unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(e) = rx.recv_timeout(std::time::Duration::from_millis(100)) {
                let done = e
                    == MemEvent::Throttle {
                        low_memory_high: None,
                    };
                got.push(e);
                if done {
                    break;
                }
            }
        }
        assert!(
            got.contains(&MemEvent::OomKill {
                session: SessionKind::Low,
                count: 1
            }),
            "{got:?}"
        );
        assert!(
            got.contains(&MemEvent::Pressure { active: true }),
            "{got:?}"
        );
        assert!(
            got.contains(&MemEvent::Throttle {
                low_memory_high: Some(360_000_000)
            }),
            "{got:?}"
        );
        assert!(
            got.contains(&MemEvent::Pressure { active: false }),
            "{got:?}"
        );
        assert_eq!(
            got.last(),
            Some(&MemEvent::Throttle {
                low_memory_high: None
            }),
            "{got:?}"
        );
        assert_eq!(
            std::fs::read_to_string(s.low.join("memory.high")).unwrap(),
            "max"
        );
        assert_eq!(
            std::fs::read_to_string(s.high.join("memory.low")).unwrap(),
            "0"
        );
        let st = c.status();
        assert_eq!(st.oom_kill.low, 1);
        assert_eq!(st.throttle_episodes, 1);
        let t0 = Instant::now();
        c.stop();
        assert!(t0.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(
            std::fs::read_to_string(s.low.join("memory.oom.group")).unwrap(),
            "0"
        );
    }
}
