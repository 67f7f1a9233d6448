//! The supervisor: desired state from the configs, one knot per instance, restarts with
//! backoff, reloads that keep unchanged instances, re-exec on SIGQUIT and adoption of the
//! knots a previous tree left running.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use isolation::{Hierarchies, Signal};
use protocol::pb::lithos as pb;
use tokio::net::UnixDatagram;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backoff::{Backoff, Decision};
use crate::cgroups;
use crate::config::{EntryKind, Master};
use crate::control::{Call, ControlService, TreeEvent, config_error};
use crate::instance::{self, EntryPlan, InstanceConfig, Sandbox};
use crate::metrics::Metrics;
use crate::sockets::{self, Sockets};
use crate::state::{self, ExitRecord, KnotRecord, Notice, NoticeEvent, ProcessExit};
use crate::watcher::{KnotGone, Watcher};
use crate::yaml::ConfigError;

/// Why the tree could not start.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("lithos_tree already running as pid {0}")]
    AlreadyRunning(i32),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("control socket: {0}")]
    Control(#[from] protocol::unix::SocketError),
    #[error("signal handlers: {0}")]
    Signals(std::io::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TreeError + '_ {
    move |source| TreeError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Where an instance is in its life.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// A knot runs (starting or running its container).
    Knot,
    /// Waiting until the instant for the next start.
    Backoff(Instant),
    /// Not started: its config cannot run (reason in the log and events).
    FailedSetup(String),
    GaveUp,
}

#[derive(Debug)]
struct KnotHandle {
    pid: u32,
    pidfd: Arc<OwnedFd>,
    config: Option<InstanceConfig>,
    /// Our child (reaped with waitid) or adopted from a dead tree (exit-status file).
    child: bool,
    term_sent: bool,
    started: Instant,
    container_pid: Option<u32>,
    running_since: Option<Instant>,
    /// The knot reported its process's end itself (restart-process-only) and the tree counted
    /// it; the knot's own end is then not a second end of that process.
    exit_counted: bool,
}

#[derive(Debug)]
struct Inst {
    sandbox: String,
    entry: String,
    desired: Option<InstanceConfig>,
    knot: Option<KnotHandle>,
    phase: Phase,
    backoff: Backoff,
    restarts: u64,
    ever_started: bool,
    last_exit: Option<ProcessExit>,
}

#[derive(Debug, Default)]
struct SandboxState {
    sandbox: Option<Sandbox>,
    entries: BTreeMap<String, EntryPlan>,
    /// Entries that never had a good config: instances wanted, reason.
    failed: BTreeMap<String, (u32, String, String)>,
    errors: Vec<ConfigError>,
}

/// What should run: instance name to (sandbox, entry, config or the reason it cannot run).
type Desired = BTreeMap<String, (String, String, Result<InstanceConfig, String>)>;

/// The supervisor's state; driven by [`Tree::run`].
pub struct Tree {
    master: Master,
    knot_exe: PathBuf,
    args: Vec<std::ffi::OsString>,
    exe: PathBuf,
    hier: Option<Hierarchies>,
    sandboxes: BTreeMap<String, SandboxState>,
    instances: BTreeMap<String, Inst>,
    sockets: Sockets,
    events: broadcast::Sender<pb::Event>,
    watcher: Watcher,
    gone_rx: Option<mpsc::UnboundedReceiver<KnotGone>>,
    metrics: Metrics,
    stopping: bool,
    term: Option<String>,
}

impl std::fmt::Debug for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tree")
            .field("master", &self.master.path)
            .finish_non_exhaustive()
    }
}

fn pid_alive(pid: i32) -> bool {
    isolation::signal::is_alive(pid)
}

fn process_name(pid: i32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let argv0 = cmdline.split(|b| *b == 0).next()?;
    Some(
        Path::new(std::ffi::OsStr::from_bytes(argv0))
            .file_name()?
            .to_string_lossy()
            .into_owned(),
    )
}

/// Refuses to start when master.pid names another live tree; then claims it. Returns
/// whether it already named this process (a re-exec).
pub fn claim_pid_file(master: &Master) -> Result<bool, TreeError> {
    let path = master.pid_file();
    std::fs::create_dir_all(&master.runtime_dir).map_err(io_err(&master.runtime_dir))?;
    let me = std::process::id() as i32;
    let previous = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok());
    if let Some(pid) = previous
        && pid != me
        && pid_alive(pid)
        && process_name(pid).is_some_and(|n| n.starts_with("lithos_tree"))
    {
        return Err(TreeError::AlreadyRunning(pid));
    }
    state::write_atomic(&path, format!("{me}\n").as_bytes()).map_err(io_err(&path))?;
    Ok(previous == Some(me))
}

/// A knot found in /proc: its pid, name, parent and config (when readable).
#[derive(Debug)]
pub struct FoundKnot {
    pub pid: i32,
    pub ppid: i32,
    pub name: String,
    pub config: Option<InstanceConfig>,
}

