//! The knot: one per instance, small and synchronous. It prepares the state dir, starts the
//! container through `isolation` (an init as pid 1, the program as pid 2), forwards SIGTERM,
//! enforces `kill-timeout`, records `knot.json` and `exit-status` for the tree (not for
//! `lithos_cmd`, which waits for the outcome itself), and exits with 0 normal,
//! 1 setup error, 2 failure, 3 kill-timeout expired.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use isolation::signal::{Queue, SignalError};
use isolation::{Child, Container, IdMap, MapWriter, Signal, Stdio, UserNamespace, Volume};
use tracing::{error, info, warn};

use crate::backoff::{Backoff, Decision};
use crate::cgroups;
use crate::config::{EntryKind, IdMapping, MountFile};
use crate::instance::{EtcFilePlan, InstanceConfig, MountPlan, SocketPlan, StdioPlan};
use crate::state::{
    self, ExitRecord, KnotRecord, Notice, NoticeEvent, ProcessExit, SocketRecord, code,
};

/// A failed setup step, with what it acted on.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    NotAllowed(String),
    #[error("create {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("take socket fd {fd}: {source}")]
    Socket { fd: i32, source: isolation::FdError },
    #[error("cgroup: {0}")]
    Cgroup(#[from] isolation::CgroupError),
    #[error("start container: {0}")]
    Spawn(#[from] isolation::SpawnError),
    #[error("signals: {0}")]
    Signals(SignalError),
    #[error("unknown capability {0}")]
    Capability(String),
}

/// How the knot run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub code: i32,
    pub exit: Option<ProcessExit>,
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

fn map_id(maps: &[IdMapping], id: u32) -> u32 {
    maps.iter()
        .find(|m| m.inside <= id && (id as u64) < m.inside as u64 + m.count as u64)
        .map(|m| m.outside + (id - m.inside))
        .unwrap_or(id)
}

fn ensure_dir(path: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<(), SetupError> {
    let err = |source| SetupError::Create {
        path: display(path),
        source,
    };
    // One mkdir in the usual case (the parent exists); an existing directory is left as is.
    match fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(err)?,
        Err(e) => return Err(err(e)),
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(err)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(err)?;
    }
    Ok(())
}

/// The knot's own check of the ids, whatever wrote the config (spec §3.3).
pub fn check_identity(c: &InstanceConfig) -> Result<(), SetupError> {
    let in_map = |maps: &[IdMapping], id: u32| {
        maps.iter()
            .any(|m| m.inside <= id && (id as u64) < m.inside as u64 + m.count as u64)
    };
    if c.uid_map.is_empty() {
        if !c.allow_users.contains(c.user_id) {
            return Err(SetupError::NotAllowed(format!(
                "User is not in allowed range (uid: {})",
                c.user_id
            )));
        }
    } else if !in_map(&c.uid_map, c.user_id) {
        return Err(SetupError::NotAllowed(format!(
            "User is not in mapped range (uid: {})",
            c.user_id
        )));
    }
    if c.gid_map.is_empty() {
        if !c.allow_groups.contains(c.group_id) {
            return Err(SetupError::NotAllowed(format!(
                "Group is not in allowed range (gid: {})",
                c.group_id
            )));
        }
    } else if !in_map(&c.gid_map, c.group_id) {
        return Err(SetupError::NotAllowed(format!(
            "Group is not in mapped range (gid: {})",
            c.group_id
        )));
    }
    Ok(())
}

fn etc_file(plan: &EtcFilePlan, hosts: bool) -> String {
    let mut text = plan
        .copy_from
        .as_ref()
        .and_then(|p| fs::read_to_string(p).ok())
        .unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    if hosts {
        if plan.localhost {
            text.push_str("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n");
        }
        if plan.public_hostname
            && let Ok(name) = isolation::host::name()
        {
            let name = name.to_string_lossy().into_owned();
            let ip = std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), 0))
                .ok()
                .and_then(|mut a| a.next())
                .map(|a| a.ip().to_string())
                .unwrap_or_else(|| "127.0.1.1".into());
            text.push_str(&format!("{ip} {name}\n"));
        }
        for (name, ip) in &plan.additional_hosts {
            text.push_str(&format!("{ip} {name}\n"));
        }
    }
    text
}

