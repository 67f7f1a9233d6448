//! How a new schedule reaches the followers. The leader pushes it to every live peer with
//! `POST /v1/push_schedule` as soon as it is in force, then pings. A follower takes a pushed
//! schedule only from the address of the leader it follows; one that did not take it (not
//! reached in time, refused, or a schedule over [`PUSH_LIMIT`]) still sees another hash in
//! the Ping and fetches `GET /v1/schedule` as before (spec §2.5).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use protocol::domain::{MachineId, PeerState};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::cantal;
use crate::fetch::ScheduleReply;
use crate::node::Node;
use crate::schedule::Schedule;

/// Largest schedule pushed (the answer of `GET /v1/schedule`, as JSON); larger ones are only
/// fetched.
pub const PUSH_LIMIT: usize = 4 << 20;
/// How long the leader waits for the pushes' answers before its Ping; a follower not done by
/// then fetches the schedule after the Ping.
const PUSH_WAIT: Duration = Duration::from_millis(200);

/// A pushed schedule this node refused.
#[derive(Debug, thiserror::Error)]
pub enum PushRejection {
    #[error("body larger than {PUSH_LIMIT} bytes")]
    TooLarge,
    #[error("not a schedule: {0}")]
    BadJson(String),
    #[error("schedule {hash}: hash does not match its data")]
    BadHash { hash: String },
    #[error("this node is the leader")]
    Leader,
    #[error("schedule with origin {origin} from {from}, but this node follows {leader}")]
    NotFromLeader {
        from: SocketAddr,
        origin: MachineId,
        leader: String,
    },
}

/// The body of `GET /v1/schedule` and of a push: the schedule, the pending actions and the
/// frozen flag.
pub fn reply_body(node: &Node, schedule: &Schedule) -> Value {
    let state = node.state();
    let mut body = serde_json::to_value(schedule).unwrap_or(Value::Null);
    body["pending_actions"] = json!(state.actions);
    body["frozen"] = json!(state.frozen);
    body
}

/// On the leader: sends `schedule` to every peer cantal does not report dead, waiting at most
/// [`PUSH_WAIT`] for the answers.
pub async fn push(node: &Node, schedule: &Schedule) {
    let body = serde_json::to_vec(&reply_body(node, schedule)).unwrap_or_default();
    if body.len() > PUSH_LIMIT {
        tracing::debug!(
            bytes = body.len(),
            "schedule larger than the push limit: followers fetch it"
        );
        return;
    }
    let targets: Vec<(MachineId, SocketAddr)> = cantal::lock(&node.peers)
        .peers
        .values()
        .filter(|peer| peer.state != PeerState::Dead)
        .filter_map(|peer| Some((peer.id, cantal::peer_addr(peer, node.settings.port)?)))
        .collect();
    let body = Bytes::from(body);
    let mut pushes = tokio::task::JoinSet::new();
    for (id, addr) in targets {
        let (fetcher, body) = (node.fetcher.clone(), body.clone());
        pushes.spawn(async move { (id, fetcher.push_schedule(addr, body).await) });
    }
    let deadline = Instant::now() + PUSH_WAIT;
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, pushes.join_next()).await {
        if let Ok((peer, Err(err))) = joined {
            tracing::warn!(%peer, error = %err, "schedule push failed; the peer fetches it after the Ping");
        }
    }
}

/// On a follower: checks a pushed schedule and puts it in force. `from` is the sender's
/// address, which must be that of the leader this node follows. True when the schedule was
/// new here.
pub fn receive(node: &Arc<Node>, from: SocketAddr, body: &[u8]) -> Result<bool, PushRejection> {
    if node.is_leader() {
        return Err(PushRejection::Leader);
    }
    let reply: ScheduleReply =
        serde_json::from_slice(body).map_err(|err| PushRejection::BadJson(err.to_string()))?;
    if !reply.schedule.is_consistent() {
        return Err(PushRejection::BadHash {
            hash: reply.schedule.stamp.hash,
        });
    }
    let leader = node.election.borrow().leader;
    let leader_ip = leader
        .and_then(|id| node.peer_http(&id))
        .map(|addr| addr.ip());
    if leader != Some(reply.schedule.stamp.origin) || leader_ip != Some(from.ip()) {
        return Err(PushRejection::NotFromLeader {
            from,
            origin: reply.schedule.stamp.origin,
            leader: leader.map_or_else(|| "no leader".to_owned(), |id| id.to_string()),
        });
    }
    let new = take(node, reply.schedule, reply.pending_actions, true);
    node.propagation.pushed_in.fetch_add(1, Ordering::Relaxed);
    // Stored in the background: rendering and the answer to the leader do not wait for it.
    drop(node.persist_soon());
    Ok(new)
}

