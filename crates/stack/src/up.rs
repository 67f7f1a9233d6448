//! `deploy-stack up`: the whole stack on this host until a signal.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::cgroups::{self, CgroupError};
use crate::daemons::{Daemon, DaemonError, Record};
use crate::images::{self, ImageError};
use crate::layout::{Layout, LayoutError};

/// How `up` runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Everything of this stack lives here (configs, images, state, sockets, logs).
    pub state_dir: PathBuf,
    /// The address the daemons and the demo listen on.
    pub host: String,
    pub cantal_port: u16,
    pub verwalter_port: u16,
    /// Where vagga, cantal-agent, lithos_tree (with its tools) and verwalter are.
    pub bin_dir: PathBuf,
    /// The demo-web binary put into the images.
    pub demo_binary: PathBuf,
    /// How long the scheduler may take to deploy the demo.
    pub deploy_timeout: Duration,
}

/// What `up` prints once the demo answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses {
    pub verwalter: String,
    pub cantal: String,
    pub app: String,
}

impl std::fmt::Display for Addresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "verwalter UI: {}", self.verwalter)?;
        writeln!(f, "cantal:       {}", self.cantal)?;
        write!(f, "demo app:     {}", self.app)
    }
}

/// Why the stack failed; the exit code of `deploy-stack` follows from the variant.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("deploy-stack up needs root (containers, cgroups)")]
    NotRoot,
    #[error("missing binary {path}: build the workspace first (cargo build --workspace)")]
    MissingBinary { path: PathBuf },
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error("{what} did not appear within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    #[error("{name} exited with {status}; its log is {log}")]
    DaemonDied {
        name: String,
        status: std::process::ExitStatus,
        log: PathBuf,
    },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("remove runtime dir {path}: {source}")]
    Cleanup {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl StackError {
    /// 1 the stack could not be set up, 3 it failed while running, 4 it could not clean up.
    pub fn exit_code(&self) -> i32 {
        match self {
            StackError::DaemonDied { .. } => 3,
            StackError::Cgroup(_) | StackError::Cleanup { .. } => 4,
            _ => 1,
        }
    }
}

/// The daemons in start order; stopped in reverse (verwalter, lithos, cantal).
#[derive(Debug)]
struct Running {
    daemons: Vec<(Daemon, Duration, PathBuf)>,
    record: Record,
}

impl Running {
    fn start(
        &mut self,
        name: &str,
        program: &Path,
        args: &[&OsStr],
        log: PathBuf,
        grace: Duration,
    ) -> Result<(), StackError> {
        let daemon = Daemon::start(name, program, args, &log)?;
        let recorded = self.record.add(&daemon);
        self.daemons.push((daemon, grace, log));
        recorded?;
        Ok(())
    }

    /// The first daemon that has ended, as an error.
    fn check(&mut self) -> Result<(), StackError> {
        for (daemon, _, log) in &mut self.daemons {
            if let Some(status) = daemon.exited()? {
                return Err(StackError::DaemonDied {
                    name: daemon.name.clone(),
                    status,
                    log: log.clone(),
                });
            }
        }
        Ok(())
    }

    fn stop(&mut self) -> Result<(), StackError> {
        let mut first_error = None;
        while let Some((daemon, grace, _)) = self.daemons.pop() {
            if let Err(e) = daemon.stop(grace) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), |e| Err(e.into()))
    }
}

