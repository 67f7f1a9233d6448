//! The peer table as users see it: one entry per machine id, built from foca's members, their
//! announcements and probe statistics; every change is published as a [`PeerEvent`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use protocol::domain::{MachineId, Peer, PeerEvent, PeerState, Report};
use serde_json::{Value as Json, json};
use tokio::sync::broadcast;

use super::identity::NodeId;
use super::node_info::{InfoStore, NodeInfo};

/// Events a slow subscriber may fall behind by before its stream is ended.
const EVENT_BUFFER: usize = 4096;

/// Direct traffic with one member address.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeStats {
    /// When and where the last probe was sent.
    pub last_probe: Option<(u64, SocketAddr)>,
    pub probes_sent: u64,
    pub pings_received: u64,
    pub pongs_received: u64,
    /// Address, time and round trip of the last answered probe.
    pub last_roundtrip: Option<(SocketAddr, u64, Duration)>,
    /// Last time the member was heard directly (probe or probe ack).
    pub last_report_direct: Option<u64>,
}

/// One peer.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerEntry {
    pub node: NodeId,
    pub known_since_ms: u64,
    pub state: PeerState,
    pub state_since_ms: u64,
    pub incarnation: u16,
    pub info: Option<NodeInfo>,
    pub stats: ProbeStats,
}

fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

pub fn state_name(state: PeerState) -> &'static str {
    match state {
        PeerState::Alive => "alive",
        PeerState::Suspect => "suspect",
        PeerState::Dead => "dead",
    }
}

impl PeerEntry {
    pub fn id(&self) -> MachineId {
        self.node.machine_id()
    }

    pub fn to_domain(&self) -> Peer {
        Peer {
            id: self.id(),
            name: self
                .info
                .as_ref()
                .map(|i| i.name.clone())
                .unwrap_or_default(),
            hostname: self
                .info
                .as_ref()
                .map(|i| i.hostname.clone())
                .unwrap_or_default(),
            primary_addr: self.node.addr.to_string(),
            addresses: self.addresses(),
            state: self.state,
            state_since: from_ms(self.state_since_ms),
            known_since: from_ms(self.known_since_ms),
            last_report_direct: self.stats.last_report_direct.map(from_ms),
            rtt: self.stats.last_roundtrip.map(|(_, _, rtt)| rtt),
            report: self.info.as_ref().map(|i| Report {
                timestamp: from_ms(i.timestamp_ms),
                peers: i.peers,
                has_remote: i.has_remote,
            }),
        }
    }

    fn addresses(&self) -> Vec<String> {
        match &self.info {
            Some(info) if !info.addresses.is_empty() => {
                info.addresses.iter().map(ToString::to_string).collect()
            }
            _ => vec![self.node.addr.to_string()],
        }
    }

    /// The entry of `/all_peers.json`: the original's fields plus `state`, `state_since` and
    /// `incarnation`.
    pub fn to_json(&self) -> Json {
        let stats = &self.stats;
        json!({
            "id": self.id().to_string(),
            "known_since": self.known_since_ms,
            "primary_addr": self.node.addr.to_string(),
            "addresses": self.addresses(),
            "hostname": self.info.as_ref().map(|i| &i.hostname),
            "name": self.info.as_ref().map(|i| &i.name),
            "last_probe": stats.last_probe.map(|(ts, addr)| json!([ts, addr.to_string()])),
            "probes_sent": stats.probes_sent,
            "pings_received": stats.pings_received,
            "pongs_received": stats.pongs_received,
            "last_roundtrip": stats.last_roundtrip.map(|(addr, ts, rtt)| {
                json!([addr.to_string(), ts, u64::try_from(rtt.as_millis()).unwrap_or(u64::MAX)])
            }),
            "random_peer_roundtrip": null,
            "report": self.info.as_ref().map(|i| {
                json!([i.timestamp_ms, {"peers": i.peers, "has_remote": i.has_remote}])
            }),
            "last_report_direct": stats.last_report_direct,
            "state": state_name(self.state),
            "state_since": self.state_since_ms,
            "incarnation": self.incarnation,
        })
    }
}

