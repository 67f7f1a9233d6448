//! Filling a fresh tmpfs with a copy of a directory, in the child before `pivot_root`.
//!
//! Like the rest of the child's code this allocates nothing: directory entries are read into
//! buffers on the stack and every path is a name relative to an open directory.

use std::ffi::CStr;
use std::os::fd::RawFd;

use nix::errno::Errno;

use crate::container::Owner;

/// Deeper trees fail with `ELOOP`: each level holds two descriptors and a buffer on the stack.
const MAX_DEPTH: usize = 128;

/// Opens `seed`, mounts a tmpfs (`data` as options) on `target` and copies the contents of
/// `seed` into it with modes and owners (the ids `owner` gives replace the originals). The root of
/// the tmpfs takes the mode and owner of `seed`. `seed` is opened first, so it may be the
/// directory the tmpfs hides.
pub(crate) fn seeded_tmpfs(
    seed: &CStr,
    target: &CStr,
    data: &CStr,
    owner: Owner,
) -> Result<(), Errno> {
    let src = open_dir(libc::AT_FDCWD, seed)?;
    let result = mount_and_copy(src, target, data, owner);
    close(src);
    result
}

fn mount_and_copy(src: RawFd, target: &CStr, data: &CStr, owner: Owner) -> Result<(), Errno> {
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let ret = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    Errno::result(ret)?;
    let dst = open_dir(libc::AT_FDCWD, target)?;
    let result = copy_dir(src, dst, owner, 0).and_then(|()| {
        let st = stat_at(src, c"")?;
        let (uid, gid) = (
            owner.uid.unwrap_or(st.st_uid),
            owner.gid.unwrap_or(st.st_gid),
        );
        // SAFETY: fchown and fchmod on an open descriptor touch no memory.
        Errno::result(unsafe { libc::fchown(dst, uid, gid) })?;
        // SAFETY: as above.
        Errno::result(unsafe { libc::fchmod(dst, st.st_mode & 0o7777) }).map(drop)
    });
    close(dst);
    result
}

fn open_dir(at: RawFd, name: &CStr) -> Result<RawFd, Errno> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: name is NUL-terminated.
    Errno::result(unsafe { libc::openat(at, name.as_ptr(), flags) })
}

fn close(fd: RawFd) {
    // SAFETY: fd was opened by this module and is closed once.
    unsafe { libc::close(fd) };
}

/// `lstat` of `name` in `dir`; the empty name means `dir` itself.
fn stat_at(dir: RawFd, name: &CStr) -> Result<libc::stat, Errno> {
    let flags = libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH;
    // SAFETY: an all-zero stat is a valid value for the kernel to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: name is NUL-terminated and st is a writable stat.
    Errno::result(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, flags) })?;
    Ok(st)
}

fn copy_dir(src: RawFd, dst: RawFd, owner: Owner, depth: usize) -> Result<(), Errno> {
    if depth >= MAX_DEPTH {
        return Err(Errno::ELOOP);
    }
    // u64 elements keep the records 8-byte aligned, as linux_dirent64 needs.
    let mut buf = [0u64; 256];
    loop {
        // SAFETY: buf is writable for its whole length in bytes.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                src,
                buf.as_mut_ptr(),
                std::mem::size_of_val(&buf),
            )
        };
        let n = Errno::result(n)? as usize;
        if n == 0 {
            return Ok(());
        }
        let mut offset = 0;
        while offset < n {
            // linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name; the
            // kernel wrote complete records up to n.
            let record = &bytes(&buf)[offset..n];
            let reclen = u16::from_ne_bytes([record[16], record[17]]) as usize;
            let Ok(name) = CStr::from_bytes_until_nul(&record[19..]) else {
                return Err(Errno::EIO);
            };
            offset += reclen;
            if name == c"." || name == c".." {
                continue;
            }
            copy_entry(src, dst, name, owner, depth)?;
        }
    }
}

fn copy_entry(
    src: RawFd,
    dst: RawFd,
    name: &CStr,
    owner: Owner,
    depth: usize,
) -> Result<(), Errno> {
    let st = stat_at(src, name)?;
    let (uid, gid) = (
        owner.uid.unwrap_or(st.st_uid),
        owner.gid.unwrap_or(st.st_gid),
    );
    let mode = st.st_mode & 0o7777;
    let p = name.as_ptr();
    match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => {
            // SAFETY: p is NUL-terminated.
            Errno::result(unsafe { libc::mkdirat(dst, p, 0o700) })?;
            let sub_src = open_dir(src, name)?;
            let copied = open_dir(dst, name).and_then(|sub_dst| {
                let r = copy_dir(sub_src, sub_dst, owner, depth + 1);
                close(sub_dst);
                r
            });
            close(sub_src);
            copied?;
        }
        libc::S_IFREG => copy_file(src, dst, name, st.st_size)?,
        libc::S_IFLNK => copy_symlink(src, dst, name)?,
        libc::S_IFIFO => {
            // SAFETY: p is NUL-terminated.
            Errno::result(unsafe { libc::mknodat(dst, p, libc::S_IFIFO, 0) })?;
        }
        // Device nodes cannot be made in a user namespace and sockets are not content.
        _ => return Ok(()),
    }
    // Owner before mode: chown clears the set-id bits.
    // SAFETY: p is NUL-terminated.
    Errno::result(unsafe { libc::fchownat(dst, p, uid, gid, libc::AT_SYMLINK_NOFOLLOW) })?;
    if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
        // SAFETY: p is NUL-terminated.
        Errno::result(unsafe { libc::fchmodat(dst, p, mode, 0) })?;
    }
    Ok(())
}

fn copy_file(src: RawFd, dst: RawFd, name: &CStr, size: i64) -> Result<(), Errno> {
    let p = name.as_ptr();
    // SAFETY: p is NUL-terminated.
    let input = Errno::result(unsafe {
        libc::openat(src, p, libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
    })?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC;
    // SAFETY: p is NUL-terminated.
    let output = match Errno::result(unsafe { libc::openat(dst, p, flags, 0o600) }) {
        Ok(fd) => fd,
        Err(e) => {
            close(input);
            return Err(e);
        }
    };
    let mut left = size.max(0) as usize;
    let mut result = Ok(());
    while left > 0 {
        // SAFETY: both are open descriptors; a null offset uses the input's file position.
        let sent = unsafe { libc::sendfile(output, input, std::ptr::null_mut(), left) };
        match Errno::result(sent) {
            // The file shrank while being copied: what was there is the copy.
            Ok(0) => break,
            Ok(n) => left -= n as usize,
            Err(Errno::EINTR) => {}
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    close(input);
    close(output);
    result
}

#[inline(never)]
fn copy_symlink(src: RawFd, dst: RawFd, name: &CStr) -> Result<(), Errno> {
    let mut target = [0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: target is writable for PATH_MAX bytes, one is kept for the NUL.
    let len = unsafe {
        libc::readlinkat(
            src,
            name.as_ptr(),
            target.as_mut_ptr().cast(),
            target.len() - 1,
        )
    };
    let len = Errno::result(len)? as usize;
    target[len] = 0;
    // SAFETY: target is NUL-terminated at len, name is NUL-terminated.
    Errno::result(unsafe { libc::symlinkat(target.as_ptr().cast(), dst, name.as_ptr()) }).map(drop)
}

fn bytes(buf: &[u64; 256]) -> &[u8] {
    // SAFETY: any u64 array is readable as bytes of the same total size and lifetime.
    unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), std::mem::size_of_val(buf)) }
}
