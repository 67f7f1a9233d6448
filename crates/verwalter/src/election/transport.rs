//! How election packets travel: real UDP, or an in-memory network with injected faults for
//! deterministic simulation; [`FaultyTransport`] drops datagrams on either of them (tests).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

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

/// Loss a [`FaultyTransport`] applies: the probability of dropping each incoming and each
/// outgoing datagram.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    pub drop_in: f64,
    pub drop_out: f64,
}

/// A fault spec that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fault spec {spec:?}: {reason}")]
pub struct FaultSpecError {
    pub spec: String,
    pub reason: String,
}

impl Faults {
    /// Parses `drop=0.2` (both ways) or `drop_in=0.1,drop_out=0.05`.
    pub fn parse(spec: &str) -> Result<Self, FaultSpecError> {
        let err = |reason: String| FaultSpecError {
            spec: spec.to_owned(),
            reason,
        };
        let mut faults = Self::default();
        for item in spec.split(',').filter(|item| !item.trim().is_empty()) {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| err(format!("{item:?} is not name=value")))?;
            let p: f64 = value
                .trim()
                .parse()
                .map_err(|_| err(format!("{value:?} is not a number")))?;
            if !(0.0..=1.0).contains(&p) {
                return Err(err(format!("{p} is not within 0..=1")));
            }
            match name.trim() {
                "drop" => (faults.drop_in, faults.drop_out) = (p, p),
                "drop_in" => faults.drop_in = p,
                "drop_out" => faults.drop_out = p,
                other => return Err(err(format!("unknown fault {other:?}"))),
            }
        }
        Ok(faults)
    }
}

/// Drops datagrams of an inner transport (real UDP in tests) at random, seeded; without
/// faults it only forwards.
#[derive(Debug)]
pub struct FaultyTransport<T> {
    inner: T,
    faults: Faults,
    rng: Mutex<StdRng>,
    dropped: Arc<AtomicU64>,
}

impl<T: Transport> FaultyTransport<T> {
    pub fn new(inner: T, faults: Faults, seed: u64) -> Self {
        Self {
            inner,
            faults,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Datagrams dropped so far, both ways.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The drop counter, to read after the transport has moved into a runner.
    pub fn drop_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.dropped)
    }

    fn lose(&self, probability: f64) -> bool {
        let lost = probability > 0.0
            && self
                .rng
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .random_bool(probability);
        if lost {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        lost
    }
}

impl<T: Transport> Transport for FaultyTransport<T> {
    fn send(&self, to: SocketAddr, datagram: &[u8]) {
        if !self.lose(self.faults.drop_out) {
            self.inner.send(to, datagram);
        }
    }

    async fn recv(&self) -> io::Result<(SocketAddr, Vec<u8>)> {
        loop {
            let received = self.inner.recv().await?;
            if !self.lose(self.faults.drop_in) {
                return Ok(received);
            }
        }
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
    use std::time::Duration;

    use super::*;

    #[test]
    fn fault_specs_parse() {
        assert_eq!(
            Faults::parse("drop=0.2").unwrap(),
            Faults {
                drop_in: 0.2,
                drop_out: 0.2
            }
        );
        assert_eq!(
            Faults::parse("drop_in=0.1, drop_out=0").unwrap(),
            Faults {
                drop_in: 0.1,
                drop_out: 0.0
            }
        );
        for bad in ["drop", "drop=x", "drop=1.5", "delay=3"] {
            assert!(Faults::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn faulty_transport_drops_both_ways_over_udp() {
        let bind = || async { UdpTransport::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()) };
        let (a, b) = (bind().await, bind().await);
        let b_addr = b.local_addr().unwrap();
        let lossy = FaultyTransport::new(
            a,
            Faults {
                drop_in: 0.0,
                drop_out: 0.5,
            },
            7,
        );
        // `try_send_to` needs the reactor to have seen the new socket writable once.
        tokio::time::sleep(Duration::from_millis(20)).await;
        for i in 0..200_u8 {
            lossy.send(b_addr, &[i]);
        }
        let receiver = FaultyTransport::new(
            b,
            Faults {
                drop_in: 0.5,
                drop_out: 0.0,
            },
            8,
        );
        let mut received = 0_u64;
        while tokio::time::timeout(Duration::from_millis(200), receiver.recv())
            .await
            .is_ok()
        {
            received += 1;
        }
        let sent = 200 - lossy.dropped();
        assert!((60..140).contains(&sent), "sent {sent} of 200");
        assert_eq!(received + receiver.dropped(), sent);
        assert!(received > 0 && receiver.dropped() > 0);
    }

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
