//! The per-process sweep: one `readdir(/proc)` per scan; `stat`, `status`, `io` and `cgroup`
//! kept open per (pid, start time) and re-read with `pread` (past the open files limit less a
//! reserve, opened for each read instead); `cmdline` and `environ` read when
//! a process is first seen and again when its name changes (an exec). `stat` and `io` are read
//! every sweep; `status` and `cgroup` seldom change and are read on a [`RereadSchedule`]. A
//! process that exits mid-scan is dropped without a word.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use procfs::FromRead;
use procfs::process::Stat;
use serde::Serialize;

use crate::app_metrics::AppSource;
use crate::groups::{Container, Group, cgroup_path, group_of};
use crate::metric::{SeriesKey, Source, key};

/// `environ` past this is not searched for `CANTAL_PATH`.
const MAX_ENVIRON: u64 = 1 << 20;
/// Command lines are shown up to this length.
const MAX_CMDLINE: u64 = 4096;
/// First read size for `stat`, `status`, `io` and `cgroup`; all of them usually fit.
const READ_SIZE: usize = 8192;

/// The per-process metrics, in the order of [`Process::keys`].
pub const PROCESS_METRICS: [&str; 8] = [
    "vsize",
    "rss",
    "swap",
    "num_threads",
    "user_time",
    "system_time",
    "read_bytes",
    "write_bytes",
];

/// One process in `/all_processes.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessInfo {
    pub pid: i32,
    pub ppid: i32,
    pub uid: u32,
    pub gid: u32,
    /// Shared with the process table.
    pub name: Arc<str>,
    /// One letter (`S`, `R`, ...); serialized as a string.
    pub state: char,
    pub vsize: u64,
    /// Bytes.
    pub rss: u64,
    /// Bytes.
    pub swap: u64,
    pub num_threads: i64,
    /// Ms after boot.
    pub start_time: u64,
    /// Ms since the epoch.
    pub start_timestamp: Option<u64>,
    /// Clock ticks, as in `/proc/PID/stat`.
    pub user_time: u64,
    pub system_time: u64,
    pub child_user_time: u64,
    pub child_system_time: u64,
    /// Shared with the process table: read once per program, not copied every scan.
    pub cmdline: Arc<str>,
    /// Absent when `io` is not readable.
    pub read_bytes: Option<u64>,
    pub write_bytes: Option<u64>,
    pub cgroup: Option<String>,
    pub container: Option<String>,
}

/// One process of a sweep, with what grouping and app metrics need.
#[derive(Debug, Clone)]
pub struct Process {
    pub info: ProcessInfo,
    /// Shared with the process table: not copied every scan.
    pub group: Option<Arc<Group>>,
    /// Shared with the process table.
    pub app: Option<Arc<AppSource>>,
    /// Series keys of [`PROCESS_METRICS`], built once per process and group.
    pub keys: Arc<[SeriesKey]>,
}

/// When a process's `status` (uid, gid, `VmSwap`) and `cgroup` are read again. Rendering them
/// was over a third of the sweep's kernel time, and for most processes they never change: they
/// are read on every sweep while a process is young (a service manager may move it into its
/// cgroup, and a daemon drops privileges, just after the start), then once per `period`
/// sweeps, staggered by pid so that each sweep reads an even share. `status` is also read
/// whenever `stat`'s rss or vsize moved since its last read: swapping pages out or in changes
/// rss, so `VmSwap` stays current for every process whose memory changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RereadSchedule {
    /// Sweeps from a process's first sight during which every sweep reads both files.
    young: u64,
    /// Sweeps between reads afterwards.
    period: u64,
}

impl RereadSchedule {
    /// How long a process counts as young.
    pub const YOUNG: Duration = Duration::from_secs(10);
    /// The longest a moved process waits to be regrouped once it is no longer young.
    pub const PERIOD: Duration = Duration::from_secs(30);

