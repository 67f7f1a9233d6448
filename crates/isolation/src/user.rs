//! The ids this process runs as, and user and group names from the system's databases
//! (`/etc/passwd`, `/etc/group` or whatever NSS is configured with).

use nix::unistd::{Gid, Group, Uid, User, getegid, geteuid, getgid, getuid, setfsuid};

use crate::error::OsReason;

/// Looking up a user or group failed (the database could not be read, not "no such entry").
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("look up the user with uid {uid}: {reason}")]
    UserName { uid: u32, reason: OsReason },
    #[error("look up the group with gid {gid}: {reason}")]
    GroupName { gid: u32, reason: OsReason },
    #[error("look up user {name:?}: {reason}")]
    UserId { name: String, reason: OsReason },
    #[error("look up group {name:?}: {reason}")]
    GroupId { name: String, reason: OsReason },
}

/// The real user id: who started this process.
pub fn real_uid() -> u32 {
    getuid().as_raw()
}

/// The effective user id: whose permissions this process has (0 means root).
pub fn effective_uid() -> u32 {
    geteuid().as_raw()
}

/// Runs `create` with the calling thread's filesystem uid set to `owner`, so what it creates
/// (files, sockets) belongs to `owner`; the previous fsuid is restored after, also when
/// `create` panics. Without the privilege to change it the fsuid silently stays.
pub fn creating_as<T>(owner: u32, create: impl FnOnce() -> T) -> T {
    struct Restore(Uid);
    impl Drop for Restore {
        fn drop(&mut self) {
            setfsuid(self.0);
        }
    }
    let _restore = Restore(setfsuid(Uid::from_raw(owner)));
    create()
}

/// The real group id.
pub fn real_gid() -> u32 {
    getgid().as_raw()
}

/// The effective group id.
pub fn effective_gid() -> u32 {
    getegid().as_raw()
}

/// The name of the user with `uid`, `None` when there is none.
pub fn user_name(uid: u32) -> Result<Option<String>, UserError> {
    User::from_uid(Uid::from_raw(uid))
        .map(|u| u.map(|u| u.name))
        .map_err(|e| UserError::UserName {
            uid,
            reason: OsReason(e),
        })
}

/// The name of the group with `gid`, `None` when there is none.
pub fn group_name(gid: u32) -> Result<Option<String>, UserError> {
    Group::from_gid(Gid::from_raw(gid))
        .map(|g| g.map(|g| g.name))
        .map_err(|e| UserError::GroupName {
            gid,
            reason: OsReason(e),
        })
}

/// The uid of user `name`, `None` when there is none (or the name holds a NUL byte).
pub fn user_id(name: &str) -> Result<Option<u32>, UserError> {
    User::from_name(name)
        .map(|u| u.map(|u| u.uid.as_raw()))
        .map_err(|e| UserError::UserId {
            name: name.to_owned(),
            reason: OsReason(e),
        })
}

/// The gid of group `name`, `None` when there is none (or the name holds a NUL byte).
pub fn group_id(name: &str) -> Result<Option<u32>, UserError> {
    Group::from_name(name)
        .map(|g| g.map(|g| g.gid.as_raw()))
        .map_err(|e| UserError::GroupId {
            name: name.to_owned(),
            reason: OsReason(e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn files_created_under_another_fsuid_belong_to_it() {
        if effective_uid() != 0 {
            // Without the privilege the fsuid cannot change; root-only.
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let theirs = dir.path().join("theirs");
        creating_as(1234, || std::fs::write(&theirs, "")).unwrap();
        let mine = dir.path().join("mine");
        std::fs::write(&mine, "").unwrap();
        assert_eq!(std::fs::metadata(theirs).unwrap().uid(), 1234);
        assert_eq!(std::fs::metadata(mine).unwrap().uid(), 0);
    }

    #[test]
    fn a_panic_inside_still_restores_the_fsuid() {
        if effective_uid() != 0 {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let panicked = std::panic::catch_unwind(|| creating_as(1234, || panic!("inside")));
        assert!(panicked.is_err());
        let after = dir.path().join("after");
        std::fs::write(&after, "").unwrap();
        assert_eq!(std::fs::metadata(after).unwrap().uid(), 0);
    }

    #[test]
    fn ids_match_what_the_kernel_reports_for_this_process() {
        // /proc/self is owned by the effective ids; the status file lists real ones first.
        let meta = std::fs::metadata("/proc/self").unwrap();
        assert_eq!(effective_uid(), meta.uid());
        assert_eq!(effective_gid(), meta.gid());
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let first = |key: &str| -> u32 {
            let line = status.lines().find(|l| l.starts_with(key)).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        assert_eq!(real_uid(), first("Uid:"));
        assert_eq!(real_gid(), first("Gid:"));
    }

    #[test]
    fn root_is_found_both_ways_and_strangers_are_none() {
        assert_eq!(user_name(0).unwrap().as_deref(), Some("root"));
        assert_eq!(user_id("root").unwrap(), Some(0));
        assert_eq!(group_name(0).unwrap().as_deref(), Some("root"));
        assert_eq!(group_id("root").unwrap(), Some(0));
        assert_eq!(user_id("no such user, surely").unwrap(), None);
        assert_eq!(group_id("nul\0byte").unwrap(), None);
        // Ids this high are not handed out by any distribution's tools.
        assert_eq!(user_name(u32::MAX - 7).unwrap(), None);
        assert_eq!(group_name(u32::MAX - 7).unwrap(), None);
    }
}
