//! Log setup shared by the binaries: text on a terminal or stderr, a file, or syslog; JSON
//! when asked. The level comes from the config unless `RUST_LOG` is set.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::{Interest, Subscriber};
use tracing::{Dispatch, Event, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

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
///
/// Without `RUST_LOG` the subscriber is built at the first enabled event or span, so a run
/// that logs nothing (`lithos_cmd`'s usual one) skips the registry's set-up and the log
/// file's open: they are a visible part of a command's start time.
pub fn init(target: Target, level: &str, json: bool) {
    let plain = match level {
        "error" => Some(LevelFilter::ERROR),
        "warn" => Some(LevelFilter::WARN),
        "info" => Some(LevelFilter::INFO),
        "debug" => Some(LevelFilter::DEBUG),
        "trace" => Some(LevelFilter::TRACE),
        _ => None,
    };
    let result = match plain {
        Some(level) if std::env::var_os("RUST_LOG").is_none() => Lazy {
            level,
            target,
            json,
            inner: OnceLock::new(),
        }
        .try_init(),
        _ => {
            let filter =
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
            subscriber(target, filter, json).try_init()
        }
    };
    // A second init (tests run several binaries' code in one process) keeps the first.
    drop(result);
}

/// Filters by a plain level and hands everything else to the subscriber it builds on first use.
struct Lazy {
    level: LevelFilter,
    target: Target,
    json: bool,
    inner: OnceLock<Dispatch>,
}

impl Lazy {
    fn inner(&self) -> &Dispatch {
        self.inner.get_or_init(|| {
            let filter = EnvFilter::new(self.level.to_string());
            subscriber(self.target.clone(), filter, self.json)
        })
    }
}

impl Subscriber for Lazy {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if self.enabled(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.level
    }
    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.level)
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        self.inner().new_span(span)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        self.inner().record(span, values)
    }
    fn record_follows_from(&self, span: &Id, follows: &Id) {
        self.inner().record_follows_from(span, follows)
    }
    fn event(&self, event: &Event<'_>) {
        self.inner().event(event)
    }
    fn enter(&self, span: &Id) {
        self.inner().enter(span)
    }
    fn exit(&self, span: &Id) {
        self.inner().exit(span)
    }
    fn clone_span(&self, id: &Id) -> Id {
        self.inner().clone_span(id)
    }
    fn try_close(&self, id: Id) -> bool {
        self.inner().try_close(id)
    }
}

/// The formatting subscriber writing to `target`.
fn subscriber(target: Target, filter: EnvFilter, json: bool) -> Dispatch {
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match target {
        Target::Stderr => {
            let b = builder.with_writer(io::stderr);
            if json {
                Dispatch::new(b.json().finish())
            } else {
                Dispatch::new(b.finish())
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
                        Dispatch::new(b.json().finish())
                    } else {
                        Dispatch::new(b.finish())
                    }
                }
                Err(e) => {
                    eprintln!("open log file {}: {e}; logging to stderr", path.display());
                    Dispatch::new(builder.with_writer(io::stderr).finish())
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
                Dispatch::new(b.json().finish())
            } else {
                Dispatch::new(b.finish())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lazy_subscriber_opens_the_log_file_at_the_first_enabled_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log/demo.log");
        let lazy = Lazy {
            level: LevelFilter::WARN,
            target: Target::File(path.clone()),
            json: false,
            inner: OnceLock::new(),
        };
        tracing::subscriber::with_default(lazy, || {
            tracing::info!("below the level");
            assert!(!path.exists());
            tracing::warn!("at the level");
        });
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("WARN") && text.contains("at the level"),
            "{text}"
        );
        assert!(!text.contains("below the level"), "{text}");
    }
}
