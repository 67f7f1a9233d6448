//! The private state directory: where everything of one stack lives, and the embedded
//! configs written into it.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The prefix the embedded configs use for state paths; replaced by the state dir.
pub const STATE_PREFIX: &str = "/var/lib/deploy-stack";
/// The lithos cgroup name the embedded master.yaml uses; replaced per state dir.
pub const CGROUP_PLACEHOLDER: &str = "deploy-stack.slice";

macro_rules! example {
    ($path:literal) => {
        (
            $path,
            include_str!(concat!("../../../config-examples/demo/", $path)),
        )
    };
}

/// The files of config-examples/demo/ the stack writes, by their path there (the state
/// dir uses the same relative layout, with `demo/` the vagga project).
pub const EMBEDDED: &[(&str, &str)] = &[
    example!("vagga.yaml"),
    example!("image/config/demo-web.yaml"),
    example!("lithos/master.yaml"),
    example!("lithos/sandboxes/demo.yaml"),
    example!("verwalter/scheduler/v1/main.lua"),
    example!("verwalter/templates/demo/v1/lithos.render.yaml"),
    example!("verwalter/templates/demo/v1/processes.yaml.hbs"),
    example!("verwalter/templates/demo/v1/switch.sh.hbs"),
    example!("verwalter/runtime/demo/v1/release.yaml"),
    example!("verwalter/runtime/demo/v2/release.yaml"),
];

/// The initial (empty) processes file of sandbox demo, written only when missing: after a
/// restart lithos starts from the last file verwalter switched in.
pub const EMPTY_PROCESSES: (&str, &str) = example!("lithos/processes/demo.yaml");

/// Why the state dir could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("resolve state dir {path}: {source}")]
    Resolve {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state dir {path} must be valid UTF-8")]
    NotUtf8 { path: PathBuf },
}

/// Every path of one stack, below its state dir.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

/// What machine/demo.yaml tells the templates about this host.
#[derive(Debug, serde::Serialize)]
struct MachineDemo<'a> {
    listen_host: &'a str,
    lithos_master: &'a Path,
    bin_dir: &'a Path,
}

impl Layout {
    /// Creates the state dir when missing and makes its path absolute.
    pub fn create(root: &Path) -> Result<Layout, LayoutError> {
        std::fs::create_dir_all(root).map_err(|source| LayoutError::CreateDir {
            path: root.to_path_buf(),
            source,
        })?;
        let root = std::fs::canonicalize(root).map_err(|source| LayoutError::Resolve {
            path: root.to_path_buf(),
            source,
        })?;
        if root.to_str().is_none() {
            return Err(LayoutError::NotUtf8 { path: root });
        }
        Ok(Layout { root })
    }

