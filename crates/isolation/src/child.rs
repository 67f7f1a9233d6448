//! The child's side: runs the prepared steps between `clone3` and `execve`.
//!
//! This code runs in a copy of the parent made by a raw `clone3`, which skips the C library's
//! fork handlers: it must not allocate, take locks or panic. It only makes system calls on
//! data prepared by [`crate::plan`], and reports the first failure as (step index, errno).

use std::ffi::CStr;
use std::os::fd::{BorrowedFd, RawFd};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, fchmodat, mknod};
use nix::unistd::{Gid, Uid, chdir, mkdir, pivot_root, sethostname};

use crate::init;
use crate::plan::Op;

/// The exit code of a child whose setup failed (its parent reaps it and reports the error).
pub(crate) const SETUP_FAILED: i32 = 125;

/// The status record: step index and errno, native byte order.
pub(crate) const RECORD_LEN: usize = 8;

// The C library's setresuid, setresgid and setgroups apply the change to every thread the
// parent had, by signalling each and waiting for it. This copy has one thread, and the raw
// `clone3` did not update the library's thread list: those wrappers would wait forever when
// the parent is multi-threaded. The raw system calls change this thread only, which is all
// there is.

fn set_groups(groups: &[libc::gid_t]) -> nix::Result<()> {
    // SAFETY: the pointer and length describe a live slice of gid_t, which the kernel only
    // reads.
    let ret = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    Errno::result(ret).map(drop)
}

fn set_gid(gid: Gid) -> nix::Result<()> {
    let gid = gid.as_raw();
    // SAFETY: setresgid takes three ids by value and touches no memory.
    let ret = unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) };
    Errno::result(ret).map(drop)
}

fn set_uid(uid: Uid) -> nix::Result<()> {
    let uid = uid.as_raw();
    // SAFETY: setresuid takes three ids by value and touches no memory.
    let ret = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
    Errno::result(ret).map(drop)
}

/// Runs every step; never returns.
pub(crate) fn run(ops: &[Op], status_fd: RawFd) -> ! {
    for (index, op) in ops.iter().enumerate() {
        if let Op::Exec {
            supervise: true, ..
        } = op
        {
            init::run(op, index, status_fd);
        }
        if let Err(errno) = apply(op) {
            report(status_fd, index, errno);
            exit(SETUP_FAILED);
        }
    }
    // The last step is Exec, which only returns on failure.
    exit(SETUP_FAILED)
}

pub(crate) fn exit(code: i32) -> ! {
    // SAFETY: _exit ends the process without running the parent's atexit handlers or
    // flushing its stdio buffers, which belong to the parent.
    unsafe { libc::_exit(code) }
}

pub(crate) fn report(status_fd: RawFd, index: usize, errno: Errno) {
    let mut record = [0u8; RECORD_LEN];
    record[..4].copy_from_slice(&(index as u32).to_ne_bytes());
    record[4..].copy_from_slice(&(errno as i32).to_ne_bytes());
    // SAFETY: status_fd is the write end of the status pipe, open until exec or exit.
    let fd = unsafe { BorrowedFd::borrow_raw(status_fd) };
    // A short write of 8 bytes to a pipe cannot happen (PIPE_BUF is larger); an error means
    // the parent is gone and nobody is left to tell.
    let _ = nix::unistd::write(fd, &record);
}

