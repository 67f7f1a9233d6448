//! The user namespace a container runs in: as root the identity map of its `uids`/`gids`;
//! as an ordinary user the caller's id as 0 and the other ids on the caller's subordinate
//! ranges from `/etc/subuid` and `/etc/subgid`, written by `newuidmap`/`newgidmap`.

use std::path::Path;

use isolation::user;
use isolation::{IdMap, MapWriter, UserNamespace};

use crate::config::IdRanges;
use crate::de::Located;

/// The ids of the person running vagga.
#[derive(Debug, Clone)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub user_name: String,
    pub group_name: String,
}

impl Caller {
    pub fn current() -> Caller {
        let uid = user::real_uid();
        let gid = user::real_gid();
        let user_name = user::user_name(uid)
            .ok()
            .flatten()
            .unwrap_or_else(|| uid.to_string());
        let group_name = user::group_name(gid)
            .ok()
            .flatten()
            .unwrap_or_else(|| gid.to_string());
        Caller {
            uid,
            gid,
            user_name,
            group_name,
        }
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// A subordinate id range of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubRange {
    pub start: u32,
    pub count: u32,
}

/// Building the id maps failed.
#[derive(Debug, thiserror::Error)]
pub enum IdMapError {
    #[error(
        "container needs {needed} subordinate {kind}s but {file} gives {user} {given}: add a range or shrink \"{kind}s\" in {pos} (run `vagga _doctor`)"
    )]
    TooFew {
        needed: u64,
        kind: &'static str,
        file: &'static str,
        user: String,
        given: u64,
        pos: String,
    },
    #[error("{pos}: external-user-id {external} is not mapped in the build namespace")]
    ExternalUnmapped { pos: String, external: u32 },
    #[error(
        "{pos}: external-user-id {external} is the build namespace's root, which the container needs for itself"
    )]
    ExternalIsRoot { pos: String, external: u32 },
}

/// The caller's ranges in a subuid/subgid file, in file order (by name or numeric id).
pub fn sub_ranges(file: &Path, name: &str, id: u32) -> Vec<SubRange> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Vec::new();
    };
    parse_sub_ranges(&text, name, id)
}

fn parse_sub_ranges(text: &str, name: &str, id: u32) -> Vec<SubRange> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.trim().split(':');
            let who = parts.next()?;
            let start = parts.next()?.trim().parse().ok()?;
            let count = parts.next()?.trim().parse().ok()?;
            (who == name || who == id.to_string()).then_some(SubRange { start, count })
        })
        .collect()
}

/// Maps one kind of id: `own` to 0, the rest of `ranges` onto `subs`.
fn unprivileged_map(
    ranges: &IdRanges,
    own: u32,
    subs: &[SubRange],
) -> Result<Vec<IdMap>, (u64, u64)> {
    let mut map = vec![IdMap {
        inside: 0,
        outside: own,
        count: 1,
    }];
    let mut wanted: Vec<(u32, u32)> = Vec::new();
    for r in &ranges.0 {
        let start = r.start.max(1);
        if start <= r.end {
            wanted.push((start, r.end - start + 1));
        }
    }
    let needed: u64 = wanted.iter().map(|(_, c)| u64::from(*c)).sum();
    let given: u64 = subs.iter().map(|s| u64::from(s.count)).sum();
    if needed > given {
        return Err((needed, given));
    }
    let mut subs = subs.iter().copied().filter(|s| s.count > 0);
    let mut current = subs.next();
    for (mut inside, mut count) in wanted {
        while count > 0 {
            let sub = current
                .as_mut()
                .expect("enough subordinate ids were checked");
            let n = count.min(sub.count);
            map.push(IdMap {
                inside,
                outside: sub.start,
                count: n,
            });
            inside += n;
            count -= n;
            sub.start += n;
            sub.count -= n;
            if sub.count == 0 {
                current = subs.next();
            }
        }
    }
    Ok(map)
}

