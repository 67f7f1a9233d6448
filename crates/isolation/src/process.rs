//! Starting a container with `clone3` and handling the running container.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::{Pid, pipe2};

use crate::cgroup::Cgroup;
use crate::child;
use crate::container::Container;
use crate::error::{OsReason, ProcessError, SpawnError};
use crate::idmap;
use crate::netns;
use crate::pidfd;
use crate::plan::{Plan, raise_fd};

/// The caller's work run between the child's two waits (see [`Container::spawn_with`]).
type Prepare<'a> = Box<dyn FnOnce() -> Result<(), SpawnError> + 'a>;

/// How a container's pid 1 ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It called `exit` with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled(Signal),
}

impl ExitStatus {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        *self == ExitStatus::Exited(0)
    }

    /// The exit code, if it exited rather than being killed.
    pub fn code(&self) -> Option<i32> {
        match self {
            ExitStatus::Exited(code) => Some(*code),
            ExitStatus::Signaled(_) => None,
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Exited(code) => write!(f, "exit code {code}"),
            ExitStatus::Signaled(signal) => write!(f, "killed by {signal}"),
        }
    }
}

/// A started container: its pid 1, a pidfd for it and its cgroup.
///
/// Call [`Child::wait`]: it reaps the process and removes the cgroup. Dropping an unwaited
/// `Child` leaves the container running (a supervisor may hand it to its successor).
#[derive(Debug)]
pub struct Child {
    pid: Pid,
    pidfd: OwnedFd,
    cgroup: Option<Cgroup>,
    status: Option<ExitStatus>,
}

/// `struct clone_args` of the kernel ABI (the same on every architecture).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `clone3` without a stack: fork semantics, plus namespaces and a pidfd as `flags` ask.
///
/// # Safety
/// The child runs on a copy of the caller's memory made from one thread: until it execs or
/// exits it must not allocate, take locks or return into code that expects the parent.
/// `pidfd` must be valid for writes when `flags` has `CLONE_PIDFD`.
pub(crate) unsafe fn clone3(flags: u64, pidfd: *mut RawFd) -> Result<libc::pid_t, Errno> {
    let mut args = CloneArgs {
        flags,
        pidfd: pidfd as u64,
        // A sibling (CLONE_PARENT) ends with its parent's exit signal; clone3 takes none.
        exit_signal: if flags & libc::CLONE_PARENT as u64 == 0 {
            libc::SIGCHLD as u64
        } else {
            0
        },
        ..CloneArgs::default()
    };
    // SAFETY: args is a clone_args of the size passed; the caller upholds the fork contract.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    Errno::result(ret).map(|pid| pid as libc::pid_t)
}

fn pipe_above(min: RawFd) -> Result<(OwnedFd, OwnedFd), SpawnError> {
    let (r, w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| SpawnError::Pipe(OsReason(e)))?;
    Ok((raise_fd(r, min)?, raise_fd(w, min)?))
}

impl Container {
    /// Starts the container and returns once its program has been exec'd.
    ///
    /// A failure of any setup step inside the child comes back as [`SpawnError::Setup`]
    /// naming the step and the path; the child is reaped and its cgroup removed.
    pub fn spawn(&self) -> Result<Child, SpawnError> {
        self.start(None)
    }

