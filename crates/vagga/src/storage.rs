//! The `.vagga/` layout: versioned roots, the `.vagga/<name>` symlinks, caches, volumes,
//! logs, the stat cache, and the per-container build lock.

use std::fs::{self, File};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::settings::Settings;

/// A storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("lock {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "container \"{name}\" is being built by another vagga (pid {holder}); set build-lock-wait: true to wait"
    )]
    Locked { name: String, holder: String },
    #[error("update symlink {}: {source}", path.display())]
    Symlink {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("storage-subdir-from-env-var: ${0} is not set")]
    MissingEnv(String),
}

/// In a storage under `storage-dir`: a symlink to the project that uses it.
const PROJECT_LINK: &str = ".project";

/// Paths of one project's storage.
#[derive(Debug, Clone)]
pub struct Storage {
    pub project: PathBuf,
    /// `<project>/.vagga`, where the container symlinks live.
    pub vagga_dir: PathBuf,
    /// Where `.roots` and the rest live: `.vagga` or `<storage-dir>/<subdir>`.
    pub base: PathBuf,
    pub roots: PathBuf,
    pub cache: PathBuf,
    pub volumes: PathBuf,
    pub transient: PathBuf,
    pub statcache: PathBuf,
    pub logs: PathBuf,
}

fn mkdir(path: &Path) -> Result<(), StorageError> {
    fs::create_dir_all(path).map_err(|source| StorageError::Create {
        path: path.to_owned(),
        source,
    })
}

impl Storage {
    /// The layout for `project` under the settings (`storage-dir`, `cache-dir`).
    pub fn new(project: &Path, settings: &Settings) -> Result<Storage, StorageError> {
        let vagga_dir = project.join(".vagga");
        let base = match &settings.storage_dir {
            None => vagga_dir.clone(),
            Some(dir) => {
                let sub = match &settings.storage_subdir_from_env_var {
                    Some(var) => {
                        std::env::var(var).map_err(|_| StorageError::MissingEnv(var.clone()))?
                    }
                    None => project
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "root".into()),
                };
                dir.join(sub)
            }
        };
        let mut storage = Storage::at(project, base);
        if let Some(cache) = &settings.cache_dir {
            storage.cache = cache.clone();
        }
        Ok(storage)
    }

    /// The layout of `project` with its storage in `base`.
    pub fn at(project: &Path, base: PathBuf) -> Storage {
        let vagga_dir = project.join(".vagga");
        Storage {
            project: project.to_owned(),
            roots: base.join(".roots"),
            volumes: base.join(".volumes"),
            transient: base.join(".transient"),
            cache: base.join(".cache"),
            statcache: vagga_dir.join(".statcache"),
            logs: vagga_dir.join(".logs"),
            vagga_dir,
            base,
        }
    }

    /// The project a storage under `storage-dir` belongs to (its `.project` link).
    pub fn owner_of(base: &Path) -> Option<PathBuf> {
        fs::read_link(base.join(PROJECT_LINK)).ok()
    }

    /// Creates the directories builds need; records an external storage dir in `.vagga/.lnk`.
    pub fn prepare(&self) -> Result<(), StorageError> {
        mkdir(&self.vagga_dir)?;
        mkdir(&self.roots)?;
        mkdir(&self.cache)?;
        if self.base != self.vagga_dir {
            let lnk = self.vagga_dir.join(".lnk");
            if fs::read_link(&lnk).ok().as_deref() != Some(self.base.as_path()) {
                replace_symlink(&self.base, &lnk)?;
            }
            // The way back, for `_clean --global` to tell whose storage this is.
            let back = self.base.join(PROJECT_LINK);
            if fs::read_link(&back).ok().as_deref() != Some(self.project.as_path()) {
                replace_symlink(&self.project, &back)?;
            }
        }
        Ok(())
    }

    /// `.roots/<name>.<short>`: the metadata dir of one version, `root/` inside.
    pub fn version_dir(&self, name: &str, short: &str) -> PathBuf {
        self.roots.join(format!("{name}.{short}"))
    }

    /// `.roots/.tmp.<name>.<short>`: a build in progress.
    pub fn tmp_dir(&self, name: &str, short: &str) -> PathBuf {
        self.roots.join(format!(".tmp.{name}.{short}"))
    }

    /// `.vagga/<name>`.
    pub fn link(&self, name: &str) -> PathBuf {
        self.vagga_dir.join(name)
    }

    /// Points `.vagga/<name>` at a version (relative when the storage is inside `.vagga`).
    pub fn point_link(&self, name: &str, short: &str) -> Result<(), StorageError> {
        let target = if self.base == self.vagga_dir {
            PathBuf::from(format!(".roots/{name}.{short}/root"))
        } else {
            self.version_dir(name, short).join("root")
        };
        replace_symlink(&target, &self.link(name))
    }

    /// The short hash `.vagga/<name>` points at, if any.
    pub fn linked_version(&self, name: &str) -> Option<String> {
        let target = fs::read_link(self.link(name)).ok()?;
        let dir = target.parent()?.file_name()?.to_string_lossy().into_owned();
        dir.strip_prefix(&format!("{name}.")).map(str::to_owned)
    }

    /// Takes the build lock of a container; waits when `wait`, else fails naming the holder.
    pub fn lock(&self, name: &str, wait: bool) -> Result<BuildLock, StorageError> {
        let path = self.roots.join(format!(".lock.{name}"));
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| StorageError::Lock {
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) if wait => {
                file.lock().map_err(|source| StorageError::Lock {
                    path: path.clone(),
                    source,
                })?;
            }
            Err(fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(StorageError::Locked {
                    name: name.to_owned(),
                    holder: holder.trim().to_owned(),
                });
            }
            Err(fs::TryLockError::Error(source)) => {
                return Err(StorageError::Lock { path, source });
            }
        }
        // Tell waiting builders who holds it.
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "{}", std::process::id());
        Ok(BuildLock { _file: file })
    }
}

/// Held while a container builds; released when dropped.
#[derive(Debug)]
pub struct BuildLock {
    _file: File,
}

/// Replaces `link` by a symlink to `target` atomically (new link, then rename over).
pub fn replace_symlink(target: &Path, link: &Path) -> Result<(), StorageError> {
    let tmp = link.with_file_name(format!(
        ".{}.new.{}",
        link.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    symlink(target, &tmp)
        .and_then(|()| fs::rename(&tmp, link))
        .map_err(|source| StorageError::Symlink {
            path: link.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_exclusive_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::new(dir.path(), &Settings::default()).unwrap();
        storage.prepare().unwrap();
        let held = storage.lock("app", false).unwrap();
        let err = storage.lock("app", false).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(held);
        storage.lock("app", false).unwrap();
    }

    #[test]
    fn links_point_into_roots() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::new(dir.path(), &Settings::default()).unwrap();
        storage.prepare().unwrap();
        storage.point_link("app", "1a2b3c4d").unwrap();
        assert_eq!(
            fs::read_link(storage.link("app")).unwrap(),
            Path::new(".roots/app.1a2b3c4d/root")
        );
        assert_eq!(storage.linked_version("app").as_deref(), Some("1a2b3c4d"));
    }
}