/// Knots of the tree whose master.yaml is `master` (by their command lines).
pub fn find_knots(master: &Path) -> Vec<FoundKnot> {
    let mut found = Vec::new();
    let Ok(all) = procfs::process::all_processes() else {
        return found;
    };
    // A container's init is a copy of its knot (same command line) in a new pid namespace.
    let my_pidns = std::fs::read_link("/proc/self/ns/pid").ok();
    for p in all.flatten() {
        let Ok(cmdline) = p.cmdline() else { continue };
        if std::fs::read_link(format!("/proc/{}/ns/pid", p.pid)).ok() != my_pidns {
            continue;
        }
        let Some(argv0) = cmdline.first() else {
            continue;
        };
        if Path::new(argv0).file_name().and_then(|n| n.to_str()) != Some("lithos_knot") {
            continue;
        }
        let arg = |flag: &str| {
            cmdline
                .iter()
                .position(|a| a == flag)
                .and_then(|i| cmdline.get(i + 1))
                .cloned()
        };
        if arg("--master").as_deref().map(Path::new) != Some(master) {
            continue;
        }
        let Some(name) = arg("--name") else { continue };
        let config = arg("--config").and_then(|c| serde_json::from_str(&c).ok());
        let ppid = p.stat().map(|s| s.ppid).unwrap_or(0);
        found.push(FoundKnot {
            pid: p.pid,
            ppid,
            name,
            config,
        });
    }
    found
}

impl Tree {
    pub fn new(
        master: Master,
        exe: PathBuf,
        args: Vec<std::ffi::OsString>,
    ) -> Result<Tree, TreeError> {
        let knot_exe = exe.with_file_name("lithos_knot");
        let hier = master.cgroup_name.as_ref().and_then(|_| {
            cgroups::hierarchies(master.cgroup_version)
                .map_err(|e| warn!("cgroups: {e}"))
                .ok()
        });
        let (events, _) = broadcast::channel(1024);
        let (gone_tx, gone_rx) = mpsc::unbounded_channel();
        let watcher = Watcher::start(gone_tx).map_err(|e| TreeError::Io {
            path: "knot watcher".into(),
            source: e,
        })?;
        let metrics = Metrics::new(
            &std::env::var_os("CANTAL_PATH")
                .map(PathBuf::from)
                .unwrap_or_else(|| master.metrics_path()),
        );
        Ok(Tree {
            knot_exe,
            args,
            exe,
            hier,
            sandboxes: BTreeMap::new(),
            instances: BTreeMap::new(),
            sockets: Sockets::default(),
            events,
            watcher,
            gone_rx: Some(gone_rx),
            metrics,
            stopping: false,
            term: std::env::var("TERM").ok(),
            master,
        })
    }

    fn emit(&self, event: TreeEvent) {
        let _ = self.events.send(event.to_pb());
    }

    // ---- configuration ----------------------------------------------------------------

    /// Re-reads sandboxes (all, or one); a sandbox that fails keeps its last good config.
    fn reload(&mut self, only: Option<&str>) -> pb::ReloadResponse {
        let mut names: Vec<String> = match self.master.sandbox_names() {
            Ok(n) => n,
            Err(e) => {
                error!("read {}: {e}", self.master.sandboxes_dir.display());
                self.sandboxes.keys().cloned().collect()
            }
        };
        for known in self.sandboxes.keys() {
            if !names.contains(known) {
                names.push(known.clone());
            }
        }
        let mut response = pb::ReloadResponse::default();
        for name in names {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            match self.load_sandbox(&name) {
                Ok(errors) => {
                    response.applied.push(name.clone());
                    self.emit(TreeEvent::ConfigApplied {
                        sandbox: name.clone(),
                    });
                    if !errors.is_empty() {
                        response.rejected.push(pb::RejectedSandbox {
                            sandbox: name.clone(),
                            errors: errors.iter().map(config_error).collect(),
                        });
                    }
                }
                Err(errors) => {
                    response.rejected.push(pb::RejectedSandbox {
                        sandbox: name.clone(),
                        errors: errors.iter().map(config_error).collect(),
                    });
                }
            }
        }
        self.sandboxes
            .retain(|_, s| s.sandbox.is_some() || !s.errors.is_empty());
        self.metrics.incr("master", "restarts");
        self.sync();
        response
    }

    /// Loads one sandbox. `Ok(entry errors)` when its files applied, `Err` when it keeps its
    /// last good config.
    fn load_sandbox(&mut self, name: &str) -> Result<Vec<ConfigError>, Vec<ConfigError>> {
        let path = self.master.sandbox_file(name);
        if !path.exists() {
            info!(
                sandbox = name,
                "sandbox config removed: stopping its instances"
            );
            self.sandboxes.remove(name);
            return Ok(Vec::new());
        }
        let loaded = Sandbox::load(&self.master, name).and_then(|sbx| {
            let resolved = instance::resolve_processes(
                &self.master,
                &sbx,
                &sbx.processes_path,
                self.term.clone(),
            )?;
            Ok((sbx, resolved))
        });
        let (sbx, resolved) = match loaded {
            Ok(v) => v,
            Err(e) => {
                error!(sandbox = name, "{e}; keeping the last good config");
                self.emit(TreeEvent::ConfigRejected {
                    sandbox: name.into(),
                    error: e.clone(),
                });
                let state = self.sandboxes.entry(name.to_owned()).or_default();
                state.errors = vec![e.clone()];
                return Err(vec![e]);
            }
        };
        for w in &resolved.warnings {
            warn!(sandbox = name, "{w} (applied the ceiling)");
        }
        let previous = self.sandboxes.remove(name).unwrap_or_default();
        let mut state = SandboxState {
            entries: resolved.entries,
            ..SandboxState::default()
        };
        for (entry, rejected) in resolved.rejected {
            for e in &rejected.errors {
                error!(sandbox = name, entry = %entry, "{e}");
                self.emit(TreeEvent::ConfigRejected {
                    sandbox: name.into(),
                    error: e.clone(),
                });
            }
            state.errors.extend(rejected.errors.iter().cloned());
            match previous.entries.get(&entry) {
                // Running containers are never touched by a rejected input.
                Some(old) => {
                    state.entries.insert(entry, old.clone());
                }
                None if rejected.kind == EntryKind::Daemon => {
                    let reason = rejected
                        .errors
                        .first()
                        .map(|e| e.to_string())
                        .unwrap_or_default();
                    state
                        .failed
                        .insert(entry, (rejected.instances, rejected.image, reason));
                }
                None => {}
            }
        }
        self.apply_slice(&sbx);
        self.log_config(&sbx, &state);
        let errors = state.errors.clone();
        state.sandbox = Some(sbx);
        self.sandboxes.insert(name.to_owned(), state);
        info!(sandbox = name, "config applied");
        Ok(errors)
    }

