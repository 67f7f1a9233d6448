//! How election packets travel: real UDP, or an in-memory network with injected faults for
//! deterministic simulation.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Sends and receives datagrams.
pub trait Transport: Send + Sync + 'static {
    /// Best effort, like UDP: a datagram that cannot go now is dropped.
    fn send(&self, to: SocketAddr, datagram: &[u8]);
    /// The next datagram and its source.
    fn recv(&self) -> impl Future<Output = io::Result<(SocketAddr, Vec<u8>)>> + Send;
}

/// The election socket: UDP on the HTTP port's number.
#[derive(Debug)]
pub struct UdpTransport {
    socket: UdpSocket,
}

impl UdpTransport {
    pub fn new(socket: UdpSocket) -> Self {
        Self { socket }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

impl Transport for UdpTransport {
    fn send(&self, to: SocketAddr, datagram: &[u8]) {
        if let Err(err) = self.socket.try_send_to(datagram, to) {
            tracing::debug!(%to, error = %err, "election packet not sent");
        }
    }

    async fn recv(&self) -> io::Result<(SocketAddr, Vec<u8>)> {
        // Larger than any valid packet, so oversized ones are seen (and counted) as such.
        let mut buffer = vec![0; 4096];
        let (len, from) = self.socket.recv_from(&mut buffer).await?;
        buffer.truncate(len);
        Ok((from, buffer))
    }
}

type Inbox = mpsc::UnboundedSender<(SocketAddr, Vec<u8>)>;

#[derive(Debug)]
struct NetworkState {
    inboxes: BTreeMap<SocketAddr, Inbox>,
    /// Partition group of each address; different groups cannot talk. Absent = group 0.
    groups: BTreeMap<SocketAddr, u32>,
    /// Addresses whose links are down entirely.
    down: BTreeSet<SocketAddr>,
    /// Probability of dropping each datagram.
    loss: f64,
    rng: StdRng,
    delivered: u64,
    dropped: u64,
}

/// An in-memory network of [`MemoryTransport`]s with partitions and loss, seeded so that a
/// simulation replays exactly.
#[derive(Debug, Clone)]
pub struct MemoryNetwork {
    state: Arc<Mutex<NetworkState>>,
}

impl MemoryNetwork {
    pub fn new(seed: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(NetworkState {
                inboxes: BTreeMap::new(),
                groups: BTreeMap::new(),
                down: BTreeSet::new(),
                loss: 0.0,
                rng: StdRng::seed_from_u64(seed),
                delivered: 0,
                dropped: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, NetworkState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Attaches an endpoint at `addr` (replacing one that was there).
    pub fn endpoint(&self, addr: SocketAddr) -> MemoryTransport {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.lock().inboxes.insert(addr, sender);
        MemoryTransport {
            network: self.clone(),
            addr,
            inbox: tokio::sync::Mutex::new(receiver),
        }
    }

    /// Detaches `addr`, as if its process died.
    pub fn remove(&self, addr: SocketAddr) {
        self.lock().inboxes.remove(&addr);
    }

    /// Splits the network: each slice is one group; addresses not listed join group 0.
    pub fn partition(&self, groups: &[&[SocketAddr]]) {
        let mut state = self.lock();
        state.groups.clear();
        for (index, group) in groups.iter().enumerate() {
            for addr in *group {
                state
                    .groups
                    .insert(*addr, u32::try_from(index + 1).unwrap_or(u32::MAX));
            }
        }
    }

    /// Takes `addr`'s link down or up.
    pub fn set_link(&self, addr: SocketAddr, up: bool) {
        let mut state = self.lock();
        if up {
            state.down.remove(&addr);
        } else {
            state.down.insert(addr);
        }
    }

    /// Removes every partition and downed link.
    pub fn heal(&self) {
        let mut state = self.lock();
        state.groups.clear();
        state.down.clear();
    }

    pub fn set_loss(&self, loss: f64) {
        self.lock().loss = loss;
    }

    /// (delivered, dropped) datagrams so far.
    pub fn counts(&self) -> (u64, u64) {
        let state = self.lock();
        (state.delivered, state.dropped)
    }

    fn deliver(&self, from: SocketAddr, to: SocketAddr, datagram: &[u8]) {
        let mut state = self.lock();
        let group = |addr| state.groups.get(&addr).copied().unwrap_or(0);
        let blocked =
            group(from) != group(to) || state.down.contains(&from) || state.down.contains(&to);
        let lost = state.loss > 0.0 && {
            let loss = state.loss;
            state.rng.random_bool(loss.clamp(0.0, 1.0))
        };
        let sent = !blocked
            && !lost
            && state
                .inboxes
                .get(&to)
                .is_some_and(|inbox| inbox.send((from, datagram.to_vec())).is_ok());
        if sent {
            state.delivered += 1;
        } else {
            state.dropped += 1;
        }
    }
}

/// One node's attachment to a [`MemoryNetwork`].
#[derive(Debug)]
pub struct MemoryTransport {
    network: MemoryNetwork,
    addr: SocketAddr,
    inbox: tokio::sync::Mutex<mpsc::UnboundedReceiver<(SocketAddr, Vec<u8>)>>,
}

impl Transport for MemoryTransport {
    fn send(&self, to: SocketAddr, datagram: &[u8]) {
        self.network.deliver(self.addr, to, datagram);
    }

    async fn recv(&self) -> io::Result<(SocketAddr, Vec<u8>)> {
        self.inbox
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "detached from the network"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn partitions_and_links_block_delivery() {
        let network = MemoryNetwork::new(1);
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:1".parse().unwrap();
        let ta = network.endpoint(a);
        let tb = network.endpoint(b);
        ta.send(b, b"one");
        assert_eq!(tb.recv().await.unwrap(), (a, b"one".to_vec()));
        network.partition(&[&[a], &[b]]);
        ta.send(b, b"two");
        network.heal();
        network.set_link(b, false);
        tb.send(a, b"three");
        network.heal();
        tb.send(a, b"four");
        assert_eq!(ta.recv().await.unwrap(), (b, b"four".to_vec()));
        assert_eq!(network.counts(), (2, 2));
    }
}
