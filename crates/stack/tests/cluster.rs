//! The demo stack on three hosts (root only; see docs/cluster-test.md): each host a network
//! namespace on a bridge with the real cantal-agent, lithos_tree and verwalter, the demo
//! images built once with the real vagga. In order:
//!
//! 1. the app answers exactly where the scheduler places it (every live host);
//! 2. kill -9 of a demo-web process: lithos restarts it and cantal shows the new pid;
//! 3. SIGKILL of the verwalter leader: a new leader, and a client loop requesting the app on
//!    every host every 20 ms sees no failed request; the killed verwalter rejoins;
//! 4. the leader's host cut off onto a second bridge, both sides elect, heal: one leader and
//!    every service running;
//! 5. the action set_version v2 rolls v2 out everywhere; POST /v1/rollback with the backup
//!    from before the action gives back the v1 files byte for byte and the app answers v1.

mod cluster_support;
mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cluster_support::{Cluster, http, outcome, wait_for, within};
use isolation::Signal;
use isolation::signal::send;
use serde_json::{Value, json};

const HOSTS: usize = 3;

fn all() -> Vec<usize> {
    (0..HOSTS).collect()
}

#[test]
fn three_hosts_deploy_restart_fail_over_partition_and_roll_back() {
    if isolation::user::effective_uid() != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let started = Instant::now();
    let mut cluster = Cluster::start(HOSTS);
    eprintln!(
        "images built, daemons started after {:?}",
        started.elapsed()
    );

    deployed_where_scheduled(&cluster);
    eprintln!("deployed after {:?}", started.elapsed());
    killed_app_is_restarted_and_seen_by_cantal(&cluster, 1);
    eprintln!("restart seen after {:?}", started.elapsed());
    leader_failover_keeps_the_app_serving(&mut cluster);
    eprintln!("failover done after {:?}", started.elapsed());
    partition_heals_to_one_leader(&mut cluster);
    eprintln!("partition healed after {:?}", started.elapsed());
    roll_out_v2_and_roll_back(&cluster);
    eprintln!("rolled back after {:?}", started.elapsed());

    let left = cluster.teardown();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The hosts the schedule in force on host `i` places role demo on.
fn placed(cluster: &Cluster, i: usize) -> Option<BTreeSet<String>> {
    let schedule = cluster.verwalter_json(i, "/v1/schedule")?;
    let nodes = schedule["data"]["nodes"].as_object()?;
    Some(
        nodes
            .iter()
            .filter(|(_, node)| !node["roles"]["demo"].is_null())
            .map(|(name, _)| name.clone())
            .collect(),
    )
}

fn all_names(cluster: &Cluster) -> BTreeSet<String> {
    cluster.hosts.iter().map(|h| h.name.clone()).collect()
}

/// Every host serves `version` under its own node name, with a processes file naming the
/// image of that version.
fn serving(cluster: &Cluster, version: &str) -> bool {
    (0..HOSTS).all(|i| {
        let host = &cluster.hosts[i];
        let image = format!("image: demo.{version}\n");
        let file_names_image = host
            .processes_file()
            .is_some_and(|f| String::from_utf8_lossy(&f).contains(&image));
        file_names_image
            && cluster.app(i).as_deref() == Some(&format!("demo-web {version} on {}\n", host.name))
    })
}

fn deployed_where_scheduled(cluster: &Cluster) {
    let leader = wait_for(
        Duration::from_secs(60),
        "one leader whose schedule places demo on every host, running there",
        || cluster.report(),
        || {
            let leader = cluster.agreed_leader(&all())?;
            let everywhere = (0..HOSTS).all(|i| placed(cluster, i) == Some(all_names(cluster)));
            (everywhere && serving(cluster, "v1")).then_some(leader)
        },
    );
    eprintln!("leader {}", cluster.hosts[leader].name);
    for host in &cluster.hosts {
        let file = String::from_utf8(host.processes_file().unwrap()).unwrap();
        assert!(file.contains(&format!("host: {}\n", host.ip)), "{file}");
        assert!(file.contains(&format!("node: {}\n", host.name)), "{file}");
        assert_eq!(host.demo_pids().len(), 1, "one instance on {}", host.name);
    }
}

/// The pids of demo-web processes cantal's process view on host `i` shows.
fn cantal_demo_pids(cluster: &Cluster, i: usize) -> Option<Vec<i64>> {
    let host = &cluster.hosts[i];
    let url = format!(
        "http://{}:{}/all_processes.json",
        host.ip,
        cluster_support::CANTAL_PORT
    );
    let (status, body) = cluster.get(i, &url).ok()?;
    let view: Value = serde_json::from_str(&body).ok().filter(|_| status == 200)?;
    let listen = format!("--listen {}:", host.ip);
    Some(
        view["all"]
            .as_array()?
            .iter()
            .filter(|p| {
                p["cmdline"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("/usr/bin/demo-web ") && c.contains(&listen))
            })
            .filter_map(|p| p["pid"].as_i64())
            .collect(),
    )
}

fn killed_app_is_restarted_and_seen_by_cantal(cluster: &Cluster, i: usize) {
    let host = &cluster.hosts[i];
    let old = host.demo_pids()[0];
    wait_for(
        Duration::from_secs(15),
        "cantal to show the demo-web process",
        || format!("cantal: {:?}", cantal_demo_pids(cluster, i)),
        || (cantal_demo_pids(cluster, i)? == [i64::from(old)]).then_some(()),
    );
    send(old, Signal::SIGKILL).unwrap();
    let new = wait_for(
        Duration::from_secs(20),
        "lithos to restart demo-web",
        || cluster.report(),
        || match host.demo_pids()[..] {
            [pid] if pid != old && cluster.app(i).is_some() => Some(pid),
            _ => None,
        },
    );
    wait_for(
        Duration::from_secs(15),
        "cantal to show the new pid instead of the killed one",
        || {
            format!(
                "old {old}, new {new}, cantal: {:?}",
                cantal_demo_pids(cluster, i)
            )
        },
        || (cantal_demo_pids(cluster, i)? == [i64::from(new)]).then_some(()),
    );
    eprintln!("demo-web on {}: pid {old} killed, {new} started", host.name);
}

/// Requests every `(url, expected body)` every 20 ms from namespace `ns` until `stop` (at
/// most 3000 rounds); returns the number of answers and the failures.
fn client_loop(ns: &str, targets: &[(String, String)], stop: &AtomicBool) -> (usize, Vec<String>) {
    within(ns, || {
        let agent = http();
        let (mut answers, mut failures) = (0, Vec::new());
        for _ in 0..3000 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            for (url, expected) in targets {
                match outcome(agent.get(url).call()) {
                    Ok((200, body)) if body == *expected => answers += 1,
                    other => failures.push(format!("{url}: {other:?}")),
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (answers, failures)
    })
}

/// The client loop runs from before the leader's verwalter is killed until the restarted
/// one follows the new leader.
fn leader_failover_keeps_the_app_serving(cluster: &mut Cluster) {
    let old = cluster.agreed_leader(&all()).expect("a leader");
    let others: Vec<usize> = all().into_iter().filter(|&i| i != old).collect();
    let targets: Vec<(String, String)> = cluster
        .hosts
        .iter()
        .map(|h| (h.app_url(), format!("demo-web v1 on {}\n", h.name)))
        .collect();
    let client_ns = cluster.client_ns.clone();
    let stop = AtomicBool::new(false);
    let (answers, failures) = std::thread::scope(|scope| {
        let client = scope.spawn(|| client_loop(&client_ns, &targets, &stop));
        // Stops the loop also when a wait below panics, so that the scope can end.
        let stop_guard = StopOnDrop(&stop);
        std::thread::sleep(Duration::from_millis(500));
        let status = cluster
            .verwalter_json(old, "/v1/status")
            .expect("leader status");
        assert_eq!(status["election_state"]["state"], "Leader", "{status}");
        cluster.kill_verwalter(old);
        let new = wait_for(
            Duration::from_secs(20),
            "a new leader among the others",
            || cluster.report(),
            || cluster.agreed_leader(&others),
        );
        eprintln!(
            "verwalter leader {} killed, {} leads",
            cluster.hosts[old].name, cluster.hosts[new].name
        );
        cluster.start_verwalter(old);
        wait_for(
            Duration::from_secs(20),
            "the restarted verwalter to follow the new leader",
            || cluster.report(),
            || cluster.agreed_leader(&all()).filter(|&l| l == new),
        );
        std::thread::sleep(Duration::from_millis(500));
        drop(stop_guard);
        client.join().unwrap()
    });
    assert!(
        failures.is_empty(),
        "{} failed requests: {failures:?}",
        failures.len()
    );
    assert!(answers >= HOSTS * 10, "only {answers} answers");
    eprintln!("client loop: {answers} answers, no failure");
    assert!(serving(cluster, "v1"));
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn partition_heals_to_one_leader(cluster: &mut Cluster) {
    let cut = cluster.agreed_leader(&all()).expect("a leader");
    let majority: Vec<usize> = all().into_iter().filter(|&i| i != cut).collect();
    cluster.split(cut, true);
    let majority_leader = wait_for(
        Duration::from_secs(20),
        "the majority to elect a leader of its own",
        || cluster.report(),
        || cluster.agreed_leader(&majority),
    );
    wait_for(
        Duration::from_secs(10),
        "the cut-off leader to step down (check-quorum)",
        || cluster.report(),
        || (cluster.state_of(cut)? != "Leader").then_some(()),
    );
    // Availability first: once cantal reports the others dead (and the grace has passed)
    // the cut-off host elects itself.
    wait_for(
        Duration::from_secs(40),
        "the cut-off host to lead its side",
        || cluster.report(),
        || {
            let alone = cluster.state_of(cut)? == "Leader"
                && cluster.leader_of(cut)? == cluster.hosts[cut].id;
            alone.then_some(())
        },
    );
    eprintln!(
        "partition: {} alone, {} leads the rest",
        cluster.hosts[cut].name, cluster.hosts[majority_leader].name
    );
    assert!(cluster.app(cut).is_some(), "the cut-off host keeps serving");
    cluster.split(cut, false);
    let healed = wait_for(
        Duration::from_secs(40),
        "one leader, one schedule placing demo everywhere, every service running",
        || cluster.report(),
        || {
            let leader = cluster.agreed_leader(&all())?;
            let leaders = (0..HOSTS)
                .filter(|&i| cluster.state_of(i).as_deref() == Some("Leader"))
                .count();
            let hash = cluster.verwalter_json(leader, "/v1/schedule")?["hash"].clone();
            let one_schedule = (0..HOSTS).all(|i| {
                cluster
                    .verwalter_json(i, "/v1/schedule")
                    .is_some_and(|s| s["hash"] == hash)
            });
            (leaders == 1
                && one_schedule
                && placed(cluster, leader) == Some(all_names(cluster))
                && serving(cluster, "v1"))
            .then_some(leader)
        },
    );
    assert_eq!(
        healed, majority_leader,
        "the side with more followers keeps leading"
    );
    for host in &mut cluster.hosts {
        assert!(host.daemons_alive(), "a daemon of {} died", host.name);
        assert_eq!(host.demo_pids().len(), 1, "one instance on {}", host.name);
    }
}

fn roll_out_v2_and_roll_back(cluster: &Cluster) {
    let leader = cluster.agreed_leader(&all()).expect("a leader");
    let schedule = cluster.verwalter_json(leader, "/v1/schedule").unwrap();
    let hash = schedule["hash"].as_str().unwrap().to_owned();
    let v1_files: Vec<Vec<u8>> = cluster
        .hosts
        .iter()
        .map(|h| h.processes_file().unwrap())
        .collect();
    let backups = cluster.verwalter_json(leader, "/v1/backups").unwrap();
    let backup = backups
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["hash"] == hash.as_str())
        .unwrap_or_else(|| panic!("no backup of schedule {hash}: {backups}"))["name"]
        .as_str()
        .unwrap()
        .to_owned();

    let (status, reply) = cluster.verwalter_post(
        leader,
        "/v1/wait_action",
        &json!({"button": "set_version", "version": "v2"}),
    );
    assert_eq!(status, 200, "{reply}");
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply, json!({"ok": true, "version": "v2"}));
    wait_for(
        Duration::from_secs(30),
        "v2 rendered and serving on every host",
        || cluster.report(),
        || serving(cluster, "v2").then_some(()),
    );

    let (status, reply) =
        cluster.verwalter_post(leader, "/v1/rollback", &json!({"backup": backup}));
    assert_eq!(status, 200, "{reply}");
    wait_for(
        Duration::from_secs(30),
        "v1 back on every host",
        || cluster.report(),
        || serving(cluster, "v1").then_some(()),
    );
    for (host, before) in cluster.hosts.iter().zip(&v1_files) {
        let after = host.processes_file().unwrap();
        assert!(
            after == *before,
            "{}: rendered file differs after rollback\nbefore:\n{}\nafter:\n{}",
            host.name,
            String::from_utf8_lossy(before),
            String::from_utf8_lossy(&after)
        );
    }
}
