//! The vagga.yaml language: containers, build steps, commands and volumes, read from the main
//! file and its mixins into typed values, with every error naming file, line and column.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, IgnoredAny, Visitor};

use crate::de::{DeError, Located, from_node};
use crate::yaml::{self, Node, Pos, Value, YamlError};

/// The version of the original's config language this release implements: what
/// `minimum-vagga` is compared with.
pub const LANGUAGE_VERSION: &str = "0.8.1";

/// Files that are read as mixins after the listed ones, in this order.
pub const IMPLICIT_MIXINS: &[&str] =
    &["vagga.local.yaml", ".vagga.local.yaml", ".vagga/local.yaml"];

/// Loading the configuration failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no vagga.yaml found in {} or its parents", .0.display())]
    NotFound(PathBuf),
    #[error(transparent)]
    Yaml(#[from] YamlError),
    #[error(transparent)]
    Invalid(#[from] DeError),
    #[error("Please upgrade vagga to at least \"{0}\"")]
    TooOld(String),
    #[error("Container \"{name}\" has cyclic dependency ({chain})")]
    Cycle { name: String, chain: String },
}

/// A uid or gid range, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub start: u32,
    pub end: u32,
}

impl IdRange {
    pub fn count(&self) -> u32 {
        self.end - self.start + 1
    }
}

impl fmt::Display for IdRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// `uids`/`gids`: a list of `N` or `A-B`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdRanges(pub Vec<IdRange>);

impl Default for IdRanges {
    fn default() -> Self {
        IdRanges(vec![IdRange {
            start: 0,
            end: 65535,
        }])
    }
}

impl IdRanges {
    pub fn total(&self) -> u64 {
        self.0.iter().map(|r| u64::from(r.count())).sum()
    }
}

impl<'de> Deserialize<'de> for IdRanges {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = "expected a list of ranges like 0-65535";
        struct Item(IdRange);
        impl<'de> Deserialize<'de> for Item {
            fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = IdRange;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a range like 0-65535")
                    }
                    fn visit_i64<E: de::Error>(self, n: i64) -> Result<IdRange, E> {
                        let n = u32::try_from(n).map_err(|_| E::custom(EXPECTED))?;
                        Ok(IdRange { start: n, end: n })
                    }
                    fn visit_u64<E: de::Error>(self, n: u64) -> Result<IdRange, E> {
                        self.visit_i64(i64::try_from(n).map_err(|_| E::custom(EXPECTED))?)
                    }
                    fn visit_str<E: de::Error>(self, s: &str) -> Result<IdRange, E> {
                        let parse =
                            |t: &str| t.trim().parse::<u32>().map_err(|_| E::custom(EXPECTED));
                        match s.split_once('-') {
                            Some((a, b)) => {
                                let (start, end) = (parse(a)?, parse(b)?);
                                if start > end {
                                    return Err(E::custom(format!(
                                        "range {s} ends before it starts"
                                    )));
                                }
                                Ok(IdRange { start, end })
                            }
                            None => {
                                let n = parse(s)?;
                                Ok(IdRange { start: n, end: n })
                            }
                        }
                    }
                    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<IdRange, A::Error> {
                        Err(de::Error::custom(EXPECTED))
                    }
                    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<IdRange, A::Error> {
                        Err(de::Error::custom(EXPECTED))
                    }
                }
                d.deserialize_any(V).map(Item)
            }
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IdRanges;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of ranges like 0-65535")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<IdRanges, A::Error> {
                let mut out = Vec::new();
                while let Some(Item(r)) = seq.next_element()? {
                    out.push(r);
                }
                Ok(IdRanges(out))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<IdRanges, E> {
                Err(E::custom(EXPECTED))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<IdRanges, E> {
                Err(E::custom(EXPECTED))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<IdRanges, E> {
                Err(E::custom(EXPECTED))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<IdRanges, A::Error> {
                Err(de::Error::custom(EXPECTED))
            }
        }
        d.deserialize_any(V)
    }
}

fn default_shell() -> Vec<String> {
    ["/bin/sh", "-c", "$cmdline", "--"]
        .map(String::from)
        .to_vec()
}

fn default_resolv() -> Option<String> {
    Some("/etc/resolv.conf".into())
}

fn default_hosts() -> Option<String> {
    Some("/etc/hosts".into())
}

/// A container: how its image is built and what it gets at run time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Container {
    #[serde(default)]
    pub setup: Vec<Located<Step>>,
    #[serde(default)]
    pub environ: BTreeMap<String, String>,
    pub environ_file: Option<String>,
    #[serde(default)]
    pub volumes: BTreeMap<String, Located<Volume>>,
    #[serde(default)]
    pub uids: Located<IdRanges>,
    #[serde(default)]
    pub gids: Located<IdRanges>,
    #[serde(default)]
    pub auto_clean: bool,
    pub data_dirs: Option<Vec<String>>,
    #[serde(default = "default_shell")]
    pub default_shell: Vec<String>,
    #[serde(default = "default_resolv")]
    pub resolv_conf_path: Option<String>,
    #[serde(default = "default_hosts")]
    pub hosts_file_path: Option<String>,
    pub image_cache_url: Option<Located<String>>,
}

