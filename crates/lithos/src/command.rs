//! `lithos_cmd`: runs a `kind: Command` entry once as `SBX/cmd.NAME.<pid>`, in the calling
//! process, with the knot's setup and supervision.

use crate::config::{self, EntryKind, Master};
use crate::instance::{Findings, Resolver, Sandbox, StdioPlan};
use crate::knot;
use crate::sockets;
use crate::yaml::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Config(Vec<ConfigError>),
    #[error("no entry {name:?} in {file}")]
    NoEntry { name: String, file: String },
    #[error("entry {0:?} is a Daemon; lithos_cmd runs kind: Command entries")]
    NotACommand(String),
    #[error("{0}")]
    Setup(String),
}

/// Runs the command; the result is the command's own exit code (when it exited).
pub fn run(
    master: &Master,
    sandbox: &str,
    name: &str,
    extra: &[String],
) -> Result<Option<i32>, CommandError> {
    let sbx = Sandbox::load(master, sandbox).map_err(|e| CommandError::Config(vec![e]))?;
    let (file, source) =
        config::load_processes(&sbx.processes_path).map_err(|e| CommandError::Config(vec![e]))?;
    let entry = file.get(name).ok_or_else(|| CommandError::NoEntry {
        name: name.to_owned(),
        file: sbx.processes_path.display().to_string(),
    })?;
    if entry.kind != EntryKind::Command {
        return Err(CommandError::NotACommand(name.to_owned()));
    }
    let resolver = Resolver {
        master,
        sandbox: &sbx,
        processes: &source,
        term: std::env::var("TERM").ok(),
    };
    let mut findings = Findings::default();
    let plan = resolver
        .entry(name, entry, &mut findings)
        .ok_or(CommandError::Config(findings.errors))?;
    for w in &findings.warnings {
        tracing::warn!("{w} (applied the ceiling)");
    }
    let config = plan.command(std::process::id(), extra);
    let signals = knot::block_signals().map_err(|e| CommandError::Setup(e.to_string()))?;
    let mut socks = Vec::new();
    for s in &config.sockets {
        let fd =
            sockets::bind(s, config.user_id).map_err(|e| CommandError::Setup(e.to_string()))?;
        socks.push((s.clone(), fd));
    }
    let interactive = config.stdio == StdioPlan::Inherit;
    let outcome = knot::run(
        &config,
        socks,
        &signals,
        knot::Caller::Command { interactive },
    );
    knot::remove_state(&config);
    if outcome.code == crate::state::code::SETUP_ERROR {
        return Err(CommandError::Setup(format!(
            "command {} could not start (see {})",
            config.name,
            config.log_file.display()
        )));
    }
    Ok(outcome.exit.and_then(|e| e.code))
}
