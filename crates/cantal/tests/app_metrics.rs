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

/// A libcantal program: re-runs this test binary in the ignored test `writer`, which
/// publishes metrics at `base` until its stdin closes, then drops the collection and exits.
/// The child and its stdout, kept open so the test harness in it can still print.
fn libcantal_app(
    writer: &str,
    base: &std::path::Path,
    appname: &str,
    layout: &str,
) -> (Child, std::io::BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", writer, "--nocapture"])
        .env("CANTAL_PATH", base)
        .env(LAYOUT_VAR, layout)
        .env("CANTAL_APPNAME", appname)
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

/// Tells a writer started by [`libcantal_app`] it is published, then waits for stdin to close.
fn published_until_stdin_closes(active: &libcantal::ActiveCollection) {
    active.flush().unwrap();
    println!("published");
    std::io::stdout().flush().unwrap();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut rest);
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
    published_until_stdin_closes(&active);
}

/// Which layout `libcantal_layout_writer` publishes.
const LAYOUT_VAR: &str = "CANTAL_TEST_LAYOUT";

/// The two layouts of C12, as (metric, is counter, value). The second puts `0first` before
/// `a`, so `a` moves to another offset and `b`'s offset now holds `a`.
fn layout(which: &str) -> &'static [(&'static str, bool, i64)] {
    match which {
        "1" => &[("a", true, 111), ("b", false, -222)],
        "2" => &[("0first", false, -555), ("a", true, 444), ("c", true, 333)],
        other => panic!("no layout {other:?}"),
    }
}

