//! The leaf remover: a thread of its own that removes the leaves the
//! registry gave up, in batches at most [`REMOVE_EVERY`] apart, so that the
//! placing thread never waits behind a batch of rmdirs. (On the
//! development host a thousand leaves, what a second of 1000 new agents a
//! second leaves behind, took the placing thread 30-150 ms: the p99 of
//! placement at that rate; docs/benchmarks-placement.md.)
//!
//! What the kernel serializes stays: a cgroup's teardown (the rmdir and
//! the work it queues) holds the hierarchy's kernfs lock, which the
//! placer's mkdir of a new leaf and its path lookups take too.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use super::REMOVE_EVERY;

pub struct Remover {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    queue: Mutex<Queue>,
    cv: Condvar,
    /// Told after a batch that removed something (the daemon publishes
    /// its counter).
    on_batch: Box<dyn Fn() + Send + Sync>,
}

#[derive(Default)]
struct Queue {
    /// Given up, for the next batch (a set: the placer asks whether a
    /// leaf it opens is here for every new leaf).
    doomed: HashSet<PathBuf>,
    /// Refused by the kernel in this batch: tried again with the next.
    refused: Vec<PathBuf>,
    /// The leaf whose rmdir is in flight.
    claimed: Option<PathBuf>,
    /// When the next batch may run (None: at once).
    next_batch: Option<Instant>,
    removed: u64,
    stop: bool,
}

impl Remover {
    pub fn spawn(on_batch: Box<dyn Fn() + Send + Sync>) -> io::Result<Remover> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            cv: Condvar::new(),
            on_batch,
        });
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("leaf-remover".into())
            .spawn(move || run(&sh))?;
        Ok(Remover {
            shared,
            thread: Some(thread),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.shared.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remove `dir` with the next batch.
    pub fn doom(&self, dir: PathBuf) {
        self.lock().doomed.insert(dir);
        self.shared.cv.notify_all();
    }

    /// `dir` is wanted again (a leaf given up and decided again before its
    /// batch): out of the removals; if its rmdir is in flight, once that
    /// returned (the caller then finds it gone, or still there).
    pub fn take_back(&self, dir: &Path) {
        let mut q = self.lock();
        while q.claimed.as_deref() == Some(dir) {
            q = self.shared.cv.wait(q).unwrap_or_else(|e| e.into_inner());
        }
        q.doomed.remove(dir);
        q.refused.retain(|d| d != dir);
    }

    /// The tree is gone, and every leaf with it.
    pub fn forget_all(&self) {
        let mut q = self.lock();
        q.doomed.clear();
        q.refused.clear();
    }

    /// Leaves removed since the start.
    pub fn removed(&self) -> u64 {
        self.lock().removed
    }

    /// Leaves waiting for a batch.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        let q = self.lock();
        q.doomed.len() + q.refused.len()
    }

    /// When the next batch may run, if one waits.
    #[cfg(test)]
    pub fn next_batch(&self) -> Option<Instant> {
        let q = self.lock();
        (!q.doomed.is_empty()).then(|| q.next_batch.unwrap_or_else(Instant::now))
    }

    /// Wait until no batch is due or running; then [`Remover::removed`].
    #[cfg(test)]
    pub fn removed_when_idle(&self) -> u64 {
        loop {
            {
                let q = self.lock();
                let due = !q.doomed.is_empty() && q.next_batch.is_none_or(|t| t <= Instant::now());
                if !due && q.claimed.is_none() {
                    return q.removed;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

impl Drop for Remover {
    /// What is queued is removed before the thread ends.
    fn drop(&mut self) {
        self.lock().stop = true;
        self.shared.cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(sh: &Shared) {
    let lock = || sh.queue.lock().unwrap_or_else(|e| e.into_inner());
    let mut q = lock();
    loop {
        if q.doomed.is_empty() {
            if q.stop {
                return;
            }
            q = sh.cv.wait(q).unwrap_or_else(|e| e.into_inner());
            continue;
        }
        let now = Instant::now();
        if let Some(at) = q.next_batch.filter(|t| *t > now && !q.stop) {
            q = sh
                .cv
                .wait_timeout(q, at - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            continue;
        }
        q.next_batch = Some(now + REMOVE_EVERY);
        let mut removed = 0u64;
        // One at a time under the lock's eye: what take_back() takes out
        // meanwhile is not removed, and a leaf queued meanwhile goes too.
        while let Some(dir) = q.doomed.iter().next().cloned() {
            q.doomed.remove(&dir);
            q.claimed = Some(dir.clone());
            drop(q);
            let r = std::fs::remove_dir(&dir);
            q = lock();
            q.claimed = None;
            match r {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // Tried again with the next batch, populated or not (its
                // watch is gone, so nothing else would remove it): an
                // exiting task can keep a cgroup busy (EBUSY, and listed
                // in cgroup.procs) for a while after `populated 0`, someone
                // may have written a pid into it since, or a cgroup made
                // inside holds it.
                Err(e) => {
                    log::debug!("leaf {} not removed: {e}: trying again", dir.display());
                    q.refused.push(dir);
                }
            }
            sh.cv.notify_all();
        }
        // When stopping, a refused leaf stays.
        let refused = std::mem::take(&mut q.refused);
        if !q.stop {
            q.doomed.extend(refused);
        }
        q.removed += removed;
        log::debug!(
            "leaf remover: {removed} leaves removed in {:.1} ms, {} to try again",
            now.elapsed().as_secs_f64() * 1e3,
            q.doomed.len()
        );
        if removed > 0 {
            drop(q);
            (sh.on_batch)();
            q = lock();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory given up, then wanted again before its batch, is not
    /// removed; one given up twice is removed once. (Plain directories:
    /// the remover only rmdirs.)
    #[test]
    fn taken_back_stays_and_doomed_twice_goes_once() {
        let tmp = tempfile::tempdir().unwrap();
        let [first, back, twice] = ["first", "back", "twice"].map(|n| tmp.path().join(n));
        for d in [&first, &back, &twice] {
            std::fs::create_dir(d).unwrap();
        }
        let r = Remover::spawn(Box::new(|| {})).unwrap();
        // The first batch runs at once; the next is REMOVE_EVERY later.
        r.doom(first.clone());
        let after_first = r.removed_when_idle();
        r.doom(back.clone());
        r.doom(twice.clone());
        r.doom(twice.clone());
        r.take_back(&back);
        let queued = r.queued();
        std::thread::sleep(REMOVE_EVERY + std::time::Duration::from_millis(200));
        let after_second = r.removed_when_idle();
        assert_eq!(after_first, 1, "the first batch did not run at once");
        assert!(!first.exists());
        assert_eq!(
            queued, 1,
            "the taken-back leaf stayed queued, or the twice-doomed one counted twice"
        );
        assert!(back.is_dir(), "a leaf taken back was removed");
        assert!(!twice.exists());
        assert_eq!(after_second, 2);
        assert_eq!(r.queued(), 0);
    }
}
