//! `*.render.yaml`: the templates of a role and the commands that apply them.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde::Deserialize;

use crate::config::{ConfigError, parse_file};

/// One `*.render.yaml` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Template name → file, relative to the render.yaml.
    #[serde(default)]
    pub templates: BTreeMap<String, String>,
    #[serde(default)]
    pub commands: Vec<Command>,
}

/// An apply command. Keys take `-` or `_` spellings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub enum Command {
    Cmd(Vec<String>),
    Sh(String),
    RootCommand(Vec<String>),
    Copy(Copy),
    SplitText(SplitText),
    CleanFiles(CleanFiles),
    Condition(Condition),
    PeekLog(String),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Copy {
    #[serde(default)]
    pub src: Option<String>,
    pub dest: String,
    #[serde(default)]
    pub mode: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitText {
    pub section: String,
    pub validate: String,
    #[serde(default)]
    pub src: Option<String>,
    pub dest: String,
    #[serde(default)]
    pub mode: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanFiles {
    pub pattern: String,
    #[serde(rename = "keep-list", alias = "keep_list")]
    pub keep_list: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    #[serde(rename = "dirs-changed", alias = "dirs_changed", default)]
    pub dirs_changed: Vec<String>,
    #[serde(default)]
    pub commands: Vec<Command>,
}

/// A render.yaml or template that cannot be used; nothing is applied.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("template dir {path} of template {template:?} does not exist")]
    NoTemplateDir { template: String, path: PathBuf },
    #[error("{path}: no *.render.yaml below it")]
    NoRecipes { path: PathBuf },
    #[error("{path}: nested !Condition is not allowed")]
    NestedCondition { path: PathBuf },
    #[error("{path}: {field}: invalid regex {pattern:?}: {message}")]
    BadRegex {
        path: PathBuf,
        field: &'static str,
        pattern: String,
        message: String,
    },
    #[error(
        "{path}: {field}: {pattern:?} must contain exactly one (*) in its file name and no other wildcard"
    )]
    BadGlob {
        path: PathBuf,
        field: &'static str,
        pattern: String,
    },
    #[error("{path}: .{ext} templates are not supported yet (use .hbs)")]
    UnsupportedTemplate { path: PathBuf, ext: String },
    #[error("{path}: template files must end in .hbs")]
    UnknownTemplateKind { path: PathBuf },
}

/// A render.yaml with its location, validated.
#[derive(Debug, Clone)]
pub struct LoadedRecipe {
    pub path: PathBuf,
    pub recipe: Recipe,
}

impl LoadedRecipe {
    /// Absolute path of a template named in `templates`.
    pub fn template_path(&self, file: &str) -> PathBuf {
        self.path.parent().unwrap_or(Path::new(".")).join(file)
    }
}

/// Loads and validates every `*.render.yaml` below `templates/<template>/`, sorted by path.
pub fn load_recipes(
    templates_dir: &Path,
    template: &str,
) -> Result<Vec<LoadedRecipe>, RecipeError> {
    let dir = templates_dir.join(template);
    if !dir.is_dir() || template.split('/').any(|part| part == "..") {
        return Err(RecipeError::NoTemplateDir {
            template: template.to_owned(),
            path: dir,
        });
    }
    let mut paths = Vec::new();
    find_recipes(&dir, &mut paths);
    paths.sort();
    if paths.is_empty() {
        return Err(RecipeError::NoRecipes { path: dir });
    }
    paths
        .into_iter()
        .map(|path| {
            let recipe: Recipe = parse_file(&path)?;
            let loaded = LoadedRecipe { path, recipe };
            validate(&loaded)?;
            Ok(loaded)
        })
        .collect()
}

fn find_recipes(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            find_recipes(&path, found);
        } else if path.to_string_lossy().ends_with(".render.yaml") {
            found.push(path);
        }
    }
}

