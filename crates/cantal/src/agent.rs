//! `cantal-agent`: binds its sockets, then runs the scanner, storage, gossip, HTTP and gRPC
//! tasks until shutdown.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use protocol::domain::{MachineId, PeerState};
use protocol::pb::cantal::agent_server::AgentServer;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::gossip::transport::UdpTransport;
use crate::gossip::{Gossip, GossipConfig, Membership, Timing};
use crate::history::{ClockStep, History};
use crate::rpc::AgentService;
use crate::scanner::{Scanner, ScannerConfig};
use crate::state::{AgentInfo, AgentState, StorageReport};
use crate::storage::{Storage, StorageError};

/// How often the history is written to `--storage-dir`.
pub const HISTORY_SAVE_PERIOD: Duration = Duration::from_secs(60);
/// How often `peers.json` is written.
pub const PEERS_SAVE_PERIOD: Duration = Duration::from_secs(300);
/// How long shutdown waits for tasks to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Everything the agent runs with, validated.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub host: IpAddr,
    pub port: u16,
    pub bind_localhost: bool,
    pub node_name: String,
    pub hostname: String,
    pub cluster_name: Option<String>,
    pub storage_dir: Option<PathBuf>,
    pub machine_id: MachineId,
    pub interval: Duration,
    pub keep_history: Duration,
    pub joins: Vec<SocketAddr>,
    pub socket: PathBuf,
    pub max_peers: usize,
    pub prometheus_per_pid: bool,
    pub proc_root: PathBuf,
    pub lithos_root: String,
}

