//! Run-time features beyond the acceptance scenarios, on the real `vagga` binary: seeded,
//! size-limited tmpfs volumes, the network namespace a `!Supervise` group shares, and
//! `external-user-id`. Containers need root: as another user these tests say they were skipped.

#[macro_use]
mod common;
use common::*;

const VOLUMES: &str = "containers:
  v:
    setup:
    - !Tar {url: ./busybox.tar.gz}
    - !Text {/var/s/seed: \"from image\\n\"}
    - !EnsureDir /var/f
    volumes:
      /var/s: !Snapshot {size: 1Mi, owner-uid: 1}
      /var/f: !Tmpfs {size: 1Mi, mode: 0o750, subdirs: {d: }, files: {d/hello: \"hi\\n\"}}
commands:
  fill: !Command
    container: v
    run: |
      df -k /var/s /var/f | sed 1d | cut -c1-5
      cat /var/s/seed /var/f/d/hello
      stat -c '%u %a' /var/s/seed /var/f
      echo changed > /var/s/seed
      dd if=/dev/zero of=/var/s/big bs=1024 count=2048 2>&1 | grep -c 'No space left'
      dd if=/dev/zero of=/var/f/big bs=1024 count=2048 2>&1 | grep -c 'No space left'
  both: !Supervise
    mode: wait-all
    children:
      one: !Command {container: v, run: 'echo one > /var/s/who; sleep 1; cat /var/s/who'}
      two: !Command {container: v, run: 'echo two > /var/s/who; sleep 1; cat /var/s/who'}
";

#[test]
fn snapshot_and_tmpfs_files_are_seeded_size_limited_tmpfs() {
    needs_root!();
    let p = Project::new(VOLUMES);
    let out = p.ok(&["fill"]);
    assert_eq!(
        out, "tmpfs\ntmpfs\nfrom image\nhi\n1 644\n0 750\n1\n1\n",
        "{out}"
    );
    // Writes vanished with the container; the image is untouched.
    assert_eq!(p.ok(&["_run", "v", "cat", "/var/s/seed"]), "from image\n");
    assert_eq!(
        std::fs::read_to_string(p.path().join(".vagga/v/var/s/seed")).unwrap(),
        "from image\n"
    );
    // Each child of a supervise group has a snapshot of its own.
    let mut lines: Vec<_> = p.ok(&["both"]).lines().map(str::to_owned).collect();
    lines.sort();
    assert_eq!(lines, ["one", "two"]);
    // Nothing is left in .transient after the runs.
    let transient = p.path().join(".vagga/.transient");
    let left: Vec<_> = std::fs::read_dir(&transient)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter().all(|n| n.to_string_lossy().starts_with('.')),
        "{left:?}"
    );
}

#[test]
fn supervise_children_share_one_isolated_network() {
    needs_root!();
    use std::io::BufRead;
    let p = Project::new(&format!(
        "containers:
  bb:
    setup:
    - !Tar {{url: ./busybox.tar.gz}}
    - !Text {{/www/x: \"hello\\n\"}}
commands:
{}",
        shared_network_group("pair", "bb", 17777)
    ));
    p.ok(&["_build", "bb"]);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vagga"))
        .arg("pair")
        .current_dir(p.path())
        .env("HOME", p.home.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "listening");
    assert_eq!(lines.next().unwrap().unwrap(), "hello");
    // The server's port lives in the group's namespace, not on the host.
    let host = std::net::TcpStream::connect(("127.0.0.1", 17777));
    assert!(host.is_err(), "the host reached the group's port");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn external_user_id_maps_the_user_to_an_id_outside() {
    needs_root!();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let p = Project::new(
        "containers:
  c:
    setup:
    - !Tar {url: ./busybox.tar.gz}
    - !EnsureDir /d
    - !RunAs {user-id: 1, external-user-id: 1000, script: \"touch /work/built\"}
commands:
  c: !Command
    container: c
    user-id: 1
    external-user-id: 1001
    run: id -u; touch /work/ran
  root: !Command {container: c, external-user-id: 0, user-id: 1, run: 'true'}
",
    );
    // uid 1 inside and its outside ids are not the project's owner.
    std::fs::set_permissions(p.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    assert_eq!(p.ok(&["c"]), "1\n");
    let owner = |f: &str| std::fs::metadata(p.path().join(f)).unwrap().uid();
    assert_eq!(owner("built"), 1000);
    assert_eq!(owner("ran"), 1001);
    // The namespace's root cannot be given away.
    assert_exit(&p.run(&["root"]), 121, "build namespace's root");
}

#[test]
fn clean_global_removes_what_projects_left_in_the_storage_dir() {
    needs_root!();
    let storage = tempfile::tempdir().unwrap();
    let yaml = "containers:\n  c:\n    setup: [!Tar {url: ./busybox.tar.gz}]\n";
    let kept = Project::new(yaml);
    let gone = Project::new(yaml);
    for p in [&kept, &gone] {
        std::fs::write(
            p.home.path().join(".vagga.yaml"),
            format!("storage-dir: {}\n", storage.path().display()),
        )
        .unwrap();
        p.ok(&["_build", "c"]);
    }
    let version = |p: &Project| {
        let link = std::fs::read_link(p.path().join(".vagga/c")).unwrap();
        link.parent().unwrap().to_owned()
    };
    let (kept_version, gone_version) = (version(&kept), version(&gone));
    assert!(kept_version.starts_with(storage.path()), "{kept_version:?}");
    std::fs::remove_dir_all(gone.path()).unwrap();

    let listed = kept.ok(&["_clean", "--global", "--unused", "--dry-run"]);
    assert_eq!(
        listed,
        format!("would remove {}\n", gone_version.display()),
        "{listed}"
    );
    kept.ok(&["_clean", "--global", "--unused"]);
    assert!(!gone_version.exists());
    assert!(kept_version.is_dir());
    assert_eq!(kept.ok(&["_run", "c", "echo", "still"]), "still\n");

    // Without storage-dir there is nothing global to clean.
    let alone = Project::bare(yaml);
    assert_exit(
        &alone.run(&["_clean", "--global", "--old"]),
        122,
        "needs storage-dir",
    );
}