    /// Like [`Container::spawn`], running `prepare` while the child sets up its namespaces,
    /// `/proc`, `/dev` and `/sys`: the child mounts the volumes only once it has returned, so
    /// it may create what they bind (files written for the container). The caller's work
    /// then overlaps the child's instead of adding to the start time.
    ///
    /// An error of `prepare` comes back as [`SpawnError::Prepare`]; the child is killed.
    pub fn spawn_with<E>(
        &self,
        prepare: impl FnOnce() -> Result<(), E>,
    ) -> Result<Child, SpawnError>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.start(Some(Box::new(|| {
            prepare().map_err(|e| SpawnError::Prepare(e.into()))
        })))
    }

    fn start(&self, prepare: Option<Prepare<'_>>) -> Result<Child, SpawnError> {
        let cgroup = self.cgroup.as_ref().map(|spec| spec.create()).transpose()?;
        match self.spawn_in(cgroup.as_ref(), prepare) {
            Ok((pid, pidfd)) => Ok(Child {
                pid,
                pidfd,
                cgroup,
                status: None,
            }),
            Err(e) => {
                if let Some(cgroup) = cgroup {
                    // The spawn error is the one worth reporting.
                    let _ = cgroup.remove();
                }
                Err(e)
            }
        }
    }

    fn spawn_in(
        &self,
        cgroup: Option<&Cgroup>,
        prepare: Option<Prepare<'_>>,
    ) -> Result<(Pid, OwnedFd), SpawnError> {
        // Pipes go above every passed descriptor number so placing those cannot clobber them.
        let max_target = self.fds.iter().map(|(_, t)| *t).max().unwrap_or(2);
        let (go_read, go_write) = pipe_above(max_target + 1)?;
        let (status_read, status_write) = pipe_above(max_target + 1)?;
        // The child waits for the parent only when the parent has something to do first: a
        // needless wait costs two wake-ups on every start.
        let await_release = self.user_namespace.is_some() || cgroup.is_some();
        let plan = Plan::new(
            self,
            go_read.as_raw_fd(),
            go_write.as_raw_fd(),
            await_release,
            prepare.is_some(),
        )?;

        let mut flags = (libc::CLONE_NEWPID
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | libc::CLONE_PIDFD) as u64;
        if self.network_namespace && self.joined_network.is_none() {
            flags |= libc::CLONE_NEWNET as u64;
        }
        if self.user_namespace.is_some() {
            flags |= libc::CLONE_NEWUSER as u64;
        }
        let nested = self
            .joined_network
            .as_ref()
            .and_then(|ns| Some((ns, ns.owner()?)));
        let (pid, pidfd) = match nested {
            Some((ns, owner)) => {
                let userns = self
                    .user_namespace
                    .as_ref()
                    .ok_or(SpawnError::NestedWithoutUserNamespace)?;
                let flags = flags & !(libc::CLONE_PIDFD as u64);
                owner.spawn_nested(ns, userns, flags, &plan.ops, status_write.as_raw_fd())?
            }
            None => self.clone_here(flags, &plan, status_write.as_raw_fd())?,
        };
        drop(status_write);
        drop(go_read);

        let released = if await_release {
            self.release(pid, cgroup, &go_write, nested.is_none())
        } else {
            Ok(())
        };
        let released = released.and_then(|()| match prepare {
            Some(prepare) => {
                prepare()?;
                nix::unistd::write(&go_write, &[1])
                    .map(drop)
                    .map_err(|e| SpawnError::Release(OsReason(e)))
            }
            None => Ok(()),
        });
        if let Err(e) = released {
            kill_and_reap(&pidfd);
            return Err(e);
        }
        match read_status(&status_read) {
            Ok(None) => Ok((pid, pidfd)),
            Ok(Some((index, errno))) => {
                kill_and_reap(&pidfd);
                Err(plan.error(index, errno))
            }
            Err(e) => {
                kill_and_reap(&pidfd);
                Err(e)
            }
        }
    }

    /// Clones the container from this thread (inside the joined network namespace, if any).
    fn clone_here(
        &self,
        flags: u64,
        plan: &Plan,
        status_fd: RawFd,
    ) -> Result<(Pid, OwnedFd), SpawnError> {
        let mut pidfd: RawFd = -1;
        let mut clone = || {
            // SAFETY: the child continues on a copy of this stack and only runs `child::run`,
            // which never returns and does not allocate; `pidfd` outlives the call.
            let ret = unsafe { clone3(flags, &mut pidfd) };
            if ret == Ok(0) {
                child::run(&plan.ops, status_fd)
            }
            ret
        };
        let ret = match &self.joined_network {
            // The child is born in the thread's network namespace.
            Some(ns) => {
                netns::within(ns, clone).map_err(|e| SpawnError::JoinNetwork(OsReason(e)))?
            }
            None => clone(),
        };
        let pid = ret.map_err(|e| SpawnError::Clone {
            flags,
            reason: OsReason(e),
        })?;
        // SAFETY: with CLONE_PIDFD the kernel stored a new descriptor that nothing else owns.
        Ok((Pid::from_raw(pid), unsafe { OwnedFd::from_raw_fd(pidfd) }))
    }

    /// The parent's part: id maps (unless already written), cgroup membership, then the go
    /// byte.
    fn release(
        &self,
        pid: Pid,
        cgroup: Option<&Cgroup>,
        go: &OwnedFd,
        write_maps: bool,
    ) -> Result<(), SpawnError> {
        if let Some(userns) = self.user_namespace.as_ref().filter(|_| write_maps) {
            idmap::write_maps(pid, userns)?;
        }
        if let Some(cgroup) = cgroup {
            cgroup.add(pid.as_raw())?;
        }
        nix::unistd::write(go, &[1]).map_err(|e| SpawnError::Release(OsReason(e)))?;
        Ok(())
    }
}

