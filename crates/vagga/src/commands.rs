//! User commands: `!Command` and `!Supervise`, their prerequisites, arguments and banners.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use isolation::{Child, Signal};

use crate::config::{ChildCommand, Command, CommandDef, Run, Supervise, SuperviseMode};
use crate::launch::{Cleanup, Invocation, LaunchError, Launcher, exit_code};
use crate::options::{self, OptionsError};

/// Running a user command failed before it could report an exit code.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// Bad arguments (exit 121); the usage is in the message.
    #[error("{0}")]
    Arguments(String),
    /// `--help` of a command: printed, exit 0.
    #[error("{0}")]
    Help(String),
    #[error("command \"{0}\" is a !CapsuleCommand, which is not supported in this release")]
    Capsule(String),
}

impl From<OptionsError> for CommandError {
    fn from(e: OptionsError) -> Self {
        match e {
            OptionsError::Usage(u) => CommandError::Arguments(u),
            OptionsError::Help(u) => CommandError::Help(u),
        }
    }
}

/// The commands to run for `names`: prerequisites first, each once, in dependency order.
pub fn with_prerequisites(launcher: &Launcher<'_>, names: &[String]) -> Vec<String> {
    fn visit(launcher: &Launcher<'_>, name: &str, out: &mut Vec<String>, path: &mut Vec<String>) {
        if out.iter().any(|o| o == name) || path.iter().any(|p| p == name) {
            return;
        }
        path.push(name.to_owned());
        if let Some((_, def)) = launcher.project.config.find_command(name) {
            for pre in def.prerequisites() {
                visit(launcher, &pre.value, out, path);
            }
        }
        path.pop();
        out.push(name.to_owned());
    }
    let mut out = Vec::new();
    for name in names {
        visit(launcher, name, &mut out, &mut Vec::new());
    }
    out
}

/// The argv of a `!Command` with the user's arguments.
fn command_argv(
    container_shell: &[String],
    cmd: &Command,
    args: &[String],
    pass_args: bool,
) -> Vec<String> {
    let mut argv = match &cmd.run {
        Run::Shell(script) => container_shell
            .iter()
            .map(|w| {
                if w == "$cmdline" {
                    script.clone()
                } else {
                    w.clone()
                }
            })
            .collect(),
        Run::Exec(list) => list.clone(),
    };
    if pass_args {
        argv.extend(args.iter().cloned());
    }
    argv
}

fn banner(text: Option<&str>, delay: Option<f64>) {
    if let Some(text) = text {
        if let Some(d) = delay.filter(|d| *d > 0.0) {
            std::thread::sleep(Duration::from_secs_f64(d));
        }
        eprintln!("{text}");
    }
}

/// Runs a user command by name with its arguments; returns the exit code.
pub fn run_command(
    launcher: &mut Launcher<'_>,
    name: &str,
    args: &[String],
) -> Result<i32, CommandError> {
    let project = launcher.project;
    let (real, def) = project
        .config
        .find_command(name)
        .expect("the caller checked the command exists");
    match def {
        CommandDef::Command(cmd) => {
            let mut extra_env = Vec::new();
            let pass_args = match &cmd.options {
                Some(usage) => {
                    extra_env = options::parse(usage, real, args)?;
                    false
                }
                None => {
                    if !args.is_empty() && !cmd.accepts_arguments() {
                        return Err(CommandError::Arguments(format!(
                            "command \"{real}\" does not accept arguments (set accepts-arguments or options)"
                        )));
                    }
                    true
                }
            };
            let container = &project.config.containers[&cmd.container.value].def;
            let inv = Invocation {
                container: &cmd.container.value,
                argv: command_argv(&container.default_shell, cmd, args, pass_args),
                command: Some(cmd),
                extra_env,
                writable_copy: false,
                isolate_network: cmd.isolate_network,
            };
            check_inotify(cmd);
            // Build first so the banner comes right before the command.
            launcher
                .builder
                .ensure(&cmd.container.value, launcher.options.build_mode())
                .map_err(LaunchError::from)?;
            banner(cmd.banner.as_deref(), cmd.banner_delay);
            let code = launcher.run(&inv)?;
            if code == 0 {
                banner(cmd.epilog.as_deref(), None);
            }
            Ok(code)
        }
        CommandDef::Supervise(sup) => run_supervise(launcher, real, sup, args),
        CommandDef::CapsuleCommand(_) => Err(CommandError::Capsule(real.to_owned())),
    }
}

