//! The `vagga` binary: parses the command line, starts logging, runs, maps errors to exit codes.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    // The privileged helper: one file operation in a user namespace, then exit.
    if args.len() == 3 && args[1] == vagga::privileged::HELPER_ARG {
        return ExitCode::from(vagga::privileged::helper_main(&args[2]) as u8);
    }
    let filter = EnvFilter::try_from_env("VAGGA_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("VAGGA_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder
            .with_ansi(vagga::console::is_interactive())
            .without_time()
            .init();
    }
    let cli = match vagga::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp => ExitCode::SUCCESS,
                _ => ExitCode::from(122),
            };
        }
    };
    match vagga::run(cli) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(vagga::Error::Help(text)) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let code = e.exit_code();
            eprintln!("{e}");
            ExitCode::from(code as u8)
        }
    }
}
