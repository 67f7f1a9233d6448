//! The metric file pair that cantal-py, libcantal and cantal-agent share.
//!
//! `<path>.meta` is UTF-8 text with one slot per line (`\n` separated, the last newline
//! optional):
//!
//! ```text
//! counter 8: {"metric": "requests.number"}
//! level 8 signed: {"metric": "queue.size"}
//! pad 40
//! state 64: {"state": "sql.request"}
//! ```
//!
//! A line is split at its first `:`; the left part is `TYPE SIZE [PARAM]`, the right part a
//! one-line JSON object with string values naming the metric. `<path>.values` holds the slots
//! back to back in meta order, in host byte order, with no header. A state slot is a `u64`
//! entry time (ms since the epoch; 0 means "no state") followed by text up to the first NUL.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// Largest slot a meta line may declare.
pub const MAX_SLOT_SIZE: usize = 65535;
/// Largest meta file a reader accepts.
pub const MAX_META_SIZE: usize = 1 << 20;
/// Largest values length a meta file may declare.
pub const MAX_VALUES_SIZE: usize = 4 << 20;
/// Smallest state slot: the 8-byte time and 8 bytes of text.
pub const MIN_STATE_SIZE: usize = 16;
/// Bytes of a state slot before its text.
pub const STATE_HEADER_SIZE: usize = 8;

/// The JSON object naming a metric, e.g. `{"metric": "requests.number", "unit": "ms"}`.
pub type Name = BTreeMap<String, String>;

/// What a slot holds, from its meta line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    /// `counter 8`: a growing u64.
    Counter,
    /// `level 8 signed`: an i64 gauge.
    Signed,
    /// `level 8 float`: an f64 gauge.
    Float,
    /// `level 8 unsigned`: a u64 gauge.
    Unsigned,
    /// `state N`: entry time and text.
    State,
    /// `pad N`: alignment, never read.
    Pad,
    /// A type this reader does not know; skipped by its length.
    Unknown,
}

impl SlotKind {
    /// The `TYPE SIZE [PARAM]` part of a meta line for a slot of `size` bytes.
    pub fn type_line(self, size: usize) -> String {
        match self {
            Self::Counter => "counter 8".to_owned(),
            Self::Signed => "level 8 signed".to_owned(),
            Self::Float => "level 8 float".to_owned(),
            Self::Unsigned => "level 8 unsigned".to_owned(),
            Self::State => format!("state {size}"),
            Self::Pad => format!("pad {size}"),
            Self::Unknown => format!("unknown {size}"),
        }
    }
}

/// One slot of a meta file.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    pub kind: SlotKind,
    /// Byte offset in the values file.
    pub offset: usize,
    pub size: usize,
    /// Absent for `pad`.
    pub name: Option<Name>,
}

/// A parsed meta file.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    pub slots: Vec<Slot>,
    /// Bytes of the values file the slots cover.
    pub values_len: usize,
    /// `TYPE SIZE [PARAM]` of every slot skipped because its type is unknown.
    pub unknown_types: Vec<String>,
}

/// Why a meta file is rejected as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("meta is {size} bytes, more than the {MAX_META_SIZE} allowed")]
    TooBig { size: usize },
    #[error("meta is not utf-8")]
    NotUtf8,
    #[error("line {line}: {reason}")]
    BadLine { line: usize, reason: String },
    #[error("line {line}: duplicate metric name {name}")]
    Duplicate { line: usize, name: String },
    #[error("meta declares {size} bytes of values, more than the {MAX_VALUES_SIZE} allowed")]
    ValuesTooBig { size: usize },
}

/// A values file shorter than its meta demands (being rewritten, truncated or empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("values are {actual} bytes, meta needs {needed}")]
pub struct ShortValues {
    pub actual: usize,
    pub needed: usize,
}

/// A value read from a slot.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Counter(u64),
    Signed(i64),
    Float(f64),
    Unsigned(u64),
    /// Entered at `entered_ms` (ms since the epoch) with `text`.
    State {
        entered_ms: u64,
        text: String,
    },
}

