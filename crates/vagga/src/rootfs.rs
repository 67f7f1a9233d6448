//! File operations on image roots: unpacking archives, copying trees with vagga's owner and
//! mode rules, writing files, removing and creating paths, packing an image as a tarball.
//!
//! Paths inside an image are resolved like a chroot would: an absolute symlink in the image
//! points inside the image, never at the host.

use std::fs::{self, File, Permissions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::filter::{self, Filter, FilterError};

/// A file operation on an image failed.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{} has too many levels of symbolic links", .0.display())]
    SymlinkLoop(PathBuf),
    #[error("archive entry {0:?} leaves the destination")]
    BadEntry(String),
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error(transparent)]
    Times(#[from] isolation::fs::FsError),
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RootfsError + 'a {
    move |source| RootfsError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// The host path of `inside` (an absolute path in the image at `root`), following symlinks
/// inside the image; the last component is followed only when `follow_last`.
pub fn resolve(root: &Path, inside: &str, follow_last: bool) -> Result<PathBuf, RootfsError> {
    let mut pending: Vec<String> = inside
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .rev()
        .map(str::to_owned)
        .collect();
    let mut current: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            current.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&current);
        candidate.push(&part);
        let is_last = pending.is_empty();
        match fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() && (!is_last || follow_last) => {
                hops += 1;
                if hops > 40 {
                    return Err(RootfsError::SymlinkLoop(candidate));
                }
                let target = fs::read_link(&candidate).map_err(io_err("readlink", &candidate))?;
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    current.clear();
                }
                pending.extend(
                    target
                        .split('/')
                        .filter(|p| !p.is_empty() && *p != ".")
                        .rev()
                        .map(str::to_owned),
                );
            }
            _ => current.push(part),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&current);
    Ok(out)
}

/// `mkdir -p` inside an image; new directories get `mode`, owner 0:0 when `chown_root`.
pub fn ensure_dir(root: &Path, inside: &str, mode: u32) -> Result<PathBuf, RootfsError> {
    let mut done = String::new();
    for part in inside.split('/').filter(|p| !p.is_empty() && *p != ".") {
        done.push('/');
        done.push_str(part);
        let host = resolve(root, &done, true)?;
        match fs::symlink_metadata(&host) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(RootfsError::Io {
                    action: "mkdir",
                    path: host,
                    source: io::Error::from(io::ErrorKind::AlreadyExists),
                });
            }
            Err(_) => {
                fs::create_dir(&host).map_err(io_err("mkdir", &host))?;
                fs::set_permissions(&host, Permissions::from_mode(mode))
                    .map_err(io_err("chmod", &host))?;
            }
        }
    }
    resolve(root, inside, true)
}

/// Removes a path in an image (a missing one is fine).
pub fn remove(root: &Path, inside: &str) -> Result<(), RootfsError> {
    let host = resolve(root, inside, false)?;
    if host == root {
        return empty_dir(root, "/");
    }
    remove_host_path(&host)
}

/// Removes a host path, whatever it is (a missing one is fine).
pub fn remove_host_path(host: &Path) -> Result<(), RootfsError> {
    match fs::symlink_metadata(host) {
        Ok(m) if m.is_dir() => {
            make_writable(host);
            match fs::remove_dir_all(host) {
                // A mount point (the helper's writable storage) is left empty.
                Err(e) if e.kind() == io::ErrorKind::ResourceBusy => Ok(()),
                other => other.map_err(io_err("remove", host)),
            }
        }
        Ok(_) => fs::remove_file(host).map_err(io_err("remove", host)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", host)(e)),
    }
}

/// Directories without write permission (as builds leave them) block removal for a
/// non-root owner: give them owner write first.
fn make_writable(dir: &Path) {
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    if meta.mode() & 0o700 != 0o700 {
        let _ = fs::set_permissions(dir, Permissions::from_mode((meta.mode() | 0o700) & 0o7777));
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&e.path());
            }
        }
    }
}

