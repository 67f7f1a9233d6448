//! Root-only acceptance scenarios of spec/lithos.md §5: the real lithos_tree, lithos_knot,
//! lithos_switch, lithos_ps, lithos_check and lithos_cmd on busybox images.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Fixture, app_pid, bin, free_port, holds_listener, proc_status};
use isolation::Signal;
use protocol::pb::lithos as pb;
use tokio_stream::StreamExt;

const SLEEPER: &str = "executable: /bin/sleep\narguments: [1000]\nenviron: {PATH: /bin}\n";
const TWO: &str = "w: {image: v1, config: /config/w.yaml, instances: 2}\n";

/// Events of the control socket, collected by a thread of its own.
struct EventLog {
    events: Arc<Mutex<Vec<pb::Event>>>,
}

impl EventLog {
    fn start(f: &Fixture) -> EventLog {
        let socket = f.root().join("run/control.sock");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            common::runtime().block_on(async move {
                let channel = protocol::unix::connect(&socket).await.unwrap();
                let mut client = pb::control_client::ControlClient::new(channel);
                let mut stream = client
                    .events(pb::EventsRequest {})
                    .await
                    .unwrap()
                    .into_inner();
                ready_tx.send(()).unwrap();
                while let Some(Ok(e)) = stream.next().await {
                    sink.lock().unwrap().push(e);
                }
            })
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        EventLog { events }
    }

    fn kinds(&self) -> Vec<pb::event::Kind> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| e.kind.clone())
            .collect()
    }

    fn started_times(&self, instance: &str) -> Vec<u64> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(&e.kind, Some(pb::event::Kind::InstanceStarted(s)) if s.instance == instance))
            .map(|e| e.timestamp_ms)
            .collect()
    }
}

/// What a [`Prober`] saw.
#[derive(Debug, Default)]
struct Probes {
    ok: usize,
    refused: usize,
    /// When each connection was made and what the server wrote before closing it.
    answers: Vec<(Instant, String)>,
}