impl fmt::Display for Value {
    /// The spelling of `cantal dump`: `Counter(97)`, `State(1700000000000, "idle")`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Counter(v) => write!(f, "Counter({v})"),
            Self::Signed(v) => write!(f, "Integer({v})"),
            Self::Float(v) => write!(f, "Float({v})"),
            Self::Unsigned(v) => write!(f, "Unsigned({v})"),
            Self::State { entered_ms, text } => write!(f, "State({entered_ms}, {text:?})"),
        }
    }
}

/// A metric name given to a writer that is not a JSON object of strings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metric name {json}: {reason}")]
pub struct NameError {
    pub json: String,
    pub reason: String,
}

/// Parses a metric name (a JSON object with string values).
pub fn parse_name(json: &str) -> Result<Name, NameError> {
    let err = |reason: String| NameError {
        json: json.to_owned(),
        reason,
    };
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| err(e.to_string()))?;
    let serde_json::Value::Object(object) = value else {
        return Err(err("not a JSON object".to_owned()));
    };
    object
        .into_iter()
        .map(|(key, value)| match value {
            serde_json::Value::String(text) => Ok((key, text)),
            other => Err(err(format!("value of {key:?} is {other}, not a string"))),
        })
        .collect()
}

/// The one-line JSON spelling of a name, as cantal-py's `json.dumps(sort_keys=True)` writes
/// it: `{"metric": "requests.number", "unit": "ms"}`.
pub fn name_to_json(name: &Name) -> String {
    let fields: Vec<String> = name
        .iter()
        .map(|(key, value)| format!("{}: {}", json_string(key), json_string(value)))
        .collect();
    format!("{{{}}}", fields.join(", "))
}

fn json_string(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

/// Parses a meta file.
pub fn parse_meta(bytes: &[u8]) -> Result<Meta, MetaError> {
    if bytes.len() > MAX_META_SIZE {
        return Err(MetaError::TooBig { size: bytes.len() });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| MetaError::NotUtf8)?;
    let mut slots = Vec::new();
    let mut unknown_types = Vec::new();
    let mut names = HashSet::new();
    let mut offset = 0usize;
    for (index, line) in text.split('\n').enumerate() {
        let line_no = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| MetaError::BadLine {
            line: line_no,
            reason,
        };
        let (head, json) = match line.split_once(':') {
            Some((head, json)) => (head, Some(json)),
            None => (line, None),
        };
        let mut words = head.split_whitespace();
        let type_name = words.next().unwrap_or_default();
        let size: usize = words
            .next()
            .ok_or_else(|| bad(format!("no size in {head:?}")))?
            .parse()
            .map_err(|_| bad(format!("bad size in {head:?}")))?;
        let param = words.next();
        if words.next().is_some() {
            return Err(bad(format!("too many words in {head:?}")));
        }
        if size == 0 || size > MAX_SLOT_SIZE {
            return Err(bad(format!(
                "size {size} is not within 1..={MAX_SLOT_SIZE}"
            )));
        }
        let kind = match (type_name, size, param) {
            ("pad", _, None) => SlotKind::Pad,
            ("counter", 8, None) => SlotKind::Counter,
            ("level", 8, Some("signed")) => SlotKind::Signed,
            ("level", 8, Some("float")) => SlotKind::Float,
            ("level", 8, Some("unsigned")) => SlotKind::Unsigned,
            ("state", MIN_STATE_SIZE.., None) => SlotKind::State,
            _ => SlotKind::Unknown,
        };
        let name = match (kind, json) {
            (SlotKind::Pad, None) => None,
            (SlotKind::Pad, Some(_)) => return Err(bad("pad with a name".to_owned())),
            (_, None) => return Err(bad(format!("no metric name after {head:?}"))),
            (_, Some(json)) => {
                let name = parse_name(json.trim()).map_err(|e| bad(e.reason))?;
                if !names.insert(name.clone()) {
                    return Err(MetaError::Duplicate {
                        line: line_no,
                        name: name_to_json(&name),
                    });
                }
                Some(name)
            }
        };
        if kind == SlotKind::Unknown {
            unknown_types.push(head.trim().to_owned());
        }
        slots.push(Slot {
            kind,
            offset,
            size,
            name,
        });
        offset += size;
        if offset > MAX_VALUES_SIZE {
            return Err(MetaError::ValuesTooBig { size: offset });
        }
    }
    Ok(Meta {
        slots,
        values_len: offset,
        unknown_types,
    })
}

impl Meta {
    /// Reads every named slot of a known type from `values`. States never entered (time 0)
    /// are left out. Bytes past [`Meta::values_len`] are ignored.
    pub fn decode<'a>(&'a self, values: &[u8]) -> Result<Vec<(&'a Name, Value)>, ShortValues> {
        if values.len() < self.values_len {
            return Err(ShortValues {
                actual: values.len(),
                needed: self.values_len,
            });
        }
        let mut decoded = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            let (Some(name), Some(bytes)) = (
                slot.name.as_ref(),
                values.get(slot.offset..slot.offset + slot.size),
            ) else {
                continue;
            };
            let value = match slot.kind {
                SlotKind::Counter => Value::Counter(u64::from_ne_bytes(word(bytes))),
                SlotKind::Signed => Value::Signed(i64::from_ne_bytes(word(bytes))),
                SlotKind::Float => Value::Float(f64::from_ne_bytes(word(bytes))),
                SlotKind::Unsigned => Value::Unsigned(u64::from_ne_bytes(word(bytes))),
                SlotKind::State => {
                    let entered_ms = u64::from_ne_bytes(word(bytes));
                    if entered_ms == 0 {
                        continue;
                    }
                    let text = &bytes[STATE_HEADER_SIZE..];
                    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
                    Value::State {
                        entered_ms,
                        text: String::from_utf8_lossy(&text[..end]).into_owned(),
                    }
                }
                SlotKind::Pad | SlotKind::Unknown => continue,
            };
            decoded.push((name, value));
        }
        Ok(decoded)
    }
}

