//! Membership and failure detection: SWIM (foca) over a datagram [`Transport`].
//!
//! [`Gossip::run`] owns the foca instance and drives it from datagrams, timers and commands;
//! after every step it brings the shared [`Peers`] table in line with foca's members, which
//! publishes the changes to `WatchPeers` subscribers as they happen. The same loop runs on
//! a UDP socket in the agent and on an in-memory network in the simulation tests.

pub mod broadcast;
pub mod effects;
pub mod frame;
pub mod identity;
pub mod node_info;
pub mod peers;
pub mod suspicion;
pub mod transport;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant as StdInstant};

use foca::{
    Codec, Config, Foca, Member as FocaMember, Message, OwnedNotification, PeriodicParams,
    PostcardCodec, State, Timer,
};
use protocol::domain::{MachineId, PeerState};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use crate::log_limit::LogLimit;
use broadcast::{Broadcast, Handler};
use effects::{Duplicates, Effects};
use frame::BadPacket;
use identity::NodeId;
use node_info::{InfoStore, NodeInfo};
use peers::{Conflict, Member, Peers, ProbeStats};
use suspicion::{Confirmations, Suspicion};
pub use transport::Transport;

/// Protocol timing; [`Timing::default`] is the spec's.
#[derive(Debug, Clone)]
pub struct Timing {
    pub probe_period: Duration,
    pub probe_timeout: Duration,
    pub indirect_probes: usize,
    /// Suspect → dead after this × max(1, log10 N).
    pub suspicion: Duration,
    pub gossip_period: Duration,
    pub gossip_fanout: usize,
    /// Announce to one random dead member this often (heals partitions).
    pub announce_dead_period: Duration,
    /// Announce to one random live member this often (spreads membership).
    pub announce_period: Duration,
    /// Re-announce this node's info this often even when unchanged.
    pub info_period: Duration,
    pub forget_dead_after: Duration,
    /// Join attempts at a doubling interval before slowing down.
    pub join_attempts: u32,
    pub join_first_retry: Duration,
    pub join_slow_retry: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            probe_period: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            indirect_probes: 3,
            suspicion: Duration::from_secs(4),
            gossip_period: Duration::from_millis(200),
            gossip_fanout: 3,
            announce_dead_period: Duration::from_secs(10),
            announce_period: Duration::from_secs(30),
            info_period: Duration::from_secs(30),
            forget_dead_after: Duration::from_secs(48 * 3600),
            join_attempts: 5,
            join_first_retry: Duration::from_millis(100),
            join_slow_retry: Duration::from_secs(60),
        }
    }
}

/// Who this node is and whom it starts with.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    pub machine_id: MachineId,
    pub cluster_name: String,
    pub node_name: String,
    pub hostname: String,
    /// The gossip address peers reach this node at.
    pub addr: SocketAddr,
    /// Every address to announce.
    pub addresses: Vec<SocketAddr>,
    pub seeds: Vec<SocketAddr>,
    pub max_peers: usize,
    pub timing: Timing,
    /// Seeds the random generator (simulations); `None` draws from the OS.
    pub seed: Option<u64>,
}

/// Something asked of the gossip loop.
#[derive(Debug)]
enum Command {
    Join(SocketAddr),
}

/// The gossip loop is gone (stopped, or gossip is off).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("gossip is not running")]
pub struct NotRunning;

/// What the APIs see of gossip.
#[derive(Debug)]
pub struct Membership {
    pub peers: Peers,
    bad_packets: [AtomicU64; 5],
    commands: Option<mpsc::UnboundedSender<Command>>,
}

impl Membership {
    /// Membership of an agent without `--cluster-name`: no peers, joins refused.
    pub fn disabled() -> Arc<Self> {
        Arc::new(Self {
            peers: Peers::new(1),
            bad_packets: Default::default(),
            commands: None,
        })
    }

    /// Asks the loop to join the cluster through `addr` (retried as the spec says).
    pub fn join(&self, addr: SocketAddr) -> Result<(), NotRunning> {
        self.commands
            .as_ref()
            .ok_or(NotRunning)?
            .send(Command::Join(addr))
            .map_err(|_| NotRunning)
    }

    pub fn enabled(&self) -> bool {
        self.commands.is_some()
    }

