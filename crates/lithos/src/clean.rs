//! Image garbage collection (`lithos_clean`) and the config log it reads: every applied
//! processes config is appended as a JSON line to `<config-log-dir>/<sbx>.log`
//! (rotated at 10 MiB, 100 files kept).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::{self, Master};
use crate::instance::Sandbox;

const LOG_LIMIT: u64 = 10 << 20;
const LOG_FILES: u32 = 100;

/// Appends one line to the sandbox's config log, rotating it when it is full.
pub fn append_config_log(dir: &Path, sandbox: &str, line: &str) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let path = dir.join(format!("{sandbox}.log"));
    if fs::metadata(&path).is_ok_and(|m| m.len() >= LOG_LIMIT) {
        for n in (1..LOG_FILES).rev() {
            let from = dir.join(format!("{sandbox}.log.{n}"));
            if from.exists() {
                fs::rename(&from, dir.join(format!("{sandbox}.log.{}", n + 1)))?;
            }
        }
        fs::rename(&path, dir.join(format!("{sandbox}.log.1")))?;
    }
    let mut f = OpenOptions::new().append(true).create(true).open(&path)?;
    writeln!(f, "{line}")
}

/// What `lithos_clean` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    ListUsed,
    ListUnused,
    DeleteUnused,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub action: Action,
    pub clean_logs: bool,
    /// Config-log history this many days back counts as use.
    pub days: u64,
    /// Keep at least this many of the most recent unused images per image dir.
    pub vmin: usize,
    /// Delete at most this many images per image dir in one run.
    pub vmax: usize,
    /// Images modified more recently than this are never deleted.
    pub keep_recent: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CleanError {
    #[error("read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("delete {path}: {source}")]
    Delete {
        path: String,
        source: std::io::Error,
    },
}

/// Images of an image dir: paths exactly `levels` deep, relative to the dir.
fn images(dir: &Path, levels: u32) -> Vec<PathBuf> {
    let mut current = vec![PathBuf::new()];
    for _ in 0..levels {
        let mut next = Vec::new();
        for rel in current {
            if let Ok(entries) = fs::read_dir(dir.join(&rel)) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir())
                        && !e.file_name().to_string_lossy().starts_with('.')
                    {
                        next.push(rel.join(e.file_name()));
                    }
                }
            }
        }
        current = next;
    }
    current.sort();
    current
}

/// Images named in the config log of `sandbox` within the last `days`.
fn logged_images(dir: &Path, sandbox: &str, days: u64) -> BTreeSet<PathBuf> {
    let since = SystemTime::now() - Duration::from_secs(days * 86400);
    let since_ms = since
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut used = BTreeSet::new();
    let mut files = vec![dir.join(format!("{sandbox}.log"))];
    files.extend((1..=LOG_FILES).map(|n| dir.join(format!("{sandbox}.log.{n}"))));
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["time_ms"].as_u64().unwrap_or(0) < since_ms {
                continue;
            }
            if let Some(entries) = v["entries"].as_object() {
                for e in entries.values() {
                    if let Some(image) = e["image"].as_str() {
                        used.insert(PathBuf::from(image));
                    }
                }
            }
        }
    }
    used
}

/// Per image dir: used and unused images (unused ones deletable by the rules).
#[derive(Debug, Default)]
pub struct Report {
    pub used: BTreeMap<PathBuf, BTreeSet<PathBuf>>,
    pub unused: BTreeMap<PathBuf, Vec<PathBuf>>,
    pub skipped: Vec<String>,
}