/// Empties a directory in an image, creating it when missing.
pub fn empty_dir(root: &Path, inside: &str) -> Result<(), RootfsError> {
    let host = ensure_dir(root, inside, 0o755)?;
    for entry in fs::read_dir(&host).map_err(io_err("read", &host))? {
        let entry = entry.map_err(io_err("read", &host))?;
        remove_host_path(&entry.path())?;
    }
    Ok(())
}

/// Writes a file in an image: mode 644, owner 0:0, parents created.
pub fn write_text(root: &Path, inside: &str, content: &str) -> Result<(), RootfsError> {
    let (parent, name) = split_parent(inside);
    let dir = ensure_dir(root, parent, 0o755)?;
    let host = dir.join(name);
    if fs::symlink_metadata(&host).is_ok_and(|m| m.file_type().is_symlink()) {
        fs::remove_file(&host).map_err(io_err("remove", &host))?;
    }
    fs::write(&host, content).map_err(io_err("write", &host))?;
    lchown(&host, Some(0), Some(0)).map_err(io_err("chown", &host))?;
    fs::set_permissions(&host, Permissions::from_mode(0o644)).map_err(io_err("chmod", &host))
}

fn split_parent(inside: &str) -> (&str, &str) {
    let trimmed = inside.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some((p, n)) => (if p.is_empty() { "/" } else { p }, n),
        None => ("/", trimmed),
    }
}

/// The directories every root gets (mount points), with their modes.
pub const BASE_DIRS: &[(&str, u32)] = &[
    ("dev", 0o755),
    ("etc", 0o755),
    ("proc", 0o755),
    ("run", 0o755),
    ("sys", 0o755),
    ("tmp", 0o1777),
    ("work", 0o755),
];

/// Creates the missing mount-point directories and, when asked, empty `resolv.conf` and
/// `hosts` placeholders (the host's files are bind-mounted over them at run time).
pub fn prepare_root(root: &Path, placeholders: &[String]) -> Result<(), RootfsError> {
    for (dir, mode) in BASE_DIRS {
        let host = root.join(dir);
        if fs::symlink_metadata(&host).is_err() {
            fs::create_dir(&host).map_err(io_err("mkdir", &host))?;
            fs::set_permissions(&host, Permissions::from_mode(*mode))
                .map_err(io_err("chmod", &host))?;
        }
    }
    for file in placeholders {
        let host = resolve(root, file, false)?;
        if fs::symlink_metadata(&host).is_err() && host.parent().is_some_and(|p| p.is_dir()) {
            File::create(&host).map_err(io_err("create", &host))?;
            fs::set_permissions(&host, Permissions::from_mode(0o644))
                .map_err(io_err("chmod", &host))?;
        }
    }
    Ok(())
}

/// Keeps only `dirs` (and their parents) of a finished root.
pub fn keep_data_dirs(root: &Path, dirs: &[String]) -> Result<(), RootfsError> {
    let keep: Vec<PathBuf> = dirs
        .iter()
        .map(|d| PathBuf::from(d.trim_start_matches('/')))
        .collect();
    prune(root, Path::new(""), &keep)
}

fn prune(root: &Path, rel: &Path, keep: &[PathBuf]) -> Result<(), RootfsError> {
    let dir = root.join(rel);
    for entry in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
        let entry = entry.map_err(io_err("read", &dir))?;
        let child = rel.join(entry.file_name());
        if keep.iter().any(|k| child.starts_with(k)) {
            continue;
        }
        if keep.iter().any(|k| k.starts_with(&child)) && entry.path().is_dir() {
            prune(root, &child, keep)?;
            continue;
        }
        if BASE_DIRS.iter().any(|(d, _)| Path::new(d) == child) {
            empty_host_dir(&entry.path())?;
            continue;
        }
        remove_host_path(&entry.path())?;
    }
    Ok(())
}

fn empty_host_dir(dir: &Path) -> Result<(), RootfsError> {
    for entry in fs::read_dir(dir).map_err(io_err("read", dir))? {
        let entry = entry.map_err(io_err("read", dir))?;
        remove_host_path(&entry.path())?;
    }
    Ok(())
}

