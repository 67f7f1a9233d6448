//! cgroups v1 and v2: finding the hierarchies, creating a container's cgroup with limits,
//! reading usage back and removing it when the container ends.
//!
//! A cgroup path is relative to the root of each hierarchy (`lithos.slice/demo.slice/x.scope`).
//! On v2 every level above the leaf gets the needed controllers in `cgroup.subtree_control`
//! and holds no processes itself; on v1 the leaf is created in each joined controller's
//! hierarchy.

use std::fs;
use std::io::{self, ErrorKind};
use std::path::{Component, Path, PathBuf};
use std::thread::sleep;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::CgroupError;

/// The cgroup API version of a hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// The v1 controllers joined when the caller names none: those limits and usage need, plus
/// accounting ones. `cpuset` is left out because it needs cpus and mems set before use.
pub const DEFAULT_V1_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "memory", "pids", "blkio"];

/// The mounted cgroup hierarchies the containers are placed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchies {
    /// The unified hierarchy mounted at this path.
    V2 { mount: PathBuf },
    /// Controller name (`memory`, `cpu`, `name=systemd`) and where its hierarchy is mounted.
    V1 { controllers: Vec<(String, PathBuf)> },
}

/// A cgroup mount as the mount table lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    pub mount_point: PathBuf,
    /// `cgroup` or `cgroup2`.
    pub fs_type: String,
    /// Super options: for v1 the controllers (`memory`, `cpu`, `name=systemd`).
    pub options: Vec<String>,
}

impl Hierarchies {
    /// Finds the hierarchies from `/proc/self/mountinfo`.
    ///
    /// `None` picks automatically: cgroup2 at `/sys/fs/cgroup` is v2; a hybrid layout (v1
    /// controllers plus an empty cgroup2 at `/sys/fs/cgroup/unified`) is v1, because the
    /// controllers live in the v1 hierarchies there.
    pub fn detect(version: Option<CgroupVersion>) -> Result<Hierarchies, CgroupError> {
        let mounts = procfs::process::Process::myself()
            .and_then(|p| p.mountinfo())
            .map_err(|e| CgroupError::MountInfo(e.to_string()))?;
        let cgroup_mounts = mounts
            .into_iter()
            .filter(|m| m.fs_type == "cgroup" || m.fs_type == "cgroup2")
            .map(|m| CgroupMount {
                mount_point: m.mount_point,
                fs_type: m.fs_type,
                options: m
                    .super_options
                    .into_iter()
                    .map(|(k, v)| match v {
                        Some(v) => format!("{k}={v}"),
                        None => k,
                    })
                    .collect(),
            })
            .collect::<Vec<_>>();
        Self::choose(&cgroup_mounts, version)
    }

    /// Picks the hierarchies from a list of cgroup mounts (see [`Hierarchies::detect`]).
    pub fn choose(
        mounts: &[CgroupMount],
        version: Option<CgroupVersion>,
    ) -> Result<Hierarchies, CgroupError> {
        let unified_at_root = mounts
            .iter()
            .find(|m| m.fs_type == "cgroup2" && m.mount_point == Path::new("/sys/fs/cgroup"));
        let any_unified = mounts.iter().find(|m| m.fs_type == "cgroup2");
        let mut controllers = Vec::new();
        for m in mounts.iter().filter(|m| m.fs_type == "cgroup") {
            for opt in &m.options {
                let is_controller = !matches!(
                    opt.as_str(),
                    "rw" | "ro" | "noprefix" | "clone_children" | "xattr" | "cpuset_v2_mode"
                ) && !opt.starts_with("release_agent=");
                if is_controller && !controllers.iter().any(|(c, _)| c == opt) {
                    controllers.push((opt.clone(), m.mount_point.clone()));
                }
            }
        }
        let v1 = (!controllers.is_empty()).then_some(Hierarchies::V1 { controllers });
        let v2 = unified_at_root.or(any_unified).map(|m| Hierarchies::V2 {
            mount: m.mount_point.clone(),
        });
        let chosen = match version {
            Some(CgroupVersion::V1) => v1,
            Some(CgroupVersion::V2) => v2,
            None if unified_at_root.is_some() => v2,
            None => v1.or(v2),
        };
        chosen.ok_or(CgroupError::NotMounted)
    }

