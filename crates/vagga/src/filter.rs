//! Which files of a tree `!Copy` and `!Depends` take: the ignore/include regexes or the glob
//! rules, and the walk that lists the chosen files in sorted order.

use std::collections::{HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use globset::{Glob, GlobMatcher};
use regex::Regex;

/// The default `ignore-regex`: version-control dirs, `.vagga`, editor backups.
pub const DEFAULT_IGNORE: &str = r"(^|/)\.(git|hg|svn|vagga)($|/)|~$|\.bak$|\.orig$|^#.*#$";

/// Rules added unless `no-default-rules` is set (the same files as the default regex).
const DEFAULT_RULES: &[&str] = &[
    "!.git", "!.hg", "!.svn", "!.vagga", "!*~", "!*.bak", "!*.orig", "!#*#",
];

/// A rule or regex that does not compile.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("bad regex {pattern:?}: {source}")]
    Regex {
        pattern: String,
        source: regex::Error,
    },
    #[error("bad rule {pattern:?}: {source}")]
    Glob {
        pattern: String,
        source: globset::Error,
    },
    #[error("read {}: {source}", path.display())]
    Walk {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug)]
pub struct Rule {
    matcher: GlobMatcher,
    include: bool,
    /// Anchored rules (`/dir`) match from the top; others match any path suffix.
    anchored: bool,
}

/// The file filter of one step.
#[derive(Debug)]
pub enum Filter {
    Regex {
        ignore: Regex,
        include: Option<Regex>,
    },
    Rules(Vec<Rule>),
}

fn regex(pattern: &str) -> Result<Regex, FilterError> {
    Regex::new(pattern).map_err(|source| FilterError::Regex {
        pattern: pattern.to_owned(),
        source,
    })
}

impl Filter {
    /// From `!Copy`'s fields: rules when given, else the regexes.
    pub fn new(
        ignore_regex: Option<&str>,
        include_regex: Option<&str>,
        rules: Option<&[String]>,
        no_default_rules: bool,
    ) -> Result<Filter, FilterError> {
        if let Some(rules) = rules {
            let mut all: Vec<String> = Vec::new();
            if !no_default_rules {
                all.extend(DEFAULT_RULES.iter().map(|s| s.to_string()));
            }
            all.extend(rules.iter().cloned());
            let mut out = Vec::new();
            for r in &all {
                let (include, body) = match r.strip_prefix('!') {
                    Some(rest) => (false, rest),
                    None => (true, r.as_str()),
                };
                let anchored = body.starts_with('/');
                let body = body.trim_start_matches('/').trim_end_matches('/');
                let glob = Glob::new(body).map_err(|source| FilterError::Glob {
                    pattern: r.clone(),
                    source,
                })?;
                out.push(Rule {
                    matcher: glob.compile_matcher(),
                    include,
                    anchored,
                });
            }
            return Ok(Filter::Rules(out));
        }
        let ignore = if no_default_rules && ignore_regex.is_none() {
            regex("^$")?
        } else {
            regex(ignore_regex.unwrap_or(DEFAULT_IGNORE))?
        };
        let include = include_regex.map(regex).transpose()?;
        Ok(Filter::Regex { ignore, include })
    }

    /// Whether to descend into directory `rel` (it may hold chosen files).
    fn descend(&self, rel: &str) -> bool {
        match self {
            Filter::Regex { ignore, .. } => !ignore.is_match(rel),
            Filter::Rules(_) => self.rule_verdict(rel) != Some(false),
        }
    }

    /// Whether the entry `rel` itself is chosen.
    fn choose(&self, rel: &str, is_dir: bool) -> bool {
        match self {
            Filter::Regex { ignore, include } => {
                !ignore.is_match(rel)
                    && (is_dir || include.as_ref().is_none_or(|r| r.is_match(rel)))
            }
            Filter::Rules(rules) => {
                if is_dir {
                    return self.rule_verdict(rel) != Some(false);
                }
                // Without any positive rule every file not excluded is taken.
                let has_positive = rules.iter().any(|r| r.include);
                self.rule_verdict(rel).unwrap_or(!has_positive)
            }
        }
    }

