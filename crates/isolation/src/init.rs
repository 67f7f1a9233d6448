//! The optional init: pid 1 of the container forks the program, forwards signals to it,
//! reaps orphans, and exits with the program's status.
//!
//! Like `child.rs`, this runs in a process made by a raw `clone3` from a possibly
//! multi-threaded parent: system calls only, no allocation.

use std::os::fd::RawFd;

use nix::errno::Errno;

use crate::child::{SETUP_FAILED, apply, exit, report};
use crate::plan::Op;
use crate::process::clone3;

/// Signals passed on to the program; SIGCHLD is waited for to reap.
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for sig in FORWARDED.into_iter().chain([libc::SIGCHLD]) {
        // SAFETY: set is a valid sigset_t and sig a valid signal number.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    set
}

fn set_mask(how: libc::c_int, set: &libc::sigset_t) {
    // SAFETY: sigprocmask with a valid set and no old-set pointer.
    unsafe { libc::sigprocmask(how, set, std::ptr::null_mut()) };
}

/// Forks the program (step `index` is its exec) and supervises it; never returns.
pub(crate) fn run(exec: &Op, index: usize, status_fd: RawFd) -> ! {
    let set = signal_set();
    // Blocked before the fork so no signal for the program is lost in between; the kernel
    // delivers blocked signals even to a pid-namespace init, which it otherwise shields.
    set_mask(libc::SIG_BLOCK, &set);
    // SAFETY: a plain fork; the child only unblocks signals and execs or exits.
    let ret = unsafe { clone3(0, std::ptr::null_mut()) };
    let program = match ret {
        Ok(0) => {
            set_mask(libc::SIG_UNBLOCK, &set);
            let errno = apply(exec).err().unwrap_or(Errno::ENOENT);
            report(status_fd, index, errno);
            exit(SETUP_FAILED)
        }
        Ok(pid) => pid,
        Err(errno) => {
            report(status_fd, index, errno);
            exit(SETUP_FAILED)
        }
    };
    // The program holds the status pipe until its exec closes it: the parent's end of file.
    // SAFETY: closing this process's copy of the status pipe, not used again here.
    unsafe { libc::close(status_fd) };
    supervise(program, &set)
}

fn supervise(program: libc::pid_t, set: &libc::sigset_t) -> ! {
    loop {
        // SAFETY: set is a valid sigset_t; no siginfo is asked for.
        let sig = unsafe { libc::sigwaitinfo(set, std::ptr::null_mut()) };
        if sig < 0 {
            continue;
        }
        if sig != libc::SIGCHLD {
            // SAFETY: kill with a pid this process forked and a valid signal number.
            unsafe { libc::kill(program, sig) };
            continue;
        }
        // Reap everything that ended: the program and orphans re-parented to pid 1.
        loop {
            let mut status = 0;
            // SAFETY: waitpid with a valid pointer to an int.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if pid == program {
                let code = if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    128 + libc::WTERMSIG(status)
                };
                // Leaving ends the pid namespace: the kernel kills whatever is left.
                exit(code);
            }
        }
    }
}
