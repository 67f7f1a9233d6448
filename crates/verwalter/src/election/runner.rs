//! Drives an [`Election`] over a [`Transport`]: packets in, timers, packets out, and reports
//! to the rest of the daemon.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use protocol::domain::MachineId;
use serde::Serialize;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::packet::{self, ActionDigest, Message, PacketError};
use super::transport::Transport;
use super::{Election, Event, Local, State, Target, View};
use crate::schedule::Stamp;

/// The election as the rest of the daemon sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub state: State,
    pub epoch: u64,
    #[serde(serialize_with = "packet::optional_id::serialize")]
    pub leader: Option<MachineId>,
    pub needed: usize,
    pub followers: usize,
    /// When the current leader was established (ms since the epoch).
    pub last_stable_timestamp: Option<u64>,
}

impl Status {
    pub fn initial(epoch: u64) -> Self {
        Self {
            state: State::Starting,
            epoch,
            leader: None,
            needed: 1,
            followers: 0,
            last_stable_timestamp: None,
        }
    }
}

/// Packets dropped before the state machine, by reason (shown in `/v1/status` `metrics`).
#[derive(Debug, Default)]
pub struct PacketCounters {
    pub garbage: AtomicU64,
    pub oversized: AtomicU64,
    pub old_format: AtomicU64,
    pub unknown_peer: AtomicU64,
    pub received: AtomicU64,
}

impl PacketCounters {
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "election_packets_received": self.received.load(Ordering::Relaxed),
            "election_packets_garbage": self.garbage.load(Ordering::Relaxed),
            "election_packets_oversized": self.oversized.load(Ordering::Relaxed),
            "election_packets_old_format": self.old_format.load(Ordering::Relaxed),
            "election_packets_unknown_peer": self.unknown_peer.load(Ordering::Relaxed),
        })
    }
}

/// What packets told this node, for the daemon's schedule logic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Election(Event),
    /// A Ping from the leader this node follows.
    LeaderPing {
        leader: MachineId,
        schedule: Option<Stamp>,
        actions: ActionDigest,
        frozen: bool,
    },
    /// A follower answered this leader.
    Pong {
        peer: MachineId,
        schedule: Option<Stamp>,
        errors: u32,
        failed_roles: Vec<String>,
        actions: Option<ActionDigest>,
    },
    /// A peer's ballot, with the schedule it holds.
    Vote {
        peer: MachineId,
        schedule: Option<Stamp>,
    },
}

/// Saves the epoch and vote before packets that depend on them leave.
pub type Persist = Box<dyn FnMut(u64, Option<(u64, MachineId)>) + Send>;

/// The channels a runner is wired to.
pub struct Wiring {
    pub view: watch::Receiver<View>,
    pub local: watch::Receiver<Local>,
    /// Notified for an immediate Ping (new schedule or action).
    pub ping_now: Arc<Notify>,
    pub status: watch::Sender<Status>,
    pub reports: mpsc::UnboundedSender<Report>,
    pub persist: Persist,
    pub counters: Arc<PacketCounters>,
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for Wiring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wiring").finish_non_exhaustive()
    }
}

/// Runs the election until shutdown.
pub async fn run<T: Transport>(mut election: Election, transport: T, mut wiring: Wiring) {
    let mut log_limit: HashMap<SocketAddr, Instant> = HashMap::new();
    let mut persisted = election.persistent();
    loop {
        let deadline = election.deadline();
        let step = tokio::select! {
            () = wiring.shutdown.cancelled() => break,
            received = transport.recv() => {
                let Ok((from, datagram)) = received else {
                    // The in-memory network detaches dead nodes; a UDP error is transient.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let view = wiring.view.borrow().clone();
                match accept(&view, &datagram, &wiring.counters) {
                    Ok(message) => {
                        let local = wiring.local.borrow().clone();
                        let info = message.clone();
                        let now = Instant::now();
                        let step = election.receive(now, message, &view, &local);
                        report_packet(&election, info, &wiring.reports);
                        step
                    }
                    Err(reason) => {
                        let now = Instant::now();
                        let quiet = log_limit.get(&from).is_none_or(|at| now.duration_since(*at) >= Duration::from_secs(10));
                        if quiet {
                            log_limit.insert(from, now);
                            tracing::warn!(%from, %reason, "election packet dropped");
                        }
                        continue;
                    }
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                let view = wiring.view.borrow().clone();
                let local = wiring.local.borrow().clone();
                election.tick(Instant::now(), &view, &local)
            }
            () = wiring.ping_now.notified() => {
                let local = wiring.local.borrow().clone();
                election.ping_now(Instant::now(), &local)
            }
            changed = wiring.view.changed() => {
                if changed.is_err() {
                    break;
                }
                continue;
            }
        };
        if election.persistent() != persisted {
            persisted = election.persistent();
            (wiring.persist)(persisted.0, persisted.1);
        }
        deliver(&transport, &wiring.view.borrow(), step.send);
        for event in step.events {
            let _ = wiring.reports.send(Report::Election(event));
        }
        publish(&election, &wiring);
    }
}

fn accept(view: &View, datagram: &[u8], counters: &PacketCounters) -> Result<Message, String> {
    counters.received.fetch_add(1, Ordering::Relaxed);
    let message = packet::decode(datagram).map_err(|err| {
        let counter = match err {
            PacketError::TooLarge(_) => &counters.oversized,
            PacketError::Version(_) => &counters.old_format,
            PacketError::Empty | PacketError::Decode(_) => &counters.garbage,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        err.to_string()
    })?;
    if !view.is_member(&message.sender()) {
        counters.unknown_peer.fetch_add(1, Ordering::Relaxed);
        return Err(format!(
            "sender {} is not in cantal's peer list",
            message.sender()
        ));
    }
    Ok(message)
}

fn report_packet(election: &Election, message: Message, reports: &mpsc::UnboundedSender<Report>) {
    let report = match message {
        Message::Ping {
            id,
            schedule,
            actions,
            frozen,
            ..
        } if election.leader() == Some(id) => Report::LeaderPing {
            leader: id,
            schedule,
            actions,
            frozen,
        },
        Message::Pong {
            id,
            schedule,
            errors,
            failed_roles,
            actions,
            ..
        } if election.is_leader() => Report::Pong {
            peer: id,
            schedule,
            errors,
            failed_roles,
            actions,
        },
        Message::Vote { id, schedule, .. } => Report::Vote { peer: id, schedule },
        _ => return,
    };
    let _ = reports.send(report);
}

fn deliver<T: Transport>(transport: &T, view: &View, send: Vec<(Target, Message)>) {
    for (target, message) in send {
        let datagram = packet::encode(&message);
        match target {
            Target::All => {
                for member in view.peers.values() {
                    if let Some(addr) = member.addr {
                        transport.send(addr, &datagram);
                    }
                }
            }
            Target::One(id) => {
                if let Some(addr) = view.peers.get(&id).and_then(|member| member.addr) {
                    transport.send(addr, &datagram);
                }
            }
        }
    }
}

fn publish(election: &Election, wiring: &Wiring) {
    let needed = wiring.view.borrow().needed;
    let now = Instant::now();
    wiring.status.send_if_modified(|status| {
        let leader_changed = status.leader != election.leader();
        let updated = Status {
            state: election.state(),
            epoch: election.epoch(),
            leader: election.leader(),
            needed,
            followers: election.followers(now),
            last_stable_timestamp: if leader_changed {
                election.leader().map(|_| crate::now_ms(SystemTime::now()))
            } else {
                status.last_stable_timestamp
            },
        };
        if *status == updated {
            false
        } else {
            *status = updated;
            true
        }
    });
}
