//! One scan: system metrics, the process sweep, group aggregates and app metric files.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use libcantal::format::Value as AppValue;

use crate::app_metrics::{AppFileError, AppReader};
use crate::groups::Group;
use crate::metric::{Key, Sample, SeriesKey, Source, Value, key};
use crate::processes::{Process, ProcessInfo, ProcessTable};
use crate::sockets::{SocketReader, SocketSummary};
use crate::system;

/// An app state is reported for this long after it was entered.
const STATE_TTL_MS: u64 = 60_000;

/// Where the scanner looks.
#[derive(Debug, Clone)]
pub struct ScannerConfig {
    /// `/proc` outside tests.
    pub proc_root: PathBuf,
    /// First cgroup component of lithos containers.
    pub lithos_root: String,
    /// Time between scans.
    pub interval: Duration,
}

/// The result of one scan.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// Wall-clock time of the scan, ms since the epoch.
    pub timestamp_ms: u64,
    /// How long the scan took.
    pub duration: Duration,
    /// How long the per-process sweep (the `/proc` listing and each process's files) took.
    pub sweep_duration: Duration,
    pub boot_time_ms: Option<u64>,
    /// Samples of the system, sockets, groups and apps; [`Scan::samples`] adds the processes'.
    samples: Vec<Sample>,
    pub processes: Vec<Process>,
    pub sockets: SocketSummary,
    /// App file pairs read this scan.
    pub app_files: usize,
}

/// Keeps what must survive between scans: open process files, the netlink socket and cached
/// app meta.
#[derive(Debug)]
pub struct Scanner {
    config: ScannerConfig,
    processes: ProcessTable,
    sockets: SocketReader,
    apps: AppReader,
    /// Samples of the previous scan: the next one reserves that many at once instead of
    /// growing by doubling, which leaves freed blocks of every size behind.
    previous_samples: usize,
}

/// Sums over the processes of one group.
#[derive(Debug, Default)]
struct GroupTotals {
    vsize: u64,
    rss: u64,
    swap: u64,
    num_processes: u64,
    num_threads: i64,
    user_cpu: u64,
    system_cpu: u64,
    read_bytes: u64,
    write_bytes: u64,
}

impl Scanner {
    pub fn new(config: ScannerConfig) -> Self {
        Self {
            processes: ProcessTable::new(
                &config.proc_root,
                config.lithos_root.clone(),
                config.interval,
            ),
            sockets: SocketReader::new(&config.proc_root),
            apps: AppReader::new(),
            previous_samples: 0,
            config,
        }
    }

    pub fn scan(&mut self, timestamp_ms: u64) -> Scan {
        let started = Instant::now();
        let mut samples = Vec::with_capacity(self.previous_samples + self.previous_samples / 16);
        let info = system::collect(&self.config.proc_root, &mut samples);
        let sockets = self.sockets.read();
        sockets.samples(&mut samples);
        let sweep_started = Instant::now();
        let processes = self.processes.sweep(info.boot_time_ms);
        let sweep_duration = sweep_started.elapsed();
        let mut groups: BTreeMap<&Group, GroupTotals> = BTreeMap::new();
        for process in &processes {
            if let Some(group) = &process.group {
                groups.entry(group.as_ref()).or_default().add(&process.info);
            }
        }
        for (group, totals) in &groups {
            totals.samples(group, &mut samples);
        }
        let app_files = self.app_samples(&processes, timestamp_ms, &mut samples);
        self.previous_samples = samples.len();
        Scan {
            timestamp_ms,
            duration: started.elapsed(),
            sweep_duration,
            boot_time_ms: info.boot_time_ms,
            samples,
            processes,
            sockets,
            app_files,
        }
    }

