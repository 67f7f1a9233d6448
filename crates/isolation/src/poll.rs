//! Waiting until any of several descriptors (pipes, sockets, pidfds, signalfds) is ready.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::error::OsReason;

/// Waiting on descriptors failed.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// `poll` failed; interrupted by a signal it fails with `EINTR`.
    #[error("poll {count} descriptors: {reason}")]
    Poll { count: usize, reason: OsReason },
}

/// Waits until at least one of `fds` is readable, hung up or in error, or until `timeout`
/// passes (`None`: no limit). Returns, per descriptor, whether it is ready; all `false`
/// after a timeout.
///
/// The timeout is rounded up to whole milliseconds (a shorter wait would wake too early and
/// make a polling loop spin) and capped at `i32::MAX` milliseconds, about 24 days.
pub fn ready(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> Result<Vec<bool>, PollError> {
    let mut polled: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    let timeout = match timeout {
        Some(t) => {
            PollTimeout::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(PollTimeout::MAX)
        }
        None => PollTimeout::NONE,
    };
    poll(&mut polled, timeout).map_err(|e| PollError::Poll {
        count: fds.len(),
        reason: OsReason(e),
    })?;
    Ok(polled
        .iter()
        .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    #[test]
    fn only_the_descriptor_with_data_or_hangup_is_ready() {
        let (quiet, _quiet_writer) = std::io::pipe().unwrap();
        let (data, mut data_writer) = std::io::pipe().unwrap();
        assert_eq!(
            ready(&[quiet.as_fd(), data.as_fd()], Some(Duration::ZERO)).unwrap(),
            [false, false]
        );
        data_writer.write_all(b"x").unwrap();
        assert_eq!(
            ready(&[quiet.as_fd(), data.as_fd()], None).unwrap(),
            [false, true]
        );
        let (hung_up, writer) = std::io::pipe().unwrap();
        drop(writer);
        assert_eq!(
            ready(
                &[quiet.as_fd(), hung_up.as_fd()],
                Some(Duration::from_secs(60))
            )
            .unwrap(),
            [false, true]
        );
    }
}
