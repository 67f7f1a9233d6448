//! `verwalter_render`: renders every template of one role, then runs its apply commands.
//!
//! Order of work, so that a broken role never touches the host: validate every render.yaml,
//! render every template into a scratch dir, expand every command string, and only then run
//! the commands.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use handlebars::Handlebars;
use serde_json::{Map, Value, json};

use crate::apply::{self, Applier, ApplyError};
use crate::config::ConfigDir;
use crate::deploy_log::{DeployLog, LogError, Marker, Stream};
use crate::recipe::{self, Command, LoadedRecipe, RecipeError};

/// Time budget of all commands of one role.
pub const COMMAND_BUDGET: Duration = Duration::from_secs(180);

/// What went wrong, with the documented exit code of each kind.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("invalid vars: {0}")]
    BadVars(String),
    #[error("no `template` var for role {role:?}")]
    NoTemplate { role: String },
    #[error("renderer version {ours} does not match daemon version {theirs}")]
    VersionMismatch { ours: String, theirs: String },
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error("{path}:{line}:{column}: {message}")]
    Template {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: command {index}: {message}")]
    Expand {
        path: PathBuf,
        index: usize,
        message: String,
    },
    #[error("create scratch dir {path}")]
    Scratch { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Log(#[from] LogError),
}

impl RenderError {
    /// The exit code of `verwalter_render` for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::BadVars(_) => 3,
            Self::NoTemplate { .. } => 4,
            Self::VersionMismatch { .. } => 5,
            Self::Recipe(_)
            | Self::Template { .. }
            | Self::Expand { .. }
            | Self::Scratch { .. } => 10,
            Self::Apply(_) => 20,
            Self::Log(_) => 81,
        }
    }
}

/// How the renderer runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Mode {
    /// Render and apply.
    #[default]
    Apply,
    /// Render and log templates and commands; run nothing.
    DryRun,
    /// Render into `dir`, print commands (and diffs), run nothing, write nothing else.
    Check { dir: Option<PathBuf>, diff: bool },
}

/// One role to render.
#[derive(Debug, Clone)]
pub struct Job {
    pub config: ConfigDir,
    pub log_dir: PathBuf,
    pub vars: Map<String, Value>,
    pub mode: Mode,
    /// `sandbox/*.yaml` aliases for `!PeekLog`.
    pub log_dirs: BTreeMap<String, PathBuf>,
}

/// A finished render: what `--check` prints.
#[derive(Debug, Default)]
pub struct Report {
    pub rendered: Vec<(String, PathBuf)>,
    pub commands: Vec<String>,
    pub warnings: Vec<String>,
    pub diffs: Vec<String>,
}

/// Renders and applies one role.
pub fn render(job: &Job) -> Result<Report, RenderError> {
    let role = job
        .vars
        .get("role")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if let Some(theirs) = job.vars.get("verwalter_version").and_then(Value::as_str)
        && theirs != env!("CARGO_PKG_VERSION")
    {
        return Err(RenderError::VersionMismatch {
            ours: env!("CARGO_PKG_VERSION").to_owned(),
            theirs: theirs.to_owned(),
        });
    }
    let template = job
        .vars
        .get("template")
        .and_then(Value::as_str)
        .ok_or_else(|| RenderError::NoTemplate { role: role.clone() })?
        .to_owned();
    let role = if role.is_empty() {
        template.split('/').next().unwrap_or_default().to_owned()
    } else {
        role
    };
    let deployment_id = job
        .vars
        .get("deployment_id")
        .and_then(Value::as_str)
        .unwrap_or("manual")
        .to_owned();
    let log = match job.mode {
        Mode::Check { .. } => None,
        Mode::Apply | Mode::DryRun => Some(RoleLog {
            log: DeployLog::new(&job.log_dir),
            stream: Stream::Role(role.clone()),
            deployment_id: deployment_id.clone(),
        }),
    };
    if let Some(log) = &log {
        log.event(
            Marker::RoleStart,
            &format!("==== role {role}, template {template}, deployment {deployment_id}\n"),
        )?;
    }
    let result = render_role(job, &role, &template, log.as_ref());
    if let Some(log) = &log {
        let text = match &result {
            Ok(_) => format!("==== role {role} done\n"),
            Err(err) => format!(
                "==== role {role} failed (exit {}): {err}\n",
                err.exit_code()
            ),
        };
        log.event(Marker::RoleFinish, &text)?;
    }
    result
}

