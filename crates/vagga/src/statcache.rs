//! The stat cache: content digests of input files keyed by what `lstat` says about them, so a
//! no-op version check reads no file contents. The hash stays defined by content: a record is
//! trusted only while dev, inode, size, mtime, ctime, mode and owner all match, and a file
//! modified in the same instant the cache was written ("racy") is hashed again.

use std::collections::HashMap;
use std::fs::{self, Metadata};
use std::io::{Read, Write};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use blake2::{Blake2b512, Digest};

/// File format tag and version. A file without it (an older JSON cache, or garbage) reads as
/// an empty cache and is replaced by the next save.
const MAGIC: &[u8; 8] = b"VGSTAT01";

/// What `lstat` says about a file; a record is trusted only while all of it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    mode: u32,
    uid: u32,
    gid: u32,
}

fn ns(secs: i64, nsec: i64) -> i128 {
    i128::from(secs) * 1_000_000_000 + i128::from(nsec)
}

impl Stat {
    fn of(meta: &Metadata) -> Stat {
        Stat {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
        }
    }
}

type Blake = [u8; 32];

/// A record of the loaded file; its path is a range of the file's bytes, so loading
/// allocates nothing per record.
#[derive(Debug, Clone)]
struct Stored {
    path: Range<usize>,
    stat: Stat,
    digest: Blake,
}

/// A record of this check: reused from the loaded file, or hashed now.
#[derive(Debug)]
enum Used {
    Old(usize),
    Fresh(Vec<u8>, Stat, Blake),
}

/// The loaded file: its bytes and the records pointing into them.
#[derive(Debug, Default)]
struct Loaded {
    bytes: Vec<u8>,
    written_at_ns: i128,
    config_digest: String,
    records: Vec<Stored>,
}

/// Reads fixed-size fields from the file's bytes; `None` at a truncated or bad file.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<Range<usize>> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len())?;
        let range = self.at..end;
        self.at = end;
        Some(range)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let r = self.take(N)?;
        self.bytes[r].try_into().ok()
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    fn i128(&mut self) -> Option<i128> {
        self.array().map(i128::from_le_bytes)
    }

    fn stat(&mut self) -> Option<Stat> {
        Some(Stat {
            dev: self.u64()?,
            ino: self.u64()?,
            size: self.u64()?,
            mtime_ns: self.i128()?,
            ctime_ns: self.i128()?,
            mode: self.u32()?,
            uid: self.u32()?,
            gid: self.u32()?,
        })
    }
}

impl Loaded {
    fn parse(bytes: Vec<u8>) -> Option<Loaded> {
        let mut r = Reader {
            bytes: &bytes,
            at: 0,
        };
        if r.array::<8>()? != *MAGIC {
            return None;
        }
        let written_at_ns = r.i128()?;
        let digest_len = r.u32()? as usize;
        let config_digest = std::str::from_utf8(&bytes[r.take(digest_len)?])
            .ok()?
            .to_owned();
        let count = r.u32()? as usize;
        // Bounded by the file size: a corrupt count cannot reserve gigabytes.
        let mut records = Vec::with_capacity(count.min(bytes.len() / 64));
        for _ in 0..count {
            let path_len = r.u32()? as usize;
            let path = r.take(path_len)?;
            let stat = r.stat()?;
            let digest = r.array()?;
            records.push(Stored { path, stat, digest });
        }
        (r.at == bytes.len()).then_some(())?;
        Some(Loaded {
            written_at_ns,
            config_digest,
            records,
            bytes,
        })
    }

    fn path(&self, i: usize) -> &[u8] {
        &self.bytes[self.records[i].path.clone()]
    }
}

/// The cache of one container, loaded from and saved to `.vagga/.statcache/<name>`.
///
/// The tree walk visits files in the same sorted order every time, so a lookup first tries
/// the record after the previous hit: an unchanged tree is checked without hashing a path.
#[derive(Debug)]
pub struct StatCache {
    path: Option<PathBuf>,
    old: Loaded,
    /// Index of the next record expected in walk order.
    cursor: usize,
    /// Built on the first lookup that is not at the cursor.
    index: Option<HashMap<Box<[u8]>, usize>>,
    used: Vec<Used>,
    in_order: bool,
    /// Files whose content was read (for tests and `--debug-versioning`).
    pub hashed: usize,
}

