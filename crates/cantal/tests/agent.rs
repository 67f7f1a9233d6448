//! The real `cantal-agent` on loopback: HTTP API, `/metrics` validity, the gRPC socket,
//! persistence across restarts, and gossip between agents on 127.0.0.1.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::time::Duration;

use common::{Agent, CLI, eventually, get, get_json, post, wait_ready};
use protocol::domain::{PeerEvent, PeerState};
use protocol::pb::cantal::agent_client::AgentClient;
use protocol::pb::cantal::{QueryRequest, StatusRequest, WatchPeersRequest};
use serde_json::{Value as Json, json};

/// Checks the Prometheus text format the way `promtool check metrics` parses it: each family
/// has one HELP and one TYPE before its samples, names and labels are valid, counters end in
/// `_total`, no series repeats, values parse. Returns the samples by name.
fn check_exposition(text: &str) -> BTreeMap<String, Vec<(String, f64)>> {
    let name_ok = |n: &str| {
        n.chars().enumerate().all(|(i, c)| {
            c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
        }) && !n.is_empty()
    };
    let mut families: BTreeMap<String, (String, Vec<(String, f64)>)> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut series = HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(name_ok(name), "bad name in {line}");
            assert!(!families.contains_key(name), "family {name} twice");
            current = Some(name.to_owned());
            families.insert(name.to_owned(), (String::new(), Vec::new()));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split(' ');
            let (name, kind) = (words.next().unwrap(), words.next().unwrap());
            assert_eq!(current.as_deref(), Some(name), "TYPE without HELP: {line}");
            assert!(matches!(kind, "counter" | "gauge"), "{line}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter {name} without _total");
            }
            families.get_mut(name).unwrap().0 = kind.to_owned();
            continue;
        }
        assert!(!line.starts_with('#'), "stray comment {line}");
        let (series_text, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line}"));
        let value: f64 = match value {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let name = series_text.split('{').next().unwrap();
        assert_eq!(
            current.as_deref(),
            Some(name),
            "sample outside its family: {line}"
        );
        if let Some(labels) = series_text.strip_prefix(name).filter(|l| !l.is_empty()) {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
        }
        assert!(
            series.insert(series_text.to_owned()),
            "series twice: {series_text}"
        );
        families
            .get_mut(name)
            .unwrap()
            .1
            .push((series_text.to_owned(), value));
    }
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("prometheus-parse accepts the exposition");
    assert_eq!(parsed.samples.len(), series.len());
    families
        .into_iter()
        .map(|(name, (_, samples))| (name, samples))
        .collect()
}

/// `promtool check metrics` (Debian's `prometheus`, installed by tests/run.sh) parses the
/// exposition. Its exit status 3 reports style lints only (camelCase kernel field names such
/// as `cantal_memory_MemTotal`, empty HELP); 1 is a parse error.
fn promtool_parses(text: &str) {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs (tests/run.sh installs Debian's prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        matches!(output.status.code(), Some(0 | 3)) && !stderr.contains("error while linting"),
        "promtool rejects /metrics: {:?} {stderr}",
        output.status
    );
}

