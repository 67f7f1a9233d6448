//! What the agent's tasks share: identity, the latest scan, the history, membership.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use protocol::domain::{MachineId, PeerState};
use serde_json::{Value as Json, json};

use crate::client::HttpClient;
use crate::gossip::Membership;
use crate::gossip::peers::PeerEntry;
use crate::history::History;
use crate::scanner::Scan;

/// Who this agent is.
#[derive(Debug, Clone)]
pub struct AgentInfo {
    pub version: &'static str,
    pub id: MachineId,
    pub hostname: String,
    pub name: String,
    pub cluster_name: Option<String>,
    pub startup_time_ms: u64,
    pub prometheus_per_pid: bool,
}

/// The latest scan and the history.
#[derive(Debug)]
pub struct Metrics {
    pub latest: Arc<Scan>,
    pub history: History,
    pub scans: u64,
}

/// The last write of `current.cbor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StorageReport {
    /// When it was written, ms since the epoch.
    pub timestamp_ms: u64,
    pub duration_ms: u64,
    pub size: u64,
}

/// Shared by the scanner, storage, gossip, HTTP and gRPC tasks.
#[derive(Debug)]
pub struct AgentState {
    pub info: AgentInfo,
    metrics: RwLock<Metrics>,
    pub membership: Arc<Membership>,
    storage: Mutex<Option<StorageReport>>,
    pub client: HttpClient,
}

impl AgentState {
    pub fn new(info: AgentInfo, history: History, membership: Arc<Membership>) -> Self {
        Self {
            info,
            metrics: RwLock::new(Metrics {
                latest: Arc::new(Scan::default()),
                history,
                scans: 0,
            }),
            membership,
            storage: Mutex::new(None),
            client: HttpClient::new(),
        }
    }

    // A panic while holding the lock leaves whole values (each write replaces them), so
    // poisoning is ignored rather than spread to every endpoint.
    pub fn metrics(&self) -> RwLockReadGuard<'_, Metrics> {
        self.metrics.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn metrics_mut(&self) -> RwLockWriteGuard<'_, Metrics> {
        self.metrics.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn set_storage_report(&self, report: StorageReport) {
        *self.storage.lock().unwrap_or_else(PoisonError::into_inner) = Some(report);
    }

    pub fn storage_report(&self) -> Option<StorageReport> {
        *self.storage.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a scan has finished since start.
    pub fn ready(&self) -> bool {
        self.metrics().scans > 0
    }

    /// Peers answering queries: every alive peer, with the URL of its HTTP API.
    pub fn alive_peers(&self) -> Vec<(PeerEntry, String)> {
        self.membership.peers.with(|table| {
            table
                .entries()
                .filter(|e| e.state == PeerState::Alive)
                .map(|e| (e.clone(), base_url(e.node.addr)))
                .collect()
        })
    }

    /// `/status.json`.
    pub fn status_json(&self) -> Json {
        let (scan_duration, boot_time) = {
            let metrics = self.metrics();
            (
                u64::try_from(metrics.latest.duration.as_millis()).unwrap_or(u64::MAX),
                metrics.latest.boot_time_ms,
            )
        };
        let (peers, alive, suspect, dead, conflict) = self.membership.peers.with(|t| {
            let (a, s, d) = t.counts();
            (t.len(), a, s, d, t.conflict.clone())
        });
        let storage = self.storage_report().map(|r| {
            json!({"time": r.timestamp_ms, "timestamp": r.timestamp_ms, "duration": r.duration_ms, "size": r.size})
        });
        let me = SelfReport::read();
        json!({
            "version": self.info.version,
            "startup_time": self.info.startup_time_ms,
            "scan_duration": scan_duration,
            "storage": storage,
            "boot_time": boot_time,
            "self_report": {"cpu_seconds": me.cpu_seconds, "rss_bytes": me.rss_bytes, "pss_bytes": me.pss_bytes},
            "threads_report": me.threads.iter().map(|(name, cpu)| (name.clone(), json!({"cpu_seconds": cpu}))).collect::<serde_json::Map<_, _>>(),
            "num_peers": peers,
            "num_stale": dead,
            "id": self.info.id.to_string(),
            "hostname": self.info.hostname,
            "name": self.info.name,
            "cluster_name": self.info.cluster_name,
            "num_alive": alive,
            "num_suspect": suspect,
            "num_dead": dead,
            "machine_id_conflict": conflict.map(|c| json!({"addr": c.addr.to_string(), "hostname": c.hostname, "since": c.since_ms})),
            "bad_packets": self.membership.bad_packets(),
        })
    }
}

/// `http://ip:port` of a peer's API.
pub fn base_url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// The agent's own resource use, from `/proc/self`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SelfReport {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub pss_bytes: u64,
    pub threads: BTreeMap<String, f64>,
}

impl SelfReport {
    pub fn read() -> Self {
        use procfs::FromRead;
        let ticks = procfs::ticks_per_second().max(1) as f64;
        let mut report = Self::default();
        if let Ok(stat) = procfs::process::Stat::from_file("/proc/self/stat") {
            report.cpu_seconds = (stat.utime + stat.stime) as f64 / ticks;
            report.rss_bytes = stat.rss * procfs::page_size();
        }
        if let Ok(text) = std::fs::read_to_string("/proc/self/smaps_rollup") {
            report.pss_bytes = text
                .lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
                .map_or(0, |kb| kb * 1024);
        }
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for task in tasks.flatten() {
                if let Ok(stat) = procfs::process::Stat::from_file(task.path().join("stat")) {
                    *report.threads.entry(stat.comm).or_default() +=
                        (stat.utime + stat.stime) as f64 / ticks;
                }
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_report_reads_proc() {
        let report = SelfReport::read();
        assert!(report.rss_bytes > 0);
        assert!(!report.threads.is_empty());
    }
}
