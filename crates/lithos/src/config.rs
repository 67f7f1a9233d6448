//! The four config files as written: master.yaml, sandboxes/NAME.yaml, processes/NAME.yaml
//! and the container config inside an image. Keys are kebab-case with snake_case aliases;
//! unknown keys are errors. Validation into what runs is in `instance.rs`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use crate::units::{Mode, Ranges, Scalar, Seconds, Size};
use crate::yaml::{ConfigError, Source, TopLevel};

fn default_true() -> bool {
    true
}

/// `cgroup-version` in master.yaml.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersionSetting {
    #[default]
    Auto,
    V1,
    V2,
}

/// master.yaml as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MasterFile {
    #[serde(alias = "sandboxes_dir")]
    pub sandboxes_dir: Option<PathBuf>,
    #[serde(alias = "processes_dir")]
    pub processes_dir: Option<PathBuf>,
    #[serde(alias = "runtime_dir")]
    pub runtime_dir: Option<PathBuf>,
    #[serde(alias = "state_dir")]
    pub state_dir: Option<PathBuf>,
    #[serde(alias = "mount_dir")]
    pub mount_dir: Option<PathBuf>,
    #[serde(alias = "devfs_dir")]
    pub devfs_dir: Option<PathBuf>,
    #[serde(alias = "cgroup_name", default = "default_cgroup_name")]
    pub cgroup_name: Option<String>,
    #[serde(alias = "cgroup_controllers", default)]
    pub cgroup_controllers: Vec<String>,
    #[serde(alias = "cgroup_version", default)]
    pub cgroup_version: CgroupVersionSetting,
    #[serde(alias = "default_log_dir")]
    pub default_log_dir: Option<PathBuf>,
    #[serde(alias = "log_file")]
    pub log_file: Option<PathBuf>,
    #[serde(alias = "log_level")]
    pub log_level: Option<String>,
    #[serde(alias = "config_log_dir", default = "default_config_log_dir")]
    pub config_log_dir: Option<PathBuf>,
    #[serde(alias = "stdio_log_dir")]
    pub stdio_log_dir: Option<PathBuf>,
    #[serde(alias = "syslog_facility")]
    pub syslog_facility: Option<String>,
    #[serde(
        alias = "syslog_app_name",
        alias = "syslog-name",
        alias = "syslog_name"
    )]
    pub syslog_app_name: Option<String>,
    #[serde(alias = "control_socket")]
    pub control_socket: Option<PathBuf>,
}

fn default_cgroup_name() -> Option<String> {
    Some("lithos.slice".into())
}

fn default_config_log_dir() -> Option<PathBuf> {
    Some("/var/log/lithos/config".into())
}

/// The v1 controllers joined when `cgroup-controllers` is empty; `name` is the named
/// hierarchy (`name=systemd`).
pub const DEFAULT_CGROUP_CONTROLLERS: &[&str] =
    &["name", "cpu", "cpuacct", "memory", "blkio", "pids"];

/// master.yaml with every path made absolute and every default filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Master {
    pub path: PathBuf,
    pub sandboxes_dir: PathBuf,
    pub processes_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub state_dir: PathBuf,
    pub mount_dir: PathBuf,
    pub devfs_dir: PathBuf,
    pub cgroup_name: Option<String>,
    pub cgroup_controllers: Vec<String>,
    pub cgroup_version: CgroupVersionSetting,
    pub default_log_dir: PathBuf,
    pub log_file: PathBuf,
    pub log_level: String,
    pub config_log_dir: Option<PathBuf>,
    pub stdio_log_dir: PathBuf,
    pub syslog_facility: Option<String>,
    pub syslog_app_name: String,
    pub control_socket: PathBuf,
}

fn absolute_or_error(source: &Source, key: &str, path: PathBuf) -> Result<PathBuf, ConfigError> {
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(source.error_at(&[key], format!("{key} must be an absolute path")))
    }
}

