//! A schedule: the scheduler's output (`data`) with the stamp that names it.

use std::fmt::Write as _;

use protocol::domain::MachineId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha1::{Digest, Sha1};

/// What names a schedule in packets and in `/v1/schedule`: when, by whom and its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// Milliseconds since the epoch, on the leader's clock.
    pub timestamp: u64,
    /// SHA-1 (hex) of the canonical JSON of the data.
    pub hash: String,
    /// Machine id of the leader that published it.
    #[serde(with = "crate::id_hex")]
    pub origin: MachineId,
    /// Name of the backup a rollback republished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<String>,
}

/// A schedule in force: its stamp and the scheduler's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    #[serde(flatten)]
    pub stamp: Stamp,
    pub data: Value,
}

impl Schedule {
    /// Stamps `data` as published now by `origin`.
    pub fn new(data: Value, timestamp: u64, origin: MachineId) -> Self {
        let hash = hash(&data);
        Self {
            stamp: Stamp {
                timestamp,
                hash,
                origin,
                rollback_of: None,
            },
            data,
        }
    }

    /// True when the hash matches the data (a fetched schedule is checked with this).
    pub fn is_consistent(&self) -> bool {
        hash(&self.data) == self.stamp.hash
    }
}

/// SHA-1 (hex) of the canonical JSON of `data`.
pub fn hash(data: &Value) -> String {
    hex::encode(Sha1::digest(canonical_json(data).as_bytes()))
}

/// JSON with object keys sorted at every level and no insignificant whitespace, so equal
/// values always give equal text (and equal hashes) whatever order they were built in.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => {
            let _ = write!(out, "{scalar}");
        }
    }
}

/// Converts a `Value` to its canonical form (sorted keys), e.g. before pretty-printing.
pub fn canonical_value(value: &Value) -> Value {
    serde_json::from_str(&canonical_json(value)).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a = json!({"b": 1, "a": {"y": [1, {"d": 2, "c": 3}], "x": null}});
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"x":null,"y":[1,{"c":3,"d":2}]},"b":1}"#
        );
    }

    #[test]
    fn hash_is_sha1_of_canonical_json() {
        let data = json!({"vars": {"n": 2}});
        // printf '{"vars":{"n":2}}' | sha1sum
        assert_eq!(hash(&data), "7fbe43237de0fc81ddfd3c7e65b2b05a2b4ef6d2");
    }

    #[test]
    fn consistency_detects_tampered_data() {
        let origin = MachineId::from_bytes([1; 16]);
        let mut schedule = Schedule::new(json!({"a": 1}), 5, origin);
        assert!(schedule.is_consistent());
        schedule.data = json!({"a": 2});
        assert!(!schedule.is_consistent());
    }
}
