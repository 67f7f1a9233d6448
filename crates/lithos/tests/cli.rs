//! Tools that need no root: every annotated example parses, lithos_check reports problems
//! with file:line:column, lithos_switch never replaces a live file with a bad one.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::bin;
use lithos::config::{self, Master};
use lithos::instance::Sandbox;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config-examples/lithos")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no examples in {}", dir.display());
    files
}

#[test]
fn every_example_config_parses() {
    let dir = examples();
    let master = Master::load(&dir.join("master.yaml")).unwrap();
    assert_eq!(master.sandboxes_dir, dir.join("./sandboxes"));
    for file in yaml_files(&dir.join("sandboxes")) {
        let name = file.file_stem().unwrap().to_string_lossy().into_owned();
        Sandbox::load_from(&master, &name, &file).unwrap_or_else(|e| panic!("{e}"));
    }
    for file in yaml_files(&dir.join("processes")) {
        config::load_processes(&file).unwrap_or_else(|e| panic!("{e}"));
    }
    for file in yaml_files(&dir.join("containers")) {
        let mut report = lithos::check::Report::default();
        lithos::check::container(&file, &mut report);
        assert!(report.ok(), "{:?}", report.errors);
    }
}

/// master.yaml, sandbox demo and an image with a container config, under a temp dir.
fn setup(container: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for d in ["sandboxes", "processes", "images/v1/config"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(
        root.join("master.yaml"),
        format!(
            "runtime-dir: {0}/run\ndefault-log-dir: {0}/log\nconfig-log-dir: null\n",
            root.display()
        ),
    )
    .unwrap();
    fs::write(
        root.join("sandboxes/demo.yaml"),
        format!(
            "image-dir: {}/images\nallow-users: [1000-1999]\nallow-groups: [1000-1999]\ndefault-user: 1000\n\
             default-group: 1000\nallow-tcp-ports: [8080]\nmax-memory-limit: 1Gi\n",
            root.display()
        ),
    )
    .unwrap();
    fs::write(root.join("images/v1/config/w.yaml"), container).unwrap();
    fs::write(
        root.join("processes/demo.yaml"),
        "w: {image: v1, config: /config/w.yaml}\n",
    )
    .unwrap();
    let master = root.join("master.yaml");
    (dir, master)
}

fn check(master: &Path) -> (i32, String) {
    let out = bin("lithos_check").arg("-C").arg(master).output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_passes_a_good_config() {
    let (_dir, master) = setup("executable: /bin/sleep\narguments: [1000]\n");
    let (code, stderr) = check(&master);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn check_rejects_a_uid_outside_the_allowed_range() {
    let (dir, master) = setup("executable: /bin/sleep\nuser-id: 0\n");
    let (code, stderr) = check(&master);
    assert_eq!(code, 1);
    let file = dir.path().join("images/v1/config/w.yaml");
    assert!(
        stderr.contains(&format!(
            "{}:2:1: User is not in allowed range (uid: 0)",
            file.display()
        )),
        "{stderr}"
    );
}

#[test]
fn check_reports_ceilings_variables_and_later_features() {
    let (dir, master) = setup(
        "executable: /bin/x\narguments: [\"@{nope}\"]\nmemory-limit: 2Gi\nsecret-environ: {A: b}\n",
    );
    let (code, stderr) = check(&master);
    assert_eq!(code, 1);
    for expected in [
        "undeclared variable \"@{nope}\"",
        "secret-environ is not supported in this release",
    ] {
        assert!(stderr.contains(expected), "{expected} missing: {stderr}");
    }
    fs::write(
        dir.path().join("images/v1/config/w.yaml"),
        "executable: /bin/x\nmemory-limit: 2Gi\n",
    )
    .unwrap();
    let (code, stderr) = check(&master);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("memory-limit 2Gi exceeds max-memory-limit 1Gi of sandbox demo"),
        "{stderr}"
    );
}

#[test]
fn check_names_a_missing_image_and_a_bad_image_path() {
    let (dir, master) = setup("executable: /bin/sleep\n");
    fs::write(
        dir.path().join("processes/demo.yaml"),
        "a: {image: v9, config: /config/w.yaml}\nb: {image: ../x, config: /config/w.yaml}\n",
    )
    .unwrap();
    let (code, stderr) = check(&master);
    assert_eq!(code, 1);
    let v9 = dir.path().join("images/v9");
    assert!(
        stderr.contains(&format!("image \"{}\" not found", v9.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains("image must have exactly 1 plain path component"),
        "{stderr}"
    );
}

#[test]
fn switch_leaves_the_live_file_alone_when_the_new_one_is_bad() {
    let (dir, master) = setup("executable: /bin/sleep\n");
    let live = dir.path().join("processes/demo.yaml");
    let before = fs::read_to_string(&live).unwrap();
    let bad = dir.path().join("processes.yaml");
    fs::write(
        &bad,
        "w:\n  image: v1\n  config: /config/w.yaml\n  instnces: 2\n",
    )
    .unwrap();
    let out = bin("lithos_switch")
        .arg("--master")
        .arg(&master)
        .arg("demo")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("processes.yaml:4:3: unknown key \"instnces\" in entry \"w\""),
        "{stderr}"
    );
    assert_eq!(fs::read_to_string(&live).unwrap(), before);
    assert!(!dir.path().join("processes/.tmp.demo").exists());
    // A good file with no tree running: replaced, with a warning, exit 0.
    fs::write(
        &bad,
        "w: {image: v1, config: /config/w.yaml, instances: 3}\n",
    )
    .unwrap();
    let out = bin("lithos_switch")
        .arg("--master")
        .arg(&master)
        .arg("demo")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
    assert!(fs::read_to_string(&live).unwrap().contains("instances: 3"));
}

#[test]
fn clean_lists_used_and_unused_images() {
    let (dir, master) = setup("executable: /bin/sleep\n");
    fs::create_dir_all(dir.path().join("images/old")).unwrap();
    let used = bin("lithos_clean")
        .arg("--master")
        .arg(&master)
        .arg("--used")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&used.stdout).contains("images/v1"));
    let unused = bin("lithos_clean")
        .arg("--master")
        .arg(&master)
        .args(["--unused", "--keep-recent", "0s"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&unused.stdout);
    assert!(
        text.contains("images/old") && !text.contains("images/v1"),
        "{text}"
    );
    let deleted = bin("lithos_clean")
        .arg("--master")
        .arg(&master)
        .args(["--delete-unused", "--keep-recent", "0s"])
        .output()
        .unwrap();
    assert!(deleted.status.success());
    assert!(!dir.path().join("images/old").exists());
    assert!(dir.path().join("images/v1").exists());
}
