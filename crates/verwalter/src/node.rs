//! One verwalter node: its shared state and the tasks that move schedules around it.
//!
//! - reports from the election feed peer info, follower fetches and parent merges;
//! - the scheduler loop runs the Lua scheduler on the leader;
//! - the follower loop fetches schedules and actions from the leader;
//! - the config watcher re-reads `runtime/`, `machine/` and `sandbox/` on change.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use protocol::domain::MachineId;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::actions::{self, RateWindow};
use crate::cantal::{self, SharedTable};
use crate::config::{ConfigDir, Inputs};
use crate::deploy_log::DeployLog;
use crate::election::runner::{PacketCounters, Report, Status};
use crate::election::{ActionDigest, Event, Local, State, View};
use crate::fetch::Fetcher;
use crate::propagation;
use crate::schedule::{Schedule, Stamp};
use crate::scheduler::{self, Limits, Stats};
use crate::storage::Storage;

/// Hashes of schedules this node has held, to tell a foreign lineage (the other side of a
/// healed partition) from an old schedule of our own.
const KNOWN_HASHES: usize = 1000;
/// The scheduler runs at least this often on the leader.
const CADENCE: Duration = Duration::from_secs(5);
/// How long a new leader waits for peers' schedules before its first run.
const PARENT_WAIT: Duration = Duration::from_millis(300);
/// How often the leader re-reads a peer's `machine/` metadata.
const MACHINE_REFRESH: Duration = Duration::from_secs(30);
/// How long the leader's store of a new schedule waits for this node's render of it.
const STORE_AFTER_RENDER: Duration = Duration::from_millis(200);

/// Settings of a node, from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config_dir: PathBuf,
    pub storage_dir: PathBuf,
    pub log_dir: PathBuf,
    /// Where the daemon writes vars files for the renderer (the `--socket` directory).
    pub runtime_dir: PathBuf,
    pub port: u16,
    pub name: String,
    pub hostname: String,
    pub dry_run: bool,
    pub use_sudo: bool,
    pub debug_force_leader: bool,
    pub cantal_socket: PathBuf,
    pub limits: Limits,
    pub default_frontend: String,
    pub render_binary: PathBuf,
}

/// Info a follower sent in its last Pong.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    pub schedule: Option<Stamp>,
    pub errors: u32,
    pub failed_roles: Vec<String>,
    pub actions: Option<ActionDigest>,
}

/// The last scheduler run.
#[derive(Debug, Clone, Default)]
pub struct SchedulerRun {
    pub input: Option<Value>,
    pub debug_log: String,
    pub error: Option<String>,
    pub last_run: Option<u64>,
    pub stats: Stats,
    /// Output kept instead of published while frozen.
    pub plan: Option<Value>,
}

/// A role's last render here.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoleRender {
    pub deployment_id: String,
    pub timestamp: u64,
    pub ok: bool,
    pub exit_code: Option<i32>,
}

/// Mutable state shared by the tasks and the HTTP API.
#[derive(Debug, Default)]
pub struct NodeState {
    pub actions: BTreeMap<String, Value>,
    pub frozen: bool,
    pub inputs: Inputs,
    pub peer_info: BTreeMap<MachineId, PeerInfo>,
    known: VecDeque<String>,
    /// Schedules of another lineage to merge in the next run.
    pub parents: Vec<Schedule>,
    /// Stamps of another lineage seen in packets, not fetched yet: hash → holder.
    pub foreign: BTreeMap<String, (MachineId, Stamp)>,
    pub scheduler: SchedulerRun,
    pub errors: BTreeMap<String, String>,
    pub failed_roles: BTreeSet<String>,
    pub roles: BTreeMap<String, RoleRender>,
    pub fetch_state: String,
    pub waiters: BTreeMap<String, Vec<oneshot::Sender<Option<Value>>>>,
    /// Peers' `machine/` metadata (fetched by the leader from `/v1/machine`), with when.
    pub peer_machines: BTreeMap<MachineId, (Instant, Value)>,
}

impl NodeState {
    pub fn is_known(&self, hash: &str) -> bool {
        self.known.iter().any(|known| known == hash)
    }

    fn remember(&mut self, hash: &str) {
        if !self.is_known(hash) {
            self.known.push_back(hash.to_owned());
            if self.known.len() > KNOWN_HASHES {
                self.known.pop_front();
            }
        }
    }
}