    /// The API version of these hierarchies.
    pub fn version(&self) -> CgroupVersion {
        match self {
            Hierarchies::V1 { .. } => CgroupVersion::V1,
            Hierarchies::V2 { .. } => CgroupVersion::V2,
        }
    }

    fn v1_mount(&self, controller: &str) -> Option<&Path> {
        match self {
            Hierarchies::V1 { controllers } => controllers
                .iter()
                .find(|(c, _)| c == controller)
                .map(|(_, p)| p.as_path()),
            Hierarchies::V2 { .. } => None,
        }
    }
}

/// Limits written into a container's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Memory in bytes (swap included where the kernel accounts it).
    pub memory: Option<u64>,
    /// Relative cpu weight in v1 shares (1024 = normal), converted for v2.
    pub cpu_shares: Option<u64>,
    /// Hard cpu cap in CPUs (1.5 = one and a half cores).
    pub cpu_limit: Option<f64>,
    /// Maximum number of tasks.
    pub pids: Option<u64>,
}

/// Where a container's cgroup goes and what it is limited to.
#[derive(Debug, Clone, PartialEq)]
pub struct CgroupSpec {
    pub hierarchies: Hierarchies,
    /// Relative to each hierarchy's root.
    pub path: PathBuf,
    pub limits: Limits,
    /// v1 controllers to join; `None` means [`DEFAULT_V1_CONTROLLERS`] that are mounted.
    pub v1_controllers: Option<Vec<String>>,
}

/// Resource usage read back from a cgroup; `None` where the controller is not there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    pub cpu_usage_ns: Option<u64>,
}

/// A created cgroup: one directory on v2, one per joined controller on v1.
#[derive(Debug)]
pub struct Cgroup {
    version: CgroupVersion,
    /// (controller, directory); on v2 the controller is empty.
    dirs: Vec<(String, PathBuf)>,
}

/// v1 `cpu.shares` to v2 `cpu.weight`, the mapping systemd and runc use.
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + (shares - 2) * 9999 / 262_142
}

const CPU_PERIOD_US: u64 = 100_000;

fn cpu_quota_us(cpus: f64) -> u64 {
    ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1000)
}

fn check_relative(path: &Path) -> Result<(), CgroupError> {
    let ok = path.components().all(|c| matches!(c, Component::Normal(_)))
        && path.components().next().is_some();
    if ok {
        Ok(())
    } else {
        Err(CgroupError::BadPath(path.to_owned()))
    }
}

fn write_file(path: PathBuf, value: &str) -> Result<(), CgroupError> {
    fs::write(&path, value).map_err(|source| CgroupError::Write {
        path,
        value: value.to_owned(),
        source,
    })
}

fn read_file(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|e| CgroupError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    let text = read_file(path)?;
    text.trim().parse().map_err(|_| CgroupError::Read {
        path: path.to_owned(),
        message: format!("expected a number, found {:?}", text.trim()),
    })
}

fn make_dir(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError::Create {
            path: path.to_owned(),
            source,
        }),
    }
}

impl CgroupSpec {
    /// Creates the cgroup (and its parents) and writes the limits.
    pub fn create(&self) -> Result<Cgroup, CgroupError> {
        check_relative(&self.path)?;
        match &self.hierarchies {
            Hierarchies::V2 { mount } => self.create_v2(mount),
            Hierarchies::V1 { controllers } => self.create_v1(controllers),
        }
    }

