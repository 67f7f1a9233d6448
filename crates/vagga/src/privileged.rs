//! File operations that need the ids of a container's user namespace: unpacking archives
//! with their owners, copying with `owner-uid`, removing trees owned by subordinate ids,
//! packing images with the ids as seen inside.
//!
//! As root they run in this process (root's namespaces use the identity map, so owners are
//! the same). As an ordinary user they run in a helper: this binary re-executed in a
//! container whose user namespace maps the subordinate ids, seeing the host's directories
//! read-only and the storage writable.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use isolation::{Container, UserNamespace, Volume};
use serde::{Deserialize, Serialize};

use crate::rootfs::{self, Compression, CopyRules, RootfsError};

/// The argument that makes the binary run one operation and exit.
pub const HELPER_ARG: &str = "__vagga_helper";

/// One privileged file operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Op {
    ExtractTar {
        archive: PathBuf,
        root: PathBuf,
        path: String,
        subdir: String,
    },
    Copy {
        src: PathBuf,
        root: PathBuf,
        dest: String,
        rules: CopyRules,
    },
    /// A copy to a host path (snapshots, `!Container` roots).
    CopyTo {
        src: PathBuf,
        dest: PathBuf,
        rules: CopyRules,
    },
    WriteText {
        root: PathBuf,
        path: String,
        content: String,
    },
    Remove {
        root: PathBuf,
        path: String,
    },
    EnsureDir {
        root: PathBuf,
        path: String,
    },
    EmptyDir {
        root: PathBuf,
        path: String,
    },
    PrepareRoot {
        root: PathBuf,
        placeholders: Vec<String>,
    },
    KeepDataDirs {
        root: PathBuf,
        dirs: Vec<String>,
    },
    RemoveTree {
        path: PathBuf,
    },
    HardlinkCopy {
        src: PathBuf,
        dest: PathBuf,
    },
    MakeDir {
        path: PathBuf,
        uid: u32,
        gid: u32,
    },
    Pack {
        root: PathBuf,
        file: Option<PathBuf>,
        compression: Compression,
    },
}

