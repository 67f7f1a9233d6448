//! Reading the metric files applications publish (cantal-py, libcantal).
//!
//! Files are opened inside the process's root with `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)` and `O_NOFOLLOW`, so neither a symlink nor a `/proc` magic link
//! leads to a file outside it; values are read with `pread` (never mapped: a writer
//! truncating the file would raise SIGBUS in the reader). Parsed meta is cached per file
//! identity and change stamp; a values file shared by many processes is read once per scan.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use libcantal::format::{
    MAX_META_SIZE, MAX_VALUES_SIZE, Meta, MetaError, Name, ShortValues, parse_meta,
};

use crate::log_limit::LogLimit;

/// Where one process publishes: `CANTAL_PATH` and `CANTAL_APPNAME` from its environment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AppSource {
    pub path: PathBuf,
    pub appname: Option<String>,
}

/// The named values of one file pair at one scan.
pub type AppValues = Arc<Vec<(Name, libcantal::format::Value)>>;

/// A file pair that gave no values this scan.
#[derive(Debug, thiserror::Error)]
pub enum AppFileError {
    #[error("open {path}")]
    Open { path: PathBuf, source: io::Error },
    #[error("read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Meta { path: PathBuf, source: MetaError },
    #[error("{path}: {source}")]
    Short { path: PathBuf, source: ShortValues },
}

/// Identity of a file: device and inode.
type FileId = (u64, u64);

/// What makes a cached meta stale: size and modification time.
type Stamp = (u64, i64, i64);

#[derive(Debug)]
struct CachedMeta {
    stamp: Stamp,
    meta: Result<Arc<Meta>, MetaError>,
    seen: bool,
}

/// Reads app metric files across scans, caching parsed meta.
#[derive(Debug, Default)]
pub struct AppReader {
    metas: HashMap<FileId, CachedMeta>,
    values_this_scan: HashMap<FileId, AppValues>,
    buffer: Vec<u8>,
    /// Files already warned about, with what for, so each warns once.
    warned: HashSet<(FileId, Stamp, &'static str)>,
    /// Files opened this scan: warnings about files no longer in use are forgotten.
    files_this_scan: HashSet<FileId>,
    /// Refused paths (under their process's root) already warned about, and those refused
    /// this scan: a path warns once for as long as it stays refused.
    refused_warned: HashSet<PathBuf>,
    refused_this_scan: HashSet<PathBuf>,
    /// Bounds the refusal warnings of many short-lived processes sharing one path.
    log_limit: LogLimit,
}

impl AppReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a scan: values read in the previous one are forgotten.
    pub fn begin_scan(&mut self) {
        self.values_this_scan.clear();
        self.files_this_scan.clear();
        self.refused_this_scan.clear();
        for cached in self.metas.values_mut() {
            cached.seen = false;
        }
    }

    /// Ends a scan: metas no process pointed at are dropped.
    pub fn end_scan(&mut self) {
        self.metas.retain(|_, cached| cached.seen);
        let files = &self.files_this_scan;
        self.warned.retain(|(id, _, _)| files.contains(id));
        let refused = &self.refused_this_scan;
        self.refused_warned.retain(|path| refused.contains(path));
    }

