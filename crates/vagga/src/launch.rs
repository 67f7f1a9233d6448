//! Running commands in built containers: environment precedence, volumes, identity, network,
//! socket passing, write modes; and waiting for them.

use std::collections::BTreeMap;
use std::fs;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use isolation::{Child, Container as Sandbox, ExitStatus, Owner, Volume as Mount};

use crate::build::{BuildError, BuildMode, Builder, DEFAULT_PATH};
use crate::config::{Command, Container, Volume};
use crate::de::Located;
use crate::idmap::IdMapError;
use crate::privileged::{Op, PrivilegedError};
use crate::project::Project;
use crate::rootfs;

/// Starting a command failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    IdMap(#[from] IdMapError),
    /// A volume cannot be mounted (exit 124).
    #[error("{0}")]
    Volume(String),
    #[error("start {program} in container \"{container}\": {source}")]
    Spawn {
        program: String,
        container: String,
        source: isolation::SpawnError,
    },
    #[error("wait for {program}: {source}")]
    Wait {
        program: String,
        source: isolation::ProcessError,
    },
    #[error("pass-tcp-socket {addr}: {source}")]
    Socket {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Privileged(#[from] PrivilegedError),
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("persistent volume \"{name}\": init command {command} failed with exit code {code}")]
    InitFailed {
        name: String,
        command: String,
        code: i32,
    },
}

/// Global settings of this vagga run that affect every command.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `-E K=V`.
    pub set_env: Vec<(String, String)>,
    /// `-e K`.
    pub use_env: Vec<String>,
    pub isolate_network: bool,
    pub mode: Option<BuildMode>,
}

impl RunOptions {
    pub fn build_mode(&self) -> BuildMode {
        self.mode.unwrap_or(BuildMode::Normal)
    }
}

/// The exit code vagga reports for a command's status.
pub fn exit_code(status: ExitStatus) -> i32 {
    match status {
        ExitStatus::Exited(code) => code,
        ExitStatus::Signaled(signal) => 128 + signal as i32,
    }
}

/// Things to undo after a command ends (transient copies).
#[derive(Debug, Default)]
pub struct Cleanup {
    paths: Vec<PathBuf>,
}

/// What to run in a container.
#[derive(Debug, Clone)]
pub struct Invocation<'c> {
    pub container: &'c str,
    pub argv: Vec<String>,
    pub command: Option<&'c Command>,
    /// Extra variables (docopt's `VAGGAOPT_*`/`VAGGACLI_*`).
    pub extra_env: Vec<(String, String)>,
    pub writable_copy: bool,
    pub isolate_network: bool,
}

/// Starts and waits for commands of one project.
pub struct Launcher<'p> {
    pub project: &'p Project,
    pub builder: Builder<'p>,
    pub options: RunOptions,
    /// Persistent volumes initialised during this run (each once).
    initialising: Vec<String>,
    /// The network namespace of a `!Supervise` group with `isolate-network`, which every
    /// child with an isolated network joins.
    pub shared_network: Option<isolation::NetworkNamespace>,
}

impl std::fmt::Debug for Launcher<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launcher")
            .field("options", &self.options)
            .finish()
    }
}

fn glob_match(pattern: &str, name: &str) -> bool {
    globset::Glob::new(pattern)
        .map(|g| g.compile_matcher().is_match(name))
        .unwrap_or(pattern == name)
}

/// `KEY=VALUE` lines of an environ file (`#` comments, blank lines skipped).
pub fn parse_environ_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .collect()
}