    /// The schedule for sweeps every `interval`: [`Self::YOUNG`] and [`Self::PERIOD`] in
    /// sweeps, at least one each.
    pub fn for_interval(interval: Duration) -> Self {
        let sweeps = |span: Duration| {
            let interval = interval.as_millis().max(1);
            u64::try_from(span.as_millis().div_ceil(interval))
                .unwrap_or(u64::MAX)
                .max(1)
        };
        Self {
            young: sweeps(Self::YOUNG),
            period: sweeps(Self::PERIOD),
        }
    }

    /// Whether sweep number `sweep` reads the files of `pid`, first seen at sweep `first`.
    fn due(self, pid: i32, first: u64, sweep: u64) -> bool {
        sweep.saturating_sub(first) < self.young
            || (sweep + u64::from(pid.unsigned_abs())).is_multiple_of(self.period)
    }
}

/// Descriptors under the open files limit that the sweep leaves to the rest of the agent
/// (HTTP and gRPC connections, storage, reopened proc files).
const RESERVED_DESCRIPTORS: u64 = 256;

/// A proc file of one process: kept open and re-read with `pread`, or, past the table's
/// descriptor budget, opened for each read.
#[derive(Debug)]
enum ProcFile {
    Kept(File),
    Reopened(PathBuf),
}

impl ProcFile {
    /// Keeps the file open while `budget` allows; the file must exist either way.
    fn open(path: PathBuf, budget: &mut usize) -> io::Result<Self> {
        if *budget == 0 {
            std::fs::metadata(&path)?;
            return Ok(Self::Reopened(path));
        }
        match File::open(&path) {
            Ok(file) => {
                *budget -= 1;
                Ok(Self::Kept(file))
            }
            Err(e) if isolation::limits::is_out_of_descriptors(&e) => Ok(Self::Reopened(path)),
            Err(e) => Err(e),
        }
    }

    fn is_kept(&self) -> bool {
        matches!(self, Self::Kept(_))
    }

    fn read<'a>(&self, buffer: &'a mut Vec<u8>) -> io::Result<&'a [u8]> {
        match self {
            Self::Kept(file) => read_at(file, buffer),
            Self::Reopened(path) => read_at(&File::open(path)?, buffer),
        }
    }
}