/// Opens an archive, undoing gzip, bzip2, xz or zstd compression (found by magic bytes).
pub fn open_archive(path: &Path) -> Result<Box<dyn Read>, RootfsError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let mut reader = BufReader::new(file);
    let magic = reader.fill_buf().map_err(io_err("read", path))?.to_vec();
    Ok(if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    } else if magic.starts_with(b"BZh") {
        Box::new(bzip2::read::MultiBzDecoder::new(reader))
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Box::new(xz2::read::XzDecoder::new_multi_decoder(reader))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(reader).map_err(io_err("read", path))?)
    } else {
        Box::new(reader)
    })
}

/// Relative path of an archive entry below `subdir`, or `None` when outside it.
fn entry_rel(path: &Path, subdir: &str) -> Result<Option<PathBuf>, RootfsError> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_owned()),
            Component::CurDir | Component::RootDir => {}
            _ => return Err(RootfsError::BadEntry(path.display().to_string())),
        }
    }
    let sub: Vec<&str> = subdir
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.len() < sub.len() || parts.iter().zip(&sub).any(|(a, b)| a.to_str() != Some(b)) {
        return Ok(None);
    }
    Ok(Some(parts[sub.len()..].iter().collect()))
}

/// Unpacks an archive into the image at `path`, taking only what is under `subdir`.
/// Owners, modes and times are kept; device nodes are skipped (they cannot be created in a
/// user namespace and `/dev` is provided at run time).
pub fn extract_tar(
    archive: &Path,
    root: &Path,
    path: &str,
    subdir: &str,
) -> Result<(), RootfsError> {
    let dest = ensure_dir(root, path, 0o755)?;
    let mut ar = tar::Archive::new(open_archive(archive)?);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_preserve_mtime(true);
    ar.set_overwrite(true);
    ar.set_unpack_xattrs(false);
    let read_err = io_err("read", archive);
    let mut dirs = Vec::new();
    for entry in ar.entries().map_err(read_err)? {
        let mut entry = entry.map_err(io_err("read", archive))?;
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() {
            continue;
        }
        let raw = entry.path().map_err(io_err("read", archive))?.into_owned();
        let Some(rel) = entry_rel(&raw, subdir)? else {
            continue;
        };
        let target = if rel.as_os_str().is_empty() {
            dest.clone()
        } else {
            dest.join(&rel)
        };
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_err("mkdir", parent))?;
        }
        if kind.is_hard_link() {
            let Some(link) = entry.link_name().map_err(io_err("read", archive))? else {
                continue;
            };
            let Some(link_rel) = entry_rel(&link, subdir)? else {
                continue;
            };
            let _ = fs::remove_file(&target);
            fs::hard_link(dest.join(link_rel), &target).map_err(io_err("link", &target))?;
            continue;
        }
        if kind.is_dir() {
            // Directory modes and times go on after their contents are written.
            fs::create_dir_all(&target).map_err(io_err("mkdir", &target))?;
            let h = entry.header();
            let mode = h.mode().map_err(io_err("read", archive))?;
            let uid = h.uid().map_err(io_err("read", archive))? as u32;
            let gid = h.gid().map_err(io_err("read", archive))? as u32;
            let mtime = h.mtime().map_err(io_err("read", archive))?;
            lchown(&target, Some(uid), Some(gid)).map_err(io_err("chown", &target))?;
            dirs.push((target, mode, mtime));
            continue;
        }
        if fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
            remove_host_path(&target)?;
        }
        entry.unpack(&target).map_err(io_err("unpack", &target))?;
    }
    for (dir, mode, mtime) in dirs.into_iter().rev() {
        fs::set_permissions(&dir, Permissions::from_mode(mode & 0o7777))
            .map_err(io_err("chmod", &dir))?;
        set_times(&dir, UNIX_EPOCH + Duration::from_secs(mtime))?;
    }
    Ok(())
}

/// Sets both times of `path` itself (not a symlink's target), times before the epoch
/// clamped to it.
fn set_times(path: &Path, time: SystemTime) -> Result<(), RootfsError> {
    let time = time.max(UNIX_EPOCH);
    Ok(isolation::fs::set_times(path, time, time)?)
}

