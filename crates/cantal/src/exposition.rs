//! `/metrics`: series as Prometheus text (0.0.4) or OpenMetrics 1.0.
//!
//! Written here rather than with `prometheus-client`: that crate encodes only OpenMetrics and
//! wants a registry of long-lived metric objects, while the agent exposes a fresh snapshot
//! of thousands of series with per-scan label sets.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;

use crate::metric::{Fields, SeriesKey, Source, Value};

/// Prometheus metric and label names use only these characters.
fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) || out.is_empty() {
        out.insert(0, '_');
    }
    out
}

/// Labels of a series: every key field but `metric`, names sanitized.
pub type Labels = BTreeMap<String, String>;

/// Prometheus type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// The Prometheus name (without `_total`) and labels of a numeric series, or `None` for
/// series not exposed (per-process ones unless asked for).
pub fn prometheus_name(key: &SeriesKey, per_pid: bool) -> Option<(String, Labels)> {
    let prefix = match key.source {
        Source::System => "cantal_",
        Source::Process if per_pid => "cantal_process_",
        Source::Process => return None,
        Source::Group => "cantal_group_",
        Source::App => "cantal_app_",
    };
    let metric = key.fields.get("metric").unwrap_or("unnamed");
    Some((format!("{prefix}{}", sanitize(metric)), labels(&key.fields)))
}

fn labels(fields: &Fields) -> Labels {
    fields
        .iter()
        .filter(|(name, _)| *name != "metric")
        .map(|(name, value)| (sanitize(name), value.to_owned()))
        .collect()
}

/// Families being assembled: name → (kind, help, samples).
#[derive(Debug, Default)]
pub struct Exposition {
    families: BTreeMap<String, Family>,
    seen: HashSet<(String, Labels)>,
    /// Names families occupy in either format (a counter takes `x` and `x_total`).
    reserved: HashSet<String>,
}

#[derive(Debug)]
struct Family {
    kind: Kind,
    help: String,
    samples: Vec<(Labels, f64)>,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one sample. A name already used by another type, or a repeated series, is
    /// skipped: the output must stay valid whatever apps name their metrics.
    pub fn add(&mut self, name: &str, kind: Kind, help: &str, labels: Labels, value: f64) {
        if !self.families.contains_key(name) {
            let names = match kind {
                Kind::Counter => vec![name.to_owned(), format!("{name}_total")],
                Kind::Gauge => vec![name.to_owned()],
            };
            if names.iter().any(|n| self.reserved.contains(n)) {
                return;
            }
            self.reserved.extend(names);
            self.families.insert(
                name.to_owned(),
                Family {
                    kind,
                    help: help.to_owned(),
                    samples: Vec::new(),
                },
            );
        }
        let family = self.families.get_mut(name).expect("inserted above");
        if family.kind == kind && self.seen.insert((name.to_owned(), labels.clone())) {
            family.samples.push((labels, value));
        }
    }

    /// Adds a scan's samples.
    pub fn add_samples<'a, V: Borrow<Value>>(
        &mut self,
        samples: impl IntoIterator<Item = (&'a SeriesKey, V)>,
        per_pid: bool,
    ) {
        for (key, value) in samples {
            let value = value.borrow();
            if let Value::State(entered_ms, text) = value {
                if key.source != Source::App {
                    continue;
                }
                let mut labels = labels(&key.fields);
                self.add(
                    "cantal_app_state_entered_seconds",
                    Kind::Gauge,
                    "when an application entered its current state",
                    labels.clone(),
                    *entered_ms as f64 / 1000.0,
                );
                labels.insert("value".to_owned(), text.clone());
                self.add(
                    "cantal_app_state_info",
                    Kind::Gauge,
                    "the current state of an application",
                    labels,
                    1.0,
                );
                continue;
            }
            let Some((name, labels)) = prometheus_name(key, per_pid) else {
                continue;
            };
            let kind = match value {
                Value::Counter(_) => Kind::Counter,
                _ => Kind::Gauge,
            };
            let help = format!("cantal {}", key.metric());
            if let Some(number) = value.as_f64() {
                self.add(&name, kind, &help, labels, number);
            }
        }
    }

    /// Prometheus text format 0.0.4: counters are named with `_total` throughout.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for (name, family) in &self.families {
            let (name, kind) = match family.kind {
                Kind::Counter => (format!("{name}_total"), "counter"),
                Kind::Gauge => (name.clone(), "gauge"),
            };
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&family.help));
            let _ = writeln!(out, "# TYPE {name} {kind}");
            write_samples(&mut out, &name, &family.samples);
        }
        out
    }

    /// OpenMetrics 1.0 text: counter families without `_total`, samples with it, `# EOF`.
    pub fn to_openmetrics(&self) -> String {
        let mut out = String::new();
        for (name, family) in &self.families {
            let (sample_name, kind) = match family.kind {
                Kind::Counter => (format!("{name}_total"), "counter"),
                Kind::Gauge => (name.clone(), "gauge"),
            };
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&family.help));
            write_samples(&mut out, &sample_name, &family.samples);
        }
        out.push_str("# EOF\n");
        out
    }
}

