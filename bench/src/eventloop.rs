//! agentcg-bench-eventloop: the daemon's event-loop choice, measured.
//!
//! `agentcg-bench-eventloop --loop epoll|tokio [--rate 1000] [--count 3000]`
//!
//! A producer thread writes to an eventfd on an absolute schedule (RATE per
//! second, COUNT events), stamping each event with CLOCK_MONOTONIC just
//! before its write. The consumer thread waits for the fd the way the daemon
//! could: `epoll` is a plain `epoll_wait` loop on the fd (nix, as the
//! daemon's own loop), `tokio` a current-thread runtime with `AsyncFd`
//! (what the design card suggests). On each wake-up the consumer reads the
//! eventfd counter and takes every event written since, like records in a
//! ring buffer. It prints one JSON object: wake-up latency (write to the
//! consumer's handling, p50/p99/max in µs), the consumer thread's CPU time
//! per event (CLOCK_THREAD_CPUTIME_ID: the loop's own cost with a handler
//! that does nothing) and its context switches per event.
//!
//! `--loop epoll-move` is the floor of a placing daemon: the same epoll
//! loop, whose handler does per event what issue 7 asks of a placement
//! and nothing else: `pidfd_open` of a process, one read of its
//! `/proc/PID/stat` (the PID-reuse guard), its pid written to a
//! `cgroup.procs` kept open (two cgroups made under the cgroup2 mount, in
//! turn), `pidfd_send_signal(0)`, close. The process is a `sleep` child.
//! Needs root. Its CPU per event is what any daemon that wakes per event
//! and moves one process pays on this host, with no decision at all.

use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn mono_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Voluntary + involuntary context switches of the calling thread.
fn thread_switches() -> u64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is a valid rusage.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    (ru.ru_nvcsw + ru.ru_nivcsw) as u64
}

struct Shared {
    sent: Vec<AtomicU64>,
    written: AtomicU64,
}

/// What the consumer saw.
#[derive(Default)]
struct Seen {
    lat_ns: Vec<u64>,
    wakeups: u64,
}

impl Seen {
    /// Take the events written since the last call.
    fn take(&mut self, sh: &Shared) {
        let now = mono_ns();
        let upto = sh.written.load(Ordering::Acquire) as usize;
        for i in self.lat_ns.len()..upto.min(sh.sent.len()) {
            let s = sh.sent[i].load(Ordering::Acquire);
            self.lat_ns.push(now.saturating_sub(s));
        }
        self.wakeups += 1;
    }
}

/// The epoll loop; with `floor`, one guarded move per event taken.
fn consume_epoll(
    fd: &EventFd,
    sh: &Shared,
    count: usize,
    mut floor: Option<&mut MoveFloor>,
) -> Seen {
    let ep = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).expect("epoll");
    ep.add(fd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, 1))
        .expect("epoll add");
    let mut events = [EpollEvent::empty(); 8];
    let mut seen = Seen::default();
    while seen.lat_ns.len() < count {
        let n = ep
            .wait(&mut events, EpollTimeout::from(1000u16))
            .unwrap_or(0);
        if n == 0 {
            continue;
        }
        let _ = fd.read();
        let before = seen.lat_ns.len();
        seen.take(sh);
        if let Some(f) = floor.as_deref_mut() {
            for _ in before..seen.lat_ns.len() {
                f.place();
            }
        }
    }
    seen
}

/// Two cgroups to move a process between, made for the run and removed
/// after it; the moved process is a child that sleeps.
struct MoveFloor {
    dir: std::path::PathBuf,
    procs: [std::fs::File; 2],
    child: std::process::Child,
    stat: std::path::PathBuf,
    moves: usize,
}

impl MoveFloor {
    fn new() -> Result<Self, String> {
        let dir = cgroupfs::find_mount()
            .ok_or("no cgroup2 mount")?
            .join(format!("agentcg-bench-eventloop-{}", std::process::id()));
        let open = |name: &str| -> Result<std::fs::File, String> {
            let d = dir.join(name);
            std::fs::create_dir_all(&d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
            std::fs::OpenOptions::new()
                .write(true)
                .open(d.join("cgroup.procs"))
                .map_err(|e| format!("{}/cgroup.procs: {e}", d.display()))
        };
        let procs = [open("a")?, open("b")?];
        let child = std::process::Command::new("sleep")
            .arg("3600")
            .spawn()
            .map_err(|e| format!("sleep: {e}"))?;
        let stat = format!("/proc/{}/stat", child.id()).into();
        Ok(MoveFloor {
            dir,
            procs,
            child,
            stat,
            moves: 0,
        })
    }

    /// One guarded move: pidfd, stat, write, alive?, close.
    fn place(&mut self) {
        use std::io::{Read, Write};
        let pid = self.child.id();
        // SAFETY: plain syscalls on a pid and the fd they return.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) } as i32;
        let mut buf = [0u8; 1024];
        if let Ok(mut f) = std::fs::File::open(&self.stat) {
            let _ = f.read(&mut buf);
        }
        let _ = write!(self.procs[self.moves % 2], "{pid}");
        self.moves += 1;
        if pidfd >= 0 {
            // SAFETY: signal 0 only checks; the fd is ours and closed once.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd,
                    0,
                    std::ptr::null::<u8>(),
                    0,
                );
                libc::close(pidfd);
            }
        }
    }
}

