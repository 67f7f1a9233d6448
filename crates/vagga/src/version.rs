//! Version hashes of containers: Blake2b-512 over the id ranges, every build step (a marker,
//! then its fields, then the contents of the files it names) and `data-dirs`.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use blake2::{Blake2b512, Digest};

use crate::config::{Config, ConfigError, Container, Step};
use crate::de::Located;
use crate::filter::{self, Filter, FilterError, VisitError};
use crate::statcache::{self, StatCache};
use crate::storage::Storage;
use crate::yaml::Pos;

/// A computed version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// 128 hex digits.
    pub full: String,
}

impl Version {
    /// The first 8 hex digits, used in directory names.
    pub fn short(&self) -> &str {
        &self.full[..8]
    }
}

/// Computing a version failed.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    /// An input file does not exist yet (a build may create it).
    #[error("{pos}: {} does not exist", path.display())]
    NotReady { pos: Pos, path: PathBuf },
    #[error("{pos}: read {}: {source}", path.display())]
    Read {
        pos: Pos,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{pos}: {source}")]
    Filter { pos: Pos, source: FilterError },
    #[error("{pos}: {message}")]
    BadPath { pos: Pos, message: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Feeds the hash and, for `--debug-versioning`, tells each item on stderr.
struct Feed {
    hasher: Blake2b512,
    debug: bool,
    dump: Option<Vec<u8>>,
}

impl Feed {
    fn raw(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        if let Some(d) = &mut self.dump {
            d.extend_from_slice(bytes);
        }
    }

    fn command(&mut self, name: &str) {
        if self.debug {
            eprintln!("COMMAND {name}");
        }
        self.raw(b"COMMAND\0");
        self.raw(name.as_bytes());
        self.raw(b"\0");
    }

    fn field(&mut self, key: &str, value: impl AsRef<[u8]>) {
        let value = value.as_ref();
        if self.debug {
            eprintln!("  {key} {}", String::from_utf8_lossy(value));
        }
        self.raw(key.as_bytes());
        self.raw(b"\0");
        self.raw(value);
        self.raw(b"\0");
    }

    /// A field already laid out as `key\0value\0`: the same bytes as `field` hashes.
    fn encoded(&mut self, field: &[u8]) {
        if self.debug {
            let text = String::from_utf8_lossy(field);
            let mut parts = text.split('\0');
            let key = parts.next().unwrap_or_default();
            eprintln!("  {key} {}", parts.next().unwrap_or_default());
        }
        self.raw(field);
    }

    fn opt(&mut self, key: &str, value: Option<impl AsRef<[u8]>>) {
        match value {
            Some(v) => self.field(key, v),
            None => self.field(key, b"\x01none"),
        }
    }

    fn list(&mut self, key: &str, items: &[String]) {
        self.field(key, items.len().to_string());
        for item in items {
            self.field(key, item);
        }
    }

    fn map(&mut self, key: &str, items: &BTreeMap<String, String>) {
        self.field(key, items.len().to_string());
        for (k, v) in items {
            self.field(key, k);
            self.field(key, v);
        }
    }
}

/// Computes versions of a project's containers, each once.
pub struct Versioner<'a> {
    config: &'a Config,
    storage: &'a Storage,
    pub debug: bool,
    pub dump: bool,
    pub use_stat_cache: bool,
    done: BTreeMap<String, Version>,
    /// The raw hashed bytes of the last container (for `--dump-version-data`).
    pub dumped: Vec<u8>,
    /// Files whose content was read by the last computation.
    pub files_hashed: usize,
}

impl std::fmt::Debug for Versioner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Versioner")
            .field("done", &self.done)
            .finish()
    }
}

/// Where a path named by a step lives on the host: under the project for `/work/...` and
/// relative paths.
pub fn project_path(root: &Path, path: &str, pos: &Pos) -> Result<PathBuf, VersionError> {
    let rel = if let Some(rest) = path.strip_prefix("/work") {
        if !(rest.is_empty() || rest.starts_with('/')) {
            return Err(VersionError::BadPath {
                pos: pos.clone(),
                message: format!("{path} is not under /work"),
            });
        }
        rest.trim_start_matches('/')
    } else if path.starts_with('/') {
        return Err(VersionError::BadPath {
            pos: pos.clone(),
            message: format!("{path} is not under /work"),
        });
    } else {
        path.trim_start_matches("./")
    };
    if rel.split('/').any(|p| p == "..") {
        return Err(VersionError::BadPath {
            pos: pos.clone(),
            message: format!("{path} leaves the project with \"..\""),
        });
    }
    Ok(if rel.is_empty() {
        root.to_owned()
    } else {
        root.join(rel)
    })
}