    /// Reads the file pair of `source` inside the directory `root` (`/proc/PID/root`, or `/`).
    pub fn read(&mut self, root: &Path, source: &AppSource) -> Result<AppValues, AppFileError> {
        let meta_path = with_suffix(&source.path, ".meta");
        let values_path = with_suffix(&source.path, ".values");
        let root_dir = isolation::fs::open_dir(root).map_err(|e| AppFileError::Open {
            path: root.to_owned(),
            source: io::Error::from_raw_os_error(e.raw_os_error()),
        })?;
        let meta = self.meta(root, &root_dir, &meta_path)?;
        let values_file = self.open(root, &root_dir, &values_path)?;
        let stat = values_file
            .metadata()
            .map_err(|source| AppFileError::Read {
                path: values_path.clone(),
                source,
            })?;
        let id = (stat.dev(), stat.ino());
        self.files_this_scan.insert(id);
        if let Some(values) = self.values_this_scan.get(&id) {
            return Ok(Arc::clone(values));
        }
        if stat.size() > MAX_VALUES_SIZE as u64 {
            self.warn_once(id, (0, 0, 0), "oversized", || {
                tracing::warn!(path = %values_path.display(), size = stat.size(), "values file exceeds 4 MiB; reading only the length its meta declares");
            });
        }
        self.buffer.resize(meta.values_len, 0);
        match values_file.read_exact_at(&mut self.buffer, 0) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                let source = ShortValues {
                    actual: usize::try_from(stat.size()).unwrap_or(usize::MAX),
                    needed: meta.values_len,
                };
                // Writers rename complete files into place, so a short one is broken rather
                // than half-written: say so once, and keep checking every scan.
                self.warn_once(id, (0, 0, 0), "short", || {
                    tracing::warn!(path = %values_path.display(), error = %source, "skipping metrics values shorter than their meta declares");
                });
                return Err(AppFileError::Short {
                    path: values_path,
                    source,
                });
            }
            Err(source) => {
                return Err(AppFileError::Read {
                    path: values_path,
                    source,
                });
            }
        }
        let decoded = meta
            .decode(&self.buffer)
            .map_err(|source| AppFileError::Short {
                path: values_path.clone(),
                source,
            })?
            .into_iter()
            .map(|(name, value)| (name.clone(), value))
            .collect();
        let values = Arc::new(decoded);
        self.values_this_scan.insert(id, Arc::clone(&values));
        Ok(values)
    }

    fn meta(
        &mut self,
        root: &Path,
        root_dir: &File,
        path: &Path,
    ) -> Result<Arc<Meta>, AppFileError> {
        let mut file = self.open(root, root_dir, path)?;
        let stat = file.metadata().map_err(|source| AppFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let id = (stat.dev(), stat.ino());
        self.files_this_scan.insert(id);
        let stamp = (stat.size(), stat.mtime(), stat.mtime_nsec());
        let cached = match self.metas.get_mut(&id) {
            Some(cached) if cached.stamp == stamp => cached,
            _ => {
                let mut bytes = Vec::new();
                (&mut file)
                    .take(MAX_META_SIZE as u64 + 1)
                    .read_to_end(&mut bytes)
                    .map_err(|source| AppFileError::Read {
                        path: path.to_owned(),
                        source,
                    })?;
                let meta = parse_meta(&bytes).map(Arc::new);
                self.metas.insert(
                    id,
                    CachedMeta {
                        stamp,
                        meta,
                        seen: false,
                    },
                );
                self.metas.get_mut(&id).expect("just inserted")
            }
        };
        cached.seen = true;
        match &cached.meta {
            Ok(meta) => {
                let meta = Arc::clone(meta);
                if meta.slots.is_empty() {
                    self.warn_once(id, stamp, "empty", || {
                        tracing::warn!(path = %path.display(), "metrics meta declares no metrics");
                    });
                }
                if !meta.unknown_types.is_empty() {
                    let types = meta.unknown_types.join(", ");
                    self.warn_once(id, stamp, "unknown", || {
                        tracing::warn!(path = %path.display(), types, "skipping metric slots of unknown types");
                    });
                }
                Ok(meta)
            }
            Err(e) => {
                let error = e.clone();
                self.warn_once(id, stamp, "bad", || {
                    tracing::warn!(path = %path.display(), error = %error, "skipping bad metrics file until it changes");
                });
                Err(AppFileError::Meta {
                    path: path.to_owned(),
                    source: error,
                })
            }
        }
    }

    fn open(&mut self, root: &Path, root_dir: &File, path: &Path) -> Result<File, AppFileError> {
        isolation::fs::open_in_root(root_dir, path).map_err(|error| {
            // A symlink or a path escaping the root deserves one warning while it lasts (the
            // process is still there next scan). A missing file is the normal state of an app
            // that has not started yet.
            let source = io::Error::from_raw_os_error(error.raw_os_error());
            if error.is_refused_link() {
                let seen_at = root.join(path.strip_prefix("/").unwrap_or(path));
                self.refused_this_scan.insert(seen_at.clone());
                if self.refused_warned.insert(seen_at)
                    && let Some(suppressed) =
                        self.log_limit
                            .allow("refused", &path.to_string_lossy(), Instant::now())
                {
                    tracing::warn!(path = %path.display(), error = %source, suppressed, "not following a link in a metrics path");
                }
            }
            AppFileError::Open {
                path: path.to_owned(),
                source,
            }
        })
    }

    fn warn_once(&mut self, id: FileId, stamp: Stamp, what: &'static str, log: impl FnOnce()) {
        if self.warned.insert((id, stamp, what)) {
            log();
        }
    }
}