impl Drop for MoveFloor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for d in ["a", "b", ""] {
            let _ = std::fs::remove_dir(self.dir.join(d));
        }
    }
}

fn consume_tokio(fd: EventFd, sh: &Shared, count: usize) -> Seen {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        // SAFETY: the EventFd owns its descriptor, which stays open and
        // the same until the AsyncFd (its owner now) is dropped.
        let afd = unsafe { tokio::io::unix::AsyncFd::register(fd) }.expect("AsyncFd");
        let mut seen = Seen::default();
        while seen.lat_ns.len() < count {
            let mut guard = afd.readable().await.expect("readable");
            match guard.get_inner().read() {
                Ok(_) => seen.take(sh),
                Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                Err(e) => panic!("eventfd read: {e}"),
            }
        }
        seen
    })
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

fn main() -> ExitCode {
    let mut which = String::from("epoll");
    let (mut rate, mut count) = (1000.0f64, 3000usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next();
        match (a.as_str(), v) {
            ("--loop", Some(v)) if ["epoll", "tokio", "epoll-move"].contains(&v.as_str()) => {
                which = v
            }
            ("--rate", Some(v)) if v.parse::<f64>().is_ok_and(|r| r > 0.0) => {
                rate = v.parse().unwrap()
            }
            ("--count", Some(v)) if v.parse::<usize>().is_ok_and(|c| c > 0) => {
                count = v.parse().unwrap()
            }
            _ => {
                eprintln!(
                    "usage: agentcg-bench-eventloop --loop epoll|tokio|epoll-move [--rate PER_SECOND] [--count N]"
                );
                return ExitCode::from(2);
            }
        }
    }
    let mut floor = match which.as_str() {
        "epoll-move" => match MoveFloor::new() {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("agentcg-bench-eventloop: --loop epoll-move (needs root): {e}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let fd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .expect("eventfd");
    // The producer writes through its own descriptor of the same eventfd:
    // the consumer may close its one as soon as it has seen the last event.
    let wfd = fd.as_fd().try_clone_to_owned().expect("dup eventfd");
    let sh = Arc::new(Shared {
        sent: (0..count).map(|_| AtomicU64::new(0)).collect(),
        written: AtomicU64::new(0),
    });
    let producer = {
        let sh = sh.clone();
        std::thread::spawn(move || {
            // Precise sleeps: no timer slack for this thread.
            // SAFETY: plain prctl.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
            let t0 = Instant::now() + Duration::from_millis(50);
            let one = 1u64.to_ne_bytes();
            for i in 0..count {
                let at = t0 + Duration::from_secs_f64(i as f64 / rate);
                if let Some(d) = at.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
                sh.sent[i].store(mono_ns(), Ordering::Release);
                sh.written.store(i as u64 + 1, Ordering::Release);
                let _ = nix::unistd::write(&wfd, &one);
            }
        })
    };
    let (cpu0, sw0, t0) = (
        clock_ns(libc::CLOCK_THREAD_CPUTIME_ID),
        thread_switches(),
        Instant::now(),
    );
    let seen = match which.as_str() {
        "tokio" => consume_tokio(fd, &sh, count),
        _ => consume_epoll(&fd, &sh, count, floor.as_mut()),
    };
    let (cpu1, sw1, wall) = (
        clock_ns(libc::CLOCK_THREAD_CPUTIME_ID),
        thread_switches(),
        t0.elapsed(),
    );
    producer.join().expect("producer");
    let mut lat = seen.lat_ns;
    lat.sort_unstable();
    let n = lat.len() as f64;
    println!(
        "{{\"loop\":\"{which}\",\"rate\":{rate},\"count\":{count},\"wall_s\":{:.3},\"wakeups\":{},\"p50_us\":{:.1},\"p99_us\":{:.1},\"max_us\":{:.1},\"cpu_us_per_event\":{:.2},\"switches_per_event\":{:.2}}}",
        wall.as_secs_f64(),
        seen.wakeups,
        pct(&lat, 0.50),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(0) as f64 / 1000.0,
        (cpu1 - cpu0) as f64 / 1000.0 / n,
        (sw1 - sw0) as f64 / n,
    );
    ExitCode::SUCCESS
}