impl Master {
    /// Reads and validates master.yaml (it must exist; it may be empty).
    pub fn load(path: &Path) -> Result<Master, ConfigError> {
        let source = Source::read(path)?;
        let file: MasterFile = source.parse(TopLevel::Settings)?;
        Master::from_file(&source, file)
    }

    fn from_file(source: &Source, f: MasterFile) -> Result<Master, ConfigError> {
        let path = if source.file.is_absolute() {
            source.file.clone()
        } else {
            std::env::current_dir()
                .map(|d| d.join(&source.file))
                .unwrap_or_else(|_| source.file.clone())
        };
        let base = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        let runtime_dir = absolute_or_error(
            source,
            "runtime-dir",
            f.runtime_dir.unwrap_or_else(|| "/run/lithos".into()),
        )?;
        let default_log_dir = absolute_or_error(
            source,
            "default-log-dir",
            f.default_log_dir
                .unwrap_or_else(|| "/var/log/lithos".into()),
        )?;
        if let Some(name) = &f.cgroup_name {
            let ok = Path::new(name)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
                && !name.is_empty();
            if !ok {
                return Err(source.error_at(
                    &["cgroup-name"],
                    format!("cgroup-name {name:?} must be a relative path without \"..\""),
                ));
            }
        }
        let level = f.log_level.unwrap_or_else(|| "warn".into());
        if !["error", "warn", "info", "debug", "trace"].contains(&level.as_str()) {
            return Err(source.error_at(
                &["log-level"],
                format!(
                    "log-level must be one of error, warn, info, debug, trace; found {level:?}"
                ),
            ));
        }
        let controllers = if f.cgroup_controllers.is_empty() {
            DEFAULT_CGROUP_CONTROLLERS
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            f.cgroup_controllers
        };
        let control_socket = f
            .control_socket
            .map(|p| runtime_dir.join(p))
            .unwrap_or_else(|| runtime_dir.join("control.sock"));
        Ok(Master {
            sandboxes_dir: base.join(f.sandboxes_dir.unwrap_or_else(|| "sandboxes".into())),
            processes_dir: base.join(f.processes_dir.unwrap_or_else(|| "processes".into())),
            state_dir: runtime_dir.join(f.state_dir.unwrap_or_else(|| "state".into())),
            mount_dir: runtime_dir.join(f.mount_dir.unwrap_or_else(|| "mnt".into())),
            devfs_dir: f.devfs_dir.unwrap_or_else(|| "/var/lib/lithos/dev".into()),
            cgroup_name: f.cgroup_name,
            cgroup_controllers: controllers,
            cgroup_version: f.cgroup_version,
            log_file: default_log_dir.join(f.log_file.unwrap_or_else(|| "master.log".into())),
            log_level: level,
            config_log_dir: f.config_log_dir.map(|d| default_log_dir.join(d)),
            stdio_log_dir: default_log_dir.join(f.stdio_log_dir.unwrap_or_else(|| "stderr".into())),
            syslog_facility: f.syslog_facility,
            syslog_app_name: f.syslog_app_name.unwrap_or_else(|| "lithos".into()),
            control_socket,
            default_log_dir,
            runtime_dir,
            path,
        })
    }

    pub fn pid_file(&self) -> PathBuf {
        self.runtime_dir.join("master.pid")
    }

    /// Where the knots tell the tree what happened (unix datagrams).
    pub fn notify_socket(&self) -> PathBuf {
        self.runtime_dir.join("knots.sock")
    }

    pub fn metrics_path(&self) -> PathBuf {
        self.runtime_dir.join("metrics").join("lithos")
    }

    pub fn sandbox_file(&self, sandbox: &str) -> PathBuf {
        self.sandboxes_dir.join(format!("{sandbox}.yaml"))
    }