#[test]
#[ignore = "the restarting program of `restart_with_a_new_layout_then_clean_exit`, run by it"]
fn libcantal_layout_writer() {
    let mut collection = libcantal::Collection::new();
    for &(metric, is_counter, value) in layout(&std::env::var(LAYOUT_VAR).unwrap()) {
        let name = format!(r#"{{"metric": "{metric}"}}"#);
        if is_counter {
            let counter = libcantal::Counter::new();
            counter.incr(value.unsigned_abs());
            collection.add(&name, &counter).unwrap();
        } else {
            let level = libcantal::Integer::new();
            level.set(value);
            collection.add(&name, &level).unwrap();
        }
    }
    published_until_stdin_closes(&libcantal::start(&collection).unwrap());
}

/// C12: the app stops cleanly and starts again with a different layout at the same path,
/// then exits. Every sample the agent kept is the value its own run wrote under that name
/// (a value read at another run's offsets would differ), the first run's series end, and
/// each exit removes both files.
#[tokio::test]
async fn restart_with_a_new_layout_then_clean_exit() {
    let apps = tempfile::tempdir().unwrap();
    let base = apps.path().join("c12");
    let files_gone =
        || !apps.path().join("c12.meta").exists() && !apps.path().join("c12.values").exists();
    let agent = Agent::start_local(&["--interval", "500"]);
    wait_ready(&agent).await;
    let all_url = format!("{}/all_metrics.json", agent.url);
    let tip_of = |all: &Json| -> Vec<(String, String, Json)> {
        all["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|row| row[0]["appname"] == "c12")
            .map(|row| {
                let pid = row[0]["pid"].as_str().unwrap().to_owned();
                let metric = row[0]["metric"].as_str().unwrap().to_owned();
                (pid, metric, row[2].clone())
            })
            .collect()
    };
    let shows = |pid: u32, which: &str, tip: &[(String, String, Json)]| {
        layout(which).iter().all(|&(metric, is_counter, value)| {
            let expected = if is_counter {
                serde_json::json!({"Counter": value})
            } else {
                serde_json::json!({"Integer": value})
            };
            tip.iter()
                .any(|(p, m, v)| *p == pid.to_string() && m == metric && *v == expected)
        })
    };

    let (mut first, _first_out) = libcantal_app("libcantal_layout_writer", &base, "c12", "1");
    let first_pid = first.id();
    let seen = eventually(Duration::from_secs(10), || async {
        shows(first_pid, "1", &tip_of(&get_json(&all_url).await))
    })
    .await;
    assert!(seen, "first run not read; log:\n{}", agent.log());

    drop(first.stdin.take());
    assert!(first.wait().unwrap().success());
    assert!(files_gone(), "the first run left its files");
    let (mut second, _second_out) = libcantal_app("libcantal_layout_writer", &base, "c12", "2");
    let second_pid = second.id();
    let switched = eventually(Duration::from_secs(10), || async {
        let tip = tip_of(&get_json(&all_url).await);
        shows(second_pid, "2", &tip) && tip.iter().all(|(pid, _, _)| *pid == second_pid.to_string())
    })
    .await;
    assert!(
        switched,
        "second run not read alone: {:?}",
        tip_of(&get_json(&all_url).await)
    );
    // A few more scans of the second run, then its clean exit.
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(second.stdin.take());
    assert!(second.wait().unwrap().success());
    assert!(files_gone(), "the second run left its files");
    let ended = eventually(Duration::from_secs(5), || async {
        tip_of(&get_json(&all_url).await).is_empty()
    })
    .await;
    assert!(
        ended,
        "series outlive the app: {:?}",
        tip_of(&get_json(&all_url).await)
    );

    // The whole history: every sample is its own run's value for that name.
    let (status, body) = common::post(
        &format!("{}/query.json", agent.url),
        r#"{"rules": {"c12": {"source": "fine", "condition": ["eq", "appname", "c12"], "expect": "multi_series", "points": 200}}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer: Json = serde_json::from_str(&body).unwrap();
    let series = answer["dataset"]["c12"]["series"].as_array().unwrap();
    let mut samples = [0usize; 2];
    for pair in series {
        let (key, values) = (&pair[0], pair[1].as_array().unwrap());
        let pid: u32 = key["pid"].as_str().unwrap().parse().unwrap();
        let run = if pid == first_pid { 0 } else { 1 };
        assert!(
            run == 0 || pid == second_pid,
            "a series of another pid: {key}"
        );
        let metric = key["metric"].as_str().unwrap();
        let expected = layout(["1", "2"][run])
            .iter()
            .find(|(m, _, _)| *m == metric)
            .unwrap_or_else(|| panic!("{metric} is not in run {}'s layout: {key}", run + 1))
            .2;
        for value in values.iter().filter(|v| !v.is_null()) {
            assert_eq!(value.as_f64(), Some(expected as f64), "{key}: {values:?}");
            samples[run] += 1;
        }
        assert!(
            values.last().unwrap().is_null(),
            "{key} did not end: {values:?}"
        );
    }
    assert!(
        samples[0] > 0 && samples[1] > 0,
        "history is missing a run: {series:?}"
    );
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
    let (mut rust, _rust_stdout) =
        libcantal_app("libcantal_writer", &apps.path().join("rs"), "rs", "");
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

/// C13: one app per kind of corrupt file pair, beside a good app, scanned many times.
/// Every bad pair gives no series (or the values §4 promises) and exactly one log line
/// however many scans pass; the good app is read in the same scans; the canary file that a
/// symlinked meta points at is never read.
#[tokio::test]
async fn corrupt_files_are_skipped_with_one_warning_each() {
    let apps = tempfile::tempdir().unwrap();
    let dir = apps.path();
    let canary = dir.join("canary");
    std::fs::write(
        with_suffix(&canary, ".meta"),
        "counter 8: {\"metric\": \"canary\"}",
    )
    .unwrap();
    std::fs::write(with_suffix(&canary, ".values"), 9u64.to_ne_bytes()).unwrap();

    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut bad_state = now_ms.to_ne_bytes().to_vec();
    bad_state.extend_from_slice(b"ok\xff\xfe!");
    bad_state.resize(64, 0);
    let mut unknown_values = vec![0xee; 16];
    unknown_values.extend_from_slice(&5u64.to_ne_bytes());
    let pairs: [(&str, &[u8], &[u8]); 6] = [
        ("short", b"counter 8: {\"metric\": \"short\"}", &[1, 2, 3]),
        ("badline", b"counter 8 {\"metric\": \"bad\"}", &[0; 8]),
        (
            "unknown",
            b"histogram 16: {\"metric\": \"h\"}\ncounter 8: {\"metric\": \"after_unknown\"}",
            &unknown_values,
        ),
        ("badutf8", b"state 64: {\"state\": \"phase\"}", &bad_state),
        ("empty", b"", b""),
        (
            "good",
            b"counter 8: {\"metric\": \"good\"}",
            &7u64.to_ne_bytes(),
        ),
    ];
    let mut children = Children(Vec::new());
    for (name, meta, values) in pairs {
        let base = dir.join(name);
        std::fs::write(with_suffix(&base, ".meta"), meta).unwrap();
        std::fs::write(with_suffix(&base, ".values"), values).unwrap();
        children.0.push(spawn_sleeper(&base, name));
    }
    // 100 MB of values, sparse: only the 8 bytes the meta declares are read.
    let huge = dir.join("huge");
    std::fs::write(
        with_suffix(&huge, ".meta"),
        "counter 8: {\"metric\": \"huge\"}",
    )
    .unwrap();
    let values = std::fs::File::create(with_suffix(&huge, ".values")).unwrap();
    values.set_len(100 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&values, &11u64.to_ne_bytes(), 0).unwrap();
    children.0.push(spawn_sleeper(&huge, "huge"));
    children.0.push(symlinked_app(dir, &canary));

    let agent = Agent::start_local(&["--interval", "500"]);
    wait_ready(&agent).await;
    let all_url = format!("{}/all_metrics.json", agent.url);
    let good = eventually(Duration::from_secs(10), || async {
        let all = get_json(&all_url).await;
        metric_value(&all, "good", &[("metric", "good")]).is_some()
            && metric_value(&all, "badutf8", &[("state", "phase")]).is_some()
    })
    .await;
    assert!(good, "good apps missing; log:\n{}", agent.log());
    // Many more scans: warnings must not repeat.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let all = get_json(&all_url).await;
    assert_eq!(
        metric_value(&all, "good", &[("metric", "good")]),
        Some(serde_json::json!({"Counter": 7}))
    );
    assert_eq!(
        metric_value(&all, "unknown", &[("metric", "after_unknown")]),
        Some(serde_json::json!({"Counter": 5})),
        "the unknown slot is skipped by its length"
    );
    assert_eq!(
        metric_value(&all, "huge", &[("metric", "huge")]),
        Some(serde_json::json!({"Counter": 11}))
    );
    assert_eq!(
        metric_value(&all, "badutf8", &[("state", "phase")]).unwrap()["State"][1],
        "ok\u{fffd}\u{fffd}!"
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
    assert!(!all.to_string().contains("canary"), "the canary was read");

    let log = agent.log();
    let lines_about = |app: &str| {
        log.lines()
            .filter(|line| line.contains(&format!("/{app}.")))
            .count()
    };
    for (app, what) in [
        ("short", "shorter than their meta"),
        ("badline", "skipping bad metrics file"),
        ("unknown", "unknown types"),
        ("empty", "declares no metrics"),
        ("link", "not following a link"),
        ("huge", "exceeds 4 MiB"),
    ] {
        assert_eq!(lines_about(app), 1, "{app}: not one line:\n{log}");
        assert!(
            log.lines()
                .any(|line| line.contains(&format!("/{app}.")) && line.contains(what)),
            "{app}: no {what:?} line:\n{log}"
        );
    }
    for app in ["good", "badutf8"] {
        assert_eq!(lines_about(app), 0, "{app} logged:\n{log}");
    }
}

/// Processes killed when the test ends, passed or not.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An app whose `.meta` and `.values` are symlinks to the canary pair. As root it runs in a
/// chroot (busybox inside), so the canary is outside its root as well as behind a link;
/// otherwise it shares the test's root and only the link is refused.
fn symlinked_app(dir: &std::path::Path, canary: &std::path::Path) -> Child {
    let link_to_canary = |base: &std::path::Path| {
        for suffix in [".meta", ".values"] {
            std::os::unix::fs::symlink(with_suffix(canary, suffix), with_suffix(base, suffix))
                .unwrap();
        }
    };
    if !common::is_root() {
        link_to_canary(&dir.join("link"));
        return spawn_sleeper(&dir.join("link"), "link");
    }
    let jail = dir.join("jail");
    std::fs::create_dir_all(jail.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", jail.join("bin/busybox")).expect("busybox-static installed");
    link_to_canary(&jail.join("link"));
    Command::new("chroot")
        .arg(&jail)
        .args(["/bin/busybox", "sleep", "60"])
        .env("CANTAL_PATH", "/link")
        .env("CANTAL_APPNAME", "link")
        .spawn()
        .unwrap()
}

fn with_suffix(base: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

fn spawn_sleeper(path: &std::path::Path, appname: &str) -> Child {
    Command::new("sleep")
        .arg("60")
        .env("CANTAL_PATH", path)
        .env("CANTAL_APPNAME", appname)
        .spawn()
        .unwrap()
}
