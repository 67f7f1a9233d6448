//! The read-only Prometheus query API's subset: selectors with `= != =~ !~`, range vectors,
//! `rate`, `irate`, `increase`, `sum/avg/min/max [by (...)]` and arithmetic with scalars,
//! evaluated over the history. Anything else is rejected naming what is not supported.
//!
//! `rate` and `increase` do not extrapolate to the ends of the range as Prometheus does: they
//! are the growth between the first and last sample in the range (counter resets handled),
//! per second for `rate`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use regex::Regex;

use crate::exposition::prometheus_name;
use crate::history::{History, Kind};

/// How far back an instant selector looks for a sample.
pub const LOOKBACK: Duration = Duration::from_secs(300);
/// Most points a range query returns per series.
pub const MAX_POINTS: u64 = 11_000;

/// Labels including `__name__`.
pub type Labels = BTreeMap<String, String>;

/// A query the subset cannot answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadData(pub String);

fn bad<T>(message: impl Into<String>) -> Result<T, BadData> {
    Err(BadData(message.into()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MatchOp {
    Eq,
    Ne,
    Re,
    Nre,
}

#[derive(Debug, Clone)]
struct Matcher {
    label: String,
    op: MatchOp,
    value: String,
    regex: Option<Regex>,
}

impl Matcher {
    fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.label).map_or("", String::as_str);
        match self.op {
            MatchOp::Eq => value == self.value,
            MatchOp::Ne => value != self.value,
            MatchOp::Re => self.regex.as_ref().is_some_and(|r| r.is_match(value)),
            MatchOp::Nre => !self.regex.as_ref().is_some_and(|r| r.is_match(value)),
        }
    }
}

/// A series selector: `name{label="value", ...}`.
#[derive(Debug, Clone)]
pub struct Selector {
    id: usize,
    matchers: Vec<Matcher>,
}

impl Selector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.matchers.iter().all(|m| m.matches(labels))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeFunc {
    Rate,
    Irate,
    Increase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AggOp {
    Sum,
    Avg,
    Min,
    Max,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
}

/// A parsed query.
#[derive(Debug, Clone)]
pub enum Expr {
    Number(f64),
    Selector(Selector),
    Range(Selector, Duration),
    Call(RangeFuncExpr),
    Aggregate {
        op: AggOpExpr,
        by: Vec<String>,
        expr: Box<Expr>,
    },
    Binary {
        op: BinOpExpr,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
}

/// `rate(x[5m])` and friends.
#[derive(Debug, Clone)]
pub struct RangeFuncExpr {
    func: RangeFunc,
    selector: Selector,
    range: Duration,
}

/// Opaque wrappers keep the operator enums private.
#[derive(Debug, Clone, Copy)]
pub struct AggOpExpr(AggOp);
#[derive(Debug, Clone, Copy)]
pub struct BinOpExpr(BinOp);

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Number(f64),
    Str(String),
    Duration(Duration),
    Punct(&'static str),
}

fn tokenize(text: &str) -> Result<Vec<Token>, BadData> {
    const PUNCT: [&str; 14] = [
        "!=", "=~", "!~", "(", ")", "{", "}", ",", "=", "+", "-", "*", "/", "]",
    ];
    let mut tokens = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '[' {
            let end = chars[i..]
                .iter()
                .position(|&c| c == ']')
                .ok_or_else(|| BadData("unclosed [".to_owned()))?;
            let inside: String = chars[i + 1..i + end].iter().collect();
            tokens.push(Token::Duration(parse_duration(inside.trim())?));
            i += end + 1;
        } else if c == '"' || c == '\'' {
            let mut value = String::new();
            let mut j = i + 1;
            loop {
                match chars.get(j) {
                    None => return bad("unclosed string"),
                    Some('\\') => {
                        let escaped = chars.get(j + 1).copied().unwrap_or('\\');
                        value.push(match escaped {
                            'n' => '\n',
                            't' => '\t',
                            other => other,
                        });
                        j += 2;
                    }
                    Some(&q) if q == c => break,
                    Some(&other) => {
                        value.push(other);
                        j += 1;
                    }
                }
            }
            tokens.push(Token::Str(value));
            i = j + 1;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '_')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            match word.parse::<f64>() {
                Ok(number) => tokens.push(Token::Number(number)),
                // `offset 5m` spells durations without brackets.
                Err(_) => tokens.push(Token::Duration(parse_duration(&word)?)),
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            tokens.push(Token::Ident(chars[start..i].iter().collect()));
        } else {
            let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let punct = PUNCT
                .iter()
                .find(|p| rest.starts_with(**p))
                .ok_or_else(|| BadData(format!("unexpected character {c:?}")))?;
            tokens.push(Token::Punct(punct));
            i += punct.len();
        }
    }
    Ok(tokens)
}

/// Parses `30s`, `5m`, `1h30m`, `250ms`, `1d`, `1w`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, BadData> {
    if let Ok(seconds) = text.parse::<f64>() {
        if seconds.is_finite() && seconds >= 0.0 {
            return Ok(Duration::from_secs_f64(seconds));
        }
        return bad(format!("bad duration {text:?}"));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return bad("empty duration");
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| BadData(format!("bad duration {text:?}")))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_ms = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "y" => 31_536_000_000,
            other => return bad(format!("bad duration unit {other:?} in {text:?}")),
        };
        rest = &rest[unit_len..];
        total += Duration::from_millis(number.saturating_mul(unit_ms));
    }
    Ok(total)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    selectors: usize,
}

