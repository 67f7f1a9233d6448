//! Host-wide metrics from `/proc`: uptime, load, CPU, memory, network, disks.
//!
//! Every parser takes the file's text, so tests feed them fixtures; [`collect`] reads the
//! files under a proc root. A file that cannot be read or parsed contributes nothing to the
//! scan (the kernel may lack it, as in a network namespace without IPv6).

use std::path::Path;

use crate::metric::{Sample, Value, system_key};

/// Bytes of a disk sector as `/proc/diskstats` counts them, whatever the device's own size.
const SECTOR_SIZE: u64 = 512;

/// What the rest of the scan needs from the system files.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SystemInfo {
    /// Boot time, ms since the epoch (from `btime`).
    pub boot_time_ms: Option<u64>,
}

/// Reads every system source under `proc_root` into `out`.
pub fn collect(proc_root: &Path, out: &mut Vec<Sample>) -> SystemInfo {
    let read = |name: &str| match std::fs::read_to_string(proc_root.join(name)) {
        Ok(text) => Some(text),
        Err(e) => {
            tracing::debug!(file = name, error = %e, "system metrics source unreadable");
            None
        }
    };
    let mut info = SystemInfo::default();
    if let Some(text) = read("uptime") {
        parse_uptime(&text, out);
    }
    if let Some(text) = read("loadavg") {
        parse_loadavg(&text, out);
    }
    if let Some(text) = read("sys/fs/file-nr") {
        parse_file_nr(&text, out);
    }
    if let Some(text) = read("stat") {
        info.boot_time_ms = parse_stat(&text, out);
    }
    if let Some(text) = read("meminfo") {
        parse_meminfo(&text, out);
    }
    if let Some(text) = read("net/dev") {
        parse_net_dev(&text, out);
    }
    for file in ["net/netstat", "net/snmp"] {
        if let Some(text) = read(file) {
            parse_protocol_counters(&text, out);
        }
    }
    if let Some(text) = read("diskstats") {
        parse_diskstats(&text, out);
    }
    info
}

fn push(out: &mut Vec<Sample>, metric: &str, value: Value) {
    out.push((system_key(metric, []), value));
}

pub fn parse_uptime(text: &str, out: &mut Vec<Sample>) {
    let mut words = text.split_whitespace().map(str::parse::<f64>);
    if let (Some(Ok(uptime)), Some(Ok(idle))) = (words.next(), words.next()) {
        push(out, "uptime", Value::Float(uptime));
        push(out, "idle_time", Value::Float(idle));
    }
}

pub fn parse_loadavg(text: &str, out: &mut Vec<Sample>) {
    let words: Vec<&str> = text.split_whitespace().collect();
    let [one, five, fifteen, procs, ..] = words.as_slice() else {
        return;
    };
    for (metric, word) in [
        ("load_avg_1min", one),
        ("load_avg_5min", five),
        ("load_avg_15min", fifteen),
    ] {
        if let Ok(value) = word.parse() {
            push(out, metric, Value::Float(value));
        }
    }
    if let Some((runnable, total)) = procs.split_once('/')
        && let (Ok(runnable), Ok(total)) = (runnable.parse(), total.parse())
    {
        push(out, "proc_runnable", Value::Integer(runnable));
        push(out, "proc_total", Value::Integer(total));
    }
}

pub fn parse_file_nr(text: &str, out: &mut Vec<Sample>) {
    if let Some(Ok(open)) = text.split_whitespace().next().map(str::parse) {
        push(out, "open_files", Value::Integer(open));
    }
}

/// CPU counters of the aggregate `cpu` line; returns the boot time in ms.
pub fn parse_stat(text: &str, out: &mut Vec<Sample>) -> Option<u64> {
    const CPU_FIELDS: [&str; 10] = [
        "user",
        "nice",
        "system",
        "idle",
        "iowait",
        "irq",
        "softirq",
        "steal",
        "guest",
        "guest_nice",
    ];
    let mut boot_time = None;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("cpu") => {
                for (field, word) in CPU_FIELDS.iter().zip(words) {
                    if let Ok(ticks) = word.parse() {
                        push(out, &format!("cpu.{field}"), Value::Counter(ticks));
                    }
                }
            }
            Some("btime") => {
                boot_time = words
                    .next()
                    .and_then(|w| w.parse::<u64>().ok())
                    .map(|secs| secs * 1000);
            }
            _ => {}
        }
    }
    boot_time
}

