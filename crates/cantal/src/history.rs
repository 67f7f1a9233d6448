//! History of every numeric series: one sample per scan, kept for `--keep-history`.
//!
//! Scans are numbered; their wall-clock times are kept once in a ring. Each series stores
//! chunks of up to [`CHUNK_ENTRIES`] scans, each a byte string of tokens: a value (integers as
//! a zigzag varint delta from the previous value, floats as 8 raw bytes), a run of repeats of
//! the previous value, or a run of scans where the series was absent. Dropping history is
//! dropping whole chunks from the front. States keep only their latest value.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::metric::{SeriesKey, Value};

/// Scans per chunk; older data goes a chunk at a time.
pub const CHUNK_ENTRIES: u32 = 64;

const OP_VALUE: u8 = 0;
const OP_REPEAT: u8 = 1;
const OP_SKIP: u8 = 2;

/// How a series' values are encoded and read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Counter,
    Integer,
    Float,
}

impl Kind {
    fn of(value: &Value) -> Option<(Self, u64)> {
        match *value {
            Value::Counter(v) => Some((Self::Counter, v)),
            Value::Integer(v) => Some((Self::Integer, v as u64)),
            Value::Float(v) => Some((Self::Float, v.to_bits())),
            Value::State(..) => None,
        }
    }