    /// The last rule matching `rel` or one of its parents decides.
    fn rule_verdict(&self, rel: &str) -> Option<bool> {
        let Filter::Rules(rules) = self else {
            return None;
        };
        let mut verdict = None;
        for rule in rules {
            let mut prefix = String::new();
            for (i, part) in rel.split('/').enumerate() {
                if i > 0 {
                    prefix.push('/');
                }
                prefix.push_str(part);
                let matched = if rule.anchored {
                    rule.matcher.is_match(&prefix)
                } else {
                    let suffix_start = prefix.rfind('/').map_or(0, |p| p + 1);
                    rule.matcher.is_match(&prefix) || rule.matcher.is_match(&prefix[suffix_start..])
                };
                if matched {
                    verdict = Some(rule.include);
                    break;
                }
            }
        }
        verdict
    }
}

/// One chosen entry of a tree.
#[derive(Debug)]
pub struct TreeEntry {
    /// Relative to the walked root, `/`-separated; empty for the root itself.
    pub rel: String,
    pub path: PathBuf,
    pub meta: Metadata,
}

/// One chosen entry as [`visit`] passes it: borrowed from the walk's reused buffers.
#[derive(Debug, Clone, Copy)]
pub struct Visited<'a> {
    /// Relative to the walked root, `/`-separated; empty for the root itself.
    pub rel: &'a str,
    pub path: &'a Path,
    pub meta: &'a Metadata,
}

/// Why [`visit`] stopped early.
#[derive(Debug)]
pub enum VisitError<E> {
    Walk(FilterError),
    /// The caller's function failed.
    Visitor(E),
}

/// Lists the chosen entries under `root`, sorted by relative path, parents before children.
/// A file root yields itself alone.
pub fn walk(root: &Path, filter: &Filter) -> Result<Vec<TreeEntry>, FilterError> {
    let mut out = Vec::new();
    let visited = visit(root, filter, |e| {
        out.push(TreeEntry {
            rel: e.rel.to_owned(),
            path: e.path.to_owned(),
            meta: e.meta.clone(),
        });
        Ok::<(), std::convert::Infallible>(())
    });
    match visited {
        Ok(()) => Ok(out),
        Err(VisitError::Walk(e)) => Err(e),
        Err(VisitError::Visitor(never)) => match never {},
    }
}

