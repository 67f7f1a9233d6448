//! Taking ownership of descriptors a process inherited across `execve` by number (a
//! supervisor that re-executed itself finds its listening sockets this way).

use std::collections::HashSet;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, fcntl};

use crate::error::{FdError, OsReason};

/// Numbers already claimed in this process: a second claim would make two owners.
static CLAIMED: Mutex<Option<HashSet<RawFd>>> = Mutex::new(None);

/// Takes ownership of inherited descriptor `fd`, once per process.
///
/// Refuses stdin, stdout and stderr (std owns them), numbers that are not open, and numbers
/// claimed before. The caller is the one that knows `fd` was inherited and is not owned by
/// anything else in the process (for example because a knot.json or an environment variable
/// written by the previous image names it).
pub fn claim_inherited(fd: RawFd) -> Result<OwnedFd, FdError> {
    if fd <= 2 {
        return Err(FdError::Stdio(fd));
    }
    let mut claimed = CLAIMED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let claimed = claimed.get_or_insert_with(HashSet::new);
    if claimed.contains(&fd) {
        return Err(FdError::AlreadyClaimed(fd));
    }
    // SAFETY: F_GETFD only reads the flags of a descriptor number; it owns nothing.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    fcntl(borrowed, FcntlArg::F_GETFD).map_err(|e| match e {
        Errno::EBADF => FdError::NotOpen(fd),
        e => FdError::Inspect {
            fd,
            reason: OsReason(e),
        },
    })?;
    claimed.insert(fd);
    // SAFETY: the descriptor is open, is not stdio, and this process has not handed it to
    // an owner before (checked above under the lock); the caller vouches it was inherited.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Clears close-on-exec on `fd`: a program this process executes (itself, re-executed)
/// finds it open at the same number.
pub fn keep_across_exec(fd: BorrowedFd<'_>) -> Result<(), FdError> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))
        .map(drop)
        .map_err(|e| FdError::KeepAcrossExec {
            fd: fd.as_raw_fd(),
            reason: OsReason(e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, IntoRawFd};

    #[test]
    fn kept_descriptors_lose_close_on_exec() {
        // std opens everything close-on-exec.
        let (reader, _writer) = std::io::pipe().unwrap();
        let flags = |fd| FdFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFD).unwrap());
        assert!(flags(reader.as_fd()).contains(FdFlag::FD_CLOEXEC));
        keep_across_exec(reader.as_fd()).unwrap();
        assert!(!flags(reader.as_fd()).contains(FdFlag::FD_CLOEXEC));
    }

    #[test]
    fn claims_once_and_refuses_stdio_and_closed_numbers() {
        let (reader, _writer) = std::io::pipe().unwrap();
        let raw = OwnedFd::from(reader).into_raw_fd();
        let owned = claim_inherited(raw).unwrap();
        assert_eq!(owned.as_raw_fd(), raw);
        assert_eq!(
            claim_inherited(raw).unwrap_err().to_string(),
            format!("fd {raw} is already claimed")
        );
        assert!(matches!(claim_inherited(1), Err(FdError::Stdio(1))));
        assert!(matches!(claim_inherited(4000), Err(FdError::NotOpen(4000))));
    }
}
