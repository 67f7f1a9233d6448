//! The `cantal` command: dump a process's metric files, list peers, join, status.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libcantal::format::name_to_json;
use serde_json::{Value as Json, json};

use crate::app_metrics::{AppFileError, AppReader, AppSource};
use crate::client::{ClientError, HttpClient};
use crate::processes::Environment;

/// Calls to the agent give up after this.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(5);

/// A failed command, naming what it failed on.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("process {pid}")]
    Process { pid: i32, source: std::io::Error },
    #[error(transparent)]
    Files(#[from] AppFileError),
    #[error(transparent)]
    Agent(#[from] ClientError),
    #[error("{url}: {status}: {body}")]
    AgentRefused {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url}: unexpected reply: {reason}")]
    BadReply { url: String, reason: String },
}

/// Where process `pid` publishes: its `CANTAL_PATH`, else the writers' fallback path.
pub fn process_source(pid: i32) -> Result<AppSource, CliError> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let err = |source| CliError::Process { pid, source };
    let environ = std::fs::read(dir.join("environ")).map_err(err)?;
    if let Some(source) = Environment::parse(&environ).app {
        return Ok(source);
    }
    let var = |name: &str| {
        environ.split(|&b| b == 0).find_map(|entry| {
            let value = entry.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
            Some(PathBuf::from(OsStr::from_bytes(value)))
        })
    };
    let uid = std::fs::metadata(&dir).map_err(err)?.uid();
    let temp = var("TMPDIR").unwrap_or_else(|| PathBuf::from("/tmp"));
    let pid_u32 = u32::try_from(pid).unwrap_or_default();
    Ok(AppSource {
        path: libcantal::fallback_path(var("XDG_RUNTIME_DIR").as_deref(), &temp, uid, pid_u32),
        appname: None,
    })
}

/// Lines `PREFIX: {json} Value` for every metric of the file pair at `path` under `root`.
pub fn dump(root: &Path, source: &AppSource, prefix: &str) -> Result<Vec<String>, CliError> {
    let mut reader = AppReader::new();
    reader.begin_scan();
    let values = reader.read(root, source)?;
    Ok(values
        .iter()
        .map(|(name, value)| format!("{prefix}: {} {value}", name_to_json(name)))
        .collect())
}

/// `cantal dump PID`.
pub fn dump_pid(pid: i32) -> Result<Vec<String>, CliError> {
    let source = process_source(pid)?;
    dump(
        Path::new(&format!("/proc/{pid}/root")),
        &source,
        &pid.to_string(),
    )
}

/// `cantal dump --path BASE`.
pub fn dump_path(path: &Path) -> Result<Vec<String>, CliError> {
    let source = AppSource {
        path: path.to_owned(),
        appname: None,
    };
    dump(Path::new("/"), &source, &path.display().to_string())
}

async fn get_json(agent: &str, path: &str) -> Result<Json, CliError> {
    let url = format!("{}{path}", agent.trim_end_matches('/'));
    let (status, body) = HttpClient::new().get(&url, AGENT_TIMEOUT).await?;
    parse_reply(&url, status.as_u16(), &body)
}

fn parse_reply(url: &str, status: u16, body: &[u8]) -> Result<Json, CliError> {
    if !(200..300).contains(&status) {
        return Err(CliError::AgentRefused {
            url: url.to_owned(),
            status,
            body: String::from_utf8_lossy(body).into_owned(),
        });
    }
    serde_json::from_slice(body).map_err(|e| CliError::BadReply {
        url: url.to_owned(),
        reason: e.to_string(),
    })
}

/// `cantal join HOST:PORT`: asks the agent to join through that address.
pub async fn join(agent: &str, addr: &str) -> Result<String, CliError> {
    let url = format!("{}/add_host.json", agent.trim_end_matches('/'));
    let body = json!({ "addr": addr }).to_string();
    let (status, reply) = HttpClient::new()
        .post(&url, "application/json", body, AGENT_TIMEOUT)
        .await?;
    parse_reply(&url, status.as_u16(), &reply)?;
    Ok(format!("joining through {addr}"))
}

/// `cantal peers`: a table, or the agent's JSON with `json`.
pub async fn peers(agent: &str, json: bool) -> Result<String, CliError> {
    let reply = get_json(agent, "/all_peers.json").await?;
    if json {
        return Ok(serde_json::to_string_pretty(&reply).unwrap_or_default());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut out = format!(
        "{:<32}  {:<16}  {:<22}  {:<8}  {:<10}  {}\n",
        "ID", "NAME", "ADDRESS", "STATE", "SINCE", "RTT"
    );
    for peer in reply["peers"].as_array().into_iter().flatten() {
        let since = peer["state_since"]
            .as_u64()
            .map(|t| {
                humantime::format_duration(Duration::from_secs(now.saturating_sub(t) / 1000))
                    .to_string()
            })
            .unwrap_or_default();
        let rtt = peer["last_roundtrip"][2]
            .as_u64()
            .map(|ms| format!("{ms} ms"))
            .unwrap_or_else(|| "-".to_owned());
        out.push_str(&format!(
            "{:<32}  {:<16}  {:<22}  {:<8}  {:<10}  {}\n",
            peer["id"].as_str().unwrap_or_default(),
            peer["name"].as_str().unwrap_or("-"),
            peer["primary_addr"].as_str().unwrap_or_default(),
            peer["state"].as_str().unwrap_or_default(),
            since,
            rtt,
        ));
    }
    Ok(out)
}

/// `cantal status`: a short summary of `/status.json`.
pub async fn status(agent: &str) -> Result<String, CliError> {
    let s = get_json(agent, "/status.json").await?;
    Ok(format!(
        "cantal-agent {} on {} (node {}, id {})\ncluster: {}\npeers: {} (alive {}, suspect {}, dead {})\nlast scan: {} ms\n{}",
        s["version"].as_str().unwrap_or_default(),
        s["hostname"].as_str().unwrap_or_default(),
        s["name"].as_str().unwrap_or_default(),
        s["id"].as_str().unwrap_or_default(),
        s["cluster_name"].as_str().unwrap_or("(gossip off)"),
        s["num_peers"],
        s["num_alive"],
        s["num_suspect"],
        s["num_dead"],
        s["scan_duration"],
        match s["machine_id_conflict"].as_object() {
            Some(c) => format!(
                "machine id conflict with {}\n",
                c.get("addr").and_then(Json::as_str).unwrap_or_default()
            ),
            None => String::new(),
        },
    ))
}