    fn app_samples(&mut self, processes: &[Process], now_ms: u64, out: &mut Vec<Sample>) -> usize {
        self.apps.begin_scan();
        let mut files = 0;
        for process in processes {
            let Some(source) = &process.app else {
                continue;
            };
            let root = self
                .config
                .proc_root
                .join(process.info.pid.to_string())
                .join("root");
            let values = match self.apps.read(&root, source) {
                Ok(values) => values,
                // The reader logs what deserves a warning, once per file; a missing file is an
                // app starting or stopping, and every skipped file shows as a gap.
                Err(e @ (AppFileError::Open { .. } | AppFileError::Short { .. })) => {
                    tracing::debug!(pid = process.info.pid, error = %e, "no app metrics this scan");
                    continue;
                }
                Err(_) => continue,
            };
            files += 1;
            for (name, value) in values.iter() {
                let value = match value {
                    AppValue::Counter(v) => Value::Counter(*v),
                    AppValue::Signed(v) => Value::Integer(*v),
                    AppValue::Float(v) => Value::Float(*v),
                    AppValue::Unsigned(v) => Value::Integer(i64::try_from(*v).unwrap_or(i64::MAX)),
                    AppValue::State { entered_ms, text } => {
                        if now_ms.saturating_sub(*entered_ms) > STATE_TTL_MS {
                            continue;
                        }
                        Value::State(*entered_ms, text.clone())
                    }
                };
                let mut fields: Key = name.clone();
                fields.insert("pid".to_owned(), process.info.pid.to_string());
                match (&source.appname, &process.info.cgroup) {
                    (Some(appname), _) => {
                        fields.insert("appname".to_owned(), appname.clone());
                    }
                    (None, Some(cgroup)) => {
                        fields.insert("cgroup".to_owned(), cgroup.clone());
                    }
                    (None, None) => {}
                }
                if let Some(container) = &process.info.container {
                    fields.insert("container".to_owned(), container.clone());
                }
                out.push((SeriesKey::new(Source::App, fields), value));
            }
        }
        self.apps.end_scan();
        files
    }
}

impl Scan {
    /// Every sample of the scan. The processes' (most of them) are made from the process
    /// records as they are read rather than stored: that saved a vector of about 9,000 samples
    /// per scan, two of them alive while a scan replaces the latest.
    pub fn samples(&self) -> impl Iterator<Item = (&SeriesKey, Value)> {
        self.samples
            .iter()
            .map(|(key, value)| (key, value.clone()))
            .chain(self.processes.iter().flat_map(process_samples))
    }
}

fn process_samples(process: &Process) -> impl Iterator<Item = (&SeriesKey, Value)> {
    let info = &process.info;
    let io = info.read_bytes.zip(info.write_bytes);
    // In the order of PROCESS_METRICS.
    let values = [
        Some(level(info.vsize)),
        Some(level(info.rss)),
        Some(level(info.swap)),
        Some(Value::Integer(info.num_threads)),
        Some(Value::Counter(info.user_time)),
        Some(Value::Counter(info.system_time)),
        io.map(|(read, _)| Value::Counter(read)),
        io.map(|(_, write)| Value::Counter(write)),
    ];
    process
        .keys
        .iter()
        .zip(values)
        .filter_map(|(key, value)| Some((key, value?)))
}

fn level(value: u64) -> Value {
    Value::Integer(i64::try_from(value).unwrap_or(i64::MAX))
}

impl GroupTotals {
    fn add(&mut self, info: &ProcessInfo) {
        self.vsize += info.vsize;
        self.rss += info.rss;
        self.swap += info.swap;
        self.num_processes += 1;
        self.num_threads += info.num_threads;
        self.user_cpu += info.user_time;
        self.system_cpu += info.system_time;
        self.read_bytes += info.read_bytes.unwrap_or(0);
        self.write_bytes += info.write_bytes.unwrap_or(0);
    }

    fn samples(&self, group: &Group, out: &mut Vec<Sample>) {
        let fields = || {
            let mut fields = vec![("group", group.name.clone())];
            if let Some(container) = &group.container {
                fields.extend([
                    ("container", container.to_string()),
                    ("sandbox", container.sandbox.clone()),
                    ("process", container.process.clone()),
                    ("instance", container.instance.clone()),
                ]);
            }
            fields
        };
        let values = [
            ("vsize", level(self.vsize)),
            ("rss", level(self.rss)),
            ("swap", level(self.swap)),
            ("num_processes", level(self.num_processes)),
            ("num_threads", Value::Integer(self.num_threads)),
            ("user_cpu", Value::Counter(self.user_cpu)),
            ("system_cpu", Value::Counter(self.system_cpu)),
            ("read_bytes", Value::Counter(self.read_bytes)),
            ("write_bytes", Value::Counter(self.write_bytes)),
        ];
        for (metric, value) in values {
            out.push((SeriesKey::new(Source::Group, key(metric, fields())), value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_this_host() {
        let mut scanner = Scanner::new(ScannerConfig {
            proc_root: PathBuf::from("/proc"),
            lithos_root: "lithos.slice".to_owned(),
            interval: Duration::from_secs(2),
        });
        let scan = scanner.scan(1_700_000_000_000);
        let me = std::process::id().to_string();
        assert!(scan.samples().any(|(k, _)| k.source == Source::Process
            && k.metric() == "rss"
            && k.fields.get("pid") == Some(&me)));
        assert!(
            scan.samples()
                .any(|(k, _)| k.source == Source::System && k.metric() == "cpu.user")
        );
        assert!(scan.processes.len() > 1);
        assert!(scan.boot_time_ms.is_some());
    }
}