/// Every field as `memory.<Field>` in bytes (fields without a unit are counts).
pub fn parse_meminfo(text: &str, out: &mut Vec<Sample>) {
    for line in text.lines() {
        let Some((field, rest)) = line.split_once(':') else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let Some(Ok(number)) = words.next().map(str::parse::<i64>) else {
            continue;
        };
        let value = match words.next() {
            Some("kB") => number.saturating_mul(1024),
            _ => number,
        };
        push(out, &format!("memory.{field}"), Value::Integer(value));
    }
}

/// `net.interface.{rx,tx}.<column>` counters with an `interface` field.
pub fn parse_net_dev(text: &str, out: &mut Vec<Sample>) {
    let mut lines = text.lines();
    let _title = lines.next();
    let Some(header) = lines.next() else {
        return;
    };
    // "face |bytes packets ... |bytes packets ..." names the columns of each direction.
    let sections: Vec<&str> = header.split('|').collect();
    let [_, rx, tx] = sections.as_slice() else {
        return;
    };
    let columns: Vec<(&str, &str)> = rx
        .split_whitespace()
        .map(|c| ("rx", c))
        .chain(tx.split_whitespace().map(|c| ("tx", c)))
        .collect();
    for line in lines {
        let Some((interface, numbers)) = line.split_once(':') else {
            continue;
        };
        let interface = interface.trim();
        for ((direction, column), word) in columns.iter().zip(numbers.split_whitespace()) {
            if let Ok(value) = word.parse() {
                out.push((
                    system_key(
                        &format!("net.interface.{direction}.{column}"),
                        [("interface", interface.to_owned())],
                    ),
                    Value::Counter(value),
                ));
            }
        }
    }
}