/// Why the agent stopped other than by request.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("listen for HTTP on {addr}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("listen for gossip on {addr}")]
    Gossip {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Socket(#[from] protocol::unix::SocketError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("scanner died: {reason}")]
    ScannerDied { reason: String },
    #[error("storage task died: {reason}")]
    StorageDied { reason: String },
}

impl AgentError {
    /// The documented exit code: 81 storage, 82 scanner, 83 anything else at run time.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::StorageDied { .. } => 81,
            Self::ScannerDied { .. } => 82,
            _ => 83,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Addresses of this host's interfaces (loopback only when there is nothing else).
pub fn interface_addresses() -> Vec<IpAddr> {
    let Ok(interfaces) = isolation::net::interfaces() else {
        return Vec::new();
    };
    let mut addrs: Vec<IpAddr> = interfaces
        .into_iter()
        .map(|i| i.address)
        .filter(|ip| !ip.is_unspecified())
        .collect();
    addrs.sort();
    addrs.dedup();
    if addrs.iter().any(|ip| !ip.is_loopback()) {
        addrs.retain(|ip| !ip.is_loopback());
    }
    addrs
}

/// Runs the agent until `shutdown` is cancelled.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    let started_ms = now_ms();
    let keep =
        usize::try_from(config.keep_history.as_millis() / config.interval.as_millis().max(1))
            .unwrap_or(usize::MAX)
            .max(1);
    let storage = config.storage_dir.as_ref().map(Storage::new);
    let mut seeds = config.joins.clone();
    let history = match &storage {
        Some(storage) => {
            storage.prepare()?;
            seeds.extend(storage.load_peers());
            storage
                .load_history(keep)
                .unwrap_or_else(|| History::new(keep))
        }
        None => History::new(keep),
    };
    seeds.sort();
    seeds.dedup();

    let http_addr = SocketAddr::new(config.host, config.port);
    let mut listeners = vec![bind_http(http_addr).await?];
    if config.bind_localhost && !config.host.is_loopback() && !config.host.is_unspecified() {
        let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), config.port);
        listeners.push(bind_http(local).await?);
    }
    let rpc_listener = protocol::unix::bind(&config.socket).await?;

    let tasks = CancellationToken::new();
    let mut gossip_task = None;
    let membership = match &config.cluster_name {
        Some(cluster_name) => {
            let socket = UdpSocket::bind(http_addr)
                .await
                .map_err(|source| AgentError::Gossip {
                    addr: http_addr,
                    source,
                })?;
            let interfaces = interface_addresses();
            let primary = if config.host.is_unspecified() {
                interfaces
                    .iter()
                    .find(|ip| ip.is_ipv4() == config.host.is_ipv4())
                    .or(interfaces.first())
                    .map_or(http_addr, |ip| SocketAddr::new(*ip, config.port))
            } else {
                http_addr
            };
            let addresses = if config.host.is_unspecified() {
                interfaces
                    .iter()
                    .map(|ip| SocketAddr::new(*ip, config.port))
                    .collect()
            } else {
                vec![primary]
            };
            let (gossip, membership) = Gossip::new(
                GossipConfig {
                    machine_id: config.machine_id,
                    cluster_name: cluster_name.clone(),
                    node_name: config.node_name.clone(),
                    hostname: config.hostname.clone(),
                    addr: primary,
                    addresses,
                    seeds,
                    max_peers: config.max_peers,
                    timing: Timing::default(),
                    seed: None,
                },
                started_ms,
            );
            tracing::info!(addr = %primary, cluster = cluster_name, "gossip enabled");
            gossip_task = Some(spawn_gossip(
                gossip,
                UdpTransport::new(socket),
                tasks.clone(),
            ));
            membership
        }
        None => Membership::disabled(),
    };

    let state = Arc::new(AgentState::new(
        AgentInfo {
            version: env!("CARGO_PKG_VERSION"),
            id: config.machine_id,
            hostname: config.hostname.clone(),
            name: config.node_name.clone(),
            cluster_name: config.cluster_name.clone(),
            startup_time_ms: started_ms,
            prometheus_per_pid: config.prometheus_per_pid,
        },
        history,
        membership,
    ));

    let mut servers = Vec::new();
    for listener in listeners {
        let router = crate::http::router(Arc::clone(&state));
        servers.push(tokio::spawn(crate::http::serve(
            listener,
            router,
            tasks.clone(),
        )));
    }
    let grpc_router = tonic::transport::Server::builder().add_service(AgentServer::new(
        AgentService::new(Arc::clone(&state), tasks.clone()),
    ));
    let grpc = tokio::spawn(protocol::unix::serve(
        grpc_router,
        rpc_listener,
        tasks.clone(),
    ));
    let mut scanner = tokio::spawn(scan_loop(
        Arc::clone(&state),
        ScannerConfig {
            proc_root: config.proc_root.clone(),
            lithos_root: config.lithos_root.clone(),
            interval: config.interval,
        },
        tasks.clone(),
    ));
    let mut storer = storage.map(|storage| {
        tokio::spawn(storage_loop(
            Arc::clone(&state),
            storage,
            config.keep_history,
            tasks.clone(),
        ))
    });
    tracing::info!(http = %http_addr, socket = %config.socket.display(), "cantal-agent started");

    let outcome = tokio::select! {
        () = shutdown.cancelled() => Ok(()),
        result = &mut scanner => Err(AgentError::ScannerDied {
            reason: result.err().map_or_else(|| "stopped".to_owned(), |e| e.to_string()),
        }),
        result = wait_optional(&mut storer) => Err(AgentError::StorageDied {
            reason: match result {
                Ok(Ok(())) => "stopped".to_owned(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            },
        }),
    };
    tasks.cancel();
    let finish = async {
        if outcome.is_ok() {
            let _ = scanner.await;
        }
        if let Some(storer) = storer {
            let _ = storer.await;
        }
        if let Some(gossip) = gossip_task {
            let _ = gossip.await;
        }
        for server in servers {
            if let Ok(Err(e)) = server.await {
                tracing::warn!(error = %e, "HTTP server stopped with an error");
            }
        }
        if let Ok(Err(e)) = grpc.await {
            tracing::warn!(error = %e, "gRPC server stopped with an error");
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, finish).await.is_err() {
        tracing::warn!("tasks did not stop within {SHUTDOWN_GRACE:?}");
    }
    outcome
}

async fn wait_optional<T>(handle: &mut Option<JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match handle {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

async fn bind_http(addr: SocketAddr) -> Result<TcpListener, AgentError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AgentError::Http { addr, source })
}

#[cfg(not(feature = "test-faults"))]
fn spawn_gossip(
    gossip: Gossip,
    transport: UdpTransport,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(gossip.run(transport, shutdown))
}

/// With the `test-faults` feature, `CANTAL_TEST_FAULTS` (e.g. `drop=0.1`) wraps the socket in
/// the fault layer.
#[cfg(feature = "test-faults")]
fn spawn_gossip(
    gossip: Gossip,
    transport: UdpTransport,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    use crate::gossip::transport::{FaultPlan, FaultyTransport};
    match std::env::var("CANTAL_TEST_FAULTS") {
        Ok(spec) => match FaultPlan::parse(&spec) {
            Ok(plan) => {
                tracing::warn!(spec, "gossip runs through the test fault layer");
                use rand::RngExt;
                let seed = rand::make_rng::<rand::rngs::StdRng>().random();
                let faulty = FaultyTransport::new(transport, plan, seed);
                tokio::spawn(gossip.run(faulty, shutdown))
            }
            Err(e) => {
                tracing::error!(error = %e, "ignoring CANTAL_TEST_FAULTS");
                tokio::spawn(gossip.run(transport, shutdown))
            }
        },
        Err(_) => tokio::spawn(gossip.run(transport, shutdown)),
    }
}

/// Scans every `config.interval` on a blocking thread and records the result.
async fn scan_loop(state: Arc<AgentState>, config: ScannerConfig, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(config.interval);
    let mut scanner = Some(Scanner::new(config));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let Some(mut current) = scanner.take() else {
            return;
        };
        let timestamp = now_ms();
        let (back, scan) = match tokio::task::spawn_blocking(move || {
            let scan = current.scan(timestamp);
            (current, scan)
        })
        .await
        {
            Ok(done) => done,
            // A panic in the scanner ends this task; the agent exits with the scanner's code.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        scanner = Some(back);
        let mut metrics = state.metrics_mut();
        let step = metrics.history.push_scan(scan.timestamp_ms, scan.samples());
        if let ClockStep::Backward { by_ms } = step {
            tracing::warn!(
                by_ms,
                "wall clock went back; history continues from the last time"
            );
        }
        metrics.latest = Arc::new(scan);
        metrics.scans += 1;
    }
}

/// Saves history every minute (hourly copies when history is kept an hour or more) and
/// peers every five minutes; both once more on shutdown.
async fn storage_loop(
    state: Arc<AgentState>,
    storage: Storage,
    keep_history: Duration,
    shutdown: CancellationToken,
) -> Result<(), StorageError> {
    let hourly = keep_history >= Duration::from_secs(3600);
    let mut history_ticks = tokio::time::interval(HISTORY_SAVE_PERIOD);
    let mut peers_ticks = tokio::time::interval(PEERS_SAVE_PERIOD);
    // The first ticks fire at once; nothing is worth saving yet.
    history_ticks.tick().await;
    peers_ticks.tick().await;
    let mut last_hour = now_ms() / 3_600_000;
    loop {
        let stopping = tokio::select! {
            () = shutdown.cancelled() => true,
            _ = history_ticks.tick() => {
                save_history(&state, &storage).await?;
                let hour = now_ms() / 3_600_000;
                if hourly && hour != last_hour {
                    last_hour = hour;
                    let storage = storage.clone();
                    blocking(move || storage.snapshot_hourly(hour)).await?;
                }
                false
            }
            _ = peers_ticks.tick() => {
                save_peers(&state, &storage).await?;
                false
            }
        };
        if stopping {
            save_history(&state, &storage).await?;
            save_peers(&state, &storage).await?;
            return Ok(());
        }
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

async fn save_history(state: &Arc<AgentState>, storage: &Storage) -> Result<(), StorageError> {
    let persisted = state.metrics().history.to_persisted();
    let storage = storage.clone();
    let (size, duration) = blocking(move || storage.save_history(&persisted)).await?;
    state.set_storage_report(StorageReport {
        timestamp_ms: now_ms(),
        duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        size,
    });
    Ok(())
}

async fn save_peers(state: &Arc<AgentState>, storage: &Storage) -> Result<(), StorageError> {
    if !state.membership.enabled() {
        return Ok(());
    }
    let addrs: Vec<SocketAddr> = state.membership.peers.with(|t| {
        t.entries()
            .filter(|e| e.state != PeerState::Dead)
            .map(|e| e.node.addr)
            .collect()
    });
    // An agent that lost every peer keeps the last list rather than forgetting the cluster.
    if addrs.is_empty() {
        return Ok(());
    }
    let storage = storage.clone();
    blocking(move || storage.save_peers(&addrs)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        let reason = String::new;
        assert_eq!(AgentError::StorageDied { reason: reason() }.exit_code(), 81);
        assert_eq!(AgentError::ScannerDied { reason: reason() }.exit_code(), 82);
        let http = AgentError::Http {
            addr: "127.0.0.1:1".parse().unwrap(),
            source: std::io::ErrorKind::AddrInUse.into(),
        };
        assert_eq!(http.exit_code(), 83);
    }

    #[test]
    fn interfaces_have_addresses() {
        assert!(!interface_addresses().is_empty());
    }
}
