//! `_doctor`: checks what vagga needs from this machine, one line per check with the exact
//! command that fixes a failure.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::Step;
use crate::idmap::sub_ranges;
use crate::project::Project;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    Warn,
    Fail,
}

struct Report {
    failed: bool,
}

impl Report {
    fn line(&mut self, verdict: Verdict, what: &str, fix: Option<String>) {
        let word = match verdict {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => {
                self.failed = true;
                "FAIL"
            }
        };
        match fix {
            Some(fix) if verdict != Verdict::Ok => println!("{word:<4}  {what}\n      fix: {fix}"),
            _ => println!("{word:<4}  {what}"),
        }
    }
}

fn sysctl(path: &str) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Whether a file has the named file capability (`security.capability` xattr is present).
fn has_file_caps(path: &Path) -> bool {
    std::process::Command::new("getcap")
        .arg(path)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("cap_set"))
        .unwrap_or(false)
}

/// Runs every check; returns the exit code (1 when any check failed).
pub fn run(project: &Project) -> i32 {
    let mut r = Report { failed: false };
    let caller = &project.caller;
    let root = caller.is_root();

    // Unprivileged user namespaces.
    match sysctl("/proc/sys/kernel/unprivileged_userns_clone") {
        Some(0) if !root => r.line(
            Verdict::Fail,
            "kernel.unprivileged_userns_clone is 0: user namespaces are disabled for users",
            Some("sudo sysctl -w kernel.unprivileged_userns_clone=1".into()),
        ),
        _ => r.line(
            Verdict::Ok,
            "kernel.unprivileged_userns_clone allows user namespaces",
            None,
        ),
    }
    match sysctl("/proc/sys/user/max_user_namespaces") {
        Some(0) => r.line(
            Verdict::Fail,
            "user.max_user_namespaces is 0",
            Some("sudo sysctl -w user.max_user_namespaces=15000".into()),
        ),
        _ => r.line(Verdict::Ok, "user.max_user_namespaces is above 0", None),
    }
    match sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") {
        Some(1) if !root => r.line(
            Verdict::Fail,
            "AppArmor restricts unprivileged user namespaces",
            Some("sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0".into()),
        ),
        _ => r.line(
            Verdict::Ok,
            "AppArmor does not restrict user namespaces",
            None,
        ),
    }

    // newuidmap/newgidmap.
    for tool in ["newuidmap", "newgidmap"] {
        match find_in_path(tool) {
            None => r.line(
                if root { Verdict::Warn } else { Verdict::Fail },
                &format!("{tool} is not installed"),
                Some("sudo apt-get install uidmap".into()),
            ),
            Some(path) => {
                let meta = std::fs::metadata(&path);
                let setuid = meta
                    .as_ref()
                    .is_ok_and(|m| m.permissions().mode() & 0o4000 != 0 && m.uid() == 0);
                if setuid || has_file_caps(&path) {
                    r.line(
                        Verdict::Ok,
                        &format!("{} is setuid root", path.display()),
                        None,
                    );
                } else {
                    r.line(
                        if root { Verdict::Warn } else { Verdict::Fail },
                        &format!(
                            "{} is neither setuid root nor has cap_setuid/cap_setgid",
                            path.display()
                        ),
                        Some(format!("sudo chmod u+s {}", path.display())),
                    );
                }
            }
        }
    }

    // Subordinate ids, enough for every container.
    if root {
        r.line(
            Verdict::Ok,
            "running as root: ids are mapped directly",
            None,
        );
    } else {
        let need_uids = project
            .config
            .containers
            .values()
            .map(|c| c.def.uids.total().saturating_sub(1))
            .max()
            .unwrap_or(0);
        let need_gids = project
            .config
            .containers
            .values()
            .map(|c| c.def.gids.total().saturating_sub(1))
            .max()
            .unwrap_or(0);
        for (file, id, need, kind) in [
            ("/etc/subuid", caller.uid, need_uids, "subuids"),
            ("/etc/subgid", caller.gid, need_gids, "subgids"),
        ] {
            let ranges = sub_ranges(Path::new(file), &caller.user_name, id);
            let have: u64 = ranges.iter().map(|s| u64::from(s.count)).sum();
            if have >= need {
                r.line(
                    Verdict::Ok,
                    &format!(
                        "{file} gives {} {have} ids (containers need {need})",
                        caller.user_name
                    ),
                    None,
                );
            } else {
                r.line(
                    Verdict::Fail,
                    &format!(
                        "{file} gives {} {have} ids but containers need {need}",
                        caller.user_name
                    ),
                    Some(format!(
                        "sudo usermod --add-{kind} 100000-165535 {}",
                        caller.user_name
                    )),
                );
            }
        }
    }

    // overlayfs in a user namespace (not used by this release's builds, reported as a warning).
    let overlay = std::fs::read_to_string("/proc/filesystems").is_ok_and(|t| t.contains("overlay"));
    if overlay {
        r.line(Verdict::Ok, "overlayfs is available", None);
    } else {
        r.line(
            Verdict::Warn,
            "overlayfs is not available",
            Some("sudo modprobe overlay".into()),
        );
    }

    // The project's filesystem: nodev/nosuid are fine, ecryptfs breaks ownership.
    let project_dir = &project.config.root;
    let fs_type = mount_of(project_dir);
    match fs_type.as_ref().map(|(f, o)| (f.as_str(), o.as_str())) {
        Some(("ecryptfs", _)) => r.line(
            Verdict::Fail,
            &format!(
                "{} is on ecryptfs, which cannot hold files of subordinate ids",
                project_dir.display()
            ),
            Some(
                "move the project (or set storage-dir in ~/.vagga.yaml) outside the encrypted home"
                    .into(),
            ),
        ),
        Some((fs, opts)) if opts.split(',').any(|o| o == "nodev" || o == "nosuid") => r.line(
            Verdict::Ok,
            &format!(
                "{} is on {fs} ({opts}): nodev/nosuid do not matter",
                project_dir.display()
            ),
            None,
        ),
        Some((fs, _)) => r.line(
            Verdict::Ok,
            &format!("{} is on {fs}", project_dir.display()),
            None,
        ),
        None => r.line(
            Verdict::Warn,
            &format!("cannot find the mount of {}", project_dir.display()),
            None,
        ),
    }

    // debootstrap when a !Debian step is present.
    let wants_debian = project.config.containers.values().any(|c| {
        c.def
            .setup
            .iter()
            .any(|s| matches!(s.value, Step::Debian(_)))
    });
    if wants_debian {
        match find_in_path("debootstrap") {
            Some(p) => r.line(
                Verdict::Ok,
                &format!("debootstrap found at {}", p.display()),
                None,
            ),
            None => r.line(
                Verdict::Fail,
                "debootstrap is missing (a container uses !Debian)",
                Some("sudo apt-get install debootstrap".into()),
            ),
        }
    }

    // The storage directory.
    let base = &project.storage.base;
    let probe_dir = if base.exists() {
        base.clone()
    } else {
        project_dir.clone()
    };
    match tempfile::tempfile_in(&probe_dir) {
        Ok(_) => r.line(
            Verdict::Ok,
            &format!("storage {} is writable", base.display()),
            None,
        ),
        Err(e) => r.line(
            Verdict::Fail,
            &format!("storage {} is not writable: {e}", base.display()),
            Some(format!(
                "sudo chown -R {} {}",
                caller.user_name,
                probe_dir.display()
            )),
        ),
    }
    i32::from(r.failed)
}

/// The filesystem type and options of the mount holding `path` (longest mount point).
fn mount_of(path: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let path = path.canonicalize().ok()?;
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4).then(|| {
                (
                    PathBuf::from(f[1].replace("\\040", " ")),
                    f[2].to_owned(),
                    f[3].to_owned(),
                )
            })
        })
        .filter(|(mp, _, _)| path.starts_with(mp))
        .max_by_key(|(mp, _, _)| mp.as_os_str().len())
        .map(|(_, fs, opts)| (fs, opts))
}
