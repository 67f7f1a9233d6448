//! The storage dir: election epoch, the schedule in force, pending actions, the frozen flag
//! and schedule backups. Every file is replaced by write-to-temporary and rename.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use protocol::domain::MachineId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::schedule::Schedule;

/// Distinct recent schedules kept.
const RECENT: usize = 50;
/// (prefix, period in ms, how many kept).
const PERIODIC: [(&str, u64, usize); 3] = [
    ("hourly", 3_600_000, 36),
    ("daily", 86_400_000, 14),
    ("weekly", 604_800_000, 12),
];

/// A storage operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct StorageError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ElectionFile {
    epoch: u64,
    #[serde(default)]
    voted: Option<(u64, String)>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    frozen: bool,
}

/// One backup as `/v1/backups` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupInfo {
    pub name: String,
    pub timestamp: u64,
    pub hash: String,
}

/// The storage dir.
#[derive(Debug, Clone)]
pub struct Storage {
    dir: PathBuf,
}

impl Storage {
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let backups = dir.join("backups");
        fs::create_dir_all(&backups).map_err(|source| StorageError {
            action: "create",
            path: backups,
            source,
        })?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn read_json<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Option<T> {
        let path = self.dir.join(name);
        let text = fs::read_to_string(&path).ok()?;
        serde_json::from_str(&text)
            .inspect_err(|err| tracing::warn!(path = %path.display(), error = %err, "ignoring unreadable state file"))
            .ok()
    }

    fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        write_file(&self.dir.join(name), &bytes)
    }

    pub fn load_election(&self) -> (u64, Option<(u64, MachineId)>) {
        let file: ElectionFile = self.read_json("election.json").unwrap_or_default();
        let voted = file
            .voted
            .and_then(|(epoch, id)| id.parse().ok().map(|id| (epoch, id)));
        (file.epoch, voted)
    }

    pub fn save_election(
        &self,
        epoch: u64,
        voted: Option<(u64, MachineId)>,
    ) -> Result<(), StorageError> {
        let file = ElectionFile {
            epoch,
            voted: voted.map(|(epoch, id)| (epoch, id.to_string())),
        };
        self.write_json("election.json", &file)
    }

    pub fn load_schedule(&self) -> Option<Schedule> {
        self.read_json::<Schedule>("schedule.json")
            .filter(Schedule::is_consistent)
    }

    /// Stores the schedule in force (back it up with [`Storage::backup_schedule`]).
    pub fn save_schedule(&self, schedule: &Schedule) -> Result<(), StorageError> {
        self.write_json("schedule.json", schedule)
    }

    pub fn load_actions(&self) -> BTreeMap<String, Value> {
        self.read_json("actions.json").unwrap_or_default()
    }

    pub fn save_actions(&self, actions: &BTreeMap<String, Value>) -> Result<(), StorageError> {
        self.write_json("actions.json", actions)
    }

    pub fn load_frozen(&self) -> bool {
        self.read_json::<StateFile>("state.json")
            .is_some_and(|state| state.frozen)
    }

    pub fn save_frozen(&self, frozen: bool) -> Result<(), StorageError> {
        self.write_json("state.json", &StateFile { frozen })
    }

    fn backups_dir(&self) -> PathBuf {
        self.dir.join("backups")
    }

    /// Keeps the schedule among the recent and periodic backups. The recent backup is not
    /// synced: it is written right after `schedule.json` (synced) with the same schedule, and
    /// its sync would compete with the render's on the same disk. A backup a crash tore is
    /// skipped by [`Storage::backups`] and [`Storage::backup`].
    pub fn backup_schedule(&self, schedule: &Schedule) -> Result<(), StorageError> {
        let dir = self.backups_dir();
        let stamp = &schedule.stamp;
        let recent = self.names("recent-");
        // A torn copy (see above) is written again.
        if !recent
            .iter()
            .any(|name| name.ends_with(&stamp.hash[..12]) && self.backup(name).is_some())
        {
            let name = format!("recent-{}-{}.json", stamp.timestamp, &stamp.hash[..12]);
            let bytes = serde_json::to_vec(schedule).unwrap_or_default();
            write_unsynced_file(&dir.join(name), &bytes)?;
            self.prune("recent-", RECENT)?;
        }
        for (prefix, period, keep) in PERIODIC {
            let name = format!("{prefix}-{}.json.gz", stamp.timestamp / period);
            let path = dir.join(&name);
            if !path.exists() {
                let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
                let bytes = serde_json::to_vec(schedule).unwrap_or_default();
                let compressed = encoder
                    .write_all(&bytes)
                    .and_then(|()| encoder.finish())
                    .map_err(|source| StorageError {
                        action: "compress",
                        path: path.clone(),
                        source,
                    })?;
                write_file(&path, &compressed)?;
                self.prune(&format!("{prefix}-"), keep)?;
            }
        }
        Ok(())
    }

    /// Backup names (file names without `.json`/`.json.gz`) with `prefix`, oldest first.
    fn names(&self, prefix: &str) -> Vec<String> {
        let mut names: Vec<(u64, String)> = fs::read_dir(self.backups_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let stem = name
                    .strip_suffix(".json.gz")
                    .or_else(|| name.strip_suffix(".json"))?;
                let rest = stem.strip_prefix(prefix)?;
                let order = rest.split('-').next()?.parse().ok()?;
                Some((order, stem.to_owned()))
            })
            .collect();
        names.sort();
        names.into_iter().map(|(_, name)| name).collect()
    }

    fn prune(&self, prefix: &str, keep: usize) -> Result<(), StorageError> {
        let names = self.names(prefix);
        for name in &names[..names.len().saturating_sub(keep)] {
            for path in [self.backup_path(name, false), self.backup_path(name, true)] {
                if path.exists() {
                    fs::remove_file(&path).map_err(|source| StorageError {
                        action: "remove",
                        path,
                        source,
                    })?;
                }
            }
        }
        Ok(())
    }

    fn backup_path(&self, name: &str, gz: bool) -> PathBuf {
        self.backups_dir().join(if gz {
            format!("{name}.json.gz")
        } else {
            format!("{name}.json")
        })
    }

    /// Every backup, newest first.
    pub fn backups(&self) -> Vec<BackupInfo> {
        let mut list: Vec<BackupInfo> = ["recent-", "hourly-", "daily-", "weekly-"]
            .iter()
            .flat_map(|prefix| self.names(prefix))
            .filter_map(|name| {
                let schedule = self.backup(&name)?;
                Some(BackupInfo {
                    name,
                    timestamp: schedule.stamp.timestamp,
                    hash: schedule.stamp.hash,
                })
            })
            .collect();
        list.sort_by(|a, b| b.timestamp.cmp(&a.timestamp).then(a.name.cmp(&b.name)));
        list
    }

    /// A schedule this node held (the one in force or a recent backup), by full hash.
    pub fn find_by_hash(&self, hash: &str) -> Option<Schedule> {
        if hash.len() != 40 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        if let Some(current) = self.load_schedule().filter(|s| s.stamp.hash == hash) {
            return Some(current);
        }
        self.names("recent-")
            .into_iter()
            .rev()
            .filter(|name| name.ends_with(&hash[..12]))
            .find_map(|name| self.backup(&name).filter(|s| s.stamp.hash == hash))
    }

    /// One backup's schedule; names are only those [`Storage::backups`] lists.
    pub fn backup(&self, name: &str) -> Option<Schedule> {
        if name.contains(['/', '\\']) || name.starts_with('.') {
            return None;
        }
        let plain = self.backup_path(name, false);
        let bytes = if plain.exists() {
            fs::read(plain).ok()?
        } else {
            let mut out = Vec::new();
            GzDecoder::new(File::open(self.backup_path(name, true)).ok()?)
                .read_to_end(&mut out)
                .ok()?;
            out
        };
        serde_json::from_slice::<Schedule>(&bytes)
            .ok()
            .filter(Schedule::is_consistent)
    }
}

