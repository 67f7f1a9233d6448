//! The gRPC control socket (`lithos.v1.Control`): requests go to the supervisor loop over a
//! channel; events fan out through a broadcast channel. Protobuf stays at this edge.

use std::pin::Pin;

use protocol::pb::lithos as pb;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::state::{ProcessExit, now_ms};
use crate::yaml::ConfigError;

/// A request for the supervisor loop.
#[derive(Debug)]
pub enum Call {
    Status(oneshot::Sender<pb::StatusResponse>),
    Reload(Option<String>, oneshot::Sender<pb::ReloadResponse>),
}

/// What the tree reports as it happens.
#[derive(Debug, Clone)]
pub enum TreeEvent {
    Started {
        instance: String,
        pid: u32,
    },
    Exited {
        instance: String,
        exit: ProcessExit,
    },
    RestartScheduled {
        instance: String,
        delay_ms: u64,
        failures: u32,
    },
    ConfigApplied {
        sandbox: String,
    },
    ConfigRejected {
        sandbox: String,
        error: ConfigError,
    },
    Adopted {
        instance: String,
        knot_pid: u32,
    },
    GaveUp {
        instance: String,
        failures: u32,
    },
}

pub fn config_error(e: &ConfigError) -> pb::ConfigError {
    pb::ConfigError {
        file: e.file.display().to_string(),
        line: e.line,
        column: e.column,
        message: e.message.clone(),
    }
}

pub fn exit(e: &ProcessExit) -> pb::Exit {
    let reason = match (e.code, e.signal) {
        (Some(c), _) => Some(pb::exit::Reason::Code(c)),
        (None, Some(s)) => Some(pb::exit::Reason::Signal(s)),
        (None, None) => None,
    };
    pb::Exit { reason, oom: e.oom }
}

impl TreeEvent {
    pub fn to_pb(&self) -> pb::Event {
        use pb::event::Kind;
        let kind = match self.clone() {
            TreeEvent::Started { instance, pid } => {
                Kind::InstanceStarted(pb::InstanceStarted { instance, pid })
            }
            TreeEvent::Exited { instance, exit: e } => Kind::InstanceExited(pb::InstanceExited {
                instance,
                exit: Some(exit(&e)),
            }),
            TreeEvent::RestartScheduled {
                instance,
                delay_ms,
                failures,
            } => Kind::RestartScheduled(pb::RestartScheduled {
                instance,
                delay_ms,
                failures,
            }),
            TreeEvent::ConfigApplied { sandbox } => {
                Kind::ConfigApplied(pb::ConfigApplied { sandbox })
            }
            TreeEvent::ConfigRejected { sandbox, error } => {
                Kind::ConfigRejected(pb::ConfigRejected {
                    sandbox,
                    error: Some(config_error(&error)),
                })
            }
            TreeEvent::Adopted { instance, knot_pid } => {
                Kind::Adopted(pb::Adopted { instance, knot_pid })
            }
            TreeEvent::GaveUp { instance, failures } => {
                Kind::GaveUp(pb::GaveUp { instance, failures })
            }
        };
        pb::Event {
            timestamp_ms: now_ms(),
            kind: Some(kind),
        }
    }
}

/// The service behind the control socket.
#[derive(Debug, Clone)]
pub struct ControlService {
    pub calls: mpsc::Sender<Call>,
    pub events: broadcast::Sender<pb::Event>,
    pub shutdown: CancellationToken,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

fn gone() -> Status {
    Status::unavailable("lithos_tree is stopping")
}

#[tonic::async_trait]
impl pb::control_server::Control for ControlService {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let (tx, rx) = oneshot::channel();
        self.calls
            .send(Call::Status(tx))
            .await
            .map_err(|_| gone())?;
        rx.await.map(Response::new).map_err(|_| gone())
    }

    async fn reload(
        &self,
        request: Request<pb::ReloadRequest>,
    ) -> Result<Response<pb::ReloadResponse>, Status> {
        let (tx, rx) = oneshot::channel();
        let sandbox = request.into_inner().sandbox;
        self.calls
            .send(Call::Reload(sandbox, tx))
            .await
            .map_err(|_| gone())?;
        rx.await.map(Response::new).map_err(|_| gone())
    }

    type EventsStream = EventStream;

    async fn events(&self, _: Request<pb::EventsRequest>) -> Result<Response<EventStream>, Status> {
        let mut events = tokio_stream::wrappers::BroadcastStream::new(self.events.subscribe());
        let (tx, rx) = mpsc::channel(64);
        let shutdown = self.shutdown.clone();
        // Ends with the tree, so shutdown does not wait for the client to hang up.
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tx.closed() => break,
                    item = events.next() => match item {
                        Some(Ok(event)) => if tx.send(Ok(event)).await.is_err() { break },
                        // A slow client misses events rather than stalling the tree.
                        Some(Err(_)) => continue,
                        None => break,
                    },
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
