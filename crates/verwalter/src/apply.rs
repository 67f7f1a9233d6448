//! The apply commands of a render.yaml: processes, atomic copies, split files, cleanup.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use regex::Regex;
use sha1::{Digest, Sha1};

use crate::deploy_log::{LogError, Marker, Pointer};
use crate::recipe::{CaptureGlob, CleanFiles, Command, Copy, SplitText};
use crate::renderer::RoleLog;

/// Mode of written files unless the command says otherwise.
const DEFAULT_MODE: u32 = 0o644;

/// A command that failed; commands after it did not run.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{command}: {status}")]
    Failed { command: String, status: String },
    #[error("{command}: spawn: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("{command}: command budget of {budget:?} exhausted; killed")]
    Timeout { command: String, budget: Duration },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("!SplitText {path}: {message}")]
    Split { path: PathBuf, message: String },
    #[error("!PeekLog {path}: {message}")]
    PeekLog { path: String, message: String },
    #[error(transparent)]
    Log(#[from] LogError),
}

fn io_err<'p>(
    action: &'static str,
    path: &'p Path,
) -> impl FnOnce(io::Error) -> ApplyError + use<'p> {
    move |source| ApplyError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Runs the commands of one render.yaml.
#[derive(Debug)]
pub struct Applier<'a> {
    deadline: Instant,
    log: Option<&'a RoleLog>,
    log_dirs: &'a BTreeMap<String, PathBuf>,
}

impl<'a> Applier<'a> {
    pub fn new(
        deadline: Instant,
        log: Option<&'a RoleLog>,
        log_dirs: &'a BTreeMap<String, PathBuf>,
    ) -> Self {
        Self {
            deadline,
            log,
            log_dirs,
        }
    }

    /// Hashes the `!Condition` dirs first, then runs every command in order.
    pub fn run_recipe(&mut self, commands: &[Command]) -> Result<(), ApplyError> {
        let hashes: Vec<Option<String>> = commands
            .iter()
            .map(|command| match command {
                Command::Condition(condition) => Some(hash_dirs(&condition.dirs_changed)),
                _ => None,
            })
            .collect();
        for (command, before) in commands.iter().zip(hashes) {
            match (command, before) {
                (Command::Condition(condition), Some(before)) => {
                    let after = hash_dirs(&condition.dirs_changed);
                    if before == after {
                        self.note(&format!("{}: unchanged, skipped\n", command.describe()))?;
                    } else {
                        self.note(&format!("{}: changed\n", command.describe()))?;
                        for inner in &condition.commands {
                            self.run(inner)?;
                        }
                    }
                }
                _ => self.run(command)?,
            }
        }
        Ok(())
    }

    fn note(&self, text: &str) -> Result<(), ApplyError> {
        match self.log {
            Some(log) => Ok(log.line(text)?),
            None => Ok(()),
        }
    }

    /// Logs a line under an index marker (the index shows where each command's output is).
    fn mark(&self, marker: Marker, text: &str) -> Result<(), ApplyError> {
        match self.log {
            Some(log) => Ok(log.event(marker, text)?),
            None => Ok(()),
        }
    }

    /// Runs one command between `ActionStart` and `ActionFinish` index markers.
    fn run(&mut self, command: &Command) -> Result<(), ApplyError> {
        let description = command.describe();
        self.mark(
            Marker::ActionStart(description.clone()),
            &format!("+ {description}\n"),
        )?;
        let result = self.execute(command);
        let outcome = match &result {
            Ok(()) => format!("- {description}: ok\n"),
            Err(err) => format!("- {description}: failed: {err}\n"),
        };
        self.mark(Marker::ActionFinish(description), &outcome)?;
        result
    }

    fn execute(&mut self, command: &Command) -> Result<(), ApplyError> {
        match command {
            Command::Cmd(argv) => self.process(argv),
            Command::Sh(script) => self.process(&["sh".into(), "-exc".into(), script.clone()]),
            Command::RootCommand(argv) => {
                if isolation::user::effective_uid() == 0 {
                    self.process(argv)
                } else {
                    let mut sudo = vec!["sudo".to_owned(), "-n".to_owned()];
                    sudo.extend(argv.iter().cloned());
                    self.process(&sudo)
                }
            }
            Command::Copy(copy) => copy_file(copy).and_then(|changed| {
                self.note(if changed {
                    "  written\n"
                } else {
                    "  unchanged\n"
                })
            }),
            Command::SplitText(split) => split_text(split, true).map(drop),
            Command::CleanFiles(clean) => clean_files(clean),
            Command::PeekLog(path) => self.peek_log(path),
            // Top-level conditions are handled by run_recipe; nested ones are rejected by
            // validation, so this arm only sees a Condition run unconditionally.
            Command::Condition(condition) => {
                for inner in &condition.commands {
                    self.run(inner)?;
                }
                Ok(())
            }
        }
    }