/// Writes `path` through a temporary file and a rename, synced.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    replace_file(path, bytes, true)
}

/// Writes `path` like [`write_file`] but without the sync, so after a crash it may be
/// missing, empty or torn: for files whose readers skip or rewrite such a file (the
/// renderer's inputs, the recent backups).
pub fn write_unsynced_file(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    replace_file(path, bytes, false)
}

fn replace_file(path: &Path, bytes: &[u8], sync: bool) -> Result<(), StorageError> {
    // A temporary file of its own per write: two saves of the same file at once must not
    // rename each other's half-written data.
    let dir = path.parent().unwrap_or(Path::new("."));
    let write = || -> io::Result<()> {
        let mut file = tempfile::NamedTempFile::new_in(dir)?;
        file.write_all(bytes)?;
        if sync {
            file.as_file().sync_all()?;
        }
        file.persist(path).map_err(|e| e.error)?;
        Ok(())
    };
    write().map_err(|source| StorageError {
        action: "write",
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn state_round_trips_and_backups_are_listed() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = Storage::open(tmp.path()).unwrap();
        let id = MachineId::from_bytes([3; 16]);
        assert_eq!(storage.load_election(), (0, None));
        storage.save_election(7, Some((7, id))).unwrap();
        assert_eq!(storage.load_election(), (7, Some((7, id))));

        let first = Schedule::new(json!({"v": 1}), 1_000, id);
        let second = Schedule::new(json!({"v": 2}), 2_000, id);
        for schedule in [&first, &second, &second] {
            storage.save_schedule(schedule).unwrap();
            storage.backup_schedule(schedule).unwrap();
        }
        assert_eq!(storage.load_schedule(), Some(second.clone()));
        let backups = storage.backups();
        let recent: Vec<&BackupInfo> = backups
            .iter()
            .filter(|b| b.name.starts_with("recent-"))
            .collect();
        assert_eq!(recent.len(), 2, "{backups:?}");
        assert_eq!(recent[0].hash, second.stamp.hash);
        assert_eq!(storage.backup(&recent[1].name), Some(first.clone()));
        assert_eq!(storage.find_by_hash(&first.stamp.hash), Some(first.clone()));
        assert_eq!(storage.find_by_hash(&"0".repeat(40)), None);
        assert!(backups.iter().any(|b| b.name.starts_with("hourly-")));
        assert_eq!(storage.backup("../election"), None);

        let actions = BTreeMap::from([("1".to_owned(), json!({"a": 1}))]);
        storage.save_actions(&actions).unwrap();
        assert_eq!(storage.load_actions(), actions);
        storage.save_frozen(true).unwrap();
        assert!(storage.load_frozen());
    }

    #[test]
    fn a_torn_recent_backup_is_skipped_and_written_again() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = Storage::open(tmp.path()).unwrap();
        let id = MachineId::from_bytes([3; 16]);
        let schedule = Schedule::new(json!({"v": 1}), 1_000, id);
        storage.backup_schedule(&schedule).unwrap();
        let name = storage.names("recent-").pop().unwrap();
        let path = storage.backup_path(&name, false);
        let bytes = fs::read(&path).unwrap();
        // A crash before the unsynced data reached the disk: empty or cut short.
        for torn in [&[][..], &bytes[..bytes.len() / 2]] {
            fs::write(&path, torn).unwrap();
            assert_eq!(storage.backup(&name), None);
            assert!(storage.backups().iter().all(|b| b.name != name));
            assert_eq!(storage.find_by_hash(&schedule.stamp.hash), None);
            storage.backup_schedule(&schedule).unwrap();
            assert_eq!(storage.backup(&name), Some(schedule.clone()));
        }
    }

    #[test]
    fn only_the_last_fifty_distinct_schedules_are_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = Storage::open(tmp.path()).unwrap();
        let id = MachineId::from_bytes([3; 16]);
        for n in 0..55 {
            storage
                .backup_schedule(&Schedule::new(json!({"n": n}), 1000 + n, id))
                .unwrap();
        }
        assert_eq!(storage.names("recent-").len(), RECENT);
    }
}
