//! Laying out a collection of metrics in the file pair and keeping the values file current.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::format::{Name, NameError, SlotKind, name_to_json, parse_name};
use crate::metrics::{Metric, Slot};

/// How often a started collection copies its values into the values file.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// The values file is a whole number of pages, as libcantal always wrote it.
const PAGE_SIZE: usize = 4096;
/// States start on a cache line, as cantal-py aligns them.
const STATE_ALIGN: usize = 64;
/// Counters and levels are 8-byte words.
const WORD_ALIGN: usize = 8;

/// A failed collection operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("metric {name} is already in the collection")]
    Duplicate { name: String },
    #[error("write {path}")]
    Write { path: PathBuf, source: io::Error },
    #[error("rename {from} to {to}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("start the thread that writes {path}")]
    Thread { path: PathBuf, source: io::Error },
}

/// Metrics to publish, each under a unique name.
#[derive(Debug, Default)]
pub struct Collection {
    metrics: BTreeMap<Name, Slot>,
}

impl Collection {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `metric` under `json_name`, a JSON object with string values such as
    /// `{"metric": "requests.number"}`. Key order does not matter; a name already in the
    /// collection is an error.
    pub fn add(&mut self, json_name: &str, metric: &impl Metric) -> Result<(), Error> {
        let name = parse_name(json_name)?;
        if self.metrics.contains_key(&name) {
            return Err(Error::Duplicate {
                name: name_to_json(&name),
            });
        }
        self.metrics.insert(name, metric.slot());
        Ok(())
    }

    /// Publishes the collection at `base` (`base.meta`, `base.values`).
    pub fn start_at(&self, base: impl Into<PathBuf>) -> Result<ActiveCollection, Error> {
        let base = base.into();
        let layout = Layout::of(self);
        let values_path = with_suffix(&base, ".values");
        let meta_path = with_suffix(&base, ".meta");
        let tmp_path = with_suffix(&base, ".tmp");

        let mut values = vec![0; layout.file_len];
        layout.fill(&mut values);
        let file = write_new(&tmp_path, &values)?;
        rename(&tmp_path, &values_path)?;
        write_new(&tmp_path, layout.meta.as_bytes())?;
        rename(&tmp_path, &meta_path)?;

        let writer = Arc::new(Mutex::new(ValuesWriter {
            file,
            layout,
            written: values.clone(),
            scratch: values,
        }));
        let (stop, stopped) = mpsc::channel::<()>();
        let thread_writer = Arc::clone(&writer);
        let thread = std::thread::Builder::new()
            .name("libcantal".to_owned())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(FLUSH_INTERVAL) {
                    if let Err(e) = lock(&thread_writer).flush() {
                        tracing::warn!(error = %e, "cannot write cantal values");
                    }
                }
            })
            .map_err(|source| Error::Thread {
                path: values_path.clone(),
                source,
            })?;
        Ok(ActiveCollection {
            meta_path,
            values_path,
            writer,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// This process's uid, from the owner of `/proc/self`: std only, so that applications linking
/// libcantal pull in no system-call crate for a fallback file name.
fn owner_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or(0, |meta| meta.uid())
}

/// Publishes `collection` at `$CANTAL_PATH`, or at [`fallback_path`] with a warning when the
/// variable is unset (the agent does not find files there, `cantal dump` does).
pub fn start(collection: &Collection) -> Result<ActiveCollection, Error> {
    let base = match std::env::var_os("CANTAL_PATH").filter(|p| !p.is_empty()) {
        Some(path) => PathBuf::from(path),
        None => {
            let xdg = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
            let path = fallback_path(
                xdg.as_deref(),
                &std::env::temp_dir(),
                owner_uid(),
                std::process::id(),
            );
            tracing::warn!(path = %path.display(), "CANTAL_PATH is not set; cantal-agent will not find these metrics");
            path
        }
    };
    collection.start_at(base)
}

/// Where writers put their files without `CANTAL_PATH`: `$XDG_RUNTIME_DIR/cantal.PID`, else
/// `TEMP/cantal.UID.PID`.
pub fn fallback_path(
    xdg_runtime_dir: Option<&Path>,
    temp_dir: &Path,
    uid: u32,
    pid: u32,
) -> PathBuf {
    match xdg_runtime_dir.filter(|dir| !dir.as_os_str().is_empty()) {
        Some(dir) => dir.join(format!("cantal.{pid}")),
        None => temp_dir.join(format!("cantal.{uid}.{pid}")),
    }
}

/// A published collection. Dropping it removes both files; the metrics keep counting in
/// memory.
#[derive(Debug)]
pub struct ActiveCollection {
    meta_path: PathBuf,
    values_path: PathBuf,
    writer: Arc<Mutex<ValuesWriter>>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ActiveCollection {
    /// Writes the current values now instead of at the next [`FLUSH_INTERVAL`].
    pub fn flush(&self) -> io::Result<()> {
        lock(&self.writer).flush()
    }

    pub fn meta_path(&self) -> &Path {
        &self.meta_path
    }

    pub fn values_path(&self) -> &Path {
        &self.values_path
    }
}

impl Drop for ActiveCollection {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        for path in [&self.meta_path, &self.values_path] {
            if let Err(e) = fs::remove_file(path)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove cantal file");
            }
        }
    }
}

