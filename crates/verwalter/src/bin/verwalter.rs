//! `verwalter`: the orchestrator daemon, and `verwalter run-scheduler` for offline runs.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use protocol::domain::MachineId;
use tokio_util::sync::CancellationToken;
use verwalter::daemon::{self, Options};
use verwalter::node::Settings;
use verwalter::scheduler::{self, Limits};

/// Leader election, the Lua scheduler and config rendering (see docs/verwalter.md).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[arg(long, default_value = "/etc/verwalter")]
    config_dir: PathBuf,
    /// Schedule, backups, pending actions, election epoch.
    #[arg(long, default_value = "/var/lib/verwalter")]
    storage_dir: PathBuf,
    /// Indexed deployment logs.
    #[arg(long, default_value = "/var/log/verwalter")]
    log_dir: PathBuf,
    /// HTTP (TCP) and election (UDP) share this address and port.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    #[arg(long, default_value_t = 8379)]
    port: u16,
    /// Elect and schedule; the renderer only logs what it would do.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Kept for old unit files: a minority elects after the grace period (the default).
    #[arg(long)]
    allow_minority_cluster: bool,
    /// The original's rule: a minority never elects.
    #[arg(long, conflicts_with = "allow_minority_cluster")]
    strict_majority: bool,
    /// How long a peer cantal reports dead still counts toward the quorum.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    minority_grace: Duration,
    /// Machine id (32 hex digits) instead of cantal's or /etc/machine-id (tests).
    #[arg(long)]
    override_machine_id: Option<MachineId>,
    /// Name shown to others (default: the hostname).
    #[arg(long)]
    name: Option<String>,
    /// Short hostname; selects `nodes.<hostname>` of the schedule.
    #[arg(long)]
    hostname: Option<String>,
    /// Run verwalter_render via `sudo -n`.
    #[arg(long)]
    use_sudo: bool,
    /// Become leader without a quorum (debugging only).
    #[arg(long)]
    debug_force_leader: bool,
    #[arg(long, default_value = "/run/cantal/agent.sock")]
    cantal_socket: PathBuf,
    /// Local gRPC control socket; its directory also holds the renderer's vars files.
    #[arg(long, default_value = "/run/verwalter/control.sock")]
    socket: PathBuf,
    /// Write token; created 0600 with 32 random bytes (hex) if missing.
    #[arg(long, default_value = "/etc/verwalter/api-token")]
    api_token_file: PathBuf,
    #[arg(long, default_value = "2e9", value_parser = parse_count)]
    scheduler_instructions: u64,
    #[arg(long, default_value = "256MiB", value_parser = parse_bytes)]
    scheduler_memory: usize,
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    scheduler_timeout: Duration,
    #[arg(long, default_value = "common")]
    default_frontend: String,
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the scheduler once on a saved input (from /v1/scheduler_input).
    RunScheduler {
        #[arg(long, default_value = "/etc/verwalter")]
        config_dir: PathBuf,
        #[arg(long)]
        input: PathBuf,
        /// Write the schedule here instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn parse_count(text: &str) -> Result<u64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if value.is_finite() && value >= 1.0 && value <= u64::MAX as f64 {
        Ok(value as u64)
    } else {
        Err(format!("{text:?} is out of range"))
    }
}

fn parse_bytes(text: &str) -> Result<usize, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size"))?;
    let multiplier: usize = match unit.trim() {
        "" | "B" => 1,
        "k" | "K" | "KB" => 1000,
        "KiB" | "Ki" => 1 << 10,
        "M" | "MB" => 1_000_000,
        "MiB" | "Mi" => 1 << 20,
        "G" | "GB" => 1_000_000_000,
        "GiB" | "Gi" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?}")),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

fn init_logging(format: Option<LogFormat>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Text) => false,
        None => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    match args.command {
        Some(Command::RunScheduler {
            ref config_dir,
            ref input,
            ref output,
        }) => match run_scheduler(&args, config_dir, input, output.as_ref()) {
            Ok(code) => code,
            Err(err) => {
                eprintln!("verwalter run-scheduler: {err:#}");
                ExitCode::from(1)
            }
        },
        None => run_daemon(args),
    }
}

fn limits(args: &Args) -> Limits {
    Limits {
        instructions: args.scheduler_instructions,
        memory: args.scheduler_memory,
        timeout: args.scheduler_timeout,
    }
}

/// Prints the schedule (stdout or `--output`) and the debug log (stderr); exit 1 on a
/// scheduler error.
fn run_scheduler(
    args: &Args,
    config_dir: &std::path::Path,
    input: &PathBuf,
    output: Option<&PathBuf>,
) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(input).with_context(|| format!("read {}", input.display()))?;
    let input: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parse {}", input.display()))?;
    let dir = verwalter::config::ConfigDir::new(config_dir).scheduler_dir();
    match scheduler::run(&dir, &input, &limits(args)) {
        Ok(outcome) => {
            eprintln!("{}", outcome.debug_log.trim_end());
            let schedule =
                serde_json::to_string_pretty(&verwalter::schedule::canonical_value(&outcome.data))?;
            match output {
                Some(path) => std::fs::write(path, schedule + "\n")
                    .with_context(|| format!("write {}", path.display()))?,
                None => println!("{schedule}"),
            }
            eprintln!(
                "hash {} in {:?}, {} instructions, {} bytes",
                verwalter::schedule::hash(&outcome.data),
                outcome.stats.duration,
                outcome.stats.instructions,
                outcome.stats.memory
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(failure) => {
            eprintln!("{}", failure.debug_log.trim_end());
            eprintln!("verwalter run-scheduler: {}", failure.error);
            Ok(ExitCode::from(1))
        }
    }
}

fn run_daemon(args: Args) -> ExitCode {
    let system_hostname = isolation::host::name()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    let hostname = args.hostname.clone().unwrap_or_else(|| {
        system_hostname
            .split('.')
            .next()
            .unwrap_or_default()
            .to_owned()
    });
    let runtime_dir = args
        .socket
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let render_binary = std::env::current_exe()
        .map(|exe| exe.with_file_name("verwalter_render"))
        .unwrap_or_else(|_| PathBuf::from("verwalter_render"));
    let options = Options {
        settings: Settings {
            config_dir: args.config_dir.clone(),
            storage_dir: args.storage_dir.clone(),
            log_dir: args.log_dir.clone(),
            runtime_dir,
            port: args.port,
            name: args.name.clone().unwrap_or_else(|| hostname.clone()),
            hostname,
            dry_run: args.dry_run,
            use_sudo: args.use_sudo,
            debug_force_leader: args.debug_force_leader,
            cantal_socket: args.cantal_socket.clone(),
            limits: limits(&args),
            default_frontend: args.default_frontend.clone(),
            render_binary,
        },
        host: args.host,
        machine_id: args.override_machine_id,
        strict_majority: args.strict_majority,
        minority_grace: args.minority_grace,
        socket: args.socket.clone(),
        api_token_file: args.api_token_file.clone(),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("verwalter: start runtime: {err}");
            return ExitCode::from(83);
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(_) => return,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            signals.cancel();
        });
        daemon::run(options, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let chain: Vec<String> =
                std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
                    .map(ToString::to_string)
                    .collect();
            eprintln!("verwalter: {}", chain.join(": "));
            ExitCode::from(err.exit_code())
        }
    }
}
