//! Running one action: its own process group, a clean environment, the
//! configured user, a timeout after which the whole group is killed.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Output kept per run (the tail).
pub const OUTPUT_TAIL: usize = 2048;

pub(crate) struct Spec<'a> {
    pub argv: &'a [String],
    pub env: Vec<(String, String)>,
    /// uid, gid, supplementary groups; None: run with the daemon's own.
    pub creds: Option<(u32, u32, Vec<u32>)>,
    pub timeout: Duration,
}

#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub pid: Option<u32>,
    /// `exit:N` or `signal:NAME`.
    pub exit: Option<String>,
    pub success: bool,
    pub killed_by_timeout: bool,
    pub killed_by_stop: bool,
    pub output: String,
    pub error: Option<String>,
}

pub(crate) fn exit_string(st: std::process::ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit:{c}"),
        (None, Some(s)) => format!("signal:{}", signal_name(s)),
        _ => "unknown".into(),
    }
}

pub fn signal_name(s: i32) -> String {
    nix::sys::signal::Signal::try_from(s)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| s.to_string())
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open has no memory effects; a valid fd is owned by us.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn killpg(pgid: u32) {
    // SAFETY: kill(2) on the process group we created for this run.
    unsafe { libc::kill(-(pgid as i32), libc::SIGKILL) };
}

/// Run `spec`; `stop()` is polled at least every 100 ms and, when true,
/// kills the group like a timeout does. `started(pid)` is called once the
/// child runs.
pub(crate) fn run(spec: Spec, stop: &dyn Fn() -> bool, started: &mut dyn FnMut(u32)) -> Outcome {
    let mut out = Outcome::default();
    let (r, w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            out.error = Some(format!("pipe: {e}"));
            return out;
        }
    };
    let w2 = match w.try_clone() {
        Ok(w2) => w2,
        Err(e) => {
            out.error = Some(format!("dup: {e}"));
            return out;
        }
    };
    let mut cmd = Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::from(w))
        .stderr(Stdio::from(w2))
        // Its own process group: the timeout kills everything it started.
        .process_group(0);
    if let Some((uid, gid, groups)) = spec.creds {
        // SAFETY: only async-signal-safe syscalls between fork and exec;
        // `groups` was allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let spawned = cmd.spawn();
    // Drop our copies of the pipe's write end, or EOF never comes.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            out.error = Some(format!("cannot run {}: {e}", spec.argv[0]));
            return out;
        }
    };
    let pid = child.id();
    out.pid = Some(pid);
    started(pid);
    let pidfd = pidfd_open(pid);
    // SAFETY: fcntl on a pipe fd we own.
    unsafe {
        let fl = libc::fcntl(r.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(r.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    let mut reader = Some(std::fs::File::from(r));
    let mut tail: Vec<u8> = Vec::new();
    let drain = |reader: &mut Option<std::fs::File>, tail: &mut Vec<u8>| {
        let mut buf = [0u8; 4096];
        loop {
            let Some(f) = reader.as_mut() else { return };
            match f.read(&mut buf) {
                Ok(0) => {
                    *reader = None;
                    return;
                }
                Ok(n) => {
                    tail.extend_from_slice(&buf[..n]);
                    if tail.len() > OUTPUT_TAIL {
                        tail.drain(..tail.len() - OUTPUT_TAIL);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return, // WouldBlock
            }
        }
    };
    let deadline = Instant::now() + spec.timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) => {}
            Err(e) => {
                out.error = Some(format!("wait: {e}"));
                killpg(pid);
                break child.wait().ok();
            }
        }
        let now = Instant::now();
        if now >= deadline || stop() {
            if now >= deadline {
                out.killed_by_timeout = true;
            } else {
                out.killed_by_stop = true;
            }
            killpg(pid);
            break child.wait().ok();
        }
        let wait_ms = (deadline - now).min(Duration::from_millis(100)).as_millis() as i32;
        let mut fds = Vec::with_capacity(2);
        if let Some(p) = &pidfd {
            fds.push(libc::pollfd {
                fd: p.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if let Some(f) = &reader {
            fds.push(libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if fds.is_empty() {
            std::thread::sleep(Duration::from_millis(wait_ms.max(1) as u64));
        } else {
            // SAFETY: fds is a valid array of pollfd for its length.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms.max(1)) };
        }
        drain(&mut reader, &mut tail);
    };
    drain(&mut reader, &mut tail);
    if let Some(st) = status {
        out.success = st.success();
        out.exit = Some(exit_string(st));
    }
    out.output = String::from_utf8_lossy(&tail).into_owned();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout_ms: u64) -> Outcome {
        let argv = vec!["/bin/sh".to_string(), "-c".into(), script.into()];
        run(
            Spec {
                argv: &argv,
                env: vec![("X".into(), "y".into())],
                creds: None,
                timeout: Duration::from_millis(timeout_ms),
            },
            &|| false,
            &mut |_| {},
        )
    }

    #[test]
    fn exit_codes_output_and_clean_env() {
        let o = sh(
            "echo out; echo err >&2; echo \"X=$X HOME=${HOME-unset}\"; exit 3",
            5000,
        );
        assert_eq!(o.exit.as_deref(), Some("exit:3"));
        assert!(!o.success && !o.killed_by_timeout);
        assert!(o.output.contains("out\nerr\n"), "{:?}", o.output);
        assert!(o.output.contains("X=y HOME=unset"), "{:?}", o.output);
        let o = sh("kill -SEGV $$", 5000);
        assert_eq!(o.exit.as_deref(), Some("signal:SIGSEGV"));
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let d = tempfile::tempdir().unwrap();
        let pidf = d.path().join("bg");
        // A background grandchild that ignores nothing and holds the pipe.
        let o = sh(
            &format!("sleep 300 & echo $! > {}; sleep 300", pidf.display()),
            300,
        );
        assert!(o.killed_by_timeout, "{o:?}");
        assert_eq!(o.exit.as_deref(), Some("signal:SIGKILL"));
        let bg: i32 = std::fs::read_to_string(&pidf)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild was in the group: it is gone (or a zombie of init).
        let gone = (0..100).any(|_| {
            let st = std::fs::read_to_string(format!("/proc/{bg}/stat")).unwrap_or_default();
            let dead = st.is_empty() || st.split(") ").nth(1).is_some_and(|s| s.starts_with('Z'));
            if !dead {
                std::thread::sleep(Duration::from_millis(20));
            }
            dead
        });
        assert!(gone, "background child {bg} survived the timeout");
    }

    #[test]
    fn missing_program_is_an_error_not_a_panic() {
        let argv = vec!["/nonexistent/prog".to_string()];
        let o = run(
            Spec {
                argv: &argv,
                env: vec![],
                creds: None,
                timeout: Duration::from_secs(1),
            },
            &|| false,
            &mut |_| {},
        );
        assert!(o.error.unwrap().contains("/nonexistent/prog"));
        assert!(o.pid.is_none());
    }
}
