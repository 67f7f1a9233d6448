//! `cantal-agent`: the monitoring agent. See `docs/cantal.md`.

#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use cantal::agent::{AgentConfig, run};
use cantal::groups::DEFAULT_LITHOS_ROOT;
use cantal::logging::{self, LogFormat};
use clap::{ArgAction, Parser};
use protocol::domain::MachineId;
use tokio_util::sync::CancellationToken;

/// Bad arguments or an unreadable machine id.
const EXIT_USAGE: u8 = 2;
/// The async runtime could not start.
const EXIT_RUNTIME: u8 = 83;

#[derive(Debug, Parser)]
#[command(
    name = "cantal-agent",
    version,
    about = "Collects metrics, keeps history and gossips a peer list",
    disable_help_flag = true
)]
struct Args {
    /// Address for HTTP (TCP) and gossip (UDP); `::` binds dual-stack.
    #[arg(short = 'h', long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port for both HTTP and gossip.
    #[arg(short, long, default_value_t = 22682)]
    port: u16,
    /// Also serve HTTP on 127.0.0.1 when --host is another address.
    #[arg(long)]
    bind_localhost: bool,
    /// Name announced to peers (default: the hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// Enables gossip with peers of this cluster.
    #[arg(long)]
    cluster_name: Option<String>,
    /// Deprecated spelling of --cluster-name.
    #[arg(short = 'n', hide = true)]
    n: Option<String>,
    /// Keep history and peers here across restarts.
    #[arg(short = 'd', long)]
    storage_dir: Option<PathBuf>,
    /// Carbon export configs (not implemented yet; files there are ignored).
    #[arg(short = 'c', long, default_value = "/etc/cantal")]
    config_dir: PathBuf,
    /// Machine id (32 hex digits) instead of /etc/machine-id; for tests.
    #[arg(long)]
    override_machine_id: Option<String>,
    /// Scan interval in milliseconds.
    #[arg(short = 'i', long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(500..=60000))]
    interval: u64,
    /// How long history is kept (humantime: 1h, 30m, ...).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    keep_history: Duration,
    /// Seed peer host:port; repeatable.
    #[arg(long = "join", value_name = "ADDR")]
    joins: Vec<String>,
    /// The local gRPC socket.
    #[arg(long, default_value = "/run/cantal/agent.sock")]
    socket: PathBuf,
    /// Most peers kept in the table.
    #[arg(long, default_value_t = 4096)]
    max_peers: usize,
    /// Expose per-process series on /metrics.
    #[arg(long)]
    prometheus_per_pid: bool,
    /// Log format (default: text on a terminal, else json); filter with RUST_LOG.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
}

fn machine_id(args: &Args) -> anyhow::Result<MachineId> {
    let text = match &args.override_machine_id {
        Some(id) => id.clone(),
        None => std::fs::read_to_string("/etc/machine-id").context("read /etc/machine-id")?,
    };
    Ok(text.trim().parse()?)
}

/// Resolves each `--join`; one that does not resolve now is reported and skipped, since a
/// seed being down must not stop the agent.
fn resolve_joins(joins: &[String]) -> Vec<SocketAddr> {
    joins
        .iter()
        .filter_map(|join| match join.to_socket_addrs() {
            Ok(mut addrs) => addrs.next(),
            Err(e) => {
                tracing::warn!(join, error = %e, "cannot resolve --join address; skipping it");
                None
            }
        })
        .collect()
}

fn config(args: Args) -> anyhow::Result<AgentConfig> {
    let machine_id = machine_id(&args)?;
    let hostname = isolation::host::name()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    let cluster_name = match (args.cluster_name, args.n) {
        (Some(name), _) => Some(name),
        (None, Some(name)) => {
            tracing::warn!("-n is deprecated and ambiguous; use --cluster-name");
            Some(name)
        }
        (None, None) => None,
    };
    let _ = args.config_dir;
    Ok(AgentConfig {
        host: args.host,
        port: args.port,
        bind_localhost: args.bind_localhost,
        node_name: args.node_name.unwrap_or_else(|| hostname.clone()),
        hostname,
        cluster_name,
        storage_dir: args.storage_dir,
        machine_id,
        interval: Duration::from_millis(args.interval),
        keep_history: args.keep_history,
        joins: resolve_joins(&args.joins),
        socket: args.socket,
        max_peers: args.max_peers.max(1),
        prometheus_per_pid: args.prometheus_per_pid,
        proc_root: PathBuf::from("/proc"),
        lithos_root: DEFAULT_LITHOS_ROOT.to_owned(),
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    logging::init(args.log_format);
    cantal::processes::raise_open_files_limit();
    let config = match config(args) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "cannot start");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // One thread serves HTTP, gRPC and gossip, and the scan runs on a blocking thread: more
    // workers only add stacks and malloc arenas (measured in docs/benchmarks.md).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                tracing::error!("cannot listen for signals");
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("stopping");
            signals.cancel();
        });
        run(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = u8::try_from(e.exit_code()).unwrap_or(EXIT_RUNTIME);
            tracing::error!(
                error = format!("{:#}", anyhow::Error::from(e)),
                "cantal-agent failed"
            );
            ExitCode::from(code)
        }
    }
}
