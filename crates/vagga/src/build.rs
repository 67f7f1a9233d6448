//! Building containers: each step in order into `.roots/.tmp.<name>.<hash>`, then a rename
//! into place and an atomic swap of the `.vagga/<name>` symlink, under a per-container lock.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use isolation::{Container as Sandbox, Stdio, UserNamespace, Volume};
use sha2::{Digest, Sha256};

use crate::config::{Container, NpmConfig, PipConfig, Step};
use crate::console;
use crate::de::Located;
use crate::idmap::IdMapError;
use crate::privileged::{Op, Privileged, PrivilegedError};
use crate::project::Project;
use crate::rootfs::{self, CopyRules};
use crate::storage::StorageError;
use crate::version::{self, Version, VersionError, Versioner};
use crate::yaml::Pos;

/// The default `PATH` of builds and commands.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Version(#[from] VersionError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    IdMap(#[from] IdMapError),
    #[error("{pos}: {source}")]
    Privileged {
        pos: String,
        source: PrivilegedError,
    },
    #[error("{pos}: step !{step} failed with {status}; log: {log}")]
    StepFailed {
        pos: Pos,
        step: &'static str,
        status: String,
        log: String,
    },
    #[error("{pos}: !{step} is not supported in this release")]
    Unsupported { pos: Pos, step: &'static str },
    #[error("{pos}: {message}")]
    Step { pos: Pos, message: String },
    #[error("{pos}: start !{step}: {source}")]
    Spawn {
        pos: Pos,
        step: &'static str,
        source: isolation::SpawnError,
    },
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("container \"{0}\" version changed during build")]
    Changed(String),
    #[error("container \"{name}\" is outdated (have {have}, need {need})")]
    Outdated {
        name: String,
        have: String,
        need: String,
    },
    #[error("container \"{0}\" is not built (.vagga/{0} is missing)")]
    NotBuilt(String),
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> BuildError + 'a {
    move |source| BuildError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// How to treat a stale or missing image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildMode {
    /// Build when the version changed.
    Normal,
    /// Rebuild even when the version exists (`_build --force`).
    Force,
    /// Fail with exit 29 when stale (`--no-build`).
    NoBuild,
    /// Use `.vagga/<name>` as is (`--no-version-check`).
    NoVersionCheck,
}

/// Device nodes cannot be created in a user namespace: the target's `/dev` gets bind mounts
/// of the container's nodes (the host's) before debootstrap's second stage needs them.
/// `$1` is the target, the rest debootstrap's arguments.
const BIND_DEVICES_THEN_DEBOOTSTRAP: &str = r#"target=$1; shift
mkdir -p "$target/dev"
for node in null zero full random urandom tty; do
    [ -e "$target/dev/$node" ] || : > "$target/dev/$node"
    mount --bind "/dev/$node" "$target/dev/$node"
done
exec debootstrap "$@"
"#;

/// A ready image.
#[derive(Debug, Clone)]
pub struct Built {
    pub name: String,
    /// The host path of the image root.
    pub root: PathBuf,
    pub short: String,
}

/// Builds containers of a project, each at most once per run.
pub struct Builder<'a> {
    project: &'a Project,
    done: BTreeMap<String, Built>,
}

impl std::fmt::Debug for Builder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder").field("done", &self.done).finish()
    }
}

