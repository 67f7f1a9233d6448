//! Replacing this process's image with another program while keeping the pid (a supervisor
//! upgrading itself; a start-up re-exec with a changed environment).

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::OsReason;

/// Replacing the image failed; this process runs on unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("program, argument or environment entry contains a NUL byte: {0:?}")]
    Nul(OsString),
    #[error("exec {program}: {reason}")]
    Exec { program: PathBuf, reason: OsReason },
}

fn c_string(s: &OsStr) -> Result<CString, ExecError> {
    CString::new(s.as_bytes()).map_err(|_| ExecError::Nul(s.to_owned()))
}

/// Executes `program` with `args` (args[0] included) and the environment `env`, in place of
/// this process. Returns only on failure.
pub fn replace(
    program: &Path,
    args: &[OsString],
    env: impl IntoIterator<Item = (OsString, OsString)>,
) -> ExecError {
    let prepared = (|| {
        let program = c_string(program.as_os_str())?;
        let args = args
            .iter()
            .map(|a| c_string(a))
            .collect::<Result<Vec<_>, _>>()?;
        let env = env
            .into_iter()
            .map(|(mut k, v)| {
                k.push("=");
                k.push(v);
                c_string(&k)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((program, args, env))
    })();
    let (c_program, args, env) = match prepared {
        Ok(p) => p,
        Err(e) => return e,
    };
    let Err(e) = nix::unistd::execve(&c_program, &args, &env);
    ExecError::Exec {
        program: program.to_owned(),
        reason: OsReason(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_or_a_nul_byte_is_named() {
        let err = replace(Path::new("/nonexistent/program"), &["x".into()], []);
        assert_eq!(
            err.to_string(),
            "exec /nonexistent/program: no such file or directory"
        );
        let err = replace(Path::new("/bin/true"), &[], [("A\0B".into(), "1".into())]);
        assert!(matches!(err, ExecError::Nul(s) if s == "A\0B=1"));
    }
}
