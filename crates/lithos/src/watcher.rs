//! Watches knot pidfds from one thread with epoll (a pidfd becomes readable when its process
//! ends) and reports each end to the supervisor loop.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use isolation::readiness::ReadySet;
use tokio::sync::mpsc;

/// A knot ended.
#[derive(Debug)]
pub struct KnotGone {
    pub name: String,
    pub pid: u32,
}

type Watched = Arc<Mutex<HashMap<u64, (String, u32, OwnedFd)>>>;

/// The watcher thread's handle.
#[derive(Debug)]
pub struct Watcher {
    set: Arc<ReadySet>,
    watched: Watched,
    next: AtomicU64,
    tx: mpsc::UnboundedSender<KnotGone>,
}

impl Watcher {
    /// Starts the thread; ends are sent to `tx`.
    pub fn start(tx: mpsc::UnboundedSender<KnotGone>) -> std::io::Result<Watcher> {
        let set = Arc::new(ReadySet::new().map_err(std::io::Error::other)?);
        let watched: Watched = Arc::default();
        let (thread_set, thread_watched, thread_tx) = (set.clone(), watched.clone(), tx.clone());
        std::thread::Builder::new()
            .name("knot-watcher".into())
            .spawn(move || {
                loop {
                    let Ok(keys) = thread_set.wait() else {
                        return;
                    };
                    for key in keys {
                        let entry = thread_watched
                            .lock()
                            .map(|mut w| w.remove(&key))
                            .ok()
                            .flatten();
                        if let Some((name, pid, fd)) = entry {
                            let _ = thread_set.remove(fd.as_fd());
                            if thread_tx.send(KnotGone { name, pid }).is_err() {
                                return;
                            }
                        }
                    }
                }
            })?;
        Ok(Watcher {
            set,
            watched,
            next: AtomicU64::new(1),
            tx,
        })
    }

    /// Reports when the process behind `pidfd` ends.
    pub fn watch(&self, name: &str, pid: u32, pidfd: OwnedFd) {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut w) = self.watched.lock() {
            if self.set.add(pidfd.as_fd(), key).is_err() {
                // Cannot watch it: treat it as ended so the loop looks at it now.
                let _ = self.tx.send(KnotGone {
                    name: name.to_owned(),
                    pid,
                });
                return;
            }
            w.insert(key, (name.to_owned(), pid, pidfd));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_a_child_that_ends() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let watcher = Watcher::start(tx).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pidfd = isolation::pidfd::open(child.id() as i32).unwrap();
        watcher.watch("demo/w.0", child.id(), pidfd);
        let gone = rx.blocking_recv().unwrap();
        assert_eq!(gone.name, "demo/w.0");
        assert_eq!(gone.pid, child.id());
        child.wait().unwrap();
    }
}