/// Connects to `port` every 10 ms until stopped; counts refused connections and, when
/// asked, reads what the server answers.
struct Prober {
    stop: Arc<AtomicBool>,
    probes: Arc<Mutex<Probes>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    fn start(port: u16, read_answers: bool) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let probes = Arc::new(Mutex::new(Probes::default()));
        let (s, p) = (stop.clone(), probes.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: at most ten minutes of probing whatever happens.
            let start = Instant::now();
            while !s.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(600) {
                let at = Instant::now();
                match TcpStream::connect_timeout(
                    &([127, 0, 0, 1], port).into(),
                    Duration::from_secs(2),
                ) {
                    Ok(mut stream) => {
                        let mut answer = String::new();
                        if read_answers {
                            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                            let _ = std::io::Read::read_to_string(&mut stream, &mut answer);
                        }
                        let mut p = p.lock().unwrap();
                        p.ok += 1;
                        if read_answers {
                            p.answers.push((at, answer.trim().to_owned()));
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        p.lock().unwrap().refused += 1;
                    }
                    Err(_) => {}
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Prober {
            stop,
            probes,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Probes {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.probes.lock().unwrap())
    }
}

#[test]
fn instances_run_confined_and_are_listed() {
    require_root!();
    let mut f = Fixture::new("");
    f.image("v1", SLEEPER);
    f.write_processes(TWO);
    f.start_tree();
    let running = f.wait_running(&["demo/w.0", "demo/w.1"]);
    let init = running["demo/w.0"];
    let app = app_pid(init).expect("the program runs under the init");
    let status = proc_status(app);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("1000")),
        "{status}"
    );
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    // CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID NET_BIND_SERVICE
    assert!(status.contains("CapBnd:\t00000000000004fb"), "{status}");
    let mountinfo = fs::read_to_string(format!("/proc/{app}/mountinfo")).unwrap();
    let root = mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .unwrap();
    let opts = root.split_whitespace().nth(5).unwrap();
    for flag in ["ro", "nosuid", "nodev"] {
        assert!(
            opts.split(',').any(|o| o == flag),
            "{flag} missing in {root}"
        );
    }
    let environ = fs::read(format!("/proc/{app}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ.split('\0').any(|v| v == "LITHOS_NAME=demo/w.0"),
        "{environ}"
    );
    let state = f.state_dir().join("w.0");
    assert!(state.join("hosts").is_file() && state.join("resolv.conf").is_file());
    let cgroup = fs::read_to_string(format!("/proc/{app}/cgroup")).unwrap();
    assert!(
        cgroup.contains(&format!("/{}/demo.slice/demo:w.0.scope", f.cgroup)),
        "{cgroup}"
    );
    let ps = bin("lithos_ps")
        .arg("--master")
        .arg(&f.master)
        .arg("--json")
        .output()
        .unwrap();
    assert!(ps.status.success());
    let json: serde_json::Value = serde_json::from_slice(&ps.stdout).unwrap();
    let instances = &json["trees"][0]["sandboxes"][0]["processes"][0]["instances"];
    assert_eq!(instances.as_array().unwrap().len(), 2, "{json}");
    for i in instances.as_array().unwrap() {
        assert_eq!(i["state"], "running", "{json}");
    }
    let second = bin("lithos_tree")
        .arg("--master")
        .arg(&f.master)
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let message = format!("lithos_tree already running as pid {}", f.tree_pid());
    assert!(String::from_utf8_lossy(&second.stderr).contains(&message));
    let text = bin("lithos_ps")
        .arg("--master")
        .arg(&f.master)
        .arg("--no-color")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&format!("{app} demo/w.0")), "{text}");
    f.stop_tree();
    assert!(!state.exists(), "state dir removed after an orderly stop");
}

#[test]
fn instance_count_changes_keep_untouched_pids() {
    require_root!();
    let mut f = Fixture::new("");
    f.image("v1", SLEEPER);
    f.write_processes(TWO);
    f.start_tree();
    let before = f.wait_running(&["demo/w.0", "demo/w.1"]);
    let out = f.switch("w: {image: v1, config: /config/w.yaml, instances: 3}\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let three = f.wait_running(&["demo/w.0", "demo/w.1", "demo/w.2"]);
    assert_eq!(three["demo/w.0"], before["demo/w.0"]);
    assert_eq!(three["demo/w.1"], before["demo/w.1"]);
    let out = f.switch("w: {image: v1, config: /config/w.yaml, instances: 1}\n");
    assert!(out.status.success());
    f.wait_until("only w.0 is left", Duration::from_secs(20), |f| {
        f.instances().len() == 1
    });
    assert_eq!(f.running()["demo/w.0"], before["demo/w.0"]);
    for gone in ["w.1", "w.2"] {
        assert!(
            !f.state_dir().join(gone).exists(),
            "{gone} state dir removed"
        );
        let scope = Path::new("/sys/fs/cgroup/memory")
            .join(&f.cgroup)
            .join(format!("demo.slice/demo:{gone}.scope"));
        assert!(!scope.exists(), "{} removed", scope.display());
    }
}

#[test]
fn image_switch_replaces_instances_with_events() {
    require_root!();
    let mut f = Fixture::new("");
    f.image("v1", SLEEPER);
    f.image("v2", SLEEPER);
    f.write_processes(TWO);
    f.start_tree();
    let before = f.wait_running(&["demo/w.0", "demo/w.1"]);
    let events = EventLog::start(&f);
    let out = f.switch("w: {image: v2, config: /config/w.yaml, instances: 2}\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    f.wait_until("both run from v2", Duration::from_secs(20), |f| {
        let r = f.running();
        r.len() == 2 && r.iter().all(|(n, pid)| before[n] != *pid)
    });
    let kinds = events.kinds();
    let count = |pred: fn(&pb::event::Kind) -> bool| kinds.iter().filter(|k| pred(k)).count();
    assert_eq!(
        count(|k| matches!(k, pb::event::Kind::ConfigApplied(_))),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        count(|k| matches!(k, pb::event::Kind::InstanceExited(_))),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        count(|k| matches!(k, pb::event::Kind::InstanceStarted(_))),
        2,
        "{kinds:?}"
    );
    let status = f.status();
    assert_eq!(status.sandboxes[0].entries[0].image, "v2");
    let knot = f.instances()["demo/w.0"].2.unwrap();
    let cmdline = fs::read(format!("/proc/{knot}/cmdline")).unwrap();
    assert!(String::from_utf8_lossy(&cmdline).contains(&format!("{}/v2", f.images.display())));
    let restarts = lithos::metrics::read(&f.root().join("run/metrics/lithos"))
        .into_iter()
        .find(|(n, _, _)| n.contains("\"master\"") && n.contains("restarts"))
        .map(|(_, _, v)| v);
    assert_eq!(restarts, Some(1), "one reload counted");
}

#[test]
fn crash_loop_backs_off_to_the_cap_and_normal_exits_do_not_fail() {
    require_root!();
    let mut f = Fixture::new("");
    f.image(
        "v1",
        "executable: /bin/false\nrestart-timeout: 0.25\nrestart-backoff: {max-delay: 1}\n",
    );
    f.container_config("v1", "z.yaml", "executable: /bin/sh\narguments: [-c, 'exit 42']\nrestart-timeout: 0.25\nnormal-exit-codes: [42]\n");
    f.write_processes(
        "w: {image: v1, config: /config/w.yaml}\nz: {image: v1, config: /config/z.yaml}\n",
    );
    f.start_tree();
    let events = EventLog::start(&f);
    std::thread::sleep(Duration::from_secs(6));
    let starts = events.started_times("demo/w.0");
    assert!(starts.len() >= 5, "{starts:?}");
    let gaps: Vec<u64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    // Delays 0.25, 0.5, 1, 1, ...: they grow, then stay at the cap.
    let first_growing = gaps.iter().position(|g| *g >= 400).expect("delays grow");
    for g in &gaps[first_growing..] {
        assert!(
            (400..2000).contains(g),
            "gap {g} ms out of 0.5..1 s + slack: {gaps:?}"
        );
    }
    let late: Vec<&u64> = gaps.iter().skip(3).collect();
    assert!(
        !late.is_empty() && late.iter().all(|g| (900..2000).contains(*g)),
        "capped at 1 s: {gaps:?}"
    );
    let status = f.status();
    let instance = |name: &str| {
        status.sandboxes[0]
            .entries
            .iter()
            .flat_map(|e| e.instances.iter())
            .find(|i| i.name == name)
            .cloned()
            .unwrap()
    };
    assert!(instance("demo/w.0").failures >= 3, "{status:?}");
    assert_ne!(instance("demo/w.0").state, pb::InstanceState::GaveUp as i32);
    assert_eq!(instance("demo/z.0").failures, 0, "{status:?}");
    assert!(
        events.started_times("demo/z.0").len() >= 4,
        "z restarts every 0.25 s"
    );
}

#[test]
fn kill_timeout_kills_a_process_that_ignores_sigterm() {
    require_root!();
    let mut f = Fixture::new("");
    f.image(
        "v1",
        "executable: /bin/sh\narguments: [-c, \"trap '' TERM; while :; do sleep 1; done\"]\nenviron: {PATH: /bin}\nkill-timeout: 1\n",
    );
    f.write_processes("w: {image: v1, config: /config/w.yaml}\n");
    f.start_tree();
    f.wait_running(&["demo/w.0"]);
    let events = EventLog::start(&f);
    let start = Instant::now();
    let out = f.switch("{}\n");
    assert!(out.status.success());
    f.wait_until("w is gone", Duration::from_secs(20), |f| {
        f.instances().is_empty()
    });
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "killed only after kill-timeout"
    );
    let log = fs::read_to_string(f.root().join("log/demo.log")).unwrap();
    assert!(log.contains("did not respond to SIGTERM"), "{log}");
    assert!(
        events
            .kinds()
            .iter()
            .any(|k| matches!(k, pb::event::Kind::InstanceExited(_)))
    );
}

