//! The custom broadcasts foca carries for cantal: node infos and suspicions.
//!
//! Each item is a postcard-encoded [`Broadcast`]; foca frames the items of a packet.

use foca::{BroadcastHandler, Invalidates};
use serde::{Deserialize, Serialize};

use super::identity::NodeId;
use super::node_info::{InfoKey, InfoStore, NodeInfo};
use super::suspicion::{Confirmations, Suspicion, SuspicionKey};

/// One item of gossip besides membership updates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Broadcast {
    /// A node describing itself.
    Info(NodeInfo),
    /// A node whose probe of a member failed.
    Suspicion(Suspicion),
}

/// The front of a [`Broadcast`]: for an info the identity and version, which decide whether
/// the rest is worth decoding (most announcements arrive many times).
#[derive(Deserialize)]
enum Head {
    Info((NodeId, u64)),
    Suspicion(Suspicion),
}

impl Broadcast {
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_allocvec(self)
    }
}

/// Identifies a broadcast in flight, so a newer one replaces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BroadcastKey {
    Info(InfoKey),
    Suspicion(SuspicionKey),
}

impl Invalidates for BroadcastKey {
    fn invalidates(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Info(this), Self::Info(that)) => this.invalidates(that),
            (Self::Suspicion(this), Self::Suspicion(that)) => this.invalidates(that),
            _ => false,
        }
    }
}

/// A broadcast that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("bad broadcast: {0}")]
pub struct BadBroadcast(#[from] postcard::Error);

/// foca's handler: keeps what is news and tells foca to pass it on.
#[derive(Debug, Clone)]
pub struct Handler {
    pub infos: InfoStore,
    pub confirmations: Confirmations,
}

impl BroadcastHandler<NodeId> for Handler {
    type Key = BroadcastKey;
    type Error = BadBroadcast;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&NodeId>,
    ) -> Result<Option<BroadcastKey>, BadBroadcast> {
        let (head, _): (Head, _) = postcard::take_from_bytes(data)?;
        let key = match head {
            Head::Info((node, version)) => {
                if !self.infos.is_news(&node, version) {
                    return Ok(None);
                }
                match postcard::from_bytes(data)? {
                    Broadcast::Info(info) => self.infos.accept(info).map(BroadcastKey::Info),
                    // The head said info; the same bytes cannot decode as anything else.
                    Broadcast::Suspicion(_) => None,
                }
            }
            Head::Suspicion(suspicion) => self
                .confirmations
                .add(suspicion)
                .map(BroadcastKey::Suspicion),
        };
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handler() -> Handler {
        Handler {
            infos: InfoStore::new(10),
            confirmations: Confirmations::new(10),
        }
    }

    fn node(i: u8) -> NodeId {
        NodeId::seed(std::net::SocketAddr::from(([10, 0, 0, i], 22682)))
    }

    fn info(version: u64) -> Broadcast {
        Broadcast::Info(NodeInfo {
            node: node(1),
            version,
            timestamp_ms: 1,
            hostname: "h".to_owned(),
            name: "n".to_owned(),
            addresses: vec![node(1).addr],
            peers: 2,
            has_remote: true,
        })
    }

    #[test]
    fn infos_and_suspicions_are_told_apart() {
        let mut handler = handler();
        let first = handler
            .receive_item(&info(1).encode().unwrap(), None)
            .unwrap()
            .unwrap();
        assert!(handler.infos.take_changed());
        assert_eq!(
            handler
                .receive_item(&info(1).encode().unwrap(), None)
                .unwrap(),
            None,
            "a known info is not news"
        );
        let second = handler
            .receive_item(&info(2).encode().unwrap(), None)
            .unwrap()
            .unwrap();
        assert!(second.invalidates(&first));

        let suspicion = Broadcast::Suspicion(Suspicion {
            suspect: node(2),
            incarnation: 3,
            by: node(1),
        });
        let key = handler
            .receive_item(&suspicion.encode().unwrap(), None)
            .unwrap()
            .unwrap();
        assert!(!key.invalidates(&second) && !second.invalidates(&key));
        assert_eq!(
            handler.confirmations.suspecters(&node(2), 3, &node(1)),
            (1, true)
        );
        assert_eq!(
            handler
                .receive_item(&suspicion.encode().unwrap(), None)
                .unwrap(),
            None
        );
        assert!(handler.receive_item(b"\xff\xff", None).is_err());
        assert!(handler.receive_item(b"\x01\x00", None).is_err());
    }
}
