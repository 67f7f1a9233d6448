//! The stat cache: content digests of input files keyed by what `lstat` says about them, so a
//! no-op version check reads no file contents. The hash stays defined by content: a record is
//! trusted only while dev, inode, size, mtime, ctime, mode and owner all match, and a file
//! modified in the same instant the cache was written ("racy") is hashed again. The ctime
//! is what catches a rewrite that restores size and mtime: no call sets it. "The same
//! instant" is judged by the cache file's own mtime, which comes from the same coarse
//! filesystem clock as the inputs' (as git judges its index), not only by the precise time
//! stored in it: a write a few milliseconds after the save can carry an older timestamp.

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

/// A content digest: the first 32 bytes of the file's Blake2b-512.
pub type FileDigest = [u8; 32];

/// A record of the loaded file, read in place: its path is a range of the file's bytes.
#[derive(Debug, Clone)]
struct Record {
    path: Range<usize>,
    stat: Stat,
    digest: FileDigest,
    /// Where the next record starts.
    next: usize,
}

/// A record of this check: reused from the loaded file (by its offset), or hashed now.
#[derive(Debug)]
enum Used {
    Old(usize),
    Fresh(Vec<u8>, Stat, FileDigest),
}

/// The loaded file: its bytes, checked once at load, and where its records lie in them.
/// Records are read where they lie when looked up, so loading allocates nothing per record.
#[derive(Debug, Default)]
struct Loaded {
    bytes: Vec<u8>,
    written_at_ns: i128,
    config_digest: String,
    records: Range<usize>,
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

/// Bytes of a record after its path: the stat fields and the digest.
const RECORD_TAIL: usize = 3 * 8 + 2 * 16 + 3 * 4 + 32;

impl Loaded {
    /// `file_mtime_ns` is the cache file's mtime.
    fn parse(bytes: Vec<u8>, file_mtime_ns: i128) -> Option<Loaded> {
        let mut r = Reader {
            bytes: &bytes,
            at: 0,
        };
        if r.array::<8>()? != *MAGIC {
            return None;
        }
        let written_at_ns = r.i128()?.min(file_mtime_ns);
        let digest_len = r.u32()? as usize;
        let config_digest = std::str::from_utf8(&bytes[r.take(digest_len)?])
            .ok()?
            .to_owned();
        let count = r.u32()? as usize;
        let start = r.at;
        // Only the lengths are checked here; a record is read when looked up.
        for _ in 0..count {
            let path_len = r.u32()? as usize;
            r.take(path_len.checked_add(RECORD_TAIL)?)?;
        }
        (r.at == bytes.len()).then_some(())?;
        Some(Loaded {
            written_at_ns,
            config_digest,
            records: start..r.at,
            bytes,
        })
    }

    /// The record at byte offset `at`; `None` past the last one.
    fn record(&self, at: usize) -> Option<Record> {
        if !self.records.contains(&at) {
            return None;
        }
        let mut r = Reader {
            bytes: &self.bytes,
            at,
        };
        let path_len = r.u32()? as usize;
        let path = r.take(path_len)?;
        let stat = r.stat()?;
        let digest = r.array()?;
        Some(Record {
            path,
            stat,
            digest,
            next: r.at,
        })
    }

    /// Offsets of all records, in file order.
    fn offsets(&self) -> impl Iterator<Item = usize> + '_ {
        std::iter::successors(
            self.record(self.records.start).map(|_| self.records.start),
            |&at| {
                self.record(at)
                    .and_then(|r| self.record(r.next).map(|_| r.next))
            },
        )
    }
}

/// The cache of one container, loaded from and saved to `.vagga/.statcache/<name>`.
///
/// The tree walk visits files in the same sorted order every time, so a lookup first tries
/// the record after the previous hit: an unchanged tree is checked without hashing a path,
/// and without noting anything per file.
#[derive(Debug)]
pub struct StatCache {
    path: Option<PathBuf>,
    old: Loaded,
    /// Offset of the next record expected in walk order.
    cursor: usize,
    /// Built on the first lookup that is not at the cursor: path to record offset.
    index: Option<HashMap<Box<[u8]>, usize>>,
    /// While true, every lookup so far hit the record at the cursor and the record held, so
    /// the records of this check are those before the cursor and `used` stays empty.
    in_order: bool,
    /// The records of this check, listed from the first lookup that left walk order.
    used: Vec<Used>,
    /// Files whose content was read (for tests and `--debug-versioning`).
    pub hashed: usize,
}

