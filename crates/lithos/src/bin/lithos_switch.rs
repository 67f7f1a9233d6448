//! lithos_switch: checks a processes file, puts it in place atomically and reloads the tree.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::Parser;
use lithos::config::Master;
use lithos::switch::{self, Switched};

/// Replaces the processes config of a sandbox after checking it.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The master config.
    #[arg(long, short = 'C', default_value = "/etc/lithos/master.yaml")]
    master: PathBuf,
    /// The sandbox whose processes file is replaced.
    sandbox: String,
    /// The new processes file.
    file: PathBuf,
}

fn main() {
    let args = Args::parse();
    lithos::logging::init(lithos::logging::Target::Stderr, "warn", false);
    let master = match Master::load(&args.master) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let result = match runtime {
        Ok(rt) => rt.block_on(switch::switch(&master, &args.sandbox, &args.file)),
        Err(e) => {
            eprintln!("lithos_switch: start runtime: {e}");
            std::process::exit(1);
        }
    };
    match result {
        Ok(Switched::Reloaded) => {}
        Ok(Switched::Signalled(pid)) => eprintln!(
            "lithos_switch: control socket unavailable; sent SIGQUIT to lithos_tree {pid}"
        ),
        Ok(Switched::TreeNotRunning) => eprintln!(
            "lithos_switch: warning: lithos_tree is not running; the new config applies when it starts"
        ),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
