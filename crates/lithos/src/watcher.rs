//! Watches knot pidfds from one thread with epoll (a pidfd becomes readable when its process
//! ends) and reports each end to the supervisor loop.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
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
    epoll: Arc<Epoll>,
    watched: Watched,
    next: AtomicU64,
    tx: mpsc::UnboundedSender<KnotGone>,
}

impl Watcher {
    /// Starts the thread; ends are sent to `tx`.
    pub fn start(tx: mpsc::UnboundedSender<KnotGone>) -> nix::Result<Watcher> {
        let epoll = Arc::new(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?);
        let watched: Watched = Arc::default();
        let (thread_epoll, thread_watched, thread_tx) =
            (epoll.clone(), watched.clone(), tx.clone());
        std::thread::Builder::new()
            .name("knot-watcher".into())
            .spawn(move || {
                let mut events = [EpollEvent::empty(); 32];
                loop {
                    let n = match thread_epoll.wait(&mut events, EpollTimeout::NONE) {
                        Ok(n) => n,
                        Err(nix::errno::Errno::EINTR) => continue,
                        Err(_) => return,
                    };
                    for event in &events[..n] {
                        let entry = thread_watched
                            .lock()
                            .map(|mut w| w.remove(&event.data()))
                            .ok()
                            .flatten();
                        if let Some((name, pid, fd)) = entry {
                            let _ = thread_epoll.delete(&fd);
                            if thread_tx.send(KnotGone { name, pid }).is_err() {
                                return;
                            }
                        }
                    }
                }
            })
            .map_err(|_| nix::errno::Errno::EAGAIN)?;
        Ok(Watcher {
            epoll,
            watched,
            next: AtomicU64::new(1),
            tx,
        })
    }

    /// Reports when the process behind `pidfd` ends.
    pub fn watch(&self, name: &str, pid: u32, pidfd: OwnedFd) {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let event = EpollEvent::new(EpollFlags::EPOLLIN, key);
        if let Ok(mut w) = self.watched.lock() {
            if self.epoll.add(&pidfd, event).is_err() {
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
