//! Value syntaxes shared by the config files: sizes (`100Mi`, `1G`), modes (`0o755`),
//! seconds (`1`, `0.5`), id and port ranges (`[1, 1000-2000]`) and plain scalars.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

/// A size in bytes: an integer or a number with a unit (`k M G T` decimal, `Ki Mi Gi Ti`
/// binary; case of the first letter ignored, as the original accepted `100m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Size(pub u64);

impl Size {
    pub fn parse(text: &str) -> Result<Size, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let multiplier: u64 = match unit.trim() {
            "" => 1,
            "k" | "K" => 1000,
            "m" | "M" => 1000_u64.pow(2),
            "g" | "G" => 1000_u64.pow(3),
            "t" | "T" => 1000_u64.pow(4),
            "ki" | "Ki" | "KiB" => 1 << 10,
            "mi" | "Mi" | "MiB" => 1 << 20,
            "gi" | "Gi" | "GiB" => 1 << 30,
            "ti" | "Ti" | "TiB" => 1 << 40,
            other => return Err(format!("unknown size unit {other:?} in {text:?}")),
        };
        let value: f64 = number
            .parse()
            .map_err(|_| format!("expected a size like 100Mi, found {text:?}"))?;
        Ok(Size((value * multiplier as f64).round() as u64))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [
            (1u64 << 40, "Ti"),
            (1 << 30, "Gi"),
            (1 << 20, "Mi"),
            (1 << 10, "Ki"),
        ];
        for (size, name) in units {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{name}", self.0 / size);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size like 100Mi or 1G")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Size, E> {
                if v < 0.0 {
                    return Err(E::custom("a size cannot be negative"));
                }
                Ok(Size(v.round() as u64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                Size::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A file mode: an integer (`0o755` in YAML is octal) or a string `"0755"`/`"0o755"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Mode(pub u32);

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Mode, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Mode;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a file mode like 0o755")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Mode, E> {
                if v > 0o7777 {
                    return Err(E::custom(format!("mode {v:#o} is larger than 0o7777")));
                }
                Ok(Mode(v as u32))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Mode, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom("a mode cannot be negative"))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Mode, E> {
                let digits = v.strip_prefix("0o").unwrap_or(v);
                let value = u32::from_str_radix(digits, 8)
                    .map_err(|_| E::custom(format!("expected an octal mode, found {v:?}")))?;
                self.visit_u64(value.into())
            }
        }
        d.deserialize_any(V)
    }
}

/// Seconds as a float: `1`, `0.5`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize)]
#[serde(transparent)]
pub struct Seconds(pub f64);

impl Seconds {
    pub fn duration(self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.0.max(0.0))
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Seconds, D::Error> {
        let value = f64::deserialize(d)?;
        if !(0.0..=365.0 * 86400.0).contains(&value) {
            return Err(de::Error::custom(format!(
                "expected seconds between 0 and a year, found {value}"
            )));
        }
        Ok(Seconds(value))
    }
}

/// An inclusive range of ids or ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub start: u32,
    pub end: u32,
}

/// A list of ranges written as `[1, 99, 1000-2000]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Ranges(pub Vec<Range>);

impl Ranges {
    pub fn contains(&self, value: u32) -> bool {
        self.0.iter().any(|r| r.start <= value && value <= r.end)
    }

    /// Whether every value of `start..start+count` is in these ranges.
    pub fn contains_all(&self, start: u32, count: u32) -> bool {
        let mut value = start as u64;
        let end = start as u64 + count as u64;
        while value < end {
            match self
                .0
                .iter()
                .find(|r| r.start as u64 <= value && value <= r.end as u64)
            {
                Some(r) => value = r.end as u64 + 1,
                None => return false,
            }
        }
        true
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Ranges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|r| {
                if r.start == r.end {
                    r.start.to_string()
                } else {
                    format!("{}-{}", r.start, r.end)
                }
            })
            .collect();
        write!(f, "[{}]", parts.join(", "))
    }
}

fn parse_range(text: &str) -> Result<Range, String> {
    let bad = || format!("expected a number or a range like 1000-2000, found {text:?}");
    let (start, end) = match text.split_once('-') {
        Some((a, b)) => (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        ),
        None => {
            let v = text.trim().parse().map_err(|_| bad())?;
            (v, v)
        }
    };
    if start > end {
        return Err(format!("range {text:?} ends before it starts"));
    }
    Ok(Range { start, end })
}

impl<'de> Deserialize<'de> for Ranges {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Ranges, D::Error> {
        // Config files write `1000-2000`; the JSON given to knots writes `{start, end}`.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Item {
            Text(Scalar),
            Range(Range),
        }
        let items = Vec::<Item>::deserialize(d)?;
        items
            .into_iter()
            .map(|item| match item {
                Item::Text(s) => parse_range(&s.0).map_err(de::Error::custom),
                Item::Range(r) => Ok(r),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Ranges)
    }
}

/// Any YAML scalar read as its text (`8080`, `true`, `web`): variable values.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Scalar, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_decimal_and_binary_units() {
        assert_eq!(Size::parse("100Mi").unwrap(), Size(100 << 20));
        assert_eq!(Size::parse("1G").unwrap(), Size(1_000_000_000));
        assert_eq!(Size::parse("100m").unwrap(), Size(100_000_000));
        assert_eq!(Size::parse("512").unwrap(), Size(512));
        assert!(Size::parse("12 parsecs").is_err());
        assert_eq!(Size(32 << 20).to_string(), "32Mi");
        let s: Size = serde_yaml::from_str("64Mi").unwrap();
        assert_eq!(s, Size(64 << 20));
    }

    #[test]
    fn modes_are_octal() {
        let m: Mode = serde_yaml::from_str("0o755").unwrap();
        assert_eq!(m, Mode(0o755));
        let m: Mode = serde_yaml::from_str("\"0700\"").unwrap();
        assert_eq!(m, Mode(0o700));
        assert!(serde_yaml::from_str::<Mode>("0o17777").is_err());
    }

    #[test]
    fn ranges_mix_numbers_and_spans() {
        let r: Ranges = serde_yaml::from_str("[1, 1000-2000]").unwrap();
        assert!(r.contains(1) && r.contains(1500) && !r.contains(2));
        assert!(r.contains_all(1000, 1001) && !r.contains_all(1000, 1002));
        assert_eq!(r.to_string(), "[1, 1000-2000]");
        assert!(serde_yaml::from_str::<Ranges>("[5-1]").is_err());
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Ranges>(&json).unwrap(), r);
    }
}
