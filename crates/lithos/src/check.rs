//! `lithos_check`: every config check, without running anything. The same resolution the
//! tree uses, with sandbox ceilings reported as errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::{self, Master, VariableType};
use crate::instance::{self, Sandbox, expand};
use crate::yaml::ConfigError;

/// What a check found: errors fail it, notes are printed with `-v`.
#[derive(Debug, Default)]
pub struct Report {
    pub errors: Vec<ConfigError>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Checks one sandbox with its processes file (or `processes` instead of its own).
pub fn sandbox(master: &Master, name: &str, processes: Option<&Path>, report: &mut Report) {
    let sbx = match Sandbox::load(master, name) {
        Ok(s) => s,
        Err(e) => {
            report.errors.push(e);
            return;
        }
    };
    let path = processes
        .map(Path::to_path_buf)
        .unwrap_or_else(|| sbx.processes_path.clone());
    if !path.exists() && processes.is_none() {
        report.notes.push(format!(
            "sandbox {name}: no processes file {}",
            path.display()
        ));
        return;
    }
    match instance::resolve_processes(master, &sbx, &path, None) {
        Ok(resolved) => {
            for rejected in resolved.rejected.into_values() {
                report.errors.extend(rejected.errors);
            }
            // Asking more than the sandbox allows is an error here; the tree clamps it.
            report.errors.extend(resolved.warnings);
            for (entry, plan) in resolved.entries {
                report.notes.push(format!(
                    "ok {name}/{entry}: image {}, {} instance(s)",
                    plan.image, plan.instances
                ));
            }
        }
        Err(e) => report.errors.push(e),
    }
}

/// Checks the host and every sandbox (or one, with an alternate processes file).
pub fn all(master: &Master, only: Option<(&str, Option<&Path>)>, report: &mut Report) {
    let hostname = isolation::host::name()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    if std::net::ToSocketAddrs::to_socket_addrs(&(hostname.as_str(), 0)).is_err() {
        report.errors.push(ConfigError::whole_file(
            &master.path,
            format!("hostname {hostname:?} does not resolve"),
        ));
    }
    if !master.devfs_dir.is_dir() {
        report.notes.push(format!(
            "devfs-dir {} does not exist (not needed: containers get a minimal /dev)",
            master.devfs_dir.display()
        ));
    }
    if master.cgroup_name.is_none() {
        report.notes.push(
            "warning: cgroup-name is null: knots stay in the tree's cgroup, so surviving a crash \
             of the tree needs the service manager not to kill it (systemd KillMode=process)"
                .into(),
        );
    }
    if let Ok(exe) = std::env::current_exe() {
        let knot = exe.with_file_name("lithos_knot");
        if !knot.exists() {
            report.errors.push(ConfigError::whole_file(
                &master.path,
                format!("{} not found", knot.display()),
            ));
        }
    }
    match only {
        Some((name, processes)) => sandbox(master, name, processes, report),
        None => match master.sandbox_names() {
            Ok(names) => {
                for name in names {
                    sandbox(master, &name, None, report);
                }
            }
            Err(e) => report.errors.push(ConfigError::whole_file(
                &master.sandboxes_dir,
                format!("read {}: {e}", master.sandboxes_dir.display()),
            )),
        },
    }
}

/// Offline check of a container config (for CI): what can be known without a sandbox.
pub fn container(path: &Path, report: &mut Report) {
    let (c, source) = match config::load_container(path) {
        Ok(v) => v,
        Err(e) => {
            report.errors.push(e);
            return;
        }
    };
    let mut err = |keys: &[&str], m: String| report.errors.push(source.error_at(keys, m));
    if !c.executable.starts_with('/') {
        err(
            &["executable"],
            "executable must be an absolute path".into(),
        );
    }
    if !c.workdir.is_absolute() {
        err(&["workdir"], "workdir must be an absolute path".into());
    }
    for (key, present) in [
        ("secret-environ", c.secret_environ.is_some()),
        ("secret-environ-file", c.secret_environ_file.is_some()),
        ("readiness", c.readiness.is_some()),
    ] {
        if present {
            err(&[key], format!("{key} is not supported in this release"));
        }
    }
    let mut findings = instance::Findings::default();
    instance::check_expansions(&c, &source, &BTreeMap::new(), &mut findings);
    report.errors.extend(findings.errors);
    let mut err = |keys: &[&str], m: String| report.errors.push(source.error_at(keys, m));
    let mut vars: BTreeMap<String, String> = c
        .variables
        .keys()
        .map(|name| (name.clone(), "1".to_owned()))
        .collect();
    vars.insert("lithos:name".into(), "sbx/proc.0".into());
    for key in c.tcp_ports.keys() {
        match expand(&key.0, &vars) {
            Ok(p) if p.parse::<u16>().is_ok_and(|p| p > 0) => {}
            Ok(p) => err(
                &["tcp-ports", &key.0],
                format!("tcp-ports key {p:?} is not a port number"),
            ),
            Err(m) => err(&["tcp-ports", &key.0], m),
        }
    }
    let activated = c
        .variables
        .values()
        .filter(|t| matches!(t, VariableType::TcpPort(v) if v.activation.is_some()))
        .count() as i32;
    for (key, port) in &c.tcp_ports {
        if (3..3 + activated).contains(&port.fd) {
            err(
                &["tcp-ports", &key.0],
                format!(
                    "fd {} clashes with the fds of systemd-activated variables",
                    port.fd
                ),
            );
        }
    }
    if activated > 0 {
        for var in ["LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID"] {
            if c.environ.contains_key(var) {
                err(
                    &["environ", var],
                    format!("{var} clashes with systemd activation"),
                );
            }
        }
    }
    if report.errors.is_empty() {
        report.notes.push(format!("ok {}", path.display()));
    }
}

/// Default master path of every tool.
pub fn default_master() -> PathBuf {
    PathBuf::from("/etc/lithos/master.yaml")
}
