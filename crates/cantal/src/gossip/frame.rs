//! Datagram framing: a version byte and the cluster name's hash before the foca payload,
//! and the classification of everything else that arrives on the port.

use sha2::{Digest, Sha256};

/// Version of the framing and payload; a node never decodes another.
pub const VERSION: u8 = 1;
/// Version byte plus 8 bytes of cluster hash.
pub const HEADER_LEN: usize = 9;
/// Largest datagram sent.
pub const MAX_SEND: usize = 1400;
/// Datagrams larger than this are dropped unread.
pub const MAX_RECEIVE: usize = 8192;

/// The first 8 bytes of SHA-256 of the cluster name.
pub fn cluster_hash(cluster_name: &str) -> [u8; 8] {
    let digest = Sha256::digest(cluster_name.as_bytes());
    let mut hash = [0; 8];
    hash.copy_from_slice(&digest[..8]);
    hash
}

/// Writes the header for `cluster` followed by `payload`.
pub fn encode(cluster: &[u8; 8], payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.push(VERSION);
    out.extend_from_slice(cluster);
    out.extend_from_slice(payload);
}

/// Why a datagram was dropped before reaching foca.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BadPacket {
    /// Random bytes, or framing whose payload does not decode.
    Garbage,
    /// Larger than [`MAX_RECEIVE`].
    Oversized,
    /// Our framing, another cluster's hash.
    WrongCluster,
    /// Our cluster's hash behind another version byte.
    WrongVersion,
    /// A CBOR message of the original cantal's gossip.
    Legacy,
}

impl BadPacket {
    pub const ALL: [Self; 5] = [
        Self::Garbage,
        Self::Oversized,
        Self::WrongCluster,
        Self::WrongVersion,
        Self::Legacy,
    ];

    /// The name used in `/status.json` and log lines.
    pub fn name(self) -> &'static str {
        match self {
            Self::Garbage => "garbage",
            Self::Oversized => "oversized",
            Self::WrongCluster => "wrong_cluster",
            Self::WrongVersion => "wrong_version",
            Self::Legacy => "legacy",
        }
    }
}

/// Checks framing; returns the foca payload of a packet for `cluster`. `decodes` tells
/// whether a payload is a foca message, to tell another cluster's packets from noise.
pub fn classify<'a>(
    datagram: &'a [u8],
    cluster: &[u8; 8],
    decodes: impl Fn(&[u8]) -> bool,
) -> Result<&'a [u8], BadPacket> {
    if datagram.len() > MAX_RECEIVE {
        return Err(BadPacket::Oversized);
    }
    if datagram.len() >= HEADER_LEN {
        let (header, payload) = datagram.split_at(HEADER_LEN);
        let same_cluster = header[1..] == cluster[..];
        match (header[0] == VERSION, same_cluster) {
            (true, true) => return Ok(payload),
            (true, false) if decodes(payload) => return Err(BadPacket::WrongCluster),
            (false, true) => return Err(BadPacket::WrongVersion),
            _ => {}
        }
    }
    if is_legacy(datagram) {
        return Err(BadPacket::Legacy);
    }
    Err(BadPacket::Garbage)
}

/// The original cantal sent each message as one CBOR array or map.
fn is_legacy(datagram: &[u8]) -> bool {
    let Some(&first) = datagram.first() else {
        return false;
    };
    let major = first >> 5;
    (major == 4 || major == 5) && ciborium::from_reader::<ciborium::Value, _>(datagram).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn always(_: &[u8]) -> bool {
        true
    }

    #[test]
    fn classifies() {
        let ours = cluster_hash("t");
        let theirs = cluster_hash("u");
        assert_ne!(ours, theirs);
        let mut packet = Vec::new();
        encode(&ours, b"payload", &mut packet);
        assert_eq!(classify(&packet, &ours, always), Ok(&b"payload"[..]));

        encode(&theirs, b"payload", &mut packet);
        assert_eq!(
            classify(&packet, &ours, always),
            Err(BadPacket::WrongCluster)
        );
        assert_eq!(classify(&packet, &ours, |_| false), Err(BadPacket::Garbage));

        encode(&ours, b"payload", &mut packet);
        packet[0] = 2;
        assert_eq!(
            classify(&packet, &ours, always),
            Err(BadPacket::WrongVersion)
        );

        assert_eq!(
            classify(&vec![1; MAX_RECEIVE + 1], &ours, always),
            Err(BadPacket::Oversized)
        );
        assert_eq!(classify(&[], &ours, always), Err(BadPacket::Garbage));
        assert_eq!(classify(&[1, 2, 3], &ours, always), Err(BadPacket::Garbage));
    }

    #[test]
    fn recognises_original_cbor() {
        let mut legacy = Vec::new();
        let ping = ciborium::Value::Array(vec![
            ciborium::Value::Text("Ping".to_owned()),
            ciborium::Value::Map(vec![(
                ciborium::Value::Text("now".to_owned()),
                ciborium::Value::Integer(1_700_000_000_000u64.into()),
            )]),
        ]);
        ciborium::into_writer(&ping, &mut legacy).unwrap();
        let ours = cluster_hash("t");
        assert_eq!(classify(&legacy, &ours, |_| false), Err(BadPacket::Legacy));
        // A truncated CBOR message is just garbage.
        assert_eq!(
            classify(&legacy[..legacy.len() - 2], &ours, |_| false),
            Err(BadPacket::Garbage)
        );
    }
}
