//! What nodes tell each other about themselves, carried as foca custom broadcasts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use foca::Invalidates;
use serde::{Deserialize, Serialize};
use tokio::time::{Duration, Instant};

use super::identity::NodeId;

/// Longest host or node name announced.
pub const MAX_NAME: usize = 255;
/// Most addresses announced.
pub const MAX_ADDRESSES: usize = 16;
/// How long an info outlives not being a member: a node's announcement often arrives before
/// the update that makes it a member, and dropping it then would leave the name unknown
/// until the next periodic announcement.
pub const NON_MEMBER_GRACE: Duration = Duration::from_secs(10);

/// A node's self-description: names, addresses and its report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `node` and `version` come first: receivers decode just them to skip known infos.
    pub node: NodeId,
    /// Grows with each announcement of one run; newer replaces older.
    pub version: u64,
    pub timestamp_ms: u64,
    pub hostname: String,
    pub name: String,
    pub addresses: Vec<SocketAddr>,
    /// Peers the node knows.
    pub peers: u32,
    pub has_remote: bool,
}

impl NodeInfo {
    /// Cuts names and address lists to the announced limits.
    pub fn bounded(mut self) -> Self {
        truncate(&mut self.hostname);
        truncate(&mut self.name);
        self.addresses.truncate(MAX_ADDRESSES);
        self
    }

    /// Whether both describe the same thing (ignoring version and time).
    pub fn same_content(&self, other: &Self) -> bool {
        self.hostname == other.hostname
            && self.name == other.name
            && self.addresses == other.addresses
            && self.peers == other.peers
            && self.has_remote == other.has_remote
    }

    fn key(&self) -> InfoKey {
        InfoKey {
            addr: self.node.addr,
            order: (self.node.boot_ms, self.node.nonce, self.version),
        }
    }
}

fn truncate(text: &mut String) {
    if text.len() > MAX_NAME {
        let mut end = MAX_NAME;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// Identifies an announcement; a newer one from the same address replaces it in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoKey {
    addr: SocketAddr,
    order: (u64, u64, u64),
}

impl Invalidates for InfoKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.addr == other.addr && self.order > other.order
    }
}

/// The latest info per address, shared between foca's handler and the gossip loop.
#[derive(Debug, Clone, Default)]
pub struct InfoStore {
    inner: Arc<Mutex<InfoMap>>,
}

#[derive(Debug, Default)]
struct InfoMap {
    /// The info and when it arrived.
    infos: HashMap<SocketAddr, (NodeInfo, Instant)>,
    changed: bool,
    capacity: usize,
}

impl InfoStore {
    /// A store that keeps at most `capacity` addresses.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(InfoMap {
                capacity,
                ..InfoMap::default()
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InfoMap> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn get(&self, addr: &SocketAddr) -> Option<NodeInfo> {
        self.lock().infos.get(addr).map(|(info, _)| info.clone())
    }

    /// Whether anything arrived since the last call.
    pub fn take_changed(&self) -> bool {
        std::mem::take(&mut self.lock().changed)
    }

    /// Forgets addresses no member has (after [`NON_MEMBER_GRACE`]).
    pub fn retain(&self, is_member: impl Fn(&SocketAddr) -> bool) {
        let now = Instant::now();
        self.lock().infos.retain(|addr, (_, arrived)| {
            is_member(addr) || now.duration_since(*arrived) < NON_MEMBER_GRACE
        });
    }
}

impl InfoStore {
    /// Whether an announcement of `node` at `version` is newer than what the store has.
    pub(super) fn is_news(&self, node: &NodeId, version: u64) -> bool {
        self.lock()
            .infos
            .get(&node.addr)
            .is_none_or(|(known, _)| known.key().order < (node.boot_ms, node.nonce, version))
    }

    /// Keeps `info` if it is newer than what the store has and there is room; its key if so.
    pub(super) fn accept(&self, info: NodeInfo) -> Option<InfoKey> {
        let key = info.key();
        let mut map = self.lock();
        if let Some((known, _)) = map.infos.get(&info.node.addr)
            && known.key().order >= key.order
        {
            return None;
        }
        if !map.infos.contains_key(&info.node.addr) && map.infos.len() >= map.capacity {
            // A flood of fake announcements must not grow memory; real nodes re-announce.
            return None;
        }
        map.infos
            .insert(info.node.addr, (info.bounded(), Instant::now()));
        map.changed = true;
        Some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(version: u64) -> NodeInfo {
        NodeInfo {
            node: NodeId::seed("10.0.0.1:22682".parse().unwrap()),
            version,
            timestamp_ms: 1,
            hostname: "h".repeat(300),
            name: "n".to_owned(),
            addresses: vec!["10.0.0.1:22682".parse().unwrap(); 20],
            peers: 2,
            has_remote: true,
        }
    }

    #[test]
    fn newer_versions_replace_older() {
        let store = InfoStore::new(10);
        let first = store.accept(info(1)).unwrap();
        assert!(store.take_changed());
        assert!(!store.take_changed());
        assert!(!store.is_news(&info(1).node, 1));
        assert_eq!(store.accept(info(1)), None);
        assert_eq!(store.accept(info(0)), None);
        assert!(store.is_news(&info(2).node, 2));
        let second = store.accept(info(2)).unwrap();
        assert!(second.invalidates(&first));
        assert!(!first.invalidates(&second));
        let stored = store.get(&"10.0.0.1:22682".parse().unwrap()).unwrap();
        assert_eq!(stored.version, 2);
        assert_eq!(stored.hostname.len(), MAX_NAME);
        assert_eq!(stored.addresses.len(), MAX_ADDRESSES);
    }

    #[test]
    fn capacity_bounds_the_store() {
        let store = InfoStore::new(1);
        let mut other = info(1);
        other.node.addr = "10.0.0.2:22682".parse().unwrap();
        assert!(store.accept(info(1)).is_some());
        assert!(store.accept(other).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn infos_of_non_members_wait_for_the_membership() {
        let store = InfoStore::new(10);
        let addr = "10.0.0.1:22682".parse().unwrap();
        store.accept(info(1));
        store.retain(|_| false);
        assert!(
            store.get(&addr).is_some(),
            "dropped before its member arrived"
        );
        tokio::time::advance(NON_MEMBER_GRACE).await;
        store.retain(|a| *a == addr);
        assert!(store.get(&addr).is_some(), "a member's info is kept");
        store.retain(|_| false);
        assert!(store.get(&addr).is_none(), "kept past the grace");
    }
}
