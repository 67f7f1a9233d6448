//! A whole lithos under a temporary directory: master.yaml, sandbox `demo`, busybox images,
//! the real binaries, and a client for the control socket. Root-only tests use it.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use protocol::pb::lithos as pb;

pub fn is_root() -> bool {
    isolation::user::effective_uid() == 0
}

#[macro_export]
macro_rules! require_root {
    () => {
        if !common::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

/// The busybox root, built once per machine (test processes take turns through a lock).
pub fn rootfs() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let dest = dir.join("busybox-rootfs");
        let lock = fs::File::create(dir.join("busybox-rootfs.lock")).unwrap();
        lock.lock().unwrap();
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/busybox-rootfs.sh");
        let status = Command::new("bash")
            .arg(&script)
            .arg(&dest)
            .status()
            .unwrap();
        assert!(status.success(), "{} failed", script.display());
        dest
    })
}

/// tests/fixtures/answer.c built static (images have no libc), once per machine.
pub fn answer_server() -> &'static Path {
    static SERVER: OnceLock<PathBuf> = OnceLock::new();
    SERVER.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/answer.c");
        let dest = dir.join("answer");
        let lock = fs::File::create(dir.join("answer.lock")).unwrap();
        lock.lock().unwrap();
        let fresh = |d: &Path| {
            let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
            modified(d).is_some_and(|t| Some(t) >= modified(&source))
        };
        if !fresh(&dest) {
            let building = dir.join("answer.new");
            let status = Command::new("cc")
                .args(["-static", "-O2", "-o"])
                .arg(&building)
                .arg(&source)
                .status()
                .unwrap();
            assert!(status.success(), "cc -static {} failed", source.display());
            fs::rename(&building, &dest).unwrap();
        }
        dest
    })
}

pub fn bin(name: &str) -> Command {
    let path = match name {
        "lithos_tree" => env!("CARGO_BIN_EXE_lithos_tree"),
        "lithos_knot" => env!("CARGO_BIN_EXE_lithos_knot"),
        "lithos_check" => env!("CARGO_BIN_EXE_lithos_check"),
        "lithos_switch" => env!("CARGO_BIN_EXE_lithos_switch"),
        "lithos_ps" => env!("CARGO_BIN_EXE_lithos_ps"),
        "lithos_cmd" => env!("CARGO_BIN_EXE_lithos_cmd"),
        "lithos_clean" => env!("CARGO_BIN_EXE_lithos_clean"),
        other => panic!("no binary {other}"),
    };
    Command::new(path)
}

/// A free TCP port on loopback (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub master: PathBuf,
    pub images: PathBuf,
    pub cgroup: String,
    pub tree: Option<Child>,
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

