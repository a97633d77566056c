//! The netlink proc connector source (CONFIG_PROC_EVENTS): exec and exit
//! notifications carrying pids only; the rest is read from /proc.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;

use crate::{exec_from_proc, Counters, ProcEvent, ProcFs, Sink, POLL_TICK};

const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_EXEC: u32 = 0x0000_0002;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;

const NLMSG_HDRLEN: usize = 16;
const CN_MSG_LEN: usize = 20; // cb_id (8) + seq (4) + ack (4) + len (2) + flags (2)

/// A decoded proc connector message (only the kinds we use).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Message {
    Exec { tgid: u32, pid: u32 },
    Exit { tgid: u32, pid: u32, exit_code: u32 },
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
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
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
    // Receive timeout so the thread notices the stop flag.
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: POLL_TICK.as_micros() as libc::suseconds_t,
    };
    // SAFETY: tv is a valid timeval.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
    Ok(fd)
}

pub(crate) fn spawn(
    mut sink: Sink,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, (anyhow::Error, Sink)> {
    let fd = match open_socket() {
        Ok(fd) => fd,
        Err(e) => return Err((e, sink)),
    };
    let thread = std::thread::Builder::new()
        .name("procmon-netlink".into())
        .spawn(move || {
            let procfs = ProcFs::default();
            let mut buf = vec![0u8; 8192];
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: buf is a valid writable buffer of its length.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n < 0 {
                    let err = io::Error::last_os_error();
                    match err.raw_os_error() {
                        Some(libc::EAGAIN) | Some(libc::EINTR) => {}
                        Some(libc::ENOBUFS) => {
                            counters.lost.fetch_add(1, Ordering::Relaxed);
                            sink(ProcEvent::Lost(0));
                        }
                        _ => {
                            log::error!("proc connector: {err}");
                            return;
                        }
                    }
                    continue;
                }
                match parse(&buf[..n as usize]) {
                    Some(Message::Exec { tgid, pid }) if tgid == pid => {
                        counters.exec.fetch_add(1, Ordering::Relaxed);
                        if let Some(ev) = exec_from_proc(&procfs, tgid) {
                            sink(ev);
                        }
                    }
                    Some(Message::Exit {
                        tgid,
                        pid,
                        exit_code,
                    }) if tgid == pid => {
                        counters.exit.fetch_add(1, Ordering::Relaxed);
                        sink(ProcEvent::Exit {
                            pid: tgid,
                            start_ticks: None,
                            exit_code: Some(exit_code as i32),
                        });
                    }
                    _ => {}
                }
            }
        })
        .expect("spawn procmon thread");
    Ok(thread)
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
        assert_eq!(parse(&event(0x1, &[1, 1])), Some(Message::Other));
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
