//! Validation: a sandbox, a processes entry and the container config from its image become
//! [`InstanceConfig`]s, the complete description a knot runs (passed to it as JSON). Every
//! check of `lithos_check` happens here, so the tree, `lithos_switch`, `lithos_cmd` and
//! `lithos_check` agree; errors name file, line and column.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backoff::RestartPolicy;
use crate::config::{
    self, Activation, CgroupVersionSetting, ContainerFile, EntryKind, IdMapping, Master, MountFile,
    ProcessEntry, SandboxFile, VariableType, Volume,
};
use crate::units::{Ranges, Size};
use crate::yaml::{ConfigError, Source};

/// Capabilities a container keeps unless its sandbox says otherwise (spec §3.4).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "NET_BIND_SERVICE",
    "SETGID",
    "SETUID",
];

/// A loaded sandbox: its file, where it came from and its processes file path.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub name: String,
    pub file: SandboxFile,
    pub source: Source,
    pub processes_path: PathBuf,
    pub capabilities: Vec<String>,
}

/// Normalizes a capability name to `CAP_X` and checks it exists.
pub fn capability_name(name: &str) -> Result<String, String> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    full.parse::<isolation::Capability>()
        .map(|_| full.clone())
        .map_err(|_| format!("unknown capability {name:?}"))
}

impl Sandbox {
    /// Reads and validates `sandboxes/NAME.yaml`.
    pub fn load(master: &Master, name: &str) -> Result<Sandbox, ConfigError> {
        Self::load_from(master, name, &master.sandbox_file(name))
    }

    pub fn load_from(master: &Master, name: &str, path: &Path) -> Result<Sandbox, ConfigError> {
        let (file, source) = config::load_sandbox(path)?;
        if !file.image_dir.is_absolute() {
            return Err(source.error_at(&["image-dir"], "image-dir must be an absolute path"));
        }
        if file.image_dir_levels == 0 {
            return Err(
                source.error_at(&["image-dir-levels"], "image-dir-levels must be at least 1")
            );
        }
        if file.allow_users.is_empty() {
            return Err(source.error_at(&["allow-users"], "allow-users must not be empty"));
        }
        if file.allow_groups.is_empty() {
            return Err(source.error_at(&["allow-groups"], "allow-groups must not be empty"));
        }
        if let Some(uid) = file.default_user
            && !file.allow_users.contains(uid)
        {
            return Err(source.error_at(
                &["default-user"],
                format!(
                    "default-user {uid} is not in allow-users {}",
                    file.allow_users
                ),
            ));
        }
        if !file.allow_groups.contains(file.default_group) {
            return Err(source.error_at(
                &["default-group"],
                format!(
                    "default-group {} is not in allow-groups {}",
                    file.default_group, file.allow_groups
                ),
            ));
        }
        for (key, map) in [("uid-map", &file.uid_map), ("gid-map", &file.gid_map)] {
            if map.iter().any(|m| m.count == 0) {
                return Err(source.error_at(&[key], format!("{key} lines need a count above 0")));
            }
        }
        let capabilities = match &file.allow_capabilities {
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    capability_name(c)
                        .map_err(|m| source.error_at(&["allow-capabilities", &i.to_string()], m))
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => DEFAULT_CAPABILITIES
                .iter()
                .map(|c| format!("CAP_{c}"))
                .collect(),
        };
        for (key, value) in [
            ("total-cpu-limit", file.total_cpu_limit),
            ("max-cpu-limit", file.max_cpu_limit),
        ] {
            if value.is_some_and(|v| v <= 0.0) {
                return Err(source.error_at(&[key], format!("{key} must be above 0")));
            }
        }
        let processes_path = match &file.config_file {
            Some(p) => master.sandboxes_dir.join(p),
            None => master.processes_dir.join(format!("{name}.yaml")),
        };
        Ok(Sandbox {
            name: name.to_owned(),
            file,
            source,
            processes_path,
            capabilities,
        })
    }

    /// The supervisor log of this sandbox's knots.
    pub fn log_file(&self, master: &Master) -> PathBuf {
        match &self.file.log_file {
            Some(f) => master.default_log_dir.join(f),
            None => master.default_log_dir.join(format!("{}.log", self.name)),
        }
    }

    pub fn log_level(&self, master: &Master) -> String {
        self.file
            .log_level
            .clone()
            .unwrap_or_else(|| master.log_level.clone())
    }

    /// The sandbox's `.slice` cgroup path (carries the `total-*` limits).
    pub fn slice(&self, master: &Master) -> Option<PathBuf> {
        master
            .cgroup_name
            .as_ref()
            .map(|root| Path::new(root).join(format!("{}.slice", self.name)))
    }

    pub fn total_limits(&self) -> CgroupLimits {
        CgroupLimits {
            memory: self.file.total_memory_limit.map(|s| s.0),
            cpu_shares: None,
            cpu_limit: self.file.total_cpu_limit,
            pids: self.file.total_pids_limit,
        }
    }
}

/// Limits of one cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CgroupLimits {
    pub memory: Option<u64>,
    pub cpu_shares: Option<u64>,
    pub cpu_limit: Option<f64>,
    pub pids: Option<u64>,
}