/// A privileged operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegedError {
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error("start helper for {what}: {source}")]
    Spawn {
        what: String,
        source: isolation::SpawnError,
    },
    #[error("helper for {what} failed ({status})")]
    Failed { what: String, status: String },
    #[error("prepare helper root {}: {source}", path.display())]
    Skeleton {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Op {
    fn describe(&self) -> String {
        match self {
            Op::ExtractTar { archive, .. } => format!("unpacking {}", archive.display()),
            Op::Copy { src, .. } | Op::CopyTo { src, .. } => format!("copying {}", src.display()),
            Op::WriteText { path, .. } => format!("writing {path}"),
            Op::Remove { path, .. } => format!("removing {path}"),
            Op::EnsureDir { path, .. } | Op::EmptyDir { path, .. } => format!("preparing {path}"),
            Op::PrepareRoot { root, .. } | Op::KeepDataDirs { root, .. } => {
                format!("finishing {}", root.display())
            }
            Op::RemoveTree { path } => format!("removing {}", path.display()),
            Op::HardlinkCopy { src, .. } => format!("linking {}", src.display()),
            Op::MakeDir { path, .. } => format!("creating {}", path.display()),
            Op::Pack { root, .. } => format!("packing {}", root.display()),
        }
    }

    /// Runs the operation in this process.
    pub fn run(&self) -> Result<(), RootfsError> {
        match self {
            Op::ExtractTar {
                archive,
                root,
                path,
                subdir,
            } => rootfs::extract_tar(archive, root, path, subdir),
            Op::Copy {
                src,
                root,
                dest,
                rules,
            } => {
                let (parent, _) = dest.rsplit_once('/').unwrap_or(("", dest));
                rootfs::ensure_dir(root, parent, 0o755)?;
                let target = rootfs::resolve(root, dest, true)?;
                rootfs::copy(src, &target, rules)
            }
            Op::CopyTo { src, dest, rules } => rootfs::copy(src, dest, rules),
            Op::WriteText {
                root,
                path,
                content,
            } => rootfs::write_text(root, path, content),
            Op::Remove { root, path } => rootfs::remove(root, path),
            Op::EnsureDir { root, path } => rootfs::ensure_dir(root, path, 0o755).map(drop),
            Op::EmptyDir { root, path } => rootfs::empty_dir(root, path),
            Op::PrepareRoot { root, placeholders } => rootfs::prepare_root(root, placeholders),
            Op::KeepDataDirs { root, dirs } => rootfs::keep_data_dirs(root, dirs),
            Op::RemoveTree { path } => rootfs::remove_host_path(path),
            Op::HardlinkCopy { src, dest } => rootfs::hardlink_copy(src, dest),
            Op::MakeDir { path, uid, gid } => {
                let io = |action, source| RootfsError::Io {
                    action,
                    path: path.clone(),
                    source,
                };
                fs::create_dir_all(path).map_err(|e| io("mkdir", e))?;
                std::os::unix::fs::lchown(path, Some(*uid), Some(*gid)).map_err(|e| io("chown", e))
            }
            Op::Pack {
                root,
                file,
                compression,
            } => {
                let out: Box<dyn std::io::Write> = match file {
                    Some(f) => Box::new(std::io::BufWriter::new(fs::File::create(f).map_err(
                        |source| RootfsError::Io {
                            action: "create",
                            path: f.clone(),
                            source,
                        },
                    )?)),
                    None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
                };
                rootfs::pack(root, out, *compression)
            }
        }
    }
}

/// Runs privileged operations for one project as the current caller.
#[derive(Debug, Clone)]
pub struct Privileged {
    pub as_root: bool,
    /// The namespace of the helper (the container's id maps).
    pub userns: UserNamespace,
    /// Host directories the helper may write (the storage and cache).
    pub writable: Vec<PathBuf>,
    /// Where the helper's root skeleton is kept.
    pub skeleton: PathBuf,
    pub exe: PathBuf,
}

impl Privileged {
    /// The same runner with another namespace (a container's own `uids`/`gids`).
    pub fn with_userns(&self, userns: UserNamespace) -> Privileged {
        Privileged {
            userns,
            ..self.clone()
        }
    }

    pub fn run(&self, op: &Op) -> Result<(), PrivilegedError> {
        if self.as_root {
            return Ok(op.run()?);
        }
        let what = op.describe();
        let json = serde_json::to_string(op).expect("ops serialize");
        let mut c = self.host_view(&self.exe)?;
        c.arg(HELPER_ARG).arg(json);
        let mut child = c.spawn().map_err(|source| PrivilegedError::Spawn {
            what: what.clone(),
            source,
        })?;
        let status = child.wait().map_err(|e| PrivilegedError::Failed {
            what: what.clone(),
            status: e.to_string(),
        })?;
        if status.success() {
            Ok(())
        } else {
            Err(PrivilegedError::Failed {
                what,
                status: status.to_string(),
            })
        }
    }

    /// A container of `program` in the namespace of the ids, seeing the host's directories
    /// read-only and the storage writable, with its own `/proc` and `/dev`.
    pub fn host_view(&self, program: impl AsRef<OsStr>) -> Result<Container, PrivilegedError> {
        self.prepare_skeleton()?;
        let mut c = Container::new(&self.skeleton, program);
        c.env("PATH", isolation::DEFAULT_PATH)
            .user_namespace(self.userns.clone())
            .system_mounts(true, true, false)
            .workdir("/");
        for entry in host_top_dirs() {
            c.volume(
                Path::new("/").join(&entry),
                Volume::ReadOnly {
                    source: Path::new("/").join(&entry),
                },
            );
        }
        for dir in &self.writable {
            if dir.is_dir() {
                c.volume(
                    dir,
                    Volume::ReadWrite {
                        source: dir.clone(),
                    },
                );
            }
        }
        Ok(c)
    }

    /// A directory mirroring the host's top level: a mount point per directory, the same
    /// symlinks (`lib -> usr/lib`), empty `proc`, `dev` and `sys`.
    fn prepare_skeleton(&self) -> Result<(), PrivilegedError> {
        let err = |path: &Path| {
            let path = path.to_owned();
            move |source| PrivilegedError::Skeleton { path, source }
        };
        fs::create_dir_all(&self.skeleton).map_err(err(&self.skeleton))?;
        let entries = fs::read_dir("/").map_err(err(Path::new("/")))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let target = self.skeleton.join(&name);
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if fs::symlink_metadata(&target).is_ok() {
                continue;
            }
            if kind.is_symlink() {
                if let Ok(link) = fs::read_link(entry.path()) {
                    std::os::unix::fs::symlink(link, &target).map_err(err(&target))?;
                }
            } else if kind.is_dir() {
                fs::create_dir(&target).map_err(err(&target))?;
            }
        }
        Ok(())
    }
}

/// Top-level host directories the helper sees read-only (`proc`, `dev` and `sys` are its own).
fn host_top_dirs() -> Vec<String> {
    let Ok(entries) = fs::read_dir("/") else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !matches!(n.as_str(), "proc" | "dev" | "sys"))
        .collect();
    out.sort();
    out
}

/// The helper's entry point: runs the operation given as JSON; returns the exit code.
pub fn helper_main(json: &str) -> i32 {
    let op: Op = match serde_json::from_str(json) {
        Ok(op) => op,
        Err(e) => {
            eprintln!("vagga helper: bad operation: {e}");
            return 1;
        }
    };
    match op.run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}
