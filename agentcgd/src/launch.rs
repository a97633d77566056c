//! `agentcgd run`: start a command inside its session cgroup, with no window
//! in which it runs outside it.
//!
//! The client asks the daemon, over a unix socket next to the state file, to
//! move the client process itself; once the daemon answers, the client checks
//! /proc/self/cgroup and execs the command, which (and whatever it forks)
//! therefore starts in the session. The daemon trusts only the kernel's
//! SO_PEERCRED: it moves the connecting process and no other, so a user can
//! only ever move their own process; who may ask for session_high is the
//! `user_priority:` setting of agentcgd.yaml. Without a daemon, root moves
//! itself by writing cgroup.procs.
//!
//! Protocol: one JSON line each way. Request `{"priority":"low","family":"x"}`
//! (both optional); reply `{"ok":true,"cgroup":"/agentcg/session_low",...}` or
//! `{"ok":false,"error":"..."}`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::classify::PRIORITY_ENV;
use crate::policy::{FamilyName, Priority};

/// The socket's file name, in the state file's directory.
pub const SOCKET_NAME: &str = "agentcgd.sock";
/// A request line is small; anything longer is refused.
const MAX_REQUEST: u64 = 4096;
/// How long the server waits for a client's request, and for the daemon.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

pub fn socket_path(state: &Path) -> PathBuf {
    state.with_file_name(SOCKET_NAME)
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ask {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<FamilyName>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The cgroup the process is now in, as /proc/PID/cgroup shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
}

impl Reply {
    pub fn error(msg: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: Some(msg.into()),
            ..Reply::default()
        }
    }
}

/// One request, as the daemon's thread receives it: the peer's identity
/// comes from the kernel (SO_PEERCRED), never from the request.
#[derive(Debug)]
pub struct Request {
    pub pid: u32,
    pub uid: u32,
    pub gids: Vec<u32>,
    pub ask: Ask,
    pub reply: mpsc::SyncSender<Reply>,
}

pub type Sink = Box<dyn Fn(Request) + Send>;

/// Serve the socket on its own thread; each request goes to `sink` (the
/// daemon's channel) and its answer comes back on the request's `reply`.
pub fn serve(path: &Path, sink: Sink) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        crate::statefile::ensure_dir(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    // Anyone may connect: the peer credentials decide what they may do.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    std::thread::Builder::new()
        .name("launch".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(s) => {
                        if let Err(e) = handle(s, &sink) {
                            log::debug!("launch request: {e}");
                        }
                    }
                    Err(e) => log::warn!("launch socket: {e}"),
                }
            }
        })?;
    Ok(())
}

fn handle(stream: UnixStream, sink: &Sink) -> std::io::Result<()> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let cred = getsockopt(&stream, PeerCredentials).map_err(std::io::Error::from)?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line)?;
    let reply = match serde_json::from_str::<Ask>(line.trim()) {
        Err(e) => Reply::error(format!("bad request: {e}")),
        Ok(ask) if cred.pid() <= 0 => {
            let _ = ask;
            Reply::error("no peer process")
        }
        Ok(ask) => {
            let pid = cred.pid() as u32;
            let (tx, rx) = mpsc::sync_channel(1);
            sink(Request {
                pid,
                uid: cred.uid(),
                gids: groups_of(pid, cred.gid()),
                ask,
                reply: tx,
            });
            rx.recv_timeout(IO_TIMEOUT)
                .unwrap_or_else(|_| Reply::error("the daemon did not answer"))
        }
    };
    let mut out = serde_json::to_string(&reply).unwrap_or_default();
    out.push('\n');
    (&stream).write_all(out.as_bytes())
}

/// The peer's groups: its gid and /proc/PID/status supplementary groups.
fn groups_of(pid: u32, gid: u32) -> Vec<u32> {
    let mut v = vec![gid];
    if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        if let Some(l) = s.lines().find_map(|l| l.strip_prefix("Groups:")) {
            v.extend(l.split_whitespace().filter_map(|g| g.parse::<u32>().ok()));
        }
    }
    v
}

/// Options of `agentcgd run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub priority: Option<Priority>,
    pub family: Option<FamilyName>,
    pub state: PathBuf,
    pub root: PathBuf,
    pub cmd: Vec<String>,
}