#[test]
fn upgrade_and_crash_keep_containers_and_the_listening_socket() {
    require_root!();
    let port = free_port();
    let mut f = Fixture::new(&format!("allow-tcp-ports: [{port}]\n"));
    // The kernel completes connections on the LISTEN socket (backlog 4096) whether or not
    // the program accepts: a refused connection means nobody held the socket.
    f.image(
        "v1",
        &format!(
            "{SLEEPER}tcp-ports:\n  {port}: {{fd: 3, host: 127.0.0.1, listen-backlog: 4096}}\n"
        ),
    );
    f.write_processes(TWO);
    let first_tree = f.start_tree();
    let before = f.wait_running(&["demo/w.0", "demo/w.1"]);
    let prober = Prober::start(port, false);
    for _ in 0..5 {
        isolation::signal::send(f.tree_pid(), Signal::SIGQUIT).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        f.wait_until(
            "the re-executed tree answers",
            Duration::from_secs(20),
            |f| f.try_status().is_some(),
        );
    }
    assert_eq!(f.tree_pid() as u32, first_tree, "same pid after re-exec");
    assert_eq!(f.running(), before, "same containers after re-exec");
    // SIGKILL: the knots and their sockets outlive the tree; a new one adopts them.
    let mut old = f.tree.take().unwrap();
    old.kill().unwrap();
    old.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let events_tree = f.start_tree();
    assert_ne!(events_tree, first_tree);
    let after = f.wait_running(&["demo/w.0", "demo/w.1"]);
    assert_eq!(after, before, "the new tree adopted the same containers");
    std::thread::sleep(Duration::from_millis(500));
    let Probes { ok, refused, .. } = prober.finish();
    assert!(ok > 50, "{ok} connections made");
    assert_eq!(
        refused,
        0,
        "{refused} of {} connections refused",
        ok + refused
    );
    assert_eq!(
        lithos::tree::find_knots(&f.master).len(),
        2,
        "no duplicate knots"
    );
    let log = f.tree_log();
    assert!(!log.contains("Address already in use"), "{log}");
    assert!(log.matches("adopted knot").count() >= 2, "{log}");
}