/// `path` (absolute or relative) + `suffix`, as writers name their files.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use libcantal::format::Value;
    use std::fs;

    fn write_pair(dir: &Path, name: &str, meta: &str, values: &[u8]) -> PathBuf {
        let base = dir.join(name);
        fs::write(with_suffix(&base, ".meta"), meta).unwrap();
        fs::write(with_suffix(&base, ".values"), values).unwrap();
        base
    }

    fn source(path: PathBuf) -> AppSource {
        AppSource {
            path,
            appname: None,
        }
    }

    #[test]
    fn reads_and_caches() {
        let dir = tempfile::tempdir().unwrap();
        let base = write_pair(
            dir.path(),
            "app",
            "counter 8: {\"metric\": \"c\"}",
            &42u64.to_ne_bytes(),
        );
        let mut reader = AppReader::new();
        reader.begin_scan();
        let values = reader.read(Path::new("/"), &source(base.clone())).unwrap();
        assert_eq!(values[0].1, Value::Counter(42));
        // The same file through another process in the same scan is not read again.
        fs::write(with_suffix(&base, ".values"), 43u64.to_ne_bytes()).unwrap();
        let again = reader.read(Path::new("/"), &source(base.clone())).unwrap();
        assert!(Arc::ptr_eq(&values, &again));
        reader.end_scan();
        reader.begin_scan();
        let next = reader.read(Path::new("/"), &source(base)).unwrap();
        assert_eq!(next[0].1, Value::Counter(43));
        reader.end_scan();
        assert_eq!(reader.metas.len(), 1);
        reader.begin_scan();
        reader.end_scan();
        assert!(reader.metas.is_empty());
    }

    #[test]
    fn meta_rewrite_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let base = write_pair(
            dir.path(),
            "app",
            "counter 8: {\"metric\": \"a\"}",
            &[1; 16],
        );
        let mut reader = AppReader::new();
        reader.begin_scan();
        assert_eq!(
            reader.read(Path::new("/"), &source(base.clone())).unwrap()[0].0["metric"],
            "a"
        );
        // tmp + rename, as the writers do: a new inode.
        let tmp = dir.path().join("app.tmp");
        fs::write(&tmp, "level 8 signed: {\"metric\": \"b\"}").unwrap();
        fs::rename(&tmp, with_suffix(&base, ".meta")).unwrap();
        reader.end_scan();
        reader.begin_scan();
        let values = reader.read(Path::new("/"), &source(base)).unwrap();
        assert_eq!(values[0].0["metric"], "b");
        assert_eq!(values[0].1, Value::Signed(i64::from_ne_bytes([1; 8])));
    }

    #[test]
    fn short_missing_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut reader = AppReader::new();
        reader.begin_scan();
        let short = write_pair(
            dir.path(),
            "short",
            "counter 8: {\"metric\": \"c\"}",
            &[0; 4],
        );
        assert!(matches!(
            reader.read(Path::new("/"), &source(short)),
            Err(AppFileError::Short { .. })
        ));
        let empty = write_pair(dir.path(), "empty", "counter 8: {\"metric\": \"c\"}", &[]);
        assert!(matches!(
            reader.read(Path::new("/"), &source(empty)),
            Err(AppFileError::Short { .. })
        ));
        let bad = write_pair(dir.path(), "bad", "counter 8 {", &[0; 8]);
        assert!(matches!(
            reader.read(Path::new("/"), &source(bad)),
            Err(AppFileError::Meta { .. })
        ));
        assert!(matches!(
            reader.read(Path::new("/"), &source(dir.path().join("none"))),
            Err(AppFileError::Open { .. })
        ));
    }

    #[test]
    fn symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let canary = write_pair(
            dir.path(),
            "canary",
            "counter 8: {\"metric\": \"secret\"}",
            &[7; 8],
        );
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(with_suffix(&canary, ".meta"), with_suffix(&link, ".meta"))
            .unwrap();
        std::os::unix::fs::symlink(
            with_suffix(&canary, ".values"),
            with_suffix(&link, ".values"),
        )
        .unwrap();
        let mut reader = AppReader::new();
        reader.begin_scan();
        let err = reader.read(Path::new("/"), &source(link)).unwrap_err();
        assert!(matches!(err, AppFileError::Open { .. }), "{err}");
    }

    #[test]
    fn paths_resolve_inside_the_root() {
        // A "root" directory with an absolute symlinked directory inside: RESOLVE_IN_ROOT
        // resolves it within the root, so the host file next to the root stays unread.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("run/inner")).unwrap();
        write_pair(
            &root.join("run/inner"),
            "app",
            "counter 8: {\"metric\": \"inside\"}",
            &[1; 8],
        );
        write_pair(
            dir.path(),
            "app",
            "counter 8: {\"metric\": \"outside\"}",
            &[2; 8],
        );
        std::os::unix::fs::symlink("/run/inner", root.join("run/linked")).unwrap();
        let mut reader = AppReader::new();
        reader.begin_scan();
        let values = reader
            .read(&root, &source(PathBuf::from("/run/linked/app")))
            .unwrap();
        assert_eq!(values[0].0["metric"], "inside");
        let escape = PathBuf::from(format!("/../../{}/app", dir.path().display()));
        match reader.read(&root, &source(escape)) {
            Ok(values) => assert_ne!(values[0].0["metric"], "outside"),
            Err(e) => assert!(matches!(e, AppFileError::Open { .. })),
        }
    }
}