impl<T: Default> Default for Located<T> {
    fn default() -> Self {
        Located {
            pos: Pos {
                file: std::sync::Arc::new(PathBuf::from("<default>")),
                line: 0,
                col: 0,
            },
            value: T::default(),
        }
    }
}

/// A value written either as a scalar or as a mapping with that scalar as one of its keys
/// (`!Depends data.txt` or `!Depends {path: data.txt, rules: [..]}`): a newtype around the
/// derived mapping form keeps one definition of the fields.
macro_rules! full_form {
    ($ty:ident, $full:ident, $field:ident, { $($body:tt)* }) => {
        #[derive(Debug, Clone, Default, PartialEq, Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        pub struct $full { $($body)* }

        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct $ty(pub $full);

        impl std::ops::Deref for $ty {
            type Target = $full;
            fn deref(&self) -> &$full { &self.0 }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "a {} or a mapping", stringify!($field))
                    }
                    fn visit_str<E: de::Error>(self, s: &str) -> Result<$ty, E> {
                        Ok($ty($full { $field: s.into(), ..Default::default() }))
                    }
                    fn visit_i64<E: de::Error>(self, n: i64) -> Result<$ty, E> {
                        self.visit_str(&n.to_string())
                    }
                    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<$ty, A::Error> {
                        $full::deserialize(de::value::MapAccessDeserializer::new(map)).map($ty)
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

fn default_path_root() -> String {
    "/".into()
}

fn default_subdir() -> String {
    ".".into()
}

/// `!Tar`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TarStep {
    pub url: String,
    pub sha256: Option<String>,
    #[serde(default = "default_path_root")]
    pub path: String,
    #[serde(default = "default_subdir")]
    pub subdir: String,
}

full_form!(DebianStep, DebianFull, suite, {
    #[serde(default)]
    pub suite: String,
    pub mirror: Option<String>,
    pub arch: Option<String>,
    pub variant: Option<String>,
    pub components: Option<Vec<String>>,
    #[serde(default)]
    pub include: Vec<String>,
});

fn default_work() -> String {
    "/work".into()
}

/// `!RunAs`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RunAsStep {
    pub script: String,
    #[serde(default)]
    pub user_id: u32,
    #[serde(default)]
    pub group_id: u32,
    pub external_user_id: Option<u32>,
    #[serde(default)]
    pub supplementary_gids: Vec<u32>,
    #[serde(default = "default_work")]
    pub work_dir: String,
    #[serde(default)]
    pub isolate_network: bool,
}

fn default_umask() -> u32 {
    0o002
}

/// `!Copy`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CopyStep {
    pub source: String,
    pub path: String,
    pub owner_uid: Option<u32>,
    pub owner_gid: Option<u32>,
    #[serde(default = "default_umask")]
    pub umask: u32,
    #[serde(default)]
    pub preserve_permissions: bool,
    #[serde(default)]
    pub preserve_times: bool,
    pub ignore_regex: Option<String>,
    pub include_regex: Option<String>,
    pub rules: Option<Vec<String>>,
    #[serde(default)]
    pub no_default_rules: bool,
}

full_form!(DependsStep, DependsFull, path, {
    #[serde(default)]
    pub path: String,
    pub rules: Option<Vec<String>>,
    #[serde(default)]
    pub no_default_rules: bool,
});

/// `!Build`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BuildStep {
    pub container: String,
    #[serde(default = "default_path_root")]
    pub source: String,
    pub path: Option<String>,
    pub temporary_mount: Option<String>,
    pub rules: Option<Vec<String>>,
}

fn yes() -> bool {
    true
}

fn python3() -> String {
    "python3".into()
}

/// `!PipConfig`.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PipConfig {
    #[serde(default)]
    pub dependencies: bool,
    #[serde(default)]
    pub index_urls: Vec<String>,
    #[serde(default)]
    pub find_links: Vec<String>,
    #[serde(default)]
    pub trusted_hosts: Vec<String>,
    #[serde(default = "yes")]
    pub cache_wheels: bool,
    #[serde(default = "yes")]
    pub install_python: bool,
    #[serde(default)]
    pub allow_dev: bool,
    #[serde(default = "python3")]
    pub python_exe: String,
    #[serde(default)]
    pub get_pip_args: Vec<String>,
}

fn npm() -> String {
    "npm".into()
}