    fn process(&self, argv: &[String]) -> Result<(), ApplyError> {
        let description = format!("{argv:?}");
        let Some((program, args)) = argv.split_first() else {
            return Err(ApplyError::Failed {
                command: description,
                status: "empty command".into(),
            });
        };
        let mut command = std::process::Command::new(program);
        command.args(args).stdin(Stdio::null()).process_group(0);
        if let Some(log) = self.log {
            let file = self.log_file(log)?;
            let clone = file
                .try_clone()
                .map_err(io_err("duplicate", log.log.dir()))?;
            command.stdout(file).stderr(clone);
        }
        let mut child = command.spawn().map_err(|source| ApplyError::Spawn {
            command: description.clone(),
            source,
        })?;
        loop {
            let waited = child.try_wait().map_err(|source| ApplyError::Spawn {
                command: description.clone(),
                source,
            })?;
            if let Some(status) = waited {
                return if status.success() {
                    Ok(())
                } else {
                    Err(ApplyError::Failed {
                        command: description,
                        status: status.to_string(),
                    })
                };
            }
            if Instant::now() >= self.deadline {
                let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
                let _ = isolation::signal::send_to_group(pid, isolation::Signal::SIGKILL);
                let _ = child.wait();
                return Err(ApplyError::Timeout {
                    command: description,
                    budget: crate::renderer::COMMAND_BUDGET,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The role log's current file, for a child's stdout and stderr.
    fn log_file(&self, log: &RoleLog) -> Result<File, ApplyError> {
        let path = log.log.current_file(&log.stream)?;
        OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err("open", &path))
    }

    fn peek_log(&self, alias_path: &str) -> Result<(), ApplyError> {
        let err = |message: String| ApplyError::PeekLog {
            path: alias_path.to_owned(),
            message,
        };
        let (alias, rest) = alias_path
            .split_once('/')
            .ok_or_else(|| err("expected alias/path".into()))?;
        let dir = self
            .log_dirs
            .get(alias)
            .ok_or_else(|| err(format!("unknown log alias {alias:?} (see sandbox/*.yaml)")))?;
        if Path::new(rest)
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(err("path must stay below the alias".into()));
        }
        let offset = fs::metadata(dir.join(rest)).map_or(0, |meta| meta.len());
        if let Some(log) = self.log {
            log.log.index(
                &log.deployment_id,
                &Pointer::External {
                    alias_path: alias_path.to_owned(),
                    offset,
                },
                &Marker::ExternalLog,
            )?;
        }
        Ok(())
    }
}

/// Writes `bytes` to `dest` through `.tmp.<name>` and a rename, unless `dest` already has
/// that content and mode (so unchanged files keep their mtime). Returns whether it wrote.
pub fn write_atomic(dest: &Path, bytes: &[u8], mode: Option<u32>) -> Result<bool, ApplyError> {
    let mode = mode.unwrap_or(DEFAULT_MODE);
    if let (Ok(existing), Ok(meta)) = (fs::read(dest), fs::metadata(dest))
        && existing == bytes
        && meta.permissions().mode() & 0o7777 == mode
    {
        return Ok(false);
    }
    let dir = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err("create dir", dir))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".tmp.{name}"));
    let write = || -> io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.set_permissions(Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&tmp, dest)
    };
    write().map_err(|source| {
        let _ = fs::remove_file(&tmp);
        ApplyError::Io {
            action: "write",
            path: dest.to_owned(),
            source,
        }
    })?;
    Ok(true)
}

fn read_source(src: Option<&str>) -> Result<(PathBuf, Vec<u8>), ApplyError> {
    let path = PathBuf::from(src.unwrap_or_default());
    let bytes = fs::read(&path).map_err(io_err("read", &path))?;
    Ok((path, bytes))
}

fn copy_file(copy: &Copy) -> Result<bool, ApplyError> {
    let (_, bytes) = read_source(copy.src.as_deref())?;
    write_atomic(Path::new(&copy.dest), &bytes, copy.mode)
}