/// Parses a query of the supported subset.
pub fn parse(text: &str) -> Result<Expr, BadData> {
    let mut parser = Parser {
        tokens: tokenize(text)?,
        pos: 0,
        selectors: 0,
    };
    let expr = parser.expr()?;
    if let Some(token) = parser.peek() {
        return bad(format!("unexpected {token:?} after the expression"));
    }
    if let Expr::Range(..) = expr {
        return bad("a range vector must be the argument of rate, irate or increase");
    }
    Ok(expr)
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        token
    }

    fn eat(&mut self, punct: &str) -> bool {
        if self.peek() == Some(&Token::Punct(punct_static(punct))) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, punct: &str) -> Result<(), BadData> {
        if self.eat(punct) {
            Ok(())
        } else {
            bad(format!("expected {punct:?}, found {:?}", self.peek()))
        }
    }

    fn expr(&mut self) -> Result<Expr, BadData> {
        let mut lhs = self.term()?;
        loop {
            let op = if self.eat("+") {
                BinOp::Add
            } else if self.eat("-") {
                BinOp::Sub
            } else {
                return Ok(lhs);
            };
            let rhs = self.term()?;
            lhs = binary(op, lhs, rhs)?;
        }
    }

    fn term(&mut self) -> Result<Expr, BadData> {
        let mut lhs = self.unary()?;
        loop {
            let op = if self.eat("*") {
                BinOp::Mul
            } else if self.eat("/") {
                BinOp::Div
            } else {
                return Ok(lhs);
            };
            let rhs = self.unary()?;
            lhs = binary(op, lhs, rhs)?;
        }
    }

    fn unary(&mut self) -> Result<Expr, BadData> {
        if self.eat("-") {
            let inner = self.unary()?;
            return binary(BinOp::Mul, Expr::Number(-1.0), inner);
        }
        if self.eat("+") {
            return self.unary();
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, BadData> {
        match self.next() {
            Some(Token::Number(n)) => Ok(Expr::Number(n)),
            Some(Token::Punct("(")) => {
                let inner = self.expr()?;
                self.expect(")")?;
                Ok(inner)
            }
            Some(Token::Punct("{")) => self.selector(None),
            Some(Token::Ident(name)) => {
                let aggregate = match name.as_str() {
                    "sum" => Some(AggOp::Sum),
                    "avg" => Some(AggOp::Avg),
                    "min" => Some(AggOp::Min),
                    "max" => Some(AggOp::Max),
                    _ => None,
                };
                if let Some(op) = aggregate {
                    return self.aggregate(op);
                }
                if self.peek() == Some(&Token::Punct("(")) {
                    let func = match name.as_str() {
                        "rate" => RangeFunc::Rate,
                        "irate" => RangeFunc::Irate,
                        "increase" => RangeFunc::Increase,
                        other => return bad(format!("unsupported function {other}")),
                    };
                    self.expect("(")?;
                    let arg = self.expr()?;
                    self.expect(")")?;
                    let Expr::Range(selector, range) = arg else {
                        return bad(format!("{name} needs a range vector argument"));
                    };
                    return Ok(Expr::Call(RangeFuncExpr {
                        func,
                        selector,
                        range,
                    }));
                }
                if matches!(
                    name.as_str(),
                    "offset" | "without" | "bool" | "on" | "ignoring"
                ) {
                    return bad(format!("unsupported keyword {name}"));
                }
                if self.eat("{") {
                    self.selector(Some(name))
                } else {
                    self.finish_selector(vec![name_matcher(name)])
                }
            }
            other => bad(format!("unexpected {other:?}")),
        }
    }

    fn aggregate(&mut self, op: AggOp) -> Result<Expr, BadData> {
        let mut by = self.by_clause()?;
        self.expect("(")?;
        let expr = self.expr()?;
        self.expect(")")?;
        if by.is_none() {
            by = self.by_clause()?;
        }
        if let Expr::Range(..) = expr {
            return bad("aggregations take instant vectors");
        }
        Ok(Expr::Aggregate {
            op: AggOpExpr(op),
            by: by.unwrap_or_default(),
            expr: Box::new(expr),
        })
    }

    fn by_clause(&mut self) -> Result<Option<Vec<String>>, BadData> {
        match self.peek() {
            Some(Token::Ident(word)) if word == "by" => {
                self.pos += 1;
                self.expect("(")?;
                let mut labels = Vec::new();
                while !self.eat(")") {
                    match self.next() {
                        Some(Token::Ident(label)) => labels.push(label),
                        other => return bad(format!("expected a label name, found {other:?}")),
                    }
                    if !self.eat(",") {
                        self.expect(")")?;
                        break;
                    }
                }
                Ok(Some(labels))
            }
            Some(Token::Ident(word)) if word == "without" => bad("unsupported keyword without"),
            _ => Ok(None),
        }
    }

    fn selector(&mut self, name: Option<String>) -> Result<Expr, BadData> {
        let mut matchers: Vec<Matcher> = name.into_iter().map(name_matcher).collect();
        while !self.eat("}") {
            let label = match self.next() {
                Some(Token::Ident(label)) => label,
                other => return bad(format!("expected a label name, found {other:?}")),
            };
            let op = match self.next() {
                Some(Token::Punct("=")) => MatchOp::Eq,
                Some(Token::Punct("!=")) => MatchOp::Ne,
                Some(Token::Punct("=~")) => MatchOp::Re,
                Some(Token::Punct("!~")) => MatchOp::Nre,
                other => return bad(format!("expected a match operator, found {other:?}")),
            };
            let value = match self.next() {
                Some(Token::Str(value)) => value,
                other => return bad(format!("expected a string, found {other:?}")),
            };
            let regex = match op {
                MatchOp::Re | MatchOp::Nre => Some(
                    Regex::new(&format!("^(?:{value})$"))
                        .map_err(|e| BadData(format!("regex {value:?}: {e}")))?,
                ),
                _ => None,
            };
            matchers.push(Matcher {
                label,
                op,
                value,
                regex,
            });
            if !self.eat(",") {
                self.expect("}")?;
                break;
            }
        }
        if matchers.is_empty() {
            return bad("a selector needs a name or a matcher");
        }
        self.finish_selector(matchers)
    }

    fn finish_selector(&mut self, matchers: Vec<Matcher>) -> Result<Expr, BadData> {
        let selector = Selector {
            id: self.selectors,
            matchers,
        };
        self.selectors += 1;
        if let Some(Token::Duration(range)) = self.peek().cloned() {
            self.pos += 1;
            return Ok(Expr::Range(selector, range));
        }
        if let Some(Token::Ident(word)) = self.peek()
            && word == "offset"
        {
            return bad("unsupported keyword offset");
        }
        Ok(Expr::Selector(selector))
    }
}

fn punct_static(punct: &str) -> &'static str {
    [
        "!=", "=~", "!~", "(", ")", "{", "}", ",", "=", "+", "-", "*", "/", "]",
    ]
    .into_iter()
    .find(|p| *p == punct)
    .unwrap_or("")
}

