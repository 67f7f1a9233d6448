//! A real cantal `Agent` server on a real unix socket, driven through the crate's helpers.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::pin::Pin;
use std::time::{Duration, UNIX_EPOCH};

use protocol::domain::{MachineId, Peer, PeerEvent, PeerState};
use protocol::pb::cantal::{
    self, HostDataset, QueryRequest, QueryResponse, Scope, StatusRequest, StatusResponse,
    WatchPeersRequest,
    agent_client::AgentClient,
    agent_server::{Agent, AgentServer},
};
use protocol::unix::{self, SocketError};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

const SELF_ID: &str = "0123456789abcdef0123456789abcdef";
/// Generous bound for anything that should happen at once, so a slow machine does not flake.
const SOON: Duration = Duration::from_secs(10);

type EventStream = Pin<Box<dyn Stream<Item = Result<cantal::PeerEvent, Status>> + Send>>;

/// Serves a fixed peer table as the snapshot, then whatever the test sends on `events`.
#[derive(Debug)]
struct TestAgent {
    peers: Vec<Peer>,
    events: broadcast::Sender<PeerEvent>,
    shutdown: CancellationToken,
}

#[tonic::async_trait]
impl Agent for TestAgent {
    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(StatusResponse {
            version: "test".into(),
            id: self_id().into(),
            name: "a".into(),
            hostname: "a.test".into(),
            num_peers: u32::try_from(self.peers.len()).unwrap(),
            ..StatusResponse::default()
        }))
    }

    type WatchPeersStream = EventStream;

    async fn watch_peers(
        &self,
        _request: Request<WatchPeersRequest>,
    ) -> Result<Response<EventStream>, Status> {
        // Subscribe before taking the snapshot so no change falls between the two.
        let changes = BroadcastStream::new(self.events.subscribe()).map(|change| {
            change
                .map(cantal::PeerEvent::from)
                .map_err(|lagged| Status::data_loss(lagged.to_string()))
        });
        let snapshot = cantal::PeerEvent::from(PeerEvent::Snapshot(self.peers.clone()));
        // The stream ends when the server shuts down, so serve() can finish draining.
        let token = self.shutdown.clone();
        let cancelled = tokio_stream::once(()).then(move |()| token.clone().cancelled_owned());
        let stream = tokio_stream::once(Ok(snapshot))
            .chain(changes)
            .map(Some)
            .merge(cancelled.map(|()| None))
            .map_while(|item| item);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        let request = request.into_inner();
        let mut hosts = vec![HostDataset {
            id: self_id().into(),
            hostname: "a.test".into(),
            dataset_json: "{}".into(),
        }];
        let mut warnings = Vec::new();
        if request.scope() == Scope::Cluster {
            hosts.extend(self.peers.iter().map(|peer| HostDataset {
                id: peer.id.into(),
                hostname: peer.hostname.clone(),
                dataset_json: "{}".into(),
            }));
            warnings.push("c.test: timed out".into());
        }
        Ok(Response::new(QueryResponse { hosts, warnings }))
    }
}

fn self_id() -> MachineId {
    SELF_ID.parse().unwrap()
}

fn peer(n: u8, state: PeerState) -> Peer {
    Peer {
        id: MachineId::from_bytes([n; 16]),
        name: format!("peer{n}"),
        hostname: format!("peer{n}.test"),
        primary_addr: format!("10.7.0.{n}:22682"),
        addresses: vec![format!("10.7.0.{n}:22682")],
        state,
        state_since: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        known_since: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        last_report_direct: None,
        rtt: Some(Duration::from_micros(180)),
        report: None,
    }
}

struct Running {
    events: broadcast::Sender<PeerEvent>,
    shutdown: CancellationToken,
    server: JoinHandle<Result<(), SocketError>>,
}

