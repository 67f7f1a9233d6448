//! Every example under config-examples/verwalter/ goes through the scheduler
//! (`verwalter run-scheduler`) and every role it places through `verwalter_render --check`.

mod common;

use std::path::PathBuf;

use assert_cmd::Command;
use common::{render_bin, verwalter_bin};
use serde_json::Value;

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config-examples/verwalter")
}

#[test]
fn example_scheduler_places_web_and_every_role_renders() {
    let tmp = tempfile::tempdir().unwrap();
    let config = examples();
    let schedule = tmp.path().join("schedule.json");
    let output = Command::new(verwalter_bin())
        .args(["run-scheduler", "--config-dir"])
        .arg(&config)
        .arg("--input")
        .arg(config.join("scheduler-input.json"))
        .arg("--output")
        .arg(&schedule)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let data: Value = serde_json::from_str(&std::fs::read_to_string(&schedule).unwrap()).unwrap();
    // The dead host gets nothing; the action set three instances.
    assert_eq!(
        data["nodes"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["alpha", "beta"]
    );
    assert_eq!(data["nodes"]["alpha"]["roles"]["web"]["instances"], 3);
    assert_eq!(data["roles"]["web"]["image"], "web.v2");

    let scratch = tmp.path().join("check");
    let output = Command::new(render_bin())
        .args(["--check", "--config-dir"])
        .arg(&config)
        .arg("--schedule-file")
        .arg(&schedule)
        .arg("-C")
        .arg(&scratch)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("then !RootCommand [\"lithos_switch\", \"web\""),
        "{stdout}"
    );
    let rendered =
        std::fs::read_to_string(scratch.join("beta/web/0-processes-processes.yaml")).unwrap();
    // The rendered lithos processes file parses and names the image and instance count.
    let processes: Value = serde_yaml::from_str(&rendered).unwrap();
    assert_eq!(processes["web"]["instances"], 3);
    assert_eq!(processes["web"]["image"], "web.v2");
    assert_eq!(processes["web"]["kind"], "Daemon");
}