/// The files a `!SplitText` produces: captured name → content.
fn split_sections(split: &SplitText) -> Result<BTreeMap<String, String>, ApplyError> {
    let (path, bytes) = read_source(split.src.as_deref())?;
    let err = |message: String| ApplyError::Split {
        path: path.clone(),
        message,
    };
    let text = String::from_utf8(bytes).map_err(|_| err("source is not UTF-8".into()))?;
    // Validated when the render.yaml was loaded.
    let section = Regex::new(&split.section).map_err(|e| err(e.to_string()))?;
    let validate = Regex::new(&split.validate).map_err(|e| err(e.to_string()))?;
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    for (number, line) in text.split_inclusive('\n').enumerate() {
        if let Some(captures) = section.captures(line.trim_end_matches(['\n', '\r'])) {
            let name = captures
                .get(1)
                .ok_or_else(|| {
                    err(format!(
                        "line {}: section regex has no capture 1",
                        number + 1
                    ))
                })?
                .as_str()
                .to_owned();
            if !validate.is_match(&name) {
                return Err(err(format!(
                    "line {}: section name {name:?} does not match validate {:?}",
                    number + 1,
                    split.validate
                )));
            }
            if files.contains_key(&name) {
                return Err(err(format!(
                    "line {}: duplicate section {name:?}",
                    number + 1
                )));
            }
            files.insert(name.clone(), String::new());
            current = Some(name);
        } else if let Some(name) = &current {
            if let Some(content) = files.get_mut(name) {
                content.push_str(line);
            }
        } else if !line.trim().is_empty() {
            return Err(err(format!(
                "line {}: text before the first section",
                number + 1
            )));
        }
    }
    Ok(files)
}

/// Splits, writes each file atomically and (when `apply`) removes stale ones. Returns the
/// paths that would be written.
fn split_text(split: &SplitText, apply: bool) -> Result<Vec<(PathBuf, String)>, ApplyError> {
    let files = split_sections(split)?;
    let glob = CaptureGlob::parse(&split.dest).ok_or_else(|| ApplyError::Split {
        path: PathBuf::from(&split.dest),
        message: "bad dest glob".into(),
    })?;
    let planned: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(name, content)| (glob.path_for(name), content.clone()))
        .collect();
    if apply {
        for (path, content) in &planned {
            write_atomic(path, content.as_bytes(), split.mode)?;
        }
        for (name, path) in glob.matches() {
            if !files.contains_key(&name) {
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
            }
        }
    }
    Ok(planned)
}

fn clean_files(clean: &CleanFiles) -> Result<(), ApplyError> {
    let list = Path::new(&clean.keep_list);
    let keep: BTreeSet<String> = fs::read_to_string(list)
        .map_err(io_err("read keep-list", list))?
        .lines()
        .map(|line| line.trim().to_owned())
        .filter(|line| !line.is_empty())
        .collect();
    let glob = CaptureGlob::parse(&clean.pattern).ok_or_else(|| ApplyError::Split {
        path: PathBuf::from(&clean.pattern),
        message: "bad pattern glob".into(),
    })?;
    for (name, path) in glob.matches() {
        if !keep.contains(&name) {
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
        }
    }
    Ok(())
}

/// SHA-1 over the relative paths and contents of every file below `dirs`.
fn hash_dirs(dirs: &[String]) -> String {
    fn walk(dir: &Path, base: &Path, hasher: &mut Sha1) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            if path.is_dir() {
                walk(&path, base, hasher);
            } else if let Ok(content) = fs::read(&path) {
                let relative = path.strip_prefix(base).unwrap_or(&path);
                hasher.update(relative.to_string_lossy().as_bytes());
                hasher.update([0]);
                hasher.update((content.len() as u64).to_le_bytes());
                hasher.update(&content);
            }
        }
    }
    let mut hasher = Sha1::new();
    for dir in dirs {
        hasher.update(dir.as_bytes());
        hasher.update([0]);
        walk(Path::new(dir), Path::new(dir), &mut hasher);
    }
    hex::encode(hasher.finalize())
}

