//! Root-only tests: real containers on a busybox root built by tests/fixtures/busybox-rootfs.sh.
//!
//! Run as root (CI is). As another user each test prints why it did nothing.

use std::fs;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use isolation::{
    Capability, CgroupSpec, Container, ExitStatus, Hierarchies, IdMap, Limits, MapWriter,
    NetworkNamespace, Owner, Signal, SpawnError, Stdio, Step, UserNamespace, Volume,
};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: this test needs root");
            return;
        }
    };
}

/// The busybox root, built once per machine (test processes take turns through a lock).
fn rootfs() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let dest = dir.join("busybox-rootfs");
        let lock = fs::File::create(dir.join("busybox-rootfs.lock")).unwrap();
        lock.lock().unwrap();
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/busybox-rootfs.sh");
        let status = Command::new("bash")
            .arg(&script)
            .arg(&dest)
            .status()
            .unwrap();
        assert!(status.success(), "{} failed", script.display());
        dest
    })
}

fn shell(script: &str) -> Container {
    let mut c = Container::new(rootfs(), "/bin/sh");
    c.args(["-c", script])
        .env("PATH", "/bin:/sbin:/usr/bin:/usr/sbin");
    c
}

/// Runs the container to the end; returns its status and what it wrote to stdout and stderr.
fn run(mut c: Container) -> (ExitStatus, String) {
    let (mut reader, writer) = std::io::pipe().unwrap();
    let writer: OwnedFd = writer.into();
    c.stdout(Stdio::Fd(writer.try_clone().unwrap()))
        .stderr(Stdio::Fd(writer));
    let mut child = c.spawn().expect("container starts");
    drop(c);
    let mut out = String::new();
    reader.read_to_string(&mut out).unwrap();
    (child.wait().unwrap(), out)
}

fn unique_cgroup(test: &str) -> PathBuf {
    PathBuf::from(format!("isolation-test/{test}-{}", std::process::id()))
}

#[test]
fn program_is_pid_one() {
    require_root!();
    let (status, out) = run(shell("echo $$"));
    assert!(status.success(), "{status}: {out}");
    assert_eq!(out.trim(), "1");
}