/// Another host announcing this host's machine id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub addr: SocketAddr,
    pub hostname: Option<String>,
    pub since_ms: u64,
}

/// A member as foca sees it, the input of [`PeerTable::reconcile`].
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub node: NodeId,
    pub state: PeerState,
    pub incarnation: u16,
}

/// Peers by machine id.
#[derive(Debug)]
pub struct PeerTable {
    entries: BTreeMap<MachineId, PeerEntry>,
    max_peers: usize,
    pub conflict: Option<Conflict>,
}

impl PeerTable {
    pub fn new(max_peers: usize) -> Self {
        Self {
            entries: BTreeMap::new(),
            max_peers: max_peers.max(1),
            conflict: None,
        }
    }

    pub fn entries(&self) -> impl Iterator<Item = &PeerEntry> {
        self.entries.values()
    }

    pub fn get(&self, id: &MachineId) -> Option<&PeerEntry> {
        self.entries.get(id)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of peers per state: (alive, suspect, dead).
    pub fn counts(&self) -> (usize, usize, usize) {
        self.entries
            .values()
            .fold((0, 0, 0), |(a, s, d), e| match e.state {
                PeerState::Alive => (a + 1, s, d),
                PeerState::Suspect => (a, s + 1, d),
                PeerState::Dead => (a, s, d + 1),
            })
    }

    /// Brings the table in line with foca's members (one per machine id: the active one, else
    /// the newest), recording each change in `events`.
    pub fn reconcile(
        &mut self,
        members: impl IntoIterator<Item = Member>,
        infos: &InfoStore,
        refresh_infos: bool,
        stats: &HashMap<SocketAddr, ProbeStats>,
        now_ms: u64,
        events: &mut Vec<PeerEvent>,
    ) {
        let mut desired: BTreeMap<MachineId, Member> = BTreeMap::new();
        for member in members {
            let id = member.node.machine_id();
            match desired.get(&id) {
                Some(current) if !prefer(&member, current, self.entries.get(&id)) => {}
                _ => {
                    desired.insert(id, member);
                }
            }
        }
        let gone: Vec<MachineId> = self
            .entries
            .keys()
            .filter(|id| !desired.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            self.entries.remove(&id);
            events.push(PeerEvent::Removed(id));
        }
        for (id, member) in desired {
            // Infos change rarely; looking them up clones them, so only when they may differ.
            let known = self.entries.get(&id);
            let lookup = refresh_infos
                || known.is_none_or(|entry| entry.info.is_none() || entry.node != member.node);
            let info = lookup
                .then(|| infos.get(&member.node.addr))
                .flatten()
                .filter(|info| info.node.same_run(&member.node));
            let stats = stats.get(&member.node.addr).cloned().unwrap_or_default();
            match self.entries.get_mut(&id) {
                Some(entry) => {
                    let mut updated = entry.node != member.node
                        || match (&entry.info, &info) {
                            (Some(old), Some(new)) => !old.same_content(new),
                            (None, Some(_)) => true,
                            (_, None) => false,
                        };
                    if entry.state != member.state {
                        entry.state = member.state;
                        entry.state_since_ms = now_ms;
                        events.push(PeerEvent::StateChanged {
                            id,
                            state: member.state,
                            since: from_ms(now_ms),
                        });
                    }
                    updated |= entry.node.addr != member.node.addr;
                    entry.node = member.node;
                    entry.incarnation = member.incarnation;
                    if info.is_some() {
                        entry.info = info;
                    }
                    entry.stats = stats;
                    if updated {
                        events.push(PeerEvent::Updated(entry.to_domain()));
                    }
                }
                None => {
                    // A full table makes room for a live newcomer only; a dead one replacing
                    // another dead one would churn the table at every step of a flood.
                    if self.entries.len() >= self.max_peers
                        && (member.state == PeerState::Dead || !self.evict_oldest_dead(events))
                    {
                        continue;
                    }
                    let entry = PeerEntry {
                        node: member.node,
                        known_since_ms: now_ms,
                        state: member.state,
                        state_since_ms: now_ms,
                        incarnation: member.incarnation,
                        info,
                        stats,
                    };
                    events.push(PeerEvent::Joined(entry.to_domain()));
                    self.entries.insert(id, entry);
                }
            }
        }
    }

    /// Copies probe statistics into the entries, by member address.
    pub fn update_stats(&mut self, stats: &HashMap<SocketAddr, ProbeStats>) {
        for entry in self.entries.values_mut() {
            if let Some(stats) = stats.get(&entry.node.addr) {
                entry.stats.clone_from(stats);
            }
        }
    }

    fn evict_oldest_dead(&mut self, events: &mut Vec<PeerEvent>) -> bool {
        let oldest = self
            .entries
            .iter()
            .filter(|(_, e)| e.state == PeerState::Dead)
            .min_by_key(|(_, e)| e.state_since_ms)
            .map(|(id, _)| *id);
        match oldest {
            Some(id) => {
                self.entries.remove(&id);
                events.push(PeerEvent::Removed(id));
                true
            }
            None => false,
        }
    }
}

/// Whether `candidate` should represent its machine id instead of `current`: active members
/// beat dead ones, the one already shown beats a newcomer, then the newer identity wins.
fn prefer(candidate: &Member, current: &Member, shown: Option<&PeerEntry>) -> bool {
    let active = |m: &Member| m.state != PeerState::Dead;
    if active(candidate) != active(current) {
        return active(candidate);
    }
    if let Some(shown) = shown {
        let is_shown = |m: &Member| m.node.addr == shown.node.addr;
        if is_shown(candidate) != is_shown(current) {
            return is_shown(candidate);
        }
    }
    (
        candidate.node.boot_ms,
        candidate.node.generation,
        candidate.node.nonce,
    ) > (
        current.node.boot_ms,
        current.node.generation,
        current.node.nonce,
    )
}

/// The table shared with the APIs, and the stream of its changes.
#[derive(Debug)]
pub struct Peers {
    table: Mutex<PeerTable>,
    /// Events are shared: the channel allocates all its slots at once, and a slot holding a
    /// whole event made the buffer about 1 MB.
    events: broadcast::Sender<Arc<PeerEvent>>,
}

impl Peers {
    pub fn new(max_peers: usize) -> Self {
        Self {
            table: Mutex::new(PeerTable::new(max_peers)),
            events: broadcast::channel(EVENT_BUFFER).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PeerTable> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `read` on the table.
    pub fn with<R>(&self, read: impl FnOnce(&PeerTable) -> R) -> R {
        read(&self.lock())
    }

    /// The table now and every change after it, with nothing missed in between.
    pub fn subscribe(&self) -> (Vec<Peer>, broadcast::Receiver<Arc<PeerEvent>>) {
        let table = self.lock();
        let receiver = self.events.subscribe();
        (
            table.entries().map(PeerEntry::to_domain).collect(),
            receiver,
        )
    }

    /// Changes the table and publishes what changed, under one lock so subscribers see every
    /// event exactly once after their snapshot.
    pub fn update(&self, change: impl FnOnce(&mut PeerTable, &mut Vec<PeerEvent>)) {
        let mut table = self.lock();
        let mut events = Vec::new();
        change(&mut table, &mut events);
        for event in events {
            // No subscribers is fine.
            let _ = self.events.send(Arc::new(event));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u8, boot_ms: u64) -> NodeId {
        NodeId {
            addr: SocketAddr::from(([10, 0, 0, n], 22682)),
            machine_id: [n; 16],
            boot_ms,
            nonce: 1,
            generation: 0,
        }
    }

    fn member(node: NodeId, state: PeerState) -> Member {
        Member {
            node,
            state,
            incarnation: 0,
        }
    }

    fn reconcile(table: &mut PeerTable, members: Vec<Member>, now: u64) -> Vec<PeerEvent> {
        let mut events = Vec::new();
        table.reconcile(
            members,
            &InfoStore::new(10),
            true,
            &HashMap::new(),
            now,
            &mut events,
        );
        events
    }

    #[test]
    fn joins_state_changes_and_removals() {
        let mut table = PeerTable::new(10);
        let events = reconcile(&mut table, vec![member(node(1, 1), PeerState::Alive)], 100);
        assert!(matches!(&events[..], [PeerEvent::Joined(p)] if p.state == PeerState::Alive));
        assert!(reconcile(&mut table, vec![member(node(1, 1), PeerState::Alive)], 150).is_empty());
        let events = reconcile(
            &mut table,
            vec![member(node(1, 1), PeerState::Suspect)],
            200,
        );
        assert!(matches!(
            &events[..],
            [PeerEvent::StateChanged {
                state: PeerState::Suspect,
                ..
            }]
        ));
        let entry = table.entries().next().unwrap();
        assert_eq!((entry.known_since_ms, entry.state_since_ms), (100, 200));
        let events = reconcile(&mut table, vec![], 300);
        assert!(matches!(&events[..], [PeerEvent::Removed(_)]));
        assert!(table.is_empty());
    }

    #[test]
    fn restarted_node_replaces_its_dead_self() {
        let mut table = PeerTable::new(10);
        reconcile(&mut table, vec![member(node(1, 1), PeerState::Alive)], 100);
        let events = reconcile(
            &mut table,
            vec![
                member(node(1, 1), PeerState::Dead),
                member(node(1, 2), PeerState::Alive),
            ],
            200,
        );
        assert!(matches!(&events[..], [PeerEvent::Updated(_)]), "{events:?}");
        let entry = table.entries().next().unwrap();
        assert_eq!(entry.node.boot_ms, 2);
        assert_eq!(entry.state, PeerState::Alive);
    }

    #[test]
    fn cap_forgets_oldest_dead_first() {
        let mut table = PeerTable::new(2);
        reconcile(
            &mut table,
            vec![
                member(node(1, 1), PeerState::Dead),
                member(node(2, 1), PeerState::Alive),
            ],
            100,
        );
        let events = reconcile(
            &mut table,
            vec![
                member(node(1, 1), PeerState::Dead),
                member(node(2, 1), PeerState::Alive),
                member(node(3, 1), PeerState::Alive),
                member(node(4, 1), PeerState::Alive),
            ],
            200,
        );
        assert_eq!(table.len(), 2);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, PeerEvent::Removed(id) if *id == node(1, 1).machine_id()))
        );
        assert_eq!(table.counts(), (2, 0, 0));
    }