pub(crate) fn apply(op: &Op) -> Result<(), Errno> {
    match op {
        Op::CloseGoWriter { fd } => {
            // SAFETY: fd is this child's copy of the go pipe's write end, used no further.
            unsafe { libc::close(*fd) };
            Ok(())
        }
        Op::AwaitParent { fd } => await_parent(*fd),
        Op::ParentDeathSignal { signal, watch_fd } => {
            nix::sys::prctl::set_pdeathsig(*signal)?;
            match watch_fd {
                Some(fd) if parent_gone(*fd) => exit(SETUP_FAILED),
                _ => Ok(()),
            }
        }
        Op::MakeMountsPrivate => mount(
            None::<&std::ffi::CStr>,
            c"/",
            None::<&std::ffi::CStr>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&std::ffi::CStr>,
        ),
        Op::Mount {
            source,
            target,
            fstype,
            flags,
            data,
        } => mount(
            source.as_deref(),
            target.as_c_str(),
            fstype.as_deref(),
            *flags,
            data.as_deref(),
        ),
        Op::SetMountAttrs {
            target,
            attrs,
            recursive,
        } => set_mount_attrs(target, *attrs, *recursive),
        Op::Mkdir { path, mode } => match mkdir(path.as_c_str(), Mode::from_bits_truncate(*mode)) {
            Err(Errno::EEXIST) => Ok(()),
            other => other,
        },
        Op::SeededTmpfs {
            seed,
            target,
            data,
            owner,
        } => crate::seed::seeded_tmpfs(seed, target, data, *owner),
        Op::Chmod { path, mode } => fchmodat(
            nix::fcntl::AT_FDCWD,
            path.as_c_str(),
            Mode::from_bits_truncate(*mode),
            FchmodatFlags::FollowSymlink,
        ),
        Op::DeviceNode { path, source, rdev } => device_node(path, source, *rdev),
        Op::Symlink { target, link } => {
            nix::unistd::symlinkat(target.as_c_str(), nix::fcntl::AT_FDCWD, link.as_c_str())
        }
        Op::PivotRoot { new_root } => {
            // pivot_root(".", ".") stacks the old root on top of the new one; no directory for
            // the old root is needed inside the (read-only) image.
            chdir(new_root.as_c_str())?;
            pivot_root(c".", c".")
        }
        Op::DetachOldRoot => {
            umount2(c".", MntFlags::MNT_DETACH)?;
            chdir(c"/")
        }
        Op::SetHostname { name } => sethostname(name),
        Op::SetNofile { limit } => setrlimit(Resource::RLIMIT_NOFILE, *limit, *limit),
        Op::DropBoundingCaps { keep } => drop_bounding_caps(*keep),
        Op::ClearInheritableAndAmbientCaps => clear_inheritable_and_ambient(),
        Op::SetGroups { groups } => set_groups(groups),
        Op::SetGid { gid } => set_gid(*gid),
        Op::SetUid { uid } => set_uid(*uid),
        Op::NoNewPrivs => nix::sys::prctl::set_no_new_privs(),
        Op::Chdir { path } => chdir(path.as_c_str()),
        Op::PlaceFds { fds } => place_fds(fds),
        Op::Exec {
            candidates,
            argv,
            envp,
            ..
        } => {
            let mut first_error = Errno::ENOENT;
            for path in candidates {
                // SAFETY: path, argv and envp are NUL-terminated strings and NULL-terminated
                // pointer arrays prepared by the parent and alive in this copy of its memory.
                unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
                let errno = Errno::last();
                // Like execvp: a missing candidate means "look further"; anything else is kept.
                if !matches!(errno, Errno::ENOENT | Errno::ENOTDIR) {
                    first_error = errno;
                    break;
                }
            }
            Err(first_error)
        }
    }
}

