//! demo-web: serves the greeting and health routes until SIGTERM or SIGINT.
//!
//! Exit codes: 0 stopped by a signal, 1 the version file, the metrics files or the listening
//! socket could not be set up, 2 bad arguments.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use demo::{Counters, Identity, identity::DEFAULT_VERSION_FILE};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(version, about = "The demo HTTP service of the whole-stack example")]
struct Args {
    /// Address and port to listen on (with SO_REUSEPORT, so that several instances of one
    /// lithos entry share the port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Host name shown by `GET /` (default: the kernel's host name).
    #[arg(long)]
    node: Option<String>,
    /// File whose first line is the version shown by `GET /`.
    #[arg(long, default_value = DEFAULT_VERSION_FILE)]
    version_file: PathBuf,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

fn main() {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: lithos writes stderr to a log file.
        .with_ansi(std::io::stderr().is_terminal());
    if args.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    if let Err(err) = run(args) {
        tracing::error!("{err:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let identity = Identity::load(&args.version_file, args.node)?;
    let counters = Counters::default();
    let _metrics = libcantal::start(&counters.collection()?).context("publish metrics")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start runtime")?;
    runtime.block_on(async {
        let listener =
            demo::listen(args.listen).with_context(|| format!("listen on {}", args.listen))?;
        tracing::info!(listen = %args.listen, version = %identity.version, "serving");
        let shutdown = CancellationToken::new();
        let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            on_signal.cancel();
        });
        demo::serve(listener, demo::router(identity, counters), shutdown)
            .await
            .context("serve")
    })
}