impl<'a> Versioner<'a> {
    pub fn new(config: &'a Config, storage: &'a Storage) -> Versioner<'a> {
        Versioner {
            config,
            storage,
            debug: false,
            dump: false,
            use_stat_cache: true,
            done: BTreeMap::new(),
            dumped: Vec::new(),
            files_hashed: 0,
        }
    }

    /// The version of container `name` (its dependencies' versions are part of it).
    pub fn version(&mut self, name: &str) -> Result<Version, VersionError> {
        if let Some(v) = self.done.get(name) {
            return Ok(v.clone());
        }
        // Cycles are reported as config errors before any hashing.
        self.config.dependency_order(name)?;
        let config = self.config;
        let entry = &config.containers[name];
        let cache_path = self
            .use_stat_cache
            .then(|| self.storage.statcache.join(name));
        let mut cache = StatCache::load(cache_path);
        let mut feed = Feed {
            hasher: Blake2b512::new(),
            debug: self.debug,
            dump: self.dump.then(Vec::new),
        };
        let result = self.feed_container(&entry.def, &mut feed, &mut cache);
        self.files_hashed = cache.hashed;
        let config_digest = hex::encode(&Blake2b512::digest(entry.node.to_yaml().as_bytes())[..16]);
        cache.save(&config_digest);
        result?;
        let version = Version {
            full: hex::encode(feed.hasher.finalize()),
        };
        if let Some(d) = feed.dump {
            self.dumped = d;
        }
        self.done.insert(name.to_owned(), version.clone());
        Ok(version)
    }

    fn feed_container(
        &mut self,
        c: &Container,
        feed: &mut Feed,
        cache: &mut StatCache,
    ) -> Result<(), VersionError> {
        feed.field(
            "uids",
            c.uids
                .0
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(","),
        );
        feed.field(
            "gids",
            c.gids
                .0
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(","),
        );
        for step in &c.setup {
            self.feed_step(step, feed, cache)?;
        }
        if let Some(dirs) = &c.data_dirs {
            feed.list("data-dirs", dirs);
        }
        Ok(())
    }

    fn feed_step(
        &mut self,
        step: &Located<Step>,
        feed: &mut Feed,
        cache: &mut StatCache,
    ) -> Result<(), VersionError> {
        let pos = &step.pos;
        let root = &self.config.root;
        feed.command(step.value.name());
        match &step.value {
            Step::Tar(t) => {
                feed.field("url", &t.url);
                feed.opt("sha256", t.sha256.as_ref());
                feed.field("path", &t.path);
                feed.field("subdir", &t.subdir);
                if t.sha256.is_none() && !is_remote(&t.url) {
                    let file = project_path(root, &t.url, pos)?;
                    let digest = file_digest(&file, pos, cache)?;
                    feed.field("content", digest);
                }
            }
            Step::Debian(d) => {
                feed.field("suite", &d.suite);
                feed.opt("arch", d.arch.as_ref());
                feed.opt("variant", d.variant.as_ref());
                feed.opt("components", d.components.as_ref().map(|c| c.join(",")));
                feed.list("include", &d.include);
            }
            Step::Install(p) | Step::BuildDeps(p) | Step::Py3Install(p) | Step::NpmInstall(p) => {
                feed.list("packages", p)
            }
            Step::Sh(s) => feed.field("script", s),
            Step::Cmd(argv) => feed.list("argv", argv),
            Step::RunAs(r) => {
                feed.field("script", &r.script);
                feed.field("user-id", r.user_id.to_string());
                feed.field("group-id", r.group_id.to_string());
                feed.opt(
                    "external-user-id",
                    r.external_user_id.map(|u| u.to_string()),
                );
                feed.field("supplementary-gids", format!("{:?}", r.supplementary_gids));
                feed.field("work-dir", &r.work_dir);
                feed.field("isolate-network", r.isolate_network.to_string());
            }
            Step::Env(m) | Step::Text(m) | Step::CacheDirs(m) => feed.map("items", m),
            Step::Copy(c) => {
                feed.field("source", &c.source);
                feed.field("path", &c.path);
                feed.opt("owner-uid", c.owner_uid.map(|u| u.to_string()));
                feed.opt("owner-gid", c.owner_gid.map(|u| u.to_string()));
                feed.field("umask", format!("{:o}", c.umask));
                feed.field("preserve-permissions", c.preserve_permissions.to_string());
                feed.field("preserve-times", c.preserve_times.to_string());
                feed.opt("ignore-regex", c.ignore_regex.as_ref());
                feed.opt("include-regex", c.include_regex.as_ref());
                feed.opt("rules", c.rules.as_ref().map(|r| r.join("\n")));
                feed.field("no-default-rules", c.no_default_rules.to_string());
                // A source inside the image being built is covered by the steps before it.
                if c.source.starts_with("/work") {
                    let filter = Filter::new(
                        c.ignore_regex.as_deref(),
                        c.include_regex.as_deref(),
                        c.rules.as_deref(),
                        c.no_default_rules,
                    )
                    .map_err(|source| VersionError::Filter {
                        pos: pos.clone(),
                        source,
                    })?;
                    let src = project_path(root, &c.source, pos)?;
                    let owner = c.owner_uid.is_none() || c.owner_gid.is_none();
                    feed_tree(
                        &src,
                        &filter,
                        c.preserve_permissions,
                        owner,
                        pos,
                        feed,
                        cache,
                    )?;
                }
            }
            Step::Depends(d) => {
                feed.field("path", &d.path);
                let filter = Filter::new(None, None, d.rules.as_deref(), d.no_default_rules)
                    .map_err(|source| VersionError::Filter {
                        pos: pos.clone(),
                        source,
                    })?;
                let src = project_path(root, &d.path, pos)?;
                feed_tree(&src, &filter, false, false, pos, feed, cache)?;
            }
            Step::Remove(p) | Step::EnsureDir(p) | Step::EmptyDir(p) => feed.field("path", p),
            Step::Container(name) => {
                let v = self.version(name)?;
                feed.field("container", name);
                feed.field("version", &v.full);
            }
            Step::Build(b) => {
                let v = self.version(&b.container)?;
                feed.field("container", &b.container);
                feed.field("version", &v.full);
                feed.field("source", &b.source);
                feed.opt("path", b.path.as_ref());
                feed.opt("temporary-mount", b.temporary_mount.as_ref());
                feed.opt("rules", b.rules.as_ref().map(|r| r.join("\n")));
            }
            Step::PipConfig(p) => feed.field("config", format!("{p:?}")),
            Step::NpmConfig(n) => feed.field("config", format!("{n:?}")),
            Step::Py3Requirements(file) => {
                let file = file.as_deref().unwrap_or("requirements.txt");
                feed.field("file", file);
                let path = project_path(root, file, pos)?;
                let mut seen = Vec::new();
                feed_requirements(&path, pos, feed, cache, &mut seen)?;
            }
            Step::NpmDependencies(d) => {
                let d = d.clone().unwrap_or_default();
                feed.field("file", &d.file);
                feed.field(
                    "flags",
                    format!(
                        "{} {} {} {} {}",
                        d.package, d.dev, d.peer, d.bundled, d.optional
                    ),
                );
                let path = project_path(root, &d.file, pos)?;
                let digest = file_digest(&path, pos, cache)?;
                feed.field("content", digest);
            }
            // Steps of later releases fail at build time; their names are hashed.
            _ => {}
        }
        Ok(())
    }
}

