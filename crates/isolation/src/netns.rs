//! A network namespace made once and shared by several containers (a group of services that
//! talk over their own loopback, invisible from the host).
//!
//! Root makes it in its own user namespace and starts containers in it directly. An ordinary
//! user cannot: joining a network namespace takes `CAP_SYS_ADMIN` in the caller's own user
//! namespace too. So an ordinary user's namespace belongs to a user namespace made with it
//! (its owner), and a container joining it is started by a short-lived single-threaded
//! process that enters the owner (where it has every capability), enters the network
//! namespace and clones the container with a user namespace nested in the owner's. The
//! container is cloned as a sibling of that process, so it is the caller's child as usual.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
use nix::sys::stat::Mode;
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::{Pid, pipe2};

use crate::child;
use crate::container::{IdMap, UserNamespace};
use crate::error::{OsReason, SpawnError};
use crate::idmap;
use crate::plan::Op;
use crate::process::{clone3, kill_and_reap};

/// Making a shared network namespace failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkNamespaceError {
    #[error("create network namespace: {0}")]
    Create(OsReason),
    #[error("open /proc/thread-self/ns/net: {0}")]
    Open(OsReason),
    #[error("bring up lo in the new network namespace: {0}")]
    Loopback(OsReason),
    #[error("the thread creating the network namespace panicked")]
    Thread,
    #[error("create the setup pipes of the network namespace's owner: {0}")]
    Pipe(OsReason),
    #[error("write the id maps of the network namespace's owner: {0}")]
    IdMaps(SpawnError),
    #[error("open the namespaces of pid {pid}: {reason}")]
    OpenOwned { pid: i32, reason: OsReason },
    #[error("open network namespace {path}: {reason}")]
    OpenNamed { path: PathBuf, reason: OsReason },
    #[error("enter network namespace: {0}")]
    Enter(OsReason),
}

/// A network namespace with only `lo`, up; it lives while this value (or a container that
/// joined it) does. See [`crate::Container::join_network_namespace`].
#[derive(Debug)]
pub struct NetworkNamespace {
    fd: OwnedFd,
    owner: Option<OwningUserNamespace>,
}

/// The user namespace a network namespace made by an ordinary user belongs to.
#[derive(Debug)]
pub(crate) struct OwningUserNamespace {
    fd: OwnedFd,
    maps: UserNamespace,
}

