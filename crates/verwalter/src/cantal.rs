//! What verwalter gets from the local cantal-agent over its gRPC socket: the peer table
//! (followed with `WatchPeers`, never polled), this host's machine id, and metrics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use protocol::domain::{MachineId, Peer, PeerEvent, PeerState};
use protocol::pb::cantal::{
    QueryRequest, Scope, StatusRequest, WatchPeersRequest, agent_client::AgentClient,
};
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::election::{Member, View};

/// How long cantal may be silent before the peer list counts as stale.
const STALE_AFTER: Duration = Duration::from_secs(3);
/// How long to wait for cantal's first snapshot at start.
const START_WAIT: Duration = Duration::from_secs(2);
/// Deadline of a metrics query.
const METRICS_DEADLINE: Duration = Duration::from_millis(500);
/// How long a metrics answer is used as it is. cantal samples every 2 s, so a newer query
/// would mostly return the same values, and a run triggered by an action need not wait for one.
pub const METRICS_REUSE: Duration = Duration::from_secs(1);
/// How long an older answer is still used while a query for a newer one runs behind it, so
/// the scheduler's path never waits for cantal then; an answer older than this is waited for.
pub const METRICS_STALE: Duration = Duration::from_secs(10);

/// How the quorum counts peers (`--strict-majority`, `--minority-grace`).
#[derive(Debug, Clone, Copy)]
pub struct QuorumRule {
    pub strict_majority: bool,
    pub minority_grace: Duration,
    /// Port of every peer's verwalter (ours).
    pub port: u16,
    /// `--debug-force-leader`: a quorum of one.
    pub force_leader: bool,
}

/// cantal's peer table as last received, and the health of the connection.
#[derive(Debug)]
pub struct PeerTable {
    pub peers: BTreeMap<MachineId, Peer>,
    /// A snapshot arrived at least once.
    pub snapshot: bool,
    /// The stream is open.
    pub connected: bool,
    /// Last message or successful connect.
    pub last_heard: Instant,
    pub started: Instant,
    pub error: Option<String>,
    /// When the list last changed (ms since the epoch), `peers_timestamp` in `/v1/status`.
    pub changed_at: u64,
}

impl PeerTable {
    pub fn new() -> Self {
        let now = Instant::now();
        Self {
            peers: BTreeMap::new(),
            snapshot: false,
            connected: false,
            last_heard: now,
            started: now,
            error: None,
            changed_at: 0,
        }
    }

    fn apply(&mut self, event: PeerEvent) {
        match event {
            PeerEvent::Snapshot(peers) => {
                self.peers = peers.into_iter().map(|peer| (peer.id, peer)).collect();
                self.snapshot = true;
            }
            PeerEvent::Joined(peer) | PeerEvent::Updated(peer) => {
                self.peers.insert(peer.id, peer);
            }
            PeerEvent::StateChanged { id, state, since } => {
                if let Some(peer) = self.peers.get_mut(&id) {
                    peer.state = state;
                    peer.state_since = since;
                }
            }
            PeerEvent::Removed(id) => {
                self.peers.remove(&id);
            }
        }
        self.changed_at = crate::now_ms(SystemTime::now());
    }

    /// The election's view: membership, quorum and freshness (spec §2.4 rule 1).
    pub fn view(&self, rule: &QuorumRule, now: Instant) -> View {
        let wall = SystemTime::now();
        let mut counted = 1;
        let mut peers = BTreeMap::new();
        for peer in self.peers.values() {
            let dead = peer.state == PeerState::Dead;
            let in_grace = wall
                .duration_since(peer.state_since)
                .is_ok_and(|age| age < rule.minority_grace)
                || wall < peer.state_since;
            if rule.strict_majority || !dead || in_grace {
                counted += 1;
            }
            peers.insert(
                peer.id,
                Member {
                    dead,
                    addr: peer_addr(peer, rule.port),
                },
            );
        }
        let fresh = self.connected || now.duration_since(self.last_heard) <= STALE_AFTER;
        View {
            peers,
            needed: if rule.force_leader {
                1
            } else {
                counted / 2 + 1
            },
            ready: self.snapshot || now.duration_since(self.started) >= START_WAIT,
            fresh,
        }
    }
}

impl Default for PeerTable {
    fn default() -> Self {
        Self::new()
    }
}