fn write_samples(out: &mut String, name: &str, samples: &[(Labels, f64)]) {
    for (labels, value) in samples {
        out.push_str(name);
        if !labels.is_empty() {
            out.push('{');
            for (i, (label, text)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{label}=\"{}\"", escape_label(text));
            }
            out.push('}');
        }
        let _ = writeln!(out, " {}", format_value(*value));
    }
}

fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        value.to_string()
    }
}

fn escape_label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metric::key;

    fn app(fields: &[(&str, &str)]) -> SeriesKey {
        SeriesKey::new(
            Source::App,
            fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn names_labels_and_types() {
        let cpu = SeriesKey::new(Source::System, key("cpu.user", []));
        let disk = SeriesKey::new(
            Source::System,
            key("disk.read.bytes", [("device", "sda".to_owned())]),
        );
        let group = SeriesKey::new(
            Source::Group,
            key(
                "rss",
                [
                    ("group", "system/x".to_owned()),
                    ("container", "a/b.0".to_owned()),
                ],
            ),
        );
        let process = SeriesKey::new(Source::Process, key("rss", [("pid", "1".to_owned())]));
        let counter = app(&[
            ("metric", "requests.number"),
            ("pid", "7"),
            ("appname", "web"),
        ]);
        let state = app(&[("state", "sql"), ("pid", "7")]);
        let samples = [
            (cpu, Value::Counter(10)),
            (disk, Value::Counter(512)),
            (group, Value::Integer(4096)),
            (process, Value::Integer(1)),
            (counter, Value::Counter(3)),
            (state, Value::State(1_500, "a \"quoted\"\nline".to_owned())),
        ];
        let mut exposition = Exposition::new();
        exposition.add_samples(samples.iter().map(|(k, v)| (k, v)), false);
        let text = exposition.to_text();
        assert!(
            text.contains("# TYPE cantal_cpu_user_total counter\ncantal_cpu_user_total 10\n"),
            "{text}"
        );
        assert!(text.contains("cantal_disk_read_bytes_total{device=\"sda\"} 512\n"));
        assert!(text.contains("cantal_group_rss{container=\"a/b.0\",group=\"system/x\"} 4096\n"));
        assert!(!text.contains("cantal_process_rss"));
        assert!(text.contains("cantal_app_requests_number_total{appname=\"web\",pid=\"7\"} 3\n"));
        assert!(text.contains(
            "cantal_app_state_info{pid=\"7\",state=\"sql\",value=\"a \\\"quoted\\\"\\nline\"} 1\n"
        ));
        assert!(text.contains("cantal_app_state_entered_seconds{pid=\"7\",state=\"sql\"} 1.5\n"));

        let mut per_pid = Exposition::new();
        per_pid.add_samples(samples.iter().map(|(k, v)| (k, v)), true);
        assert!(
            per_pid
                .to_text()
                .contains("cantal_process_rss{pid=\"1\"} 1\n")
        );

        let open = exposition.to_openmetrics();
        assert!(open.contains("# TYPE cantal_cpu_user counter\n# HELP cantal_cpu_user cantal cpu.user\ncantal_cpu_user_total 10\n"));
        assert!(open.ends_with("# EOF\n"));
    }

    #[test]
    fn odd_names_stay_valid() {
        let mut exposition = Exposition::new();
        let samples = [
            (
                app(&[("metric", "9lives"), ("a-b", "1")]),
                Value::Float(f64::NAN),
            ),
            (app(&[("metric", "x")]), Value::Counter(1)),
            (app(&[("metric", "x")]), Value::Counter(2)),
            (app(&[("metric", "y_total")]), Value::Integer(1)),
            (app(&[("metric", "y")]), Value::Counter(1)),
        ];
        exposition.add_samples(samples.iter().map(|(k, v)| (k, v)), false);
        let text = exposition.to_text();
        assert!(
            text.contains("cantal_app__9lives{a_b=\"1\"} NaN\n"),
            "{text}"
        );
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("cantal_app_x_total "))
                .count(),
            1
        );
        assert_eq!(text.matches("# TYPE cantal_app_y_total").count(), 1);
        let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())));
        assert!(parsed.is_ok());
    }
}