impl NetworkNamespace {
    /// A handle on an existing namespace, e.g. `/run/netns/NAME` made by `ip netns add`.
    pub fn open(path: &Path) -> Result<NetworkNamespace, NetworkNamespaceError> {
        let fd = open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).map_err(|e| {
            NetworkNamespaceError::OpenNamed {
                path: path.to_owned(),
                reason: OsReason(e),
            }
        })?;
        Ok(NetworkNamespace { fd, owner: None })
    }

    /// Runs `f` with the calling thread in this namespace (its new sockets are the
    /// namespace's), then moves the thread back.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T, NetworkNamespaceError> {
        within(self, f).map_err(|e| NetworkNamespaceError::Enter(OsReason(e)))
    }

    /// Creates the namespace in a short-lived thread, so no thread of the caller moves.
    pub fn new() -> Result<NetworkNamespace, NetworkNamespaceError> {
        let made = std::thread::spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetworkNamespaceError::Create(OsReason(e)))?;
            loopback_up().map_err(|e| NetworkNamespaceError::Loopback(OsReason(e)))?;
            open(
                c"/proc/thread-self/ns/net",
                OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| NetworkNamespaceError::Open(OsReason(e)))
        })
        .join()
        .map_err(|_| NetworkNamespaceError::Thread)??;
        Ok(NetworkNamespace {
            fd: made,
            owner: None,
        })
    }

    /// Creates the namespace together with a new user namespace that owns it, with the
    /// maps `userns` (for an ordinary user: its own id and subordinate ids). Containers
    /// joining it must have a user namespace whose outside ids all appear in these maps.
    pub fn with_user_namespace(
        userns: UserNamespace,
    ) -> Result<NetworkNamespace, NetworkNamespaceError> {
        let pipe = || pipe2(OFlag::O_CLOEXEC).map_err(|e| NetworkNamespaceError::Pipe(OsReason(e)));
        let (go_read, go_write) = pipe()?;
        let (status_read, status_write) = pipe()?;
        let flags = (libc::CLONE_NEWUSER | libc::CLONE_NEWNET | libc::CLONE_PIDFD) as u64;
        let mut pidfd: RawFd = -1;
        // SAFETY: the child only runs `hold`, which never returns and does not allocate;
        // `pidfd` outlives the call.
        let ret = unsafe { clone3(flags, &mut pidfd) };
        if ret == Ok(0) {
            hold(
                [go_write.as_raw_fd(), status_read.as_raw_fd()],
                go_read.as_raw_fd(),
                status_write.as_raw_fd(),
            )
        }
        let pid = Pid::from_raw(ret.map_err(|e| NetworkNamespaceError::Create(OsReason(e)))?);
        // SAFETY: with CLONE_PIDFD the kernel stored a new descriptor that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        drop(go_read);
        drop(status_write);
        match open_held(pid, &userns, &go_write, &status_read) {
            Ok((user, net)) => {
                // The closed go pipe lets the holder exit; the descriptors keep both alive.
                drop(go_write);
                while let Err(Errno::EINTR) = waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED)
                {
                }
                Ok(NetworkNamespace {
                    fd: net,
                    owner: Some(OwningUserNamespace {
                        fd: user,
                        maps: userns,
                    }),
                })
            }
            Err(e) => {
                kill_and_reap(&pidfd);
                Err(e)
            }
        }
    }

    /// A second handle on the same namespace.
    pub fn try_clone(&self) -> std::io::Result<NetworkNamespace> {
        let owner = match &self.owner {
            Some(o) => Some(OwningUserNamespace {
                fd: o.fd.try_clone()?,
                maps: o.maps.clone(),
            }),
            None => None,
        };
        Ok(NetworkNamespace {
            fd: self.fd.try_clone()?,
            owner,
        })
    }

    pub(crate) fn owner(&self) -> Option<&OwningUserNamespace> {
        self.owner.as_ref()
    }
}

/// The holder's side: waits for its maps, brings `lo` up, reports the errno (0 for success)
/// and stays until the parent closes the go pipe, having opened its namespaces.
fn hold(parents_ends: [RawFd; 2], go: RawFd, status: RawFd) -> ! {
    // Its copy of the parent's end of the go pipe would keep the pipe from ever closing.
    for fd in parents_ends {
        // SAFETY: close on a descriptor number of this copy of the parent, used no further.
        unsafe { libc::close(fd) };
    }
    // SAFETY: both are pipe ends this copy of the parent holds open until it exits.
    let go = unsafe { BorrowedFd::borrow_raw(go) };
    // SAFETY: as above.
    let status = unsafe { BorrowedFd::borrow_raw(status) };
    let mut byte = [0u8; 1];
    let released = loop {
        match nix::unistd::read(go, &mut byte) {
            Err(Errno::EINTR) => continue,
            other => break other,
        }
    };
    if released != Ok(1) {
        child::exit(child::SETUP_FAILED);
    }
    let errno = match loopback_up() {
        Ok(()) => 0,
        Err(e) => e as i32,
    };
    // An error means the parent is gone; it would have nothing to read the status with.
    let _ = nix::unistd::write(status, &errno.to_ne_bytes());
    while let Err(Errno::EINTR) | Ok(1..) = nix::unistd::read(go, &mut byte) {}
    child::exit(0)
}

