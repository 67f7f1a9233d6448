//! lithos_knot: supervises one container instance for lithos_tree.

#![forbid(unsafe_code)]

use clap::Parser;
use lithos::instance::InstanceConfig;
use lithos::state::code;
use lithos::{knot, logging};

/// Runs one instance; started by lithos_tree, not by hand.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Instance name, `SANDBOX/PROCESS.N`.
    #[arg(long)]
    name: String,
    /// The tree's master.yaml (identifies which tree the knot belongs to).
    #[arg(long, default_value = "/etc/lithos/master.yaml")]
    master: std::path::PathBuf,
    /// The instance config as JSON, written by lithos_tree.
    #[arg(long)]
    config: String,
    /// Log to stderr instead of the sandbox log.
    #[arg(long)]
    log_stderr: bool,
}

fn main() {
    let args = Args::parse();
    // Blocked before anything else so a SIGTERM during setup is not lost.
    let signals = match knot::block_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("lithos_knot {}: {e}", args.name);
            std::process::exit(code::SETUP_ERROR);
        }
    };
    let config: InstanceConfig = match serde_json::from_str(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lithos_knot {}: bad --config: {e}", args.name);
            std::process::exit(code::SETUP_ERROR);
        }
    };
    if config.name != args.name {
        eprintln!(
            "lithos_knot: --name {} does not match the config's {}",
            args.name, config.name
        );
        std::process::exit(code::SETUP_ERROR);
    }
    let target = if args.log_stderr {
        logging::Target::Stderr
    } else {
        logging::Target::File(config.log_file.clone())
    };
    logging::init(target, &config.log_level, false);
    if let Err(e) = knot::join_knots_cgroup(&config) {
        tracing::warn!(instance = %config.name, "cannot move into the knots cgroup: {e}");
    }
    let sockets = match knot::inherited_sockets(&config) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(instance = %config.name, "{e}");
            std::process::exit(code::SETUP_ERROR);
        }
    };
    let outcome = knot::run(&config, sockets, &signals, knot::Caller::Tree);
    std::process::exit(outcome.code);
}