/// Works out used and unused images of every auto-clean sandbox.
pub fn survey(master: &Master, opts: &Options) -> Report {
    let mut report = Report::default();
    let mut dirs: BTreeMap<PathBuf, (u32, bool)> = BTreeMap::new();
    let mut blocked: BTreeSet<PathBuf> = BTreeSet::new();
    for name in master.sandbox_names().unwrap_or_default() {
        let sbx = match Sandbox::load(master, &name) {
            Ok(s) => s,
            Err(e) => {
                report.skipped.push(format!("sandbox {name}: {e}"));
                continue;
            }
        };
        let dir = sbx.file.image_dir.clone();
        let entry = dirs
            .entry(dir.clone())
            .or_insert((sbx.file.image_dir_levels, false));
        entry.1 |= sbx.file.auto_clean;
        if entry.0 != sbx.file.image_dir_levels {
            report.skipped.push(format!(
                "{}: sandboxes disagree on image-dir-levels",
                dir.display()
            ));
            blocked.insert(dir.clone());
        }
        let used = report.used.entry(dir.clone()).or_default();
        match config::load_processes(&sbx.processes_path) {
            Ok((file, _)) => used.extend(file.values().map(|e| PathBuf::from(&e.image))),
            Err(e) if sbx.processes_path.exists() => {
                report.skipped.push(format!("{}: {e}", dir.display()));
                blocked.insert(dir.clone());
            }
            Err(_) => {}
        }
        if let Some(list) = &sbx.file.used_images_list {
            match fs::read_to_string(list) {
                Ok(text) => used.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(PathBuf::from),
                ),
                Err(e) => {
                    report
                        .skipped
                        .push(format!("{}: read {}: {e}", dir.display(), list.display()));
                    blocked.insert(dir.clone());
                }
            }
        } else if let Some(log_dir) = &master.config_log_dir {
            used.extend(logged_images(log_dir, &name, opts.days));
        }
    }
    let now = SystemTime::now();
    for (dir, (levels, auto_clean)) in dirs {
        if !auto_clean || blocked.contains(&dir) {
            continue;
        }
        let used = report.used.get(&dir).cloned().unwrap_or_default();
        let mut unused: Vec<(SystemTime, PathBuf)> = images(&dir, levels)
            .into_iter()
            .filter(|i| !used.contains(i))
            .filter_map(|i| {
                let modified = fs::metadata(dir.join(&i)).and_then(|m| m.modified()).ok()?;
                Some((modified, i))
            })
            .filter(|(m, _)| now.duration_since(*m).unwrap_or_default() >= opts.keep_recent)
            .collect();
        unused.sort();
        let keep = opts.vmin.min(unused.len());
        unused.truncate(unused.len() - keep);
        unused.truncate(opts.vmax);
        report
            .unused
            .insert(dir, unused.into_iter().map(|(_, i)| i).collect());
    }
    report
}

/// Deletes what the survey found unused; returns the deleted paths.
pub fn delete_unused(report: &Report) -> Result<Vec<PathBuf>, CleanError> {
    let mut deleted = Vec::new();
    for (dir, images) in &report.unused {
        for image in images {
            let path = dir.join(image);
            fs::remove_dir_all(&path).map_err(|source| CleanError::Delete {
                path: path.display().to_string(),
                source,
            })?;
            deleted.push(path);
        }
    }
    Ok(deleted)
}

/// Removes rotated config logs older than `days`.
pub fn clean_logs(master: &Master, days: u64) -> Result<Vec<PathBuf>, CleanError> {
    let mut removed = Vec::new();
    let Some(dir) = &master.config_log_dir else {
        return Ok(removed);
    };
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(source) => {
            return Err(CleanError::Read {
                path: dir.display().to_string(),
                source,
            });
        }
    };
    let limit = Duration::from_secs(days * 86400);
    for e in entries.flatten() {
        let rotated = e
            .file_name()
            .to_string_lossy()
            .rsplit_once(".log.")
            .is_some();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age > limit);
        if rotated && old {
            fs::remove_file(e.path()).map_err(|source| CleanError::Delete {
                path: e.path().display().to_string(),
                source,
            })?;
            removed.push(e.path());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_log_rotates_and_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let line = serde_json::json!({"time_ms": crate::state::now_ms(), "entries": {"w": {"image": "v1"}}}).to_string();
        append_config_log(dir.path(), "demo", &line).unwrap();
        let used = logged_images(dir.path(), "demo", 1);
        assert!(used.contains(Path::new("v1")));
        fs::write(dir.path().join("demo.log"), vec![b'x'; LOG_LIMIT as usize]).unwrap();
        append_config_log(dir.path(), "demo", &line).unwrap();
        assert!(dir.path().join("demo.log.1").exists());
        assert!(fs::metadata(dir.path().join("demo.log")).unwrap().len() < 1000);
    }

    #[test]
    fn images_are_found_at_their_depth() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("app/v1")).unwrap();
        fs::create_dir_all(dir.path().join("app/v2")).unwrap();
        assert_eq!(
            images(dir.path(), 2),
            [PathBuf::from("app/v1"), PathBuf::from("app/v2")]
        );
        assert_eq!(images(dir.path(), 1), [PathBuf::from("app")]);
    }
}