/// `!NpmConfig`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NpmConfig {
    #[serde(default = "npm")]
    pub npm_exe: String,
    #[serde(default = "yes")]
    pub install_node: bool,
    pub install_yarn: Option<IgnoredAnyEq>,
    pub yarn_exe: Option<String>,
    pub yarn_version: Option<String>,
}

/// `!NpmDependencies`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NpmDependencies {
    #[serde(default = "package_json")]
    pub file: String,
    #[serde(default = "yes")]
    pub package: bool,
    #[serde(default = "yes")]
    pub dev: bool,
    #[serde(default)]
    pub peer: bool,
    #[serde(default = "yes")]
    pub bundled: bool,
    #[serde(default)]
    pub optional: bool,
}

fn package_json() -> String {
    "package.json".into()
}

impl Default for NpmDependencies {
    fn default() -> Self {
        NpmDependencies {
            file: package_json(),
            package: true,
            dev: true,
            peer: false,
            bundled: true,
            optional: false,
        }
    }
}

/// A value of a key kept only for compatibility (parsed, not used).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IgnoredAnyEq;

impl<'de> Deserialize<'de> for IgnoredAnyEq {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(d).map(|_| IgnoredAnyEq)
    }
}

/// A build step. Steps of later releases parse so existing files load, and fail when used.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub enum Step {
    Tar(TarStep),
    Debian(DebianStep),
    Install(Vec<String>),
    BuildDeps(Vec<String>),
    Sh(String),
    Cmd(Vec<String>),
    RunAs(RunAsStep),
    Env(BTreeMap<String, String>),
    Text(BTreeMap<String, String>),
    Copy(CopyStep),
    Depends(DependsStep),
    Remove(String),
    EnsureDir(String),
    EmptyDir(String),
    CacheDirs(BTreeMap<String, String>),
    Container(String),
    Build(BuildStep),
    PipConfig(PipConfig),
    Py3Install(Vec<String>),
    Py3Requirements(Option<String>),
    NpmConfig(NpmConfig),
    NpmInstall(Vec<String>),
    NpmDependencies(Option<NpmDependencies>),
    Ubuntu(IgnoredAnyEq),
    UbuntuRelease(IgnoredAnyEq),
    UbuntuRepo(IgnoredAnyEq),
    UbuntuPPA(IgnoredAnyEq),
    UbuntuUniverse(IgnoredAnyEq),
    AptTrust(IgnoredAnyEq),
    Alpine(IgnoredAnyEq),
    AlpineRepo(IgnoredAnyEq),
    Repo(IgnoredAnyEq),
    Download(IgnoredAnyEq),
    TarInstall(IgnoredAnyEq),
    Unzip(IgnoredAnyEq),
    Git(IgnoredAnyEq),
    GitInstall(IgnoredAnyEq),
    GitDescribe(IgnoredAnyEq),
    SubConfig(IgnoredAnyEq),
    Py2Install(IgnoredAnyEq),
    Py2Requirements(IgnoredAnyEq),
    PyFreeze(IgnoredAnyEq),
    YarnDependencies(IgnoredAnyEq),
    ComposerInstall(IgnoredAnyEq),
    ComposerDependencies(IgnoredAnyEq),
    ComposerConfig(IgnoredAnyEq),
    GemInstall(IgnoredAnyEq),
    GemBundle(IgnoredAnyEq),
    GemConfig(IgnoredAnyEq),
}

impl Step {
    /// The tag name, as written after `!`.
    pub fn name(&self) -> &'static str {
        match self {
            Step::Tar(_) => "Tar",
            Step::Debian(_) => "Debian",
            Step::Install(_) => "Install",
            Step::BuildDeps(_) => "BuildDeps",
            Step::Sh(_) => "Sh",
            Step::Cmd(_) => "Cmd",
            Step::RunAs(_) => "RunAs",
            Step::Env(_) => "Env",
            Step::Text(_) => "Text",
            Step::Copy(_) => "Copy",
            Step::Depends(_) => "Depends",
            Step::Remove(_) => "Remove",
            Step::EnsureDir(_) => "EnsureDir",
            Step::EmptyDir(_) => "EmptyDir",
            Step::CacheDirs(_) => "CacheDirs",
            Step::Container(_) => "Container",
            Step::Build(_) => "Build",
            Step::PipConfig(_) => "PipConfig",
            Step::Py3Install(_) => "Py3Install",
            Step::Py3Requirements(_) => "Py3Requirements",
            Step::NpmConfig(_) => "NpmConfig",
            Step::NpmInstall(_) => "NpmInstall",
            Step::NpmDependencies(_) => "NpmDependencies",
            Step::Ubuntu(_) => "Ubuntu",
            Step::UbuntuRelease(_) => "UbuntuRelease",
            Step::UbuntuRepo(_) => "UbuntuRepo",
            Step::UbuntuPPA(_) => "UbuntuPPA",
            Step::UbuntuUniverse(_) => "UbuntuUniverse",
            Step::AptTrust(_) => "AptTrust",
            Step::Alpine(_) => "Alpine",
            Step::AlpineRepo(_) => "AlpineRepo",
            Step::Repo(_) => "Repo",
            Step::Download(_) => "Download",
            Step::TarInstall(_) => "TarInstall",
            Step::Unzip(_) => "Unzip",
            Step::Git(_) => "Git",
            Step::GitInstall(_) => "GitInstall",
            Step::GitDescribe(_) => "GitDescribe",
            Step::SubConfig(_) => "SubConfig",
            Step::Py2Install(_) => "Py2Install",
            Step::Py2Requirements(_) => "Py2Requirements",
            Step::PyFreeze(_) => "PyFreeze",
            Step::YarnDependencies(_) => "YarnDependencies",
            Step::ComposerInstall(_) => "ComposerInstall",
            Step::ComposerDependencies(_) => "ComposerDependencies",
            Step::ComposerConfig(_) => "ComposerConfig",
            Step::GemInstall(_) => "GemInstall",
            Step::GemBundle(_) => "GemBundle",
            Step::GemConfig(_) => "GemConfig",
        }
    }

    /// Containers this step needs built first.
    pub fn dependency(&self) -> Option<&str> {
        match self {
            Step::Container(name) => Some(name),
            Step::Build(b) => Some(&b.container),
            _ => None,
        }
    }
}

