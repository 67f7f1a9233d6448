//! Indexed deployment logs under `--log-dir` (the original's layout).
//!
//! ```text
//! .index/index.<YYYYMMDD>.json   one JSON array per line: [time, deployment_id, pointer, marker]
//! .global/log.<ts>.txt           the daemon's deployment log
//! .changes/log.<ts>.txt          `changes` lines of each schedule
//! <role>/log.<ts>.txt            the renderer's log of one role
//! ```
//!
//! Every directory has a `latest` symlink to its current file; text files rotate at 10 MiB.
//! Lines are appended with `O_APPEND`, so the daemon and its renderers can write at once.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{Value, json};

/// Size at which a text log starts a new file.
const ROTATE_BYTES: u64 = 10 << 20;

/// A log write that failed.
#[derive(Debug, thiserror::Error)]
#[error("write log {path}")]
pub struct LogError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Which text log a line goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stream {
    Global,
    Changes,
    Role(String),
}

impl Stream {
    fn dir_name(&self) -> &str {
        match self {
            Self::Global => ".global",
            Self::Changes => ".changes",
            Self::Role(role) => role,
        }
    }
}

/// What an index line marks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    DeploymentStart,
    DeploymentChanges,
    RoleStart,
    ActionStart(String),
    ActionFinish(String),
    ExternalLog,
    RoleFinish,
    DeploymentFinish,
    DeploymentError,
}

impl Marker {
    fn to_json(&self) -> Value {
        match self {
            Self::DeploymentStart => json!("DeploymentStart"),
            Self::DeploymentChanges => json!("DeploymentChanges"),
            Self::RoleStart => json!("RoleStart"),
            Self::ActionStart(text) => json!({"variant": "ActionStart", "fields": [text]}),
            Self::ActionFinish(text) => json!({"variant": "ActionFinish", "fields": [text]}),
            Self::ExternalLog => json!("ExternalLog"),
            Self::RoleFinish => json!("RoleFinish"),
            Self::DeploymentFinish => json!("DeploymentFinish"),
            Self::DeploymentError => json!("DeploymentError"),
        }
    }
}

/// A position in a log: a text log file or an external log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pointer {
    Text {
        stream: Stream,
        file: String,
        offset: u64,
    },
    External {
        alias_path: String,
        offset: u64,
    },
}

impl Pointer {
    fn to_json(&self) -> Value {
        match self {
            Self::Text {
                stream: Stream::Global,
                file,
                offset,
            } => json!({"variant": "Global", "fields": [file, offset]}),
            Self::Text {
                stream: Stream::Changes,
                file,
                offset,
            } => json!({"variant": "Changes", "fields": [file, offset]}),
            Self::Text {
                stream: Stream::Role(role),
                file,
                offset,
            } => json!({"variant": "Role", "fields": [role, file, offset]}),
            Self::External { alias_path, offset } => {
                json!({"variant": "External", "fields": [alias_path, offset]})
            }
        }
    }
}

/// The deployment log directory.
#[derive(Debug, Clone)]
pub struct DeployLog {
    dir: PathBuf,
}

impl DeployLog {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends `text` to a stream's current file and returns where it starts.
    pub fn append(&self, stream: &Stream, text: &str) -> Result<Pointer, LogError> {
        let dir = self.dir.join(stream.dir_name());
        let (file, offset) = append_rotating(&dir, text.as_bytes(), ROTATE_BYTES)?;
        Ok(Pointer::Text {
            stream: stream.clone(),
            file,
            offset,
        })
    }

    /// The stream's current file (created or rotated as needed), e.g. for a child's output.
    pub fn current_file(&self, stream: &Stream) -> Result<PathBuf, LogError> {
        let dir = self.dir.join(stream.dir_name());
        let (file, _) = append_rotating(&dir, b"", ROTATE_BYTES)?;
        Ok(dir.join(file))
    }

    /// Appends `text` to a stream and indexes it under `marker`.
    pub fn event(
        &self,
        deployment_id: &str,
        stream: &Stream,
        marker: Marker,
        text: &str,
    ) -> Result<(), LogError> {
        let pointer = self.append(stream, text)?;
        self.index(deployment_id, &pointer, &marker)
    }

