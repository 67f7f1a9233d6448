//! deploy-stack: the whole stack on this host. See docs/stack.md.
//!
//! Exit codes: 0 stopped by SIGINT/SIGTERM, 1 setup failed (not root, missing binaries,
//! image build, a daemon not coming up, the demo not deployed in time), 2 bad arguments,
//! 3 a daemon died while running, 4 cleanup failed (a cgroup or the runtime dir remained).

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version, about = "vagga, lithos, cantal and verwalter on this host")]
struct Args {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Build the demo images, start cantal-agent, lithos_tree and verwalter, wait until the
    /// scheduler has deployed the demo, print the addresses; Ctrl-C stops everything.
    Up(UpArgs),
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Everything of this stack lives here (nothing goes to /etc, /run or /var).
    #[arg(long, default_value = ".deploy-stack")]
    state_dir: PathBuf,
    /// The address cantal, verwalter and the demo listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 22682)]
    cantal_port: u16,
    #[arg(long, default_value_t = 8379)]
    verwalter_port: u16,
    /// Where the tools' binaries are (default: beside deploy-stack).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The demo-web binary for the images (default: demo-web in the bin dir).
    #[arg(long)]
    demo_binary: Option<PathBuf>,
    /// How long the scheduler may take to deploy the demo.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    deploy_timeout: Duration,
}

fn main() {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if args.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    let code = match run(args.command) {
        Ok(()) => 0,
        Err(err) => {
            tracing::error!("{err:#}");
            err.downcast_ref::<stack::StackError>()
                .map_or(1, stack::StackError::exit_code)
        }
    };
    std::process::exit(code);
}

fn run(command: Commands) -> anyhow::Result<()> {
    let Commands::Up(args) = command;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("install signal handlers")?;
    }
    let bin_dir = match args.bin_dir {
        Some(dir) => dir,
        None => std::env::current_exe()
            .context("find deploy-stack's own path")?
            .parent()
            .context("deploy-stack's path has no directory")?
            .to_path_buf(),
    };
    let options = stack::Options {
        demo_binary: args.demo_binary.unwrap_or_else(|| bin_dir.join("demo-web")),
        bin_dir,
        state_dir: args.state_dir,
        host: args.host,
        cantal_port: args.cantal_port,
        verwalter_port: args.verwalter_port,
        deploy_timeout: args.deploy_timeout,
    };
    stack::up(&options, &stop, |addresses| {
        println!("{addresses}");
        println!("Ctrl-C stops everything.");
    })?;
    Ok(())
}
