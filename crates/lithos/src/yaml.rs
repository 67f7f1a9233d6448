//! Reading YAML config files: serde parsing with every error located at file:line:column,
//! including errors found after parsing (validation), located by the key path they concern.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use yaml_rust2::parser::{Event, Parser};

/// An error in a config file, located the way every config error is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based.
    pub line: u32,
    /// 1-based.
    pub column: u32,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

impl ConfigError {
    /// An error about a file as a whole (it cannot be read): located at 1:1.
    pub fn whole_file(file: &Path, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: file.to_owned(),
            line: 1,
            column: 1,
            message: message.into(),
        }
    }
}

/// The text of a config file, kept to locate errors found after parsing.
#[derive(Debug, Clone)]
pub struct Source {
    pub file: PathBuf,
    pub text: String,
}

/// How the top-level keys of a document are called in error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopLevel {
    /// A structure: keys are settings.
    Settings,
    /// A map of named entries (the processes file).
    Entries,
}

impl Source {
    /// Reads a file; a missing or unreadable file is an error located at 1:1.
    pub fn read(file: &Path) -> Result<Source, ConfigError> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| ConfigError::whole_file(file, format!("read {}: {e}", file.display())))?;
        Ok(Source {
            file: file.to_owned(),
            text,
        })
    }

    /// Parses the document into `T`; an empty document is an empty mapping.
    pub fn parse<T: DeserializeOwned>(&self, top: TopLevel) -> Result<T, ConfigError> {
        let empty = self
            .text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---");
        let text = if empty { "{}" } else { self.text.as_str() };
        serde_yaml::from_str(text).map_err(|e| self.serde_error(&e, top))
    }

    fn serde_error(&self, e: &serde_yaml::Error, top: TopLevel) -> ConfigError {
        let (line, column) = e
            .location()
            .map(|l| (l.line() as u32, l.column() as u32))
            .unwrap_or((1, 1));
        let mut message = e.to_string();
        if let Some(at) = message.rfind(" at line ") {
            message.truncate(at);
        }
        ConfigError {
            file: self.file.clone(),
            line,
            column,
            message: humanize(&message, top),
        }
    }

    /// An error about the value at `path` (keys from the top; sequence items by index),
    /// located at that key, or at the deepest part of the path that exists in the file.
    pub fn error_at(&self, path: &[&str], message: impl Into<String>) -> ConfigError {
        let (line, column) = locate(&self.text, path).unwrap_or((1, 1));
        ConfigError {
            file: self.file.clone(),
            line,
            column,
            message: message.into(),
        }
    }
}

/// Rewrites serde's wording into the project's: `unknown key "x" in entry "w"`.
fn humanize(message: &str, top: TopLevel) -> String {
    let (path, rest) = match message.split_once(": ") {
        Some((path, rest)) if !path.contains(' ') => (Some(path), rest),
        _ => (None, message),
    };
    let rest = match rest.strip_prefix("unknown field `") {
        Some(tail) => {
            let key = tail.split('`').next().unwrap_or(tail);
            format!("unknown key \"{key}\"")
        }
        None => rest.to_owned(),
    };
    match (path, top) {
        (None, _) => rest,
        (Some(path), TopLevel::Entries) => {
            let (entry, inner) = match path.split_once('.') {
                Some((entry, inner)) => (entry, Some(inner)),
                None => (path, None),
            };
            match inner {
                Some(inner) => format!("{rest} at {inner} in entry \"{entry}\""),
                None => format!("{rest} in entry \"{entry}\""),
            }
        }
        (Some(path), TopLevel::Settings) => format!("{rest} in {path}"),
    }
}

fn normalize(key: &str) -> String {
    key.replace('_', "-")
}

enum Frame {
    Map {
        key: Option<String>,
        expecting_key: bool,
    },
    Seq {
        index: usize,
    },
}

fn frame_path(stack: &[Frame]) -> Vec<String> {
    stack
        .iter()
        .filter_map(|f| match f {
            Frame::Map { key, .. } => key.clone(),
            Frame::Seq { index } => Some(index.to_string()),
        })
        .collect()
}