/// Builds, starts and waits as described in the crate docs; calls `on_ready` once the demo
/// answers, then runs until `stop` is set (SIGINT/SIGTERM) or a daemon dies, and stops
/// everything in order, removing this stack's cgroups and runtime dir.
pub fn up(
    options: &Options,
    stop: &AtomicBool,
    on_ready: impl FnOnce(&Addresses),
) -> Result<(), StackError> {
    if isolation::user::effective_uid() != 0 {
        return Err(StackError::NotRoot);
    }
    let bin = |name: &str| -> Result<PathBuf, StackError> {
        let path = options.bin_dir.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(StackError::MissingBinary { path })
        }
    };
    let vagga = bin("vagga")?;
    let cantal_agent = bin("cantal-agent")?;
    let lithos_tree = bin("lithos_tree")?;
    for tool in ["lithos_knot", "lithos_switch", "verwalter_render"] {
        bin(tool)?;
    }
    let verwalter = bin("verwalter")?;
    if !options.demo_binary.is_file() {
        return Err(StackError::MissingBinary {
            path: options.demo_binary.clone(),
        });
    }

    let layout = Layout::create(&options.state_dir)?;
    let record = Record {
        path: layout.run().join("daemons"),
    };
    // lithos_tree needs the longest grace: its containers get their kill-timeout.
    let stale = record.stop_stale(&layout.root.to_string_lossy(), Duration::from_secs(30))?;
    if !stale.is_empty() {
        clean(&layout)?;
    }
    layout.write_configs(&options.host, &options.bin_dir)?;
    tracing::info!(state_dir = %layout.root.display(), "building the demo images with vagga");
    images::stage_rootfs(&layout.project(), &options.demo_binary)?;
    images::build_and_install(&vagga, &layout.project(), &layout.images())?;
    if stop.load(Ordering::SeqCst) {
        return Ok(());
    }

    let mut running = Running {
        daemons: Vec::new(),
        record,
    };
    let result = start_and_serve(
        options,
        &layout,
        stop,
        on_ready,
        &mut running,
        Daemons {
            cantal_agent: &cantal_agent,
            lithos_tree: &lithos_tree,
            verwalter: &verwalter,
        },
    );
    let stopped = running.stop();
    let cleaned = clean(&layout);
    result.and(stopped).and(cleaned)
}

struct Daemons<'a> {
    cantal_agent: &'a Path,
    lithos_tree: &'a Path,
    verwalter: &'a Path,
}

fn start_and_serve(
    options: &Options,
    layout: &Layout,
    stop: &AtomicBool,
    on_ready: impl FnOnce(&Addresses),
    running: &mut Running,
    daemons: Daemons<'_>,
) -> Result<(), StackError> {
    let host = &options.host;
    let log = layout.log();
    let cantal_port = options.cantal_port.to_string();
    let verwalter_port = options.verwalter_port.to_string();
    let cantal_socket = layout.cantal_socket();
    running.start(
        "cantal-agent",
        daemons.cantal_agent,
        &[
            "--host".as_ref(),
            host.as_ref(),
            "--port".as_ref(),
            cantal_port.as_ref(),
            "--storage-dir".as_ref(),
            layout.cantal_storage().as_os_str(),
            "--socket".as_ref(),
            cantal_socket.as_os_str(),
            "--log-format".as_ref(),
            "json".as_ref(),
        ],
        log.join("cantal-agent.log"),
        Duration::from_secs(10),
    )?;
    wait_for(
        running,
        stop,
        "cantal's socket",
        Duration::from_secs(20),
        || cantal_socket.exists(),
    )?;

    let lithos_socket = layout.lithos_runtime().join("control.sock");
    running.start(
        "lithos_tree",
        daemons.lithos_tree,
        &[
            "-C".as_ref(),
            layout.lithos_master().as_os_str(),
            "--log-stderr".as_ref(),
        ],
        log.join("lithos_tree.log"),
        // Every container gets its kill-timeout (5 s) after the tree's SIGTERM.
        Duration::from_secs(30),
    )?;
    wait_for(
        running,
        stop,
        "lithos' control socket",
        Duration::from_secs(20),
        || lithos_socket.exists(),
    )?;

    running.start(
        "verwalter",
        daemons.verwalter,
        &[
            "--config-dir".as_ref(),
            layout.verwalter_config().as_os_str(),
            "--storage-dir".as_ref(),
            layout.verwalter_storage().as_os_str(),
            "--log-dir".as_ref(),
            log.join("verwalter").as_os_str(),
            "--host".as_ref(),
            host.as_ref(),
            "--port".as_ref(),
            verwalter_port.as_ref(),
            "--cantal-socket".as_ref(),
            cantal_socket.as_os_str(),
            "--socket".as_ref(),
            layout.verwalter_socket().as_os_str(),
            "--api-token-file".as_ref(),
            layout.verwalter_token().as_os_str(),
            "--log-format".as_ref(),
            "json".as_ref(),
        ],
        log.join("verwalter.log"),
        Duration::from_secs(10),
    )?;

    let http = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(2))
        .build();
    let verwalter_url = format!("http://{host}:{}/", options.verwalter_port);
    let mut port = None;
    let mut rendered = false;
    let waiting_for = format!(
        "the demo (deployed by verwalter's scheduler; its deployment log is {})",
        log.join("verwalter/demo/latest").display()
    );
    wait_for(running, stop, &waiting_for, options.deploy_timeout, || {
        // lithos may already run the demo from the last run's processes file: ready
        // means verwalter leads (this host, alone) with no failed role as well.
        let Some(status) = get_json(&http, &format!("{verwalter_url}v1/status")) else {
            return false;
        };
        let leading = !status["leader"].is_null();
        let failed = status["failed_roles"]
            .as_array()
            .is_none_or(|roles| !roles.is_empty());
        if !leading {
            return false;
        }
        if port.is_none() {
            port = scheduled_port(&http, &verwalter_url);
        }
        let Some(port) = port else {
            return false;
        };
        // A restarted verwalter keeps the schedule it stored and publishes nothing new
        // while the scheduler's result is unchanged, so it would not render this run's
        // machine/demo.yaml (another --host, say) or retry a role that failed last
        // time: ask for one render of everything.
        if !rendered {
            rendered = force_render_all(&http, &verwalter_url, &layout.verwalter_token());
        }
        rendered
            && !failed
            && http
                .get(&format!("http://{host}:{port}/"))
                .call()
                .ok()
                .and_then(|r| r.into_string().ok())
                .is_some_and(|body| body.starts_with("demo-web "))
    })?;
    if stop.load(Ordering::SeqCst) {
        return Ok(());
    }
    let port = port.expect("the demo answered on the scheduled port");
    on_ready(&Addresses {
        verwalter: verwalter_url,
        cantal: format!("http://{host}:{}/", options.cantal_port),
        app: format!("http://{host}:{port}/"),
    });
    while !stop.load(Ordering::SeqCst) {
        running.check()?;
        std::thread::sleep(Duration::from_millis(200));
    }
    tracing::info!("stopping verwalter, lithos (with the containers) and cantal");
    Ok(())
}