fn default_tmpfs_mode() -> u32 {
    0o1777
}

fn default_dir_mode() -> u32 {
    0o755
}

/// A subdirectory of a `!Tmpfs` volume.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Subdir {
    #[serde(default = "default_dir_mode")]
    pub mode: u32,
}

/// `!Tmpfs`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TmpfsVolume {
    pub size: Option<u64>,
    #[serde(default = "default_tmpfs_mode")]
    pub mode: u32,
    #[serde(default)]
    pub subdirs: BTreeMap<String, Option<Subdir>>,
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

full_form!(PersistentVolume, PersistentFull, name, {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub owner_uid: u32,
    #[serde(default)]
    pub owner_gid: u32,
    pub init_command: Option<String>,
});

/// `!Snapshot`.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SnapshotVolume {
    pub size: Option<u64>,
    pub owner_uid: Option<u32>,
    pub owner_gid: Option<u32>,
    pub container: Option<String>,
}

/// A volume mounted into a running container.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub enum Volume {
    Tmpfs(TmpfsVolume),
    BindRW(String),
    BindRO(String),
    Persistent(PersistentVolume),
    Snapshot(Option<SnapshotVolume>),
    CacheDir(String),
    Empty,
    Container(String),
    VaggaBin,
}

/// `run`: a shell string or an argv list.
#[derive(Debug, Clone, PartialEq)]
pub enum Run {
    Shell(String),
    Exec(Vec<String>),
}

