//! Grouping processes by cgroup and by lithos container.

use std::fmt;

/// Where lithos puts its containers unless configured otherwise (spec/lithos.md).
pub const DEFAULT_LITHOS_ROOT: &str = "lithos.slice";

/// A lithos container instance: `<sandbox>/<process>.<instance>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Container {
    pub sandbox: String,
    pub process: String,
    pub instance: String,
}

impl fmt::Display for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}.{}", self.sandbox, self.process, self.instance)
    }
}

impl Container {
    /// Parses `LITHOS_NAME` (`<sandbox>/<process>.<N>`).
    pub fn from_lithos_name(name: &str) -> Option<Self> {
        let (sandbox, rest) = name.split_once('/')?;
        Self::from_parts(sandbox, rest)
    }

    /// Parses a cgroup leaf `<sandbox>:<process>.<N>.scope`.
    fn from_scope(leaf: &str) -> Option<Self> {
        let (sandbox, rest) = leaf.strip_suffix(".scope")?.split_once(':')?;
        Self::from_parts(sandbox, rest)
    }

    fn from_parts(sandbox: &str, process_instance: &str) -> Option<Self> {
        let (process, instance) = process_instance.rsplit_once('.')?;
        let valid = !sandbox.is_empty()
            && !sandbox.contains('/')
            && !process.is_empty()
            && !process.contains('/')
            && !instance.is_empty()
            && instance.bytes().all(|b| b.is_ascii_digit());
        valid.then(|| Self {
            sandbox: sandbox.to_owned(),
            process: process.to_owned(),
            instance: instance.to_owned(),
        })
    }
}

/// The group a process is counted in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Group {
    /// The cgroup path with `.slice`, `.scope` and `.service` removed: `system/nginx`.
    pub name: String,
    pub container: Option<Container>,
}

/// The cgroup path of a process from `/proc/PID/cgroup`: the v2 line (`0::/path`) when
/// present, else the v1 `name=systemd` line. On a hybrid host, where the v2 hierarchy exists
/// but holds every process at its root, the v1 `name=systemd` line is the one with meaning.
pub fn cgroup_path(cgroup_file: &str) -> Option<&str> {
    let mut unified = None;
    let mut systemd = None;
    for line in cgroup_file.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            unified = Some(path);
        } else if controllers == "name=systemd" {
            systemd = Some(path);
        }
    }
    match (unified, systemd) {
        (Some("/"), Some(systemd)) => Some(systemd),
        (Some(unified), _) => Some(unified),
        (None, systemd) => systemd,
    }
}

/// The group of a cgroup path, or `None` for the root, `.swap`/`.mount` units and the
/// top-level `user` group (as the original skipped them).
pub fn group_of(path: &str, lithos_root: &str) -> Option<Group> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let leaf = *components.last()?;
    if leaf.ends_with(".swap") || leaf.ends_with(".mount") {
        return None;
    }
    let names: Vec<&str> = components.iter().map(|c| strip_unit_suffix(c)).collect();
    if names[0] == "user" {
        return None;
    }
    let container = (components[0] == lithos_root)
        .then(|| Container::from_scope(leaf))
        .flatten();
    Some(Group {
        name: names.join("/"),
        container,
    })
}

fn strip_unit_suffix(component: &str) -> &str {
    [".slice", ".scope", ".service"]
        .iter()
        .find_map(|suffix| component.strip_suffix(suffix))
        .unwrap_or(component)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_line_is_preferred() {
        let file = "12:pids:/x\n1:name=systemd:/system.slice/old.service\n0::/system.slice/nginx.service\n";
        assert_eq!(cgroup_path(file), Some("/system.slice/nginx.service"));
        let v1 = "3:cpu,cpuacct:/a\n1:name=systemd:/system.slice/cron.service\n";
        assert_eq!(cgroup_path(v1), Some("/system.slice/cron.service"));
        assert_eq!(cgroup_path("3:cpu:/a\n"), None);
        let hybrid = "1:name=systemd:/system.slice/x.service\n0::/\n";
        assert_eq!(cgroup_path(hybrid), Some("/system.slice/x.service"));
        assert_eq!(cgroup_path("0::/\n"), Some("/"));
    }

    #[test]
    fn names_lose_unit_suffixes() {
        let group = group_of("/system.slice/nginx.service", DEFAULT_LITHOS_ROOT).unwrap();
        assert_eq!(group.name, "system/nginx");
        assert_eq!(group.container, None);
        assert_eq!(
            group_of("/init.scope", "lithos.slice").unwrap().name,
            "init"
        );
    }

    #[test]
    fn skipped_groups() {
        for path in [
            "/",
            "",
            "/system.slice/dev-sda2.swap",
            "/system.slice/boot.mount",
            "/user.slice/user-1000.slice/session-2.scope",
        ] {
            assert_eq!(group_of(path, DEFAULT_LITHOS_ROOT), None, "{path}");
        }
    }

    #[test]
    fn lithos_scopes_are_containers() {
        let group = group_of("/lithos.slice/demo:w.0.scope", DEFAULT_LITHOS_ROOT).unwrap();
        assert_eq!(group.name, "lithos/demo:w.0");
        let container = group.container.unwrap();
        assert_eq!(container.to_string(), "demo/w.0");
        assert_eq!(
            (
                container.sandbox.as_str(),
                container.process.as_str(),
                container.instance.as_str()
            ),
            ("demo", "w", "0")
        );
        let nested = group_of(
            "/lithos.slice/demo.slice/demo:web.worker.12.scope",
            "lithos.slice",
        )
        .unwrap();
        assert_eq!(nested.name, "lithos/demo/demo:web.worker.12");
        assert_eq!(nested.container.unwrap().process, "web.worker");
        // Outside the lithos root the same leaf is an ordinary group.
        assert_eq!(
            group_of("/other/demo:w.0.scope", "lithos.slice")
                .unwrap()
                .container,
            None
        );
        assert_eq!(
            group_of("/lithos.slice/bad.scope", "lithos.slice")
                .unwrap()
                .container,
            None
        );
    }

    #[test]
    fn lithos_name_variable() {
        assert_eq!(
            Container::from_lithos_name("demo/w.3").unwrap().to_string(),
            "demo/w.3"
        );
        for bad in ["demo", "demo/w", "demo/w.x", "/w.0", "a/b/c.1"] {
            assert_eq!(Container::from_lithos_name(bad), None, "{bad}");
        }
    }
}
