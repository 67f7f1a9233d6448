//! Containers for the workspace's tools: the only crate that makes system calls directly.
//!
//! A [`Container`] describes what to run and how it is isolated: new pid, mount, uts and ipc
//! namespaces (optionally network and user), a read-only image root with `/proc`, a minimal
//! `/dev` and a read-only `/sys`, volumes, identity, cgroup limits (v1 and v2), resource
//! limits, `no_new_privs`, a reduced capability bounding set and passed file descriptors.
//! [`Container::spawn`] starts it and returns a [`Child`] once the program runs; a failed
//! setup step inside the child comes back as a [`SpawnError::Setup`] naming step and path.
//!
//! ```no_run
//! use isolation::{Container, Volume};
//!
//! let mut c = Container::new("/var/lib/lithos/images/app", "/bin/app");
//! c.arg("--port=8080")
//!     .env("PATH", "/bin")
//!     .hostname("app")
//!     .identity(1000, 1000, &[])
//!     .volume("/tmp", Volume::Tmpfs { size: Some(100 << 20), mode: 0o1777, subdirs: vec![] });
//! let mut child = c.spawn()?;
//! let status = child.wait()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod cgroup;
mod child;
mod container;
mod error;
pub mod exec;
pub mod fd;
pub mod fs;
pub mod host;
mod idmap;
mod init;
pub mod limits;
pub mod net;
mod netns;
pub mod pidfd;
mod plan;
pub mod poll;
mod process;
pub mod readiness;
pub mod reexec;
mod seed;
pub mod signal;
pub mod spawn;
pub mod user;
pub mod wait;

pub use caps::Capability;
pub use cgroup::{Cgroup, CgroupSpec, CgroupVersion, Hierarchies, Limits, Usage};
pub use container::{Container, IdMap, MapWriter, Owner, Stdio, UserNamespace, Volume};
pub use error::{
    CgroupError, FdError, OsReason, PidfdError, ProcessError, ReexecError, SpawnError, Step,
};
pub use netns::{NetworkNamespace, NetworkNamespaceError};
pub use nix::sys::signal::Signal;
pub use plan::DEFAULT_PATH;
pub use process::{Child, ExitStatus};
