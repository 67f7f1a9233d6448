//! Helpers for tests that run the real `verwalter` and `verwalter_render` binaries.

#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const TOKEN: &str = "test-token-0123456789";

pub fn verwalter_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_verwalter"))
}

pub fn render_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_verwalter_render"))
}

pub fn is_root() -> bool {
    isolation::user::effective_uid() == 0
}

/// Runs a setup command (`ip ...`) that must succeed.
pub fn run(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{args:?} failed");
}

/// The workspace's `cantal-agent`, beside this test's directory of binaries.
pub fn cantal_agent() -> PathBuf {
    // target/debug/deps/TEST-HASH -> target/debug/cantal-agent
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("cantal-agent");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p cantal` (tests/run.sh builds the workspace first)",
        path.display()
    );
    path
}

/// Writes `files` (relative path → content) below `root`.
pub fn write_tree(root: &Path, files: &[(&str, &str)]) {
    for (path, content) in files {
        let path = root.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }
}

/// A test scheduler: role `web` on every live host, `n` instances (action `set_servers`),
/// a counter bumped once per action, and the largest number of parents ever seen.
pub const SCHEDULER: &str = r#"
local function scheduler(input)
  local state = {counter = 0, max_parents = #input.parents}
  for _, parent in ipairs(input.parents) do
    local vars = parent.vars or {}
    state.n = state.n or vars.n
    state.counter = math.max(state.counter, vars.counter or 0)
    state.max_parents = math.max(state.max_parents, vars.max_parents or 0)
  end
  state.n = state.n or 2
  local ids = {}
  for id in pairs(input.actions) do ids[#ids + 1] = id end
  table.sort(ids)
  local replies = {}
  for _, id in ipairs(ids) do
    local action = input.actions[id]
    state.counter = state.counter + 1
    if action.button == "set_servers" then
      state.n = action.n
      replies[id] = {ok = true, n = action.n}
    end
  end
  local nodes = {}
  for _, peer in pairs(input.peers) do
    if peer.state ~= "dead" then
      nodes[peer.hostname] = {roles = {web = {}}}
    end
  end
  return {
    vars = {n = state.n, counter = state.counter, max_parents = state.max_parents},
    roles = {web = {template = "web/v1"}},
    nodes = nodes,
  }, "placed web", replies
end
return {scheduler = scheduler}
"#;

/// A config dir whose role `web` renders `web.conf` (and `extra.conf`) into `out`, with a
/// `!Condition` that appends to `reloads` when `out` changed.
pub fn write_config(config: &Path, out: &Path) {
    let render = format!(
        r#"templates:
  conf: web.conf.hbs
  extra: extra.conf.hbs
commands:
- !Copy {{src: "{{{{ files.conf }}}}", dest: "{out}/web.conf"}}
- !Copy {{src: "{{{{ files.extra }}}}", dest: "{out}/extra.conf"}}
- !Condition
  dirs-changed: ["{out}"]
  commands:
  - !Sh "echo reload >> {out}/../reloads"
"#,
        out = out.display()
    );
    write_tree(
        config,
        &[
            ("scheduler/v1/main.lua", SCHEDULER),
            ("templates/web/v1/web.render.yaml", &render),
            (
                "templates/web/v1/web.conf.hbs",
                "n={{n}} node={{node}} counter={{counter}}\n",
            ),
            ("templates/web/v1/extra.conf.hbs", "role={{role}}\n"),
            ("runtime/web/v1/release.yaml", "image: web.v1\n"),
            ("machine/host.yaml", "rack: r1\n"),
        ],
    );
}

/// A free TCP port on loopback (the same number is then used for UDP).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A running verwalter; killed on drop.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

impl Daemon {
    /// Starts verwalter with every directory below `dir`, plus `extra` arguments.
    pub fn start(
        dir: &Path,
        host: &str,
        port: u16,
        hostname: &str,
        id: &str,
        extra: &[&str],
    ) -> Self {
        Self::start_with(None, dir, host, port, hostname, id, extra)
    }

    /// The same, run through `prefix` (e.g. `ip netns exec NS`).
    pub fn start_with(
        prefix: Option<&[&str]>,
        dir: &Path,
        host: &str,
        port: u16,
        hostname: &str,
        id: &str,
        extra: &[&str],
    ) -> Self {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("token"), TOKEN).unwrap();
        let mut args: Vec<String> = vec![
            "--config-dir".into(),
            dir.join("config").display().to_string(),
            "--storage-dir".into(),
            dir.join("storage").display().to_string(),
            "--log-dir".into(),
            dir.join("log").display().to_string(),
            "--socket".into(),
            dir.join("run/control.sock").display().to_string(),
            "--api-token-file".into(),
            dir.join("token").display().to_string(),
            "--host".into(),
            host.into(),
            "--port".into(),
            port.to_string(),
            "--hostname".into(),
            hostname.into(),
            "--override-machine-id".into(),
            id.into(),
            "--log-format".into(),
            "text".into(),
        ];
        if !extra.contains(&"--cantal-socket") {
            args.push("--cantal-socket".into());
            args.push(dir.join("no-cantal.sock").display().to_string());
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut command = match prefix {
            Some(prefix) => {
                let mut command = Command::new(prefix[0]);
                command.args(&prefix[1..]).arg(verwalter_bin());
                command
            }
            None => Command::new(verwalter_bin()),
        };
        let log = fs::File::create(dir.join("daemon.log")).unwrap();
        let child = command
            .args(&args)
            .env("RUST_LOG", "info,verwalter=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self {
            child,
            addr: format!("{host}:{port}").parse().unwrap(),
            dir: dir.to_owned(),
        }
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        request(self.addr, "GET", path, &[], "")
    }

    pub fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// POST with the token and JSON content type.
    pub fn post(&self, path: &str, body: &str) -> (u16, String) {
        request(
            self.addr,
            "POST",
            path,
            &[
                ("Authorization", &format!("Bearer {TOKEN}")),
                ("Content-Type", "application/json"),
            ],
            body,
        )
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One HTTP/1.1 request (Connection: close); status 0 when nothing answers.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, String::new());
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(40)))
        .unwrap();
    let mut text = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(body);
    if stream.write_all(text.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut response = Vec::new();
    if stream.read_to_end(&mut response).is_err() && response.is_empty() {
        return (0, String::new());
    }
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `check` every 50 ms until it returns Some, or panics after `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The index lines of a log dir, as JSON.
pub fn index_lines(log_dir: &Path) -> Vec<Value> {
    let mut lines = Vec::new();
    let Ok(entries) = fs::read_dir(log_dir.join(".index")) else {
        return lines;
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    for path in paths {
        for line in fs::read_to_string(path).unwrap().lines() {
            lines.push(serde_json::from_str(line).unwrap());
        }
    }
    lines
}