fn wants_mount(plan: &EtcFilePlan, image_file: &Path) -> bool {
    match plan.mount {
        MountFile::Always => true,
        MountFile::Never => false,
        MountFile::Auto => fs::symlink_metadata(image_file).is_ok_and(|m| m.file_type().is_file()),
    }
}

fn time_stamp() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Appends a marker line to the stdio log (best effort: the log is for people).
fn marker(log: Option<&File>, line: &str) {
    if let Some(mut f) = log {
        let _ = writeln!(f, "{}: ----- {line} -----", time_stamp());
    }
}

/// Prepares the state dir: resolv.conf, hosts and statedir volumes.
fn prepare_state(c: &InstanceConfig) -> Result<(), SetupError> {
    ensure_dir(&c.state_dir, 0o755, None)?;
    for (name, plan, hosts) in [
        ("resolv.conf", &c.resolv_conf, false),
        ("hosts", &c.hosts, true),
    ] {
        let path = c.state_dir.join(name);
        fs::write(&path, etc_file(plan, hosts)).map_err(|source| SetupError::Write {
            path: display(&path),
            source,
        })?;
        let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o644));
    }
    for (_, plan) in &c.volumes {
        match plan {
            MountPlan::Statedir {
                source,
                mode,
                user,
                group,
            } => {
                ensure_dir(
                    source,
                    *mode,
                    Some((map_id(&c.uid_map, *user), map_id(&c.gid_map, *group))),
                )?;
            }
            MountPlan::ReadWrite {
                source,
                mkdir: Some((mode, user, group)),
            } => {
                ensure_dir(
                    source,
                    *mode,
                    Some((map_id(&c.uid_map, *user), map_id(&c.gid_map, *group))),
                )?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Removes a state dir that `prepare_state` made: its two files and the directory take three
/// calls; anything more in it (statedir volumes) takes the recursive way.
pub fn remove_state(c: &InstanceConfig) {
    for name in ["resolv.conf", "hosts"] {
        let _ = fs::remove_file(c.state_dir.join(name));
    }
    if fs::remove_dir(&c.state_dir).is_err() {
        let _ = fs::remove_dir_all(&c.state_dir);
    }
}

fn id_maps(maps: &[IdMapping]) -> Vec<IdMap> {
    maps.iter()
        .map(|m| IdMap {
            inside: m.inside,
            outside: m.outside,
            count: m.count,
        })
        .collect()
}

/// Describes the container; sockets arrive as descriptors taken by the caller.
fn container(
    c: &InstanceConfig,
    sockets: &[(SocketPlan, OwnedFd)],
    log: Option<&File>,
    interactive_stdin: bool,
) -> Result<Container, SetupError> {
    let mut ct = Container::new(&c.image_root, &c.executable);
    ct.args(&c.arguments)
        .workdir(&c.workdir)
        .identity(c.user_id, c.group_id, &[])
        .init(true)
        .nofile_limit(c.fileno_limit)
        .no_new_privs(c.no_new_privs)
        .parent_death_signal(Some(Signal::SIGKILL));
    for (k, v) in &c.environ {
        ct.env(k, v);
    }
    let caps = c
        .capabilities
        .iter()
        .map(|n| n.parse().map_err(|_| SetupError::Capability(n.clone())))
        .collect::<Result<Vec<isolation::Capability>, _>>()?;
    ct.capabilities(&caps);
    if !c.uid_map.is_empty() || !c.gid_map.is_empty() {
        ct.user_namespace(UserNamespace {
            uid_map: id_maps(&c.uid_map),
            gid_map: id_maps(&c.gid_map),
            writer: MapWriter::Auto,
        });
    }
    for (point, plan) in &c.volumes {
        let volume = match plan {
            MountPlan::ReadOnly { source } => Volume::ReadOnly {
                source: source.clone(),
            },
            MountPlan::ReadWrite { source, .. } | MountPlan::Statedir { source, .. } => {
                Volume::ReadWrite {
                    source: source.clone(),
                }
            }
            MountPlan::Tmpfs { size, mode } => Volume::Tmpfs {
                size: *size,
                mode: *mode,
                subdirs: vec![],
            },
        };
        ct.volume(point, volume);
    }
    for (name, plan) in [("resolv.conf", &c.resolv_conf), ("hosts", &c.hosts)] {
        let in_image = c.image_root.join("etc").join(name);
        if wants_mount(plan, &in_image) {
            ct.volume(
                Path::new("/etc").join(name),
                Volume::ReadOnly {
                    source: c.state_dir.join(name),
                },
            );
        }
    }
    if let Some(cg) = &c.cgroup {
        let h = cgroups::hierarchies(cg.version)?;
        ct.cgroup(cgroups::spec(&h, &cg.controllers, &cg.path, &cg.limits));
    }
    for (plan, fd) in sockets {
        let copy = fd.try_clone().map_err(|e| SetupError::Create {
            path: format!("socket {}", plan.addr),
            source: e,
        })?;
        if plan.fd == 0 {
            ct.stdin(Stdio::Fd(copy));
        } else {
            ct.pass_fd(copy, plan.fd);
        }
    }
    if !sockets.iter().any(|(p, _)| p.fd == 0) {
        ct.stdin(if interactive_stdin {
            Stdio::Inherit
        } else {
            Stdio::Null
        });
    }
    match (&c.stdio, log) {
        (StdioPlan::File(_), Some(f)) => {
            let dup = |f: &File| {
                f.try_clone()
                    .map(OwnedFd::from)
                    .map_err(|e| SetupError::Create {
                        path: "stdio log".into(),
                        source: e,
                    })
            };
            ct.stdout(Stdio::Fd(dup(f)?)).stderr(Stdio::Fd(dup(f)?));
        }
        _ => {
            ct.stdout(Stdio::Inherit).stderr(Stdio::Inherit);
        }
    }
    Ok(ct)
}

fn open_log(c: &InstanceConfig) -> Result<Option<File>, SetupError> {
    let StdioPlan::File(path) = &c.stdio else {
        return Ok(None);
    };
    if let Some(dir) = path.parent() {
        ensure_dir(dir, 0o755, None)?;
    }
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map(Some)
        .map_err(|source| SetupError::Create {
            path: display(path),
            source,
        })
}

/// Moves this process into the knots cgroup, outside the tree's service cgroup.
pub fn join_knots_cgroup(c: &InstanceConfig) -> Result<(), SetupError> {
    if let Some(cg) = &c.cgroup {
        let h = cgroups::hierarchies(cg.version)?;
        let spec = cgroups::spec(&h, &cg.controllers, &cg.knots_path, &Default::default());
        spec.create()?.add(std::process::id() as i32)?;
    }
    Ok(())
}

/// Takes ownership of the knot's inherited socket descriptors (at `knot_fd`).
pub fn inherited_sockets(c: &InstanceConfig) -> Result<Vec<(SocketPlan, OwnedFd)>, SetupError> {
    c.sockets
        .iter()
        .map(|s| {
            isolation::fd::claim_inherited(s.knot_fd)
                .map(|fd| (s.clone(), fd))
                .map_err(|source| SetupError::Socket {
                    fd: s.knot_fd,
                    source,
                })
        })
        .collect()
}

/// Signals the knot handles; blocked so they queue on the signalfd from the start.
pub fn block_signals() -> Result<Queue, SetupError> {
    Queue::new(&[
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGCHLD,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ])
    .map_err(SetupError::Signals)
}

/// What the knot was asked to do through signals so far.
#[derive(Debug, Default, Clone, Copy)]
struct Requests {
    terminate: bool,
    interrupt: bool,
}

fn drain(signals: &Queue, req: &mut Requests) {
    while let Some(signal) = signals.next() {
        match signal {
            Signal::SIGTERM => req.terminate = true,
            Signal::SIGINT => req.interrupt = true,
            _ => {}
        }
    }
}

/// Time left until `at`, capped at a minute and a millisecond late rather than early.
fn until(at: Instant) -> Duration {
    at.saturating_duration_since(Instant::now())
        .min(Duration::from_secs(60))
        + Duration::from_millis(1)
}

/// Waits until the container ends, forwarding SIGTERM and enforcing the kill timeout.
/// Returns the exit and whether the kill timeout fired.
fn supervise(
    c: &InstanceConfig,
    child: &mut Child,
    signals: &Queue,
    req: &mut Requests,
) -> (isolation::ExitStatus, bool, bool) {
    let kill_timeout = Duration::from_secs_f64(c.kill_timeout.max(0.0));
    let mut deadline: Option<Instant> = None;
    let mut term_sent = false;
    let mut killed = false;
    loop {
        drain(signals, req);
        if req.terminate && !term_sent {
            term_sent = true;
            let _ = child.signal(Signal::SIGTERM);
            deadline = Some(Instant::now() + kill_timeout);
        }
        if let Some(d) = deadline
            && Instant::now() >= d
        {
            warn!(instance = %c.name, "process did not respond to SIGTERM in {:?}: killing it", kill_timeout);
            let _ = child.signal(Signal::SIGKILL);
            killed = true;
            deadline = None;
        }
        let ended = isolation::poll::ready(&[signals.as_fd(), child.pidfd()], deadline.map(until))
            .is_ok_and(|ready| ready[1]);
        if ended {
            let dirs: Vec<_> = child
                .cgroup()
                .map(|cg| cg.dirs().map(Path::to_path_buf).collect())
                .unwrap_or_default();
            let oom = cgroups::oom_kills(&dirs) > 0;
            match child.wait() {
                Ok(status) => return (status, killed, oom),
                Err(e) => {
                    error!(instance = %c.name, "wait for container: {e}");
                    return (
                        isolation::ExitStatus::Signaled(Signal::SIGKILL),
                        killed,
                        oom,
                    );
                }
            }
        }
    }
}

/// Knot exit code for a process end (spec §2.1).
fn classify(c: &InstanceConfig, exit: &ProcessExit, terminated: bool, killed: bool) -> i32 {
    if killed {
        return code::KILL_TIMEOUT;
    }
    if terminated {
        return code::NORMAL;
    }
    match exit.code {
        Some(x) if c.normal_exit_codes.contains(&x) => code::NORMAL,
        Some(0) if c.kind == EntryKind::Command => code::NORMAL,
        _ => code::FAILURE,
    }
}

fn record(c: &InstanceConfig, pid: u32, restarts: u64, sockets: &[(SocketPlan, OwnedFd)]) {
    let rec = KnotRecord {
        name: c.name.clone(),
        knot_pid: std::process::id(),
        pid,
        started_ms: state::now_ms(),
        digest: c.digest(),
        restarts,
        sockets: sockets
            .iter()
            .map(|(p, _)| SocketRecord {
                addr: p.addr,
                fd: p.knot_fd,
            })
            .collect(),
    };
    if let Err(e) = state::write_json(&c.state_dir.join(state::KNOT_FILE), &rec) {
        warn!(instance = %c.name, "write knot.json: {e}");
    }
}

fn send(c: &InstanceConfig, event: NoticeEvent) {
    state::notify(
        &c.notify_socket,
        &Notice {
            instance: c.name.clone(),
            knot_pid: std::process::id(),
            event,
        },
    );
}

fn finish(
    c: &InstanceConfig,
    outcome: Outcome,
    reason: Option<String>,
    started: Instant,
    caller: Caller,
) -> Outcome {
    if caller != Caller::Tree {
        return outcome;
    }
    let rec = ExitRecord {
        knot_code: outcome.code,
        exit: outcome.exit,
        reason,
        uptime_ms: started.elapsed().as_millis() as u64,
    };
    if c.state_dir.is_dir()
        && let Err(e) = state::write_json(&c.state_dir.join(state::EXIT_FILE), &rec)
    {
        warn!(instance = %c.name, "write exit-status: {e}");
    }
    outcome
}

/// Who waits for the instance, which decides what the knot records on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A `lithos_knot` of the tree: `knot.json`, notices and `exit-status` are how the tree
    /// (or the next tree, after adopting) learns what happened.
    Tree,
    /// `lithos_cmd` waits for the outcome in-process and the tree ignores `cmd.*` instances:
    /// nothing is recorded. `interactive` passes the caller's stdin.
    Command { interactive: bool },
}

/// Runs the instance to its end.
pub fn run(
    c: &InstanceConfig,
    sockets: Vec<(SocketPlan, OwnedFd)>,
    signals: &Queue,
    caller: Caller,
) -> Outcome {
    let started = Instant::now();
    let interactive = matches!(caller, Caller::Command { interactive: true });
    let setup = (|| {
        check_identity(c)?;
        let log = open_log(c)?;
        let ct = container(c, &sockets, log.as_ref(), interactive)?;
        Ok::<_, SetupError>((log, ct))
    })();
    let (log, ct) = match setup {
        Ok(v) => v,
        Err(e) => return setup_failed(c, e, started, caller),
    };
    let mut req = Requests::default();
    let mut backoff = Backoff::default();
    let mut restarts = 0;
    loop {
        let command_line = std::iter::once(c.executable.as_str())
            .chain(c.arguments.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ");
        let run_start = Instant::now();
        let first = restarts == 0;
        // Runs while the child mounts /proc, /dev and /sys, which then waits for it: the first
        // start's state dir (the child binds files from there) and the start's log lines are
        // written in time the start takes anyway, and before the program can write.
        let spawned = ct.spawn_with(|| {
            marker(
                log.as_ref(),
                &format!("Starting {:?}: {command_line}", c.name),
            );
            info!(instance = %c.name, "starting {command_line}");
            if first { prepare_state(c) } else { Ok(()) }
        });
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let e = match e {
                    isolation::SpawnError::Prepare(e) => e.downcast::<SetupError>().map_or_else(
                        |e| SetupError::Spawn(isolation::SpawnError::Prepare(e)),
                        |e| *e,
                    ),
                    e => SetupError::Spawn(e),
                };
                marker(log.as_ref(), &format!("Failed to start {:?}: {e}", c.name));
                return setup_failed(c, e, started, caller);
            }
        };
        if caller == Caller::Tree {
            record(c, child.pid() as u32, restarts, &sockets);
            send(
                c,
                NoticeEvent::Started {
                    pid: child.pid() as u32,
                },
            );
        }
        let (status, killed, oom) = supervise(c, &mut child, signals, &mut req);
        let exit = ProcessExit::from_status(status, oom);
        let uptime = run_start.elapsed().as_secs();
        marker(
            log.as_ref(),
            &format!("Process {:?} {exit}, uptime {uptime}s", c.name),
        );
        let code = classify(c, &exit, req.terminate, killed);
        if code == code::KILL_TIMEOUT {
            error!(instance = %c.name, "process did not respond to SIGTERM within kill-timeout; killed");
        } else if code != code::NORMAL {
            warn!(instance = %c.name, "process {exit} after {uptime}s");
        } else {
            info!(instance = %c.name, "process {exit} after {uptime}s");
        }
        let respawn = c.restart_process_only
            && c.kind == EntryKind::Daemon
            && !req.terminate
            && !req.interrupt;
        if !respawn {
            return finish(
                c,
                Outcome {
                    code,
                    exit: Some(exit),
                },
                None,
                started,
                caller,
            );
        }
        send(c, NoticeEvent::Exited { exit });
        let at = match backoff.on_exit(&c.restart, code != code::NORMAL, run_start, Instant::now())
        {
            Decision::Restart { at, .. } => at,
            Decision::GiveUp => {
                return finish(
                    c,
                    Outcome {
                        code,
                        exit: Some(exit),
                    },
                    Some("gave up".into()),
                    started,
                    caller,
                );
            }
        };
        // Wait for the next start, still answering SIGTERM.
        while Instant::now() < at && !req.terminate && !req.interrupt {
            let _ = isolation::poll::ready(&[signals.as_fd()], Some(until(at)));
            drain(signals, &mut req);
        }
        if req.terminate || req.interrupt {
            return finish(
                c,
                Outcome {
                    code: code::NORMAL,
                    exit: Some(exit),
                },
                None,
                started,
                caller,
            );
        }
        restarts += 1;
    }
}

fn setup_failed(c: &InstanceConfig, e: SetupError, started: Instant, caller: Caller) -> Outcome {
    let reason = e.to_string();
    error!(instance = %c.name, "setup failed: {reason}");
    if caller == Caller::Tree {
        send(
            c,
            NoticeEvent::SetupFailed {
                reason: reason.clone(),
            },
        );
    }
    finish(
        c,
        Outcome {
            code: code::SETUP_ERROR,
            exit: None,
        },
        Some(reason),
        started,
        caller,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_through_the_maps() {
        let maps = [IdMapping {
            inside: 0,
            outside: 100000,
            count: 65536,
        }];
        assert_eq!(map_id(&maps, 1), 100001);
        assert_eq!(map_id(&[], 5), 5);
    }

    #[test]
    fn hosts_file_adds_localhost_and_extra_names() {
        let mut plan = EtcFilePlan {
            mount: MountFile::Auto,
            copy_from: None,
            localhost: true,
            public_hostname: false,
            additional_hosts: Default::default(),
        };
        plan.additional_hosts
            .insert("db".into(), "10.0.0.5".parse().unwrap());
        let text = etc_file(&plan, true);
        assert!(text.starts_with("127.0.0.1 localhost\n"), "{text}");
        assert!(text.ends_with("10.0.0.5 db\n"), "{text}");
    }
}
