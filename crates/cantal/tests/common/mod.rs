//! Helpers for tests that run the real `cantal-agent`.

#![allow(dead_code)] // each test binary uses its own subset

use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cantal::client::HttpClient;
use serde_json::Value as Json;

pub const AGENT: &str = env!("CARGO_BIN_EXE_cantal-agent");
pub const CLI: &str = env!("CARGO_BIN_EXE_cantal");

/// Whether the test runs as root; root-only tests print why they skip.
pub fn is_root() -> bool {
    isolation::user::effective_uid() == 0
}

/// A loopback port free for both TCP and UDP right now.
pub fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A running agent, killed when dropped.
pub struct Agent {
    pub child: Child,
    pub url: String,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Agent {
    /// Starts `cantal-agent` on 127.0.0.1 with `extra` arguments and its own socket; the
    /// machine id derives from the port unless `extra` gives one.
    pub fn start_local(extra: &[&str]) -> Self {
        Self::start_on(free_port(), extra, &[])
    }

    /// [`Agent::start_local`] on a given port, with `env` added to the agent's environment.
    pub fn start_on(port: u16, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let mut command = Command::new(AGENT);
        if !extra.contains(&"--override-machine-id") {
            let id = format!("{:032x}", u128::from(port) + 0xabc0_0000);
            command.args(["--override-machine-id", &id]);
        }
        let child = command
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--socket")
            .arg(&socket)
            .args(["--log-format", "json"])
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("agent.log")).unwrap(),
            ))
            .spawn()
            .unwrap();
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            socket,
            dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Sends SIGTERM and returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let pid = i32::try_from(self.child.id()).unwrap();
        isolation::signal::send(pid, isolation::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn get(url: &str) -> (u16, String) {
    match HttpClient::new().get(url, Duration::from_secs(5)).await {
        Ok((status, body)) => (status.as_u16(), String::from_utf8_lossy(&body).into_owned()),
        Err(e) => (0, e.to_string()),
    }
}

pub async fn get_json(url: &str) -> Json {
    let (status, body) = get(url).await;
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"))
}

pub async fn post(url: &str, body: &str) -> (u16, String) {
    match HttpClient::new()
        .post(
            url,
            "application/json",
            body.to_owned(),
            Duration::from_secs(5),
        )
        .await
    {
        Ok((status, body)) => (status.as_u16(), String::from_utf8_lossy(&body).into_owned()),
        Err(e) => (0, e.to_string()),
    }
}

/// Polls `check` every 200 ms until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Waits until the agent answers `/healthz`.
pub async fn wait_ready(agent: &Agent) {
    let url = format!("{}/healthz", agent.url);
    let ready = eventually(Duration::from_secs(20), || async {
        get(&url).await.0 == 200
    })
    .await;
    assert!(ready, "agent did not become ready; log:\n{}", agent.log());
}

/// GET with an `Accept` header (plain HTTP/1.0 over a socket); the body.
pub async fn get_with_accept(url: &str, accept: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: {accept}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}