    /// Sets the sandbox totals on `<cgroup-name>/<sbx>.slice`.
    fn apply_slice(&self, sbx: &Sandbox) {
        let (Some(h), Some(slice)) = (&self.hier, sbx.slice(&self.master)) else {
            return;
        };
        let spec = cgroups::spec(
            h,
            &self.master.cgroup_controllers,
            &slice,
            &sbx.total_limits(),
        );
        if let Err(e) = spec.create() {
            error!(sandbox = %sbx.name, "sandbox limits: {e}");
        }
    }

    /// Appends the applied processes config to `config-log-dir` for lithos_clean.
    fn log_config(&self, sbx: &Sandbox, state: &SandboxState) {
        let Some(dir) = &self.master.config_log_dir else {
            return;
        };
        let entries: BTreeMap<&String, serde_json::Value> = state
            .entries
            .iter()
            .map(|(n, p)| {
                (
                    n,
                    serde_json::json!({"image": p.image, "instances": p.instances}),
                )
            })
            .collect();
        let line = serde_json::json!({
            "time_ms": state::now_ms(),
            "sandbox": sbx.name,
            "image_dir": sbx.file.image_dir,
            "entries": entries,
        });
        if let Err(e) = crate::clean::append_config_log(dir, &sbx.name, &line.to_string()) {
            warn!("config log in {}: {e}", dir.display());
        }
    }

    /// What should run now.
    fn desired(&self) -> Desired {
        let mut want = BTreeMap::new();
        for (sname, s) in &self.sandboxes {
            for (ename, plan) in &s.entries {
                if plan.kind != EntryKind::Daemon {
                    continue;
                }
                for n in 0..plan.instances {
                    let c = plan.instance(n);
                    want.insert(c.name.clone(), (sname.clone(), ename.clone(), Ok(c)));
                }
            }
            if s.sandbox.is_none() {
                // No good config since this tree started (a crash or re-exec with a broken
                // file): the configs recorded by the adopted knots are the last good ones.
                for (iname, inst) in self.instances.iter().filter(|(_, i)| i.sandbox == *sname) {
                    let config = inst
                        .knot
                        .as_ref()
                        .and_then(|k| k.config.clone())
                        .or_else(|| inst.desired.clone());
                    if let Some(c) = config {
                        want.insert(iname.clone(), (sname.clone(), inst.entry.clone(), Ok(c)));
                    }
                }
            }
            for (ename, (count, _, reason)) in &s.failed {
                for n in 0..*count {
                    want.insert(
                        format!("{sname}/{ename}.{n}"),
                        (sname.clone(), ename.clone(), Err(reason.clone())),
                    );
                }
            }
        }
        want
    }

    /// Makes the running state follow the desired one.
    fn sync(&mut self) {
        let want = self.desired();
        let now = Instant::now();
        let mut to_start = Vec::new();
        for (name, (sandbox, entry, config)) in &want {
            let inst = self.instances.entry(name.clone()).or_insert_with(|| Inst {
                sandbox: sandbox.clone(),
                entry: entry.clone(),
                desired: None,
                knot: None,
                phase: Phase::Backoff(now),
                backoff: Backoff::default(),
                restarts: 0,
                ever_started: false,
                last_exit: None,
            });
            match config {
                Ok(c) => {
                    let changed = inst.desired.as_ref() != Some(c);
                    inst.desired = Some(c.clone());
                    match &mut inst.knot {
                        Some(k) if k.config.as_ref() == Some(c) => {}
                        Some(k) => {
                            if !k.term_sent {
                                info!(instance = %name, "config changed: stopping the old instance");
                                signal_knot(k, Signal::SIGTERM);
                                k.term_sent = true;
                            }
                        }
                        None => {
                            let restart_now = match inst.phase {
                                Phase::GaveUp | Phase::FailedSetup(_) => true,
                                Phase::Backoff(at) => changed || at <= now,
                                Phase::Knot => true,
                            };
                            if changed {
                                inst.backoff = Backoff::default();
                            }
                            if restart_now {
                                to_start.push(name.clone());
                            }
                        }
                    }
                }
                Err(reason) => {
                    if inst.knot.is_none() {
                        inst.desired = None;
                        inst.phase = Phase::FailedSetup(reason.clone());
                    }
                }
            }
        }
        let retired: Vec<String> = self
            .instances
            .keys()
            .filter(|n| !want.contains_key(*n))
            .cloned()
            .collect();
        for name in retired {
            let inst = self.instances.get_mut(&name).expect("listed");
            inst.desired = None;
            match &mut inst.knot {
                Some(k) => {
                    if !k.term_sent {
                        info!(instance = %name, "removed from config: stopping it");
                        signal_knot(k, Signal::SIGTERM);
                        k.term_sent = true;
                    }
                }
                None => {
                    self.instances.remove(&name);
                }
            }
        }
        self.close_unused_sockets(&want);
        for name in to_start {
            self.start(&name);
        }
        self.update_gauges();
    }

