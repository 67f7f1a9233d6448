//! Settings files: global ones in the home directory, per-project ones beside vagga.yaml, and
//! `site-settings` of a global file for one project path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::ConfigError;
use crate::de::from_node;
use crate::yaml;

/// Keys allowed in project settings files and in `site-settings` entries.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProjectSettings {
    pub version_check: Option<bool>,
    pub build_lock_wait: Option<bool>,
    #[serde(default)]
    pub environ: BTreeMap<String, String>,
    pub disable_auto_clean: Option<bool>,
    pub versioned_build_dir: Option<bool>,
    pub run_symlinks_as_commands: Option<bool>,
    pub debian_mirror: Option<String>,
    pub ubuntu_mirror: Option<String>,
    pub ubuntu_skip_locking: Option<bool>,
    pub alpine_mirror: Option<String>,
}

/// A global settings file: global-only keys plus the project keys.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GlobalSettings {
    pub storage_dir: Option<PathBuf>,
    pub storage_subdir_from_env_var: Option<String>,
    pub cache_dir: Option<PathBuf>,
    #[serde(default)]
    pub site_settings: BTreeMap<String, ProjectSettings>,
    #[serde(default)]
    pub external_volumes: BTreeMap<String, PathBuf>,
    #[serde(default)]
    pub propagate_environ: Vec<String>,
    pub proxy_env_vars: Option<bool>,
    pub push_image_script: Option<String>,
    pub auto_apply_sysctl: Option<bool>,
    pub index_all_images: Option<bool>,
    pub hard_link_identical_files: Option<bool>,
    pub hard_link_between_projects: Option<bool>,
    pub version_check: Option<bool>,
    pub build_lock_wait: Option<bool>,
    #[serde(default)]
    pub environ: BTreeMap<String, String>,
    pub disable_auto_clean: Option<bool>,
    pub versioned_build_dir: Option<bool>,
    pub run_symlinks_as_commands: Option<bool>,
    pub debian_mirror: Option<String>,
    pub ubuntu_mirror: Option<String>,
    pub ubuntu_skip_locking: Option<bool>,
    pub alpine_mirror: Option<String>,
}

/// The effective settings for one project.
#[derive(Debug, Clone)]
pub struct Settings {
    pub storage_dir: Option<PathBuf>,
    pub storage_subdir_from_env_var: Option<String>,
    pub cache_dir: Option<PathBuf>,
    pub external_volumes: BTreeMap<String, PathBuf>,
    pub propagate_environ: Vec<String>,
    pub proxy_env_vars: bool,
    pub version_check: bool,
    pub build_lock_wait: bool,
    pub environ: BTreeMap<String, String>,
    pub disable_auto_clean: bool,
    pub debian_mirror: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            storage_dir: None,
            storage_subdir_from_env_var: None,
            cache_dir: None,
            external_volumes: BTreeMap::new(),
            propagate_environ: Vec::new(),
            proxy_env_vars: true,
            version_check: true,
            build_lock_wait: false,
            environ: BTreeMap::new(),
            disable_auto_clean: false,
            debian_mirror: "http://deb.debian.org/debian".into(),
        }
    }
}