/// Reads the child's status record: `None` at end of file, which means it exec'd.
fn read_status(fd: &OwnedFd) -> Result<Option<(usize, Errno)>, SpawnError> {
    let mut record = [0u8; child::RECORD_LEN];
    let mut filled = 0;
    while filled < record.len() {
        match nix::unistd::read(fd, &mut record[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(SpawnError::ReadStatus(OsReason(Errno::EPROTO))),
            Ok(n) => filled += n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(SpawnError::ReadStatus(OsReason(e))),
        }
    }
    let index = u32::from_ne_bytes(record[..4].try_into().expect("four bytes")) as usize;
    let errno = i32::from_ne_bytes(record[4..].try_into().expect("four bytes"));
    Ok(Some((index, Errno::from_raw(errno))))
}

pub(crate) fn kill_and_reap(pidfd: &OwnedFd) {
    let _ = pidfd::send_signal(pidfd.as_fd(), Signal::SIGKILL);
    while let Err(Errno::EINTR) = waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED) {}
}

impl Child {
    /// The container's pid 1, as the caller's pid namespace sees it.
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// A pidfd: readable once the container has ended (for event loops).
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// The container's cgroup, for reading usage.
    pub fn cgroup(&self) -> Option<&Cgroup> {
        self.cgroup.as_ref()
    }

    /// Sends a signal to the container's pid 1 (safe against pid reuse: it goes by pidfd).
    pub fn signal(&self, signal: Signal) -> Result<(), ProcessError> {
        pidfd::send_signal(self.pidfd.as_fd(), signal).map_err(|source| ProcessError::Signal {
            pid: self.pid.as_raw(),
            source,
        })
    }

    /// Waits for pid 1 to end, reaps it and removes the cgroup.
    pub fn wait(&mut self) -> Result<ExitStatus, ProcessError> {
        self.reap(WaitPidFlag::WEXITED)
            .map(|status| status.expect("a blocking wait returns a status"))
    }

    /// Like [`Child::wait`] but returns `None` at once if pid 1 is still running.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, ProcessError> {
        self.reap(WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG)
    }

    fn reap(&mut self, flags: WaitPidFlag) -> Result<Option<ExitStatus>, ProcessError> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let status = loop {
            match waitid(Id::PIDFd(self.pidfd.as_fd()), flags) {
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    return Err(ProcessError::Wait {
                        pid: self.pid.as_raw(),
                        reason: OsReason(e),
                    });
                }
                Ok(WaitStatus::Exited(_, code)) => break ExitStatus::Exited(code),
                Ok(WaitStatus::Signaled(_, signal, _)) => break ExitStatus::Signaled(signal),
                Ok(_) => return Ok(None),
            }
        };
        self.status = Some(status);
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.remove()?;
        }
        Ok(Some(status))
    }
}
