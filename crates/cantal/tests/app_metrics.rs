//! Application metrics end to end: a Python program writing the cantal-py byte layout and a
//! Rust program using libcantal, both read by the real agent and shown on `/metrics` and
//! `/all_metrics.json`; `cantal dump` reads the same files without the agent.

mod common;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Agent, CLI, eventually, get, get_json, wait_ready};
use serde_json::Value as Json;

/// Writes metrics as cantal-py 0.2.5 does (`Collection.start`): values sorted by size then
/// JSON name, power-of-two sizes aligned with `pad`, values file mapped, meta joined by
/// newlines, both written to `<path>.tmp` and renamed. Then counts 100 requests a second.
const CANTAL_PY_LAYOUT: &str = r#"
import json, mmap, os, struct, time

path = os.environ["CANTAL_PATH"]
values = [
    ({"metric": "requests.number"}, "counter 8", "Q", 8),
    ({"metric": "queue.size"}, "level 8 signed", "q", 8),
    ({"metric": "load"}, "level 8 float", "d", 8),
    ({"state": "phase"}, "state 64", None, 64),
]
items = sorted(((size, json.dumps(name, sort_keys=True), typ, fmt) for name, typ, fmt, size in values))
offset, scheme, offsets = 0, [], {}
for size, name, typ, fmt in items:
    if size & (size - 1) == 0 and offset % size:
        pad = size - offset % size
        offset += pad
        scheme.append("pad {}".format(pad))
    offsets[name] = (offset, fmt, size)
    scheme.append(typ + ": " + name)
    offset += size
tmp = path + ".tmp"
with open(tmp, "w+b") as f:
    f.write(b"\x00" * offset)
    f.flush()
    mem = mmap.mmap(f.fileno(), offset)
os.rename(tmp, path + ".values")
with open(tmp, "wt") as f:
    f.write("\n".join(scheme))
os.rename(tmp, path + ".meta")

def put(name, value):
    off, fmt, size = offsets[json.dumps(name, sort_keys=True)]
    mem[off:off + 8] = struct.pack(fmt, value)

put({"metric": "queue.size"}, -7)
put({"metric": "load"}, 2.5)
off = offsets[json.dumps({"state": "phase"})][0]
mem[off:off + 16] = struct.pack("Q", int(time.time() * 1000)) + b"serving\x00"
print("ready", flush=True)
count = 0
start = time.time()
while True:
    count += 1
    put({"metric": "requests.number"}, count)
    time.sleep(max(0, start + count / 100.0 - time.time()))
"#;

fn python_app(dir: &std::path::Path) -> Child {
    let script = dir.join("app.py");
    std::fs::write(&script, CANTAL_PY_LAYOUT).unwrap();
    let mut child = Command::new("python3")
        .arg(&script)
        .env("CANTAL_PATH", dir.join("py"))
        .env("CANTAL_APPNAME", "web")
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs (tests/run.sh installs it)");
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "ready");
    child
}

/// The libcantal program: re-runs this test binary in the ignored `libcantal_writer` test,
/// which publishes metrics until its stdin closes, then drops the collection and exits.
/// The child and its stdout, kept open so the test harness in it can still print.
fn libcantal_app(dir: &std::path::Path) -> (Child, std::io::BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "libcantal_writer", "--nocapture"])
        .env("CANTAL_PATH", dir.join("rs"))
        .env("CANTAL_APPNAME", "rs")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    while !line.contains("published") {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
            "writer exited"
        );
    }
    (child, out)
}