/// Calls `each` on the entries [`walk`] lists, in the same order, without collecting them:
/// the version check runs this over every input file, and one reused path buffer spares it
/// a path and a name allocation per entry.
pub fn visit<E>(
    root: &Path,
    filter: &Filter,
    mut each: impl FnMut(Visited<'_>) -> Result<(), E>,
) -> Result<(), VisitError<E>> {
    let meta = fs::symlink_metadata(root).map_err(|source| {
        VisitError::Walk(FilterError::Walk {
            path: root.to_owned(),
            source,
        })
    })?;
    each(Visited {
        rel: "",
        path: root,
        meta: &meta,
    })
    .map_err(VisitError::Visitor)?;
    if !meta.is_dir() {
        return Ok(());
    }
    let lister = Lister::new(filter);
    let mut walker = Walker {
        filter,
        lister: &lister,
        rel: String::new(),
        path: root.as_os_str().as_bytes().to_vec(),
        pending: Vec::new(),
    };
    std::thread::scope(|scope| {
        let _finish = FinishOnDrop(&lister);
        // Without the helper (no thread to be had) the walk lists every directory itself.
        let _ = std::thread::Builder::new()
            .name("vagga-lister".into())
            .spawn_scoped(scope, || lister.help());
        walker.dir(&mut each)
    })
}

/// A directory not yet passed on: its `rel` and `path` are prefixes of the walker's buffers.
struct PendingDir {
    rel_len: usize,
    path_len: usize,
    meta: Metadata,
}

struct Walker<'a, 'f> {
    filter: &'f Filter,
    lister: &'a Lister<'f>,
    rel: String,
    /// The current entry's path (bytes, as the kernel takes them).
    path: Vec<u8>,
    /// Directories are passed on before their first chosen entry, or at their end when
    /// chosen themselves, so that an unchosen directory without chosen entries is left out.
    pending: Vec<PendingDir>,
}

fn as_path(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = Vec::with_capacity(dir.len() + 1 + name.len());
    path.extend_from_slice(dir);
    if path.last() != Some(&b'/') {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}

/// A directory's entries sorted by name, each with what `lstat` says about it.
type Listing = std::io::Result<Vec<(OsString, std::io::Result<Metadata>)>>;

fn list(dir: &[u8]) -> Listing {
    // Each name is taken once: a sort key computed per comparison would allocate it
    // O(n log n) times.
    let mut entries: Vec<(OsString, fs::DirEntry)> = fs::read_dir(as_path(dir))?
        .map(|entry| entry.map(|e| (e.file_name(), e)))
        .collect::<Result<_, _>>()?;
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    // Relative to the open directory (fstatat), like find: no lookup of the whole path.
    Ok(entries
        .into_iter()
        .map(|(name, entry)| (name, entry.metadata()))
        .collect())
}

/// A directory the walk will enter.
struct Job {
    path: Vec<u8>,
    rel: String,
}

/// Listings made ahead of the walk by a helper thread. The walk's system calls (a
/// `getdents` per directory, an `lstat` per entry) are most of its time; the helper takes
/// directories from the far end of the walk's queue while the walk takes the near end, so
/// the two meet without waiting on each other, and the walk lists a directory itself when
/// the helper has not started it (a busy machine costs nothing but the thread).
struct Lister<'f> {
    filter: &'f Filter,
    ahead: Mutex<Ahead>,
    changed: Condvar,
}

#[derive(Default)]
struct Ahead {
    /// Directories not listed yet, in the order the walk reaches them.
    queue: VecDeque<Job>,
    /// The directory the helper is listing.
    busy: Option<Vec<u8>>,
    listed: HashMap<Vec<u8>, Listing>,
    /// Entries held in `listed`: the helper waits above a bound, so a huge tree is not
    /// held in memory at once.
    listed_entries: usize,
    finished: bool,
    /// Who waits on `changed`: a wake-up is a system call, made only when someone waits.
    walk_waits: bool,
    helper_waits: bool,
}

const MAX_LISTED_AHEAD: usize = 1 << 16;

fn entry_count(listing: &Listing) -> usize {
    listing.as_ref().map_or(1, Vec::len)
}

impl<'f> Lister<'f> {
    fn new(filter: &'f Filter) -> Lister<'f> {
        Lister {
            filter,
            ahead: Mutex::new(Ahead::default()),
            changed: Condvar::new(),
        }
    }

    /// Locks the shared state; a thread that panicked holding it left it consistent (every
    /// change is a single insert or remove).
    fn lock(&self) -> std::sync::MutexGuard<'_, Ahead> {
        self.ahead.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The directories under a listed one that the walk will enter, in order.
    fn subdirs(&self, dir: &[u8], rel: &str, listing: &Listing) -> Vec<Job> {
        let Ok(entries) = listing else {
            return Vec::new();
        };
        entries
            .iter()
            .filter(|(_, meta)| meta.as_ref().is_ok_and(Metadata::is_dir))
            .filter_map(|(name, _)| {
                let name_text = name.to_string_lossy();
                let child_rel = if rel.is_empty() {
                    name_text.into_owned()
                } else {
                    format!("{rel}/{name_text}")
                };
                self.filter.descend(&child_rel).then(|| Job {
                    path: join(dir, name.as_bytes()),
                    rel: child_rel,
                })
            })
            .collect()
    }

    /// The listing of `dir`, which the walk enters now.
    fn take(&self, dir: &[u8], rel: &str) -> Listing {
        let mut ahead = self.lock();
        loop {
            if let Some(listing) = ahead.listed.remove(dir) {
                ahead.listed_entries -= entry_count(&listing);
                if ahead.helper_waits {
                    self.changed.notify_all();
                }
                return listing;
            }
            if ahead.busy.as_deref() != Some(dir) {
                break;
            }
            ahead.walk_waits = true;
            ahead = self.changed.wait(ahead).unwrap_or_else(|e| e.into_inner());
            ahead.walk_waits = false;
        }
        // Not started by the helper: it is at the near end of the queue (or the root).
        if let Some(i) = ahead.queue.iter().position(|job| job.path == dir) {
            ahead.queue.remove(i);
        }
        drop(ahead);
        let listing = list(dir);
        let subdirs = self.subdirs(dir, rel, &listing);
        let mut ahead = self.lock();
        for job in subdirs.into_iter().rev() {
            ahead.queue.push_front(job);
        }
        if ahead.helper_waits {
            self.changed.notify_all();
        }
        listing
    }

    /// The helper thread: lists directories from the far end of the queue until the walk
    /// finishes.
    fn help(&self) {
        loop {
            let mut ahead = self.lock();
            let job = loop {
                if ahead.finished {
                    return;
                }
                if ahead.listed_entries < MAX_LISTED_AHEAD
                    && let Some(job) = ahead.queue.pop_back()
                {
                    ahead.busy = Some(job.path.clone());
                    break job;
                }
                ahead.helper_waits = true;
                ahead = self.changed.wait(ahead).unwrap_or_else(|e| e.into_inner());
                ahead.helper_waits = false;
            };
            drop(ahead);
            let listing = list(&job.path);
            // The subdirectories of the last queued directory come after everything queued.
            let subdirs = self.subdirs(&job.path, &job.rel, &listing);
            let mut ahead = self.lock();
            ahead.listed_entries += entry_count(&listing);
            ahead.listed.insert(job.path, listing);
            ahead.busy = None;
            ahead.queue.extend(subdirs);
            if ahead.walk_waits {
                self.changed.notify_all();
            }
        }
    }
}

/// Stops the helper when the walk ends, also by an error or a panic of the caller's function.
struct FinishOnDrop<'a, 'f>(&'a Lister<'f>);

impl Drop for FinishOnDrop<'_, '_> {
    fn drop(&mut self) {
        self.0.lock().finished = true;
        self.0.changed.notify_all();
    }
}

impl Walker<'_, '_> {
    fn dir<E>(
        &mut self,
        each: &mut impl FnMut(Visited<'_>) -> Result<(), E>,
    ) -> Result<(), VisitError<E>> {
        let walk_error = |path: &[u8], source| {
            VisitError::Walk(FilterError::Walk {
                path: as_path(path).to_owned(),
                source,
            })
        };
        let entries = self
            .lister
            .take(&self.path, &self.rel)
            .map_err(|e| walk_error(&self.path, e))?;
        let (rel_len, path_len) = (self.rel.len(), self.path.len());
        for (name, meta) in entries {
            self.rel.truncate(rel_len);
            self.path.truncate(path_len);
            if rel_len > 0 {
                self.rel.push('/');
            }
            self.rel.push_str(&name.to_string_lossy());
            if self.path.last() != Some(&b'/') {
                self.path.push(b'/');
            }
            self.path.extend_from_slice(name.as_bytes());
            let meta = meta.map_err(|e| walk_error(&self.path, e))?;
            if meta.is_dir() {
                if !self.filter.descend(&self.rel) {
                    continue;
                }
                let child_rel_len = self.rel.len();
                self.pending.push(PendingDir {
                    rel_len: child_rel_len,
                    path_len: self.path.len(),
                    meta,
                });
                self.dir(each)?;
                // Still pending: it holds no chosen entry, so it counts only if chosen itself.
                if self
                    .pending
                    .last()
                    .is_some_and(|p| p.rel_len == child_rel_len)
                {
                    let dir = self.pending.pop();
                    if self.filter.choose(&self.rel, true) {
                        self.pending.extend(dir);
                        self.flush(each)?;
                    }
                }
            } else if self.filter.choose(&self.rel, false) {
                self.flush(each)?;
                each(Visited {
                    rel: &self.rel,
                    path: as_path(&self.path),
                    meta: &meta,
                })
                .map_err(VisitError::Visitor)?;
            }
        }
        self.rel.truncate(rel_len);
        self.path.truncate(path_len);
        Ok(())
    }

    /// Passes on the pending directories, outermost first.
    fn flush<E>(
        &mut self,
        each: &mut impl FnMut(Visited<'_>) -> Result<(), E>,
    ) -> Result<(), VisitError<E>> {
        for dir in self.pending.drain(..) {
            each(Visited {
                rel: &self.rel[..dir.rel_len],
                path: as_path(&self.path[..dir.path_len]),
                meta: &dir.meta,
            })
            .map_err(VisitError::Visitor)?;
        }
        Ok(())
    }
}

/// Whether any execute bit is set.
pub fn is_executable(meta: &Metadata) -> bool {
    meta.mode() & 0o111 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        fs::create_dir_all(p.join(".git")).unwrap();
        fs::write(p.join(".git/x"), "").unwrap();
        fs::write(p.join("a~"), "").unwrap();
        fs::write(p.join("hello"), "").unwrap();
        fs::create_dir_all(p.join("subdir/deep")).unwrap();
        fs::write(p.join("subdir/file"), "").unwrap();
        fs::write(p.join("subdir/deep/x.py"), "").unwrap();
        dir
    }

    fn rels(entries: &[TreeEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.rel.as_str()).collect()
    }

    #[test]
    fn default_regex_skips_vcs_and_backups() {
        let dir = tree();
        let f = Filter::new(None, None, None, false).unwrap();
        let entries = walk(dir.path(), &f).unwrap();
        assert_eq!(
            rels(&entries),
            [
                "",
                "hello",
                "subdir",
                "subdir/deep",
                "subdir/deep/x.py",
                "subdir/file"
            ]
        );
    }

    #[test]
    fn include_regex_keeps_parents_of_matches() {
        let dir = tree();
        let f = Filter::new(None, Some(r"\.py$"), None, false).unwrap();
        let entries = walk(dir.path(), &f).unwrap();
        assert_eq!(
            rels(&entries),
            ["", "subdir", "subdir/deep", "subdir/deep/x.py"]
        );
    }

    /// Every entry, sorted, parents first: what the walk gives without a filter.
    fn listed_plainly(dir: &Path, rel: &str, out: &mut Vec<String>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        for name in names {
            let child = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            out.push(child.clone());
            if fs::symlink_metadata(dir.join(&name)).unwrap().is_dir() {
                listed_plainly(&dir.join(&name), &child, out);
            }
        }
    }

    #[test]
    fn listing_ahead_keeps_the_walk_order() {
        let dir = tempfile::tempdir().unwrap();
        for top in 0..30 {
            for sub in 0..3 {
                let d = dir.path().join(format!("d{top}/s{sub}"));
                fs::create_dir_all(d.join("deeper")).unwrap();
                for f in 0..4 {
                    fs::write(d.join(format!("f{f}")), "").unwrap();
                }
            }
            fs::write(dir.path().join(format!("f{top}")), "").unwrap();
        }
        let mut expected = vec![String::new()];
        listed_plainly(dir.path(), "", &mut expected);
        let f = Filter::new(None, None, None, true).unwrap();
        // The helper thread and the walk race differently each time.
        for _ in 0..20 {
            assert_eq!(rels(&walk(dir.path(), &f).unwrap()), expected);
        }
    }

    #[test]
    fn rules_with_negation() {
        let dir = tree();
        let rules = vec!["/subdir".to_owned(), "!*.py".to_owned()];
        let f = Filter::new(None, None, Some(&rules), false).unwrap();
        let entries = walk(dir.path(), &f).unwrap();
        assert_eq!(rels(&entries), ["", "subdir", "subdir/deep", "subdir/file"]);
    }
}
