//! What a container is: the description a caller builds before starting one.

use std::ffi::{OsStr, OsString};
use std::os::fd::{OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use caps::Capability;
use nix::sys::signal::Signal;

use crate::cgroup::CgroupSpec;
use crate::netns::NetworkNamespace;

/// One line of a uid or gid map: `count` ids from `inside` map to `outside` on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// How the maps of a new user namespace get written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapWriter {
    /// Root writes `/proc/PID/uid_map` itself; `newuidmap` when not root.
    Auto,
    /// Write `/proc/PID/{uid,gid}_map` directly (needs privilege over the target ids).
    Direct,
    /// Run the setuid `newuidmap`/`newgidmap`, which check `/etc/subuid` and `/etc/subgid`.
    Helpers,
}

/// A new user namespace with its id maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserNamespace {
    pub uid_map: Vec<IdMap>,
    pub gid_map: Vec<IdMap>,
    pub writer: MapWriter,
}

/// Something mounted into the container at a mount point that exists in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Volume {
    /// A host path, read-only.
    ReadOnly { source: PathBuf },
    /// A host path, writable.
    ReadWrite { source: PathBuf },
    /// A fresh tmpfs with a size limit, a mode for its root and subdirectories with modes.
    Tmpfs {
        size: Option<u64>,
        mode: u32,
        subdirs: Vec<(PathBuf, u32)>,
    },
    /// A fresh tmpfs with a size limit, filled when the container starts with a copy of the
    /// contents of `seed` (a host path, read before anything is mounted over it: it may be
    /// the mount point in the image). The copy keeps modes and owners, except the ids
    /// `owner` replaces; its root takes the mode of `seed`. Writes vanish with the container.
    SeededTmpfs {
        size: Option<u64>,
        seed: PathBuf,
        owner: Owner,
    },
}

/// Ids (inside the container) given to every copied file instead of the original's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// Where a standard stream of the container goes.
#[derive(Debug, Default)]
pub enum Stdio {
    /// The caller's own stream.
    #[default]
    Inherit,
    /// `/dev/null`.
    Null,
    /// The given file descriptor.
    Fd(OwnedFd),
}

/// A container to start: root image, namespaces, mounts, identity, limits and the program.
///
/// Built like `std::process::Command`; `spawn` may be called again for a restart.
/// Every container gets new pid, mount, uts and ipc namespaces; the program is pid 1 of its
/// pid namespace, so when it exits everything else in the container is killed by the kernel.
#[derive(Debug)]
pub struct Container {
    pub(crate) root: PathBuf,
    pub(crate) program: OsString,
    pub(crate) args: Vec<OsString>,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) workdir: PathBuf,
    pub(crate) hostname: Option<OsString>,
    pub(crate) network_namespace: bool,
    pub(crate) joined_network: Option<NetworkNamespace>,
    pub(crate) user_namespace: Option<UserNamespace>,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) groups: Vec<u32>,
    pub(crate) root_writable: bool,
    pub(crate) init: bool,
    pub(crate) mount_proc: bool,
    pub(crate) mount_dev: bool,
    pub(crate) mount_sys: bool,
    pub(crate) volumes: Vec<(PathBuf, Volume)>,
    pub(crate) cgroup: Option<CgroupSpec>,
    pub(crate) nofile_limit: Option<u64>,
    pub(crate) no_new_privs: bool,
    pub(crate) capabilities: Option<Vec<Capability>>,
    pub(crate) parent_death_signal: Option<Signal>,
    pub(crate) stdin: Stdio,
    pub(crate) stdout: Stdio,
    pub(crate) stderr: Stdio,
    pub(crate) fds: Vec<(OwnedFd, RawFd)>,
}

impl Container {
    /// A container running `program` from the image directory `root` (mounted read-only).
    ///
    /// Defaults: working directory `/`, empty environment, uid and gid 0, no supplementary
    /// groups, `/proc`, a minimal `/dev` and a read-only `/sys` mounted, `no_new_privs` set,
    /// capabilities untouched, SIGKILL when the spawning thread dies, stdio inherited.
    pub fn new(root: impl Into<PathBuf>, program: impl AsRef<OsStr>) -> Container {
        Container {
            root: root.into(),
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            workdir: PathBuf::from("/"),
            hostname: None,
            network_namespace: false,
            joined_network: None,
            user_namespace: None,
            uid: 0,
            gid: 0,
            groups: Vec::new(),
            root_writable: false,
            init: false,
            mount_proc: true,
            mount_dev: true,
            mount_sys: true,
            volumes: Vec::new(),
            cgroup: None,
            nofile_limit: None,
            no_new_privs: true,
            capabilities: None,
            parent_death_signal: Some(Signal::SIGKILL),
            stdin: Stdio::Inherit,
            stdout: Stdio::Inherit,
            stderr: Stdio::Inherit,
            fds: Vec::new(),
        }
    }