/// How `!Copy` treats owners, modes and times.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyRules {
    pub owner_uid: Option<u32>,
    pub owner_gid: Option<u32>,
    pub umask: u32,
    pub preserve_permissions: bool,
    pub preserve_times: bool,
    pub ignore_regex: Option<String>,
    pub include_regex: Option<String>,
    pub rules: Option<Vec<String>>,
    pub no_default_rules: bool,
}

impl CopyRules {
    /// An exact copy: every entry, owners, modes and times kept.
    pub fn exact() -> CopyRules {
        CopyRules {
            owner_uid: None,
            owner_gid: None,
            umask: 0,
            preserve_permissions: true,
            preserve_times: true,
            ignore_regex: Some("^$".into()),
            include_regex: None,
            rules: None,
            no_default_rules: true,
        }
    }
}

/// Copies `src` (a host path) to `dest` (a host path inside an image) under `rules`.
pub fn copy(src: &Path, dest: &Path, rules: &CopyRules) -> Result<(), RootfsError> {
    let filter = Filter::new(
        rules.ignore_regex.as_deref(),
        rules.include_regex.as_deref(),
        rules.rules.as_deref(),
        rules.no_default_rules,
    )?;
    let entries = filter::walk(src, &filter)?;
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(io_err("mkdir", parent))?;
    }
    let mut timed = Vec::new();
    for e in &entries {
        let target = if e.rel.is_empty() {
            dest.to_owned()
        } else {
            dest.join(&e.rel)
        };
        let kind = e.meta.file_type();
        let mode = if rules.preserve_permissions {
            e.meta.mode() & 0o7777
        } else if kind.is_dir() || filter::is_executable(&e.meta) {
            0o777 & !rules.umask
        } else {
            0o666 & !rules.umask
        };
        if kind.is_dir() {
            match fs::symlink_metadata(&target) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    remove_host_path(&target)?;
                    fs::create_dir(&target).map_err(io_err("mkdir", &target))?;
                }
                Err(_) => fs::create_dir(&target).map_err(io_err("mkdir", &target))?,
            }
        } else if kind.is_symlink() {
            let link = fs::read_link(&e.path).map_err(io_err("readlink", &e.path))?;
            remove_host_path(&target)?;
            symlink(&link, &target).map_err(io_err("symlink", &target))?;
        } else if kind.is_file() {
            if fs::symlink_metadata(&target).is_ok() {
                remove_host_path(&target)?;
            }
            fs::copy(&e.path, &target).map_err(io_err("copy", &target))?;
        } else {
            // Devices, sockets and fifos are not copied.
            continue;
        }
        let uid = rules.owner_uid.unwrap_or(e.meta.uid());
        let gid = rules.owner_gid.unwrap_or(e.meta.gid());
        lchown(&target, Some(uid), Some(gid)).map_err(io_err("chown", &target))?;
        if !kind.is_symlink() {
            fs::set_permissions(&target, Permissions::from_mode(mode))
                .map_err(io_err("chmod", &target))?;
        }
        let time = if rules.preserve_times {
            e.meta.modified().unwrap_or(UNIX_EPOCH)
        } else {
            UNIX_EPOCH + Duration::from_secs(1)
        };
        timed.push((target, time));
    }
    // Children first: writing into a directory changes its mtime.
    for (path, time) in timed.into_iter().rev() {
        set_times(&path, time)?;
    }
    Ok(())
}

