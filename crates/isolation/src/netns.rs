//! A network namespace made once and shared by several containers (a group of services that
//! talk over their own loopback, invisible from the host).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
use nix::sys::stat::Mode;

use crate::error::OsReason;

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
}

/// A network namespace with only `lo`, up; it lives while this value (or a container that
/// joined it) does. Joining it from a container needs root: see
/// [`crate::Container::join_network_namespace`].
#[derive(Debug)]
pub struct NetworkNamespace {
    fd: OwnedFd,
}

impl NetworkNamespace {
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
        Ok(NetworkNamespace { fd: made })
    }

    /// A second handle on the same namespace.
    pub fn try_clone(&self) -> std::io::Result<NetworkNamespace> {
        Ok(NetworkNamespace {
            fd: self.fd.try_clone()?,
        })
    }
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