fn lock(writer: &Mutex<ValuesWriter>) -> std::sync::MutexGuard<'_, ValuesWriter> {
    // A panic while flushing leaves buffers that the next flush overwrites whole.
    writer.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Slot offsets and the meta text of a collection.
#[derive(Debug)]
struct Layout {
    slots: Vec<(usize, Slot)>,
    meta: String,
    file_len: usize,
}

impl Layout {
    /// Sorts by size then JSON name (as cantal-py does), aligning words to 8 and states to 64.
    fn of(collection: &Collection) -> Self {
        let mut sorted: Vec<(String, &Slot)> = collection
            .metrics
            .iter()
            .map(|(name, slot)| (name_to_json(name), slot))
            .collect();
        sorted.sort_by(|(a_name, a), (b_name, b)| (a.size(), a_name).cmp(&(b.size(), b_name)));
        let mut lines = Vec::with_capacity(sorted.len());
        let mut slots = Vec::with_capacity(sorted.len());
        let mut offset = 0;
        for (name, slot) in sorted {
            let align = if slot.kind() == SlotKind::State {
                STATE_ALIGN
            } else {
                WORD_ALIGN
            };
            if offset % align != 0 {
                let pad = align - offset % align;
                lines.push(SlotKind::Pad.type_line(pad));
                offset += pad;
            }
            lines.push(format!("{}: {name}", slot.kind().type_line(slot.size())));
            slots.push((offset, slot.clone()));
            offset += slot.size();
        }
        Self {
            slots,
            meta: lines.join("\n"),
            file_len: offset.div_ceil(PAGE_SIZE) * PAGE_SIZE,
        }
    }

    fn fill(&self, values: &mut [u8]) {
        for (offset, slot) in &self.slots {
            slot.write(&mut values[*offset..*offset + slot.size()]);
        }
    }
}

#[derive(Debug)]
struct ValuesWriter {
    file: File,
    layout: Layout,
    /// What the file holds now.
    written: Vec<u8>,
    scratch: Vec<u8>,
}

impl ValuesWriter {
    /// Writes the values if any changed since the last write.
    fn flush(&mut self) -> io::Result<()> {
        self.layout.fill(&mut self.scratch);
        if self.scratch != self.written {
            self.file.write_all_at(&self.scratch, 0)?;
            std::mem::swap(&mut self.scratch, &mut self.written);
        }
        Ok(())
    }
}

fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut path = OsString::from(base.as_os_str());
    path.push(suffix);
    PathBuf::from(path)
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<File, Error> {
    let err = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    Ok(file)
}