/// A peer's verwalter: the IP of cantal's primary address, our port.
pub fn peer_addr(peer: &Peer, port: u16) -> Option<SocketAddr> {
    let addr: SocketAddr = peer.primary_addr.parse().ok()?;
    Some(SocketAddr::new(addr.ip(), port))
}

/// Shared handle on the table.
pub type SharedTable = Arc<Mutex<PeerTable>>;

pub fn lock(table: &SharedTable) -> MutexGuard<'_, PeerTable> {
    table
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Follows cantal's `WatchPeers` stream, reconnecting every second, and keeps `view` current
/// (also re-evaluated every 200 ms, as grace periods and staleness depend on time).
pub async fn follow_peers(
    socket: PathBuf,
    table: SharedTable,
    rule: QuorumRule,
    view: watch::Sender<View>,
    shutdown: CancellationToken,
) {
    let refresh = {
        let table = Arc::clone(&table);
        let view = view.clone();
        let shutdown = shutdown.clone();
        async move {
            let mut interval = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = interval.tick() => {
                        let next = lock(&table).view(&rule, Instant::now());
                        view.send_if_modified(|current| replace_if_changed(current, next));
                    }
                }
            }
        }
    };
    let watch = async {
        loop {
            let result = watch_once(&socket, &table, &rule, &view, &shutdown).await;
            {
                let mut table = lock(&table);
                table.connected = false;
                table.error = Some(result.unwrap_or_else(|| "peer stream ended".into()));
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    };
    tokio::select! {
        () = refresh => {}
        () = watch => {}
    }
}

fn replace_if_changed(current: &mut View, next: View) -> bool {
    if *current == next {
        false
    } else {
        *current = next;
        true
    }
}

/// One connection: returns the error that ended it (None when the stream just closed).
async fn watch_once(
    socket: &Path,
    table: &SharedTable,
    rule: &QuorumRule,
    view: &watch::Sender<View>,
    shutdown: &CancellationToken,
) -> Option<String> {
    let channel = match protocol::unix::connect(socket).await {
        Ok(channel) => channel,
        Err(err) => return Some(format!("{err}: {}", source_text(&err))),
    };
    let mut client = AgentClient::new(channel);
    let mut stream = match client.watch_peers(WatchPeersRequest {}).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Some(format!("WatchPeers: {}", status.message())),
    };
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return None,
            message = stream.next() => message,
        };
        let event = match message {
            None => return None,
            Some(Err(status)) => return Some(format!("WatchPeers: {}", status.message())),
            Some(Ok(event)) => event,
        };
        let now = Instant::now();
        let next = {
            let mut table = lock(table);
            table.connected = true;
            table.last_heard = now;
            table.error = None;
            match PeerEvent::try_from(event) {
                Ok(event) => table.apply(event),
                Err(err) => tracing::warn!(error = %err, "bad peer event from cantal"),
            }
            table.view(rule, now)
        };
        view.send_if_modified(|current| replace_if_changed(current, next));
    }
}

fn source_text(err: &dyn std::error::Error) -> String {
    err.source().map(ToString::to_string).unwrap_or_default()
}

/// This host's machine id as cantal reports it, if cantal answers within a second.
pub async fn machine_id(socket: &Path) -> Option<MachineId> {
    let ask = async {
        let mut client = AgentClient::new(protocol::unix::connect(socket).await.ok()?);
        let status = client.status(StatusRequest {}).await.ok()?.into_inner();
        <[u8; 16]>::try_from(status.id.as_slice())
            .ok()
            .map(MachineId::from_bytes)
    };
    tokio::time::timeout(Duration::from_secs(1), ask)
        .await
        .ok()
        .flatten()
}

/// The default `query_metrics`: load, available memory and cpu counters per host.
pub fn default_metric_rules() -> Value {
    json!({
        "load_avg_1min": {"source": "tip", "condition": ["eq", "metric", "load_avg_1min"], "expect": "multi_tip"},
        "memory_available": {"source": "tip", "condition": ["eq", "metric", "memory.MemAvailable"], "expect": "multi_tip"},
        "cpu": {"source": "tip", "condition": ["regex_like", "metric", "^cpu\\."], "expect": "multi_tip"},
    })
}

