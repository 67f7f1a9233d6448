//! Signals to processes by pid, for processes this process holds no pidfd for (pids read
//! from files, processes started by `std::process`).

use nix::sys::signal::{Signal, kill};
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
    }
}
