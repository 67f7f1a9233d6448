//! One verwalter on loopback, without cantal: a node alone elects itself, schedules and
//! renders (spec V1, V7, V8, V9, V10, V12, V13).

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::{Daemon, TOKEN, free_port, index_lines, request, wait_for, write_config};
use serde_json::{Value, json};

const ID: &str = "0123456789abcdef0123456789abcdef";

struct Node {
    _tmp: tempfile::TempDir,
    daemon: Daemon,
    out: std::path::PathBuf,
    config: std::path::PathBuf,
}

fn start(extra: &[&str]) -> Node {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let out = tmp.path().join("out");
    let config = dir.join("config");
    write_config(&config, &out);
    let daemon = Daemon::start(&dir, "127.0.0.1", free_port(), "solo", ID, extra);
    Node {
        _tmp: tmp,
        daemon,
        out,
        config,
    }
}

fn schedule_hash(daemon: &Daemon) -> Option<String> {
    let (status, body) = daemon.get("/v1/schedule");
    (status == 200).then(|| {
        serde_json::from_str::<Value>(&body).unwrap()["hash"]
            .as_str()
            .unwrap()
            .to_owned()
    })
}

fn wait_leader(daemon: &Daemon) {
    wait_for(Duration::from_secs(10), "self-election", || {
        let (status, body) = daemon.get("/v1/status");
        let status_json: Value = (status == 200).then(|| serde_json::from_str(&body).unwrap())?;
        (status_json["leader"]["id"] == ID).then_some(())
    });
}

fn wait_file(path: &std::path::Path, expected: &str, daemon: &Daemon) {
    wait_for(
        Duration::from_secs(10),
        &format!("{} = {expected:?}\n{}", path.display(), daemon.log()),
        || (fs::read_to_string(path).ok()? == expected).then_some(()),
    );
}

