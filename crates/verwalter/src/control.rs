//! The local gRPC control socket: `verwalter.v1.Control` (status, schedule stream).

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use protocol::domain;
use protocol::pb::verwalter as pb;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::cantal;
use crate::election::State;
use crate::node::Node;
use crate::schedule::{Schedule, canonical_json};

/// Serves `verwalter.v1.Control`; schedule streams end on `shutdown`.
#[derive(Debug)]
pub struct ControlService {
    node: Arc<Node>,
    shutdown: CancellationToken,
}

impl ControlService {
    pub fn new(node: Arc<Node>, shutdown: CancellationToken) -> Self {
        Self { node, shutdown }
    }
}

fn to_message(schedule: &Schedule) -> pb::Schedule {
    pb::Schedule::from(domain::Schedule {
        hash: schedule.stamp.hash.clone(),
        timestamp: UNIX_EPOCH + Duration::from_millis(schedule.stamp.timestamp),
        origin: schedule.stamp.origin,
        data: canonical_json(&schedule.data),
    })
}

fn role(state: State) -> pb::Role {
    match state {
        State::Starting => pb::Role::Starting,
        State::PreCandidate => pb::Role::PreCandidate,
        State::Electing { .. } => pb::Role::Electing,
        State::Voted { .. } => pb::Role::Voted,
        State::Leader => pb::Role::Leader,
        State::Follower { .. } => pb::Role::Follower,
        State::Unstable => pb::Role::Unstable,
    }
}

type ScheduleStream = Pin<Box<dyn Stream<Item = Result<pb::Schedule, Status>> + Send>>;

#[tonic::async_trait]
impl pb::control_server::Control for ControlService {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let node = &self.node;
        let election = node.election.borrow().clone();
        let leader = election.leader.map(|id| {
            if id == node.id {
                pb::Leader {
                    id: id.into(),
                    name: node.settings.name.clone(),
                    hostname: node.settings.hostname.clone(),
                    addr: String::new(),
                }
            } else {
                let table = cantal::lock(&node.peers);
                let peer = table.peers.get(&id);
                pb::Leader {
                    id: id.into(),
                    name: peer.map(|p| p.name.clone()).unwrap_or_default(),
                    hostname: peer.map(|p| p.hostname.clone()).unwrap_or_default(),
                    addr: peer.map(|p| p.primary_addr.clone()).unwrap_or_default(),
                }
            }
        });
        let current = node.current();
        let now = crate::now_ms(SystemTime::now());
        let state = node.state();
        Ok(Response::new(pb::StatusResponse {
            id: node.id.into(),
            role: role(election.state).into(),
            epoch: election.epoch,
            leader,
            schedule_hash: current
                .as_ref()
                .map(|s| s.stamp.hash.clone())
                .unwrap_or_default(),
            schedule_age_ms: current
                .as_ref()
                .map(|s| now.saturating_sub(s.stamp.timestamp)),
            errors: state.errors.clone().into_iter().collect(),
            failed_roles: state.failed_roles.iter().cloned().collect(),
        }))
    }

    type WatchScheduleStream = ScheduleStream;

    async fn watch_schedule(
        &self,
        _request: Request<pb::WatchScheduleRequest>,
    ) -> Result<Response<ScheduleStream>, Status> {
        let mut schedules = self.node.schedule.subscribe();
        let (tx, rx) = mpsc::channel(16);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let current = schedules.borrow_and_update().clone();
                if let Some(schedule) = current
                    && tx.send(Ok(to_message(&schedule))).await.is_err()
                {
                    return;
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tx.closed() => return,
                    changed = schedules.changed() => if changed.is_err() { return },
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