/// Whether a `!Tar` url is downloaded rather than a local file.
pub fn is_remote(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

fn file_digest(path: &Path, pos: &Pos, cache: &mut StatCache) -> Result<String, VersionError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(VersionError::NotReady {
                pos: pos.clone(),
                path: path.to_owned(),
            });
        }
        Err(source) => {
            return Err(VersionError::Read {
                pos: pos.clone(),
                path: path.to_owned(),
                source,
            });
        }
    };
    cache
        .digest(path, &meta)
        .map(|d| statcache::to_hex(&d))
        .map_err(|source| VersionError::Read {
            pos: pos.clone(),
            path: path.to_owned(),
            source,
        })
}

fn feed_tree(
    src: &Path,
    filter: &Filter,
    permissions: bool,
    owner: bool,
    pos: &Pos,
    feed: &mut Feed,
    cache: &mut StatCache,
) -> Result<(), VersionError> {
    if std::fs::symlink_metadata(src).is_err() {
        return Err(VersionError::NotReady {
            pos: pos.clone(),
            path: src.to_owned(),
        });
    }
    // One buffer for every entry's `/<rel>\0<item>\0`, hashed with one update.
    let mut field: Vec<u8> = Vec::with_capacity(256);
    let visited = filter::visit(src, filter, |e| {
        let read_error = |source| VersionError::Read {
            pos: pos.clone(),
            path: e.path.to_owned(),
            source,
        };
        field.clear();
        field.push(b'/');
        field.extend_from_slice(e.rel.as_bytes());
        field.push(0);
        let kind = e.meta.file_type();
        if kind.is_dir() {
            field.extend_from_slice(b"dir");
        } else if kind.is_symlink() {
            let target = std::fs::read_link(e.path).map_err(read_error)?;
            let _ = write!(field, "symlink {}", target.display());
        } else if kind.is_file() {
            let digest = cache.digest(e.path, e.meta).map_err(read_error)?;
            field.extend_from_slice(if filter::is_executable(e.meta) {
                b"file true "
            } else {
                b"file false "
            });
            statcache::push_hex(&mut field, &digest);
        } else {
            field.extend_from_slice(b"special");
        }
        if permissions {
            let _ = write!(field, " mode {:o}", e.meta.mode() & 0o7777);
        }
        if owner {
            field.extend_from_slice(b" owner ");
            push_decimal(&mut field, e.meta.uid());
            field.push(b':');
            push_decimal(&mut field, e.meta.gid());
        }
        field.push(0);
        feed.encoded(&field);
        Ok(())
    });
    visited.map_err(|e| match e {
        VisitError::Walk(source) => VersionError::Filter {
            pos: pos.clone(),
            source,
        },
        VisitError::Visitor(e) => e,
    })
}