impl<'p> Launcher<'p> {
    pub fn new(project: &'p Project, options: RunOptions) -> Launcher<'p> {
        Launcher {
            project,
            builder: Builder::new(project),
            options,
            initialising: Vec::new(),
            shared_network: None,
        }
    }

    /// The environment of a command, lowest precedence first.
    fn environment(
        &self,
        container: &Container,
        root: &Path,
        inv: &Invocation<'_>,
    ) -> BTreeMap<String, String> {
        let settings = &self.project.settings;
        let host: BTreeMap<String, String> = std::env::vars().collect();
        let mut env = BTreeMap::new();
        env.insert("PATH".to_owned(), DEFAULT_PATH.to_owned());
        for (k, v) in &host {
            let proxy = settings.proxy_env_vars && k.to_ascii_lowercase().ends_with("_proxy");
            if proxy || k == "TERM" {
                env.insert(k.clone(), v.clone());
            }
        }
        if let Some(file) = &container.environ_file
            && let Ok(path) = rootfs::resolve(root, file, true)
            && let Ok(text) = fs::read_to_string(path)
        {
            env.extend(parse_environ_file(&text));
        }
        env.extend(container.environ.clone());
        if let Some(cmd) = inv.command {
            env.extend(cmd.environ.clone());
        }
        env.extend(inv.extra_env.iter().cloned());
        for (k, v) in &host {
            if settings.propagate_environ.iter().any(|p| glob_match(p, k)) {
                env.insert(k.clone(), v.clone());
            }
        }
        env.extend(settings.environ.clone());
        for (k, v) in &host {
            if let Some(name) = k.strip_prefix("VAGGAENV_") {
                env.insert(name.to_owned(), v.clone());
            }
        }
        for k in &self.options.use_env {
            if let Some(v) = host.get(k) {
                env.insert(k.clone(), v.clone());
            }
        }
        env.extend(self.options.set_env.iter().cloned());
        env
    }

    fn volume_error(&self, pos: &crate::yaml::Pos, path: &str, message: &str) -> LaunchError {
        LaunchError::Volume(format!("{pos}: volume {path}: {message}"))
    }

    /// Turns the configured volumes into mounts; missing mount points are errors.
    fn mounts(
        &mut self,
        container_name: &str,
        container: &Container,
        root: &Path,
        inv: &Invocation<'_>,
        cleanup: &mut Cleanup,
    ) -> Result<Vec<(String, Mount)>, LaunchError> {
        let mut volumes: BTreeMap<String, Option<Located<Volume>>> = BTreeMap::new();
        // Defaults, used only when the image has the mount point.
        volumes.insert("/tmp".into(), None);
        volumes.insert("/run".into(), None);
        for (k, v) in &container.volumes {
            volumes.insert(k.clone(), Some(v.clone()));
        }
        if let Some(cmd) = inv.command {
            for (k, v) in &cmd.volumes {
                volumes.insert(k.clone(), Some(v.clone()));
            }
        }
        let mut mounts = Vec::new();
        for (path, volume) in volumes {
            let inside = rootfs::resolve(root, &path, true)
                .map_err(|e| LaunchError::Volume(e.to_string()))?;
            let exists = inside.is_dir() || inside.is_file();
            let Some(volume) = volume else {
                if exists {
                    let mount = match path.as_str() {
                        "/run" => Mount::Tmpfs {
                            size: Some(100 << 20),
                            mode: 0o766,
                            subdirs: vec![(PathBuf::from("shm"), 0o1777)],
                        },
                        _ => Mount::Tmpfs {
                            size: Some(100 << 20),
                            mode: 0o1777,
                            subdirs: Vec::new(),
                        },
                    };
                    mounts.push((path, mount));
                }
                continue;
            };
            if !exists {
                return Err(LaunchError::Volume(format!(
                    "{}: volume mount point {path} does not exist in container \"{container_name}\": add !EnsureDir {path} to its setup",
                    volume.pos
                )));
            }
            let mount = self.mount(&path, &volume, root, cleanup)?;
            mounts.push((path, mount));
        }
        Ok(mounts)
    }

    fn host_bind_path(
        &self,
        path: &str,
        pos: &crate::yaml::Pos,
        volume_path: &str,
    ) -> Result<PathBuf, LaunchError> {
        if let Some(rest) = path.strip_prefix("/volumes/") {
            let (name, sub) = rest.split_once('/').unwrap_or((rest, ""));
            let base = self
                .project
                .settings
                .external_volumes
                .get(name)
                .ok_or_else(|| {
                    self.volume_error(
                        pos,
                        volume_path,
                        &format!(
                            "external volume \"{name}\" is not in the external-volumes setting"
                        ),
                    )
                })?;
            return Ok(if sub.is_empty() {
                base.clone()
            } else {
                base.join(sub)
            });
        }
        crate::version::project_path(&self.project.config.root, path, pos)
            .map_err(|e| LaunchError::Volume(e.to_string()))
    }

    fn transient_dir(&self, what: &str) -> Result<PathBuf, LaunchError> {
        let base = &self.project.storage.transient;
        fs::create_dir_all(base).map_err(|source| LaunchError::Io {
            action: "create",
            path: base.clone(),
            source,
        })?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{what}."))
            .tempdir_in(base)
            .map_err(|source| LaunchError::Io {
                action: "create",
                path: base.clone(),
                source,
            })?;
        Ok(dir.keep())
    }

    fn mount(
        &mut self,
        path: &str,
        volume: &Located<Volume>,
        root: &Path,
        cleanup: &mut Cleanup,
    ) -> Result<Mount, LaunchError> {
        let pos = &volume.pos;
        Ok(match &volume.value {
            Volume::Tmpfs(t) if t.files.is_empty() => Mount::Tmpfs {
                size: Some(t.size.unwrap_or(100 << 20)),
                mode: t.mode,
                subdirs: t
                    .subdirs
                    .iter()
                    .map(|(k, v)| (PathBuf::from(k), v.as_ref().map_or(0o755, |s| s.mode)))
                    .collect(),
            },
            Volume::Tmpfs(t) => {
                // The files and subdirs are laid out in a directory the tmpfs is seeded from.
                let dir = self.transient_dir("tmpfs")?;
                cleanup.paths.push(dir.clone());
                let io = |action, path: &Path| {
                    let path = path.to_owned();
                    move |source| LaunchError::Io {
                        action,
                        path,
                        source,
                    }
                };
                use std::os::unix::fs::PermissionsExt;
                for (sub, spec) in &t.subdirs {
                    let p = dir.join(sub);
                    fs::create_dir_all(&p).map_err(io("create", &p))?;
                    fs::set_permissions(
                        &p,
                        fs::Permissions::from_mode(spec.as_ref().map_or(0o755, |s| s.mode)),
                    )
                    .map_err(io("chmod", &p))?;
                }
                for (file, text) in &t.files {
                    let p = dir.join(file);
                    if let Some(parent) = p.parent() {
                        fs::create_dir_all(parent).map_err(io("create", parent))?;
                    }
                    fs::write(&p, text).map_err(io("write", &p))?;
                }
                fs::set_permissions(&dir, fs::Permissions::from_mode(t.mode))
                    .map_err(io("chmod", &dir))?;
                Mount::SeededTmpfs {
                    size: Some(t.size.unwrap_or(100 << 20)),
                    seed: dir,
                    owner: Owner::default(),
                }
            }
            Volume::BindRW(p) => Mount::ReadWrite {
                source: self.host_bind_path(p, pos, path)?,
            },
            Volume::BindRO(p) => Mount::ReadOnly {
                source: self.host_bind_path(p, pos, path)?,
            },
            Volume::CacheDir(name) => {
                if name.is_empty() {
                    return Err(self.volume_error(pos, path, "!CacheDir path must not be empty"));
                }
                if name.starts_with('/') {
                    return Err(self.volume_error(
                        pos,
                        path,
                        "!CacheDir path must not be absolute",
                    ));
                }
                let host = self.project.storage.cache.join(name);
                fs::create_dir_all(&host).map_err(|source| LaunchError::Io {
                    action: "create",
                    path: host.clone(),
                    source,
                })?;
                Mount::ReadWrite { source: host }
            }
            Volume::Empty => {
                let empty = self.project.storage.transient.join(".empty");
                fs::create_dir_all(&empty).map_err(|source| LaunchError::Io {
                    action: "create",
                    path: empty.clone(),
                    source,
                })?;
                Mount::ReadOnly { source: empty }
            }
            Volume::Container(name) => {
                let mode = self.options.build_mode();
                let built = self.builder.ensure(name, mode)?;
                Mount::ReadOnly { source: built.root }
            }
            Volume::VaggaBin => Mount::ReadOnly {
                source: self
                    .project
                    .exe
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from("/")),
            },
            Volume::Persistent(p) => Mount::ReadWrite {
                source: self.persistent(p, pos)?,
            },
            Volume::Snapshot(s) => {
                let s = s.clone().unwrap_or_default();
                let source = match &s.container {
                    Some(name) => self.builder.ensure(name, self.options.build_mode())?.root,
                    None => rootfs::resolve(root, path, true)
                        .map_err(|e| LaunchError::Volume(e.to_string()))?,
                };
                Mount::SeededTmpfs {
                    size: Some(s.size.unwrap_or(100 << 20)),
                    seed: source,
                    owner: Owner {
                        uid: s.owner_uid,
                        gid: s.owner_gid,
                    },
                }
            }
        })
    }