impl Settings {
    fn apply_project(&mut self, p: &ProjectSettings) {
        if let Some(v) = p.version_check {
            self.version_check = v;
        }
        if let Some(v) = p.build_lock_wait {
            self.build_lock_wait = v;
        }
        self.environ
            .extend(p.environ.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(v) = p.disable_auto_clean {
            self.disable_auto_clean = v;
        }
        if let Some(v) = &p.debian_mirror {
            self.debian_mirror = v.clone();
        }
    }

    fn apply_global(&mut self, g: &GlobalSettings) {
        if g.storage_dir.is_some() {
            self.storage_dir = g.storage_dir.clone();
        }
        if g.storage_subdir_from_env_var.is_some() {
            self.storage_subdir_from_env_var = g.storage_subdir_from_env_var.clone();
        }
        if g.cache_dir.is_some() {
            self.cache_dir = g.cache_dir.clone();
        }
        self.external_volumes.extend(
            g.external_volumes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        self.propagate_environ
            .extend(g.propagate_environ.iter().cloned());
        if let Some(v) = g.proxy_env_vars {
            self.proxy_env_vars = v;
        }
        self.apply_project(&ProjectSettings {
            version_check: g.version_check,
            build_lock_wait: g.build_lock_wait,
            environ: g.environ.clone(),
            disable_auto_clean: g.disable_auto_clean,
            versioned_build_dir: g.versioned_build_dir,
            run_symlinks_as_commands: g.run_symlinks_as_commands,
            debian_mirror: g.debian_mirror.clone(),
            ubuntu_mirror: g.ubuntu_mirror.clone(),
            ubuntu_skip_locking: g.ubuntu_skip_locking,
            alpine_mirror: g.alpine_mirror.clone(),
        });
    }

    /// Reads global files from `home`, then `site-settings` for `project`, then the project's
    /// own files; later ones win for the keys they set.
    pub fn load(home: Option<&Path>, project: &Path) -> Result<Settings, ConfigError> {
        let mut settings = Settings::default();
        let mut site = Vec::new();
        if let Some(home) = home {
            for name in [
                ".config/vagga/settings.yaml",
                ".vagga/settings.yaml",
                ".vagga.yaml",
            ] {
                let Some(global) = read_file::<GlobalSettings>(&home.join(name), project)? else {
                    continue;
                };
                settings.apply_global(&global);
                let key = project.display().to_string();
                if let Some(p) = global.site_settings.get(&key) {
                    site.push(p.clone());
                }
            }
        }
        for p in &site {
            settings.apply_project(p);
        }
        for name in [".vagga.settings.yaml", ".vagga/settings.yaml"] {
            if let Some(p) = read_file::<ProjectSettings>(&project.join(name), project)? {
                settings.apply_project(&p);
            }
        }
        Ok(settings)
    }
}

/// One settings file; `None` when it does not exist or is empty.
fn read_file<T: serde::de::DeserializeOwned>(
    path: &Path,
    project: &Path,
) -> Result<Option<T>, ConfigError> {
    if !path.is_file() {
        return Ok(None);
    }
    let node = yaml::load_file(path, project)?;
    if node.is_null() {
        return Ok(None);
    }
    Ok(Some(from_node(&node)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_files_win_over_site_and_global() {
        let home = tempfile::tempdir().unwrap();
        let project = tempfile::tempdir().unwrap();
        let site = format!(
            "environ: {{EDITOR: nvi, A: g}}\nsite-settings:\n  {}:\n    environ: {{EDITOR: elvis}}\n",
            project.path().display()
        );
        std::fs::write(home.path().join(".vagga.yaml"), site).unwrap();
        let s = Settings::load(Some(home.path()), project.path()).unwrap();
        assert_eq!(s.environ["EDITOR"], "elvis");
        std::fs::create_dir(project.path().join(".vagga")).unwrap();
        std::fs::write(
            project.path().join(".vagga/settings.yaml"),
            "environ: {EDITOR: vile}\n",
        )
        .unwrap();
        let s = Settings::load(Some(home.path()), project.path()).unwrap();
        assert_eq!(s.environ["EDITOR"], "vile");
        assert_eq!(s.environ["A"], "g");
    }

    #[test]
    fn global_keys_are_rejected_in_project_files() {
        let project = tempfile::tempdir().unwrap();
        std::fs::write(
            project.path().join(".vagga.settings.yaml"),
            "storage-dir: /x\n",
        )
        .unwrap();
        let err = Settings::load(None, project.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(".vagga.settings.yaml:1:1: unknown key \"storage-dir\""),
            "{err}"
        );
    }
}
