//! Three hosts of the demo stack on one machine: each a network namespace on a bridge this
//! module creates, with its own state dir (a `stack::Layout`), machine id, host name (a UTS
//! namespace) and the real cantal-agent, lithos_tree and verwalter. The demo images are
//! built once with the real vagga and shared by the three lithos sandboxes.
//!
//! The test's own network namespace has no route to the hosts: requests go from a thread
//! that has joined a namespace (`within`), either a host's own or the client namespace (a
//! fourth one on the bridge). Everything is torn down by `teardown`, which `Drop` calls too.

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use isolation::Signal;
use isolation::signal::send;
use serde_json::Value;
use stack::Layout;

use crate::common::tool;

pub const CANTAL_PORT: u16 = 22682;
pub const VERWALTER_PORT: u16 = 8379;
/// The scheduler's default port of the demo role (config-examples/demo/README.md).
pub const APP_PORT: u16 = 8080;
const TOKEN: &str = "cluster-test-token-0123456789";

/// The workspace binaries the hosts run.
struct Binaries {
    dir: PathBuf,
    cantal_agent: PathBuf,
    lithos_tree: PathBuf,
    verwalter: PathBuf,
}

impl Binaries {
    fn find() -> Binaries {
        // Checked up front so that a missing tool fails with cargo's advice, not in a daemon.
        for helper in ["lithos_knot", "lithos_switch", "verwalter_render"] {
            tool(helper);
        }
        let cantal_agent = tool("cantal-agent");
        Binaries {
            dir: cantal_agent.parent().expect("binary dir").to_path_buf(),
            cantal_agent,
            lithos_tree: tool("lithos_tree"),
            verwalter: tool("verwalter"),
        }
    }
}

/// Builds demo.v1 and demo.v2 with vagga (through the stack's own functions) into
/// `<dir>/build/images`, which every host's sandbox then uses as its image-dir.
fn build_images(dir: &Path, bins: &Binaries) -> PathBuf {
    let builder = Layout::create(&dir.join("build")).expect("build dir");
    builder
        .write_configs("127.0.0.1", &bins.dir)
        .expect("write the vagga project");
    stack::images::stage_rootfs(&builder.project(), &tool("demo-web")).expect("stage rootfs");
    stack::images::build_and_install(&tool("vagga"), &builder.project(), &builder.images())
        .expect("build the demo images with vagga");
    builder.images()
}

/// `ip ...`, which must succeed.
fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        output.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A namespace joined to `bridge` by a veth pair, with `addr` on its end.
fn add_namespace(ns: &str, veth: &str, bridge: &str, addr: &str) {
    let inner = format!("{veth}i");
    ip(&["netns", "add", ns]);
    ip(&["link", "add", veth, "type", "veth", "peer", "name", &inner]);
    ip(&["link", "set", &inner, "netns", ns]);
    ip(&["link", "set", veth, "master", bridge]);
    ip(&["link", "set", veth, "up"]);
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("{addr}/24"),
        "dev",
        &inner,
    ]);
    ip(&["-n", ns, "link", "set", &inner, "up"]);
    ip(&["-n", ns, "link", "set", "lo", "up"]);
}

/// Runs `f` on a thread that has joined network namespace `ns`: its sockets are that
/// namespace's (network namespaces are per thread).
pub fn within<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let handle = isolation::NetworkNamespace::open(Path::new(&format!("/run/netns/{ns}")))
        .expect("open the namespace");
    std::thread::scope(|scope| {
        scope
            .spawn(|| handle.run(f).expect("join the namespace"))
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// An HTTP client without a connection pool: every request is a new connection, so a
/// request fails when the process behind the address does.
pub fn http() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(3))
        .max_idle_connections(0)
        .build()
}

/// The status and body of a request, or why there is none.
pub fn outcome(result: Result<ureq::Response, ureq::Error>) -> Result<(u16, String), String> {
    match result {
        Ok(response) => {
            let status = response.status();
            let body = response.into_string().map_err(|e| e.to_string())?;
            Ok((status, body))
        }
        Err(ureq::Error::Status(status, response)) => {
            Ok((status, response.into_string().unwrap_or_default()))
        }
        Err(error) => Err(error.to_string()),
    }
}