/// The container config of a sleeper holding loopback `port` at fd 3.
fn sleeper_on(port: u16) -> String {
    format!("{SLEEPER}tcp-ports:\n  {port}: {{fd: 3, host: 127.0.0.1, listen-backlog: 4096}}\n")
}

#[test]
fn retired_socket_is_closed_after_a_reexec() {
    require_root!();
    let port = free_port();
    let mut f = Fixture::new(&format!("allow-tcp-ports: [{port}]\n"));
    f.image("v1", &sleeper_on(port));
    f.write_processes("w: {image: v1, config: /config/w.yaml}\n");
    f.start_tree();
    f.wait_running(&["demo/w.0"]);
    // After the exec the tree holds the socket by an inherited descriptor number.
    f.reexec_with(Signal::SIGQUIT);
    assert!(
        f.tree_log()
            .contains(&format!("recovered listening socket 127.0.0.1:{port}")),
        "{}",
        f.tree_log()
    );
    let tree = f.tree_pid();
    let inode = common::listener_inode(port).expect("the port listens");
    assert!(
        common::holds_socket(tree, inode),
        "the new image holds port {port}"
    );
    let out = f.switch("{}\n");
    assert!(out.status.success());
    f.wait_until("w is gone", Duration::from_secs(20), |f| {
        f.instances().is_empty()
    });
    // Closed, not merely shut down: no descriptor of that socket is left in the tree.
    assert!(
        !common::holds_socket(tree, inode),
        "the tree still has a descriptor of the socket for port {port}"
    );
    let refused = TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free again");
}

#[test]
fn fatal_signal_reexecutes_the_tree_keeping_containers_and_socket() {
    require_root!();
    let port = free_port();
    let mut f = Fixture::new(&format!("allow-tcp-ports: [{port}]\n"));
    f.image("v1", &sleeper_on(port));
    f.write_processes(TWO);
    let tree = f.start_tree() as i32;
    let before = f.wait_running(&["demo/w.0", "demo/w.1"]);
    let prober = Prober::start(port, false);
    f.reexec_with(Signal::SIGSEGV);
    assert_eq!(f.tree_pid(), tree, "same pid after the crash");
    assert_eq!(f.running(), before, "same containers after the crash");
    assert!(
        holds_listener(tree, port),
        "the new image holds port {port}"
    );
    assert!(
        f.tree_log()
            .contains(&format!("recovered listening socket 127.0.0.1:{port}")),
        "{}",
        f.tree_log()
    );
    // A second crash works as well: the new image installed the handler again.
    f.reexec_with(Signal::SIGBUS);
    assert_eq!(f.tree_pid(), tree);
    assert_eq!(f.running(), before);
    std::thread::sleep(Duration::from_millis(200));
    let Probes { ok, refused, .. } = prober.finish();
    assert!(ok > 10, "{ok} connections made");
    assert_eq!(refused, 0, "{refused} of {} refused", ok + refused);
}

