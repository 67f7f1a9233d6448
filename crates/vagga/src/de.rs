//! serde deserialization from [`Node`] trees, with errors that carry file, line and column.
//!
//! Tags select enum variants (`!Tar {..}` is variant `Tar`), struct keys accept snake_case as
//! well as kebab-case (as the original did), integers accept `0o755`, `0x1f` and size suffixes
//! (`100Mi`, `1G`), and [`Located`] captures where a value was written.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

use crate::yaml::{Node, Pos, Value};

/// What kind of mistake a [`DeError`] reports, so callers can phrase it in context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    UnknownKey,
    UnknownTag,
    MissingField,
    Other,
}

/// A deserialization error at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeError {
    pub pos: Option<Pos>,
    pub kind: ErrorKind,
    pub message: String,
}

impl DeError {
    pub fn at(pos: &Pos, message: impl Into<String>) -> DeError {
        DeError {
            pos: Some(pos.clone()),
            kind: ErrorKind::Other,
            message: message.into(),
        }
    }

    fn located(mut self, pos: &Pos) -> DeError {
        if self.pos.is_none() {
            self.pos = Some(pos.clone());
        }
        self
    }

    /// Adds what the error is in: `in container "app"` for keys, a prefix otherwise.
    pub fn within(mut self, what: &str) -> DeError {
        self.message = match self.kind {
            ErrorKind::UnknownKey => match self.message.split_once(';') {
                Some((head, tail)) => format!("{head} in {what};{tail}"),
                None => format!("{} in {what}", self.message),
            },
            ErrorKind::MissingField => format!("{what}: {}", self.message),
            ErrorKind::Other | ErrorKind::UnknownTag => self.message,
        };
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.pos {
            Some(pos) => write!(f, "{pos}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            pos: None,
            kind: ErrorKind::Other,
            message: msg.to_string(),
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError {
            pos: None,
            kind: ErrorKind::UnknownKey,
            message: format!(
                "unknown key \"{field}\"; expected one of: {}",
                expected
                    .iter()
                    .filter(|f| !f.starts_with('$'))
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        let mut message = format!("unknown tag !{variant}");
        if let Some(best) = closest(variant, expected) {
            message.push_str(&format!(" (did you mean !{best}?)"));
        }
        DeError {
            pos: None,
            kind: ErrorKind::UnknownTag,
            message,
        }
    }

    fn missing_field(field: &'static str) -> Self {
        DeError {
            pos: None,
            kind: ErrorKind::MissingField,
            message: format!("missing field \"{field}\""),
        }
    }
}

/// The candidate nearest to `word` by edit distance, if it is near enough to be a typo.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(&word.to_lowercase(), &c.to_lowercase()), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Deserializes a value from a node.
pub fn from_node<T: serde::de::DeserializeOwned>(node: &Node) -> Result<T, DeError> {
    T::deserialize(NodeDe::new(node)).map_err(|e| e.located(&node.pos))
}

/// An integer as vagga.yaml writes it: decimal, `0o755`, `0x1f`, `0b101`, or with a size
/// suffix (`k M G T` are powers of 1000, `ki Mi Gi Ti` powers of 1024).
pub fn parse_int(text: &str) -> Option<i128> {
    let t = text.trim().replace('_', "");
    let (neg, t) = match t.strip_prefix('-') {
        Some(rest) => (true, rest.to_owned()),
        None => (false, t.strip_prefix('+').unwrap_or(&t).to_owned()),
    };
    let radix = |p: &str, r| i128::from_str_radix(t.strip_prefix(p)?, r).ok();
    let value = if t.starts_with("0o") {
        radix("0o", 8)?
    } else if t.starts_with("0x") {
        radix("0x", 16)?
    } else if t.starts_with("0b") {
        radix("0b", 2)?
    } else {
        let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        if digits_end == 0 {
            return None;
        }
        let number: i128 = t[..digits_end].parse().ok()?;
        let multiplier: i128 = match &t[digits_end..] {
            "" => 1,
            "k" | "K" => 1000,
            "M" => 1000_i128.pow(2),
            "G" => 1000_i128.pow(3),
            "T" => 1000_i128.pow(4),
            "ki" | "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "Ti" => 1 << 40,
            _ => return None,
        };
        number.checked_mul(multiplier)?
    };
    Some(if neg { -value } else { value })
}

/// A value together with where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Located<T> {
    pub pos: Pos,
    pub value: T,
}

impl<T> std::ops::Deref for Located<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

const LOCATED: &str = "$vagga::Located";
const LOCATED_FIELDS: &[&str] = &["$pos", "$value"];

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Located<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Located<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Located<T>, A::Error> {
                let _: Option<String> = map.next_key()?;
                let (file, line, col): (String, usize, usize) = map.next_value()?;
                let _: Option<String> = map.next_key()?;
                let value = map.next_value()?;
                Ok(Located {
                    pos: Pos {
                        file: std::sync::Arc::new(file.into()),
                        line,
                        col,
                    },
                    value,
                })
            }
        }
        d.deserialize_struct(LOCATED, LOCATED_FIELDS, V(std::marker::PhantomData))
    }
}