/// Raises the soft limit on open files to the hard limit: the sweep keeps four descriptors
/// per process, and the usual soft limit of 1024 would cover about 190 processes.
pub fn raise_open_files_limit() {
    use isolation::limits::{OpenFiles, open_files, set_open_files};
    match open_files() {
        Ok(OpenFiles { soft, hard }) if soft < hard => {
            if let Err(e) = set_open_files(hard) {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open files limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open files limit"),
    }
}

#[derive(Debug)]
struct Tracked {
    start_time: u64,
    stat: ProcFile,
    status: ProcFile,
    io: Option<ProcFile>,
    cgroup: ProcFile,
    /// The name (`comm`) when `cmdline` and `environ` were read: an exec changes it, and then
    /// they are read again (a process seen between fork and exec would otherwise keep its
    /// parent's command line).
    comm: Arc<str>,
    cmdline: Arc<str>,
    app: Option<Arc<AppSource>>,
    lithos_container: Option<Container>,
    /// The sweep that first saw the process, for the [`RereadSchedule`].
    first_sweep: u64,
    /// `status` as last read, with `stat`'s rss and vsize at that read (`None` before the
    /// first read).
    status_fields: Option<(StatusFields, (u64, u64))>,
    /// A hash of the `cgroup` file last read (`None` before the first read or when it must
    /// be parsed again), and what was derived from it: a process seldom moves, so these are
    /// reused while the file reads the same.
    cgroup_hash: Option<u64>,
    group: Option<Arc<Group>>,
    keys: Arc<[SeriesKey]>,
}

impl Tracked {
    fn kept_files(&self) -> usize {
        [
            Some(&self.stat),
            Some(&self.status),
            self.io.as_ref(),
            Some(&self.cgroup),
        ]
        .into_iter()
        .flatten()
        .filter(|file| file.is_kept())
        .count()
    }
}

/// Processes tracked across sweeps.
#[derive(Debug)]
pub struct ProcessTable {
    proc_root: PathBuf,
    lithos_root: String,
    page_size: u64,
    ticks_per_second: u64,
    /// Boxed: a map sized for growth holds about twice as many slots as processes.
    tracked: HashMap<i32, Box<Tracked>>,
    schedule: RereadSchedule,
    /// Sweeps so far, the current one included.
    sweeps: u64,
    /// How many more proc files may be kept open (from the open files limit at start).
    kept_budget: usize,
    buffer: Vec<u8>,
}

impl ProcessTable {
    /// A table for sweeps every `interval` (which sets the [`RereadSchedule`]).
    pub fn new(
        proc_root: impl Into<PathBuf>,
        lithos_root: impl Into<String>,
        interval: Duration,
    ) -> Self {
        Self {
            proc_root: proc_root.into(),
            lithos_root: lithos_root.into(),
            page_size: procfs::page_size(),
            ticks_per_second: procfs::ticks_per_second().max(1),
            tracked: HashMap::new(),
            schedule: RereadSchedule::for_interval(interval),
            sweeps: 0,
            kept_budget: keepable_files(),
            buffer: vec![0; READ_SIZE],
        }
    }

    /// Number of processes whose files are held open.
    pub fn tracked(&self) -> usize {
        self.tracked.len()
    }

    /// Reads every process; `boot_time_ms` turns start times into timestamps.
    pub fn sweep(&mut self, boot_time_ms: Option<u64>) -> Vec<Process> {
        let Ok(dir) = std::fs::read_dir(&self.proc_root) else {
            tracing::warn!(path = %self.proc_root.display(), "cannot list processes");
            return Vec::new();
        };
        let pids: Vec<i32> = dir
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        self.sweeps += 1;
        let mut seen = HashSet::with_capacity(pids.len());
        let mut processes = Vec::with_capacity(pids.len());
        for pid in pids {
            seen.insert(pid);
            if let Some(process) = self.read(pid, boot_time_ms) {
                processes.push(process);
            }
        }
        let budget = &mut self.kept_budget;
        self.tracked.retain(|pid, tracked| {
            let alive = seen.contains(pid);
            if !alive {
                *budget += tracked.kept_files();
            }
            alive
        });
        processes
    }

    fn read(&mut self, pid: i32, boot_time_ms: Option<u64>) -> Option<Process> {
        // A kept descriptor reads ESRCH once its process is gone, even if the pid is reused:
        // then the pid is opened afresh.
        let stat = match self.tracked.get(&pid) {
            Some(tracked) => match tracked
                .stat
                .read(&mut self.buffer)
                .ok()
                .and_then(|bytes| Stat::from_read(bytes).ok())
            {
                Some(stat) if stat.starttime == tracked.start_time => stat,
                _ => {
                    if let Some(gone) = self.tracked.remove(&pid) {
                        self.kept_budget += gone.kept_files();
                    }
                    self.open(pid)?
                }
            },
            None => self.open(pid)?,
        };
        let tracked = self.tracked.get_mut(&pid)?;
        let mut reread = self.schedule.due(pid, tracked.first_sweep, self.sweeps);
        if *stat.comm != *tracked.comm {
            let (cmdline, env) = read_image(&self.proc_root.join(pid.to_string()));
            tracked.comm = stat.comm.as_str().into();
            tracked.cmdline = cmdline;
            tracked.app = env.app.map(Arc::new);
            tracked.lithos_container = env.lithos_container;
            // The container named by the environment is merged into the group on a read of
            // the cgroup file; an exec may also change the ids.
            tracked.cgroup_hash = None;
            reread = true;
        }
        let memory = (stat.rss, stat.vsize);
        let status = match tracked.status_fields {
            Some((fields, basis)) if !reread && basis == memory => fields,
            _ => {
                let fields = StatusFields::parse(tracked.status.read(&mut self.buffer).ok()?)?;
                tracked.status_fields = Some((fields, memory));
                fields
            }
        };
        let io = tracked
            .io
            .as_ref()
            .and_then(|file| file.read(&mut self.buffer).ok())
            .and_then(IoFields::parse);
        if reread {
            let cgroup_file = tracked.cgroup.read(&mut self.buffer).ok()?;
            let hash = Some(hash_bytes(cgroup_file));
            if hash != tracked.cgroup_hash {
                let mut group = cgroup_path(&String::from_utf8_lossy(cgroup_file))
                    .and_then(|path| group_of(path, &self.lithos_root));
                if let Some(group) = group.as_mut()
                    && group.container.is_none()
                {
                    group.container.clone_from(&tracked.lithos_container);
                }
                if group.as_ref().map(|g| &g.name) != tracked.group.as_ref().map(|g| &g.name) {
                    tracked.keys = process_keys(pid, group.as_ref());
                }
                tracked.group = group.map(Arc::new);
                tracked.cgroup_hash = hash;
            }
        }
        let group = tracked.group.clone();
        let start_time = stat.starttime * 1000 / self.ticks_per_second;
        let info = ProcessInfo {
            pid,
            ppid: stat.ppid,
            uid: status.uid,
            gid: status.gid,
            name: Arc::clone(&tracked.comm),
            state: stat.state,
            vsize: stat.vsize,
            rss: stat.rss * self.page_size,
            swap: status.swap_kb * 1024,
            num_threads: stat.num_threads,
            start_time,
            start_timestamp: boot_time_ms.map(|boot| boot + start_time),
            user_time: stat.utime,
            system_time: stat.stime,
            child_user_time: u64::try_from(stat.cutime).unwrap_or(0),
            child_system_time: u64::try_from(stat.cstime).unwrap_or(0),
            cmdline: Arc::clone(&tracked.cmdline),
            read_bytes: io.map(|io| io.read_bytes),
            write_bytes: io.map(|io| io.write_bytes),
            cgroup: group.as_ref().map(|g| g.name.clone()),
            container: group
                .as_ref()
                .and_then(|g| g.container.as_ref())
                .or(tracked.lithos_container.as_ref())
                .map(ToString::to_string),
        };
        Some(Process {
            info,
            group,
            app: tracked.app.clone(),
            keys: Arc::clone(&tracked.keys),
        })
    }

    /// Opens a process's files; reads `cmdline` and `environ` once.
    fn open(&mut self, pid: i32) -> Option<Stat> {
        let dir = self.proc_root.join(pid.to_string());
        // Descriptors are given back when a file fails to open or the process is not kept.
        let mut budget = self.kept_budget;
        let stat_file = ProcFile::open(dir.join("stat"), &mut budget).ok()?;
        let stat = Stat::from_read(stat_file.read(&mut self.buffer).ok()?).ok()?;
        let status = ProcFile::open(dir.join("status"), &mut budget).ok()?;
        let cgroup = ProcFile::open(dir.join("cgroup"), &mut budget).ok()?;
        // io and environ need ptrace rights; without them the process is still listed.
        let io = ProcFile::open(dir.join("io"), &mut budget).ok();
        self.kept_budget = budget;
        let (cmdline, env) = read_image(&dir);
        self.tracked.insert(
            pid,
            Box::new(Tracked {
                start_time: stat.starttime,
                stat: stat_file,
                status,
                io,
                cgroup,
                comm: stat.comm.as_str().into(),
                cmdline,
                app: env.app.map(Arc::new),
                lithos_container: env.lithos_container,
                first_sweep: self.sweeps,
                // Filled in by the first read.
                status_fields: None,
                cgroup_hash: None,
                group: None,
                keys: process_keys(pid, None),
            }),
        );
        Some(stat)
    }
}

/// A hash of a file's bytes, to notice a change without keeping them.
fn hash_bytes(bytes: &[u8]) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(bytes)
}

/// Proc files the sweep may keep open: the open files limit less a reserve.
fn keepable_files() -> usize {
    let soft = isolation::limits::open_files().map_or(1024, |limits| limits.soft);
    usize::try_from(soft.saturating_sub(RESERVED_DESCRIPTORS)).unwrap_or(usize::MAX)
}

/// The command line and environment of the program a process runs (read at its first sight
/// and again after an exec).
fn read_image(dir: &Path) -> (Arc<str>, Environment) {
    let cmdline = read_capped(&dir.join("cmdline"), MAX_CMDLINE)
        .map(|bytes| {
            let text = String::from_utf8_lossy(&bytes);
            text.trim_end_matches('\0').replace('\0', " ").into()
        })
        .unwrap_or_default();
    let environ = read_capped(&dir.join("environ"), MAX_ENVIRON).unwrap_or_default();
    (cmdline, Environment::parse(&environ))
}

/// What the agent takes from a process's environment.
#[derive(Debug, Default, PartialEq)]
pub struct Environment {
    pub app: Option<AppSource>,
    pub lithos_container: Option<Container>,
}

impl Environment {
    /// Parses NUL-separated `NAME=value` pairs.
    pub fn parse(environ: &[u8]) -> Self {
        use std::os::unix::ffi::OsStrExt;
        let mut path = None;
        let mut appname = None;
        let mut lithos_container = None;
        for entry in environ.split(|&b| b == 0) {
            if let Some(value) = entry.strip_prefix(b"CANTAL_PATH=") {
                if !value.is_empty() {
                    path = Some(PathBuf::from(std::ffi::OsStr::from_bytes(value)));
                }
            } else if let Some(value) = entry.strip_prefix(b"CANTAL_APPNAME=") {
                appname = Some(String::from_utf8_lossy(value).into_owned());
            } else if let Some(value) = entry.strip_prefix(b"LITHOS_NAME=") {
                lithos_container = Container::from_lithos_name(&String::from_utf8_lossy(value));
            }
        }
        Self {
            app: path.map(|path| AppSource { path, appname }),
            lithos_container,
        }
    }
}

/// Series keys of [`PROCESS_METRICS`] for one process: `{metric, pid, cgroup}`.
fn process_keys(pid: i32, group: Option<&Group>) -> Arc<[SeriesKey]> {
    PROCESS_METRICS
        .iter()
        .map(|metric| {
            let mut fields = vec![("pid", pid.to_string())];
            if let Some(group) = group {
                fields.push(("cgroup", group.name.clone()));
            }
            SeriesKey::new(Source::Process, key(metric, fields))
        })
        .collect()
}

/// What the agent takes from `/proc/PID/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StatusFields {
    /// Real user and group ids.
    uid: u32,
    gid: u32,
    /// `VmSwap`; absent (0) for kernel threads.
    swap_kb: u64,
}