/// Appends `n` in decimal, as `Display` writes it, without the formatting machinery (this
/// runs per file of every version check).
fn push_decimal(out: &mut Vec<u8>, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// A requirements file and the `-r`/`-c` files it names, each once.
fn feed_requirements(
    path: &Path,
    pos: &Pos,
    feed: &mut Feed,
    cache: &mut StatCache,
    seen: &mut Vec<PathBuf>,
) -> Result<(), VersionError> {
    if seen.iter().any(|s| s == path) {
        return Ok(());
    }
    seen.push(path.to_owned());
    let digest = file_digest(path, pos, cache)?;
    feed.field(&path.display().to_string(), digest);
    let text = std::fs::read_to_string(path).map_err(|source| VersionError::Read {
        pos: pos.clone(),
        path: path.to_owned(),
        source,
    })?;
    for nested in nested_requirements(&text) {
        let nested = path.parent().unwrap_or(Path::new(".")).join(nested);
        feed_requirements(&nested, pos, feed, cache, seen)?;
    }
    Ok(())
}

/// Files named by `-r`, `-c`, `--requirement` and `--constraint` lines.
pub fn nested_requirements(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        for prefix in ["-r", "-c", "--requirement", "--constraint"] {
            if let Some(rest) = line.strip_prefix(prefix)
                && (rest.starts_with([' ', '=', '\t'])
                    || (prefix.len() == 2 && !rest.is_empty() && !rest.starts_with('-')))
            {
                let name = rest.trim_start_matches([' ', '=', '\t']).trim();
                if !name.is_empty() {
                    out.push(name.to_owned());
                }
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statcache::tests::aged_file;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn test_pos() -> Pos {
        Pos {
            file: std::sync::Arc::new("vagga.yaml".into()),
            line: 1,
            col: 1,
        }
    }

    /// The hash `feed_tree` gives `dir` through the stat cache at `cache` (kept between calls),
    /// checked against the hash without any cache, and how many files it read.
    fn tree_hash(dir: &Path, cache: &Path) -> (Vec<u8>, usize) {
        let filter = Filter::new(None, None, None, false).unwrap();
        let run = |cache_path: Option<PathBuf>| {
            let mut cache = StatCache::load(cache_path);
            let mut feed = Feed {
                hasher: Blake2b512::new(),
                debug: false,
                dump: None,
            };
            feed_tree(dir, &filter, true, true, &test_pos(), &mut feed, &mut cache).unwrap();
            let hashed = cache.hashed;
            cache.save("cfg");
            (feed.hasher.finalize().to_vec(), hashed)
        };
        let (cached, hashed) = run(Some(cache.to_owned()));
        assert_eq!(cached, run(None).0, "the cache changed the hash");
        (cached, hashed)
    }

    #[test]
    fn the_stat_cache_sees_every_change_to_a_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        let tree = tmp.path().join("tree");
        for dir in ["a", "b"] {
            fs::create_dir_all(tree.join(dir)).unwrap();
            for i in 1..=4 {
                aged_file(&tree.join(dir), &i.to_string(), &format!("{dir}{i}"));
            }
        }
        aged_file(&tree, "top", "top");
        let (mut last, hashed) = tree_hash(&tree, &cache);
        assert_eq!(hashed, 9);
        assert_eq!(tree_hash(&tree, &cache), (last.clone(), 0));

        type Edit = fn(&Path);
        let edits: [(&str, Edit, Option<usize>); 7] = [
            (
                "same size, mtime put back",
                |t| {
                    let f = t.join("a/2");
                    let mtime = fs::metadata(&f).unwrap().modified().unwrap();
                    fs::write(&f, "A2").unwrap();
                    fs::File::options()
                        .write(true)
                        .open(&f)
                        .unwrap()
                        .set_modified(mtime)
                        .unwrap();
                },
                Some(1),
            ),
            (
                "a deleted file",
                |t| fs::remove_file(t.join("a/3")).unwrap(),
                Some(0),
            ),
            (
                "a new file in a dir",
                |t| {
                    aged_file(&t.join("b"), "5", "b5");
                },
                Some(1),
            ),
            (
                "a renamed file",
                |t| fs::rename(t.join("b/2"), t.join("b/9")).unwrap(),
                None,
            ),
            (
                "a file replaced by a dir",
                |t| {
                    fs::remove_file(t.join("a/1")).unwrap();
                    fs::create_dir(t.join("a/1")).unwrap();
                    aged_file(&t.join("a/1"), "inner", "a1");
                },
                Some(1),
            ),
            (
                "an execute bit",
                |t| fs::set_permissions(t.join("b/1"), fs::Permissions::from_mode(0o755)).unwrap(),
                None,
            ),
            (
                "a permission without execute bits",
                |t| fs::set_permissions(t.join("top"), fs::Permissions::from_mode(0o600)).unwrap(),
                None,
            ),
        ];
        for (what, edit, expect_hashed) in edits {
            edit(&tree);
            let (now, hashed) = tree_hash(&tree, &cache);
            assert_ne!(now, last, "{what}: the hash did not change");
            if let Some(n) = expect_hashed {
                assert_eq!(hashed, n, "{what}: files read");
            }
            // The cache saved by that check holds: the next one reads nothing.
            assert_eq!(tree_hash(&tree, &cache), (now.clone(), 0), "{what}: again");
            last = now;
        }
    }

    #[test]
    fn decimals_are_what_display_writes() {
        for n in [0, 7, 10, 65534, 100000, u32::MAX] {
            let mut out = b"x".to_vec();
            push_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

    #[test]
    fn nested_requirement_lines() {
        let text = "flask\n-r extra.txt\n--constraint=c.txt\n-rmore.txt\n# -r no\n";
        assert_eq!(
            nested_requirements(text),
            ["extra.txt", "c.txt", "more.txt"]
        );
    }

    #[test]
    fn project_paths_stay_in_the_project() {
        let pos = test_pos();
        let root = Path::new("/p");
        assert_eq!(project_path(root, "./a", &pos).unwrap(), Path::new("/p/a"));
        assert_eq!(
            project_path(root, "/work/a", &pos).unwrap(),
            Path::new("/p/a")
        );
        assert_eq!(project_path(root, "/work", &pos).unwrap(), Path::new("/p"));
        assert!(project_path(root, "/etc/x", &pos).is_err());
        assert!(project_path(root, "/workx", &pos).is_err());
        assert!(project_path(root, "../x", &pos).is_err());
    }
}
