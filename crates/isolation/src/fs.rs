//! File system calls std has no wrapper for.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

use crate::error::OsReason;

/// A file system call failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// `utimensat` failed.
    #[error("set times of {}: {reason}", path.display())]
    SetTimes { path: PathBuf, reason: OsReason },
}

/// Sets the access and modification times of `path` itself: a symlink gets its own times
/// (std's `File::set_times` needs an open file, which a symlink cannot be).
pub fn set_times(path: &Path, accessed: SystemTime, modified: SystemTime) -> Result<(), FsError> {
    utimensat(
        AT_FDCWD,
        path,
        &timespec(accessed),
        &timespec(modified),
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| FsError::SetTimes {
        path: path.to_owned(),
        reason: OsReason(e),
    })
}

/// The kernel's form of `time`; before the epoch the seconds are negative and the
/// nanoseconds still count forward.
fn timespec(time: SystemTime) -> TimeSpec {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => TimeSpec::from_duration(after),
        Err(before) => {
            let before = before.duration();
            let secs = -(before.as_secs() as i64);
            match before.subsec_nanos() {
                0 => TimeSpec::new(secs, 0),
                nanos => TimeSpec::new(secs - 1, i64::from(1_000_000_000 - nanos)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sets_a_symlinks_own_times_and_leaves_its_target_alone() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let target_before = std::fs::metadata(&target).unwrap().modified().unwrap();
        let accessed = UNIX_EPOCH + Duration::new(1_000, 5);
        let modified = UNIX_EPOCH - Duration::new(86_400, 250_000_000);
        set_times(&link, accessed, modified).unwrap();
        let meta = std::fs::symlink_metadata(&link).unwrap();
        assert_eq!(meta.accessed().unwrap(), accessed);
        assert_eq!(meta.modified().unwrap(), modified);
        assert_eq!(
            std::fs::metadata(&target).unwrap().modified().unwrap(),
            target_before
        );
    }

    #[test]
    fn a_missing_path_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = set_times(&missing, UNIX_EPOCH, UNIX_EPOCH).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "set times of {}: no such file or directory",
                missing.display()
            )
        );
    }
}