impl StatusFields {
    /// `None` when `Uid` or `Gid` is missing or malformed.
    fn parse(file: &[u8]) -> Option<Self> {
        let mut uid = None;
        let mut gid = None;
        let mut swap_kb = 0;
        for line in file.split(|&b| b == b'\n') {
            if let Some(rest) = line.strip_prefix(b"Uid:") {
                uid = first_number(rest);
            } else if let Some(rest) = line.strip_prefix(b"Gid:") {
                gid = first_number(rest);
            } else if let Some(rest) = line.strip_prefix(b"VmSwap:") {
                swap_kb = first_number(rest)?;
            }
        }
        Some(Self {
            uid: uid?,
            gid: gid?,
            swap_kb,
        })
    }
}

/// What the agent takes from `/proc/PID/io`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IoFields {
    read_bytes: u64,
    write_bytes: u64,
}

impl IoFields {
    fn parse(file: &[u8]) -> Option<Self> {
        let mut read_bytes = None;
        let mut write_bytes = None;
        for line in file.split(|&b| b == b'\n') {
            if let Some(rest) = line.strip_prefix(b"read_bytes:") {
                read_bytes = first_number(rest);
            } else if let Some(rest) = line.strip_prefix(b"write_bytes:") {
                write_bytes = first_number(rest);
            }
        }
        Some(Self {
            read_bytes: read_bytes?,
            write_bytes: write_bytes?,
        })
    }
}

