//! Membership of real agents on loopback (any user): a 30-agent chain (C2), a cluster that
//! re-forms from `peers.json` after a full stop (C8), five agents gossiping through the
//! fault layer at 10% loss each way (C6, shortened), and a flood of made-up members (C10).
//!
//! Every agent listens on 127.0.0.1 at its own port; nothing else is contacted.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cantal::gossip::frame;
use cantal::gossip::identity::NodeId;
use common::{Agent, eventually, free_port, get_json, wait_ready};
use foca::{Codec, Header, Member as FocaMember, Message, PostcardCodec};
use protocol::domain::{PeerEvent, PeerState};
use protocol::pb::cantal::WatchPeersRequest;
use protocol::pb::cantal::agent_client::AgentClient;
use serde_json::Value as Json;

/// Distinct free ports (each is free for TCP and UDP when picked).
fn free_ports(count: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    while ports.len() < count {
        let port = free_port();
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports
}

/// (name, id, state) of every peer `agent` lists; empty while it does not answer.
async fn peers(agent: &Agent) -> Vec<(String, String, String)> {
    let (status, body) = common::get(&format!("{}/all_peers.json", agent.url)).await;
    let reply: Json = match status {
        200 => serde_json::from_str(&body).unwrap(),
        _ => return Vec::new(),
    };
    reply["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let text = |field: &str| p[field].as_str().unwrap_or_default().to_owned();
            (text("name"), text("id"), text("state"))
        })
        .collect()
}

/// Whether every agent lists every other one by name, in a state in `states`.
async fn full_membership(agents: &[Agent], names: &[String], states: &[&str]) -> bool {
    for (i, agent) in agents.iter().enumerate() {
        let listed = peers(agent).await;
        let members: HashSet<&str> = listed
            .iter()
            .filter(|(_, _, state)| states.contains(&state.as_str()))
            .map(|(name, _, _)| name.as_str())
            .collect();
        let others = names.iter().enumerate().filter(|(j, _)| *j != i);
        if listed.len() != names.len() - 1 || !others.clone().all(|(_, n)| members.contains(&**n)) {
            return false;
        }
    }
    true
}

fn start_member(port: u16, name: &str, cluster: &str, extra: &[&str]) -> Agent {
    let mut args = vec!["--cluster-name", cluster, "--node-name", name];
    args.extend_from_slice(extra);
    Agent::start_on(port, &args, &[])
}

/// C2: 30 agents, each joining its predecessor; full membership everywhere within 10 s of
/// the last start (everyone listed by name, none dead), with 30 distinct ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_agents_in_a_join_chain() {
    const COUNT: usize = 30;
    let ports = free_ports(COUNT);
    let names: Vec<String> = (0..COUNT).map(|i| format!("n{i}")).collect();
    let agents: Vec<Agent> = (0..COUNT)
        .map(|i| {
            let join = i.checked_sub(1).map(|j| format!("127.0.0.1:{}", ports[j]));
            let mut extra = vec!["--interval", "60000"];
            if let Some(join) = &join {
                extra.extend(["--join", join.as_str()]);
            }
            start_member(ports[i], &names[i], "c2", &extra)
        })
        .collect();
    let started = Instant::now();
    // Suspect still counts as a member: 30 agents on two shared cores may miss a probe
    // deadline; nobody may be dead or missing.
    let formed = eventually(Duration::from_secs(10), || {
        full_membership(&agents, &names, &["alive", "suspect"])
    })
    .await;
    let took = started.elapsed();
    if !formed {
        let mut report = String::new();
        for (agent, name) in agents.iter().zip(&names) {
            let listed = peers(agent).await;
            let odd: Vec<_> = listed.iter().filter(|(_, _, s)| s != "alive").collect();
            let missing: Vec<_> = names
                .iter()
                .filter(|n| *n != name && !listed.iter().any(|(l, _, _)| l == *n))
                .collect();
            let unnamed = listed.iter().filter(|(n, _, _)| n.is_empty()).count();
            report += &format!(
                "{name}: {} listed, {unnamed} unnamed, missing {missing:?}, not alive {odd:?}\n",
                listed.len()
            );
        }
        panic!(
            "no full membership within 10 s:\n{report}{}",
            agents[0].log()
        );
    }
    let mut ids = HashSet::new();
    for agent in &agents {
        ids.extend(peers(agent).await.into_iter().map(|(_, id, _)| id));
    }
    assert_eq!(ids.len(), COUNT, "ids: {ids:?}");
    eprintln!("30 agents formed one cluster {took:?} after the last start");
}