impl<'de> Deserialize<'de> for Run {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Run;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a shell command or a list of arguments")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Run, E> {
                Ok(Run::Shell(s.into()))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Run, E> {
                Ok(Run::Shell(n.to_string()))
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Run, E> {
                Ok(Run::Shell(b.to_string()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Run, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                if out.is_empty() {
                    return Err(de::Error::custom("\"run\" must not be an empty list"));
                }
                Ok(Run::Exec(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// `write-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WriteMode {
    #[default]
    ReadOnly,
    TransientHardLinkCopy,
}

/// `pid1mode` (parsed; the first release always waits for the command).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pid1Mode {
    #[default]
    Wait,
    WaitAllChildren,
    Exec,
}

/// `!Command`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Command {
    pub container: Located<String>,
    pub run: Run,
    pub description: Option<String>,
    pub banner: Option<String>,
    pub banner_delay: Option<f64>,
    pub epilog: Option<String>,
    pub work_dir: Option<String>,
    #[serde(default)]
    pub environ: BTreeMap<String, String>,
    #[serde(default)]
    pub volumes: BTreeMap<String, Located<Volume>>,
    pub accepts_arguments: Option<bool>,
    pub options: Option<String>,
    #[serde(default)]
    pub prerequisites: Vec<Located<String>>,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub group: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub user_id: u32,
    #[serde(default)]
    pub group_id: u32,
    pub external_user_id: Option<u32>,
    #[serde(default)]
    pub supplementary_gids: Vec<u32>,
    #[serde(default)]
    pub write_mode: WriteMode,
    pub pass_tcp_socket: Option<String>,
    #[serde(default)]
    pub isolate_network: bool,
    pub expect_inotify_limit: Option<u64>,
    pub symlink_name: Option<String>,
    #[serde(default)]
    pub pid1mode: Pid1Mode,
}

impl Command {
    /// Whether arguments after the command name are passed on.
    pub fn accepts_arguments(&self) -> bool {
        self.accepts_arguments
            .unwrap_or(matches!(self.run, Run::Exec(_)))
    }
}

/// `mode` of `!Supervise`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SuperviseMode {
    #[default]
    StopOnFailure,
    WaitAllSuccessful,
    WaitAll,
}

/// A child of `!Supervise`.
#[derive(Debug, Clone, Deserialize)]
pub enum ChildCommand {
    Command(Box<Command>),
    BridgeCommand(IgnoredAnyEq),
}

fn two() -> f64 {
    2.0
}

/// `!Supervise`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Supervise {
    #[serde(default)]
    pub mode: SuperviseMode,
    pub children: BTreeMap<String, Located<ChildCommand>>,
    #[serde(default = "two")]
    pub kill_unresponsive_after: f64,
    pub description: Option<String>,
    pub banner: Option<String>,
    pub banner_delay: Option<f64>,
    pub epilog: Option<String>,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub group: Option<String>,
    pub options: Option<String>,
    #[serde(default)]
    pub prerequisites: Vec<Located<String>>,
    #[serde(default)]
    pub isolate_network: bool,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A user command.
#[derive(Debug, Clone, Deserialize)]
pub enum CommandDef {
    Command(Box<Command>),
    Supervise(Box<Supervise>),
    CapsuleCommand(IgnoredAnyEq),
}

impl CommandDef {
    pub fn description(&self) -> Option<&str> {
        match self {
            CommandDef::Command(c) => c.description.as_deref(),
            CommandDef::Supervise(s) => s.description.as_deref(),
            CommandDef::CapsuleCommand(_) => None,
        }
    }

    pub fn group(&self) -> Option<&str> {
        match self {
            CommandDef::Command(c) => c.group.as_deref(),
            CommandDef::Supervise(s) => s.group.as_deref(),
            CommandDef::CapsuleCommand(_) => None,
        }
    }

    pub fn aliases(&self) -> &[String] {
        match self {
            CommandDef::Command(c) => &c.aliases,
            CommandDef::Supervise(s) => &s.aliases,
            CommandDef::CapsuleCommand(_) => &[],
        }
    }

    pub fn prerequisites(&self) -> &[Located<String>] {
        match self {
            CommandDef::Command(c) => &c.prerequisites,
            CommandDef::Supervise(s) => &s.prerequisites,
            CommandDef::CapsuleCommand(_) => &[],
        }
    }
}

/// An entry of `containers` or `commands` with the node it came from (for `_dump_config` and
/// for the config digest of the stat cache).
#[derive(Debug, Clone)]
pub struct Entry<T> {
    pub node: Node,
    pub def: T,
}

/// The merged configuration of a project.
#[derive(Debug, Clone)]
pub struct Config {
    /// The project root (mounted at `/work`).
    pub root: PathBuf,
    pub containers: BTreeMap<String, Entry<Container>>,
    pub commands: BTreeMap<String, Entry<CommandDef>>,
    pub warnings: Vec<String>,
}

/// Finds the project root: the first directory from `cwd` upward holding `.vagga/vagga.yaml`,
/// `vagga.yaml` or an implicit mixin. Returns the root and its main file, if any.
pub fn discover(cwd: &Path) -> Result<(PathBuf, Option<PathBuf>), ConfigError> {
    let mut dir = Some(cwd);
    while let Some(d) = dir {
        for name in [".vagga/vagga.yaml", "vagga.yaml"] {
            if d.join(name).is_file() {
                return Ok((d.to_owned(), Some(d.join(name))));
            }
        }
        if IMPLICIT_MIXINS.iter().any(|m| d.join(m).is_file()) {
            return Ok((d.to_owned(), None));
        }
        dir = d.parent();
    }
    Err(ConfigError::NotFound(cwd.to_owned()))
}

fn version_parts(v: &str) -> Vec<u64> {
    v.trim()
        .trim_start_matches('v')
        .split(['.', '-'])
        .map_while(|p| p.parse().ok())
        .collect()
}

fn check_minimum_version(node: &Node) -> Result<(), ConfigError> {
    let Some(min) = node.get("minimum-vagga").and_then(Node::as_str) else {
        return Ok(());
    };
    if version_parts(min) > version_parts(LANGUAGE_VERSION) {
        return Err(ConfigError::TooOld(min.to_owned()));
    }
    Ok(())
}

const TOP_KEYS: &[&str] = &["containers", "commands", "mixins", "minimum-vagga"];

fn check_top_keys(node: &Node) -> Result<(), ConfigError> {
    if node.is_null() {
        return Ok(());
    }
    let Some(entries) = node.as_map() else {
        return Err(
            DeError::at(&node.pos, "expected a mapping with containers and commands").into(),
        );
    };
    for (k, _) in entries {
        let key = k.as_str().unwrap_or("");
        let normal = key.replace('_', "-");
        if !TOP_KEYS.contains(&normal.as_str()) {
            return Err(DeError::at(
                &k.pos,
                format!(
                    "unknown key \"{key}\"; expected one of: {}",
                    TOP_KEYS.join(", ")
                ),
            )
            .into());
        }
    }
    Ok(())
}

fn section<'a>(node: &'a Node, key: &str) -> Result<&'a [(Node, Node)], ConfigError> {
    match node.get(key) {
        None => Ok(&[]),
        Some(n) if n.is_null() => Ok(&[]),
        Some(n) => n.as_map().ok_or_else(|| {
            DeError::at(&n.pos, format!("\"{key}\": expected a mapping of names")).into()
        }),
    }
}

struct Loader {
    root: PathBuf,
    /// Name to (position of the name, definition).
    containers: BTreeMap<String, (Pos, Node)>,
    commands: BTreeMap<String, (Pos, Node)>,
    warnings: Vec<String>,
    visited: BTreeSet<PathBuf>,
}

impl Loader {
    /// Applies a file: its mixins first, then its own entries over them.
    fn apply_file(&mut self, path: &Path, is_mixin: bool) -> Result<(), ConfigError> {
        let canonical = path.canonicalize().unwrap_or_else(|_| path.to_owned());
        if !self.visited.insert(canonical) {
            return Ok(());
        }
        let node = match yaml::load_file(path, &self.root) {
            Ok(node) => node,
            Err(e) if is_mixin => {
                let reason = if e.is_not_found() {
                    format!("mixin {} not found, skipped", path.display())
                } else {
                    format!("mixin skipped: {e}")
                };
                self.warnings.push(reason);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        check_minimum_version(&node)?;
        if let Err(e) = check_top_keys(&node) {
            if is_mixin {
                self.warnings.push(format!("mixin skipped: {e}"));
                return Ok(());
            }
            return Err(e);
        }
        if let Some(mixins) = node.get("mixins") {
            let list: Vec<String> = from_node(mixins)?;
            let base = path.parent().unwrap_or(Path::new("."));
            for m in list {
                self.apply_file(&base.join(m), true)?;
            }
        }
        self.take_entries(&node)
    }

    fn take_entries(&mut self, node: &Node) -> Result<(), ConfigError> {
        for (k, v) in section(node, "containers")? {
            let name = k.as_str().unwrap_or("").to_owned();
            self.containers.insert(name, (k.pos.clone(), v.clone()));
        }
        for (k, v) in section(node, "commands")? {
            let name = k.as_str().unwrap_or("").to_owned();
            self.commands.insert(name, (k.pos.clone(), v.clone()));
        }
        Ok(())
    }
}

/// Errors about a whole entry point at its name.
fn entry_error(e: DeError, name_pos: &Pos, what: &str) -> DeError {
    let mut e = e.within(what);
    if e.kind == crate::de::ErrorKind::MissingField {
        e.pos = Some(name_pos.clone());
    }
    e
}

impl Config {
    /// Reads the project's configuration: the main file (if any), its mixins and the
    /// implicit mixins, merged, deserialized and checked.
    pub fn load(root: &Path, main: Option<&Path>) -> Result<Config, ConfigError> {
        let mut loader = Loader {
            root: root.to_owned(),
            containers: BTreeMap::new(),
            commands: BTreeMap::new(),
            warnings: Vec::new(),
            visited: BTreeSet::new(),
        };
        // Implicit mixins come after the listed ones; the main file overrides all of them.
        let mut main_entries = None;
        if let Some(main) = main {
            let node = yaml::load_file(main, root)?;
            check_minimum_version(&node)?;
            check_top_keys(&node)?;
            if let Some(mixins) = node.get("mixins") {
                let list: Vec<String> = from_node(mixins)?;
                let base = main.parent().unwrap_or(root);
                for m in list {
                    loader.apply_file(&base.join(m), true)?;
                }
            }
            main_entries = Some(node);
        }
        for m in IMPLICIT_MIXINS {
            let path = root.join(m);
            if path.is_file() {
                loader.apply_file(&path, true)?;
            }
        }
        if let (Some(node), Some(main)) = (main_entries, main) {
            loader
                .visited
                .insert(main.canonicalize().unwrap_or_else(|_| main.to_owned()));
            loader.take_entries(&node)?;
        }
        let mut containers = BTreeMap::new();
        for (name, (pos, node)) in loader.containers {
            check_name(&name, &pos, "container")?;
            let def: Container = from_node(&node)
                .map_err(|e| entry_error(e, &pos, &format!("container \"{name}\"")))?;
            containers.insert(name, Entry { node, def });
        }
        let mut commands = BTreeMap::new();
        for (name, (pos, node)) in loader.commands {
            let def: CommandDef = from_node(&node)
                .map_err(|e| entry_error(e, &pos, &format!("command \"{name}\"")))?;
            commands.insert(name, Entry { node, def });
        }
        let config = Config {
            root: root.to_owned(),
            containers,
            commands,
            warnings: loader.warnings,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (name, entry) in &self.commands {
            let check_container = |container: &Located<String>, who: &str| {
                if self.containers.contains_key(&container.value) {
                    Ok(())
                } else {
                    Err(ConfigError::from(DeError::at(
                        &container.pos,
                        format!("{who} uses unknown container \"{}\"", container.value),
                    )))
                }
            };
            match &entry.def {
                CommandDef::Command(c) => {
                    check_container(&c.container, &format!("command \"{name}\""))?;
                    self.check_volumes(&c.volumes)?;
                }
                CommandDef::Supervise(s) => {
                    for (child, def) in &s.children {
                        if let ChildCommand::Command(c) = &def.value {
                            check_container(
                                &c.container,
                                &format!("command \"{name}\" child \"{child}\""),
                            )?;
                            self.check_volumes(&c.volumes)?;
                        }
                    }
                }
                CommandDef::CapsuleCommand(_) => {}
            }
            for pre in entry.def.prerequisites() {
                if !self.commands.contains_key(&pre.value) {
                    return Err(DeError::at(
                        &pre.pos,
                        format!(
                            "command \"{name}\" has unknown prerequisite \"{}\"",
                            pre.value
                        ),
                    )
                    .into());
                }
            }
        }
        for (name, entry) in &self.containers {
            for step in &entry.def.setup {
                if let Some(dep) = step.value.dependency()
                    && !self.containers.contains_key(dep)
                {
                    return Err(DeError::at(
                        &step.pos,
                        format!("container \"{name}\" uses unknown container \"{dep}\""),
                    )
                    .into());
                }
            }
            if let Some(url) = &entry.def.image_cache_url
                && !url.value.contains("${short_hash}")
            {
                return Err(DeError::at(
                    &url.pos,
                    "\"image-cache-url\" must contain ${short_hash}",
                )
                .into());
            }
            self.check_volumes(&entry.def.volumes)?;
            self.dependency_order(name)?;
        }
        Ok(())
    }

    fn check_volumes(
        &self,
        volumes: &BTreeMap<String, Located<Volume>>,
    ) -> Result<(), ConfigError> {
        for (path, volume) in volumes {
            if !path.starts_with('/') {
                return Err(DeError::at(
                    &volume.pos,
                    format!("volume mount point {path:?} must be an absolute path"),
                )
                .into());
            }
            let other = match &volume.value {
                Volume::Container(c) => Some(c),
                Volume::Snapshot(Some(SnapshotVolume {
                    container: Some(c), ..
                })) => Some(c),
                _ => None,
            };
            if let Some(c) = other
                && !self.containers.contains_key(c)
            {
                return Err(DeError::at(
                    &volume.pos,
                    format!("volume {path} uses unknown container \"{c}\""),
                )
                .into());
            }
        }
        Ok(())
    }

    /// The containers `name` depends on (through `!Container` and `!Build`), dependencies
    /// first, ending with `name` itself.
    pub fn dependency_order(&self, name: &str) -> Result<Vec<String>, ConfigError> {
        let mut order = Vec::new();
        let mut path = Vec::new();
        self.visit(name, &mut path, &mut order)?;
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        path: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<(), ConfigError> {
        if let Some(start) = path.iter().position(|p| p == name) {
            let mut chain: Vec<&str> = path[start..].iter().map(String::as_str).collect();
            chain.push(name);
            return Err(ConfigError::Cycle {
                name: name.to_owned(),
                chain: chain.join(" -> "),
            });
        }
        if order.iter().any(|o| o == name) {
            return Ok(());
        }
        path.push(name.to_owned());
        if let Some(entry) = self.containers.get(name) {
            for step in &entry.def.setup {
                if let Some(dep) = step.value.dependency() {
                    self.visit(dep, path, order)?;
                }
            }
        }
        path.pop();
        order.push(name.to_owned());
        Ok(())
    }

    /// Finds a command by name or alias (a real name wins).
    pub fn find_command(&self, name: &str) -> Option<(&str, &CommandDef)> {
        if let Some((k, e)) = self.commands.get_key_value(name) {
            return Some((k, &e.def));
        }
        self.commands
            .iter()
            .find(|(_, e)| e.def.aliases().iter().any(|a| a == name))
            .map(|(k, e)| (k.as_str(), &e.def))
    }

    /// The merged configuration as YAML.
    pub fn dump(&self) -> String {
        let pos = Pos {
            file: std::sync::Arc::new(PathBuf::from("<merged>")),
            line: 0,
            col: 0,
        };
        let scalar = |s: &str| Node {
            pos: pos.clone(),
            tag: None,
            value: Value::Scalar {
                text: s.to_owned(),
                plain: true,
            },
        };
        let map = |entries: Vec<(Node, Node)>| Node {
            pos: pos.clone(),
            tag: None,
            value: Value::Map(entries),
        };
        let containers = self
            .containers
            .iter()
            .map(|(k, e)| (scalar(k), e.node.clone()))
            .collect();
        let commands = self
            .commands
            .iter()
            .map(|(k, e)| (scalar(k), e.node.clone()))
            .collect();
        map(vec![
            (scalar("containers"), map(containers)),
            (scalar("commands"), map(commands)),
        ])
        .to_yaml()
    }
}

fn check_name(name: &str, pos: &Pos, what: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') || name.contains('\0') {
        return Err(DeError::at(pos, format!("bad {what} name {name:?}")).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vagga.yaml");
        std::fs::write(&path, text).unwrap();
        Config::load(dir.path(), Some(&path))
    }

    fn err(text: &str) -> String {
        let e = load(text).unwrap_err().to_string();
        e.rsplit_once("vagga.yaml")
            .map(|(_, t)| format!("vagga.yaml{t}"))
            .unwrap_or(e)
    }

    #[test]
    fn full_container_parses() {
        let c = load(
            "containers:\n  app:\n    setup:\n    - !Tar {url: ./bb.tar.gz}\n    - !Sh echo\n    - !Depends data.txt\n    - !Copy {source: /work, path: /var/dir, umask: 0o077}\n    - !NpmDependencies\n    - !Py3Requirements\n    uids: [0-65535]\n    volumes:\n      /tmp: !Tmpfs {size: 1Mi, subdirs: {x: , y: {mode: 0o700}}}\n      /srv: !Persistent ff\n      /e: !Empty\ncommands:\n  t: !Command\n    container: app\n    run: [echo, hi]\n",
        )
        .unwrap();
        let app = &c.containers["app"].def;
        assert_eq!(app.setup.len(), 6);
        assert!(matches!(&app.setup[2].value, Step::Depends(d) if d.path == "data.txt"));
        assert!(matches!(&app.setup[3].value, Step::Copy(c) if c.umask == 0o077));
        assert!(matches!(&app.volumes["/srv"].value, Volume::Persistent(p) if p.name == "ff"));
        assert!(matches!(&app.volumes["/e"].value, Volume::Empty));
    }

    #[test]
    fn errors_name_positions() {
        assert_eq!(
            err("containers:\n  app:\n    setpu: []\n"),
            "vagga.yaml:3:5: unknown key \"setpu\" in container \"app\"; expected one of: setup, environ, environ-file, volumes, uids, gids, auto-clean, data-dirs, default-shell, resolv-conf-path, hosts-file-path, image-cache-url"
        );
        assert_eq!(
            err("containers:\n  app:\n    uids: x\n"),
            "vagga.yaml:3:11: \"uids\": expected a list of ranges like 0-65535"
        );
        assert_eq!(
            err("containers:\n  app: {}\ncommands:\n  t: !Command\n    container: app\n"),
            "vagga.yaml:4:3: command \"t\": missing field \"run\""
        );
        assert_eq!(
            err(
                "containers:\n  app: {}\ncommands:\n  t: !Command\n    container: bbb\n    run: x\n"
            ),
            "vagga.yaml:5:16: command \"t\" uses unknown container \"bbb\""
        );
        assert_eq!(
            err("containers:\n  c:\n    setup: [!Container d]\n  d:\n    setup: [!Container c]\n"),
            "Container \"c\" has cyclic dependency (c -> d -> c)"
        );
        assert_eq!(
            err("minimum-vagga: v9999.0.0\nbad: key\n"),
            "Please upgrade vagga to at least \"v9999.0.0\""
        );
    }

    #[test]
    fn mixins_merge_in_order_and_main_wins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("m1.yaml"),
            "commands:\n  a: !Command {container: c, run: m1}\n  b: !Command {container: c, run: m1}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("vagga.local.yaml"),
            "commands:\n  b: !Command {container: c, run: local}\n  a: !Command {container: c, run: local}\n",
        )
        .unwrap();
        let main = dir.path().join("vagga.yaml");
        std::fs::write(
            &main,
            "mixins: [m1.yaml, missing.yaml]\ncontainers:\n  c: {}\ncommands:\n  a: !Command {container: c, run: main}\n",
        )
        .unwrap();
        let c = Config::load(dir.path(), Some(&main)).unwrap();
        let run = |n: &str| match &c.commands[n].def {
            CommandDef::Command(c) => c.run.clone(),
            _ => panic!(),
        };
        assert_eq!(run("a"), Run::Shell("main".into()));
        assert_eq!(run("b"), Run::Shell("local".into()));
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    }
}