/// The deserializer for one node; `tagged` is false once an enum has consumed the tag.
#[derive(Debug, Clone, Copy)]
pub struct NodeDe<'a> {
    node: &'a Node,
    tagged: bool,
}

impl<'a> NodeDe<'a> {
    pub fn new(node: &'a Node) -> NodeDe<'a> {
        NodeDe { node, tagged: true }
    }

    fn tag(&self) -> Option<&'a str> {
        if self.tagged {
            self.node.tag.as_deref()
        } else {
            None
        }
    }

    fn type_error(&self, expected: &str) -> DeError {
        let found = match &self.node.value {
            Value::Scalar { .. } if self.node.is_null() => "nothing".to_owned(),
            Value::Scalar { text, .. } => format!("{text:?}"),
            Value::Seq(_) => "a list".to_owned(),
            Value::Map(_) => "a mapping".to_owned(),
        };
        DeError::at(
            &self.node.pos,
            format!("expected {expected}, found {found}"),
        )
    }

    fn scalar(&self) -> Result<&'a str, DeError> {
        match &self.node.value {
            Value::Scalar { text, .. } => Ok(text),
            _ => Err(self.type_error("a single value")),
        }
    }

    fn int(&self) -> Result<i128, DeError> {
        let text = self.scalar()?;
        parse_int(text).ok_or_else(|| self.type_error("an integer"))
    }
}

macro_rules! ints {
    ($($method:ident $visit:ident $ty:ty),*) => {$(
        fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
            let n = self.int()?;
            let n = <$ty>::try_from(n)
                .map_err(|_| DeError::at(&self.node.pos, format!("{n} is out of range")))?;
            v.$visit(n)
        }
    )*};
}