/// Where the container's cgroup goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CgroupPlan {
    pub version: CgroupVersionSetting,
    /// v1 controllers from `cgroup-controllers` (`name` = the named hierarchy).
    pub controllers: Vec<String>,
    /// The container's leaf: `<cgroup-name>/<sbx>.slice/<sbx>:<proc.N>.scope`.
    pub path: PathBuf,
    /// Where the knot itself lives, outside the tree's service cgroup.
    pub knots_path: PathBuf,
    pub limits: CgroupLimits,
}

/// A volume as the knot mounts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountPlan {
    ReadOnly {
        source: PathBuf,
    },
    ReadWrite {
        source: PathBuf,
        /// Create the directory with this mode and owner when it is missing.
        mkdir: Option<(u32, u32, u32)>,
    },
    Tmpfs {
        size: Option<u64>,
        mode: u32,
    },
    /// A subdirectory of the instance state dir, created with mode and owner.
    Statedir {
        source: PathBuf,
        mode: u32,
        user: u32,
        group: u32,
    },
}

/// A listening socket the tree binds and the knot passes on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SocketPlan {
    pub addr: SocketAddr,
    /// Descriptor number in the container.
    pub fd: i32,
    /// Descriptor number in the knot (the tree places it there; 3 and up).
    pub knot_fd: i32,
    pub backlog: u32,
    pub reuse_addr: bool,
    pub reuse_port: bool,
    pub non_block: bool,
}

/// Where the container's stdout and stderr go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StdioPlan {
    /// Appended to a host file (the sandbox's stdio log or a resolved `stdout-stderr-file`).
    File(PathBuf),
    /// The caller's own (interactive commands).
    Inherit,
}

/// `/etc/resolv.conf` or `/etc/hosts` generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcFilePlan {
    pub mount: MountFile,
    pub copy_from: Option<PathBuf>,
    pub localhost: bool,
    pub public_hostname: bool,
    pub additional_hosts: BTreeMap<String, IpAddr>,
}

/// Everything a knot needs to run one instance; compared field by field to decide whether
/// a running knot matches the current config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceConfig {
    /// `sbx/proc.N` or `sbx/cmd.NAME.PID`.
    pub name: String,
    pub sandbox: String,
    pub entry: String,
    pub image: String,
    pub image_root: PathBuf,
    /// The container config path inside the image (`LITHOS_CONFIG`).
    pub config: PathBuf,
    pub kind: EntryKind,
    pub executable: String,
    pub arguments: Vec<String>,
    pub environ: BTreeMap<String, String>,
    pub workdir: PathBuf,
    pub user_id: u32,
    pub group_id: u32,
    pub uid_map: Vec<IdMapping>,
    pub gid_map: Vec<IdMapping>,
    /// The sandbox's ranges, checked again by the knot itself.
    pub allow_users: Ranges,
    pub allow_groups: Ranges,
    pub volumes: Vec<(PathBuf, MountPlan)>,
    pub resolv_conf: EtcFilePlan,
    pub hosts: EtcFilePlan,
    pub cgroup: Option<CgroupPlan>,
    pub fileno_limit: u64,
    pub no_new_privs: bool,
    pub capabilities: Vec<String>,
    pub sockets: Vec<SocketPlan>,
    pub stdio: StdioPlan,
    pub state_dir: PathBuf,
    pub kill_timeout: f64,
    pub normal_exit_codes: Vec<i32>,
    pub restart_process_only: bool,
    pub restart: RestartPolicy,
    /// The knot's own log.
    pub log_file: PathBuf,
    pub log_level: String,
    pub notify_socket: PathBuf,
}

impl InstanceConfig {
    /// `demo:w.0`: the instance name as used in cgroup and file names.
    pub fn flat_name(name: &str) -> String {
        name.replace('/', ":")
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("instance configs serialize")
    }

