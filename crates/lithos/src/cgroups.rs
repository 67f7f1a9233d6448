//! lithos's cgroup layout on top of `isolation::cgroup`: `<cgroup-name>/<sbx>.slice` with the
//! sandbox totals, `<sbx>:<proc.N>.scope` leaves for containers, `knots.scope` for knots.

use std::path::{Path, PathBuf};

use isolation::{CgroupError, CgroupSpec, CgroupVersion, Hierarchies, Limits};

use crate::config::CgroupVersionSetting;
use crate::instance::CgroupLimits;

/// The hierarchies for a `cgroup-version` setting.
pub fn hierarchies(setting: CgroupVersionSetting) -> Result<Hierarchies, CgroupError> {
    Hierarchies::detect(match setting {
        CgroupVersionSetting::Auto => None,
        CgroupVersionSetting::V1 => Some(CgroupVersion::V1),
        CgroupVersionSetting::V2 => Some(CgroupVersion::V2),
    })
}

/// `cgroup-controllers` as mounted v1 controller keys (`name` is the named hierarchy).
pub fn v1_controllers(h: &Hierarchies, wanted: &[String]) -> Option<Vec<String>> {
    let Hierarchies::V1 { controllers } = h else {
        return None;
    };
    let mut joined = Vec::new();
    for want in wanted {
        let found = controllers.iter().find(|(c, _)| {
            if want == "name" {
                c.starts_with("name=")
            } else {
                c == want
            }
        });
        if let Some((key, _)) = found
            && !joined.contains(key)
        {
            joined.push(key.clone());
        }
    }
    Some(joined)
}

pub fn limits(l: &CgroupLimits) -> Limits {
    Limits {
        memory: l.memory,
        // The default weight is what an unlimited cgroup gets anyway: writing it would only
        // require the cpu controller for nothing.
        cpu_shares: l.cpu_shares.filter(|s| *s != 1024),
        cpu_limit: l.cpu_limit,
        pids: l.pids,
    }
}

pub fn spec(h: &Hierarchies, controllers: &[String], path: &Path, l: &CgroupLimits) -> CgroupSpec {
    CgroupSpec {
        hierarchies: h.clone(),
        path: path.to_owned(),
        limits: limits(l),
        v1_controllers: v1_controllers(h, controllers),
    }
}

/// Kills what is left in a cgroup and removes it (missing is fine).
pub fn remove(h: &Hierarchies, controllers: &[String], path: &Path) -> Result<(), CgroupError> {
    if !exists(h, path) {
        return Ok(());
    }
    spec(h, controllers, path, &CgroupLimits::default())
        .create()?
        .remove()
}

/// Removes a cgroup and everything below it (leaves first).
pub fn remove_tree(h: &Hierarchies, path: &Path) -> Result<(), CgroupError> {
    for child in children(h, path) {
        remove_tree(h, &path.join(child))?;
    }
    let all: Vec<String> = crate::config::DEFAULT_CGROUP_CONTROLLERS
        .iter()
        .map(|s| s.to_string())
        .collect();
    remove(h, &all, path)
}

fn mounts(h: &Hierarchies) -> Vec<PathBuf> {
    match h {
        Hierarchies::V2 { mount } => vec![mount.clone()],
        Hierarchies::V1 { controllers } => {
            let mut m: Vec<PathBuf> = controllers.iter().map(|(_, p)| p.clone()).collect();
            m.dedup();
            m
        }
    }
}

pub fn exists(h: &Hierarchies, path: &Path) -> bool {
    mounts(h).iter().any(|m| m.join(path).is_dir())
}

/// Child cgroup names of `path` in any hierarchy.
pub fn children(h: &Hierarchies, path: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for m in mounts(h) {
        if let Ok(entries) = std::fs::read_dir(m.join(path)) {
            for e in entries.flatten() {
                if e.path().is_dir() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
            }
        }
    }
    names
}

/// The count of OOM kills recorded for a cgroup (`memory.events` on v2,
/// `memory.oom_control` on v1).
pub fn oom_kills(dirs: &[PathBuf]) -> u64 {
    let mut total = 0;
    for dir in dirs {
        for file in ["memory.events", "memory.oom_control"] {
            if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
                total += text
                    .lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_means_the_named_hierarchy() {
        let h = Hierarchies::V1 {
            controllers: vec![
                ("cpu".into(), "/sys/fs/cgroup/cpu".into()),
                ("memory".into(), "/sys/fs/cgroup/memory".into()),
                ("name=systemd".into(), "/sys/fs/cgroup/systemd".into()),
            ],
        };
        let wanted: Vec<String> = ["name", "cpu", "cpuacct", "memory"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            v1_controllers(&h, &wanted).unwrap(),
            ["name=systemd", "cpu", "memory"]
        );
    }

    #[test]
    fn oom_kill_counters_are_read_from_either_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(oom_kills(&[dir.path().to_owned()]), 2);
    }
}
