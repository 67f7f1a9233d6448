//! Starting a helper program (not a container) as the leader of its own process group, with
//! chosen descriptors at chosen numbers: a supervisor's per-instance processes.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags, posix_spawn};
use nix::sys::signal::SigSet;
use nix::unistd::Pid;

use crate::Signal;
use crate::error::OsReason;

/// Starting the program failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("program, argument or environment entry contains a NUL byte: {0:?}")]
    Nul(OsString),
    #[error("prepare the start of {program}: {reason}")]
    Prepare { program: PathBuf, reason: OsReason },
    #[error("start {program}: {reason}")]
    Start { program: PathBuf, reason: OsReason },
}

/// Signals the program starts with at their default action (the parent may ignore or
/// handle them); no signal starts blocked.
const DEFAULT_SIGNALS: [Signal; 8] = [
    Signal::SIGPIPE,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGCHLD,
];

fn c_string(s: &OsStr) -> Result<CString, StartError> {
    CString::new(s.as_bytes()).map_err(|_| StartError::Nul(s.to_owned()))
}

/// Starts `program` with `args` (args[0] included) and this process's environment in a new
/// process group it leads, so terminal signals for this process do not reach it. Each
/// `(source, target)` in `fds` places a copy of `source` at `target`; `close` lists
/// descriptors the program must not get (ones without close-on-exec). Returns its pid; the
/// caller reaps it.
pub fn group_leader(
    program: &Path,
    args: &[OsString],
    fds: &[(RawFd, RawFd)],
    close: &[RawFd],
) -> Result<i32, StartError> {
    let prepare = |reason| StartError::Prepare {
        program: program.to_owned(),
        reason: OsReason(reason),
    };
    let mut actions = PosixSpawnFileActions::init().map_err(prepare)?;
    // Two steps, through numbers above every source and target, so placing one descriptor
    // never clobbers another that is still to be copied.
    let above = fds.iter().flat_map(|(a, b)| [*a, *b]).max().unwrap_or(2) + 1;
    for (i, (src, _)) in fds.iter().enumerate() {
        actions
            .add_dup2(*src, above + i as RawFd)
            .map_err(prepare)?;
    }
    for (i, (_, target)) in fds.iter().enumerate() {
        actions
            .add_dup2(above + i as RawFd, *target)
            .map_err(prepare)?;
        actions.add_close(above + i as RawFd).map_err(prepare)?;
    }
    for raw in close {
        if !fds.iter().any(|(_, t)| t == raw) {
            actions.add_close(*raw).map_err(prepare)?;
        }
    }
    let mut attr = PosixSpawnAttr::init().map_err(prepare)?;
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF
            | PosixSpawnFlags::POSIX_SPAWN_SETPGROUP,
    )
    .map_err(prepare)?;
    attr.set_sigmask(&SigSet::empty()).map_err(prepare)?;
    let mut defaults = SigSet::empty();
    for s in DEFAULT_SIGNALS {
        defaults.add(s);
    }
    attr.set_sigdefault(&defaults).map_err(prepare)?;
    attr.set_pgroup(Pid::from_raw(0)).map_err(prepare)?;
    let c_args = args
        .iter()
        .map(|a| c_string(a))
        .collect::<Result<Vec<_>, _>>()?;
    let env = std::env::vars_os()
        .map(|(mut k, v)| {
            k.push("=");
            k.push(v);
            c_string(&k)
        })
        .collect::<Result<Vec<_>, _>>()?;
    posix_spawn(program, &actions, &attr, &c_args, &env)
        .map(Pid::as_raw)
        .map_err(|e| StartError::Start {
            program: program.to_owned(),
            reason: OsReason(e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ExitStatus;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    #[test]
    fn the_program_leads_its_group_and_finds_descriptors_placed() {
        let (mut reader, writer) = std::io::pipe().unwrap();
        let (_other_reader, other) = std::io::pipe().unwrap();
        // Target 9 is the placed pipe; the other pipe's writer is closed in the program.
        let pid = group_leader(
            Path::new("/bin/sh"),
            &[
                "sh".into(),
                "-c".into(),
                format!(
                    "echo $(cut -d' ' -f5 /proc/$$/stat) >&9; echo x >&{} || exit 4",
                    other.as_raw_fd()
                )
                .into(),
            ],
            &[(writer.as_raw_fd(), 9)],
            &[other.as_raw_fd()],
        )
        .unwrap();
        drop(writer);
        let mut out = String::new();
        reader.read_to_string(&mut out).unwrap();
        assert_eq!(out.trim(), pid.to_string());
        assert_eq!(crate::wait::for_pid(pid).unwrap(), ExitStatus::Exited(4));
        assert!(matches!(
            group_leader(Path::new("/nonexistent"), &["x".into()], &[], &[]),
            Err(StartError::Start { .. })
        ));
    }
}