    /// Sha-256 of the JSON form: the digest recorded in knot.json.
    pub fn digest(&self) -> String {
        use sha2::Digest;
        let hash = sha2::Sha256::digest(self.to_json().as_bytes());
        hash.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// An entry resolved against its sandbox and container config: instances are made from it.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryPlan {
    pub sandbox: String,
    pub entry: String,
    pub kind: EntryKind,
    pub instances: u32,
    pub image: String,
    template: InstanceConfig,
    /// Variables with their values, for `@{name}` expansion.
    variables: BTreeMap<String, String>,
    raw_arguments: Vec<String>,
    raw_environ: BTreeMap<String, String>,
    state_root: PathBuf,
}

/// Problems found while resolving: errors stop the entry; warnings are logged (and are
/// errors for `lithos_check`).
#[derive(Debug, Default)]
pub struct Findings {
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigError>,
}

const NAME_CHARS: fn(char) -> bool = |c| c.is_ascii_alphanumeric() || c == '_' || c == '-';

fn valid_name(v: &str) -> bool {
    !v.is_empty() && v.chars().all(NAME_CHARS)
}

fn valid_dotted_name(v: &str) -> bool {
    !v.is_empty() && v.split('.').all(valid_name)
}

/// Expands `@{name}` in `text`; `lithos:name` and `lithos:config_filename` are built in.
pub fn expand(text: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("@{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated \"@{{\" in {text:?}"))?;
        let name = &after[..end];
        match vars.get(name) {
            Some(value) => out.push_str(value),
            None if name == "lithos:pid" => {
                return Err("@{lithos:pid} is only allowed as a whole environ value".into());
            }
            None => return Err(format!("undeclared variable \"@{{{name}}}\" in {text:?}")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Resolves a virtual path through a `readonly-paths`/`writable-paths` map (longest prefix).
fn resolve_virtual(map: &BTreeMap<PathBuf, PathBuf>, virt: &Path) -> Option<PathBuf> {
    map.iter()
        .filter(|(k, _)| virt.starts_with(k))
        .max_by_key(|(k, _)| k.components().count())
        .map(|(k, host)| {
            let rest = virt.strip_prefix(k).expect("prefix checked");
            if rest.as_os_str().is_empty() {
                host.clone()
            } else {
                host.join(rest)
            }
        })
}

fn plain_components(path: &Path) -> Option<usize> {
    let mut count = 0;
    for c in path.components() {
        match c {
            Component::Normal(_) => count += 1,
            _ => return None,
        }
    }
    Some(count)
}

fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn in_mapping(maps: &[IdMapping], id: u32) -> bool {
    maps.iter()
        .any(|m| m.inside <= id && (id as u64) < m.inside as u64 + m.count as u64)
}

/// Context shared by the entries of one sandbox.
#[derive(Debug)]
pub struct Resolver<'a> {
    pub master: &'a Master,
    pub sandbox: &'a Sandbox,
    pub processes: &'a Source,
    /// `TERM` of the caller, passed on when set.
    pub term: Option<String>,
}

impl Resolver<'_> {
    /// Resolves entry `name`; `findings` collects errors and ceilings that were applied.
    pub fn entry(
        &self,
        name: &str,
        entry: &ProcessEntry,
        findings: &mut Findings,
    ) -> Option<EntryPlan> {
        let before = findings.errors.len();
        let plan = self.entry_inner(name, entry, findings);
        if findings.errors.len() > before {
            None
        } else {
            plan
        }
    }

    fn entry_err(&self, entry: &str, key: &str, message: String) -> ConfigError {
        self.processes.error_at(&[entry, key], message)
    }

    fn entry_inner(&self, name: &str, entry: &ProcessEntry, f: &mut Findings) -> Option<EntryPlan> {
        let sbx = &self.sandbox;
        let sfile = &sbx.file;
        if !valid_name(name) {
            f.errors.push(self.processes.error_at(
                &[name],
                format!("entry name {name:?} must match ^[0-9a-zA-Z_-]+$"),
            ));
            return None;
        }
        if !entry.ip_addresses.is_empty() {
            f.errors.push(self.entry_err(
                name,
                "ip-addresses",
                "ip-addresses (bridged-network) is not supported in this release".into(),
            ));
        }
        if !entry.extra_secrets_namespaces.is_empty() {
            f.errors.push(self.entry_err(
                name,
                "extra-secrets-namespaces",
                "extra-secrets-namespaces is not supported in this release".into(),
            ));
        }
        if sfile.bridged_network.is_some() {
            f.errors.push(sbx.source.error_at(
                &["bridged-network"],
                "bridged-network is not supported in this release",
            ));
        }
        let levels = sfile.image_dir_levels as usize;
        if plain_components(Path::new(&entry.image)) != Some(levels) {
            let plural = if levels == 1 {
                "component"
            } else {
                "components"
            };
            f.errors.push(self.entry_err(
                name,
                "image",
                format!("image must have exactly {levels} plain path {plural}"),
            ));
            return None;
        }
        let image_root = sfile.image_dir.join(&entry.image);
        if !image_root.is_dir() {
            f.errors.push(self.entry_err(
                name,
                "image",
                format!("image \"{}\" not found", image_root.display()),
            ));
            return None;
        }
        if !entry.config.is_absolute() {
            f.errors.push(self.entry_err(
                name,
                "config",
                "config must be an absolute path inside the image".into(),
            ));
            return None;
        }
        let container_path = inside(&image_root, &entry.config);
        let (container, csource) = match config::load_container(&container_path) {
            Ok(c) => c,
            Err(e) => {
                f.errors.push(e);
                return None;
            }
        };
        if !container.kind.allows(entry.kind) {
            f.errors.push(csource.error_at(
                &["kind"],
                format!(
                    "container kind {:?} cannot run as a {:?} entry (entry \"{name}\")",
                    container.kind, entry.kind
                ),
            ));
        }
        let variables = self.variables(name, entry, &container, &csource, f);
        check_expansions(&container, &csource, &variables, f);
        let mut template = self.container(
            name,
            entry,
            &image_root,
            &container,
            &csource,
            &variables,
            f,
        )?;
        template.kind = entry.kind;
        let raw_arguments = container.arguments.iter().map(|a| a.0.clone()).collect();
        let raw_environ = container
            .environ
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        let plan = EntryPlan {
            sandbox: sbx.name.clone(),
            entry: name.to_owned(),
            kind: entry.kind,
            instances: entry.instances,
            image: entry.image.clone(),
            template,
            variables,
            raw_arguments,
            raw_environ,
            state_root: self.master.state_dir.join(&sbx.name),
        };
        Some(plan)
    }

    fn variables(
        &self,
        name: &str,
        entry: &ProcessEntry,
        container: &ContainerFile,
        csource: &Source,
        f: &mut Findings,
    ) -> BTreeMap<String, String> {
        let mut values = BTreeMap::new();
        for (var, kind) in &container.variables {
            let Some(value) = entry.variables.get(var) else {
                f.errors.push(self.entry_err(
                    name,
                    "variables",
                    format!(
                        "variable \"{var}\" of entry \"{name}\" has no value (declared in {})",
                        csource.file.display()
                    ),
                ));
                continue;
            };
            let value = &value.0;
            let problem = match kind {
                VariableType::TcpPort(_) => match value.parse::<u16>() {
                    Ok(port) if port > 0 => {
                        (!self.sandbox.file.allow_tcp_ports.contains(port.into())).then(|| {
                            format!(
                                "port {port} is not in allow-tcp-ports of sandbox {}",
                                self.sandbox.name
                            )
                        })
                    }
                    _ => Some(format!("expected a TCP port (1-65535), found {value:?}")),
                },
                VariableType::Name(()) => (!valid_name(value))
                    .then(|| format!("expected a name matching ^[0-9a-zA-Z_-]+$, found {value:?}")),
                VariableType::DottedName(()) => (!valid_dotted_name(value))
                    .then(|| format!("expected a dotted name like a.b-c, found {value:?}")),
                VariableType::Choice(choices) => (!choices.contains(value))
                    .then(|| format!("expected one of {choices:?}, found {value:?}")),
            };
            match problem {
                Some(p) => f.errors.push(self.processes.error_at(
                    &[name, "variables", var],
                    format!("variable \"{var}\" of entry \"{name}\": {p}"),
                )),
                None => {
                    values.insert(var.clone(), value.clone());
                }
            }
        }
        for var in entry.variables.keys() {
            if !container.variables.contains_key(var) {
                f.errors.push(self.processes.error_at(
                    &[name, "variables", var],
                    format!(
                        "variable \"{var}\" of entry \"{name}\" is not declared in {}",
                        csource.file.display()
                    ),
                ));
            }
        }
        values
    }

    #[allow(clippy::too_many_arguments)]
    fn container(
        &self,
        name: &str,
        entry: &ProcessEntry,
        image_root: &Path,
        c: &ContainerFile,
        cs: &Source,
        variables: &BTreeMap<String, String>,
        f: &mut Findings,
    ) -> Option<InstanceConfig> {
        let sbx = self.sandbox;
        let sf = &sbx.file;
        let errors_before = f.errors.len();
        for (key, present) in [
            ("secret-environ", c.secret_environ.is_some()),
            ("secret-environ-file", c.secret_environ_file.is_some()),
            ("readiness", c.readiness.is_some()),
        ] {
            if present {
                f.errors
                    .push(cs.error_at(&[key], format!("{key} is not supported in this release")));
            }
        }
        if !c.executable.starts_with('/') {
            f.errors
                .push(cs.error_at(&["executable"], "executable must be an absolute path"));
        }
        if !c.workdir.is_absolute() {
            f.errors
                .push(cs.error_at(&["workdir"], "workdir must be an absolute path"));
        }
        // Identity and id maps.
        if !c.uid_map.is_empty() && !sf.uid_map.is_empty()
            || !c.gid_map.is_empty() && !sf.gid_map.is_empty()
        {
            f.errors.push(cs.error_at(&["uid-map"], format!(
                "uid-map and gid-map may be set in sandbox {} or in the container config, not both",
                sbx.name
            )));
        }
        let user_id = match c.user_id.or(sf.default_user) {
            Some(uid) => uid,
            None => {
                f.errors.push(cs.error_at(
                    &["user-id"],
                    format!(
                        "user-id is required: sandbox {} has no default-user",
                        sbx.name
                    ),
                ));
                0
            }
        };
        let group_id = c.group_id.unwrap_or(sf.default_group);
        let (uid_map, gid_map) = if sf.uid_map.is_empty() && sf.gid_map.is_empty() {
            (c.uid_map.clone(), c.gid_map.clone())
        } else {
            (sf.uid_map.clone(), sf.gid_map.clone())
        };
        if let Some(message) = check_ids(sbx, c, user_id, group_id) {
            let key = if message.starts_with("User") || message.starts_with("uid") {
                "user-id"
            } else {
                "group-id"
            };
            f.errors.push(cs.error_at(&[key], message));
        }
        // Volumes.
        let state_dir = self.master.state_dir.join(&sbx.name).join("@instance@");
        let mut volumes = Vec::new();
        for (point, volume) in &c.volumes {
            let vkey = point.to_string_lossy().into_owned();
            let at = ["volumes", vkey.as_str()];
            if !point.is_absolute()
                || plain_components(point.strip_prefix("/").unwrap_or(point)).is_none()
            {
                f.errors.push(cs.error_at(
                    &at,
                    format!(
                        "volume mount point {} must be an absolute path without \"..\"",
                        point.display()
                    ),
                ));
                continue;
            }
            if !inside(image_root, point).is_dir() {
                f.errors.push(cs.error_at(
                    &at,
                    format!(
                        "mount point {} does not exist in image \"{}\"",
                        point.display(),
                        image_root.display()
                    ),
                ));
                continue;
            }
            let plan = match volume {
                Volume::Readonly(virt) => {
                    match resolve_virtual(&sf.readonly_paths, virt)
                        .or_else(|| resolve_virtual(&sf.writable_paths, virt))
                    {
                        Some(source) => MountPlan::ReadOnly { source },
                        None => {
                            f.errors.push(cs.error_at(&at, format!(
                                "can't find volume {} in readonly-paths or writable-paths of sandbox {}",
                                virt.display(),
                                sbx.name
                            )));
                            continue;
                        }
                    }
                }
                Volume::Persistent(p) => match resolve_virtual(&sf.writable_paths, &p.path) {
                    Some(source) => MountPlan::ReadWrite {
                        source,
                        mkdir: p.mkdir.then_some((p.mode.0, p.user, p.group)),
                    },
                    None => {
                        f.errors.push(cs.error_at(
                            &at,
                            format!(
                                "can't find volume {} in writable-paths of sandbox {}",
                                p.path.display(),
                                sbx.name
                            ),
                        ));
                        continue;
                    }
                },
                Volume::Tmpfs(t) => MountPlan::Tmpfs {
                    size: t.size.map(|s| s.0),
                    mode: t.mode.map(|m| m.0).unwrap_or(0o1777),
                },
                Volume::Statedir(s) => {
                    if plain_components(s.path.strip_prefix("/").unwrap_or(&s.path)).is_none() {
                        f.errors
                            .push(cs.error_at(&at, "statedir path must not contain \"..\""));
                        continue;
                    }
                    MountPlan::Statedir {
                        source: inside(&state_dir, &s.path),
                        mode: s.mode.0,
                        user: s.user,
                        group: s.group,
                    }
                }
            };
            volumes.push((point.clone(), plan));
        }
        // Sockets: tcp-ports and systemd-activated !TcpPort variables.
        let mut sockets = Vec::new();
        let activated: Vec<&String> = c
            .variables
            .iter()
            .filter(|(_, t)| matches!(t, VariableType::TcpPort(v) if v.activation == Some(Activation::Systemd)))
            .map(|(n, _)| n)
            .collect();
        let activation_fds = 3..3 + activated.len() as i32;
        for (key, port_config) in &c.tcp_ports {
            let at = ["tcp-ports", key.0.as_str()];
            let port = match expand(&key.0, variables)
                .map_err(|e| e.to_string())
                .and_then(|p| {
                    p.parse::<u16>()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| format!("tcp-ports key {p:?} is not a port number"))
                }) {
                Ok(port) => port,
                Err(message) => {
                    f.errors.push(cs.error_at(&at, message));
                    continue;
                }
            };
            if !sf.allow_tcp_ports.contains(port.into()) {
                f.errors.push(cs.error_at(
                    &at,
                    format!(
                        "port {port} is not in allow-tcp-ports of sandbox {}",
                        sbx.name
                    ),
                ));
                continue;
            }
            if port_config.fd < 3 && port_config.fd != 0 || port_config.fd < 0 {
                f.errors.push(cs.error_at(
                    &at,
                    format!("fd {} must be 0 or 3 and above", port_config.fd),
                ));
                continue;
            }
            if activation_fds.contains(&port_config.fd) {
                f.errors.push(cs.error_at(
                    &at,
                    format!(
                        "fd {} clashes with the fds of systemd-activated variables ({}..{})",
                        port_config.fd,
                        activation_fds.start,
                        activation_fds.end - 1
                    ),
                ));
                continue;
            }
            sockets.push(SocketPlan {
                addr: SocketAddr::new(port_config.host, port),
                fd: port_config.fd,
                knot_fd: 0,
                backlog: port_config.listen_backlog,
                reuse_addr: port_config.reuse_addr,
                reuse_port: port_config.reuse_port,
                non_block: port_config.set_non_block,
            });
        }
        let mut environ: BTreeMap<String, String> = BTreeMap::new();
        if !activated.is_empty() {
            for var in ["LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID"] {
                if c.environ.contains_key(var) {
                    f.errors.push(cs.error_at(
                        &["environ", var],
                        format!("{var} clashes with systemd activation of variables {activated:?}"),
                    ));
                }
            }
            for (i, var) in activated.iter().enumerate() {
                let Some(port) = variables.get(*var).and_then(|p| p.parse::<u16>().ok()) else {
                    continue;
                };
                sockets.push(SocketPlan {
                    addr: SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port),
                    fd: 3 + i as i32,
                    knot_fd: 0,
                    backlog: 128,
                    reuse_addr: true,
                    reuse_port: false,
                    non_block: false,
                });
            }
            environ.insert("LISTEN_FDS".into(), activated.len().to_string());
            environ.insert(
                "LISTEN_FDNAMES".into(),
                activated
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(":"),
            );
            // With the init as pid 1, the program is pid 2 of its namespace.
            environ.insert("LISTEN_PID".into(), "2".into());
        }
        let mut seen_fds = BTreeMap::new();
        for (i, s) in sockets.iter_mut().enumerate() {
            if let Some(other) = seen_fds.insert(s.fd, s.addr) {
                f.errors.push(cs.error_at(
                    &["tcp-ports"],
                    format!("fd {} is used for both {other} and {}", s.fd, s.addr),
                ));
            }
            s.knot_fd = 3 + i as i32;
        }
        // Limits against the sandbox ceilings.
        let memory = self.ceiling(
            cs,
            f,
            "memory-limit",
            c.memory_limit.map(|s| s.0),
            sf.max_memory_limit.map(|s| s.0),
            "max-memory-limit",
            |v| Size(v).to_string(),
        );
        let cpu_limit = self.ceiling(
            cs,
            f,
            "cpu-limit",
            c.cpu_limit,
            sf.max_cpu_limit,
            "max-cpu-limit",
            |v| v.to_string(),
        );
        let pids = self.ceiling(
            cs,
            f,
            "pids-limit",
            c.pids_limit,
            sf.max_pids_limit,
            "max-pids-limit",
            |v| v.to_string(),
        );
        let fileno = self
            .ceiling(
                cs,
                f,
                "fileno-limit",
                Some(c.fileno_limit),
                sf.max_fileno_limit,
                "max-fileno-limit",
                |v| v.to_string(),
            )
            .unwrap_or(c.fileno_limit);
        let capabilities = match &c.capabilities {
            None => sbx.capabilities.clone(),
            Some(list) => {
                let mut caps = Vec::new();
                for (i, cap) in list.iter().enumerate() {
                    match capability_name(cap) {
                        Ok(full) if sbx.capabilities.contains(&full) => caps.push(full),
                        Ok(full) => f.errors.push(cs.error_at(
                            &["capabilities", &i.to_string()],
                            format!(
                                "capability {full} is not in allow-capabilities of sandbox {}",
                                sbx.name
                            ),
                        )),
                        Err(m) => f
                            .errors
                            .push(cs.error_at(&["capabilities", &i.to_string()], m)),
                    }
                }
                caps
            }
        };
        let stdio =
            if c.interactive && entry.kind == EntryKind::Command {
                StdioPlan::Inherit
            } else if let Some(file) = &c.stdout_stderr_file {
                match host_path_of(&volumes, file) {
                    Some(path) => StdioPlan::File(path),
                    None => {
                        f.errors.push(cs.error_at(&["stdout-stderr-file"], format!(
                        "stdout-stderr-file {} must be on a !Persistent or !Statedir volume",
                        file.display()
                    )));
                        StdioPlan::Inherit
                    }
                }
            } else {
                StdioPlan::File(self.master.stdio_log_dir.join(format!("{}.log", sbx.name)))
            };
        for (var, value) in &c.environ {
            if value.0 == "@{lithos:pid}" {
                environ.insert(var.clone(), "2".into());
            }
        }
        if let Some(term) = &self.term {
            environ.insert("TERM".into(), term.clone());
        }
        if !c.environ.contains_key("CANTAL_PATH")
            && let Some(dir) = metrics_dir(&volumes)
        {
            environ.insert(
                "CANTAL_PATH".into(),
                format!("{}/cantal", dir.display()).replace("//", "/"),
            );
        }
        if f.errors.len() > errors_before {
            return None;
        }
        let cgroup = self.master.cgroup_name.as_ref().map(|root| CgroupPlan {
            version: self.master.cgroup_version,
            controllers: self.master.cgroup_controllers.clone(),
            path: PathBuf::new(),
            knots_path: Path::new(root).join("knots.scope"),
            limits: CgroupLimits {
                memory,
                cpu_shares: Some(c.cpu_shares),
                cpu_limit,
                pids,
            },
        });
        let hosts = &c.hosts_file;
        Some(InstanceConfig {
            name: String::new(),
            sandbox: sbx.name.clone(),
            entry: name.to_owned(),
            image: entry.image.clone(),
            image_root: image_root.to_owned(),
            config: entry.config.clone(),
            kind: entry.kind,
            executable: c.executable.clone(),
            arguments: Vec::new(),
            environ,
            workdir: c.workdir.clone(),
            user_id,
            group_id,
            uid_map,
            gid_map,
            allow_users: sf.allow_users.clone(),
            allow_groups: sf.allow_groups.clone(),
            volumes,
            resolv_conf: EtcFilePlan {
                mount: c.resolv_conf.mount,
                copy_from: c.resolv_conf.copy_from_host.then(|| sf.resolv_conf.clone()),
                localhost: false,
                public_hostname: false,
                additional_hosts: BTreeMap::new(),
            },
            hosts: EtcFilePlan {
                mount: hosts.mount,
                copy_from: hosts.copy_from_host.then(|| sf.hosts_file.clone()),
                localhost: hosts.localhost.unwrap_or(!hosts.copy_from_host),
                public_hostname: hosts.public_hostname.unwrap_or(!hosts.copy_from_host),
                additional_hosts: sf.additional_hosts.clone(),
            },
            cgroup,
            fileno_limit: fileno,
            no_new_privs: sf.no_new_privileges,
            capabilities,
            sockets,
            stdio,
            state_dir,
            kill_timeout: c.kill_timeout.0,
            normal_exit_codes: c.normal_exit_codes.clone(),
            restart_process_only: c.restart_process_only,
            restart: RestartPolicy {
                restart_timeout: c.restart_timeout.0,
                multiplier: c.restart_backoff.multiplier.max(1.0),
                max_delay: c.restart_backoff.max_delay.0,
                reset_after: c.restart_backoff.reset_after.0,
                give_up_after: c.restart_backoff.give_up_after,
            },
            log_file: sbx.log_file(self.master),
            log_level: sbx.log_level(self.master),
            notify_socket: self.master.notify_socket(),
        })
    }

    /// Applies a sandbox ceiling: asking more, or nothing, gets the ceiling (a warning).
    #[allow(clippy::too_many_arguments)]
    fn ceiling<T: PartialOrd + Copy>(
        &self,
        cs: &Source,
        f: &mut Findings,
        key: &str,
        asked: Option<T>,
        max: Option<T>,
        max_key: &str,
        show: impl Fn(T) -> String,
    ) -> Option<T> {
        match (asked, max) {
            (Some(a), Some(m)) if a > m => {
                f.warnings.push(cs.error_at(
                    &[key],
                    format!(
                        "{key} {} exceeds {max_key} {} of sandbox {}",
                        show(a),
                        show(m),
                        self.sandbox.name
                    ),
                ));
                Some(m)
            }
            (None, Some(m)) => Some(m),
            (a, _) => a,
        }
    }
}

