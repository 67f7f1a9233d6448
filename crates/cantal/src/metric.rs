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

/// The fields of a series key in one shared string, `name\0value\0name\0value` with names
/// sorted. The agent holds about ten thousand keys: as a map of strings each took about
/// 0.8 kB, and this takes one allocation of its text. A NUL is not allowed in names and
/// values (it reads as U+FFFD); with that, order, equality and hash follow the map's, since
/// NUL sorts below every other character.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fields(Arc<str>);

impl Fields {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, value)| value)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Fields in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut parts = self.0.split('\0');
        let empty = self.0.is_empty();
        std::iter::from_fn(move || {
            if empty {
                return None;
            }
            Some((parts.next()?, parts.next()?))
        })
    }

    pub fn to_map(&self) -> Key {
        self.iter()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect()
    }
}

impl From<&Key> for Fields {
    fn from(map: &Key) -> Self {
        let mut text = String::new();
        for (name, value) in map {
            for part in [name, value] {
                if !text.is_empty() {
                    text.push('\0');
                }
                text.extend(part.chars().map(|c| if c == '\0' { '\u{FFFD}' } else { c }));
            }
        }
        Self(text.into())
    }
}

impl std::fmt::Debug for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Fields {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Key::deserialize(deserializer).map(|map| Self::from(&map))
    }
}

/// A series: its source and key. The fields are shared: the latest scan, the history and the
/// process table hold one copy of a key, and cloning one costs a reference count.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeriesKey {
    pub source: Source,
    pub fields: Fields,
}

impl SeriesKey {
    pub fn new(source: Source, fields: Key) -> Self {
        Self {
            source,
            fields: Fields::from(&fields),
        }
    }

    /// The `metric` field, empty when absent (app states name themselves otherwise).
    pub fn metric(&self) -> &str {
        self.fields.get("metric").unwrap_or("")
    }
}

impl std::ops::Index<&str> for SeriesKey {
    type Output = str;

    /// The value of a field; panics when absent, like a map index.
    fn index(&self, field: &str) -> &str {
        self.fields.get(field).expect("no such field in the key")
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
    fn fields_read_and_order_like_the_map() {
        let maps = [
            key("a", []),
            key(
                "rss",
                [("pid", "12".to_owned()), ("cgroup", "/x".to_owned())],
            ),
            key("rss", [("pid", "1".to_owned())]),
            key("rss", [("pid", "1".to_owned()), ("z", String::new())]),
            key("rs", [("pid", "1".to_owned())]),
            Key::new(),
        ];
        for map in &maps {
            let fields = Fields::from(map);
            assert_eq!(&fields.to_map(), map);
            assert_eq!(fields.get("metric"), map.get("metric").map(String::as_str));
            assert_eq!(
                serde_json::to_string(&fields).unwrap(),
                serde_json::to_string(map).unwrap()
            );
            let back: Fields = serde_json::from_str(&serde_json::to_string(map).unwrap()).unwrap();
            assert_eq!(back, fields);
            for other in &maps {
                assert_eq!(
                    fields.cmp(&Fields::from(other)),
                    map.cmp(other),
                    "{map:?} {other:?}"
                );
            }
        }
        assert_eq!(Fields::from(&Key::new()).iter().count(), 0);
        let nul = Fields::from(&key("a\0b", []));
        assert_eq!(nul.get("metric"), Some("a\u{FFFD}b"));
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
