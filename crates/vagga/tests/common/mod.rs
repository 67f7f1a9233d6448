//! What the tests of the real `vagga` binary share: root checks, the busybox tarball (from
//! tests/fixtures/busybox-rootfs.sh, then `tar -czf`) and throw-away projects.
// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::Duration;

pub fn is_root() -> bool {
    isolation::user::effective_uid() == 0
}

macro_rules! needs_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

/// `busybox.tar.gz`, built once per target dir (a lock serialises parallel test processes).
pub fn busybox_tarball() -> &'static Path {
    static TARBALL: OnceLock<PathBuf> = OnceLock::new();
    TARBALL.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let tarball = dir.join("vagga-busybox.tar.gz");
        let lock = fs::File::create(dir.join("vagga-busybox.lock")).unwrap();
        lock.lock().unwrap();
        if !tarball.exists() {
            let rootfs = dir.join("vagga-busybox-rootfs");
            let script = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/fixtures/busybox-rootfs.sh");
            let status = std::process::Command::new("bash")
                .arg(script)
                .arg(&rootfs)
                .status()
                .unwrap();
            assert!(status.success(), "busybox-rootfs.sh failed");
            let tmp = dir.join("vagga-busybox.tar.gz.tmp");
            let status = std::process::Command::new("tar")
                .arg("-czf")
                .arg(&tmp)
                .arg("-C")
                .arg(&rootfs)
                .arg(".")
                .status()
                .unwrap();
            assert!(status.success());
            fs::rename(&tmp, &tarball).unwrap();
        }
        tarball
    })
}

/// A project directory with the tarball and a vagga.yaml; HOME is a separate empty dir.
pub struct Project {
    pub root: PathBuf,
    /// Removes a temporary project when dropped; `None` for a kept one (see `Project::kept`).
    _temporary: Option<tempfile::TempDir>,
    pub home: tempfile::TempDir,
}

impl Project {
    pub fn new(yaml: &str) -> Project {
        let p = Project::bare(yaml);
        fs::copy(busybox_tarball(), p.path().join("busybox.tar.gz")).unwrap();
        p
    }

    /// Without the tarball, for tests that build nothing.
    pub fn bare(yaml: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("vagga.yaml"), yaml).unwrap();
        Project {
            root: dir.path().to_path_buf(),
            _temporary: Some(dir),
            home: tempfile::tempdir().unwrap(),
        }
    }

    /// A project kept on the machine between test runs, so that its `.vagga/.cache` (and its
    /// images) make the next run fast. CI runs in a fresh clone each time, so the default is
    /// outside the work tree; `VAGGA_TEST_CACHE` moves it.
    pub fn kept(name: &str, yaml: &str) -> Project {
        let base = std::env::var_os("VAGGA_TEST_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp/deploy-stack-tests"));
        let root = base.join(name);
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join("vagga.yaml"), yaml).unwrap();
        Project {
            root,
            _temporary: None,
            home: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    pub fn cmd(&self, args: &[&str]) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::new(env!("CARGO_BIN_EXE_vagga"));
        c.args(args)
            .current_dir(self.path())
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("HOME", self.home.path())
            .timeout(Duration::from_secs(120));
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs and expects exit 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(0), "vagga {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn link(&self, name: &str) -> String {
        fs::read_link(self.path().join(".vagga").join(name))
            .unwrap()
            .display()
            .to_string()
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn assert_exit(out: &Output, code: i32, needle: &str) {
    assert_eq!(out.status.code(), Some(code), "{}", text(out));
    let all = text(out);
    assert!(all.contains(needle), "expected {needle:?} in {all}");
}

pub fn link_format(link: &str, name: &str) -> bool {
    let re = regex::Regex::new(&format!(r"^\.roots/{name}\.[0-9a-f]{{8}}/root$")).unwrap();
    re.is_match(link)
}

/// A `!Supervise` command `name` with `isolate-network`: a server child answering `hello` on
/// `127.0.0.1:PORT/x` (the container needs `/www/x`), and a client child that fetches it and
/// keeps the group up two seconds more, for the host to try the port.
pub fn shared_network_group(name: &str, container: &str, port: u16) -> String {
    format!(
        "  {name}: !Supervise
    isolate-network: true
    children:
      server: !Command {{container: {container}, run: 'echo listening; exec httpd -f -p 127.0.0.1:{port} -h /www'}}
      client: !Command
        container: {container}
        run: |
          for i in $(seq 100); do
            wget -q -O - http://127.0.0.1:{port}/x && sleep 2 && exit 0
            sleep 0.1
          done
          exit 1
"
    )
}
