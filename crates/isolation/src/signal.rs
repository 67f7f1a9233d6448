//! Signals to processes by pid, for processes this process holds no pidfd for (pids read
//! from files, processes started by `std::process`); blocking signals of this thread and
//! reading blocked ones from a descriptor.

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::signal::{SigSet, Signal, kill, killpg};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;

use crate::error::OsReason;

/// Signalling a process by pid failed.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// Pids 0 and below name process groups or every process, never one process.
    #[error("pid {0} does not name a single process")]
    NotAProcess(i32),
    /// `kill` failed (no such process, not permitted).
    #[error("send {signal} to pid {pid}: {reason}")]
    Send {
        pid: i32,
        signal: Signal,
        reason: OsReason,
    },
    /// `killpg` failed (no such group, not permitted).
    #[error("send {signal} to process group {pgid}: {reason}")]
    SendGroup {
        pgid: i32,
        signal: Signal,
        reason: OsReason,
    },
    #[error("block signals {signals:?}: {reason}")]
    Block {
        signals: Vec<Signal>,
        reason: OsReason,
    },
    #[error("unblock signals {signals:?}: {reason}")]
    Unblock {
        signals: Vec<Signal>,
        reason: OsReason,
    },
    #[error("open a signal queue for {signals:?}: {reason}")]
    Queue {
        signals: Vec<Signal>,
        reason: OsReason,
    },
}

fn set_of(signals: &[Signal]) -> SigSet {
    let mut set = SigSet::empty();
    for s in signals {
        set.add(*s);
    }
    set
}

/// Blocks `signals` in the calling thread (threads started later inherit the mask; so does
/// a program it executes).
pub fn block(signals: &[Signal]) -> Result<(), SignalError> {
    set_of(signals)
        .thread_block()
        .map_err(|e| SignalError::Block {
            signals: signals.to_vec(),
            reason: OsReason(e),
        })
}

/// Unblocks `signals` in the calling thread; pending ones are delivered now.
pub fn unblock(signals: &[Signal]) -> Result<(), SignalError> {
    set_of(signals)
        .thread_unblock()
        .map_err(|e| SignalError::Unblock {
            signals: signals.to_vec(),
            reason: OsReason(e),
        })
}

/// Signals blocked in the calling thread and queued for reading instead of handled
/// (signalfd): readable while one is pending, for polling next to other descriptors.
#[derive(Debug)]
pub struct Queue {
    fd: SignalFd,
}

impl Queue {
    /// Blocks `signals` in the calling thread and opens the queue for them (close-on-exec,
    /// non-blocking).
    pub fn new(signals: &[Signal]) -> Result<Queue, SignalError> {
        block(signals)?;
        let fd = SignalFd::with_flags(
            &set_of(signals),
            SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK,
        )
        .map_err(|e| SignalError::Queue {
            signals: signals.to_vec(),
            reason: OsReason(e),
        })?;
        Ok(Queue { fd })
    }

    /// The next pending signal, or `None` when none is pending (or reading fails).
    pub fn next(&self) -> Option<Signal> {
        loop {
            let info = self.fd.read_signal().ok()??;
            // A number outside nix's list (a real-time signal) is skipped.
            if let Ok(signal) = Signal::try_from(info.ssi_signo as i32) {
                return Some(signal);
            }
        }
    }
}

impl AsFd for Queue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Sends `signal` to process `pid`.
pub fn send(pid: i32, signal: Signal) -> Result<(), SignalError> {
    if pid <= 0 {
        return Err(SignalError::NotAProcess(pid));
    }
    kill(Pid::from_raw(pid), signal).map_err(|e| SignalError::Send {
        pid,
        signal,
        reason: OsReason(e),
    })
}

/// Sends `signal` to every process of group `pgid` (a child started as a group leader and
/// whatever it started in turn).
pub fn send_to_group(pgid: i32, signal: Signal) -> Result<(), SignalError> {
    if pgid <= 0 {
        return Err(SignalError::NotAProcess(pgid));
    }
    killpg(Pid::from_raw(pgid), signal).map_err(|e| SignalError::SendGroup {
        pgid,
        signal,
        reason: OsReason(e),
    })
}

/// Whether process `pid` exists and this process may signal it (`kill` with signal 0).
pub fn is_alive(pid: i32) -> bool {
    pid > 0 && kill(Pid::from_raw(pid), None).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signalled_child_ends_and_is_gone_after_reaping() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(is_alive(pid));
        send(pid, Signal::SIGTERM).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(Signal::SIGTERM as i32)
        );
        // Reaped: the pid is free (reuse within this test would need a pid wrap-around).
        assert!(!is_alive(pid));
    }

    #[test]
    fn a_group_signal_reaches_the_leader_and_its_children() {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let mut leader = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(leader.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let sleeper: i32 = line.trim().parse().unwrap();
        send_to_group(leader.id() as i32, Signal::SIGKILL).unwrap();
        let status = leader.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(Signal::SIGKILL as i32)
        );
        // The orphaned `sleep` got it too: dead (a zombie until its new parent reaps it) or
        // gone. Signal delivery is not instant, hence the bounded wait.
        let dead = || {
            std::fs::read_to_string(format!("/proc/{sleeper}/stat")).map_or(true, |stat| {
                stat.rsplit(") ").next().unwrap().starts_with('Z')
            })
        };
        for _ in 0..1000 {
            if dead() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("sleep {sleeper} outlived its group's SIGKILL");
    }

    #[test]
    fn blocked_signals_queue_until_read() {
        // A thread of its own: the mask is per thread and must not leak into other tests.
        std::thread::spawn(|| {
            let queue = Queue::new(&[Signal::SIGUSR2, Signal::SIGWINCH]).unwrap();
            assert_eq!(queue.next(), None);
            // raise targets this thread, where the signals are blocked.
            nix::sys::signal::raise(Signal::SIGUSR2).unwrap();
            nix::sys::signal::raise(Signal::SIGWINCH).unwrap();
            let mut got = [queue.next(), queue.next()];
            got.sort_by_key(|s| s.map(|s| s as i32));
            assert_eq!(got, [Some(Signal::SIGUSR2), Some(Signal::SIGWINCH)]);
            assert_eq!(queue.next(), None);
            unblock(&[Signal::SIGWINCH]).unwrap();
            // Unblocked SIGWINCH is delivered (default: ignored), no longer queued.
            nix::sys::signal::raise(Signal::SIGWINCH).unwrap();
            assert_eq!(queue.next(), None);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn group_pids_are_refused_and_missing_processes_named() {
        assert!(matches!(
            send(0, Signal::SIGTERM),
            Err(SignalError::NotAProcess(0))
        ));
        assert!(matches!(
            send(-1, Signal::SIGKILL),
            Err(SignalError::NotAProcess(-1))
        ));
        assert!(!is_alive(0));
        // Pid numbers stop well below this on every default kernel configuration.
        let err = send(i32::MAX, Signal::SIGTERM).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("send SIGTERM to pid {}: no such process", i32::MAX)
        );
        assert!(!is_alive(i32::MAX));
        assert!(matches!(
            send_to_group(0, Signal::SIGKILL),
            Err(SignalError::NotAProcess(0))
        ));
    }
}
