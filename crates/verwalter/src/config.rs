//! The config directory: scheduler, templates, `runtime/`, `machine/` and `sandbox/`.
//!
//! Files are re-read on change; a file that fails to parse keeps its previous content in
//! force and its error (file:line:column) is reported.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// A config or input file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

/// Reads a YAML or JSON file (by extension) into `T`, naming file, line and column on error.
pub fn parse_file<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_text(path, &text)
}

/// Parses `text` as the file `path` (JSON for `.json`, YAML otherwise).
pub fn parse_text<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    if path.extension().is_some_and(|ext| ext == "json") {
        serde_json::from_str(text).map_err(|err| ConfigError::Parse {
            path: path.to_owned(),
            line: err.line(),
            column: err.column(),
            message: strip_location(&err.to_string()),
        })
    } else {
        serde_yaml::from_str(text).map_err(|err| {
            let (line, column) = err
                .location()
                .map_or((0, 0), |loc| (loc.line(), loc.column()));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: strip_location(&err.to_string()),
            }
        })
    }
}

/// serde's messages end with " at line L column C"; the error prints its own location.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_owned(),
        None => message.to_owned(),
    }
}

/// The layout of a config directory.
#[derive(Debug, Clone)]
pub struct ConfigDir {
    root: PathBuf,
}

impl ConfigDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `scheduler/v1`: the only directory `require` resolves in.
    pub fn scheduler_dir(&self) -> PathBuf {
        self.root.join("scheduler/v1")
    }

    pub fn templates_dir(&self) -> PathBuf {
        self.root.join("templates")
    }

    pub fn frontend_dir(&self) -> PathBuf {
        self.root.join("frontend")
    }
}

/// `sandbox/*.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SandboxFile {
    #[serde(default, alias = "log-dirs")]
    log_dirs: BTreeMap<String, PathBuf>,
}

/// The inputs read from a config directory, with the last good content of every file.
#[derive(Debug, Default, Clone)]
pub struct Inputs {
    /// `runtime[role][ver][NAME]`.
    pub runtime: Value,
    /// `machine.NAME`.
    pub machine: Map<String, Value>,
    /// `sandbox/*.yaml` `log_dirs`, merged.
    pub log_dirs: BTreeMap<String, PathBuf>,
    /// Current errors, by file.
    pub errors: BTreeMap<PathBuf, String>,
    files: BTreeMap<PathBuf, Value>,
}

impl Inputs {
    /// Reads everything once.
    pub fn load(dir: &ConfigDir) -> Self {
        let mut inputs = Self::default();
        inputs.reload(dir);
        inputs
    }

    /// Re-reads every input file. A file that fails keeps its previous content; a file that
    /// disappeared is dropped. Returns whether anything the scheduler sees changed.
    pub fn reload(&mut self, dir: &ConfigDir) -> bool {
        let mut files = BTreeMap::new();
        let mut errors = BTreeMap::new();
        let mut paths = data_files(&dir.root.join("runtime"), 3);
        paths.extend(data_files(&dir.root.join("machine"), 1));
        for path in paths {
            match parse_file::<Value>(&path) {
                Ok(value) => {
                    files.insert(path, value);
                }
                Err(err) => {
                    errors.insert(path.clone(), err.to_string());
                    if let Some(previous) = self.files.get(&path) {
                        files.insert(path, previous.clone());
                    }
                }
            }
        }
        let mut log_dirs = BTreeMap::new();
        read_sandbox(dir, &mut log_dirs, &mut errors);
        let mut runtime = Map::new();
        let mut machine = Map::new();
        for (path, value) in &files {
            let Ok(relative) = path.strip_prefix(&dir.root) else {
                continue;
            };
            let parts: Vec<String> = relative
                .iter()
                .map(|part| part.to_string_lossy().into_owned())
                .collect();
            let name = file_stem(path);
            match parts.as_slice() {
                [top, role, version, _] if top == "runtime" => {
                    let role = runtime
                        .entry(role.clone())
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let Some(versions) = role.as_object_mut() {
                        let version = versions
                            .entry(version.clone())
                            .or_insert_with(|| Value::Object(Map::new()));
                        if let Some(names) = version.as_object_mut() {
                            names.insert(name, value.clone());
                        }
                    }
                }
                [top, _] if top == "machine" => {
                    machine.insert(name, value.clone());
                }
                _ => {}
            }
        }
        let runtime = Value::Object(runtime);
        let changed = runtime != self.runtime || machine != self.machine;
        self.runtime = runtime;
        self.machine = machine;
        self.log_dirs = log_dirs;
        self.errors = errors;
        self.files = files;
        changed
    }
}