#[test]
#[ignore = "the libcantal program of `python_and_libcantal_apps_show_up`, run by it"]
fn libcantal_writer() {
    use libcantal::{Collection, Counter, Float, Integer, State};
    let requests = Counter::new();
    let queue = Integer::new();
    let load = Float::new();
    let phase = State::new();
    let mut collection = Collection::new();
    collection
        .add(r#"{"metric": "requests.number"}"#, &requests)
        .unwrap();
    collection
        .add(r#"{"metric": "queue.size"}"#, &queue)
        .unwrap();
    collection.add(r#"{"metric": "load"}"#, &load).unwrap();
    collection.add(r#"{"state": "phase"}"#, &phase).unwrap();
    requests.incr(40);
    let active = libcantal::start(&collection).unwrap();
    requests.incr(2);
    queue.set(-7);
    queue.decr(1);
    load.set(0.25);
    phase.enter("ready");
    active.flush().unwrap();
    println!("published");
    std::io::stdout().flush().unwrap();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut rest);
}

fn metric_value(all: &Json, appname: &str, fields: &[(&str, &str)]) -> Option<Json> {
    all["metrics"].as_array()?.iter().find_map(|row| {
        let key = &row[0];
        let matches = key["appname"] == appname && fields.iter().all(|(k, v)| key[*k] == *v);
        matches.then(|| row[2].clone())
    })
}

fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn python_and_libcantal_apps_show_up() {
    let apps = tempfile::tempdir().unwrap();
    let mut python = python_app(apps.path());
    let (mut rust, _rust_stdout) = libcantal_app(apps.path());
    let agent = Agent::start_local(&["--interval", "500"]);
    wait_ready(&agent).await;

    let all_url = format!("{}/all_metrics.json", agent.url);
    let seen = eventually(Duration::from_secs(10), || async {
        let all = get_json(&all_url).await;
        metric_value(&all, "web", &[("metric", "queue.size")]).is_some()
            && metric_value(&all, "rs", &[("metric", "queue.size")]).is_some()
    })
    .await;
    assert!(seen, "app metrics missing; log:\n{}", agent.log());

    let all = get_json(&all_url).await;
    for app in ["web", "rs"] {
        assert_eq!(
            metric_value(&all, app, &[("metric", "queue.size")]),
            Some(serde_json::json!({"Integer": if app == "web" { -7 } else { -8 }})),
            "{app}"
        );
    }
    assert_eq!(
        metric_value(&all, "web", &[("metric", "load")]),
        Some(serde_json::json!({"Float": 2.5}))
    );
    assert_eq!(
        metric_value(&all, "rs", &[("metric", "load")]),
        Some(serde_json::json!({"Float": 0.25}))
    );
    assert_eq!(
        metric_value(&all, "rs", &[("metric", "requests.number")]),
        Some(serde_json::json!({"Counter": 42}))
    );
    assert_eq!(
        metric_value(&all, "web", &[("state", "phase")]).unwrap()["State"][1],
        "serving"
    );
    assert_eq!(
        metric_value(&all, "rs", &[("state", "phase")]).unwrap()["State"][1],
        "ready"
    );

    let (status, text) = get(&format!("{}/metrics", agent.url)).await;
    assert_eq!(status, 200);
    let rs_pid = rust.id();
    assert_eq!(
        sample(
            &text,
            &format!("cantal_app_requests_number_total{{appname=\"rs\",pid=\"{rs_pid}\"}}")
        ),
        Some(42.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!(
                "cantal_app_queue_size{{appname=\"web\",pid=\"{}\"}}",
                python.id()
            )
        ),
        Some(-7.0)
    );
    assert!(text.contains(&format!(
        "cantal_app_state_info{{appname=\"rs\",pid=\"{rs_pid}\",state=\"phase\",value=\"ready\"}} 1"
    )));

    // The Python app counts 100 a second: the rate over a few scans says so.
    let query = format!(
        "{}/api/v1/query?query=rate(cantal_app_requests_number_total%7Bappname%3D%22web%22%7D%5B4s%5D)",
        agent.url
    );
    let rate_ok = eventually(Duration::from_secs(15), || async {
        let reply = get_json(&query).await;
        reply["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|rate| (95.0..=105.0).contains(&rate))
    })
    .await;
    assert!(
        rate_ok,
        "rate of the python counter is not 100/s: {}",
        get_json(&query).await
    );

    // `cantal dump` reads the files without the agent.
    let dump = Command::new(CLI).arg(rs_pid.to_string()).output().unwrap();
    let stdout = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "{rs_pid}: {{\"metric\": \"requests.number\"}} Counter(42)"
        )),
        "{stdout}"
    );
    let by_path = Command::new(CLI)
        .args(["dump", "--path"])
        .arg(apps.path().join("py"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&by_path.stdout)
            .contains("{\"metric\": \"queue.size\"} Integer(-7)")
    );

    // Closing stdin ends the libcantal program, which removes its files.
    drop(rust.stdin.take());
    assert!(rust.wait().unwrap().success());
    assert!(!apps.path().join("rs.meta").exists());
    assert!(!apps.path().join("rs.values").exists());
    python.kill().unwrap();
    python.wait().unwrap();
}

#[tokio::test]
async fn bad_files_are_skipped_and_good_ones_read() {
    let apps = tempfile::tempdir().unwrap();
    let dir = apps.path();
    let secret = dir.join("secret");
    std::fs::write(&secret, "counter 8: {\"metric\": \"canary\"}").unwrap();
    std::fs::write(dir.join("secret.values"), [9u8; 8]).unwrap();
    let pairs: [(&str, &[u8], &[u8]); 5] = [
        ("short", b"counter 8: {\"metric\": \"short\"}", &[1, 2, 3]),
        ("badline", b"counter 8 {\"metric\": \"bad\"}", &[0; 8]),
        (
            "unknown",
            b"histogram 16: {\"metric\": \"h\"}\ncounter 8: {\"metric\": \"after_unknown\"}",
            &[0; 24],
        ),
        ("empty", b"", b""),
        (
            "good",
            b"counter 8: {\"metric\": \"good\"}",
            &7u64.to_ne_bytes(),
        ),
    ];
    let mut children = Vec::new();
    for (name, meta, values) in pairs {
        std::fs::write(dir.join(format!("{name}.meta")), meta).unwrap();
        std::fs::write(dir.join(format!("{name}.values")), values).unwrap();
        children.push(spawn_sleeper(&dir.join(name), name));
    }
    std::os::unix::fs::symlink(&secret, dir.join("link.meta")).unwrap();
    std::os::unix::fs::symlink(dir.join("secret.values"), dir.join("link.values")).unwrap();
    children.push(spawn_sleeper(&dir.join("link"), "link"));

    let agent = Agent::start_local(&["--interval", "500"]);
    wait_ready(&agent).await;
    let all_url = format!("{}/all_metrics.json", agent.url);
    let good = eventually(Duration::from_secs(10), || async {
        metric_value(&get_json(&all_url).await, "good", &[("metric", "good")]).is_some()
    })
    .await;
    assert!(good, "good app missing; log:\n{}", agent.log());
    let all = get_json(&all_url).await;
    assert_eq!(
        metric_value(&all, "good", &[("metric", "good")]),
        Some(serde_json::json!({"Counter": 7}))
    );
    assert_eq!(
        metric_value(&all, "unknown", &[("metric", "after_unknown")]),
        Some(serde_json::json!({"Counter": 0}))
    );
    for app in ["short", "badline", "empty", "link"] {
        assert!(
            !all["metrics"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r[0]["appname"] == app),
            "{app} should have no series"
        );
    }
    assert!(!all.to_string().contains("canary"));
    let log = agent.log();
    assert!(log.contains("skipping bad metrics file"), "{log}");
    assert!(log.contains("unknown types"), "{log}");
    assert_eq!(
        log.matches("skipping bad metrics file").count(),
        1,
        "warned more than once: {log}"
    );
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn spawn_sleeper(path: &std::path::Path, appname: &str) -> Child {
    Command::new("sleep")
        .arg("60")
        .env("CANTAL_PATH", path)
        .env("CANTAL_APPNAME", appname)
        .spawn()
        .unwrap()
}