fn check_inotify(cmd: &Command) {
    if let Some(want) = cmd.expect_inotify_limit
        && let Ok(text) = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
        && let Ok(have) = text.trim().parse::<u64>()
        && have < want
    {
        eprintln!(
            "warning: fs.inotify.max_user_watches is {have}, the command expects {want}: sudo sysctl -w fs.inotify.max_user_watches={want}"
        );
    }
}

/// Runs the `init-command` of a persistent volume against its temporary directory.
pub fn run_init_command(
    launcher: &mut Launcher<'_>,
    name: &str,
    volume: &str,
    tmp: &Path,
) -> Result<i32, LaunchError> {
    let project = launcher.project;
    let Some((_, CommandDef::Command(cmd))) = project.config.find_command(name) else {
        return Err(LaunchError::Volume(format!(
            "persistent volume \"{volume}\": init-command \"{name}\" is not a !Command"
        )));
    };
    let container = &project.config.containers[&cmd.container.value].def;
    // Every mount point of this volume (in the command's container) sees the new directory.
    let mount_points: Vec<(String, PathBuf)> = container
        .volumes
        .iter()
        .chain(cmd.volumes.iter())
        .filter(
            |(_, v)| matches!(&v.value, crate::config::Volume::Persistent(p) if p.name == volume),
        )
        .map(|(k, _)| (k.clone(), tmp.to_owned()))
        .collect();
    let inv = Invocation {
        container: &cmd.container.value,
        argv: command_argv(&container.default_shell, cmd, &[], false),
        command: Some(cmd),
        extra_env: Vec::new(),
        writable_copy: false,
        isolate_network: cmd.isolate_network,
    };
    launcher.run_with(&inv, &mount_points)
}

/// `--only`/`--exclude` and the rest of a `!Supervise`'s arguments.
fn split_selection(args: &[String]) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (mut only, mut exclude, mut rest) = (Vec::new(), Vec::new(), Vec::new());
    let mut target: Option<&mut Vec<String>> = None;
    for arg in args {
        match arg.as_str() {
            "--only" => target = Some(&mut only),
            "--exclude" => target = Some(&mut exclude),
            a if a.starts_with('-') => {
                target = None;
                rest.push(arg.clone());
            }
            _ => match target.as_deref_mut() {
                Some(list) => list.push(arg.clone()),
                None => rest.push(arg.clone()),
            },
        }
    }
    (only, exclude, rest)
}

fn run_supervise(
    launcher: &mut Launcher<'_>,
    name: &str,
    sup: &Supervise,
    args: &[String],
) -> Result<i32, CommandError> {
    let (only, exclude, rest) = split_selection(args);
    let mut extra_env = Vec::new();
    match &sup.options {
        Some(usage) => extra_env = options::parse(usage, name, &rest)?,
        None if !rest.is_empty() => {
            return Err(CommandError::Arguments(format!(
                "Usage: vagga {name} [--only <name_or_tag>...] [--exclude <name_or_tag>...]"
            )));
        }
        None => {}
    }
    let selected: Vec<(&String, &Command)> = sup
        .children
        .iter()
        .filter_map(|(child, def)| match &def.value {
            ChildCommand::Command(c) => Some((child, c.as_ref())),
            ChildCommand::BridgeCommand(_) => None,
        })
        .filter(|(child, c)| {
            let hit = |list: &[String]| list.iter().any(|x| x == *child || c.tags.contains(x));
            (only.is_empty() || hit(&only)) && !hit(&exclude)
        })
        .collect();
    for (_, c) in &selected {
        launcher
            .builder
            .ensure(&c.container.value, launcher.options.build_mode())
            .map_err(LaunchError::from)?;
    }
    if sup.isolate_network || launcher.options.isolate_network {
        let caller = &launcher.project.caller;
        // An ordinary user may not join a network namespace of its own user namespace: the
        // group's belongs to a user namespace made with it, which the children nest in.
        let made = if caller.is_root() {
            isolation::NetworkNamespace::new()
        } else {
            isolation::NetworkNamespace::with_user_namespace(crate::idmap::group_namespace(caller))
        };
        match made {
            Ok(ns) => launcher.shared_network = Some(ns),
            Err(e) => tracing::warn!(
                "{name}: children get a network namespace each, not a shared one: {e}"
            ),
        }
    }
    let code = supervise_children(launcher, sup, &selected, &extra_env);
    launcher.shared_network = None;
    code
}