    /// The vagga project that builds the demo images.
    pub fn project(&self) -> PathBuf {
        self.root.join("demo")
    }
    /// Installed lithos images (`demo.v1`, `demo.v2`).
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }
    pub fn lithos_master(&self) -> PathBuf {
        self.root.join("lithos/master.yaml")
    }
    /// lithos' runtime-dir (as the embedded master.yaml sets it).
    pub fn lithos_runtime(&self) -> PathBuf {
        self.run().join("lithos")
    }
    pub fn verwalter_config(&self) -> PathBuf {
        self.root.join("verwalter")
    }
    pub fn verwalter_storage(&self) -> PathBuf {
        self.root.join("verwalter-storage")
    }
    pub fn verwalter_token(&self) -> PathBuf {
        self.root.join("verwalter-token")
    }
    pub fn verwalter_socket(&self) -> PathBuf {
        self.run().join("verwalter/control.sock")
    }
    pub fn cantal_storage(&self) -> PathBuf {
        self.root.join("cantal")
    }
    pub fn cantal_socket(&self) -> PathBuf {
        self.run().join("cantal/agent.sock")
    }
    /// The private runtime dir (instead of /run): sockets and pid files, removed on stop.
    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }
    /// Logs: the daemons' stderr, lithos' and verwalter's own log dirs.
    pub fn log(&self) -> PathBuf {
        self.root.join("log")
    }

    /// The lithos cgroup name of this stack: one per state dir, so two stacks (a test and
    /// a user's) never share or remove each other's cgroups.
    pub fn cgroup_name(&self) -> String {
        let digest = Sha256::digest(self.root.as_os_str().as_encoded_bytes());
        format!("deploy-stack-{}.slice", &hex::encode(digest)[..8])
    }

    /// Writes the embedded configs (replacing the state prefix and cgroup name) and
    /// machine/demo.yaml for this host, and creates the directories the daemons need.
    pub fn write_configs(&self, listen_host: &str, bin_dir: &Path) -> Result<(), LayoutError> {
        let root = self.root.to_str().ok_or_else(|| LayoutError::NotUtf8 {
            path: self.root.clone(),
        })?;
        let cgroup = self.cgroup_name();
        for (relative, text) in EMBEDDED {
            let text = text
                .replace(STATE_PREFIX, root)
                .replace(CGROUP_PLACEHOLDER, &cgroup);
            self.write(&self.path_of(relative), &text)?;
        }
        let processes = self.path_of(EMPTY_PROCESSES.0);
        if !processes.exists() {
            self.write(&processes, EMPTY_PROCESSES.1)?;
        }
        let machine = MachineDemo {
            listen_host,
            lithos_master: &self.lithos_master(),
            bin_dir,
        };
        let text = format!(
            "# Written by deploy-stack for this host (see config-examples/demo/verwalter/machine/demo.yaml).\n{}",
            serde_yaml::to_string(&machine).expect("plain strings serialize")
        );
        self.write(&self.verwalter_config().join("machine/demo.yaml"), &text)?;
        for dir in [
            self.images(),
            self.cantal_storage(),
            self.verwalter_storage(),
            self.log(),
            self.run().join("cantal"),
            self.run().join("verwalter"),
        ] {
            std::fs::create_dir_all(&dir)
                .map_err(|source| LayoutError::CreateDir { path: dir, source })?;
        }
        Ok(())
    }

    /// Where a file of config-examples/demo/ goes: the vagga project files under `demo/`,
    /// the rest at the same relative path.
    fn path_of(&self, relative: &str) -> PathBuf {
        if relative.starts_with("lithos/") || relative.starts_with("verwalter/") {
            self.root.join(relative)
        } else {
            self.project().join(relative)
        }
    }

    fn write(&self, path: &Path, text: &str) -> Result<(), LayoutError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| LayoutError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        std::fs::write(path, text).map_err(|source| LayoutError::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_land_under_the_state_dir_only() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(&dir.path().join("state")).unwrap();
        layout
            .write_configs("127.0.0.1", Path::new("/opt/bin"))
            .unwrap();
        let master = std::fs::read_to_string(layout.lithos_master()).unwrap();
        assert!(!master.contains(STATE_PREFIX), "{master}");
        assert!(master.contains(&format!(
            "runtime-dir: {}/run/lithos",
            layout.root.display()
        )));
        assert!(master.contains(&format!("cgroup-name: {}", layout.cgroup_name())));
        let sandbox =
            std::fs::read_to_string(layout.root.join("lithos/sandboxes/demo.yaml")).unwrap();
        assert!(sandbox.contains(&format!("image-dir: {}/images", layout.root.display())));
        let machine =
            std::fs::read_to_string(layout.verwalter_config().join("machine/demo.yaml")).unwrap();
        assert!(machine.contains("listen_host: 127.0.0.1"), "{machine}");
        assert!(machine.contains("bin_dir: /opt/bin"), "{machine}");
        assert!(layout.project().join("vagga.yaml").is_file());
        assert!(
            layout
                .project()
                .join("image/config/demo-web.yaml")
                .is_file()
        );
    }

    #[test]
    fn processes_file_survives_a_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        layout.write_configs("127.0.0.1", Path::new("/b")).unwrap();
        let processes = layout.root.join("lithos/processes/demo.yaml");
        std::fs::write(&processes, "demo-web: {}\n").unwrap();
        layout.write_configs("127.0.0.1", Path::new("/b")).unwrap();
        assert_eq!(
            std::fs::read_to_string(&processes).unwrap(),
            "demo-web: {}\n"
        );
    }

    #[test]
    fn cgroup_name_differs_per_state_dir() {
        let a = Layout { root: "/a".into() };
        let b = Layout { root: "/b".into() };
        assert_ne!(a.cgroup_name(), b.cgroup_name());
        assert!(a.cgroup_name().starts_with("deploy-stack-"));
    }
}