/// The first 8 bytes of a slot; every known slot kind is at least that long.
fn word(bytes: &[u8]) -> [u8; 8] {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[..8]);
    word
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(metric: &str) -> Name {
        Name::from([("metric".to_owned(), metric.to_owned())])
    }

    #[test]
    fn parses_the_cantal_py_example() {
        let meta = parse_meta(
            b"counter 8: {\"metric\": \"requests.number\"}\n\
              counter 8: {\"metric\": \"requests.duration\", \"unit\": \"ms\"}\n\
              level 8 signed: {\"metric\": \"queue.size\"}\n\
              pad 40\n\
              state 64: {\"state\": \"sql.request\"}",
        )
        .unwrap();
        let kinds: Vec<_> = meta.slots.iter().map(|s| (s.kind, s.offset)).collect();
        assert_eq!(
            kinds,
            [
                (SlotKind::Counter, 0),
                (SlotKind::Counter, 8),
                (SlotKind::Signed, 16),
                (SlotKind::Pad, 24),
                (SlotKind::State, 64),
            ]
        );
        assert_eq!(meta.values_len, 128);
        assert_eq!(meta.slots[0].name, Some(name("requests.number")));
        assert!(meta.unknown_types.is_empty());
    }

    #[test]
    fn decodes_every_known_kind() {
        let meta = parse_meta(
            b"counter 8: {\"metric\": \"c\"}\nlevel 8 signed: {\"metric\": \"s\"}\n\
              level 8 float: {\"metric\": \"f\"}\nlevel 8 unsigned: {\"metric\": \"u\"}\n\
              state 24: {\"metric\": \"st\"}\nstate 16: {\"metric\": \"never\"}\n",
        )
        .unwrap();
        let mut values = Vec::new();
        values.extend(97u64.to_ne_bytes());
        values.extend((-5i64).to_ne_bytes());
        values.extend(2.5f64.to_ne_bytes());
        values.extend(u64::MAX.to_ne_bytes());
        values.extend(1_700_000_000_000u64.to_ne_bytes());
        values.extend(b"idle\0junk\0\0\0\0\0\0\0");
        values.extend([0; 16]);
        values.extend([0xff; 100]); // longer than needed is fine
        let decoded = meta.decode(&values).unwrap();
        let got: Vec<_> = decoded
            .iter()
            .map(|(n, v)| (n["metric"].as_str(), v))
            .collect();
        assert_eq!(
            got,
            [
                ("c", &Value::Counter(97)),
                ("s", &Value::Signed(-5)),
                ("f", &Value::Float(2.5)),
                ("u", &Value::Unsigned(u64::MAX)),
                (
                    "st",
                    &Value::State {
                        entered_ms: 1_700_000_000_000,
                        text: "idle".to_owned()
                    }
                ),
            ]
        );
    }

    #[test]
    fn state_text_fills_the_slot_and_decodes_lossily() {
        let meta = parse_meta(b"state 16: {\"metric\": \"st\"}").unwrap();
        let mut values = 5u64.to_ne_bytes().to_vec();
        values.extend(b"ab\xffcdefg");
        let decoded = meta.decode(&values).unwrap();
        assert_eq!(
            decoded[0].1,
            Value::State {
                entered_ms: 5,
                text: "ab\u{fffd}cdefg".to_owned()
            }
        );
    }

    #[test]
    fn unknown_types_are_skipped_by_length() {
        let meta = parse_meta(
            b"histogram 16: {\"metric\": \"h\"}\ncounter 4: {\"metric\": \"small\"}\n\
              state 8: {\"metric\": \"tiny\"}\ncounter 8: {\"metric\": \"c\"}",
        )
        .unwrap();
        assert_eq!(meta.unknown_types, ["histogram 16", "counter 4", "state 8"]);
        let mut values = vec![0u8; 28];
        values.extend(3u64.to_ne_bytes());
        let decoded = meta.decode(&values).unwrap();
        assert_eq!(decoded.len(), 1);
        assert_eq!(decoded[0].1, Value::Counter(3));
    }

    #[test]
    fn bad_files_are_rejected_whole() {
        let cases: &[&[u8]] = &[
            b"counter 8 {\"metric\": \"no colon\"}",
            b"counter eight: {\"metric\": \"x\"}",
            b"counter 8: {\"metric\": 5}",
            b"counter 8: [\"metric\"]",
            b"counter 8: {\"metric\": \"x\"",
            b"counter 8: {\"metric\": \"x\"}\ncounter 8: {\"metric\": \"x\"}",
            b"state 65536: {\"metric\": \"x\"}",
            b"pad 0",
            b"pad 8: {\"metric\": \"x\"}",
            b"counter 8: {\"metric\": \"\xff\"}",
            b"counter",
        ];
        for case in cases {
            assert!(
                parse_meta(case).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(case)
            );
        }
        let huge = vec![b' '; MAX_META_SIZE + 1];
        assert_eq!(
            parse_meta(&huge),
            Err(MetaError::TooBig {
                size: MAX_META_SIZE + 1
            })
        );
        let mut wide = String::new();
        for i in 0..70 {
            wide.push_str(&format!("state 65535: {{\"metric\": \"s{i}\"}}\n"));
        }
        assert!(matches!(
            parse_meta(wide.as_bytes()),
            Err(MetaError::ValuesTooBig { .. })
        ));
    }

    #[test]
    fn duplicate_names_compare_as_objects() {
        let err = parse_meta(
            b"counter 8: {\"a\": \"1\", \"b\": \"2\"}\nlevel 8 float: {\"b\":\"2\",\"a\":\"1\"}",
        )
        .unwrap_err();
        assert!(matches!(err, MetaError::Duplicate { line: 2, .. }), "{err}");
    }

    #[test]
    fn short_values_are_reported() {
        let meta = parse_meta(b"counter 8: {\"metric\": \"c\"}\npad 8").unwrap();
        assert_eq!(
            meta.decode(&[0; 15]),
            Err(ShortValues {
                actual: 15,
                needed: 16
            })
        );
        assert_eq!(meta.decode(&[]).unwrap_err().actual, 0);
    }

    #[test]
    fn names_spell_like_cantal_py() {
        let name = parse_name(r#"{"unit":"ms","metric":"req\"s"}"#).unwrap();
        assert_eq!(name_to_json(&name), r#"{"metric": "req\"s", "unit": "ms"}"#);
        assert!(parse_name("5").is_err());
        assert!(parse_name(r#"{"a": null}"#).is_err());
    }
}