    /// Dropped datagrams by reason.
    pub fn bad_packets(&self) -> BTreeMap<&'static str, u64> {
        BadPacket::ALL
            .iter()
            .map(|kind| {
                (
                    kind.name(),
                    self.bad_packets[*kind as usize].load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    fn count(&self, kind: BadPacket) {
        self.bad_packets[kind as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Wall-clock milliseconds derived from the (possibly simulated) monotonic clock.
#[derive(Debug, Clone, Copy)]
struct Clock {
    wall_start_ms: u64,
    start: Instant,
}

impl Clock {
    fn now_ms(&self) -> u64 {
        self.wall_start_ms + u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

#[derive(Debug)]
struct Join {
    addr: SocketAddr,
    attempts: u32,
    next_at: Instant,
    /// The pause between attempts once the quick ones are used up.
    slow_retry: Duration,
}

type FocaInstance = Foca<NodeId, PostcardCodec, StdRng, Handler>;

/// A member learned from others that has to answer before a deadline (see
/// [`Gossip::verify_members`]).
#[derive(Debug)]
struct Unverified {
    node: NodeId,
    attempts: u32,
    due: Instant,
}

/// The gossip loop's state.
pub struct Gossip {
    config: GossipConfig,
    foca: FocaInstance,
    effects: Effects,
    duplicates: Duplicates,
    timers: DelayQueue<Timer<NodeId>>,
    membership: Arc<Membership>,
    commands: mpsc::UnboundedReceiver<Command>,
    infos: InfoStore,
    stats: HashMap<SocketAddr, ProbeStats>,
    pings: HashMap<(SocketAddr, u8), Instant>,
    clock: Clock,
    cluster_hash: [u8; 8],
    joins: Vec<Join>,
    info: Option<NodeInfo>,
    info_version: u64,
    info_due: Instant,
    cluster_size: usize,
    conflict: Option<Conflict>,
    /// foca's members at the last reconcile: the table is rebuilt only when they change.
    fingerprint: Vec<(NodeId, State, u16)>,
    /// Suspect members: incarnation suspected and since when.
    suspicions: HashMap<NodeId, (u16, Instant)>,
    /// Which nodes' probes of a suspect failed (Lifeguard's confirmations).
    confirmations: Confirmations,
    /// When each suspect member was last told that it is suspected.
    told: HashMap<NodeId, Instant>,
    /// This node's incarnation, as its last message said.
    own_incarnation: u16,
    stats_changed: bool,
    reconcile_due: Option<Instant>,
    /// After joining a large cluster, announces to a few more members until then: one
    /// member's feed holds only as many members as fit in a packet (about 25), so a
    /// newcomer would otherwise miss some until they probe it. (next announcement, end)
    catch_up: Option<(Instant, Instant)>,
    /// How long the last reconcile took.
    reconcile_cost: Duration,
    /// Addresses of members that sent us a datagram foca accepted.
    heard: HashSet<SocketAddr>,
    /// Members being checked because there are more than `max_peers`, oldest deadline first.
    unverified: VecDeque<Unverified>,
    unverified_addrs: HashSet<SocketAddr>,
    verify_next: Instant,
    /// New members are checked until then: the last time there were more than `max_peers`,
    /// plus [`FLOOD_MEMORY`] (the rest of a flood trickles in through gossip).
    verify_until: Instant,
    /// Silent members declared dead since the checks last ran dry.
    declared_dead: u64,
    /// Silent members suspected (outside a flood) since the checks last ran dry.
    declared_suspect: u64,
    /// Members checked once outside a flood: not checked again, so a member whose replies
    /// come from another address than it announces is suspected once, not over and over.
    verified: HashSet<NodeId>,
    leaving: bool,
    rng: StdRng,
    log_limit: LogLimit,
    packet: Vec<u8>,
}

impl std::fmt::Debug for Gossip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gossip")
            .field("identity", self.foca.identity())
            .finish_non_exhaustive()
    }
}

/// Pause between two announcements of this node's info caused by new members.
const INFO_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Pause after a failed receive, so a broken socket does not spin.
const RECEIVE_RETRY: Duration = Duration::from_millis(100);
/// Nodes that only heard of a suspicion wait this much longer than the prober.
const SUSPICION_MARGIN: f64 = 1.5;
/// Delay between foca changing and the peer table following.
const RECONCILE_DELAY: Duration = Duration::from_millis(20);
/// At least this many times the last reconcile's duration passes between two, so a huge
/// membership (a flood of made-up members) cannot keep the loop busy reconciling.
const RECONCILE_COST_FACTOR: u32 = 4;
/// Probes older than this never get their round trip measured.
const PING_MEMORY: Duration = Duration::from_secs(10);
/// How long a node whose cluster grew past [`TRUNCATED_FEED`] asks more members for their
/// member lists, and how often.
const CATCH_UP: Duration = Duration::from_secs(4);
const CATCH_UP_PERIOD: Duration = Duration::from_secs(1);
/// A member list this long may have been cut to fit its packet (about 25 members): a node
/// whose cluster grows past it catches up.
const TRUNCATED_FEED: usize = 20;
/// A member that never answers this many announcements, one per interval, is declared dead
/// (only while there are more members than `--max-peers`).
const VERIFY_ATTEMPTS: u32 = 3;
const VERIFY_INTERVAL: Duration = Duration::from_secs(1);
/// Announcements sent per batch, and the pause between batches (2000 a second).
const VERIFY_BATCH: usize = 200;
const VERIFY_PACE: Duration = Duration::from_millis(100);
/// How long members keep being checked after their number last exceeded `--max-peers`.
const FLOOD_MEMORY: Duration = Duration::from_secs(60);
/// A node left without live members announces to at most this many of the members it knew.
const IDLE_REJOIN_MEMBERS: usize = 16;
/// Outside a flood, a member learned from others is checked only if it has not sent us
/// anything by then: a real one normally probes or greets us well before.
const VERIFY_GRACE: Duration = Duration::from_secs(2);

impl Gossip {
    /// Builds the loop and the handle the APIs use. `wall_now_ms` is the wall-clock time now.
    pub fn new(config: GossipConfig, wall_now_ms: u64) -> (Self, Arc<Membership>) {
        let mut rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => rand::make_rng(),
        };
        let identity = NodeId {
            addr: config.addr,
            machine_id: *config.machine_id.as_bytes(),
            boot_ms: wall_now_ms,
            nonce: rng.random(),
            generation: 0,
        };
        let foca_rng = StdRng::seed_from_u64(rng.random());
        let capacity = config.max_peers.saturating_mul(2).max(16);
        let infos = InfoStore::new(capacity);
        let confirmations = Confirmations::new(capacity, identity.clone());
        let foca = Foca::with_custom_broadcast(
            identity,
            foca_config(&config.timing, 1),
            foca_rng,
            PostcardCodec,
            Handler {
                infos: infos.clone(),
                confirmations: confirmations.clone(),
            },
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let membership = Arc::new(Membership {
            peers: Peers::new(config.max_peers),
            bad_packets: Default::default(),
            commands: Some(tx),
        });
        let now = Instant::now();
        let joins = config
            .seeds
            .iter()
            .map(|&addr| Join {
                addr,
                attempts: 0,
                next_at: now,
                slow_retry: config.timing.join_slow_retry,
            })
            .collect();
        let gossip = Self {
            cluster_hash: frame::cluster_hash(&config.cluster_name),
            config,
            foca,
            effects: Effects::default(),
            duplicates: Duplicates::default(),
            timers: DelayQueue::new(),
            membership: Arc::clone(&membership),
            commands: rx,
            infos,
            stats: HashMap::new(),
            pings: HashMap::new(),
            clock: Clock {
                wall_start_ms: wall_now_ms,
                start: now,
            },
            joins,
            info: None,
            info_version: 0,
            info_due: now,
            cluster_size: 1,
            conflict: None,
            fingerprint: Vec::new(),
            suspicions: HashMap::new(),
            confirmations,
            told: HashMap::new(),
            own_incarnation: 0,
            stats_changed: false,
            reconcile_due: None,
            catch_up: None,
            reconcile_cost: Duration::ZERO,
            heard: HashSet::new(),
            unverified: VecDeque::new(),
            unverified_addrs: HashSet::new(),
            verify_next: now,
            verify_until: now,
            declared_dead: 0,
            declared_suspect: 0,
            verified: HashSet::new(),
            leaving: false,
            rng,
            log_limit: LogLimit::new(),
            packet: Vec::with_capacity(frame::MAX_SEND),
        };
        (gossip, membership)
    }

    /// Runs until `shutdown`; on the way out tells the cluster this node leaves.
    pub async fn run<T: Transport>(mut self, transport: T, shutdown: CancellationToken) {
        let mut buf = vec![0u8; frame::MAX_RECEIVE + 1];
        self.housekeeping();
        self.flush(&transport).await;
        loop {
            let wake = self.reconcile_due.map_or(self.next_housekeeping(), |due| {
                due.min(self.next_housekeeping())
            });
            // Whether foca ran: only then can members, sends or timers have changed.
            let touched = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(command) = self.commands.recv() => match command {
                    Command::Join(addr) => {
                        self.add_join(addr, self.config.timing.join_slow_retry);
                        false
                    }
                },
                Some(expired) = std::future::poll_fn(|cx| self.timers.poll_expired(cx)) => {
                    let result = self.foca.handle_timer(expired.into_inner(), &mut self.effects);
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "gossip timer");
                    }
                    true
                }
                received = transport.recv_from(&mut buf) => match received {
                    Ok((len, from)) => self.handle_datagram(&buf[..len], from),
                    Err(e) => {
                        tracing::warn!(error = %e, "gossip receive failed");
                        tokio::time::sleep(RECEIVE_RETRY).await;
                        false
                    }
                },
                () = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    if self.reconcile_due.is_some_and(|due| due <= now) {
                        self.reconcile_due = None;
                        self.reconcile(self.clock.now_ms());
                    }
                    let due = now >= self.next_housekeeping();
                    if due {
                        self.housekeeping();
                    }
                    // A reconcile may have greeted the members of a newly joined cluster.
                    due || !self.effects.is_empty()
                }
            };
            if touched {
                self.flush(&transport).await;
            }
        }
        self.leaving = true;
        if let Err(e) = self.foca.leave_cluster(&mut self.effects) {
            tracing::debug!(error = %e, "leaving the cluster");
        }
        self.flush(&transport).await;
    }

    /// Hands a datagram to foca, or counts and drops it; tells whether foca saw it.
    fn handle_datagram(&mut self, datagram: &[u8], from: SocketAddr) -> bool {
        if self.duplicates.check(from, datagram, Instant::now()) {
            return false;
        }
        let decodes = |payload: &[u8]| {
            let mut codec = PostcardCodec;
            Codec::<NodeId>::decode_header(&mut codec, payload).is_ok()
        };
        let (bad, reached_foca) = match frame::classify(datagram, &self.cluster_hash, decodes) {
            Ok(payload) => match self.foca.handle_data(payload, &mut self.effects) {
                Ok(()) => {
                    self.heard.insert(from);
                    self.tell_suspect(from);
                    return true;
                }
                Err(foca::Error::DataTooBig) => (BadPacket::Oversized, true),
                // foca may have applied part of the packet before failing on the rest.
                Err(
                    foca::Error::Decode(_)
                    | foca::Error::MalformedPacket
                    | foca::Error::CustomBroadcast(_),
                ) => (BadPacket::Garbage, true),
                Err(e) => {
                    tracing::debug!(%from, error = %e, "gossip packet not handled");
                    return true;
                }
            },
            Err(bad) => (bad, false),
        };
        self.membership.count(bad);
        if let Some(suppressed) =
            self.log_limit
                .allow(bad.name(), &from.ip().to_string(), StdInstant::now())
        {
            tracing::warn!(%from, kind = bad.name(), suppressed, "dropped gossip packet");
        }
        reached_foca
    }

    fn add_join(&mut self, addr: SocketAddr, slow_retry: Duration) {
        if addr == self.config.addr {
            return;
        }
        self.joins.retain(|join| join.addr != addr);
        self.joins.push(Join {
            addr,
            attempts: 0,
            next_at: Instant::now(),
            slow_retry,
        });
    }

    /// When joins, announcements or probe bookkeeping next need attention.
    fn next_housekeeping(&self) -> Instant {
        let joins = self.joins.iter().map(|join| join.next_at).min();
        let pings = self.pings.values().min().map(|sent| *sent + PING_MEMORY);
        // Runs before every wait of the loop: the base timeout is worked out once, not per suspect.
        let base = self.suspicion_base();
        let suspicions = self
            .suspicions
            .iter()
            .map(|(node, &(incarnation, since))| {
                self.suspicion_deadline(base, node, incarnation, since)
            })
            .min();
        let catch_up = self.catch_up.map(|(next, _)| next);
        let verify = self
            .unverified
            .front()
            .map(|member| member.due.max(self.verify_next));
        [
            Some(self.info_due),
            joins,
            pings,
            suspicions,
            catch_up,
            verify,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(self.info_due)
    }

    fn housekeeping(&mut self) {
        let now = Instant::now();
        self.confirm_stale_suspicions(now);
        let known: Vec<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
        let has_peers = !known.is_empty();
        let timing = self.config.timing.clone();
        self.joins.retain(|join| !known.contains(&join.addr));
        for i in 0..self.joins.len() {
            let join = &self.joins[i];
            if join.next_at > now || (join.attempts >= timing.join_attempts && has_peers) {
                continue;
            }
            let addr = join.addr;
            if let Err(e) = self.foca.announce(NodeId::seed(addr), &mut self.effects) {
                tracing::debug!(%addr, error = %e, "announce");
            }
            let join = &mut self.joins[i];
            join.attempts += 1;
            let delay = if join.attempts < timing.join_attempts {
                let base = timing.join_first_retry * 2u32.pow(join.attempts - 1);
                base.mul_f64(self.rng.random_range(0.5..1.5))
            } else {
                join.slow_retry
            };
            join.next_at = now + delay;
        }
        self.joins
            .retain(|join| join.attempts < timing.join_attempts || !has_peers);
        if now >= self.info_due {
            self.announce_info(now, false);
        }
        if let Some((next, until)) = self.catch_up
            && now >= next
        {
            self.catch_up = (now < until).then_some((now + CATCH_UP_PERIOD, until));
            let active: Vec<NodeId> = self.foca.iter_members().map(|m| m.id().clone()).collect();
            if now < until && !active.is_empty() {
                // Spread over the members without drawing from the shared generator.
                let turn =
                    usize::try_from(until.saturating_duration_since(now).as_secs()).unwrap_or(0);
                let member = active[turn % active.len()].clone();
                if let Err(e) = self.foca.announce(member, &mut self.effects) {
                    tracing::debug!(error = %e, "catch-up announce");
                }
            }
        }
        self.pings
            .retain(|_, sent| now.duration_since(*sent) < PING_MEMORY);
        self.verify_members(now);
    }

    /// Checks members that others told us about but that never sent us anything: each gets
    /// an announcement, which a real agent answers with its member list. foca alone would
    /// probe them one a second, so a flood of made-up members would linger for minutes.
    ///
    /// While there are more members than `--max-peers` (a flood), one that stays silent
    /// through every attempt is declared dead, and the verdict is gossiped: it replaces the
    /// alive update still queued for dissemination, so the fakes stop spreading. Otherwise
    /// (for example fakes learned second-hand from a flooded peer) it is only suspected,
    /// which a real member refutes as it would a failed probe.
    fn verify_members(&mut self, now: Instant) {
        if now < self.verify_next {
            return;
        }
        let mut budget = VERIFY_BATCH;
        while budget > 0 && self.unverified.front().is_some_and(|m| m.due <= now) {
            let Some(mut member) = self.unverified.pop_front() else {
                break;
            };
            let addr = member.node.addr;
            if self.heard.contains(&addr) {
                self.unverified_addrs.remove(&addr);
                continue;
            }
            if member.attempts >= VERIFY_ATTEMPTS {
                self.unverified_addrs.remove(&addr);
                let verdict = if now < self.verify_until {
                    self.declared_dead += 1;
                    FocaMember::down(member.node)
                } else {
                    self.declared_suspect += 1;
                    self.verified.insert(member.node.clone());
                    let incarnation = self
                        .foca
                        .iter_members()
                        .find(|m| *m.id() == member.node)
                        .map_or(0, |m| m.incarnation());
                    FocaMember::new(member.node, incarnation, State::Suspect)
                };
                let verdict = std::iter::once(verdict);
                if let Err(e) = self.foca.apply_many(verdict, true, &mut self.effects) {
                    tracing::debug!(%addr, error = %e, "judging an unverified member");
                }
                continue;
            }
            if let Err(e) = self.foca.announce(member.node.clone(), &mut self.effects) {
                tracing::debug!(%addr, error = %e, "verifying announce");
            }
            member.attempts += 1;
            member.due = now + VERIFY_INTERVAL;
            self.unverified.push_back(member);
            budget -= 1;
        }
        if budget == 0 {
            self.verify_next = now + VERIFY_PACE;
        }
        if self.unverified.is_empty() && self.declared_dead > 0 {
            tracing::warn!(
                dead = std::mem::take(&mut self.declared_dead),
                "checked the members never heard from; declared the silent ones dead"
            );
        }
        if self.unverified.is_empty() && self.declared_suspect > 0 {
            tracing::info!(
                suspect = std::mem::take(&mut self.declared_suspect),
                "members learned from others never answered; suspected them"
            );
        }
    }

    /// How long an unconfirmed suspicion lasts in a cluster of this size.
    fn suspicion_base(&self) -> Duration {
        foca_config(&self.config.timing, self.cluster_size).suspect_to_down_after
    }

    /// When the suspicion of `node` (at `incarnation`, here since `since`) runs out, when
    /// unconfirmed it lasts `base`.
    ///
    /// foca starts the suspicion timer only on the node whose probe failed and relies on
    /// gossip to spread that node's verdict; a node that misses the verdict would keep the
    /// member suspect until its own probe comes round. As in the SWIM paper, every node that
    /// hears a suspicion also times it, with a margin unless its own probe failed too, so that
    /// the suspecters normally decide. Each further suspecter shortens the time (Lifeguard).
    fn suspicion_deadline(
        &self,
        base: Duration,
        node: &NodeId,
        incarnation: u16,
        since: Instant,
    ) -> Instant {
        let (suspecters, own) =
            self.confirmations
                .suspecters(node, incarnation, self.foca.identity());
        let timeout = suspicion::timeout(base, suspecters.saturating_sub(1), self.cluster_size);
        since
            + if own {
                timeout
            } else {
                timeout.mul_f64(SUSPICION_MARGIN)
            }
    }

    /// Declares dead the members whose suspicion nobody refuted in time.
    fn confirm_stale_suspicions(&mut self, now: Instant) {
        let base = self.suspicion_base();
        let stale: Vec<(NodeId, u16)> = self
            .suspicions
            .iter()
            .filter(|(node, (incarnation, since))| {
                self.suspicion_deadline(base, node, *incarnation, *since) <= now
            })
            .map(|(node, (incarnation, _))| (node.clone(), *incarnation))
            .collect();
        for (node, incarnation) in stale {
            self.suspicions.remove(&node);
            // The table lags foca by a reconcile: a refutation may have arrived with the
            // confirmations that made the deadline pass, and foca lets Down beat any Alive.
            let still_suspect = self.foca.iter_membership_state().any(|m| {
                *m.id() == node && m.state() == State::Suspect && m.incarnation() == incarnation
            });
            if !still_suspect {
                continue;
            }
            let down = foca::Member::new(node, incarnation, State::Down);
            if let Err(e) = self
                .foca
                .apply_many(std::iter::once(down), true, &mut self.effects)
            {
                tracing::debug!(error = %e, "declaring a stale suspect dead");
            }
        }
    }

    /// Broadcasts this node's info if it changed or `info_period` passed (or `force`).
    fn announce_info(&mut self, now: Instant, force: bool) {
        let (alive, _, _) = self.membership.peers.with(|t| t.counts());
        let info = NodeInfo {
            node: self.foca.identity().clone(),
            version: self.info_version + 1,
            timestamp_ms: self.clock.now_ms(),
            hostname: self.config.hostname.clone(),
            name: self.config.node_name.clone(),
            addresses: self.config.addresses.clone(),
            peers: u32::try_from(alive).unwrap_or(u32::MAX),
            has_remote: true,
        }
        .bounded();
        let unchanged = self
            .info
            .as_ref()
            .is_some_and(|old| old.same_content(&info) && old.node == info.node);
        if unchanged && !force && now < self.info_due {
            return;
        }
        let bytes = match Broadcast::Info(info.clone()).encode() {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode node info");
                return;
            }
        };
        if let Err(e) = self.foca.add_broadcast(&bytes) {
            tracing::warn!(error = %e, "cannot broadcast node info");
            return;
        }
        self.info_version = info.version;
        self.info = Some(info);
        self.info_due = now + self.config.timing.info_period;
    }

    /// Sends what foca produced, schedules its timers, handles its notifications and updates
    /// the peer table.
    async fn flush<T: Transport>(&mut self, transport: &T) {
        let now = Instant::now();
        let now_ms = self.clock.now_ms();
        let mut member_up = false;
        let mut rejoined = false;
        let mut idle = false;
        let mut effects = std::mem::take(&mut self.effects);
        for notification in effects.notifications {
            match notification {
                OwnedNotification::DataSent(header) => {
                    self.own_incarnation = header.src_incarnation;
                    if let Message::Ping(probe) = header.message {
                        self.stats_changed = true;
                        let stats = self.stats.entry(header.dst.addr).or_default();
                        stats.probes_sent += 1;
                        stats.last_probe = Some((now_ms, header.dst.addr));
                        self.pings.insert((header.dst.addr, probe), now);
                    }
                }
                OwnedNotification::DataReceived(header) => {
                    let from = header.src.addr;
                    self.stats_changed |=
                        matches!(header.message, Message::Ping(_) | Message::Ack(_));
                    match header.message {
                        Message::Ping(_) => {
                            let stats = self.stats.entry(from).or_default();
                            stats.pings_received += 1;
                            stats.last_report_direct = Some(now_ms);
                        }
                        Message::Ack(probe) => {
                            let stats = self.stats.entry(from).or_default();
                            stats.pongs_received += 1;
                            stats.last_report_direct = Some(now_ms);
                            if let Some(sent) = self.pings.remove(&(from, probe)) {
                                stats.last_roundtrip = Some((from, now_ms, now - sent));
                            }
                        }
                        _ => {}
                    }
                }
                OwnedNotification::MemberUp(_) | OwnedNotification::Rename(..) => {
                    member_up = true;
                }
                OwnedNotification::Rejoin(identity) => {
                    tracing::info!(
                        generation = identity.generation,
                        "declared dead by the cluster; rejoined"
                    );
                    member_up = true;
                    rejoined = true;
                }
                OwnedNotification::Idle if !self.leaving => idle = true,
                // Leaving the cluster on shutdown makes foca report this node down.
                OwnedNotification::Defunct if !self.leaving => {
                    tracing::warn!("declared dead by the cluster and cannot rejoin");
                }
                other => tracing::debug!(notification = ?other, "gossip"),
            }
        }
        if member_up {
            // New members learn names and addresses from the next announcement; make it
            // soon rather than at the next period.
            let soon = now + INFO_MIN_INTERVAL;
            if self.info_due > soon {
                self.info_due = soon;
            }
        }
        if idle {
            // Every member is dead to us, and foca goes quiet: nobody is probed and nothing
            // is gossiped, so only a member announcing to us could end it. After a split in
            // which both sides renewed their identities at once, none may ever do so. Join
            // again through the seeds and the members we knew, as at start.
            let known: Vec<SocketAddr> = self
                .foca
                .iter_membership_state()
                .map(|m| m.id().addr)
                .take(IDLE_REJOIN_MEMBERS)
                .collect();
            // As often as a connected node announces to the dead, which heals partitions.
            let slow_retry = self.config.timing.announce_dead_period;
            for addr in self.config.seeds.clone().into_iter().chain(known) {
                self.add_join(addr, slow_retry);
            }
        }
        if rejoined {
            // A rejoin leaves foca disconnected, without timers, until a member it considers
            // alive writes to it; that may never happen when those members know only the old,
            // dead identity (both sides of a healed split rejoining at once). Applying no
            // update makes it reconnect and restart probing and gossip now.
            if let Err(e) = self
                .foca
                .apply_many(std::iter::empty(), true, &mut self.effects)
            {
                tracing::debug!(error = %e, "reconnecting after a rejoin");
            }
            let kicked = std::mem::take(&mut self.effects);
            effects.timers.extend(kicked.timers);
            effects.sends.extend(kicked.sends);
            self.effects.notifications = kicked.notifications;
        }
        for (after, timer) in effects.timers {
            if let Timer::ChangeSuspectToDown {
                member_id,
                incarnation,
                ..
            } = &timer
            {
                // foca asks for this timer only when its own probe of the member failed.
                self.broadcast_suspicion(member_id.clone(), *incarnation);
            }
            self.timers.insert(timer, after);
        }
        for send in effects.sends {
            frame::encode(&self.cluster_hash, &send.payload, &mut self.packet);
            if self.packet.len() > frame::MAX_SEND {
                tracing::error!(len = self.packet.len(), "gossip packet over the send cap");
                continue;
            }
            let copies = if send.probe { 2 } else { 1 };
            for _ in 0..copies {
                if let Err(e) = transport.send_to(&self.packet, send.to).await
                    && let Some(suppressed) =
                        self.log_limit
                            .allow("send", &send.to.ip().to_string(), StdInstant::now())
                {
                    tracing::debug!(to = %send.to, error = %e, suppressed, "gossip send failed");
                }
            }
        }
        // Members change in bursts (one packet often carries several updates); the table
        // follows shortly after, well within the 100 ms promised to subscribers.
        if self.reconcile_due.is_none() {
            let delay = RECONCILE_DELAY.max(self.reconcile_cost * RECONCILE_COST_FACTOR);
            self.reconcile_due = Some(now + delay);
        }
    }

    fn reconcile(&mut self, now_ms: u64) {
        // The simulation's paused clock makes this zero, keeping it deterministic.
        let started = Instant::now();
        self.reconcile_table(now_ms);
        self.reconcile_cost = started.elapsed();
    }

    fn reconcile_table(&mut self, now_ms: u64) {
        let fingerprint: Vec<(NodeId, State, u16)> = self
            .foca
            .iter_membership_state()
            .map(|m| (m.id().clone(), m.state(), m.incarnation()))
            .collect();
        let infos_changed = self.infos.take_changed();
        if fingerprint == self.fingerprint && !infos_changed {
            if std::mem::take(&mut self.stats_changed) {
                let stats = &self.stats;
                self.membership
                    .peers
                    .update(|table, _| table.update_stats(stats));
            }
            return;
        }
        self.track_suspicions(&fingerprint);
        self.fingerprint = fingerprint;
        self.stats_changed = false;
        let own = self.foca.identity().clone();
        let mut members = Vec::new();
        let mut conflict = None;
        for member in self.foca.iter_membership_state() {
            let node = member.id();
            let state = match member.state() {
                State::Alive => PeerState::Alive,
                State::Suspect => PeerState::Suspect,
                State::Down => PeerState::Dead,
            };
            if node.machine_id == own.machine_id {
                if node.addr != own.addr && state != PeerState::Dead {
                    conflict = Some(node.addr);
                }
                continue;
            }
            members.push(Member {
                node: node.clone(),
                state,
                incarnation: member.incarnation(),
            });
        }
        self.update_conflict(conflict, now_ms);
        let addrs: HashSet<SocketAddr> = members.iter().map(|m| m.node.addr).collect();
        self.stats.retain(|addr, _| addrs.contains(addr));
        self.heard.retain(|addr| addrs.contains(addr));
        let now = Instant::now();
        if self.foca.num_members() > self.config.max_peers {
            if now >= self.verify_until {
                tracing::warn!(
                    members = self.foca.num_members(),
                    max_peers = self.config.max_peers,
                    "more members than --max-peers; checking those never heard from"
                );
            }
            self.verify_until = now + FLOOD_MEMORY;
        }
        let flooded = now < self.verify_until;
        self.verified.retain(|node| addrs.contains(&node.addr));
        for member in self.foca.iter_members() {
            let node = member.id();
            if self.heard.contains(&node.addr) || (!flooded && self.verified.contains(node)) {
                continue;
            }
            if self.unverified_addrs.insert(node.addr) {
                self.unverified.push_back(Unverified {
                    node: node.clone(),
                    attempts: 0,
                    due: if flooded { now } else { now + VERIFY_GRACE },
                });
            }
        }
        self.infos
            .retain(|addr| addrs.contains(addr) || *addr == own.addr);
        let infos = &self.infos;
        let stats = &self.stats;
        let conflict = self.conflict.clone();
        let unverified = &self.unverified_addrs;
        self.membership.peers.update(|table, events| {
            // During a flood, members still being checked are not listed yet: the flood never
            // reaches the table (or the `WatchPeers` stream), and a real member is listed
            // once it answers.
            let members: Vec<Member> = members
                .into_iter()
                .filter(|m| {
                    !flooded
                        || !unverified.contains(&m.node.addr)
                        || table.get(&m.node.machine_id()).is_some()
                })
                .collect();
            table.reconcile(members, infos, infos_changed, stats, now_ms, events);
            table.conflict = conflict;
        });
        let size = self.foca.num_members() + 1;
        if self.cluster_size == 1 && size > 2 {
            // Just joined through a seed's member list: greet every member at once, so each
            // lists this node within a round trip instead of after some gossip rounds.
            let others: Vec<NodeId> = self
                .foca
                .iter_members()
                .map(|m| m.id().clone())
                .filter(|node| !self.heard.contains(&node.addr))
                .collect();
            for node in others {
                if let Err(e) = self.foca.announce(node, &mut self.effects) {
                    tracing::debug!(error = %e, "greeting announce");
                }
            }
        }
        if self.cluster_size <= TRUNCATED_FEED && size > TRUNCATED_FEED {
            let now = Instant::now();
            self.catch_up = Some((now + CATCH_UP_PERIOD, now + CATCH_UP));
        }
        if size != self.cluster_size {
            self.cluster_size = size;
            if let Err(e) = self.foca.set_config(foca_config(&self.config.timing, size)) {
                tracing::warn!(error = %e, "cannot adjust gossip to the cluster size");
            }
        }
    }

    fn track_suspicions(&mut self, members: &[(NodeId, State, u16)]) {
        let now = Instant::now();
        let mut current = HashMap::new();
        for (node, state, incarnation) in members {
            if *state != State::Suspect {
                continue;
            }
            let since = match self.suspicions.get(node) {
                Some((known, since)) if known == incarnation => *since,
                _ => now,
            };
            current.insert(node.clone(), (*incarnation, since));
        }
        self.suspicions = current;
        let suspicions = &self.suspicions;
        self.confirmations
            .retain(|node| suspicions.contains_key(node));
        self.told.retain(|node, _| suspicions.contains_key(node));
        let live = members
            .iter()
            .filter(|(_, state, _)| *state != State::Down)
            .map(|(node, _, incarnation)| (node.clone(), *incarnation));
        self.confirmations.set_members(live);
    }

    /// Lifeguard's buddy system: tells a member this node holds suspect, and just heard from
    /// at `from`, that it is suspected (at most once per probe timeout), so it refutes now
    /// instead of being declared dead for having missed the news.
    fn tell_suspect(&mut self, from: SocketAddr) {
        let Some((node, incarnation)) = self
            .suspicions
            .iter()
            .find(|(node, _)| node.addr == from)
            .map(|(node, (incarnation, _))| (node.clone(), *incarnation))
        else {
            return;
        };
        let now = Instant::now();
        let interval = self.config.timing.probe_timeout;
        if self
            .told
            .get(&node)
            .is_some_and(|at| now.duration_since(*at) < interval)
        {
            return;
        }
        let own = self.foca.identity();
        match suspicion::notice(own, self.own_incarnation, &node, incarnation) {
            Ok(payload) => {
                self.effects.sends.push(effects::Send {
                    to: from,
                    payload,
                    probe: true,
                });
                self.told.insert(node, now);
            }
            Err(e) => tracing::debug!(error = %e, "cannot encode a suspicion notice"),
        }
    }

    /// Tells the cluster that this node's probe of `suspect` failed.
    fn broadcast_suspicion(&mut self, suspect: NodeId, incarnation: u16) {
        self.confirmations.set_own(self.foca.identity().clone());
        let suspicion = Suspicion {
            suspect,
            incarnation,
            by: self.foca.identity().clone(),
        };
        let result = Broadcast::Suspicion(suspicion)
            .encode()
            .map_err(|e| e.to_string())
            .and_then(|bytes| self.foca.add_broadcast(&bytes).map_err(|e| e.to_string()));
        if let Err(error) = result {
            tracing::warn!(%error, "cannot broadcast a suspicion");
        }
    }

    fn update_conflict(&mut self, addr: Option<SocketAddr>, now_ms: u64) {
        match (addr, &self.conflict) {
            (None, _) => self.conflict = None,
            (Some(addr), Some(known)) if known.addr == addr => {}
            (Some(addr), _) => {
                let hostname = self.infos.get(&addr).map(|info| info.hostname);
                tracing::warn!(%addr, hostname = ?hostname, "another host announces this host's machine id");
                self.conflict = Some(Conflict {
                    addr,
                    hostname,
                    since_ms: now_ms,
                });
            }
        }
    }
}

/// foca's settings for a cluster of `size` nodes.
fn foca_config(timing: &Timing, size: usize) -> Config {
    let size = size.max(1) as f64;
    let log_size = size.log10();
    let transmissions = (4.0 * (size + 1.0).log10().ceil()).clamp(1.0, 255.0) as u8;
    Config {
        probe_period: timing.probe_period,
        probe_rtt: timing.probe_timeout,
        num_indirect_probes: NonZeroUsize::new(timing.indirect_probes.max(1)).expect("max(1)"),
        max_transmissions: NonZeroU8::new(transmissions.max(1)).expect("max(1)"),
        suspect_to_down_after: timing.suspicion.mul_f64(log_size.max(1.0)),
        remove_down_after: Some(timing.forget_dead_after),
        max_packet_size: NonZeroUsize::new(frame::MAX_SEND - frame::HEADER_LEN).expect("positive"),
        notify_down_members: true,
        periodic_announce: Some(PeriodicParams {
            frequency: timing.announce_period,
            num_members: NonZeroUsize::MIN,
        }),
        periodic_announce_to_down_members: Some(PeriodicParams {
            frequency: timing.announce_dead_period,
            num_members: NonZeroUsize::MIN,
        }),
        periodic_gossip: Some(PeriodicParams {
            frequency: timing.gossip_period,
            num_members: NonZeroUsize::new(timing.gossip_fanout.max(1)).expect("max(1)"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_scales_with_the_cluster() {
        let timing = Timing::default();
        let small = foca_config(&timing, 5);
        assert_eq!(small.suspect_to_down_after, Duration::from_secs(4));
        assert_eq!(small.max_transmissions.get(), 4);
        let large = foca_config(&timing, 1000);
        assert_eq!(large.suspect_to_down_after, Duration::from_secs(12));
        assert_eq!(large.max_transmissions.get(), 16);
        assert_eq!(
            large.max_packet_size.get() + frame::HEADER_LEN,
            frame::MAX_SEND
        );
    }
}