#[test]
fn rolling_upgrade_on_one_port_refuses_nothing_and_both_answer() {
    require_root!();
    let port = free_port();
    let mut f = Fixture::new(&format!("allow-tcp-ports: [{port}]\n"));
    for image in ["v1", "v2"] {
        f.image(
            image,
            &format!(
                "executable: /bin/answer\narguments: [{image}]\n\
                 tcp-ports:\n  {port}: {{fd: 3, host: 127.0.0.1}}\n"
            ),
        );
        fs::copy(
            common::answer_server(),
            f.images.join(image).join("bin/answer"),
        )
        .unwrap();
    }
    let w = "w: {image: v1, config: /config/w.yaml, instances: 2}\n";
    let w2 = "w2: {image: v2, config: /config/w.yaml, instances: 2}\n";
    f.write_processes(w);
    f.start_tree();
    f.wait_running(&["demo/w.0", "demo/w.1"]);
    let prober = Prober::start(port, true);
    std::thread::sleep(Duration::from_millis(200));
    let out = f.switch(&format!("{w}{w2}"));
    assert!(out.status.success());
    f.wait_running(&["demo/w.0", "demo/w.1", "demo/w2.0", "demo/w2.1"]);
    let overlap = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let overlap_end = Instant::now();
    let out = f.switch(w2);
    assert!(out.status.success());
    f.wait_until("only w2 is left", Duration::from_secs(20), |f| {
        f.instances().keys().all(|n| n.starts_with("demo/w2."))
    });
    let w_gone = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let probes = prober.finish();
    assert_eq!(
        probes.refused,
        0,
        "{} of {} refused",
        probes.refused,
        probes.ok + probes.refused
    );
    let answered = |from: Instant, to: Instant| {
        probes
            .answers
            .iter()
            .filter(|(at, _)| (from..to).contains(at))
            .map(|(_, a)| a.as_str())
            .collect::<std::collections::BTreeSet<_>>()
    };
    let during = answered(overlap, overlap_end);
    assert!(
        during.contains("v1") && during.contains("v2"),
        "both images answer while they overlap: {during:?}"
    );
    let after = answered(w_gone, Instant::now());
    assert_eq!(
        after.into_iter().collect::<Vec<_>>(),
        ["v2"],
        "only v2 after w is removed"
    );
}

#[test]
fn restart_process_only_keeps_the_knot_and_its_state() {
    require_root!();
    let mut f = Fixture::new("");
    f.image(
        "v1",
        "executable: /bin/sh\narguments: [-c, 'echo start >> /work/starts; sleep 0.3; exit 1']\n\
         environ: {PATH: /bin}\nrestart-process-only: true\nrestart-timeout: 0.1\n\
         restart-backoff: {max-delay: 0.2}\nvolumes: {/work: !Statedir {path: /app, user: 1000, group: 1000}}\n",
    );
    f.write_processes("w: {image: v1, config: /config/w.yaml}\n");
    f.start_tree();
    let first = f.wait_running(&["demo/w.0"])["demo/w.0"];
    let knot = f.instances()["demo/w.0"].2.expect("a knot");
    let instance = |f: &Fixture| f.status().sandboxes[0].entries[0].instances[0].clone();
    f.wait_until("three respawns", Duration::from_secs(20), |f| {
        let i = instance(f);
        i.restarts >= 3 && i.pid.is_some()
    });
    let now = instance(&f);
    assert_eq!(
        now.knot_pid,
        Some(knot),
        "the same knot respawns the process"
    );
    assert_ne!(now.pid, Some(first), "a new container");
    let starts = fs::read_to_string(f.state_dir().join("w.0/app/starts")).unwrap();
    assert!(
        starts.lines().count() >= 4,
        "the state dir outlives each process: {starts:?}"
    );
    let deaths = lithos::metrics::read(&f.root().join("run/metrics/lithos"))
        .into_iter()
        .find(|(n, _, _)| n.contains("processes.demo.w") && n.contains("\"failures\""))
        .map(|(_, _, v)| v);
    assert!(
        deaths.is_some_and(|d| d >= 3),
        "failures counted: {deaths:?}"
    );
}

