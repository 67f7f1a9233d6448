//! `verwalter_render`: renders one role's templates and runs its apply commands.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use serde_json::{Map, Value};
use verwalter::config::{ConfigDir, Inputs};
use verwalter::renderer::{self, Job, Mode, RenderError};

/// Render the templates of one role and apply them (see docs/verwalter.md).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The role's vars as a JSON object (as the daemon writes them).
    vars_json: Option<String>,
    /// Read the role's vars from this file instead (JSON or YAML by extension); `-` reads
    /// JSON from stdin (the daemon starts the renderer before the vars are known).
    #[arg(long, conflicts_with = "vars_json")]
    vars_file: Option<PathBuf>,
    /// A schedule (`/v1/schedule` or its `data`); with `--check` and no vars, every role of
    /// every node in it is checked.
    #[arg(long)]
    schedule_file: Option<PathBuf>,
    #[arg(long, default_value = "/etc/verwalter")]
    config_dir: PathBuf,
    #[arg(long, default_value = "/var/log/verwalter")]
    log_dir: PathBuf,
    /// Render and log the commands; run none.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Render into a scratch dir, validate, print the commands; run and write nothing else.
    #[arg(long)]
    check: bool,
    /// Scratch dir for `--check` (default: a temporary dir).
    #[arg(short = 'C', long, requires = "check")]
    check_dir: Option<PathBuf>,
    /// With `--check`: unified diff of each destination against the live file.
    #[arg(long, requires = "check")]
    diff: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        // The daemon runs the renderer with stderr in a log file: colour only on a terminal.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("verwalter_render: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

fn run(args: &Args) -> Result<(), RenderError> {
    let config = ConfigDir::new(&args.config_dir);
    let mode = if args.check {
        Mode::Check {
            dir: args.check_dir.clone(),
            diff: args.diff,
        }
    } else if args.dry_run {
        Mode::DryRun
    } else {
        Mode::Apply
    };
    // One role (the daemon's case) reads its vars and `sandbox/` only: the schedule is in
    // the vars already (`full_schedule`), and `runtime/` and `machine/` are the daemon's.
    let jobs: Vec<(String, Map<String, Value>)> = match (&args.vars_json, &args.vars_file) {
        (Some(text), _) => vec![(String::new(), parse_vars(text)?)],
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|err| RenderError::BadVars(format!("stdin: {err}")))?;
            vec![(String::new(), parse_vars(&text)?)]
        }
        (None, Some(path)) => vec![(String::new(), as_object(read_json(path)?)?)],
        (None, None) => {
            let Some(path) = args.schedule_file.as_ref().filter(|_| args.check) else {
                return Err(RenderError::BadVars(
                    "give VARS_JSON or --vars-file (or --check with --schedule-file)".into(),
                ));
            };
            every_role(&read_json(path)?, &Inputs::load(&config))
        }
    };
    let log_dirs = verwalter::config::log_dirs(&config);
    let many = jobs.len() > 1;
    for (label, vars) in jobs {
        let mode = match (&mode, many) {
            (
                Mode::Check {
                    dir: Some(dir),
                    diff,
                },
                true,
            ) => Mode::Check {
                dir: Some(dir.join(&label)),
                diff: *diff,
            },
            _ => mode.clone(),
        };
        let job = Job {
            config: config.clone(),
            log_dir: args.log_dir.clone(),
            vars,
            mode,
            log_dirs: log_dirs.clone(),
        };
        let report = renderer::render(&job).inspect_err(|err| {
            if many {
                eprintln!("verwalter_render: {label}: {err}");
            }
        })?;
        if args.check {
            if many {
                println!("== {label}");
            }
            print!("{}", renderer::format_report(&report));
        }
    }
    Ok(())
}

fn read_json(path: &std::path::Path) -> Result<Value, RenderError> {
    verwalter::config::parse_file(path).map_err(|err| RenderError::BadVars(err.to_string()))
}

fn parse_vars(text: &str) -> Result<Map<String, Value>, RenderError> {
    as_object(serde_json::from_str(text).map_err(|err| RenderError::BadVars(err.to_string()))?)
}

fn as_object(value: Value) -> Result<Map<String, Value>, RenderError> {
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(RenderError::BadVars("vars must be a JSON object".into())),
    }
}

/// Vars for every role of every node of a schedule (`--check` of a whole config).
fn every_role(schedule: &Value, inputs: &Inputs) -> Vec<(String, Map<String, Value>)> {
    let data = schedule.get("data").unwrap_or(schedule);
    let mut jobs = Vec::new();
    let nodes = data.get("nodes").and_then(Value::as_object);
    for node in nodes.into_iter().flat_map(|nodes| nodes.keys()) {
        for role in verwalter::vars::node_roles(data, node) {
            let vars = verwalter::vars::system_vars(
                data,
                &role,
                node,
                &verwalter::vars::Deployment {
                    timestamp: 0,
                    deployment_id: "check".into(),
                    machine: inputs.machine.clone(),
                },
            );
            jobs.push((format!("{node}/{role}"), vars));
        }
    }
    jobs
}