impl Fixture {
    /// master.yaml and sandbox `demo` (uids and gids 1000-1999, default 1000); `extra`
    /// lines are added to the sandbox file.
    pub fn new(extra_sandbox: &str) -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("lithos-test")
            .tempdir()
            .unwrap();
        let root = dir.path().to_path_buf();
        let cgroup = format!(
            "lithos-test-{}-{}.slice",
            std::process::id(),
            root.file_name().unwrap().to_string_lossy().replace('.', "")
        );
        let master = root.join("etc/master.yaml");
        let images = root.join("images");
        for d in ["etc/sandboxes", "etc/processes", "images", "srv"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(
            &master,
            format!(
                "runtime-dir: {r}/run\ndefault-log-dir: {r}/log\nconfig-log-dir: null\ncgroup-name: {cgroup}\nlog-level: info\n",
                r = root.display()
            ),
        )
        .unwrap();
        fs::write(
            root.join("etc/sandboxes/demo.yaml"),
            format!(
                "image-dir: {}\nallow-users: [1000-1999]\nallow-groups: [1000-1999]\ndefault-user: 1000\ndefault-group: 1000\n\
                 writable-paths: {{/data: {}/srv}}\n{extra_sandbox}",
                images.display(),
                root.display()
            ),
        )
        .unwrap();
        Fixture {
            dir,
            master,
            images,
            cgroup,
            tree: None,
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Copies the busybox root as image `name`, with a container config at /config/w.yaml.
    pub fn image(&self, name: &str, config: &str) {
        let dest = self.images.join(name);
        let status = Command::new("cp")
            .arg("-a")
            .arg(rootfs())
            .arg(&dest)
            .status()
            .unwrap();
        assert!(status.success());
        fs::create_dir_all(dest.join("config")).unwrap();
        fs::write(dest.join("config/w.yaml"), config).unwrap();
    }

    pub fn container_config(&self, image: &str, file: &str, config: &str) {
        fs::write(self.images.join(image).join("config").join(file), config).unwrap();
    }

    pub fn processes_path(&self) -> PathBuf {
        self.root().join("etc/processes/demo.yaml")
    }

    pub fn write_processes(&self, text: &str) {
        fs::write(self.processes_path(), text).unwrap();
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root().join("run/state/demo")
    }

    pub fn start_tree(&mut self) -> u32 {
        let child = bin("lithos_tree")
            .arg("--master")
            .arg(&self.master)
            .arg("--log-level")
            .arg("info")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        self.tree = Some(child);
        self.wait_until("the control socket answers", Duration::from_secs(20), |f| {
            f.try_status().is_some()
        });
        pid
    }

    pub fn tree_pid(&self) -> i32 {
        fs::read_to_string(self.root().join("run/master.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    pub fn try_status(&self) -> Option<pb::StatusResponse> {
        let socket = self.root().join("run/control.sock");
        runtime().block_on(async move {
            let channel = protocol::unix::connect(&socket).await.ok()?;
            let mut client = pb::control_client::ControlClient::new(channel);
            client
                .status(pb::StatusRequest {})
                .await
                .ok()
                .map(|r| r.into_inner())
        })
    }

    pub fn status(&self) -> pb::StatusResponse {
        self.try_status().expect("the tree answers Status")
    }

    pub fn reload(&self) -> pb::ReloadResponse {
        let socket = self.root().join("run/control.sock");
        runtime().block_on(async move {
            let channel = protocol::unix::connect(&socket).await.unwrap();
            let mut client = pb::control_client::ControlClient::new(channel);
            client
                .reload(pb::ReloadRequest { sandbox: None })
                .await
                .unwrap()
                .into_inner()
        })
    }

    /// Instance name to (state, container pid, knot pid).
    pub fn instances(&self) -> BTreeMap<String, (i32, Option<u32>, Option<u32>)> {
        let mut out = BTreeMap::new();
        for s in self.status().sandboxes {
            for e in s.entries {
                for i in e.instances {
                    out.insert(i.name, (i.state, i.pid, i.knot_pid));
                }
            }
        }
        out
    }

    /// Container pids of running instances.
    pub fn running(&self) -> BTreeMap<String, u32> {
        self.instances()
            .into_iter()
            .filter(|(_, (state, pid, _))| {
                *state == pb::InstanceState::Running as i32 && pid.is_some()
            })
            .map(|(n, (_, pid, _))| (n, pid.unwrap()))
            .collect()
    }

    pub fn wait_until(&self, what: &str, limit: Duration, mut ok: impl FnMut(&Fixture) -> bool) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if ok(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out after {limit:?} waiting until {what}; status: {:#?}",
            self.try_status()
        );
    }

    pub fn wait_running(&self, names: &[&str]) -> BTreeMap<String, u32> {
        self.wait_until(&format!("{names:?} run"), Duration::from_secs(20), |f| {
            let r = f.running();
            r.len() == names.len() && names.iter().all(|n| r.contains_key(*n))
        });
        self.running()
    }

    pub fn switch(&self, file_text: &str) -> std::process::Output {
        let file = self.root().join("new-processes.yaml");
        fs::write(&file, file_text).unwrap();
        bin("lithos_switch")
            .arg("--master")
            .arg(&self.master)
            .arg("demo")
            .arg(&file)
            .output()
            .unwrap()
    }

    /// Sends `signal` to the tree and waits until the new image it execs answers.
    pub fn reexec_with(&self, signal: isolation::Signal) {
        let starts = |f: &Fixture| f.tree_log().matches("lithos_tree running").count();
        let before = starts(self);
        isolation::signal::send(self.tree_pid(), signal).unwrap();
        self.wait_until(
            &format!("the tree re-executed after {signal}"),
            Duration::from_secs(20),
            |f| starts(f) > before && f.try_status().is_some(),
        );
    }

    pub fn tree_log(&self) -> String {
        fs::read_to_string(self.root().join("log/master.log")).unwrap_or_default()
    }

    pub fn stop_tree(&mut self) {
        if let Some(mut child) = self.tree.take() {
            let _ = isolation::signal::send(child.id() as i32, isolation::Signal::SIGTERM);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if child.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The inode of the socket listening on `port`, if any.
pub fn listener_inode(port: u16) -> Option<u64> {
    procfs::net::tcp().unwrap().into_iter().find_map(|e| {
        (e.state == procfs::net::TcpState::Listen && e.local_address.port() == port)
            .then_some(e.inode)
    })
}

/// Whether process `pid` has a descriptor of socket `inode` (in any state).
pub fn holds_socket(pid: i32, inode: u64) -> bool {
    let socket = format!("socket:[{inode}]");
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .any(|e| fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == socket.as_str()))
}

/// Whether process `pid` holds the socket listening on `port`.
pub fn holds_listener(pid: i32, port: u16) -> bool {
    listener_inode(port).is_some_and(|inode| holds_socket(pid, inode))
}

/// The uid, `NoNewPrivs` and `CapBnd` lines of a process.
pub fn proc_status(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
}

/// The program running in a container: the child of its init.
pub fn app_pid(init: u32) -> Option<u32> {
    let children = fs::read_to_string(format!("/proc/{init}/task/{init}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop_tree();
        // Whatever a failed test left: knots of this master, then the cgroups.
        for knot in lithos::tree::find_knots(&self.master) {
            let _ = isolation::signal::send(knot.pid, isolation::Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(h) = isolation::Hierarchies::detect(None) {
            let _ = lithos::cgroups::remove_tree(&h, Path::new(&self.cgroup));
        }
    }
}
