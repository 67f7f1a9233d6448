//! Listening sockets the tree owns: bound once per `host:port`, shared by every entry that
//! names it, passed to knots, kept across re-exec and taken back from knots after a crash.
//!
//! Every socket in the table stays open across `execve` (no close-on-exec) at all times: a
//! re-exec from a fatal-signal handler cannot prepare anything, so the new image must find
//! the sockets as they are. Knots get only their own (the spawn closes the others).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use socket2::{Domain, Socket, Type};

use crate::instance::SocketPlan;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("socket for {addr}: {source}")]
    KeepAcrossExec {
        addr: SocketAddr,
        source: isolation::FdError,
    },
}

/// The tree's socket table.
#[derive(Debug, Default)]
pub struct Sockets {
    map: HashMap<SocketAddr, OwnedFd>,
}

/// Binds a listening socket as `plan` describes; `fsuid` owns it (shows in `ss -e`).
pub fn bind(plan: &SocketPlan, owner: u32) -> Result<OwnedFd, SocketError> {
    let err = |source| SocketError::Bind {
        addr: plan.addr,
        source,
    };
    // The socket's owner is the fsuid of the thread creating it.
    let socket = isolation::user::creating_as(owner, || {
        Socket::new(Domain::for_address(plan.addr), Type::STREAM, None)
    });
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

fn keep_across_exec(addr: SocketAddr, fd: &OwnedFd) -> Result<(), SocketError> {
    isolation::fd::keep_across_exec(fd.as_fd())
        .map_err(|source| SocketError::KeepAcrossExec { addr, source })
}

impl Sockets {
    pub fn get(&self, addr: &SocketAddr) -> Option<BorrowedFd<'_>> {
        self.map.get(addr).map(|fd| fd.as_fd())
    }

    pub fn contains(&self, addr: &SocketAddr) -> bool {
        self.map.contains_key(addr)
    }

    /// Adds a socket taken from elsewhere (a knot, or inherited across exec); a second one
    /// for the same address is closed.
    pub fn insert(&mut self, addr: SocketAddr, fd: OwnedFd) -> Result<(), SocketError> {
        if let std::collections::hash_map::Entry::Vacant(v) = self.map.entry(addr) {
            keep_across_exec(addr, &fd)?;
            v.insert(fd);
        }
        Ok(())
    }

    /// The socket for `plan`, bound now if there is none yet.
    pub fn ensure(&mut self, plan: &SocketPlan, owner: u32) -> Result<BorrowedFd<'_>, SocketError> {
        let fd: &OwnedFd = match self.map.entry(plan.addr) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let fd = bind(plan, owner)?;
                keep_across_exec(plan.addr, &fd)?;
                v.insert(fd)
            }
        };
        Ok(fd.as_fd())
    }

    /// Closes every socket whose address is not in `keep`.
    pub fn retain(&mut self, keep: &[SocketAddr]) {
        self.map.retain(|addr, _| keep.contains(addr));
    }

    /// The descriptor numbers of every socket (a knot must not inherit those not its own).
    pub fn raw_fds(&self) -> Vec<RawFd> {
        self.map.values().map(|fd| fd.as_raw_fd()).collect()
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.map.keys().copied().collect()
    }
}

/// Listening sockets this process inherited across exec (found in `/proc/self/fd`), each
/// taken over at its number so that dropping it really closes it.
pub fn recover_inherited() -> Vec<(SocketAddr, OwnedFd)> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let numbers: Vec<RawFd> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|n| *n > 2)
        .collect();
    let Ok(me) = isolation::pidfd::open(std::process::id() as i32) else {
        return Vec::new();
    };
    numbers
        .into_iter()
        // Inherited descriptors have no close-on-exec; those this image opened all have it.
        .filter(|n| close_on_exec(*n) == Some(false))
        .filter_map(|n| {
            // Inspected through a copy: anything but a listening socket is not ours to take.
            let copy = isolation::pidfd::get_fd(me.as_fd(), n).ok()?;
            let addr = listening_addr(copy.as_fd())?;
            drop(copy);
            match isolation::fd::claim_inherited(n) {
                Ok(fd) => Some((addr, fd)),
                Err(e) => {
                    tracing::warn!("inherited socket {addr}: {e}");
                    None
                }
            }
        })
        .collect()
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
            .ensure(&plan(0), isolation::user::real_uid())
            .unwrap();
        assert_eq!(
            close_on_exec(fd.as_raw_fd()),
            Some(false),
            "kept across exec"
        );
        let addr = listening_addr(fd).expect("listening");
        assert_eq!(addr.ip(), std::net::IpAddr::from([127, 0, 0, 1]));
        assert_ne!(addr.port(), 0);
        std::net::TcpStream::connect(addr).expect("connects");
        sockets.retain(&[]);
        assert!(sockets.addrs().is_empty());
        let refused = std::net::TcpStream::connect(addr).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    }
}
