//! lithos_tree: the supervisor, one per host.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::Parser;
use lithos::config::Master;
use lithos::tree::{self, Tree};
use lithos::{logging, metrics};

/// Keeps the configured containers running.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The master config.
    #[arg(
        short = 'C',
        long = "master",
        alias = "config",
        default_value = "/etc/lithos/master.yaml"
    )]
    master: PathBuf,
    /// Log to stderr instead of the master log file.
    #[arg(long)]
    log_stderr: bool,
    /// Log level (overrides log-level in master.yaml).
    #[arg(long)]
    log_level: Option<String>,
    /// Log lines as JSON.
    #[arg(long)]
    log_json: bool,
}

fn main() {
    // Blocked until the handlers exist (they stay blocked across a re-exec).
    let _ = isolation::signal::block(&tree::UPGRADE_SIGNALS);
    let args = Args::parse();
    let master = match Master::load(&args.master) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("lithos_tree: {e}");
            std::process::exit(1);
        }
    };
    let exe = std::env::current_exe()
        .map(|p| PathBuf::from(p.to_string_lossy().trim_end_matches(" (deleted)")))
        .unwrap_or_else(|_| PathBuf::from("/usr/bin/lithos_tree"));
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    metrics::advertise(&exe, &argv, &master.metrics_path());
    let target = if args.log_stderr {
        logging::Target::Stderr
    } else if let Some(facility) = &master.syslog_facility {
        logging::Target::Syslog {
            facility: facility.clone(),
            app: master.syslog_app_name.clone(),
        }
    } else {
        logging::Target::File(master.log_file.clone())
    };
    logging::init(
        target,
        args.log_level.as_deref().unwrap_or(&master.log_level),
        args.log_json,
    );
    let reexecuted = match tree::claim_pid_file(&master) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("lithos_tree: {e}");
            std::process::exit(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lithos_tree: start runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async move {
        let mut tree = Tree::new(master, exe, argv)?;
        if reexecuted {
            tree.count_reexec();
        }
        tree.run().await
    });
    if let Err(e) = result {
        tracing::error!("{e}");
        eprintln!("lithos_tree: {e}");
        std::process::exit(1);
    }
}
