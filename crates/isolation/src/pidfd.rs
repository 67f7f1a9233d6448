//! Process file descriptors for processes this process did not start (adoption after a
//! supervisor restart): open one by pid, signal through it, copy a descriptor out of it.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::signal::Signal;

use crate::error::{OsReason, PidfdError};

/// Opens a pidfd for `pid`; it stays bound to that process even if the pid is reused later.
pub fn open(pid: i32) -> Result<OwnedFd, PidfdError> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = Errno::result(ret).map_err(|e| PidfdError::Open {
        pid,
        reason: OsReason(e),
    })?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `signal` to the process behind `pidfd`.
pub fn send_signal(pidfd: BorrowedFd<'_>, signal: Signal) -> Result<(), PidfdError> {
    // SAFETY: pidfd_send_signal with a valid pidfd, a signal number and no siginfo.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    Errno::result(ret)
        .map(drop)
        .map_err(|e| PidfdError::Signal {
            signal,
            reason: OsReason(e),
        })
}

/// Copies descriptor number `fd` of the process behind `pidfd` into this process
/// (close-on-exec). Needs ptrace access to that process (root over its own children).
pub fn get_fd(pidfd: BorrowedFd<'_>, fd: RawFd) -> Result<OwnedFd, PidfdError> {
    // SAFETY: pidfd_getfd with a valid pidfd, a descriptor number and no flags.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    let copy = Errno::result(ret).map_err(|e| PidfdError::GetFd {
        fd,
        reason: OsReason(e),
    })?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(copy as RawFd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn copies_a_descriptor_out_of_a_child_and_signals_it() {
        let (mut reader, writer) = std::io::pipe().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stdout(std::process::Stdio::from(writer))
            .spawn()
            .unwrap();
        let pidfd = open(child.id() as i32).unwrap();
        let mut copy = std::fs::File::from(get_fd(pidfd.as_fd(), 1).unwrap());
        copy.write_all(b"through the copy").unwrap();
        drop(copy);
        send_signal(pidfd.as_fd(), Signal::SIGKILL).unwrap();
        child.wait().unwrap();
        let mut out = String::new();
        reader.read_to_string(&mut out).unwrap();
        assert_eq!(out, "through the copy");
    }

    #[test]
    fn a_missing_process_is_named() {
        // Pid numbers stop well below this on every default kernel configuration.
        let err = open(i32::MAX).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("open pidfd of pid {}: no such process", i32::MAX)
        );
    }
}