/// `/proc/net/netstat` and `/proc/net/snmp`: pairs of `Proto: names` / `Proto: values` lines
/// become `net.<Proto>.<Field>`; negative values (such as `Tcp: MaxConn -1`) are levels.
pub fn parse_protocol_counters(text: &str, out: &mut Vec<Sample>) {
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else {
            continue;
        };
        let (Some((proto, names)), Some((proto2, values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        if proto != proto2 {
            continue;
        }
        for (name, word) in names.split_whitespace().zip(values.split_whitespace()) {
            let value = match (word.parse::<u64>(), word.parse::<i64>()) {
                (Ok(v), _) => Value::Counter(v),
                (_, Ok(v)) => Value::Integer(v),
                _ => continue,
            };
            push(out, &format!("net.{proto}.{name}"), value);
        }
    }
}

/// `disk.*` counters per device (partitions included, as the original).
pub fn parse_diskstats(text: &str, out: &mut Vec<Sample>) {
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() < 14 {
            continue;
        }
        let device = words[2];
        let Ok(numbers) = words[3..14]
            .iter()
            .map(|w| w.parse::<u64>())
            .collect::<Result<Vec<u64>, _>>()
        else {
            continue;
        };
        let [
            reads,
            read_merges,
            read_sectors,
            read_time,
            writes,
            write_merges,
            write_sectors,
            write_time,
            in_progress,
            time,
            weighted_time,
        ] = numbers[..]
        else {
            continue;
        };
        let counters = [
            ("disk.read.ops", reads),
            ("disk.read.merges", read_merges),
            ("disk.read.bytes", read_sectors * SECTOR_SIZE),
            ("disk.read.time", read_time),
            ("disk.write.ops", writes),
            ("disk.write.merges", write_merges),
            ("disk.write.bytes", write_sectors * SECTOR_SIZE),
            ("disk.write.time", write_time),
            ("disk.time", time),
            ("disk.weighted_time", weighted_time),
        ];
        let field = || [("device", device.to_owned())];
        for (metric, value) in counters {
            out.push((system_key(metric, field()), Value::Counter(value)));
        }
        out.push((
            system_key("disk.in_progress", field()),
            Value::Integer(i64::try_from(in_progress).unwrap_or(i64::MAX)),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(out: &'a [Sample], metric: &str) -> Vec<&'a Sample> {
        out.iter().filter(|(k, _)| &k["metric"] == metric).collect()
    }

    #[test]
    fn uptime_load_files() {
        let mut out = Vec::new();
        parse_uptime("350735.47 234388.90\n", &mut out);
        parse_loadavg("0.50 0.25 0.10 2/456 12345\n", &mut out);
        parse_file_nr("1376\t0\t9223372036854775807\n", &mut out);
        let values: Vec<_> = out.iter().map(|(k, v)| (&k["metric"], v.clone())).collect();
        assert_eq!(
            values,
            [
                ("uptime", Value::Float(350735.47)),
                ("idle_time", Value::Float(234388.90)),
                ("load_avg_1min", Value::Float(0.5)),
                ("load_avg_5min", Value::Float(0.25)),
                ("load_avg_15min", Value::Float(0.1)),
                ("proc_runnable", Value::Integer(2)),
                ("proc_total", Value::Integer(456)),
                ("open_files", Value::Integer(1376)),
            ]
        );
    }

    #[test]
    fn stat_cpu_and_btime() {
        let mut out = Vec::new();
        let boot = parse_stat(
            "cpu  10 1 20 300 4 0 5 0 0 0\ncpu0 5 0 10 150 2 0 2 0 0 0\nbtime 1700000000\n",
            &mut out,
        );
        assert_eq!(boot, Some(1_700_000_000_000));
        assert_eq!(out.len(), 10);
        assert_eq!(find(&out, "cpu.system")[0].1, Value::Counter(20));
        assert_eq!(find(&out, "cpu.guest_nice")[0].1, Value::Counter(0));
    }

    #[test]
    fn meminfo_in_bytes() {
        let mut out = Vec::new();
        parse_meminfo(
            "MemTotal:       16318412 kB\nHugePages_Total:       0\nHugepagesize:       2048 kB\n",
            &mut out,
        );
        assert_eq!(
            find(&out, "memory.MemTotal")[0].1,
            Value::Integer(16318412 * 1024)
        );
        assert_eq!(find(&out, "memory.HugePages_Total")[0].1, Value::Integer(0));
    }

    #[test]
    fn net_dev_columns() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
            face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
            lo:  1000      10    0    0    0     0          0         0     2000      20    0    0    0     0       0          0\n  \
            eth0: 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20\n";
        let mut out = Vec::new();
        parse_net_dev(text, &mut out);
        assert_eq!(out.len(), 32);
        let rx = find(&out, "net.interface.rx.bytes");
        assert_eq!(&rx[0].0["interface"], "lo");
        assert_eq!(rx[0].1, Value::Counter(1000));
        let carrier = find(&out, "net.interface.tx.carrier");
        assert_eq!(&carrier[1].0["interface"], "eth0");
        assert_eq!(carrier[1].1, Value::Counter(19));
        assert_eq!(
            find(&out, "net.interface.rx.multicast")[1].1,
            Value::Counter(12)
        );
    }

    #[test]
    fn protocol_pairs() {
        let mut out = Vec::new();
        parse_protocol_counters(
            "Tcp: RtoAlgorithm MaxConn ActiveOpens\nTcp: 1 -1 42\nUdp: InDatagrams\nUdp: 7\n",
            &mut out,
        );
        assert_eq!(find(&out, "net.Tcp.MaxConn")[0].1, Value::Integer(-1));
        assert_eq!(find(&out, "net.Tcp.ActiveOpens")[0].1, Value::Counter(42));
        assert_eq!(find(&out, "net.Udp.InDatagrams")[0].1, Value::Counter(7));
    }

    #[test]
    fn diskstats_per_device() {
        let mut out = Vec::new();
        parse_diskstats(
            " 259       0 nvme0n1 100 2 800 50 200 3 1600 70 1 90 120 0 0 0 0\n 7 0 short 1 2\n",
            &mut out,
        );
        assert_eq!(out.len(), 11);
        assert_eq!(
            find(&out, "disk.read.bytes")[0].1,
            Value::Counter(800 * 512)
        );
        assert_eq!(find(&out, "disk.in_progress")[0].1, Value::Integer(1));
        assert_eq!(&find(&out, "disk.weighted_time")[0].0["device"], "nvme0n1");
    }

    #[test]
    fn collects_from_the_real_proc() {
        let mut out = Vec::new();
        let info = collect(Path::new("/proc"), &mut out);
        assert!(info.boot_time_ms.is_some());
        for metric in ["uptime", "cpu.user", "memory.MemTotal", "load_avg_1min"] {
            assert!(!find(&out, metric).is_empty(), "{metric} missing");
        }
    }
}
