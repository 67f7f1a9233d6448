//! TCP socket summary, from a `NETLINK_SOCK_DIAG` dump or from `/proc/net/tcp` and
//! `/proc/net/tcp6`.
//!
//! Reading the proc tables makes the kernel walk its whole TCP hash table for every `read`
//! (about 6 ms per file on the benchmark host even when empty, some 20 % of the agent's CPU);
//! the netlink dump of fixed-size records cost under 1 % there (docs/benchmarks.md), so the
//! agent uses it and falls back to the files when it fails.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::{AF_INET, AF_INET6, IPPROTO_TCP, SockDiagMessage};
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
            let listen_queue = || {
                let addr = parse_addr(local, v6)?;
                let rx = u64::from_str_radix(queues.split_once(':')?.1, 16).ok()?;
                Some((addr, rx))
            };
            summary.add(state, uid.parse().ok(), listen_queue);
        }
        summary
    }

    /// Counts one socket; `listen_queue` (local address and accept-queue length) is asked for
    /// listening sockets only.
    fn add(
        &mut self,
        state: usize,
        uid: Option<u32>,
        listen_queue: impl FnOnce() -> Option<(SocketAddr, u64)>,
    ) {
        let name = STATES.get(state).copied().unwrap_or("UNKNOWN");
        *self.by_state.entry(name.to_owned()).or_default() += 1;
        if let Some(uid) = uid {
            *self.by_uid.entry(uid).or_default() += 1;
        }
        if state == LISTEN
            && let Some((addr, rx)) = listen_queue()
        {
            self.listen_queues.insert(addr.to_string(), rx);
        }
    }
}

/// A netlink dump could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("cannot open a NETLINK_SOCK_DIAG socket")]
    Open(#[source] io::Error),
    #[error("cannot send the tcp dump request for family {family}")]
    Send {
        family: u8,
        #[source]
        source: io::Error,
    },
    #[error("cannot receive the tcp dump for family {family}")]
    Receive {
        family: u8,
        #[source]
        source: io::Error,
    },
    #[error("bad netlink message in the tcp dump for family {family}: {reason}")]
    Decode { family: u8, reason: String },
    #[error("the kernel refused the tcp dump for family {family}: error {code}")]
    Refused { family: u8, code: i32 },
}

/// The largest dump datagram the kernel sends (it caps a dump's buffer at 32 KiB); a smaller
/// receive buffer would truncate records.
const DUMP_BUFFER: usize = 32 * 1024;

/// Reads the socket summary every scan: by netlink when reading the real `/proc`, else (a
/// test's fake root, or netlink failed) from the tables under the proc root.
#[derive(Debug)]
pub struct SocketReader {
    proc_root: PathBuf,
    use_netlink: bool,
    /// Opened on first use, and again after a failure.
    netlink: Option<netlink_sys::Socket>,
    buffer: Vec<u8>,
    sequence: u32,
    /// A failure is logged once until a dump succeeds again.
    failing: bool,
}

impl SocketReader {
    pub fn new(proc_root: &Path) -> Self {
        Self {
            use_netlink: proc_root == Path::new("/proc"),
            proc_root: proc_root.to_owned(),
            netlink: None,
            buffer: Vec::new(),
            sequence: 0,
            failing: false,
        }
    }

    pub fn read(&mut self) -> SocketSummary {
        if self.use_netlink {
            match self.dump_both() {
                Ok(summary) => {
                    self.failing = false;
                    return summary;
                }
                Err(e) => {
                    if !self.failing {
                        tracing::warn!(error = %e, "netlink socket dump failed; reading /proc/net/tcp");
                    }
                    self.failing = true;
                    self.netlink = None;
                }
            }
        }
        SocketSummary::read(&self.proc_root)
    }

    fn dump_both(&mut self) -> Result<SocketSummary, DiagError> {
        Ok(SocketSummary {
            v4: self.dump(AF_INET)?,
            v6: self.dump(AF_INET6)?,
        })
    }

