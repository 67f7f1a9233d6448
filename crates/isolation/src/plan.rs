//! Turns a [`Container`] into the list of steps its child runs between `clone3` and `execve`.
//!
//! Everything the child needs (C strings, pointer arrays, descriptor numbers) is prepared here
//! in the parent, so the child allocates nothing: it is a copy of a possibly multi-threaded
//! process, where taking the allocator's lock could deadlock. The parent keeps, beside each
//! step, what it acts on, so a failure reported by the child as (step index, errno) becomes an
//! error naming the step and the path.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl, open};
use nix::mount::MsFlags;
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};

use crate::container::{Container, Owner, Stdio, Volume};
use crate::error::{OsReason, SpawnError, Step};

/// `PATH` used to find a program named without a slash when the container sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `mount_setattr` attribute bits (linux/mount.h).
pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub(crate) const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x4;
pub(crate) const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// The container's device nodes with their fixed numbers (major, minor; Linux's devices.txt).
/// Created with `mknod` where allowed: one inode, no mount to set up and tear down. In a user
/// namespace, where `mknod` is refused, the host's node is bind-mounted instead.
const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];
const DEV_SYMLINKS: &[(&str, &str)] = &[
    ("pts/ptmx", "ptmx"),
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
];

/// One step of the child's setup. Paths are host paths until `PivotRoot`.
pub(crate) enum Op {
    /// Closes the child's copy of the go pipe's write end: only then does the read end
    /// report the parent's death (end of file, hang-up) to the waits and checks below.
    CloseGoWriter {
        fd: RawFd,
    },
    /// Blocks until the parent has written id maps and joined the cgroup, or has run the
    /// caller's preparation (whichever of these the container needs, in that order).
    AwaitParent {
        fd: RawFd,
    },
    /// Sets the parent-death signal; with `watch_fd`, exits if the parent is already gone.
    ParentDeathSignal {
        signal: Signal,
        watch_fd: Option<RawFd>,
    },
    /// Stops mount events from reaching the host.
    MakeMountsPrivate,
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: MsFlags,
        data: Option<CString>,
    },
    /// Adds mount attributes (read-only, nosuid, nodev) to a mount and, if asked, its children.
    SetMountAttrs {
        target: CString,
        attrs: u64,
        recursive: bool,
    },
    Mkdir {
        path: CString,
        mode: u32,
    },
    /// Mounts a tmpfs on `target` and copies the contents of `seed` into it.
    SeededTmpfs {
        seed: CString,
        target: CString,
        data: CString,
        owner: Owner,
    },
    Chmod {
        path: CString,
        mode: u32,
    },
    /// A character device node (mode 0666) at `path`, or a bind mount of `source` over an
    /// empty file there when the kernel refuses `mknod`.
    DeviceNode {
        path: CString,
        source: CString,
        rdev: libc::dev_t,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    /// Makes `new_root` the root; the old root stays mounted at `/` until `DetachOldRoot`.
    PivotRoot {
        new_root: CString,
    },
    DetachOldRoot,
    SetHostname {
        name: OsString,
    },
    SetNofile {
        limit: u64,
    },
    /// Drops every capability the kernel knows from the bounding set except the bits of
    /// `keep`.
    DropBoundingCaps {
        keep: u64,
    },
    ClearInheritableAndAmbientCaps,
    SetGroups {
        groups: Vec<libc::gid_t>,
    },
    SetGid {
        gid: Gid,
    },
    SetUid {
        uid: Uid,
    },
    NoNewPrivs,
    Chdir {
        path: CString,
    },
    /// Descriptors (source, target): sources are all above every target.
    PlaceFds {
        fds: Vec<(RawFd, RawFd)>,
    },
    /// Tries each candidate path in turn; `argv`/`envp` point into `_strings`. With
    /// `supervise`, the exec happens in a child while this process stays as its init.
    Exec {
        supervise: bool,
        candidates: Vec<CString>,
        argv: Vec<*const libc::c_char>,
        envp: Vec<*const libc::c_char>,
        _strings: Vec<CString>,
    },
}