/// A node: identity, settings, channels and shared state.
#[derive(Debug)]
pub struct Node {
    pub id: MachineId,
    pub settings: Settings,
    pub storage: Storage,
    pub config: ConfigDir,
    pub log: DeployLog,
    pub token: Option<String>,
    state: Mutex<NodeState>,
    pub peers: SharedTable,
    pub election: watch::Receiver<Status>,
    pub view: watch::Receiver<View>,
    pub schedule: watch::Sender<Option<Arc<Schedule>>>,
    pub local: watch::Sender<Local>,
    pub ping_now: Arc<Notify>,
    pub scheduler_wake: Notify,
    pub render_wake: Notify,
    /// Hash of the schedule this node's deploy loop last finished rendering.
    pub rendered: watch::Sender<Option<String>>,
    pub counters: Arc<PacketCounters>,
    pub fetcher: Fetcher,
    pub rate: Mutex<RateWindow>,
    pub metrics: cantal::MetricsCache,
    /// (leader, its schedule, its actions) from the last leader Ping, for the follower loop.
    pub wanted: watch::Sender<Option<(MachineId, Option<Stamp>, ActionDigest)>>,
    /// What [`Node::persist`] last stored.
    persisted: Mutex<Persisted>,
    pub propagation: PropagationCounters,
}

/// Hash of the stored schedule and digest of the stored actions.
#[derive(Debug, Default)]
struct Persisted {
    schedule: Option<String>,
    actions: Option<ActionDigest>,
}

/// How schedules reached this node (`/v1/status` `metrics`).
#[derive(Debug, Default)]
pub struct PropagationCounters {
    pub pushed_in: AtomicU64,
    pub push_rejected: AtomicU64,
    pub fetched: AtomicU64,
}

impl PropagationCounters {
    pub fn snapshot(&self) -> Value {
        json!({
            "schedules_pushed_in": self.pushed_in.load(Ordering::Relaxed),
            "schedules_push_rejected": self.push_rejected.load(Ordering::Relaxed),
            "schedules_fetched": self.fetched.load(Ordering::Relaxed),
        })
    }
}

/// Channels a node is built from.
#[derive(Debug)]
pub struct Channels {
    pub election: watch::Receiver<Status>,
    pub view: watch::Receiver<View>,
    pub local: watch::Sender<Local>,
    pub ping_now: Arc<Notify>,
    pub counters: Arc<PacketCounters>,
    pub peers: SharedTable,
}

impl Node {
    pub fn new(
        id: MachineId,
        settings: Settings,
        storage: Storage,
        token: Option<String>,
        channels: Channels,
    ) -> Self {
        let config = ConfigDir::new(&settings.config_dir);
        let mut state = NodeState {
            actions: storage.load_actions(),
            frozen: storage.load_frozen(),
            inputs: Inputs::load(&config),
            fetch_state: "waiting".into(),
            ..NodeState::default()
        };
        let schedule = storage.load_schedule();
        if let Some(schedule) = &schedule {
            state.remember(&schedule.stamp.hash);
        }
        let persisted = Persisted {
            schedule: schedule.as_ref().map(|s| s.stamp.hash.clone()),
            actions: Some(actions::digest(&state.actions)),
        };
        let log = DeployLog::new(&settings.log_dir);
        let node = Self {
            id,
            storage,
            config,
            log,
            token,
            state: Mutex::new(state),
            peers: channels.peers,
            election: channels.election,
            view: channels.view,
            schedule: watch::Sender::new(schedule.map(Arc::new)),
            local: channels.local,
            ping_now: channels.ping_now,
            scheduler_wake: Notify::new(),
            render_wake: Notify::new(),
            rendered: watch::Sender::new(None),
            counters: channels.counters,
            fetcher: Fetcher::new(),
            rate: Mutex::new(RateWindow::default()),
            metrics: cantal::MetricsCache::new(cantal::METRICS_REUSE, cantal::METRICS_STALE),
            wanted: watch::Sender::new(None),
            persisted: Mutex::new(persisted),
            propagation: PropagationCounters::default(),
            settings,
        };
        node.refresh_local();
        node
    }

