//! lithos_check: checks lithos configs; exit 0 when everything is fine, 1 otherwise.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::Parser;
use lithos::check::{self, Report};
use lithos::config::Master;

/// Checks master, sandbox, processes and container configs.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The master config.
    #[arg(
        short = 'C',
        long = "config",
        alias = "master",
        default_value = "/etc/lithos/master.yaml"
    )]
    config: PathBuf,
    /// Also print what passed and warnings.
    #[arg(short, long)]
    verbose: bool,
    /// Check only this sandbox.
    #[arg(long)]
    sandbox: Option<String>,
    /// With --sandbox: check this file as its processes file.
    #[arg(long, requires = "sandbox")]
    alternate_config: Option<PathBuf>,
    /// Check a container config on its own (offline, for CI); may repeat.
    #[arg(long)]
    check_container: Vec<PathBuf>,
}

fn main() {
    let args = Args::parse();
    lithos::logging::init(lithos::logging::Target::Stderr, "warn", false);
    let mut report = Report::default();
    if !args.check_container.is_empty() {
        for file in &args.check_container {
            check::container(file, &mut report);
        }
    } else {
        match Master::load(&args.config) {
            Ok(master) => {
                let only = args
                    .sandbox
                    .as_deref()
                    .map(|s| (s, args.alternate_config.as_deref()));
                check::all(&master, only, &mut report);
            }
            Err(e) => report.errors.push(e),
        }
    }
    if args.verbose {
        for note in &report.notes {
            println!("{note}");
        }
    }
    for e in &report.errors {
        eprintln!("{e}");
    }
    std::process::exit(if report.ok() { 0 } else { 1 });
}
