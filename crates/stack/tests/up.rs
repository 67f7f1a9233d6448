//! The main job end to end (root only): `deploy-stack up` from the workspace's binaries in a
//! temporary state dir builds the demo images, starts the daemons, and the scheduler deploys
//! the demo; the app answers, cantal shows its request counter, verwalter leads; SIGINT
//! leaves no process, mount or cgroup behind; a second run on the same state dir works, and a
//! run after a SIGKILLed one stops the daemons that one left.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use isolation::Signal;
use isolation::signal::send;

struct Printed {
    verwalter: String,
    cantal: String,
    app: String,
}

/// deploy-stack, stopped with SIGINT and waited for when dropped (a failed assertion must not
/// leave a stack running on a deleted state dir).
struct Stack(Child);

impl Stack {
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// SIGINT, then its exit status (at most 60 s).
    fn interrupt(&mut self) -> std::process::ExitStatus {
        let _ = send(self.pid(), Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "deploy-stack did not stop");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            self.interrupt();
        }
    }
}

fn start(state_dir: &Path, host: &str) -> (Stack, Printed) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_deploy-stack"))
        .args([
            "up",
            "--deploy-timeout",
            "90s",
            "--host",
            host,
            "--state-dir",
        ])
        .arg(state_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start deploy-stack");
    let stdout = child.stdout.take().unwrap();
    let mut stack = Stack(child);
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(150);
    let (mut verwalter, mut cantal, mut app) = (None, None, None);
    while app.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match lines.recv_timeout(left) {
            Ok(line) => line,
            Err(_) => {
                let status = stack.interrupt();
                panic!("deploy-stack printed no addresses ({status}); logs in {state_dir:?}/log");
            }
        };
        let value = |prefix: &str| line.strip_prefix(prefix).map(|v| v.trim().to_string());
        verwalter = verwalter.or(value("verwalter UI:"));
        cantal = cantal.or(value("cantal:"));
        app = app.or(value("demo app:"));
    }
    let printed = Printed {
        verwalter: verwalter.expect("verwalter address printed"),
        cantal: cantal.expect("cantal address printed"),
        app: app.unwrap(),
    };
    (stack, printed)
}

fn get(url: &str) -> String {
    ureq::get(url)
        .timeout(Duration::from_secs(5))
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .into_string()
        .unwrap()
}

/// Every process whose command line names `needle`.
fn processes_naming(needle: &str) -> Vec<String> {
    procfs::process::all_processes()
        .unwrap()
        .filter_map(|p| p.ok()?.cmdline().ok())
        .map(|argv| argv.join(" "))
        .filter(|cmdline| cmdline.contains(needle))
        .collect()
}

fn check_serving(printed: &Printed, host: &str) {
    assert_eq!(printed.app, format!("http://{host}:8080/"));
    let greeting = get(&printed.app);
    assert!(greeting.starts_with("demo-web v1 on "), "{greeting}");
    assert_eq!(get(&format!("{}health", printed.app)), "ok\n");

    let status: serde_json::Value =
        serde_json::from_str(&get(&format!("{}v1/status", printed.verwalter))).unwrap();
    assert_eq!(status["election_state"]["state"], "Leader", "{status}");
    assert_eq!(status["failed_roles"], serde_json::json!([]), "{status}");

    // cantal scans every 2 s; libcantal flushes every 100 ms.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = get(&format!("{}metrics", printed.cantal));
        let served = metrics.lines().any(|line| {
            line.starts_with("cantal_app_requests_number_total{")
                && line.contains("appname=\"demo\"")
                && line.contains("path=\"/\"")
                && line
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|v| v >= 1.0)
        });
        if served {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no demo request counter in cantal's /metrics"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn stop_and_check_clean(mut stack: Stack, layout: &stack::Layout, host: &str) {
    let status = stack.interrupt();
    assert!(status.success(), "deploy-stack exited with {status}");

    let root = layout.root.to_str().unwrap();
    let left = processes_naming(root);
    assert!(left.is_empty(), "processes left: {left:?}");
    let demo = processes_naming(&format!("--listen {host}:"));
    assert!(demo.is_empty(), "demo-web left: {demo:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.lines().any(|line| line.contains(root)),
        "mounts left under {root}"
    );
    let cgroups = stack::cgroups::existing(&layout.cgroup_name()).unwrap();
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
    assert!(!layout.run().exists(), "runtime dir left");
}

#[test]
fn up_serves_the_demo_restarts_and_recovers_from_a_kill() {
    if isolation::user::effective_uid() != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let layout = stack::Layout::create(&dir.path().join("state")).unwrap();
    // A loopback address of this test alone, so a stack running on 127.0.0.1 is untouched.
    let pid = std::process::id();
    let host = format!(
        "127.{}.{}.{}",
        100 + pid % 100,
        (pid / 100) % 250,
        2 + pid % 250
    );

    let (stack, printed) = start(&layout.root, &host);
    check_serving(&printed, &host);
    stop_and_check_clean(stack, &layout, &host);

    // Again on the same state dir; this time deploy-stack is SIGKILLed, so its daemons and
    // the demo stay behind ...
    let (mut stack, printed) = start(&layout.root, &host);
    check_serving(&printed, &host);
    send(stack.pid(), Signal::SIGKILL).unwrap();
    stack.0.wait().unwrap();
    assert!(!processes_naming(layout.root.to_str().unwrap()).is_empty());

    // ... and the next run stops them before starting its own.
    let (stack, printed) = start(&layout.root, &host);
    check_serving(&printed, &host);
    stop_and_check_clean(stack, &layout, &host);
}
