//! Grouping by cgroup on this host (root only): a process in a lithos container scope of the
//! cgroup v2 hierarchy, and one in a systemd service of the v1 `name=systemd` hierarchy where
//! the host has it. Cgroups carry this test's pid and are removed by a guard.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::{Agent, eventually, get, is_root, wait_ready};

/// Mount point of the first mount of `fstype` (with `option` among its options, if given).
fn mount_of(fstype: &str, option: Option<&str>) -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut fields = right.split_whitespace();
        let kind = fields.next()?;
        let options = fields.nth(1).unwrap_or_default();
        let matches = kind == fstype && option.is_none_or(|o| options.split(',').any(|x| x == o));
        let mount_point = left.split_whitespace().nth(4)?;
        matches.then(|| PathBuf::from(mount_point))
    })
}

/// Cgroups created by the test and the sleepers inside them.
#[derive(Default)]
struct Groups {
    dirs: Vec<PathBuf>,
    sleepers: Vec<Child>,
}

impl Groups {
    /// Creates `dir` (and missing parents, remembered for removal) and moves a new `sleep`
    /// into it; the sleeper's pid.
    fn place(&mut self, root: &Path, relative: &str) -> u32 {
        let mut dir = root.to_path_buf();
        for component in relative.split('/') {
            dir.push(component);
            if !dir.exists() {
                std::fs::create_dir(&dir).unwrap();
                self.dirs.push(dir.clone());
            }
        }
        let sleeper = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = sleeper.id();
        self.sleepers.push(sleeper);
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
        pid
    }
}

impl Drop for Groups {
    fn drop(&mut self) {
        for sleeper in &mut self.sleepers {
            let _ = sleeper.kill();
            let _ = sleeper.wait();
        }
        for dir in self.dirs.iter().rev() {
            // A cgroup empties a moment after its last process is reaped.
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[tokio::test]
async fn lithos_scopes_and_systemd_services_are_groups() {
    if !is_root() {
        println!("skipped: needs root");
        return;
    }
    let Some(unified) = mount_of("cgroup2", None) else {
        println!("skipped: no cgroup v2 hierarchy mounted");
        return;
    };
    let sandbox = format!("cnt{}", std::process::id());
    let mut groups = Groups::default();
    groups.place(&unified, &format!("lithos.slice/{sandbox}:w.0.scope"));
    let systemd = mount_of("cgroup", Some("name=systemd"));
    if let Some(systemd) = &systemd {
        groups.place(systemd, &format!("system.slice/{sandbox}.service"));
    } else {
        println!("no v1 name=systemd hierarchy here: checking the v2 lithos scope only");
    }

    let agent = Agent::start_local(&["--interval", "500"]);
    wait_ready(&agent).await;
    let lithos = format!(
        "cantal_group_rss{{container=\"{sandbox}/w.0\",group=\"lithos/{sandbox}:w.0\",instance=\"0\",process=\"w\",sandbox=\"{sandbox}\"}} "
    );
    let service = format!("cantal_group_num_processes{{group=\"system/{sandbox}\"}} 1\n");
    let url = format!("{}/metrics", agent.url);
    let found = eventually(Duration::from_secs(5), || async {
        let (_, text) = get(&url).await;
        text.contains(&lithos) && (systemd.is_none() || text.contains(&service))
    })
    .await;
    let (_, text) = get(&url).await;
    let groups_seen: Vec<&str> = text.lines().filter(|l| l.contains(&sandbox)).collect();
    assert!(
        found,
        "group series missing; lines naming the test's groups: {groups_seen:#?}"
    );
}
