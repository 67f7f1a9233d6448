//! Applying a schedule on this host: `verwalter_render` once per role of this node, with the
//! deployment logged in the index.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::deploy_log::{Marker, Stream};
use crate::node::{Node, RoleRender};
use crate::schedule::Schedule;
use crate::vars::{self, Deployment};

/// The renderer's own budget is 180 s; the daemon kills it a little later as a backstop.
const RENDER_KILL_AFTER: Duration = Duration::from_secs(185);

/// Renders every new schedule, and again on `force_render_all`.
pub async fn deploy_loop(node: Arc<Node>, shutdown: CancellationToken) {
    let mut schedules = node.schedule.subscribe();
    // A schedule loaded from storage at start is in force already: its files are on disk.
    schedules.borrow_and_update();
    let mut standby = Standby::start(&node);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = schedules.changed() => if changed.is_err() { break },
            () = node.render_wake.notified() => {}
        }
        let Some(schedule) = schedules.borrow_and_update().clone() else {
            continue;
        };
        deploy(&node, &schedule, &mut standby).await;
        node.rendered
            .send_replace(Some(schedule.stamp.hash.clone()));
        standby = standby.or_else(|| Standby::start(&node));
    }
}

/// A `verwalter_render` started ahead of the next render, waiting for its vars on stdin
/// (`--vars-file -`), so the process start is not on the path of a new schedule. Each render
/// still gets a process of its own.
#[derive(Debug)]
struct Standby {
    child: tokio::process::Child,
    /// The renderer binary's modification time at the start: a replaced binary (an upgrade)
    /// is started afresh rather than used in its old version.
    binary: Option<SystemTime>,
}

impl Standby {
    /// None when it cannot start: the render then starts one itself and reports the error.
    fn start(node: &Node) -> Option<Self> {
        let binary = binary_mtime(&node.settings.render_binary);
        let child = renderer_command(&node.settings).spawn().ok()?;
        Some(Self { child, binary })
    }

    /// The waiting renderer, unless it has exited or its binary was replaced.
    fn take(standby: &mut Option<Self>, node: &Node) -> Option<tokio::process::Child> {
        let mut ready = standby.take()?;
        let alive = matches!(ready.child.try_wait(), Ok(None));
        (alive && ready.binary == binary_mtime(&node.settings.render_binary)).then_some(ready.child)
    }
}

fn binary_mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
}

/// Logs a line to the global log under `marker`; a log failure is reported, not fatal.
fn log_event(node: &Node, deployment_id: &str, stream: &Stream, marker: Marker, text: &str) {
    if let Err(err) = node.log.event(deployment_id, stream, marker, text) {
        node.set_error("log", Some(err.to_string()));
    }
}

async fn deploy(node: &Node, schedule: &Schedule, standby: &mut Option<Standby>) {
    let now = crate::now_ms(SystemTime::now());
    let deployment_id = format!("{now}-{}", &schedule.stamp.hash[..8]);
    let global = Stream::Global;
    log_event(
        node,
        &deployment_id,
        &global,
        Marker::DeploymentStart,
        &format!(
            "==== deployment {deployment_id}: schedule {} from {}{}\n",
            schedule.stamp.hash,
            schedule.stamp.origin,
            if node.settings.dry_run {
                " (dry run)"
            } else {
                ""
            }
        ),
    );
    if let Some(changes) = schedule
        .data
        .get("changes")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
    {
        let text: String = changes
            .iter()
            .map(|line| {
                format!(
                    "{}\n",
                    line.as_str()
                        .map_or_else(|| line.to_string(), str::to_owned)
                )
            })
            .collect();
        log_event(
            node,
            &deployment_id,
            &Stream::Changes,
            Marker::DeploymentChanges,
            &text,
        );
    }
    let machine = node.state().inputs.machine.clone();
    let deployment = Deployment {
        timestamp: schedule.stamp.timestamp,
        deployment_id: deployment_id.clone(),
        machine,
    };
    let dir = node.settings.runtime_dir.join("render");
    if let Err(err) = std::fs::create_dir_all(&dir) {
        node.set_error("render", Some(format!("create {}: {err}", dir.display())));
        return;
    }
    let roles = vars::node_roles(&schedule.data, &node.settings.hostname);
    forget_dropped_roles(node, &dir, &roles);
    let mut failures = Vec::new();
    for role in roles {
        let role_vars =
            vars::system_vars(&schedule.data, &role, &node.settings.hostname, &deployment);
        let vars = serde_json::to_vec(&Value::Object(role_vars)).unwrap_or_default();
        let started = std::time::Instant::now();
        let code = render_role(node, vars.clone(), standby).await;
        // The renderer gets its vars on stdin: the copy for `verwalter_render --vars-file`
        // by hand (and for `forget_dropped_roles`) is written after, off the render's path.
        let vars_file = dir.join(format!("{role}.vars.json"));
        if let Err(err) = crate::storage::write_unsynced_file(&vars_file, &vars) {
            failures.push(format!("{role}: {err}"));
        }
        tracing::debug!(role, took = ?started.elapsed(), ?code, "verwalter_render");
        let ok = code == Some(0);
        {
            let mut state = node.state();
            if ok {
                state.failed_roles.remove(&role);
            } else {
                state.failed_roles.insert(role.clone());
            }
            state.roles.insert(
                role.clone(),
                RoleRender {
                    deployment_id: deployment_id.clone(),
                    timestamp: now,
                    ok,
                    exit_code: code,
                },
            );
        }
        if !ok {
            failures.push(format!("{role}: verwalter_render exited with {code:?}"));
        }
    }
    let _ = crate::storage::write_unsynced_file(
        &dir.join("schedule.json"),
        &serde_json::to_vec(schedule).unwrap_or_default(),
    );
    node.refresh_local();
    if failures.is_empty() {
        node.set_error("render", None);
        log_event(
            node,
            &deployment_id,
            &global,
            Marker::DeploymentFinish,
            &format!("==== deployment {deployment_id} done\n"),
        );
    } else {
        let text = failures.join("; ");
        node.set_error("render", Some(text.clone()));
        log_event(
            node,
            &deployment_id,
            &global,
            Marker::DeploymentError,
            &format!("==== deployment {deployment_id} failed: {text}\n"),
        );
    }
}