    pub fn state(&self) -> MutexGuard<'_, NodeState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn current(&self) -> Option<Arc<Schedule>> {
        self.schedule.borrow().clone()
    }

    pub fn is_leader(&self) -> bool {
        self.election.borrow().state == State::Leader
    }

    /// The leader's HTTP address (cantal's primary IP, our port), or None for self/unknown.
    pub fn peer_http(&self, id: &MachineId) -> Option<SocketAddr> {
        cantal::lock(&self.peers)
            .peers
            .get(id)
            .and_then(|peer| cantal::peer_addr(peer, self.settings.port))
    }

    /// Rebuilds what this node puts in its packets.
    pub fn refresh_local(&self) {
        let local = {
            let state = self.state();
            Local {
                schedule: self.current().map(|schedule| schedule.stamp.clone()),
                actions: actions::digest(&state.actions),
                frozen: state.frozen,
                errors: u32::try_from(state.errors.len()).unwrap_or(u32::MAX),
                failed_roles: state.failed_roles.iter().cloned().collect(),
            }
        };
        self.local.send_if_modified(|current| {
            let changed = *current != local;
            *current = local;
            changed
        });
    }

    pub fn set_error(&self, source: &str, error: Option<String>) {
        let changed = {
            let mut state = self.state();
            match error {
                Some(text) => state.errors.insert(source.to_owned(), text.clone()) != Some(text),
                None => state.errors.remove(source).is_some(),
            }
        };
        if changed {
            self.refresh_local();
        }
    }

    /// Makes `schedule` the one in force: rendering starts and the next Pong reports it.
    /// Storing it is [`Node::persist`]'s job, so the sync does not delay rendering or the
    /// push to followers.
    pub fn install(&self, schedule: Schedule) -> Arc<Schedule> {
        let schedule = Arc::new(schedule);
        self.put_in_force(&schedule, |_, _| true);
        schedule
    }

    /// [`Node::install`] for a schedule from the leader, unless the one in force has the same
    /// hash, or (with `keep_newer`, for pushes, which may arrive late) is newer from the same
    /// origin. A fetch is the leader's current answer and replaces anything else: a push and
    /// a fetch may both bring a schedule, in any order. True when it was put in force.
    pub fn install_new(&self, schedule: Schedule, keep_newer: bool) -> bool {
        self.put_in_force(&Arc::new(schedule), |current, new| {
            current.is_none_or(|current| {
                let newer_here = current.stamp.origin == new.stamp.origin
                    && current.stamp.timestamp > new.stamp.timestamp;
                current.stamp.hash != new.stamp.hash && !(keep_newer && newer_here)
            })
        })
    }

    fn put_in_force(
        &self,
        schedule: &Arc<Schedule>,
        wanted: impl FnOnce(Option<&Schedule>, &Schedule) -> bool,
    ) -> bool {
        let replaced = self.schedule.send_if_modified(|current| {
            let replace = wanted(current.as_deref(), schedule);
            if replace {
                *current = Some(Arc::clone(schedule));
            }
            replace
        });
        if replaced {
            self.state().remember(&schedule.stamp.hash);
            tracing::info!(hash = %schedule.stamp.hash, origin = %schedule.stamp.origin, "schedule in force");
            self.refresh_local();
        }
        replaced
    }

    /// Stores the schedule in force and the pending actions (each synced, then renamed into
    /// place) when they changed since the last call, then backs the schedule up. Calls are
    /// serialised and always write the newest state, so the files only move forward.
    pub fn persist(&self) {
        let mut persisted = self
            .persisted
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Actions first: an action leaves the pending set only after the schedule carrying
        // its effect is in force, so the schedule read next is at least that new, and
        // schedule.json is synced before an actions.json without the action.
        let actions = self.state().actions.clone();
        let schedule = self
            .current()
            .filter(|schedule| persisted.schedule.as_ref() != Some(&schedule.stamp.hash));
        if let Some(schedule) = &schedule {
            match self.storage.save_schedule(schedule) {
                Ok(()) => persisted.schedule = Some(schedule.stamp.hash.clone()),
                Err(err) => {
                    tracing::error!(error = %err, "cannot store schedule");
                    self.set_error("storage", Some(err.to_string()));
                }
            }
        }
        let digest = actions::digest(&actions);
        if persisted.actions.as_ref() != Some(&digest) {
            match self.storage.save_actions(&actions) {
                Ok(()) => persisted.actions = Some(digest),
                Err(err) => tracing::error!(error = %err, "cannot store actions"),
            }
        }
        if let Some(schedule) = schedule
            && let Err(err) = self.storage.backup_schedule(&schedule)
        {
            tracing::error!(error = %err, "cannot back up schedule");
            self.set_error("storage", Some(err.to_string()));
        }
    }

    /// [`Node::persist`] on a blocking thread; await the handle to know the state is stored.
    pub fn persist_soon(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let node = Arc::clone(self);
        tokio::task::spawn_blocking(move || node.persist())
    }

    /// [`Node::persist_soon`] once this node has rendered the schedule `hash`, or after
    /// [`STORE_AFTER_RENDER`]: the stores' syncs would otherwise compete with the rendered
    /// files' syncs on the disk while the new schedule is on its way to the files.
    pub fn persist_after_render(self: &Arc<Self>, hash: &str) -> tokio::task::JoinHandle<()> {
        let node = Arc::clone(self);
        let hash = hash.to_owned();
        let mut rendered = self.rendered.subscribe();
        tokio::spawn(async move {
            let done = rendered.wait_for(|rendered| rendered.as_deref() == Some(hash.as_str()));
            let _ = tokio::time::timeout(STORE_AFTER_RENDER, done).await;
            let _ = node.persist_soon().await;
        })
    }

    pub fn set_frozen(&self, frozen: bool) {
        let changed = {
            let mut state = self.state();
            let changed = state.frozen != frozen;
            state.frozen = frozen;
            changed
        };
        if changed {
            if let Err(err) = self.storage.save_frozen(frozen) {
                tracing::error!(error = %err, "cannot store frozen flag");
            }
            self.refresh_local();
            self.ping_now.notify_one();
        }
    }

    /// Registers an action on the leader, with `waiter` for the scheduler's reply; returns its
    /// id and the digest that contains it once the action is stored. The scheduler run it
    /// wakes goes on meanwhile: the run's own store of the pending actions comes after this
    /// one ([`Node::persist`]).
    pub async fn register_action(
        self: &Arc<Self>,
        action: Value,
        waiter: Option<oneshot::Sender<Option<Value>>>,
    ) -> (String, ActionDigest) {
        let (id, digest) = {
            let mut state = self.state();
            let id = actions::new_id(&state.actions, SystemTime::now());
            state.actions.insert(id.clone(), action);
            // With the action: the run may finish before the store below does.
            if let Some(waiter) = waiter {
                state.waiters.entry(id.clone()).or_default().push(waiter);
            }
            (id, actions::digest(&state.actions))
        };
        self.refresh_local();
        self.ping_now.notify_one();
        self.scheduler_wake.notify_one();
        let _ = self.persist_soon().await;
        (id, digest)
    }

    /// Whether a majority holds the pending set `digest` (self included).
    pub fn replicated(&self, digest: &ActionDigest) -> bool {
        let needed = self.view.borrow().needed;
        let holders = self
            .state()
            .peer_info
            .values()
            .filter(|info| info.actions.as_ref() == Some(digest))
            .count();
        holders + 1 >= needed
    }

    /// cantal's answer to the current schedule's `query_metrics` (or the default rules),
    /// reused for [`cantal::METRICS_REUSE`], then refreshed behind until
    /// [`cantal::METRICS_STALE`].
    pub async fn metrics(&self) -> (Value, Vec<String>) {
        let rules = self
            .current()
            .and_then(|schedule| schedule.data.get("query_metrics").cloned())
            .unwrap_or_else(cantal::default_metric_rules);
        self.metrics
            .query(&self.settings.cantal_socket, &rules)
            .await
    }

    /// Builds the scheduler input (spec §2.3).
    pub async fn scheduler_input(&self, extra_action: Option<Value>) -> Value {
        let (metrics, metrics_errors) = self.metrics().await;
        let current = self.current();
        let table = cantal::lock(&self.peers);
        let state = self.state();
        let mut parents: Vec<Value> = current
            .iter()
            .map(|schedule| schedule.data.clone())
            .collect();
        let mut seen: BTreeSet<String> = current
            .iter()
            .map(|schedule| schedule.stamp.hash.clone())
            .collect();
        for parent in &state.parents {
            if seen.insert(parent.stamp.hash.clone()) {
                parents.push(parent.data.clone());
            }
        }
        let mut actions: Map<String, Value> = state.actions.clone().into_iter().collect();
        if let Some(action) = extra_action {
            let id = actions::new_id(&state.actions, SystemTime::now());
            actions.insert(id, action);
        }
        let mut peers = Map::new();
        let now = crate::now_ms(SystemTime::now());
        peers.insert(
            self.id.to_string(),
            json!({
                "id": self.id.to_string(),
                "addr": null,
                "name": self.settings.name,
                "hostname": self.settings.hostname,
                "schedule": current.as_ref().map(|schedule| &schedule.stamp),
                "known_since": now,
                "last_report_direct": now,
                "errors": state.errors.len(),
                "state": "alive",
                "machine": state.inputs.machine,
            }),
        );
        for peer in table.peers.values() {
            let info = state.peer_info.get(&peer.id).cloned().unwrap_or_default();
            peers.insert(
                peer.id.to_string(),
                json!({
                    "id": peer.id.to_string(),
                    "addr": cantal::peer_addr(peer, self.settings.port).map(|addr| addr.to_string()),
                    "name": peer.name,
                    "hostname": peer.hostname,
                    "schedule": info.schedule,
                    "known_since": crate::now_ms(peer.known_since),
                    "last_report_direct": peer.last_report_direct.map(crate::now_ms),
                    "errors": info.errors,
                    "failed_roles": info.failed_roles,
                    "state": state_name(peer.state),
                    "machine": state.peer_machines.get(&peer.id).map(|(_, machine)| machine),
                }),
            );
        }
        let metrics_errors: Vec<Value> = metrics_errors.into_iter().map(Value::from).collect();
        json!({
            "now": now,
            "current_host": self.settings.hostname,
            "current_id": self.id.to_string(),
            "parents": parents,
            "actions": actions,
            "runtime": state.inputs.runtime,
            "peers": peers,
            "metrics": metrics,
            "metrics_errors": metrics_errors,
        })
    }

    /// Runs the scheduler on `input` on its own thread.
    pub async fn run_scheduler(
        &self,
        input: Value,
    ) -> Result<scheduler::Outcome, scheduler::Failure> {
        let dir = self.config.scheduler_dir();
        let limits = self.settings.limits;
        let run = tokio::task::spawn_blocking(move || scheduler::run(&dir, &input, &limits)).await;
        run.unwrap_or_else(|err| {
            Err(scheduler::Failure {
                error: scheduler::SchedulerError::Runtime(format!("scheduler thread died: {err}")),
                debug_log: String::new(),
                stats: Stats::default(),
            })
        })
    }
}