/// `--diff`: unified diffs of what a `!Copy` or `!SplitText` would change.
pub fn diff(command: &Command) -> Vec<String> {
    let unified = |dest: &Path, new: &str| {
        let old = fs::read_to_string(dest).unwrap_or_default();
        if old == new {
            return None;
        }
        let name = dest.display().to_string();
        Some(
            similar::TextDiff::from_lines(old.as_str(), new)
                .unified_diff()
                .header(&name, &format!("{name} (new)"))
                .to_string(),
        )
    };
    match command {
        Command::Copy(copy) => read_source(copy.src.as_deref())
            .ok()
            .and_then(|(_, bytes)| unified(Path::new(&copy.dest), &String::from_utf8_lossy(&bytes)))
            .into_iter()
            .collect(),
        Command::SplitText(split) => split_text(split, false)
            .map(|planned| {
                planned
                    .iter()
                    .filter_map(|(path, content)| unified(path, content))
                    .collect()
            })
            .unwrap_or_default(),
        Command::Condition(condition) => condition.commands.iter().flat_map(diff).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy_log::{DeployLog, Stream};

    #[test]
    fn each_command_is_indexed_between_action_markers() {
        let tmp = tempfile::tempdir().unwrap();
        let log = RoleLog {
            log: DeployLog::new(tmp.path()),
            stream: Stream::Role("web".into()),
            deployment_id: "d1".into(),
        };
        let log_dirs = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut applier = Applier::new(deadline, Some(&log), &log_dirs);
        let commands = [
            Command::Sh("echo hello".into()),
            Command::Cmd(vec!["false".into()]),
            Command::Sh("echo never".into()),
        ];
        assert!(matches!(
            applier.run_recipe(&commands),
            Err(ApplyError::Failed { .. })
        ));
        let index = fs::read_to_string(tmp.path().join(".index/latest")).unwrap();
        let markers: Vec<serde_json::Value> = index
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()[3].clone())
            .collect();
        let echo = "!Sh \"echo hello\"";
        let false_cmd = "!Cmd [\"false\"]";
        assert_eq!(
            markers,
            [
                serde_json::json!({"variant": "ActionStart", "fields": [echo]}),
                serde_json::json!({"variant": "ActionFinish", "fields": [echo]}),
                serde_json::json!({"variant": "ActionStart", "fields": [false_cmd]}),
                serde_json::json!({"variant": "ActionFinish", "fields": [false_cmd]}),
            ]
        );
        // The pointers lead to the command's line, its output, then its outcome.
        let text = fs::read_to_string(tmp.path().join("web/latest")).unwrap();
        let first: serde_json::Value = serde_json::from_str(index.lines().next().unwrap()).unwrap();
        assert_eq!(first[2]["variant"], "Role");
        assert_eq!(first[2]["fields"][2], 0);
        assert!(text.starts_with("+ !Sh \"echo hello\"\n"), "{text}");
        assert!(text.contains("hello\n- !Sh \"echo hello\": ok\n"), "{text}");
        assert!(text.contains("- !Cmd [\"false\"]: failed: "), "{text}");
        assert!(!text.contains("never"), "{text}");
    }

    #[test]
    fn atomic_write_skips_identical_content() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("a/b.conf");
        assert!(write_atomic(&dest, b"x", None).unwrap());
        assert!(!write_atomic(&dest, b"x", None).unwrap());
        assert!(write_atomic(&dest, b"x", Some(0o600)).unwrap());
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!tmp.path().join("a/.tmp.b.conf").exists());
    }

    #[test]
    fn split_text_writes_sections_and_removes_stale_files() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::write(&src, "\n[one]\na=1\n[two]\nb=2\n").unwrap();
        let out = tmp.path().join("out");
        fs::create_dir(&out).unwrap();
        fs::write(out.join("stale.conf"), "old").unwrap();
        fs::write(out.join("other.txt"), "keep").unwrap();
        let split = SplitText {
            section: r"^\[(\w+)\]$".into(),
            validate: r"^[a-z]+$".into(),
            src: Some(src.to_string_lossy().into()),
            dest: format!("{}/(*).conf", out.display()),
            mode: None,
        };
        split_text(&split, true).unwrap();
        assert_eq!(fs::read_to_string(out.join("one.conf")).unwrap(), "a=1\n");
        assert_eq!(fs::read_to_string(out.join("two.conf")).unwrap(), "b=2\n");
        assert!(!out.join("stale.conf").exists());
        assert!(out.join("other.txt").exists());

        fs::write(&src, "junk\n[one]\n").unwrap();
        let err = split_text(&split, true).unwrap_err();
        assert!(
            err.to_string().contains("before the first section"),
            "{err}"
        );
        fs::write(&src, "[BAD]\n").unwrap();
        assert!(split_text(&split, true).is_err());
    }

    #[test]
    fn clean_files_keeps_listed_names() {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["a.img", "b.img", "c.img"] {
            fs::write(tmp.path().join(name), "").unwrap();
        }
        let keep = tmp.path().join("keep");
        fs::write(&keep, "a\n c \n").unwrap();
        clean_files(&CleanFiles {
            pattern: format!("{}/(*).img", tmp.path().display()),
            keep_list: keep.to_string_lossy().into(),
        })
        .unwrap();
        assert!(tmp.path().join("a.img").exists());
        assert!(!tmp.path().join("b.img").exists());
        assert!(tmp.path().join("c.img").exists());
    }

    #[test]
    fn dir_hash_changes_with_content() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = vec![tmp.path().to_string_lossy().into_owned()];
        let empty = hash_dirs(&dirs);
        fs::write(tmp.path().join("f"), "1").unwrap();
        let one = hash_dirs(&dirs);
        assert_ne!(empty, one);
        assert_eq!(one, hash_dirs(&dirs));
    }
}