    /// The host directory of a persistent volume, created (or initialised) on first use.
    fn persistent(
        &mut self,
        p: &crate::config::PersistentVolume,
        pos: &crate::yaml::Pos,
    ) -> Result<PathBuf, LaunchError> {
        let storage = &self.project.storage;
        if p.name.is_empty() || p.name.contains('/') || p.name.starts_with('.') {
            return Err(LaunchError::Volume(format!(
                "{pos}: bad persistent volume name {:?}",
                p.name
            )));
        }
        let dir = storage.volumes.join(&p.name);
        if dir.is_dir() || self.initialising.contains(&p.name) {
            return Ok(dir);
        }
        fs::create_dir_all(&storage.volumes).map_err(|source| LaunchError::Io {
            action: "create",
            path: storage.volumes.clone(),
            source,
        })?;
        let tmp = storage
            .volumes
            .join(format!(".tmp.{}.{}", p.name, std::process::id()));
        let privileged = self.project.privileged(None)?;
        if tmp.exists() {
            privileged.run(&Op::RemoveTree { path: tmp.clone() })?;
        }
        privileged.run(&Op::MakeDir {
            path: tmp.clone(),
            uid: p.owner_uid,
            gid: p.owner_gid,
        })?;
        if let Some(init) = &p.init_command {
            // The init command sees the temporary directory in place of the volume.
            self.initialising.push(p.name.clone());
            let result = crate::commands::run_init_command(self, init, &p.name, &tmp);
            self.initialising.retain(|n| n != &p.name);
            match result {
                Ok(0) => {}
                Ok(code) => {
                    let _ = privileged.run(&Op::RemoveTree { path: tmp.clone() });
                    return Err(LaunchError::InitFailed {
                        name: p.name.clone(),
                        command: init.clone(),
                        code,
                    });
                }
                Err(e) => {
                    let _ = privileged.run(&Op::RemoveTree { path: tmp.clone() });
                    return Err(e);
                }
            }
        }
        fs::rename(&tmp, &dir).map_err(|source| LaunchError::Io {
            action: "rename",
            path: tmp.clone(),
            source,
        })?;
        Ok(dir)
    }