fn name_matcher(name: String) -> Matcher {
    Matcher {
        label: "__name__".to_owned(),
        op: MatchOp::Eq,
        value: name,
        regex: None,
    }
}

fn binary(op: BinOp, lhs: Expr, rhs: Expr) -> Result<Expr, BadData> {
    let vector = |e: &Expr| !matches!(e, Expr::Number(_));
    if vector(&lhs) && vector(&rhs) {
        return bad("arithmetic between two vectors is not supported; one side must be a number");
    }
    if matches!(lhs, Expr::Range(..)) || matches!(rhs, Expr::Range(..)) {
        return bad("arithmetic on a range vector");
    }
    Ok(Expr::Binary {
        op: BinOpExpr(op),
        lhs: Box::new(lhs),
        rhs: Box::new(rhs),
    })
}

/// An evaluated expression at one time.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(f64),
    Vector(Vec<(Labels, f64)>),
}

/// Samples of one series in the window an evaluation needs.
type Series = (Labels, Vec<(u64, f64)>);

/// Every numeric series of the history with its Prometheus labels.
pub fn all_series(history: &History) -> Vec<(Labels, &crate::metric::SeriesKey, Kind)> {
    history
        .keys()
        .filter_map(|(key, kind)| {
            let (mut name, mut labels) = prometheus_name(key, true)?;
            if kind == Kind::Counter {
                name.push_str("_total");
            }
            labels.insert("__name__".to_owned(), name);
            Some((labels, key, kind))
        })
        .collect()
}

