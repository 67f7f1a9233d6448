//! Lifeguard's suspicion shortening: the more members independently suspect a node, the
//! sooner it is declared dead.
//!
//! foca starts a suspicion on the node whose probe failed and times it with a fixed
//! `suspect_to_down_after`. A failed probe of a member that is already suspect is
//! independent evidence, and several of them within a suspicion mean the member is very
//! likely gone rather than behind one lossy link. So each node that fails a probe says so
//! (a [`Suspicion`] broadcast), every node counts the distinct suspecters, and the timeout
//! shrinks from the spec's `4 s × max(1, log10 N)` towards ¾ of it as confirmations
//! arrive, as in Lifeguard (Dadgar et al., 2018): by `ln(c + 1) / ln(K + 1)` of the
//! difference after `c` of `K` expected confirmations.
//!
//! Lifeguard's buddy system is here too: a member held suspect that is heard from again is
//! told of the suspicion directly ([`notice`]). foca gossips each update only a few times,
//! so a member cut off for a second or two misses the news that it is suspected, cannot
//! refute, and would be declared dead although it is back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use foca::{Codec, Header, Invalidates, Member, Message, PostcardCodec, State};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::identity::NodeId;

/// Confirmations that bring a suspicion down to its shortest timeout (Lifeguard's K; the
/// value memberlist derives from its default suspicion multiplier).
pub const EXPECTED_CONFIRMATIONS: usize = 2;
/// The shortest timeout, as a fraction of the unconfirmed one. In the ten-node simulation a
/// member cut off for up to 4 s still refutes in time with ¾, as it does without shortening;
/// with ½, outages over 3 s ended in deaths.
pub const SHORTEST_FRACTION: f64 = 0.75;
/// Other suspecters remembered per member: more than `K + 1` change nothing.
const MAX_SUSPECTERS: usize = 8;
/// How long a member's confirmations outlive its suspicion here: they may arrive before
/// the update that makes the member suspect.
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

/// A foca message from `own` (at `own_incarnation`) telling `suspect` that it is suspected
/// at `incarnation`: a gossip message carrying just that update, laid out as foca lays out
/// its own (header, the number of updates as a big-endian `u16`, the updates). foca on the
/// suspect's side refutes it by raising its incarnation.
pub fn notice(
    own: &NodeId,
    own_incarnation: u16,
    suspect: &NodeId,
    incarnation: u16,
) -> Result<Vec<u8>, postcard::Error> {
    let mut codec = PostcardCodec;
    let header = Header {
        src: own.clone(),
        src_incarnation: own_incarnation,
        dst: suspect.clone(),
        message: Message::Gossip,
    };
    let mut payload = Vec::new();
    codec.encode_header(&header, &mut payload)?;
    payload.extend_from_slice(&1u16.to_be_bytes());
    let update = Member::new(suspect.clone(), incarnation, State::Suspect);
    codec.encode_member(&update, &mut payload)?;
    Ok(payload)
}

/// Who suspects which member, shared between foca's broadcast handler and the gossip loop.
///
/// Only suspicions between members this node knows count, and only about a member's
/// current incarnation: made-up ones cannot grow this store or foca's backlog of broadcasts
/// beyond a few per member, nor mask a real suspicion with a higher incarnation.
#[derive(Debug, Clone)]
pub struct Confirmations {
    inner: Arc<Mutex<ConfirmationMap>>,
}

#[derive(Debug)]
struct ConfirmationMap {
    suspects: HashMap<NodeId, Suspecters>,
    capacity: usize,
    /// This node as of its last suspicion, and the live members with their incarnations as
    /// of the last reconcile.
    own: NodeId,
    members: HashMap<NodeId, u16>,
}

#[derive(Debug)]
struct Suspecters {
    incarnation: u16,
    by: Vec<NodeId>,
    updated: Instant,
}

impl Confirmations {
    /// A store for the node `own` that tracks at most `capacity` suspects.
    pub fn new(capacity: usize, own: NodeId) -> Self {
        Self {
            inner: Arc::new(Mutex::new(ConfirmationMap {
                suspects: HashMap::new(),
                capacity,
                own,
                members: HashMap::new(),
            })),
        }
    }

    /// The live members and their incarnations, which suspicions are checked against.
    pub fn set_members(&self, members: impl IntoIterator<Item = (NodeId, u16)>) {
        self.lock().members = members.into_iter().collect();
    }