/// Runs `rules` cluster-wide: `metrics[rule][hostname]`, plus the hosts that did not answer.
pub async fn query_metrics(socket: &Path, rules: &Value) -> (Value, Vec<String>) {
    let ask = async {
        let mut client = AgentClient::new(
            protocol::unix::connect(socket)
                .await
                .map_err(|e| e.to_string())?,
        );
        let request = QueryRequest {
            rules_json: json!({"rules": rules}).to_string(),
            scope: Scope::Cluster.into(),
        };
        client
            .query(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| status.message().to_owned())
    };
    let response = match tokio::time::timeout(METRICS_DEADLINE, ask).await {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => return (json!({}), vec![format!("cantal: {err}")]),
        Err(_) => return (json!({}), vec!["cantal: metrics query timed out".into()]),
    };
    let mut metrics: Map<String, Value> = Map::new();
    for host in response.hosts {
        let Ok(Value::Object(dataset)) = serde_json::from_str::<Value>(&host.dataset_json) else {
            continue;
        };
        let dataset = match dataset.get("dataset") {
            Some(Value::Object(inner)) => inner.clone(),
            _ => dataset,
        };
        for (rule, value) in dataset {
            if let Value::Object(by_host) = metrics.entry(rule).or_insert_with(|| json!({})) {
                by_host.insert(host.hostname.clone(), value);
            }
        }
    }
    (Value::Object(metrics), response.warnings)
}

/// The last answer of [`query_metrics`] for the same rules (errors included, so
/// `metrics_errors` always describes the `metrics` it comes with): used as it is for
/// `max_age`, then until `stale_limit` while one query in the background replaces it.
#[derive(Debug)]
pub struct MetricsCache {
    max_age: Duration,
    stale_limit: Duration,
    /// Held during a query asked in line, so concurrent callers share one query rather
    /// than start another.
    last: Arc<tokio::sync::Mutex<Option<MetricsAnswer>>>,
    /// A background query is running.
    refreshing: Arc<AtomicBool>,
}

#[derive(Debug)]
struct MetricsAnswer {
    asked_at: Instant,
    rules: Value,
    metrics: Value,
    errors: Vec<String>,
}

impl MetricsCache {
    pub fn new(max_age: Duration, stale_limit: Duration) -> Self {
        Self {
            max_age,
            stale_limit,
            last: Arc::new(tokio::sync::Mutex::new(None)),
            refreshing: Arc::new(AtomicBool::new(false)),
        }
    }

    /// `rules` run cluster-wide, or the last answer to the same rules if it is recent enough.
    pub async fn query(&self, socket: &Path, rules: &Value) -> (Value, Vec<String>) {
        let mut last = self.last.lock().await;
        if let Some(answer) = last
            .as_ref()
            .filter(|answer| answer.rules == *rules && answer.asked_at.elapsed() < self.stale_limit)
        {
            if answer.asked_at.elapsed() >= self.max_age
                && !self.refreshing.swap(true, Ordering::AcqRel)
            {
                self.refresh_behind(socket, rules);
            }
            return (answer.metrics.clone(), answer.errors.clone());
        }
        let answer = ask(socket, rules).await;
        let reply = (answer.metrics.clone(), answer.errors.clone());
        *last = Some(answer);
        reply
    }

    /// One query on a task of its own; its answer replaces the last one.
    fn refresh_behind(&self, socket: &Path, rules: &Value) {
        let (last, refreshing) = (Arc::clone(&self.last), Arc::clone(&self.refreshing));
        let (socket, rules) = (socket.to_owned(), rules.clone());
        tokio::spawn(async move {
            let answer = ask(&socket, &rules).await;
            *last.lock().await = Some(answer);
            refreshing.store(false, Ordering::Release);
        });
    }
}

