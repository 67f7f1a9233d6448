//! The metric kinds an application updates. Each is a cheap handle: clones share one value.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::format::{MAX_SLOT_SIZE, MIN_STATE_SIZE, STATE_HEADER_SIZE, SlotKind};

/// A growing count (`counter 8`).
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn incr(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A signed gauge (`level 8 signed`).
#[derive(Debug, Clone, Default)]
pub struct Integer(Arc<AtomicI64>);

impl Integer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    pub fn incr(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn decr(&self, n: i64) {
        self.0.fetch_sub(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A floating-point gauge (`level 8 float`).
#[derive(Debug, Clone, Default)]
pub struct Float(Arc<AtomicU64>);

impl Float {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }

    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// What a process is doing now (`state N`): text and the time it was entered.
#[derive(Debug, Clone)]
pub struct State(Arc<StateCell>);

#[derive(Debug)]
pub(crate) struct StateCell {
    size: usize,
    value: Mutex<Option<(u64, String)>>,
}

/// Slot size of [`State::new`]: one cache line, as cantal-py.
pub const DEFAULT_STATE_SIZE: usize = 64;

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    /// A state in a 64-byte slot (56 bytes of text).
    pub fn new() -> Self {
        Self::with_size(DEFAULT_STATE_SIZE)
    }

    /// A state in a slot of `size` bytes, clamped to 16..=65535.
    pub fn with_size(size: usize) -> Self {
        Self(Arc::new(StateCell {
            size: size.clamp(MIN_STATE_SIZE, MAX_SLOT_SIZE),
            value: Mutex::new(None),
        }))
    }

    /// Enters a state now. Text longer than the slot is cut at a character boundary.
    pub fn enter(&self, text: &str) {
        let max = self.0.size - STATE_HEADER_SIZE;
        let mut end = text.len().min(max);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        // 0 means "no state" in the file, so a clock at the epoch still enters one.
        *self.0.lock() = Some((now.max(1), text[..end].to_owned()));
    }

    /// Leaves the current state; readers see none.
    pub fn exit(&self) {
        *self.0.lock() = None;
    }

    /// Entry time (ms since the epoch) and text of the current state.
    pub fn get(&self) -> Option<(u64, String)> {
        self.0.lock().clone()
    }
}

impl StateCell {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(u64, String)>> {
        // The guarded value is always whole: a panic elsewhere cannot tear it.
        self.value.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A shared handle on any metric's value, as the collection stores it.
#[derive(Debug, Clone)]
pub(crate) enum Slot {
    Counter(Arc<AtomicU64>),
    Integer(Arc<AtomicI64>),
    Float(Arc<AtomicU64>),
    State(Arc<StateCell>),
}

impl Slot {
    pub(crate) fn kind(&self) -> SlotKind {
        match self {
            Self::Counter(_) => SlotKind::Counter,
            Self::Integer(_) => SlotKind::Signed,
            Self::Float(_) => SlotKind::Float,
            Self::State(_) => SlotKind::State,
        }
    }

    pub(crate) fn size(&self) -> usize {
        match self {
            Self::State(cell) => cell.size,
            _ => 8,
        }
    }

    /// Writes the current value into `out`, which is exactly [`Slot::size`] bytes.
    pub(crate) fn write(&self, out: &mut [u8]) {
        match self {
            Self::Counter(v) | Self::Float(v) => {
                out.copy_from_slice(&v.load(Ordering::Relaxed).to_ne_bytes());
            }
            Self::Integer(v) => out.copy_from_slice(&v.load(Ordering::Relaxed).to_ne_bytes()),
            Self::State(cell) => {
                out.fill(0);
                if let Some((time, text)) = cell.lock().as_ref() {
                    out[..STATE_HEADER_SIZE].copy_from_slice(&time.to_ne_bytes());
                    out[STATE_HEADER_SIZE..STATE_HEADER_SIZE + text.len()]
                        .copy_from_slice(text.as_bytes());
                }
            }
        }
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A metric that a [`crate::Collection`] can publish.
pub trait Metric: sealed::Sealed {
    #[doc(hidden)]
    #[allow(private_interfaces)]
    fn slot(&self) -> Slot;
}

macro_rules! metric {
    ($type:ident, $variant:ident) => {
        impl sealed::Sealed for $type {}
        impl Metric for $type {
            #[allow(private_interfaces)]
            fn slot(&self) -> Slot {
                Slot::$variant(Arc::clone(&self.0))
            }
        }
    };
}

metric!(Counter, Counter);
metric!(Integer, Integer);
metric!(Float, Float);
metric!(State, State);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_value() {
        let counter = Counter::new();
        counter.clone().incr(3);
        counter.incr(4);
        assert_eq!(counter.get(), 7);
        let level = Integer::new();
        level.set(10);
        level.clone().decr(12);
        level.incr(1);
        assert_eq!(level.get(), -1);
        let float = Float::new();
        float.clone().set(0.25);
        assert_eq!(float.get(), 0.25);
    }

    #[test]
    fn state_text_is_cut_at_a_char_boundary() {
        let state = State::with_size(16);
        state.enter("ab\u{e9}\u{e9}\u{e9}\u{e9}"); // 2 + 4 * 2 bytes, 8 fit
        let (time, text) = state.get().unwrap();
        assert!(time > 0);
        assert_eq!(text, "ab\u{e9}\u{e9}\u{e9}");
        let mut out = [0xaa; 16];
        assert_eq!(state.0.size, 16);
        Slot::State(Arc::clone(&state.0)).write(&mut out);
        assert_eq!(&out[8..], "ab\u{e9}\u{e9}\u{e9}".as_bytes());
        state.exit();
        Slot::State(Arc::clone(&state.0)).write(&mut out);
        assert_eq!(out, [0; 16]);
    }

    #[test]
    fn state_size_is_clamped() {
        assert_eq!(State::with_size(3).0.size, MIN_STATE_SIZE);
        assert_eq!(State::with_size(1 << 20).0.size, MAX_SLOT_SIZE);
    }
}