#[tokio::test]
async fn http_api_answers() {
    let agent = Agent::start_local(&["--cluster-name", "t", "--interval", "500"]);
    wait_ready(&agent).await;
    let url = |path: &str| format!("{}{path}", agent.url);

    let (status, body) = get(&url("/nope")).await;
    assert_eq!((status, body.as_str()), (404, r#"{"error":"not found"}"#));
    let (status, page) = get(&url("/")).await;
    assert_eq!(status, 200);
    assert!(page.contains("<h1>cantal on"), "{page}");

    let status = get_json(&url("/status.json")).await;
    for field in [
        "version",
        "startup_time",
        "scan_duration",
        "storage",
        "boot_time",
        "self_report",
        "threads_report",
        "num_peers",
        "num_stale",
        "id",
        "hostname",
        "name",
        "cluster_name",
        "num_alive",
        "num_suspect",
        "num_dead",
        "machine_id_conflict",
        "bad_packets",
    ] {
        assert!(status.get(field).is_some(), "status.json lacks {field}");
    }
    assert_eq!(status["cluster_name"], "t");
    assert_eq!(status["num_peers"], 0);
    assert_eq!(status["bad_packets"]["garbage"], 0);

    let processes = get_json(&url("/all_processes.json")).await;
    let pid = agent.child.id();
    let me = processes["all"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap();
    assert_eq!(me["name"], "cantal-agent");
    assert!(me["rss"].as_u64().unwrap() > 0);
    assert!(
        get_json(&url("/all_sockets.json")).await["v4"]["by_state"]["LISTEN"]
            .as_u64()
            .unwrap()
            >= 1
    );

    let (status, text) = get(&url("/metrics")).await;
    assert_eq!(status, 200);
    let families = check_exposition(&text);
    promtool_parses(&text);
    for name in [
        "cantal_cpu_user_total",
        "cantal_memory_MemTotal",
        "cantal_load_avg_1min",
        "cantal_net_interface_rx_bytes_total",
        "cantal_agent_scan_duration_seconds",
        "cantal_agent_process_sweep_duration_seconds",
        "cantal_agent_bad_packets_total",
        "cantal_agent_peers",
    ] {
        assert!(families.contains_key(name), "{name} missing from /metrics");
    }
    assert!(
        !families.keys().any(|n| n.starts_with("cantal_process_")),
        "per-pid series without the flag"
    );
    let open = common::get_with_accept(
        &url("/metrics"),
        "application/openmetrics-text; version=1.0.0",
    )
    .await;
    assert!(open.ends_with("# EOF\n"));
    promtool_parses(&open);
    assert!(open.contains("# TYPE cantal_cpu_user counter"));

    let (status, body) = post(&url("/add_host.json"), "{not json").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(serde_json::from_str::<Json>(&body).unwrap()["ok"], false);
    let (status, body) = post(&url("/add_host.json"), r#"{"addr": "nowhere"}"#).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(&url("/add_host.json"), r#"{"addr": "127.0.0.1:9"}"#).await;
    assert_eq!((status, body.as_str()), (200, r#"{"ok":true}"#));

    let labels = get_json(&url("/api/v1/labels")).await;
    assert_eq!(labels["status"], "success");
    assert!(
        labels["data"]
            .as_array()
            .unwrap()
            .contains(&json!("__name__"))
    );
    let series = get_json(&url("/api/v1/series?match[]=cantal_cpu_user_total")).await;
    assert_eq!(series["data"].as_array().unwrap().len(), 1);
    let values = get_json(&url("/api/v1/label/__name__/values")).await;
    assert!(
        values["data"]
            .as_array()
            .unwrap()
            .contains(&json!("cantal_cpu_user_total"))
    );
    let (status, body) = get(&url("/api/v1/query?query=histogram_quantile(0.9%2C%20x)")).await;
    assert_eq!(status, 400);
    let error: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(error["errorType"], "bad_data");
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("histogram_quantile")
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let range = get_json(&url(&format!(
        "/api/v1/query_range?query=cantal_load_avg_1min&start={}&end={}&step=0.5",
        now - 60.0,
        now + 1.0
    )))
    .await;
    assert_eq!(range["data"]["resultType"], "matrix");
    assert!(
        !range["data"]["result"][0]["values"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let (status, body) = post(
        &url("/query.json"),
        r#"{"rules": {"cpu": {"source": "tip", "condition": ["eq", "metric", "cpu.user"], "expect": "single_tip"}}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer: Json = serde_json::from_str(&body).unwrap();
    assert!(
        answer["dataset"]["cpu"]["value"].as_f64().is_some(),
        "{answer}"
    );
}

// Two workers: `stop` blocks one while the gRPC client's connection task answers the
// server's shutdown handshake on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_socket_and_clean_shutdown() {
    let mut agent = Agent::start_local(&["--cluster-name", "t"]);
    wait_ready(&agent).await;
    let channel = protocol::unix::connect(&agent.socket).await.unwrap();
    let mut client = AgentClient::new(channel);
    let status = client.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.cluster_name, "t");
    assert_eq!(status.num_peers, 0);
    let rules = r#"{"rules": {"up": {"source": "tip", "condition": ["eq", "metric", "uptime"], "expect": "single_tip"}}}"#;
    let reply = client
        .query(QueryRequest {
            rules_json: rules.to_owned(),
            scope: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.hosts.len(), 1);
    let dataset: Json = serde_json::from_str(&reply.hosts[0].dataset_json).unwrap();
    assert!(dataset["up"]["value"].as_f64().unwrap() > 0.0);

    let mut stream = client
        .watch_peers(WatchPeersRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = PeerEvent::try_from(stream.message().await.unwrap().unwrap()).unwrap();
    assert_eq!(first, PeerEvent::Snapshot(Vec::new()));
    // SIGTERM: the open stream must not hold the agent up.
    let stopping = std::time::Instant::now();
    assert_eq!(agent.stop(), Some(0), "log:\n{}", agent.log());
    assert!(
        !agent.log().contains("did not stop"),
        "shutdown waited {:?}:\n{}",
        stopping.elapsed(),
        agent.log()
    );
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.message()).await;
    assert!(
        matches!(ended, Ok(Ok(None)) | Ok(Err(_))),
        "stream still open: {ended:?}"
    );
}

#[tokio::test]
async fn history_survives_a_restart() {
    let mut first = Agent::start_local(&["--interval", "500"]);
    let storage = first.dir.path().join("storage");
    let storage_arg = storage.to_str().unwrap().to_owned();
    drop(first);
    first = Agent::start_local(&["--interval", "500", "--storage-dir", &storage_arg]);
    wait_ready(&first).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(first.stop(), Some(0));
    assert!(storage.join("current.cbor").exists());
    drop(first);

    let second = Agent::start_local(&["--interval", "500", "--storage-dir", &storage_arg]);
    wait_ready(&second).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let range = get_json(&format!(
        "{}/api/v1/query_range?query=cantal_uptime&start={}&end={now}&step=0.5",
        second.url,
        before - 5.0
    ))
    .await;
    let samples = range["data"]["result"][0]["values"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let old = samples
        .iter()
        .filter(|s| s[0].as_f64().unwrap() <= before + 1.0)
        .count();
    assert!(
        old >= 2,
        "samples from before the restart are gone: {range}"
    );

    // A corrupt file is set aside and the agent starts empty.
    drop(second);
    std::fs::write(storage.join("current.cbor"), b"\x01\x02garbage").unwrap();
    let third = Agent::start_local(&["--storage-dir", &storage_arg]);
    wait_ready(&third).await;
    assert!(storage.join("current.cbor.bad").exists());
}

fn peer_state(peers: &Json, name: &str) -> Option<String> {
    peers["peers"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["state"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn agents_on_loopback_gossip() {
    let a = Agent::start_local(&["--cluster-name", "t", "--node-name", "a"]);
    let mut b = Agent::start_local(&["--cluster-name", "t", "--node-name", "b"]);
    let other = Agent::start_local(&["--cluster-name", "u", "--node-name", "other"]);
    for agent in [&a, &b, &other] {
        wait_ready(agent).await;
    }
    let a_gossip = a.url.trim_start_matches("http://").to_owned();
    let mut client = AgentClient::new(protocol::unix::connect(&a.socket).await.unwrap());
    let mut stream = client
        .watch_peers(WatchPeersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        PeerEvent::try_from(stream.message().await.unwrap().unwrap()).unwrap(),
        PeerEvent::Snapshot(Vec::new())
    );

    for agent in [&b, &other] {
        let join = Command::new(CLI)
            .args(["--agent", &agent.url, "join", &a_gossip])
            .output()
            .unwrap();
        assert!(
            join.status.success(),
            "{}",
            String::from_utf8_lossy(&join.stderr)
        );
    }
    let a_peers = format!("{}/all_peers.json", a.url);
    let b_peers = format!("{}/all_peers.json", b.url);
    let joined = eventually(Duration::from_secs(5), || async {
        peer_state(&get_json(&a_peers).await, "b").as_deref() == Some("alive")
            && peer_state(&get_json(&b_peers).await, "a").as_deref() == Some("alive")
    })
    .await;
    assert!(
        joined,
        "a and b did not see each other within 5 s:\n{}\n{}",
        a.log(),
        b.log()
    );
    let peers = get_json(&a_peers).await;
    assert_eq!(peers["peers"].as_array().unwrap().len(), 1, "{peers}");
    assert_eq!(
        get_json(&format!("{}/status.json", a.url)).await["num_peers"],
        1
    );

    let table = Command::new(CLI)
        .args(["--agent", &a.url, "peers"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains(" b ") && table.contains("alive"), "{table}");

    // kill -9 b: suspect, then dead, each pushed to a's stream.
    let killed = b.child.id();
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let dead = eventually(Duration::from_secs(10), || async {
        peer_state(&get_json(&a_peers).await, "b").as_deref() == Some("dead")
    })
    .await;
    assert!(dead, "b (pid {killed}) not dead on a within 10 s");
    let mut states = Vec::new();
    while states.last() != Some(&PeerState::Dead) {
        let message = tokio::time::timeout(Duration::from_secs(2), stream.message())
            .await
            .expect("events arrive")
            .unwrap()
            .unwrap();
        if let PeerEvent::StateChanged { state, .. } = PeerEvent::try_from(message).unwrap() {
            states.push(state);
        }
    }
    assert_eq!(states, [PeerState::Suspect, PeerState::Dead]);

    // The other cluster's agent is never listed, and both sides count its packets.
    assert!(peer_state(&get_json(&a_peers).await, "other").is_none());
    let other_status = get_json(&format!("{}/status.json", other.url)).await;
    let a_status = get_json(&format!("{}/status.json", a.url)).await;
    assert_eq!(other_status["num_peers"], 0);
    assert!(
        a_status["bad_packets"]["wrong_cluster"].as_u64().unwrap() > 0,
        "{a_status}"
    );
}

#[tokio::test]
async fn duplicate_machine_ids_are_reported() {
    let id = ["--override-machine-id", "5eed5eed5eed5eed5eed5eed5eed5eed"];
    let a =
        Agent::start_local(&[&["--cluster-name", "t", "--node-name", "a"][..], &id[..]].concat());
    let b =
        Agent::start_local(&[&["--cluster-name", "t", "--node-name", "b"][..], &id[..]].concat());
    let c = Agent::start_local(&["--cluster-name", "t", "--node-name", "c"]);
    for agent in [&a, &b, &c] {
        wait_ready(agent).await;
    }
    let a_gossip = a.url.trim_start_matches("http://").to_owned();
    for agent in [&b, &c] {
        let (status, body) = post(
            &format!("{}/add_host.json", agent.url),
            &json!({"addr": a_gossip}).to_string(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let b_gossip = b.url.trim_start_matches("http://").to_owned();
    let reported = eventually(Duration::from_secs(10), || async {
        let a_status = get_json(&format!("{}/status.json", a.url)).await;
        let b_status = get_json(&format!("{}/status.json", b.url)).await;
        a_status["machine_id_conflict"]["addr"] == b_gossip.as_str()
            && b_status["machine_id_conflict"]["addr"] == a_gossip.as_str()
    })
    .await;
    assert!(reported, "conflict not reported:\n{}\n{}", a.log(), b.log());
    // Neither lists the other; the third host still lists one of them.
    assert!(peer_state(&get_json(&format!("{}/all_peers.json", a.url)).await, "b").is_none());
    assert!(peer_state(&get_json(&format!("{}/all_peers.json", b.url)).await, "a").is_none());
    let c_peers = get_json(&format!("{}/all_peers.json", c.url)).await;
    let listed = c_peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["id"] == "5eed5eed5eed5eed5eed5eed5eed5eed" && p["state"] == "alive");
    assert!(listed, "{c_peers}");
}

/// The sweep keeps four descriptors per process, so the agent raises its soft open files limit
/// to the hard one at start.
#[test]
fn raises_the_open_files_limit() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port().to_string();
    let mut child = std::process::Command::new("sh")
        .args(["-c", r#"ulimit -Sn 256 && exec "$0" "$@""#, common::AGENT])
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--log-format",
            "json",
        ])
        .args(["--override-machine-id", "0000000000000000000000000000f11e"])
        .arg("--socket")
        .arg(dir.path().join("agent.sock"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let limits = format!("/proc/{}/limits", child.id());
    let open_files = || -> Option<(String, String)> {
        let text = std::fs::read_to_string(&limits).ok()?;
        let line = text.lines().find(|l| l.starts_with("Max open files"))?;
        let mut words = line.split_whitespace().skip(3);
        Some((words.next()?.to_owned(), words.next()?.to_owned()))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut seen = open_files();
    while seen.as_ref().is_none_or(|(soft, hard)| soft != hard)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
        seen = open_files();
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let (soft, hard) = seen.expect("no open files limit");
    assert_eq!(soft, hard, "soft limit not raised");
    assert_ne!(soft, "256");
}
