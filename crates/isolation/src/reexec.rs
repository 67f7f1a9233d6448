//! Re-executing the process image when it hits a fatal signal (SIGSEGV, SIGBUS, SIGILL,
//! SIGABRT, SIGFPE): a supervisor that crashes comes back with the same pid and its children.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

use crate::error::{OsReason, ReexecError};

/// The fatal signals that trigger a re-exec.
pub const FATAL_SIGNALS: [Signal; 5] = [
    Signal::SIGSEGV,
    Signal::SIGBUS,
    Signal::SIGILL,
    Signal::SIGABRT,
    Signal::SIGFPE,
];

/// What the handler executes, prepared before any signal can arrive.
struct Image {
    _strings: Vec<CString>,
    program: *const libc::c_char,
    argv: Vec<*const libc::c_char>,
}

// SAFETY: the pointers point into `_strings`, which is never changed after creation and lives
// for the rest of the process (the Image is stored in a static).
unsafe impl Send for Image {}
// SAFETY: as above; the Image is only read after it is stored.
unsafe impl Sync for Image {}

static IMAGE: OnceLock<Image> = OnceLock::new();

extern "C" fn on_fatal_signal(signal: libc::c_int) {
    if let Some(image) = IMAGE.get() {
        // SAFETY: execve is async-signal-safe; program and argv are NUL-terminated and
        // NULL-terminated, and `environ` is the process's current environment.
        unsafe { libc::execve(image.program, image.argv.as_ptr(), environ_ptr()) };
    }
    // execve failed or nothing was prepared: die of the signal as if there were no handler
    // (SA_RESETHAND restored the default action).
    // SAFETY: raise is async-signal-safe.
    unsafe { libc::raise(signal) };
}

fn environ_ptr() -> *const *const libc::c_char {
    unsafe extern "C" {
        static environ: *const *const libc::c_char;
    }
    // SAFETY: reading the C library's `environ` pointer, which is always initialised.
    unsafe { environ }
}

/// Makes the fatal signals re-execute `program` with `args` (args[0] included) and the
/// environment current at that time. Call once, early; later calls fail.
pub fn reexec_on_fatal_signals(program: &Path, args: &[OsString]) -> Result<(), ReexecError> {
    let to_c = |bytes: &[u8]| {
        CString::new(bytes).map_err(|_| ReexecError::Nul(String::from_utf8_lossy(bytes).into()))
    };
    let mut strings = vec![to_c(program.as_os_str().as_bytes())?];
    for arg in args {
        strings.push(to_c(arg.as_bytes())?);
    }
    let program_ptr = strings[0].as_ptr();
    let mut argv: Vec<_> = strings[1..].iter().map(|s| s.as_ptr()).collect();
    argv.push(std::ptr::null());
    let image = Image {
        _strings: strings,
        program: program_ptr,
        argv,
    };
    IMAGE
        .set(image)
        .map_err(|_| ReexecError::AlreadyInstalled)?;
    // SA_NODEFER: the new image must not start with the signal blocked.
    let action = SigAction::new(
        SigHandler::Handler(on_fatal_signal),
        SaFlags::SA_RESETHAND | SaFlags::SA_NODEFER,
        SigSet::empty(),
    );
    for signal in FATAL_SIGNALS {
        // SAFETY: the handler only calls async-signal-safe functions (execve, raise) on data
        // prepared above.
        unsafe { sigaction(signal, &action) }.map_err(|e: Errno| ReexecError::Install {
            signal,
            reason: OsReason(e),
        })?;
    }
    Ok(())
}