/// Finds the line and column (1-based) of the key at `path`, or of its deepest existing
/// ancestor. Keys match in kebab-case and snake_case alike.
pub fn locate(text: &str, path: &[&str]) -> Option<(u32, u32)> {
    let wanted: Vec<String> = path.iter().map(|k| normalize(k)).collect();
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut best: Option<(usize, (u32, u32))> = None;
    let mut consider = |node_path: &[String], line: usize, col: usize| {
        let depth = node_path.len();
        let matches = depth <= wanted.len() && node_path.iter().zip(&wanted).all(|(a, b)| a == b);
        if matches && best.is_none_or(|(d, _)| depth > d) {
            best = Some((depth, (line as u32, col as u32 + 1)));
        }
    };
    loop {
        let (event, mark) = parser.next_token().ok()?;
        let (line, col) = (mark.line(), mark.col());
        let starts_node = matches!(
            event,
            Event::Scalar(..)
                | Event::SequenceStart(..)
                | Event::MappingStart(..)
                | Event::Alias(_)
        );
        if starts_node {
            if let Some(Frame::Map {
                key,
                expecting_key: expecting @ true,
            }) = stack.last_mut()
            {
                *expecting = false;
                *key = match &event {
                    Event::Scalar(value, ..) => Some(normalize(value)),
                    _ => Some(String::new()),
                };
                consider(&frame_path(&stack), line, col);
                if !matches!(event, Event::Scalar(..)) {
                    // A complex key: skip its structure by treating it as a value below.
                    stack.push(match event {
                        Event::MappingStart(..) => Frame::Map {
                            key: None,
                            expecting_key: true,
                        },
                        _ => Frame::Seq { index: 0 },
                    });
                }
                continue;
            }
            consider(&frame_path(&stack), line, col);
        }
        match event {
            Event::Scalar(..) | Event::Alias(_) => value_done(&mut stack),
            Event::MappingStart(..) => stack.push(Frame::Map {
                key: None,
                expecting_key: true,
            }),
            Event::SequenceStart(..) => stack.push(Frame::Seq { index: 0 }),
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
                value_done(&mut stack);
            }
            Event::StreamEnd => break,
            _ => {}
        }
    }
    best.map(|(_, at)| at)
}

fn value_done(stack: &mut [Frame]) {
    match stack.last_mut() {
        Some(Frame::Map { expecting_key, .. }) => *expecting_key = true,
        Some(Frame::Seq { index }) => *index += 1,
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    struct Entry {
        #[allow(dead_code)]
        image: String,
        #[allow(dead_code)]
        #[serde(default)]
        instances: u32,
    }

    fn source(text: &str) -> Source {
        Source {
            file: "processes.yaml".into(),
            text: text.into(),
        }
    }

    #[test]
    fn unknown_key_names_file_line_column_and_entry() {
        let text = "# demo\nw:\n  image: v1\n  instnces: 2\n";
        let err = source(text)
            .parse::<std::collections::BTreeMap<String, Entry>>(TopLevel::Entries)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "processes.yaml:4:3: unknown key \"instnces\" in entry \"w\""
        );
    }

    #[test]
    fn syntax_error_is_located() {
        let err = source("w:\n  image: [v1\n")
            .parse::<std::collections::BTreeMap<String, Entry>>(TopLevel::Entries)
            .unwrap_err();
        assert_eq!(err.file, PathBuf::from("processes.yaml"));
        assert!(err.line >= 2, "{err}");
    }

    #[test]
    fn keys_are_located_in_either_spelling() {
        let text =
            "a: 1\nvolumes:\n  /data: !Persistent /x\n  /tmp: !Tmpfs {size: 1}\nuser_id: 0\n";
        assert_eq!(locate(text, &["user-id"]), Some((5, 1)));
        assert_eq!(locate(text, &["volumes", "/tmp"]), Some((4, 3)));
        assert_eq!(locate(text, &["volumes", "/missing"]), Some((2, 1)));
        assert_eq!(locate("x: [a, b, c]\n", &["x", "2"]), Some((1, 11)));
    }

    #[test]
    fn empty_document_is_an_empty_mapping() {
        let parsed = source("# nothing here\n")
            .parse::<std::collections::BTreeMap<String, Entry>>(TopLevel::Entries)
            .unwrap();
        assert!(parsed.is_empty());
    }
}
