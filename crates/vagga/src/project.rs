//! A loaded project: its configuration, settings, storage, and who runs vagga.

use std::path::{Path, PathBuf};

use isolation::UserNamespace;

use crate::config::{Config, ConfigError, Container};
use crate::idmap::{self, Caller, IdMapError};
use crate::privileged::Privileged;
use crate::settings::Settings;
use crate::storage::{Storage, StorageError};

/// Everything commands and builds need to know about the project.
#[derive(Debug)]
pub struct Project {
    pub config: Config,
    pub settings: Settings,
    pub storage: Storage,
    pub caller: Caller,
    /// The running vagga binary (helpers and `!VaggaBin`).
    pub exe: PathBuf,
    /// The working directory relative to the project root.
    pub relative_cwd: PathBuf,
}

/// Opening the project failed.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{} belongs to uid {owner}, not to you (uid {uid}); pass --ignore-owner-check to go on", path.display())]
    Owner { path: PathBuf, owner: u32, uid: u32 },
}

impl Project {
    /// Finds and loads the project around `cwd`.
    pub fn open(
        cwd: &Path,
        home: Option<&Path>,
        check_owner: bool,
    ) -> Result<Project, ProjectError> {
        let (root, main) = crate::config::discover(cwd)?;
        if root.join("vagga.yml").is_file() {
            eprintln!(
                "warning: {} is ignored: the file is called vagga.yaml",
                root.join("vagga.yml").display()
            );
        }
        let config = Config::load(&root, main.as_deref())?;
        for w in &config.warnings {
            eprintln!("warning: {w}");
        }
        let settings = Settings::load(home, &root)?;
        let storage = Storage::new(&root, &settings)?;
        let caller = Caller::current();
        if check_owner && !caller.is_root() {
            use std::os::unix::fs::MetadataExt;
            for path in [&root, &storage.vagga_dir] {
                if let Ok(meta) = std::fs::metadata(path)
                    && meta.uid() != caller.uid
                {
                    return Err(ProjectError::Owner {
                        path: path.clone(),
                        owner: meta.uid(),
                        uid: caller.uid,
                    });
                }
            }
        }
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
        let relative_cwd = cwd.strip_prefix(&root).unwrap_or(Path::new("")).to_owned();
        Ok(Project {
            config,
            settings,
            storage,
            caller,
            exe,
            relative_cwd,
        })
    }

    /// The user namespace a container runs and builds in.
    pub fn userns(&self, container: &Container) -> Result<UserNamespace, IdMapError> {
        let mut warnings = Vec::new();
        let ns = idmap::user_namespace(
            &self.caller,
            &container.uids,
            &container.gids,
            &mut warnings,
        )?;
        for w in warnings {
            tracing::warn!("{w}");
        }
        Ok(ns)
    }

    /// Runs privileged file operations in the namespace of `container` (or the default one).
    pub fn privileged(&self, container: Option<&Container>) -> Result<Privileged, IdMapError> {
        let default = Container {
            setup: Vec::new(),
            environ: Default::default(),
            environ_file: None,
            volumes: Default::default(),
            uids: Default::default(),
            gids: Default::default(),
            auto_clean: false,
            data_dirs: None,
            default_shell: Vec::new(),
            resolv_conf_path: None,
            hosts_file_path: None,
            image_cache_url: None,
        };
        let userns = self.userns(container.unwrap_or(&default))?;
        let mut writable = vec![self.storage.base.clone(), self.storage.cache.clone()];
        if self.storage.vagga_dir != self.storage.base {
            writable.push(self.storage.vagga_dir.clone());
        }
        Ok(Privileged {
            as_root: self.caller.is_root(),
            userns,
            writable,
            skeleton: self.storage.vagga_dir.join(".mnt"),
            exe: self.exe.clone(),
        })
    }
}
