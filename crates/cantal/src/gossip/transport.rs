//! Datagram transports for gossip: the UDP socket, an in-memory network for simulations,
//! and a fault layer (loss, delay, partitions) that wraps either.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Sends and receives datagrams. `recv_from` must be cancel-safe: the gossip loop polls it
/// beside timers.
pub trait Transport: Clone + Send + Sync + 'static {
    fn send_to(&self, data: &[u8], to: SocketAddr) -> impl Future<Output = io::Result<()>> + Send;

    /// Receives one datagram into `buf`; a datagram longer than `buf` is truncated to it.
    fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send;
}

/// The real thing.
#[derive(Debug, Clone)]
pub struct UdpTransport(Arc<UdpSocket>);

impl UdpTransport {
    pub fn new(socket: UdpSocket) -> Self {
        Self(Arc::new(socket))
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl Transport for UdpTransport {
    async fn send_to(&self, data: &[u8], to: SocketAddr) -> io::Result<()> {
        self.0.send_to(data, to).await.map(drop)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.0.recv_from(buf).await
    }
}

/// What a [`FaultyTransport`] does to traffic. Shared, so a test can change it while nodes
/// run (partition, heal).
#[derive(Debug, Default)]
pub struct FaultPlan {
    state: Mutex<FaultState>,
}

#[derive(Debug, Default, Clone)]
struct FaultState {
    drop_in: f64,
    drop_out: f64,
    delay: Option<Range<Duration>>,
    blocked: HashSet<SocketAddr>,
}

/// A `CANTAL_TEST_FAULTS` value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fault spec {spec:?}: {reason}")]
pub struct FaultSpecError {
    pub spec: String,
    pub reason: String,
}

impl FaultPlan {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Parses `drop=0.1`, `drop_in=0.1,drop_out=0.05`, `delay_ms=5..20`.
    pub fn parse(spec: &str) -> Result<Arc<Self>, FaultSpecError> {
        let err = |reason: String| FaultSpecError {
            spec: spec.to_owned(),
            reason,
        };
        let plan = Self::new();
        for item in spec.split(',').filter(|s| !s.trim().is_empty()) {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| err(format!("{item:?} is not name=value")))?;
            let probability = || -> Result<f64, FaultSpecError> {
                let p: f64 = value
                    .parse()
                    .map_err(|_| err(format!("{value:?} is not a number")))?;
                if (0.0..=1.0).contains(&p) {
                    Ok(p)
                } else {
                    Err(err(format!("{p} is not within 0..=1")))
                }
            };
            match name.trim() {
                "drop" => {
                    let p = probability()?;
                    plan.set_loss(p, p);
                }
                "drop_in" => plan.lock().drop_in = probability()?,
                "drop_out" => plan.lock().drop_out = probability()?,
                "delay_ms" => {
                    let (low, high) = value.split_once("..").unwrap_or((value, value));
                    let parse = |v: &str| {
                        v.parse::<u64>()
                            .map(Duration::from_millis)
                            .map_err(|_| err(format!("{v:?} is not a number of ms")))
                    };
                    let (low, high) = (parse(low)?, parse(high)?);
                    plan.set_delay(Some(low..high.max(low + Duration::from_millis(1))));
                }
                other => return Err(err(format!("unknown fault {other:?}"))),
            }
        }
        Ok(plan)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Probability of dropping each incoming and each outgoing datagram.
    pub fn set_loss(&self, drop_in: f64, drop_out: f64) {
        let mut state = self.lock();
        state.drop_in = drop_in;
        state.drop_out = drop_out;
    }

    /// Each outgoing datagram is delayed by a random duration in `delay`.
    pub fn set_delay(&self, delay: Option<Range<Duration>>) {
        self.lock().delay = delay;
    }

    /// Drops all traffic to and from these addresses (a partition).
    pub fn block(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        self.lock().blocked.extend(addrs);
    }

    /// Ends every partition.
    pub fn heal(&self) {
        self.lock().blocked.clear();
    }
}

/// Wraps a transport with a [`FaultPlan`]; random choices come from a seeded generator so a
/// simulation replays the same way.
#[derive(Debug, Clone)]
pub struct FaultyTransport<T> {
    inner: T,
    plan: Arc<FaultPlan>,
    rng: Arc<Mutex<StdRng>>,
}

impl<T: Transport> FaultyTransport<T> {
    pub fn new(inner: T, plan: Arc<FaultPlan>, seed: u64) -> Self {
        Self {
            inner,
            plan,
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
        }
    }

    fn roll(&self, probability: f64) -> bool {
        probability > 0.0
            && self
                .rng
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .random_bool(probability.min(1.0))
    }
}

impl<T: Transport> Transport for FaultyTransport<T> {
    async fn send_to(&self, data: &[u8], to: SocketAddr) -> io::Result<()> {
        let state = self.plan.lock().clone();
        if state.blocked.contains(&to) || self.roll(state.drop_out) {
            return Ok(());
        }
        let Some(delay) = state.delay else {
            return self.inner.send_to(data, to).await;
        };
        let wait = self
            .rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .random_range(delay);
        let inner = self.inner.clone();
        let data = data.to_vec();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            // A delayed datagram that cannot be sent is lost, as on a network.
            let _ = inner.send_to(&data, to).await;
        });
        Ok(())
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        loop {
            let (len, from) = self.inner.recv_from(buf).await?;
            let state = self.plan.lock().clone();
            if !state.blocked.contains(&from) && !self.roll(state.drop_in) {
                return Ok((len, from));
            }
        }
    }
}