/// Polls `check` every 100 ms until it gives a value; after `limit` panics with `what` and
/// whatever `context` says then (logs, state).
pub fn wait_for<T>(
    limit: Duration,
    what: &str,
    context: impl Fn() -> String,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One host of the cluster.
pub struct Host {
    pub name: String,
    pub ns: String,
    veth: String,
    pub ip: String,
    pub id: String,
    pub layout: Layout,
    cantal: Option<Child>,
    lithos: Option<Child>,
    verwalter: Option<Child>,
}

impl Host {
    pub fn verwalter_url(&self, path: &str) -> String {
        format!("http://{}:{VERWALTER_PORT}{path}", self.ip)
    }

    pub fn app_url(&self) -> String {
        format!("http://{}:{APP_PORT}/", self.ip)
    }

    /// The processes file verwalter's apply command installed for lithos (the rendered
    /// template, as lithos_switch copied it).
    pub fn processes_file(&self) -> Option<Vec<u8>> {
        fs::read(self.layout.root.join("lithos/processes/demo.yaml")).ok()
    }

    /// The pids of this host's demo-web processes (their command line names its address).
    pub fn demo_pids(&self) -> Vec<i32> {
        let listen = format!("{}:{APP_PORT}", self.ip);
        procfs::process::all_processes()
            .expect("read /proc")
            .filter_map(|process| {
                let process = process.ok()?;
                let argv = process.cmdline().ok()?;
                (argv.first().is_some_and(|a| a == "/usr/bin/demo-web") && argv.contains(&listen))
                    .then_some(process.pid)
            })
            .collect()
    }

    /// Whether every daemon of this host is still running.
    pub fn daemons_alive(&mut self) -> bool {
        [&mut self.cantal, &mut self.lithos, &mut self.verwalter]
            .into_iter()
            .all(|child| {
                child
                    .as_mut()
                    .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
            })
    }

    fn log(&self, name: &str) -> PathBuf {
        self.layout.log().join(format!("{name}.log"))
    }

    /// Starts `program args` in this host's network namespace and a UTS namespace named
    /// after the host (cantal announces, and verwalter selects its nodes by, the host name).
    fn spawn(&self, name: &str, program: &Path, args: &[String]) -> Child {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log(name))
            .expect("open daemon log");
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .args([
                "unshare",
                "--uts",
                "sh",
                "-c",
                "hostname \"$0\" && exec \"$@\"",
            ])
            .arg(&self.name)
            .arg(program)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            // Away from the terminal's process group: a Ctrl-C reaches the test only, whose
            // teardown then stops the daemons in order.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()))
    }
}

/// Sends `signal` to a child (ours, not yet reaped, so its pid is not reused).
fn signal(child: &Child, signal: Signal) {
    let _ = send(child.id() as i32, signal);
}