impl<'a> Builder<'a> {
    pub fn new(project: &'a Project) -> Builder<'a> {
        Builder {
            project,
            done: BTreeMap::new(),
        }
    }

    /// Makes sure the image of `name` (and those it depends on) is ready.
    pub fn ensure(&mut self, name: &str, mode: BuildMode) -> Result<Built, BuildError> {
        if let Some(b) = self.done.get(name) {
            return Ok(b.clone());
        }
        let storage = &self.project.storage;
        if mode == BuildMode::NoVersionCheck {
            let link = storage.link(name);
            let root = fs::canonicalize(&link).map_err(|_| BuildError::NotBuilt(name.into()))?;
            let short = storage.linked_version(name).unwrap_or_default();
            let built = Built {
                name: name.into(),
                root,
                short,
            };
            self.done.insert(name.into(), built.clone());
            return Ok(built);
        }
        let order = self
            .project
            .config
            .dependency_order(name)
            .map_err(VersionError::from)?;
        for dep in order.iter().filter(|d| d.as_str() != name) {
            let dep_mode = if mode == BuildMode::Force {
                BuildMode::Normal
            } else {
                mode
            };
            self.ensure(dep, dep_mode)?;
        }
        let mut versioner = Versioner::new(&self.project.config, storage);
        let version = match versioner.version(name) {
            Ok(v) => Some(v),
            Err(VersionError::NotReady { .. }) if mode != BuildMode::NoBuild => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(v) = &version {
            let dir = storage.version_dir(name, v.short());
            if dir.join("root").is_dir() && mode != BuildMode::Force {
                return self.finish(name, v);
            }
            if mode == BuildMode::NoBuild {
                return Err(BuildError::Outdated {
                    name: name.into(),
                    have: storage
                        .linked_version(name)
                        .unwrap_or_else(|| "nothing".into()),
                    need: v.short().into(),
                });
            }
        } else if mode == BuildMode::NoBuild {
            return Err(BuildError::NotBuilt(name.into()));
        }
        storage.prepare()?;
        let _lock = storage.lock(name, self.project.settings.build_lock_wait)?;
        // Someone else may have built it while we waited.
        if let Some(v) = &version
            && mode != BuildMode::Force
            && storage.version_dir(name, v.short()).join("root").is_dir()
        {
            return self.finish(name, v);
        }
        let built = self.build(name, version.as_ref())?;
        self.finish(name, &built)
    }

    fn finish(&mut self, name: &str, version: &Version) -> Result<Built, BuildError> {
        let storage = &self.project.storage;
        let dir = storage.version_dir(name, version.short());
        if storage.linked_version(name).as_deref() != Some(version.short()) {
            storage.point_link(name, version.short())?;
        }
        // Marks the version as used, for `_clean --unused --at-least`.
        let _ = File::create(dir.join("last_use"));
        let built = Built {
            name: name.into(),
            root: dir.join("root"),
            short: version.short().into(),
        };
        self.done.insert(name.into(), built.clone());
        Ok(built)
    }

    fn build(&mut self, name: &str, version: Option<&Version>) -> Result<Version, BuildError> {
        let project = self.project;
        let storage = &project.storage;
        let entry = &project.config.containers[name];
        let container = &entry.def;
        let short = version.map_or_else(
            || format!("pending{}", std::process::id()),
            |v| v.short().to_owned(),
        );
        let tmp = storage.tmp_dir(name, &short);
        let userns = project.userns(container)?;
        let privileged = project.privileged(Some(container))?;
        if tmp.exists() {
            privileged
                .run(&Op::RemoveTree { path: tmp.clone() })
                .map_err(|source| BuildError::Privileged {
                    pos: format!("container \"{name}\""),
                    source,
                })?;
        }
        fs::create_dir_all(tmp.join("root")).map_err(io_err("create", &tmp))?;
        let root = tmp.join("root");
        fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(io_err("chmod", &root))?;
        let log_path = tmp.join("build.log");
        let log = File::create(&log_path).map_err(io_err("create", &log_path))?;
        let mut run = BuildRun {
            project,
            name,
            container,
            root,
            meta: tmp.clone(),
            log,
            timings: Vec::new(),
            started: Instant::now(),
            env: inherited_env(project, name),
            binds: Vec::new(),
            apt_updated: false,
            installed: Vec::new(),
            build_deps: Vec::new(),
            pip: PipConfig {
                cache_wheels: true,
                install_python: true,
                python_exe: "python3".into(),
                ..PipConfig::default()
            },
            npm: NpmConfig {
                npm_exe: "npm".into(),
                install_node: true,
                install_yarn: None,
                yarn_exe: None,
                yarn_version: None,
            },
            userns,
            privileged,
            progress: Progress::new(name, container.setup.len()),
        };
        let result = run.run_all();
        let timings = run.timings.join("");
        let _ = fs::write(tmp.join("timings.log"), &timings);
        run.progress.done();
        if let Err(e) = result {
            let _ = fs::create_dir_all(&storage.logs);
            let _ = fs::copy(&log_path, storage.logs.join(format!("{name}.failed.log")));
            return Err(e);
        }
        // Inputs must not have changed while the build ran.
        let mut versioner = Versioner::new(&project.config, storage);
        let after = versioner.version(name)?;
        if let Some(before) = version
            && before != &after
        {
            return Err(BuildError::Changed(name.into()));
        }
        let dest = storage.version_dir(name, after.short());
        if dest.exists() {
            privileged_remove(&run.privileged, &dest)?;
        }
        fs::rename(&tmp, &dest).map_err(io_err("rename", &tmp))?;
        if container.auto_clean && !project.settings.disable_auto_clean {
            self.remove_other_versions(name, after.short(), &run.privileged)?;
        }
        Ok(after)
    }

    fn remove_other_versions(
        &self,
        name: &str,
        keep: &str,
        privileged: &Privileged,
    ) -> Result<(), BuildError> {
        let roots = &self.project.storage.roots;
        let prefix = format!("{name}.");
        for entry in fs::read_dir(roots)
            .map_err(io_err("read", roots))?
            .flatten()
        {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if let Some(hash) = file_name.strip_prefix(&prefix)
                && hash != keep
                && hash.len() == 8
            {
                privileged_remove(privileged, &entry.path())?;
            }
        }
        Ok(())
    }
}

fn privileged_remove(privileged: &Privileged, path: &Path) -> Result<(), BuildError> {
    privileged
        .run(&Op::RemoveTree {
            path: path.to_owned(),
        })
        .map_err(|source| BuildError::Privileged {
            pos: path.display().to_string(),
            source,
        })
}

/// `!Env` of the containers this one copies (through `!Container`), then its own.
fn inherited_env(project: &Project, name: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if let Some(entry) = project.config.containers.get(name) {
        for step in &entry.def.setup {
            // Own !Env steps apply as they are reached.
            if let Step::Container(dep) = &step.value {
                env.extend(inherited_env(project, dep));
            }
        }
    }
    env
}

/// How often a spinner redraws.
const TICK: Duration = Duration::from_millis(120);

/// Build progress on stderr: a spinner per step when someone watches (see [`console`]),
/// plain lines otherwise.
struct Progress {
    name: String,
    total: usize,
    bar: Option<ProgressBar>,
    terminal: bool,
}

impl Progress {
    fn new(name: &str, total: usize) -> Progress {
        Progress {
            name: name.into(),
            total,
            bar: None,
            terminal: console::is_interactive(),
        }
    }

    fn step(&mut self, index: usize, what: &str) {
        self.done();
        let text = format!("[{}/{}] {what}", index + 1, self.total);
        if self.terminal {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix} {msg}  {elapsed_precise}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(self.name.clone());
            bar.set_message(text);
            bar.enable_steady_tick(TICK);
            self.bar = Some(bar);
        } else {
            eprintln!("{}: {text}", self.name);
        }
    }

    /// Runs `spawn` with the spinner's ticker thread stopped. `isolation` starts containers
    /// by a raw `clone3` of this process, and the C library's set*id wrappers in that copy
    /// wait forever for threads of the parent that the copy does not have.
    fn without_ticker<T>(&self, spawn: impl FnOnce() -> T) -> T {
        let Some(bar) = &self.bar else {
            return spawn();
        };
        bar.disable_steady_tick();
        let spawned = spawn();
        bar.enable_steady_tick(TICK);
        spawned
    }

    fn line(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn done(&mut self) {
        // The spinner gives way to a permanent line, so the terminal keeps every step.
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            eprintln!(
                "{} {}  {:.1}s",
                self.name,
                bar.message(),
                bar.elapsed().as_secs_f64()
            );
        }
    }
}

/// How a command runs inside the root being built.
struct RunSpec<'s> {
    argv: Vec<String>,
    uid: u32,
    gid: u32,
    groups: &'s [u32],
    workdir: &'s str,
    isolate_network: bool,
    env: Vec<(String, String)>,
    /// `external-user-id`: the id of the build namespace `uid` maps to.
    external_uid: Option<u32>,
}

