//! Deterministic simulation of the election: real runners over the in-memory network, in a
//! single-threaded runtime with paused time, with seeded randomness everywhere.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::domain::MachineId;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::runner::{self, PacketCounters, Report, Status, Wiring};
use super::transport::{Faults, FaultyTransport, MemoryNetwork, Transport, UdpTransport};
use super::{Election, Event, Local, Member, State, Timing, View};

struct Node {
    addr: SocketAddr,
    status: watch::Receiver<Status>,
    view: watch::Sender<View>,
    reports: mpsc::UnboundedReceiver<Report>,
    shutdown: CancellationToken,
    alive: bool,
    persisted: Arc<Mutex<u64>>,
}

struct Cluster {
    network: MemoryNetwork,
    nodes: Vec<Node>,
    /// Views were shrunk below a majority (minority grace over): separate quorums may each
    /// elect, so one-leader-per-epoch does not hold until they heal.
    split_quorums: std::cell::Cell<bool>,
    /// Each node's epoch at the last check: an epoch never goes backwards.
    epochs: std::cell::RefCell<Vec<u64>>,
}

fn id(i: usize) -> MachineId {
    MachineId::from_bytes([u8::try_from(i + 1).unwrap(); 16])
}

fn addr(i: usize) -> SocketAddr {
    format!("10.78.0.{}:8379", i + 1).parse().unwrap()
}

impl Cluster {
    fn start(size: usize, seed: u64) -> Self {
        let network = MemoryNetwork::new(seed);
        let addrs = (0..size).map(addr).collect();
        let endpoints = network.clone();
        Self::start_with(network, seed, addrs, move |i| endpoints.endpoint(addr(i)))
    }

    /// Runners at `addrs` over the transports `transport(i)` makes; `network` is the memory
    /// network they use, if any (partitions and kills act on it).
    fn start_with<T: Transport>(
        network: MemoryNetwork,
        seed: u64,
        addrs: Vec<SocketAddr>,
        mut transport: impl FnMut(usize) -> T,
    ) -> Self {
        let size = addrs.len();
        let mut nodes = Vec::new();
        for i in 0..size {
            let mut view = View {
                ready: true,
                fresh: true,
                ..View::default()
            };
            for j in (0..size).filter(|&j| j != i) {
                view.peers.insert(
                    id(j),
                    Member {
                        dead: false,
                        addr: Some(addrs[j]),
                    },
                );
            }
            view.needed = size / 2 + 1;
            let (view_tx, view_rx) = watch::channel(view);
            let (local_tx, local_rx) = watch::channel(Local::default());
            let (status_tx, status_rx) = watch::channel(Status::initial(0));
            let (reports_tx, reports_rx) = mpsc::unbounded_channel();
            let shutdown = CancellationToken::new();
            let persisted = Arc::new(Mutex::new(0));
            let saved = Arc::clone(&persisted);
            let seed = seed * 100 + i as u64;
            let election = Election::new(id(i), 0, None, Timing::default(), seed, Instant::now());
            let wiring = Wiring {
                view: view_rx,
                local: local_rx,
                ping_now: Arc::new(Notify::new()),
                status: status_tx,
                reports: reports_tx,
                persist: Box::new(move |epoch, _| *saved.lock().unwrap() = epoch),
                counters: Arc::new(PacketCounters::default()),
                shutdown: shutdown.clone(),
            };
            let transport = transport(i);
            tokio::spawn(async move {
                runner::run(election, transport, wiring).await;
                drop(local_tx);
            });
            nodes.push(Node {
                addr: addrs[i],
                status: status_rx,
                view: view_tx,
                reports: reports_rx,
                shutdown,
                alive: true,
                persisted,
            });
        }
        Self {
            network,
            nodes,
            split_quorums: std::cell::Cell::new(false),
            epochs: std::cell::RefCell::new(vec![0; size]),
        }
    }

    fn status(&self, i: usize) -> Status {
        self.nodes[i].status.borrow().clone()
    }