/// Binds `path` and serves a [`TestAgent`] on it in the background.
async fn start(path: &Path, peers: Vec<Peer>) -> Running {
    let (events, _) = broadcast::channel(16);
    let shutdown = CancellationToken::new();
    let agent = TestAgent {
        peers,
        events: events.clone(),
        shutdown: shutdown.clone(),
    };
    let listener = unix::bind(path).await.unwrap();
    let router = Server::builder().add_service(AgentServer::new(agent));
    let server = tokio::spawn(unix::serve(router, listener, shutdown.clone()));
    Running {
        events,
        shutdown,
        server,
    }
}

async fn stop(running: Running) {
    running.shutdown.cancel();
    tokio::time::timeout(SOON, running.server)
        .await
        .expect("serve ends after cancellation")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn status_query_and_watch_peers_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    // A missing parent directory is created by bind.
    let path = dir.path().join("run/cantal/agent.sock");
    let initial = vec![peer(2, PeerState::Alive), peer(3, PeerState::Suspect)];
    let running = start(&path, initial.clone()).await;

    let channel = unix::connect(&path).await.unwrap();
    let mut client = AgentClient::new(channel);

    let status = client.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.name, "a");
    assert_eq!(status.id, Vec::from(self_id()));
    assert_eq!(status.num_peers, 2);

    let local = client
        .query(QueryRequest {
            rules_json: r#"{"rules": {}}"#.into(),
            scope: Scope::Local.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(local.hosts.len(), 1);
    let cluster = client
        .query(QueryRequest {
            rules_json: r#"{"rules": {}}"#.into(),
            scope: Scope::Cluster.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cluster.hosts.len(), 3);
    assert_eq!(cluster.warnings, ["c.test: timed out"]);

    let mut stream = client
        .watch_peers(WatchPeersRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut next = async || {
        let message = tokio::time::timeout(SOON, stream.message())
            .await
            .expect("event within the deadline")
            .unwrap();
        message.map(|event| PeerEvent::try_from(event).unwrap())
    };

    assert_eq!(next().await, Some(PeerEvent::Snapshot(initial)));

    let pushed = [
        PeerEvent::Joined(peer(4, PeerState::Alive)),
        PeerEvent::StateChanged {
            id: MachineId::from_bytes([3; 16]),
            state: PeerState::Dead,
            since: UNIX_EPOCH + Duration::from_secs(1_700_000_010),
        },
        PeerEvent::Updated(peer(2, PeerState::Alive)),
        PeerEvent::Removed(MachineId::from_bytes([3; 16])),
    ];
    for event in &pushed {
        running.events.send(event.clone()).unwrap();
    }
    for event in pushed {
        assert_eq!(next().await, Some(event));
    }

    stop(running).await;
    // The watch ends with the server instead of hanging.
    assert_eq!(next().await, None);
}

#[tokio::test]
async fn bind_refuses_a_live_socket_and_replaces_a_stale_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");

    let live = unix::bind(&path).await.unwrap();
    match unix::bind(&path).await {
        Err(SocketError::InUse { path: reported }) => assert_eq!(reported, path),
        other => panic!("expected InUse, got {other:?}"),
    }

    // A server that went away leaves its socket file behind.
    drop(live);
    assert!(path.exists());
    let running = start(&path, Vec::new()).await;
    let mut client = AgentClient::new(unix::connect(&path).await.unwrap());
    client.status(StatusRequest {}).await.unwrap();
    stop(running).await;
}

#[tokio::test]
async fn bind_leaves_other_files_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    std::fs::write(&path, "keep me").unwrap();
    match unix::bind(&path).await {
        Err(SocketError::NotASocket { path: reported }) => assert_eq!(reported, path),
        other => panic!("expected NotASocket, got {other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
}

#[tokio::test]
async fn bound_socket_is_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let _listener = unix::bind(&path).await.unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn connect_names_the_path_when_nothing_listens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.sock");
    match unix::connect(&path).await {
        Err(err @ SocketError::Connect { .. }) => {
            assert_eq!(err.to_string(), format!("connect to {}", path.display()));
        }
        other => panic!("expected Connect, got {other:?}"),
    }
}