#[test]
fn root_is_read_only_nosuid_nodev() {
    require_root!();
    let (status, out) = run(shell(
        "awk '$5 == \"/\"' /proc/self/mountinfo; touch /forbidden",
    ));
    assert_eq!(status, ExitStatus::Exited(1), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    let root_line = out.lines().next().unwrap();
    let options = root_line.split_whitespace().nth(5).unwrap();
    for flag in ["ro", "nosuid", "nodev"] {
        assert!(
            options.split(',').any(|o| o == flag),
            "{flag} missing: {root_line}"
        );
    }
    assert!(!rootfs().join("forbidden").exists());
}

#[test]
fn tmpfs_volume_is_writable_with_its_modes() {
    require_root!();
    let mut c = shell("stat -c %a /data /data/sub; touch /data/sub/f && echo written");
    c.volume(
        "/data",
        Volume::Tmpfs {
            size: Some(1 << 20),
            mode: 0o750,
            subdirs: vec![("sub".into(), 0o700)],
        },
    );
    let (status, out) = run(c);
    assert!(status.success(), "{status}: {out}");
    assert_eq!(out, "750\n700\nwritten\n");
}

#[test]
fn seeded_tmpfs_holds_a_copy_within_its_size() {
    require_root!();
    use std::os::unix::fs::{PermissionsExt, symlink};
    let seed = tempfile::tempdir().unwrap();
    fs::set_permissions(seed.path(), fs::Permissions::from_mode(0o751)).unwrap();
    fs::create_dir(seed.path().join("sub")).unwrap();
    fs::write(seed.path().join("sub/file"), "seeded\n").unwrap();
    fs::set_permissions(seed.path().join("sub"), fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::chown(seed.path().join("sub/file"), Some(1), Some(2)).unwrap();
    symlink("sub/file", seed.path().join("link")).unwrap();
    let script = "stat -c '%a %u:%g' /data /data/sub /data/sub/file; cat /data/link; \
                  echo changed > /data/sub/file; \
                  dd if=/dev/zero of=/data/big bs=1024 count=2048 2>&1; echo dd=$?";
    let mut c = shell(script);
    c.volume(
        "/data",
        Volume::SeededTmpfs {
            size: Some(1 << 20),
            seed: seed.path().into(),
            owner: Owner::default(),
        },
    );
    let (status, out) = run(c);
    assert!(status.success(), "{status}: {out}");
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(
        lines[..4],
        ["751 0:0", "750 0:0", "644 1:2", "seeded"],
        "{out}"
    );
    assert!(out.contains("No space left on device"), "{out}");
    assert!(out.ends_with("dd=1\n"), "{out}");
    // The writes stayed in the tmpfs.
    assert_eq!(
        fs::read_to_string(seed.path().join("sub/file")).unwrap(),
        "seeded\n"
    );
    assert!(!seed.path().join("big").exists());

    // Seeding from the mount point itself, every file given to one owner.
    let mut c = shell("stat -c '%u:%g' /etc/passwd; echo x > /etc/new && cat /etc/new");
    c.volume(
        "/etc",
        Volume::SeededTmpfs {
            size: None,
            seed: rootfs().join("etc"),
            owner: Owner {
                uid: Some(7),
                gid: Some(8),
            },
        },
    );
    let (status, out) = run(c);
    assert!(status.success(), "{status}: {out}");
    assert_eq!(out, "7:8\nx\n");
    assert!(!rootfs().join("etc/new").exists());

    // A seed larger than the size fails the start, naming the seed.
    let mut c = shell("true");
    c.volume(
        "/data",
        Volume::SeededTmpfs {
            size: Some(4096),
            seed: seed.path().into(),
            owner: Owner::default(),
        },
    );
    fs::write(seed.path().join("large"), vec![b'x'; 64 << 10]).unwrap();
    match c.spawn() {
        Err(SpawnError::Setup { step, path, .. }) => {
            assert_eq!(step, Step::Seed);
            assert_eq!(path, seed.path());
        }
        other => panic!("expected a seed error, got {other:?}"),
    }
}

#[test]
fn bind_volumes_are_read_only_or_writable() {
    require_root!();
    let host = tempfile::tempdir().unwrap();
    fs::write(host.path().join("in"), "from host\n").unwrap();
    let mut c = shell("cat /config/in; touch /config/x 2>&1; echo out > /data/out");
    c.volume(
        "/config",
        Volume::ReadOnly {
            source: host.path().into(),
        },
    );
    c.volume(
        "/data",
        Volume::ReadWrite {
            source: host.path().into(),
        },
    );
    let (status, out) = run(c);
    assert!(status.success(), "{status}: {out}");
    assert!(out.starts_with("from host\n"), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    assert_eq!(
        fs::read_to_string(host.path().join("out")).unwrap(),
        "out\n"
    );
}

#[test]
fn hostname_uid_gid_and_groups_are_as_requested() {
    require_root!();
    let mut c = shell("hostname; id -u; id -g; id -G");
    c.hostname("box").identity(1000, 1001, &[1001, 2000, 3000]);
    let (status, out) = run(c);
    assert!(status.success(), "{status}: {out}");
    assert_eq!(out, "box\n1000\n1001\n1001 2000 3000\n");
}

/// What a non-root program finds in `/dev`: the six devices usable by everyone, and where
/// `/dev/null` comes from (a device node of its own, or the host's bound in a user namespace).
const DEV_CHECK: &str = "for d in null zero full random urandom tty; do \
      [ -c /dev/$d ] || echo \"$d is no character device\"; done; \
    echo x > /dev/null && head -c 3 /dev/zero | wc -c && head -c 2 /dev/urandom | wc -c; \
    stat -c '%a %t:%T' /dev/null /dev/tty; \
    awk '$5 == \"/dev/null\" { print \"mount\" }' /proc/self/mountinfo";

#[test]
fn dev_has_device_nodes_usable_by_any_user() {
    require_root!();
    let mut c = shell(DEV_CHECK);
    c.identity(1000, 1000, &[]);
    let (status, out) = run(c);
    assert!(status.success(), "{status}: {out}");
    // Created in the container's /dev: no mount per device.
    assert_eq!(out, "3\n2\n666 1:3\n666 5:0\n");
}

#[test]
fn dev_nodes_in_a_user_namespace_are_the_hosts() {
    require_root!();
    let map = vec![isolation::IdMap {
        inside: 0,
        outside: 200_000,
        count: 65536,
    }];
    let mut c = shell(DEV_CHECK);
    c.user_namespace(isolation::UserNamespace {
        uid_map: map.clone(),
        gid_map: map,
        writer: isolation::MapWriter::Auto,
    })
    .identity(1000, 1000, &[]);
    let (status, out) = run(c);
    assert!(status.success(), "{status}: {out}");
    // The kernel refuses mknod in a user namespace: the host's node is bind-mounted.
    assert_eq!(out, "3\n2\n666 1:3\n666 5:0\nmount\n");
}

#[test]
fn environment_is_only_what_was_set() {
    require_root!();
    let mut c = Container::new(rootfs(), "env");
    c.env("PATH", "/usr/bin")
        .env("ONLY", "this")
        .env("ONLY", "that");
    let (status, out) = run(c);
    assert!(status.success(), "{status}: {out}");
    let mut lines: Vec<_> = out.lines().collect();
    lines.sort();
    assert_eq!(lines, ["ONLY=that", "PATH=/usr/bin"]);
}

#[test]
fn workdir_is_applied() {
    require_root!();
    let mut c = shell("pwd");
    c.workdir("/etc");
    let (_, out) = run(c);
    assert_eq!(out, "/etc\n");
}

#[test]
fn no_new_privs_and_bounding_set_are_seen_inside() {
    require_root!();
    let mut c = shell("grep -E '^(NoNewPrivs|CapBnd|CapInh|CapAmb)' /proc/self/status");
    c.capabilities(&[
        Capability::CAP_CHOWN,
        Capability::CAP_KILL,
        Capability::CAP_SETUID,
    ]);
    let (status, out) = run(c);
    assert!(status.success(), "{status}: {out}");
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("{name} missing in {out}"))
    };
    assert_eq!(field("NoNewPrivs:"), "1");
    let expected = (1u64 << 0) | (1 << 5) | (1 << 7);
    assert_eq!(field("CapBnd:"), format!("{expected:016x}"));
    assert_eq!(field("CapInh:"), "0000000000000000");
    assert_eq!(field("CapAmb:"), "0000000000000000");
}

#[test]
fn passed_fds_arrive_at_their_numbers_and_nothing_else_leaks() {
    require_root!();
    let (mut reader, writer) = std::io::pipe().unwrap();
    // Not close-on-exec, so only the container's own closing keeps it out.
    let leaked = nix::fcntl::open(
        c"/etc/hostname",
        nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    let mut c = shell("echo through-five >&5; ls /proc/self/fd | sort -n | tr '\\n' ' '");
    c.pass_fd(writer.into(), 5);
    let (status, out) = run(c);
    let mut passed = String::new();
    reader.read_to_string(&mut passed).unwrap();
    assert!(status.success(), "{status}: {out}");
    assert_eq!(passed, "through-five\n");
    // 0-2, the passed 5, and the directory ls itself opened (3).
    assert_eq!(out.trim(), "0 1 2 3 5");
    drop(leaked);
}

#[test]
fn spawn_with_prepares_what_volumes_bind_and_reports_its_error() {
    require_root!();
    let host = tempfile::tempdir().unwrap();
    let source = host.path().join("made-by-prepare");
    let mut c = shell("cat /config/in");
    c.volume(
        "/config",
        Volume::ReadOnly {
            source: source.clone(),
        },
    );
    let (mut reader, writer) = std::io::pipe().unwrap();
    c.stdout(Stdio::Fd(writer.into()));
    let mut child = c
        .spawn_with(|| {
            fs::create_dir(&source)?;
            fs::write(source.join("in"), "prepared\n")
        })
        .expect("container starts");
    drop(c);
    let mut out = String::new();
    reader.read_to_string(&mut out).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(out, "prepared\n");

    let c = shell("true");
    match c.spawn_with(|| Err(std::io::Error::other("no room"))) {
        Err(SpawnError::Prepare(e)) => assert_eq!(e.to_string(), "no room"),
        other => panic!("expected the preparation's error, got {other:?}"),
    }
}

#[test]
fn stdin_can_come_from_a_pipe_or_dev_null() {
    require_root!();
    let (reader, mut writer) = std::io::pipe().unwrap();
    std::io::Write::write_all(&mut writer, b"typed\n").unwrap();
    drop(writer);
    let mut c = Container::new(rootfs(), "/bin/cat");
    c.stdin(Stdio::Fd(reader.into()));
    let (_, out) = run(c);
    assert_eq!(out, "typed\n");
    let mut c = Container::new(rootfs(), "/bin/cat");
    c.stdin(Stdio::Null);
    let (status, out) = run(c);
    assert!(status.success());
    assert_eq!(out, "");
}

#[test]
fn missing_image_dir_is_a_typed_error() {
    require_root!();
    let c = Container::new("/var/lib/images/does-not-exist", "/bin/true");
    match c.spawn() {
        Err(SpawnError::Setup { step, path, reason }) => {
            assert_eq!(step, Step::Mount);
            assert_eq!(path, Path::new("/var/lib/images/does-not-exist"));
            assert_eq!(reason.0, nix::errno::Errno::ENOENT);
        }
        other => panic!("expected a setup error, got {other:?}"),
    }
    let err = c.spawn().unwrap_err();
    assert_eq!(
        err.to_string(),
        "mount /var/lib/images/does-not-exist: no such file or directory"
    );
}

#[test]
fn missing_mount_point_and_program_are_named() {
    require_root!();
    let mut c = Container::new(rootfs(), "/bin/true");
    c.volume(
        "/not-in-image",
        Volume::ReadOnly {
            source: "/etc".into(),
        },
    );
    let err = c.spawn().unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "mount {}/not-in-image: no such file or directory",
            rootfs().display()
        )
    );
    let err = Container::new(rootfs(), "/bin/not-there")
        .spawn()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "exec /bin/not-there: no such file or directory"
    );
    let err = Container::new(rootfs(), "not-on-path").spawn().unwrap_err();
    assert_eq!(
        err.to_string(),
        "exec not-on-path: no such file or directory"
    );
}

