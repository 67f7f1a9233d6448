//! The local gRPC socket: `cantal.v1.Agent` (status, the peer stream, queries).

use std::pin::Pin;
use std::sync::Arc;

use axum::body::Bytes;
use protocol::domain::PeerEvent;
use protocol::pb::cantal as pb;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::http::query_cluster;
use crate::query;
use crate::state::AgentState;

/// Messages a subscriber may have in flight before the stream waits for it.
const STREAM_BUFFER: usize = 64;

/// Serves `cantal.v1.Agent`; every `WatchPeers` stream ends when `shutdown` is cancelled.
#[derive(Debug)]
pub struct AgentService {
    state: Arc<AgentState>,
    shutdown: CancellationToken,
}

impl AgentService {
    pub fn new(state: Arc<AgentState>, shutdown: CancellationToken) -> Self {
        Self { state, shutdown }
    }
}

type PeerStream = Pin<Box<dyn Stream<Item = Result<pb::PeerEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let info = &self.state.info;
        let (peers, alive, suspect, dead, conflict) = self.state.membership.peers.with(|t| {
            let (a, s, d) = t.counts();
            (t.len(), a, s, d, t.conflict.clone())
        });
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Ok(Response::new(pb::StatusResponse {
            version: info.version.to_owned(),
            id: info.id.into(),
            name: info.name.clone(),
            hostname: info.hostname.clone(),
            cluster_name: info.cluster_name.clone().unwrap_or_default(),
            startup_time_ms: info.startup_time_ms,
            num_peers: count(peers),
            num_alive: count(alive),
            num_suspect: count(suspect),
            num_dead: count(dead),
            machine_id_conflict: conflict.map(|c| pb::MachineIdConflict {
                addr: c.addr.to_string(),
                hostname: c.hostname.unwrap_or_default(),
                since_ms: c.since_ms,
            }),
        }))
    }

    type WatchPeersStream = PeerStream;

    async fn watch_peers(
        &self,
        _request: Request<pb::WatchPeersRequest>,
    ) -> Result<Response<PeerStream>, Status> {
        let (snapshot, mut events) = self.state.membership.peers.subscribe();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let first = pb::PeerEvent::from(PeerEvent::Snapshot(snapshot));
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            loop {
                let event = tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tx.closed() => return,
                    event = events.recv() => event,
                };
                let message = match event {
                    Ok(event) => Ok(pb::PeerEvent::from(Arc::unwrap_or_clone(event))),
                    // A subscriber that fell this far behind must resubscribe for a fresh
                    // snapshot rather than miss changes silently.
                    Err(broadcast::error::RecvError::Lagged(missed)) => Err(Status::data_loss(
                        format!("subscriber fell {missed} events behind; watch again"),
                    )),
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let end = message.is_err();
                if tx.send(message).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        let request = request.into_inner();
        let info = &self.state.info;
        let cluster = request.scope == pb::Scope::Cluster as i32;
        if !cluster {
            let rules: query::Request = serde_json::from_str(&request.rules_json)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let dataset = query::run(&rules, &self.state.metrics().history);
            return Ok(Response::new(pb::QueryResponse {
                hosts: vec![pb::HostDataset {
                    id: info.id.into(),
                    hostname: info.hostname.clone(),
                    dataset_json: dataset.to_string(),
                }],
                warnings: Vec::new(),
            }));
        }
        let answer = query_cluster(&self.state, Bytes::from(request.rules_json))
            .await
            .map_err(Status::invalid_argument)?;
        let hosts = answer["hosts"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(id, host)| {
                let id: protocol::domain::MachineId = id.parse().ok()?;
                Some(pb::HostDataset {
                    id: id.into(),
                    hostname: host["hostname"].as_str().unwrap_or_default().to_owned(),
                    dataset_json: host["dataset"].to_string(),
                })
            })
            .collect();
        let warnings = answer["warnings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|w| w.as_str().map(str::to_owned))
            .collect();
        Ok(Response::new(pb::QueryResponse { hosts, warnings }))
    }
}
