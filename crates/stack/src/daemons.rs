//! The three daemons of the stack as child processes: started in their own process groups
//! (so a Ctrl-C on the terminal reaches only deploy-stack, which stops them in order) with
//! their output in log files, stopped with SIGTERM and, after a grace period, SIGKILL.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use isolation::Signal;
use isolation::signal::send;

/// Why a daemon could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("open log {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("start {program}: {source}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("record {path}: {source}")]
    Record {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("wait for {name}: {source}")]
    Wait {
        name: String,
        source: std::io::Error,
    },
}

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    pub name: String,
    child: Child,
}

impl Daemon {
    /// Starts `program args` with stdout and stderr appended to `log`.
    pub fn start(
        name: &str,
        program: &Path,
        args: &[&std::ffi::OsStr],
        log: &Path,
    ) -> Result<Daemon, DaemonError> {
        let log_error = |source| DaemonError::Log {
            path: log.to_path_buf(),
            source,
        };
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(log_error)?;
        let err = out.try_clone().map_err(log_error)?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|source| DaemonError::Spawn {
                program: program.to_path_buf(),
                source,
            })?;
        tracing::info!(name, pid = child.id(), "started");
        Ok(Daemon {
            name: name.to_string(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status when the daemon has ended.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>, DaemonError> {
        self.child.try_wait().map_err(|source| DaemonError::Wait {
            name: self.name.clone(),
            source,
        })
    }

    /// SIGTERM, then SIGKILL when it has not ended within `grace`; returns its status.
    pub fn stop(mut self, grace: Duration) -> Result<ExitStatus, DaemonError> {
        if let Some(status) = self.exited()? {
            return Ok(status);
        }
        // The child is ours and not yet reaped, so the pid cannot have been reused.
        let _ = send(self.child.id() as i32, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.exited()? {
                tracing::info!(name = %self.name, %status, "stopped");
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::warn!(name = %self.name, ?grace, "did not stop after SIGTERM; sending SIGKILL");
        let _ = self.child.kill();
        self.child.wait().map_err(|source| DaemonError::Wait {
            name: self.name.clone(),
            source,
        })
    }
}

/// `name pid` lines of the daemons one `up` started, in start order. The stack removes the
/// file with the runtime dir when it stops; finding it at start means the last `up` was
/// killed without stopping its daemons.
#[derive(Debug)]
pub struct Record {
    pub path: PathBuf,
}

impl Record {
    pub fn add(&self, daemon: &Daemon) -> Result<(), DaemonError> {
        use std::io::Write;
        let error = |source| DaemonError::Record {
            path: self.path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(error)?;
        writeln!(file, "{} {}", daemon.name, daemon.pid()).map_err(error)
    }

    /// Stops the recorded daemons that still run, last started first, and removes the
    /// record. A pid counts only while its command line names `marker` (the state dir),
    /// so a reused pid is left alone. Returns the names of the daemons it stopped.
    pub fn stop_stale(&self, marker: &str, grace: Duration) -> Result<Vec<String>, DaemonError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(DaemonError::Record {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let mut stopped = Vec::new();
        for line in text.lines().rev() {
            let Some((name, pid)) = line.split_once(' ') else {
                continue;
            };
            let Ok(pid) = pid.parse::<i32>() else {
                continue;
            };
            let ours = || {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
            };
            if !ours() {
                continue;
            }
            tracing::warn!(name, pid, "stopping a daemon the last run left behind");
            let _ = send(pid, Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while ours() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if ours() {
                let _ = send(pid, Signal::SIGKILL);
            }
            stopped.push(name.to_string());
        }
        std::fs::remove_file(&self.path).map_err(|source| DaemonError::Record {
            path: self.path.clone(),
            source,
        })?;
        Ok(stopped)
    }
}