impl<'de, 'a> de::Deserializer<'de> for NodeDe<'a> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Scalar { text, plain } => {
                if *plain {
                    if self.node.is_null() {
                        return v.visit_unit();
                    }
                    match text.as_str() {
                        "true" | "True" | "TRUE" => return v.visit_bool(true),
                        "false" | "False" | "FALSE" => return v.visit_bool(false),
                        _ => {}
                    }
                    if let Ok(n) = text.parse::<i64>() {
                        return v.visit_i64(n);
                    }
                }
                v.visit_str(text)
            }
            Value::Seq(items) => v.visit_seq(SeqDe(items.iter())),
            Value::Map(entries) => v.visit_map(MapDe::new(entries, None)),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.scalar()? {
            "true" | "True" | "TRUE" | "yes" | "on" => v.visit_bool(true),
            "false" | "False" | "FALSE" | "no" | "off" => v.visit_bool(false),
            _ => Err(self.type_error("true or false")),
        }
    }

    ints!(deserialize_i8 visit_i8 i8, deserialize_i16 visit_i16 i16, deserialize_i32 visit_i32 i32,
          deserialize_i64 visit_i64 i64, deserialize_u8 visit_u8 u8, deserialize_u16 visit_u16 u16,
          deserialize_u32 visit_u32 u32, deserialize_u64 visit_u64 u64);

    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(v)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let text = self.scalar()?;
        text.trim()
            .parse::<f64>()
            .map_err(|_| self.type_error("a number"))
            .and_then(|n| v.visit_f64(n))
    }

    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_str(self.scalar()?)
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        if self.node.is_null() && self.tag().is_none() {
            v.visit_none()
        } else {
            v.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        if self.node.is_null() {
            v.visit_unit()
        } else {
            Err(self.type_error("nothing"))
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Seq(items) => v.visit_seq(SeqDe(items.iter())),
            _ if self.node.is_null() => v.visit_seq(SeqDe([].iter())),
            _ => Err(self.type_error("a list")),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, DeError> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Map(entries) => v.visit_map(MapDe::new(entries, None)),
            _ if self.node.is_null() => v.visit_map(MapDe::new(&[], None)),
            _ => Err(self.type_error("a mapping")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        if name == LOCATED {
            return v.visit_map(LocatedDe {
                node: self.node,
                state: 0,
            });
        }
        match &self.node.value {
            Value::Map(entries) => v
                .visit_map(MapDe::new(entries, Some(fields)))
                .map_err(|e| e.located(&self.node.pos)),
            _ if self.node.is_null() => v
                .visit_map(MapDe::new(&[], Some(fields)))
                .map_err(|e| e.located(&self.node.pos)),
            _ => Err(self.type_error("a mapping")),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        match self.tag() {
            Some(tag) => {
                if !variants.contains(&tag) {
                    let err: DeError = de::Error::unknown_variant(tag, variants);
                    return Err(err.located(&self.node.pos));
                }
                v.visit_enum(EnumDe(self.node))
            }
            // Untagged plain words name unit variants (`write-mode: read-only`).
            None => match &self.node.value {
                Value::Scalar { text, .. } => {
                    if !variants.contains(&text.as_str()) {
                        return Err(DeError::at(
                            &self.node.pos,
                            format!(
                                "unknown value {text:?}; expected one of: {}",
                                variants.join(", ")
                            ),
                        ));
                    }
                    v.visit_enum(text.as_str().into_deserializer())
                }
                _ => Err(DeError::at(
                    &self.node.pos,
                    format!("expected a tagged value (one of !{})", variants.join(", !")),
                )),
            },
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_unit()
    }
}

struct LocatedDe<'a> {
    node: &'a Node,
    state: u8,
}

impl<'de, 'a> de::MapAccess<'de> for LocatedDe<'a> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        if self.state >= 2 {
            return Ok(None);
        }
        let key = LOCATED_FIELDS[usize::from(self.state)];
        seed.deserialize(key.into_deserializer()).map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, DeError> {
        self.state += 1;
        if self.state == 1 {
            let pos = &self.node.pos;
            let tuple = (pos.file.display().to_string(), pos.line, pos.col);
            seed.deserialize(serde::de::value::SeqDeserializer::new(
                [
                    Scalar::Str(tuple.0),
                    Scalar::Num(tuple.1),
                    Scalar::Num(tuple.2),
                ]
                .into_iter(),
            ))
        } else {
            seed.deserialize(NodeDe::new(self.node))
                .map_err(|e| e.located(&self.node.pos))
        }
    }
}

enum Scalar {
    Str(String),
    Num(usize),
}

impl<'de> IntoDeserializer<'de, DeError> for Scalar {
    type Deserializer = ScalarDe;
    fn into_deserializer(self) -> ScalarDe {
        ScalarDe(self)
    }
}

struct ScalarDe(Scalar);

impl<'de> de::Deserializer<'de> for ScalarDe {
    type Error = DeError;
    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.0 {
            Scalar::Str(s) => v.visit_string(s),
            Scalar::Num(n) => v.visit_u64(n as u64),
        }
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct SeqDe<'a>(std::slice::Iter<'a, Node>);

impl<'de, 'a> de::SeqAccess<'de> for SeqDe<'a> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.0.next() {
            Some(node) => seed
                .deserialize(NodeDe::new(node))
                .map(Some)
                .map_err(|e| e.located(&node.pos)),
            None => Ok(None),
        }
    }
}

struct MapDe<'a> {
    entries: std::slice::Iter<'a, (Node, Node)>,
    fields: Option<&'static [&'static str]>,
    value: Option<&'a Node>,
    key: Option<&'a Node>,
}