/// On a follower: puts the leader's schedule in force (see [`Node::install_new`]; `pushed`
/// keeps a newer one of the same origin) and takes the leader's pending actions, in that
/// order (see [`Node::persist`]). True when the schedule was new here.
pub fn take(
    node: &Node,
    schedule: Schedule,
    actions: BTreeMap<String, Value>,
    pushed: bool,
) -> bool {
    let new = node.install_new(schedule, pushed);
    node.state().actions = actions;
    node.refresh_local();
    new
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{IpAddr, Ipv4Addr};
    use std::path::Path;
    use std::sync::Mutex;
    use std::time::SystemTime;

    use protocol::domain::Peer;
    use tokio::net::TcpListener;
    use tokio::sync::{Notify, watch};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::election::runner::{PacketCounters, Status};
    use crate::election::{Local, State, View};
    use crate::node::{Channels, Settings};
    use crate::storage::Storage;

    fn id(n: u8) -> MachineId {
        MachineId::from_bytes([n; 16])
    }

    /// A node whose cantal table lists `peers` (id, IP) and whose election says `leader`.
    fn node(
        dir: &Path,
        own: MachineId,
        port: u16,
        leader: Option<MachineId>,
        peers: &[(MachineId, &str)],
    ) -> Arc<Node> {
        let table = cantal::PeerTable::new();
        let table = Arc::new(std::sync::Mutex::new(table));
        for (peer, ip) in peers {
            cantal::lock(&table).peers.insert(
                *peer,
                Peer {
                    id: *peer,
                    name: peer.to_string(),
                    hostname: peer.to_string(),
                    primary_addr: format!("{ip}:22682"),
                    addresses: Vec::new(),
                    state: PeerState::Alive,
                    state_since: SystemTime::now(),
                    known_since: SystemTime::now(),
                    last_report_direct: None,
                    rtt: None,
                    report: None,
                },
            );
        }
        let mut status = Status::initial(1);
        if let Some(leader) = leader {
            status.state = State::Follower { leader };
            status.leader = Some(leader);
        }
        let settings = Settings {
            config_dir: dir.join("config"),
            storage_dir: dir.join("storage"),
            log_dir: dir.join("log"),
            runtime_dir: dir.join("run"),
            port,
            name: own.to_string(),
            hostname: own.to_string(),
            dry_run: true,
            use_sudo: false,
            debug_force_leader: false,
            cantal_socket: dir.join("cantal.sock"),
            limits: crate::scheduler::Limits::default(),
            default_frontend: "common".into(),
            render_binary: dir.join("no-renderer"),
        };
        let storage = Storage::open(&settings.storage_dir).unwrap();
        Arc::new(Node::new(
            own,
            settings,
            storage,
            None,
            Channels {
                election: watch::channel(status).1,
                view: watch::channel(View::default()).1,
                local: watch::Sender::new(Local::default()),
                ping_now: Arc::new(Notify::new()),
                counters: Arc::new(PacketCounters::default()),
                peers: table,
            },
        ))
    }

    async fn serve(node: &Arc<Node>, ip: Ipv4Addr, port: u16, shutdown: &CancellationToken) {
        let listener = TcpListener::bind((IpAddr::V4(ip), port)).await.unwrap();
        tokio::spawn(crate::http::serve(
            Arc::clone(node),
            listener,
            shutdown.clone(),
        ));
    }

    /// A free port on both loopback addresses the tests use.
    async fn free_port() -> u16 {
        loop {
            let first = TcpListener::bind("127.0.0.2:0").await.unwrap();
            let port = first.local_addr().unwrap().port();
            if TcpListener::bind(("127.0.0.1", port)).await.is_ok() {
                return port;
            }
        }
    }

    /// Log lines of this (current-thread) test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    async fn post(addr: SocketAddr, body: Vec<u8>) -> u16 {
        let fetcher = crate::fetch::Fetcher::new();
        match fetcher.push_schedule(addr, Bytes::from(body)).await {
            Ok(()) => 200,
            Err(err) => {
                let text = err.to_string();
                let code = text.split("HTTP ").nth(1).unwrap_or_default();
                code[..3].parse().unwrap()
            }
        }
    }

    /// Leader `id(1)` at 127.0.0.1 and its follower `id(2)` at 127.0.0.2, on one free port;
    /// only the follower serves HTTP.
    async fn pair(dir: &Path, shutdown: &CancellationToken) -> (Arc<Node>, Arc<Node>, u16) {
        let port = free_port().await;
        let (leader, follower) = (id(1), id(2));
        let follower_node = node(
            &dir.join("f"),
            follower,
            port,
            Some(leader),
            &[(leader, "127.0.0.1")],
        );
        serve(&follower_node, Ipv4Addr::new(127, 0, 0, 2), port, shutdown).await;
        let leader_node = node(
            &dir.join("l"),
            leader,
            port,
            None,
            &[(follower, "127.0.0.2")],
        );
        (leader_node, follower_node, port)
    }

    #[tokio::test]
    async fn a_follower_takes_a_pushed_schedule_without_fetching() {
        let tmp = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();
        // No HTTP server at the leader's address: a fetch could not succeed.
        let (leader_node, follower_node, _) = pair(tmp.path(), &shutdown).await;
        let leader = id(1);
        leader_node
            .state()
            .actions
            .insert("5".into(), json!({"value": 1}));
        let schedule =
            leader_node.install(Schedule::new(json!({"vars": {"value": 1}}), 10, leader));

        push(&leader_node, &schedule).await;

        let held = follower_node.current().expect("pushed schedule in force");
        assert_eq!(held.stamp, schedule.stamp);
        assert_eq!(follower_node.state().actions, leader_node.state().actions);
        let counters = follower_node.propagation.snapshot();
        assert_eq!(counters["schedules_pushed_in"], 1, "{counters}");
        assert_eq!(counters["schedules_fetched"], 0, "{counters}");
        // Stored too (in the background; `persist` waits for that write).
        follower_node.persist();
        assert_eq!(
            follower_node.storage.load_schedule().unwrap().stamp,
            schedule.stamp
        );

        // The same push again changes nothing; an older one of the same origin is not taken.
        push(&leader_node, &schedule).await;
        let older = Schedule::new(json!({"vars": {"value": 0}}), 5, leader);
        push(&leader_node, &older).await;
        assert_eq!(follower_node.current().unwrap().stamp, schedule.stamp);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_refused_push_is_logged_with_the_peer_and_the_schedule_is_fetched() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let tmp = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();
        let (leader_node, follower_node, port) = pair(tmp.path(), &shutdown).await;
        serve(&leader_node, Ipv4Addr::new(127, 0, 0, 1), port, &shutdown).await;
        let (leader, stranger) = (id(1), id(3));
        let schedule =
            leader_node.install(Schedule::new(json!({"vars": {"value": 7}}), 10, leader));
        let follower_addr = SocketAddr::from(([127, 0, 0, 2], port));

        let mut forged = reply_body(&leader_node, &schedule);
        forged["data"]["vars"]["value"] = json!(8);
        assert_eq!(
            post(follower_addr, serde_json::to_vec(&forged).unwrap()).await,
            400
        );
        let foreign = Schedule::new(json!({"vars": {"value": 9}}), 11, stranger);
        let body = serde_json::to_vec(&reply_body(&leader_node, &foreign)).unwrap();
        assert_eq!(post(follower_addr, body).await, 403);
        assert_eq!(post(follower_addr, vec![b' '; PUSH_LIMIT + 1]).await, 413);
        assert!(follower_node.current().is_none());
        let logs = captured.text();
        assert_eq!(logs.matches("pushed schedule refused").count(), 3, "{logs}");
        assert!(logs.contains("peer=127.0.0.1:"), "{logs}");
        assert!(logs.contains("hash does not match"), "{logs}");
        assert!(logs.contains(&format!("origin {stranger}")), "{logs}");

        // The leader's Ping names its schedule: the follower fetches it.
        let fetching = tokio::spawn(crate::node::follower_loop(
            Arc::clone(&follower_node),
            shutdown.clone(),
        ));
        // Let the loop subscribe first: it waits for the next Ping.
        tokio::task::yield_now().await;
        follower_node.wanted.send_replace(Some((
            leader,
            Some(schedule.stamp.clone()),
            crate::actions::digest(&BTreeMap::new()),
        )));
        for _ in 0..100 {
            if follower_node.current().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(follower_node.current().unwrap().stamp, schedule.stamp);
        let counters = follower_node.propagation.snapshot();
        assert_eq!(counters["schedules_fetched"], 1, "{counters}");
        assert_eq!(counters["schedules_push_rejected"], 3, "{counters}");
        assert_eq!(counters["schedules_pushed_in"], 0, "{counters}");
        shutdown.cancel();
        let _ = fetching.await;
    }
}
