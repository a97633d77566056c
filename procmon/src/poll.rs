//! Last-resort source: diff successive /proc scans. Misses processes that
//! live shorter than the interval; says so by being named `proc_poll`.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

use crate::{ProcEvent, ProcFs, Stats};

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
            events.push(ProcEvent::Exec(crate::Exec {
                info: p.clone(),
                origin: crate::Origin::Exec,
                cgroup_id: None,
                ancestor: None,
                argv_truncated: false,
                exe_unresolved: false,
                at_ns: None,
            }));
        }
    }
    (events, next)
}

/// A timer that fires every interval; each expiry is one scan and diff.
pub(crate) struct Source {
    timer: TimerFd,
    procfs: ProcFs,
    known: HashMap<u32, u64>,
    pub(crate) stats: Stats,
}

impl Source {
    pub(crate) fn open(interval: Duration) -> anyhow::Result<Source> {
        let procfs = ProcFs::default();
        // The consumer does its own start-up scan; start from the present.
        let known = procfs
            .scan()?
            .iter()
            .map(|p| (p.pid, p.start_ticks))
            .collect();
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        timer.set(
            Expiration::Interval(TimeSpec::from_duration(interval)),
            TimerSetTimeFlags::empty(),
        )?;
        Ok(Source {
            timer,
            procfs,
            known,
            stats: Stats::default(),
        })
    }

    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.timer.as_fd()
    }

    pub(crate) fn drain(&mut self, out: &mut dyn FnMut(ProcEvent)) {
        // Consume the expiry count; nothing to do if the timer did not fire.
        let mut n = [0u8; 8];
        if nix::unistd::read(self.timer.as_fd().as_raw_fd(), &mut n).is_err() {
            return;
        }
        let Ok(now) = self.procfs.scan() else { return };
        let (events, snapshot) = diff(&self.known, &now);
        self.known = snapshot;
        for ev in events {
            match ev {
                ProcEvent::Exec(_) => {
                    self.stats.exec_seen += 1;
                    self.stats.exec += 1;
                }
                _ => self.stats.exit += 1,
            };
            out(ev);
        }
    }
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
        let execs: Vec<u32> = ev
            .iter()
            .filter_map(|e| match e {
                ProcEvent::Exec(x) => Some(x.info.pid),
                _ => None,
            })
            .collect();
        assert_eq!(execs.len(), 2);
        assert!(execs.contains(&6) && execs.contains(&7));
        assert_eq!(ev.len(), 4);
        assert_eq!(next.len(), 3);
    }
}