    /// Names of the sandboxes: `*.yaml` in sandboxes-dir, sorted.
    pub fn sandbox_names(&self) -> std::io::Result<Vec<String>> {
        let mut names = Vec::new();
        let entries = match std::fs::read_dir(&self.sandboxes_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(".yaml")
                && !stem.starts_with('.')
            {
                names.push(stem.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }
}

/// One `{inside, outside, count}` line of a uid or gid map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdMapping {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// `bridged-network` (LATER: parsed and validated, instances needing it are not started).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BridgedNetwork {
    pub bridge: String,
    pub network: String,
    #[serde(alias = "default_gateway")]
    pub default_gateway: Option<IpAddr>,
    #[serde(alias = "after_setup_command", default)]
    pub after_setup_command: Vec<String>,
}

/// sandboxes/NAME.yaml as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SandboxFile {
    #[serde(alias = "config_file")]
    pub config_file: Option<PathBuf>,
    #[serde(alias = "image_dir")]
    pub image_dir: PathBuf,
    #[serde(alias = "image_dir_levels", default = "one")]
    pub image_dir_levels: u32,
    #[serde(alias = "log_file")]
    pub log_file: Option<PathBuf>,
    #[serde(alias = "log_level")]
    pub log_level: Option<String>,
    #[serde(alias = "readonly_paths", default)]
    pub readonly_paths: BTreeMap<PathBuf, PathBuf>,
    #[serde(alias = "writable_paths", default)]
    pub writable_paths: BTreeMap<PathBuf, PathBuf>,
    #[serde(alias = "allow_users", default)]
    pub allow_users: Ranges,
    #[serde(alias = "allow_groups", default)]
    pub allow_groups: Ranges,
    #[serde(alias = "default_user")]
    pub default_user: Option<u32>,
    #[serde(alias = "default_group", default)]
    pub default_group: u32,
    #[serde(alias = "uid_map", default)]
    pub uid_map: Vec<IdMapping>,
    #[serde(alias = "gid_map", default)]
    pub gid_map: Vec<IdMapping>,
    #[serde(alias = "allow_tcp_ports", default)]
    pub allow_tcp_ports: Ranges,
    #[serde(alias = "additional_hosts", default)]
    pub additional_hosts: BTreeMap<String, IpAddr>,
    #[serde(alias = "resolv_conf", default = "default_resolv_conf")]
    pub resolv_conf: PathBuf,
    #[serde(alias = "hosts_file", default = "default_hosts_file")]
    pub hosts_file: PathBuf,
    #[serde(alias = "used_images_list")]
    pub used_images_list: Option<PathBuf>,
    #[serde(alias = "auto_clean", default = "default_true")]
    pub auto_clean: bool,
    #[serde(alias = "total_memory_limit")]
    pub total_memory_limit: Option<Size>,
    #[serde(alias = "total_cpu_limit")]
    pub total_cpu_limit: Option<f64>,
    #[serde(alias = "total_pids_limit")]
    pub total_pids_limit: Option<u64>,
    #[serde(alias = "max_memory_limit")]
    pub max_memory_limit: Option<Size>,
    #[serde(alias = "max_cpu_limit")]
    pub max_cpu_limit: Option<f64>,
    #[serde(alias = "max_pids_limit")]
    pub max_pids_limit: Option<u64>,
    #[serde(alias = "max_fileno_limit")]
    pub max_fileno_limit: Option<u64>,
    #[serde(alias = "allow_capabilities")]
    pub allow_capabilities: Option<Vec<String>>,
    #[serde(alias = "no_new_privileges", default = "default_true")]
    pub no_new_privileges: bool,
    #[serde(alias = "bridged_network")]
    pub bridged_network: Option<BridgedNetwork>,
    #[serde(alias = "secrets_private_key")]
    pub secrets_private_key: Option<PathBuf>,
    #[serde(alias = "secrets_namespaces")]
    pub secrets_namespaces: Option<Vec<String>>,
}

fn one() -> u32 {
    1
}

fn default_resolv_conf() -> PathBuf {
    "/etc/resolv.conf".into()
}

fn default_hosts_file() -> PathBuf {
    "/etc/hosts".into()
}

/// `kind` of a processes entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum EntryKind {
    #[default]
    Daemon,
    Command,
}