async fn ask(socket: &Path, rules: &Value) -> MetricsAnswer {
    let asked_at = Instant::now();
    let (metrics, errors) = query_metrics(socket, rules).await;
    MetricsAnswer {
        asked_at,
        rules: rules.clone(),
        metrics,
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8, state: PeerState, since_secs_ago: u64) -> Peer {
        Peer {
            id: MachineId::from_bytes([n; 16]),
            name: format!("n{n}"),
            hostname: format!("n{n}"),
            primary_addr: format!("10.78.0.{n}:22682"),
            addresses: vec![],
            state,
            state_since: SystemTime::now() - Duration::from_secs(since_secs_ago),
            known_since: SystemTime::now(),
            last_report_direct: None,
            rtt: None,
            report: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn dead_peers_leave_the_quorum_after_the_grace() {
        let mut table = PeerTable::new();
        table.apply(PeerEvent::Snapshot(vec![
            peer(2, PeerState::Alive, 0),
            peer(3, PeerState::Suspect, 0),
            peer(4, PeerState::Dead, 2),
            peer(5, PeerState::Dead, 60),
        ]));
        table.connected = true;
        let mut rule = QuorumRule {
            strict_majority: false,
            minority_grace: Duration::from_secs(10),
            port: 8379,
            force_leader: false,
        };
        let view = table.view(&rule, Instant::now());
        // Self, alive, suspect and the recently dead count: M = 4.
        assert_eq!(view.needed, 3);
        assert!(view.ready && view.fresh);
        assert_eq!(
            view.peers[&MachineId::from_bytes([2; 16])].addr,
            Some("10.78.0.2:8379".parse().unwrap())
        );
        rule.strict_majority = true;
        assert_eq!(
            table.view(&rule, Instant::now()).needed,
            3,
            "M = 5 with every peer"
        );
        rule.strict_majority = false;
        table.apply(PeerEvent::StateChanged {
            id: MachineId::from_bytes([2; 16]),
            state: PeerState::Dead,
            since: SystemTime::now() - Duration::from_secs(30),
        });
        assert_eq!(table.view(&rule, Instant::now()).needed, 2, "M = 3");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_cantal_makes_the_list_stale() {
        let mut table = PeerTable::new();
        let rule = QuorumRule {
            strict_majority: false,
            minority_grace: Duration::from_secs(10),
            port: 1,
            force_leader: false,
        };
        assert!(!table.view(&rule, Instant::now()).ready);
        tokio::time::advance(Duration::from_secs(4)).await;
        let view = table.view(&rule, Instant::now());
        assert!(view.ready, "no snapshot within 2 s: go on alone");
        assert!(!view.fresh);
        table.connected = true;
        assert!(table.view(&rule, Instant::now()).fresh);
    }

    const TIMED_OUT: &str = "cantal: metrics query timed out";

    /// Asks with no socket at `socket` (refused at once), then binds a socket that accepts
    /// and never answers (a query times out): a quick refusal after that is a reused answer.
    async fn refused_then_silent(
        cache: &MetricsCache,
        socket: &Path,
        rules: &Value,
    ) -> (Vec<String>, std::os::unix::net::UnixListener) {
        let (metrics, errors) = cache.query(socket, rules).await;
        assert_eq!(metrics, json!({}));
        assert_eq!(errors.len(), 1);
        assert_ne!(errors[0], TIMED_OUT);
        (
            errors,
            std::os::unix::net::UnixListener::bind(socket).unwrap(),
        )
    }

    #[tokio::test]
    async fn a_recent_metrics_answer_is_reused_for_the_same_rules() {
        let dir = tempfile::tempdir().unwrap();
        let rules = default_metric_rules();
        let cache = MetricsCache::new(Duration::from_millis(300), Duration::from_millis(300));
        let socket = dir.path().join("a.sock");
        let (refused, _listener) = refused_then_silent(&cache, &socket, &rules).await;
        assert_eq!(cache.query(&socket, &rules).await.1, refused, "reused");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(cache.query(&socket, &rules).await.1, [TIMED_OUT], "expired");

        let cache = MetricsCache::new(Duration::from_secs(3600), Duration::from_secs(3600));
        let socket = dir.path().join("b.sock");
        let (_, _listener) = refused_then_silent(&cache, &socket, &rules).await;
        let other_rules = json!({"load": {"source": "tip"}});
        assert_eq!(
            cache.query(&socket, &other_rules).await.1,
            [TIMED_OUT],
            "other rules are asked"
        );
    }

    #[tokio::test]
    async fn an_old_metrics_answer_is_used_while_a_newer_one_is_asked_behind_it() {
        let dir = tempfile::tempdir().unwrap();
        let rules = default_metric_rules();
        let cache = MetricsCache::new(Duration::ZERO, Duration::from_secs(3600));
        let socket = dir.path().join("a.sock");
        let (refused, _listener) = refused_then_silent(&cache, &socket, &rules).await;
        assert_eq!(
            cache.query(&socket, &rules).await.1,
            refused,
            "old, not waited for"
        );
        while cache.refreshing.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            cache.query(&socket, &rules).await.1,
            [TIMED_OUT],
            "replaced behind"
        );
    }
}