fn state_name(state: protocol::domain::PeerState) -> &'static str {
    match state {
        protocol::domain::PeerState::Alive => "alive",
        protocol::domain::PeerState::Suspect => "suspect",
        protocol::domain::PeerState::Dead => "dead",
    }
}

/// Consumes election reports.
pub async fn handle_reports(
    node: Arc<Node>,
    mut reports: tokio::sync::mpsc::UnboundedReceiver<Report>,
    shutdown: CancellationToken,
) {
    loop {
        let report = tokio::select! {
            () = shutdown.cancelled() => break,
            report = reports.recv() => match report {
                Some(report) => report,
                None => break,
            },
        };
        match report {
            Report::LeaderPing {
                leader,
                schedule,
                actions,
                frozen,
            } => {
                node.set_frozen(frozen);
                node.wanted.send_if_modified(|wanted| {
                    let next = Some((leader, schedule, actions));
                    let changed = *wanted != next;
                    *wanted = next;
                    changed
                });
            }
            Report::Pong {
                peer,
                schedule,
                errors,
                failed_roles,
                actions,
            } => {
                let foreign = {
                    let mut state = node.state();
                    state.peer_info.insert(
                        peer,
                        PeerInfo {
                            schedule: schedule.clone(),
                            errors,
                            failed_roles,
                            actions,
                        },
                    );
                    note_foreign(&mut state, peer, schedule)
                };
                if foreign {
                    node.scheduler_wake.notify_one();
                }
            }
            Report::Vote { peer, schedule } => {
                let mut state = node.state();
                if let Some(info) = state.peer_info.get_mut(&peer) {
                    info.schedule.clone_from(&schedule);
                }
                note_foreign(&mut state, peer, schedule);
            }
            Report::Election(Event::BecameLeader) => {
                tracing::info!(epoch = node.election.borrow().epoch, "became leader");
                node.scheduler_wake.notify_one();
            }
            Report::Election(Event::WonAgainst { loser, schedule }) => {
                tracing::info!(%loser, "won against another leader; merging its schedule");
                note_foreign(&mut node.state(), loser, schedule);
                node.scheduler_wake.notify_one();
            }
            Report::Election(Event::SteppedDown) => {
                tracing::warn!("stepped down");
            }
        }
    }
}

