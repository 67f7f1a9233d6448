//! The annotated examples in `config-examples/cantal/` stay in step with the command line.

use std::process::Command;

/// The `ExecStart` of the example unit, continuation lines joined, split into arguments.
fn exec_start(unit: &str) -> Vec<String> {
    let joined = unit.replace("\\\n", " ");
    let line = joined
        .lines()
        .find_map(|l| l.trim().strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart line");
    line.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn example_unit_command_line_is_accepted() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config-examples/cantal/cantal-agent.service"
    );
    let unit = std::fs::read_to_string(path).unwrap();
    let args = exec_start(&unit);
    assert_eq!(args[0], "/usr/bin/cantal-agent");
    // clap checks every flag and value before it acts on --help, which exits without
    // starting the agent.
    let output = Command::new(env!("CARGO_BIN_EXE_cantal-agent"))
        .args(&args[1..])
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cantal-agent rejects the example: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut broken = args[1..].to_vec();
    broken.push("--no-such-flag".to_owned());
    let output = Command::new(env!("CARGO_BIN_EXE_cantal-agent"))
        .args(&broken)
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(2),
        "an unknown flag must be rejected"
    );
}
