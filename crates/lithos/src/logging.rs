//! Log setup shared by the binaries: text on a terminal or stderr, a file, or syslog; JSON
//! when asked. The level comes from the config unless `RUST_LOG` is set.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Where log lines go.
#[derive(Debug, Clone)]
pub enum Target {
    Stderr,
    File(PathBuf),
    /// `/dev/log` with a facility name (`daemon`, `local0`...) and an app name.
    Syslog {
        facility: String,
        app: String,
    },
}

fn facility_code(name: &str) -> u8 {
    match name {
        "kern" => 0,
        "user" => 1,
        "mail" => 2,
        "daemon" => 3,
        "auth" => 4,
        "syslog" => 5,
        "lpr" => 6,
        "news" => 7,
        "cron" => 9,
        "local0" => 16,
        "local1" => 17,
        "local2" => 18,
        "local3" => 19,
        "local4" => 20,
        "local5" => 21,
        "local6" => 22,
        "local7" => 23,
        _ => 3,
    }
}

/// Sends each formatted event as one datagram to `/dev/log`.
#[derive(Debug, Clone)]
struct Syslog {
    prefix: String,
}

struct SyslogLine {
    prefix: String,
    buffer: Vec<u8>,
}

impl Write for SyslogLine {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buffer);
        let line = format!("{}{}", self.prefix, text.trim_end());
        if let Ok(sock) = UnixDatagram::unbound() {
            let _ = sock.send_to(line.as_bytes(), "/dev/log");
        }
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine;
    fn make_writer(&'a self) -> SyslogLine {
        SyslogLine {
            prefix: self.prefix.clone(),
            buffer: Vec::new(),
        }
    }
}

/// Installs the global subscriber. Failing to open a log file falls back to stderr.
pub fn init(target: Target, level: &str, json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match target {
        Target::Stderr => {
            let b = builder.with_writer(io::stderr);
            if json {
                b.json().try_init()
            } else {
                b.try_init()
            }
        }
        Target::File(path) => {
            let open = || OpenOptions::new().append(true).create(true).open(&path);
            // The directory is made only when missing: one call per start otherwise.
            let opened = open().or_else(|e| match path.parent() {
                Some(dir) if e.kind() == io::ErrorKind::NotFound => {
                    std::fs::create_dir_all(dir).and_then(|()| open())
                }
                _ => Err(e),
            });
            match opened {
                Ok(file) => {
                    let b = builder.with_ansi(false).with_writer(Mutex::new(file));
                    if json {
                        b.json().try_init()
                    } else {
                        b.try_init()
                    }
                }
                Err(e) => {
                    eprintln!("open log file {}: {e}; logging to stderr", path.display());
                    builder.with_writer(io::stderr).try_init()
                }
            }
        }
        Target::Syslog { facility, app } => {
            // Priority "info" within the facility; the level is in the text.
            let pri = facility_code(&facility) * 8 + 6;
            let prefix = format!("<{pri}>{app}[{}]: ", std::process::id());
            let b = builder
                .with_ansi(false)
                .without_time()
                .with_writer(Syslog { prefix });
            if json {
                b.json().try_init()
            } else {
                b.try_init()
            }
        }
    };
    // A second init (tests run several binaries' code in one process) keeps the first.
    drop(result);
}