/// Remembers a stamp of another lineage; true when it is new.
fn note_foreign(state: &mut NodeState, peer: MachineId, stamp: Option<Stamp>) -> bool {
    let Some(stamp) = stamp else { return false };
    if state.is_known(&stamp.hash)
        || state.foreign.contains_key(&stamp.hash)
        || state
            .parents
            .iter()
            .any(|parent| parent.stamp.hash == stamp.hash)
    {
        return false;
    }
    state.foreign.insert(stamp.hash.clone(), (peer, stamp));
    true
}

/// Fetches the foreign schedules seen so far into `parents`, waiting at most `PARENT_WAIT`;
/// a late one is seen again in the next Pong and merged in a later run.
async fn collect_parents(node: &Node) {
    let foreign: Vec<(MachineId, Stamp)> = std::mem::take(&mut node.state().foreign)
        .into_values()
        .collect();
    let mut fetches = tokio::task::JoinSet::new();
    for (peer, stamp) in foreign {
        if let Some(addr) = node.peer_http(&peer) {
            let fetcher = node.fetcher.clone();
            fetches.spawn(async move { fetcher.schedule_by_hash(addr, &stamp).await });
        }
    }
    let deadline = Instant::now() + PARENT_WAIT;
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, fetches.join_next()).await {
        match joined {
            Ok(Ok(reply)) => {
                tracing::info!(hash = %reply.stamp.hash, "fetched a parent schedule");
                let mut state = node.state();
                if !state
                    .parents
                    .iter()
                    .any(|p| p.stamp.hash == reply.stamp.hash)
                {
                    state.parents.push(reply);
                }
            }
            Ok(Err(err)) => tracing::warn!(error = %err, "parent schedule not fetched"),
            Err(err) => tracing::warn!(error = %err, "parent fetch task failed"),
        }
    }
}