    /// The stored bits as a number.
    pub fn to_f64(self, bits: u64) -> f64 {
        match self {
            Self::Counter => bits as f64,
            Self::Integer => bits as i64 as f64,
            Self::Float => f64::from_bits(bits),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Chunk {
    start_scan: u64,
    /// Scans covered, including the pending run.
    entries: u32,
    data: Vec<u8>,
    /// Bits of the last value written.
    last: u64,
    /// A run not yet written to `data` (op, length), extended while it lasts. The op is a
    /// byte: a chunk is then 56 bytes, not 72, in each of the ten thousand series (stored
    /// history encodes integers by value, so it reads the same).
    run: Option<(u8, u32)>,
}

impl Chunk {
    fn new(start_scan: u64) -> Self {
        Self {
            start_scan,
            entries: 0,
            data: Vec::new(),
            last: 0,
            run: None,
        }
    }

    fn end_scan(&self) -> u64 {
        self.start_scan + u64::from(self.entries)
    }

    fn extend_run(&mut self, op: u8, count: u32) {
        match &mut self.run {
            Some((run_op, length)) if *run_op == op => *length += count,
            _ => {
                self.flush_run();
                self.run = Some((op, count));
            }
        }
        self.entries += count;
    }

    fn flush_run(&mut self) {
        if let Some((op, length)) = self.run.take() {
            write_varint(&mut self.data, (u64::from(length) << 2) | u64::from(op));
        }
    }

    fn push(&mut self, kind: Kind, bits: u64) {
        if bits == self.last && self.entries > 0 {
            self.extend_run(OP_REPEAT, 1);
            return;
        }
        self.flush_run();
        write_varint(&mut self.data, u64::from(OP_VALUE));
        match kind {
            Kind::Float => self.data.extend_from_slice(&bits.to_le_bytes()),
            Kind::Counter | Kind::Integer => {
                write_varint(&mut self.data, zigzag(bits.wrapping_sub(self.last) as i64));
            }
        }
        self.last = bits;
        self.entries += 1;
    }

    /// Calls `each(scan, Some(bits) | None)` for every scan of the chunk.
    fn decode(&self, kind: Kind, mut each: impl FnMut(u64, Option<u64>)) {
        let mut scan = self.start_scan;
        let mut last = 0u64;
        let mut data = self.data.as_slice();
        let mut apply = |op: u8, length: u64, data: &mut &[u8], scan: &mut u64| {
            match op {
                OP_VALUE => {
                    let bits = match kind {
                        Kind::Float => {
                            let Some((bytes, rest)) = data.split_first_chunk::<8>() else {
                                return false;
                            };
                            *data = rest;
                            u64::from_le_bytes(*bytes)
                        }
                        Kind::Counter | Kind::Integer => {
                            let Some(delta) = read_varint(data) else {
                                return false;
                            };
                            last.wrapping_add(unzigzag(delta) as u64)
                        }
                    };
                    last = bits;
                    each(*scan, Some(bits));
                    *scan += 1;
                }
                OP_REPEAT | OP_SKIP => {
                    for _ in 0..length {
                        each(*scan, (op == OP_REPEAT).then_some(last));
                        *scan += 1;
                    }
                }
                _ => return false,
            }
            true
        };
        while let Some(tag) = read_varint(&mut data) {
            if !apply((tag & 3) as u8, tag >> 2, &mut data, &mut scan) {
                return;
            }
        }
        if let Some((op, length)) = self.run {
            apply(op, u64::from(length), &mut data, &mut scan);
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Series {
    kind: Kind,
    /// Oldest first. A `Vec` (8 bytes less than a `VecDeque` in every slot of the series map):
    /// the front is dropped once per chunk, from a few dozen.
    chunks: Vec<Chunk>,
    /// The last scan with a value.
    last_scan: u64,
}

impl Series {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            // One chunk covers the first two minutes; the default first allocation of four
            // would cost 200 bytes more per series.
            chunks: Vec::with_capacity(1),
            last_scan: 0,
        }
    }

    fn push(&mut self, scan: u64, bits: u64) {
        let full = self
            .chunks
            .last()
            .is_none_or(|chunk| chunk.entries >= CHUNK_ENTRIES);
        if full {
            if let Some(chunk) = self.chunks.last_mut() {
                chunk.flush_run();
                // A full chunk is never written again; most are a few bytes of runs.
                chunk.data.shrink_to_fit();
            }
            // One more slot, not double: at 128 s every series gets its second chunk, and
            // doubling from one to four slots cost about 2 MB across 10,000 series.
            self.chunks.reserve_exact(1);
            self.chunks.push(Chunk::new(scan));
        }
        let chunk = self.chunks.last_mut().expect("a chunk was just ensured");
        let gap = scan.saturating_sub(chunk.end_scan());
        if gap > 0 {
            chunk.extend_run(OP_SKIP, u32::try_from(gap).unwrap_or(u32::MAX));
        }
        chunk.push(self.kind, bits);
        self.last_scan = scan;
    }

    fn encoded_bytes(&self) -> usize {
        self.chunks.iter().map(|c| c.data.len() + 32).sum()
    }
}

/// The latest value of a state series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateValue {
    pub scan: u64,
    pub entered_ms: u64,
    pub text: String,
}

/// Every series' recent history.
#[derive(Debug, Clone)]
pub struct History {
    keep: usize,
    first_scan: u64,
    timestamps: VecDeque<u64>,
    series: HashMap<SeriesKey, Series>,
    states: HashMap<SeriesKey, StateValue>,
}

/// What [`History::push_scan`] noticed about the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockStep {
    Forward,
    /// The wall clock went back; the scan was stamped 1 ms after the previous one.
    Backward {
        by_ms: u64,
    },
}

impl History {
    /// History keeping `keep` scans.
    pub fn new(keep: usize) -> Self {
        Self {
            keep: keep.max(1),
            first_scan: 0,
            timestamps: VecDeque::new(),
            series: HashMap::new(),
            states: HashMap::new(),
        }
    }

    /// Records one scan. Timestamps stay strictly increasing: a backward wall-clock step is
    /// reported and the scan stamped just after the previous one.
    pub fn push_scan<'a, V: Borrow<Value>>(
        &mut self,
        timestamp_ms: u64,
        samples: impl IntoIterator<Item = (&'a SeriesKey, V)>,
    ) -> ClockStep {
        let scan = self.next_scan();
        let (timestamp_ms, step) = match self.timestamps.back() {
            Some(&last) if timestamp_ms <= last => (
                last + 1,
                ClockStep::Backward {
                    by_ms: last - timestamp_ms,
                },
            ),
            _ => (timestamp_ms, ClockStep::Forward),
        };
        self.timestamps.push_back(timestamp_ms);
        for (key, value) in samples {
            let value = value.borrow();
            if let Value::State(entered_ms, text) = value {
                self.states.insert(
                    key.clone(),
                    StateValue {
                        scan,
                        entered_ms: *entered_ms,
                        text: text.clone(),
                    },
                );
                continue;
            }
            let Some((kind, bits)) = Kind::of(value) else {
                continue;
            };
            // Looked up before inserting: nearly every series already exists.
            let series = match self.series.get_mut(key) {
                Some(series) => series,
                None => self.series.entry(key.clone()).or_insert(Series::new(kind)),
            };
            if series.kind != kind {
                // An app rewrote its meta with another type under the same name.
                *series = Series::new(kind);
            }
            series.push(scan, bits);
        }
        self.trim();
        step
    }

    fn trim(&mut self) {
        while self.timestamps.len() > self.keep {
            self.timestamps.pop_front();
            self.first_scan += 1;
        }
        let first = self.first_scan;
        self.series.retain(|_, series| {
            let expired = series
                .chunks
                .iter()
                .take_while(|chunk| chunk.end_scan() <= first)
                .count();
            series.chunks.drain(..expired);
            !series.chunks.is_empty()
        });
        self.states.retain(|_, state| state.scan >= first);
    }

    /// Number of the next scan to be pushed.
    pub fn next_scan(&self) -> u64 {
        self.first_scan + self.timestamps.len() as u64
    }

    /// Number of the oldest scan kept.
    pub fn first_scan(&self) -> u64 {
        self.first_scan
    }

    /// Time of a scan, if kept.
    pub fn timestamp(&self, scan: u64) -> Option<u64> {
        let index = usize::try_from(scan.checked_sub(self.first_scan)?).ok()?;
        self.timestamps.get(index).copied()
    }

    /// Scans whose time is within `from_ms..=to_ms`.
    pub fn scans_between(&self, from_ms: u64, to_ms: u64) -> Range<u64> {
        let start = self.timestamps.partition_point(|&t| t < from_ms) as u64;
        let end = self.timestamps.partition_point(|&t| t <= to_ms) as u64;
        self.first_scan + start..self.first_scan + end.max(start)
    }

    /// The last `n` scans.
    pub fn last_scans(&self, n: usize) -> Range<u64> {
        let end = self.next_scan();
        end.saturating_sub(n as u64).max(self.first_scan)..end
    }

    /// Every numeric series with its kind.
    pub fn keys(&self) -> impl Iterator<Item = (&SeriesKey, Kind)> {
        self.series.iter().map(|(key, series)| (key, series.kind))
    }

    /// The latest value of every state series.
    pub fn states(&self) -> impl Iterator<Item = (&SeriesKey, &StateValue)> {
        self.states.iter()
    }

    /// Values of `key` for each scan in `scans`, `None` where the series was absent.
    pub fn values(&self, key: &SeriesKey, scans: Range<u64>) -> Option<(Kind, Vec<Option<f64>>)> {
        let series = self.series.get(key)?;
        let mut values = vec![None; usize::try_from(scans.end.saturating_sub(scans.start)).ok()?];
        for chunk in &series.chunks {
            if chunk.end_scan() <= scans.start || chunk.start_scan >= scans.end {
                continue;
            }
            chunk.decode(series.kind, |scan, bits| {
                if scans.contains(&scan)
                    && let Some(bits) = bits
                {
                    values[(scan - scans.start) as usize] = Some(series.kind.to_f64(bits));
                }
            });
        }
        Some((series.kind, values))
    }

    /// Approximate bytes of encoded history, for the agent's self metrics.
    pub fn encoded_bytes(&self) -> usize {
        self.series
            .values()
            .map(Series::encoded_bytes)
            .sum::<usize>()
            + self.timestamps.len() * 8
    }

    pub fn num_series(&self) -> usize {
        self.series.len() + self.states.len()
    }

    /// Changes how many scans are kept (after loading a file written with another setting).
    pub fn set_keep(&mut self, keep: usize) {
        self.keep = keep.max(1);
        self.trim();
    }

    pub fn to_persisted(&self) -> PersistedHistory {
        PersistedHistory {
            first_scan: self.first_scan,
            timestamps: self.timestamps.iter().copied().collect(),
            series: self
                .series
                .iter()
                .map(|(key, series)| (key.clone(), series.clone()))
                .collect(),
            states: self
                .states
                .iter()
                .map(|(key, state)| (key.clone(), state.clone()))
                .collect(),
        }
    }

    pub fn from_persisted(persisted: PersistedHistory, keep: usize) -> Self {
        let mut history = Self {
            keep: keep.max(1),
            first_scan: persisted.first_scan,
            timestamps: persisted.timestamps.into(),
            series: persisted.series.into_iter().collect(),
            states: persisted.states.into_iter().collect(),
        };
        history.trim();
        history
    }
}

/// The history as stored in `current.cbor`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PersistedHistory {
    first_scan: u64,
    timestamps: Vec<u64>,
    series: Vec<(SeriesKey, Series)>,
    states: Vec<(SeriesKey, StateValue)>,
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint(data: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = data.split_first()?;
        *data = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_and_its_chunk_stay_small() {
        // About ten thousand of each are kept (every series of a host with 1,000 processes).
        assert_eq!(size_of::<Series>(), 40);
        assert_eq!(size_of::<Chunk>(), 56);
    }
    use crate::metric::{Source, key};

    fn k(name: &str) -> SeriesKey {
        SeriesKey::new(Source::System, key(name, []))
    }

    #[test]
    fn varints_and_zigzag_round_trip() {
        for v in [0i64, 1, -1, 63, -64, 1 << 40, i64::MIN, i64::MAX] {
            let mut buf = Vec::new();
            write_varint(&mut buf, zigzag(v));
            let mut slice = buf.as_slice();
            assert_eq!(unzigzag(read_varint(&mut slice).unwrap()), v);
            assert!(slice.is_empty());
        }
        assert_eq!(read_varint(&mut &[0x80u8][..]), None);
    }

    #[test]
    fn values_round_trip_with_gaps_and_repeats() {
        let mut history = History::new(1000);
        let counter = k("c");
        let float = k("f");
        let mut expected_c = Vec::new();
        let mut expected_f = Vec::new();
        for scan in 0..300u64 {
            let c = (scan % 7 != 3).then(|| Value::Counter(scan / 10 * 1000 + u64::MAX / 2));
            let f = (scan % 50 < 40).then(|| Value::Float(if scan % 3 == 0 { 1.5 } else { -0.25 }));
            let samples: Vec<(&SeriesKey, &Value)> = [(&counter, &c), (&float, &f)]
                .into_iter()
                .filter_map(|(key, value)| value.as_ref().map(|v| (key, v)))
                .collect();
            history.push_scan(1000 + scan * 2000, samples);
            expected_c.push(c.and_then(|v| v.as_f64()));
            expected_f.push(f.and_then(|v| v.as_f64()));
        }
        assert_eq!(history.values(&counter, 0..300).unwrap().1, expected_c);
        assert_eq!(history.values(&float, 0..300).unwrap().1, expected_f);
        assert_eq!(
            history.values(&counter, 100..110).unwrap().1,
            expected_c[100..110]
        );
        // Repeats compress: a constant series costs about a byte per chunk of scans.
        let mut constant = History::new(1000);
        for scan in 0..640 {
            constant.push_scan(scan, [(&counter, &Value::Counter(5))]);
        }
        assert!(
            constant.encoded_bytes() < 10 * (4 + 32) + 640 * 8,
            "{}",
            constant.encoded_bytes()
        );
    }

    #[test]
    fn negative_integers_and_kind_changes() {
        let mut history = History::new(10);
        let key = k("i");
        for (scan, v) in [5i64, -3, i64::MIN, i64::MAX, 0].into_iter().enumerate() {
            history.push_scan(scan as u64 + 1, [(&key, &Value::Integer(v))]);
        }
        let (kind, values) = history.values(&key, 0..5).unwrap();
        assert_eq!(kind, Kind::Integer);
        assert_eq!(
            values,
            [5.0, -3.0, i64::MIN as f64, i64::MAX as f64, 0.0].map(Some)
        );
        history.push_scan(100, [(&key, &Value::Float(0.5))]);
        let (kind, values) = history.values(&key, 0..6).unwrap();
        assert_eq!(kind, Kind::Float);
        assert_eq!(values, [None, None, None, None, None, Some(0.5)]);
    }

    #[test]
    fn old_scans_and_series_are_dropped() {
        let mut history = History::new(100);
        let gone = k("gone");
        let stays = k("stays");
        history.push_scan(1, [(&gone, &Value::Counter(1))]);
        for scan in 1..400u64 {
            history.push_scan(1 + scan, [(&stays, &Value::Counter(scan))]);
        }
        assert_eq!(history.first_scan(), 300);
        assert_eq!(history.next_scan(), 400);
        assert!(history.values(&gone, 300..400).is_none());
        let (_, values) = history.values(&stays, history.last_scans(100)).unwrap();
        assert_eq!(values.len(), 100);
        assert_eq!(values[0], Some(300.0));
        assert_eq!(values[99], Some(399.0));
        let chunks = history.series[&stays].chunks.len();
        assert!(chunks <= 3, "{chunks} chunks kept for 100 scans");
    }

    #[test]
    fn clock_going_back_keeps_order() {
        let mut history = History::new(10);
        let none: [(&SeriesKey, Value); 0] = [];
        assert_eq!(history.push_scan(5000, none.clone()), ClockStep::Forward);
        assert_eq!(
            history.push_scan(1000, none),
            ClockStep::Backward { by_ms: 4000 }
        );
        assert_eq!(history.timestamp(1), Some(5001));
        assert_eq!(history.scans_between(5000, 5001), 0..2);
        assert_eq!(history.scans_between(6000, 7000), 2..2);
    }

    #[test]
    fn states_keep_only_the_latest() {
        let mut history = History::new(10);
        let key = SeriesKey::new(Source::App, key("s", []));
        history.push_scan(1, [(&key, &Value::State(10, "a".to_owned()))]);
        history.push_scan(2, [(&key, &Value::State(20, "b".to_owned()))]);
        let states: Vec<_> = history.states().collect();
        assert_eq!(states.len(), 1);
        assert_eq!(states[0].1.text, "b");
        assert!(history.values(&key, 0..2).is_none());
    }

    #[test]
    fn persisted_round_trip() {
        let mut history = History::new(50);
        let key = k("c");
        for scan in 0..70u64 {
            history.push_scan(scan * 10, [(&key, &Value::Counter(scan * scan))]);
        }
        let mut bytes = Vec::new();
        ciborium::into_writer(&history.to_persisted(), &mut bytes).unwrap();
        let loaded: PersistedHistory = ciborium::from_reader(bytes.as_slice()).unwrap();
        let mut restored = History::from_persisted(loaded, 40);
        assert_eq!(restored.first_scan(), 30);
        assert_eq!(restored.values(&key, 30..70), history.values(&key, 30..70));
        restored.push_scan(10_000, [(&key, &Value::Counter(1))]);
        assert_eq!(restored.values(&key, 70..71).unwrap().1, [Some(1.0)]);
    }
}