/// One entry of processes/NAME.yaml.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProcessEntry {
    #[serde(default)]
    pub kind: EntryKind,
    pub image: String,
    pub config: PathBuf,
    #[serde(default = "one")]
    pub instances: u32,
    #[serde(default)]
    pub variables: BTreeMap<String, Scalar>,
    #[serde(alias = "ip_addresses", default)]
    pub ip_addresses: Vec<IpAddr>,
    #[serde(alias = "extra_secrets_namespaces", default)]
    pub extra_secrets_namespaces: Vec<String>,
}

/// processes/NAME.yaml: entry name to entry.
pub type ProcessesFile = BTreeMap<String, ProcessEntry>;

/// `kind` in a container config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ContainerKind {
    #[default]
    Daemon,
    Command,
    CommandOrDaemon,
}

impl ContainerKind {
    pub fn allows(self, entry: EntryKind) -> bool {
        matches!(
            (self, entry),
            (ContainerKind::CommandOrDaemon, _)
                | (ContainerKind::Daemon, EntryKind::Daemon)
                | (ContainerKind::Command, EntryKind::Command)
        )
    }
}

/// `!Persistent` volume options.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistentVolume {
    pub path: PathBuf,
    #[serde(default)]
    pub mkdir: bool,
    #[serde(default = "default_dir_mode")]
    pub mode: Mode,
    #[serde(default)]
    pub user: u32,
    #[serde(default)]
    pub group: u32,
}

fn default_dir_mode() -> Mode {
    Mode(0o700)
}

/// `!Tmpfs` volume options.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TmpfsVolume {
    pub size: Option<Size>,
    pub mode: Option<Mode>,
}

/// `!Statedir` volume options.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatedirVolume {
    #[serde(default = "root_path")]
    pub path: PathBuf,
    #[serde(default = "default_dir_mode")]
    pub mode: Mode,
    #[serde(default)]
    pub user: u32,
    #[serde(default)]
    pub group: u32,
}

fn root_path() -> PathBuf {
    "/".into()
}

/// A volume: `!Readonly /virt`, `!Persistent /virt` or `{path, mkdir, mode, user, group}`,
/// `!Tmpfs {size, mode}`, `!Statedir {path, mode, user, group}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub enum Volume {
    Readonly(PathBuf),
    Persistent(#[serde(deserialize_with = "persistent")] PersistentVolume),
    Tmpfs(#[serde(deserialize_with = "tmpfs")] TmpfsVolume),
    Statedir(#[serde(deserialize_with = "statedir")] StatedirVolume),
}

fn persistent<'de, D: Deserializer<'de>>(d: D) -> Result<PersistentVolume, D::Error> {
    match serde_yaml::Value::deserialize(d)? {
        serde_yaml::Value::String(path) => Ok(PersistentVolume {
            path: path.into(),
            mkdir: false,
            mode: default_dir_mode(),
            user: 0,
            group: 0,
        }),
        other => serde_yaml::from_value(other).map_err(de::Error::custom),
    }
}

fn or_default<'de, D: Deserializer<'de>, T: Default + de::DeserializeOwned>(
    d: D,
) -> Result<T, D::Error> {
    let value = serde_yaml::Value::deserialize(d)?;
    if value.is_null() {
        return Ok(T::default());
    }
    serde_yaml::from_value(value).map_err(de::Error::custom)
}

fn tmpfs<'de, D: Deserializer<'de>>(d: D) -> Result<TmpfsVolume, D::Error> {
    or_default(d)
}

impl Default for StatedirVolume {
    fn default() -> Self {
        StatedirVolume {
            path: root_path(),
            mode: default_dir_mode(),
            user: 0,
            group: 0,
        }
    }
}

fn statedir<'de, D: Deserializer<'de>>(d: D) -> Result<StatedirVolume, D::Error> {
    or_default(d)
}

/// `activation` of a `!TcpPort` variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Systemd,
}

/// Options of a `!TcpPort` variable.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpPortVariable {
    pub activation: Option<Activation>,
}

