//! `/query.json`: the original's rule vocabulary over the history.
//!
//! ```json
//! {"rules": {"req_rate": {
//!    "source": "fine",
//!    "condition": ["and", ["eq", "metric", "requests.number"], ["has", "appname"]],
//!    "functions": [["non_negative_derivative"], ["sum_by", "appname"]],
//!    "expect": "multi_series", "points": 150}}}
//! ```
//!
//! Each rule answers in its own slot of `dataset`; a rule that fails gets `{"error": ...}`
//! there and the others still answer.

use std::collections::BTreeMap;

use regex::Regex;
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::history::History;
use crate::metric::{Fields, Key};

/// Points of a `fine` rule without `points`.
pub const DEFAULT_POINTS: usize = 150;

/// A query body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub rules: BTreeMap<String, Json>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    source: SourceKind,
    condition: Json,
    #[serde(default)]
    functions: Vec<Vec<Json>>,
    expect: Expect,
    #[serde(default)]
    points: Option<usize>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum SourceKind {
    Tip,
    Fine,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Expect {
    SingleSeries,
    MultiSeries,
    SingleTip,
    MultiTip,
    Chart,
}

/// A rule's condition on series keys.
#[derive(Debug, Clone)]
pub enum Condition {
    Eq(String, String),
    NotEq(String, String),
    RegexLike(String, Regex),
    And(Vec<Condition>),
    Or(Vec<Condition>),
    Not(Box<Condition>),
    Has(String),
}

impl Condition {
    /// Parses the JSON spelling: `["eq", field, value]`, `["and", c1, c2, ...]`, ...
    pub fn parse(json: &Json) -> Result<Self, String> {
        let items = json
            .as_array()
            .ok_or_else(|| format!("condition {json} is not an array"))?;
        let op = items
            .first()
            .and_then(Json::as_str)
            .ok_or_else(|| format!("condition {json} has no operator"))?;
        let text = |i: usize| {
            items
                .get(i)
                .and_then(Json::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("condition {json}: argument {i} is not a string"))
        };
        let nested = || {
            items[1..]
                .iter()
                .map(Self::parse)
                .collect::<Result<Vec<_>, _>>()
        };
        let arity = |n: usize| {
            if items.len() == n + 1 {
                Ok(())
            } else {
                Err(format!("condition {json}: {op} takes {n} arguments"))
            }
        };
        match op {
            "eq" => arity(2).and_then(|()| Ok(Self::Eq(text(1)?, text(2)?))),
            "not_eq" => arity(2).and_then(|()| Ok(Self::NotEq(text(1)?, text(2)?))),
            "regex_like" => arity(2).and_then(|()| {
                let pattern = text(2)?;
                let regex = Regex::new(&pattern).map_err(|e| format!("regex {pattern:?}: {e}"))?;
                Ok(Self::RegexLike(text(1)?, regex))
            }),
            "has" => arity(1).and_then(|()| Ok(Self::Has(text(1)?))),
            "not" => arity(1).and_then(|()| Ok(Self::Not(Box::new(Self::parse(&items[1])?)))),
            "and" => nested().map(Self::And),
            "or" => nested().map(Self::Or),
            other => Err(format!("unknown condition {other:?}")),
        }
    }

    pub fn matches(&self, key: &Fields) -> bool {
        match self {
            Self::Eq(field, value) => key.get(field) == Some(value.as_str()),
            Self::NotEq(field, value) => key.get(field) != Some(value.as_str()),
            Self::RegexLike(field, regex) => key.get(field).is_some_and(|v| regex.is_match(v)),
            Self::And(all) => all.iter().all(|c| c.matches(key)),
            Self::Or(any) => any.iter().any(|c| c.matches(key)),
            Self::Not(inner) => !inner.matches(key),
            Self::Has(field) => key.contains_key(field),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Function {
    NonNegativeDerivative,
    Sum,
    SumBy(String),
    StateChart,
}

impl Function {
    fn parse(items: &[Json]) -> Result<Self, String> {
        let name = items.first().and_then(Json::as_str).unwrap_or_default();
        match (name, items.len()) {
            ("non_negative_derivative", 1) => Ok(Self::NonNegativeDerivative),
            ("sum", 1) => Ok(Self::Sum),
            ("sum_by", 2) => items[1]
                .as_str()
                .map(|f| Self::SumBy(f.to_owned()))
                .ok_or_else(|| "sum_by takes a field name".to_owned()),
            ("state_chart", 1) => Ok(Self::StateChart),
            _ => Err(format!("unknown function {}", Json::from(items.to_vec()))),
        }
    }
}

/// Series aligned on common timestamps.
#[derive(Debug, Clone, PartialEq)]
struct Dataset {
    timestamps: Vec<u64>,
    series: Vec<(Key, Vec<Option<f64>>)>,
}

/// Runs every rule of `request` on `history`; the reply's `dataset` object.
pub fn run(request: &Request, history: &History) -> Json {
    let dataset: serde_json::Map<String, Json> = request
        .rules
        .iter()
        .map(|(name, rule)| {
            let answer = run_rule(rule, history).unwrap_or_else(|error| json!({"error": error}));
            (name.clone(), answer)
        })
        .collect();
    Json::Object(dataset)
}

fn run_rule(rule: &Json, history: &History) -> Result<Json, String> {
    let rule: RawRule = serde_json::from_value(rule.clone()).map_err(|e| e.to_string())?;
    let condition = Condition::parse(&rule.condition)?;
    let functions = rule
        .functions
        .iter()
        .map(|f| Function::parse(f))
        .collect::<Result<Vec<_>, _>>()?;
    if functions.contains(&Function::StateChart) {
        if rule.expect != Expect::Chart {
            return Err("state_chart answers only expect=chart".to_owned());
        }
        let mut chart: BTreeMap<String, u64> = BTreeMap::new();
        for (key, state) in history.states() {
            if condition.matches(&key.fields) {
                *chart.entry(state.text.clone()).or_default() += 1;
            }
        }
        return Ok(json!({"chart": chart}));
    }
    let derivative = functions.contains(&Function::NonNegativeDerivative);
    let points = match rule.source {
        SourceKind::Tip => 1 + usize::from(derivative),
        SourceKind::Fine => rule.points.unwrap_or(DEFAULT_POINTS).max(1) + usize::from(derivative),
    };
    let scans = history.last_scans(points);
    let mut data = Dataset {
        timestamps: scans.clone().filter_map(|s| history.timestamp(s)).collect(),
        series: history
            .keys()
            .filter(|(key, _)| condition.matches(&key.fields))
            .filter_map(|(key, _)| {
                let (_, values) = history.values(key, scans.clone())?;
                Some((key.fields.to_map(), values))
            })
            .collect(),
    };
    data.series.sort_by(|a, b| a.0.cmp(&b.0));
    for function in &functions {
        data = apply(function, data);
    }
    if derivative && data.timestamps.len() > 1 {
        // The extra point only fed the first derivative.
        data.timestamps.remove(0);
        for (_, values) in &mut data.series {
            values.remove(0);
        }
    }
    shape(rule.expect, data)
}

fn apply(function: &Function, data: Dataset) -> Dataset {
    match function {
        Function::NonNegativeDerivative => {
            let timestamps = data.timestamps;
            let series = data
                .series
                .into_iter()
                .map(|(key, values)| {
                    let mut rates = vec![None; values.len()];
                    for i in 1..values.len() {
                        if let (Some(prev), Some(cur)) = (values[i - 1], values[i]) {
                            let dt =
                                timestamps[i].saturating_sub(timestamps[i - 1]) as f64 / 1000.0;
                            if cur >= prev && dt > 0.0 {
                                rates[i] = Some((cur - prev) / dt);
                            }
                        }
                    }
                    (key, rates)
                })
                .collect();
            Dataset { timestamps, series }
        }
        Function::Sum => group(data, |_| Key::new()),
        Function::SumBy(field) => group(data, |key| {
            Key::from([(field.clone(), key.get(field).cloned().unwrap_or_default())])
        }),
        Function::StateChart => data,
    }
}

fn group(data: Dataset, group_key: impl Fn(&Key) -> Key) -> Dataset {
    let len = data.timestamps.len();
    let mut groups: BTreeMap<Key, Vec<Option<f64>>> = BTreeMap::new();
    for (key, values) in data.series {
        let sums = groups
            .entry(group_key(&key))
            .or_insert_with(|| vec![None; len]);
        for (sum, value) in sums.iter_mut().zip(values) {
            if let Some(value) = value {
                *sum = Some(sum.unwrap_or(0.0) + value);
            }
        }
    }
    Dataset {
        timestamps: data.timestamps,
        series: groups.into_iter().collect(),
    }
}

fn shape(expect: Expect, data: Dataset) -> Result<Json, String> {
    let single = || {
        if data.series.len() == 1 {
            Ok(&data.series[0])
        } else {
            Err(format!(
                "expected a single series, the query matched {}",
                data.series.len()
            ))
        }
    };
    let last = |values: &Vec<Option<f64>>| values.last().copied().flatten();
    match expect {
        Expect::SingleSeries => {
            let (key, values) = single()?;
            Ok(json!({"timestamps": data.timestamps, "key": key, "values": values}))
        }
        Expect::MultiSeries => Ok(json!({
            "timestamps": data.timestamps,
            "series": data.series.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
        })),
        Expect::SingleTip => {
            let (key, values) = single()?;
            Ok(json!({"timestamp": data.timestamps.last(), "key": key, "value": last(values)}))
        }
        Expect::MultiTip => Ok(json!({
            "timestamp": data.timestamps.last(),
            "values": data.series.iter().map(|(k, v)| json!([k, last(v)])).collect::<Vec<_>>(),
        })),
        Expect::Chart => Err("expect=chart needs the state_chart function".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metric::{SeriesKey, Source, Value, key};

    fn history() -> History {
        let mut history = History::new(100);
        let web = |pid: &str| {
            SeriesKey::new(
                Source::App,
                key(
                    "requests.number",
                    [("appname", "web".to_owned()), ("pid", pid.to_owned())],
                ),
            )
        };
        let other = SeriesKey::new(Source::System, key("cpu.user", []));
        let state = SeriesKey::new(Source::App, key("phase", [("pid", "1".to_owned())]));
        for scan in 0..10u64 {
            history.push_scan(
                scan * 2000,
                [
                    (&web("1"), &Value::Counter(scan * 20)),
                    (&web("2"), &Value::Counter(scan * 10)),
                    (&other, &Value::Counter(scan)),
                    (&state, &Value::State(1, "idle".to_owned())),
                ],
            );
        }
        history
    }

    fn query(rules: Json) -> Json {
        let request: Request = serde_json::from_value(json!({ "rules": rules })).unwrap();
        run(&request, &history())
    }

    #[test]
    fn rate_summed_by_app() {
        let answer = query(json!({"req_rate": {
            "source": "fine",
            "condition": ["and", ["eq", "metric", "requests.number"], ["has", "appname"]],
            "functions": [["non_negative_derivative"], ["sum_by", "appname"]],
            "expect": "multi_series", "points": 3}}));
        let rule = &answer["req_rate"];
        assert_eq!(rule["timestamps"], json!([14000, 16000, 18000]));
        assert_eq!(
            rule["series"],
            json!([[{"appname": "web"}, [15.0, 15.0, 15.0]]])
        );
    }

    #[test]
    fn tips_and_shapes() {
        let answer = query(json!({
            "cpu": {"source": "tip", "condition": ["eq", "metric", "cpu.user"], "expect": "single_tip"},
            "both": {"source": "tip", "condition": ["regex_like", "metric", "^req"], "expect": "multi_tip"},
            "bad": {"source": "tip", "condition": ["regex_like", "metric", "^req"], "expect": "single_tip"},
            "total": {"source": "tip", "condition": ["not", ["eq", "metric", "cpu.user"]],
                      "functions": [["sum"]], "expect": "single_tip"},
            "states": {"source": "tip", "condition": ["has", "pid"], "functions": [["state_chart"]], "expect": "chart"},
            "broken": {"source": "tip", "condition": ["nope"], "expect": "chart"},
        }));
        assert_eq!(answer["cpu"]["value"], json!(9.0));
        assert_eq!(answer["cpu"]["timestamp"], json!(18000));
        assert_eq!(answer["both"]["values"].as_array().unwrap().len(), 2);
        assert!(
            answer["bad"]["error"]
                .as_str()
                .unwrap()
                .contains("single series")
        );
        assert_eq!(answer["total"]["value"], json!(270.0));
        assert_eq!(answer["states"]["chart"], json!({"idle": 1}));
        assert!(answer["broken"]["error"].is_string());
    }

    #[test]
    fn conditions() {
        let k = Fields::from(&key("m", [("a", "1".to_owned())]));
        let parse = |j: Json| Condition::parse(&j).unwrap();
        assert!(parse(json!(["eq", "a", "1"])).matches(&k));
        assert!(parse(json!(["not_eq", "a", "2"])).matches(&k));
        assert!(parse(json!(["or", ["has", "b"], ["has", "a"]])).matches(&k));
        assert!(!parse(json!(["not", ["has", "a"]])).matches(&k));
        for bad in [
            json!("eq"),
            json!(["eq", "a"]),
            json!(["regex_like", "a", "("]),
            json!([1]),
        ] {
            assert!(Condition::parse(&bad).is_err(), "{bad}");
        }
    }
}