    /// This node's identity (foca renews it on a rejoin).
    pub fn set_own(&self, own: NodeId) {
        self.lock().own = own;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConfirmationMap> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts `suspicion`; its key when it is news (worth passing on).
    pub fn add(&self, suspicion: Suspicion) -> Option<SuspicionKey> {
        let mut map = self.lock();
        let own = suspicion.by == map.own;
        let current = map.members.get(&suspicion.suspect) == Some(&suspicion.incarnation);
        let known_suspecter = own || map.members.contains_key(&suspicion.by);
        if !current || !known_suspecter || suspicion.by == suspicion.suspect {
            return None;
        }
        let now = Instant::now();
        let room = map.suspects.len() < map.capacity;
        match map.suspects.get_mut(&suspicion.suspect) {
            Some(known) if known.incarnation > suspicion.incarnation => return None,
            Some(known) if known.incarnation == suspicion.incarnation => {
                // This node's own suspicion always counts, however many others came first.
                let full = known.by.len() >= MAX_SUSPECTERS && !own;
                if known.by.contains(&suspicion.by) || full {
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

    /// Forgets suspects for which `keep` is false, [`MEMORY`] after their last confirmation.
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
    fn confirmations_shorten_the_timeout_to_three_quarters() {
        let base = Duration::from_secs(4);
        let shortest = Duration::from_secs(3);
        assert_eq!(timeout(base, 0, 10), base);
        let one = timeout(base, 1, 10);
        assert!(one < base && one > shortest, "{one:?}");
        assert_eq!(timeout(base, 2, 10), shortest);
        assert_eq!(timeout(base, 5, 10), shortest);
        // Three nodes: two survivors cannot give two confirmations.
        assert_eq!(timeout(base, 1, 3), base);
        assert_eq!(timeout(base, 2, 4), shortest);
    }

    /// A store for node 100 knowing members 1..=30 at incarnation 0.
    fn store(capacity: usize) -> Confirmations {
        let store = Confirmations::new(capacity, node(100));
        store.set_members((1..=30).map(|i| (node(i), 0)));
        store
    }

    #[tokio::test(start_paused = true)]
    async fn distinct_suspecters_of_one_incarnation_count() {
        let store = store(10);
        assert!(store.add(suspicion(1, 0, 2)).is_some());
        assert!(
            store.add(suspicion(1, 0, 2)).is_none(),
            "same suspecter twice"
        );
        assert!(store.add(suspicion(1, 0, 3)).is_some());
        assert_eq!(store.suspecters(&node(1), 0, &node(3)), (2, true));
        assert_eq!(store.suspecters(&node(1), 0, &node(4)), (2, false));
        assert!(store.add(suspicion(1, 0, 100)).is_some(), "this node's own");
        assert_eq!(store.suspecters(&node(1), 0, &node(100)), (3, true));
        // A refuted suspicion (the member's incarnation grew) starts over.
        store.set_members([(node(1), 1), (node(4), 0), (node(5), 0)]);
        assert!(store.add(suspicion(1, 1, 4)).is_some());
        assert_eq!(store.suspecters(&node(1), 1, &node(4)), (1, true));
        assert_eq!(store.suspecters(&node(1), 0, &node(4)), (0, false));
        assert!(
            store.add(suspicion(1, 0, 5)).is_none(),
            "an older incarnation"
        );
        assert!(
            store.add(suspicion(5, 0, 5)).is_none(),
            "a node suspecting itself"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn only_current_members_count() {
        let store = store(10);
        assert!(
            store.add(suspicion(1, 7, 2)).is_none(),
            "not its incarnation"
        );
        assert!(
            store.add(suspicion(1, 0, 99)).is_none(),
            "an unknown suspecter"
        );
        assert!(
            store.add(suspicion(99, 0, 2)).is_none(),
            "an unknown suspect"
        );
        assert!(
            store.add(suspicion(100, 0, 2)).is_none(),
            "this node itself"
        );
        assert_eq!(store.suspecters(&node(1), 0, &node(2)), (0, false));
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded() {
        let store = store(2);
        assert!(store.add(suspicion(1, 0, 9)).is_some());
        assert!(store.add(suspicion(2, 0, 9)).is_some());
        assert!(store.add(suspicion(3, 0, 9)).is_none(), "over capacity");
        for by in 10..30 {
            store.add(suspicion(1, 0, by));
        }
        assert_eq!(store.suspecters(&node(1), 0, &node(9)).0, MAX_SUSPECTERS);
        assert!(
            store.add(suspicion(1, 0, 100)).is_some(),
            "its own still counts"
        );
        assert_eq!(
            store.suspecters(&node(1), 0, &node(100)),
            (MAX_SUSPECTERS + 1, true)
        );
        store.retain(|suspect| *suspect == node(1));
        assert_eq!(
            store.suspecters(&node(2), 0, &node(9)).0,
            1,
            "kept for a while"
        );
        tokio::time::advance(MEMORY).await;
        store.retain(|suspect| *suspect == node(1));
        assert_eq!(store.suspecters(&node(2), 0, &node(9)).0, 0);
        assert_eq!(
            store.suspecters(&node(1), 0, &node(9)).0,
            MAX_SUSPECTERS + 1
        );
    }

    #[test]
    fn a_notice_makes_the_suspect_refute() {
        use foca::{Foca, OwnedNotification};
        use rand::SeedableRng;

        let (suspect, teller) = (node(1), node(2));
        let config = super::super::foca_config(&super::super::Timing::default(), 2);
        let rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut foca = Foca::new(suspect.clone(), config, rng, PostcardCodec);
        let mut effects = super::super::effects::Effects::default();
        let notice = notice(&teller, 0, &suspect, 0).unwrap();
        foca.handle_data(&notice, &mut effects).unwrap();
        // It learned the teller from the header, and answers with a raised incarnation.
        assert_eq!(foca.num_members(), 1);
        let refuted = effects.notifications.iter().any(|n| {
            matches!(n, OwnedNotification::DataSent(header)
                if header.dst == teller && header.src_incarnation == 1)
        });
        assert!(refuted, "{:?}", effects.notifications);
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