fn drop_bounding_caps(keep: u64) -> Result<(), Errno> {
    for cap in (0..64).filter(|cap| keep & (1 << cap) == 0) {
        // SAFETY: PR_CAPBSET_DROP takes a capability number and touches no memory.
        let ret = unsafe { libc::prctl(PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        match Errno::result(ret) {
            Ok(_) => {}
            // Past the running kernel's last capability: nothing more exists to drop.
            Err(Errno::EINVAL) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn device_node(path: &CStr, source: &CStr, rdev: libc::dev_t) -> Result<(), Errno> {
    let mode = Mode::from_bits_truncate(0o666);
    match mknod(path, SFlag::S_IFCHR, mode, rdev) {
        // mknod applies the umask; everyone may use these devices.
        Ok(()) => fchmodat(
            nix::fcntl::AT_FDCWD,
            path,
            mode,
            FchmodatFlags::FollowSymlink,
        ),
        // A user namespace (or no CAP_MKNOD): the host's node, bind-mounted over a file.
        Err(Errno::EPERM) => {
            let flags = nix::fcntl::OFlag::O_CREAT
                | nix::fcntl::OFlag::O_WRONLY
                | nix::fcntl::OFlag::O_CLOEXEC;
            nix::fcntl::open(path, flags, Mode::from_bits_truncate(0o644)).map(drop)?;
            mount(
                Some(source),
                path,
                None::<&CStr>,
                MsFlags::MS_BIND,
                None::<&CStr>,
            )
        }
        Err(e) => Err(e),
    }
}

const PR_CAPBSET_DROP: libc::c_int = 24;
const PR_CAP_AMBIENT: libc::c_int = 47;
const PR_CAP_AMBIENT_CLEAR_ALL: libc::c_ulong = 4;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn await_parent(fd: RawFd) -> Result<(), Errno> {
    let mut byte = [0u8; 1];
    // SAFETY: fd is the read end of the go pipe, open in the child until exec.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    loop {
        match nix::unistd::read(fd, &mut byte) {
            Ok(1) => return Ok(()),
            // The parent closed the pipe without saying go: it gave up on this child.
            Ok(_) => exit(SETUP_FAILED),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// True when the parent's end of the go pipe is closed, i.e. the parent died.
fn parent_gone(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    // SAFETY: pfd is a valid pollfd array of length one; timeout 0 does not block.
    let ret = unsafe { libc::poll(&mut pfd, 1, 0) };
    ret > 0 && pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn set_mount_attrs(target: &std::ffi::CStr, attrs: u64, recursive: bool) -> Result<(), Errno> {
    let attr = MountAttr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: target is NUL-terminated and attr is a mount_attr of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            target.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    match Errno::result(ret) {
        Ok(_) => Ok(()),
        Err(Errno::ENOSYS) => remount_bind(target, attrs),
        Err(e) => Err(e),
    }
}

/// Kernels before 5.12: a bind remount of the top mount only, keeping the flags a user
/// namespace may not clear (the kernel refuses a remount that drops a locked flag).
fn remount_bind(target: &std::ffi::CStr, attrs: u64) -> Result<(), Errno> {
    use crate::plan::{MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
    use nix::sys::statvfs::{FsFlags, statvfs};
    let current = statvfs(target)?.flags();
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
    let keep = [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ];
    for (st, ms) in keep {
        if current.contains(st) {
            flags |= ms;
        }
    }
    let added = [
        (MOUNT_ATTR_RDONLY, MsFlags::MS_RDONLY),
        (MOUNT_ATTR_NOSUID, MsFlags::MS_NOSUID),
        (MOUNT_ATTR_NODEV, MsFlags::MS_NODEV),
        (MOUNT_ATTR_NOEXEC, MsFlags::MS_NOEXEC),
    ];
    for (attr, ms) in added {
        if attrs & attr != 0 {
            flags |= ms;
        }
    }
    mount(
        None::<&std::ffi::CStr>,
        target,
        None::<&std::ffi::CStr>,
        flags,
        None::<&std::ffi::CStr>,
    )
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn clear_inheritable_and_ambient() -> Result<(), Errno> {
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointers.
    let ret = unsafe { libc::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    Errno::result(ret)?;
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: version 3 capget fills exactly two CapData entries.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    Errno::result(ret)?;
    for d in &mut data {
        d.inheritable = 0;
    }
    // SAFETY: capset reads the header and two CapData entries, both valid.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    Errno::result(ret).map(drop)
}

fn place_fds(fds: &[(RawFd, RawFd)]) -> Result<(), Errno> {
    // Everything the caller had open above stderr is closed at exec ...
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on descriptors.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    Errno::result(ret)?;
    // ... except the passed ones: dup2 gives the new number no close-on-exec flag. Sources are
    // all above every target, so no source is overwritten before it is copied.
    for (source, target) in fds {
        // SAFETY: dup2 on two descriptor numbers; the target is meant to be replaced.
        let ret = unsafe { libc::dup2(*source, *target) };
        Errno::result(ret)?;
    }
    Ok(())
}