/// Fetches `machine/` metadata of live peers not fetched within `MACHINE_REFRESH`, waiting at
/// most `PARENT_WAIT` (a slow peer is asked again before the next run).
async fn refresh_machines(node: &Node) {
    let stale: Vec<(MachineId, SocketAddr)> = {
        let table = cantal::lock(&node.peers);
        let state = node.state();
        table
            .peers
            .values()
            .filter(|peer| peer.state != protocol::domain::PeerState::Dead)
            .filter(|peer| {
                state
                    .peer_machines
                    .get(&peer.id)
                    .is_none_or(|(at, _)| at.elapsed() >= MACHINE_REFRESH)
            })
            .filter_map(|peer| Some((peer.id, cantal::peer_addr(peer, node.settings.port)?)))
            .collect()
    };
    let mut fetches = tokio::task::JoinSet::new();
    for (id, addr) in stale {
        let fetcher = node.fetcher.clone();
        fetches.spawn(async move { (id, fetcher.machine(addr).await) });
    }
    let deadline = Instant::now() + PARENT_WAIT;
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, fetches.join_next()).await {
        if let Ok((id, Ok(machine))) = joined {
            node.state()
                .peer_machines
                .insert(id, (Instant::now(), machine));
        }
    }
}

/// The leader's scheduler: at once on becoming leader and on input changes, else every 5 s.
pub async fn scheduler_loop(node: Arc<Node>, shutdown: CancellationToken) {
    let mut election = node.election.clone();
    let mut view = node.view.clone();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = node.scheduler_wake.notified() => {}
            _ = election.changed() => {}
            // Peers' states are scheduler input too.
            _ = view.changed() => {}
            () = tokio::time::sleep(CADENCE) => {}
        }
        let status = election.borrow_and_update().clone();
        if status.state != State::Leader {
            continue;
        }
        // The metrics query runs alongside the fetches; `schedule_once` reuses its answer.
        tokio::join!(
            collect_parents(&node),
            refresh_machines(&node),
            node.metrics()
        );
        schedule_once(&node).await;
    }
}