/// Reports `@{name}` uses that cannot expand (undeclared names, `lithos:pid` misplaced).
pub fn check_expansions(
    c: &ContainerFile,
    cs: &Source,
    variables: &BTreeMap<String, String>,
    f: &mut Findings,
) {
    let mut vars = variables.clone();
    for (name, kind) in &c.variables {
        // A declared variable whose value was rejected is reported already.
        vars.entry(name.clone()).or_insert_with(|| match kind {
            VariableType::TcpPort(_) => "1".into(),
            _ => "x".into(),
        });
    }
    vars.insert("lithos:name".into(), "sbx/proc.0".into());
    vars.insert("lithos:config_filename".into(), "/config.yaml".into());
    for (i, a) in c.arguments.iter().enumerate() {
        if let Err(m) = expand(&a.0, &vars) {
            f.errors
                .push(cs.error_at(&["arguments", &i.to_string()], m));
        }
    }
    for (k, v) in &c.environ {
        if v.0 != "@{lithos:pid}"
            && let Err(m) = expand(&v.0, &vars)
        {
            f.errors.push(cs.error_at(&["environ", k], m));
        }
    }
}

/// Checks the uid and gid against the sandbox ranges and maps; the message says why not.
pub fn check_ids(sbx: &Sandbox, c: &ContainerFile, uid: u32, gid: u32) -> Option<String> {
    let sf = &sbx.file;
    if !c.uid_map.is_empty() && sf.uid_map.is_empty() {
        if !in_mapping(&c.uid_map, uid) {
            return Some(format!("User is not in mapped range (uid: {uid})"));
        }
        if c.uid_map
            .iter()
            .any(|m| !sf.allow_users.contains_all(m.outside, m.count))
        {
            return Some("uid-map maps to users outside allow-users".into());
        }
    } else if !sf.allow_users.contains(uid) {
        return Some(format!("User is not in allowed range (uid: {uid})"));
    }
    if !c.gid_map.is_empty() && sf.gid_map.is_empty() {
        if !in_mapping(&c.gid_map, gid) {
            return Some(format!("Group is not in mapped range (gid: {gid})"));
        }
        if c.gid_map
            .iter()
            .any(|m| !sf.allow_groups.contains_all(m.outside, m.count))
        {
            return Some("gid-map maps to groups outside allow-groups".into());
        }
    } else if !sf.allow_groups.contains(gid) {
        return Some(format!("Group is not in allowed range (gid: {gid})"));
    }
    None
}

