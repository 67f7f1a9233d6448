//! The tree's statistics as a cantal metrics file pair (spec/cantal.md §2.5, the format of
//! `libcantal::format`): `PATH.meta` lists the slots, `PATH.values` holds them back to back in
//! host byte order. Both are replaced by write-to-temporary and rename when the set of metrics
//! changes (processes come and go with reloads, which libcantal's fixed collections do not
//! do); values are rewritten in place otherwise.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use libcantal::format::{SlotKind, Value, parse_meta};

/// Kind of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Level,
}

impl Kind {
    fn slot_kind(self) -> SlotKind {
        match self {
            Kind::Counter => SlotKind::Counter,
            Kind::Level => SlotKind::Signed,
        }
    }
}

/// The metrics: name (JSON object, the cantal series key) to kind and value.
#[derive(Debug)]
pub struct Metrics {
    path: PathBuf,
    slots: BTreeMap<String, (Kind, i64)>,
    layout: Vec<String>,
    values_file: Option<File>,
    dirty: bool,
}

fn json_name(group: &str, metric: &str) -> String {
    serde_json::json!({"group": group, "metric": metric}).to_string()
}

impl Metrics {
    /// Metrics published at `path` (`.meta` and `.values` are appended). Counters found in
    /// an existing pair (left by the previous image of this tree) carry over.
    pub fn new(path: &Path) -> Metrics {
        let mut m = Metrics {
            path: path.to_owned(),
            slots: BTreeMap::new(),
            layout: Vec::new(),
            values_file: None,
            dirty: true,
        };
        for (name, kind, value) in read(path) {
            if kind == Kind::Counter {
                m.slots.insert(name, (kind, value));
            }
        }
        m
    }

    fn slot(&mut self, group: &str, metric: &str, kind: Kind) -> &mut i64 {
        self.dirty = true;
        &mut self
            .slots
            .entry(json_name(group, metric))
            .or_insert((kind, 0))
            .1
    }

    pub fn incr(&mut self, group: &str, metric: &str) {
        *self.slot(group, metric, Kind::Counter) += 1;
    }

    pub fn set(&mut self, group: &str, metric: &str, value: i64) {
        *self.slot(group, metric, Kind::Level) = value;
    }

    pub fn get(&self, group: &str, metric: &str) -> Option<i64> {
        self.slots.get(&json_name(group, metric)).map(|(_, v)| *v)
    }

    /// Writes what changed since the last flush.
    pub fn flush(&mut self) -> std::io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let names: Vec<String> = self.slots.keys().cloned().collect();
        let mut values = Vec::with_capacity(names.len() * 8);
        for (_, value) in self.slots.values() {
            values.extend_from_slice(&value.to_ne_bytes());
        }
        if names != self.layout || self.values_file.is_none() {
            if let Some(dir) = self.path.parent() {
                fs::create_dir_all(dir)?;
            }
            let values_path = with_suffix(&self.path, ".values");
            let meta_path = with_suffix(&self.path, ".meta");
            // Readers map slots by the meta file: values first, then meta, each renamed.
            let mut padded = values.clone();
            padded.resize(values.len().div_ceil(4096).max(1) * 4096, 0);
            crate::state::write_atomic(&values_path, &padded)?;
            let meta: Vec<String> = self
                .slots
                .iter()
                .map(|(name, (kind, _))| format!("{}: {name}", kind.slot_kind().type_line(8)))
                .collect();
            crate::state::write_atomic(&meta_path, meta.join("\n").as_bytes())?;
            self.values_file = Some(OpenOptions::new().write(true).open(&values_path)?);
            self.layout = names;
        } else if let Some(f) = &self.values_file {
            f.write_all_at(&values, 0)?;
        }
        self.dirty = false;
        Ok(())
    }

    /// Removes both files (on an orderly stop).
    pub fn remove(&self) {
        let _ = fs::remove_file(with_suffix(&self.path, ".meta"));
        let _ = fs::remove_file(with_suffix(&self.path, ".values"));
    }
}

/// Makes sure `CANTAL_PATH` is in this process's environment, where cantal looks for it:
/// when it is missing, re-executes `exe` with it set (same pid, before anything started).
pub fn advertise(exe: &Path, argv: &[std::ffi::OsString], default: &Path) {
    if std::env::var_os("CANTAL_PATH").is_some() {
        return;
    }
    let mut env: Vec<_> = std::env::vars_os().collect();
    env.push(("CANTAL_PATH".into(), default.into()));
    if std::env::var_os("CANTAL_APPNAME").is_none() {
        env.push(("CANTAL_APPNAME".into(), "lithos".into()));
    }
    // On failure the tree runs on without advertising its metrics.
    let _ = isolation::exec::replace(exe, argv, env);
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Reads a pair back: (json name, kind, value) of each counter and signed level; a missing,
/// unreadable or short pair reads as empty.
pub fn read(path: &Path) -> Vec<(String, Kind, i64)> {
    let (Ok(meta), Ok(values)) = (
        fs::read(with_suffix(path, ".meta")),
        fs::read(with_suffix(path, ".values")),
    ) else {
        return Vec::new();
    };
    let Ok(meta) = parse_meta(&meta) else {
        return Vec::new();
    };
    let Ok(decoded) = meta.decode(&values) else {
        return Vec::new();
    };
    decoded
        .into_iter()
        .filter_map(|(name, value)| {
            let (kind, value) = match value {
                Value::Counter(v) => (Kind::Counter, v as i64),
                Value::Signed(v) => (Kind::Level, v),
                _ => return None,
            };
            // Names are kept as the JSON serde_json writes, the form `json_name` makes.
            let json = serde_json::to_string(name).ok()?;
            Some((json, kind, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_follow_the_cantal_layout_and_counters_carry_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics/lithos");
        let mut m = Metrics::new(&path);
        m.incr("master", "restarts");
        m.set("containers", "running", 2);
        m.flush().unwrap();
        let meta = fs::read_to_string(dir.path().join("metrics/lithos.meta")).unwrap();
        assert_eq!(
            meta,
            "level 8 signed: {\"group\":\"containers\",\"metric\":\"running\"}\n\
             counter 8: {\"group\":\"master\",\"metric\":\"restarts\"}"
        );
        let values = fs::read(dir.path().join("metrics/lithos.values")).unwrap();
        assert_eq!(values.len(), 4096);
        assert_eq!(&values[..8], &2i64.to_ne_bytes());
        assert_eq!(&values[8..16], &1i64.to_ne_bytes());
        m.incr("master", "restarts");
        m.flush().unwrap();
        let again = Metrics::new(&path);
        assert_eq!(again.get("master", "restarts"), Some(2));
        assert_eq!(again.get("containers", "running"), None);
    }
}
