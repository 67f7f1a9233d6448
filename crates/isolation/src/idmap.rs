//! Writing the uid and gid maps of a child's new user namespace.

use std::fs;
use std::process::{Child, Command, Stdio};

use nix::unistd::{Pid, geteuid};

use crate::container::{IdMap, MapWriter, UserNamespace};
use crate::error::SpawnError;

/// Writes both maps of `pid`'s user namespace, directly or through the setuid helpers.
pub(crate) fn write_maps(pid: Pid, userns: &UserNamespace) -> Result<(), SpawnError> {
    let is_root = geteuid().is_root();
    let direct = match userns.writer {
        MapWriter::Auto => is_root,
        MapWriter::Direct => true,
        MapWriter::Helpers => false,
    };
    if direct {
        write_direct(pid, "uid_map", &userns.uid_map)?;
        if !is_root {
            // An unprivileged writer must give up setgroups before it may write a gid map.
            write_proc(pid, "setgroups", "deny")?;
        }
        write_direct(pid, "gid_map", &userns.gid_map)
    } else {
        // The two helpers are independent: running them side by side saves one process
        // start on every container start by an unprivileged user.
        let uid = start_helper("newuidmap", pid, &userns.uid_map)?;
        let gid = start_helper("newgidmap", pid, &userns.gid_map);
        let uid = finish_helper("newuidmap", pid, uid);
        uid.and(finish_helper("newgidmap", pid, gid?))
    }
}

pub(crate) fn format_map(map: &[IdMap]) -> String {
    map.iter()
        .map(|m| format!("{} {} {}\n", m.inside, m.outside, m.count))
        .collect()
}

fn write_proc(pid: Pid, file: &str, content: &str) -> Result<(), SpawnError> {
    let path = format!("/proc/{pid}/{file}");
    // The kernel takes a map in a single write; fs::write issues one for a short buffer.
    fs::write(&path, content).map_err(|source| SpawnError::WriteIdMap {
        path: path.into(),
        source,
    })
}

fn write_direct(pid: Pid, file: &str, map: &[IdMap]) -> Result<(), SpawnError> {
    write_proc(pid, file, &format_map(map))
}

fn start_helper(helper: &'static str, pid: Pid, map: &[IdMap]) -> Result<Child, SpawnError> {
    let mut cmd = Command::new(helper);
    cmd.arg(pid.to_string());
    for m in map {
        cmd.args([m.inside, m.outside, m.count].map(|n| n.to_string()));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| SpawnError::IdMapHelper {
            helper,
            pid: pid.as_raw(),
            message: format!("cannot run it: {e} (install Debian's uidmap package)"),
        })
}

fn finish_helper(helper: &'static str, pid: Pid, child: Child) -> Result<(), SpawnError> {
    let output = child
        .wait_with_output()
        .map_err(|e| SpawnError::IdMapHelper {
            helper,
            pid: pid.as_raw(),
            message: format!("wait for it: {e}"),
        })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(SpawnError::IdMapHelper {
        helper,
        pid: pid.as_raw(),
        message: format!("{} ({})", stderr.trim(), output.status),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_one_line_per_range() {
        let map = [
            IdMap {
                inside: 0,
                outside: 1000,
                count: 1,
            },
            IdMap {
                inside: 1,
                outside: 100_000,
                count: 65_535,
            },
        ];
        assert_eq!(format_map(&map), "0 1000 1\n1 100000 65535\n");
    }
}