fn hash_file(path: &Path) -> std::io::Result<Blake> {
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
    let mut digest = [0; 32];
    digest.copy_from_slice(&hasher.finalize()[..32]);
    Ok(digest)
}

/// Lower-case hex, as `hex::encode` writes it, without its per-character iterator (this runs
/// once per file of every version check).
fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Hashes a file's content.
pub fn digest_file(path: &Path) -> std::io::Result<String> {
    hash_file(path).map(|d| to_hex(&d))
}

impl StatCache {
    /// Loads the cache at `path`; a missing, unreadable or corrupt cache is an empty one (it
    /// only costs time). The config digest passed to `save` is stored for inspection only:
    /// records are per file.
    pub fn load(path: Option<PathBuf>) -> StatCache {
        let old = path
            .as_ref()
            .and_then(|p| fs::read(p).ok())
            .and_then(Loaded::parse)
            .unwrap_or_default();
        StatCache {
            path,
            old,
            cursor: 0,
            index: None,
            used: Vec::new(),
            in_order: true,
            hashed: 0,
        }
    }

    fn find(&mut self, key: &[u8]) -> Option<usize> {
        if self.cursor < self.old.records.len() && self.old.path(self.cursor) == key {
            self.cursor += 1;
            return Some(self.cursor - 1);
        }
        self.in_order = false;
        let old = &self.old;
        let index = self.index.get_or_insert_with(|| {
            (0..old.records.len())
                .map(|i| (Box::from(old.path(i)), i))
                .collect()
        });
        let found = index.get(key).copied();
        if let Some(i) = found {
            self.cursor = i + 1;
        }
        found
    }

    /// The digest of a regular file's content, from the cache when its record matches.
    pub fn digest(&mut self, path: &Path, meta: &Metadata) -> std::io::Result<String> {
        let key = path.as_os_str().as_bytes();
        let stat = Stat::of(meta);
        if let Some(i) = self.find(key) {
            let record = &self.old.records[i];
            let racy = record.stat.mtime_ns >= self.old.written_at_ns;
            if !racy && record.stat == stat {
                self.used.push(Used::Old(i));
                return Ok(to_hex(&record.digest));
            }
        }
        let digest = hash_file(path)?;
        self.hashed += 1;
        self.used.push(Used::Fresh(key.to_owned(), stat, digest));
        Ok(to_hex(&digest))
    }