/// A declared variable: `!TcpPort`, `!Name`, `!DottedName`, `!Choice [a, b]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub enum VariableType {
    TcpPort(#[serde(deserialize_with = "tcp_port_variable")] TcpPortVariable),
    Name(#[serde(deserialize_with = "nothing")] ()),
    DottedName(#[serde(deserialize_with = "nothing")] ()),
    Choice(Vec<String>),
}

fn tcp_port_variable<'de, D: Deserializer<'de>>(d: D) -> Result<TcpPortVariable, D::Error> {
    or_default(d)
}

fn nothing<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
    let value = serde_yaml::Value::deserialize(d)?;
    if value.is_null() {
        Ok(())
    } else {
        Err(de::Error::custom("this variable type takes no parameters"))
    }
}

/// One `tcp-ports` socket.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TcpPortConfig {
    pub fd: i32,
    #[serde(default = "any_address")]
    pub host: IpAddr,
    #[serde(alias = "listen_backlog", default = "default_backlog")]
    pub listen_backlog: u32,
    #[serde(alias = "reuse_addr", default = "default_true")]
    pub reuse_addr: bool,
    #[serde(alias = "reuse_port", default)]
    pub reuse_port: bool,
    #[serde(alias = "set_non_block", default)]
    pub set_non_block: bool,
    #[serde(default)]
    pub external: bool,
}

fn any_address() -> IpAddr {
    IpAddr::from([0, 0, 0, 0])
}

fn default_backlog() -> u32 {
    128
}

/// `mount` of resolv-conf and hosts-file: `auto` (when the image has a regular file there),
/// `true` or `false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MountFile {
    #[default]
    Auto,
    Always,
    Never,
}

impl Serialize for MountFile {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MountFile::Auto => s.serialize_str("auto"),
            MountFile::Always => s.serialize_bool(true),
            MountFile::Never => s.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for MountFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MountFile, D::Error> {
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::Bool(true) => Ok(MountFile::Always),
            serde_yaml::Value::Bool(false) => Ok(MountFile::Never),
            serde_yaml::Value::Null => Ok(MountFile::Auto),
            serde_yaml::Value::String(s) if s == "auto" => Ok(MountFile::Auto),
            other => Err(de::Error::custom(format!(
                "expected auto, true or false, found {other:?}"
            ))),
        }
    }
}

/// `resolv-conf` in a container config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ResolvConfSettings {
    #[serde(default)]
    pub mount: MountFile,
    #[serde(alias = "copy_from_host", default = "default_true")]
    pub copy_from_host: bool,
}

impl Default for ResolvConfSettings {
    fn default() -> Self {
        ResolvConfSettings {
            mount: MountFile::Auto,
            copy_from_host: true,
        }
    }
}

/// `hosts-file` in a container config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HostsFileSettings {
    #[serde(default)]
    pub mount: MountFile,
    #[serde(alias = "copy_from_host", default = "default_true")]
    pub copy_from_host: bool,
    pub localhost: Option<bool>,
    #[serde(alias = "public_hostname")]
    pub public_hostname: Option<bool>,
}

impl Default for HostsFileSettings {
    fn default() -> Self {
        HostsFileSettings {
            mount: MountFile::Auto,
            copy_from_host: true,
            localhost: None,
            public_hostname: None,
        }
    }
}

/// `restart-backoff` (§3.5).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RestartBackoff {
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    #[serde(alias = "max_delay", default = "default_thirty")]
    pub max_delay: Seconds,
    #[serde(alias = "reset_after", default = "default_thirty")]
    pub reset_after: Seconds,
    #[serde(alias = "give_up_after", default)]
    pub give_up_after: Option<u32>,
}

fn default_multiplier() -> f64 {
    2.0
}

fn default_thirty() -> Seconds {
    Seconds(30.0)
}

impl Default for RestartBackoff {
    fn default() -> Self {
        RestartBackoff {
            multiplier: default_multiplier(),
            max_delay: default_thirty(),
            reset_after: default_thirty(),
            give_up_after: None,
        }
    }
}