/// Appends to the role's log.
#[derive(Debug)]
pub struct RoleLog {
    pub log: DeployLog,
    pub stream: Stream,
    pub deployment_id: String,
}

impl RoleLog {
    pub fn line(&self, text: &str) -> Result<(), LogError> {
        self.log.append(&self.stream, text).map(drop)
    }

    pub fn event(&self, marker: Marker, text: &str) -> Result<(), LogError> {
        self.log
            .event(&self.deployment_id, &self.stream, marker, text)
    }
}

fn render_role(
    job: &Job,
    role: &str,
    template: &str,
    log: Option<&RoleLog>,
) -> Result<Report, RenderError> {
    let recipes = recipe::load_recipes(&job.config.templates_dir(), template)?;
    let (scratch, _keep_alive) = scratch_dir(&job.mode)?;
    let mut report = Report::default();
    let context = Value::Object(job.vars.clone());
    // Step 1: every template of every render.yaml, before anything else.
    let mut files_per_recipe = Vec::new();
    for (index, loaded) in recipes.iter().enumerate() {
        let mut files = BTreeMap::new();
        for (name, file) in &loaded.recipe.templates {
            let source = loaded.template_path(file);
            let text = render_template(&source, &context, &mut report.warnings)?;
            let base = Path::new(file)
                .file_name()
                .map(|n| n.to_string_lossy().trim_end_matches(".hbs").to_owned())
                .unwrap_or_default();
            let target = scratch.join(format!("{index}-{name}-{base}"));
            fs::write(&target, &text).map_err(|source| RenderError::Scratch {
                path: target.clone(),
                source,
            })?;
            if let (Some(log), Mode::DryRun) = (log, &job.mode) {
                log.line(&format!(
                    "---- template {name} ({}):\n{text}\n",
                    source.display()
                ))?;
            }
            report.rendered.push((name.clone(), target.clone()));
            files.insert(name.clone(), target);
        }
        files_per_recipe.push(files);
    }
    // Step 2: every command string, so an unknown name stops the role before any command.
    let mut plans = Vec::new();
    for (loaded, files) in recipes.iter().zip(&files_per_recipe) {
        plans.push((loaded, expand_commands(loaded, files, role)?));
    }
    for (_, commands) in &plans {
        for command in commands {
            report.commands.push(command.describe());
            if let Command::Condition(condition) = command {
                for inner in &condition.commands {
                    report.commands.push(format!("  then {}", inner.describe()));
                }
            }
        }
    }
    match &job.mode {
        Mode::Check { diff, .. } => {
            if *diff {
                for (_, commands) in &plans {
                    for command in commands {
                        report.diffs.extend(apply::diff(command));
                    }
                }
            }
            Ok(report)
        }
        Mode::DryRun => {
            if let Some(log) = log {
                for command in &report.commands {
                    log.line(&format!("dry-run: would run {command}\n"))?;
                }
            }
            Ok(report)
        }
        Mode::Apply => {
            let deadline = Instant::now() + COMMAND_BUDGET;
            for (_, commands) in &plans {
                let mut applier = Applier::new(deadline, log, &job.log_dirs);
                applier.run_recipe(commands)?;
            }
            Ok(report)
        }
    }
}

/// The scratch dir: `--check-dir`, or a temporary dir removed when the guard drops.
fn scratch_dir(mode: &Mode) -> Result<(PathBuf, Option<tempfile::TempDir>), RenderError> {
    if let Mode::Check { dir: Some(dir), .. } = mode {
        fs::create_dir_all(dir).map_err(|source| RenderError::Scratch {
            path: dir.clone(),
            source,
        })?;
        return Ok((dir.clone(), None));
    }
    let temp = tempfile::Builder::new()
        .prefix("verwalter-render.")
        .tempdir()
        .map_err(|source| RenderError::Scratch {
            path: std::env::temp_dir(),
            source,
        })?;
    Ok((temp.path().to_owned(), Some(temp)))
}

