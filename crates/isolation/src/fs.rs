//! File system calls std has no wrapper for.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, OFlag, OpenHow, ResolveFlag, open, openat, openat2};
use nix::sys::stat::{Mode, UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

use crate::error::OsReason;

/// A file system call failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// `utimensat` failed.
    #[error("set times of {}: {reason}", path.display())]
    SetTimes { path: PathBuf, reason: OsReason },
    /// `open(O_DIRECTORY)` failed (missing, not a directory, not permitted).
    #[error("open directory {}: {reason}", path.display())]
    OpenDir { path: PathBuf, reason: OsReason },
    /// Opening a path inside a root directory failed, or was refused.
    #[error("open {} inside a root: {reason}", path.display())]
    OpenInRoot { path: PathBuf, reason: OsReason },
}

impl FsError {
    /// The OS error code, for callers that report failures as [`std::io::Error`].
    pub fn raw_os_error(&self) -> i32 {
        let (Self::SetTimes { reason, .. }
        | Self::OpenDir { reason, .. }
        | Self::OpenInRoot { reason, .. }) = self;
        reason.0 as i32
    }

    /// Whether [`open_in_root`] was refused a symlink, a magic link or a path escaping the
    /// root (ELOOP, EXDEV), rather than finding nothing there.
    pub fn is_refused_link(&self) -> bool {
        matches!(
            self,
            Self::OpenInRoot {
                reason: OsReason(Errno::ELOOP | Errno::EXDEV),
                ..
            }
        )
    }
}

/// Opens directory `path` for reading (failing on anything else), to open files inside it.
pub fn open_dir(path: &Path) -> Result<File, FsError> {
    open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(File::from)
    .map_err(|e| FsError::OpenDir {
        path: path.to_owned(),
        reason: OsReason(e),
    })
}

/// Opens `path` (absolute or relative) for reading as if `root_dir` were `/`, following no
/// symlink in the last component and no magic link anywhere: `openat2(RESOLVE_IN_ROOT |
/// RESOLVE_NO_MAGICLINKS)` with `O_NOFOLLOW`.
pub fn open_in_root(root_dir: &File, path: &Path) -> Result<File, FsError> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match openat2(root_dir.as_fd(), path, how) {
        Ok(fd) => Ok(File::from(fd)),
        Err(Errno::ENOSYS) => walk_in_root(root_dir, path),
        Err(e) => Err(e),
    }
    .map_err(|e| FsError::OpenInRoot {
        path: path.to_owned(),
        reason: OsReason(e),
    })
}

/// The fallback for kernels without `openat2`: one component at a time, refusing `..`
/// (EACCES) and every symlink (stricter than `RESOLVE_IN_ROOT`, which may follow links inside
/// the root).
fn walk_in_root(root_dir: &File, path: &Path) -> Result<File, Errno> {
    let names: Vec<&OsStr> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(Ok(name)),
            Component::RootDir | Component::CurDir => None,
            Component::ParentDir | Component::Prefix(_) => Some(Err(Errno::EACCES)),
        })
        .collect::<Result<_, _>>()?;
    let Some((last, dirs)) = names.split_last() else {
        return Err(Errno::EINVAL);
    };
    let mut dir: Option<OwnedFd> = None;
    for name in dirs {
        let parent = dir.as_ref().map_or(root_dir.as_fd(), |d| d.as_fd());
        let next = openat(
            parent,
            *name,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        dir = Some(next);
    }
    let parent = dir.as_ref().map_or(root_dir.as_fd(), |d| d.as_fd());
    let fd = openat(
        parent,
        *last,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
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

    /// `root/d/f` holding "x", `root/l` -> `d`, `root/lf` -> `d/f`.
    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/f"), "x").unwrap();
        std::os::unix::fs::symlink("d", dir.path().join("l")).unwrap();
        std::os::unix::fs::symlink("d/f", dir.path().join("lf")).unwrap();
        dir
    }

    #[test]
    fn opens_inside_the_root_and_refuses_links_in_the_last_component() {
        use std::io::Read;
        let dir = tree();
        let root = open_dir(dir.path()).unwrap();
        let mut text = String::new();
        open_in_root(&root, Path::new("/d/f"))
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "x");
        // `..` at the root stays at the root, as in a chroot.
        assert!(open_in_root(&root, Path::new("/../../d/f")).is_ok());
        let err = open_in_root(&root, Path::new("lf")).unwrap_err();
        assert!(err.is_refused_link(), "{err}");
        assert_eq!(err.raw_os_error(), Errno::ELOOP as i32);
        let err = open_in_root(&root, Path::new("d/missing")).unwrap_err();
        assert!(!err.is_refused_link());
        assert_eq!(
            err.to_string(),
            "open d/missing inside a root: no such file or directory"
        );
    }

    #[test]
    fn the_fallback_walk_refuses_links_and_parents() {
        let dir = tree();
        let root = open_dir(dir.path()).unwrap();
        assert!(walk_in_root(&root, Path::new("/d/f")).is_ok());
        // A symlink where a directory is expected: `O_DIRECTORY | O_NOFOLLOW` gives ENOTDIR.
        assert_eq!(
            walk_in_root(&root, Path::new("l/f")).unwrap_err(),
            Errno::ENOTDIR
        );
        assert_eq!(
            walk_in_root(&root, Path::new("lf")).unwrap_err(),
            Errno::ELOOP
        );
        assert_eq!(
            walk_in_root(&root, Path::new("d/../d/f")).unwrap_err(),
            Errno::EACCES
        );
        assert_eq!(
            walk_in_root(&root, Path::new("/")).unwrap_err(),
            Errno::EINVAL
        );
    }

    #[test]
    fn open_dir_refuses_files() {
        let dir = tree();
        let file = dir.path().join("d/f");
        let err = open_dir(&file).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("open directory {}: not a directory", file.display())
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