fn supervise_children(
    launcher: &mut Launcher<'_>,
    sup: &Supervise,
    selected: &[(&String, &Command)],
    extra_env: &[(String, String)],
) -> Result<i32, CommandError> {
    banner(sup.banner.as_deref(), sup.banner_delay);
    let mut running: Vec<(String, Child, Cleanup)> = Vec::new();
    let mut result: Option<i32> = None;
    for (child_name, cmd) in selected {
        let container = &launcher.project.config.containers[&cmd.container.value].def;
        let inv = Invocation {
            container: &cmd.container.value,
            argv: command_argv(&container.default_shell, cmd, &[], false),
            command: Some(cmd),
            extra_env: extra_env.to_vec(),
            writable_copy: false,
            isolate_network: sup.isolate_network || cmd.isolate_network,
        };
        match launcher.start(&inv, &[]) {
            Ok((child, cleanup)) => running.push((child_name.to_string(), child, cleanup)),
            Err(e) => {
                stop_all(&mut running, sup.kill_unresponsive_after);
                for (_, _, c) in running {
                    launcher.cleanup(c);
                }
                return Err(e.into());
            }
        }
    }
    let forwarder =
        crate::signals::Forwarder::start_many(running.iter().map(|(_, c, _)| c.pid()).collect());
    let mut finished = Vec::new();
    while !running.is_empty() {
        let exited = wait_any(&mut running);
        for (child_name, code, cleanup) in exited {
            launcher.cleanup(cleanup);
            finished.push(child_name.clone());
            let stop = match sup.mode {
                SuperviseMode::StopOnFailure => true,
                SuperviseMode::WaitAllSuccessful => code != 0,
                SuperviseMode::WaitAll => false,
            };
            if stop && result.is_none() {
                result = Some(code);
                stop_all(&mut running, sup.kill_unresponsive_after);
            } else if code != 0 && result.is_none() {
                result = Some(code);
            }
        }
    }
    drop(forwarder);
    let code = result.unwrap_or(0);
    if code == 0 {
        banner(sup.epilog.as_deref(), None);
    }
    Ok(code)
}

/// Waits until at least one child ends; returns those that did with their codes.
fn wait_any(running: &mut Vec<(String, Child, Cleanup)>) -> Vec<(String, i32, Cleanup)> {
    let pidfds: Vec<_> = running.iter().map(|(_, c, _)| c.pidfd()).collect();
    let _ = isolation::poll::ready(&pidfds, Some(Duration::from_secs(1)));
    let mut done = Vec::new();
    let mut i = 0;
    while i < running.len() {
        match running[i].1.try_wait() {
            Ok(Some(status)) => {
                let (name, _, cleanup) = running.remove(i);
                done.push((name, exit_code(status), cleanup));
            }
            Ok(None) => i += 1,
            Err(_) => {
                let (name, _, cleanup) = running.remove(i);
                done.push((name, 1, cleanup));
            }
        }
    }
    done
}

/// SIGTERM to every child, then SIGKILL to those still running after `grace` seconds.
fn stop_all(running: &mut [(String, Child, Cleanup)], grace: f64) {
    for (_, child, _) in running.iter() {
        let _ = child.signal(Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs_f64(grace.max(0.0));
    while Instant::now() < deadline {
        if running
            .iter_mut()
            .all(|(_, c, _)| matches!(c.try_wait(), Ok(Some(_)) | Err(_)))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (_, child, _) in running.iter() {
        let _ = child.signal(Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_flags_take_following_words() {
        let args: Vec<String> = ["--only", "first", "a", "--exclude", "b", "-v"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (only, exclude, rest) = split_selection(&args);
        assert_eq!(only, ["first", "a"]);
        assert_eq!(exclude, ["b"]);
        assert_eq!(rest, ["-v"]);
    }
}
