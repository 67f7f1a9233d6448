//! `--storage-dir`: the history in `current.cbor` (and hourly copies), the peers in
//! `peers.json`. Files are replaced by writing a temporary and renaming it; a file that cannot
//! be read is renamed `*.bad` and the agent starts without it.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::history::{History, PersistedHistory};

/// Version of `current.cbor`; another version is set aside as `.bad`.
pub const HISTORY_VERSION: u32 = 1;
pub const CURRENT: &str = "current.cbor";
pub const PEERS: &str = "peers.json";
/// Hourly snapshots older than this are removed.
pub const HOURLY_KEEP: Duration = Duration::from_secs(36 * 3600);

/// A failed storage operation, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("create {path}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("write {path}")]
    Write { path: PathBuf, source: io::Error },
    #[error("encode {path}: {reason}")]
    Encode { path: PathBuf, reason: String },
    #[error("rename {path}")]
    Rename { path: PathBuf, source: io::Error },
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredHistory {
    version: u32,
    history: PersistedHistory,
}

/// `peers.json`, in the original's format so an upgraded host re-joins.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StoredPeers {
    pub ip_addresses: Vec<String>,
}

/// The storage directory.
#[derive(Debug, Clone)]
pub struct Storage {
    dir: PathBuf,
}

impl Storage {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the directory.
    pub fn prepare(&self) -> Result<(), StorageError> {
        fs::create_dir_all(&self.dir).map_err(|source| StorageError::CreateDir {
            path: self.dir.clone(),
            source,
        })
    }

    /// The saved history, if there is a readable one of this version.
    pub fn load_history(&self, keep: usize) -> Option<History> {
        let path = self.dir.join(CURRENT);
        let bytes = read_or_set_aside(&path)?;
        match ciborium::from_reader::<StoredHistory, _>(bytes.as_slice()) {
            Ok(stored) if stored.version == HISTORY_VERSION => {
                Some(History::from_persisted(stored.history, keep))
            }
            Ok(stored) => {
                set_aside(
                    &path,
                    &format!("version {} is not {HISTORY_VERSION}", stored.version),
                );
                None
            }
            Err(e) => {
                set_aside(&path, &e.to_string());
                None
            }
        }
    }