    /// Appends one line to today's index file.
    pub fn index(
        &self,
        deployment_id: &str,
        pointer: &Pointer,
        marker: &Marker,
    ) -> Result<(), LogError> {
        let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let day: String = now[..10].chars().filter(char::is_ascii_digit).collect();
        let dir = self.dir.join(".index");
        let name = format!("index.{day}.json");
        let path = dir.join(&name);
        let line = json!([now, deployment_id, pointer.to_json(), marker.to_json()]);
        let write = || -> io::Result<()> {
            fs::create_dir_all(&dir)?;
            let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
            file.write_all(format!("{line}\n").as_bytes())?;
            point_latest(&dir, &name)
        };
        write().map_err(|source| LogError { path, source })
    }
}

/// Appends to `<dir>/latest` (or a new `log.<ts>.txt` when it is missing or full) and
/// returns the file name and the offset the text starts at.
fn append_rotating(dir: &Path, bytes: &[u8], rotate: u64) -> Result<(String, u64), LogError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| LogError { path, source }
    };
    fs::create_dir_all(dir).map_err(err(dir))?;
    let current = fs::read_link(dir.join("latest"))
        .ok()
        .and_then(|target| target.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|name| fs::metadata(dir.join(name)).is_ok_and(|meta| meta.len() < rotate));
    let name = match current {
        Some(name) => name,
        None => {
            let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
            let stamp: String = now.chars().filter(char::is_ascii_alphanumeric).collect();
            let name = format!("log.{}.txt", stamp.trim_end_matches('Z'));
            point_latest(dir, &name).map_err(err(dir))?;
            name
        }
    };
    let path = dir.join(&name);
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(err(&path))?;
    let offset = file.metadata().map_err(err(&path))?.len();
    file.write_all(bytes).map_err(err(&path))?;
    Ok((name, offset))
}

/// Points `<dir>/latest` at `name` atomically (symlink beside it, then rename).
fn point_latest(dir: &Path, name: &str) -> io::Result<()> {
    let link = dir.join("latest");
    if fs::read_link(&link).is_ok_and(|target| target == Path::new(name)) {
        return Ok(());
    }
    let staging = dir.join(format!(".latest.{}", std::process::id()));
    let _ = fs::remove_file(&staging);
    symlink(name, &staging)?;
    fs::rename(&staging, &link)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_lines_point_into_text_logs() {
        let tmp = tempfile::tempdir().unwrap();
        let log = DeployLog::new(tmp.path());
        log.event("d1", &Stream::Global, Marker::DeploymentStart, "start\n")
            .unwrap();
        log.event(
            "d1",
            &Stream::Role("web".into()),
            Marker::RoleStart,
            "role\n",
        )
        .unwrap();
        log.event("d1", &Stream::Global, Marker::DeploymentFinish, "done\n")
            .unwrap();
        let index = fs::read_to_string(tmp.path().join(".index/latest")).unwrap();
        let lines: Vec<Value> = index
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0][1], "d1");
        assert_eq!(lines[0][3], "DeploymentStart");
        assert_eq!(lines[1][2]["variant"], "Role");
        assert_eq!(
            lines[2][2]["fields"][1], 6,
            "second global line starts after 'start\\n'"
        );
        let global = fs::read_to_string(tmp.path().join(".global/latest")).unwrap();
        assert_eq!(global, "start\ndone\n");
    }

    #[test]
    fn full_files_rotate() {
        let tmp = tempfile::tempdir().unwrap();
        let (first, _) = append_rotating(tmp.path(), b"0123456789", 5).unwrap();
        fs::rename(tmp.path().join(&first), tmp.path().join("log.old.txt")).unwrap();
        point_latest(tmp.path(), "log.old.txt").unwrap();
        let (second, offset) = append_rotating(tmp.path(), b"abc", 5).unwrap();
        assert_ne!(second, "log.old.txt");
        assert_eq!(offset, 0);
    }
}