type Datagram = (Vec<u8>, SocketAddr);
type Inbox = mpsc::UnboundedSender<Datagram>;
type Outbox = Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Datagram>>>;

/// An in-memory datagram network: endpoints by address, instant delivery, no loss (wrap
/// endpoints in [`FaultyTransport`] for that).
#[derive(Debug, Clone, Default)]
pub struct SimNetwork {
    inboxes: Arc<Mutex<HashMap<SocketAddr, Inbox>>>,
}

impl SimNetwork {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new endpoint at `addr`; replaces one that was there (a restarted node).
    pub fn endpoint(&self, addr: SocketAddr) -> SimTransport {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inboxes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(addr, tx);
        SimTransport {
            addr,
            network: self.clone(),
            inbox: Arc::new(tokio::sync::Mutex::new(rx)),
        }
    }

    /// Removes the endpoint at `addr` (a crashed node): datagrams to it vanish.
    pub fn remove(&self, addr: SocketAddr) {
        self.inboxes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&addr);
    }
}

/// One endpoint of a [`SimNetwork`].
#[derive(Debug, Clone)]
pub struct SimTransport {
    addr: SocketAddr,
    network: SimNetwork,
    inbox: Outbox,
}

impl Transport for SimTransport {
    async fn send_to(&self, data: &[u8], to: SocketAddr) -> io::Result<()> {
        let inbox = self
            .network
            .inboxes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&to)
            .cloned();
        if let Some(inbox) = inbox {
            let _ = inbox.send((data.to_vec(), self.addr));
        }
        Ok(())
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let mut inbox = self.inbox.lock().await;
        let (data, from) = inbox
            .recv()
            .await
            .ok_or_else(|| io::Error::from(io::ErrorKind::BrokenPipe))?;
        let len = data.len().min(buf.len());
        buf[..len].copy_from_slice(&data[..len]);
        Ok((len, from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 22682))
    }

    #[tokio::test]
    async fn sim_network_delivers_and_truncates() {
        let network = SimNetwork::new();
        let a = network.endpoint(addr(1));
        let b = network.endpoint(addr(2));
        a.send_to(b"hello", addr(2)).await.unwrap();
        a.send_to(b"to nobody", addr(3)).await.unwrap();
        let mut buf = [0; 3];
        assert_eq!(b.recv_from(&mut buf).await.unwrap(), (3, addr(1)));
        assert_eq!(&buf, b"hel");
    }

    #[tokio::test]
    async fn faults_drop_and_partition() {
        let network = SimNetwork::new();
        let plan = FaultPlan::new();
        let a = FaultyTransport::new(network.endpoint(addr(1)), Arc::clone(&plan), 1);
        let b = network.endpoint(addr(2));
        plan.set_loss(0.0, 0.5);
        for _ in 0..1000 {
            a.send_to(b"x", addr(2)).await.unwrap();
        }
        let mut received = 0;
        let mut buf = [0; 8];
        while tokio::time::timeout(Duration::from_millis(10), b.recv_from(&mut buf))
            .await
            .is_ok()
        {
            received += 1;
        }
        assert!((400..600).contains(&received), "{received} of 1000 arrived");
        plan.set_loss(0.0, 0.0);
        plan.block([addr(2)]);
        a.send_to(b"x", addr(2)).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(10), b.recv_from(&mut buf))
                .await
                .is_err()
        );
        plan.heal();
        a.send_to(b"x", addr(2)).await.unwrap();
        assert!(b.recv_from(&mut buf).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn delay_holds_datagrams_back() {
        let network = SimNetwork::new();
        let plan = FaultPlan::parse("delay_ms=100").unwrap();
        let a = FaultyTransport::new(network.endpoint(addr(1)), plan, 1);
        let b = network.endpoint(addr(2));
        let start = tokio::time::Instant::now();
        a.send_to(b"x", addr(2)).await.unwrap();
        let mut buf = [0; 8];
        b.recv_from(&mut buf).await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn parses_specs() {
        let plan = FaultPlan::parse("drop=0.1").unwrap();
        assert_eq!(plan.lock().drop_in, 0.1);
        assert_eq!(plan.lock().drop_out, 0.1);
        let plan = FaultPlan::parse("drop_in=0.2, drop_out=0").unwrap();
        assert_eq!(plan.lock().drop_in, 0.2);
        for bad in ["drop=2", "drop", "loss=0.1", "delay_ms=x"] {
            assert!(FaultPlan::parse(bad).is_err(), "{bad}");
        }
    }
}