impl<'s> RunSpec<'s> {
    fn root(argv: Vec<String>) -> RunSpec<'s> {
        RunSpec {
            argv,
            uid: 0,
            gid: 0,
            groups: &[],
            workdir: "/work",
            isolate_network: false,
            env: Vec::new(),
            external_uid: None,
        }
    }
}

struct BuildRun<'a> {
    project: &'a Project,
    name: &'a str,
    container: &'a Container,
    root: PathBuf,
    meta: PathBuf,
    log: File,
    timings: Vec<String>,
    started: Instant,
    env: BTreeMap<String, String>,
    /// Mounted into the root during later steps: (mount point, host dir, writable).
    binds: Vec<(String, PathBuf, bool)>,
    apt_updated: bool,
    installed: Vec<String>,
    build_deps: Vec<String>,
    pip: PipConfig,
    npm: NpmConfig,
    userns: UserNamespace,
    privileged: Privileged,
    progress: Progress,
}

fn describe(step: &Step) -> String {
    let detail = match step {
        Step::Tar(t) => t.url.clone(),
        Step::Sh(s) => s.lines().next().unwrap_or("").to_owned(),
        Step::Cmd(a)
        | Step::Install(a)
        | Step::BuildDeps(a)
        | Step::Py3Install(a)
        | Step::NpmInstall(a) => a.join(" "),
        Step::Copy(c) => format!("{} {}", c.source, c.path),
        Step::Remove(p) | Step::EnsureDir(p) | Step::EmptyDir(p) | Step::Container(p) => p.clone(),
        Step::Text(m) | Step::Env(m) => m.keys().cloned().collect::<Vec<_>>().join(" "),
        Step::Debian(d) => d.suite.clone(),
        _ => String::new(),
    };
    let mut text = format!("!{} {detail}", step.name());
    if text.len() > 60 {
        let mut cut = 57;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

impl BuildRun<'_> {
    fn run_all(&mut self) -> Result<(), BuildError> {
        self.prepare_root()?;
        for (index, step) in self.container.setup.iter().enumerate() {
            let what = console::plain_line(describe(&step.value).as_bytes());
            self.progress.step(index, &what);
            let start = Instant::now();
            let _ = writeln!(
                self.log,
                "=== [{}/{}] {} {what}",
                index + 1,
                self.container.setup.len(),
                step.pos
            );
            let result = self.step(step);
            let elapsed = start.elapsed();
            self.timings.push(format!(
                "{:>10.3}s {:>10.3}s  {} {what}\n",
                start.duration_since(self.started).as_secs_f64(),
                elapsed.as_secs_f64(),
                step.pos
            ));
            if let Err(e) = result {
                let _ = writeln!(self.log, "=== failed: {e}");
                return Err(e);
            }
        }
        self.finish_root()
    }

    fn privileged(&self, op: Op, pos: &Pos) -> Result<(), BuildError> {
        self.progress
            .without_ticker(|| self.privileged.run(&op))
            .map_err(|source| BuildError::Privileged {
                pos: pos.to_string(),
                source,
            })
    }

    fn placeholders(&self) -> Vec<String> {
        [
            &self.container.resolv_conf_path,
            &self.container.hosts_file_path,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }

    fn prepare_root(&mut self) -> Result<(), BuildError> {
        let op = Op::PrepareRoot {
            root: self.root.clone(),
            placeholders: self.placeholders(),
        };
        self.privileged
            .run(&op)
            .map_err(|source| BuildError::Privileged {
                pos: format!("container \"{}\"", self.name),
                source,
            })
    }

    fn step(&mut self, step: &Located<Step>) -> Result<(), BuildError> {
        let pos = &step.pos;
        let root = self.root.clone();
        match &step.value {
            Step::Tar(t) => {
                let archive = self.fetch(&t.url, t.sha256.as_deref(), pos)?;
                self.privileged(
                    Op::ExtractTar {
                        archive,
                        root,
                        path: t.path.clone(),
                        subdir: t.subdir.clone(),
                    },
                    pos,
                )?;
                // An archive may replace the mount points: put back what it lacks.
                self.prepare_root()
            }
            Step::Text(files) => {
                for (path, content) in files {
                    self.privileged(
                        Op::WriteText {
                            root: root.clone(),
                            path: path.clone(),
                            content: content.clone(),
                        },
                        pos,
                    )?;
                }
                Ok(())
            }
            Step::Copy(c) => {
                let src = if c.source.starts_with("/work") {
                    version::project_path(&self.project.config.root, &c.source, pos)?
                } else {
                    rootfs::resolve(&root, &c.source, true).map_err(|e| BuildError::Step {
                        pos: pos.clone(),
                        message: e.to_string(),
                    })?
                };
                let rules = CopyRules {
                    owner_uid: c.owner_uid,
                    owner_gid: c.owner_gid,
                    umask: c.umask,
                    preserve_permissions: c.preserve_permissions,
                    preserve_times: c.preserve_times,
                    ignore_regex: c.ignore_regex.clone(),
                    include_regex: c.include_regex.clone(),
                    rules: c.rules.clone(),
                    no_default_rules: c.no_default_rules,
                };
                self.privileged(
                    Op::Copy {
                        src,
                        root,
                        dest: c.path.clone(),
                        rules,
                    },
                    pos,
                )
            }
            Step::Depends(_) | Step::PipConfig(_) | Step::NpmConfig(_) => {
                match &step.value {
                    Step::PipConfig(p) => self.pip = p.clone(),
                    Step::NpmConfig(n) => self.npm = n.clone(),
                    _ => {}
                }
                Ok(())
            }
            Step::Env(vars) => {
                self.env
                    .extend(vars.iter().map(|(k, v)| (k.clone(), v.clone())));
                Ok(())
            }
            Step::Remove(path) => self.privileged(
                Op::Remove {
                    root,
                    path: path.clone(),
                },
                pos,
            ),
            Step::EnsureDir(path) => self.privileged(
                Op::EnsureDir {
                    root,
                    path: path.clone(),
                },
                pos,
            ),
            Step::EmptyDir(path) => self.privileged(
                Op::EmptyDir {
                    root,
                    path: path.clone(),
                },
                pos,
            ),
            Step::CacheDirs(dirs) => {
                for (path, cache_name) in dirs {
                    let host = self.cache_dir(cache_name, pos)?;
                    self.privileged(
                        Op::EnsureDir {
                            root: root.clone(),
                            path: path.clone(),
                        },
                        pos,
                    )?;
                    self.binds.push((path.clone(), host, true));
                }
                Ok(())
            }
            Step::Container(dep) => {
                let dep_root = self.dependency_root(dep)?;
                self.privileged(
                    Op::CopyTo {
                        src: dep_root,
                        dest: root,
                        rules: CopyRules::exact(),
                    },
                    pos,
                )
            }
            Step::Build(b) => {
                let dep_root = self.dependency_root(&b.container)?;
                let source =
                    rootfs::resolve(&dep_root, &b.source, true).map_err(|e| BuildError::Step {
                        pos: pos.clone(),
                        message: e.to_string(),
                    })?;
                if let Some(mount) = &b.temporary_mount {
                    self.privileged(
                        Op::EnsureDir {
                            root,
                            path: mount.clone(),
                        },
                        pos,
                    )?;
                    self.binds.push((mount.clone(), source, false));
                    return Ok(());
                }
                let dest = b.path.clone().unwrap_or_else(|| b.source.clone());
                let mut rules = CopyRules::exact();
                if b.rules.is_some() {
                    rules.rules = b.rules.clone();
                    rules.no_default_rules = true;
                }
                self.privileged(
                    Op::Copy {
                        src: source,
                        root,
                        dest,
                        rules,
                    },
                    pos,
                )
            }
            Step::Sh(script) => self.run_step(
                step,
                RunSpec::root(vec!["/bin/sh".into(), "-exc".into(), script.clone()]),
            ),
            Step::Cmd(argv) => {
                if argv.is_empty() {
                    return Err(BuildError::Step {
                        pos: pos.clone(),
                        message: "!Cmd needs a program".into(),
                    });
                }
                self.run_step(step, RunSpec::root(argv.clone()))
            }
            Step::RunAs(r) => {
                let spec = RunSpec {
                    argv: vec!["/bin/sh".into(), "-exc".into(), r.script.clone()],
                    uid: r.user_id,
                    gid: r.group_id,
                    groups: &r.supplementary_gids,
                    workdir: &r.work_dir,
                    isolate_network: r.isolate_network,
                    env: Vec::new(),
                    external_uid: r.external_user_id,
                };
                self.run_step(step, spec)
            }
            Step::Install(pkgs) => {
                self.apt_install(step, pkgs)?;
                self.installed.extend(pkgs.iter().cloned());
                Ok(())
            }
            Step::BuildDeps(pkgs) => {
                self.apt_install(step, pkgs)?;
                self.build_deps.extend(pkgs.iter().cloned());
                Ok(())
            }
            Step::Debian(d) => self.debootstrap(step, d),
            Step::Py3Install(pkgs) => self.pip_install(step, pkgs.clone(), None),
            Step::Py3Requirements(file) => {
                let file = file.clone().unwrap_or_else(|| "requirements.txt".into());
                self.pip_install(step, Vec::new(), Some(file))
            }
            Step::NpmInstall(pkgs) => self.npm_install(step, pkgs.clone(), None),
            Step::NpmDependencies(d) => {
                let d = d.clone().unwrap_or_default();
                self.npm_install(step, Vec::new(), Some(d))
            }
            other => Err(BuildError::Unsupported {
                pos: pos.clone(),
                step: other.name(),
            }),
        }
    }

    fn dependency_root(&self, dep: &str) -> Result<PathBuf, BuildError> {
        let storage = &self.project.storage;
        let mut versioner = Versioner::new(&self.project.config, storage);
        let v = versioner.version(dep)?;
        Ok(storage.version_dir(dep, v.short()).join("root"))
    }

    fn cache_dir(&self, name: &str, pos: &Pos) -> Result<PathBuf, BuildError> {
        if name.is_empty() || name.starts_with('/') || name.split('/').any(|p| p == "..") {
            return Err(BuildError::Step {
                pos: pos.clone(),
                message: format!("cache name {name:?} must be a non-empty relative path"),
            });
        }
        let host = self.project.storage.cache.join(name);
        fs::create_dir_all(&host).map_err(io_err("create", &host))?;
        Ok(host)
    }

    /// A local archive's path, or the cached download of a remote one, checked against
    /// `sha256` when given.
    fn fetch(&self, url: &str, sha256: Option<&str>, pos: &Pos) -> Result<PathBuf, BuildError> {
        let path = if version::is_remote(url) {
            self.download(url, pos)?
        } else {
            let path = version::project_path(&self.project.config.root, url, pos)?;
            if !path.is_file() {
                return Err(BuildError::Step {
                    pos: pos.clone(),
                    message: format!("{url}: no such file {}", path.display()),
                });
            }
            path
        };
        if let Some(expected) = sha256 {
            let actual = sha256_file(&path).map_err(io_err("read", &path))?;
            if !actual.eq_ignore_ascii_case(expected) {
                if version::is_remote(url) {
                    let _ = fs::remove_file(&path);
                }
                return Err(BuildError::Step {
                    pos: pos.clone(),
                    message: format!("{url}: sha256 mismatch: expected {expected}, got {actual}"),
                });
            }
        }
        Ok(path)
    }

    fn download(&self, url: &str, pos: &Pos) -> Result<PathBuf, BuildError> {
        let dir = self.project.storage.cache.join("downloads");
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let digest = hex::encode(Sha256::digest(url.as_bytes()));
        let base = url
            .rsplit('/')
            .next()
            .filter(|b| !b.is_empty())
            .unwrap_or("download");
        let path = dir.join(format!("{}-{base}", &digest[..8]));
        if path.is_file() {
            return Ok(path);
        }
        self.progress.line(&format!("downloading {url}"));
        let fail = |message: String| BuildError::Step {
            pos: pos.clone(),
            message: format!("download {url}: {message}"),
        };
        let response = ureq::get(url).call().map_err(|e| fail(e.to_string()))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io_err("create", &dir))?;
        std::io::copy(&mut response.into_reader(), &mut tmp).map_err(|e| fail(e.to_string()))?;
        tmp.persist(&path).map_err(|e| fail(e.error.to_string()))?;
        Ok(path)
    }

    /// Runs a program in the root being built and fails the step on a non-zero exit.
    fn run_step(&mut self, step: &Located<Step>, spec: RunSpec<'_>) -> Result<(), BuildError> {
        let status = self.run_in_root(step, spec)?;
        if status.success() {
            return Ok(());
        }
        let log = self
            .project
            .storage
            .logs
            .join(format!("{}.failed.log", self.name));
        let log = log
            .strip_prefix(&self.project.config.root)
            .map(Path::to_path_buf)
            .unwrap_or(log);
        Err(BuildError::StepFailed {
            pos: step.pos.clone(),
            step: step.value.name(),
            status: status.to_string(),
            log: log.display().to_string(),
        })
    }

    fn run_in_root(
        &mut self,
        step: &Located<Step>,
        spec: RunSpec<'_>,
    ) -> Result<isolation::ExitStatus, BuildError> {
        self.prepare_root()?;
        let pos = &step.pos;
        let mut userns = self.userns.clone();
        if let Some(external) = spec.external_uid {
            crate::idmap::map_external_user(&mut userns, spec.uid, external, pos)?;
        }
        let mut c = Sandbox::new(&self.root, &spec.argv[0]);
        c.args(&spec.argv[1..])
            .root_writable(true)
            .init(true)
            .user_namespace(userns)
            .identity(spec.uid, spec.gid, spec.groups)
            .workdir(spec.workdir)
            .network_namespace(spec.isolate_network)
            .volume(
                "/work",
                Volume::ReadWrite {
                    source: self.project.config.root.clone(),
                },
            )
            .volume(
                "/tmp",
                Volume::Tmpfs {
                    size: None,
                    mode: 0o1777,
                    subdirs: Vec::new(),
                },
            );
        for (inside, host, writable) in &self.binds {
            let volume = if *writable {
                Volume::ReadWrite {
                    source: host.clone(),
                }
            } else {
                Volume::ReadOnly {
                    source: host.clone(),
                }
            };
            c.volume(inside, volume);
        }
        for (file, host) in [
            (&self.container.resolv_conf_path, "/etc/resolv.conf"),
            (&self.container.hosts_file_path, "/etc/hosts"),
        ] {
            if let Some(file) = file
                && let Ok(inside) = rootfs::resolve(&self.root, file, false)
                && fs::symlink_metadata(&inside).is_ok_and(|m| m.is_file())
                && Path::new(host).exists()
            {
                c.volume(
                    file,
                    Volume::ReadOnly {
                        source: host.into(),
                    },
                );
            }
        }
        let mut env = BTreeMap::new();
        env.insert("TERM".to_owned(), "dumb".to_owned());
        env.insert("HOME".to_owned(), "/tmp".to_owned());
        env.insert("PATH".to_owned(), DEFAULT_PATH.to_owned());
        if self.project.settings.proxy_env_vars {
            for (k, v) in std::env::vars() {
                if k.to_ascii_lowercase().ends_with("_proxy") {
                    env.insert(k, v);
                }
            }
        }
        env.extend(self.env.clone());
        env.extend(spec.env.iter().cloned());
        for (k, v) in &env {
            c.env(k, v);
        }
        self.spawn_logged(c, step)
    }

    /// Starts `c` with its output going to the build log and the progress, and waits for it.
    fn spawn_logged(
        &mut self,
        mut c: Sandbox,
        step: &Located<Step>,
    ) -> Result<isolation::ExitStatus, BuildError> {
        let pos = &step.pos;
        let (reader, writer) = std::io::pipe().map_err(io_err("create pipe for", &self.root))?;
        let writer: OwnedFd = writer.into();
        let writer2 = writer
            .try_clone()
            .map_err(io_err("create pipe for", &self.root))?;
        c.stdout(Stdio::Fd(writer))
            .stderr(Stdio::Fd(writer2))
            .stdin(Stdio::Null);
        let spawned = self.progress.without_ticker(|| c.spawn());
        // The container holds the pipe's write ends: drop them so reading ends with the child.
        drop(c);
        let mut child = spawned.map_err(|source| BuildError::Spawn {
            pos: pos.clone(),
            step: step.value.name(),
            source,
        })?;
        let mut reader = BufReader::new(reader);
        let mut raw = Vec::new();
        // Byte lines: output that is not UTF-8 must not stop the reading (the step would
        // block on a full pipe).
        while reader.read_until(b'\n', &mut raw).is_ok_and(|n| n > 0) {
            let line = console::plain_line(&raw);
            raw.clear();
            let _ = writeln!(self.log, "{line}");
            self.progress.line(&line);
        }
        child.wait().map_err(|e| BuildError::Step {
            pos: pos.clone(),
            message: format!("wait for !{}: {e}", step.value.name()),
        })
    }

    fn is_debian(&self) -> bool {
        let os_release = rootfs::resolve(&self.root, "/etc/os-release", true)
            .ok()
            .and_then(|p| fs::read_to_string(p).ok())
            .unwrap_or_default();
        let debian_like = os_release.lines().any(|l| {
            let l = l.trim();
            (l.starts_with("ID=") || l.starts_with("ID_LIKE=")) && l.contains("debian")
        });
        debian_like
            && rootfs::resolve(&self.root, "/usr/bin/apt-get", true).is_ok_and(|p| p.exists())
    }

    fn apt_binds(&mut self, pos: &Pos) -> Result<(), BuildError> {
        if self
            .binds
            .iter()
            .any(|(p, _, _)| p == "/var/cache/apt/archives")
        {
            return Ok(());
        }
        for (inside, cache) in [
            ("/var/cache/apt/archives", "apt-cache"),
            ("/var/lib/apt/lists", "apt-lists"),
        ] {
            let host = self.cache_dir(cache, pos)?;
            fs::create_dir_all(host.join("partial")).map_err(io_err("create", &host))?;
            self.privileged(
                Op::EnsureDir {
                    root: self.root.clone(),
                    path: inside.into(),
                },
                pos,
            )?;
            self.binds.push((inside.into(), host, true));
        }
        Ok(())
    }

    fn apt_install(&mut self, step: &Located<Step>, pkgs: &[String]) -> Result<(), BuildError> {
        if !self.is_debian() {
            return Err(BuildError::Step {
                pos: step.pos.clone(),
                message: format!(
                    "!{} needs a Debian-based container (apt-get and /etc/os-release with ID debian); start the container with !Debian or a Debian tarball",
                    step.value.name()
                ),
            });
        }
        self.apt_binds(&step.pos)?;
        let env = vec![("DEBIAN_FRONTEND".to_owned(), "noninteractive".to_owned())];
        if !self.apt_updated {
            let mut spec = RunSpec::root(vec!["apt-get".into(), "update".into()]);
            spec.env = env.clone();
            self.run_step(step, spec)?;
            self.apt_updated = true;
        }
        if pkgs.is_empty() {
            return Ok(());
        }
        let mut argv: Vec<String> = ["apt-get", "install", "-y", "--no-install-recommends"]
            .map(String::from)
            .to_vec();
        argv.extend(pkgs.iter().cloned());
        let mut spec = RunSpec::root(argv);
        spec.env = env;
        self.run_step(step, spec)
    }

    fn debootstrap(
        &mut self,
        step: &Located<Step>,
        d: &crate::config::DebianStep,
    ) -> Result<(), BuildError> {
        let pos = &step.pos;
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join("debootstrap").is_file()))
            .unwrap_or(false);
        if !found {
            return Err(BuildError::Step {
                pos: pos.clone(),
                message: "!Debian needs debootstrap: sudo apt-get install debootstrap".into(),
            });
        }
        let mirror = d
            .mirror
            .clone()
            .unwrap_or_else(|| self.project.settings.debian_mirror.clone());
        let cache = self.cache_dir("apt-cache", pos)?;
        let mut args: Vec<OsString> = vec![
            format!("--variant={}", d.variant.as_deref().unwrap_or("minbase")).into(),
            format!("--cache-dir={}", cache.display()).into(),
        ];
        if let Some(arch) = &d.arch {
            args.push(format!("--arch={arch}").into());
        }
        if let Some(c) = &d.components {
            args.push(format!("--components={}", c.join(",")).into());
        }
        if !d.include.is_empty() {
            args.push(format!("--include={}", d.include.join(",")).into());
        }
        args.extend([
            d.suite.clone().into(),
            self.root.clone().into(),
            mirror.into(),
        ]);
        let status = if self.project.caller.is_root() {
            self.debootstrap_on_host(&args)?
        } else {
            self.debootstrap_in_namespace(step, &args)?
        };
        if let Some(status) = status {
            let log = self
                .project
                .storage
                .logs
                .join(format!("{}.failed.log", self.name));
            return Err(BuildError::StepFailed {
                pos: pos.clone(),
                step: "Debian",
                status,
                log: log.display().to_string(),
            });
        }
        self.prepare_root()
    }

    /// Runs debootstrap as the host's root; returns the exit status when it failed.
    fn debootstrap_on_host(&mut self, args: &[OsString]) -> Result<Option<String>, BuildError> {
        let output = std::process::Command::new("debootstrap")
            .args(args)
            .output()
            .map_err(io_err("run debootstrap for", &self.root))?;
        for printed in [&output.stdout, &output.stderr] {
            for line in printed.split_inclusive(|b| *b == b'\n') {
                let _ = writeln!(self.log, "{}", console::plain_line(line));
            }
        }
        Ok((!output.status.success()).then(|| output.status.to_string()))
    }

    /// Runs the host's debootstrap as root of the build's user namespace, where the mapped
    /// ids make its `chown`s work; returns the exit status when it failed.
    fn debootstrap_in_namespace(
        &mut self,
        step: &Located<Step>,
        args: &[OsString],
    ) -> Result<Option<String>, BuildError> {
        let mut c =
            self.privileged
                .host_view("/bin/sh")
                .map_err(|source| BuildError::Privileged {
                    pos: step.pos.to_string(),
                    source,
                })?;
        c.args(["-ec", BIND_DEVICES_THEN_DEBOOTSTRAP, "debootstrap"])
            .arg(&self.root)
            .args(args)
            .init(true)
            // debootstrap then skips its `mknod` test and keeps the device nodes it finds.
            .env("container", "lxc");
        for (k, v) in std::env::vars() {
            if k.to_ascii_lowercase().ends_with("_proxy") {
                c.env(k, v);
            }
        }
        let status = self.spawn_logged(c, step)?;
        Ok((!status.success()).then(|| status.to_string()))
    }

    fn ensure_packages(&mut self, step: &Located<Step>, pkgs: &[&str]) -> Result<(), BuildError> {
        let missing: Vec<String> = pkgs
            .iter()
            .filter(|p| !self.installed.iter().any(|i| i == *p))
            .map(|p| p.to_string())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        self.apt_install(step, &missing)?;
        self.installed.extend(missing);
        Ok(())
    }

    fn pip_install(
        &mut self,
        step: &Located<Step>,
        pkgs: Vec<String>,
        requirements: Option<String>,
    ) -> Result<(), BuildError> {
        if self.pip.install_python {
            self.ensure_packages(step, &["python3", "python3-pip"])?;
        }
        let cache = self.cache_dir("pip-cache-http", &step.pos)?;
        self.privileged(
            Op::EnsureDir {
                root: self.root.clone(),
                path: "/root/.cache/pip".into(),
            },
            &step.pos,
        )?;
        if !self.binds.iter().any(|(p, _, _)| p == "/root/.cache/pip") {
            self.binds.push(("/root/.cache/pip".into(), cache, true));
        }
        let mut argv = vec![
            self.pip.python_exe.clone(),
            "-m".into(),
            "pip".into(),
            "install".into(),
        ];
        if !self.pip.dependencies {
            argv.push("--no-deps".into());
        }
        for (i, url) in self.pip.index_urls.iter().enumerate() {
            argv.push(
                if i == 0 {
                    "--index-url"
                } else {
                    "--extra-index-url"
                }
                .into(),
            );
            argv.push(url.clone());
        }
        for link in &self.pip.find_links {
            argv.extend(["--find-links".into(), link.clone()]);
        }
        for host in &self.pip.trusted_hosts {
            argv.extend(["--trusted-host".into(), host.clone()]);
        }
        argv.extend(pkgs);
        if let Some(file) = requirements {
            let inside = if file.starts_with('/') {
                file
            } else {
                format!("/work/{file}")
            };
            argv.extend(["-r".into(), inside]);
        }
        let mut spec = RunSpec::root(argv);
        spec.env = vec![
            ("PIP_BREAK_SYSTEM_PACKAGES".into(), "1".into()),
            ("HOME".into(), "/root".into()),
        ];
        self.run_step(step, spec)?;
        let freeze = self.capture(
            step,
            vec![
                self.pip.python_exe.clone(),
                "-m".into(),
                "pip".into(),
                "freeze".into(),
            ],
        )?;
        fs::write(self.meta.join("pip3-freeze.txt"), freeze).map_err(io_err("write", &self.meta))
    }

    fn npm_install(
        &mut self,
        step: &Located<Step>,
        pkgs: Vec<String>,
        deps: Option<crate::config::NpmDependencies>,
    ) -> Result<(), BuildError> {
        if self.npm.install_node {
            self.ensure_packages(step, &["nodejs", "npm"])?;
        }
        let cache = self.cache_dir("npm-cache", &step.pos)?;
        self.privileged(
            Op::EnsureDir {
                root: self.root.clone(),
                path: "/root/.npm".into(),
            },
            &step.pos,
        )?;
        if !self.binds.iter().any(|(p, _, _)| p == "/root/.npm") {
            self.binds.push(("/root/.npm".into(), cache, true));
        }
        let mut argv = vec![
            self.npm.npm_exe.clone(),
            "install".into(),
            "--global".into(),
        ];
        argv.extend(pkgs);
        if let Some(d) = deps {
            let text = fs::read_to_string(self.project.config.root.join(&d.file))
                .map_err(io_err("read", &self.project.config.root.join(&d.file)))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| BuildError::Step {
                    pos: step.pos.clone(),
                    message: format!("{}: {e}", d.file),
                })?;
            let mut take = |key: &str, wanted: bool| {
                if !wanted {
                    return;
                }
                if let Some(map) = json.get(key).and_then(|v| v.as_object()) {
                    for (name, version) in map {
                        let version = version.as_str().unwrap_or("*");
                        argv.push(format!("{name}@{version}"));
                    }
                }
            };
            take("dependencies", d.package);
            take("devDependencies", d.dev);
            take("peerDependencies", d.peer);
            take("optionalDependencies", d.optional);
        }
        let mut spec = RunSpec::root(argv);
        spec.env = vec![("HOME".into(), "/root".into())];
        self.run_step(step, spec)?;
        let list = self.capture(
            step,
            vec![self.npm.npm_exe.clone(), "list".into(), "--global".into()],
        )?;
        fs::write(self.meta.join("npm-list.txt"), list).map_err(io_err("write", &self.meta))
    }

    /// Runs a program in the root and returns what it printed (also logged).
    fn capture(&mut self, step: &Located<Step>, argv: Vec<String>) -> Result<String, BuildError> {
        let start = fs::metadata(self.meta.join("build.log"))
            .map(|m| m.len())
            .unwrap_or(0);
        let mut spec = RunSpec::root(argv);
        spec.env = vec![("HOME".into(), "/root".into())];
        self.run_in_root(step, spec)?;
        let log = fs::read(self.meta.join("build.log")).unwrap_or_default();
        Ok(String::from_utf8_lossy(log.get(start as usize..).unwrap_or(&[])).into_owned())
    }

    fn finish_root(&mut self) -> Result<(), BuildError> {
        let purge: Vec<String> = self
            .build_deps
            .iter()
            .filter(|p| !self.installed.contains(p))
            .cloned()
            .collect();
        if !purge.is_empty()
            && let Some(step) = self
                .container
                .setup
                .iter()
                .rev()
                .find(|s| matches!(s.value, Step::BuildDeps(_)))
        {
            let mut argv: Vec<String> = ["apt-get", "purge", "-y", "--auto-remove"]
                .map(String::from)
                .to_vec();
            argv.extend(purge);
            let mut spec = RunSpec::root(argv);
            spec.env = vec![("DEBIAN_FRONTEND".into(), "noninteractive".into())];
            self.run_step(step, spec)?;
        }
        if self.apt_updated
            && let Ok(list) = self.capture_packages()
        {
            let _ = fs::write(self.meta.join("debian-packages.txt"), list);
        }
        let pos = Pos {
            file: std::sync::Arc::new(PathBuf::from(format!("container \"{}\"", self.name))),
            line: 0,
            col: 0,
        };
        if let Some(dirs) = &self.container.data_dirs {
            self.privileged(
                Op::KeepDataDirs {
                    root: self.root.clone(),
                    dirs: dirs.clone(),
                },
                &pos,
            )?;
        }
        self.prepare_root()
    }

    fn capture_packages(&mut self) -> Result<String, BuildError> {
        let Some(step) = self
            .container
            .setup
            .iter()
            .find(|s| matches!(s.value, Step::Install(_) | Step::BuildDeps(_)))
        else {
            return Ok(String::new());
        };
        self.capture(step, vec!["dpkg-query".into(), "-W".into()])
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}
