//! config-examples/demo/ as the stack writes it: the scheduler runs on the saved input and
//! handles both actions, every role renders, lithos accepts the master, sandbox and container
//! configs, and vagga reads the image build.

mod common;

use std::path::Path;
use std::process::Command;

use common::tool;

fn examples() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config-examples/demo"
    ))
}

fn output_of(command: &mut Command) -> String {
    let output = command.output().expect("run tool");
    assert!(
        output.status.success(),
        "{command:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn scheduler_applies_actions_and_every_role_renders() {
    let dir = tempfile::tempdir().unwrap();
    let schedule_file = dir.path().join("schedule.json");
    output_of(
        Command::new(tool("verwalter"))
            .arg("run-scheduler")
            .arg("--config-dir")
            .arg(examples().join("verwalter"))
            .arg("--input")
            .arg(examples().join("verwalter/scheduler-input.json"))
            .arg("--output")
            .arg(&schedule_file),
    );
    let schedule: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&schedule_file).unwrap()).unwrap();
    assert_eq!(schedule["vars"]["version"], "v2");
    assert_eq!(schedule["vars"]["instances"], 2);
    assert_eq!(schedule["vars"]["port"], 8080);
    assert_eq!(schedule["roles"]["demo"]["image"], "demo.v2");
    assert_eq!(schedule["roles"]["demo"]["template"], "demo/v1");
    let mut hosts: Vec<_> = schedule["nodes"].as_object().unwrap().keys().collect();
    hosts.sort();
    assert_eq!(hosts, ["alpha", "beta"], "gamma is dead");
    assert_eq!(
        schedule["changes"],
        serde_json::json!(["demo: version v1 -> v2", "demo: instances 1 -> 2"])
    );

    let check = output_of(
        Command::new(tool("verwalter_render"))
            .arg("--check")
            .arg("--config-dir")
            .arg(examples().join("verwalter"))
            .arg("--schedule-file")
            .arg(&schedule_file),
    );
    assert!(check.contains("== alpha/demo"), "{check}");
    assert!(check.contains("== beta/demo"), "{check}");
    assert!(check.contains("would run: !Cmd [\"/bin/sh\""), "{check}");
}

#[test]
fn written_configs_pass_lithos_check_and_vagga_reads_the_build() {
    let dir = tempfile::tempdir().unwrap();
    let layout = stack::Layout::create(&dir.path().join("state")).unwrap();
    layout
        .write_configs("127.0.0.1", &common::bin_dir())
        .unwrap();
    output_of(
        Command::new(tool("lithos_check"))
            .arg("-C")
            .arg(layout.lithos_master())
            .arg("--check-container")
            .arg(examples().join("image/config/demo-web.yaml")),
    );
    let config = output_of(
        Command::new(tool("vagga"))
            .arg("_dump_config")
            .current_dir(layout.project()),
    );
    for name in ["demo-base:", "demo-v1:", "demo-v2:", "run-v1:"] {
        assert!(config.contains(name), "{config}");
    }
}
