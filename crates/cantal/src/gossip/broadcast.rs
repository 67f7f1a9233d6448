//! The custom broadcasts foca carries for cantal: node infos and suspicions.
//!
//! foca frames the items of a packet. An info is a postcard-encoded [`NodeInfo`], as agents
//! have always sent it; its first byte is its address's variant (0 or 1). A suspicion is
//! [`SUSPICION_TAG`] followed by a postcard-encoded [`Suspicion`]. Agents from before
//! suspicions existed fail on that byte and drop the rest of such a packet's broadcasts (its
//! membership updates are applied first), so a mixed cluster still exchanges names.

use foca::{BroadcastHandler, Invalidates};

use super::identity::NodeId;
use super::node_info::{InfoKey, InfoStore, NodeInfo};
use super::suspicion::{Confirmations, Suspicion, SuspicionKey};

/// The first byte of a suspicion item, which no info starts with.
pub const SUSPICION_TAG: u8 = 0x53;

/// One item of gossip besides membership updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broadcast {
    /// A node describing itself.
    Info(NodeInfo),
    /// A node whose probe of a member failed.
    Suspicion(Suspicion),
}

impl Broadcast {
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        match self {
            Self::Info(info) => postcard::to_allocvec(info),
            Self::Suspicion(suspicion) => postcard::to_extend(suspicion, vec![SUSPICION_TAG]),
        }
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
        if let Some((&SUSPICION_TAG, suspicion)) = data.split_first() {
            let suspicion: Suspicion = postcard::from_bytes(suspicion)?;
            return Ok(self
                .confirmations
                .add(suspicion)
                .map(BroadcastKey::Suspicion));
        }
        // Most announcements arrive many times: the identity and version at the front
        // decide whether the rest is worth decoding.
        let ((node, version), _): ((NodeId, u64), _) = postcard::take_from_bytes(data)?;
        if !self.infos.is_news(&node, version) {
            return Ok(None);
        }
        let info: NodeInfo = postcard::from_bytes(data)?;
        Ok(self.infos.accept(info).map(BroadcastKey::Info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handler() -> Handler {
        let confirmations = Confirmations::new(10, node(9));
        confirmations.set_members([(node(1), 0), (node(2), 3)]);
        Handler {
            infos: InfoStore::new(10),
            confirmations,
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
        // An info encodes as it always did, so agents of any version read each other's.
        let Broadcast::Info(plain) = info(1) else {
            unreachable!()
        };
        assert_eq!(
            info(1).encode().unwrap(),
            postcard::to_allocvec(&plain).unwrap()
        );
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
        assert!(handler.receive_item(&[SUSPICION_TAG, 1], None).is_err());
    }
}
