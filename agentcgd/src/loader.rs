//! The policy loader: reads and parses the policy directory and
//! agentcgd.yaml on its own thread and hands the result to the daemon
//! thread (through its mailbox), so a slow or hostile file never stops
//! placement. It watches the directory with inotify, and the directory's
//! parent too, so a policy directory that is moved away or deleted and
//! created again (a configuration-management tool replacing it, a package
//! upgrade) is watched again and reloaded.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use crate::config::Config;
use crate::policy::{PolicyError, PolicySet};
use crate::trust::FileTrust;

/// Wait this long after a change before loading (editors write files in
/// several steps; a directory is replaced file by file).
const DEBOUNCE: Duration = Duration::from_millis(150);

/// A finished load, for the daemon thread.
pub struct Loaded {
    pub policies: Result<PolicySet, PolicyError>,
    pub config: Result<Config, String>,
    /// Why it was loaded ("SIGHUP", "policy directory changed", ...).
    pub why: &'static str,
    /// How long reading and parsing took (on this thread).
    pub took: Duration,
}

/// Asks the loader thread for a load.
pub struct Loader {
    tx: mpsc::Sender<&'static str>,
}

impl Loader {
    /// Start the loader (and its watcher); `deliver` runs on the loader
    /// thread with each result.
    pub fn spawn(
        policies: PathBuf,
        config: PathBuf,
        trust: FileTrust,
        deliver: Box<dyn Fn(Loaded) + Send>,
    ) -> std::io::Result<Loader> {
        let (tx, rx) = mpsc::channel::<&'static str>();
        let wtx = tx.clone();
        let dir = policies.clone();
        std::thread::Builder::new()
            .name("policy-watch".into())
            .spawn(move || watch(&dir, wtx))?;
        std::thread::Builder::new()
            .name("policy-load".into())
            .spawn(move || {
                while let Ok(mut why) = rx.recv() {
                    // Debounce: take every request that follows closely.
                    let mut until = Instant::now() + DEBOUNCE;
                    loop {
                        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                            Ok(w) => {
                                if w == "SIGHUP" {
                                    why = w;
                                }
                                until = Instant::now() + DEBOUNCE;
                            }
                            Err(mpsc::RecvTimeoutError::Timeout) => break,
                            Err(mpsc::RecvTimeoutError::Disconnected) => return,
                        }
                    }
                    let t = Instant::now();
                    let policies = PolicySet::load_dir_with(&policies, trust);
                    let config = Config::load_with(&config, trust).map(|(c, _)| c);
                    deliver(Loaded {
                        policies,
                        config,
                        why,
                        took: t.elapsed(),
                    });
                }
            })?;
        Ok(Loader { tx })
    }

    /// Load again (SIGHUP).
    pub fn request(&self, why: &'static str) {
        let _ = self.tx.send(why);
    }
}

/// What the watcher looks at.
struct Watches {
    ino: Inotify,
    dir: PathBuf,
    name: Option<OsString>,
    dir_wd: Option<WatchDescriptor>,
    parent_wd: Option<WatchDescriptor>,
}

const DIR_MASK: WatchMask = WatchMask::CLOSE_WRITE
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::DELETE)
    .union(WatchMask::CREATE)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF);

const PARENT_MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::ONLYDIR);

impl Watches {
    /// (Re)watch the directory at its path, if it is there now.
    fn rewatch_dir(&mut self) -> bool {
        if let Some(wd) = self.dir_wd.take() {
            // Gone already when the directory was deleted.
            let _ = self.ino.watches().remove(wd);
        }
        match self.ino.watches().add(&self.dir, DIR_MASK) {
            Ok(wd) => {
                self.dir_wd = Some(wd);
                true
            }
            Err(_) => false,
        }
    }
}

/// Watch `dir` for changes and for being replaced; every relevant event
/// asks for a load.
fn watch(dir: &Path, tx: mpsc::Sender<&'static str>) {
    let ino = match Inotify::init() {
        Ok(i) => i,
        Err(e) => {
            log::warn!(
                "cannot watch {} ({e}): reload policies with SIGHUP",
                dir.display()
            );
            return;
        }
    };
    let mut w = Watches {
        ino,
        dir: dir.to_path_buf(),
        name: dir.file_name().map(|n| n.to_os_string()),
        dir_wd: None,
        parent_wd: None,
    };
    if !w.rewatch_dir() {
        log::warn!(
            "cannot watch {}: it is loaded again when it appears, or on SIGHUP",
            dir.display()
        );
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        match w.ino.watches().add(parent, PARENT_MASK) {
            Ok(wd) => w.parent_wd = Some(wd),
            Err(e) => log::warn!(
                "cannot watch {} ({e}): a replaced policy directory needs SIGHUP",
                parent.display()
            ),
        }
    }
    let mut buf = [0u8; 4096];
    loop {
        let events = match w.ino.read_events_blocking(&mut buf) {
            Ok(ev) => ev,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("policy watch failed ({e}): reload policies with SIGHUP");
                return;
            }
        };
        let mut changed = false;
        let mut rewatch = false;
        for ev in events {
            if Some(&ev.wd) == w.parent_wd.as_ref() {
                if ev.name.map(|n| n.to_os_string()) == w.name {
                    rewatch = true;
                }
            } else if Some(&ev.wd) != w.dir_wd.as_ref() {
                // A watch we replaced already: its IN_IGNORED (sent when
                // rewatch_dir removes it) must not trigger another rewatch,
                // which would remove the new watch and loop for good.
                continue;
            } else if ev
                .mask
                .intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::IGNORED)
            {
                rewatch = true;
            } else {
                changed = true;
            }
        }
        if rewatch {
            // The path may hold a new directory (or none yet: the parent
            // watch says when it comes).
            if w.rewatch_dir() {
                log::info!(
                    "policy directory {} replaced: watching the new one",
                    w.dir.display()
                );
            }
            changed = true;
        }
        if changed && tx.send("policy directory changed").is_err() {
            return;
        }
    }
}
