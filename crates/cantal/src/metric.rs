//! The agent's unit of data: a series key (a flat JSON object with a `metric` field) and its
//! value at one scan.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A series key, e.g. `{"metric": "disk.read.bytes", "device": "sda"}`. Every field except
/// `metric` becomes a Prometheus label.
pub type Key = BTreeMap<String, String>;

/// Builds a key from a metric name and extra fields.
pub fn key<'a>(metric: &str, fields: impl IntoIterator<Item = (&'a str, String)>) -> Key {
    let mut key: Key = fields
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
    key.insert("metric".to_owned(), metric.to_owned());
    key
}

/// A value at one scan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// Grows; a decrease means the source restarted.
    Counter(u64),
    /// An integer gauge.
    Integer(i64),
    /// A floating-point gauge.
    Float(f64),
    /// Text entered at a time (ms since the epoch); only the latest is kept.
    State(u64, String),
}

impl Value {
    /// The value as a number, for queries and Prometheus; states have none.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            // Precision loss above 2^53 is what every Prometheus consumer accepts.
            Self::Counter(v) => Some(v as f64),
            Self::Integer(v) => Some(v as f64),
            Self::Float(v) => Some(v),
            Self::State(..) => None,
        }
    }
}

/// Where a series comes from; decides its Prometheus name prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Source {
    /// Host-wide: `/proc/stat`, `/proc/meminfo`, ...
    System,
    /// One process, keyed by `pid`.
    Process,
    /// Sum over the processes of a cgroup, keyed by `group`.
    Group,
    /// An application's metric file.
    App,
}

/// A series: its source and key. The fields are shared: the latest scan, the history and the
/// process table hold one copy of a key, and cloning one costs a reference count.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeriesKey {
    pub source: Source,
    pub fields: Arc<Key>,
}

impl SeriesKey {
    pub fn new(source: Source, fields: Key) -> Self {
        Self {
            source,
            fields: Arc::new(fields),
        }
    }

    /// The `metric` field, empty when absent (app states name themselves otherwise).
    pub fn metric(&self) -> &str {
        self.fields.get("metric").map_or("", String::as_str)
    }
}

impl std::ops::Index<&str> for SeriesKey {
    type Output = String;

    /// The value of a field; panics when absent, like a map index.
    fn index(&self, field: &str) -> &String {
        &self.fields[field]
    }
}

/// A host-wide series key.
pub fn system_key<'a>(
    metric: &str,
    fields: impl IntoIterator<Item = (&'a str, String)>,
) -> SeriesKey {
    SeriesKey::new(Source::System, key(metric, fields))
}

/// One sample of one series.
pub type Sample = (SeriesKey, Value);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_has_metric_and_fields() {
        let k = key("disk.read.bytes", [("device", "sda".to_owned())]);
        assert_eq!(
            serde_json::to_string(&k).unwrap(),
            r#"{"device":"sda","metric":"disk.read.bytes"}"#
        );
    }

    #[test]
    fn values_serialize_tagged() {
        let values = [
            Value::Counter(3),
            Value::Integer(-1),
            Value::Float(0.5),
            Value::State(7, "idle".to_owned()),
        ];
        assert_eq!(
            serde_json::to_string(&values).unwrap(),
            r#"[{"Counter":3},{"Integer":-1},{"Float":0.5},{"State":[7,"idle"]}]"#
        );
        assert_eq!(values[3].as_f64(), None);
    }
}