/// Evaluates `expr` at each of `times` (ms since the epoch).
pub fn evaluate(expr: &Expr, history: &History, times: &[u64]) -> Vec<(u64, Value)> {
    let (Some(&first), Some(&last)) = (times.first(), times.last()) else {
        return Vec::new();
    };
    let mut selectors = Vec::new();
    collect_selectors(expr, &mut selectors);
    let catalog = all_series(history);
    let mut data: BTreeMap<usize, Vec<Series>> = BTreeMap::new();
    for (selector, range) in selectors {
        let from = first.saturating_sub(duration_ms(range.max(LOOKBACK)));
        let scans = history.scans_between(from, last);
        let series = catalog
            .iter()
            .filter(|(labels, _, _)| selector.matches(labels))
            .filter_map(|(labels, key, _)| {
                let (_, values) = history.values(key, scans.clone())?;
                let points: Vec<(u64, f64)> = scans
                    .clone()
                    .zip(values)
                    .filter_map(|(scan, v)| Some((history.timestamp(scan)?, v?)))
                    .collect();
                (!points.is_empty()).then(|| (labels.clone(), points))
            })
            .collect();
        data.insert(selector.id, series);
    }
    times.iter().map(|&t| (t, eval(expr, &data, t))).collect()
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn collect_selectors<'a>(expr: &'a Expr, out: &mut Vec<(&'a Selector, Duration)>) {
    match expr {
        Expr::Number(_) => {}
        Expr::Selector(s) => out.push((s, Duration::ZERO)),
        Expr::Range(s, range) => out.push((s, *range)),
        Expr::Call(call) => out.push((&call.selector, call.range)),
        Expr::Aggregate { expr, .. } => collect_selectors(expr, out),
        Expr::Binary { lhs, rhs, .. } => {
            collect_selectors(lhs, out);
            collect_selectors(rhs, out);
        }
    }
}

/// Samples with times in `(from, to]`.
fn window(points: &[(u64, f64)], from: u64, to: u64) -> &[(u64, f64)] {
    let start = points.partition_point(|(t, _)| *t <= from);
    let end = points.partition_point(|(t, _)| *t <= to);
    &points[start..end.max(start)]
}

fn without_name(labels: &Labels) -> Labels {
    let mut labels = labels.clone();
    labels.remove("__name__");
    labels
}

fn eval(expr: &Expr, data: &BTreeMap<usize, Vec<Series>>, t: u64) -> Value {
    match expr {
        Expr::Number(n) => Value::Scalar(*n),
        Expr::Selector(selector) => Value::Vector(
            data[&selector.id]
                .iter()
                .filter_map(|(labels, points)| {
                    let recent = window(points, t.saturating_sub(duration_ms(LOOKBACK)), t);
                    recent.last().map(|(_, v)| (labels.clone(), *v))
                })
                .collect(),
        ),
        // Rejected by the parser outside functions.
        Expr::Range(..) => Value::Vector(Vec::new()),
        Expr::Call(call) => Value::Vector(
            data[&call.selector.id]
                .iter()
                .filter_map(|(labels, points)| {
                    let samples = window(points, t.saturating_sub(duration_ms(call.range)), t);
                    range_function(call.func, samples).map(|v| (without_name(labels), v))
                })
                .collect(),
        ),
        Expr::Aggregate { op, by, expr } => {
            let Value::Vector(input) = eval(expr, data, t) else {
                return Value::Vector(Vec::new());
            };
            let mut groups: BTreeMap<Labels, Vec<f64>> = BTreeMap::new();
            for (labels, value) in input {
                let key: Labels = by
                    .iter()
                    .filter_map(|l| labels.get(l).map(|v| (l.clone(), v.clone())))
                    .collect();
                groups.entry(key).or_default().push(value);
            }
            Value::Vector(
                groups
                    .into_iter()
                    .map(|(labels, values)| {
                        let n = values.len() as f64;
                        let value = match op.0 {
                            AggOp::Sum => values.iter().sum(),
                            AggOp::Avg => values.iter().sum::<f64>() / n,
                            AggOp::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
                            AggOp::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                        };
                        (labels, value)
                    })
                    .collect(),
            )
        }
        Expr::Binary { op, lhs, rhs } => {
            let apply = |a: f64, b: f64| match op.0 {
                BinOp::Add => a + b,
                BinOp::Sub => a - b,
                BinOp::Mul => a * b,
                BinOp::Div => a / b,
            };
            match (eval(lhs, data, t), eval(rhs, data, t)) {
                (Value::Scalar(a), Value::Scalar(b)) => Value::Scalar(apply(a, b)),
                (Value::Vector(v), Value::Scalar(b)) => Value::Vector(
                    v.into_iter()
                        .map(|(l, a)| (without_name(&l), apply(a, b)))
                        .collect(),
                ),
                (Value::Scalar(a), Value::Vector(v)) => Value::Vector(
                    v.into_iter()
                        .map(|(l, b)| (without_name(&l), apply(a, b)))
                        .collect(),
                ),
                // Rejected by the parser.
                (Value::Vector(_), Value::Vector(_)) => Value::Vector(Vec::new()),
            }
        }
    }
}

fn range_function(func: RangeFunc, samples: &[(u64, f64)]) -> Option<f64> {
    let [(t0, _), .., (t1, _)] = samples else {
        return None;
    };
    let increase = |points: &[(u64, f64)]| {
        points
            .windows(2)
            .map(|w| {
                if w[1].1 >= w[0].1 {
                    w[1].1 - w[0].1
                } else {
                    w[1].1
                }
            })
            .sum::<f64>()
    };
    match func {
        RangeFunc::Increase => Some(increase(samples)),
        RangeFunc::Rate => {
            let seconds = (t1 - t0) as f64 / 1000.0;
            (seconds > 0.0).then(|| increase(samples) / seconds)
        }
        RangeFunc::Irate => {
            let last = &samples[samples.len() - 2..];
            let seconds = (last[1].0 - last[0].0) as f64 / 1000.0;
            (seconds > 0.0).then(|| increase(last) / seconds)
        }
    }
}

/// Label names across all series.
pub fn label_names(history: &History) -> BTreeSet<String> {
    all_series(history)
        .into_iter()
        .flat_map(|(labels, _, _)| labels.into_keys())
        .collect()
}

/// Values of one label across all series.
pub fn label_values(history: &History, label: &str) -> BTreeSet<String> {
    all_series(history)
        .into_iter()
        .filter_map(|(mut labels, _, _)| labels.remove(label))
        .collect()
}

/// Label sets of the series any of `selectors` match (all series when none are given).
pub fn series(history: &History, selectors: &[Selector]) -> Vec<Labels> {
    all_series(history)
        .into_iter()
        .filter(|(labels, _, _)| {
            selectors.is_empty() || selectors.iter().any(|s| s.matches(labels))
        })
        .map(|(labels, _, _)| labels)
        .collect()
}

/// Parses a `match[]` argument: a bare selector.
pub fn parse_selector(text: &str) -> Result<Selector, BadData> {
    match parse(text)? {
        Expr::Selector(selector) => Ok(selector),
        _ => bad(format!("{text:?} is not a series selector")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metric::{SeriesKey, Source, Value as MetricValue, key};

    fn history() -> History {
        let mut history = History::new(1000);
        let cpu = SeriesKey::new(Source::System, key("cpu.user", []));
        let req = |app: &str| {
            SeriesKey::new(
                Source::App,
                key("requests.number", [("appname", app.to_owned())]),
            )
        };
        for scan in 0..60u64 {
            history.push_scan(
                1_000_000 + scan * 2000,
                [
                    (&cpu, &MetricValue::Counter(scan * 200)),
                    (
                        &req("web"),
                        &MetricValue::Counter(if scan < 30 {
                            scan * 100
                        } else {
                            (scan - 30) * 100
                        }),
                    ),
                    (&req("api"), &MetricValue::Counter(scan * 10)),
                ],
            );
        }
        history
    }

    fn at(query: &str, t: u64) -> Value {
        let expr = parse(query).unwrap();
        evaluate(&expr, &history(), &[t]).remove(0).1
    }

    fn vector(value: Value) -> Vec<(Labels, f64)> {
        match value {
            Value::Vector(v) => v,
            Value::Scalar(_) => panic!("scalar"),
        }
    }

    #[test]
    fn selectors_and_rates() {
        let end = 1_000_000 + 59 * 2000;
        let v = vector(at("cantal_cpu_user_total", end));
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].1, 59.0 * 200.0);
        let v = vector(at("rate(cantal_cpu_user_total[10s])", end));
        assert_eq!(v[0].1, 100.0);
        assert!(!v[0].0.contains_key("__name__"));
        let v = vector(at(
            "irate(cantal_app_requests_number_total{appname=\"web\"}[1m])",
            end,
        ));
        assert_eq!(v[0].1, 50.0);
        // A reset in the range counts from zero.
        let mid = 1_000_000 + 31 * 2000;
        let v = vector(at(
            "increase(cantal_app_requests_number_total{appname=~\"w.*\"}[4s])",
            mid,
        ));
        assert_eq!(v[0].1, 100.0);
        let v = vector(at(
            "cantal_app_requests_number_total{appname!~\"w.*\"}",
            end,
        ));
        assert_eq!(v[0].0["appname"], "api");
    }

    #[test]
    fn aggregations_and_arithmetic() {
        let end = 1_000_000 + 59 * 2000;
        let v = vector(at(
            "sum by (appname) (rate(cantal_app_requests_number_total[10s]))",
            end,
        ));
        assert_eq!(v.len(), 2);
        let v = vector(at(
            "sum(rate(cantal_app_requests_number_total[10s])) by (host)",
            end,
        ));
        assert_eq!(v, [(Labels::new(), 55.0)]);
        let v = vector(at("max(cantal_app_requests_number_total) * 2 + 1", end));
        assert_eq!(v[0].1, 2.0 * 2900.0 + 1.0);
        assert_eq!(at("1 + 2 * 3", end), Value::Scalar(7.0));
        assert_eq!(at("-(4)", end), Value::Scalar(-4.0));
        let v = vector(at("avg(cantal_app_requests_number_total)", end));
        assert_eq!(v[0].1, (2900.0 + 590.0) / 2.0);
    }

    #[test]
    fn unsupported_is_named() {
        for (query, word) in [
            ("histogram_quantile(0.9, x)", "histogram_quantile"),
            ("x offset 5m", "offset"),
            ("x + y", "two vectors"),
            ("sum without (a) (x)", "without"),
            ("x[5m]", "range vector"),
            ("rate(x)", "range vector"),
            ("{", "label name"),
        ] {
            let err = parse(query).unwrap_err();
            assert!(err.0.contains(word), "{query}: {err}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("15").unwrap(), Duration::from_secs(15));
        assert!(parse_duration("5x").is_err());
    }

    #[test]
    fn catalog_queries() {
        let history = history();
        assert!(label_names(&history).contains("appname"));
        assert_eq!(
            label_values(&history, "appname")
                .into_iter()
                .collect::<Vec<_>>(),
            ["api", "web"]
        );
        let selector = parse_selector("{__name__=~\"cantal_app_.*\"}").unwrap();
        assert_eq!(series(&history, &[selector]).len(), 2);
        assert!(parse_selector("rate(x[1m])").is_err());
    }
}