    fn needed_controllers(&self) -> Vec<&'static str> {
        let l = &self.limits;
        let mut needed = Vec::new();
        if l.memory.is_some() {
            needed.push("memory");
        }
        if l.cpu_shares.is_some() || l.cpu_limit.is_some() {
            needed.push("cpu");
        }
        if l.pids.is_some() {
            needed.push("pids");
        }
        needed
    }

    fn create_v2(&self, mount: &Path) -> Result<Cgroup, CgroupError> {
        let needed = self.needed_controllers();
        let mut dir = mount.to_path_buf();
        let components: Vec<_> = self.path.components().collect();
        for (i, component) in components.iter().enumerate() {
            // Controllers usable below `dir` must be switched on in its subtree_control.
            let available_path = dir.join("cgroup.controllers");
            let available = read_file(&available_path)?;
            let available: Vec<&str> = available.split_whitespace().collect();
            if let Some(missing) = needed.iter().find(|c| !available.contains(c)) {
                return Err(CgroupError::ControllerUnavailable {
                    controller: (*missing).to_owned(),
                    path: dir,
                });
            }
            let wanted: Vec<&str> = ["memory", "cpu", "pids"]
                .into_iter()
                .filter(|c| available.contains(c))
                .collect();
            if !wanted.is_empty() {
                let enabled_path = dir.join("cgroup.subtree_control");
                let enabled = read_file(&enabled_path)?;
                let enabled: Vec<&str> = enabled.split_whitespace().collect();
                let to_enable: Vec<String> = wanted
                    .iter()
                    .filter(|c| !enabled.contains(c))
                    .map(|c| format!("+{c}"))
                    .collect();
                if !to_enable.is_empty() {
                    write_file(enabled_path, &to_enable.join(" "))?;
                }
            }
            dir.push(component);
            make_dir(&dir)?;
            if i + 1 == components.len() {
                break;
            }
        }
        let l = &self.limits;
        if let Some(memory) = l.memory {
            write_file(dir.join("memory.max"), &memory.to_string())?;
            if dir.join("memory.swap.max").exists() {
                write_file(dir.join("memory.swap.max"), "0")?;
            }
        }
        if let Some(shares) = l.cpu_shares {
            write_file(
                dir.join("cpu.weight"),
                &shares_to_weight(shares).to_string(),
            )?;
        }
        if let Some(cpus) = l.cpu_limit {
            let value = format!("{} {CPU_PERIOD_US}", cpu_quota_us(cpus));
            write_file(dir.join("cpu.max"), &value)?;
        }
        if let Some(pids) = l.pids {
            write_file(dir.join("pids.max"), &pids.to_string())?;
        }
        Ok(Cgroup {
            version: CgroupVersion::V2,
            dirs: vec![(String::new(), dir)],
        })
    }

    fn create_v1(&self, mounted: &[(String, PathBuf)]) -> Result<Cgroup, CgroupError> {
        let hierarchies = &self.hierarchies;
        for controller in self.needed_controllers() {
            if hierarchies.v1_mount(controller).is_none() {
                return Err(CgroupError::ControllerMissing(controller.to_owned()));
            }
        }
        let joined: Vec<String> = match &self.v1_controllers {
            Some(list) => list.clone(),
            None => DEFAULT_V1_CONTROLLERS
                .iter()
                .filter(|c| mounted.iter().any(|(m, _)| m == *c))
                .map(|c| (*c).to_owned())
                .collect(),
        };
        let mut cgroup = Cgroup {
            version: CgroupVersion::V1,
            dirs: Vec::new(),
        };
        for controller in &joined {
            let mount = hierarchies
                .v1_mount(controller)
                .ok_or_else(|| CgroupError::ControllerMissing(controller.clone()))?;
            // Co-mounted controllers (cpu,cpuacct) share one directory: create it once.
            let dir = mount.join(&self.path);
            if cgroup.dirs.iter().any(|(_, d)| *d == dir) {
                continue;
            }
            let mut current = mount.to_path_buf();
            for component in self.path.components() {
                current.push(component);
                if let Err(e) = make_dir(&current) {
                    // Nothing is in it yet: take back what this call made.
                    let _ = cgroup.remove_dirs();
                    return Err(e);
                }
            }
            cgroup.dirs.push((controller.clone(), dir));
        }
        if let Err(e) = self.write_v1_limits() {
            let _ = cgroup.remove_dirs();
            return Err(e);
        }
        Ok(cgroup)
    }

    fn write_v1_limits(&self) -> Result<(), CgroupError> {
        let l = &self.limits;
        let dir = |controller: &str| {
            self.hierarchies
                .v1_mount(controller)
                .map(|m| m.join(&self.path))
                .ok_or_else(|| CgroupError::ControllerMissing(controller.to_owned()))
        };
        if let Some(memory) = l.memory {
            let d = dir("memory")?;
            write_file(d.join("memory.limit_in_bytes"), &memory.to_string())?;
            // With swap accounting the sum must be capped too, or the limit leaks into swap.
            if d.join("memory.memsw.limit_in_bytes").exists() {
                write_file(d.join("memory.memsw.limit_in_bytes"), &memory.to_string())?;
            }
        }
        if let Some(shares) = l.cpu_shares {
            write_file(dir("cpu")?.join("cpu.shares"), &shares.to_string())?;
        }
        if let Some(cpus) = l.cpu_limit {
            let d = dir("cpu")?;
            write_file(d.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
            write_file(d.join("cpu.cfs_quota_us"), &cpu_quota_us(cpus).to_string())?;
        }
        if let Some(pids) = l.pids {
            write_file(dir("pids")?.join("pids.max"), &pids.to_string())?;
        }
        Ok(())
    }
}

