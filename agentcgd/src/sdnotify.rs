//! systemd's readiness and watchdog protocol (sd_notify(3)): datagrams of
//! `KEY=VALUE` lines to the socket in $NOTIFY_SOCKET. Without the variable
//! (not started by systemd with Type=notify) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

pub struct Notifier {
    sock: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    /// Ping interval: half of WATCHDOG_USEC, when the watchdog is ours.
    watchdog: Option<Duration>,
    last_ping: Option<Instant>,
}

impl Notifier {
    /// From NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID.
    pub fn from_env() -> Notifier {
        let sock = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            use std::os::linux::net::SocketAddrExt;
            use std::os::unix::ffi::OsStrExt;
            use std::os::unix::net::SocketAddr;
            let b = path.as_bytes();
            let addr = match b.first() {
                Some(b'@') => SocketAddr::from_abstract_name(&b[1..]).ok()?,
                Some(b'/') => SocketAddr::from_pathname(std::path::Path::new(&path)).ok()?,
                _ => {
                    log::warn!("NOTIFY_SOCKET {path:?} is neither a path nor abstract: ignored");
                    return None;
                }
            };
            match UnixDatagram::unbound() {
                Ok(s) => Some((s, addr)),
                Err(e) => {
                    log::warn!("cannot create the notify socket: {e}");
                    None
                }
            }
        });
        let ours = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && ours && sock.is_some())
            .map(|u| Duration::from_micros(u / 2));
        Notifier {
            sock,
            watchdog,
            last_ping: None,
        }
    }

    fn send(&self, msg: &str) {
        if let Some((s, addr)) = &self.sock {
            if let Err(e) = s.send_to_addr(msg.as_bytes(), addr) {
                log::debug!("sd_notify {msg:?}: {e}");
            }
        }
    }

    /// Start-up is complete: the tree exists and events flow.
    pub fn ready(&self, status: &str) {
        self.send(&format!(
            "READY=1\nMAINPID={}\nSTATUS={status}",
            std::process::id()
        ));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    /// How often the main loop must pass by for the watchdog, if at all.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Called from the main loop on every pass: pings the watchdog when
    /// half its interval has passed. A stuck main loop stops the pings and
    /// systemd restarts the service.
    pub fn watchdog_tick(&mut self) {
        let Some(every) = self.watchdog else { return };
        if self.last_ping.is_none_or(|t| t.elapsed() >= every) {
            self.send("WATCHDOG=1");
            self.last_ping = Some(Instant::now());
        }
    }
}
