//! Operator actions: registered on the leader, replicated to followers with the schedule,
//! consumed by the scheduler exactly once.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio::time::Instant;

use crate::election::ActionDigest;
use crate::schedule::hash;

/// Most actions accepted per second.
pub const RATE_LIMIT: usize = 1000;

/// Count and hash of a set of pending actions.
pub fn digest(actions: &BTreeMap<String, Value>) -> ActionDigest {
    if actions.is_empty() {
        return ActionDigest::default();
    }
    let as_value = Value::Object(actions.clone().into_iter().collect());
    ActionDigest {
        count: u32::try_from(actions.len()).unwrap_or(u32::MAX),
        hash: hash(&as_value),
    }
}

/// A new action id: the current time in ms as a decimal string, bumped past existing ids so
/// two actions in one millisecond stay distinct and ordered.
pub fn new_id(actions: &BTreeMap<String, Value>, now: SystemTime) -> String {
    let mut id = crate::now_ms(now);
    let highest = actions
        .keys()
        .filter_map(|key| key.parse::<u64>().ok())
        .max();
    if let Some(highest) = highest
        && highest >= id
    {
        id = highest + 1;
    }
    id.to_string()
}

/// Sliding one-second window for the 1000/s limit.
#[derive(Debug, Default)]
pub struct RateWindow {
    recent: VecDeque<Instant>,
}

impl RateWindow {
    /// Records one request; false when the limit is already reached.
    pub fn admit(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|at| now.duration_since(*at) >= Duration::from_secs(1))
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= RATE_LIMIT {
            return false;
        }
        self.recent.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_are_unique_and_digest_tracks_content() {
        let mut actions = BTreeMap::new();
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(5000);
        let first = new_id(&actions, now);
        actions.insert(first.clone(), json!({"a": 1}));
        let second = new_id(&actions, now);
        assert_eq!((first.as_str(), second.as_str()), ("5000", "5001"));
        let one = digest(&actions);
        actions.insert(second, json!({"b": 2}));
        let two = digest(&actions);
        assert_eq!(two.count, 2);
        assert_ne!(one.hash, two.hash);
        assert_eq!(digest(&BTreeMap::new()), ActionDigest::default());
    }

    #[tokio::test(start_paused = true)]
    async fn rate_window_admits_a_thousand_per_second() {
        let mut window = RateWindow::default();
        let now = Instant::now();
        assert!((0..RATE_LIMIT).all(|_| window.admit(now)));
        assert!(!window.admit(now));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(window.admit(Instant::now()));
    }
}