/// The first whitespace-separated word of `text` as a number.
fn first_number<T: std::str::FromStr>(text: &[u8]) -> Option<T> {
    let word = text
        .split(u8::is_ascii_whitespace)
        .find(|word| !word.is_empty())?;
    std::str::from_utf8(word).ok()?.parse().ok()
}

/// Reads a whole proc file from offset 0 with `pread` into `buffer`, which only grows.
/// `stat`, `status`, `io` and `cgroup` are each generated whole by one kernel call, so a read
/// that leaves room in the buffer has the whole file; reading on until 0 would make the kernel
/// generate the file a second time.
fn read_at<'a>(file: &File, buffer: &'a mut Vec<u8>) -> io::Result<&'a [u8]> {
    if buffer.len() < READ_SIZE {
        buffer.resize(READ_SIZE, 0);
    }
    let mut filled = 0;
    loop {
        let n = file.read_at(&mut buffer[filled..], filled as u64)?;
        filled += n;
        if n == 0 || filled < buffer.len() {
            return Ok(&buffer[..filled]);
        }
        buffer.resize(buffer.len() * 2, 0);
    }
}

fn read_capped(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    File::open(path)?.take(cap).read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(2);

    #[test]
    fn environment_variables() {
        let env = Environment::parse(
            b"HOME=/root\0CANTAL_PATH=/run/app\0CANTAL_APPNAME=web\0LITHOS_NAME=demo/w.2\0",
        );
        assert_eq!(
            env.app,
            Some(AppSource {
                path: PathBuf::from("/run/app"),
                appname: Some("web".to_owned())
            })
        );
        assert_eq!(env.lithos_container.unwrap().to_string(), "demo/w.2");
        assert_eq!(
            Environment::parse(b"CANTAL_PATH=\0"),
            Environment::default()
        );
        assert_eq!(Environment::parse(b""), Environment::default());
    }

    #[test]
    fn status_and_io_fields() {
        let status =
            b"Name:\tsleep\nUid:\t1000\t0\t0\t0\nGid:\t100\t0\t0\t0\nVmSwap:\t      12 kB\n";
        assert_eq!(
            StatusFields::parse(status),
            Some(StatusFields {
                uid: 1000,
                gid: 100,
                swap_kb: 12
            })
        );
        // Kernel threads have no VmSwap; a status without ids is unusable.
        assert_eq!(
            StatusFields::parse(b"Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n").map(|s| s.swap_kb),
            Some(0)
        );
        assert_eq!(StatusFields::parse(b"Uid:\t0\nGid:\tx\n"), None);
        let io =
            b"rchar: 5\nwchar: 6\nread_bytes: 4096\nwrite_bytes: 8192\ncancelled_write_bytes: 0\n";
        assert_eq!(
            IoFields::parse(io),
            Some(IoFields {
                read_bytes: 4096,
                write_bytes: 8192
            })
        );
        assert_eq!(IoFields::parse(b"read_bytes: 1\n"), None);
    }

    #[test]
    fn reread_schedule() {
        let schedule = RereadSchedule::for_interval(INTERVAL);
        assert_eq!(
            schedule,
            RereadSchedule {
                young: 5,
                period: 15
            }
        );
        assert_eq!(
            RereadSchedule::for_interval(Duration::from_millis(700)),
            RereadSchedule {
                young: 15,
                period: 43
            }
        );
        assert_eq!(
            RereadSchedule::for_interval(Duration::from_secs(60)),
            RereadSchedule {
                young: 1,
                period: 1
            }
        );
        // Young processes are read on every sweep.
        for pid in [1, 2, 4242] {
            assert!((10..15).all(|sweep| schedule.due(pid, 10, sweep)));
        }
        // Then once per period, whatever the pid.
        for pid in 1..100 {
            let reads: Vec<u64> = (15..60)
                .filter(|&sweep| schedule.due(pid, 10, sweep))
                .collect();
            assert_eq!(reads.len(), 3, "pid {pid}: {reads:?}");
            assert!(reads.windows(2).all(|w| w[1] - w[0] == 15));
        }
        // Processes started together (consecutive pids) share the sweeps out evenly.
        for sweep in 100..115 {
            let due = (1000..1150).filter(|&pid| schedule.due(pid, 0, sweep));
            assert_eq!(due.count(), 10);
        }
    }

    /// A `/proc` holding one process, whose files are rewritten in place (kept descriptors
    /// read the new bytes).
    struct FakeProc {
        root: tempfile::TempDir,
    }

    impl FakeProc {
        const PID: i32 = 4242;

        fn new() -> Self {
            let fake = Self {
                root: tempfile::tempdir().unwrap(),
            };
            std::fs::create_dir(fake.root.path().join(Self::PID.to_string())).unwrap();
            fake.write("stat", &Self::stat(100));
            fake.write("status", &Self::status(1, 0));
            fake.write("io", "read_bytes: 1\nwrite_bytes: 2\n");
            fake.write("cgroup", "0::/system.slice/a.service\n");
            fake.write("cmdline", "app\0");
            fake.write("environ", "");
            fake
        }

        fn write(&self, file: &str, text: &str) {
            let path = self.root.path().join(Self::PID.to_string()).join(file);
            std::fs::write(path, text).unwrap();
        }

        fn stat(rss_pages: u64) -> String {
            format!(
                "{} (app) S 1 1 1 0 -1 4194304 102 0 0 0 0 0 0 0 20 0 1 0 5000 3133440 {rss_pages} \
                 18446744073709551615 1 1 1 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 1 1 1 1 1 1 1 0\n",
                Self::PID
            )
        }

        fn status(uid: u32, swap_kb: u64) -> String {
            format!("Uid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t5\t5\t5\t5\nVmSwap:\t{swap_kb} kB\n")
        }
    }

    #[test]
    fn status_and_cgroup_are_read_on_schedule() {
        let fake = FakeProc::new();
        let mut table = ProcessTable::new(fake.root.path(), "lithos.slice", INTERVAL);
        let schedule = table.schedule;
        let sweep = |table: &mut ProcessTable| table.sweep(Some(1)).pop().unwrap().info;
        let first = sweep(&mut table);
        assert_eq!((first.cgroup.as_deref(), first.uid), (Some("system/a"), 1));
        // While young, a move and a change of ids show on the next sweep.
        fake.write("cgroup", "0::/system.slice/b.service\n");
        fake.write("status", &FakeProc::status(7, 0));
        let second = sweep(&mut table);
        assert_eq!(
            (second.cgroup.as_deref(), second.uid),
            (Some("system/b"), 7)
        );
        while table.sweeps < schedule.young {
            sweep(&mut table);
        }
        // Then on the process's turn, within a period; the test needs a sweep off its turn.
        assert!(!schedule.due(FakeProc::PID, 1, schedule.young + 1));
        fake.write("cgroup", "0::/system.slice/c.service\n");
        fake.write("status", &FakeProc::status(8, 0));
        let mut turn_came = false;
        for _ in 0..schedule.period {
            turn_came |= schedule.due(FakeProc::PID, 1, table.sweeps + 1);
            let info = sweep(&mut table);
            assert_eq!(info.cgroup.as_deref() == Some("system/c"), turn_came);
            assert_eq!(info.uid == 8, turn_came);
        }
        assert!(turn_came);
        // Off its turn, a change of rss (pages swapped out) reads status, and so VmSwap.
        while schedule.due(FakeProc::PID, 1, table.sweeps + 1) {
            sweep(&mut table);
        }
        fake.write("status", &FakeProc::status(8, 64));
        assert_eq!(sweep(&mut table).swap, 0);
        fake.write("stat", &FakeProc::stat(84));
        let swapped = sweep(&mut table);
        assert_eq!(swapped.swap, 64 * 1024);
        assert_eq!(swapped.rss, 84 * table.page_size);
    }

    #[test]
    fn read_at_reads_files_longer_than_the_buffer() {
        use std::io::Write;
        let mut file = tempfile::tempfile().unwrap();
        let content: Vec<u8> = (0..READ_SIZE * 2 + 100).map(|i| i as u8).collect();
        file.write_all(&content).unwrap();
        let mut buffer = Vec::new();
        assert_eq!(read_at(&file, &mut buffer).unwrap(), content.as_slice());
        // The grown buffer is reused; a shorter read returns only what was read.
        file.set_len(10).unwrap();
        assert_eq!(read_at(&file, &mut buffer).unwrap(), &content[..10]);
    }

    #[test]
    fn sweeps_this_process_and_notices_exit() {
        let mut table = ProcessTable::new("/proc", "lithos.slice", INTERVAL);
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env("CANTAL_PATH", "/nonexistent/app")
            .spawn()
            .unwrap();
        let child_pid = i32::try_from(child.id()).unwrap();
        let processes = table.sweep(Some(1));
        let me = i32::try_from(std::process::id()).unwrap();
        let mine = processes.iter().find(|p| p.info.pid == me).unwrap();
        assert!(mine.info.rss > 0);
        assert!(mine.info.num_threads >= 1);
        let sleeper = processes.iter().find(|p| p.info.pid == child_pid).unwrap();
        assert_eq!(&*sleeper.info.name, "sleep");
        assert_eq!(&*sleeper.info.cmdline, "sleep 30");
        assert_eq!(
            sleeper.app.as_ref().map(|a| a.path.clone()),
            Some(PathBuf::from("/nonexistent/app"))
        );
        let keys: Vec<String> = sleeper
            .keys
            .iter()
            .map(|k| serde_json::to_string(&k.fields).unwrap())
            .collect();
        assert_eq!(keys.len(), PROCESS_METRICS.len());
        let cgroup = sleeper.info.cgroup.as_ref().map_or(String::new(), |c| {
            format!(r#""cgroup":{},"#, serde_json::to_string(c).unwrap())
        });
        assert_eq!(
            keys[1],
            format!(r#"{{{cgroup}"metric":"rss","pid":"{child_pid}"}}"#)
        );
        let again = table.sweep(Some(1));
        let sleeper_again = again.iter().find(|p| p.info.pid == child_pid).unwrap();
        // Unchanged processes reuse their keys.
        assert!(Arc::ptr_eq(&sleeper.keys, &sleeper_again.keys));
        assert_eq!(sleeper_again.info.cgroup, sleeper.info.cgroup);
        assert!(table.tracked.contains_key(&child_pid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!table.sweep(Some(1)).iter().any(|p| p.info.pid == child_pid));
        assert!(!table.tracked.contains_key(&child_pid));
    }

    #[test]
    fn past_the_descriptor_budget_files_are_opened_per_read() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let child_pid = i32::try_from(child.id()).unwrap();
        let mut kept = ProcessTable::new("/proc", "lithos.slice", INTERVAL);
        let budget = kept.kept_budget;
        let mut reopened = ProcessTable::new("/proc", "lithos.slice", INTERVAL);
        reopened.kept_budget = 0;
        let find = |table: &mut ProcessTable| {
            table
                .sweep(Some(1))
                .into_iter()
                .find(|p| p.info.pid == child_pid)
                .unwrap()
                .info
        };
        let (a, b) = (find(&mut kept), find(&mut reopened));
        assert_eq!(a, b);
        assert!(a.read_bytes.is_some());
        assert_eq!(reopened.tracked[&child_pid].kept_files(), 0);
        assert_eq!(find(&mut reopened), b, "a second sweep reads the same");
        assert_eq!(kept.tracked[&child_pid].kept_files(), 4);
        // The descriptors of a process that exits go back to the budget.
        child.kill().unwrap();
        child.wait().unwrap();
        kept.sweep(Some(1));
        assert!(!kept.tracked.contains_key(&child_pid));
        let held: usize = kept.tracked.values().map(|t| t.kept_files()).sum();
        assert_eq!(kept.kept_budget + held, budget);
    }

    #[test]
    fn an_exec_is_seen_with_its_new_command_line() {
        use std::io::Write;
        let mut table = ProcessTable::new("/proc", "lithos.slice", INTERVAL);
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read go; exec sleep 30"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let find = |table: &mut ProcessTable| {
            table
                .sweep(Some(1))
                .into_iter()
                .find(|p| p.info.pid == pid)
                .map(|p| (p.info.name, p.info.cmdline))
        };
        assert_eq!(
            find(&mut table),
            Some(("sh".into(), "sh -c read go; exec sleep 30".into()))
        );
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut seen = find(&mut table);
        while seen.as_ref().is_some_and(|(name, _)| &**name == "sh")
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
            seen = find(&mut table);
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(seen, Some(("sleep".into(), "sleep 30".into())));
    }
}