/// The host path of a file inside the container, when it lies on a bind or statedir volume.
fn host_path_of(volumes: &[(PathBuf, MountPlan)], file: &Path) -> Option<PathBuf> {
    volumes
        .iter()
        .filter(|(point, _)| file.starts_with(point))
        .max_by_key(|(point, _)| point.components().count())
        .and_then(|(point, plan)| {
            let rest = file.strip_prefix(point).ok()?;
            match plan {
                MountPlan::ReadWrite { source, .. } | MountPlan::Statedir { source, .. } => {
                    Some(source.join(rest))
                }
                _ => None,
            }
        })
}

/// A writable volume for application metrics: the first statedir, else the first tmpfs.
fn metrics_dir(volumes: &[(PathBuf, MountPlan)]) -> Option<&Path> {
    let find = |want_statedir: bool| {
        volumes.iter().find_map(|(p, plan)| match plan {
            MountPlan::Statedir { .. } if want_statedir => Some(p.as_path()),
            MountPlan::Tmpfs { .. } if !want_statedir => Some(p.as_path()),
            _ => None,
        })
    };
    find(true).or_else(|| find(false))
}

impl EntryPlan {
    /// The config of instance `N` of a Daemon entry.
    pub fn instance(&self, index: u32) -> InstanceConfig {
        self.try_instance(&format!("{}/{}.{index}", self.sandbox, self.entry), &[])
            .expect("expansion was checked when the entry was resolved")
    }

