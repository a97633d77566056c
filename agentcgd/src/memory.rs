//! The memory controller as the daemon holds it: started on the session
//! cgroups, and started again when they are rebuilt (the old one's
//! memory.low, PSI trigger and struct_ops attachment went with them).

use std::path::PathBuf;
use std::sync::Mutex;

use crate::daemon::{Mailbox, Msg};

pub struct Memory {
    inner: Mutex<Option<memcg::Controller>>,
    /// How to start it again (None: it does not run, e.g. --no-memcg).
    start: Option<(PathBuf, memcg::Config, Mailbox)>,
}

impl Memory {
    pub fn start(root: PathBuf, cfg: &memcg::Config, mailbox: Mailbox) -> Memory {
        let c = launch(&root, cfg, &mailbox);
        Memory {
            inner: Mutex::new(Some(c)),
            start: Some((root, cfg.clone(), mailbox)),
        }
    }

    /// A controller that does not run and says why.
    pub fn idle(status: memcg::Status) -> Memory {
        Memory {
            inner: Mutex::new(Some(memcg::Controller::idle(status))),
            start: None,
        }
    }

    pub fn status(&self) -> memcg::Status {
        match &*self.inner.lock().unwrap() {
            Some(c) => c.status(),
            None => memcg::Status::disabled("restarting"),
        }
    }

    /// Stop it and start it on the (rebuilt) sessions.
    pub fn restart(&self) {
        let Some((root, cfg, mailbox)) = &self.start else {
            return;
        };
        let mut g = self.inner.lock().unwrap();
        if let Some(old) = g.take() {
            old.stop();
        }
        let c = launch(root, cfg, mailbox);
        log::info!(
            "memcg restarted on the rebuilt tree: {}",
            c.status().backend
        );
        *g = Some(c);
    }

    pub fn stop(&self) {
        if let Some(c) = self.inner.lock().unwrap().take() {
            c.stop();
        }
    }
}

fn launch(root: &std::path::Path, cfg: &memcg::Config, mailbox: &Mailbox) -> memcg::Controller {
    let mb = mailbox.clone();
    memcg::Controller::start(
        memcg::Sessions::under(root),
        cfg,
        Box::new(move |ev| {
            let _ = mb.send(Msg::Mem(ev));
        }),
    )
}