fn get_json(http: &ureq::Agent, url: &str) -> Option<serde_json::Value> {
    let body = http.get(url).call().ok()?.into_string().ok()?;
    serde_json::from_str(&body).ok()
}

/// The demo's port from the schedule in force (`vars.port`), once there is one.
fn scheduled_port(http: &ureq::Agent, verwalter_url: &str) -> Option<u16> {
    let schedule = get_json(http, &format!("{verwalter_url}v1/schedule"))?;
    let port = schedule.pointer("/data/vars/port")?.as_u64()?;
    u16::try_from(port).ok()
}

/// `POST /v1/force_render_all` with the API token; whether verwalter accepted it.
fn force_render_all(http: &ureq::Agent, verwalter_url: &str, token_file: &Path) -> bool {
    let Ok(token) = std::fs::read_to_string(token_file) else {
        return false;
    };
    http.post(&format!("{verwalter_url}v1/force_render_all"))
        .set("Authorization", &format!("Bearer {}", token.trim()))
        .set("Content-Type", "application/json")
        .send_string("{}")
        .is_ok()
}

/// Polls `ready` every 200 ms until it holds, `stop` is set (Ok: the caller checks `stop`),
/// a daemon dies or `timeout` passes.
fn wait_for(
    running: &mut Running,
    stop: &AtomicBool,
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), StackError> {
    let deadline = Instant::now() + timeout;
    loop {
        if stop.load(Ordering::SeqCst) || ready() {
            return Ok(());
        }
        running.check()?;
        if Instant::now() >= deadline {
            return Err(StackError::Timeout {
                what: what.to_string(),
                timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// After the daemons are gone: this stack's cgroups and the private runtime dir.
fn clean(layout: &Layout) -> Result<(), StackError> {
    cgroups::remove(&layout.cgroup_name())?;
    let run = layout.run();
    if run.exists() {
        std::fs::remove_dir_all(&run)
            .map_err(|source| StackError::Cleanup { path: run, source })?;
    }
    Ok(())
}