/// `sandbox/*.yaml` alone: the renderer needs only these of the inputs.
pub fn log_dirs(dir: &ConfigDir) -> BTreeMap<String, PathBuf> {
    let mut log_dirs = BTreeMap::new();
    read_sandbox(dir, &mut log_dirs, &mut BTreeMap::new());
    log_dirs
}

fn read_sandbox(
    dir: &ConfigDir,
    log_dirs: &mut BTreeMap<String, PathBuf>,
    errors: &mut BTreeMap<PathBuf, String>,
) {
    for path in data_files(&dir.root.join("sandbox"), 1) {
        match parse_file::<SandboxFile>(&path) {
            Ok(sandbox) => log_dirs.extend(sandbox.log_dirs),
            Err(err) => {
                errors.insert(path, err.to_string());
            }
        }
    }
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `*.yaml`, `*.yml` and `*.json` files exactly `depth` levels below `dir`, sorted; hidden
/// names (editors' temporaries) are skipped.
fn data_files(dir: &Path, depth: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if depth > 1 {
            if path.is_dir() {
                found.extend(data_files(&path, depth - 1));
            }
        } else if path.is_file()
            && path
                .extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml" || ext == "json")
        {
            found.push(path);
        }
    }
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn runtime_machine_and_sandbox_are_read_and_bad_files_keep_old_content() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ConfigDir::new(tmp.path());
        let root = tmp.path();
        fs::create_dir_all(root.join("runtime/web/v1")).unwrap();
        fs::create_dir_all(root.join("machine")).unwrap();
        fs::create_dir_all(root.join("sandbox")).unwrap();
        fs::write(root.join("runtime/web/v1/meta.yaml"), "image: web.v1\n").unwrap();
        fs::write(root.join("machine/hw.json"), r#"{"cpus": 4}"#).unwrap();
        fs::write(
            root.join("sandbox/logs.yaml"),
            "log_dirs: {app: /var/log/app}\n",
        )
        .unwrap();
        let mut inputs = Inputs::load(&dir);
        assert_eq!(
            inputs.runtime,
            json!({"web": {"v1": {"meta": {"image": "web.v1"}}}})
        );
        assert_eq!(inputs.machine["hw"], json!({"cpus": 4}));
        assert_eq!(inputs.log_dirs["app"], Path::new("/var/log/app"));
        assert!(inputs.errors.is_empty());

        fs::write(root.join("runtime/web/v1/meta.yaml"), "image: [unclosed\n").unwrap();
        assert!(!inputs.reload(&dir));
        assert_eq!(
            inputs.runtime,
            json!({"web": {"v1": {"meta": {"image": "web.v1"}}}})
        );
        let error = &inputs.errors[&root.join("runtime/web/v1/meta.yaml")];
        assert!(error.contains("meta.yaml:2:1"), "{error}");
    }

    #[test]
    fn json_errors_name_line_and_column() {
        let err = parse_text::<Value>(Path::new("x.json"), "{\n  \"a\" 1\n}").unwrap_err();
        assert!(err.to_string().starts_with("x.json:2:"), "{err}");
    }
}