#[test]
fn restart_process_only_failures_count_in_status_and_give_up_once() {
    require_root!();
    let mut f = Fixture::new("");
    f.image(
        "v1",
        "executable: /bin/sh\narguments: [-c, 'sleep 0.5; exit 1']\nenviron: {PATH: /bin}\n\
         restart-process-only: true\nrestart-timeout: 0.1\n\
         restart-backoff: {max-delay: 0.2, give-up-after: 5}\n",
    );
    f.write_processes("w: {image: v1, config: /config/w.yaml}\n");
    f.start_tree();
    f.wait_running(&["demo/w.0"]);
    let knot = f.instances()["demo/w.0"].2.expect("a knot");
    let instance = |f: &Fixture| f.status().sandboxes[0].entries[0].instances[0].clone();
    f.wait_until("two failures counted", Duration::from_secs(20), |f| {
        instance(f).failures >= 2
    });
    let counting = instance(&f);
    assert!(
        counting.knot_pid == Some(knot) || counting.state == pb::InstanceState::GaveUp as i32,
        "counted while the same knot respawns: {counting:?}"
    );
    f.wait_until("gave up", Duration::from_secs(20), |f| {
        instance(f).state == pb::InstanceState::GaveUp as i32
    });
    let end = instance(&f);
    assert_eq!(end.failures, 5, "each process end counted once: {end:?}");
    assert_eq!(end.restarts, 4, "five starts, all by the one knot: {end:?}");
    assert_eq!(end.knot_pid, None);
}

#[test]
fn broken_processes_file_keeps_running_containers() {
    require_root!();
    let mut f = Fixture::new("");
    f.image("v1", SLEEPER);
    f.write_processes(TWO);
    f.start_tree();
    let before = f.wait_running(&["demo/w.0", "demo/w.1"]);
    let live = fs::read_to_string(f.processes_path()).unwrap();
    let out = f.switch("w:\n  image: v1\n  config: /config/w.yaml\n  instnces: 2\n");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("new-processes.yaml:4:3: unknown key \"instnces\" in entry \"w\""),
        "{stderr}"
    );
    assert_eq!(
        fs::read_to_string(f.processes_path()).unwrap(),
        live,
        "live file untouched"
    );
    // Written by hand and applied with SIGQUIT: the tree keeps the last good config.
    f.write_processes("w: [image: v1\n");
    isolation::signal::send(f.tree_pid(), Signal::SIGQUIT).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    f.wait_until("the tree answers", Duration::from_secs(20), |f| {
        f.try_status().is_some()
    });
    assert_eq!(f.running(), before);
    let errors = &f.status().sandboxes[0].config_errors;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].file.ends_with("processes/demo.yaml") && errors[0].line >= 1,
        "{errors:?}"
    );
    let ps = bin("lithos_ps")
        .arg("--master")
        .arg(&f.master)
        .arg("--no-color")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&ps.stdout);
    assert!(
        text.contains("config error: ") && text.contains("processes/demo.yaml:"),
        "{text}"
    );
    // A broken master.yaml: the tree refuses to re-execute and keeps running.
    let pid = f.tree_pid();
    let good_master = fs::read_to_string(&f.master).unwrap();
    fs::write(&f.master, format!("{good_master}runtime-dri: x\n")).unwrap();
    isolation::signal::send(pid, Signal::SIGQUIT).unwrap();
    f.wait_until("the refusal is logged", Duration::from_secs(10), |f| {
        f.tree_log().contains("not re-executing")
    });
    assert_eq!(f.tree_pid(), pid);
    assert_eq!(f.running(), before);
    fs::write(&f.master, good_master).unwrap();
}

