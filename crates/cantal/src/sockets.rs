//! TCP socket summary from `/proc/net/tcp` and `/proc/net/tcp6`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use serde::Serialize;

use crate::metric::{Sample, Value, system_key};

/// Kernel TCP states by their number in `/proc/net/tcp`.
const STATES: [&str; 12] = [
    "UNKNOWN",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
];
const LISTEN: usize = 10;

/// Sockets of one address family.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FamilySummary {
    /// Socket count per state name.
    pub by_state: BTreeMap<String, u64>,
    /// Accept-queue length per listening address.
    pub listen_queues: BTreeMap<String, u64>,
    /// Socket count per owner uid.
    pub by_uid: BTreeMap<u32, u64>,
}

/// `/all_sockets.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SocketSummary {
    pub v4: FamilySummary,
    pub v6: FamilySummary,
}

impl SocketSummary {
    /// Reads both tables under `proc_root`; a missing table (no IPv6) stays empty.
    pub fn read(proc_root: &Path) -> Self {
        let read = |name| std::fs::read_to_string(proc_root.join(name)).unwrap_or_default();
        Self {
            v4: FamilySummary::parse(&read("net/tcp"), false),
            v6: FamilySummary::parse(&read("net/tcp6"), true),
        }
    }

    /// `tcp.sockets{family,state}`, `tcp.listen_queue{family,addr}` and
    /// `tcp.sockets_per_uid{family,uid}` levels.
    pub fn samples(&self, out: &mut Vec<Sample>) {
        for (family, summary) in [("v4", &self.v4), ("v6", &self.v6)] {
            let level = |n: u64| Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
            for (state, count) in &summary.by_state {
                out.push((
                    system_key(
                        "tcp.sockets",
                        [("family", family.to_owned()), ("state", state.clone())],
                    ),
                    level(*count),
                ));
            }
            for (addr, queue) in &summary.listen_queues {
                out.push((
                    system_key(
                        "tcp.listen_queue",
                        [("family", family.to_owned()), ("addr", addr.clone())],
                    ),
                    level(*queue),
                ));
            }
            for (uid, count) in &summary.by_uid {
                out.push((
                    system_key(
                        "tcp.sockets_per_uid",
                        [("family", family.to_owned()), ("uid", uid.to_string())],
                    ),
                    level(*count),
                ));
            }
        }
    }
}

impl FamilySummary {
    pub fn parse(text: &str, v6: bool) -> Self {
        let mut summary = Self::default();
        for line in text.lines().skip(1) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let [_, local, _, state, queues, _, _, uid, ..] = words.as_slice() else {
                continue;
            };
            let Ok(state) = usize::from_str_radix(state, 16) else {
                continue;
            };
            let name = STATES.get(state).copied().unwrap_or("UNKNOWN");
            *summary.by_state.entry(name.to_owned()).or_default() += 1;
            if let Ok(uid) = uid.parse() {
                *summary.by_uid.entry(uid).or_default() += 1;
            }
            if state == LISTEN
                && let (Some(addr), Some((_, rx))) = (parse_addr(local, v6), queues.split_once(':'))
                && let Ok(rx) = u64::from_str_radix(rx, 16)
            {
                summary.listen_queues.insert(addr.to_string(), rx);
            }
        }
        summary
    }
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): each 32-bit word is printed as
/// the host-order number the kernel holds.
fn parse_addr(text: &str, v6: bool) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = ip.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_le_bytes())
    };
    let ip = if v6 {
        if ip.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for i in 0..4 {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
        }
        IpAddr::V6(Ipv6Addr::from(bytes))
    } else {
        if ip.len() != 8 {
            return None;
        }
        IpAddr::V4(Ipv4Addr::from(word(0)?))
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
        0: 0100007F:1F90 00000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n   \
        1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 2 1 0 20 4 30 10 -1\n";

    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
        0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0\n";

    #[test]
    fn summarises_v4() {
        let summary = FamilySummary::parse(TCP, false);
        assert_eq!(summary.by_state["LISTEN"], 1);
        assert_eq!(summary.by_state["ESTABLISHED"], 1);
        assert_eq!(summary.listen_queues["127.0.0.1:8080"], 3);
        assert_eq!(summary.by_uid[&0], 1);
        assert_eq!(summary.by_uid[&1000], 1);
    }

    #[test]
    fn summarises_v6() {
        let summary = FamilySummary::parse(TCP6, true);
        assert_eq!(summary.listen_queues["[::1]:80"], 0);
        let mut out = Vec::new();
        SocketSummary {
            v4: FamilySummary::default(),
            v6: summary,
        }
        .samples(&mut out);
        assert!(out.iter().any(|(k, v)| k["metric"] == "tcp.listen_queue"
            && k["family"] == "v6"
            && *v == Value::Integer(0)));
    }
}