fn rename(from: &Path, to: &Path) -> Result<(), Error> {
    fs::rename(from, to).map_err(|source| Error::Rename {
        from: from.to_owned(),
        to: to.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Value, parse_meta};
    use crate::{Counter, Float, Integer, State};

    #[test]
    fn layout_sorts_pads_and_rounds_to_a_page() {
        let mut collection = Collection::new();
        collection
            .add(r#"{"state": "sql.request"}"#, &State::new())
            .unwrap();
        collection
            .add(r#"{"metric": "queue.size"}"#, &Integer::new())
            .unwrap();
        collection
            .add(
                r#"{"unit": "ms", "metric": "requests.duration"}"#,
                &Counter::new(),
            )
            .unwrap();
        collection
            .add(r#"{"metric": "requests.number"}"#, &Counter::new())
            .unwrap();
        let layout = Layout::of(&collection);
        assert_eq!(
            layout.meta,
            "level 8 signed: {\"metric\": \"queue.size\"}\n\
             counter 8: {\"metric\": \"requests.duration\", \"unit\": \"ms\"}\n\
             counter 8: {\"metric\": \"requests.number\"}\n\
             pad 40\n\
             state 64: {\"state\": \"sql.request\"}"
        );
        assert_eq!(layout.file_len, PAGE_SIZE);
        assert_eq!(parse_meta(layout.meta.as_bytes()).unwrap().values_len, 128);
    }

    #[test]
    fn duplicate_and_bad_names_are_errors() {
        let mut collection = Collection::new();
        collection
            .add(r#"{"metric": "a"}"#, &Counter::new())
            .unwrap();
        let dup = collection
            .add(r#"{ "metric":"a" }"#, &Float::new())
            .unwrap_err();
        assert!(matches!(dup, Error::Duplicate { .. }), "{dup}");
        assert!(matches!(
            collection.add("[1]", &Counter::new()),
            Err(Error::Name(_))
        ));
    }

    #[test]
    fn values_carry_over_and_follow_updates() {
        let dir = tempfile::tempdir().unwrap();
        let counter = Counter::new();
        counter.incr(5);
        let level = Float::new();
        let mut collection = Collection::new();
        collection.add(r#"{"metric": "c"}"#, &counter).unwrap();
        collection.add(r#"{"metric": "f"}"#, &level).unwrap();
        let base = dir.path().join("app");
        let active = collection.start_at(&base).unwrap();
        let read = || {
            let meta = parse_meta(&fs::read(active.meta_path()).unwrap()).unwrap();
            let values = fs::read(active.values_path()).unwrap();
            meta.decode(&values)
                .unwrap()
                .into_iter()
                .map(|(name, value)| (name["metric"].clone(), value))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            read(),
            [
                ("c".to_owned(), Value::Counter(5)),
                ("f".to_owned(), Value::Float(0.0))
            ]
        );
        counter.incr(2);
        level.set(1.5);
        active.flush().unwrap();
        assert_eq!(
            read(),
            [
                ("c".to_owned(), Value::Counter(7)),
                ("f".to_owned(), Value::Float(1.5))
            ]
        );
        assert!(!with_suffix(&base, ".tmp").exists());
        drop(active);
        assert!(!with_suffix(&base, ".meta").exists());
        assert!(!with_suffix(&base, ".values").exists());
        counter.incr(1);
        assert_eq!(counter.get(), 8);
    }

    #[test]
    fn fallback_prefers_the_runtime_dir() {
        let tmp = Path::new("/tmp");
        assert_eq!(
            fallback_path(Some(Path::new("/run/user/1000")), tmp, 1000, 42),
            Path::new("/run/user/1000/cantal.42")
        );
        assert_eq!(
            fallback_path(None, tmp, 1000, 42),
            Path::new("/tmp/cantal.1000.42")
        );
        assert_eq!(
            fallback_path(Some(Path::new("")), tmp, 0, 1),
            Path::new("/tmp/cantal.0.1")
        );
    }
}