/// Makes `dest` a copy of `src` whose files are hard links (directories are new).
pub fn hardlink_copy(src: &Path, dest: &Path) -> Result<(), RootfsError> {
    let filter = Filter::new(Some("^$"), None, None, true)?;
    for e in filter::walk(src, &filter)? {
        let target = if e.rel.is_empty() {
            dest.to_owned()
        } else {
            dest.join(&e.rel)
        };
        let kind = e.meta.file_type();
        if kind.is_dir() {
            fs::create_dir(&target).map_err(io_err("mkdir", &target))?;
            lchown(&target, Some(e.meta.uid()), Some(e.meta.gid()))
                .map_err(io_err("chown", &target))?;
            fs::set_permissions(&target, Permissions::from_mode(e.meta.mode() & 0o7777))
                .map_err(io_err("chmod", &target))?;
        } else if kind.is_symlink() {
            let link = fs::read_link(&e.path).map_err(io_err("readlink", &e.path))?;
            symlink(&link, &target).map_err(io_err("symlink", &target))?;
            lchown(&target, Some(e.meta.uid()), Some(e.meta.gid()))
                .map_err(io_err("chown", &target))?;
        } else {
            fs::hard_link(&e.path, &target).map_err(io_err("link", &target))?;
        }
    }
    Ok(())
}

/// Compression of a packed image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

/// Appends an entry named exactly `name` (the tar crate would drop the leading `./`), with
/// GNU long-name and long-link records for names that do not fit the header.
fn append_raw<W: Write>(
    builder: &mut tar::Builder<W>,
    mut header: tar::Header,
    name: &str,
    link: Option<&[u8]>,
    data: impl Read,
) -> io::Result<()> {
    let long = |builder: &mut tar::Builder<W>, kind: tar::EntryType, value: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(value.len() as u64 + 1);
        h.set_cksum();
        let mut body = value.to_vec();
        body.push(0);
        builder.append(&h, body.as_slice())
    };
    let bytes = name.as_bytes();
    let old = header.as_old_mut();
    if bytes.len() > old.name.len() {
        long(builder, tar::EntryType::GNULongName, bytes)?;
    }
    let n = bytes.len().min(header.as_old().name.len());
    header.as_old_mut().name[..n].copy_from_slice(&bytes[..n]);
    if let Some(link) = link {
        if link.len() > header.as_old().linkname.len() {
            long(builder, tar::EntryType::GNULongLink, link)?;
        }
        let n = link.len().min(header.as_old().linkname.len());
        header.as_old_mut().linkname[..n].copy_from_slice(&link[..n]);
    }
    header.set_cksum();
    builder.append(&header, data)
}

/// Top-level directories packed empty: they are mount points at run time.
const MOUNT_POINTS: &[&str] = &["dev", "proc", "sys", "run", "tmp"];