/// The user namespace for a container with these `uids`/`gids`; warnings go to the caller.
pub fn user_namespace(
    caller: &Caller,
    uids: &Located<IdRanges>,
    gids: &Located<IdRanges>,
    warnings: &mut Vec<String>,
) -> Result<UserNamespace, IdMapError> {
    if caller.is_root() {
        let identity = |ranges: &IdRanges| {
            ranges
                .0
                .iter()
                .map(|r| IdMap {
                    inside: r.start,
                    outside: r.start,
                    count: r.count(),
                })
                .collect()
        };
        return Ok(UserNamespace {
            uid_map: identity(&uids.value),
            gid_map: identity(&gids.value),
            writer: MapWriter::Direct,
        });
    }
    let sub_uids = sub_ranges(Path::new("/etc/subuid"), &caller.user_name, caller.uid);
    let sub_gids = sub_ranges(Path::new("/etc/subgid"), &caller.user_name, caller.gid);
    if sub_uids.is_empty() || sub_gids.is_empty() {
        warnings.push(format!(
            "no subordinate ids for {} in /etc/subuid or /etc/subgid: only your own id is mapped (run `vagga _doctor`)",
            caller.user_name
        ));
        let single = |own| {
            vec![IdMap {
                inside: 0,
                outside: own,
                count: 1,
            }]
        };
        return Ok(UserNamespace {
            uid_map: single(caller.uid),
            gid_map: single(caller.gid),
            // One line mapping the caller's own id may be written without helpers.
            writer: MapWriter::Direct,
        });
    }
    let too_few =
        |kind, file, (needed, given): (u64, u64), pos: &crate::yaml::Pos| IdMapError::TooFew {
            needed,
            kind,
            file,
            user: caller.user_name.clone(),
            given,
            pos: pos.to_string(),
        };
    let uid_map = unprivileged_map(&uids.value, caller.uid, &sub_uids)
        .map_err(|c| too_few("uid", "/etc/subuid", c, &uids.pos))?;
    let gid_map = unprivileged_map(&gids.value, caller.gid, &sub_gids)
        .map_err(|c| too_few("gid", "/etc/subgid", c, &gids.pos))?;
    Ok(UserNamespace {
        uid_map,
        gid_map,
        writer: MapWriter::Helpers,
    })
}

/// The user namespace owning the shared network namespace of an ordinary user's
/// `!Supervise` group: the caller's id as 0 and every subordinate id after it in file order,
/// so each child's namespace (made of the same ids) can nest in it.
pub fn group_namespace(caller: &Caller) -> UserNamespace {
    let sub_uids = sub_ranges(Path::new("/etc/subuid"), &caller.user_name, caller.uid);
    let sub_gids = sub_ranges(Path::new("/etc/subgid"), &caller.user_name, caller.gid);
    let all = |own, subs: &[SubRange]| {
        let mut map = vec![IdMap {
            inside: 0,
            outside: own,
            count: 1,
        }];
        let mut next: u32 = 1;
        for sub in subs.iter().filter(|s| s.count > 0) {
            map.push(IdMap {
                inside: next,
                outside: sub.start,
                count: sub.count,
            });
            next = next.saturating_add(sub.count);
        }
        map
    };
    if sub_uids.is_empty() || sub_gids.is_empty() {
        // Like the children's namespaces then: the caller's own id only, written directly.
        return UserNamespace {
            uid_map: all(caller.uid, &[]),
            gid_map: all(caller.gid, &[]),
            writer: MapWriter::Direct,
        };
    }
    UserNamespace {
        uid_map: all(caller.uid, &sub_uids),
        gid_map: all(caller.gid, &sub_gids),
        writer: MapWriter::Helpers,
    }
}