    /// Writes `current.cbor`; returns its size and how long it took.
    pub fn save_history(
        &self,
        history: &PersistedHistory,
    ) -> Result<(u64, Duration), StorageError> {
        let started = Instant::now();
        let path = self.dir.join(CURRENT);
        let mut bytes = Vec::new();
        ciborium::into_writer(
            &StoredHistoryRef {
                version: HISTORY_VERSION,
                history,
            },
            &mut bytes,
        )
        .map_err(|e| StorageError::Encode {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        replace(&path, &bytes)?;
        Ok((bytes.len() as u64, started.elapsed()))
    }

    /// Copies `current.cbor` to `hourly-<hour>.cbor` and removes copies older than 36 h.
    pub fn snapshot_hourly(&self, hour: u64) -> Result<(), StorageError> {
        let current = self.dir.join(CURRENT);
        let target = self.dir.join(format!("hourly-{hour}.cbor"));
        if let Ok(bytes) = fs::read(&current) {
            replace(&target, &bytes)?;
        }
        let oldest = hour.saturating_sub(HOURLY_KEEP.as_secs() / 3600);
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(n) = name.to_str().and_then(|n| {
                    n.strip_prefix("hourly-")?
                        .strip_suffix(".cbor")?
                        .parse::<u64>()
                        .ok()
                }) else {
                    continue;
                };
                if n < oldest {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(())
    }

    /// Addresses saved in `peers.json`.
    pub fn load_peers(&self) -> Vec<SocketAddr> {
        let path = self.dir.join(PEERS);
        let Some(bytes) = read_or_set_aside(&path) else {
            return Vec::new();
        };
        match serde_json::from_slice::<StoredPeers>(&bytes) {
            Ok(stored) => stored
                .ip_addresses
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
            Err(e) => {
                set_aside(&path, &e.to_string());
                Vec::new()
            }
        }
    }

    pub fn save_peers(&self, addrs: &[SocketAddr]) -> Result<(), StorageError> {
        let path = self.dir.join(PEERS);
        let stored = StoredPeers {
            ip_addresses: addrs.iter().map(ToString::to_string).collect(),
        };
        let bytes = serde_json::to_vec(&stored).map_err(|e| StorageError::Encode {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        replace(&path, &bytes)
    }
}

#[derive(Serialize)]
struct StoredHistoryRef<'a> {
    version: u32,
    history: &'a PersistedHistory,
}

fn read_or_set_aside(path: &Path) -> Option<Vec<u8>> {
    match fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            set_aside(path, &e.to_string());
            None
        }
    }
}

/// Renames an unusable file to `*.bad` so the next save does not destroy the evidence.
fn set_aside(path: &Path, reason: &str) {
    let bad = path.with_extension(format!(
        "{}.bad",
        path.extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default()
    ));
    tracing::error!(path = %path.display(), reason, moved_to = %bad.display(), "cannot use stored file; starting without it");
    if let Err(e) = fs::rename(path, &bad) {
        tracing::error!(path = %path.display(), error = %e, "cannot set the file aside");
    }
}

fn replace(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).map_err(|source| StorageError::Write {
        path: tmp.clone(),
        source,
    })?;
    fs::rename(&tmp, path).map_err(|source| StorageError::Rename {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metric::{SeriesKey, Source, Value, key};

    #[test]
    fn history_round_trip_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::new(dir.path());
        assert!(storage.load_history(10).is_none());
        let mut history = History::new(10);
        let k = SeriesKey::new(Source::System, key("x", []));
        history.push_scan(1000, [(&k, &Value::Counter(5))]);
        let (size, _) = storage.save_history(&history.to_persisted()).unwrap();
        assert!(size > 0);
        let loaded = storage.load_history(10).unwrap();
        assert_eq!(loaded.values(&k, 0..1), history.values(&k, 0..1));

        fs::write(dir.path().join(CURRENT), b"\xff\x00garbage").unwrap();
        assert!(storage.load_history(10).is_none());
        assert!(dir.path().join("current.cbor.bad").exists());
        assert!(!dir.path().join(CURRENT).exists());
    }

    #[test]
    fn foreign_version_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::new(dir.path());
        let mut bytes = Vec::new();
        ciborium::into_writer(
            &StoredHistoryRef {
                version: 99,
                history: &History::new(1).to_persisted(),
            },
            &mut bytes,
        )
        .unwrap();
        fs::write(dir.path().join(CURRENT), bytes).unwrap();
        assert!(storage.load_history(10).is_none());
        assert!(dir.path().join("current.cbor.bad").exists());
    }

    #[test]
    fn peers_in_the_original_format() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::new(dir.path());
        let addrs: Vec<SocketAddr> = vec!["10.0.0.2:22682".parse().unwrap()];
        storage.save_peers(&addrs).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join(PEERS)).unwrap(),
            r#"{"ip_addresses":["10.0.0.2:22682"]}"#
        );
        assert_eq!(storage.load_peers(), addrs);
        fs::write(dir.path().join(PEERS), "{").unwrap();
        assert!(storage.load_peers().is_empty());
        assert!(dir.path().join("peers.json.bad").exists());
    }

    #[test]
    fn hourly_snapshots_expire() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::new(dir.path());
        fs::write(dir.path().join(CURRENT), b"x").unwrap();
        storage.snapshot_hourly(100).unwrap();
        storage.snapshot_hourly(150).unwrap();
        assert!(!dir.path().join("hourly-100.cbor").exists());
        assert!(dir.path().join("hourly-150.cbor").exists());
    }
}