/// The container config inside an image.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ContainerFile {
    #[serde(default)]
    pub kind: ContainerKind,
    pub executable: String,
    #[serde(default)]
    pub arguments: Vec<Scalar>,
    #[serde(default = "root_path")]
    pub workdir: PathBuf,
    #[serde(default)]
    pub environ: BTreeMap<String, Scalar>,
    #[serde(alias = "user_id")]
    pub user_id: Option<u32>,
    #[serde(alias = "group_id")]
    pub group_id: Option<u32>,
    #[serde(alias = "uid_map", default)]
    pub uid_map: Vec<IdMapping>,
    #[serde(alias = "gid_map", default)]
    pub gid_map: Vec<IdMapping>,
    #[serde(alias = "memory_limit")]
    pub memory_limit: Option<Size>,
    #[serde(alias = "cpu_shares", default = "default_cpu_shares")]
    pub cpu_shares: u64,
    #[serde(alias = "cpu_limit")]
    pub cpu_limit: Option<f64>,
    #[serde(alias = "pids_limit")]
    pub pids_limit: Option<u64>,
    #[serde(alias = "fileno_limit", default = "default_fileno")]
    pub fileno_limit: u64,
    #[serde(alias = "restart_timeout", default = "default_restart_timeout")]
    pub restart_timeout: Seconds,
    #[serde(alias = "restart_backoff", default)]
    pub restart_backoff: RestartBackoff,
    #[serde(alias = "kill_timeout", default = "default_kill_timeout")]
    pub kill_timeout: Seconds,
    #[serde(default)]
    pub volumes: BTreeMap<PathBuf, Volume>,
    #[serde(alias = "tcp_ports", default)]
    pub tcp_ports: BTreeMap<Scalar, TcpPortConfig>,
    #[serde(default)]
    pub variables: BTreeMap<String, VariableType>,
    #[serde(default)]
    pub metadata: serde_yaml::Value,
    #[serde(alias = "resolv_conf", default)]
    pub resolv_conf: ResolvConfSettings,
    #[serde(alias = "hosts_file", default)]
    pub hosts_file: HostsFileSettings,
    #[serde(alias = "stdout_stderr_file")]
    pub stdout_stderr_file: Option<PathBuf>,
    #[serde(default)]
    pub interactive: bool,
    #[serde(alias = "restart_process_only", default)]
    pub restart_process_only: bool,
    #[serde(alias = "normal_exit_codes", default)]
    pub normal_exit_codes: Vec<i32>,
    pub capabilities: Option<Vec<String>>,
    #[serde(alias = "secret_environ")]
    pub secret_environ: Option<BTreeMap<String, serde_yaml::Value>>,
    #[serde(alias = "secret_environ_file")]
    pub secret_environ_file: Option<PathBuf>,
    pub readiness: Option<serde_yaml::Value>,
}

fn default_cpu_shares() -> u64 {
    1024
}

fn default_fileno() -> u64 {
    1024
}

fn default_restart_timeout() -> Seconds {
    Seconds(1.0)
}

fn default_kill_timeout() -> Seconds {
    Seconds(5.0)
}

/// Reads a sandbox file.
pub fn load_sandbox(path: &Path) -> Result<(SandboxFile, Source), ConfigError> {
    let source = Source::read(path)?;
    let file = source.parse(TopLevel::Settings)?;
    Ok((file, source))
}

/// Reads a processes file.
pub fn load_processes(path: &Path) -> Result<(ProcessesFile, Source), ConfigError> {
    let source = Source::read(path)?;
    let file = source.parse(TopLevel::Entries)?;
    Ok((file, source))
}