    /// Closes the sockets no entry names and no knot still runs with; a socket stays while
    /// an entry names it, even when all its instances wait to restart.
    fn close_unused_sockets(&mut self, want: &Desired) {
        let keep: Vec<SocketAddr> = want
            .values()
            .filter_map(|(_, _, c)| c.as_ref().ok())
            .flat_map(|c| c.sockets.iter().map(|s| s.addr))
            .chain(
                self.instances
                    .values()
                    .filter_map(|i| i.knot.as_ref()?.config.as_ref())
                    .flat_map(|c| c.sockets.iter().map(|s| s.addr)),
            )
            .collect();
        self.sockets.retain(&keep);
    }

    // ---- knots ------------------------------------------------------------------------

    fn start(&mut self, name: &str) {
        if self.stopping {
            return;
        }
        let Some(inst) = self.instances.get(name) else {
            return;
        };
        let Some(config) = inst.desired.clone() else {
            return;
        };
        match self.spawn_knot(&config) {
            Ok((pid, pidfd)) => {
                let pidfd = Arc::new(pidfd);
                self.watch(name, pid, &pidfd);
                let inst = self.instances.get_mut(name).expect("checked");
                if inst.ever_started {
                    inst.restarts += 1;
                }
                inst.ever_started = true;
                inst.phase = Phase::Knot;
                inst.knot = Some(KnotHandle {
                    pid,
                    pidfd,
                    config: Some(config),
                    child: true,
                    term_sent: false,
                    started: Instant::now(),
                    container_pid: None,
                    running_since: None,
                    exit_counted: false,
                });
                let group = format!("processes.{}.{}", inst.sandbox, inst.entry);
                self.metrics.incr(&group, "started");
                self.metrics.incr("containers", "started");
            }
            Err(reason) => {
                error!(instance = %name, "cannot start: {reason}");
                let now = Instant::now();
                self.after_failure(name, now, now, true, false);
            }
        }
    }

    fn spawn_knot(&mut self, c: &InstanceConfig) -> Result<(u32, OwnedFd), String> {
        let mut sources: Vec<(RawFd, RawFd)> = Vec::new();
        for s in &c.sockets {
            let fd = self
                .sockets
                .ensure(s, c.user_id)
                .map_err(|e| e.to_string())?;
            sources.push((fd.as_raw_fd(), s.knot_fd));
        }
        // The tree keeps its sockets open across exec: the knot gets only its own.
        let close = self.sockets.raw_fds();
        let args = [
            self.knot_exe.clone().into_os_string(),
            "--name".into(),
            c.name.clone().into(),
            "--master".into(),
            self.master.path.clone().into_os_string(),
            "--config".into(),
            c.to_json().into(),
        ];
        let pid = isolation::spawn::group_leader(&self.knot_exe, &args, &sources, &close)
            .map_err(|e| e.to_string())?;
        // Not reaped until its pidfd is open, so the pid cannot be reused in between.
        let pidfd = isolation::pidfd::open(pid).map_err(|e| e.to_string())?;
        info!(instance = %c.name, knot = pid, "started knot");
        Ok((pid as u32, pidfd))
    }

    fn watch(&self, name: &str, pid: u32, pidfd: &OwnedFd) {
        match pidfd.try_clone() {
            Ok(copy) => self.watcher.watch(name, pid, copy),
            Err(e) => error!(instance = %name, "watch knot {pid}: {e}"),
        }
    }

    fn knot_ended(&mut self, gone: KnotGone) {
        let Some(inst) = self.instances.get_mut(&gone.name) else {
            return;
        };
        let Some(knot) = inst.knot.take_if(|k| k.pid == gone.pid) else {
            return;
        };
        let mut code = None;
        if knot.child {
            code = match isolation::wait::for_pidfd(knot.pidfd.as_fd()) {
                Ok(isolation::ExitStatus::Exited(c)) => Some(c),
                Ok(isolation::ExitStatus::Signaled(_)) => Some(state::code::FAILURE),
                Err(_) => None,
            };
        }
        let state_dir = knot.config.as_ref().map(|c| c.state_dir.clone());
        let record: Option<ExitRecord> = state_dir
            .as_ref()
            .and_then(|d| state::read_json(&d.join(state::EXIT_FILE)));
        let code = code
            .or(record.as_ref().map(|r| r.knot_code))
            .unwrap_or(state::code::FAILURE);
        let exit = record.as_ref().and_then(|r| r.exit);
        if let Some(reason) = record.as_ref().and_then(|r| r.reason.clone()) {
            warn!(instance = %gone.name, "knot exited with code {code}: {reason}");
        } else {
            info!(instance = %gone.name, "knot exited with code {code}");
        }
        if let Some(dir) = &state_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let (Some(h), Some(cg)) = (
            &self.hier,
            knot.config.as_ref().and_then(|c| c.cgroup.as_ref()),
        ) && let Err(e) = cgroups::remove(h, &cg.controllers, &cg.path)
        {
            warn!(instance = %gone.name, "remove cgroup: {e}");
        }
        let failed = code != state::code::NORMAL && !knot.term_sent;
        if !knot.exit_counted {
            let group = format!("processes.{}.{}", inst.sandbox, inst.entry);
            self.metrics.incr(&group, "deaths");
            self.metrics.incr("containers", "deaths");
            if failed {
                self.metrics.incr(&group, "failures");
                self.metrics.incr("containers", "failures");
            }
            let exit = exit.unwrap_or(ProcessExit {
                code: Some(code),
                signal: None,
                oom: false,
            });
            let inst = self.instances.get_mut(&gone.name).expect("present");
            inst.last_exit = Some(exit);
            self.emit(TreeEvent::Exited {
                instance: gone.name.clone(),
                exit,
            });
        }
        let inst = self.instances.get_mut(&gone.name).expect("present");
        let Some(desired) = inst.desired.clone() else {
            self.instances.remove(&gone.name);
            self.close_unused_sockets(&self.desired());
            self.update_gauges();
            return;
        };
        if knot.config.as_ref() != Some(&desired) {
            inst.backoff = Backoff::default();
            self.start(&gone.name);
        } else if knot.term_sent && self.stopping {
            // Stopping: nothing more to do.
        } else {
            let started = knot.running_since.unwrap_or(knot.started);
            let counted = knot.exit_counted;
            self.after_failure(&gone.name, started, Instant::now(), failed, counted);
        }
        self.update_gauges();
    }