/// Writes the image at `root` as a tarball lithos can deploy: relative sorted entries,
/// numeric owners, mount points as empty directories, no device nodes.
pub fn pack(root: &Path, out: Box<dyn Write>, compression: Compression) -> Result<(), RootfsError> {
    let out_err = |e| RootfsError::Io {
        action: "write",
        path: PathBuf::from("image archive"),
        source: e,
    };
    let writer: Box<dyn Write> = match compression {
        Compression::None => out,
        Compression::Gzip => Box::new(flate2::write::GzEncoder::new(
            out,
            flate2::Compression::default(),
        )),
        Compression::Bzip2 => Box::new(bzip2::write::BzEncoder::new(
            out,
            bzip2::Compression::default(),
        )),
        Compression::Xz => Box::new(xz2::write::XzEncoder::new(out, 6)),
        Compression::Zstd => Box::new(
            zstd::stream::write::Encoder::new(out, 3)
                .map_err(out_err)?
                .auto_finish(),
        ),
    };
    let mut builder = tar::Builder::new(writer);
    builder.mode(tar::HeaderMode::Complete);
    let filter = Filter::new(Some("^$"), None, None, true)?;
    for e in filter::walk(root, &filter)? {
        let top = e.rel.split('/').next().unwrap_or("");
        if e.rel.contains('/') && MOUNT_POINTS.contains(&top) {
            continue;
        }
        let kind = e.meta.file_type();
        let name = if e.rel.is_empty() {
            "./".to_owned()
        } else if kind.is_dir() {
            format!("./{}/", e.rel)
        } else {
            format!("./{}", e.rel)
        };
        let mut header = tar::Header::new_gnu();
        header.set_mode(e.meta.mode() & 0o7777);
        header.set_uid(u64::from(e.meta.uid()));
        header.set_gid(u64::from(e.meta.gid()));
        header.set_mtime(e.meta.mtime().max(0) as u64);
        header.set_size(0);
        if kind.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            append_raw(&mut builder, header, &name, None, io::empty()).map_err(out_err)?;
        } else if kind.is_symlink() {
            let link = fs::read_link(&e.path).map_err(io_err("readlink", &e.path))?;
            header.set_entry_type(tar::EntryType::Symlink);
            let link = link.as_os_str().as_encoded_bytes().to_vec();
            append_raw(&mut builder, header, &name, Some(&link), io::empty()).map_err(out_err)?;
        } else if kind.is_file() {
            let file = File::open(&e.path).map_err(io_err("open", &e.path))?;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(e.meta.len());
            append_raw(&mut builder, header, &name, None, file).map_err(out_err)?;
        }
    }
    let mut writer = builder.into_inner().map_err(out_err)?;
    writer.flush().map_err(out_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_symlinks_stay_in_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        symlink("/usr/lib", root.join("lib")).unwrap();
        symlink("/etc/passwd", root.join("pw")).unwrap();
        assert_eq!(
            resolve(root, "/lib/x", true).unwrap(),
            root.join("usr/lib/x")
        );
        assert_eq!(resolve(root, "/pw", true).unwrap(), root.join("etc/passwd"));
        assert_eq!(resolve(root, "/pw", false).unwrap(), root.join("pw"));
        assert_eq!(resolve(root, "/../../x", true).unwrap(), root.join("x"));
    }

    #[test]
    fn writing_through_an_absolute_symlink_stays_in_the_image() {
        // write_text gives the file to 0:0, which only root may do.
        if isolation::user::effective_uid() != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        symlink("/etc/passwd", root.join("pw")).unwrap();
        write_text(root, "/pw", "x").unwrap();
        assert!(!root.join("etc/passwd").exists());
        assert_eq!(fs::read_to_string(root.join("pw")).unwrap(), "x");
    }

    #[test]
    fn copy_applies_umask_and_fixed_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("subdir")).unwrap();
        fs::write(src.join("hello"), "hi").unwrap();
        fs::write(src.join("exe.sh"), "#!").unwrap();
        fs::set_permissions(src.join("exe.sh"), Permissions::from_mode(0o755)).unwrap();
        fs::write(src.join("a~"), "").unwrap();
        let dest = dir.path().join("dest/var/dir");
        let mut rules = CopyRules::exact();
        rules.preserve_permissions = false;
        rules.preserve_times = false;
        rules.ignore_regex = None;
        rules.no_default_rules = false;
        rules.umask = 0o002;
        copy(&src, &dest, &rules).unwrap();
        let mode = |p: &str| fs::metadata(dest.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(
            (mode(""), mode("hello"), mode("exe.sh"), mode("subdir")),
            (0o775, 0o664, 0o775, 0o775)
        );
        assert!(!dest.join("a~").exists());
        assert_eq!(fs::metadata(dest.join("hello")).unwrap().mtime(), 1);
        assert_eq!(fs::metadata(&dest).unwrap().mtime(), 1);
    }

    #[test]
    fn tar_round_trip_with_subdir_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        fs::create_dir_all(img.join("sub")).unwrap();
        fs::create_dir_all(img.join("dev")).unwrap();
        fs::write(img.join("dev/junk"), "").unwrap();
        fs::write(img.join("sub/test"), "t").unwrap();
        fs::set_permissions(img.join("sub/test"), Permissions::from_mode(0o775)).unwrap();
        let archive = dir.path().join("i.tgz");
        pack(
            &img,
            Box::new(File::create(&archive).unwrap()),
            Compression::Gzip,
        )
        .unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        extract_tar(&archive, &root, "/opt", ".").unwrap();
        assert_eq!(
            fs::metadata(root.join("opt/sub/test")).unwrap().mode() & 0o7777,
            0o775
        );
        assert!(root.join("opt/dev").is_dir());
        assert!(!root.join("opt/dev/junk").exists());
        extract_tar(&archive, &root, "/only", "sub").unwrap();
        assert_eq!(fs::read_to_string(root.join("only/test")).unwrap(), "t");
    }
}
