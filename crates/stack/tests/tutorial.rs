//! docs/tutorial.md is executable: its `sh` blocks, in order, run as one bash script from the
//! top of the checkout with the workspace's binaries first on `PATH` (root only), and every
//! block that names a file after its language (```` ```yaml config-examples/demo/x.yaml ````)
//! shows a part of that file as it is. A guard kills whatever a failed run leaves behind.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use isolation::Signal;
use isolation::signal::{send, send_to_group};

/// The address the tutorial's daemons listen on (its `H`): no other test uses it.
const TUTORIAL_HOST: &str = "127.0.0.77";
/// Longer than the tutorial ever takes (about a minute), shorter than a stuck CI job.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

fn tutorial() -> String {
    std::fs::read_to_string(workspace_root().join("docs/tutorial.md")).expect("docs/tutorial.md")
}

/// A fenced block: the words after the opening fence, its text, the line it starts on.
struct Block {
    info: Vec<String>,
    text: String,
    line: usize,
}

fn fenced_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (index, line) in markdown.lines().enumerate() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => {
                open = Some(Block {
                    info: info.split_whitespace().map(str::to_string).collect(),
                    text: String::new(),
                    line: index + 1,
                });
            }
            (Some(_), Some("")) => blocks.extend(open.take()),
            (Some(block), _) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "an unclosed code block in docs/tutorial.md");
    blocks
}

#[test]
fn shown_files_are_parts_of_the_example_files() {
    let blocks = fenced_blocks(&tutorial());
    let shown: Vec<&Block> = blocks.iter().filter(|b| b.info.len() == 2).collect();
    assert!(shown.len() >= 8, "only {} blocks name a file", shown.len());
    for block in shown {
        let path = workspace_root().join(&block.info[1]);
        let file = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("line {}: {}: {e}", block.line, path.display()));
        assert!(
            file.contains(&block.text),
            "docs/tutorial.md:{}: the block differs from {}",
            block.line,
            block.info[1]
        );
    }
}

/// What a tutorial run may leave behind, found by the test's temporary dir (every path of
/// the tutorial is below it) and the tutorial's address.
struct Leftovers {
    tmp: PathBuf,
    /// `$T` as the script's trace printed it.
    state_dir: Arc<Mutex<Option<PathBuf>>>,
}

impl Leftovers {
    /// Processes naming the temporary dir (daemons, lithos knots) or serving the address.
    fn processes(&self) -> Vec<(i32, String)> {
        let tmp = self.tmp.to_string_lossy().into_owned();
        let demo = format!("--listen {TUTORIAL_HOST}:");
        procfs::process::all_processes()
            .unwrap()
            .filter_map(|p| {
                let p = p.ok()?;
                Some((p.pid, p.cmdline().ok()?.join(" ")))
            })
            .filter(|(_, cmdline)| cmdline.contains(&tmp) || cmdline.contains(&demo))
            .collect()
    }

    /// The lithos cgroup names of the tutorial's own tree and of `deploy-stack up`'s.
    fn cgroup_names(&self) -> Vec<String> {
        let Some(state) = self.state_dir.lock().unwrap().clone() else {
            return Vec::new();
        };
        let name = state.file_name().unwrap().to_string_lossy();
        vec![
            format!("tutorial-{name}.slice"),
            stack::Layout {
                root: state.join("stack"),
            }
            .cgroup_name(),
        ]
    }

    fn cgroups(&self) -> Vec<PathBuf> {
        self.cgroup_names()
            .iter()
            .flat_map(|name| stack::cgroups::existing(name).unwrap())
            .collect()
    }

    fn mounts(&self) -> Vec<String> {
        let tmp = self.tmp.to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .filter(|point| point.starts_with(&tmp))
            .map(str::to_string)
            .collect()
    }

