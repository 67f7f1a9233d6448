//! lithos_ps: shows the tree, its sandboxes, processes and instances.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Parser;
use lithos::config::Master;
use lithos::ps;

/// Lists lithos processes.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The master config.
    #[arg(long, short = 'C', default_value = "/etc/lithos/master.yaml")]
    master: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Refresh continuously (not supported in this release).
    #[arg(long)]
    monitor: bool,
    #[arg(long, conflicts_with = "force_color")]
    no_color: bool,
    #[arg(long)]
    force_color: bool,
}

fn main() {
    let args = Args::parse();
    if args.monitor {
        eprintln!("lithos_ps: --monitor is not supported in this release");
        std::process::exit(1);
    }
    let master = match Master::load(&args.master) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let status = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()
        .and_then(|rt| rt.block_on(ps::status(&master)));
    let out = ps::collect(&master, status);
    if args.json {
        match serde_json::to_string_pretty(&out) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("lithos_ps: {e}");
                std::process::exit(1);
            }
        }
    } else {
        let color = args.force_color || (!args.no_color && std::io::stdout().is_terminal());
        print!("{}", ps::render(&out, color));
    }
}
