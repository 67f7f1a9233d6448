//! Errors of the isolation crate: one variant per failed operation, each naming what it acted on.

use std::fmt;
use std::path::PathBuf;

use nix::errno::Errno;

/// An OS error code shown the way people read it: "no such file or directory".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OsReason(pub Errno);

impl fmt::Display for OsReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let desc = self.0.desc();
        let mut chars = desc.chars();
        if let Some(first) = chars.next() {
            write!(f, "{}{}", first.to_lowercase(), chars.as_str())?;
        }
        Ok(())
    }
}

impl std::error::Error for OsReason {}

/// The step of container setup that failed inside the child, before the program ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Mounting a filesystem or bind-mounting a path.
    Mount,
    /// Changing the flags of a mount (read-only, nosuid, nodev).
    Remount,
    /// Creating a directory.
    Mkdir,
    /// Creating a device node in `/dev` (or binding the host's).
    DeviceNode,
    /// Setting the mode of a path.
    Chmod,
    /// Mounting a tmpfs and copying a directory into it.
    Seed,
    /// Creating a symlink.
    Symlink,
    /// Switching to the new root.
    PivotRoot,
    /// Detaching the old root.
    DetachOldRoot,
    /// Setting the hostname.
    SetHostname,
    /// Changing the working directory.
    Chdir,
    /// Setting a resource limit.
    SetRlimit,
    /// Reducing the capability bounding set.
    DropCapabilities,
    /// Clearing inheritable and ambient capabilities.
    ClearCapabilities,
    /// Setting `no_new_privs`.
    NoNewPrivs,
    /// Setting the parent-death signal.
    ParentDeathSignal,
    /// Setting supplementary groups.
    SetGroups,
    /// Setting the group id.
    SetGid,
    /// Setting the user id.
    SetUid,
    /// Placing a file descriptor at its number.
    PassFd,
    /// Waiting for the parent to finish its part of the setup.
    AwaitParent,
    /// Executing the program.
    Exec,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Mount => "mount",
            Step::Remount => "remount",
            Step::Mkdir => "mkdir",
            Step::DeviceNode => "create device node",
            Step::Chmod => "chmod",
            Step::Seed => "seed tmpfs from",
            Step::Symlink => "symlink",
            Step::PivotRoot => "pivot_root",
            Step::DetachOldRoot => "detach old root",
            Step::SetHostname => "set hostname",
            Step::Chdir => "chdir",
            Step::SetRlimit => "setrlimit",
            Step::DropCapabilities => "drop capabilities",
            Step::ClearCapabilities => "clear capabilities",
            Step::NoNewPrivs => "set no_new_privs",
            Step::ParentDeathSignal => "set parent-death signal",
            Step::SetGroups => "setgroups",
            Step::SetGid => "setgid",
            Step::SetUid => "setuid",
            Step::PassFd => "pass fd",
            Step::AwaitParent => "wait for parent",
            Step::Exec => "exec",
        })
    }
}