#[test]
fn memory_limit_is_written_and_the_cgroup_removed_afterwards() {
    require_root!();
    let hierarchies = Hierarchies::detect(None).unwrap();
    let path = unique_cgroup("memory");
    let mut c = Container::new(rootfs(), "/bin/sleep");
    c.arg("30").cgroup(CgroupSpec {
        hierarchies: hierarchies.clone(),
        path: path.clone(),
        limits: Limits {
            memory: Some(64 << 20),
            pids: Some(100),
            ..Limits::default()
        },
        v1_controllers: None,
    });
    let mut child = c.spawn().unwrap();
    let cgroup = child.cgroup().unwrap();
    let dirs: Vec<PathBuf> = cgroup.dirs().map(Path::to_path_buf).collect();
    let limit_file = match &hierarchies {
        Hierarchies::V1 { .. } => dirs
            .iter()
            .map(|d| d.join("memory.limit_in_bytes"))
            .find(|f| f.exists())
            .expect("a memory cgroup"),
        Hierarchies::V2 { .. } => dirs[0].join("memory.max"),
    };
    assert_eq!(fs::read_to_string(&limit_file).unwrap().trim(), "67108864");
    for dir in &dirs {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert_eq!(procs.trim(), child.pid().to_string(), "{}", dir.display());
    }
    let usage = cgroup.usage().unwrap();
    assert_eq!(usage.pids, Some(1));
    assert!(usage.memory_bytes.unwrap() > 0);
    child.signal(Signal::SIGKILL).unwrap();
    assert_eq!(child.wait().unwrap(), ExitStatus::Signaled(Signal::SIGKILL));
    for dir in &dirs {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[test]
fn memory_limit_kills_a_container_that_exceeds_it() {
    require_root!();
    // 8 MiB limit; the shell builds a 32 MiB string in memory.
    let mut c = shell("x=$(head -c 33554432 /dev/zero | tr '\\0' a); echo survived ${#x}");
    c.cgroup(CgroupSpec {
        hierarchies: Hierarchies::detect(None).unwrap(),
        path: unique_cgroup("oom"),
        limits: Limits {
            memory: Some(8 << 20),
            ..Limits::default()
        },
        v1_controllers: None,
    });
    let (status, out) = run(c);
    assert!(!out.contains("survived"), "{status}: {out}");
    assert_eq!(status, ExitStatus::Signaled(Signal::SIGKILL), "{out}");
}

#[test]
fn fork_bomb_is_stopped_by_the_pids_limit() {
    require_root!();
    // A bounded bomb: a subshell forks 200 sleeps against a limit of 16 tasks. The shell that
    // fails to fork dies; pid 1 lives on to report.
    let script = "(for i in $(seq 200); do sleep 30 & done); echo started; exec sleep 30";
    let (mut reader, writer) = std::io::pipe().unwrap();
    let writer: OwnedFd = writer.into();
    let mut c = shell(script);
    c.stdout(Stdio::Fd(writer.try_clone().unwrap()))
        .stderr(Stdio::Fd(writer))
        .cgroup(CgroupSpec {
            hierarchies: Hierarchies::detect(None).unwrap(),
            path: unique_cgroup("pids"),
            limits: Limits {
                pids: Some(16),
                ..Limits::default()
            },
            v1_controllers: None,
        });
    let mut child = c.spawn().unwrap();
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&out).contains("started") {
        assert!(
            Instant::now() < deadline,
            "no 'started': {}",
            String::from_utf8_lossy(&out)
        );
        let n = reader.read(&mut buf).unwrap();
        assert!(n > 0, "output ended: {}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    let out = String::from_utf8_lossy(&out).into_owned();
    assert!(out.contains("can't fork"), "{out}");
    let pids = child.cgroup().unwrap().usage().unwrap().pids.unwrap();
    // pid 1 and the sleeps that got a slot; the failed subshell is gone.
    assert!((12..=16).contains(&pids), "{pids} tasks: {out}");
    assert_eq!(child.try_wait().unwrap(), None, "pid 1 survived the bomb");
    child.signal(Signal::SIGKILL).unwrap();
    child.wait().unwrap();
}

#[test]
fn nothing_is_left_behind_after_exit() {
    require_root!();
    let mounts_before = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let hierarchies = Hierarchies::detect(None).unwrap();
    let path = unique_cgroup("leftovers");
    let mut c = shell("sleep 0.1 & sleep 0.2 & echo done");
    c.volume(
        "/tmp",
        Volume::Tmpfs {
            size: None,
            mode: 0o1777,
            subdirs: vec![],
        },
    )
    .cgroup(CgroupSpec {
        hierarchies: hierarchies.clone(),
        path: path.clone(),
        limits: Limits::default(),
        v1_controllers: None,
    });
    let (status, out) = run(c);
    assert!(status.success(), "{status}: {out}");
    assert_eq!(
        fs::read_to_string("/proc/self/mountinfo").unwrap(),
        mounts_before
    );
    let leaf_dirs: Vec<PathBuf> = match &hierarchies {
        Hierarchies::V1 { controllers } => controllers.iter().map(|(_, m)| m.join(&path)).collect(),
        Hierarchies::V2 { mount } => vec![mount.join(&path)],
    };
    for dir in leaf_dirs {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[test]
fn a_failed_setup_removes_its_cgroup() {
    require_root!();
    let hierarchies = Hierarchies::detect(None).unwrap();
    let path = unique_cgroup("failed-setup");
    let mut c = Container::new(rootfs(), "/bin/not-there");
    c.cgroup(CgroupSpec {
        hierarchies: hierarchies.clone(),
        path: path.clone(),
        limits: Limits::default(),
        v1_controllers: None,
    });
    assert!(c.spawn().is_err());
    if let Hierarchies::V1 { controllers } = &hierarchies {
        for (_, mount) in controllers {
            assert!(!mount.join(&path).exists());
        }
    }
}

#[test]
fn user_namespace_maps_ids() {
    require_root!();
    let map = vec![isolation::IdMap {
        inside: 0,
        outside: 200_000,
        count: 65536,
    }];
    let mut c = shell("id -u; cat /proc/self/uid_map; touch /tmp/f; stat -c %u /tmp/f");
    c.user_namespace(isolation::UserNamespace {
        uid_map: map.clone(),
        gid_map: map,
        writer: isolation::MapWriter::Auto,
    })
    .identity(1, 1, &[])
    .volume(
        "/tmp",
        Volume::Tmpfs {
            size: None,
            mode: 0o1777,
            subdirs: vec![],
        },
    );
    let (status, out) = run(c);
    assert!(status.success(), "{status}: {out}");
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines[0], "1");
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["0", "200000", "65536"]
    );
    assert_eq!(lines[2], "1");
}

#[test]
fn network_namespace_has_only_loopback() {
    require_root!();
    let mut c = shell("ls /sys/class/net");
    c.network_namespace(true);
    let (status, out) = run(c);
    assert!(status.success(), "{status}: {out}");
    assert_eq!(out.trim(), "lo");
}

#[test]
fn containers_share_a_network_namespace_with_loopback_up() {
    require_root!();
    let ns = NetworkNamespace::new().unwrap();
    let script = "readlink /proc/self/ns/net; ip -o link | cut -d' ' -f2,3";
    let mut seen = Vec::new();
    for user_namespace in [false, true] {
        let mut c = shell(script);
        c.join_network_namespace(ns.try_clone().unwrap());
        if user_namespace {
            let map = vec![IdMap {
                inside: 0,
                outside: 0,
                count: 65536,
            }];
            c.user_namespace(UserNamespace {
                uid_map: map.clone(),
                gid_map: map,
                writer: MapWriter::Direct,
            });
        }
        let (status, out) = run(c);
        assert!(status.success(), "{status}: {out}");
        let lines: Vec<_> = out.lines().map(str::to_owned).collect();
        assert_eq!(lines[1..], ["lo: <LOOPBACK,UP,LOWER_UP>"], "{out}");
        seen.push(lines[0].clone());
    }
    let host = fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(seen[0], seen[1]);
    assert_ne!(Path::new(&seen[0]), host);
}

#[test]
fn containers_nest_in_the_user_namespace_owning_a_shared_network_namespace() {
    require_root!();
    let line = |inside, outside, count| IdMap {
        inside,
        outside,
        count,
    };
    let userns = |map: Vec<IdMap>| UserNamespace {
        uid_map: map.clone(),
        gid_map: map,
        writer: MapWriter::Direct,
    };
    // The creator's ids must be mapped in the owner for it to make namespaces there (as
    // they are for an ordinary user, whose own id is the owner's 0).
    let owner = vec![line(0, 0, 1), line(1, 300_000, 65536)];
    let ns = NetworkNamespace::with_user_namespace(userns(owner)).unwrap();
    let script = "readlink /proc/self/ns/net; ip -o link | cut -d' ' -f2,3; cat /proc/self/uid_map";
    let mut seen = Vec::new();
    for _ in 0..2 {
        let mut c = shell(script);
        c.join_network_namespace(ns.try_clone().unwrap())
            .user_namespace(userns(vec![line(0, 300_000, 65536)]));
        let (status, out) = run(c);
        assert!(status.success(), "{status}: {out}");
        let lines: Vec<_> = out.lines().map(str::to_owned).collect();
        assert_eq!(lines[1], "lo: <LOOPBACK,UP,LOWER_UP>", "{out}");
        // Seen from inside, the map names the owner's ids: host 300000 is its 1.
        let map: Vec<_> = lines[2].split_whitespace().collect();
        assert_eq!(map, ["0", "1", "65536"], "{out}");
        seen.push(lines[0].clone());
    }
    let host = fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(seen[0], seen[1]);
    assert_ne!(Path::new(&seen[0]), host);
    let mut outside = shell("true");
    outside
        .join_network_namespace(ns.try_clone().unwrap())
        .user_namespace(userns(vec![line(0, 100_000, 1)]));
    let err = outside.spawn().unwrap_err();
    assert!(
        matches!(
            err,
            SpawnError::NotInOwner {
                kind: "uid",
                id: 100_000
            }
        ),
        "{err}"
    );
}

/// cgroup v2 in a private mount namespace: this machine's controllers live in v1, so the
/// unified hierarchy has none to give; placement and removal still work, and asking for a
/// limit names the missing controller. On a v2 host the limit is written instead.
#[test]
fn cgroup_v2_placement_in_a_private_mount_namespace() {
    require_root!();
    let isolate = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/isolate");
    assert!(
        isolate.exists(),
        "build the example first: {}",
        isolate.display()
    );
    let mount = tempfile::tempdir().unwrap();
    let m = mount.path().display();
    let cg = format!("isolation-test/v2-{}", std::process::id());
    let script = format!(
        "set -e; mount -t cgroup2 cgroup2 {m}; \
         {iso} --root {root} --cgroup {cg} --cgroup-v2-mount {m} -- grep ^0:: /proc/self/cgroup; \
         test ! -e {m}/{cg} && echo removed; \
         if grep -qw memory {m}/cgroup.controllers; then \
           {iso} --root {root} --cgroup {cg} --cgroup-v2-mount {m} --memory 1048576 -- true && echo limited; \
         else \
           {iso} --root {root} --cgroup {cg} --cgroup-v2-mount {m} --memory 1048576 -- true 2>&1 || true; \
         fi",
        iso = isolate.display(),
        root = rootfs().display(),
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<_> = stdout.lines().collect();
    assert_eq!(lines[0], format!("0::/{cg}"));
    assert_eq!(lines[1], "removed");
    let unavailable = format!("isolate: cgroup v2 controller \"memory\" is not available in {m}");
    assert!(lines[2] == "limited" || lines[2] == unavailable, "{stdout}");
}

#[test]
fn init_runs_the_program_as_its_child_and_forwards_signals() {
    require_root!();
    let (mut reader, writer) = std::io::pipe().unwrap();
    let mut c = shell("echo $$; exec sleep 30");
    c.init(true).stdout(Stdio::Fd(writer.into()));
    let mut child = c.spawn().unwrap();
    drop(c);
    let mut line = [0u8; 2];
    reader.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"2\n", "the program is pid 2, under the init");
    child.signal(Signal::SIGTERM).unwrap();
    assert_eq!(child.wait().unwrap(), ExitStatus::Exited(128 + 15));
}

#[test]
fn init_exits_with_the_program_status_and_reports_exec_errors() {
    require_root!();
    let mut c = shell("sleep 30 & exit 7");
    c.init(true);
    let (status, _) = run(c);
    assert_eq!(status, ExitStatus::Exited(7));
    let mut c = Container::new(rootfs(), "/bin/not-there");
    c.init(true);
    let err = c.spawn().unwrap_err();
    assert_eq!(
        err.to_string(),
        "exec /bin/not-there: no such file or directory"
    );
}

#[test]
fn writable_root_keeps_what_the_program_writes() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("root");
    let status = Command::new("cp")
        .arg("-a")
        .arg(rootfs())
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let mut c = Container::new(&copy, "/bin/sh");
    c.args(["-c", "echo built > /etc/built"])
        .root_writable(true);
    let (status, out) = run(c);
    assert!(status.success(), "{status}: {out}");
    assert_eq!(
        fs::read_to_string(copy.join("etc/built")).unwrap(),
        "built\n"
    );
}
