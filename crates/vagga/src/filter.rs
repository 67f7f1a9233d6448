//! Which files of a tree `!Copy` and `!Depends` take: the ignore/include regexes or the glob
//! rules, and the walk that lists the chosen files in sorted order.

use std::fs::{self, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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

/// Lists the chosen entries under `root`, sorted by relative path, parents before children.
/// A file root yields itself alone.
pub fn walk(root: &Path, filter: &Filter) -> Result<Vec<TreeEntry>, FilterError> {
    let meta = fs::symlink_metadata(root).map_err(|source| FilterError::Walk {
        path: root.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    let is_dir = meta.is_dir();
    out.push(TreeEntry {
        rel: String::new(),
        path: root.to_owned(),
        meta,
    });
    if is_dir {
        walk_dir(root, "", filter, &mut out)?;
    }
    Ok(out)
}

fn walk_dir(
    dir: &Path,
    rel: &str,
    filter: &Filter,
    out: &mut Vec<TreeEntry>,
) -> Result<(), FilterError> {
    let read = fs::read_dir(dir).map_err(|source| FilterError::Walk {
        path: dir.to_owned(),
        source,
    })?;
    // Each name is taken once: a sort key computed per comparison would allocate it
    // O(n log n) times.
    let mut entries: Vec<(std::ffi::OsString, fs::DirEntry)> = read
        .map(|entry| entry.map(|e| (e.file_name(), e)))
        .collect::<Result<_, _>>()
        .map_err(|source| FilterError::Walk {
            path: dir.to_owned(),
            source,
        })?;
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (name, entry) in entries {
        let path = dir.join(&name);
        let name = name.to_string_lossy();
        let child_rel = if rel.is_empty() {
            name.into_owned()
        } else {
            format!("{rel}/{name}")
        };
        // Relative to the open directory (fstatat), like find: no lookup of the whole path.
        let meta = entry.metadata().map_err(|source| FilterError::Walk {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            if !filter.descend(&child_rel) {
                continue;
            }
            let mark = out.len();
            out.push(TreeEntry {
                rel: child_rel.clone(),
                path: path.clone(),
                meta,
            });
            walk_dir(&path, &child_rel, filter, out)?;
            // A directory is kept when chosen itself or when it holds chosen entries.
            if out.len() == mark + 1 && !filter.choose(&child_rel, true) {
                out.pop();
            }
        } else if filter.choose(&child_rel, false) {
            out.push(TreeEntry {
                rel: child_rel,
                path,
                meta,
            });
        }
    }
    Ok(())
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

    #[test]
    fn rules_with_negation() {
        let dir = tree();
        let rules = vec!["/subdir".to_owned(), "!*.py".to_owned()];
        let f = Filter::new(None, None, Some(&rules), false).unwrap();
        let entries = walk(dir.path(), &f).unwrap();
        assert_eq!(rels(&entries), ["", "subdir", "subdir/deep", "subdir/file"]);
    }
}