fn hash_file(path: &Path) -> std::io::Result<FileDigest> {
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

/// Appends lower-case hex, as `hex::encode` writes it, without its per-character iterator
/// and without a string per call (this runs once per file of every version check).
pub fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
}

/// Lower-case hex of a digest.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut out = Vec::new();
    push_hex(&mut out, bytes);
    String::from_utf8(out).unwrap_or_default()
}

/// The file's bytes, read with one `read` into a buffer of its size, and its mtime.
fn read_with_mtime(path: &Path) -> std::io::Result<(Vec<u8>, i128)> {
    let mut file = fs::File::open(path)?;
    let meta = file.metadata()?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.size()).unwrap_or(0) + 1);
    file.read_to_end(&mut bytes)?;
    Ok((bytes, ns(meta.mtime(), meta.mtime_nsec())))
}

impl StatCache {
    /// Loads the cache at `path`; a missing, unreadable or corrupt cache is an empty one (it
    /// only costs time). The config digest passed to `save` is stored for inspection only:
    /// records are per file.
    pub fn load(path: Option<PathBuf>) -> StatCache {
        let old = path
            .as_ref()
            .and_then(|p| read_with_mtime(p).ok())
            .and_then(|(bytes, mtime_ns)| Loaded::parse(bytes, mtime_ns))
            .unwrap_or_default();
        StatCache {
            cursor: old.records.start,
            path,
            old,
            index: None,
            in_order: true,
            used: Vec::new(),
            hashed: 0,
        }
    }

    /// The record for `key`: first the one at the cursor, then through the index.
    fn find(&mut self, key: &[u8]) -> Option<(usize, Record)> {
        if let Some(record) = self.old.record(self.cursor)
            && self.old.bytes[record.path.clone()] == *key
        {
            return Some((self.cursor, record));
        }
        let old = &self.old;
        let index = self.index.get_or_insert_with(|| {
            old.offsets()
                .filter_map(|at| Some((Box::from(&old.bytes[old.record(at)?.path]), at)))
                .collect()
        });
        let at = *index.get(key)?;
        Some((at, self.old.record(at)?))
    }

    /// Lists the records used so far in `used`, from here on one per lookup.
    fn leave_order(&mut self) {
        if !self.in_order {
            return;
        }
        self.in_order = false;
        let cursor = self.cursor;
        self.used = self
            .old
            .offsets()
            .take_while(|&at| at < cursor)
            .map(Used::Old)
            .collect();
    }

    /// The digest of a regular file's content, from the cache when its record matches.
    pub fn digest(&mut self, path: &Path, meta: &Metadata) -> std::io::Result<FileDigest> {
        let key = path.as_os_str().as_bytes();
        let stat = Stat::of(meta);
        let found = self.find(key);
        if let Some((at, record)) = &found {
            let racy = record.stat.mtime_ns >= self.old.written_at_ns;
            if !racy && record.stat == stat {
                if *at != self.cursor {
                    self.leave_order();
                }
                if !self.in_order {
                    self.used.push(Used::Old(*at));
                }
                self.cursor = record.next;
                return Ok(record.digest);
            }
        }
        self.leave_order();
        if let Some((_, record)) = found {
            self.cursor = record.next;
        }
        let digest = hash_file(path)?;
        self.hashed += 1;
        self.used.push(Used::Fresh(key.to_owned(), stat, digest));
        Ok(digest)
    }

