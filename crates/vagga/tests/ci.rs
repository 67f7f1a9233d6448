//! vagga as CI runs it: stdin from /dev/null, stdout and stderr piped, `CI=true`. The exit
//! status is the command's, output is plain text, nothing waits for input; and the example CI
//! script of config-examples/vagga/ci runs its project. Containers need root: as another user
//! these tests say they were skipped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

#[macro_use]
mod common;
use common::*;

const VAGGA: &str = env!("CARGO_BIN_EXE_vagga");
const PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";

/// A build step that prints what terminals understand and logs should not keep: a line
/// redrawn with `\r`, colour codes and a byte that is not UTF-8.
const NOISY: &str = "containers:
  bb:
    setup:
    - !Tar {url: ./busybox.tar.gz}
    - !Sh |
        printf 'progress 10%%\\rprogress 100%%\\n'
        printf '\\033[1mbold\\033[0m \\377\\n'
  broken:
    setup:
    - !Tar {url: ./busybox.tar.gz}
    - !Sh \"echo about to fail; exit 2\"
commands:
  test: !Command {container: bb, run: \"echo tests pass\"}
  failing: !Command {container: bb, run: \"echo 'one test failed' >&2; exit 3\"}
  killed: !Command {container: bb, run: \"kill -TERM $$\"}
  reads-stdin: !Command {container: bb, run: \"cat; echo stdin ended\"}
  sleeper: !Command {container: bb, run: \"touch /work/started; sleep 30\"}
  broken-test: !Command {container: broken, run: \"echo never\"}
";

/// The environment of a CI job: nothing of this machine's but PATH and HOME.
fn ci_env(cmd: &mut Command, p: &Project) {
    cmd.current_dir(p.path())
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", p.home.path())
        // A terminal type the job inherited: `CI` must win over it.
        .env("TERM", "xterm-256color")
        .env("CI", "true");
}

/// Runs `vagga args` unattended (stdin /dev/null, output piped), killed after two minutes.
fn unattended(p: &Project, args: &[&str]) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.args(["-s", "KILL", "120", VAGGA]).args(args);
    ci_env(&mut cmd, p);
    cmd.stdin(Stdio::null()).output().unwrap()
}

/// Fails when output holds anything but plain text lines.
fn assert_plain(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    assert!(
        !text.contains('\x1b') && !text.contains('\r'),
        "{what} has terminal control characters: {text:?}"
    );
}

fn assert_plain_output(out: &Output) {
    assert_plain("stdout", &out.stdout);
    assert_plain("stderr", &out.stderr);
}

fn build_log(p: &Project, name: &str) -> String {
    let meta = p.path().join(".vagga").join(p.link(name));
    fs::read_to_string(meta.parent().unwrap().join("build.log")).unwrap()
}

#[test]
fn unattended_runs_pass_the_exit_status_and_print_plain_text() {
    needs_root!();
    let p = Project::new(NOISY);

    let out = unattended(&p, &["_build", "bb"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_plain_output(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bb: [1/2] !Tar ./busybox.tar.gz\n"),
        "{stderr}"
    );
    assert!(stderr.contains("\nprogress 100%\n"), "{stderr}");
    let log = build_log(&p, "bb");
    assert_plain("build.log", log.as_bytes());
    assert!(log.contains("\nprogress 100%\n"), "{log}");
    assert!(log.contains("\nbold \u{fffd}\n"), "{log}");

    let out = unattended(&p, &["test"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "tests pass\n");
    assert_plain_output(&out);

    let out = unattended(&p, &["failing"]);
    assert_exit(&out, 3, "one test failed");
    assert_plain_output(&out);

    let out = unattended(&p, &["killed"]);
    assert_eq!(out.status.code(), Some(128 + 15), "{}", text(&out));

    // A command that reads stdin gets end of file, not a wait for a person.
    let out = unattended(&p, &["reads-stdin"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "stdin ended\n");

    // Without any stdin at all (a closed descriptor) it is the same.
    let mut cmd = Command::new("bash");
    cmd.args(["-c", "exec timeout -s KILL 120 \"$0\" test <&-", VAGGA]);
    ci_env(&mut cmd, &p);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "tests pass\n");

    // A build failure is 121 with the step's place, its output and the log's path.
    let out = unattended(&p, &["broken-test"]);
    assert_exit(&out, 121, "vagga.yaml:11:7");
    assert_plain_output(&out);
    let all = text(&out);
    assert!(all.contains("about to fail"), "{all}");
    assert!(all.contains(".vagga/.logs/broken.failed.log"), "{all}");
    assert!(!all.contains("never"), "{all}");
}

/// Runs `vagga _build --force bb` under a pseudo-terminal (`script` of bsdutils).
fn build_on_a_terminal(p: &Project, ci: Option<&str>) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.args(["-s", "KILL", "120", "script", "-qec"])
        .arg(format!("{VAGGA} _build --force bb"))
        .arg("/dev/null");
    ci_env(&mut cmd, p);
    cmd.env_remove("CI");
    if let Some(value) = ci {
        cmd.env("CI", value);
    }
    cmd.stdin(Stdio::null()).output().unwrap()
}

#[test]
fn a_terminal_gets_a_spinner_unless_ci_says_otherwise() {
    needs_root!();
    if !Path::new("/usr/bin/script").is_file() {
        eprintln!("skipped: needs script (apt-get install bsdutils)");
        return;
    }
    let p = Project::new(NOISY);
    // On a terminal: a spinner, drawn with control sequences; the build must also finish
    // (the spinner's thread once made container starts hang).
    let out = build_on_a_terminal(&p, None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("\x1b["),
        "no spinner on a terminal: {shown:?}"
    );
    assert!(shown.contains("container \"bb\" is ready"), "{shown:?}");

    let out = build_on_a_terminal(&p, Some("true"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(!shown.contains('\x1b'), "CI=true still drew: {shown:?}");
    assert!(shown.contains("bb: [2/2] !Sh"), "{shown:?}");
}

#[test]
fn sigterm_to_vagga_ends_the_command_with_143() {
    needs_root!();
    let p = Project::new(NOISY);
    assert_eq!(unattended(&p, &["_build", "bb"]).status.code(), Some(0));
    let mut cmd = Command::new(VAGGA);
    ci_env(&mut cmd, &p);
    let mut child = cmd
        .arg("sleeper")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = p.path().join("started");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !started.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(started.exists(), "the command did not start");
    // vagga installs its forwarding right after the start; give a loaded machine time.
    std::thread::sleep(Duration::from_millis(300));
    // What a CI runner does when a job is cancelled.
    isolation::signal::send(child.id() as i32, isolation::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("vagga did not end after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(128 + 15));
}

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config-examples/vagga/ci")
}

/// The example project of config-examples/vagga/ci with the busybox tarball it starts from.
fn example_project() -> Project {
    let p = Project::new(&fs::read_to_string(example_dir().join("vagga.yaml")).unwrap());
    for entry in fs::read_dir(example_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if path.is_file() && name != "vagga.yaml" {
            fs::copy(&path, p.path().join(&name)).unwrap();
        }
    }
    p
}

fn ci_script(p: &Project) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.args(["-s", "KILL", "240", "bash", "ci.sh"]);
    ci_env(&mut cmd, p);
    cmd.env("VAGGA", VAGGA)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn the_example_ci_script_builds_then_tests() {
    needs_root!();
    let p = example_project();
    let out = ci_script(&p);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_plain_output(&out);
    let all = text(&out);
    for expected in [
        "--- vagga _doctor",
        "--- build",
        "--- vagga test",
        "2 tests passed",
    ] {
        assert!(all.contains(expected), "{expected:?} missing in {all}");
    }

    // A failing test fails the job with the test command's status.
    p.write("greet.sh", "echo \"goodbye, $1\"\n");
    let out = ci_script(&p);
    assert_exit(&out, 1, "FAIL: greet world");

    // A container that does not build fails it with 121 before any test runs.
    let yaml = fs::read_to_string(p.path().join("vagga.yaml")).unwrap();
    p.write(
        "vagga.yaml",
        &yaml.replace(
            "- !Tar {url: ./busybox.tar.gz}",
            "- !Tar {url: ./gone.tar.gz}",
        ),
    );
    let out = ci_script(&p);
    assert_exit(&out, 121, "gone.tar.gz");
    assert!(!text(&out).contains("--- vagga test"), "{}", text(&out));
}

/// The GitHub Actions workflow is valid YAML and runs the same script.
#[test]
fn the_example_workflow_runs_the_ci_script() {
    let text = fs::read_to_string(example_dir().join("github-actions.yml")).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).unwrap();
    let steps = docs[0]["jobs"]["test"]["steps"]
        .as_vec()
        .expect("jobs.test.steps");
    let runs: Vec<&str> = steps.iter().filter_map(|s| s["run"].as_str()).collect();
    assert!(
        runs.iter().any(|r| r.contains("bash ci.sh")),
        "no step runs ci.sh: {runs:?}"
    );
}

/// The repository's own vagga.yaml (for developing this project) loads, and its container's
/// version can be computed: every input it names exists.
#[test]
fn the_repository_vagga_yaml_lists_its_commands() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let home = tempfile::tempdir().unwrap();
    // The checkout may belong to another user (a container's uid, a CI runner's).
    let out = assert_cmd::Command::new(VAGGA)
        .args(["--ignore-owner-check", "_list"])
        .current_dir(&root)
        .env("HOME", home.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let listed = String::from_utf8_lossy(&out.stdout);
    for command in ["run", "test", "doc"] {
        assert!(
            listed
                .lines()
                .any(|l| l.split_whitespace().next() == Some(command)),
            "{command} missing in {listed}"
        );
    }
}