/// One scheduler run on the leader, publishing the result unless frozen or unchanged.
pub async fn schedule_once(node: &Arc<Node>) {
    let started = std::time::Instant::now();
    let input = node.scheduler_input(None).await;
    let input_ready = started.elapsed();
    let used_actions: Vec<String> = input["actions"]
        .as_object()
        .map(|a| a.keys().cloned().collect())
        .unwrap_or_default();
    let used_parents: Vec<String> = node
        .state()
        .parents
        .iter()
        .map(|p| p.stamp.hash.clone())
        .collect();
    let result = node.run_scheduler(input.clone()).await;
    tracing::debug!(?input_ready, total = ?started.elapsed(), "scheduler run");
    if !node.is_leader() {
        return;
    }
    let now = crate::now_ms(SystemTime::now());
    let publish = {
        let mut state = node.state();
        state.scheduler.input = Some(input);
        state.scheduler.last_run = Some(now);
        match result {
            Err(failure) => {
                tracing::warn!(error = %failure.error, "scheduler failed; previous schedule kept");
                state.scheduler.debug_log = failure.debug_log;
                state.scheduler.stats = failure.stats;
                state.scheduler.error = Some(failure.error.to_string());
                state
                    .errors
                    .insert("scheduler".into(), failure.error.to_string());
                None
            }
            Ok(outcome) => {
                state.scheduler.debug_log = outcome.debug_log;
                state.scheduler.stats = outcome.stats;
                state.scheduler.error = None;
                state.errors.remove("scheduler");
                for id in &used_actions {
                    if let Some(waiters) = state.waiters.remove(id) {
                        for waiter in waiters {
                            let _ = waiter.send(outcome.replies.get(id).cloned());
                        }
                    }
                }
                if state.frozen {
                    state.scheduler.plan = Some(outcome.data);
                    None
                } else {
                    state.scheduler.plan = None;
                    state
                        .parents
                        .retain(|parent| !used_parents.contains(&parent.stamp.hash));
                    let current_hash = node.current().map(|s| s.stamp.hash.clone());
                    let hash = crate::schedule::hash(&outcome.data);
                    Some((current_hash != Some(hash), outcome.data))
                }
            }
        }
    };
    match publish {
        Some((changed, data)) => {
            // The actions were seen: the published (or the unchanged) schedule now carries
            // their effect. They leave the pending set after that schedule is in force, so a
            // crash keeps a consumed action on disk rather than losing it (spec: an action
            // is removed only by a published schedule; `persist` stores in that order).
            let schedule = changed.then(|| node.install(Schedule::new(data, now, node.id)));
            {
                let mut state = node.state();
                for id in &used_actions {
                    state.actions.remove(id);
                }
            }
            node.refresh_local();
            let stored = match &schedule {
                Some(schedule) => node.persist_after_render(&schedule.stamp.hash),
                None => node.persist_soon(),
            };
            if let Some(schedule) = schedule {
                propagation::push(node, &schedule).await;
            }
            // After the pushes: a follower that took the schedule sees its own hash in the
            // Ping and does not fetch it.
            node.ping_now.notify_one();
            let _ = stored.await;
        }
        None => node.refresh_local(),
    }
}

/// Publishes a backup's data as the schedule in force and freezes the scheduler.
pub async fn rollback(node: &Arc<Node>, name: &str) -> Option<Arc<Schedule>> {
    let backup = node.storage.backup(name)?;
    let mut schedule = Schedule::new(backup.data, crate::now_ms(SystemTime::now()), node.id);
    schedule.stamp.rollback_of = Some(name.to_owned());
    node.set_frozen(true);
    let schedule = node.install(schedule);
    let stored = node.persist_soon();
    propagation::push(node, &schedule).await;
    node.ping_now.notify_one();
    let _ = stored.await;
    Some(schedule)
}