/// Maps `user_id` of the container to `external`, an id of the build namespace (the one
/// `uid_map` maps into): the lines covering either are split around them, so inside the
/// container `external`'s own id is left unmapped.
pub fn map_external_user(
    ns: &mut UserNamespace,
    user_id: u32,
    external: u32,
    pos: &crate::yaml::Pos,
) -> Result<(), IdMapError> {
    let host = outside_id(&ns.uid_map, external).ok_or_else(|| IdMapError::ExternalUnmapped {
        pos: pos.to_string(),
        external,
    })?;
    if outside_id(&ns.uid_map, 0) == Some(host) {
        return Err(IdMapError::ExternalIsRoot {
            pos: pos.to_string(),
            external,
        });
    }
    let mut lines = Vec::new();
    for m in &ns.uid_map {
        // Cut the inside id `user_id` and the host id `host` out of this line.
        let cuts = [
            user_id.checked_sub(m.inside).filter(|o| *o < m.count),
            host.checked_sub(m.outside).filter(|o| *o < m.count),
        ];
        let mut start = 0;
        let mut offsets: Vec<u32> = cuts.into_iter().flatten().collect();
        offsets.sort_unstable();
        offsets.dedup();
        for cut in offsets.into_iter().chain([m.count]) {
            if cut > start {
                lines.push(IdMap {
                    inside: m.inside + start,
                    outside: m.outside + start,
                    count: cut - start,
                });
            }
            start = cut + 1;
        }
    }
    lines.push(IdMap {
        inside: user_id,
        outside: host,
        count: 1,
    });
    ns.uid_map = lines;
    Ok(())
}

/// The host id an id inside the namespace maps to.
pub fn outside_id(map: &[IdMap], inside: u32) -> Option<u32> {
    map.iter()
        .find(|m| inside >= m.inside && inside - m.inside < m.count)
        .map(|m| m.outside + (inside - m.inside))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IdRange;

    #[test]
    fn external_user_id_splits_the_lines_around_both_ids() {
        let pos = crate::yaml::Pos {
            file: std::sync::Arc::new("vagga.yaml".into()),
            line: 1,
            col: 1,
        };
        let mut ns = UserNamespace {
            uid_map: vec![IdMap {
                inside: 0,
                outside: 0,
                count: 65536,
            }],
            gid_map: Vec::new(),
            writer: MapWriter::Direct,
        };
        map_external_user(&mut ns, 1, 1000, &pos).unwrap();
        let line = |inside, outside, count| IdMap {
            inside,
            outside,
            count,
        };
        assert_eq!(
            ns.uid_map,
            [
                line(0, 0, 1),
                line(2, 2, 998),
                line(1001, 1001, 64535),
                line(1, 1000, 1)
            ]
        );
        // A user's build namespace: 0 is the user, 1.. the subordinate range.
        let mut ns = UserNamespace {
            uid_map: vec![line(0, 1000, 1), line(1, 100000, 65535)],
            gid_map: Vec::new(),
            writer: MapWriter::Helpers,
        };
        map_external_user(&mut ns, 5, 7, &pos).unwrap();
        assert_eq!(
            ns.uid_map,
            [
                line(0, 1000, 1),
                line(1, 100000, 4),
                line(6, 100005, 1),
                line(8, 100007, 65528),
                line(5, 100006, 1)
            ]
        );
        assert!(matches!(
            map_external_user(&mut ns, 5, 0, &pos),
            Err(IdMapError::ExternalIsRoot { .. })
        ));
        assert!(matches!(
            map_external_user(&mut ns, 5, 70000, &pos),
            Err(IdMapError::ExternalUnmapped { .. })
        ));
    }

    #[test]
    fn subordinate_ranges_by_name_or_id() {
        let text = "alice:100000:65536\nbob:200000:10\n1000:300000:5\n";
        assert_eq!(
            parse_sub_ranges(text, "alice", 1000),
            [
                SubRange {
                    start: 100000,
                    count: 65536
                },
                SubRange {
                    start: 300000,
                    count: 5
                }
            ]
        );
    }

    #[test]
    fn maps_fill_ranges_in_file_order() {
        let subs = [
            SubRange {
                start: 100,
                count: 3,
            },
            SubRange {
                start: 500,
                count: 10,
            },
        ];
        let ranges = IdRanges(vec![IdRange { start: 0, end: 5 }]);
        let map = unprivileged_map(&ranges, 1000, &subs).unwrap();
        assert_eq!(
            map,
            [
                IdMap {
                    inside: 0,
                    outside: 1000,
                    count: 1
                },
                IdMap {
                    inside: 1,
                    outside: 100,
                    count: 3
                },
                IdMap {
                    inside: 4,
                    outside: 500,
                    count: 2
                },
            ]
        );
        assert_eq!(outside_id(&map, 5), Some(501));
        let big = IdRanges::default();
        assert_eq!(unprivileged_map(&big, 1000, &subs), Err((65535, 13)));
    }
}