    /// Schedules the next start after an end (failed or not) per the backoff policy;
    /// `counted` when the backoff already holds this end.
    fn after_failure(
        &mut self,
        name: &str,
        started: Instant,
        now: Instant,
        failed: bool,
        counted: bool,
    ) {
        let Some(inst) = self.instances.get_mut(name) else {
            return;
        };
        let Some(policy) = inst.desired.as_ref().map(|c| c.restart) else {
            return;
        };
        if !counted {
            inst.backoff.count(&policy, failed, started, now);
        }
        match inst.backoff.decide(&policy, failed, started, now) {
            Decision::Restart { at, delay } => {
                inst.phase = Phase::Backoff(at);
                let failures = inst.backoff.failures;
                if at <= now {
                    self.start(name);
                } else {
                    self.emit(TreeEvent::RestartScheduled {
                        instance: name.to_owned(),
                        delay_ms: delay.as_millis() as u64,
                        failures,
                    });
                }
            }
            Decision::GiveUp => {
                inst.phase = Phase::GaveUp;
                let failures = inst.backoff.failures;
                error!(instance = %name, "gave up after {failures} consecutive failures");
                self.emit(TreeEvent::GaveUp {
                    instance: name.to_owned(),
                    failures,
                });
            }
        }
    }

    fn notice(&mut self, notice: Notice) {
        let Some(inst) = self.instances.get_mut(&notice.instance) else {
            return;
        };
        let Some(knot) = inst.knot.as_mut().filter(|k| k.pid == notice.knot_pid) else {
            return;
        };
        match notice.event {
            NoticeEvent::Started { pid } => {
                // A knot that ran a process before respawns it (restart-process-only).
                if knot.running_since.is_some() {
                    inst.restarts += 1;
                }
                knot.container_pid = Some(pid);
                knot.running_since = Some(Instant::now());
                knot.exit_counted = false;
                self.emit(TreeEvent::Started {
                    instance: notice.instance,
                    pid,
                });
            }
            NoticeEvent::Exited { exit } => {
                // Only sent by a knot that respawns the process: it was not stopped by us.
                knot.container_pid = None;
                inst.last_exit = Some(exit);
                let normal = knot
                    .config
                    .as_ref()
                    .zip(exit.code)
                    .is_some_and(|(c, code)| c.normal_exit_codes.contains(&code));
                let group = format!("processes.{}.{}", inst.sandbox, inst.entry);
                self.metrics.incr(&group, "deaths");
                self.metrics.incr("containers", "deaths");
                if !normal {
                    self.metrics.incr(&group, "failures");
                    self.metrics.incr("containers", "failures");
                }
                // The knot schedules the respawn itself; the tree counts the end the same way
                // so Status shows the consecutive failures.
                if let Some(policy) = knot.config.as_ref().map(|c| c.restart) {
                    let started = knot.running_since.unwrap_or(knot.started);
                    inst.backoff
                        .count(&policy, !normal, started, Instant::now());
                }
                knot.exit_counted = true;
                self.emit(TreeEvent::Exited {
                    instance: notice.instance,
                    exit,
                });
            }
            NoticeEvent::SetupFailed { reason } => {
                warn!(instance = %notice.instance, "setup failed: {reason}");
            }
        }
        self.update_gauges();
    }

    fn handle_notice(&mut self, data: &[u8]) {
        match serde_json::from_slice::<Notice>(data) {
            Ok(notice) => self.notice(notice),
            Err(e) => warn!("bad notice from a knot: {e}"),
        }
    }

    fn due(&self) -> Option<Instant> {
        self.instances
            .values()
            .filter(|i| i.knot.is_none() && i.desired.is_some())
            .filter_map(|i| match i.phase {
                Phase::Backoff(at) => Some(at),
                _ => None,
            })
            .min()
    }