    fn leaders(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].alive && self.status(i).state == State::Leader)
            .collect()
    }

    /// Two leaders in one epoch, or an epoch going backwards, would be a safety bug, whatever
    /// the network does.
    fn check_safety(&self) {
        for (i, last) in self.epochs.borrow_mut().iter_mut().enumerate() {
            let epoch = self.status(i).epoch;
            assert!(
                epoch >= *last,
                "node {i}: epoch went back from {last} to {epoch}"
            );
            *last = epoch;
        }
        if self.split_quorums.get() {
            return;
        }
        let leaders = self.leaders();
        for (a, &x) in leaders.iter().enumerate() {
            for &y in &leaders[a + 1..] {
                assert_ne!(
                    self.status(x).epoch,
                    self.status(y).epoch,
                    "two leaders in one epoch"
                );
            }
        }
    }

    /// Advances virtual time in 10 ms steps until `done` holds; returns the time it took.
    async fn wait_for(&self, limit: Duration, done: impl Fn(&Self) -> bool) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() <= limit {
            self.check_safety();
            if done(self) {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    async fn run_for(&self, duration: Duration) {
        let start = Instant::now();
        while start.elapsed() < duration {
            self.check_safety();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Exactly one leader among the live nodes, and every live node follows it.
    fn settled(&self) -> Option<usize> {
        let alive: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].alive)
            .collect();
        self.settled_among(&alive)
    }

    /// Exactly one leader in `group`, and the rest of `group` follows it.
    fn settled_among(&self, group: &[usize]) -> Option<usize> {
        let leaders: Vec<usize> = self
            .leaders()
            .into_iter()
            .filter(|l| group.contains(l))
            .collect();
        let [leader] = leaders[..] else { return None };
        let epoch = self.status(leader).epoch;
        let all_follow = group.iter().filter(|&&i| i != leader).all(|&i| {
            let status = self.status(i);
            status.state == State::Follower { leader: id(leader) } && status.epoch == epoch
        });
        all_follow.then_some(leader)
    }

    fn kill(&mut self, i: usize) {
        self.nodes[i].shutdown.cancel();
        self.nodes[i].alive = false;
        self.network.remove(self.nodes[i].addr);
    }

    /// What cantal would report on node `i` after marking `dead` peers dead for longer than
    /// the minority grace: they no longer count toward the quorum.
    fn cantal_marks(&self, i: usize, dead: &[usize], count_dead: bool) {
        if !dead.is_empty() && !count_dead {
            self.split_quorums.set(true);
        }
        self.nodes[i].view.send_modify(|view| {
            for member in view.peers.values_mut() {
                member.dead = false;
            }
            for &j in dead {
                if let Some(member) = view.peers.get_mut(&id(j)) {
                    member.dead = true;
                }
            }
            let counted = 1 + view
                .peers
                .values()
                .filter(|m| count_dead || !m.dead)
                .count();
            view.needed = counted / 2 + 1;
        });
    }

    fn addrs(&self, group: &[usize]) -> Vec<SocketAddr> {
        group.iter().map(|&i| self.nodes[i].addr).collect()
    }

    fn drain_reports(&mut self, i: usize) -> Vec<Report> {
        let mut reports = Vec::new();
        while let Ok(report) = self.nodes[i].reports.try_recv() {
            reports.push(report);
        }
        reports
    }
}

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn cold_start_elects_one_stable_leader() {
    for seed in 0..5 {
        let cluster = Cluster::start(3, seed);
        let took = cluster
            .wait_for(5 * SECOND, |c| c.settled().is_some())
            .await;
        assert!(took.is_some(), "seed {seed}: no single leader within 5 s");
        let leader = cluster.settled().unwrap();
        let epoch = cluster.status(leader).epoch;
        cluster.run_for(10 * SECOND).await;
        assert_eq!(
            cluster.settled(),
            Some(leader),
            "seed {seed}: leadership changed without a fault"
        );
        assert_eq!(cluster.status(leader).epoch, epoch);
        assert_eq!(
            *cluster.nodes[leader].persisted.lock().unwrap(),
            epoch,
            "epoch persisted"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn killing_the_leader_elects_a_new_one_within_two_seconds() {
    for seed in 0..20 {
        let mut cluster = Cluster::start(3, seed);
        cluster
            .wait_for(5 * SECOND, |c| c.settled().is_some())
            .await
            .unwrap();
        let old = cluster.settled().unwrap();
        let old_epoch = cluster.status(old).epoch;
        cluster.kill(old);
        let took = cluster
            .wait_for(5 * SECOND, |c| c.settled().is_some())
            .await
            .unwrap_or_else(|| panic!("seed {seed}: no new leader"));
        assert!(took <= 2 * SECOND, "seed {seed}: failover took {took:?}");
        let new = cluster.settled().unwrap();
        assert_ne!(new, old);
        assert!(cluster.status(new).epoch > old_epoch);
        let reports = cluster.drain_reports(new);
        assert!(reports.contains(&Report::Election(Event::BecameLeader)));
    }
}

#[tokio::test(start_paused = true)]
async fn partition_keeps_both_sides_leading_and_heal_leaves_the_majority_leader() {
    for seed in 0..5 {
        let mut cluster = Cluster::start(3, seed);
        cluster
            .wait_for(5 * SECOND, |c| c.settled().is_some())
            .await
            .unwrap();
        let minority = cluster.settled().unwrap();
        let majority: Vec<usize> = (0..3).filter(|&i| i != minority).collect();
        let (a, b) = (
            cluster.nodes[majority[0]].addr,
            cluster.nodes[majority[1]].addr,
        );
        cluster
            .network
            .partition(&[&[cluster.nodes[minority].addr], &[a, b]]);

        // The old leader loses check-quorum within the window (plus one heartbeat).
        let stepped = cluster
            .wait_for(2 * SECOND, |c| c.status(minority).state != State::Leader)
            .await
            .unwrap();
        assert!(
            stepped <= Duration::from_millis(1400),
            "seed {seed}: step-down took {stepped:?}"
        );
        let majority_leader = cluster
            .wait_for(3 * SECOND, |c| {
                c.leaders().iter().any(|l| majority.contains(l))
                    && majority.iter().all(|&i| c.status(i).leader.is_some())
            })
            .await;
        assert!(
            majority_leader.is_some(),
            "seed {seed}: majority did not elect"
        );
        // Before cantal's dead mark plus grace, the minority cannot elect.
        cluster.run_for(3 * SECOND).await;
        assert_ne!(cluster.status(minority).state, State::Leader);

        // Grace over: the minority counts only itself and elects itself.
        cluster.cantal_marks(minority, &majority, false);
        for &i in &majority {
            cluster.cantal_marks(i, &[minority], false);
        }
        cluster
            .wait_for(3 * SECOND, |c| c.status(minority).state == State::Leader)
            .await
            .unwrap_or_else(|| panic!("seed {seed}: minority did not elect its own leader"));
        let winner = *cluster
            .leaders()
            .iter()
            .find(|l| majority.contains(l))
            .unwrap();
        cluster.drain_reports(winner);
        assert_eq!(cluster.leaders().len(), 2);

        // Heal: links and cantal's view come back.
        cluster.network.heal();
        for i in 0..3 {
            cluster.cantal_marks(i, &[], false);
        }
        let healed = cluster
            .wait_for(3 * SECOND, |c| c.settled().is_some())
            .await;
        assert!(healed.is_some(), "seed {seed}: no single leader after heal");
        assert_eq!(
            cluster.settled(),
            Some(winner),
            "seed {seed}: the majority's leader stays"
        );
        cluster.split_quorums.set(false);
        cluster.run_for(5 * SECOND).await;
        assert_eq!(cluster.settled(), Some(winner));
    }
}

/// A five-node split as in V4, with the minority ahead: the old leader and one follower are
/// cut off; the majority elects; after cantal's dead mark and the grace the minority elects
/// too, and re-elects until its epoch is higher than the majority's (the order in which real
/// clusters got there). Returns the cluster, the majority's leader, the minority's leader and
/// the minority's follower.
async fn three_two_split_with_the_minority_ahead(seed: u64) -> (Cluster, usize, usize, usize) {
    let cluster = Cluster::start(5, seed);
    cluster
        .wait_for(5 * SECOND, |c| c.settled().is_some())
        .await
        .unwrap_or_else(|| panic!("seed {seed}: no first leader"));
    let old = cluster.settled().unwrap();
    let cut = [old, (0..5).find(|&i| i != old).unwrap()];
    let majority: Vec<usize> = (0..5).filter(|i| !cut.contains(i)).collect();
    let (cut_addrs, majority_addrs) = (cluster.addrs(&cut), cluster.addrs(&majority));
    cluster.network.partition(&[&cut_addrs, &majority_addrs]);
    cluster
        .wait_for(5 * SECOND, |c| c.settled_among(&majority).is_some())
        .await
        .unwrap_or_else(|| panic!("seed {seed}: the majority did not elect"));
    let winner = cluster.settled_among(&majority).unwrap();

    for &i in &cut {
        cluster.cantal_marks(i, &majority, false);
    }
    for &i in &majority {
        cluster.cantal_marks(i, &cut, false);
    }
    for _ in 0..5 {
        cluster
            .wait_for(5 * SECOND, |c| c.settled_among(&cut).is_some())
            .await
            .unwrap_or_else(|| panic!("seed {seed}: the minority did not elect"));
        let leader = cluster.settled_among(&cut).unwrap();
        if cluster.status(leader).epoch > cluster.status(winner).epoch {
            assert_eq!(cluster.settled_among(&majority), Some(winner));
            let follower = cut[usize::from(cut[0] == leader)];
            return (cluster, winner, leader, follower);
        }
        // Cut the two apart until the leader loses check-quorum, then let them elect again.
        let (a, b) = (cluster.addrs(&cut[..1]), cluster.addrs(&cut[1..]));
        cluster.network.partition(&[&a, &b, &majority_addrs]);
        cluster
            .wait_for(3 * SECOND, |c| {
                cut.iter().all(|&i| !c.leaders().contains(&i))
            })
            .await
            .unwrap_or_else(|| panic!("seed {seed}: the minority leader kept leading alone"));
        cluster.network.partition(&[&cut_addrs, &majority_addrs]);
    }
    panic!("seed {seed}: the minority never got ahead of the majority's epoch");
}

/// Waits up to 3 s for `done`, failing if `winner` ever stops leading meanwhile.
async fn while_leading(
    cluster: &Cluster,
    winner: usize,
    seed: u64,
    done: impl Fn(&Cluster) -> bool,
) -> bool {
    cluster
        .wait_for(3 * SECOND, |c| {
            assert_eq!(
                c.status(winner).state,
                State::Leader,
                "seed {seed}: the majority's leader stepped down"
            );
            done(c)
        })
        .await
        .is_some()
}

/// Waits until `winner` leads every live node, failing if it ever stops leading meanwhile.
async fn settles_on_without_stepping_down(cluster: &Cluster, winner: usize, seed: u64) {
    let healed = while_leading(cluster, winner, seed, |c| c.settled().is_some()).await;
    assert!(healed, "seed {seed}: no single leader after heal");
    assert_eq!(
        cluster.settled(),
        Some(winner),
        "seed {seed}: the majority's leader stays"
    );
}

/// V5: links up at once; the majority's leader (more followers) stays, though the minority's
/// leader has the higher epoch.
#[tokio::test(start_paused = true)]
async fn heal_keeps_the_majority_leader_when_the_minority_is_at_a_higher_epoch() {
    for seed in 0..40 {
        let (cluster, winner, _, _) = three_two_split_with_the_minority_ahead(seed).await;
        cluster.network.heal();
        for i in 0..5 {
            cluster.cantal_marks(i, &[], false);
        }
        settles_on_without_stepping_down(&cluster, winner, seed).await;
        cluster.split_quorums.set(false);
        cluster.run_for(5 * SECOND).await;
        assert_eq!(cluster.settled(), Some(winner), "seed {seed}");
    }
}

/// The minority's follower comes back first (with the higher epoch) and joins the majority's
/// leader without deposing it; then the minority's leader comes back and follows too.
#[tokio::test(start_paused = true)]
async fn a_follower_from_a_higher_epoch_joins_the_majority_leader_without_deposing_it() {
    for seed in 0..40 {
        let (cluster, winner, loser, follower) =
            three_two_split_with_the_minority_ahead(seed).await;
        let others: Vec<usize> = (0..5).filter(|&i| i != loser).collect();
        cluster.network.partition(&[&cluster.addrs(&[loser])]);
        for &i in &others {
            cluster.cantal_marks(i, &[loser], false);
        }
        cluster.cantal_marks(loser, &others, false);
        let joined = while_leading(&cluster, winner, seed, |c| {
            c.settled_among(&others).is_some()
        })
        .await;
        assert!(joined, "seed {seed}: the follower did not join");
        assert_eq!(cluster.settled_among(&others), Some(winner), "seed {seed}");
        assert!(
            cluster.status(winner).epoch >= cluster.status(follower).epoch,
            "seed {seed}: the leader caught up with its follower's epoch"
        );
        let mut both = [winner, loser];
        both.sort_unstable();
        assert_eq!(
            cluster.leaders(),
            both,
            "seed {seed}: the cut-off leader leads alone"
        );

        cluster.network.heal();
        for i in 0..5 {
            cluster.cantal_marks(i, &[], false);
        }
        settles_on_without_stepping_down(&cluster, winner, seed).await;
    }
}

#[tokio::test(start_paused = true)]
async fn rejoining_node_with_many_failed_pre_votes_does_not_disturb_the_leader() {
    let cluster = Cluster::start(3, 7);
    cluster
        .wait_for(5 * SECOND, |c| c.settled().is_some())
        .await
        .unwrap();
    let leader = cluster.settled().unwrap();
    let epoch = cluster.status(leader).epoch;
    let isolated = (0..3).find(|&i| i != leader).unwrap();
    cluster
        .network
        .set_link(cluster.nodes[isolated].addr, false);
    // --strict-majority: the isolated node keeps counting everyone and never wins.
    cluster.run_for(60 * SECOND).await;
    assert_eq!(
        cluster.status(isolated).epoch,
        epoch,
        "pre-vote keeps the epoch"
    );
    assert_ne!(cluster.status(isolated).state, State::Leader);
    assert_eq!(cluster.leaders(), [leader]);

    cluster.network.heal();
    let rejoined = cluster
        .wait_for(2 * SECOND, |c| c.settled().is_some())
        .await
        .unwrap();
    assert!(
        rejoined <= SECOND,
        "follows the leader {rejoined:?} after heal"
    );
    assert_eq!(cluster.settled(), Some(leader));
    assert_eq!(
        cluster.status(leader).epoch,
        epoch,
        "no epoch jump on the healthy side"
    );
}

#[tokio::test(start_paused = true)]
async fn lossy_network_still_converges_safely() {
    let cluster = Cluster::start(5, 3);
    cluster.network.set_loss(0.2);
    let took = cluster
        .wait_for(20 * SECOND, |c| c.leaders().len() == 1)
        .await;
    assert!(took.is_some(), "no leader with 20% loss");
    cluster.run_for(30 * SECOND).await;
    assert_eq!(cluster.leaders().len(), 1);
    let (delivered, dropped) = cluster.network.counts();
    assert!(dropped > 0 && delivered > dropped);
}

#[tokio::test(start_paused = true)]
async fn a_node_alone_elects_itself_after_the_start_wait() {
    let cluster = Cluster::start(1, 1);
    let took = cluster
        .wait_for(2 * SECOND, |c| c.leaders() == [0])
        .await
        .unwrap();
    assert!(
        took >= Duration::from_millis(500) && took < SECOND,
        "{took:?}"
    );
}

/// The same runners on real UDP sockets on loopback, in real time, through the fault layer
/// with 20% loss each way: they elect one leader, and a new one after the leader dies.
#[tokio::test]
async fn real_udp_sockets_with_20_percent_loss_elect_and_fail_over() {
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    let addrs = sockets.iter().map(|s| s.local_addr().unwrap()).collect();
    let faults = Faults::parse("drop=0.2").unwrap();
    let mut sockets = sockets.into_iter();
    let mut drop_counters = Vec::new();
    let mut cluster = Cluster::start_with(MemoryNetwork::new(0), 21, addrs, |i| {
        let seed = 21 + u64::try_from(i).unwrap();
        let transport =
            FaultyTransport::new(UdpTransport::new(sockets.next().unwrap()), faults, seed);
        drop_counters.push(transport.drop_counter());
        transport
    });
    let took = cluster
        .wait_for(20 * SECOND, |c| c.settled().is_some())
        .await;
    assert!(took.is_some(), "no single leader within 20 s at 20% loss");
    let old = cluster.settled().unwrap();
    let old_epoch = cluster.status(old).epoch;
    cluster.kill(old);
    let took = cluster
        .wait_for(20 * SECOND, |c| c.settled().is_some())
        .await;
    assert!(took.is_some(), "no new leader within 20 s at 20% loss");
    let new = cluster.settled().unwrap();
    assert_ne!(new, old);
    assert!(cluster.status(new).epoch > old_epoch);
    let dropped: u64 = drop_counters
        .iter()
        .map(|counter| counter.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert!(dropped > 0, "the fault layer dropped datagrams");
}
