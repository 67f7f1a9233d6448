//! What the service says about itself: the image's version and the host it runs on.

use std::path::{Path, PathBuf};

/// The version file every demo image carries (written by config-examples/demo/vagga.yaml).
pub const DEFAULT_VERSION_FILE: &str = "/etc/demo/version";

/// Why the identity could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("read version file {path}: {source}")]
    ReadVersion {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("version file {path} is empty")]
    EmptyVersion { path: PathBuf },
    #[error("read hostname {path}: {source}")]
    ReadHostname {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The version and host name shown by `GET /`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub version: String,
    pub host: String,
}

impl Identity {
    /// Reads the version from `version_file` (first line, trimmed); the host is `host` when
    /// given (verwalter passes its node name), else the kernel's host name.
    pub fn load(version_file: &Path, host: Option<String>) -> Result<Identity, IdentityError> {
        let text =
            std::fs::read_to_string(version_file).map_err(|source| IdentityError::ReadVersion {
                path: version_file.to_path_buf(),
                source,
            })?;
        let version = text.lines().next().unwrap_or("").trim().to_string();
        if version.is_empty() {
            return Err(IdentityError::EmptyVersion {
                path: version_file.to_path_buf(),
            });
        }
        let host = match host {
            Some(host) => host,
            None => {
                let path = Path::new("/proc/sys/kernel/hostname");
                std::fs::read_to_string(path)
                    .map_err(|source| IdentityError::ReadHostname {
                        path: path.to_path_buf(),
                        source,
                    })?
                    .trim()
                    .to_string()
            }
        };
        Ok(Identity { version, host })
    }

    /// The line `GET /` answers: `demo-web <version> on <host>`.
    pub fn greeting(&self) -> String {
        format!("demo-web {} on {}\n", self.version, self.host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_first_line_of_version_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("version");
        std::fs::write(&file, "v2\nbuilt by vagga\n").unwrap();
        let identity = Identity::load(&file, Some("alpha".into())).unwrap();
        assert_eq!(identity.greeting(), "demo-web v2 on alpha\n");
    }

    #[test]
    fn empty_or_missing_version_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("version");
        let missing = Identity::load(&file, None).unwrap_err();
        assert!(missing.to_string().starts_with("read version file "));
        std::fs::write(&file, "\n").unwrap();
        let empty = Identity::load(&file, None).unwrap_err();
        assert_eq!(
            empty.to_string(),
            format!("version file {} is empty", file.display())
        );
    }

    #[test]
    fn host_defaults_to_kernel_hostname() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("version");
        std::fs::write(&file, "v1").unwrap();
        let identity = Identity::load(&file, None).unwrap();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(identity.host, kernel.trim());
    }
}