    fn start_due(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .instances
            .iter()
            .filter(|(_, i)| {
                i.knot.is_none()
                    && i.desired.is_some()
                    && matches!(i.phase, Phase::Backoff(at) if at <= now)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            self.start(&name);
        }
    }

    fn update_gauges(&mut self) {
        let mut running: BTreeMap<String, i64> = BTreeMap::new();
        for s in self.sandboxes.values() {
            for plan in s.entries.values() {
                running
                    .entry(format!("processes.{}.{}", plan.sandbox, plan.entry))
                    .or_default();
            }
        }
        let mut total = 0;
        let mut queue = 0;
        for i in self.instances.values() {
            if i.knot.as_ref().is_some_and(|k| k.container_pid.is_some()) {
                *running
                    .entry(format!("processes.{}.{}", i.sandbox, i.entry))
                    .or_default() += 1;
                total += 1;
            }
            if matches!(i.phase, Phase::Backoff(_)) && i.knot.is_none()
                || i.knot.as_ref().is_some_and(|k| k.term_sent)
            {
                queue += 1;
            }
        }
        for (group, n) in running {
            self.metrics.set(&group, "running", n);
        }
        self.metrics.set("containers", "running", total);
        self.metrics
            .set("master", "sandboxes", self.sandboxes.len() as i64);
        self.metrics
            .set("master", "containers", self.desired().len() as i64);
        self.metrics.set("master", "queue", queue);
        if let Err(e) = self.metrics.flush() {
            warn!("metrics: {e}");
        }
    }

    // ---- adoption -----------------------------------------------------------------------

    /// Takes over knots left by a previous tree (after exec or a crash): sockets first,
    /// then each knot as the instance it runs; `sync` replaces the changed ones.
    fn adopt(&mut self) {
        for (addr, fd) in sockets::recover_inherited() {
            info!("recovered listening socket {addr} (fd {})", fd.as_raw_fd());
            if let Err(e) = self.sockets.insert(addr, fd) {
                error!("{e}");
            }
        }
        let me = std::process::id() as i32;
        let want = self.desired();
        for found in find_knots(&self.master.path) {
            let Ok(pidfd) = isolation::pidfd::open(found.pid) else {
                continue;
            };
            let record: Option<KnotRecord> = found
                .config
                .as_ref()
                .and_then(|c| state::read_json(&c.state_dir.join(state::KNOT_FILE)));
            if let Some(rec) = &record {
                for s in &rec.sockets {
                    if !self.sockets.contains(&s.addr) {
                        let taken = isolation::pidfd::get_fd(pidfd.as_fd(), s.fd)
                            .map_err(|e| e.to_string())
                            .and_then(|fd| {
                                self.sockets.insert(s.addr, fd).map_err(|e| e.to_string())
                            });
                        if let Err(e) = taken {
                            warn!(knot = found.pid, "take socket {} back: {e}", s.addr);
                        }
                    }
                }
            }
            let duplicate = self
                .instances
                .get(&found.name)
                .is_some_and(|i| i.knot.is_some());
            if duplicate {
                warn!(instance = %found.name, knot = found.pid, "second knot for one instance: stopping it");
                let _ = isolation::pidfd::send_signal(pidfd.as_fd(), Signal::SIGTERM);
                continue;
            }
            let (sandbox, entry) = match want.get(&found.name) {
                Some((s, e, _)) => (s.clone(), e.clone()),
                None => {
                    let (s, rest) = found.name.split_once('/').unwrap_or(("", &found.name));
                    (
                        s.to_owned(),
                        rest.rsplit_once('.')
                            .map(|(e, _)| e)
                            .unwrap_or(rest)
                            .to_owned(),
                    )
                }
            };
            let pidfd = Arc::new(pidfd);
            let container_pid = record
                .as_ref()
                .map(|r| r.pid)
                .filter(|p| pid_alive(*p as i32));
            self.watch(&found.name, found.pid as u32, &pidfd);
            info!(instance = %found.name, knot = found.pid, "adopted knot");
            self.emit(TreeEvent::Adopted {
                instance: found.name.clone(),
                knot_pid: found.pid as u32,
            });
            self.instances.insert(
                found.name.clone(),
                Inst {
                    sandbox,
                    entry,
                    desired: None,
                    knot: Some(KnotHandle {
                        pid: found.pid as u32,
                        pidfd,
                        config: found.config,
                        child: found.ppid == me,
                        term_sent: false,
                        started: Instant::now(),
                        container_pid,
                        running_since: container_pid.map(|_| Instant::now()),
                        exit_counted: false,
                    }),
                    phase: Phase::Knot,
                    backoff: Backoff::default(),
                    restarts: record.map(|r| r.restarts).unwrap_or(0),
                    ever_started: true,
                    last_exit: None,
                },
            );
        }
        self.kill_strangers(me);
    }

    /// Children of this process that are no knot of ours: killed after 5 s (spec §2.7).
    fn kill_strangers(&mut self, me: i32) {
        let ours: Vec<u32> = self
            .instances
            .values()
            .filter_map(|i| i.knot.as_ref().map(|k| k.pid))
            .collect();
        let Ok(all) = procfs::process::all_processes() else {
            return;
        };
        let strangers: Vec<i32> = all
            .flatten()
            .filter(|p| p.stat().is_ok_and(|s| s.ppid == me))
            .map(|p| p.pid)
            .filter(|pid| !ours.contains(&(*pid as u32)))
            .collect();
        if strangers.is_empty() {
            return;
        }
        warn!(
            "{} unidentified children of the tree: killing them in 5 s",
            strangers.len()
        );
        self.metrics
            .set("containers", "unknown", strangers.len() as i64);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            for pid in strangers {
                warn!(pid, "killing an unidentified child");
                let _ = isolation::signal::send(pid, Signal::SIGKILL);
                let _ = tokio::task::spawn_blocking(move || isolation::wait::for_pid(pid)).await;
            }
        });
    }

    /// Removes state dirs and cgroups that no live knot owns.
    fn clean_dangling(&self) {
        let live: Vec<&String> = self
            .instances
            .iter()
            .filter(|(_, i)| i.knot.is_some())
            .map(|(n, _)| n)
            .collect();
        let is_live = |sandbox: &str, inst: &str| {
            let name = format!("{sandbox}/{inst}");
            if live.iter().any(|l| **l == name) {
                return true;
            }
            // Commands belong to the lithos_cmd process named in them.
            inst.strip_prefix("cmd.")
                .and_then(|r| r.rsplit_once('.'))
                .and_then(|(_, pid)| pid.parse::<i32>().ok())
                .is_some_and(pid_alive)
        };
        if let Ok(sandboxes) = std::fs::read_dir(&self.master.state_dir) {
            for sbx in sandboxes.flatten() {
                let sname = sbx.file_name().to_string_lossy().into_owned();
                for inst in std::fs::read_dir(sbx.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let iname = inst.file_name().to_string_lossy().into_owned();
                    if !is_live(&sname, &iname) {
                        info!("removing dangling state dir {}", inst.path().display());
                        let _ = std::fs::remove_dir_all(inst.path());
                    }
                }
            }
        }
        let (Some(h), Some(root)) = (&self.hier, &self.master.cgroup_name) else {
            return;
        };
        for slice in cgroups::children(h, Path::new(root)) {
            let Some(sname) = slice.strip_suffix(".slice") else {
                continue;
            };
            let slice_path = Path::new(root).join(&slice);
            for scope in cgroups::children(h, &slice_path) {
                let Some(flat) = scope.strip_suffix(".scope") else {
                    continue;
                };
                let inst = flat.split_once(':').map(|(_, i)| i).unwrap_or(flat);
                if !is_live(sname, inst) {
                    info!(
                        "removing dangling cgroup {}",
                        slice_path.join(&scope).display()
                    );
                    if let Err(e) = cgroups::remove(
                        h,
                        &self.master.cgroup_controllers,
                        &slice_path.join(&scope),
                    ) {
                        warn!("{e}");
                    }
                }
            }
        }
    }

    // ---- status -------------------------------------------------------------------------

    fn status(&self) -> pb::StatusResponse {
        let mut sandboxes = Vec::new();
        for (sname, s) in &self.sandboxes {
            let mut entries: BTreeMap<String, pb::Entry> = BTreeMap::new();
            for (ename, plan) in &s.entries {
                entries.insert(
                    ename.clone(),
                    pb::Entry {
                        name: ename.clone(),
                        instances_wanted: plan.instances,
                        image: plan.image.clone(),
                        instances: Vec::new(),
                    },
                );
            }
            for (ename, (count, image, _)) in &s.failed {
                entries.insert(
                    ename.clone(),
                    pb::Entry {
                        name: ename.clone(),
                        instances_wanted: *count,
                        image: image.clone(),
                        instances: Vec::new(),
                    },
                );
            }
            for (iname, inst) in self.instances.iter().filter(|(_, i)| i.sandbox == *sname) {
                let entry = entries
                    .entry(inst.entry.clone())
                    .or_insert_with(|| pb::Entry {
                        name: inst.entry.clone(),
                        instances_wanted: 0,
                        image: String::new(),
                        instances: Vec::new(),
                    });
                entry.instances.push(self.instance_status(iname, inst));
            }
            sandboxes.push(pb::Sandbox {
                name: sname.clone(),
                entries: entries.into_values().collect(),
                config_errors: s.errors.iter().map(config_error).collect(),
            });
        }
        pb::StatusResponse {
            pid: std::process::id(),
            config: self.master.path.display().to_string(),
            sandboxes,
        }
    }

    fn instance_status(&self, name: &str, inst: &Inst) -> pb::Instance {
        let now = Instant::now();
        let (state, next) = match (&inst.knot, &inst.phase) {
            (Some(k), _) if k.container_pid.is_some() => (pb::InstanceState::Running, None),
            (Some(_), _) => (pb::InstanceState::Starting, None),
            (None, Phase::Backoff(at)) => {
                let wall = std::time::SystemTime::now() + at.saturating_duration_since(now);
                let ms = wall
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                (pb::InstanceState::Backoff, Some(ms))
            }
            (None, Phase::FailedSetup(_)) => (pb::InstanceState::FailedSetup, None),
            (None, Phase::GaveUp) => (pb::InstanceState::GaveUp, None),
            (None, Phase::Knot) => (pb::InstanceState::Starting, None),
        };
        pb::Instance {
            name: name.to_owned(),
            knot_pid: inst.knot.as_ref().map(|k| k.pid),
            pid: inst.knot.as_ref().and_then(|k| k.container_pid),
            state: state.into(),
            uptime_ms: inst
                .knot
                .as_ref()
                .and_then(|k| k.running_since)
                .map(|t| now.saturating_duration_since(t).as_millis() as u64),
            restarts: inst.restarts,
            failures: inst.backoff.failures,
            next_start_ms: next,
            last_exit: inst.last_exit.as_ref().map(crate::control::exit),
        }
    }

    // ---- upgrade and stop ---------------------------------------------------------------

    /// Re-executes the tree binary with the same pid; refuses when master.yaml is broken.
    fn reexec(&mut self) {
        if let Err(e) = Master::load(&self.master.path) {
            error!("{e}; not re-executing");
            return;
        }
        if let Err(e) = self.metrics.flush() {
            warn!("metrics: {e}");
        }
        info!("re-executing {}", self.exe.display());
        // Blocked across exec: the new image unblocks them once its handlers are in place.
        let _ = isolation::signal::block(&UPGRADE_SIGNALS);
        let err = isolation::exec::replace(&self.exe, &self.args, std::env::vars_os());
        let _ = isolation::signal::unblock(&UPGRADE_SIGNALS);
        error!("{err}; keeping this tree");
    }

    fn begin_stop(&mut self) {
        if self.stopping {
            return;
        }
        info!("stopping every instance");
        self.stopping = true;
        for inst in self.instances.values_mut() {
            inst.desired = None;
            if let Some(k) = &mut inst.knot
                && !k.term_sent
            {
                signal_knot(k, Signal::SIGTERM);
                k.term_sent = true;
            }
        }
        self.instances.retain(|_, i| i.knot.is_some());
    }

    /// Runs the supervisor until SIGTERM/SIGINT has stopped every instance.
    pub async fn run(mut self) -> Result<(), TreeError> {
        let mut sig_term = signal(SignalKind::terminate()).map_err(TreeError::Signals)?;
        let mut sig_int = signal(SignalKind::interrupt()).map_err(TreeError::Signals)?;
        let mut sig_quit = signal(SignalKind::quit()).map_err(TreeError::Signals)?;
        let mut sig_hup = signal(SignalKind::hangup()).map_err(TreeError::Signals)?;
        let mut sig_usr1 = signal(SignalKind::user_defined1()).map_err(TreeError::Signals)?;
        let mut sig_usr2 = signal(SignalKind::user_defined2()).map_err(TreeError::Signals)?;
        // Handlers are in place: signals blocked across a re-exec may arrive now.
        let _ = isolation::signal::unblock(&UPGRADE_SIGNALS);

        let notify_path = self.master.notify_socket();
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).map_err(io_err(&notify_path))?;

        self.reload_quietly();
        self.adopt();
        self.sync();
        self.clean_dangling();
        // Installed once this image is up, so a crash while starting ends the tree (the
        // knots live on for the next one) instead of re-executing in a loop.
        if let Err(e) = isolation::reexec::reexec_on_fatal_signals(&self.exe, &self.args) {
            error!("re-exec on fatal signals: {e}");
        }

        let shutdown = CancellationToken::new();
        let (calls_tx, mut calls) = mpsc::channel(16);
        let service = ControlService {
            calls: calls_tx,
            events: self.events.clone(),
            shutdown: shutdown.clone(),
        };
        let listener = protocol::unix::bind(&self.master.control_socket).await?;
        let router = tonic::transport::Server::builder()
            .add_service(pb::control_server::ControlServer::new(service));
        let server = tokio::spawn(protocol::unix::serve(router, listener, shutdown.clone()));
        info!(pid = std::process::id(), "lithos_tree running");

        let mut gone_rx = self.gone_rx.take().expect("run once");
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if self.stopping && self.instances.values().all(|i| i.knot.is_none()) {
                break;
            }
            let due = self.due();
            let sleep = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(call) = calls.recv() => match call {
                    Call::Status(reply) => { let _ = reply.send(self.status()); }
                    Call::Reload(sandbox, reply) => {
                        let response = self.reload(sandbox.as_deref());
                        let _ = reply.send(response);
                    }
                },
                Some(gone) = gone_rx.recv() => {
                    // A knot's notices are queued before it exits: take them first.
                    while let Ok(n) = notify.try_recv(&mut buf) {
                        self.handle_notice(&buf[..n]);
                    }
                    self.knot_ended(gone);
                }
                Ok(n) = notify.recv(&mut buf) => self.handle_notice(&buf[..n]),
                _ = sig_term.recv() => self.begin_stop(),
                _ = sig_int.recv() => self.begin_stop(),
                _ = sig_quit.recv() => self.reexec(),
                _ = sig_hup.recv() => self.reexec(),
                _ = sig_usr1.recv() => self.reexec(),
                _ = sig_usr2.recv() => self.reexec(),
                _ = sleep => self.start_due(),
            }
        }
        info!("every instance stopped");
        shutdown.cancel();
        let _ = server.await;
        self.metrics.remove();
        let _ = std::fs::remove_file(&notify_path);
        let _ = std::fs::remove_file(self.master.pid_file());
        Ok(())
    }

    /// Counts a re-exec in `master.restarts`.
    pub fn count_reexec(&mut self) {
        self.metrics.incr("master", "restarts");
    }

    /// The first load at start: like a reload, without counting it as a restart.
    fn reload_quietly(&mut self) {
        for name in self.master.sandbox_names().unwrap_or_default() {
            let _ = self.load_sandbox(&name);
        }
    }
}

fn signal_knot(k: &KnotHandle, sig: Signal) {
    if let Err(e) = isolation::pidfd::send_signal(k.pidfd.as_fd(), sig) {
        warn!(knot = k.pid, "{e}");
    }
}

/// The signals that make the tree re-execute or stop: blocked across exec and during
/// start-up until the handlers exist.
pub const UPGRADE_SIGNALS: [Signal; 6] = [
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGTERM,
    Signal::SIGINT,
];
