//! The acceptance scenarios of spec/vagga.md, driving the real `vagga` binary on projects
//! whose containers start from a busybox tarball (tests/fixtures/busybox-rootfs.sh, then
//! `tar -czf`). Containers need root: as another user these tests say they were skipped.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

#[macro_use]
mod common;
use common::*;

const TEXT: &str = "containers:
  text:
    setup:
    - !Tar {url: ./busybox.tar.gz}
    - !Text {/etc/shakespeare: \"Sir, in my heart...\\nThat would not let me sleep.\\n\"}
";

#[test]
fn s01_text_file_build_log_and_timings() {
    needs_root!();
    let p = Project::new(TEXT);
    let out = p.ok(&["_run", "text", "cat", "/etc/shakespeare"]);
    assert_eq!(out, "Sir, in my heart...\nThat would not let me sleep.\n");
    let link = p.link("text");
    assert!(link_format(&link, "text"), "{link}");
    let meta = p
        .path()
        .join(".vagga")
        .join(&link)
        .parent()
        .unwrap()
        .to_owned();
    let timings = fs::read_to_string(meta.join("timings.log")).unwrap();
    assert_eq!(timings.lines().count(), 2, "{timings}");
    assert!(timings.contains("vagga.yaml:4:7 !Tar"), "{timings}");
    let log = fs::read_to_string(meta.join("build.log")).unwrap();
    assert_eq!(log.matches("=== [").count(), 2, "{log}");
}

#[test]
fn s02_depends_hashes_content_not_times() {
    needs_root!();
    let p = Project::new(
        "containers:
  dep:
    setup:
    - !Tar {url: ./busybox.tar.gz}
    - !Depends data.txt
    - !Sh \"cd /work && cp data.txt /d\"
",
    );
    p.write("data.txt", "one\n");
    let h1 = p.ok(&["_version_hash", "-s", "dep"]);
    assert!(
        regex::Regex::new(r"^[0-9a-f]{8}\n$").unwrap().is_match(&h1),
        "{h1}"
    );
    assert_eq!(p.ok(&["_version_hash", "-s", "dep"]), h1);
    // touch: same content, same hash.
    let f = fs::File::options()
        .write(true)
        .open(p.path().join("data.txt"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now()).unwrap();
    assert_eq!(p.ok(&["_version_hash", "-s", "dep"]), h1);
    assert_eq!(p.ok(&["_run", "dep", "cat", "/d"]), "one\n");
    let first = p.link("dep");
    p.write("data.txt", "two\n");
    let h2 = p.ok(&["_version_hash", "-s", "dep"]);
    assert_ne!(h1, h2);
    let stale = p.run(&["--no-build", "_run", "dep", "cat", "/d"]);
    assert_exit(
        &stale,
        29,
        &format!(
            "container \"dep\" is outdated (have {}, need {})",
            h1.trim(),
            h2.trim()
        ),
    );
    assert_eq!(p.ok(&["_run", "dep", "cat", "/d"]), "two\n");
    let second = p.link("dep");
    assert_ne!(first, second);
    assert!(
        p.path().join(".vagga").join(&first).is_dir(),
        "old version kept"
    );
}

#[test]
fn s02_no_op_check_reads_no_input_file() {
    needs_root!();
    if std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_err()
    {
        eprintln!("skipped: needs strace");
        return;
    }
    let p = Project::new("containers:\n  dep:\n    setup:\n    - !Depends data.txt\n");
    p.write("data.txt", "one\n");
    // Old enough not to be "racy" for the stat cache.
    let f = fs::File::options()
        .write(true)
        .open(p.path().join("data.txt"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
        .unwrap();
    p.ok(&["_version_hash", "-s", "dep"]);
    let out = std::process::Command::new("strace")
        .args([
            "-f",
            "-e",
            "trace=openat",
            env!("CARGO_BIN_EXE_vagga"),
            "_version_hash",
            "-s",
            "dep",
        ])
        .current_dir(p.path())
        .env("HOME", p.home.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let trace = String::from_utf8_lossy(&out.stderr);
    assert!(trace.contains("openat"), "strace printed nothing: {trace}");
    assert!(!trace.contains("data.txt"), "data.txt was opened:\n{trace}");
}

#[test]
fn s03_copy_modes_times_and_rules() {
    needs_root!();
    let p = Project::new(
        "containers:
  copy:
    setup:
    - !Tar {url: ./busybox.tar.gz}
    - !Copy {source: /work, path: /var/dir}
  strict:
    setup:
    - !Tar {url: ./busybox.tar.gz}
    - !Copy {source: /work, path: /var/dir, umask: 0o077, owner-uid: 1, owner-gid: 2}
",
    );
    p.write("hello", "hi\n");
    p.write("exe.sh", "#!/bin/sh\n");
    fs::set_permissions(p.path().join("exe.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(p.path().join("hello"), fs::Permissions::from_mode(0o644)).unwrap();
    p.write("subdir/file", "f\n");
    p.write(".git/x", "x\n");
    p.write("a~", "");
    p.ok(&["_build", "copy"]);
    let dir = p.path().join(".vagga/copy/var/dir");
    let mode = |rel: &str| fs::symlink_metadata(dir.join(rel)).unwrap().mode() & 0o7777;
    assert_eq!(mode(""), 0o775);
    assert_eq!(mode("subdir"), 0o775);
    assert_eq!(mode("hello"), 0o664);
    assert_eq!(mode("exe.sh"), 0o775);
    assert_eq!(fs::metadata(dir.join("hello")).unwrap().mtime(), 1);
    assert!(!dir.join(".git").exists());
    assert!(!dir.join("a~").exists());
    p.ok(&["_build", "strict"]);
    let dir = p.path().join(".vagga/strict/var/dir");
    let meta = fs::metadata(dir.join("hello")).unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o600, 1, 2)
    );
    assert_eq!(
        fs::metadata(dir.join("subdir")).unwrap().mode() & 0o7777,
        0o700
    );
}

#[test]
fn s04_tar_paths_empty_root_and_pack_image() {
    needs_root!();
    let p = Project::new(&format!(
        "{TEXT}  sub:
    setup:
    - !Tar {{url: ./busybox.tar.gz}}
    - !Tar {{url: ./sub.tar.gz, path: /opt}}
  empty:
    setup:
    - !Tar {{url: ./empty.tar.gz}}
  packed:
    setup:
    - !Tar {{url: ./i.tgz}}
"
    ));
    let src = p.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("sub/test"), "t").unwrap();
    fs::set_permissions(src.join("sub/test"), fs::Permissions::from_mode(0o775)).unwrap();
    fs::create_dir_all(p.path().join("emptysrc")).unwrap();
    for (archive, dir, what) in [
        ("sub.tar.gz", "src", "sub"),
        ("empty.tar.gz", "emptysrc", "."),
    ] {
        let status = std::process::Command::new("tar")
            .args(["-czf", archive, "-C", dir, what])
            .current_dir(p.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
    p.ok(&["_build", "sub"]);
    let mode = |rel: &str| {
        fs::metadata(p.path().join(".vagga/sub").join(rel))
            .unwrap()
            .mode()
            & 0o7777
    };
    assert_eq!(
        (mode("opt"), mode("opt/sub"), mode("opt/sub/test")),
        (0o755, 0o755, 0o775)
    );
    p.ok(&["_build", "empty"]);
    let mut entries: Vec<(String, u32)> = fs::read_dir(p.path().join(".vagga/empty"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().mode() & 0o7777,
            )
        })
        .collect();
    entries.sort();
    let expected: Vec<(String, u32)> = [
        ("dev", 0o755),
        ("etc", 0o755),
        ("proc", 0o755),
        ("run", 0o755),
        ("sys", 0o755),
        ("tmp", 0o1777),
        ("work", 0o755),
    ]
    .iter()
    .map(|(n, m)| (n.to_string(), *m))
    .collect();
    assert_eq!(entries, expected);
    p.ok(&["_pack_image", "-z", "-f", "i.tgz", "text"]);
    let listing = std::process::Command::new("tar")
        .args(["-tzvf", "i.tgz"])
        .current_dir(p.path())
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    assert!(listing.contains(" ./etc/shakespeare\n"), "{listing}");
    assert!(listing.contains(" ./dev/\n"), "{listing}");
    assert!(
        !listing
            .lines()
            .any(|l| l.starts_with('c') || l.starts_with('b')),
        "device nodes: {listing}"
    );
    assert_eq!(
        p.ok(&["_run", "packed", "cat", "/etc/shakespeare"]),
        "Sir, in my heart...\nThat would not let me sleep.\n"
    );
}

const SUPERVISE: &str = "containers:
  bb:
    setup:
    - !Tar {url: ./busybox.tar.gz}
    - !EnsureDir /srv
    volumes:
      /srv: !Persistent ff
commands:
  t: !Supervise
    mode: wait-all-successful
    children:
      first: !Command {container: bb, run: echo hello, tags: [a, b]}
      second: !Command {container: bb, run: echo world, tags: [a]}
      third: !Command {container: bb, run: 'echo \":)\"', tags: [b, c]}
  t2: !Supervise
    options: |
      Usage: vagga t2 [options]

      Options:
        --exit-code <code>  exit code
    children:
      dying: !Command
        container: bb
        run: |
          echo hello; echo world
          while [ ! -f /srv/flag ]; do sleep 0.1; done
          exit ${VAGGAOPT_EXIT_CODE:-0}
      hanging: !Command
        container: bb
        run: 'touch /srv/flag; sleep 60; echo \":(\"'
";

fn sorted_lines(s: &str) -> Vec<&str> {
    let mut v: Vec<&str> = s.lines().collect();
    v.sort();
    v
}

#[test]
fn s05_supervise_modes_and_selection() {
    needs_root!();
    let p = Project::new(SUPERVISE);
    assert_eq!(sorted_lines(&p.ok(&["t"])), [":)", "hello", "world"]);
    assert_eq!(sorted_lines(&p.ok(&["t", "--only", "first"])), ["hello"]);
    assert_eq!(sorted_lines(&p.ok(&["t", "--only", "c"])), [":)"]);
    assert_eq!(sorted_lines(&p.ok(&["t", "--exclude", "a"])), [":)"]);
    assert_eq!(
        sorted_lines(&p.ok(&["t", "--only", "first", "a"])),
        ["hello", "world"]
    );
    p.ok(&["_build", "bb"]);
    let start = Instant::now();
    let out = p.run(&["t2", "--exit-code", "1"]);
    let elapsed = start.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(sorted_lines(&stdout), ["hello", "world"], "{}", text(&out));
    // The hanging child is stopped, not waited for (it sleeps 60 s).
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
}

#[test]
fn s06_docopt_options() {
    needs_root!();
    let p = Project::new(
        "containers:
  bb:
    setup: [!Tar {url: ./busybox.tar.gz}]
commands:
  c: !Command
    container: bb
    options: \"Usage: vagga c [options]\\n\\nOptions:\\n  -v, --verbose  x\"
    run: 'echo Args: \"$@\"; echo Verbosity: $VAGGAOPT_VERBOSE'
",
    );
    assert_eq!(p.ok(&["c", "-vvvv", "--verbose"]), "Args:\nVerbosity: 5\n");
    assert_exit(&p.run(&["c", "--bad-arg"]), 121, "Usage: vagga c [options]");
    assert_exit(&p.run(&["c", "extra"]), 121, "Usage: vagga c [options]");
    let help = p.ok(&["c", "--help"]);
    assert!(help.contains("Usage: vagga c [options]"), "{help}");
}

#[test]
fn s07_prerequisites() {
    needs_root!();
    let p = Project::new(
        "containers:
  bb:
    setup: [!Tar {url: ./busybox.tar.gz}]
commands:
  one: !Command {container: bb, run: [echo, one]}
  two: !Command {container: bb, run: [echo, two], prerequisites: [one]}
  three: !Command {container: bb, run: [echo, three], prerequisites: [one]}
  four: !Command {container: bb, run: [echo, four], prerequisites: [two, three]}
",
    );
    assert_eq!(p.ok(&["four"]), "one\ntwo\nthree\nfour\n");
    assert_eq!(
        p.ok(&["-m", "three", "two", "four"]),
        "one\nthree\ntwo\nfour\n"
    );
    assert_eq!(p.ok(&["--no-prerequisites", "four"]), "four\n");
}

#[test]
fn s08_persistent_volume_init_command() {
    needs_root!();
    let p = Project::new(
        "containers:
  bb:
    setup:
    - !Tar {url: ./busybox.tar.gz}
    - !EnsureDir /mnt
    volumes:
      /mnt: !Persistent {name: hello, init-command: _init}
commands:
  _init: !Command
    container: bb
    run: 'echo world >> /mnt/hello.txt; test ! -f /work/fail'
  p: !Command {container: bb, run: cat /mnt/hello.txt}
",
    );
    let volume = p.path().join(".vagga/.volumes/hello");
    p.write("fail", "");
    let out = p.run(&["p"]);
    assert_exit(&out, 121, "init command _init failed");
    assert!(!volume.exists(), "a failed init left the volume");
    fs::remove_file(p.path().join("fail")).unwrap();
    assert_eq!(p.ok(&["p"]), "world\n");
    assert_eq!(p.ok(&["p"]), "world\n");
    assert!(volume.is_dir());
    p.ok(&["_clean", "--volumes"]);
    assert!(!volume.exists());
    assert_eq!(p.ok(&["p"]), "world\n");
}

#[test]
fn s09_environment_precedence() {
    needs_root!();
    let p = Project::new(
        "containers:
  sv:
    setup:
    - !Tar {url: ./busybox.tar.gz}
    - !Text {/etc/environ.txt: \"SHELL=/bin/sh\\n\"}
    environ-file: /etc/environ.txt
    environ: {EDITOR: vi, SHELL: /bin/bash}
commands:
  ed: !Command
    container: sv
    environ: {EDITOR: vim}
    run: echo $EDITOR
",
    );
    assert_eq!(p.ok(&["ed"]), "vim\n");
    let global = p.home.path().join(".vagga.yaml");
    fs::write(&global, "environ: {EDITOR: nvi}\n").unwrap();
    assert_eq!(p.ok(&["ed"]), "nvi\n");
    fs::write(
        &global,
        format!(
            "environ: {{EDITOR: nvi}}\nsite-settings:\n  {}:\n    environ: {{EDITOR: elvis}}\n",
            p.path().display()
        ),
    )
    .unwrap();
    assert_eq!(p.ok(&["ed"]), "elvis\n");
    p.write(".vagga/settings.yaml", "environ: {EDITOR: vile}\n");
    assert_eq!(p.ok(&["ed"]), "vile\n");
    let out = p
        .cmd(&["ed"])
        .env("VAGGAENV_EDITOR", "pico")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "pico\n");
    let out = p
        .cmd(&["-e", "EDITOR", "ed"])
        .env("VAGGAENV_EDITOR", "pico")
        .env("EDITOR", "nano")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "nano\n");
    let out = p
        .cmd(&["-E", "EDITOR=emacs", "-e", "EDITOR", "ed"])
        .env("EDITOR", "nano")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "emacs\n");
    assert!(
        p.ok(&["_run", "sv", "env"])
            .lines()
            .any(|l| l == "SHELL=/bin/bash")
    );
    assert_exit(&p.run(&["-e", "EDITOR=x", "ed"]), 122, "-E EDITOR=x");
}

#[test]
fn s10_tmpfs_snapshot_and_read_only_root() {
    needs_root!();
    let p = Project::new(
        "containers:
  v:
    setup:
    - !Tar {url: ./busybox.tar.gz}
    - !EnsureDir /var/t
    volumes:
      /var/t: !Tmpfs {subdirs: {x: , y: {mode: 0o700}}}
      /etc: !Snapshot
commands:
  st: !Command {container: v, run: stat -c %A /var/t /var/t/x /var/t/y}
  touch: !Command {container: v, run: touch /foo}
",
    );
    assert_eq!(p.ok(&["st"]), "drwxrwxrwt\ndrwxr-xr-x\ndrwx------\n");
    assert_eq!(
        p.ok(&["_run", "v", "sh", "-c", "echo x > /etc/x; cat /etc/x"]),
        "x\n"
    );
    let out = p.run(&["_run", "v", "cat", "/etc/x"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_exit(&p.run(&["touch"]), 1, "Read-only file system");
    let resolv = p.path().join(".vagga/v/etc/resolv.conf");
    assert_eq!(
        fs::metadata(resolv).unwrap().len(),
        0,
        "the image placeholder changed"
    );
}

#[test]
fn s11_network_isolation_and_socket_passing() {
    needs_root!();
    let p = Project::new(
        "containers:
  bb:
    setup: [!Tar {url: ./busybox.tar.gz}]
commands:
  iso: !Command {container: bb, isolate-network: true, run: [ip, link]}
  srv: !Command {container: bb, pass-tcp-socket: 18080, run: \"ls -l /proc/self/fd/3; sleep 5\"}
",
    );
    let links = p.ok(&["iso"]);
    assert_eq!(
        links.lines().filter(|l| !l.starts_with(' ')).count(),
        1,
        "{links}"
    );
    assert!(links.contains("lo:"), "{links}");
    let links = p.ok(&["--no-net", "_run", "bb", "ip", "link"]);
    assert_eq!(
        links.lines().filter(|l| !l.starts_with(' ')).count(),
        1,
        "{links}"
    );
    p.ok(&["_build", "bb"]);
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_vagga"))
        .arg("srv")
        .current_dir(p.path())
        .env("HOME", p.home.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut listening = false;
    while Instant::now() < deadline && !listening {
        let ss = std::process::Command::new("ss")
            .arg("-ltn")
            .output()
            .unwrap();
        listening = String::from_utf8_lossy(&ss.stdout).contains("127.0.0.1:18080");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(listening, "nothing listened on 127.0.0.1:18080");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("/proc/self/fd/3 -> socket:"), "{stdout}");
}

/// A user with subordinate ids from `first`, and the system files the test changes, restored
/// on drop.
struct TestUser {
    name: &'static str,
    first: u32,
    newuidmap_mode: u32,
}

/// Tests run in parallel and change system files their users share: each edits its own
/// user's line of `/etc/subuid` and `/etc/subgid`, and one takes the setuid bit off
/// `newuidmap` for a moment. Edits hold the lock exclusively (so one edit does not overwrite
/// another), users of `newuidmap` shared. The lock ends with the returned file.
fn lock_system_files(exclusive: bool) -> fs::File {
    let lock =
        fs::File::create(std::env::temp_dir().join("vagga-tests-system-files.lock")).unwrap();
    if exclusive {
        lock.lock().unwrap();
    } else {
        lock.lock_shared().unwrap();
    }
    lock
}

impl TestUser {
    fn create(name: &'static str, first: u32) -> TestUser {
        if isolation::user::user_id(name).ok().flatten().is_none() {
            let status = std::process::Command::new("useradd")
                .args(["-M", "-s", "/bin/sh", name])
                .status()
                .unwrap();
            assert!(status.success(), "useradd {name}");
        }
        let newuidmap_mode = {
            let _lock = lock_system_files(false);
            fs::metadata("/usr/bin/newuidmap").unwrap().mode() & 0o7777
        };
        let user = TestUser {
            name,
            first,
            newuidmap_mode,
        };
        user.set_range(65536);
        user
    }

    fn set_range(&self, count: u32) {
        let _lock = lock_system_files(true);
        for file in ["/etc/subuid", "/etc/subgid"] {
            let now = fs::read_to_string(file).unwrap_or_default();
            let mut lines: Vec<String> = now
                .lines()
                .filter(|l| !l.starts_with(&format!("{}:", self.name)))
                .map(str::to_owned)
                .collect();
            lines.push(format!("{}:{}:{count}", self.name, self.first));
            fs::write(file, lines.join("\n") + "\n").unwrap();
        }
    }

    fn command(&self, dir: &Path, bin: &Path, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new("runuser");
        cmd.args(["-u", self.name, "--"])
            .arg(bin)
            .args(args)
            .current_dir(dir)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("HOME", dir);
        cmd
    }

    fn run(&self, dir: &Path, bin: &Path, args: &[&str]) -> Output {
        self.command(dir, bin, args).output().unwrap()
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _lock = lock_system_files(true);
        let _ = fs::set_permissions(
            "/usr/bin/newuidmap",
            fs::Permissions::from_mode(self.newuidmap_mode),
        );
        // Keep other users' lines as they are now; drop only ours.
        for file in ["/etc/subuid", "/etc/subgid"] {
            let now = fs::read_to_string(file).unwrap_or_default();
            let kept: Vec<&str> = now
                .lines()
                .filter(|l| !l.starts_with(&format!("{}:", self.name)))
                .collect();
            let _ = fs::write(
                file,
                kept.join("\n") + if kept.is_empty() { "" } else { "\n" },
            );
        }
    }
}

/// A copy of vagga that every user may run (the target dir may be closed to them), in a
/// directory removed with the returned guard.
fn binary_for_users() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("vagga");
    fs::copy(env!("CARGO_BIN_EXE_vagga"), &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    (dir, bin)
}

#[test]
fn s12_unprivileged_user_with_subordinate_ids() {
    needs_root!();
    use std::io::BufRead;
    if !Path::new("/usr/bin/newuidmap").exists()
        || std::process::Command::new("runuser")
            .arg("--help")
            .output()
            .is_err()
    {
        eprintln!("skipped: needs newuidmap (uidmap) and runuser");
        return;
    }
    let user = TestUser::create("vaggatest", 200000);
    let uid = isolation::user::user_id(user.name).unwrap().unwrap();
    let yaml = String::from(
        "containers:
  c:
    setup:
    - !Tar {url: ./busybox.tar.gz}
    - !Sh \"mkdir /d && chown 1:1 /d\"
    - !RunAs {user-id: 1, group-id: 1, script: \"touch /d/f\"}
    - !Text {/www/x: \"hello\\n\"}
commands:
  c: !Command {container: c, user-id: 1, run: id -u}
  ext: !Command
    container: c
    user-id: 2
    external-user-id: 5
    volumes: {/d: !Snapshot }
    run: cat /proc/self/uid_map; stat -c %u /d/f
",
    ) + &shared_network_group("group", "c", 17778);
    let p = Project::new(&yaml);
    // The binary and the project must be reachable by the user.
    let (_bin_dir, bin) = binary_for_users();
    fs::set_permissions(p.path(), fs::Permissions::from_mode(0o755)).unwrap();
    for entry in fs::read_dir(p.path()).unwrap() {
        std::os::unix::fs::chown(entry.unwrap().path(), Some(uid), Some(uid)).unwrap();
    }
    std::os::unix::fs::chown(p.path(), Some(uid), Some(uid)).unwrap();

    let doctor = user.run(p.path(), &bin, &["_doctor"]);
    assert_eq!(doctor.status.code(), Some(0), "{}", text(&doctor));
    assert!(
        !String::from_utf8_lossy(&doctor.stdout).contains("FAIL"),
        "{}",
        text(&doctor)
    );
    let build = user.run(p.path(), &bin, &["_build", "c"]);
    assert_eq!(build.status.code(), Some(0), "{}", text(&build));
    let f = fs::metadata(p.path().join(".vagga/c/d/f")).unwrap();
    assert_eq!(
        (f.uid(), f.gid()),
        (200000, 200000),
        "inside uid 1 is the first subordinate id"
    );
    let busybox = fs::metadata(p.path().join(".vagga/c/bin/busybox")).unwrap();
    assert_eq!(busybox.uid(), uid, "inside uid 0 is the user");
    let run = user.run(p.path(), &bin, &["c"]);
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        "1\n",
        "{}",
        text(&run)
    );
    // external-user-id 5 of the build namespace is the user's 5th subordinate id, which
    // newuidmap allows; the snapshot is seeded by the unprivileged container itself.
    let run = user.run(p.path(), &bin, &["ext"]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run));
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(lines.contains(&vec!["2", "200004", "1"]), "{out}");
    assert_eq!(lines.last().unwrap(), &vec!["1"], "{out}");
    // The group shares one network namespace: the client reaches the server's loopback
    // port, which the host does not see.
    let mut group = user
        .command(p.path(), &bin, &["group"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(group.stdout.take().unwrap()).lines();
    let mut next_line = || lines.next().and_then(Result::ok).unwrap_or_default();
    let (first, second) = (next_line(), next_line());
    let host = std::net::TcpStream::connect(("127.0.0.1", 17778));
    let run = group.wait_with_output().unwrap();
    assert_eq!(
        (first.as_str(), second.as_str()),
        ("listening", "hello"),
        "{}",
        text(&run)
    );
    assert!(host.is_err(), "the host reached the group's port");
    assert_eq!(run.status.code(), Some(0), "{}", text(&run));
    assert!(
        !String::from_utf8_lossy(&run.stderr).contains("network namespace each"),
        "{}",
        text(&run)
    );

    let setuid_off = lock_system_files(true);
    fs::set_permissions(
        "/usr/bin/newuidmap",
        fs::Permissions::from_mode(user.newuidmap_mode & !0o4000),
    )
    .unwrap();
    let doctor = user.run(p.path(), &bin, &["_doctor"]);
    assert_exit(&doctor, 1, "sudo chmod u+s /usr/bin/newuidmap");
    assert_exit(&user.run(p.path(), &bin, &["c"]), 121, "newuidmap");
    fs::set_permissions(
        "/usr/bin/newuidmap",
        fs::Permissions::from_mode(user.newuidmap_mode),
    )
    .unwrap();
    drop(setuid_off);

    user.set_range(1000);
    assert_exit(
        &user.run(p.path(), &bin, &["c"]),
        121,
        "container needs 65535 subordinate uids but /etc/subuid gives vaggatest 1000",
    );
    // Files of subordinate ids are removed through the helper.
    user.set_range(65536);
    let clean = user.run(p.path(), &bin, &["_clean", "--everything"]);
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean));
    assert!(!p.path().join(".vagga/.roots").exists());
}

#[test]
fn bad_inputs_exit_codes_and_messages() {
    let p = Project::bare("containers:\n  app:\n    setup: []\n   bad: [\n");
    assert_exit(&p.run(&["_list"]), 126, "vagga.yaml:");
    let p = Project::bare("containers:\n  app:\n    setpu: []\n");
    assert_exit(
        &p.run(&["_list"]),
        126,
        "vagga.yaml:3:5: unknown key \"setpu\" in container \"app\"; expected one of: setup",
    );
    let p = Project::bare("containers:\n  app:\n    setup:\n    - !Sho echo\n");
    assert_exit(
        &p.run(&["_list"]),
        126,
        "vagga.yaml:4:7: unknown tag !Sho (did you mean !Sh?)",
    );
    let p = Project::bare(
        "containers:\n  app: {}\ncommands:\n  t: !Command\n    container: bbb\n    run: x\n",
    );
    assert_exit(
        &p.run(&["t"]),
        126,
        "vagga.yaml:5:16: command \"t\" uses unknown container \"bbb\"",
    );
    let p = Project::bare("minimum-vagga: v9999.0.0\nmixins: [m.yaml]\n");
    p.write("m.yaml", "minimum-vagga: v9999.0.0\n");
    let out = p.run(&["_list"]);
    assert_exit(&out, 126, "Please upgrade vagga to at least \"v9999.0.0\"");
    assert_eq!(text(&out).matches("Please upgrade").count(), 1);
    let p = Project::bare("containers:\n  app:\n    image-cache-url: http://x/img.tar\n");
    assert_exit(&p.run(&["_list"]), 126, "${short_hash}");
    let p = Project::bare(
        "containers:\n  app: {}\ncommands:\n  a: !Command {container: app, run: x}\n",
    );
    assert_exit(&p.run(&[]), 127, "Available commands:");
    assert_exit(&p.run(&["nosuch"]), 127, "Available commands:");
    assert_exit(&p.run(&["_clean"]), 122, "Usage: vagga _clean");
    let empty = tempfile::tempdir().unwrap();
    let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_vagga"))
        .arg("_list")
        .current_dir(empty.path())
        .output()
        .unwrap();
    assert_exit(&out, 126, "no vagga.yaml found in");
}

#[test]
fn bad_builds_and_volumes() {
    needs_root!();
    let p = Project::new(
        "containers:
  sum:
    setup: [!Tar {url: ./busybox.tar.gz, sha256: 0000}]
  fails:
    setup:
    - !Tar {url: ./busybox.tar.gz}
    - !Sh exit 2
  apt:
    setup:
    - !Tar {url: ./busybox.tar.gz}
    - !Install [curl]
  later:
    setup: [!Git {url: x, path: /y}]
  ubuntu:
    setup: [!Ubuntu jammy]
  cd:
    setup: [!Tar {url: ./busybox.tar.gz}]
    volumes:
      /tmp: !CacheDir ''
  cdabs:
    setup: [!Tar {url: ./busybox.tar.gz}]
    volumes:
      /tmp: !CacheDir /abs
  nomp:
    setup: [!Tar {url: ./busybox.tar.gz}]
    volumes:
      /nowhere: !Empty
",
    );
    assert_exit(
        &p.run(&["_build", "sum"]),
        121,
        "sha256 mismatch: expected 0000",
    );
    let out = p.run(&["_build", "fails"]);
    assert_exit(
        &out,
        121,
        "vagga.yaml:7:7: step !Sh failed with exit code 2; log: .vagga/.logs/fails.failed.log",
    );
    assert!(p.path().join(".vagga/.logs/fails.failed.log").is_file());
    assert!(
        !p.path().join(".vagga/fails").exists(),
        "a failed build left a link"
    );
    assert_exit(
        &p.run(&["_build", "apt"]),
        121,
        "!Install needs a Debian-based container",
    );
    assert_exit(
        &p.run(&["_build", "later"]),
        121,
        "!Git is not supported in this release",
    );
    assert_exit(
        &p.run(&["_build", "ubuntu"]),
        121,
        "!Ubuntu is not supported in this release",
    );
    assert_exit(
        &p.run(&["_run", "cd", "true"]),
        124,
        "path must not be empty",
    );
    assert_exit(
        &p.run(&["_run", "cdabs", "true"]),
        124,
        "path must not be absolute",
    );
    assert_exit(
        &p.run(&["_run", "nomp", "true"]),
        124,
        "add !EnsureDir /nowhere",
    );
    // Only the failed build's temporary dir is left; _clean --tmp removes it.
    p.ok(&["_clean", "--tmp"]);
    let leftovers: Vec<_> = fs::read_dir(p.path().join(".vagga/.roots"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp."))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn config_examples_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config-examples/vagga");
    let mut seen = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let project = entry.unwrap().path();
        if !project.join("vagga.yaml").is_file() {
            continue;
        }
        seen += 1;
        // The checkout may belong to another user (a container's uid, a CI runner's).
        let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_vagga"))
            .args(["--ignore-owner-check", "_dump_config"])
            .current_dir(&project)
            .env("HOME", &project)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            project.display(),
            text(&out)
        );
    }
    assert!(seen >= 3, "only {seen} examples in {}", dir.display());
}

/// The hosts the Debian scenario downloads from; `None` when all answer.
fn unreachable_host() -> Option<String> {
    use std::net::{TcpStream, ToSocketAddrs};
    for host in [
        "deb.debian.org:80",
        "pypi.org:443",
        "registry.npmjs.org:443",
    ] {
        let reachable = host.to_socket_addrs().ok().is_some_and(|mut addrs| {
            addrs.any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(5)).is_ok())
        });
        if !reachable {
            return Some(host.to_string());
        }
    }
    None
}

/// The `.deb` files of the apt cache, each with its inode: a download (even of a package
/// already there) makes a new file.
fn cached_debs(cache: &Path) -> std::collections::BTreeMap<String, u64> {
    fs::read_dir(cache)
        .map(|entries| {
            entries
                .map(|e| e.unwrap())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".deb"))
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    (name, e.metadata().unwrap().ino())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The scenario's vagga.yaml. `trust_host_cas` copies `host-ca/` (the host's local CAs) into
/// the image before `ca-certificates` is installed, and points node at the resulting bundle:
/// behind a TLS-intercepting proxy (as on some CI machines) pip and npm need it, exactly as a
/// user behind such a proxy would write it.
fn debian_yaml(trust_host_cas: bool) -> String {
    let trust = if trust_host_cas {
        "    - !Copy {source: /work/host-ca, path: /usr/local/share/ca-certificates}
    - !Env {NODE_EXTRA_CA_CERTS: /etc/ssl/certs/ca-certificates.crt}
"
    } else {
        ""
    };
    format!(
        "containers:
  base:
    setup:
    - !Debian bookworm
{trust}    - !Install [hello]
  full:
    setup:
    - !Container base
    - !Py3Install [six==1.16.0]
    - !Py3Requirements requirements.txt
    - !NpmInstall [semver@7.6.3]
    - !NpmDependencies
"
    )
}

/// The \"Extra\" scenario: a Debian root from debootstrap, apt, pip and npm packages usable at
/// run time, inputs of requirement files and package.json hashed, and a rebuild served from
/// `.vagga/.cache` alone. The project is kept under the target dir so that reruns reuse the
/// caches and images (the first run downloads ~150 MB).
#[test]
fn extra_debian_pip_npm_with_warm_caches() {
    needs_root!();
    if let Some(host) = unreachable_host() {
        eprintln!("skipped: needs Debian's archive, PyPI and npm; {host} is unreachable");
        return;
    }
    let has_debootstrap = ["/usr/sbin/debootstrap", "/sbin/debootstrap"]
        .iter()
        .any(|p| Path::new(p).is_file());
    if !has_debootstrap {
        eprintln!("skipped: needs debootstrap (apt-get install debootstrap; tests/run.sh does)");
        return;
    }
    let host_cas: Vec<PathBuf> = fs::read_dir("/usr/local/share/ca-certificates")
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    let p = Project::kept("vagga-debian", &debian_yaml(!host_cas.is_empty()));
    for ca in &host_cas {
        let copy = p.path().join("host-ca").join(ca.file_name().unwrap());
        fs::create_dir_all(copy.parent().unwrap()).unwrap();
        fs::copy(ca, copy).unwrap();
    }
    p.write("requirements.txt", "-r extra.txt\n");
    p.write("extra.txt", "toml==0.10.2\n");
    p.write(
        "package.json",
        "{\"name\": \"t\", \"dependencies\": {\"left-pad\": \"1.3.0\"}}\n",
    );
    let long = |args: &[&str]| {
        let out = p
            .cmd(args)
            .timeout(Duration::from_secs(1200))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "vagga {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    long(&["_build", "full"]);
    assert!(link_format(&p.link("full"), "full"), "{}", p.link("full"));
    assert_eq!(p.ok(&["_run", "full", "hello"]), "Hello, world!\n");
    let py = "import six, toml; print(six.__version__, toml.__version__)";
    assert_eq!(
        p.ok(&["_run", "full", "python3", "-c", py]),
        "1.16.0 0.10.2\n"
    );
    assert_eq!(p.ok(&["_run", "full", "semver", "1.2.3"]), "1.2.3\n");
    let js = "console.log(require('/usr/local/lib/node_modules/left-pad')('x', 3, '.'))";
    assert_eq!(p.ok(&["_run", "full", "node", "-e", js]), "..x\n");
    let meta = p.path().join(".vagga/full/..");
    let freeze = fs::read_to_string(meta.join("pip3-freeze.txt")).unwrap();
    assert!(freeze.contains("six==1.16.0") && freeze.contains("toml==0.10.2"));
    let list = fs::read_to_string(meta.join("npm-list.txt")).unwrap();
    assert!(list.contains("semver@7.6.3") && list.contains("left-pad@1.3.0"));

    // Nested requirement files and package.json are inputs (restored so reruns stay built).
    let hash = || p.ok(&["_version_hash", "-s", "full"]);
    let built = hash();
    p.write("extra.txt", "toml==0.10.1\n");
    assert_ne!(hash(), built, "editing extra.txt must change the hash");
    p.write("extra.txt", "toml==0.10.2\n");
    p.write("package.json", "{\"name\": \"t\", \"dependencies\": {}}\n");
    assert_ne!(hash(), built, "editing package.json must change the hash");
    assert_eq!(
        p.run(&["--no-build", "_run", "full", "true"]).status.code(),
        Some(29)
    );
    p.write(
        "package.json",
        "{\"name\": \"t\", \"dependencies\": {\"left-pad\": \"1.3.0\"}}\n",
    );
    assert_eq!(hash(), built);

    // Rebuilding the Debian root (debootstrap and apt) downloads no package again.
    let cache = p.path().join(".vagga/.cache/apt-cache");
    let before = cached_debs(&cache);
    assert!(!before.is_empty(), "no .deb cached in {}", cache.display());
    long(&["_build", "base", "--force"]);
    assert_eq!(
        cached_debs(&cache),
        before,
        "the warm rebuild downloaded packages"
    );
    assert_eq!(p.ok(&["_run", "base", "hello"]), "Hello, world!\n");

    unprivileged_debian_from_warm_cache(&cache);
}

/// `!Debian` as an ordinary user: debootstrap runs as root of the build's user namespace. The
/// project's apt cache starts as hard links to `warm_cache` (the root build's), so the
/// bootstrap downloads no package.
fn unprivileged_debian_from_warm_cache(warm_cache: &Path) {
    if !Path::new("/usr/bin/newuidmap").exists() {
        eprintln!("skipped the unprivileged !Debian build: needs newuidmap (uidmap)");
        return;
    }
    const FIRST_SUBORDINATE: u32 = 300000;
    let user = TestUser::create("vaggadeb", FIRST_SUBORDINATE);
    let uid = isolation::user::user_id(user.name).unwrap().unwrap();
    let p = Project::bare("containers:\n  deb:\n    setup:\n    - !Debian bookworm\n");
    let cache = p.path().join(".vagga/.cache/apt-cache");
    fs::create_dir_all(&cache).unwrap();
    for deb in cached_debs(warm_cache).keys() {
        let (from, to) = (warm_cache.join(deb), cache.join(deb));
        // The links stay root's: debootstrap only reads cached packages.
        if fs::hard_link(&from, &to).is_err() {
            fs::copy(&from, &to).unwrap();
        }
    }
    fs::set_permissions(p.path(), fs::Permissions::from_mode(0o755)).unwrap();
    for dir in [p.path().to_owned(), p.path().join("vagga.yaml")]
        .into_iter()
        .chain(cache.ancestors().take(3).map(Path::to_owned))
    {
        std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).unwrap();
    }
    let (_bin_dir, bin) = binary_for_users();
    let warm = cached_debs(&cache);

    let _uses_newuidmap = lock_system_files(false);
    let started = Instant::now();
    let build = user.run(p.path(), &bin, &["_build", "deb"]);
    assert_eq!(build.status.code(), Some(0), "{}", text(&build));
    eprintln!(
        "unprivileged !Debian bookworm from a warm cache: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        cached_debs(&cache),
        warm,
        "the bootstrap downloaded packages"
    );
    let run = user.run(
        p.path(),
        &bin,
        &["_run", "deb", "cat", "/etc/debian_version"],
    );
    assert_eq!(run.status.code(), Some(0), "{}", text(&run));
    assert!(
        String::from_utf8_lossy(&run.stdout).starts_with("12."),
        "{}",
        text(&run)
    );
    // Inside root is the user; the group mail (8) is the user's 8th subordinate id.
    let root = p.path().join(".vagga/deb");
    assert_eq!(
        fs::metadata(root.join("etc/debian_version")).unwrap().uid(),
        uid
    );
    assert_eq!(
        fs::metadata(root.join("var/mail")).unwrap().gid(),
        FIRST_SUBORDINATE + 7
    );
}