impl Cgroup {
    /// The cgroup API version.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The cgroup's directories: one on v2; one per joined controller on v1.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.dirs.iter().map(|(_, d)| d.as_path())
    }

    fn dir_of(&self, controller: &str) -> Option<&Path> {
        match self.version {
            CgroupVersion::V2 => self.dirs.first().map(|(_, d)| d.as_path()),
            CgroupVersion::V1 => self
                .dirs
                .iter()
                .find(|(c, _)| c == controller)
                .map(|(_, d)| d.as_path()),
        }
    }

    /// Moves a process into the cgroup (in every joined hierarchy).
    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        for (_, dir) in &self.dirs {
            write_file(dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Reads memory, task count and cpu time back.
    pub fn usage(&self) -> Result<Usage, CgroupError> {
        let mut usage = Usage::default();
        match self.version {
            CgroupVersion::V2 => {
                let dir = self.dir_of("").expect("a v2 cgroup has its directory");
                usage.memory_bytes = read_optional(&dir.join("memory.current"))?;
                usage.pids = read_optional(&dir.join("pids.current"))?;
                let stat_path = dir.join("cpu.stat");
                if stat_path.exists() {
                    let stat = read_file(&stat_path)?;
                    usage.cpu_usage_ns = stat
                        .lines()
                        .find_map(|l| l.strip_prefix("usage_usec "))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|us| us * 1000);
                }
            }
            CgroupVersion::V1 => {
                if let Some(d) = self.dir_of("memory") {
                    usage.memory_bytes = read_optional(&d.join("memory.usage_in_bytes"))?;
                }
                if let Some(d) = self.dir_of("pids") {
                    usage.pids = read_optional(&d.join("pids.current"))?;
                }
                if let Some(d) = self.dir_of("cpuacct") {
                    usage.cpu_usage_ns = read_optional(&d.join("cpuacct.usage"))?;
                }
            }
        }
        Ok(usage)
    }

    /// Kills whatever is left in the cgroup and removes its directories.
    pub fn remove(self) -> Result<(), CgroupError> {
        self.remove_dirs()
    }

    fn remove_dirs(&self) -> Result<(), CgroupError> {
        for (_, dir) in &self.dirs {
            remove_cgroup_dir(dir)?;
        }
        Ok(())
    }
}

fn read_optional(path: &Path) -> Result<Option<u64>, CgroupError> {
    if path.exists() {
        read_u64(path).map(Some)
    } else {
        Ok(None)
    }
}

