//! Last-resort source: diff successive /proc scans. Misses processes that
//! live shorter than the interval; says so by being named `proc_poll`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{Counters, ProcEvent, ProcFs, Sink, POLL_TICK};

/// Events that turn the `before` snapshot (pid -> start) into `now`.
pub(crate) fn diff(
    before: &HashMap<u32, u64>,
    now: &[crate::ProcInfo],
) -> (Vec<ProcEvent>, HashMap<u32, u64>) {
    let mut events = Vec::new();
    let next: HashMap<u32, u64> = now.iter().map(|p| (p.pid, p.start_ticks)).collect();
    for (&pid, &start) in before {
        if next.get(&pid) != Some(&start) {
            events.push(ProcEvent::Exit {
                pid,
                start_ticks: Some(start),
                exit_code: None,
            });
        }
    }
    for p in now {
        if before.get(&p.pid) != Some(&p.start_ticks) {
            events.push(ProcEvent::Exec(p.clone()));
        }
    }
    (events, next)
}

pub(crate) fn spawn(
    mut sink: Sink,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    interval: Duration,
) -> anyhow::Result<JoinHandle<()>> {
    let procfs = ProcFs::default();
    // The consumer does its own start-up scan; start from the present.
    let mut known: HashMap<u32, u64> = procfs
        .scan()?
        .iter()
        .map(|p| (p.pid, p.start_ticks))
        .collect();
    Ok(std::thread::Builder::new()
        .name("procmon-poll".into())
        .spawn(move || {
            let mut next = Instant::now() + interval;
            while !stop.load(Ordering::Relaxed) {
                if Instant::now() < next {
                    std::thread::sleep(POLL_TICK.min(next - Instant::now()));
                    continue;
                }
                next += interval;
                let Ok(now) = procfs.scan() else { continue };
                let (events, snapshot) = diff(&known, &now);
                known = snapshot;
                for ev in events {
                    match ev {
                        ProcEvent::Exec(_) => counters.exec.fetch_add(1, Ordering::Relaxed),
                        _ => counters.exit.fetch_add(1, Ordering::Relaxed),
                    };
                    sink(ev);
                }
            }
        })?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProcInfo;

    fn p(pid: u32, start: u64) -> ProcInfo {
        ProcInfo {
            pid,
            ppid: 1,
            uid: 0,
            comm: "x".into(),
            exe: String::new(),
            argv: vec![],
            start_ticks: start,
            kernel_thread: false,
        }
    }

    #[test]
    fn diff_reports_new_gone_and_reused() {
        let before: HashMap<u32, u64> = [(1, 1), (5, 10), (6, 11)].into();
        let (ev, next) = diff(&before, &[p(1, 1), p(6, 99), p(7, 12)]);
        assert!(ev.contains(&ProcEvent::Exit {
            pid: 5,
            start_ticks: Some(10),
            exit_code: None
        }));
        // pid 6 was reused: the old one exited, a new one appeared.
        assert!(ev.contains(&ProcEvent::Exit {
            pid: 6,
            start_ticks: Some(11),
            exit_code: None
        }));
        assert!(ev.contains(&ProcEvent::Exec(p(6, 99))));
        assert!(ev.contains(&ProcEvent::Exec(p(7, 12))));
        assert_eq!(ev.len(), 4);
        assert_eq!(next.len(), 3);
    }
}