/// What a step acts on, for the error message.
#[derive(Debug, Clone)]
pub(crate) struct Subject {
    pub step: Step,
    pub path: PathBuf,
    /// For bind mounts: the mount point, blamed instead when the source exists.
    pub mount_point: Option<PathBuf>,
}

/// The child's program, with the descriptors the parent holds until the child has exec'd.
pub(crate) struct Plan {
    pub ops: Vec<Op>,
    pub subjects: Vec<Subject>,
    /// Sources of the placed descriptors, open until the child has exec'd.
    pub _held_fds: Vec<OwnedFd>,
}

fn cstring(what: &'static str, bytes: &[u8]) -> Result<CString, SpawnError> {
    CString::new(bytes).map_err(|_| SpawnError::Nul {
        what,
        value: String::from_utf8_lossy(bytes).into_owned(),
    })
}

fn path_cstring(path: &Path) -> Result<CString, SpawnError> {
    cstring("path", path.as_os_str().as_bytes())
}

/// `root` joined with an absolute container path, refusing `..`.
fn inside(root: &Path, container_path: &Path) -> Result<PathBuf, SpawnError> {
    let mut out = root.to_path_buf();
    let mut components = container_path.components();
    if components.next() != Some(Component::RootDir) {
        return Err(SpawnError::BadContainerPath(container_path.to_owned()));
    }
    for c in components {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return Err(SpawnError::BadContainerPath(container_path.to_owned())),
        }
    }
    Ok(out)
}

/// Duplicates `fd` to a number at or above `min` (close-on-exec) unless it already is there.
pub(crate) fn raise_fd(fd: OwnedFd, min: RawFd) -> Result<OwnedFd, SpawnError> {
    if fd.as_raw_fd() >= min {
        return Ok(fd);
    }
    dup_at_least(&fd, min)
}

