//! The netlink proc connector source (CONFIG_PROC_EVENTS): exec and exit
//! notifications carrying pids only; the rest is read from /proc.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use anyhow::Context;

use crate::{exec_from_proc, ProcEvent, ProcFs, Stats};

const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_FORK: u32 = 0x0000_0001;
const PROC_EVENT_EXEC: u32 = 0x0000_0002;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;

const NLMSG_HDRLEN: usize = 16;
const CN_MSG_LEN: usize = 20; // cb_id (8) + seq (4) + ack (4) + len (2) + flags (2)

/// A decoded proc connector message (only the kinds we use).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Message {
    Fork {
        parent_tgid: u32,
        child_pid: u32,
        child_tgid: u32,
    },
    Exec {
        tgid: u32,
        pid: u32,
    },
    Exit {
        tgid: u32,
        pid: u32,
        exit_code: u32,
    },
    Other,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4)
        .map(|s| u32::from_ne_bytes(s.try_into().unwrap()))
}

/// Parse one datagram: nlmsghdr, cn_msg, proc_event.
pub(crate) fn parse(buf: &[u8]) -> Option<Message> {
    let ev = NLMSG_HDRLEN + CN_MSG_LEN;
    // proc_event: what (4), cpu (4), timestamp_ns (8), then the union.
    let what = u32_at(buf, ev)?;
    let data = ev + 16;
    Some(match what {
        // fork_proc_event: parent_pid, parent_tgid, child_pid, child_tgid.
        PROC_EVENT_FORK => Message::Fork {
            parent_tgid: u32_at(buf, data + 4)?,
            child_pid: u32_at(buf, data + 8)?,
            child_tgid: u32_at(buf, data + 12)?,
        },
        PROC_EVENT_EXEC => Message::Exec {
            pid: u32_at(buf, data)?,
            tgid: u32_at(buf, data + 4)?,
        },
        PROC_EVENT_EXIT => Message::Exit {
            pid: u32_at(buf, data)?,
            tgid: u32_at(buf, data + 4)?,
            exit_code: u32_at(buf, data + 8)?,
        },
        _ => Message::Other,
    })
}

fn listen_message() -> Vec<u8> {
    let total = NLMSG_HDRLEN + CN_MSG_LEN + 4;
    let mut m = Vec::with_capacity(total);
    m.extend_from_slice(&(total as u32).to_ne_bytes()); // nlmsg_len
    m.extend_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes()); // nlmsg_type
    m.extend_from_slice(&0u16.to_ne_bytes()); // flags
    m.extend_from_slice(&0u32.to_ne_bytes()); // seq
    m.extend_from_slice(&std::process::id().to_ne_bytes()); // pid
    m.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
    m.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // ack
    m.extend_from_slice(&4u16.to_ne_bytes()); // len
    m.extend_from_slice(&0u16.to_ne_bytes()); // flags
    m.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
    m
}

fn open_socket() -> anyhow::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned immediately.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_CONNECTOR,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("netlink socket");
    }
    // SAFETY: fd is a fresh, valid descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    addr.nl_groups = CN_IDX_PROC;
    // SAFETY: addr is a valid sockaddr_nl of the given length.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error()).context("bind proc connector");
    }
    let msg = listen_message();
    // SAFETY: msg is a valid buffer of its length.
    let rc = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error()).context("subscribe to proc events");
    }
    Ok(fd)
}

pub(crate) struct Source {
    fd: OwnedFd,
    procfs: ProcFs,
    buf: Vec<u8>,
    pub(crate) stats: Stats,
}

impl Source {
    pub(crate) fn open() -> anyhow::Result<Source> {
        Ok(Source {
            fd: open_socket()?,
            procfs: ProcFs::default(),
            buf: vec![0u8; 8192],
            stats: Stats::default(),
        })
    }

    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub(crate) fn drain(&mut self, out: &mut dyn FnMut(ProcEvent)) {
        loop {
            // SAFETY: buf is a valid writable buffer of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => {
                        self.stats.lost += 1;
                        out(ProcEvent::Lost(0));
                        continue;
                    }
                    Some(libc::EAGAIN) => return,
                    _ => {
                        log::error!("proc connector: {err}");
                        return;
                    }
                }
            }
            match parse(&self.buf[..n as usize]) {
                Some(Message::Fork {
                    parent_tgid,
                    child_pid,
                    child_tgid,
                }) if child_pid == child_tgid => out(ProcEvent::Fork {
                    pid: child_tgid,
                    ppid: parent_tgid,
                    start_ticks: None,
                    ancestor: None,
                }),
                Some(Message::Exec { tgid, pid }) if tgid == pid => {
                    self.stats.exec_seen += 1;
                    if let Some(ev) = exec_from_proc(&self.procfs, tgid) {
                        self.stats.exec += 1;
                        out(ev);
                    }
                }
                Some(Message::Exit {
                    tgid,
                    pid,
                    exit_code,
                }) if tgid == pid => {
                    self.stats.exit += 1;
                    out(ProcEvent::Exit {
                        pid: tgid,
                        start_ticks: None,
                        exit_code: Some(exit_code as i32),
                    });
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(what: u32, words: &[u32]) -> Vec<u8> {
        let mut b = vec![0u8; NLMSG_HDRLEN + CN_MSG_LEN];
        b.extend_from_slice(&what.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&0u64.to_ne_bytes());
        for w in words {
            b.extend_from_slice(&w.to_ne_bytes());
        }
        b
    }

    #[test]
    fn parses_exec_and_exit() {
        assert_eq!(
            parse(&event(PROC_EVENT_EXEC, &[10, 10])),
            Some(Message::Exec { tgid: 10, pid: 10 })
        );
        assert_eq!(
            parse(&event(PROC_EVENT_EXIT, &[11, 10, 256, 17])),
            Some(Message::Exit {
                tgid: 10,
                pid: 11,
                exit_code: 256
            })
        );
        assert_eq!(
            parse(&event(PROC_EVENT_FORK, &[5, 5, 9, 9])),
            Some(Message::Fork {
                parent_tgid: 5,
                child_pid: 9,
                child_tgid: 9
            })
        );
        assert_eq!(parse(&event(0x4, &[1, 1])), Some(Message::Other));
        assert_eq!(parse(&[0u8; 8]), None);
    }

    #[test]
    fn listen_message_layout() {
        let m = listen_message();
        assert_eq!(m.len(), 40);
        assert_eq!(u32_at(&m, 0), Some(40));
        assert_eq!(u32_at(&m, 16), Some(CN_IDX_PROC));
        assert_eq!(u32_at(&m, 36), Some(PROC_CN_MCAST_LISTEN));
    }
}