/// C8: three agents with `--storage-dir` stop together and start again without `--join`:
/// they find each other through `peers.json` within 5 s, and the history they answer over
/// the last 5 minutes holds the samples from before the stop, then a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_reforms_from_peers_json() {
    const COUNT: usize = 3;
    let ports = free_ports(COUNT);
    let names: Vec<String> = (0..COUNT).map(|i| format!("s{i}")).collect();
    let storage = tempfile::tempdir().unwrap();
    let dirs: Vec<String> = (0..COUNT)
        .map(|i| storage.path().join(&names[i]).display().to_string())
        .collect();
    let start = |i: usize, join: Option<String>| {
        let mut extra = vec!["--interval", "500", "--storage-dir", &dirs[i]];
        if let Some(join) = &join {
            extra.extend(["--join", join.as_str()]);
        }
        start_member(ports[i], &names[i], "c8", &extra)
    };
    let first = format!("127.0.0.1:{}", ports[0]);
    let mut agents: Vec<Agent> = (0..COUNT)
        .map(|i| start(i, (i > 0).then(|| first.clone())))
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || full_membership(
            &agents,
            &names,
            &["alive"]
        ))
        .await,
        "the first cluster did not form"
    );
    for agent in &agents {
        wait_ready(agent).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Stop all at once (SIGTERM), then wait for each: each saves peers.json on the way out.
    for agent in &agents {
        let pid = i32::try_from(agent.child.id()).unwrap();
        isolation::signal::send(pid, isolation::Signal::SIGTERM).unwrap();
    }
    for agent in &mut agents {
        assert_eq!(agent.stop(), Some(0), "{}", agent.log());
    }
    let stopped_at = unix_now();
    for dir in &dirs {
        let saved: Json =
            serde_json::from_str(&std::fs::read_to_string(format!("{dir}/peers.json")).unwrap())
                .unwrap();
        assert!(
            !saved["ip_addresses"].as_array().unwrap().is_empty(),
            "{dir}: {saved}"
        );
    }
    drop(agents);
    // Down long enough that a 2 s window holds no sample in the gap.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let agents: Vec<Agent> = (0..COUNT).map(|i| start(i, None)).collect();
    let restarted = Instant::now();
    let reformed = eventually(Duration::from_secs(5), || {
        full_membership(&agents, &names, &["alive"])
    })
    .await;
    assert!(
        reformed,
        "not re-formed from peers.json within 5 s:\n{}",
        agents[0].log()
    );
    eprintln!("re-formed {:?} after the restart", restarted.elapsed());
    for agent in &agents {
        wait_ready(agent).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let now = unix_now();
    let range = |query: &str| {
        format!(
            "{}/api/v1/query_range?query={query}&start={}&end={now}&step=0.5",
            agents[0].url,
            now - 300.0
        )
    };
    let times = |reply: &Json| -> Vec<f64> {
        reply["data"]["result"][0]["values"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|point| point[0].as_f64().unwrap())
            .collect()
    };
    let uptime = get_json(&range("cantal_uptime")).await;
    let before = times(&uptime)
        .into_iter()
        .filter(|t| *t < stopped_at)
        .count();
    assert!(before >= 4, "no samples from before the stop: {uptime}");
    // A 2 s window needs two samples, so the points inside the downtime are missing.
    let moving = times(&get_json(&range("irate(cantal_uptime%5B2s%5D)")).await);
    // The first step of two or more seconds between points is the downtime.
    let gap = moving
        .windows(2)
        .find(|pair| pair[1] - pair[0] >= 2.0)
        .unwrap_or_else(|| panic!("no gap: {moving:?}"));
    assert!(
        gap[0] < stopped_at + 2.0 && gap[1] > stopped_at,
        "the gap {gap:?} is not at the stop ({stopped_at}): {moving:?}"
    );
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Every transition to dead the agent's `WatchPeers` stream delivers, counted from now.
async fn count_deaths(agent: &Agent) -> Arc<AtomicUsize> {
    let channel = protocol::unix::connect(&agent.socket).await.unwrap();
    let mut stream = AgentClient::new(channel)
        .watch_peers(WatchPeersRequest {})
        .await
        .unwrap()
        .into_inner();
    let deaths = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&deaths);
    tokio::spawn(async move {
        while let Ok(Some(message)) = stream.message().await {
            if let Ok(PeerEvent::StateChanged {
                state: PeerState::Dead,
                ..
            }) = PeerEvent::try_from(message)
            {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    deaths
}

/// C6, shortened: five agents whose real UDP sockets drop 10% of datagrams in and out (the
/// `test-faults` layer) gossip for 60 s without a single transition to dead, with round
/// trips measured; then a `kill -9`ed one is dead on all others within 15 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_agents_at_ten_percent_loss() {
    const COUNT: usize = 5;
    let ports = free_ports(COUNT);
    let names: Vec<String> = (0..COUNT).map(|i| format!("l{i}")).collect();
    let first = format!("127.0.0.1:{}", ports[0]);
    let mut agents: Vec<Agent> = (0..COUNT)
        .map(|i| {
            let mut args = vec!["--cluster-name", "c6", "--node-name", &names[i]];
            args.extend(["--interval", "60000"]);
            if i > 0 {
                args.extend(["--join", first.as_str()]);
            }
            Agent::start_on(ports[i], &args, &[("CANTAL_TEST_FAULTS", "drop=0.1")])
        })
        .collect();
    for agent in &agents {
        wait_ready(agent).await;
        assert!(
            agent.log().contains("test fault layer"),
            "the agent was built without test-faults:\n{}",
            agent.log()
        );
    }
    assert!(
        eventually(Duration::from_secs(10), || full_membership(
            &agents,
            &names,
            &["alive"]
        ))
        .await,
        "no cluster at 10% loss"
    );
    let mut deaths = Vec::new();
    for agent in &agents {
        deaths.push(count_deaths(agent).await);
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    let false_deaths: Vec<usize> = deaths.iter().map(|d| d.load(Ordering::Relaxed)).collect();
    assert!(
        false_deaths.iter().all(|d| *d == 0),
        "transitions to dead at 10% loss: {false_deaths:?}"
    );
    let listed = get_json(&format!("{}/all_peers.json", agents[0].url)).await;
    assert!(
        listed["peers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| !p["last_roundtrip"].is_null()),
        "round trips missing: {listed}"
    );

    let victim = agents.pop().unwrap();
    drop(victim); // kill -9
    let dead_everywhere = eventually(Duration::from_secs(15), || async {
        for agent in &agents {
            let listed = peers(agent).await;
            if !listed
                .iter()
                .any(|(name, _, state)| name == "l4" && state == "dead")
            {
                return false;
            }
        }
        true
    })
    .await;
    assert!(dead_everywhere, "l4 not dead everywhere within 15 s");
}

/// A framed foca datagram from `header` and, for messages that carry them, `members`.
fn datagram(cluster: &str, header: &Header<NodeId>, members: &[FocaMember<NodeId>]) -> Vec<u8> {
    let mut codec = PostcardCodec;
    let mut payload = Vec::new();
    codec.encode_header(header, &mut payload).unwrap();
    if header.message != Message::Announce {
        payload.extend_from_slice(&u16::try_from(members.len()).unwrap().to_be_bytes());
        for member in members {
            codec.encode_member(member, &mut payload).unwrap();
        }
    }
    let mut out = Vec::new();
    frame::encode(&frame::cluster_hash(cluster), &payload, &mut out);
    out
}

/// A made-up member at a loopback address nobody listens on (port 9 of 127.77.0.0/16).
fn fake(i: usize) -> NodeId {
    let mut machine_id = [0xfa; 16];
    machine_id[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    NodeId {
        addr: SocketAddr::from(([127, 77, (i / 250) as u8, (i % 250 + 1) as u8], 9)),
        machine_id,
        boot_ms: 1,
        nonce: i as u64,
        generation: 0,
    }
}

/// C10: a crafted gossip announces 5000 made-up members to one of two real agents, both with
/// `--max-peers 64`. Neither table ever holds more than 64 entries, the flooded agent declares
/// the fakes dead, neither agent lists a fake that is not dead within 30 s (the other one
/// learns some second-hand), and the two real agents never see each other dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_of_fake_members() {
    const FAKES: usize = 5000;
    const MAX_PEERS: usize = 64;
    let ports = free_ports(2);
    let names = ["r0".to_owned(), "r1".to_owned()];
    let max_peers = MAX_PEERS.to_string();
    let seed = format!("127.0.0.1:{}", ports[0]);
    let limits = ["--interval", "60000", "--max-peers", &max_peers];
    let agents = vec![
        start_member(ports[0], "r0", "c10", &limits),
        start_member(
            ports[1],
            "r1",
            "c10",
            &[&limits[..], &["--join", &seed]].concat(),
        ),
    ];
    assert!(
        eventually(Duration::from_secs(10), || full_membership(
            &agents,
            &names,
            &["alive"]
        ))
        .await,
        "the real agents did not meet"
    );

    // The attacker announces itself to r0 and learns r0's identity from the feed it answers.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let attacker = NodeId {
        addr: socket.local_addr().unwrap(),
        machine_id: [0xee; 16],
        boot_ms: 1,
        nonce: 1,
        generation: 0,
    };
    let target: SocketAddr = seed.parse().unwrap();
    let header = |dst: NodeId, message| Header {
        src: attacker.clone(),
        src_incarnation: 0,
        dst,
        message,
    };
    let mut victim = None;
    let mut buf = vec![0; 65536];
    for _ in 0..5 {
        let announce = datagram("c10", &header(NodeId::seed(target), Message::Announce), &[]);
        socket.send_to(&announce, target).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while let Ok(Ok((len, _))) =
            tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await
        {
            let mut payload = &buf[frame::HEADER_LEN.min(len)..len];
            let mut codec = PostcardCodec;
            if let Ok(reply) = Codec::<NodeId>::decode_header(&mut codec, &mut payload)
                && reply.message == Message::Feed
            {
                victim = Some(reply.src);
                break;
            }
        }
        if victim.is_some() {
            break;
        }
    }
    let victim = victim.expect("r0 answers the attacker's announce");

    // 5000 fakes, 25 to a gossip datagram (under the 1400-byte cap), paced so the receive
    // buffer keeps up.
    let fakes: Vec<FocaMember<NodeId>> = (0..FAKES).map(|i| FocaMember::alive(fake(i))).collect();
    for (i, chunk) in fakes.chunks(25).enumerate() {
        let gossip = datagram("c10", &header(victim.clone(), Message::Gossip), chunk);
        assert!(gossip.len() <= 1400, "{}", gossip.len());
        socket.send_to(&gossip, target).await.unwrap();
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let flooded = Instant::now();

    // Until r0 reports its checks done and neither agent lists a fake that is not dead: no
    // table over the cap, the real agents never dead to each other.
    let checked = |log: &str| {
        log.lines()
            .find(|line| line.contains("declared the silent ones dead"))
            .map(|line| serde_json::from_str::<Json>(line).unwrap()["fields"]["dead"].clone())
    };
    let mut dead = None;
    let mut live_fakes = usize::MAX;
    while (dead.is_none() || live_fakes > 0) && flooded.elapsed() < Duration::from_secs(30) {
        live_fakes = 0;
        for (agent, other) in agents.iter().zip(["r1", "r0"]) {
            let reply = get_json(&format!("{}/all_peers.json", agent.url)).await;
            let listed = reply["peers"].as_array().unwrap();
            assert!(listed.len() <= MAX_PEERS, "{} peers listed", listed.len());
            let status = get_json(&format!("{}/status.json", agent.url)).await;
            assert!(
                status["num_peers"].as_u64().unwrap() <= MAX_PEERS as u64,
                "{status}"
            );
            // A busy agent may miss a probe deadline (suspect); dead would be a failure.
            assert!(
                listed
                    .iter()
                    .any(|p| p["name"] == other && p["state"] != "dead"),
                "{other} is dead: {reply}"
            );
            live_fakes += listed
                .iter()
                .filter(|p| {
                    p["primary_addr"].as_str().unwrap().starts_with("127.77.")
                        && p["state"] != "dead"
                })
                .count();
        }
        dead = checked(&agents[0].log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = agents[0].log();
    assert!(
        log.contains("more members than --max-peers"),
        "the flood did not reach r0:\n{log}"
    );
    let dead = dead.unwrap_or_else(|| panic!("r0 still checking 30 s after the flood:\n{log}"));
    assert_eq!(
        live_fakes,
        0,
        "fakes not yet dead 30 s after the flood:\n{}",
        agents[1].log()
    );
    assert!(
        dead.as_u64().unwrap() >= FAKES as u64 / 2,
        "only {dead} fakes declared dead"
    );
    eprintln!(
        "{dead} fakes declared dead {:?} after the flood",
        flooded.elapsed()
    );
    let both_alive = eventually(Duration::from_secs(10), || async {
        let r0 = peers(&agents[0]).await;
        let r1 = peers(&agents[1]).await;
        r0.iter().any(|(n, _, s)| n == "r1" && s == "alive")
            && r1.iter().any(|(n, _, s)| n == "r0" && s == "alive")
    })
    .await;
    assert!(
        both_alive,
        "the real agents do not see each other alive after the flood"
    );
}