#[test]
fn one_node_schedules_renders_and_logs_the_deployment() {
    let node = start(&[]);
    let daemon = &node.daemon;
    wait_leader(daemon);
    let conf = node.out.join("web.conf");
    wait_file(&conf, "n=2 node=solo counter=0\n", daemon);
    // The role's second `!Copy` lands a moment after the first.
    wait_file(&node.out.join("extra.conf"), "role=web\n", daemon);

    // The hash is SHA-1 of the canonical data.
    let schedule = daemon.json("/v1/schedule");
    let canonical = verwalter::schedule::canonical_json(&schedule["data"]);
    assert_eq!(
        schedule["hash"],
        verwalter::schedule::hash(&schedule["data"])
    );
    assert_eq!(schedule["origin"], ID);
    assert!(canonical.contains(r#""n":2"#));

    // The index: DeploymentStart, RoleStart, ActionStart/ActionFinish per command, RoleFinish,
    // DeploymentFinish in order.
    let log_dir = daemon.dir.join("log");
    let markers = wait_for(
        Duration::from_secs(5),
        "deployment finish in the index",
        || {
            let markers: Vec<Value> = index_lines(&log_dir)
                .iter()
                .map(|line| line[3].clone())
                .collect();
            markers
                .contains(&json!("DeploymentFinish"))
                .then_some(markers)
        },
    );
    let position = |m: &str| markers.iter().position(|x| x == m).unwrap();
    assert!(position("DeploymentStart") < position("RoleStart"));
    assert!(position("RoleStart") < position("RoleFinish"));
    assert!(position("RoleFinish") < position("DeploymentFinish"));
    // Each apply command of the role sits between ActionStart and ActionFinish.
    let first_action = markers
        .iter()
        .position(|m| m["variant"] == "ActionStart")
        .expect("ActionStart in the index");
    assert!(position("RoleStart") < first_action);
    assert_eq!(markers[first_action + 1]["variant"], "ActionFinish");
    assert!(first_action < position("RoleFinish"));
    assert_eq!(
        fs::read_to_string(node.out.join("../reloads")).unwrap(),
        "reload\n"
    );

    // force_render_all: a new deployment, files unchanged, the !Condition does not fire.
    let mtime = fs::metadata(&conf).unwrap().modified().unwrap();
    let finishes = |lines: &[Value]| lines.iter().filter(|l| l[3] == "DeploymentFinish").count();
    let before = finishes(&index_lines(&log_dir));
    let (status, body) = daemon.post("/v1/force_render_all", "{}");
    assert_eq!(status, 200, "{body}");
    wait_for(Duration::from_secs(5), "a second deployment", || {
        (finishes(&index_lines(&log_dir)) > before).then_some(())
    });
    assert_eq!(fs::metadata(&conf).unwrap().modified().unwrap(), mtime);
    assert_eq!(
        fs::read_to_string(node.out.join("../reloads")).unwrap(),
        "reload\n"
    );

    // Read API shapes.
    let status = daemon.json("/v1/status");
    assert_eq!(status["schedule_status"], "ok");
    assert_eq!(status["election_state"]["state"], "Leader");
    assert_eq!(daemon.json("/v1/election")["needed"], 1);
    assert_eq!(daemon.json("/v1/scheduler_input")["current_host"], "solo");
    assert!(
        daemon
            .get("/v1/scheduler_debug_info")
            .1
            .contains("placed web")
    );
    assert_eq!(daemon.get("/v1/nope").0, 404);
    assert_eq!(daemon.get("/nope.js").0, 404);
    let (code, index) = daemon.get("/");
    assert_eq!(code, 200);
    assert!(index.contains("<title>verwalter</title>"), "{index}");
    let (code, pretty) = daemon.get("/v1/election.pretty");
    assert_eq!(code, 200);
    assert!(pretty.contains("\n  \"epoch\""), "{pretty}");
    assert!(daemon.json("/v1/roles_data")["web"]["nodes"]["solo"]["n"] == 2);
    let (code, role_log) = request(
        daemon.addr,
        "GET",
        "/v1/log/role/web/latest",
        &[("Range", "bytes=0-11")],
        "",
    );
    assert_eq!((code, role_log.as_str()), (206, "==== role we"));
    let (code, global) = daemon.get("/v1/log/global/latest");
    assert_eq!(code, 200);
    assert!(global.contains("==== deployment"));
    // The control socket answers too.
    assert!(daemon.dir.join("run/control.sock").exists());
}

#[test]
fn write_routes_check_token_type_and_json_and_actions_reach_the_scheduler() {
    let node = start(&[]);
    let daemon = &node.daemon;
    wait_leader(daemon);
    let conf = node.out.join("web.conf");
    wait_file(&conf, "n=2 node=solo counter=0\n", daemon);

    let action = r#"{"button": "set_servers", "n": 3}"#;
    let no_token = request(
        daemon.addr,
        "POST",
        "/v1/action",
        &[("Content-Type", "application/json")],
        action,
    );
    assert_eq!(no_token.0, 401);
    let bearer = format!("Bearer {TOKEN}");
    let wrong_type = request(
        daemon.addr,
        "POST",
        "/v1/action",
        &[("Authorization", &bearer), ("Content-Type", "text/plain")],
        action,
    );
    assert_eq!(wrong_type.0, 415);
    let (code, body) = daemon.post("/v1/action", "{bad");
    assert_eq!(code, 400);
    assert!(body.contains("line 1 column 2"), "{body}");
    assert_eq!(
        daemon.json("/v1/pending_actions"),
        json!({}),
        "nothing registered"
    );

    let (code, body) = daemon.post("/v1/wait_action", action);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"ok": true, "n": 3})
    );
    wait_file(&conf, "n=3 node=solo counter=1\n", daemon);

    let (code, body) = daemon.post("/v1/action", r#"{"button": "other"}"#);
    assert_eq!(code, 200);
    let reply: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        reply["replicated"], true,
        "a node alone is its own majority"
    );
    wait_file(&conf, "n=3 node=solo counter=2\n", daemon);
    let id = reply["registered"].as_str().unwrap();
    assert_eq!(
        daemon.json(&format!("/v1/action_is_pending/{id}"))["pending"],
        false
    );
}