/// Reads a container config.
pub fn load_container(path: &Path) -> Result<(ContainerFile, Source), ConfigError> {
    let source = Source::read(path)?;
    let file = source.parse(TopLevel::Settings)?;
    Ok((file, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(text: &str) -> ContainerFile {
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn volumes_of_every_kind_parse() {
        let c = container(
            "executable: /bin/sh\nvolumes:\n  /a: !Readonly /ro\n  /b: !Persistent /rw\n  \
             /c: !Persistent {path: /rw2, mkdir: true, mode: 0o755, user: 1}\n  \
             /d: !Tmpfs {size: 100Mi, mode: 0o766}\n  /e: !Statedir {}\n  /f: !Statedir\n  /g: !Tmpfs\n",
        );
        assert_eq!(c.volumes[Path::new("/a")], Volume::Readonly("/ro".into()));
        match &c.volumes[Path::new("/c")] {
            Volume::Persistent(p) => {
                assert!(p.mkdir);
                assert_eq!(p.mode, Mode(0o755));
                assert_eq!(p.user, 1);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            c.volumes[Path::new("/d")],
            Volume::Tmpfs(TmpfsVolume {
                size: Some(Size(100 << 20)),
                mode: Some(Mode(0o766))
            })
        );
        assert_eq!(
            c.volumes[Path::new("/f")],
            Volume::Statedir(StatedirVolume::default())
        );
    }

    #[test]
    fn variables_and_ports_parse_in_both_spellings() {
        let c = container(
            "executable: /bin/x\nvariables:\n  port: !TcpPort\n  sd: !TcpPort {activation: systemd}\n  \
             n: !Name\n  d: !DottedName\n  c: !Choice [a, b]\ntcp_ports:\n  8080: {fd: 3}\n  \"@{port}\": {fd: 4, reuse-port: true}\n\
             user_id: 1000\nkill-timeout: 3\n",
        );
        assert_eq!(
            c.variables["port"],
            VariableType::TcpPort(TcpPortVariable::default())
        );
        assert_eq!(
            c.variables["sd"],
            VariableType::TcpPort(TcpPortVariable {
                activation: Some(Activation::Systemd)
            })
        );
        assert_eq!(
            c.variables["c"],
            VariableType::Choice(vec!["a".into(), "b".into()])
        );
        assert_eq!(c.tcp_ports[&Scalar("8080".into())].fd, 3);
        assert!(c.tcp_ports[&Scalar("@{port}".into())].reuse_port);
        assert_eq!(c.user_id, Some(1000));
        assert_eq!(c.kill_timeout, Seconds(3.0));
    }

    #[test]
    fn mount_settings_round_trip_through_json() {
        for m in [MountFile::Auto, MountFile::Always, MountFile::Never] {
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(serde_json::from_str::<MountFile>(&json).unwrap(), m);
        }
    }

    #[test]
    fn unknown_volume_option_is_an_error() {
        let err = serde_yaml::from_str::<ContainerFile>(
            "executable: /x\nvolumes:\n  /b: !Persistent {path: /rw, mkdri: true}\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("mkdri"), "{err}");
    }

    #[test]
    fn master_defaults_and_null_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.yaml");
        std::fs::write(&path, "").unwrap();
        let m = Master::load(&path).unwrap();
        assert_eq!(m.runtime_dir, PathBuf::from("/run/lithos"));
        assert_eq!(m.state_dir, PathBuf::from("/run/lithos/state"));
        assert_eq!(m.sandboxes_dir, dir.path().join("sandboxes"));
        assert_eq!(m.cgroup_name.as_deref(), Some("lithos.slice"));
        assert_eq!(m.control_socket, PathBuf::from("/run/lithos/control.sock"));
        std::fs::write(
            &path,
            "cgroup-name: null\nconfig_log_dir: null\nruntime-dir: /tmp/x\n",
        )
        .unwrap();
        let m = Master::load(&path).unwrap();
        assert_eq!(m.cgroup_name, None);
        assert_eq!(m.config_log_dir, None);
        std::fs::write(&path, "runtime-dir: /tmp/x\nruntime-dri: 1\n").unwrap();
        let err = Master::load(&path).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("unknown key \"runtime-dri\""), "{err}");
    }
}