/// Waits at most `limit` for `child`, then SIGKILLs it.
fn reap(mut child: Child, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The bridges, namespaces and hosts; torn down on drop.
pub struct Cluster {
    pub hosts: Vec<Host>,
    bridge: String,
    /// A partition moves a host's link here.
    split_bridge: String,
    /// Where the client loop runs: a namespace on the bridge with no daemon in it.
    pub client_ns: String,
    client_veth: String,
    bins: Binaries,
    torn_down: bool,
    /// Last: removed after every process and mount is gone.
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Builds the images, then creates `size` hosts and starts their daemons.
    pub fn start(size: usize) -> Cluster {
        let bins = Binaries::find();
        let dir = tempfile::tempdir().expect("temp dir");
        let images = build_images(dir.path(), &bins);

        let pid = std::process::id();
        let subnet = pid % 250 + 1;
        let tag = format!("{:x}", pid % 0xfffff);
        let mut cluster = Cluster {
            hosts: Vec::new(),
            bridge: format!("dsbr{tag}"),
            split_bridge: format!("dssp{tag}"),
            client_ns: format!("ds{tag}c"),
            client_veth: format!("ds{tag}vc"),
            bins,
            torn_down: false,
            dir,
        };
        for bridge in [&cluster.bridge, &cluster.split_bridge] {
            ip(&["link", "add", bridge, "type", "bridge"]);
            ip(&["link", "set", bridge, "up"]);
        }
        add_namespace(
            &cluster.client_ns,
            &cluster.client_veth,
            &cluster.bridge,
            &format!("10.79.{subnet}.100"),
        );
        for i in 0..size {
            let layout = Layout::create(&cluster.dir.path().join(format!("n{i}"))).expect("state");
            let host = Host {
                name: format!("n{i}"),
                ns: format!("ds{tag}n{i}"),
                veth: format!("ds{tag}v{i}"),
                ip: format!("10.79.{subnet}.{}", i + 1),
                id: format!("{:032x}", 0xd5c0 + i),
                layout,
                cantal: None,
                lithos: None,
                verwalter: None,
            };
            // Pushed first, so that a failing step below still has it torn down.
            cluster.hosts.push(host);
            let host = &cluster.hosts[i];
            add_namespace(&host.ns, &host.veth, &cluster.bridge, &host.ip);
            configure(host, &cluster.bins.dir, &images);
        }
        let seed = format!("{}:{CANTAL_PORT}", cluster.hosts[0].ip);
        for i in 0..size {
            cluster.start_cantal(i, &seed, &tag);
        }
        for i in 0..size {
            cluster.start_lithos(i);
        }
        for i in 0..size {
            cluster.start_verwalter(i);
        }
        cluster
    }

    fn start_cantal(&mut self, i: usize, seed: &str, cluster_name: &str) {
        let host = &self.hosts[i];
        let mut args: Vec<String> = vec![
            "--host".into(),
            host.ip.clone(),
            "--port".into(),
            CANTAL_PORT.to_string(),
            "--cluster-name".into(),
            format!("stack-{cluster_name}"),
            "--override-machine-id".into(),
            host.id.clone(),
            "--socket".into(),
            path(&host.layout.cantal_socket()),
            "--storage-dir".into(),
            path(&host.layout.cantal_storage()),
            // Scans every second: a restarted process shows up sooner.
            "--interval".into(),
            "1000".into(),
            "--log-format".into(),
            "json".into(),
        ];
        if i > 0 {
            args.extend(["--join".into(), seed.to_owned()]);
        }
        let child = host.spawn("cantal-agent", &self.bins.cantal_agent, &args);
        self.hosts[i].cantal = Some(child);
        let socket = self.hosts[i].layout.cantal_socket();
        wait_for(
            Duration::from_secs(20),
            "cantal's socket",
            || self.log_tail(i, "cantal-agent"),
            || socket.exists().then_some(()),
        );
    }

    fn start_lithos(&mut self, i: usize) {
        let host = &self.hosts[i];
        let args = vec![
            "-C".into(),
            path(&host.layout.lithos_master()),
            "--log-stderr".into(),
        ];
        let child = host.spawn("lithos_tree", &self.bins.lithos_tree, &args);
        self.hosts[i].lithos = Some(child);
        let socket = self.hosts[i].layout.lithos_runtime().join("control.sock");
        wait_for(
            Duration::from_secs(20),
            "lithos' control socket",
            || self.log_tail(i, "lithos_tree"),
            || socket.exists().then_some(()),
        );
    }

    /// Starts (or restarts) host `i`'s verwalter.
    pub fn start_verwalter(&mut self, i: usize) {
        if let Some(old) = self.hosts[i].verwalter.take() {
            signal(&old, Signal::SIGKILL);
            reap(old, Duration::from_secs(5));
        }
        let host = &self.hosts[i];
        let layout = &host.layout;
        let args = vec![
            "--config-dir".into(),
            path(&layout.verwalter_config()),
            "--storage-dir".into(),
            path(&layout.verwalter_storage()),
            "--log-dir".into(),
            path(&layout.log().join("verwalter")),
            "--host".into(),
            host.ip.clone(),
            "--port".into(),
            VERWALTER_PORT.to_string(),
            "--hostname".into(),
            host.name.clone(),
            "--override-machine-id".into(),
            host.id.clone(),
            "--cantal-socket".into(),
            path(&layout.cantal_socket()),
            "--socket".into(),
            path(&layout.verwalter_socket()),
            "--api-token-file".into(),
            path(&layout.verwalter_token()),
            // A cut-off host counts its peers for 2 s only: the partition elects sooner.
            "--minority-grace".into(),
            "2s".into(),
            "--log-format".into(),
            "json".into(),
        ];
        let child = host.spawn("verwalter", &self.bins.verwalter, &args);
        self.hosts[i].verwalter = Some(child);
    }

    /// SIGKILLs host `i`'s verwalter (reaped when it is started again or torn down).
    pub fn kill_verwalter(&self, i: usize) {
        let child = self.hosts[i].verwalter.as_ref().expect("verwalter running");
        signal(child, Signal::SIGKILL);
    }

    /// Moves host `i`'s link to the split bridge or back.
    pub fn split(&self, i: usize, split: bool) {
        let bridge = if split {
            &self.split_bridge
        } else {
            &self.bridge
        };
        ip(&["link", "set", &self.hosts[i].veth, "master", bridge]);
    }

    /// GET from inside host `i`'s own namespace (reachable also when it is cut off).
    pub fn get(&self, i: usize, url: &str) -> Result<(u16, String), String> {
        within(&self.hosts[i].ns, || outcome(http().get(url).call()))
    }

    /// GET a verwalter JSON route of host `i`, when it answers 200.
    pub fn verwalter_json(&self, i: usize, route: &str) -> Option<Value> {
        match self.get(i, &self.hosts[i].verwalter_url(route)) {
            Ok((200, body)) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }

    /// POST JSON with the API token to host `i`'s verwalter.
    pub fn verwalter_post(&self, i: usize, route: &str, body: &Value) -> (u16, String) {
        let url = self.hosts[i].verwalter_url(route);
        within(&self.hosts[i].ns, || {
            let request = ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(40))
                .build()
                .post(&url)
                .set("Authorization", &format!("Bearer {TOKEN}"))
                .set("Content-Type", "application/json");
            outcome(request.send_string(&body.to_string()))
        })
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
    }

    /// Host `i`'s view of the leader's id.
    pub fn leader_of(&self, i: usize) -> Option<String> {
        let status = self.verwalter_json(i, "/v1/status")?;
        status["leader"]["id"].as_str().map(str::to_owned)
    }

    /// Host `i`'s election state (`Leader`, `Follower`, ...).
    pub fn state_of(&self, i: usize) -> Option<String> {
        let election = self.verwalter_json(i, "/v1/election")?;
        election["state"]["state"].as_str().map(str::to_owned)
    }

    /// The host every host of `group` follows, when they agree on one inside `group`.
    pub fn agreed_leader(&self, group: &[usize]) -> Option<usize> {
        let first = self.leader_of(group[0])?;
        let leader = self.hosts.iter().position(|h| h.id == first)?;
        let agreed = group
            .iter()
            .all(|&i| self.leader_of(i).as_deref() == Some(first.as_str()));
        (agreed && group.contains(&leader)).then_some(leader)
    }

    /// The answer of host `i`'s demo app, asked from its own namespace.
    pub fn app(&self, i: usize) -> Option<String> {
        match self.get(i, &self.hosts[i].app_url()) {
            Ok((200, body)) => Some(body),
            _ => None,
        }
    }

    /// Every host's daemons, election view and the tails of their logs: what a timeout
    /// message needs.
    pub fn report(&self) -> String {
        let mut text = String::new();
        for (i, host) in self.hosts.iter().enumerate() {
            let status = self.verwalter_json(i, "/v1/status").map(|s| {
                serde_json::json!({
                    "leader": s["leader"]["hostname"],
                    "election": s["election_state"],
                    "schedule": s["schedule_id"],
                    "failed_roles": s["failed_roles"],
                    "errors": s["errors"],
                })
            });
            text.push_str(&format!(
                "--- {} ({}) status: {}\n",
                host.name,
                host.ip,
                status.map_or("no answer".into(), |s| s.to_string())
            ));
            for daemon in ["verwalter", "lithos_tree"] {
                text.push_str(&self.log_tail(i, daemon));
            }
        }
        text
    }

    fn log_tail(&self, i: usize, daemon: &str) -> String {
        let log = fs::read_to_string(self.hosts[i].log(daemon)).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(15)..];
        format!("  {daemon}:\n    {}\n", tail.join("\n    "))
    }

    /// Stops everything and removes what the cluster made (namespaces, bridges, cgroups);
    /// returns what could not be removed. Idempotent; `Drop` calls it too.
    pub fn teardown(&mut self) -> Vec<String> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        for host in &mut self.hosts {
            if let Some(mut verwalter) = host.verwalter.take() {
                let _ = verwalter.kill();
                let _ = verwalter.wait();
            }
        }
        // SIGTERM to every tree at once: each stops its containers (kill-timeout 5 s).
        let trees: Vec<Child> = self
            .hosts
            .iter_mut()
            .filter_map(|h| h.lithos.take())
            .collect();
        for tree in &trees {
            signal(tree, Signal::SIGTERM);
        }
        for tree in trees {
            reap(tree, Duration::from_secs(20));
        }
        for host in &mut self.hosts {
            if let Some(cantal) = host.cantal.take() {
                signal(&cantal, Signal::SIGTERM);
                reap(cantal, Duration::from_secs(5));
            }
        }
        // A tree that was SIGKILLed leaves its knots and containers: kill whatever is left.
        // With the separator: another temp dir may start with this one's name.
        let root = format!("{}/", self.dir.path().display());
        kill_processes_naming(&root);
        let mut left = Vec::new();
        for host in &self.hosts {
            let name = host.layout.cgroup_name();
            if let Err(e) = remove_cgroups(&name) {
                left.push(e);
            }
            let _ = Command::new("ip").args(["netns", "del", &host.ns]).status();
            let _ = Command::new("ip")
                .args(["link", "del", &host.veth])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.client_ns])
            .status();
        for link in [&self.client_veth, &self.bridge, &self.split_bridge] {
            let _ = Command::new("ip")
                .args(["link", "del", link])
                .stderr(Stdio::null())
                .status();
        }
        left.extend(
            processes_naming(&root)
                .into_iter()
                .map(|(pid, cmdline)| format!("process {pid}: {cmdline}")),
        );
        for host in &self.hosts {
            if !host.demo_pids().is_empty() {
                left.push(format!("demo-web of {}", host.name));
            }
            if Path::new("/run/netns").join(&host.ns).exists() {
                left.push(format!("namespace {}", host.ns));
            }
        }
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        left.extend(
            mounts
                .lines()
                .filter(|line| line.contains(&root))
                .map(|line| format!("mount {line}")),
        );
        left
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let left = self.teardown();
        if !left.is_empty() {
            eprintln!("cluster teardown left: {left:?}");
        }
    }
}