    /// Starts a command; returns the running child and what to clean up after it.
    pub fn start(
        &mut self,
        inv: &Invocation<'_>,
        overrides: &[(String, PathBuf)],
    ) -> Result<(Child, Cleanup), LaunchError> {
        let project = self.project;
        let container = &project.config.containers[inv.container].def;
        let built = self
            .builder
            .ensure(inv.container, self.options.build_mode())?;
        let mut cleanup = Cleanup::default();
        let mut root = built.root.clone();
        let writable = inv.writable_copy
            || inv
                .command
                .is_some_and(|c| c.write_mode == crate::config::WriteMode::TransientHardLinkCopy);
        if writable {
            let dir = self.transient_dir(&format!("{}.{}", inv.container, built.short))?;
            cleanup.paths.push(dir.clone());
            let copy = dir.join("root");
            project
                .privileged(Some(container))?
                .run(&Op::HardlinkCopy {
                    src: root.clone(),
                    dest: copy.clone(),
                })?;
            root = copy;
        }
        let mut mounts = match self.mounts(inv.container, container, &root, inv, &mut cleanup) {
            Ok(m) => m,
            Err(e) => {
                self.cleanup(cleanup);
                return Err(e);
            }
        };
        for (path, host) in overrides {
            mounts.retain(|(p, _)| p != path);
            mounts.push((
                path.clone(),
                Mount::ReadWrite {
                    source: host.clone(),
                },
            ));
        }
        let env = self.environment(container, &root, inv);
        let program = inv.argv[0].clone();
        let isolate_network = inv.isolate_network || self.options.isolate_network;
        let mut userns = project.userns(container)?;
        if let Some(cmd) = inv.command
            && let Some(external) = cmd.external_user_id
        {
            let mapped = crate::idmap::map_external_user(
                &mut userns,
                cmd.user_id,
                external,
                &cmd.container.pos,
            );
            if let Err(e) = mapped {
                self.cleanup(cleanup);
                return Err(e.into());
            }
        }
        let mut c = Sandbox::new(&root, &program);
        if isolate_network && let Some(ns) = &self.shared_network {
            let ns = ns.try_clone().map_err(|source| LaunchError::Io {
                action: "duplicate",
                path: "network namespace".into(),
                source,
            })?;
            c.join_network_namespace(ns);
        }
        c.args(&inv.argv[1..])
            .init(true)
            .root_writable(writable)
            .user_namespace(userns)
            .network_namespace(isolate_network)
            .volume(
                "/work",
                Mount::ReadWrite {
                    source: project.config.root.clone(),
                },
            );
        let workdir = match inv.command.and_then(|c| c.work_dir.as_deref()) {
            Some(dir) => Path::new("/work").join(dir.trim_start_matches('/')),
            None => Path::new("/work").join(&project.relative_cwd),
        };
        c.workdir(workdir);
        if let Some(cmd) = inv.command {
            c.identity(cmd.user_id, cmd.group_id, &cmd.supplementary_gids);
            if let Some(addr) = &cmd.pass_tcp_socket {
                c.pass_fd(listen(addr)?, 3);
            }
        }
        for (path, mount) in mounts {
            c.volume(path, mount);
        }
        for (file, host) in [
            (&container.resolv_conf_path, "/etc/resolv.conf"),
            (&container.hosts_file_path, "/etc/hosts"),
        ] {
            if let Some(file) = file
                && let Ok(inside) = rootfs::resolve(&root, file, false)
                && fs::symlink_metadata(&inside).is_ok_and(|m| m.is_file())
                && Path::new(host).exists()
            {
                c.volume(
                    file,
                    Mount::ReadOnly {
                        source: host.into(),
                    },
                );
            }
        }
        for (k, v) in env {
            c.env(k, v);
        }
        match c.spawn() {
            Ok(child) => Ok((child, cleanup)),
            Err(source) => {
                self.cleanup(cleanup);
                Err(LaunchError::Spawn {
                    program,
                    container: inv.container.to_owned(),
                    source,
                })
            }
        }
    }

