//! Lifeguard's suspicion shortening: the more members independently suspect a node, the
//! sooner it is declared dead.
//!
//! foca starts a suspicion on the node whose probe failed and times it with a fixed
//! `suspect_to_down_after`. A failed probe of a member that is already suspect is
//! independent evidence, and several of them within a suspicion mean the member is very
//! likely gone rather than behind one lossy link. So each node that fails a probe says so
//! (a [`Suspicion`] broadcast), every node counts the distinct suspecters, and the timeout
//! shrinks from the spec's `4 s × max(1, log10 N)` towards half of it as confirmations
//! arrive, as in Lifeguard (Dadgar et al., 2018): by `ln(c + 1) / ln(K + 1)` of the
//! difference after `c` of `K` expected confirmations.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use foca::Invalidates;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::identity::NodeId;

/// Confirmations that bring a suspicion down to its shortest timeout (Lifeguard's K; the
/// value memberlist derives from its default suspicion multiplier).
pub const EXPECTED_CONFIRMATIONS: usize = 2;
/// The shortest timeout, as a fraction of the unconfirmed one.
pub const SHORTEST_FRACTION: f64 = 0.5;
/// Suspecters remembered per member: more than `K + 1` change nothing.
const MAX_SUSPECTERS: usize = 8;
/// How long a member's confirmations are kept when nothing about it changes: they may
/// arrive before the update that makes the member suspect here.
pub const MEMORY: Duration = Duration::from_secs(60);

/// `by`'s probe of `suspect` (at `incarnation`) failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspicion {
    pub suspect: NodeId,
    pub incarnation: u16,
    pub by: NodeId,
}

impl Suspicion {
    pub fn key(&self) -> SuspicionKey {
        SuspicionKey(self.clone())
    }
}

/// Identifies a suspecter's broadcast; one about a newer incarnation replaces it in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuspicionKey(Suspicion);

impl Invalidates for SuspicionKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.0.suspect == other.0.suspect
            && self.0.by == other.0.by
            && self.0.incarnation > other.0.incarnation
    }
}

/// How long a suspicion lasts with `confirmations` suspecters beyond the first, in a cluster
/// of `cluster_size` nodes, when unconfirmed it lasts `base`.
///
/// Below `K + 2` nodes the `K` confirmations cannot all happen, and the timeout stays `base`.
pub fn timeout(base: Duration, confirmations: usize, cluster_size: usize) -> Duration {
    let expected = EXPECTED_CONFIRMATIONS;
    if cluster_size < expected + 2 || confirmations == 0 {
        return base;
    }
    let progress = ((confirmations.min(expected) + 1) as f64).ln() / ((expected + 1) as f64).ln();
    base.mul_f64(1.0 - (1.0 - SHORTEST_FRACTION) * progress)
}

/// Who suspects which member, shared between foca's broadcast handler and the gossip loop.
#[derive(Debug, Clone)]
pub struct Confirmations {
    inner: Arc<Mutex<ConfirmationMap>>,
}

#[derive(Debug)]
struct ConfirmationMap {
    suspects: HashMap<NodeId, Suspecters>,
    capacity: usize,
}

#[derive(Debug)]
struct Suspecters {
    incarnation: u16,
    by: Vec<NodeId>,
    updated: Instant,
}

impl Confirmations {
    /// A store that tracks at most `capacity` suspects.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(ConfirmationMap {
                suspects: HashMap::new(),
                capacity,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConfirmationMap> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts `suspicion`; its key when it is news (worth passing on).
    pub fn add(&self, suspicion: Suspicion) -> Option<SuspicionKey> {
        if suspicion.by == suspicion.suspect {
            return None;
        }
        let mut map = self.lock();
        let now = Instant::now();
        let room = map.suspects.len() < map.capacity;
        match map.suspects.get_mut(&suspicion.suspect) {
            Some(known) if known.incarnation > suspicion.incarnation => return None,
            Some(known) if known.incarnation == suspicion.incarnation => {
                if known.by.contains(&suspicion.by) || known.by.len() >= MAX_SUSPECTERS {
                    return None;
                }
                known.by.push(suspicion.by.clone());
                known.updated = now;
            }
            Some(known) => {
                *known = Suspecters {
                    incarnation: suspicion.incarnation,
                    by: vec![suspicion.by.clone()],
                    updated: now,
                };
            }
            // Made-up suspects must not grow memory; real ones are counted again on the
            // next failed probe.
            None if !room => return None,
            None => {
                map.suspects.insert(
                    suspicion.suspect.clone(),
                    Suspecters {
                        incarnation: suspicion.incarnation,
                        by: vec![suspicion.by.clone()],
                        updated: now,
                    },
                );
            }
        }
        Some(suspicion.key())
    }