/// A follower's fetches: the leader's schedule when the hashes differ, its pending actions
/// when the digests differ; retried after 100–300 ms.
pub async fn follower_loop(node: Arc<Node>, shutdown: CancellationToken) {
    let mut wanted = node.wanted.subscribe();
    let mut retry = false;
    let mut rng = StdRng::seed_from_u64(
        crate::now_ms(SystemTime::now())
            ^ u64::from_le_bytes(node.id.as_bytes()[..8].try_into().unwrap_or_default()),
    );
    loop {
        if !retry {
            tokio::select! {
                () = shutdown.cancelled() => break,
                changed = wanted.changed() => if changed.is_err() { break },
            }
        } else {
            let pause = Duration::from_millis(rng.random_range(100..=300));
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        retry = false;
        let Some((leader, stamp, digest)) = wanted.borrow_and_update().clone() else {
            continue;
        };
        if node.election.borrow().leader != Some(leader) || leader == node.id {
            continue;
        }
        let Some(addr) = node.peer_http(&leader) else {
            node.state().fetch_state =
                format!("leader {leader} has no address in cantal's peer list");
            retry = true;
            continue;
        };
        let ours = node.current().map(|schedule| schedule.stamp.hash.clone());
        if let Some(stamp) = stamp.filter(|stamp| Some(&stamp.hash) != ours.as_ref()) {
            node.state().fetch_state = "fetching".into();
            match node.fetcher.schedule(addr).await {
                Ok(reply) if reply.schedule.stamp.origin != leader => {
                    node.state().fetch_state = format!(
                        "schedule {} has origin {}, not leader {leader}; discarded",
                        reply.schedule.stamp.hash, reply.schedule.stamp.origin
                    );
                    retry = true;
                }
                Ok(reply) => {
                    node.propagation.fetched.fetch_add(1, Ordering::Relaxed);
                    node.state().fetch_state = "ok".into();
                    propagation::take(&node, reply.schedule, reply.pending_actions, false);
                    let _ = node.persist_soon().await;
                    retry = reply_is_older(&stamp, node.current().as_deref());
                }
                Err(err) => {
                    node.state().fetch_state = err.to_string();
                    retry = true;
                }
            }
            continue;
        }
        if actions::digest(&node.state().actions) != digest {
            match node.fetcher.pending_actions(addr).await {
                Ok(actions) => {
                    node.state().actions = actions;
                    // Stored before the Pong reports it: `replicated` means held on disk.
                    let _ = node.persist_soon().await;
                    node.refresh_local();
                }
                Err(err) => {
                    node.state().fetch_state = err.to_string();
                    retry = true;
                }
            }
        }
    }
}

/// The leader answered with an older schedule than its Ping named: try again.
fn reply_is_older(wanted: &Stamp, got: Option<&Schedule>) -> bool {
    got.is_none_or(|got| got.stamp.timestamp < wanted.timestamp)
}

/// Re-reads the config dir after 200 ms of quiet following a change.
pub async fn watch_config(node: Arc<Node>, shutdown: CancellationToken) {
    use notify::Watcher;
    let (sender, mut events) = tokio::sync::mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reads are not changes: every scheduler run opens its `main.lua`, every render the
        // templates, so counting reads made the leader reload and reschedule every ~200 ms.
        if event.is_ok_and(|event| !event.kind.is_access()) {
            let _ = sender.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(watcher) => watcher,
        Err(err) => {
            node.set_error(
                "config",
                Some(format!(
                    "cannot watch {}: {err}",
                    node.config.root().display()
                )),
            );
            return;
        }
    };
    if let Err(err) = watcher.watch(node.config.root(), notify::RecursiveMode::Recursive) {
        node.set_error(
            "config",
            Some(format!(
                "cannot watch {}: {err}",
                node.config.root().display()
            )),
        );
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            event = events.recv() => if event.is_none() { break },
        }
        // Debounce: wait for 200 ms without events.
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(200)) => break,
                event = events.recv() => if event.is_none() { return },
            }
        }
        let errors = {
            let mut state = node.state();
            let config = node.config.clone();
            state.inputs.reload(&config);
            state.inputs.errors.clone()
        };
        let text =
            (!errors.is_empty()).then(|| errors.values().cloned().collect::<Vec<_>>().join("; "));
        node.set_error("config", text);
        // Runtime files, machine files or the scheduler itself may have changed.
        node.scheduler_wake.notify_one();
    }
}
