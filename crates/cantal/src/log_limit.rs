//! At most one log line per kind and source per window, carrying how many were suppressed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The window of the spec: one line per kind per source per 10 s.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Sources remembered at most; past it, entries whose window ended are forgotten first, so a
/// flood from spoofed sources cannot grow memory.
const MAX_SOURCES: usize = 4096;

#[derive(Debug, Default)]
pub struct LogLimit {
    entries: HashMap<(&'static str, String), Entry>,
}

#[derive(Debug)]
struct Entry {
    logged_at: Instant,
    suppressed: u64,
}

impl LogLimit {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether to log an event of `kind` from `source` now: `Some(n)` with the number of
    /// events suppressed since the last line, or `None` to stay quiet.
    pub fn allow(&mut self, kind: &'static str, source: &str, now: Instant) -> Option<u64> {
        if let Some(entry) = self.entries.get_mut(&(kind, source.to_owned())) {
            if now.duration_since(entry.logged_at) < WINDOW {
                entry.suppressed += 1;
                return None;
            }
            let suppressed = std::mem::take(&mut entry.suppressed);
            entry.logged_at = now;
            return Some(suppressed);
        }
        if self.entries.len() >= MAX_SOURCES {
            self.entries
                .retain(|_, e| now.duration_since(e.logged_at) < WINDOW);
            if self.entries.len() >= MAX_SOURCES {
                return None;
            }
        }
        self.entries.insert(
            (kind, source.to_owned()),
            Entry {
                logged_at: now,
                suppressed: 0,
            },
        );
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_window_with_count() {
        let mut limit = LogLimit::new();
        let start = Instant::now();
        assert_eq!(limit.allow("garbage", "10.0.0.1", start), Some(0));
        for i in 1..=5 {
            assert_eq!(
                limit.allow("garbage", "10.0.0.1", start + Duration::from_secs(i)),
                None
            );
        }
        assert_eq!(limit.allow("oversized", "10.0.0.1", start), Some(0));
        assert_eq!(limit.allow("garbage", "10.0.0.2", start), Some(0));
        assert_eq!(limit.allow("garbage", "10.0.0.1", start + WINDOW), Some(5));
    }

    #[test]
    fn sources_are_bounded() {
        let mut limit = LogLimit::new();
        let start = Instant::now();
        for i in 0..MAX_SOURCES {
            assert!(limit.allow("garbage", &i.to_string(), start).is_some());
        }
        assert_eq!(limit.allow("garbage", "new", start), None);
        assert!(limit.entries.len() <= MAX_SOURCES);
        assert_eq!(limit.allow("garbage", "new", start + WINDOW), Some(0));
        assert_eq!(limit.entries.len(), 1);
    }
}