/// A role no longer under `nodes.<host>.roles` is not rendered any more: it leaves
/// `failed_roles` and the role list, and its vars file goes (the vars files left from the
/// last deployment also tell a restarted daemon which roles it rendered). Its rendered files
/// stay, as verwalter does not know what its commands did; removing them is the job of the
/// roles that stay (`!CleanFiles` with a keep-list rendered from `full_schedule`, see
/// docs/verwalter.md).
fn forget_dropped_roles(node: &Node, dir: &Path, roles: &[String]) {
    let previous_vars = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".vars.json").map(str::to_owned)
        });
    let dropped: BTreeSet<String> = {
        let mut state = node.state();
        let dropped: BTreeSet<String> = state
            .roles
            .keys()
            .chain(&state.failed_roles)
            .cloned()
            .chain(previous_vars)
            .filter(|role| !roles.contains(role))
            .collect();
        for role in &dropped {
            state.roles.remove(role);
            state.failed_roles.remove(role);
        }
        dropped
    };
    for role in dropped {
        let _ = std::fs::remove_file(dir.join(format!("{role}.vars.json")));
        let text = format!(
            "role {role} is no longer scheduled on this host: not rendered, its files are left in place\n"
        );
        if let Err(err) = node.log.append(&Stream::Global, &text) {
            node.set_error("log", Some(err.to_string()));
        }
        tracing::info!(role, "role dropped from this host");
    }
}

/// `verwalter_render` reading the role's vars from stdin; the schedule file is the one
/// `deploy` writes.
fn renderer_command(settings: &crate::node::Settings) -> tokio::process::Command {
    let mut command = if settings.use_sudo {
        let mut sudo = tokio::process::Command::new("sudo");
        sudo.arg("-n").arg(&settings.render_binary);
        sudo
    } else {
        tokio::process::Command::new(&settings.render_binary)
    };
    command
        .arg("--vars-file")
        .arg("-")
        .arg("--schedule-file")
        .arg(settings.runtime_dir.join("render/schedule.json"))
        .arg("--config-dir")
        .arg(&settings.config_dir)
        .arg("--log-dir")
        .arg(&settings.log_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if settings.dry_run {
        command.arg("--dry-run");
    }
    command
}

/// Runs `verwalter_render` for one role (the standby if there is one), feeding it `vars`;
/// the exit code, None if it could not run or was killed.
async fn render_role(node: &Node, vars: Vec<u8>, standby: &mut Option<Standby>) -> Option<i32> {
    let settings = &node.settings;
    let mut child = match Standby::take(standby, node) {
        Some(child) => child,
        None => match renderer_command(settings).spawn() {
            Ok(child) => child,
            Err(err) => {
                node.set_error(
                    "render",
                    Some(format!("spawn {}: {err}", settings.render_binary.display())),
                );
                return None;
            }
        },
    };
    if let Some(mut stdin) = child.stdin.take() {
        // Fed from a task of its own: vars larger than the pipe's buffer are read while the
        // renderer runs.
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = stdin.write_all(&vars).await;
        });
    }
    let pid = child.id();
    match tokio::time::timeout(RENDER_KILL_AFTER, child.wait_with_output()).await {
        Ok(Ok(output)) => {
            if !output.status.success() {
                tracing::warn!(
                    status = %output.status,
                    stderr = %String::from_utf8_lossy(&output.stderr).trim(),
                    "verwalter_render failed"
                );
            }
            output.status.code()
        }
        Ok(Err(err)) => {
            tracing::error!(error = %err, "waiting for verwalter_render");
            None
        }
        Err(_) => {
            if let Some(pid) = pid.and_then(|pid| i32::try_from(pid).ok()) {
                let _ = isolation::signal::send_to_group(pid, isolation::Signal::SIGKILL);
            }
            None
        }
    }
}