/// The parent's side of making an owned namespace: maps, go, status, then the two handles.
fn open_held(
    pid: Pid,
    userns: &UserNamespace,
    go: &OwnedFd,
    status: &OwnedFd,
) -> Result<(OwnedFd, OwnedFd), NetworkNamespaceError> {
    idmap::write_maps(pid, userns).map_err(NetworkNamespaceError::IdMaps)?;
    nix::unistd::write(go, &[1]).map_err(|e| NetworkNamespaceError::Create(OsReason(e)))?;
    let mut record = [0u8; 4];
    let read = loop {
        match nix::unistd::read(status, &mut record) {
            Err(Errno::EINTR) => continue,
            other => break other,
        }
    };
    match read {
        Ok(4) => {}
        Ok(_) => return Err(NetworkNamespaceError::Create(OsReason(Errno::EPROTO))),
        Err(e) => return Err(NetworkNamespaceError::Create(OsReason(e))),
    }
    let errno = i32::from_ne_bytes(record);
    if errno != 0 {
        return Err(NetworkNamespaceError::Loopback(OsReason(Errno::from_raw(
            errno,
        ))));
    }
    let open_ns = |kind: &str| {
        open(
            format!("/proc/{pid}/ns/{kind}").as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| NetworkNamespaceError::OpenOwned {
            pid: pid.as_raw(),
            reason: OsReason(e),
        })
    };
    Ok((open_ns("user")?, open_ns("net")?))
}

impl AsFd for NetworkNamespace {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Runs `f` with the calling thread in the network namespace `ns`, then moves it back.
pub(crate) fn within<T>(ns: &NetworkNamespace, f: impl FnOnce() -> T) -> Result<T, Errno> {
    let own = open(
        c"/proc/thread-self/ns/net",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    setns(&ns.fd, CloneFlags::CLONE_NEWNET)?;
    let result = f();
    // Going back to the namespace this thread came from cannot be refused to a thread that
    // was allowed to leave it; staying in the wrong one would be worse than stopping here.
    setns(&own, CloneFlags::CLONE_NEWNET).expect("return to the caller's network namespace");
    Ok(result)
}

fn loopback_up() -> Result<(), Errno> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: an all-zero ifreq is a valid value (empty name, zero union).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of the ifreq passed.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    Errno::result(ret)?;
    // SAFETY: the kernel just filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the name and flags of the ifreq passed.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    Errno::result(ret).map(drop)
}

/// What the intermediate process reports: the container's pid (0 if not cloned), the step
/// that failed (0 for none) and its errno, native byte order.
const NESTED_RECORD_LEN: usize = 12;

/// The intermediate process's steps, as numbered in its report.
const NESTED_STEPS: [&str; 5] = [
    "enter the user namespace owning the shared network namespace",
    "enter the shared network namespace",
    "clone3",
    "write uid_map",
    "write gid_map",
];

impl OwningUserNamespace {
    /// Starts a container nested in this user namespace and in the network namespace `net`:
    /// `flags` are its namespaces (a new user namespace among them), `ops` its setup steps.
    /// Returns its pid and a pidfd; its id maps are written, the rest of the release is
    /// the caller's.
    pub(crate) fn spawn_nested(
        &self,
        net: &NetworkNamespace,
        userns: &UserNamespace,
        flags: u64,
        ops: &[Op],
        status_fd: RawFd,
    ) -> Result<(Pid, OwnedFd), SpawnError> {
        let uid_map = nested_map_text(&userns.uid_map, &self.maps.uid_map, "uid")?;
        let gid_map = nested_map_text(&userns.gid_map, &self.maps.gid_map, "gid")?;
        // Non-blocking: the container inherits the write end, so after the intermediate
        // process ended an empty pipe means it died without a word, not "wait longer".
        let (report_read, report_write) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .map_err(|e| SpawnError::Pipe(OsReason(e)))?;
        let nested = Nested {
            user: self.fd.as_raw_fd(),
            net: net.fd.as_raw_fd(),
            flags: flags | libc::CLONE_PARENT as u64,
            uid_map: uid_map.as_bytes(),
            gid_map: gid_map.as_bytes(),
            ops,
            status_fd,
            report_fd: report_write.as_raw_fd(),
        };
        let mut pidfd: RawFd = -1;
        // SAFETY: the child only runs `Nested::run`, which never returns and does not
        // allocate; `pidfd` outlives the call.
        let ret = unsafe { clone3(libc::CLONE_PIDFD as u64, &mut pidfd) };
        if ret == Ok(0) {
            nested.run()
        }
        ret.map_err(|e| SpawnError::Clone {
            flags: libc::CLONE_PIDFD as u64,
            reason: OsReason(e),
        })?;
        // SAFETY: with CLONE_PIDFD the kernel stored a new descriptor that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        drop(report_write);
        loop {
            match waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED) {
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    return Err(SpawnError::Nested {
                        step: "wait for the intermediate process",
                        reason: OsReason(e),
                    });
                }
                Ok(_) => break,
            }
        }
        let mut record = [0u8; NESTED_RECORD_LEN];
        let read = nix::unistd::read(&report_read, &mut record);
        if read != Ok(NESTED_RECORD_LEN) {
            return Err(SpawnError::Nested {
                step: "read the intermediate process's report",
                reason: OsReason(read.err().unwrap_or(Errno::EPROTO)),
            });
        }
        let field = |i: usize| i32::from_ne_bytes(record[i..i + 4].try_into().expect("four"));
        let (pid, step, errno) = (field(0), field(4), field(8));
        let container = match pid {
            0 => None,
            pid => Some(crate::pidfd::open(pid).map_err(SpawnError::NestedPidfd)?),
        };
        if step != 0 {
            if let Some(container) = container {
                kill_and_reap(&container);
            }
            let step = usize::try_from(step - 1)
                .ok()
                .and_then(|i| NESTED_STEPS.get(i))
                .copied()
                .unwrap_or("start the intermediate process");
            return Err(SpawnError::Nested {
                step,
                reason: OsReason(Errno::from_raw(errno)),
            });
        }
        let container = container.ok_or(SpawnError::Nested {
            step: "read the intermediate process's report",
            reason: OsReason(Errno::EPROTO),
        })?;
        Ok((Pid::from_raw(pid), container))
    }
}

