//! The stat cache: content digests of input files keyed by what `lstat` says about them, so a
//! no-op version check reads no file contents. The hash stays defined by content: a record is
//! trusted only while dev, inode, size, mtime, ctime, mode and owner all match, and a file
//! modified in the same instant the cache was written ("racy") is hashed again.

use std::collections::HashMap;
use std::fs::{self, Metadata};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use blake2::{Blake2b512, Digest};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    mode: u32,
    uid: u32,
    gid: u32,
    digest: String,
}

fn ns(secs: i64, nsec: i64) -> i128 {
    i128::from(secs) * 1_000_000_000 + i128::from(nsec)
}

impl Record {
    fn matches(&self, meta: &Metadata) -> bool {
        self.dev == meta.dev()
            && self.ino == meta.ino()
            && self.size == meta.size()
            && self.mtime_ns == ns(meta.mtime(), meta.mtime_nsec())
            && self.ctime_ns == ns(meta.ctime(), meta.ctime_nsec())
            && self.mode == meta.mode()
            && self.uid == meta.uid()
            && self.gid == meta.gid()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    written_at_ns: i128,
    config_digest: String,
    /// A hash map: lookups by path are the no-op check's hot loop, and ordered maps compare
    /// paths component by component.
    files: HashMap<PathBuf, Record>,
}

/// The cache of one container, loaded from and saved to `.vagga/.statcache/<name>`.
#[derive(Debug)]
pub struct StatCache {
    path: Option<PathBuf>,
    old: Stored,
    new: HashMap<PathBuf, Record>,
    /// Files whose content was read (for tests and `--debug-versioning`).
    pub hashed: usize,
}

/// Hashes a file's content.
pub fn digest_file(path: &Path) -> std::io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Blake2b512::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(&hasher.finalize()[..32]))
}

impl StatCache {
    /// Loads the cache at `path`; a missing or unreadable cache is an empty one (it only costs
    /// time). `config_digest` is the digest of the container's config: a different one drops
    /// nothing (records are per file) but is stored for inspection.
    pub fn load(path: Option<PathBuf>) -> StatCache {
        let old = path
            .as_ref()
            .and_then(|p| fs::read(p).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        StatCache {
            path,
            old,
            new: HashMap::new(),
            hashed: 0,
        }
    }

    /// The digest of a regular file's content, from the cache when its record matches.
    pub fn digest(&mut self, path: &Path, meta: &Metadata) -> std::io::Result<String> {
        if let Some(record) = self.old.files.get(path) {
            let racy = record.mtime_ns >= self.old.written_at_ns;
            if !racy && record.matches(meta) {
                let record = record.clone();
                let digest = record.digest.clone();
                self.new.insert(path.to_owned(), record);
                return Ok(digest);
            }
        }
        let digest = digest_file(path)?;
        self.hashed += 1;
        self.new.insert(
            path.to_owned(),
            Record {
                dev: meta.dev(),
                ino: meta.ino(),
                size: meta.size(),
                mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
                ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
                mode: meta.mode(),
                uid: meta.uid(),
                gid: meta.gid(),
                digest: digest.clone(),
            },
        );
        Ok(digest)
    }

    /// Writes the records used by this check (write to a temporary file, then rename).
    /// Nothing is written when nothing changed.
    pub fn save(self, config_digest: &str) {
        let Some(path) = self.path else { return };
        if self.hashed == 0 && self.old.config_digest == config_digest && self.old.files == self.new
        {
            return;
        }
        let written_at_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        let stored = Stored {
            written_at_ns,
            config_digest: config_digest.to_owned(),
            files: self.new,
        };
        let Some(dir) = path.parent() else { return };
        // The cache is an optimisation: failing to write it is not an error.
        if fs::create_dir_all(dir).is_err() {
            return;
        }
        let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir) else {
            return;
        };
        // Buffered: unbuffered, serde_json makes a write call per token (600,000 for 10,000
        // files).
        let mut writer = std::io::BufWriter::new(&mut tmp);
        let written = serde_json::to_writer(&mut writer, &stored).is_ok() && writer.flush().is_ok();
        drop(writer);
        if written {
            let _ = tmp.persist(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_files_are_not_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data.txt");
        fs::write(&file, "one").unwrap();
        let cache_path = dir.path().join("cache");
        // Old enough not to be racy.
        let old = SystemTime::now() - std::time::Duration::from_secs(10);
        fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(old)
            .unwrap();

        let mut c = StatCache::load(Some(cache_path.clone()));
        let d1 = c
            .digest(&file, &fs::symlink_metadata(&file).unwrap())
            .unwrap();
        assert_eq!(c.hashed, 1);
        c.save("cfg");

        let mut c = StatCache::load(Some(cache_path.clone()));
        let d2 = c
            .digest(&file, &fs::symlink_metadata(&file).unwrap())
            .unwrap();
        assert_eq!((c.hashed, &d1), (0, &d2));

        fs::write(&file, "two").unwrap();
        let mut c = StatCache::load(Some(cache_path));
        let d3 = c
            .digest(&file, &fs::symlink_metadata(&file).unwrap())
            .unwrap();
        assert_eq!(c.hashed, 1);
        assert_ne!(d1, d3);
    }
}
