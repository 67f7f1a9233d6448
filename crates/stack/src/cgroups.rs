//! Removing the cgroups lithos created for this stack once lithos_tree has stopped (it
//! leaves its empty `<cgroup-name>` directories behind in every hierarchy).

use std::path::{Path, PathBuf};

/// Why a cgroup could not be removed (usually: a process still lives in it).
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("read mount table: {0}")]
    Mounts(String),
    #[error("remove cgroup {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The mount points of every cgroup (v1) and cgroup2 hierarchy of this process.
pub fn hierarchies() -> Result<Vec<PathBuf>, CgroupError> {
    let mounts = procfs::process::Process::myself()
        .and_then(|me| me.mountinfo())
        .map_err(|e| CgroupError::Mounts(e.to_string()))?;
    Ok(mounts
        .into_iter()
        .filter(|m| m.fs_type == "cgroup" || m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
        .collect())
}

/// The directories named `name` at the top of every hierarchy that exist.
pub fn existing(name: &str) -> Result<Vec<PathBuf>, CgroupError> {
    Ok(hierarchies()?
        .into_iter()
        .map(|h| h.join(name))
        .filter(|p| p.is_dir())
        .collect())
}

/// Removes `<hierarchy>/<name>` with everything below it, children first (a cgroup
/// directory is removed with rmdir; its control files go with it).
pub fn remove(name: &str) -> Result<(), CgroupError> {
    for top in existing(name)? {
        remove_tree(&top)?;
    }
    Ok(())
}

fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    let error = |source| CgroupError::Remove {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(error)? {
        let entry = entry.map_err(error)?;
        if entry.file_type().map_err(error)?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir).map_err(error)
}
