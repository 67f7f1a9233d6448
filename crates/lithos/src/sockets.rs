//! Listening sockets the tree owns: bound once per `host:port`, shared by every entry that
//! names it, passed to knots, kept across re-exec and taken back from knots after a crash.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use socket2::{Domain, Socket, Type};

use crate::instance::SocketPlan;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("set close-on-exec of the socket for {addr}: {source}")]
    CloseOnExec {
        addr: SocketAddr,
        source: nix::Error,
    },
}

/// One listening socket.
#[derive(Debug)]
struct Entry {
    fd: OwnedFd,
    /// The number it arrived at across an exec: that descriptor stays open (std cannot
    /// take ownership of a bare number safely), so it is what the next exec passes on,
    /// and knots are spawned with it closed.
    inherited: Option<RawFd>,
}

/// The tree's socket table.
#[derive(Debug, Default)]
pub struct Sockets {
    map: HashMap<SocketAddr, Entry>,
}

/// Binds a listening socket as `plan` describes; `fsuid` owns it (shows in `ss -e`).
pub fn bind(plan: &SocketPlan, owner: u32) -> Result<OwnedFd, SocketError> {
    let err = |source| SocketError::Bind {
        addr: plan.addr,
        source,
    };
    // The socket's owner is the fsuid of the thread creating it.
    let previous = nix::unistd::setfsuid(nix::unistd::Uid::from_raw(owner));
    let socket = Socket::new(Domain::for_address(plan.addr), Type::STREAM, None);
    nix::unistd::setfsuid(previous);
    let socket = socket.map_err(err)?;
    socket.set_reuse_address(plan.reuse_addr).map_err(err)?;
    if plan.reuse_port {
        socket.set_reuse_port(true).map_err(err)?;
    }
    socket.bind(&plan.addr.into()).map_err(err)?;
    socket
        .listen(plan.backlog.min(i32::MAX as u32) as i32)
        .map_err(err)?;
    if plan.non_block {
        socket.set_nonblocking(true).map_err(err)?;
    }
    Ok(socket.into())
}

/// The address of a listening TCP socket, or `None` for anything else.
pub fn listening_addr(fd: BorrowedFd<'_>) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(&fd);
    if !sock.is_listener().ok()? {
        return None;
    }
    sock.local_addr().ok()?.as_socket()
}

impl Sockets {
    pub fn get(&self, addr: &SocketAddr) -> Option<BorrowedFd<'_>> {
        self.map.get(addr).map(|e| e.fd.as_fd())
    }

    pub fn contains(&self, addr: &SocketAddr) -> bool {
        self.map.contains_key(addr)
    }

    /// Adds a socket taken from elsewhere (a knot, or inherited across exec).
    pub fn insert(&mut self, addr: SocketAddr, fd: OwnedFd, inherited: Option<RawFd>) {
        self.map.entry(addr).or_insert(Entry { fd, inherited });
    }

    /// The socket for `plan`, bound now if there is none yet.
    pub fn ensure(&mut self, plan: &SocketPlan, owner: u32) -> Result<BorrowedFd<'_>, SocketError> {
        let entry = match self.map.entry(plan.addr) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(Entry {
                fd: bind(plan, owner)?,
                inherited: None,
            }),
        };
        Ok(entry.fd.as_fd())
    }

    /// Closes every socket whose address is not in `keep`.
    pub fn retain(&mut self, keep: &[SocketAddr]) {
        let gone: Vec<SocketAddr> = self
            .map
            .keys()
            .filter(|a| !keep.contains(a))
            .copied()
            .collect();
        for addr in gone {
            if let Some(entry) = self.map.remove(&addr)
                && let Some(raw) = entry.inherited
            {
                // The inherited number cannot be closed without unsafe: stop it listening so
                // clients are refused as if it were closed.
                let _ = nix::sys::socket::shutdown(raw, nix::sys::socket::Shutdown::Both);
            }
        }
    }

    /// Descriptor numbers that must not leak into knots (inherited across exec).
    pub fn inherited(&self) -> Vec<RawFd> {
        self.map.values().filter_map(|e| e.inherited).collect()
    }

    /// Prepares for exec: every socket without close-on-exec, so the new image gets them.
    pub fn keep_across_exec(&self) -> Result<(), SocketError> {
        for (addr, e) in &self.map {
            if e.inherited.is_none() {
                fcntl(e.fd.as_fd(), FcntlArg::F_SETFD(FdFlag::empty())).map_err(|source| {
                    SocketError::CloseOnExec {
                        addr: *addr,
                        source,
                    }
                })?;
            }
        }
        Ok(())
    }

    /// Undoes [`Sockets::keep_across_exec`] after a failed exec.
    pub fn close_on_exec(&self) {
        for e in self.map.values().filter(|e| e.inherited.is_none()) {
            let _ = fcntl(e.fd.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
        }
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.map.keys().copied().collect()
    }
}

/// Listening sockets this process inherited across exec, found in `/proc/self/fd`.
pub fn recover_inherited() -> Vec<(SocketAddr, OwnedFd, RawFd)> {
    let mut found = Vec::new();
    let Ok(me) = isolation::pidfd::open(std::process::id() as i32) else {
        return found;
    };
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return found;
    };
    let numbers: Vec<RawFd> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|n| *n > 2)
        .collect();
    for n in numbers {
        // Inherited sockets have no close-on-exec; our own descriptors all have it.
        if close_on_exec(n) != Some(false) {
            continue;
        }
        let Ok(copy) = isolation::pidfd::get_fd(me.as_fd(), n) else {
            continue;
        };
        if let Some(addr) = listening_addr(copy.as_fd()) {
            found.push((addr, copy, n));
        }
    }
    found
}

/// Whether descriptor `n` of this process has close-on-exec (from `/proc/self/fdinfo`).
fn close_on_exec(n: RawFd) -> Option<bool> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{n}")).ok()?;
    let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?.trim();
    let flags = u32::from_str_radix(flags, 8).ok()?;
    Some(flags & 0o2000000 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(port: u16) -> SocketPlan {
        SocketPlan {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            fd: 3,
            knot_fd: 3,
            backlog: 16,
            reuse_addr: true,
            reuse_port: false,
            non_block: false,
        }
    }

    #[test]
    fn bound_sockets_listen_and_are_shared_by_address() {
        let mut sockets = Sockets::default();
        let fd = sockets
            .ensure(&plan(0), nix::unistd::getuid().as_raw())
            .unwrap();
        let addr = listening_addr(fd).expect("listening");
        assert_eq!(addr.ip(), std::net::IpAddr::from([127, 0, 0, 1]));
        assert_ne!(addr.port(), 0);
        std::net::TcpStream::connect(addr).expect("connects");
        sockets.retain(&[]);
        assert!(sockets.addrs().is_empty());
    }
}
