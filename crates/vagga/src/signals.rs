//! Forwarding signals vagga receives to the container while a command runs. Ctrl-C reaches
//! the command through the terminal's process group (the container stays in vagga's), so
//! SIGINT is only kept from killing vagga before it can report the command's status.

use std::thread::JoinHandle;

use isolation::Signal;
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::{Handle, Signals};

/// Forwards TERM, HUP, QUIT, USR1 and USR2 to pids until dropped.
#[derive(Debug)]
pub struct Forwarder {
    handle: Option<Handle>,
    thread: Option<JoinHandle<()>>,
}

impl Forwarder {
    pub fn start(pid: i32) -> Forwarder {
        Self::start_many(vec![pid])
    }

    pub fn start_many(pids: Vec<i32>) -> Forwarder {
        let Ok(mut signals) = Signals::new([SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGINT])
        else {
            return Forwarder {
                handle: None,
                thread: None,
            };
        };
        let handle = signals.handle();
        let thread = std::thread::spawn(move || {
            for sig in signals.forever() {
                if sig == SIGINT {
                    continue;
                }
                let Ok(signal) = Signal::try_from(sig) else {
                    continue;
                };
                for pid in &pids {
                    let _ = isolation::signal::send(*pid, signal);
                }
            }
        });
        Forwarder {
            handle: Some(handle),
            thread: Some(thread),
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.close();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