    /// The config of a command run by `lithos_cmd` as `SBX/cmd.NAME.PID` with extra arguments.
    pub fn command(&self, pid: u32, extra: &[String]) -> InstanceConfig {
        self.try_instance(&format!("{}/cmd.{}.{pid}", self.sandbox, self.entry), extra)
            .expect("expansion was checked when the entry was resolved")
    }

    fn try_instance(&self, name: &str, extra: &[String]) -> Result<InstanceConfig, String> {
        let mut vars = self.variables.clone();
        vars.insert("lithos:name".into(), name.to_owned());
        vars.insert(
            "lithos:config_filename".into(),
            self.template.config.display().to_string(),
        );
        let mut c = self.template.clone();
        c.name = name.to_owned();
        c.arguments = self
            .raw_arguments
            .iter()
            .map(|a| expand(a, &vars))
            .collect::<Result<Vec<_>, _>>()?;
        c.arguments.extend(extra.iter().cloned());
        for (k, v) in &self.raw_environ {
            if v != "@{lithos:pid}" {
                c.environ.insert(k.clone(), expand(v, &vars)?);
            }
        }
        let flat = name.split_once('/').map(|(_, p)| p).unwrap_or(name);
        let state_dir = self.state_root.join(flat);
        for (_, plan) in &mut c.volumes {
            if let MountPlan::Statedir { source, .. } = plan {
                let rest = source
                    .strip_prefix(&self.template.state_dir)
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                *source = state_dir.join(rest);
            }
        }
        if let StdioPlan::File(path) = &c.stdio
            && let Ok(rest) = path.strip_prefix(&self.template.state_dir)
        {
            c.stdio = StdioPlan::File(state_dir.join(rest));
        }
        c.state_dir = state_dir;
        c.environ.insert("LITHOS_NAME".into(), name.to_owned());
        c.environ.insert(
            "LITHOS_CONFIG".into(),
            self.template.config.display().to_string(),
        );
        if let Some(cg) = &mut c.cgroup {
            let root = cg
                .knots_path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            cg.path = root
                .join(format!("{}.slice", self.sandbox))
                .join(format!("{}.scope", InstanceConfig::flat_name(name)));
        }
        Ok(c)
    }

