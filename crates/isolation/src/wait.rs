//! Collecting how a child process ended (which also frees its pid).

use std::os::fd::BorrowedFd;

use nix::errno::Errno;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;

use crate::ExitStatus;
use crate::error::OsReason;

/// Waiting for a child failed.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("wait for the process behind pidfd {pidfd}: {reason}")]
    Pidfd { pidfd: i32, reason: OsReason },
    #[error("wait for pid {pid}: {reason}")]
    Pid { pid: i32, reason: OsReason },
}

fn exit_status(status: WaitStatus) -> Option<ExitStatus> {
    match status {
        WaitStatus::Exited(_, code) => Some(ExitStatus::Exited(code)),
        WaitStatus::Signaled(_, signal, _) => Some(ExitStatus::Signaled(signal)),
        _ => None,
    }
}

/// Waits until the child behind `pidfd` ends and reaps it.
pub fn for_pidfd(pidfd: BorrowedFd<'_>) -> Result<ExitStatus, WaitError> {
    use std::os::fd::AsRawFd;
    loop {
        match waitid(Id::PIDFd(pidfd), WaitPidFlag::WEXITED) {
            Err(Errno::EINTR) => continue,
            Err(e) => {
                return Err(WaitError::Pidfd {
                    pidfd: pidfd.as_raw_fd(),
                    reason: OsReason(e),
                });
            }
            // WEXITED reports only ends.
            Ok(status) => {
                if let Some(s) = exit_status(status) {
                    return Ok(s);
                }
            }
        }
    }
}

/// Waits until child `pid` ends and reaps it.
pub fn for_pid(pid: i32) -> Result<ExitStatus, WaitError> {
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Err(Errno::EINTR) => continue,
            Err(e) => {
                return Err(WaitError::Pid {
                    pid,
                    reason: OsReason(e),
                });
            }
            Ok(status) => {
                if let Some(s) = exit_status(status) {
                    return Ok(s);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Signal;
    use std::os::fd::AsFd;

    #[test]
    fn exit_codes_and_signals_are_collected_once() {
        // Started by pid (not std's Child, which would want to reap it itself).
        let start = |args: &[&str]| {
            let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
            crate::spawn::group_leader(std::path::Path::new(&args[0]), &args, &[], &[]).unwrap()
        };
        let pid = start(&["/bin/sh", "-c", "exit 3"]);
        let pidfd = crate::pidfd::open(pid).unwrap();
        assert_eq!(for_pidfd(pidfd.as_fd()).unwrap(), ExitStatus::Exited(3));
        assert!(for_pidfd(pidfd.as_fd()).is_err());

        let pid = start(&["/bin/sleep", "30"]);
        crate::signal::send(pid, Signal::SIGKILL).unwrap();
        assert_eq!(for_pid(pid).unwrap(), ExitStatus::Signaled(Signal::SIGKILL));
        assert_eq!(
            for_pid(pid).unwrap_err().to_string(),
            format!("wait for pid {pid}: no child processes")
        );
    }
}
