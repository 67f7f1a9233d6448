//! lithos_cmd: runs a `kind: Command` entry of a sandbox.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::Parser;
use lithos::config::Master;

/// Runs a command entry; exit 0 when the command exited 0, else 1.
#[derive(Debug, Parser)]
#[command(version, trailing_var_arg = true)]
struct Args {
    /// The master config.
    #[arg(long, short = 'C', default_value = "/etc/lithos/master.yaml")]
    master: PathBuf,
    /// Log to stderr (default: the sandbox log).
    #[arg(long)]
    log_stderr: bool,
    sandbox: String,
    name: String,
    /// Appended to the command's arguments.
    #[arg(allow_hyphen_values = true)]
    args: Vec<String>,
}

fn main() {
    let args = Args::parse();
    let master = match Master::load(&args.master) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let target = if args.log_stderr {
        lithos::logging::Target::Stderr
    } else {
        lithos::logging::Target::File(master.default_log_dir.join(format!("{}.log", args.sandbox)))
    };
    lithos::logging::init(target, &master.log_level, false);
    match lithos::command::run(&master, &args.sandbox, &args.name, &args.args) {
        Ok(Some(0)) => std::process::exit(0),
        Ok(_) => std::process::exit(1),
        Err(e) => {
            eprintln!("lithos_cmd: {e}");
            std::process::exit(1);
        }
    }
}