    /// The sockets every instance of this entry uses.
    pub fn sockets(&self) -> &[SocketPlan] {
        &self.template.sockets
    }

    pub fn template(&self) -> &InstanceConfig {
        &self.template
    }
}

/// A processes file resolved against its sandbox: the entries that passed, and the problems.
#[derive(Debug, Default)]
pub struct Resolved {
    pub entries: BTreeMap<String, EntryPlan>,
    /// Entries with errors, by name.
    pub rejected: BTreeMap<String, RejectedEntry>,
    pub warnings: Vec<ConfigError>,
}

/// An entry that did not resolve.
#[derive(Debug)]
pub struct RejectedEntry {
    pub instances: u32,
    pub image: String,
    pub kind: EntryKind,
    pub errors: Vec<ConfigError>,
}

/// Reads and resolves a processes file: a file that fails to parse is one error; entries
/// that fail are listed with their errors while the others resolve.
pub fn resolve_processes(
    master: &Master,
    sandbox: &Sandbox,
    path: &Path,
    term: Option<String>,
) -> Result<Resolved, ConfigError> {
    let (file, source) = config::load_processes(path)?;
    let resolver = Resolver {
        master,
        sandbox,
        processes: &source,
        term,
    };
    let mut resolved = Resolved::default();
    for (name, entry) in &file {
        let mut findings = Findings::default();
        match resolver.entry(name, entry, &mut findings) {
            Some(plan) => {
                resolved.entries.insert(name.clone(), plan);
            }
            None => {
                resolved.rejected.insert(
                    name.clone(),
                    RejectedEntry {
                        instances: entry.instances,
                        image: entry.image.clone(),
                        kind: entry.kind,
                        errors: findings.errors,
                    },
                );
            }
        }
        resolved.warnings.extend(findings.warnings);
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_takes_declared_and_builtin_names_only() {
        let mut vars = BTreeMap::new();
        vars.insert("port".to_string(), "8080".to_string());
        vars.insert("lithos:name".to_string(), "demo/w.0".to_string());
        assert_eq!(
            expand("--listen=:@{port} --name=@{lithos:name}", &vars).unwrap(),
            "--listen=:8080 --name=demo/w.0"
        );
        assert!(
            expand("@{nope}", &vars)
                .unwrap_err()
                .contains("undeclared variable")
        );
        assert!(expand("@{port", &vars).is_err());
    }

    #[test]
    fn virtual_paths_resolve_by_longest_prefix() {
        let mut map = BTreeMap::new();
        map.insert(PathBuf::from("/data"), PathBuf::from("/srv/demo"));
        map.insert(PathBuf::from("/data/logs"), PathBuf::from("/var/log/demo"));
        assert_eq!(
            resolve_virtual(&map, Path::new("/data/x")),
            Some("/srv/demo/x".into())
        );
        assert_eq!(
            resolve_virtual(&map, Path::new("/data/logs")),
            Some("/var/log/demo".into())
        );
        assert_eq!(resolve_virtual(&map, Path::new("/other")), None);
    }

    #[test]
    fn names_and_capabilities() {
        assert!(valid_name("web-1_x") && !valid_name("a.b") && !valid_name(""));
        assert!(valid_dotted_name("a.b-c") && !valid_dotted_name("a..b"));
        assert_eq!(capability_name("chown").unwrap(), "CAP_CHOWN");
        assert!(capability_name("FLY").is_err());
    }
}