    /// Writes the records used by this check (write to a temporary file, then rename).
    /// Nothing is written when nothing changed.
    pub fn save(self, config_digest: &str) {
        let Some(path) = &self.path else { return };
        let unchanged = self.hashed == 0
            && self.in_order
            && self.used.len() == self.old.records.len()
            && self.old.config_digest == config_digest;
        if unchanged {
            return;
        }
        let Some(dir) = path.parent() else { return };
        // The cache is an optimisation: failing to write it is not an error.
        if fs::create_dir_all(dir).is_err() {
            return;
        }
        let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir) else {
            return;
        };
        let mut writer = std::io::BufWriter::new(&mut tmp);
        let written = self.write(&mut writer, config_digest).is_ok() && writer.flush().is_ok();
        drop(writer);
        if written {
            let _ = tmp.persist(path);
        }
    }

    fn write(&self, w: &mut impl Write, config_digest: &str) -> std::io::Result<()> {
        let written_at_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        let len = |n: usize| u32::try_from(n).map_err(std::io::Error::other);
        w.write_all(MAGIC)?;
        w.write_all(&written_at_ns.to_le_bytes())?;
        w.write_all(&len(config_digest.len())?.to_le_bytes())?;
        w.write_all(config_digest.as_bytes())?;
        w.write_all(&len(self.used.len())?.to_le_bytes())?;
        for used in &self.used {
            let (path, stat, digest) = match used {
                Used::Old(i) => {
                    let r = &self.old.records[*i];
                    (self.old.path(*i), &r.stat, &r.digest)
                }
                Used::Fresh(path, stat, digest) => (path.as_slice(), stat, digest),
            };
            w.write_all(&len(path.len())?.to_le_bytes())?;
            w.write_all(path)?;
            for n in [stat.dev, stat.ino, stat.size] {
                w.write_all(&n.to_le_bytes())?;
            }
            for n in [stat.mtime_ns, stat.ctime_ns] {
                w.write_all(&n.to_le_bytes())?;
            }
            for n in [stat.mode, stat.uid, stat.gid] {
                w.write_all(&n.to_le_bytes())?;
            }
            w.write_all(digest)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_files_are_not_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = aged_file(dir.path(), "data.txt", "one");
        let cache = dir.path().join("cache");
        let (hashed, first) = check(&cache, &[&file]);
        assert_eq!(hashed, 1);
        let (hashed, again) = check(&cache, &[&file]);
        assert_eq!((hashed, &again), (0, &first));

        fs::write(&file, "two").unwrap();
        let (hashed, changed) = check(&cache, &[&file]);
        assert_eq!(hashed, 1);
        assert_ne!(changed, first);
    }

    /// Old enough not to be racy.
    fn aged_file(dir: &Path, name: &str, content: &str) -> PathBuf {
        let file = dir.join(name);
        fs::write(&file, content).unwrap();
        let old = SystemTime::now() - std::time::Duration::from_secs(10);
        fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(old)
            .unwrap();
        file
    }

    fn check(cache_path: &Path, files: &[&PathBuf]) -> (usize, Vec<String>) {
        let mut c = StatCache::load(Some(cache_path.to_owned()));
        let digests = files
            .iter()
            .map(|f| c.digest(f, &fs::symlink_metadata(f).unwrap()).unwrap())
            .collect();
        let hashed = c.hashed;
        c.save("cfg");
        (hashed, digests)
    }

    #[test]
    fn another_order_or_a_removed_file_still_uses_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let a = aged_file(dir.path(), "a", "1");
        let b = aged_file(dir.path(), "b", "2");
        let c = aged_file(dir.path(), "c", "3");
        let cache = dir.path().join("cache");
        let (hashed, first) = check(&cache, &[&a, &b, &c]);
        assert_eq!(hashed, 3);
        assert_eq!(first[0], digest_file(&a).unwrap());

        let (hashed, reordered) = check(&cache, &[&c, &a, &b]);
        assert_eq!(hashed, 0);
        assert_eq!(
            reordered,
            [first[2].clone(), first[0].clone(), first[1].clone()]
        );

        // Without b the saved cache shrinks, and a and c still hit.
        let (hashed, _) = check(&cache, &[&a, &c]);
        assert_eq!(hashed, 0);
        assert_eq!(
            Loaded::parse(fs::read(&cache).unwrap())
                .unwrap()
                .records
                .len(),
            2
        );
    }

    #[test]
    fn a_corrupt_or_old_format_cache_is_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let a = aged_file(dir.path(), "a", "1");
        let cache = dir.path().join("cache");
        check(&cache, &[&a]);
        let good = fs::read(&cache).unwrap();
        for bad in [
            b"{\"files\": {}}".to_vec(),
            good[..good.len() - 1].to_vec(),
            [good.as_slice(), b"x"].concat(),
            Vec::new(),
        ] {
            fs::write(&cache, &bad).unwrap();
            let (hashed, digests) = check(&cache, &[&a]);
            assert_eq!((hashed, &digests[0]), (1, &digest_file(&a).unwrap()));
            // The save replaced the bad file with a good one.
            assert_eq!(check(&cache, &[&a]).0, 0);
        }
    }

    #[test]
    fn hex_is_what_the_hex_crate_writes() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(to_hex(&bytes), hex::encode(&bytes));
    }
}
