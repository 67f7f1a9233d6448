//! What foca asks of the world during one step, collected for the gossip loop to carry out;
//! and the de-duplication of datagrams that pairs with sending probes twice.
//!
//! A probe fails when a ping, its ack, or every indirect path loses a datagram. At 10% loss
//! each way that happens to several probes a minute in a 50-node cluster, and each failure
//! starts a suspicion the member must refute in time. Sending every probe-path message twice
//! (back to back) makes a probe fail only when both copies are lost, which removes false
//! suspicions at that loss rate for a few dozen bytes per second per node. Receivers drop the
//! second copy, so foca never sees a message twice.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::time::Duration;

use foca::{Message, Notification, OwnedNotification, Runtime, Timer};
use tokio::time::Instant;

use super::identity::NodeId;

/// One datagram foca wants sent.
#[derive(Debug)]
pub struct Send {
    pub to: SocketAddr,
    pub payload: Vec<u8>,
    /// Part of a probe: sent twice.
    pub probe: bool,
}

/// foca's requests during one step.
#[derive(Debug, Default)]
pub struct Effects {
    pub sends: Vec<Send>,
    pub timers: Vec<(Duration, Timer<NodeId>)>,
    pub notifications: Vec<OwnedNotification<NodeId>>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.sends.is_empty() && self.timers.is_empty() && self.notifications.is_empty()
    }
}

impl Runtime<NodeId> for Effects {
    fn notify(&mut self, notification: Notification<'_, NodeId>) {
        // foca reports each send right after making it: mark probe messages on the send.
        if let Notification::DataSent(header) = &notification
            && let Some(last) = self.sends.last_mut()
            && last.to == header.dst.addr
        {
            last.probe = matches!(
                header.message,
                Message::Ping(_)
                    | Message::Ack(_)
                    | Message::PingReq { .. }
                    | Message::IndirectPing { .. }
                    | Message::IndirectAck { .. }
                    | Message::ForwardedAck { .. }
            );
        }
        self.notifications.push(notification.to_owned());
    }

    fn send_to(&mut self, to: NodeId, data: &[u8]) {
        self.sends.push(Send {
            to: to.addr,
            payload: data.to_vec(),
            probe: false,
        });
    }

    fn submit_after(&mut self, event: Timer<NodeId>, after: Duration) {
        self.timers.push((after, event));
    }
}

/// How long a datagram is remembered to drop its copy.
const REMEMBER: Duration = Duration::from_secs(2);
/// Most datagrams remembered; the oldest are forgotten first.
const CAPACITY: usize = 8192;

/// Recently received datagrams, by hash of sender and bytes.
#[derive(Debug, Default)]
pub struct Duplicates {
    seen: HashSet<u64>,
    order: VecDeque<(Instant, u64)>,
}

impl Duplicates {
    /// Whether the same datagram from the same sender arrived within the last 2 s.
    pub fn check(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) -> bool {
        while let Some(&(at, hash)) = self.order.front() {
            if now.duration_since(at) < REMEMBER && self.order.len() < CAPACITY {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&hash);
        }
        let mut hasher = DefaultHasher::new();
        from.hash(&mut hasher);
        datagram.hash(&mut hasher);
        let hash = hasher.finish();
        if !self.seen.insert(hash) {
            return true;
        }
        self.order.push_back((now, hash));
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_dropped_for_two_seconds() {
        let mut duplicates = Duplicates::default();
        let now = Instant::now();
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:1".parse().unwrap();
        assert!(!duplicates.check(a, b"ping", now));
        assert!(duplicates.check(a, b"ping", now));
        assert!(!duplicates.check(b, b"ping", now));
        assert!(!duplicates.check(a, b"pong", now));
        assert!(!duplicates.check(a, b"ping", now + REMEMBER));
    }

    #[test]
    fn memory_is_bounded() {
        let mut duplicates = Duplicates::default();
        let now = Instant::now();
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        for i in 0..CAPACITY * 2 {
            duplicates.check(a, &i.to_le_bytes(), now);
        }
        assert!(duplicates.seen.len() <= CAPACITY);
        assert_eq!(duplicates.seen.len(), duplicates.order.len());
    }
}