/// A close-on-exec duplicate of `fd` numbered `min` or above.
fn dup_at_least(fd: &OwnedFd, min: RawFd) -> Result<OwnedFd, SpawnError> {
    let raw = fcntl(fd.as_fd(), FcntlArg::F_DUPFD_CLOEXEC(min)).map_err(|e| SpawnError::DupFd {
        fd: fd.as_raw_fd(),
        reason: OsReason(e),
    })?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

struct Builder {
    ops: Vec<Op>,
    subjects: Vec<Subject>,
}

impl Builder {
    fn push(&mut self, op: Op, step: Step, path: impl Into<PathBuf>) {
        self.ops.push(op);
        self.subjects.push(Subject {
            step,
            path: path.into(),
            mount_point: None,
        });
    }

    fn mount(
        &mut self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: Option<String>,
    ) -> Result<(), SpawnError> {
        let op = Op::Mount {
            source: Some(cstring("mount source", source.as_bytes())?),
            target: path_cstring(target)?,
            fstype: Some(cstring("filesystem type", fstype.as_bytes())?),
            flags,
            data: data
                .map(|d| cstring("mount options", d.as_bytes()))
                .transpose()?,
        };
        self.push(op, Step::Mount, target);
        Ok(())
    }

    /// A recursive bind mount with attributes added to every mount it brings along.
    fn bind(&mut self, source: &Path, target: &Path, attrs: u64) -> Result<(), SpawnError> {
        self.ops.push(Op::Mount {
            source: Some(path_cstring(source)?),
            target: path_cstring(target)?,
            fstype: None,
            flags: MsFlags::MS_BIND | MsFlags::MS_REC,
            data: None,
        });
        self.subjects.push(Subject {
            step: Step::Mount,
            path: source.to_owned(),
            mount_point: Some(target.to_owned()),
        });
        if attrs != 0 {
            let op = Op::SetMountAttrs {
                target: path_cstring(target)?,
                attrs,
                recursive: true,
            };
            self.push(op, Step::Remount, target);
        }
        Ok(())
    }

    fn mkdir(&mut self, path: &Path, mode: u32) -> Result<(), SpawnError> {
        self.push(
            Op::Mkdir {
                path: path_cstring(path)?,
                mode,
            },
            Step::Mkdir,
            path,
        );
        // mkdir applies the umask; the mode asked for is the mode wanted.
        self.push(
            Op::Chmod {
                path: path_cstring(path)?,
                mode,
            },
            Step::Chmod,
            path,
        );
        Ok(())
    }

    fn dev(&mut self, root: &Path) -> Result<(), SpawnError> {
        let dev = inside(root, Path::new("/dev"))?;
        let nosuid_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
        self.mount(
            "tmpfs",
            &dev,
            "tmpfs",
            nosuid_noexec,
            Some("mode=755,size=65536".into()),
        )?;
        for (name, major, minor) in DEVICES {
            let node = dev.join(name);
            self.push(
                Op::DeviceNode {
                    path: path_cstring(&node)?,
                    source: path_cstring(&Path::new("/dev").join(name))?,
                    rdev: libc::makedev(*major as _, *minor as _),
                },
                Step::DeviceNode,
                &node,
            );
        }
        let pts = dev.join("pts");
        self.mkdir(&pts, 0o755)?;
        // No gid= option: gid 5 (tty) may not be mapped in a user namespace.
        self.mount(
            "devpts",
            &pts,
            "devpts",
            nosuid_noexec,
            Some("newinstance,ptmxmode=0666,mode=0620".into()),
        )?;
        let shm = dev.join("shm");
        self.mkdir(&shm, 0o1777)?;
        self.mount(
            "shm",
            &shm,
            "tmpfs",
            nosuid_noexec | MsFlags::MS_NODEV,
            Some("mode=1777".into()),
        )?;
        for (target, name) in DEV_SYMLINKS {
            let link = dev.join(name);
            self.push(
                Op::Symlink {
                    target: cstring("symlink target", target.as_bytes())?,
                    link: path_cstring(&link)?,
                },
                Step::Symlink,
                &link,
            );
        }
        Ok(())
    }

    fn volume(
        &mut self,
        root: &Path,
        mount_point: &Path,
        volume: &Volume,
    ) -> Result<(), SpawnError> {
        let target = inside(root, mount_point)?;
        match volume {
            Volume::ReadOnly { source } => self.bind(
                source,
                &target,
                MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            ),
            Volume::ReadWrite { source } => {
                self.bind(source, &target, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)
            }
            Volume::Tmpfs {
                size,
                mode,
                subdirs,
            } => {
                let mut data = format!("mode={mode:o}");
                if let Some(size) = size {
                    data.push_str(&format!(",size={size}"));
                }
                self.mount(
                    "tmpfs",
                    &target,
                    "tmpfs",
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some(data),
                )?;
                for (subdir, mode) in subdirs {
                    let relative = Path::new("/").join(subdir);
                    self.mkdir(&inside(&target, &relative)?, *mode)?;
                }
                Ok(())
            }
            Volume::SeededTmpfs { size, seed, owner } => {
                let mut data = String::from("mode=700");
                if let Some(size) = size {
                    data.push_str(&format!(",size={size}"));
                }
                let op = Op::SeededTmpfs {
                    seed: path_cstring(seed)?,
                    target: path_cstring(&target)?,
                    data: cstring("mount options", data.as_bytes())?,
                    owner: *owner,
                };
                self.ops.push(op);
                self.subjects.push(Subject {
                    step: Step::Seed,
                    path: seed.clone(),
                    mount_point: Some(target),
                });
                Ok(())
            }
        }
    }
}

fn exec_op(c: &Container) -> Result<(Op, PathBuf), SpawnError> {
    if c.program.is_empty() {
        return Err(SpawnError::NoProgram);
    }
    let program = c.program.as_bytes();
    let candidates = if program.contains(&b'/') {
        vec![cstring("program", program)?]
    } else {
        let path = c
            .env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_bytes())
            .unwrap_or(DEFAULT_PATH.as_bytes());
        path.split(|b| *b == b':')
            .filter(|dir| !dir.is_empty())
            .map(|dir| {
                let mut full = dir.to_vec();
                full.push(b'/');
                full.extend_from_slice(program);
                cstring("program", &full)
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    let mut strings = Vec::with_capacity(1 + c.args.len() + c.env.len());
    strings.push(cstring("program", program)?);
    for arg in &c.args {
        strings.push(cstring("argument", arg.as_bytes())?);
    }
    let argc = strings.len();
    for (k, v) in &c.env {
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        strings.push(cstring("environment variable", &kv)?);
    }
    // Moving a CString moves only its pointer: these stay valid while `strings` lives.
    let mut argv: Vec<_> = strings[..argc].iter().map(|s| s.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<_> = strings[argc..].iter().map(|s| s.as_ptr()).collect();
    envp.push(std::ptr::null());
    let op = Op::Exec {
        supervise: c.init,
        candidates,
        argv,
        envp,
        _strings: strings,
    };
    Ok((op, PathBuf::from(OsStr::from_bytes(program))))
}

/// Descriptors to place in the child: (source, target) pairs and the sources they refer to.
struct Placement {
    pairs: Vec<(RawFd, RawFd)>,
    held: Vec<OwnedFd>,
}

/// Stdio and passed descriptors, each raised above every target number.
fn fds(c: &Container) -> Result<Placement, SpawnError> {
    let mut wanted: Vec<(OwnedFd, RawFd)> = Vec::new();
    for (stdio, target) in [(&c.stdin, 0), (&c.stdout, 1), (&c.stderr, 2)] {
        let fd = match stdio {
            Stdio::Inherit => continue,
            Stdio::Null => open(
                c"/dev/null",
                OFlag::O_RDWR | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| SpawnError::Setup {
                step: Step::PassFd,
                path: "/dev/null".into(),
                reason: OsReason(e),
            })?,
            Stdio::Fd(fd) => dup_cloexec(fd)?,
        };
        wanted.push((fd, target));
    }
    for (fd, target) in &c.fds {
        if *target < 0 || wanted.iter().any(|(_, t)| t == target) {
            return Err(SpawnError::DuplicateFd(*target));
        }
        wanted.push((dup_cloexec(fd)?, *target));
    }
    let min_free = wanted.iter().map(|(_, t)| *t).max().unwrap_or(2).max(2) + 1;
    let mut pairs = Vec::with_capacity(wanted.len());
    let mut held = Vec::with_capacity(wanted.len());
    for (fd, target) in wanted {
        let fd = raise_fd(fd, min_free)?;
        pairs.push((fd.as_raw_fd(), target));
        held.push(fd);
    }
    Ok(Placement { pairs, held })
}

fn dup_cloexec(fd: &OwnedFd) -> Result<OwnedFd, SpawnError> {
    dup_at_least(fd, 0)
}

impl Plan {
    /// Prepares every step; `await_fd` is where the child waits for the parent's go (and
    /// `go_writer` the write end it inherited): first (with `await_release`) before anything
    /// else, then (with `await_volumes`) before mounting the volumes.
    pub(crate) fn new(
        c: &Container,
        await_fd: RawFd,
        go_writer: RawFd,
        await_release: bool,
        await_volumes: bool,
    ) -> Result<Plan, SpawnError> {
        let mut b = Builder {
            ops: Vec::new(),
            subjects: Vec::new(),
        };
        let root = c.root.as_path();
        b.push(Op::CloseGoWriter { fd: go_writer }, Step::AwaitParent, "");
        if let Some(signal) = c.parent_death_signal {
            // The parent may have died before the signal was set.
            let op = Op::ParentDeathSignal {
                signal,
                watch_fd: Some(await_fd),
            };
            b.push(op, Step::ParentDeathSignal, "");
        }
        if await_release {
            b.push(Op::AwaitParent { fd: await_fd }, Step::AwaitParent, "");
        }
        if c.user_namespace.is_some() {
            // Until now the child still runs as the parent's host ids, which may be unmapped in
            // its namespace (files it creates would fail with EOVERFLOW): become its root.
            b.push(
                Op::SetGid {
                    gid: Gid::from_raw(0),
                },
                Step::SetGid,
                "0",
            );
            b.push(
                Op::SetUid {
                    uid: Uid::from_raw(0),
                },
                Step::SetUid,
                "0",
            );
        }
        b.push(Op::MakeMountsPrivate, Step::Mount, "/");
        let read_only = if c.root_writable {
            0
        } else {
            MOUNT_ATTR_RDONLY
        };
        b.bind(root, root, read_only | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)?;
        if c.mount_proc {
            let proc_dir = inside(root, Path::new("/proc"))?;
            let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            b.mount("proc", &proc_dir, "proc", flags, None)?;
        }
        if c.mount_dev {
            b.dev(root)?;
        }
        if c.mount_sys {
            let sys = inside(root, Path::new("/sys"))?;
            let ro =
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            // sysfs may only be mounted by the owner of the network namespace.
            let own_netns = c.network_namespace && c.joined_network.is_none();
            if c.user_namespace.is_none() || own_netns {
                b.mount("sysfs", &sys, "sysfs", ro, None)?;
            } else {
                let attrs =
                    MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC;
                b.bind(Path::new("/sys"), &sys, attrs)?;
            }
        }
        // Parents before children, whatever order the caller listed them in.
        let mut volumes: Vec<_> = c.volumes.iter().collect();
        volumes.sort_by(|a, b| a.0.components().cmp(b.0.components()));
        if await_volumes {
            b.push(Op::AwaitParent { fd: await_fd }, Step::AwaitParent, "");
        }
        for (mount_point, volume) in volumes {
            b.volume(root, mount_point, volume)?;
        }
        b.push(
            Op::PivotRoot {
                new_root: path_cstring(root)?,
            },
            Step::PivotRoot,
            root,
        );
        b.push(Op::DetachOldRoot, Step::DetachOldRoot, "/");
        if let Some(name) = &c.hostname {
            cstring("hostname", name.as_bytes())?;
            b.push(
                Op::SetHostname { name: name.clone() },
                Step::SetHostname,
                name,
            );
        }
        if let Some(limit) = c.nofile_limit {
            b.push(Op::SetNofile { limit }, Step::SetRlimit, "RLIMIT_NOFILE");
        }
        if let Some(keep) = &c.capabilities {
            // The child finds the kernel's last capability by dropping until EINVAL: no read
            // of `cap_last_cap` per start.
            let keep = keep.iter().fold(0u64, |bits, cap| bits | cap.bitmask());
            b.push(
                Op::DropBoundingCaps { keep },
                Step::DropCapabilities,
                "bounding set",
            );
            b.push(
                Op::ClearInheritableAndAmbientCaps,
                Step::ClearCapabilities,
                "inheritable and ambient sets",
            );
        }
        b.push(
            Op::SetGroups {
                groups: c.groups.clone(),
            },
            Step::SetGroups,
            format!("{:?}", c.groups),
        );
        b.push(
            Op::SetGid {
                gid: Gid::from_raw(c.gid),
            },
            Step::SetGid,
            c.gid.to_string(),
        );
        b.push(
            Op::SetUid {
                uid: Uid::from_raw(c.uid),
            },
            Step::SetUid,
            c.uid.to_string(),
        );
        if c.no_new_privs {
            b.push(Op::NoNewPrivs, Step::NoNewPrivs, "");
        }
        if let Some(signal) = c.parent_death_signal {
            // Changing credentials clears the signal: set it again and check for a race.
            let op = Op::ParentDeathSignal {
                signal,
                watch_fd: Some(await_fd),
            };
            b.push(op, Step::ParentDeathSignal, "");
        }
        b.push(
            Op::Chdir {
                path: path_cstring(&c.workdir)?,
            },
            Step::Chdir,
            &c.workdir,
        );
        let placement = fds(c)?;
        b.push(
            Op::PlaceFds {
                fds: placement.pairs,
            },
            Step::PassFd,
            "",
        );
        let (exec, program) = exec_op(c)?;
        b.push(exec, Step::Exec, program);
        Ok(Plan {
            ops: b.ops,
            subjects: b.subjects,
            _held_fds: placement.held,
        })
    }

    /// The error for step `index` failing with `errno` in the child.
    pub(crate) fn error(&self, index: usize, errno: Errno) -> SpawnError {
        let reason = OsReason(errno);
        let Some(subject) = self.subjects.get(index) else {
            return SpawnError::ReadStatus(OsReason(Errno::EPROTO));
        };
        let path = match (&subject.mount_point, errno) {
            // A missing mount point in the image is the likelier cause once the source exists.
            (Some(mount_point), Errno::ENOENT) if subject.path.exists() => mount_point.clone(),
            _ => subject.path.clone(),
        };
        SpawnError::Setup {
            step: subject.step,
            path,
            reason,
        }
    }
}