#[test]
fn scheduler_errors_and_endless_loops_keep_the_previous_schedule() {
    let node = start(&["--scheduler-instructions", "50000000"]);
    let daemon = &node.daemon;
    wait_leader(daemon);
    wait_file(
        &node.out.join("web.conf"),
        "n=2 node=solo counter=0\n",
        daemon,
    );
    let hash = schedule_hash(daemon).unwrap();
    let main = node.config.join("scheduler/v1/main.lua");
    let cases = [
        ("return {scheduler = function() error('boom') end}", "boom"),
        (
            "return {scheduler = function() return 42 end}",
            "scheduler returned integer, expected object",
        ),
        (
            "return {scheduler = function() return '{' end}",
            "invalid JSON",
        ),
        (
            "return {scheduler = function() while true do end end}",
            "instruction limit (50000000) exceeded",
        ),
        (
            r#"return {scheduler = function() local s = "x" repeat s = s .. s until false end}"#,
            "memory limit",
        ),
    ];
    for (script, expected) in cases {
        fs::write(&main, script).unwrap();
        wait_for(
            Duration::from_secs(8),
            &format!("error {expected:?}"),
            || {
                let status = daemon.json("/v1/status");
                let error = status["errors"]["scheduler"].as_str()?.to_owned();
                error.contains(expected).then_some(())
            },
        );
        let status_started = Instant::now();
        daemon.json("/v1/status");
        assert!(
            status_started.elapsed() < Duration::from_secs(1),
            "status stays responsive"
        );
        assert_eq!(
            schedule_hash(daemon).unwrap(),
            hash,
            "{expected}: previous schedule kept"
        );
        assert!(daemon.get("/v1/scheduler_debug_info").1.contains(expected));
    }
    let pid = daemon.child.id();
    fs::write(
        &main,
        common::SCHEDULER.replace("state.n = state.n or 2", "state.n = 5"),
    )
    .unwrap();
    wait_file(
        &node.out.join("web.conf"),
        "n=5 node=solo counter=0\n",
        daemon,
    );
    assert_eq!(daemon.child.id(), pid);
    assert!(
        daemon.json("/v1/status")["errors"]
            .get("scheduler")
            .is_none()
    );
}