/// Ask the daemon to move this process, check that it moved, then exec.
/// Returns only on failure.
pub fn run(opts: RunOptions) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let Some((prog, args)) = opts.cmd.split_first() else {
        return Err("run: no command given (agentcgd run [OPTIONS] -- CMD [ARGS...])".into());
    };
    let sock = socket_path(&opts.state);
    let ask = Ask {
        priority: opts.priority,
        family: opts.family.clone(),
    };
    let reply = match UnixStream::connect(&sock) {
        Ok(s) => request(s, &ask)
            .map_err(|e| format!("run: asking agentcgd at {}: {e}", sock.display()))?,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            move_self_without_daemon(&opts).map_err(|why| {
                format!(
                    "run: agentcgd is not running (no socket at {}: {e}) and {why}; \
                     refusing to start {prog} outside its cgroup",
                    sock.display()
                )
            })?
        }
        Err(e) => return Err(format!("run: cannot connect to {}: {e}", sock.display())),
    };
    if !reply.ok {
        return Err(format!(
            "run: agentcgd refused: {}",
            reply.error.as_deref().unwrap_or("no reason given")
        ));
    }
    if let Some(want) = &reply.cgroup {
        let now = crate::cgroup::cgroup_of(std::process::id()).unwrap_or_default();
        if &now != want {
            return Err(format!(
                "run: agentcgd answered {want} but this process is in {now}; not starting {prog}"
            ));
        }
    }
    log::debug!("run: in {:?}, exec {prog}", reply.cgroup);
    let mut cmd = std::process::Command::new(prog);
    cmd.args(args);
    // An explicit choice travels with the command, so the daemon keeps it
    // when the command's own rule matches at exec; without one the
    // policies decide from then on.
    if let Some(p) = opts.priority {
        cmd.env(PRIORITY_ENV, p.to_string());
    }
    let err = cmd.exec();
    Err(format!("run: cannot run {prog}: {err}"))
}

fn request(mut s: UnixStream, ask: &Ask) -> std::io::Result<Reply> {
    s.set_read_timeout(Some(IO_TIMEOUT * 2))?;
    let mut line = serde_json::to_string(ask).map_err(std::io::Error::other)?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer)?;
    serde_json::from_str(answer.trim()).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad reply {answer:?}: {e}"),
        )
    })
}

/// Root without a daemon: write our own pid to the session's cgroup.procs.
fn move_self_without_daemon(opts: &RunOptions) -> Result<Reply, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("only root can move itself without it".into());
    }
    let priority = opts.priority.unwrap_or(Priority::High);
    let dir = opts.root.join(priority.session());
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string())
        .map_err(|e| format!("cannot write {}: {e}", procs.display()))?;
    Ok(Reply {
        ok: true,
        cgroup: Some(crate::cgroup::rel_path(&dir)),
        priority: Some(priority),
        family: opts.family.as_ref().map(|f| f.to_string()),
        error: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_sits_beside_the_state_file() {
        assert_eq!(
            socket_path(Path::new("/run/agentcgd/state.json")),
            Path::new("/run/agentcgd/agentcgd.sock")
        );
    }

    #[test]
    fn server_passes_kernel_credentials_and_answers() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(SOCKET_NAME);
        serve(
            &path,
            Box::new(|r: Request| {
                let ok = r.ask.family.as_ref().map(|f| f.as_str()) != Some("nope");
                let _ = r.reply.send(if ok {
                    Reply {
                        ok: true,
                        cgroup: Some(format!("/x/{}", r.pid)),
                        priority: r.ask.priority,
                        family: Some(format!("uid{}", r.uid)),
                        error: None,
                    }
                } else {
                    Reply::error("no such family")
                });
            }),
        )
        .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);
        let ask = Ask {
            priority: Some(Priority::Low),
            family: None,
        };
        let r = request(UnixStream::connect(&path).unwrap(), &ask).unwrap();
        assert!(r.ok, "{r:?}");
        assert_eq!(r.cgroup.unwrap(), format!("/x/{}", std::process::id()));
        // SAFETY: getuid has no preconditions.
        assert_eq!(
            r.family.unwrap(),
            format!("uid{}", unsafe { libc::getuid() })
        );
        assert_eq!(r.priority, Some(Priority::Low));
        let bad = Ask {
            family: Some(FamilyName::try_from("nope".to_string()).unwrap()),
            ..Ask::default()
        };
        let r = request(UnixStream::connect(&path).unwrap(), &bad).unwrap();
        assert_eq!(r.error.as_deref(), Some("no such family"));
        // Garbage and unknown fields are refused by the server itself.
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(b"{\"priority\":\"urgent\"}\n").unwrap();
        let mut out = String::new();
        BufReader::new(s).read_line(&mut out).unwrap();
        assert!(out.contains("bad request"), "{out}");
    }
}
