//! vagga: development environments and image builds from `vagga.yaml`, without a daemon and
//! without root.
//!
//! [`run`] takes the parsed command line: it finds the project ([`project`]), reads its
//! configuration ([`config`]), builds containers ([`build`]) and runs commands in them
//! ([`launch`], [`commands`]) or a built-in ([`builtins`]).
#![forbid(unsafe_code)]

pub mod build;
pub mod builtins;
pub mod commands;
pub mod config;
pub mod console;
pub mod de;
pub mod doctor;
pub mod filter;
pub mod idmap;
pub mod launch;
pub mod options;
pub mod privileged;
pub mod project;
pub mod rootfs;
pub mod settings;
pub mod signals;
pub mod statcache;
pub mod storage;
pub mod version;
pub mod yaml;

use std::path::PathBuf;

use clap::Parser;

use crate::build::{BuildError, BuildMode};
use crate::commands::CommandError;
use crate::launch::{LaunchError, Launcher, RunOptions};
use crate::project::{Project, ProjectError};

/// The command line: global options, then a command and its arguments.
#[derive(Debug, Parser)]
#[command(
    name = "vagga",
    disable_version_flag = true,
    about = "Development environments and image builds from vagga.yaml"
)]
pub struct Cli {
    /// Set a variable in the command's environment (K=V).
    #[arg(
        short = 'E',
        long = "env",
        visible_alias = "environ",
        value_name = "K=V"
    )]
    pub set_env: Vec<String>,
    /// Pass a variable of this environment to the command.
    #[arg(short = 'e', long = "use-env", value_name = "K")]
    pub use_env: Vec<String>,
    /// Run several commands (build all their containers first).
    #[arg(short = 'm', long = "run-multi")]
    pub multi: bool,
    /// Do not run prerequisites.
    #[arg(long)]
    pub no_prerequisites: bool,
    /// With -m: only build the containers.
    #[arg(long)]
    pub containers_only: bool,
    /// Run in a network namespace with only `lo`.
    #[arg(long, visible_aliases = ["no-net", "no-network"])]
    pub isolate_network: bool,
    /// Fail (exit 29) instead of building a stale image.
    #[arg(long)]
    pub no_build: bool,
    /// Use `.vagga/<name>` as it is.
    #[arg(long)]
    pub no_version_check: bool,
    /// Do not download prebuilt images (none are downloaded in this release).
    #[arg(long)]
    pub no_image_download: bool,
    /// Work on a project owned by another user.
    #[arg(long)]
    pub ignore_owner_check: bool,
    /// Print the version.
    #[arg(long)]
    pub version: bool,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// What went wrong, with the exit code each kind has.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Project(#[from] ProjectError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Launch(LaunchError),
    #[error(transparent)]
    Command(CommandError),
    /// An unknown command; the message includes the command list.
    #[error("{0}")]
    UnknownCommand(String),
    /// A bad global or built-in argument.
    #[error("{0}")]
    Usage(String),
    /// Help text to print with exit 0.
    #[error("{0}")]
    Help(String),
    #[error("{0} is not supported in this release")]
    Later(String),
}

impl From<LaunchError> for Error {
    fn from(e: LaunchError) -> Self {
        match e {
            LaunchError::Build(b) => Error::Build(b),
            other => Error::Launch(other),
        }
    }
}

impl From<CommandError> for Error {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Launch(l) => l.into(),
            CommandError::Help(h) => Error::Help(h),
            other => Error::Command(other),
        }
    }
}

impl Error {
    /// The documented exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Project(ProjectError::Owner { .. }) => 122,
            Error::Project(_) => 126,
            Error::Build(BuildError::Outdated { .. }) => 29,
            Error::Build(BuildError::Version(version::VersionError::Config(_))) => 126,
            Error::Build(_) => 121,
            Error::Launch(LaunchError::Volume(_)) => 124,
            Error::Launch(_) => 121,
            Error::Command(_) => 121,
            Error::UnknownCommand(_) => 127,
            Error::Usage(_) => 122,
            Error::Help(_) => 0,
            Error::Later(_) => 121,
        }
    }
}