    /// Writes the records used by this check (write to a temporary file, then rename).
    /// Nothing is written when nothing changed.
    pub fn save(mut self, config_digest: &str) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let unchanged = self.in_order
            && self.cursor == self.old.records.end
            && self.old.config_digest == config_digest;
        if unchanged {
            return;
        }
        self.leave_order();
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
                Used::Old(at) => {
                    let r = self
                        .old
                        .record(*at)
                        .ok_or_else(|| std::io::Error::other("stat cache record vanished"))?;
                    (&self.old.bytes[r.path], r.stat, r.digest)
                }
                Used::Fresh(path, stat, digest) => (path.as_slice(), *stat, *digest),
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
            w.write_all(&digest)?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
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
    pub(crate) fn aged_file(dir: &Path, name: &str, content: &str) -> PathBuf {
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

    fn check(cache_path: &Path, files: &[&PathBuf]) -> (usize, Vec<FileDigest>) {
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
        assert_eq!(first[0], hash_file(&a).unwrap());

        let (hashed, reordered) = check(&cache, &[&c, &a, &b]);
        assert_eq!(hashed, 0);
        assert_eq!(reordered, [first[2], first[0], first[1]]);

        // Without b the saved cache shrinks, and a and c still hit.
        let (hashed, _) = check(&cache, &[&a, &c]);
        assert_eq!(hashed, 0);
        let saved = Loaded::parse(fs::read(&cache).unwrap(), i128::MAX).unwrap();
        assert_eq!(saved.offsets().count(), 2);
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
            assert_eq!((hashed, &digests[0]), (1, &hash_file(&a).unwrap()));
            // The save replaced the bad file with a good one.
            assert_eq!(check(&cache, &[&a]).0, 0);
        }
    }

    #[test]
    fn a_change_amid_unchanged_files_is_hashed_alone_and_saved() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<PathBuf> = (0..5)
            .map(|i| aged_file(dir.path(), &format!("f{i}"), &i.to_string()))
            .collect();
        let all: Vec<&PathBuf> = files.iter().collect();
        let cache = dir.path().join("cache");
        let (_, first) = check(&cache, &all);
        let saved = fs::metadata(&cache).unwrap();

        // A no-op check writes nothing: the cache file is the same inode, untouched.
        assert_eq!(check(&cache, &all), (0, first.clone()));
        let again = fs::metadata(&cache).unwrap();
        assert_eq!(
            (again.ino(), again.mtime_nsec(), again.mtime()),
            (saved.ino(), saved.mtime_nsec(), saved.mtime())
        );

        // Same size, mtime put back: the ctime still tells the rewrite.
        let mtime = fs::metadata(&files[2]).unwrap().modified().unwrap();
        fs::write(&files[2], "x").unwrap();
        fs::File::options()
            .write(true)
            .open(&files[2])
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let (hashed, changed) = check(&cache, &all);
        assert_eq!(hashed, 1);
        assert_eq!(changed[2], hash_file(&files[2]).unwrap());
        assert_eq!(
            [changed[..2].to_vec(), changed[3..].to_vec()],
            [first[..2].to_vec(), first[3..].to_vec()]
        );
        // The new record was saved with the others: nothing is read the next time.
        assert_eq!(check(&cache, &all), (0, changed));
    }

    #[test]
    fn a_file_not_older_than_the_cache_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = aged_file(dir.path(), "data.txt", "one");
        let cache = dir.path().join("cache");
        assert_eq!(check(&cache, &[&file]).0, 1);
        assert_eq!(check(&cache, &[&file]).0, 0);
        // As if the file had been written in the same clock tick as the cache: its record
        // could miss a second write in that tick, so it is not trusted.
        let file_mtime = fs::metadata(&file).unwrap().modified().unwrap();
        fs::File::options()
            .write(true)
            .open(&cache)
            .unwrap()
            .set_modified(file_mtime)
            .unwrap();
        assert_eq!(check(&cache, &[&file]).0, 1);
        // That check saved the cache anew: now the record holds.
        assert_eq!(check(&cache, &[&file]).0, 0);
    }

    #[test]
    fn hex_is_what_the_hex_crate_writes() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(to_hex(&bytes), hex::encode(&bytes));
    }
}