/// Removes a leaf cgroup, killing stragglers; tasks of a dying pid namespace take a moment
/// to leave, so `EBUSY` is retried for up to about a second.
fn remove_cgroup_dir(dir: &Path) -> Result<(), CgroupError> {
    let mut last_error = None;
    for attempt in 0..100 {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => last_error = Some(e),
        }
        let kill_file = dir.join("cgroup.kill");
        if kill_file.exists() {
            let _ = fs::write(&kill_file, "1");
        } else if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        sleep(Duration::from_millis(if attempt < 10 { 1 } else { 10 }));
    }
    Err(CgroupError::Remove {
        path: dir.to_owned(),
        source: last_error.unwrap_or_else(|| io::Error::from(ErrorKind::ResourceBusy)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(point: &str, fs_type: &str, options: &[&str]) -> CgroupMount {
        CgroupMount {
            mount_point: point.into(),
            fs_type: fs_type.into(),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn hybrid() -> Vec<CgroupMount> {
        vec![
            mount("/sys/fs/cgroup/cpu", "cgroup", &["rw", "cpu"]),
            mount("/sys/fs/cgroup/cpuacct", "cgroup", &["rw", "cpuacct"]),
            mount("/sys/fs/cgroup/memory", "cgroup", &["rw", "memory"]),
            mount("/sys/fs/cgroup/pids", "cgroup", &["rw", "pids"]),
            mount("/sys/fs/cgroup/systemd", "cgroup", &["rw", "name=systemd"]),
            mount("/sys/fs/cgroup/unified", "cgroup2", &["rw"]),
        ]
    }

    #[test]
    fn hybrid_layout_is_v1() {
        let h = Hierarchies::choose(&hybrid(), None).unwrap();
        assert_eq!(h.version(), CgroupVersion::V1);
        assert_eq!(
            h.v1_mount("memory"),
            Some(Path::new("/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            h.v1_mount("name=systemd"),
            Some(Path::new("/sys/fs/cgroup/systemd"))
        );
    }

    #[test]
    fn unified_at_root_is_v2() {
        let mounts = vec![mount("/sys/fs/cgroup", "cgroup2", &["rw", "nsdelegate"])];
        assert_eq!(
            Hierarchies::choose(&mounts, None).unwrap(),
            Hierarchies::V2 {
                mount: "/sys/fs/cgroup".into()
            }
        );
    }

    #[test]
    fn forced_v2_on_hybrid_takes_the_unified_mount() {
        assert_eq!(
            Hierarchies::choose(&hybrid(), Some(CgroupVersion::V2)).unwrap(),
            Hierarchies::V2 {
                mount: "/sys/fs/cgroup/unified".into()
            }
        );
    }

    #[test]
    fn nothing_mounted_is_an_error() {
        assert!(matches!(
            Hierarchies::choose(&[], None),
            Err(CgroupError::NotMounted)
        ));
    }

    #[test]
    fn co_mounted_controllers_share_a_mount() {
        let mounts = vec![mount(
            "/sys/fs/cgroup/cpu,cpuacct",
            "cgroup",
            &["rw", "cpu", "cpuacct"],
        )];
        let h = Hierarchies::choose(&mounts, None).unwrap();
        assert_eq!(h.v1_mount("cpu"), h.v1_mount("cpuacct"));
    }

    #[test]
    fn weight_conversion_matches_the_documented_formula() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), 1);
    }

    #[test]
    fn paths_must_stay_inside_the_hierarchy() {
        for bad in ["", "/abs", "a/../b", "../x"] {
            assert!(check_relative(Path::new(bad)).is_err(), "{bad:?}");
        }
        assert!(check_relative(Path::new("lithos.slice/demo.slice/demo:w.0.scope")).is_ok());
    }

    /// A v2 hierarchy as plain files: the root offers memory, cpu and pids.
    fn fake_v2(available: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("cgroup.controllers"), available).unwrap();
        fs::write(dir.path().join("cgroup.subtree_control"), "").unwrap();
        dir
    }

    #[test]
    fn v2_limits_go_to_the_leaf_and_controllers_are_enabled_on_the_way() {
        let root = fake_v2("cpuset cpu io memory pids");
        // The kernel creates these files in a new cgroup; a plain directory does not.
        let slice = root.path().join("lithos.slice");
        fs::create_dir(&slice).unwrap();
        fs::write(slice.join("cgroup.controllers"), "cpu memory pids").unwrap();
        fs::write(slice.join("cgroup.subtree_control"), "").unwrap();
        let spec = CgroupSpec {
            hierarchies: Hierarchies::V2 {
                mount: root.path().into(),
            },
            path: "lithos.slice/demo:w.0.scope".into(),
            limits: Limits {
                memory: Some(33_554_432),
                cpu_shares: Some(1024),
                cpu_limit: Some(1.5),
                pids: Some(50),
            },
            v1_controllers: None,
        };
        let cg = spec.create().unwrap();
        let leaf = slice.join("demo:w.0.scope");
        let read = |name: &str| fs::read_to_string(leaf.join(name)).unwrap();
        assert_eq!(read("memory.max"), "33554432");
        assert_eq!(read("cpu.weight"), "39");
        assert_eq!(read("cpu.max"), "150000 100000");
        assert_eq!(read("pids.max"), "50");
        assert_eq!(
            fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap(),
            "+memory +cpu +pids"
        );
        assert_eq!(
            fs::read_to_string(slice.join("cgroup.subtree_control")).unwrap(),
            "+memory +cpu +pids"
        );
        assert_eq!(cg.dirs().collect::<Vec<_>>(), vec![leaf.as_path()]);
    }

    #[test]
    fn v2_missing_controller_names_the_cgroup() {
        let root = fake_v2("hugetlb");
        let spec = CgroupSpec {
            hierarchies: Hierarchies::V2 {
                mount: root.path().into(),
            },
            path: "c".into(),
            limits: Limits {
                memory: Some(1 << 20),
                ..Limits::default()
            },
            v1_controllers: None,
        };
        let err = spec.create().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cgroup v2 controller \"memory\" is not available in {}",
                root.path().display()
            )
        );
    }

    #[test]
    fn v1_limits_go_to_each_controller() {
        let root = tempfile::tempdir().unwrap();
        let controllers: Vec<(String, PathBuf)> = ["cpu", "cpuacct", "memory", "pids"]
            .iter()
            .map(|c| {
                let p = root.path().join(c);
                fs::create_dir(&p).unwrap();
                (c.to_string(), p)
            })
            .collect();
        let spec = CgroupSpec {
            hierarchies: Hierarchies::V1 { controllers },
            path: "lithos.slice/demo.slice/x.scope".into(),
            limits: Limits {
                memory: Some(64 << 20),
                cpu_shares: Some(512),
                cpu_limit: Some(0.5),
                pids: Some(50),
            },
            v1_controllers: None,
        };
        let cg = spec.create().unwrap();
        let leaf = |c: &str| root.path().join(c).join("lithos.slice/demo.slice/x.scope");
        let read = |c: &str, f: &str| fs::read_to_string(leaf(c).join(f)).unwrap();
        assert_eq!(read("memory", "memory.limit_in_bytes"), "67108864");
        assert_eq!(read("cpu", "cpu.shares"), "512");
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(read("pids", "pids.max"), "50");
        assert_eq!(cg.dirs().count(), 4);
    }

    #[test]
    fn v1_missing_controller_is_named() {
        let spec = CgroupSpec {
            hierarchies: Hierarchies::V1 {
                controllers: vec![("cpu".into(), "/nonexistent/cpu".into())],
            },
            path: "x".into(),
            limits: Limits {
                pids: Some(5),
                ..Limits::default()
            },
            v1_controllers: None,
        };
        assert_eq!(
            spec.create().unwrap_err().to_string(),
            "cgroup v1 controller \"pids\" is not mounted"
        );
    }
}
