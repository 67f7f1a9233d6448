//! The top-level Vagrantfile (docs/vagrant.md): Ruby accepts it, its provisioning script is
//! valid bash, the demo files it installs exist, and every daemon command line it writes
//! into a unit is accepted by the binaries this workspace builds today. It lives here because
//! no crate owns the Vagrantfile and vagga's tests already drive binaries in the target dir.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `ruby args`; Ruby is a test dependency (tests/run.sh installs it).
fn ruby(args: &[&str]) -> std::process::Output {
    Command::new("ruby")
        .args(args)
        .current_dir(repo())
        .output()
        .expect("ruby is needed to check the Vagrantfile: apt-get install ruby (tests/run.sh does)")
}

/// The provisioning script: the Vagrantfile loaded with a stand-in for Vagrant.
fn provision_script() -> String {
    let out = ruby(&[
        "-e",
        "module Vagrant; def self.configure(*) end; end; load ARGV[0]; print PROVISION",
        "Vagrantfile",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn ruby_accepts_the_vagrantfile() {
    let out = ruby(&["-c", "Vagrantfile"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("Syntax OK"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_provisioning_script_is_valid_bash_and_its_demo_files_exist() {
    let script = provision_script();
    let out = Command::new("bash")
        .args(["-n", "-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let demo = repo().join("config-examples/demo");
    let used = regex::Regex::new(r#""\$demo/([^"]+)""#).unwrap();
    let mut seen = 0;
    for path in used.captures_iter(&script) {
        seen += 1;
        let path = demo.join(&path[1]);
        assert!(
            path.exists(),
            "the Vagrantfile installs missing {}",
            path.display()
        );
    }
    assert!(seen >= 5, "only {seen} demo files named in {script}");
}

#[test]
fn every_daemon_accepts_its_unit_command_line() {
    let script = provision_script();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_vagga")).parent().unwrap();
    let line = regex::Regex::new(r#"\[([a-z_-]+)\]="/usr/local/bin/([a-z_-]+)([^"]*)""#).unwrap();
    let mut checked = Vec::new();
    for found in line.captures_iter(&script) {
        let binary = bin_dir.join(&found[2]);
        assert!(
            binary.is_file(),
            "{} is not built: cargo build --workspace (tests/run.sh does)",
            binary.display()
        );
        let args: Vec<String> = found[3]
            .replace("$NODE_IP", "192.168.56.11")
            .replace("$machine_id", "0123456789abcdef0123456789abcdef")
            .split_whitespace()
            .map(String::from)
            .collect();
        assert!(
            !args.iter().any(|a| a.contains('$')),
            "unexpanded variable in {args:?}"
        );
        // clap rejects an unknown flag or a bad value before it reaches --help.
        let out = Command::new(&binary)
            .args(&args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} {args:?}: {}",
            &found[2],
            String::from_utf8_lossy(&out.stderr)
        );
        checked.push(found[1].to_owned());
    }
    checked.sort();
    assert_eq!(checked, ["cantal-agent", "lithos_tree", "verwalter"]);
}