fn validate(loaded: &LoadedRecipe) -> Result<(), RecipeError> {
    let path = &loaded.path;
    for file in loaded.recipe.templates.values() {
        let template = loaded.template_path(file);
        match template.extension().and_then(|ext| ext.to_str()) {
            Some("hbs") => {}
            Some(ext @ ("tera" | "trm")) => {
                return Err(RecipeError::UnsupportedTemplate {
                    path: template.clone(),
                    ext: ext.to_owned(),
                });
            }
            _ => return Err(RecipeError::UnknownTemplateKind { path: template }),
        }
    }
    for command in &loaded.recipe.commands {
        validate_command(path, command, false)?;
    }
    Ok(())
}

fn validate_command(path: &Path, command: &Command, nested: bool) -> Result<(), RecipeError> {
    let regex = |field, pattern: &str| {
        Regex::new(pattern)
            .map(drop)
            .map_err(|err| RecipeError::BadRegex {
                path: path.to_owned(),
                field,
                pattern: pattern.to_owned(),
                message: err.to_string(),
            })
    };
    let glob = |field, pattern: &str| {
        CaptureGlob::parse(pattern)
            .map(drop)
            .ok_or_else(|| RecipeError::BadGlob {
                path: path.to_owned(),
                field,
                pattern: pattern.to_owned(),
            })
    };
    match command {
        Command::SplitText(split) => {
            regex("section", &split.section)?;
            regex("validate", &split.validate)?;
            glob("dest", &split.dest)?;
        }
        Command::CleanFiles(clean) => glob("pattern", &clean.pattern)?,
        Command::Condition(condition) => {
            if nested {
                return Err(RecipeError::NestedCondition {
                    path: path.to_owned(),
                });
            }
            for inner in &condition.commands {
                validate_command(path, inner, true)?;
            }
        }
        Command::Cmd(_)
        | Command::Sh(_)
        | Command::RootCommand(_)
        | Command::Copy(_)
        | Command::PeekLog(_) => {}
    }
    Ok(())
}

impl Command {
    /// The command with `expand` applied to every string it holds.
    pub fn expand<E>(&self, expand: &mut impl FnMut(&str) -> Result<String, E>) -> Result<Self, E> {
        let mut all = |items: &[String]| {
            items
                .iter()
                .map(|item| expand(item))
                .collect::<Result<Vec<_>, E>>()
        };
        Ok(match self {
            Self::Cmd(argv) => Self::Cmd(all(argv)?),
            Self::RootCommand(argv) => Self::RootCommand(all(argv)?),
            Self::Sh(script) => Self::Sh(expand(script)?),
            Self::PeekLog(path) => Self::PeekLog(expand(path)?),
            Self::Copy(copy) => Self::Copy(Copy {
                src: copy.src.as_deref().map(&mut *expand).transpose()?,
                dest: expand(&copy.dest)?,
                mode: copy.mode,
            }),
            Self::SplitText(split) => Self::SplitText(SplitText {
                section: split.section.clone(),
                validate: split.validate.clone(),
                src: split.src.as_deref().map(&mut *expand).transpose()?,
                dest: expand(&split.dest)?,
                mode: split.mode,
            }),
            Self::CleanFiles(clean) => Self::CleanFiles(CleanFiles {
                pattern: expand(&clean.pattern)?,
                keep_list: expand(&clean.keep_list)?,
            }),
            Self::Condition(condition) => Self::Condition(Condition {
                dirs_changed: all(&condition.dirs_changed)?,
                commands: condition
                    .commands
                    .iter()
                    .map(|inner| inner.expand(expand))
                    .collect::<Result<_, E>>()?,
            }),
        })
    }

    /// A one-line description for logs and `--check`.
    pub fn describe(&self) -> String {
        match self {
            Self::Cmd(argv) => format!("!Cmd {argv:?}"),
            Self::Sh(script) => format!("!Sh {script:?}"),
            Self::RootCommand(argv) => format!("!RootCommand {argv:?}"),
            Self::Copy(copy) => format!(
                "!Copy {} -> {}",
                copy.src.as_deref().unwrap_or("{{ tmp_file }}"),
                copy.dest
            ),
            Self::SplitText(split) => format!(
                "!SplitText {} -> {}",
                split.src.as_deref().unwrap_or("{{ tmp_file }}"),
                split.dest
            ),
            Self::CleanFiles(clean) => {
                format!("!CleanFiles {} keeping {}", clean.pattern, clean.keep_list)
            }
            Self::Condition(condition) => {
                format!("!Condition dirs-changed {:?}", condition.dirs_changed)
            }
            Self::PeekLog(path) => format!("!PeekLog {path}"),
        }
    }
}