    /// Removes transient copies of a finished command.
    pub fn cleanup(&self, cleanup: Cleanup) {
        if cleanup.paths.is_empty() {
            return;
        }
        let Ok(privileged) = self.project.privileged(None) else {
            return;
        };
        for path in cleanup.paths {
            if let Err(e) = privileged.run(&Op::RemoveTree { path: path.clone() }) {
                tracing::warn!("remove {}: {e}", path.display());
            }
        }
    }

    /// Runs a command to completion and returns its exit code.
    pub fn run(&mut self, inv: &Invocation<'_>) -> Result<i32, LaunchError> {
        self.run_with(inv, &[])
    }

    pub fn run_with(
        &mut self,
        inv: &Invocation<'_>,
        overrides: &[(String, PathBuf)],
    ) -> Result<i32, LaunchError> {
        let (mut child, cleanup) = self.start(inv, overrides)?;
        let forwarder = crate::signals::Forwarder::start(child.pid());
        let status = child.wait();
        drop(forwarder);
        self.cleanup(cleanup);
        let status = status.map_err(|source| LaunchError::Wait {
            program: inv.argv[0].clone(),
            source,
        })?;
        Ok(exit_code(status))
    }
}

/// Binds a listening socket for `pass-tcp-socket` in the host's network namespace.
pub fn listen(spec: &str) -> Result<OwnedFd, LaunchError> {
    let err = |source| LaunchError::Socket {
        addr: spec.to_owned(),
        source,
    };
    let addr: SocketAddr = if let Ok(port) = spec.parse::<u16>() {
        SocketAddr::from(([127, 0, 0, 1], port))
    } else if let Some(port) = spec.strip_prefix("*:") {
        let port = port
            .parse::<u16>()
            .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        SocketAddr::from(([0, 0, 0, 0], port))
    } else {
        spec.to_socket_addrs().map_err(err)?.next().ok_or_else(|| {
            err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "no address",
            ))
        })?
    };
    let listener = TcpListener::bind(addr).map_err(err)?;
    Ok(OwnedFd::from(listener))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environ_file_lines() {
        let text = "# comment\nSHELL=/bin/sh\n\nA=b=c\n";
        assert_eq!(
            parse_environ_file(text),
            [
                ("SHELL".to_owned(), "/bin/sh".to_owned()),
                ("A".to_owned(), "b=c".to_owned())
            ]
        );
    }

    #[test]
    fn socket_specs() {
        let fd = listen("0").unwrap();
        let listener = TcpListener::from(fd);
        assert!(listener.local_addr().unwrap().ip().is_loopback());
        let fd = listen("[::1]:0");
        if let Ok(fd) = fd {
            assert!(TcpListener::from(fd).local_addr().unwrap().is_ipv6());
        }
        assert!(listen("*:notaport").is_err());
    }
}
