//! A set of descriptors watched from one thread (epoll): each carries a key, and waiting
//! returns the keys of the ready ones. A pidfd becomes ready when its process ends.

use std::os::fd::BorrowedFd;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

use crate::error::OsReason;

/// Creating, changing or waiting on a readiness set failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadinessError {
    #[error("create readiness set: {0}")]
    Create(OsReason),
    #[error("add fd {fd} to readiness set: {reason}")]
    Add { fd: i32, reason: OsReason },
    #[error("remove fd {fd} from readiness set: {reason}")]
    Remove { fd: i32, reason: OsReason },
    #[error("wait on readiness set: {0}")]
    Wait(OsReason),
}

/// Descriptors watched for being readable, hung up or in error.
#[derive(Debug)]
pub struct ReadySet {
    epoll: Epoll,
}

impl ReadySet {
    pub fn new() -> Result<ReadySet, ReadinessError> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .map_err(|e| ReadinessError::Create(OsReason(e)))?;
        Ok(ReadySet { epoll })
    }

    /// Watches `fd`, reported as `key` when ready. The caller keeps `fd` open while watched.
    pub fn add(&self, fd: BorrowedFd<'_>, key: u64) -> Result<(), ReadinessError> {
        use std::os::fd::AsRawFd;
        self.epoll
            .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, key))
            .map_err(|e| ReadinessError::Add {
                fd: fd.as_raw_fd(),
                reason: OsReason(e),
            })
    }

    /// Stops watching `fd`.
    pub fn remove(&self, fd: BorrowedFd<'_>) -> Result<(), ReadinessError> {
        use std::os::fd::AsRawFd;
        self.epoll.delete(fd).map_err(|e| ReadinessError::Remove {
            fd: fd.as_raw_fd(),
            reason: OsReason(e),
        })
    }

    /// Blocks until at least one watched descriptor is ready; returns up to 32 keys.
    pub fn wait(&self) -> Result<Vec<u64>, ReadinessError> {
        let mut events = [EpollEvent::empty(); 32];
        loop {
            match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => return Ok(events[..n].iter().map(EpollEvent::data).collect()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(ReadinessError::Wait(OsReason(e))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    #[test]
    fn reports_the_keys_of_ready_descriptors_until_removed() {
        let set = ReadySet::new().unwrap();
        let (quiet, _quiet_writer) = std::io::pipe().unwrap();
        let (data, mut writer) = std::io::pipe().unwrap();
        set.add(quiet.as_fd(), 1).unwrap();
        set.add(data.as_fd(), 2).unwrap();
        writer.write_all(b"x").unwrap();
        assert_eq!(set.wait().unwrap(), [2]);
        set.remove(data.as_fd()).unwrap();
        let (hung_up, w) = std::io::pipe().unwrap();
        drop(w);
        set.add(hung_up.as_fd(), 3).unwrap();
        assert_eq!(set.wait().unwrap(), [3]);
        assert!(matches!(
            set.add(hung_up.as_fd(), 4),
            Err(ReadinessError::Add { .. })
        ));
    }
}
