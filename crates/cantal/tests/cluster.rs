//! Five agents in five network namespaces (root only): join from one seed, a partition made
//! by taking a link down and its healing, a flood of bad datagrams, and a `kill -9`.
//!
//! Hosts 1-2 hang on bridge `bra`, hosts 3-5 on bridge `brb`, both bridges in a "switch"
//! namespace and joined by a veth trunk, so taking the trunk down splits {1,2} from {3,4,5}.
//! Everything lives in namespaces this test creates (names carry its pid) and is removed by
//! a guard, even when an assertion fails. Traffic goes only to the test's own 10.77.0.0/24
//! addresses inside them.

mod common;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{AGENT, CLI, is_root};
use serde_json::Value as Json;

const HOSTS: usize = 5;
const PORT: u16 = 22682;

fn ip(args: &[&str]) -> Output {
    let output = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2) runs");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The test network; dropping it kills the agents and removes every namespace.
struct Network {
    prefix: String,
    agents: Vec<Option<Child>>,
    dir: tempfile::TempDir,
}

impl Network {
    fn new() -> Self {
        let prefix = format!("cnt{}", std::process::id());
        let net = Self {
            prefix,
            agents: (0..HOSTS).map(|_| None).collect(),
            dir: tempfile::tempdir().unwrap(),
        };
        let switch = net.switch();
        ip(&["netns", "add", &switch]);
        for bridge in ["bra", "brb"] {
            ip(&["-n", &switch, "link", "add", bridge, "type", "bridge"]);
            ip(&["-n", &switch, "link", "set", bridge, "up"]);
        }
        ip(&[
            "-n", &switch, "link", "add", "trunk-a", "type", "veth", "peer", "name", "trunk-b",
        ]);
        ip(&[
            "-n", &switch, "link", "set", "trunk-a", "master", "bra", "up",
        ]);
        ip(&[
            "-n", &switch, "link", "set", "trunk-b", "master", "brb", "up",
        ]);
        for host in 1..=HOSTS {
            let ns = net.host(host);
            let port = format!("h{host}");
            ip(&["netns", "add", &ns]);
            ip(&[
                "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            ip(&[
                "-n",
                &switch,
                "link",
                "set",
                &port,
                "master",
                if host <= 2 { "bra" } else { "brb" },
                "up",
            ]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", addr(host)),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }

    fn switch(&self) -> String {
        format!("{}sw", self.prefix)
    }

    fn host(&self, host: usize) -> String {
        format!("{}h{host}", self.prefix)
    }

    fn start(&mut self, host: usize, join: Option<usize>) {
        let dir = self.dir.path().join(format!("h{host}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.host(host), AGENT])
            .args(["--host", &addr(host), "--cluster-name", "t"])
            .args(["--node-name", &format!("h{host}")])
            .args(["--override-machine-id", &format!("{:032x}", 0x7700 + host)])
            .arg("--storage-dir")
            .arg(dir.join("storage"))
            .arg("--socket")
            .arg(dir.join("agent.sock"))
            .args(["--log-format", "json"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("agent.log")).unwrap(),
            ));
        if let Some(seed) = join {
            command.args(["--join", &format!("{}:{PORT}", addr(seed))]);
        }
        self.agents[host - 1] = Some(command.spawn().unwrap());
    }

    fn kill(&mut self, host: usize) {
        if let Some(mut child) = self.agents[host - 1].take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn log(&self, host: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("h{host}/agent.log")))
            .unwrap_or_default()
    }

    /// Runs `cantal` against host's agent inside its namespace; the JSON it prints.
    fn cli_json(&self, host: usize, args: &[&str]) -> Option<Json> {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.host(host), CLI])
            .args(["--agent", &format!("http://{}:{PORT}", addr(host))])
            .args(args)
            .output()
            .ok()?;
        serde_json::from_slice(&output.stdout).ok()
    }

    fn peers(&self, host: usize) -> Vec<(String, String)> {
        self.cli_json(host, &["peers", "--json"])
            .and_then(|j| j["peers"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or_default().to_owned(),
                    p["state"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    fn state(&self, by: usize, of: usize) -> Option<String> {
        let name = format!("h{of}");
        self.peers(by)
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s)
    }

    fn status(&self, host: usize) -> Json {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.host(host), "python3", "-c"])
            .arg(format!(
                "import urllib.request; print(urllib.request.urlopen('http://{}:{PORT}/status.json', timeout=5).read().decode())",
                addr(host)
            ))
            .output()
            .unwrap();
        serde_json::from_slice(&output.stdout).unwrap_or(Json::Null)
    }

    fn wait(&self, what: &str, limit: Duration, check: impl Fn(&Self) -> bool) -> Duration {
        let start = Instant::now();
        while start.elapsed() <= limit {
            if check(self) {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let logs: String = (1..=HOSTS)
            .map(|h| format!("--- h{h}:\n{}\n", tail(&self.log(h))))
            .collect();
        let tables: String = (1..=HOSTS)
            .map(|h| format!("h{h}: {:?}\n", self.peers(h)))
            .collect();
        panic!("{what}: not within {limit:?}\n{tables}{logs}");
    }

    fn all_alive(&self, hosts: &[usize]) -> bool {
        hosts.iter().all(|&by| {
            let peers = self.peers(by);
            peers.len() == hosts.len() - 1
                && hosts
                    .iter()
                    .filter(|&&of| of != by)
                    .all(|of| peers.contains(&(format!("h{of}"), "alive".to_owned())))
        })
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for child in self.agents.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for host in 1..=HOSTS {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.host(host)])
                .output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.switch()])
            .output();
    }
}

fn addr(host: usize) -> String {
    format!("10.77.0.{host}")
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Sends a bounded burst of bad datagrams to `target` from inside `ns`: random bytes,
/// truncated frames of the right cluster, 60 KiB datagrams, a wrong version byte before the
/// right cluster hash, original-cantal CBOR pings.
fn flood(ns: &str, target: &str) {
    let script = format!(
        r#"
import hashlib, os, socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
target = ("{target}", {PORT})
cbor_ping = bytes([0x82, 0x64]) + b"Ping" + bytes([0xa1, 0x63]) + b"now" + bytes([0x1b]) + (1700000000000).to_bytes(8, "big")
cluster = hashlib.sha256(b"t").digest()[:8]
kinds = [
    lambda: os.urandom(64),
    lambda: b"\x01" + cluster + os.urandom(3),
    lambda: os.urandom(60000),
    lambda: b"\x02" + cluster + os.urandom(40),
    lambda: cbor_ping,
]
deadline = time.time() + 10
sent = 0
while sent < 20000 and time.time() < deadline:
    try:
        s.sendto(kinds[sent % len(kinds)](), target)
    except OSError:
        time.sleep(0.001)
    sent += 1
print(sent)
"#
    );
    let output = Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", &script])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn five_hosts_join_partition_heal_flood_and_kill() {
    if !is_root() {
        println!("skipped: needs root");
        return;
    }
    let mut net = Network::new();
    net.start(1, None);
    for host in 2..=HOSTS {
        net.start(host, Some(1));
    }
    let everyone: Vec<usize> = (1..=HOSTS).collect();
    net.wait(
        "all five list each other alive",
        Duration::from_secs(15),
        |n| n.all_alive(&everyone),
    );
    let status = net.status(1);
    assert_eq!(status["num_peers"], 4, "{status}");

    // Partition {1,2} | {3,4,5}.
    let switch = net.switch();
    ip(&["-n", &switch, "link", "set", "trunk-a", "down"]);
    let (left, right) = ([1usize, 2], [3usize, 4, 5]);
    net.wait(
        "each side marks the other dead",
        Duration::from_secs(20),
        |n| {
            left.iter().all(|&l| {
                right
                    .iter()
                    .all(|&r| n.state(l, r).as_deref() == Some("dead"))
            }) && right.iter().all(|&r| {
                left.iter()
                    .all(|&l| n.state(r, l).as_deref() == Some("dead"))
            })
        },
    );
    for side in [&left[..], &right[..]] {
        for &a in side {
            for &b in side.iter().filter(|&&b| b != a) {
                assert_eq!(
                    net.state(a, b).as_deref(),
                    Some("alive"),
                    "h{a} about h{b} in its own side"
                );
            }
        }
    }
    ip(&["-n", &switch, "link", "set", "trunk-a", "up"]);
    net.wait(
        "all five alive again after the heal",
        Duration::from_secs(30),
        |n| n.all_alive(&everyone),
    );

    // Bad datagrams do not crash host 1 or change its peers.
    flood(&net.host(2), &addr(1));
    let status = net.status(1);
    let bad = &status["bad_packets"];
    for kind in ["garbage", "oversized", "wrong_version", "legacy"] {
        assert!(
            bad[kind].as_u64().unwrap_or(0) > 0,
            "no {kind} counted: {status}"
        );
    }
    assert!(net.all_alive(&everyone), "membership changed by the flood");
    let warnings = net.log(1).matches("dropped gossip packet").count();
    assert!(warnings <= 10, "{warnings} log lines for one flood");

    // kill -9 host 5: dead on every other host within 10 s, and still listed.
    net.kill(5);
    let took = net.wait(
        "the killed host is dead everywhere",
        Duration::from_secs(10),
        |n| (1..HOSTS).all(|by| n.state(by, 5).as_deref() == Some("dead")),
    );
    println!("kill -9 detected everywhere after {took:?}");
    assert_eq!(net.status(2)["num_dead"], 1);
}