    /// How many distinct nodes suspect `suspect` at `incarnation`, and whether `own` is one.
    pub fn suspecters(&self, suspect: &NodeId, incarnation: u16, own: &NodeId) -> (usize, bool) {
        self.lock()
            .suspects
            .get(suspect)
            .filter(|known| known.incarnation == incarnation)
            .map_or((0, false), |known| (known.by.len(), known.by.contains(own)))
    }

    /// Forgets suspects for which `keep` is false once [`MEMORY`] passed since their last
    /// confirmation.
    pub fn retain(&self, keep: impl Fn(&NodeId) -> bool) {
        let now = Instant::now();
        self.lock()
            .suspects
            .retain(|suspect, known| keep(suspect) || now.duration_since(known.updated) < MEMORY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: u8) -> NodeId {
        NodeId::seed(std::net::SocketAddr::from(([10, 0, 0, i], 22682)))
    }

    fn suspicion(suspect: u8, incarnation: u16, by: u8) -> Suspicion {
        Suspicion {
            suspect: node(suspect),
            incarnation,
            by: node(by),
        }
    }

    #[test]
    fn confirmations_shorten_the_timeout_to_half() {
        let base = Duration::from_secs(4);
        assert_eq!(timeout(base, 0, 10), base);
        let one = timeout(base, 1, 10);
        assert!(one < base && one > base / 2, "{one:?}");
        assert_eq!(timeout(base, 2, 10), base / 2);
        assert_eq!(timeout(base, 5, 10), base / 2);
        // Three nodes: two survivors cannot give two confirmations.
        assert_eq!(timeout(base, 1, 3), base);
        assert_eq!(timeout(base, 2, 4), base / 2);
    }

    #[tokio::test(start_paused = true)]
    async fn distinct_suspecters_of_one_incarnation_count() {
        let store = Confirmations::new(10);
        assert!(store.add(suspicion(1, 0, 2)).is_some());
        assert!(
            store.add(suspicion(1, 0, 2)).is_none(),
            "same suspecter twice"
        );
        assert!(store.add(suspicion(1, 0, 3)).is_some());
        assert_eq!(store.suspecters(&node(1), 0, &node(3)), (2, true));
        assert_eq!(store.suspecters(&node(1), 0, &node(4)), (2, false));
        // A refuted suspicion (the member's incarnation grew) starts over.
        assert!(store.add(suspicion(1, 1, 4)).is_some());
        assert_eq!(store.suspecters(&node(1), 1, &node(4)), (1, true));
        assert_eq!(store.suspecters(&node(1), 0, &node(4)), (0, false));
        assert!(
            store.add(suspicion(1, 0, 5)).is_none(),
            "an older incarnation"
        );
        assert!(
            store.add(suspicion(6, 0, 6)).is_none(),
            "a node suspecting itself"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded() {
        let store = Confirmations::new(2);
        assert!(store.add(suspicion(1, 0, 9)).is_some());
        assert!(store.add(suspicion(2, 0, 9)).is_some());
        assert!(store.add(suspicion(3, 0, 9)).is_none(), "over capacity");
        for by in 10..30 {
            store.add(suspicion(1, 0, by));
        }
        assert_eq!(store.suspecters(&node(1), 0, &node(9)).0, MAX_SUSPECTERS);
        store.retain(|suspect| *suspect == node(1));
        assert_eq!(
            store.suspecters(&node(2), 0, &node(9)).0,
            1,
            "kept for a while"
        );
        tokio::time::advance(MEMORY).await;
        store.retain(|suspect| *suspect == node(1));
        assert_eq!(store.suspecters(&node(2), 0, &node(9)).0, 0);
        assert_eq!(store.suspecters(&node(1), 0, &node(9)).0, MAX_SUSPECTERS);
    }

    #[test]
    fn newer_incarnations_replace_older_in_flight() {
        let old = suspicion(1, 0, 2).key();
        let new = suspicion(1, 1, 2).key();
        let other = suspicion(1, 1, 3).key();
        assert!(new.invalidates(&old));
        assert!(!old.invalidates(&new));
        assert!(!other.invalidates(&old));
    }
}