/// Where the program name and version come from.
pub fn version_string() -> String {
    format!(
        "vagga v{} (deploy-stack {})",
        config::LANGUAGE_VERSION,
        env!("CARGO_PKG_VERSION")
    )
}

/// Runs vagga; returns the exit code of the command (or of vagga itself).
pub fn run(cli: Cli) -> Result<i32, Error> {
    if cli.version {
        println!("{}", version_string());
        return Ok(0);
    }
    let mut set_env = Vec::new();
    for kv in &cli.set_env {
        match kv.split_once('=') {
            Some((k, v)) => set_env.push((k.to_owned(), v.to_owned())),
            None => return Err(Error::Usage(format!("-E {kv}: expected K=V"))),
        }
    }
    for k in &cli.use_env {
        if k.contains('=') {
            return Err(Error::Usage(format!(
                "-e {k}: -e takes a variable name to pass on; to set a value use -E {k}"
            )));
        }
    }
    let cwd =
        std::env::current_dir().map_err(|e| Error::Usage(format!("current directory: {e}")))?;
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let project = Project::open(&cwd, home.as_deref(), !cli.ignore_owner_check)?;
    let mode = if cli.no_version_check {
        BuildMode::NoVersionCheck
    } else if cli.no_build {
        BuildMode::NoBuild
    } else {
        BuildMode::Normal
    };
    let options = RunOptions {
        set_env,
        use_env: cli.use_env.clone(),
        isolate_network: cli.isolate_network,
        mode: Some(mode),
    };
    let mut launcher = Launcher::new(&project, options);
    let Some((name, args)) = cli.command.split_first() else {
        return Err(Error::UnknownCommand(builtins::list(&project, false)));
    };
    if cli.multi {
        return run_multi(&mut launcher, &cli);
    }
    if builtins::BUILTINS.contains(&name.as_str())
        || builtins::LATER_BUILTINS.contains(&name.as_str())
    {
        return builtins::run(&project, &mut launcher, name, args);
    }
    if project.config.find_command(name).is_none() {
        return Err(Error::UnknownCommand(format!(
            "Unknown command {name:?}\n{}",
            builtins::list(&project, false)
        )));
    }
    let order = if cli.no_prerequisites {
        vec![name.clone()]
    } else {
        commands::with_prerequisites(&launcher, std::slice::from_ref(name))
    };
    for cmd in &order {
        let cmd_args: &[String] = if cmd == name { args } else { &[] };
        let code = commands::run_command(&mut launcher, cmd, cmd_args)?;
        if code != 0 || cmd == name {
            return Ok(code);
        }
    }
    Ok(0)
}

fn run_multi(launcher: &mut Launcher<'_>, cli: &Cli) -> Result<i32, Error> {
    let project = launcher.project;
    for name in &cli.command {
        if project.config.find_command(name).is_none() {
            return Err(Error::UnknownCommand(format!(
                "Unknown command {name:?}\n{}",
                builtins::list(project, false)
            )));
        }
    }
    let order = if cli.no_prerequisites {
        cli.command.clone()
    } else {
        commands::with_prerequisites(launcher, &cli.command)
    };
    // Every container first, so a broken build stops the run before any command starts.
    let mode = launcher.options.build_mode();
    for name in &order {
        if let Some((_, def)) = project.config.find_command(name) {
            for container in command_containers(def) {
                launcher.builder.ensure(container, mode)?;
            }
        }
    }
    if cli.containers_only {
        return Ok(0);
    }
    for name in &order {
        let code = commands::run_command(launcher, name, &[])?;
        if code != 0 {
            return Ok(code);
        }
    }
    Ok(0)
}

fn command_containers(def: &config::CommandDef) -> Vec<&str> {
    match def {
        config::CommandDef::Command(c) => vec![c.container.value.as_str()],
        config::CommandDef::Supervise(s) => s
            .children
            .values()
            .filter_map(|c| match &c.value {
                config::ChildCommand::Command(c) => Some(c.container.value.as_str()),
                config::ChildCommand::BridgeCommand(_) => None,
            })
            .collect(),
        config::CommandDef::CapsuleCommand(_) => Vec::new(),
    }
}