/// A glob with exactly one `(*)` in its file name: `/etc/app/(*).conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureGlob {
    dir: PathBuf,
    prefix: String,
    suffix: String,
}

impl CaptureGlob {
    pub fn parse(pattern: &str) -> Option<Self> {
        let path = Path::new(pattern);
        let name = path.file_name()?.to_str()?;
        let dir = path.parent()?;
        let dir_text = dir.to_str()?;
        if dir_text.contains(['*', '?', '[']) {
            return None;
        }
        let (prefix, suffix) = name.split_once("(*)")?;
        if [prefix, suffix]
            .iter()
            .any(|part| part.contains(['*', '?', '[', '(', ')']))
        {
            return None;
        }
        Some(Self {
            dir: dir.to_owned(),
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
        })
    }

    /// The path for a captured name.
    pub fn path_for(&self, capture: &str) -> PathBuf {
        self.dir
            .join(format!("{}{capture}{}", self.prefix, self.suffix))
    }

    /// Existing files that match, with their captured part, sorted.
    pub fn matches(&self) -> Vec<(String, PathBuf)> {
        let mut found: Vec<(String, PathBuf)> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let capture = name
                    .strip_prefix(&self.prefix)?
                    .strip_suffix(&self.suffix)?;
                (!capture.is_empty() && !capture.starts_with(".tmp.") && entry.path().is_file())
                    .then(|| (capture.to_owned(), entry.path()))
            })
            .collect();
        found.sort();
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Recipe, ConfigError> {
        crate::config::parse_text(Path::new("r.render.yaml"), text)
    }

    #[test]
    fn every_command_parses_with_both_key_spellings() {
        let recipe = parse(
            r#"
templates: {processes: lithos.yaml.hbs}
commands:
- !Cmd [echo, hi]
- !Sh "echo hi"
- !RootCommand [lithos_switch, "{{ role }}"]
- !Copy {src: "{{ files.processes }}", dest: /tmp/x, mode: 0o640}
- !SplitText {section: '^\[(\w+)\]$', validate: '^\w+$', dest: "/tmp/(*).conf"}
- !CleanFiles {pattern: "/tmp/(*).conf", keep_list: /tmp/keep}
- !CleanFiles {pattern: "/tmp/(*).conf", keep-list: /tmp/keep}
- !Condition
  dirs-changed: [/tmp]
  commands:
  - !Cmd [true]
- !PeekLog app/x.log
"#,
        )
        .unwrap();
        assert_eq!(recipe.commands.len(), 9);
        assert_eq!(
            recipe.commands[3],
            Command::Copy(Copy {
                src: Some("{{ files.processes }}".into()),
                dest: "/tmp/x".into(),
                mode: Some(0o640)
            })
        );
    }

    #[test]
    fn unknown_keys_and_commands_name_line_and_column() {
        let err = parse("templates: {}\ncommands:\n- !Copy {dest: /x, bogus: 1}\n").unwrap_err();
        assert!(err.to_string().starts_with("r.render.yaml:3:"), "{err}");
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = parse("commands:\n- !Frobnicate [x]\n").unwrap_err();
        assert!(err.to_string().starts_with("r.render.yaml:2:"), "{err}");
        let err = parse("templates: {}\nextra: 1\n").unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
    }

    #[test]
    fn capture_globs() {
        let glob = CaptureGlob::parse("/etc/app/(*).conf").unwrap();
        assert_eq!(glob.path_for("web"), Path::new("/etc/app/web.conf"));
        assert!(CaptureGlob::parse("/etc/*/(*).conf").is_none());
        assert!(CaptureGlob::parse("/etc/app/*.conf").is_none());
        assert!(CaptureGlob::parse("/etc/app/(*)-(*).conf").is_none());
    }
}