    #[test]
    fn json_has_the_original_fields() {
        let mut table = PeerTable::new(10);
        reconcile(&mut table, vec![member(node(2, 1), PeerState::Alive)], 100);
        let json = table.entries().next().unwrap().to_json();
        for field in [
            "id",
            "known_since",
            "primary_addr",
            "addresses",
            "hostname",
            "name",
            "last_probe",
            "probes_sent",
            "pings_received",
            "pongs_received",
            "last_roundtrip",
            "random_peer_roundtrip",
            "report",
            "last_report_direct",
            "state",
            "state_since",
            "incarnation",
        ] {
            assert!(json.get(field).is_some(), "{field} missing");
        }
        assert_eq!(json["id"], "02".repeat(16));
        assert_eq!(json["state"], "alive");
        assert_eq!(json["addresses"], json!(["10.0.0.2:22682"]));
    }

    #[test]
    fn subscribers_get_snapshot_then_events() {
        let peers = Peers::new(10);
        peers.update(|table, events| {
            table.reconcile(
                vec![member(node(1, 1), PeerState::Alive)],
                &InfoStore::new(10),
                true,
                &HashMap::new(),
                1,
                events,
            );
        });
        let (snapshot, mut rx) = peers.subscribe();
        assert_eq!(snapshot.len(), 1);
        peers.update(|table, events| {
            table.reconcile(
                vec![],
                &InfoStore::new(10),
                true,
                &HashMap::new(),
                2,
                events,
            );
        });
        assert!(matches!(
            rx.try_recv().as_deref(),
            Ok(PeerEvent::Removed(_))
        ));
    }
}