impl<'a> MapDe<'a> {
    fn new(entries: &'a [(Node, Node)], fields: Option<&'static [&'static str]>) -> MapDe<'a> {
        MapDe {
            entries: entries.iter(),
            fields,
            value: None,
            key: None,
        }
    }
}

impl<'de, 'a> de::MapAccess<'de> for MapDe<'a> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((k, v)) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some(v);
        self.key = Some(k);
        if let (Some(fields), Some(text)) = (self.fields, k.as_str()) {
            // snake_case spellings of kebab-case keys, as the original accepted them.
            let kebab = text.replace('_', "-");
            if !fields.contains(&text) && fields.contains(&kebab.as_str()) {
                let de: de::value::StringDeserializer<DeError> = kebab.into_deserializer();
                return seed
                    .deserialize(de)
                    .map(Some)
                    .map_err(|e| e.located(&k.pos));
            }
        }
        seed.deserialize(NodeDe::new(k))
            .map(Some)
            .map_err(|e| e.located(&k.pos))
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, DeError> {
        let node = self.value.take().expect("value after key");
        let key = self.key.and_then(|k| k.as_str()).unwrap_or("");
        seed.deserialize(NodeDe::new(node)).map_err(|e| {
            let mut e = e.located(&node.pos);
            if e.kind == ErrorKind::Other && !e.message.starts_with('"') && self.fields.is_some() {
                e.message = format!("\"{key}\": {}", e.message);
            }
            e
        })
    }
}

struct EnumDe<'a>(&'a Node);

impl<'de, 'a> de::EnumAccess<'de> for EnumDe<'a> {
    type Error = DeError;
    type Variant = NodeDe<'a>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, NodeDe<'a>), DeError> {
        let tag = self.0.tag.clone().unwrap_or_default();
        let de: de::value::StringDeserializer<DeError> = tag.into_deserializer();
        let variant = seed.deserialize(de)?;
        // The tag is consumed: the value is read as if it had none.
        Ok((
            variant,
            NodeDe {
                node: self.0,
                tagged: false,
            },
        ))
    }
}

impl<'de, 'a> de::VariantAccess<'de> for NodeDe<'a> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        if self.node.is_null() {
            Ok(())
        } else {
            Err(DeError::at(&self.node.pos, "this tag takes no value"))
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(self)
            .map_err(|e| e.located(&self.node.pos))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_seq(self, v)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_struct(self, "", fields, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::parse_str;
    use std::path::Path;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    struct S {
        owner_uid: Option<u32>,
        #[serde(default)]
        mode: u32,
        size: Option<u64>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    enum E {
        Sh(String),
        Text(std::collections::BTreeMap<String, String>),
        Remove(String),
    }

    fn node(text: &str) -> Node {
        parse_str(text, Path::new("vagga.yaml")).unwrap()
    }

    #[test]
    fn snake_case_keys_and_number_forms() {
        let n = node("owner_uid: 1\nmode: 0o755\nsize: 100Mi\n");
        let s: S = from_node(&n).unwrap();
        assert_eq!(
            s,
            S {
                owner_uid: Some(1),
                mode: 0o755,
                size: Some(100 << 20)
            }
        );
        assert_eq!(parse_int("1k"), Some(1000));
        assert_eq!(parse_int("2Gi"), Some(2 << 30));
        assert_eq!(parse_int("1x"), None);
    }

    #[test]
    fn unknown_keys_name_the_alternatives_and_the_position() {
        let n = node("\nmode: 1\nmdoe: 2\n");
        let err = from_node::<S>(&n).unwrap_err();
        assert_eq!(err.kind, ErrorKind::UnknownKey);
        assert_eq!(
            err.to_string(),
            "vagga.yaml:3:1: unknown key \"mdoe\"; expected one of: owner-uid, mode, size"
        );
    }

    #[test]
    fn tags_pick_variants_with_suggestions() {
        let n = node("- !Sh echo\n- !Remove /x\n");
        let steps: Vec<E> = from_node(&n).unwrap();
        assert_eq!(steps, vec![E::Sh("echo".into()), E::Remove("/x".into())]);
        let n = node("- !Sh echo\n- !Sho echo\n");
        let err = from_node::<Vec<E>>(&n).unwrap_err();
        assert_eq!(
            err.to_string(),
            "vagga.yaml:2:3: unknown tag !Sho (did you mean !Sh?)"
        );
    }

    #[test]
    fn wrong_types_name_the_key() {
        let n = node("mode: [1]\n");
        let err = from_node::<S>(&n).unwrap_err();
        assert_eq!(
            err.to_string(),
            "vagga.yaml:1:7: \"mode\": expected a single value, found a list"
        );
    }

    #[test]
    fn located_values_know_their_position() {
        let n = node("a: x\nb: y\n");
        let m: std::collections::BTreeMap<String, Located<String>> = from_node(&n).unwrap();
        assert_eq!(m["b"].value, "y");
        assert_eq!((m["b"].pos.line, m["b"].pos.col), (2, 4));
    }
}