    /// Appends an argument (`argv[1..]`).
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable; nothing is inherited from the caller.
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        let key = key.as_ref().to_owned();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.as_ref().to_owned()));
        self
    }

    /// The working directory inside the container.
    pub fn workdir(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.workdir = dir.into();
        self
    }

    /// The hostname inside the container's uts namespace.
    pub fn hostname(&mut self, name: impl AsRef<OsStr>) -> &mut Self {
        self.hostname = Some(name.as_ref().to_owned());
        self
    }

    /// Gives the container its own network namespace (only `lo`, down).
    pub fn network_namespace(&mut self, enabled: bool) -> &mut Self {
        self.network_namespace = enabled;
        self
    }

    /// Runs the container in an existing network namespace (shared with other containers)
    /// instead of the caller's; overrides [`Container::network_namespace`]. For one made by
    /// [`NetworkNamespace::new`] the spawning thread enters it for the `clone3`, which needs
    /// `CAP_SYS_ADMIN` (root). For one made by [`NetworkNamespace::with_user_namespace`]
    /// the container's user namespace (required) is nested in the owning one, with the
    /// container's maps rewritten into the owner's ids: no privilege is needed.
    pub fn join_network_namespace(&mut self, ns: NetworkNamespace) -> &mut Self {
        self.joined_network = Some(ns);
        self
    }

    /// Runs the container in a new user namespace with these maps.
    pub fn user_namespace(&mut self, userns: UserNamespace) -> &mut Self {
        self.user_namespace = Some(userns);
        self
    }

    /// The uid, gid and supplementary groups the program runs with (ids inside the container).
    pub fn identity(&mut self, uid: u32, gid: u32, groups: &[u32]) -> &mut Self {
        self.uid = uid;
        self.gid = gid;
        self.groups = groups.to_vec();
        self
    }

    /// Mounts the image root writable (still `nosuid,nodev`): for building an image in place.
    pub fn root_writable(&mut self, writable: bool) -> &mut Self {
        self.root_writable = writable;
        self
    }

    /// Runs a small init as pid 1 and the program as its child.
    ///
    /// The init forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to the program,
    /// reaps orphans, and exits when the program does: with its exit code, or 128 + the
    /// signal number if a signal killed it. Programs that do not expect to be pid 1 (which
    /// the kernel shields from signals it has no handler for, and which inherits every
    /// orphan) behave as they would outside a container.
    pub fn init(&mut self, enabled: bool) -> &mut Self {
        self.init = enabled;
        self
    }

    /// Whether to mount `/proc`, a minimal `/dev` and a read-only `/sys`.
    pub fn system_mounts(&mut self, proc: bool, dev: bool, sys: bool) -> &mut Self {
        self.mount_proc = proc;
        self.mount_dev = dev;
        self.mount_sys = sys;
        self
    }

    /// Mounts a volume at `mount_point`, which must exist in the image.
    pub fn volume(&mut self, mount_point: impl Into<PathBuf>, volume: Volume) -> &mut Self {
        self.volumes.push((mount_point.into(), volume));
        self
    }

    /// Places the container in a cgroup with limits; the cgroup is removed when it ends.
    pub fn cgroup(&mut self, spec: CgroupSpec) -> &mut Self {
        self.cgroup = Some(spec);
        self
    }

    /// Sets `RLIMIT_NOFILE` (soft and hard).
    pub fn nofile_limit(&mut self, limit: u64) -> &mut Self {
        self.nofile_limit = Some(limit);
        self
    }

    /// Whether to set `no_new_privs` (default on: setuid binaries cannot gain privileges).
    pub fn no_new_privs(&mut self, enabled: bool) -> &mut Self {
        self.no_new_privs = enabled;
        self
    }

    /// Reduces the capability bounding set to `keep`; inheritable and ambient sets are cleared.
    pub fn capabilities(&mut self, keep: &[Capability]) -> &mut Self {
        self.capabilities = Some(keep.to_vec());
        self
    }

    /// The signal the container gets when the thread that spawned it dies (default SIGKILL).
    ///
    /// The kernel ties this to the spawning *thread*: spawn from a thread that outlives the
    /// container (not a short-lived worker of a thread pool).
    pub fn parent_death_signal(&mut self, signal: Option<Signal>) -> &mut Self {
        self.parent_death_signal = signal;
        self
    }

    /// Where standard input comes from.
    pub fn stdin(&mut self, stdio: Stdio) -> &mut Self {
        self.stdin = stdio;
        self
    }

    /// Where standard output goes.
    pub fn stdout(&mut self, stdio: Stdio) -> &mut Self {
        self.stdout = stdio;
        self
    }

    /// Where standard error goes.
    pub fn stderr(&mut self, stdio: Stdio) -> &mut Self {
        self.stderr = stdio;
        self
    }

    /// Passes `fd` to the program as file descriptor number `target` (3 and up).
    ///
    /// Every other descriptor of the caller is closed in the container.
    pub fn pass_fd(&mut self, fd: OwnedFd, target: RawFd) -> &mut Self {
        self.fds.push((fd, target));
        self
    }

    /// The image directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
}
