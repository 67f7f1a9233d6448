//! What a knot leaves for the tree: `knot.json` (who runs, with which config and sockets),
//! `exit-status` (how it ended), and notices sent as unix datagrams as things happen.
//! The files let a restarted tree adopt knots and learn how unwatched ones ended.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub const KNOT_FILE: &str = "knot.json";
pub const EXIT_FILE: &str = "exit-status";

/// Knot exit codes (spec §2.1).
pub mod code {
    /// SIGTERMed, a `normal-exit-codes` value, or a Command exiting 0.
    pub const NORMAL: i32 = 0;
    pub const SETUP_ERROR: i32 = 1;
    pub const FAILURE: i32 = 2;
    pub const KILL_TIMEOUT: i32 = 3;
}

/// How a container process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessExit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub oom: bool,
}

impl ProcessExit {
    /// From the init's status: it exits with 128 + N when signal N killed the program.
    pub fn from_status(status: isolation::ExitStatus, oom: bool) -> ProcessExit {
        match status {
            isolation::ExitStatus::Exited(c) if (129..=128 + 64).contains(&c) => ProcessExit {
                code: None,
                signal: Some(c - 128),
                oom,
            },
            isolation::ExitStatus::Exited(c) => ProcessExit {
                code: Some(c),
                signal: None,
                oom,
            },
            isolation::ExitStatus::Signaled(s) => ProcessExit {
                code: None,
                signal: Some(s as i32),
                oom,
            },
        }
    }
}

impl std::fmt::Display for ProcessExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exited with code {c}")?,
            (None, Some(s)) => write!(f, "killed by signal {s}")?,
            (None, None) => write!(f, "ended")?,
        }
        if self.oom {
            write!(f, " (out of memory)")?;
        }
        Ok(())
    }
}

/// `knot.json`: written when the container starts, rewritten on each respawn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnotRecord {
    pub name: String,
    pub knot_pid: u32,
    /// The container's pid 1 as the host sees it.
    pub pid: u32,
    pub started_ms: u64,
    /// Sha-256 of the instance config JSON.
    pub digest: String,
    /// Respawns by the knot itself (`restart-process-only`).
    pub restarts: u64,
    pub sockets: Vec<SocketRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketRecord {
    pub addr: SocketAddr,
    /// Descriptor number in the knot.
    pub fd: i32,
}

/// `exit-status`: written just before the knot exits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub knot_code: i32,
    pub exit: Option<ProcessExit>,
    pub reason: Option<String>,
    pub uptime_ms: u64,
}

/// A notice from a knot to the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub instance: String,
    pub knot_pid: u32,
    pub event: NoticeEvent,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoticeEvent {
    /// The container process runs.
    Started { pid: u32 },
    /// The container process ended (the knot may respawn it or exit next).
    Exited { exit: ProcessExit },
    /// Setup failed; the knot exits with code 1.
    SetupFailed { reason: String },
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes runtime state to `path` through a temporary file and a rename: never half-written.
///
/// No fsync: this state only has to outlive a crash of our processes, which the page cache
/// does; after a power loss there are no containers left to adopt. The fsync cost a
/// millisecond or more on every container start and every metrics flush.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    std::fs::rename(&tmp, path)
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    write_atomic(path, &json)
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    std::fs::read(path)
        .ok()
        .and_then(|data| serde_json::from_slice(&data).ok())
}

/// Sends a notice; a tree that is not listening (restarting) just misses it.
pub fn notify(socket: &Path, notice: &Notice) {
    let Ok(data) = serde_json::to_vec(notice) else {
        return;
    };
    if let Ok(sock) = UnixDatagram::unbound() {
        let _ = sock.send_to(&data, socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_status_with_128_plus_n_is_signal_n() {
        let e = ProcessExit::from_status(isolation::ExitStatus::Exited(137), true);
        assert_eq!(e.signal, Some(9));
        assert_eq!(e.to_string(), "killed by signal 9 (out of memory)");
        let e = ProcessExit::from_status(isolation::ExitStatus::Exited(42), false);
        assert_eq!(e.code, Some(42));
    }

    #[test]
    fn notices_reach_a_bound_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let notice = Notice {
            instance: "demo/w.0".into(),
            knot_pid: 7,
            event: NoticeEvent::Started { pid: 8 },
        };
        notify(&path, &notice);
        let mut buf = [0u8; 4096];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(serde_json::from_slice::<Notice>(&buf[..n]).unwrap(), notice);
        // Nobody listening: no error, no panic.
        notify(&dir.path().join("absent.sock"), &notice);
    }
}