#[test]
fn bad_entries_are_rejected_by_check_and_not_started() {
    require_root!();
    let port = free_port();
    let mut f = Fixture::new(&format!("allow-tcp-ports: [{port}]\n"));
    f.image("v1", SLEEPER);
    f.container_config("v1", "root.yaml", &format!("{SLEEPER}user-id: 0\n"));
    f.container_config(
        "v1",
        "port.yaml",
        &format!("{SLEEPER}tcp-ports: {{9: {{fd: 3}}}}\n"),
    );
    f.container_config(
        "v1",
        "vol.yaml",
        &format!("{SLEEPER}volumes: {{/data: !Persistent /other}}\n"),
    );
    f.write_processes(TWO);
    f.start_tree();
    let before = f.wait_running(&["demo/w.0", "demo/w.1"]);
    let bad = format!(
        "{TWO}v9: {{image: v9, config: /config/w.yaml}}\nroot: {{image: v1, config: /config/root.yaml}}\n\
         port: {{image: v1, config: /config/port.yaml}}\nvol: {{image: v1, config: /config/vol.yaml}}\n"
    );
    let file = f.root().join("bad.yaml");
    fs::write(&file, &bad).unwrap();
    let check = bin("lithos_check")
        .args(["-C"])
        .arg(&f.master)
        .args(["--sandbox", "demo", "--alternate-config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&check.stderr);
    for expected in [
        format!("image \"{}\" not found", f.images.join("v9").display()),
        "User is not in allowed range (uid: 0)".to_string(),
        "port 9 is not in allow-tcp-ports of sandbox demo".to_string(),
        "can't find volume /other in writable-paths of sandbox demo".to_string(),
    ] {
        assert!(
            stderr.contains(&expected),
            "{expected} missing in:\n{stderr}"
        );
    }
    // Forced: written without a check. None of them starts; w is unaffected.
    f.write_processes(&bad);
    let response = f.reload();
    assert_eq!(response.rejected.len(), 1);
    assert_eq!(response.rejected[0].errors.len(), 4, "{response:?}");
    std::thread::sleep(Duration::from_millis(500));
    let instances = f.instances();
    for name in ["demo/v9.0", "demo/root.0", "demo/port.0", "demo/vol.0"] {
        assert_eq!(
            instances[name].0,
            pb::InstanceState::FailedSetup as i32,
            "{name}: {instances:?}"
        );
    }
    assert_eq!(f.running(), before);
    assert!(
        f.tree_log()
            .contains("User is not in allowed range (uid: 0)")
    );
}

#[test]
fn sandbox_limits_clamp_memory_restart_oom_kills_and_stop_a_fork_loop() {
    require_root!();
    let mut f = Fixture::new("max-memory-limit: 32Mi\ntotal-pids-limit: 50\n");
    f.image(
        "v1",
        "executable: /bin/sh\narguments: [-c, 'sleep 2; dd if=/dev/zero of=/dev/null bs=200M count=1']\n\
         environ: {PATH: /bin}\nmemory-limit: 64Mi\nrestart-timeout: 0.5\n",
    );
    // Bounded: 100 forks, more than the sandbox allows; the shell stops at the first refusal.
    f.container_config(
        "v1",
        "forks.yaml",
        "executable: /bin/sh\narguments: [-c, 'for i in $(seq 100); do sleep 1000 & echo forked $i; done; wait']\n\
         environ: {PATH: /bin}\nrestart-timeout: 60\n",
    );
    f.write_processes(
        "w: {image: v1, config: /config/w.yaml}\nforks: {image: v1, config: /config/forks.yaml}\n",
    );
    f.start_tree();
    let events = EventLog::start(&f);
    let running = f.wait_running(&["demo/w.0"]);
    let cgroup = fs::read_to_string(format!("/proc/{}/cgroup", running["demo/w.0"])).unwrap();
    let memory = cgroup.lines().find_map(|l| {
        l.strip_prefix("4:memory:")
            .or_else(|| l.split_once(":memory:").map(|(_, p)| p))
    });
    // The sandbox's slice in the pids hierarchy.
    let slice = if let Some(path) = memory {
        let limit =
            fs::read_to_string(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"))
                .unwrap();
        assert_eq!(limit.trim(), "33554432");
        Path::new("/sys/fs/cgroup/pids").join(&f.cgroup)
    } else {
        let path = cgroup.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        let limit = fs::read_to_string(format!("/sys/fs/cgroup{path}/memory.max")).unwrap();
        assert_eq!(limit.trim(), "33554432");
        Path::new("/sys/fs/cgroup").join(&f.cgroup)
    }
    .join("demo.slice");
    assert_eq!(
        fs::read_to_string(slice.join("pids.max")).unwrap().trim(),
        "50"
    );
    let stdio_log = f.root().join("log/stderr/demo.log");
    f.wait_until("the fork loop is refused", Duration::from_secs(20), |_| {
        fs::read_to_string(&stdio_log).is_ok_and(|l| l.contains("can't fork"))
    });
    let log = fs::read_to_string(&stdio_log).unwrap();
    let forked = log
        .lines()
        .filter_map(|l| l.strip_prefix("forked ")?.parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    // The loop's init and shell, and w's processes, count as well.
    assert!((1..=48).contains(&forked), "{forked} forks went through");
    if let Ok(peak) = fs::read_to_string(slice.join("pids.peak")) {
        assert_eq!(peak.trim(), "50", "the sandbox reached its limit, no more");
    }
    f.wait_until("an OOM kill is reported, then the container starts again", Duration::from_secs(20), |_| {
        let kinds = events.kinds();
        let oom_at = kinds.iter().position(|k| {
            matches!(k, pb::event::Kind::InstanceExited(e) if e.exit.as_ref().is_some_and(|x| x.oom))
        });
        oom_at.is_some_and(|i| kinds[i..].iter().any(|k| matches!(k, pb::event::Kind::InstanceStarted(_))))
    });
    assert!(
        f.tree_log()
            .contains("exceeds max-memory-limit 32Mi of sandbox demo"),
        "{}",
        f.tree_log()
    );
}

#[test]
fn command_gets_stdin_and_returns_its_status() {
    require_root!();
    let f = Fixture::new("");
    f.image("v1", SLEEPER);
    f.container_config(
        "v1",
        "sh.yaml",
        "kind: Command\nexecutable: /bin/sh\ninteractive: true\nenviron: {PATH: /bin}\n",
    );
    f.write_processes("sh: {kind: Command, image: v1, config: /config/sh.yaml}\n");
    let run = |script: &str| {
        let mut child = bin("lithos_cmd")
            .arg("--master")
            .arg(&f.master)
            .args(["demo", "sh", "-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"hi\n").unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run("cat; ls -d /proc/self/../$$ >/dev/null; exit 3");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    assert_eq!(out.status.code(), Some(1));
    let out = run("cat; exit 0");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    assert_eq!(out.status.code(), Some(0));
    let leftovers: Vec<_> = fs::read_dir(f.state_dir())
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "cmd state dirs removed: {leftovers:?}"
    );
}

#[test]
fn command_state_dir_holds_only_the_container_files_while_it_runs() {
    require_root!();
    let f = Fixture::new("");
    f.image("v1", SLEEPER);
    f.container_config(
        "v1",
        "cat.yaml",
        "kind: Command\nexecutable: /bin/sh\narguments: [-c, echo up; exec cat]\n\
         interactive: true\nenviron: {PATH: /bin}\n",
    );
    f.write_processes("c: {kind: Command, image: v1, config: /config/cat.yaml}\n");
    let mut child = bin("lithos_cmd")
        .arg("--master")
        .arg(&f.master)
        .args(["demo", "c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "up\n");
    // Once the program runs, lithos_cmd ends up waiting in poll: whatever it writes after
    // the start is on disk by then.
    let wchan = format!("/proc/{}/wchan", child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fs::read_to_string(&wchan).is_ok_and(|w| w.contains("poll")) && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let dir = f.state_dir().join(format!("cmd.c.{}", child.id()));
    let mut names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    // No knot.json or exit-status: lithos_cmd waits for the command itself.
    assert_eq!(names, ["hosts", "resolv.conf"]);
    assert!(!dir.exists(), "state dir removed at the end");
}

#[test]
fn uid_map_of_the_sandbox_maps_the_container_user() {
    require_root!();
    let mut f = Fixture::new("");
    // Replace the sandbox: uid-map with allow-users inside the map.
    fs::write(
        f.root().join("etc/sandboxes/demo.yaml"),
        format!(
            "image-dir: {}\nallow-users: [1-65535]\nallow-groups: [1-65535]\ndefault-group: 1\n\
             uid-map: [{{inside: 0, outside: 100000, count: 65536}}]\ngid-map: [{{inside: 0, outside: 100000, count: 65536}}]\n",
            f.images.display()
        ),
    )
    .unwrap();
    f.image("v1", &format!("{SLEEPER}user-id: 1\n"));
    f.container_config("v1", "root.yaml", &format!("{SLEEPER}user-id: 0\n"));
    f.write_processes(
        "w: {image: v1, config: /config/w.yaml}\nr: {image: v1, config: /config/root.yaml}\n",
    );
    f.start_tree();
    let running = f.wait_running(&["demo/w.0"]);
    let app = app_pid(running["demo/w.0"]).unwrap();
    let status = proc_status(app);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("100001")),
        "{status}"
    );
    let instances: BTreeMap<_, _> = f.instances();
    assert_eq!(
        instances["demo/r.0"].0,
        pb::InstanceState::FailedSetup as i32
    );
}
