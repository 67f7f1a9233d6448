//! `cantal`: dump a process's metrics, list peers, join a cluster. See `docs/cantal.md`.

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cantal::cli;
use cantal::logging::{self, LogFormat};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cantal",
    version,
    about = "Talks to cantal-agent and reads application metric files",
    after_help = "`cantal PID...` is short for `cantal dump PID...`."
)]
struct Args {
    /// The agent's HTTP address.
    #[arg(long, global = true, default_value = "http://127.0.0.1:22682")]
    agent: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print every metric of processes' files (or of one file pair with --path).
    Dump {
        /// A file pair base path instead of processes.
        #[arg(long)]
        path: Option<PathBuf>,
        pids: Vec<i32>,
    },
    /// The agent's peers.
    Peers {
        /// The agent's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Ask the agent to join a cluster through HOST:PORT.
    #[command(alias = "add-host")]
    Join { addr: String },
    /// A short summary of the agent's status.
    Status,
}

/// The original's `cantal PID...`: a first positional argument that is a number means `dump`.
fn with_implicit_dump(mut argv: Vec<OsString>) -> Vec<OsString> {
    let mut i = 1;
    while i < argv.len() {
        let arg = argv[i].to_string_lossy();
        if arg == "--agent" {
            i += 2;
            continue;
        }
        if !arg.starts_with('-') {
            if arg.bytes().all(|b| b.is_ascii_digit()) {
                argv.insert(i, OsString::from("dump"));
            }
            break;
        }
        i += 1;
    }
    argv
}

fn dump(path: Option<PathBuf>, pids: &[i32]) -> anyhow::Result<()> {
    if let Some(path) = path {
        for line in cli::dump_path(&path)? {
            println!("{line}");
        }
        return Ok(());
    }
    anyhow::ensure!(!pids.is_empty(), "give process ids or --path");
    if let [pid] = pids {
        cli::dump_pid(*pid)?
            .iter()
            .for_each(|line| println!("{line}"));
        return Ok(());
    }
    let mut failed = 0;
    for &pid in pids {
        match cli::dump_pid(pid) {
            Ok(lines) => lines.iter().for_each(|line| println!("{line}")),
            Err(e) => {
                eprintln!("cantal: {:#}", anyhow::Error::from(e));
                failed += 1;
            }
        }
    }
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} processes could not be read",
        pids.len()
    );
    Ok(())
}

async fn agent(command: Command, agent: &str) -> anyhow::Result<String> {
    Ok(match command {
        Command::Peers { json } => cli::peers(agent, json).await?,
        Command::Join { addr } => cli::join(agent, &addr).await?,
        Command::Status => cli::status(agent).await?,
        Command::Dump { .. } => unreachable!("handled without the agent"),
    })
}

fn main() -> ExitCode {
    let args = Args::parse_from(with_implicit_dump(std::env::args_os().collect()));
    logging::init(Some(LogFormat::Text));
    let result = match args.command {
        Command::Dump { path, pids } => dump(path, &pids),
        command => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start the async runtime")
            .and_then(|runtime| runtime.block_on(agent(command, &args.agent)))
            .map(|output| print!("{output}{}", if output.ends_with('\n') { "" } else { "\n" })),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cantal: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn numbers_first_mean_dump() {
        assert_eq!(
            with_implicit_dump(argv(&["cantal", "12", "13"])),
            argv(&["cantal", "dump", "12", "13"])
        );
        assert_eq!(
            with_implicit_dump(argv(&["cantal", "--agent", "http://x", "7"])),
            argv(&["cantal", "--agent", "http://x", "dump", "7"])
        );
        assert_eq!(
            with_implicit_dump(argv(&["cantal", "peers"])),
            argv(&["cantal", "peers"])
        );
        assert!(
            Args::try_parse_from(with_implicit_dump(argv(&[
                "cantal",
                "--agent",
                "u",
                "join",
                "1.2.3.4:5"
            ])))
            .is_ok()
        );
    }
}