/// Renders one handlebars file; under `--check` a second, strict pass names missing vars.
fn render_template(
    source: &Path,
    context: &Value,
    warnings: &mut Vec<String>,
) -> Result<String, RenderError> {
    let text = fs::read_to_string(source).map_err(|err| RenderError::Template {
        path: source.to_owned(),
        line: 0,
        column: 0,
        message: format!("read: {err}"),
    })?;
    let mut registry = Handlebars::new();
    registry.register_escape_fn(handlebars::no_escape);
    registry
        .register_template_string("t", &text)
        .map_err(|err| {
            let (line, column) = err.pos().unwrap_or((0, 0));
            RenderError::Template {
                path: source.to_owned(),
                line,
                column,
                message: err.reason().to_string(),
            }
        })?;
    let rendered = registry
        .render("t", context)
        .map_err(|err| RenderError::Template {
            path: source.to_owned(),
            line: err.line_no.unwrap_or(0),
            column: err.column_no.unwrap_or(0),
            message: err.reason().to_string(),
        })?;
    registry.set_strict_mode(true);
    if let Err(err) = registry.render("t", context) {
        warnings.push(format!(
            "{}:{}:{}: {}",
            source.display(),
            err.line_no.unwrap_or(0),
            err.column_no.unwrap_or(0),
            err.reason()
        ));
    }
    Ok(rendered)
}

/// Expands `{{ files.NAME }}`, `{{ role }}` and `{{ tmp_file }}` in every command string;
/// any other name is an error.
fn expand_commands(
    loaded: &LoadedRecipe,
    files: &BTreeMap<String, PathBuf>,
    role: &str,
) -> Result<Vec<Command>, RenderError> {
    let mut registry = Handlebars::new();
    registry.register_escape_fn(handlebars::no_escape);
    registry.set_strict_mode(true);
    let files_json: Map<String, Value> = files
        .iter()
        .map(|(name, path)| (name.clone(), json!(path.to_string_lossy())))
        .collect();
    let mut context = json!({"files": files_json, "role": role});
    if files.len() == 1
        && let Some(path) = files.values().next()
    {
        context["tmp_file"] = json!(path.to_string_lossy());
    }
    let mut commands = Vec::new();
    for (index, command) in loaded.recipe.commands.iter().enumerate() {
        let mut expand = |text: &str| -> Result<String, String> {
            registry
                .render_template(text, &context)
                .map_err(|err| format!("{text:?}: {}", err.reason()))
        };
        let mut expanded = command
            .expand(&mut expand)
            .map_err(|message| RenderError::Expand {
                path: loaded.path.clone(),
                index: index + 1,
                message,
            })?;
        default_sources(
            &mut expanded,
            context.get("tmp_file").and_then(Value::as_str),
        )
        .map_err(|message| RenderError::Expand {
            path: loaded.path.clone(),
            index: index + 1,
            message,
        })?;
        commands.push(expanded);
    }
    Ok(commands)
}

/// `!Copy` and `!SplitText` without `src` take the only template.
fn default_sources(command: &mut Command, tmp_file: Option<&str>) -> Result<(), String> {
    let missing = || "no src and the role has not exactly one template (tmp_file)".to_owned();
    match command {
        Command::Copy(copy) if copy.src.is_none() => {
            copy.src = Some(tmp_file.ok_or_else(missing)?.to_owned());
        }
        Command::SplitText(split) if split.src.is_none() => {
            split.src = Some(tmp_file.ok_or_else(missing)?.to_owned());
        }
        Command::Condition(condition) => {
            for inner in &mut condition.commands {
                default_sources(inner, tmp_file)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The text `--check` prints.
pub fn format_report(report: &Report) -> String {
    let mut out = String::new();
    for (name, path) in &report.rendered {
        let _ = writeln!(out, "rendered {name}: {}", path.display());
    }
    for command in &report.commands {
        let _ = writeln!(out, "would run: {command}");
    }
    for warning in &report.warnings {
        let _ = writeln!(out, "warning: {warning}");
    }
    for diff in &report.diffs {
        out.push_str(diff);
    }
    out
}
