//! lithos_clean: finds and deletes images no sandbox uses.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::{ArgGroup, Parser};
use lithos::clean::{self, Action, Options};
use lithos::config::Master;

/// Image garbage collection for auto-clean sandboxes.
#[derive(Debug, Parser)]
#[command(version, group(ArgGroup::new("action").required(true).args(["used", "unused", "delete_unused"])))]
struct Args {
    /// The master config.
    #[arg(long, short = 'C', default_value = "/etc/lithos/master.yaml")]
    master: PathBuf,
    /// List images in use.
    #[arg(long)]
    used: bool,
    /// List images not in use.
    #[arg(long)]
    unused: bool,
    /// Delete images not in use.
    #[arg(long)]
    delete_unused: bool,
    /// Also delete rotated config logs older than --days.
    #[arg(long)]
    clean_logs: bool,
    /// Config-log history of this many days counts as use.
    #[arg(short = 'D', long = "days", default_value_t = 7)]
    days: u64,
    /// Keep at least this many of the newest unused images per image dir.
    #[arg(long, default_value_t = 0)]
    vmin: usize,
    /// Delete at most this many images per image dir per run.
    #[arg(long, default_value_t = 1000)]
    vmax: usize,
    /// Never delete images modified more recently than this (e.g. 1h, 30m).
    #[arg(long, default_value = "1h")]
    keep_recent: humantime::Duration,
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
    let action = if args.used {
        Action::ListUsed
    } else if args.unused {
        Action::ListUnused
    } else {
        Action::DeleteUnused
    };
    let opts = Options {
        action,
        clean_logs: args.clean_logs,
        days: args.days,
        vmin: args.vmin,
        vmax: args.vmax,
        keep_recent: args.keep_recent.into(),
    };
    let report = clean::survey(&master, &opts);
    for s in &report.skipped {
        eprintln!("lithos_clean: skipped {s}");
    }
    match action {
        Action::ListUsed => {
            for (dir, images) in &report.used {
                for i in images {
                    println!("{}", dir.join(i).display());
                }
            }
        }
        Action::ListUnused => {
            for (dir, images) in &report.unused {
                for i in images {
                    println!("{}", dir.join(i).display());
                }
            }
        }
        Action::DeleteUnused => match clean::delete_unused(&report) {
            Ok(deleted) => {
                for d in deleted {
                    println!("deleted {}", d.display());
                }
            }
            Err(e) => {
                eprintln!("lithos_clean: {e}");
                std::process::exit(1);
            }
        },
    }
    if opts.clean_logs
        && let Err(e) = clean::clean_logs(&master, opts.days)
    {
        eprintln!("lithos_clean: {e}");
        std::process::exit(1);
    }
}
