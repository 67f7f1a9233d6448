//! Election packets: byte `0x02` (version), then a CBOR map, at most 1024 bytes.

use protocol::domain::MachineId;
use serde::{Deserialize, Serialize};

use crate::schedule::Stamp;

/// First byte of every packet.
pub const VERSION: u8 = 0x02;
/// Largest packet sent or accepted.
pub const MAX_PACKET: usize = 1024;

/// Count and digest of the leader's pending actions, so followers know when to fetch them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionDigest {
    pub count: u32,
    pub hash: String,
}

/// One election packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Message {
    /// Leader → all, every heartbeat and at once after a new schedule or action.
    Ping {
        #[serde(with = "crate::id_hex")]
        id: MachineId,
        epoch: u64,
        schedule: Option<Stamp>,
        /// Distinct peers that answered in the last check-quorum window.
        followers: u32,
        actions: ActionDigest,
        frozen: bool,
    },
    /// Follower → leader, per Ping.
    Pong {
        #[serde(with = "crate::id_hex")]
        id: MachineId,
        epoch: u64,
        schedule: Option<Stamp>,
        /// Number of current errors on the follower.
        errors: u32,
        failed_roles: Vec<String>,
        /// The follower's copy of the pending actions (extension: tells the leader when an
        /// action is replicated).
        #[serde(default)]
        actions: Option<ActionDigest>,
        /// The leader the sender follows, if any (extension: a leader must not step down for
        /// the epoch of a node that follows another leader, nor count it as a follower).
        #[serde(default, with = "optional_id")]
        leader: Option<MachineId>,
    },
    /// Candidate → all: would you vote for me in `epoch`?
    PreVote {
        #[serde(with = "crate::id_hex")]
        id: MachineId,
        epoch: u64,
        schedule: Option<Stamp>,
    },
    /// Answer to a PreVote; a refusal carries the replier's own epoch.
    PreVoteReply {
        #[serde(with = "crate::id_hex")]
        id: MachineId,
        epoch: u64,
        granted: bool,
    },
    /// Voter → all: `id` votes for `target` in `epoch` (a candidate votes for itself).
    Vote {
        #[serde(with = "crate::id_hex")]
        id: MachineId,
        epoch: u64,
        #[serde(with = "crate::id_hex")]
        target: MachineId,
        schedule: Option<Stamp>,
    },
}

/// Serde for an optional machine id as 32 hex digits, absent in packets of older peers.
pub(crate) mod optional_id {
    use protocol::domain::MachineId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        id: &Option<MachineId>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match id {
            Some(id) => serializer.collect_str(id),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<MachineId>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| text.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

impl Message {
    /// The sender.
    pub fn sender(&self) -> MachineId {
        match self {
            Self::Ping { id, .. }
            | Self::Pong { id, .. }
            | Self::PreVote { id, .. }
            | Self::PreVoteReply { id, .. }
            | Self::Vote { id, .. } => *id,
        }
    }
}

/// A datagram that is not a valid packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet of {0} bytes is larger than {MAX_PACKET}")]
    TooLarge(usize),
    #[error("empty packet")]
    Empty,
    #[error("packet version {0}, expected {VERSION}")]
    Version(u8),
    #[error("undecodable packet: {0}")]
    Decode(String),
}

/// Encodes a message; a Pong that would exceed the size limit loses failed role names
/// from the end until it fits.
pub fn encode(message: &Message) -> Vec<u8> {
    let mut message = message.clone();
    loop {
        let mut out = vec![VERSION];
        // Writing into a Vec cannot fail, and every field is serialisable.
        let _ = ciborium::into_writer(&message, &mut out);
        match &mut message {
            Message::Pong { failed_roles, .. }
                if out.len() > MAX_PACKET && !failed_roles.is_empty() =>
            {
                failed_roles.pop();
            }
            _ => return out,
        }
    }
}

/// Decodes a datagram.
pub fn decode(datagram: &[u8]) -> Result<Message, PacketError> {
    if datagram.len() > MAX_PACKET {
        return Err(PacketError::TooLarge(datagram.len()));
    }
    let (&version, body) = datagram.split_first().ok_or(PacketError::Empty)?;
    if version != VERSION {
        return Err(PacketError::Version(version));
    }
    ciborium::from_reader(body).map_err(|err| PacketError::Decode(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> MachineId {
        MachineId::from_bytes([n; 16])
    }

    #[test]
    fn every_message_round_trips_within_the_size_limit() {
        let stamp = Stamp {
            timestamp: 1,
            hash: "a".repeat(40),
            origin: id(1),
            rollback_of: None,
        };
        let messages = [
            Message::Ping {
                id: id(1),
                epoch: 7,
                schedule: Some(stamp.clone()),
                followers: 4,
                actions: ActionDigest {
                    count: 2,
                    hash: "b".repeat(40),
                },
                frozen: true,
            },
            Message::Pong {
                id: id(2),
                epoch: 7,
                schedule: None,
                errors: 1,
                failed_roles: vec!["web".into()],
                actions: Some(ActionDigest::default()),
                leader: Some(id(1)),
            },
            Message::PreVote {
                id: id(3),
                epoch: 8,
                schedule: Some(stamp.clone()),
            },
            Message::PreVoteReply {
                id: id(4),
                epoch: 8,
                granted: true,
            },
            Message::Vote {
                id: id(4),
                epoch: 8,
                target: id(3),
                schedule: Some(stamp),
            },
        ];
        for message in messages {
            let bytes = encode(&message);
            assert!(bytes.len() <= MAX_PACKET);
            assert_eq!(bytes[0], VERSION);
            assert_eq!(decode(&bytes).unwrap(), message);
        }
    }

    #[test]
    fn a_pong_without_a_leader_from_an_older_peer_decodes() {
        let pong = Message::Pong {
            id: id(2),
            epoch: 3,
            schedule: None,
            errors: 0,
            failed_roles: Vec::new(),
            actions: None,
            leader: Some(id(1)),
        };
        let bytes = encode(&pong);
        let mut map: ciborium::Value = ciborium::from_reader(&bytes[1..]).unwrap();
        let ciborium::Value::Map(entries) = &mut map else {
            panic!("a packet is a map")
        };
        entries.retain(|(key, _)| key.as_text() != Some("leader"));
        let mut old = vec![VERSION];
        ciborium::into_writer(&map, &mut old).unwrap();
        assert!(old.len() < bytes.len());
        assert!(matches!(
            decode(&old).unwrap(),
            Message::Pong {
                leader: None,
                epoch: 3,
                ..
            }
        ));
    }

    #[test]
    fn oversized_pongs_are_trimmed_and_garbage_is_refused() {
        let pong = Message::Pong {
            id: id(2),
            epoch: 1,
            schedule: None,
            errors: 0,
            failed_roles: (0..200).map(|i| format!("role-number-{i}")).collect(),
            actions: None,
            leader: Some(id(1)),
        };
        let bytes = encode(&pong);
        assert!(bytes.len() <= MAX_PACKET);
        assert!(
            matches!(decode(&bytes).unwrap(), Message::Pong { failed_roles, .. } if !failed_roles.is_empty())
        );
        assert_eq!(decode(&[]), Err(PacketError::Empty));
        assert_eq!(decode(&[1, 2, 3]), Err(PacketError::Version(1)));
        assert!(matches!(
            decode(&[2, 0xff, 0x00]),
            Err(PacketError::Decode(_))
        ));
        assert_eq!(decode(&vec![2; 2000]), Err(PacketError::TooLarge(2000)));
    }
}
