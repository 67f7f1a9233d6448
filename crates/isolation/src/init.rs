//! The optional init: pid 1 of the container starts the program, forwards signals to it,
//! reaps orphans, and exits with the program's status.
//!
//! Like `child.rs`, this runs in a process made by a raw `clone3` from a possibly
//! multi-threaded parent: system calls only, no allocation.

use std::ffi::c_void;
use std::os::fd::RawFd;

use nix::errno::Errno;

use crate::child::{SETUP_FAILED, apply, exit, report};
use crate::plan::Op;

/// Signals passed on to the program; SIGCHLD is waited for to reap.
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// The program's stack until its exec: it only runs `start_program`, `execve` and `report`.
const PROGRAM_STACK_SIZE: usize = 64 << 10;

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

/// What the program's side of the clone needs; it lives on the init's stack, which the
/// program shares (CLONE_VM) while the init is suspended (CLONE_VFORK).
struct Start<'a> {
    exec: &'a Op,
    index: usize,
    status_fd: RawFd,
    set: &'a libc::sigset_t,
}

extern "C" fn start_program(arg: *mut c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Start` that `run` passed to clone; `run` is suspended until this
    // process execs or exits, so the value is alive and nobody else touches it.
    let start = unsafe { &*(arg as *const Start<'_>) };
    // Until the exec, a handler the caller installed may run here on the memory shared with
    // the suspended init. Handlers must be async-signal-safe, and this is no different from
    // the handler interrupting the init at its clone call, which it may do at any time.
    set_mask(libc::SIG_UNBLOCK, start.set);
    let errno = apply(start.exec).err().unwrap_or(Errno::ENOENT);
    report(start.status_fd, start.index, errno);
    exit(SETUP_FAILED)
}

/// Starts the program (step `index` is its exec) and supervises it; never returns.
///
/// The program is started like `posix_spawn` does: `CLONE_VM | CLONE_VFORK` on a stack of
/// its own, so the kernel copies no address space for a process that only execs, and the
/// init sleeps until the exec (or its failure) is done.
pub(crate) fn run(exec: &Op, index: usize, status_fd: RawFd) -> ! {
    let set = signal_set();
    // Blocked before the clone so no signal for the program is lost in between; the kernel
    // delivers blocked signals even to a pid-namespace init, which it otherwise shields.
    set_mask(libc::SIG_BLOCK, &set);
    // SAFETY: an anonymous private mapping asked of the kernel, no memory of ours involved.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PROGRAM_STACK_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        report(status_fd, index, Errno::last());
        exit(SETUP_FAILED)
    }
    let start = Start {
        exec,
        index,
        status_fd,
        set: &set,
    };
    // SAFETY: the stack is PROGRAM_STACK_SIZE bytes long and grows down from its end (every
    // architecture this builds for); `start` outlives the call because CLONE_VFORK suspends
    // this process until the program has exec'd or exited, and the program only calls
    // `start_program`, which never returns into our frames.
    let ret = unsafe {
        libc::clone(
            start_program,
            stack.cast::<u8>().wrapping_add(PROGRAM_STACK_SIZE).cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &start as *const Start<'_> as *mut c_void,
        )
    };
    if ret < 0 {
        report(status_fd, index, Errno::last());
        exit(SETUP_FAILED)
    }
    // SAFETY: the program has exec'd or exited (CLONE_VFORK): its stack is unused.
    unsafe { libc::munmap(stack, PROGRAM_STACK_SIZE) };
    // The program held the status pipe until its exec closed it: the parent's end of file.
    // SAFETY: closing this process's copy of the status pipe, not used again here.
    unsafe { libc::close(status_fd) };
    supervise(ret, &set)
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
