//! A node's identity in the membership protocol.

use std::net::SocketAddr;

use foca::Identity;
use protocol::domain::MachineId;
use serde::{Deserialize, Serialize};

/// Who a member is: its gossip address, machine id and this run of the agent.
///
/// foca treats identities with the same address as successive versions of one member, so a
/// restarted agent (new boot time and nonce) replaces its old entry at once, and one that
/// was declared dead rejoins under a new `generation`. Two hosts that share a machine id have
/// different addresses and stay distinct; the agent reports that as a conflict.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId {
    pub addr: SocketAddr,
    pub machine_id: [u8; 16],
    /// When this run of the agent started, ms since the epoch.
    pub boot_ms: u64,
    /// Random per run: tells apart two runs started in the same millisecond.
    pub nonce: u64,
    /// Bumped each time the node rejoins after being declared dead.
    pub generation: u16,
}

impl NodeId {
    /// The identity used to address a seed whose id is not known yet: foca accepts an
    /// announce to any identity with the receiver's address.
    pub fn seed(addr: SocketAddr) -> Self {
        Self {
            addr,
            machine_id: [0; 16],
            boot_ms: 0,
            nonce: 0,
            generation: 0,
        }
    }

    pub fn machine_id(&self) -> MachineId {
        MachineId::from_bytes(self.machine_id)
    }

    fn age(&self) -> (u64, u16, u64) {
        (self.boot_ms, self.generation, self.nonce)
    }

    /// Whether both identities are the same run of an agent (generations aside).
    pub fn same_run(&self, other: &Self) -> bool {
        self.addr == other.addr
            && self.machine_id == other.machine_id
            && self.boot_ms == other.boot_ms
            && self.nonce == other.nonce
    }
}

impl Identity for NodeId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            generation: self.generation.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The newer run wins; within a run, the later generation.
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.age() > adversary.age()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(boot_ms: u64, generation: u16) -> NodeId {
        NodeId {
            addr: "10.0.0.1:22682".parse().unwrap(),
            machine_id: [1; 16],
            boot_ms,
            nonce: 7,
            generation,
        }
    }

    #[test]
    fn newer_runs_and_generations_win() {
        assert!(node(2, 0).win_addr_conflict(&node(1, 5)));
        assert!(!node(1, 5).win_addr_conflict(&node(2, 0)));
        let renewed = node(1, 0).renew().unwrap();
        assert_eq!(renewed.generation, 1);
        assert!(renewed.win_addr_conflict(&node(1, 0)));
        assert!(renewed.same_run(&node(1, 0)));
        assert!(!node(2, 0).same_run(&node(1, 0)));
    }
}