/// A map of a nested container, given in host ids, as the kernel takes it from inside the
/// owner (whose map is `owner`): each outside id replaced by the owner's id for it.
fn nested_map_text(
    map: &[IdMap],
    owner: &[IdMap],
    kind: &'static str,
) -> Result<String, SpawnError> {
    let lines = nest_map(map, owner).map_err(|id| SpawnError::NotInOwner { kind, id })?;
    Ok(idmap::format_map(&lines))
}

/// `map` (inside → host) rewritten as inside → ids of the namespace `owner` maps (inside →
/// host); the host id that `owner` does not map is the error.
fn nest_map(map: &[IdMap], owner: &[IdMap]) -> Result<Vec<IdMap>, u32> {
    let mut out = Vec::new();
    for line in map {
        let mut start = line.outside;
        let end = u64::from(line.outside) + u64::from(line.count);
        while u64::from(start) < end {
            let covering = owner
                .iter()
                .find(|o| start >= o.outside && start - o.outside < o.count)
                .ok_or(start)?;
            let offset = start - covering.outside;
            let count = (u64::from(covering.count - offset)).min(end - u64::from(start)) as u32;
            out.push(IdMap {
                inside: line.inside + (start - line.outside),
                outside: covering.inside + offset,
                count,
            });
            start += count;
        }
    }
    Ok(out)
}

/// Everything the intermediate process needs, prepared before it is cloned.
struct Nested<'a> {
    user: RawFd,
    net: RawFd,
    flags: u64,
    uid_map: &'a [u8],
    gid_map: &'a [u8],
    ops: &'a [Op],
    status_fd: RawFd,
    report_fd: RawFd,
}