/// Starting a container failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// A setup step inside the child failed; `path` is what it acted on.
    #[error("{step} {}: {reason}", path.display())]
    Setup {
        step: Step,
        path: PathBuf,
        reason: OsReason,
    },
    /// A path inside the container is not absolute or leaves the root with `..`.
    #[error("path inside the container must be absolute without \"..\": {}", .0.display())]
    BadContainerPath(PathBuf),
    /// A string given to the container holds a NUL byte and cannot reach the kernel.
    #[error("{what} contains a NUL byte: {value:?}")]
    Nul { what: &'static str, value: String },
    /// A passed file descriptor number clashes with another one.
    #[error("file descriptor {0} is passed twice")]
    DuplicateFd(i32),
    /// The container has no program to run.
    #[error("no program to run")]
    NoProgram,
    /// Creating the pipes that synchronise parent and child failed.
    #[error("create setup pipe: {0}")]
    Pipe(OsReason),
    /// Duplicating a file descriptor to pass failed.
    #[error("duplicate fd {fd}: {reason}")]
    DupFd { fd: i32, reason: OsReason },
    /// Entering a shared network namespace to start the container in it failed.
    #[error("enter the shared network namespace: {0}")]
    JoinNetwork(OsReason),
    /// A step of starting a container in a network namespace owned by another user
    /// namespace failed.
    #[error("{step} for a container in the shared network namespace: {reason}")]
    Nested {
        step: &'static str,
        reason: OsReason,
    },
    /// Opening a pidfd for a container started in a shared network namespace failed.
    #[error(transparent)]
    NestedPidfd(PidfdError),
    /// A container in a network namespace owned by another user namespace has no user
    /// namespace to nest in it.
    #[error(
        "a container joining a network namespace owned by a user namespace needs a user namespace"
    )]
    NestedWithoutUserNamespace,
    /// An id of a container is not mapped in the user namespace it would nest in.
    #[error("{kind} {id} is not mapped in the user namespace owning the shared network namespace")]
    NotInOwner { kind: &'static str, id: u32 },
    /// `clone3` failed (namespaces not permitted, limits reached).
    #[error("clone3 with flags {flags:#x}: {reason}")]
    Clone { flags: u64, reason: OsReason },
    /// Writing a uid or gid map directly failed.
    #[error("write {}: {source}", path.display())]
    WriteIdMap {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `newuidmap` or `newgidmap` could not run or refused the map.
    #[error("{helper} for pid {pid}: {message}")]
    IdMapHelper {
        helper: &'static str,
        pid: i32,
        message: String,
    },
    /// Telling the child to go on failed (it died early).
    #[error("signal the child to continue: {0}")]
    Release(OsReason),
    /// Reading the child's setup status failed.
    #[error("read setup status from the child: {0}")]
    ReadStatus(OsReason),
    /// The cgroup could not be prepared.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The caller's preparation passed to [`crate::Container::spawn_with`] failed.
    #[error(transparent)]
    Prepare(Box<dyn std::error::Error + Send + Sync>),
}

/// Creating, limiting, reading or removing a cgroup failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Reading the mount table to find the cgroup hierarchies failed.
    #[error("read /proc/self/mountinfo: {0}")]
    MountInfo(String),
    /// No cgroup hierarchy is mounted.
    #[error("no cgroup hierarchy is mounted")]
    NotMounted,
    /// A v1 controller needed for a limit is not mounted.
    #[error("cgroup v1 controller {0:?} is not mounted")]
    ControllerMissing(String),
    /// The controller is not available in the v2 hierarchy (bound to v1, or not delegated).
    #[error("cgroup v2 controller {controller:?} is not available in {}", path.display())]
    ControllerUnavailable { controller: String, path: PathBuf },
    /// The cgroup path is not relative or leaves the hierarchy with `..`.
    #[error("cgroup path must be relative without \"..\": {}", .0.display())]
    BadPath(PathBuf),
    /// Creating the cgroup directory failed.
    #[error("create cgroup {}: {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Writing a cgroup file failed.
    #[error("write {value:?} to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        source: std::io::Error,
    },
    /// Reading a cgroup file failed or its content is not what the kernel writes.
    #[error("read {}: {message}", path.display())]
    Read { path: PathBuf, message: String },
    /// The cgroup still had processes after they were killed.
    #[error("remove cgroup {}: {source}", path.display())]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Waiting for or signalling a container failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// `waitid` failed.
    #[error("wait for pid {pid}: {reason}")]
    Wait { pid: i32, reason: OsReason },
    /// Sending a signal failed.
    #[error("pid {pid}: {source}")]
    Signal { pid: i32, source: PidfdError },
    /// The container ended but its cgroup could not be removed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

/// Opening, signalling through or copying from a pidfd failed.
#[derive(Debug, thiserror::Error)]
pub enum PidfdError {
    #[error("open pidfd of pid {pid}: {reason}")]
    Open { pid: i32, reason: OsReason },
    #[error("send {signal} by pidfd: {reason}")]
    Signal {
        signal: nix::sys::signal::Signal,
        reason: OsReason,
    },
    #[error("copy fd {fd} by pidfd: {reason}")]
    GetFd { fd: i32, reason: OsReason },
}

/// Taking ownership of an inherited descriptor failed.
#[derive(Debug, thiserror::Error)]
pub enum FdError {
    #[error("fd {0} is stdio, which std owns")]
    Stdio(i32),
    #[error("fd {0} is not open")]
    NotOpen(i32),
    #[error("fd {0} is already claimed")]
    AlreadyClaimed(i32),
    #[error("inspect fd {fd}: {reason}")]
    Inspect { fd: i32, reason: OsReason },
    #[error("keep fd {fd} open across exec: {reason}")]
    KeepAcrossExec { fd: i32, reason: OsReason },
}

/// Installing the re-exec on fatal signals failed.
#[derive(Debug, thiserror::Error)]
pub enum ReexecError {
    #[error("program or argument contains a NUL byte: {0:?}")]
    Nul(String),
    #[error("re-exec on fatal signals is already installed")]
    AlreadyInstalled,
    #[error("install handler for {signal}: {reason}")]
    Install {
        signal: nix::sys::signal::Signal,
        reason: OsReason,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_error_reads_like_a_sentence() {
        let err = SpawnError::Setup {
            step: Step::Mount,
            path: "/var/lib/images/x".into(),
            reason: OsReason(Errno::ENOENT),
        };
        assert_eq!(
            err.to_string(),
            "mount /var/lib/images/x: no such file or directory"
        );
    }
}
