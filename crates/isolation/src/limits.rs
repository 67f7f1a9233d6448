//! Resource limits of this process.

use std::io;

use nix::errno::Errno;
use nix::sys::resource::{Resource, getrlimit, setrlimit};

use crate::error::OsReason;

/// Reading or setting a resource limit failed.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// `getrlimit(RLIMIT_NOFILE)` failed.
    #[error("read the open files limit: {0}")]
    ReadOpenFiles(OsReason),
    /// `setrlimit(RLIMIT_NOFILE)` failed (above the hard limit without privilege).
    #[error("set the open files limit to {limit}: {reason}")]
    SetOpenFiles { limit: u64, reason: OsReason },
}

/// The soft and hard limits on open file descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub soft: u64,
    pub hard: u64,
}

/// This process's limits on open file descriptors.
pub fn open_files() -> Result<OpenFiles, LimitError> {
    getrlimit(Resource::RLIMIT_NOFILE)
        .map(|(soft, hard)| OpenFiles { soft, hard })
        .map_err(|e| LimitError::ReadOpenFiles(OsReason(e)))
}

/// Sets both the soft and the hard limit on open file descriptors to `limit`.
pub fn set_open_files(limit: u64) -> Result<(), LimitError> {
    setrlimit(Resource::RLIMIT_NOFILE, limit, limit).map_err(|e| LimitError::SetOpenFiles {
        limit,
        reason: OsReason(e),
    })
}

/// Whether `error` is EMFILE or ENFILE: the process or the system has no descriptor left
/// (std has no stable `ErrorKind` for either).
pub fn is_out_of_descriptors(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(code) if code == Errno::EMFILE as i32 || code == Errno::ENFILE as i32
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_match_the_kernels_record_and_running_out_is_recognised() {
        let limits = open_files().unwrap();
        let table = std::fs::read_to_string("/proc/self/limits").unwrap();
        let line = table
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[3].parse::<u64>().unwrap(), limits.soft);
        assert_eq!(fields[4].parse::<u64>().unwrap(), limits.hard);

        // A child lowers its own limit and runs out: the limit is enforced, and the error
        // of the open that hit it is recognised (the test process keeps its limits).
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "limits::tests::child_runs_out",
                "--include-ignored",
                "--nocapture",
            ])
            .env("ISOLATION_LIMITS_CHILD", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ran out at 16"),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    #[ignore = "run by limits_match_the_kernels_record_and_running_out_is_recognised"]
    fn child_runs_out() {
        if std::env::var_os("ISOLATION_LIMITS_CHILD").is_none() {
            return;
        }
        set_open_files(16).unwrap();
        assert_eq!(open_files().unwrap(), OpenFiles { soft: 16, hard: 16 });
        let mut files = Vec::new();
        let error = loop {
            match std::fs::File::open("/dev/null") {
                Ok(f) => files.push(f),
                Err(e) => break e,
            }
        };
        assert!(is_out_of_descriptors(&error), "{error}");
        let highest = std::os::fd::AsRawFd::as_raw_fd(files.last().unwrap());
        println!("ran out at {}", highest + 1);
        assert!(!is_out_of_descriptors(&io::Error::from(
            io::ErrorKind::NotFound
        )));
    }
}