    /// SIGKILL to every process found (and every process in the cgroups) until none is
    /// left, then the cgroups and mounts go.
    fn remove(&self) {
        for _ in 0..50 {
            let mut pids: Vec<i32> = self.processes().into_iter().map(|(pid, _)| pid).collect();
            for cgroup in self.cgroups() {
                pids.extend(pids_in(&cgroup));
            }
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = send(pid, Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        for name in self.cgroup_names() {
            if let Err(e) = stack::cgroups::remove(&name) {
                eprintln!("cleanup: {e}");
            }
        }
        for point in self.mounts().iter().rev() {
            let _ = Command::new("umount")
                .args(["--lazy", point.as_str()])
                .status();
        }
    }
}

/// Every pid in the `cgroup.procs` files at and below `cgroup`.
fn pids_in(cgroup: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    for entry in std::fs::read_dir(cgroup).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            pids.extend(pids_in(&entry.path()));
        }
    }
    pids
}

/// The running script (in a process group of its own) and what it may leave behind; both
/// are killed and removed when dropped.
struct Run {
    script: Child,
    leftovers: Leftovers,
}

impl Drop for Run {
    fn drop(&mut self) {
        // The script and its background jobs share its process group; lithos' knots and the
        // containers do not, the leftover scan finds those.
        let _ = send_to_group(self.script.id() as i32, Signal::SIGKILL);
        let _ = self.script.wait();
        self.leftovers.remove();
    }
}

#[test]
fn every_command_of_the_tutorial_runs() {
    if isolation::user::effective_uid() != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tmp_path = tmp.path().canonicalize().unwrap();
    let commands: Vec<String> = fenced_blocks(&tutorial())
        .into_iter()
        .filter(|b| b.info.first().map(String::as_str) == Some("sh"))
        .map(|b| format!("# docs/tutorial.md:{}\n{}", b.line, b.text))
        .collect();
    assert!(commands.len() >= 10, "only {} sh blocks", commands.len());
    // -x: the trace shows which command failed (and which $T the tutorial made).
    let script = format!("set -euxo pipefail\n{}", commands.join("\n"));

    // The tutorial uses every tool; a run of this crate's tests alone does not build them.
    for tool in [
        "vagga",
        "lithos_check",
        "lithos_tree",
        "lithos_knot",
        "lithos_switch",
        "lithos_ps",
        "cantal-agent",
        "cantal",
        "verwalter",
        "verwalter_render",
        "demo-web",
        "deploy-stack",
    ] {
        common::tool(tool);
    }
    let path = format!(
        "{}:{}",
        common::bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new("bash")
        .args(["-c", &script])
        .current_dir(workspace_root())
        .env("PATH", path)
        // mktemp -d creates $T below the test's own dir.
        .env("TMPDIR", &tmp_path)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("run bash");
    let stderr = child.stderr.take().unwrap();
    let state_dir = Arc::new(Mutex::new(None));
    let mut run = Run {
        script: child,
        leftovers: Leftovers {
            tmp: tmp_path.clone(),
            state_dir: Arc::clone(&state_dir),
        },
    };
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(dir) = line.strip_prefix("+ export T=") {
                state_dir.lock().unwrap().get_or_insert(PathBuf::from(dir));
            }
            eprintln!("{line}");
        }
    });

    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(status) = run.script.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the tutorial did not finish within {SCRIPT_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let logs = || {
        let Some(state) = run.leftovers.state_dir.lock().unwrap().clone() else {
            return String::new();
        };
        let mut logs = String::new();
        for log in ["cantal-agent", "lithos_tree", "verwalter", "deploy-stack"] {
            let path = state.join("log").join(format!("{log}.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            logs.push_str(&format!("--- {}\n", path.display()));
            for line in tail.into_iter().rev() {
                logs.push_str(line);
                logs.push('\n');
            }
        }
        logs
    };
    assert!(
        status.success(),
        "the tutorial failed: {status}\n{}",
        logs()
    );

    // The tutorial stops and removes what it started: nothing is left to clean up.
    assert!(
        run.leftovers.state_dir.lock().unwrap().is_some(),
        "no `export T=` in the trace"
    );
    let leftovers = &run.leftovers;
    assert_eq!(leftovers.processes(), Vec::new(), "processes left");
    assert_eq!(leftovers.cgroups(), Vec::<PathBuf>::new(), "cgroups left");
    assert_eq!(leftovers.mounts(), Vec::<String>::new(), "mounts left");
    let left: Vec<_> = std::fs::read_dir(&tmp_path).unwrap().flatten().collect();
    assert!(
        left.is_empty(),
        "files left in {}: {left:?}",
        tmp_path.display()
    );
}