/// Writes host's configs: the demo files with its state dir, address and machine file,
/// and its sandbox's image-dir pointed at the shared images.
fn configure(host: &Host, bin_dir: &Path, images: &Path) {
    let layout = &host.layout;
    layout
        .write_configs(&host.ip, bin_dir)
        .expect("write the host's configs");
    let sandbox = layout.root.join("lithos/sandboxes/demo.yaml");
    let text = fs::read_to_string(&sandbox).expect("read sandbox");
    let own = format!("image-dir: {}", path(&layout.images()));
    assert!(text.contains(&own), "{}: no `{own}`", sandbox.display());
    let shared = text.replace(&own, &format!("image-dir: {}", path(images)));
    fs::write(&sandbox, shared).expect("write sandbox");
    fs::write(layout.verwalter_token(), TOKEN).expect("write token");
}

fn path(path: &Path) -> String {
    path.to_str().expect("UTF-8 temp paths").to_owned()
}

/// Every process whose command line names `needle`, with that command line.
fn processes_naming(needle: &str) -> Vec<(i32, String)> {
    procfs::process::all_processes()
        .expect("read /proc")
        .filter_map(|process| {
            let process = process.ok()?;
            let cmdline = process.cmdline().ok()?.join(" ");
            cmdline.contains(needle).then_some((process.pid, cmdline))
        })
        .collect()
}

fn kill_processes_naming(needle: &str) {
    for (pid, _) in processes_naming(needle) {
        let _ = send(pid, Signal::SIGKILL);
    }
}

/// SIGKILLs what is left in lithos' cgroups `name` (knots and containers of a tree that
/// died), then removes the cgroups; retried for a few seconds while the processes go.
fn remove_cgroups(name: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tops = stack::cgroups::existing(name).map_err(|e| e.to_string())?;
        for top in &tops {
            for pid in pids_below(top) {
                let _ = send(pid, Signal::SIGKILL);
            }
        }
        match stack::cgroups::remove(name) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e.to_string()),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn pids_below(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            pids.extend(pids_below(&entry.path()));
        }
    }
    pids
}
