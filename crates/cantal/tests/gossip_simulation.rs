//! Deterministic simulations of the gossip loop: every node runs the agent's real loop on an
//! in-memory network with a seeded fault layer, on tokio's paused clock, in one thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cantal::gossip::transport::{FaultPlan, FaultyTransport, SimNetwork};
use cantal::gossip::{Gossip, GossipConfig, Membership, Timing};
use protocol::domain::{MachineId, PeerEvent, PeerState};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Wall-clock start of every simulation (the loops only compare times).
const WALL_START_MS: u64 = 1_700_000_000_000;

struct Node {
    addr: SocketAddr,
    membership: Arc<Membership>,
    plan: Arc<FaultPlan>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    deaths: Arc<AtomicUsize>,
}

struct Cluster {
    network: SimNetwork,
    nodes: Vec<Node>,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 77, (i / 250) as u8, (i % 250 + 1) as u8], 22682))
}

fn machine_id(i: usize) -> MachineId {
    let mut bytes = [0xab; 16];
    bytes[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    MachineId::from_bytes(bytes)
}

impl Cluster {
    fn new() -> Self {
        Self {
            network: SimNetwork::new(),
            nodes: Vec::new(),
        }
    }

    /// Starts node `i` joining through `seeds`; `boot` makes a restarted node a new run.
    fn start(&mut self, i: usize, seeds: Vec<SocketAddr>, boot: u64) -> Node {
        let config = GossipConfig {
            machine_id: machine_id(i),
            cluster_name: "sim".to_owned(),
            node_name: format!("n{i}"),
            hostname: format!("host{i}"),
            addr: addr(i),
            addresses: vec![addr(i)],
            seeds,
            max_peers: 4096,
            timing: Timing::default(),
            seed: Some(i as u64 * 7919 + boot),
        };
        let (gossip, membership) = Gossip::new(config, WALL_START_MS + boot);
        let plan = FaultPlan::new();
        let transport = FaultyTransport::new(
            self.network.endpoint(addr(i)),
            Arc::clone(&plan),
            i as u64 + 1000 * boot,
        );
        let shutdown = CancellationToken::new();
        let deaths = Arc::new(AtomicUsize::new(0));
        // Counts every transition to dead this node reports, from the start.
        let (_, mut events) = membership.peers.subscribe();
        let counter = Arc::clone(&deaths);
        tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                if let PeerEvent::StateChanged {
                    state: PeerState::Dead,
                    ..
                } = *event
                {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let task = tokio::spawn(gossip.run(transport, shutdown.clone()));
        Node {
            addr: addr(i),
            membership,
            plan,
            shutdown,
            task,
            deaths,
        }
    }

    fn launch(&mut self, count: usize) {
        self.launch_run(count, 0);
    }

    /// Starts `count` nodes joining through node 0; `boot` varies the random choices.
    fn launch_run(&mut self, count: usize, boot: u64) {
        for i in 0..count {
            let seeds = if i == 0 { vec![] } else { vec![addr(0)] };
            let node = self.start(i, seeds, boot);
            self.nodes.push(node);
        }
    }

    /// `size` nodes (their random choices varied by `boot`) that all list each other alive,
    /// `settle` after they first did.
    async fn settled(size: usize, boot: u64, settle: Duration) -> Self {
        let mut cluster = Self::new();
        cluster.launch_run(size, boot);
        let everyone: Vec<usize> = (0..size).collect();
        assert!(
            cluster
                .wait_for(Duration::from_secs(10), |c| c.all_alive(&everyone))
                .await
                .is_some(),
            "{size} nodes did not converge in 10 s"
        );
        tokio::time::sleep(settle).await;
        cluster
    }

    /// Stops every loop, so a test's next cluster runs alone.
    fn stop(&self) {
        for node in &self.nodes {
            node.shutdown.cancel();
        }
    }

    /// Simulates a crash: the endpoint vanishes and the loop stops without leaving.
    fn crash(&mut self, i: usize) {
        self.network.remove(self.nodes[i].addr);
        self.nodes[i].task.abort();
    }

    /// State of node `of` as seen by node `by`.
    fn state(&self, by: usize, of: usize) -> Option<PeerState> {
        let id = machine_id(of);
        self.nodes[by]
            .membership
            .peers
            .with(|table| table.get(&id).map(|entry| entry.state))
    }

    /// Waits (simulated time) until `check` holds, polling every 100 ms; returns how long it
    /// took, or `None` after `limit`.
    async fn wait_for(&self, limit: Duration, check: impl Fn(&Self) -> bool) -> Option<Duration> {
        let start = tokio::time::Instant::now();
        while start.elapsed() <= limit {
            if check(self) {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    fn all_alive(&self, members: &[usize]) -> bool {
        members.iter().all(|&by| {
            members
                .iter()
                .filter(|&&of| of != by)
                .all(|&of| self.state(by, of) == Some(PeerState::Alive))
        })
    }

    fn deaths(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| n.deaths.load(Ordering::Relaxed))
            .sum()
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn fifty_nodes_ten_percent_loss_no_false_deaths() {
    let mut cluster = Cluster::new();
    cluster.launch(50);
    let everyone: Vec<usize> = (0..50).collect();
    let joined = cluster
        .wait_for(Duration::from_secs(60), |c| c.all_alive(&everyone))
        .await;
    assert!(joined.is_some(), "50 nodes did not converge in 60 s");
    assert_eq!(cluster.deaths(), 0, "deaths while joining without loss");

    for node in &cluster.nodes {
        node.plan.set_loss(0.1, 0.1);
    }
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(cluster.deaths(), 0, "false deaths under 10% loss");
    assert!(cluster.all_alive(&everyone));
    // Names and round trips spread too.
    let entry = cluster.nodes[3].membership.peers.with(|table| {
        table
            .entries()
            .find(|e| e.id() == machine_id(17))
            .cloned()
            .unwrap()
    });
    assert_eq!(entry.info.as_ref().map(|i| i.name.as_str()), Some("n17"));

    // A real failure is still found, with the loss still on.
    cluster.crash(49);
    let found = cluster
        .wait_for(Duration::from_secs(15), |c| {
            (0..49).all(|by| c.state(by, 49) == Some(PeerState::Dead))
        })
        .await;
    assert!(
        found.is_some(),
        "crashed node not dead everywhere within 15 s"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn crash_is_detected_within_ten_seconds() {
    let mut cluster = Cluster::new();
    cluster.launch(5);
    let everyone: Vec<usize> = (0..5).collect();
    let joined = cluster
        .wait_for(Duration::from_secs(5), |c| c.all_alive(&everyone))
        .await;
    assert!(joined.is_some(), "5 nodes did not join within 5 s");
    let (_, mut events) = cluster.nodes[0].membership.peers.subscribe();
    cluster.crash(2);
    let detected = cluster
        .wait_for(Duration::from_secs(10), |c| {
            [0, 1, 3, 4]
                .iter()
                .all(|&by| c.state(by, 2) == Some(PeerState::Dead))
        })
        .await;
    assert!(
        detected.is_some(),
        "crash not detected everywhere within 10 s"
    );
    let mut states = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let PeerEvent::StateChanged { id, state, .. } = *event {
            assert_eq!(id, machine_id(2));
            states.push(state);
        }
    }
    assert_eq!(states, [PeerState::Suspect, PeerState::Dead]);
    // Still listed, with its time of death.
    assert!(cluster.state(0, 2).is_some());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn partition_heals_into_one_cluster() {
    let mut cluster = Cluster::new();
    cluster.launch(5);
    let everyone: Vec<usize> = (0..5).collect();
    assert!(
        cluster
            .wait_for(Duration::from_secs(5), |c| c.all_alive(&everyone))
            .await
            .is_some()
    );
    let (left, right) = ([0usize, 1], [2usize, 3, 4]);
    for &i in &left {
        cluster.nodes[i].plan.block(right.iter().map(|&j| addr(j)));
    }
    for &i in &right {
        cluster.nodes[i].plan.block(left.iter().map(|&j| addr(j)));
    }
    let split = cluster
        .wait_for(Duration::from_secs(10), |c| {
            left.iter().all(|&l| {
                right
                    .iter()
                    .all(|&r| c.state(l, r) == Some(PeerState::Dead))
            }) && right
                .iter()
                .all(|&r| left.iter().all(|&l| c.state(r, l) == Some(PeerState::Dead)))
        })
        .await;
    assert!(
        split.is_some(),
        "sides did not mark each other dead within 10 s"
    );
    tokio::time::sleep(Duration::from_secs(50)).await;
    for node in &cluster.nodes {
        node.plan.heal();
    }
    let healed = cluster
        .wait_for(Duration::from_secs(20), |c| c.all_alive(&everyone))
        .await;
    assert!(healed.is_some(), "cluster did not heal within 20 s");
    for by in 0..5 {
        assert_eq!(cluster.nodes[by].membership.peers.with(|t| t.len()), 4);
    }
}

/// A newcomer learns the members from its seed's answer and greets each of them, so every
/// member lists it after a couple of round trips and table rebuilds, not after gossip rounds
/// (200 ms each, to 3 members at a time).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn newcomer_is_listed_by_everyone_at_once() {
    let mut cluster = Cluster::new();
    cluster.launch(10);
    let old: Vec<usize> = (0..10).collect();
    assert!(
        cluster
            .wait_for(Duration::from_secs(10), |c| c.all_alive(&old))
            .await
            .is_some()
    );
    // Let the joins' gossip die down, so only the newcomer's own effect is measured.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let newcomer = cluster.start(10, vec![addr(0)], 0);
    cluster.nodes.push(newcomer);
    let listed = cluster
        .wait_for(Duration::from_secs(5), |c| {
            old.iter()
                .all(|&by| c.state(by, 10) == Some(PeerState::Alive))
        })
        .await
        .expect("every member lists the newcomer");
    assert!(
        listed <= Duration::from_millis(100),
        "listed by everyone after {listed:?}"
    );
}

/// Two nodes cut off from each other both end up alone (foca stops probing and gossiping when
/// it has no live member); after the heal they must find each other again on their own.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn lone_nodes_find_each_other_after_a_heal() {
    let mut cluster = Cluster::new();
    cluster.launch(2);
    let both = [0usize, 1];
    assert!(
        cluster
            .wait_for(Duration::from_secs(5), |c| c.all_alive(&both))
            .await
            .is_some()
    );
    cluster.nodes[0].plan.block([addr(1)]);
    cluster.nodes[1].plan.block([addr(0)]);
    let split = cluster
        .wait_for(Duration::from_secs(15), |c| {
            c.state(0, 1) == Some(PeerState::Dead) && c.state(1, 0) == Some(PeerState::Dead)
        })
        .await;
    assert!(split.is_some(), "the nodes did not mark each other dead");
    tokio::time::sleep(Duration::from_secs(30)).await;
    for node in &cluster.nodes {
        node.plan.heal();
    }
    let healed = cluster
        .wait_for(Duration::from_secs(20), |c| c.all_alive(&both))
        .await;
    assert!(
        healed.is_some(),
        "the lone nodes did not meet again within 20 s"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn restarted_node_replaces_its_old_self() {
    let mut cluster = Cluster::new();
    cluster.launch(3);
    let everyone = [0usize, 1, 2];
    assert!(
        cluster
            .wait_for(Duration::from_secs(5), |c| c.all_alive(&everyone))
            .await
            .is_some()
    );
    cluster.crash(2);
    let restarted = cluster.start(2, vec![addr(0)], 5_000);
    cluster.nodes[2] = restarted;
    let back = cluster
        .wait_for(Duration::from_secs(10), |c| c.all_alive(&everyone))
        .await;
    assert!(
        back.is_some(),
        "restarted node not alive everywhere within 10 s"
    );
    let boot = cluster.nodes[0].membership.peers.with(|t| {
        t.entries()
            .find(|e| e.id() == machine_id(2))
            .map(|e| e.node.boot_ms)
    });
    assert_eq!(boot, Some(WALL_START_MS + 5_000));
    assert_eq!(cluster.deaths(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn clean_shutdown_leaves_the_cluster() {
    let mut cluster = Cluster::new();
    cluster.launch(3);
    let everyone = [0usize, 1, 2];
    assert!(
        cluster
            .wait_for(Duration::from_secs(5), |c| c.all_alive(&everyone))
            .await
            .is_some()
    );
    cluster.nodes[1].shutdown.cancel();
    let gone = cluster
        .wait_for(Duration::from_secs(2), |c| {
            c.state(0, 1) == Some(PeerState::Dead) && c.state(2, 1) == Some(PeerState::Dead)
        })
        .await;
    assert!(gone.is_some(), "a node that left is not dead within 2 s");
}

/// When node `of` was first seen suspect and first seen dead by any of `by`.
fn watch_suspicion(cluster: &Cluster, by: &[usize], of: usize) -> Arc<std::sync::Mutex<Sighting>> {
    let sighting = Arc::new(std::sync::Mutex::new(Sighting::default()));
    for &i in by {
        let (_, mut events) = cluster.nodes[i].membership.peers.subscribe();
        let sighting = Arc::clone(&sighting);
        let id = machine_id(of);
        tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                if let PeerEvent::StateChanged {
                    id: changed, state, ..
                } = *event
                    && changed == id
                {
                    let now = tokio::time::Instant::now();
                    let mut sighting = sighting.lock().unwrap();
                    let slot = match state {
                        PeerState::Suspect => &mut sighting.suspect,
                        PeerState::Dead => &mut sighting.dead,
                        _ => continue,
                    };
                    slot.get_or_insert(now);
                }
            }
        });
    }
    sighting
}

#[derive(Debug, Default)]
struct Sighting {
    suspect: Option<tokio::time::Instant>,
    dead: Option<tokio::time::Instant>,
}

/// Lifeguard: every survivor whose probe of a crashed node fails says so, and each further
/// suspecter shortens the suspicion, from 4 s unconfirmed to 3 s with two confirmations. In a
/// ten-node cluster other survivors probe the crashed node within a couple of seconds, so the
/// first verdict comes before the unconfirmed 4 s in most runs (without confirmations it
/// came exactly 4 s after the first suspicion in every run).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn confirmed_suspicions_end_sooner() {
    const RUNS: u64 = 12;
    let size = 10;
    let mut verdicts = Vec::new();
    let mut detections = Vec::new();
    for run in 0..RUNS {
        // Crash at a different point of the probe rounds each run.
        let settle = Duration::from_millis(5_000 + run * 137);
        let mut cluster = Cluster::settled(size, run, settle).await;
        let survivors: Vec<usize> = (0..size - 1).collect();
        let sighting = watch_suspicion(&cluster, &survivors, size - 1);
        cluster.crash(size - 1);
        let detected = cluster
            .wait_for(Duration::from_secs(10), |c| {
                survivors
                    .iter()
                    .all(|&by| c.state(by, size - 1) == Some(PeerState::Dead))
            })
            .await
            .unwrap_or_else(|| panic!("run {run}: not dead everywhere within 10 s"));
        let sighting = sighting.lock().unwrap();
        let (suspect, dead) = (sighting.suspect.unwrap(), sighting.dead.unwrap());
        verdicts.push(dead - suspect);
        detections.push(detected);
        assert_eq!(cluster.deaths(), survivors.len(), "run {run}: other deaths");
        cluster.stop();
    }
    verdicts.sort();
    detections.sort();
    eprintln!("suspicion to first verdict: {verdicts:?}");
    eprintln!("crash to dead everywhere: {detections:?}");
    let median = verdicts[verdicts.len() / 2];
    assert!(
        median <= Duration::from_millis(3_100),
        "median suspicion lasted {median:?}"
    );
    assert!(verdicts.iter().all(|v| *v <= Duration::from_millis(4_100)));
}

/// A node cut off for 3.5 s (so several members' probes of it fail and confirm each other)
/// refutes the suspicion after the heal and is never declared dead. foca gossips the
/// suspicion only a few times, all lost while the node is cut off; without the members
/// telling it directly once they hear from it again (Lifeguard's buddy system), it could not
/// refute, and outages of 2 s already ended in a death in most runs.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn brief_outage_is_refuted_in_time() {
    let size = 10;
    let outage = Duration::from_millis(3_500);
    let mut suspected = 0;
    for run in 0..8 {
        let settle = Duration::from_millis(5_000 + run * 173);
        let cluster = Cluster::settled(size, 100 + run, settle).await;
        let everyone: Vec<usize> = (0..size).collect();
        let cut = size - 1;
        let others: Vec<SocketAddr> = (0..cut).map(addr).collect();
        cluster.nodes[cut].plan.block(others);
        for i in 0..cut {
            cluster.nodes[i].plan.block([addr(cut)]);
        }
        let sighting = watch_suspicion(&cluster, &(0..cut).collect::<Vec<_>>(), cut);
        tokio::time::sleep(outage).await;
        for node in &cluster.nodes {
            node.plan.heal();
        }
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert_eq!(
            cluster.deaths(),
            0,
            "run {run}: declared dead after {outage:?}"
        );
        assert!(cluster.all_alive(&everyone), "run {run}: not all alive");
        if sighting.lock().unwrap().suspect.is_some() {
            suspected += 1;
        }
        cluster.stop();
    }
    assert!(
        suspected >= 6,
        "only {suspected} of 8 outages raised a suspicion"
    );
}
