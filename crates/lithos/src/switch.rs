//! `lithos_switch`: check a processes file, put it in place atomically, ask the tree to
//! reload (control socket; SIGQUIT to master.pid as the fallback).

use std::path::Path;

use protocol::pb::lithos as pb;

use crate::check;
use crate::config::Master;
use crate::instance::Sandbox;
use crate::yaml::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Rejected(Vec<ConfigError>),
    #[error("write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("the tree rejected the new config:\n{0}")]
    ReloadRejected(String),
}

/// How the tree learned about the new file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Switched {
    Reloaded,
    Signalled(i32),
    TreeNotRunning,
}

/// Checks `file` as the processes file of `sandbox`, then replaces the live one with it.
pub async fn switch(master: &Master, sandbox: &str, file: &Path) -> Result<Switched, SwitchError> {
    let mut report = check::Report::default();
    check::sandbox(master, sandbox, Some(file), &mut report);
    if !report.ok() {
        return Err(SwitchError::Rejected(report.errors));
    }
    let sbx = Sandbox::load(master, sandbox).map_err(|e| SwitchError::Rejected(vec![e]))?;
    let target = &sbx.processes_path;
    let data = std::fs::read(file).map_err(|source| SwitchError::Write {
        path: file.display().to_string(),
        source,
    })?;
    let dir = target.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".tmp.{sandbox}"));
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, &data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, target)
    };
    if let Err(source) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(SwitchError::Write {
            path: target.display().to_string(),
            source,
        });
    }
    if let Ok(channel) = protocol::unix::connect(&master.control_socket).await {
        let mut client = pb::control_client::ControlClient::new(channel);
        let request = pb::ReloadRequest {
            sandbox: Some(sandbox.to_owned()),
        };
        if let Ok(response) = client.reload(request).await {
            let response = response.into_inner();
            let errors: Vec<String> = response
                .rejected
                .iter()
                .flat_map(|r| r.errors.iter())
                .map(|e| format!("{}:{}:{}: {}", e.file, e.line, e.column, e.message))
                .collect();
            if !errors.is_empty() {
                return Err(SwitchError::ReloadRejected(errors.join("\n")));
            }
            return Ok(Switched::Reloaded);
        }
    }
    let pid = std::fs::read_to_string(master.pid_file())
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok());
    if let Some(pid) = pid
        && isolation::signal::send(pid, isolation::Signal::SIGQUIT).is_ok()
    {
        return Ok(Switched::Signalled(pid));
    }
    Ok(Switched::TreeNotRunning)
}