#[test]
fn a_broken_template_touches_no_file_and_marks_the_role_failed() {
    let node = start(&[]);
    let daemon = &node.daemon;
    wait_leader(daemon);
    let conf = node.out.join("web.conf");
    let extra = node.out.join("extra.conf");
    wait_file(&conf, "n=2 node=solo counter=0\n", daemon);
    wait_file(&extra, "role=web\n", daemon);
    let snapshot = |path: &std::path::Path| {
        (
            fs::read(path).unwrap(),
            fs::metadata(path).unwrap().modified().unwrap(),
        )
    };
    let before = (snapshot(&conf), snapshot(&extra));

    // The second template is broken: nothing may change, although the first one would.
    fs::write(
        node.config.join("templates/web/v1/extra.conf.hbs"),
        "role={{#if role}}\n",
    )
    .unwrap();
    let (code, _) = daemon.post("/v1/action", r#"{"button": "set_servers", "n": 7}"#);
    assert_eq!(code, 200);
    wait_for(Duration::from_secs(10), "web in failed_roles", || {
        let status = daemon.json("/v1/status");
        status["failed_roles"]
            .as_array()?
            .contains(&json!("web"))
            .then_some(())
    });
    assert_eq!(
        (snapshot(&conf), snapshot(&extra)),
        before,
        "byte-identical, same mtime"
    );
    let role_log = fs::read_to_string(daemon.dir.join("log/web/latest")).unwrap();
    assert!(role_log.contains("exit 10"), "{role_log}");
    assert!(
        role_log.contains("extra.conf.hbs:2:1: invalid handlebars syntax"),
        "{role_log}"
    );

    // An unknown key in render.yaml: also exit 10, file:line:column.
    let render = node.config.join("templates/web/v1/web.render.yaml");
    let original = fs::read_to_string(&render).unwrap();
    fs::write(
        node.config.join("templates/web/v1/extra.conf.hbs"),
        "role={{role}}\n",
    )
    .unwrap();
    fs::write(&render, format!("{original}bogus: 1\n")).unwrap();
    let (code, _) = daemon.post("/v1/force_render_all", "{}");
    assert_eq!(code, 200);
    wait_for(
        Duration::from_secs(10),
        "unknown key in the role log",
        || {
            let log = fs::read_to_string(daemon.dir.join("log/web/latest")).ok()?;
            log.contains("web.render.yaml:")
                .then(|| log.contains("bogus"))
                .filter(|b| *b)
        },
    );
    assert_eq!((snapshot(&conf), snapshot(&extra)), before);

    // Fixed: the next render applies the pending schedule.
    fs::write(&render, original).unwrap();
    let (code, _) = daemon.post("/v1/force_render_all", "{}");
    assert_eq!(code, 200);
    wait_file(&conf, "n=7 node=solo counter=1\n", daemon);
    wait_for(Duration::from_secs(5), "failed_roles cleared", || {
        daemon.json("/v1/status")["failed_roles"]
            .as_array()?
            .is_empty()
            .then_some(())
    });
}

#[test]
fn rollback_restores_files_byte_identical_and_freezes_until_resume() {
    let node = start(&[]);
    let daemon = &node.daemon;
    wait_leader(daemon);
    let conf = node.out.join("web.conf");
    wait_file(&conf, "n=2 node=solo counter=0\n", daemon);
    let v1 = fs::read(&conf).unwrap();
    let v1_hash = schedule_hash(daemon).unwrap();

    // The plan names exactly the changed role and var.
    let (code, plan) = daemon.post("/v1/plan", r#"{"button": "set_servers", "n": 4}"#);
    assert_eq!(code, 200, "{plan}");
    let plan: Value = serde_json::from_str(&plan).unwrap();
    assert_eq!(
        plan["hosts"]["solo"]["changed"]["web"]["n"],
        json!({"old": 2, "new": 4})
    );
    assert_eq!(plan["hosts"]["solo"]["added"], json!([]));
    assert_eq!(
        schedule_hash(daemon).unwrap(),
        v1_hash,
        "a plan publishes nothing"
    );

    daemon.post("/v1/action", r#"{"button": "set_servers", "n": 4}"#);
    wait_file(&conf, "n=4 node=solo counter=1\n", daemon);

    let backups = daemon.json("/v1/backups");
    let name = backups
        .as_array()
        .unwrap()
        .iter()
        .find(|b| {
            b["hash"] == v1_hash.as_str() && b["name"].as_str().unwrap().starts_with("recent-")
        })
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        daemon.json(&format!("/v1/backup/{name}"))["hash"],
        v1_hash.as_str()
    );
    let (code, body) = daemon.post("/v1/rollback", &format!(r#"{{"backup": "{name}"}}"#));
    assert_eq!(code, 200, "{body}");
    wait_for(Duration::from_secs(5), "v1 files back", || {
        (fs::read(&conf).ok()? == v1).then_some(())
    });
    let schedule = daemon.json("/v1/schedule");
    assert_eq!(schedule["frozen"], true);
    assert_eq!(schedule["rollback_of"], name.as_str());
    assert_eq!(
        schedule["hash"],
        v1_hash.as_str(),
        "same data, new timestamp"
    );

    // Frozen: actions are consumed into a plan, nothing is published.
    daemon.post("/v1/action", r#"{"button": "set_servers", "n": 9}"#);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(fs::read(&conf).unwrap(), v1);
    let (code, _) = daemon.post("/v1/resume", "{}");
    assert_eq!(code, 200);
    assert_eq!(daemon.json("/v1/status")["frozen"], false);
    daemon.post("/v1/action", r#"{"button": "set_servers", "n": 6}"#);
    wait_file(&conf, "n=6 node=solo counter=2\n", daemon);
}

#[test]
fn dry_run_logs_commands_and_touches_nothing() {
    let node = start(&["--dry-run"]);
    let daemon = &node.daemon;
    wait_leader(daemon);
    let role_log = wait_for(Duration::from_secs(10), "dry-run lines", || {
        let log = fs::read_to_string(daemon.dir.join("log/web/latest")).ok()?;
        log.contains("dry-run: would run !Copy").then_some(log)
    });
    assert!(
        role_log.contains("n=2 node=solo"),
        "templates are logged: {role_log}"
    );
    assert!(!node.out.exists(), "no target file written");
}

#[test]
fn control_socket_garbage_packets_and_a_missing_cantal_are_reported() {
    let node = start(&[]);
    let daemon = &node.daemon;
    wait_leader(daemon);
    wait_file(
        &node.out.join("web.conf"),
        "n=2 node=solo counter=0\n",
        daemon,
    );

    // Garbage, old-format and oversized election packets are dropped and counted.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.send_to(b"\x02garbage", daemon.addr).unwrap();
    socket.send_to(b"\x01old", daemon.addr).unwrap();
    socket.send_to(&[2; 2000], daemon.addr).unwrap();
    wait_for(Duration::from_secs(5), "packet counters", || {
        let metrics = daemon.json("/v1/status")["metrics"].clone();
        let counted = metrics["election_packets_garbage"] == 1
            && metrics["election_packets_old_format"] == 1
            && metrics["election_packets_oversized"] == 1;
        counted.then_some(())
    });
    let status = daemon.json("/v1/status");
    assert!(
        status["errors"]["cantal"]
            .as_str()
            .unwrap()
            .contains("no-cantal.sock"),
        "{status}"
    );
    assert_eq!(
        status["leader"]["id"], ID,
        "a node alone leads without cantal"
    );

    // The gRPC control socket: status, then the schedule stream.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use protocol::pb::verwalter::{
            StatusRequest, WatchScheduleRequest, control_client::ControlClient,
        };
        let channel = protocol::unix::connect(daemon.dir.join("run/control.sock"))
            .await
            .unwrap();
        let mut client = ControlClient::new(channel);
        let status = client.status(StatusRequest {}).await.unwrap().into_inner();
        assert_eq!(status.role, protocol::pb::verwalter::Role::Leader as i32);
        assert_eq!(hex::encode(&status.id), ID);
        let hash = schedule_hash(daemon).unwrap();
        assert_eq!(status.schedule_hash, hash);
        let mut stream = client
            .watch_schedule(WatchScheduleRequest {})
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert_eq!(first.hash, hash);
        let data: Value = serde_json::from_str(&first.data_json).unwrap();
        assert_eq!(verwalter::schedule::hash(&data), hash);
        daemon.post("/v1/action", r#"{"button": "set_servers", "n": 8}"#);
        let next = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_ne!(next.hash, hash);
    });
}

#[test]
fn unreadable_config_dir_exits_3() {
    let tmp = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(common::verwalter_bin())
        .arg("--config-dir")
        .arg(tmp.path().join("missing"))
        .arg("--storage-dir")
        .arg(tmp.path().join("storage"))
        .arg("--api-token-file")
        .arg(tmp.path().join("token"))
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_missing_token_file_is_created_private() {
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("etc/api-token");
    let created = verwalter::daemon::load_token(&token).unwrap();
    assert_eq!(created.len(), 64);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&token).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(verwalter::daemon::load_token(&token).unwrap(), created);
}

/// Roles `web` and `db` (whose template is missing, so it fails) until an action drops `db`.
const DROPPING_SCHEDULER: &str = r#"
local function scheduler(input)
  local with_db = true
  for _, parent in ipairs(input.parents) do
    if (parent.vars or {}).with_db == false then with_db = false end
  end
  for _, action in pairs(input.actions) do
    if action.button == "drop_db" then with_db = false end
  end
  local roles = {web = {}}
  if with_db then roles.db = {} end
  return {
    vars = {n = 2, counter = 0, with_db = with_db},
    roles = {web = {template = "web/v1"}, db = {template = "db/v1"}},
    nodes = {solo = {roles = roles}},
  }, "ok"
end
return {scheduler = scheduler}
"#;

#[test]
fn a_role_dropped_from_the_host_is_forgotten_and_its_files_stay() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let out = tmp.path().join("out");
    write_config(&dir.join("config"), &out);
    fs::write(dir.join("config/scheduler/v1/main.lua"), DROPPING_SCHEDULER).unwrap();
    let daemon = Daemon::start(&dir, "127.0.0.1", free_port(), "solo", ID, &[]);
    wait_leader(&daemon);
    let conf = out.join("web.conf");
    wait_file(&conf, "n=2 node=solo counter=0\n", &daemon);
    wait_for(Duration::from_secs(10), "db in failed_roles", || {
        let status = daemon.json("/v1/status");
        (status["failed_roles"] == json!(["db"])).then_some(())
    });
    let db_vars = dir.join("run/render/db.vars.json");
    assert!(db_vars.exists());

    let (code, body) = daemon.post("/v1/action", r#"{"button": "drop_db"}"#);
    assert_eq!(code, 200, "{body}");
    let status = wait_for(Duration::from_secs(10), "db forgotten", || {
        let status = daemon.json("/v1/status");
        status["failed_roles"]
            .as_array()?
            .is_empty()
            .then_some(status)
    });
    assert_eq!(status["roles"], 1, "{status}");
    assert!(!db_vars.exists(), "the dropped role's vars file is removed");
    assert!(dir.join("run/render/web.vars.json").exists());
    let global = fs::read_to_string(dir.join("log/.global/latest")).unwrap();
    assert!(
        global.contains("role db is no longer scheduled on this host"),
        "{global}"
    );
    assert_eq!(
        fs::read_to_string(&conf).unwrap(),
        "n=2 node=solo counter=0\n",
        "the remaining role's files stay"
    );
}
