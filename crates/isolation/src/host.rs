//! The host this process runs on.

use std::ffi::OsString;

use nix::unistd::gethostname;

use crate::error::OsReason;

/// Reading the hostname failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("read hostname: {0}")]
    Hostname(OsReason),
}

/// The hostname of this UTS namespace (what `hostname` prints).
pub fn name() -> Result<OsString, HostError> {
    gethostname().map_err(|e| HostError::Hostname(OsReason(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_kernels_record() {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(name().unwrap(), kernel.trim_end_matches('\n'));
    }
}