impl Nested<'_> {
    /// The intermediate process: single-threaded, so it may enter the owning user namespace
    /// (where it gets every capability), then the network namespace; it clones the container
    /// as its parent's child, writes the container's maps from the owner and exits.
    fn run(&self) -> ! {
        // SAFETY: the descriptors are open in this copy of the parent for its whole life.
        let user = unsafe { BorrowedFd::borrow_raw(self.user) };
        // SAFETY: as above.
        let net = unsafe { BorrowedFd::borrow_raw(self.net) };
        if let Err(e) = setns(user, CloneFlags::CLONE_NEWUSER) {
            self.report(0, 1, e);
        }
        if let Err(e) = setns(net, CloneFlags::CLONE_NEWNET) {
            self.report(0, 2, e);
        }
        // SAFETY: this process has one thread; the container runs only `child::run`.
        let pid = match unsafe { clone3(self.flags, std::ptr::null_mut()) } {
            Ok(0) => child::run(self.ops, self.status_fd),
            Ok(pid) => pid,
            Err(e) => self.report(0, 3, e),
        };
        if let Err(e) = write_map(pid, b"uid_map", self.uid_map) {
            self.report(pid, 4, e);
        }
        if let Err(e) = write_map(pid, b"gid_map", self.gid_map) {
            self.report(pid, 5, e);
        }
        self.report(pid, 0, Errno::UnknownErrno)
    }

    fn report(&self, pid: libc::pid_t, step: i32, errno: Errno) -> ! {
        let mut record = [0u8; NESTED_RECORD_LEN];
        record[..4].copy_from_slice(&pid.to_ne_bytes());
        record[4..8].copy_from_slice(&step.to_ne_bytes());
        record[8..].copy_from_slice(&(errno as i32).to_ne_bytes());
        // SAFETY: the write end of the report pipe, open in this process until it exits.
        let fd = unsafe { BorrowedFd::borrow_raw(self.report_fd) };
        // 12 bytes to an empty pipe are written whole; a failure leaves the parent to
        // report the missing record.
        let _ = nix::unistd::write(fd, &record);
        child::exit(if step == 0 { 0 } else { child::SETUP_FAILED })
    }
}

/// Writes `/proc/PID/FILE` in one write, the path built on the stack (no allocation here).
fn write_map(pid: libc::pid_t, file: &[u8], map: &[u8]) -> Result<(), Errno> {
    use std::io::Write;
    let mut path = [0u8; 48];
    let mut rest = &mut path[..];
    write!(rest, "/proc/{pid}/").map_err(|_| Errno::ENAMETOOLONG)?;
    rest.write_all(file).map_err(|_| Errno::ENAMETOOLONG)?;
    // The array started zeroed: a NUL follows if there is room for one.
    if rest.is_empty() {
        return Err(Errno::ENAMETOOLONG);
    }
    let path = std::ffi::CStr::from_bytes_until_nul(&path).map_err(|_| Errno::ENAMETOOLONG)?;
    let fd = open(path, OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty())?;
    match nix::unistd::write(&fd, map)? {
        n if n == map.len() => Ok(()),
        _ => Err(Errno::EIO),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(inside: u32, outside: u32, count: u32) -> IdMap {
        IdMap {
            inside,
            outside,
            count,
        }
    }

    #[test]
    fn nested_maps_name_the_owners_ids() {
        // The owner: the user 1000 as 0, subordinate ids 200000.. as 1.. in two lines.
        let owner = [line(0, 1000, 1), line(1, 200000, 10), line(11, 200010, 5)];
        let container = [line(0, 1000, 1), line(1, 200000, 12), line(20, 200013, 2)];
        assert_eq!(
            nest_map(&container, &owner).unwrap(),
            [
                line(0, 0, 1),
                line(1, 1, 10),
                line(11, 11, 2),
                line(20, 14, 2)
            ]
        );
        assert_eq!(nest_map(&[line(0, 200014, 3)], &owner), Err(200015));
    }

    #[test]
    fn a_namespace_opened_by_path_is_entered_and_left() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: creating a network namespace needs root");
            return;
        }
        let link = || std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let made = NetworkNamespace::new().unwrap();
        let path = PathBuf::from(format!("/proc/self/fd/{}", made.as_fd().as_raw_fd()));
        let opened = NetworkNamespace::open(&path).unwrap();
        let own = link();
        let inside = opened.run(link).unwrap();
        assert_ne!(inside, own);
        assert_eq!(link(), own, "the thread is back in its own namespace");
        assert_eq!(made.run(link).unwrap(), inside);

        let missing = Path::new("/run/netns/no-such-namespace");
        let err = NetworkNamespace::open(missing).unwrap_err();
        assert_eq!(
            err.to_string(),
            "open network namespace /run/netns/no-such-namespace: no such file or directory"
        );
    }
}