    /// One `SOCK_DIAG_BY_FAMILY` dump of every TCP socket of `family`, without extensions:
    /// the fixed record has the state, local address, queue and uid.
    fn dump(&mut self, family: u8) -> Result<FamilySummary, DiagError> {
        let socket = match &mut self.netlink {
            Some(socket) => socket,
            None => self
                .netlink
                .insert(open_diag_socket().map_err(DiagError::Open)?),
        };
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = self.sequence;
        let mut request = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::empty(),
                states: StateFlags::all(),
                socket_id: if family == AF_INET {
                    SocketId::new_v4()
                } else {
                    SocketId::new_v6()
                },
            })
            .into(),
        );
        request.finalize();
        let mut bytes = vec![0; request.buffer_len()];
        request.serialize(&mut bytes);
        socket
            .send(&bytes, 0)
            .map_err(|source| DiagError::Send { family, source })?;
        self.buffer.resize(DUMP_BUFFER, 0);
        let mut summary = FamilySummary::default();
        loop {
            let received = socket
                .recv(&mut &mut self.buffer[..], 0)
                .map_err(|source| DiagError::Receive { family, source })?;
            let mut datagram = &self.buffer[..received];
            while !datagram.is_empty() {
                let message =
                    NetlinkMessage::<SockDiagMessage>::deserialize(datagram).map_err(|e| {
                        DiagError::Decode {
                            family,
                            reason: e.to_string(),
                        }
                    })?;
                let length = message.header.length as usize;
                if length == 0 || length > datagram.len() {
                    return Err(DiagError::Decode {
                        family,
                        reason: format!(
                            "message length {length} in a datagram of {}",
                            datagram.len()
                        ),
                    });
                }
                // Messages are 4-byte aligned within a datagram.
                datagram = datagram
                    .get(length.next_multiple_of(4)..)
                    .unwrap_or_default();
                if message.header.sequence_number != self.sequence {
                    continue;
                }
                match message.payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                        let header = &response.header;
                        summary.add(usize::from(header.state), Some(header.uid), || {
                            let id = &header.socket_id;
                            Some((
                                SocketAddr::new(id.source_address, id.source_port),
                                u64::from(header.recv_queue),
                            ))
                        });
                    }
                    NetlinkPayload::Done(_) => return Ok(summary),
                    NetlinkPayload::Error(error) => {
                        return Err(DiagError::Refused {
                            family,
                            code: error.code.map_or(0, i32::from),
                        });
                    }
                    _ => {}
                }
            }
        }
    }
}

fn open_diag_socket() -> io::Result<netlink_sys::Socket> {
    let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    Ok(socket)
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
        assert!(out.iter().any(|(k, v)| &k["metric"] == "tcp.listen_queue"
            && &k["family"] == "v6"
            && *v == Value::Integer(0)));
    }

    #[test]
    fn netlink_dump_matches_the_proc_tables() {
        use std::net::{TcpListener, TcpStream};
        // Listeners with a known accept queue: two connections each, never accepted. IPv6 may
        // be missing on a host; then only the v4 side is checked.
        let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let v6 = TcpListener::bind("[::1]:0").ok();
        let listeners: Vec<&TcpListener> = [Some(&v4), v6.as_ref()].into_iter().flatten().collect();
        let _clients: Vec<TcpStream> = listeners
            .iter()
            .flat_map(|l| [l.local_addr().unwrap(); 2])
            .map(|addr| TcpStream::connect(addr).unwrap())
            .collect();
        let queue = |summary: &SocketSummary, listener: &TcpListener| {
            let addr = listener.local_addr().unwrap();
            let family = if addr.is_ipv4() {
                &summary.v4
            } else {
                &summary.v6
            };
            family.listen_queues.get(&addr.to_string()).copied()
        };
        let mut reader = SocketReader::new(Path::new("/proc"));
        // Other processes open and close sockets between the two reads: a few tries for one
        // quiet moment.
        let mut last = None;
        for _ in 0..20 {
            let netlink = reader.dump_both().unwrap();
            let proc = SocketSummary::read(Path::new("/proc"));
            if netlink == proc && listeners.iter().all(|l| queue(&proc, l) == Some(2)) {
                last = None;
                break;
            }
            last = Some((netlink, proc));
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_eq!(
            last, None,
            "netlink and /proc/net/tcp disagree (netlink, proc)"
        );
        let netlink = reader.read();
        for listener in &listeners {
            assert_eq!(queue(&netlink, listener), Some(2));
        }
        assert!(netlink.v4.by_state["LISTEN"] >= 1);
        assert!(netlink.v4.by_state["ESTABLISHED"] >= 4);
        assert!(netlink.v4.by_uid[&isolation::user::real_uid()] >= 1);
    }
}
