//! YAML documents as trees of nodes that remember file, line, column and tag.
//!
//! vagga.yaml relies on tags (`!Tar`, `!Command`), anchors, aliases, `<<:` merge keys and
//! `!*Include`; every later error must point at the node it is about, so the tree is built
//! from the parser's marked events rather than through a tag-less value type.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Where a node starts: file, line (1-based) and column (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pos {
    pub file: Arc<PathBuf>,
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

/// The content of a node.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar and whether it was plain (unquoted: `null`, `true` and numbers are typed).
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// A YAML node with its position and tag (`Tar` for `!Tar`).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub tag: Option<String>,
    pub value: Value,
}

/// Reading or parsing a YAML file failed.
#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{pos}: {message}")]
    Syntax { pos: Pos, message: String },
}

impl YamlError {
    /// Whether the file itself is missing (a skipped mixin, not a broken one).
    pub fn is_not_found(&self) -> bool {
        matches!(self, YamlError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

impl Node {
    pub fn is_null(&self) -> bool {
        match &self.value {
            Value::Scalar { text, plain: true } => {
                matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL")
            }
            _ => false,
        }
    }

    /// The text of a scalar node.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// The entries of a mapping node.
    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The value under a scalar key of a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// Renders the node as YAML (tags kept), for `_dump_config`.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        emit(self, 0, &mut out, Context::Top);
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out
    }
}

/// Reads and parses a YAML file; `!*Include` paths are relative to the including file.
/// Positions name files relative to `display_root` when they are under it.
pub fn load_file(path: &Path, display_root: &Path) -> Result<Node, YamlError> {
    load_file_nested(path, display_root, &mut Vec::new())
}

fn load_file_nested(
    path: &Path,
    display_root: &Path,
    stack: &mut Vec<PathBuf>,
) -> Result<Node, YamlError> {
    let display = path.strip_prefix(display_root).unwrap_or(path);
    let text = std::fs::read_to_string(path).map_err(|source| YamlError::Read {
        path: display.to_owned(),
        source,
    })?;
    stack.push(path.to_owned());
    let result = parse_str(&text, display)
        .and_then(|node| resolve_includes(node, path, display_root, stack));
    stack.pop();
    result
}

/// Parses one YAML document; an empty document is a null node.
pub fn parse_str(text: &str, file: &Path) -> Result<Node, YamlError> {
    let file = Arc::new(file.to_owned());
    let mut builder = Builder {
        chars: text.chars().collect(),
        file: file.clone(),
        stack: Vec::new(),
        anchors: HashMap::new(),
        root: None,
        error: None,
    };
    let mut parser = Parser::new_from_str(text);
    parser
        .load(&mut builder, false)
        .map_err(|e| YamlError::Syntax {
            pos: pos_of(&file, e.marker()),
            message: e.info().to_owned(),
        })?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    Ok(builder.root.unwrap_or(Node {
        pos: Pos {
            file,
            line: 1,
            col: 1,
        },
        tag: None,
        value: Value::Scalar {
            text: String::new(),
            plain: true,
        },
    }))
}

fn pos_of(file: &Arc<PathBuf>, mark: &Marker) -> Pos {
    Pos {
        file: file.clone(),
        line: mark.line(),
        col: mark.col() + 1,
    }
}

enum Partial {
    Seq(Node, Vec<Node>, usize),
    Map(Node, Vec<(Node, Node)>, Option<Node>, usize),
}

struct Builder {
    /// The source, to find where a node's tag starts (the parser marks the value).
    chars: Vec<char>,
    file: Arc<PathBuf>,
    stack: Vec<Partial>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    error: Option<YamlError>,
}

fn tag_name(tag: Option<Tag>) -> Option<String> {
    let tag = tag?;
    if tag.handle == "!" {
        Some(tag.suffix)
    } else if tag.handle == "tag:yaml.org,2002:" {
        // `!!str` and friends: standard types, not vagga tags.
        None
    } else {
        Some(format!("{}{}", tag.handle, tag.suffix))
    }
}

impl Builder {
    /// The position of `!tag` written right before the value at `mark`, else the value's.
    fn tagged_pos(&self, mark: &Marker, tag: Option<&str>) -> Pos {
        let fallback = pos_of(&self.file, mark);
        let Some(tag) = tag else { return fallback };
        let written: Vec<char> = format!("!{tag}").chars().collect();
        let mut i = mark.index().min(self.chars.len());
        while i > 0 && self.chars[i - 1].is_whitespace() {
            i -= 1;
        }
        if i < written.len() || self.chars[i - written.len()..i] != written[..] {
            return fallback;
        }
        let start = i - written.len();
        let line = 1 + self.chars[..start].iter().filter(|c| **c == '\n').count();
        let line_start = self.chars[..start]
            .iter()
            .rposition(|c| *c == '\n')
            .map_or(0, |p| p + 1);
        Pos {
            file: self.file.clone(),
            line,
            col: start - line_start + 1,
        }
    }

    fn finish(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Partial::Seq(_, items, _)) => items.push(node),
            Some(Partial::Map(_, entries, key, _)) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let pos = pos_of(&self.file, &mark);
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let plain = style == TScalarStyle::Plain;
                let tag = tag_name(tag);
                let node = Node {
                    pos: self.tagged_pos(&mark, tag.as_deref()),
                    tag,
                    value: Value::Scalar { text, plain },
                };
                self.finish(node, anchor);
            }
            Event::Alias(anchor) => match self.anchors.get(&anchor) {
                Some(node) => {
                    let node = node.clone();
                    self.finish(node, 0);
                }
                None => {
                    self.error = Some(YamlError::Syntax {
                        pos,
                        message: "unknown anchor".into(),
                    })
                }
            },
            Event::SequenceStart(anchor, tag) => {
                let tag = tag_name(tag);
                let head = Node {
                    pos: self.tagged_pos(&mark, tag.as_deref()),
                    tag,
                    value: Value::Seq(Vec::new()),
                };
                self.stack.push(Partial::Seq(head, Vec::new(), anchor));
            }
            Event::MappingStart(anchor, tag) => {
                let tag = tag_name(tag);
                let head = Node {
                    pos: self.tagged_pos(&mark, tag.as_deref()),
                    tag,
                    value: Value::Map(Vec::new()),
                };
                self.stack
                    .push(Partial::Map(head, Vec::new(), None, anchor));
            }
            Event::SequenceEnd => {
                if let Some(Partial::Seq(mut head, items, anchor)) = self.stack.pop() {
                    head.value = Value::Seq(items);
                    self.finish(head, anchor);
                }
            }
            Event::MappingEnd => {
                if let Some(Partial::Map(mut head, entries, _, anchor)) = self.stack.pop() {
                    match apply_merge_keys(entries) {
                        Ok(entries) => {
                            head.value = Value::Map(entries);
                            self.finish(head, anchor);
                        }
                        Err(err) => self.error = Some(err),
                    }
                }
            }
            _ => {}
        }
    }
}

/// `<<: *base` and `<<: [*a, *b]`: entries of the merged maps that the map does not set.
fn apply_merge_keys(entries: Vec<(Node, Node)>) -> Result<Vec<(Node, Node)>, YamlError> {
    if !entries
        .iter()
        .any(|(k, _)| k.as_str() == Some("<<") && k.tag.is_none())
    {
        return Ok(entries);
    }
    let mut own = Vec::new();
    let mut merged: Vec<Node> = Vec::new();
    for (k, v) in entries {
        if k.as_str() == Some("<<") && k.tag.is_none() {
            match v.value {
                Value::Map(_) => merged.push(v),
                Value::Seq(items) => merged.extend(items),
                Value::Scalar { .. } => {
                    return Err(YamlError::Syntax {
                        pos: v.pos,
                        message: "\"<<\" merge key needs a mapping or a list of mappings".into(),
                    });
                }
            }
        } else {
            own.push((k, v));
        }
    }
    for source in merged {
        let Value::Map(items) = source.value else {
            return Err(YamlError::Syntax {
                pos: source.pos,
                message: "\"<<\" merge key needs a mapping or a list of mappings".into(),
            });
        };
        for (k, v) in items {
            if !own.iter().any(|(ok, _)| ok.value == k.value) {
                own.push((k, v));
            }
        }
    }
    Ok(own)
}

fn resolve_includes(
    node: Node,
    file: &Path,
    display_root: &Path,
    stack: &mut Vec<PathBuf>,
) -> Result<Node, YamlError> {
    match node.tag.as_deref() {
        Some("*Include") => {
            let Some(rel) = node.as_str() else {
                return Err(YamlError::Syntax {
                    pos: node.pos,
                    message: "!*Include needs a file name".into(),
                });
            };
            let base = file.parent().unwrap_or(Path::new("."));
            let path = base.join(rel);
            if stack.contains(&path) {
                return Err(YamlError::Syntax {
                    pos: node.pos,
                    message: format!("!*Include of {} includes itself", path.display()),
                });
            }
            return load_file_nested(&path, display_root, stack).map_err(|e| match e {
                YamlError::Read { path, source } => YamlError::Syntax {
                    pos: node.pos.clone(),
                    message: format!("!*Include {}: {source}", path.display()),
                },
                other => other,
            });
        }
        Some(tag @ ("*IncludeSeq" | "*IncludeMap")) => {
            return Err(YamlError::Syntax {
                pos: node.pos,
                message: format!("!{tag} is not supported in this release"),
            });
        }
        _ => {}
    }
    let Node { pos, tag, value } = node;
    let value = match value {
        Value::Seq(items) => Value::Seq(
            items
                .into_iter()
                .map(|n| resolve_includes(n, file, display_root, stack))
                .collect::<Result<_, _>>()?,
        ),
        Value::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| Ok((k, resolve_includes(v, file, display_root, stack)?)))
                .collect::<Result<_, YamlError>>()?,
        ),
        scalar => scalar,
    };
    Ok(Node { pos, tag, value })
}

#[derive(Clone, Copy, PartialEq)]
enum Context {
    Top,
    MapValue,
    SeqItem,
}

fn scalar_text(text: &str, plain: bool) -> String {
    let needs_quotes = !plain
        || text.is_empty()
        || text.contains([
            '\n', ':', '#', '\'', '"', '{', '}', '[', ']', ',', '&', '*', '!',
        ])
        || text.starts_with([' ', '-', '?', '|', '>', '%', '@', '`'])
        || text.ends_with(' ');
    if plain && !text.is_empty() && !text.contains('\n') && !needs_quotes {
        return text.to_owned();
    }
    if plain && text.is_empty() {
        return "~".into();
    }
    serde_json::to_string(text).unwrap_or_default()
}

fn emit(node: &Node, indent: usize, out: &mut String, ctx: Context) {
    let pad = " ".repeat(indent);
    let tag = node.tag.as_ref().map(|t| format!("!{t}"));
    match &node.value {
        Value::Scalar { text, plain } => {
            if ctx != Context::Top {
                out.push(' ');
            }
            if let Some(tag) = &tag {
                out.push_str(tag);
                if node.is_null() {
                    out.push('\n');
                    return;
                }
                out.push(' ');
            }
            out.push_str(&scalar_text(text, *plain));
            out.push('\n');
        }
        Value::Seq(items) if items.is_empty() => {
            out.push_str(&format!(
                " {}[]\n",
                tag.map(|t| t + " ").unwrap_or_default()
            ));
        }
        Value::Map(entries) if entries.is_empty() => {
            out.push_str(&format!(
                " {}{{}}\n",
                tag.map(|t| t + " ").unwrap_or_default()
            ));
        }
        Value::Seq(items) => {
            if let Some(tag) = &tag {
                out.push_str(&format!(" {tag}"));
            }
            if ctx != Context::Top {
                out.push('\n');
            }
            for item in items {
                out.push_str(&pad);
                out.push('-');
                emit(item, indent + 2, out, Context::SeqItem);
            }
        }
        Value::Map(entries) => {
            if let Some(tag) = &tag {
                out.push_str(&format!(" {tag}"));
            }
            let mut first = true;
            for (k, v) in entries {
                if !(first && ctx == Context::SeqItem && tag.is_none()) {
                    if first && ctx != Context::Top {
                        out.push('\n');
                    }
                    out.push_str(&pad);
                } else {
                    out.push(' ');
                }
                first = false;
                let key = k.as_str().map(|s| scalar_text(s, true)).unwrap_or_default();
                out.push_str(&key);
                out.push(':');
                emit(v, indent + 2, out, Context::MapValue);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Node {
        parse_str(text, Path::new("vagga.yaml")).expect("parses")
    }

    #[test]
    fn nodes_carry_tags_and_positions() {
        let node = parse("containers:\n  app:\n    setup:\n    - !Tar {url: ./x.tar}\n");
        let step = &node
            .get("containers")
            .unwrap()
            .get("app")
            .unwrap()
            .get("setup")
            .unwrap();
        let Value::Seq(items) = &step.value else {
            panic!("not a list")
        };
        assert_eq!(items[0].tag.as_deref(), Some("Tar"));
        assert_eq!((items[0].pos.line, items[0].pos.col), (4, 7));
        assert_eq!(items[0].get("url").unwrap().as_str(), Some("./x.tar"));
    }

    #[test]
    fn merge_keys_fill_missing_entries_only() {
        let node = parse("base: &b {a: 1, b: 2}\nx:\n  <<: *b\n  b: 3\n");
        let x = node.get("x").unwrap();
        assert_eq!(x.get("a").unwrap().as_str(), Some("1"));
        assert_eq!(x.get("b").unwrap().as_str(), Some("3"));
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let err = parse_str("a: b\n  c: d\n", Path::new("vagga.yaml")).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("vagga.yaml:2:"), "{text}");
    }

    #[test]
    fn includes_are_relative_to_the_including_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("inc.yaml"), "key: !Sh echo\n").unwrap();
        std::fs::write(dir.path().join("main.yaml"), "x: !*Include inc.yaml\n").unwrap();
        let node = load_file(&dir.path().join("main.yaml"), dir.path()).unwrap();
        let inner = node.get("x").unwrap().get("key").unwrap();
        assert_eq!(inner.tag.as_deref(), Some("Sh"));
        assert_eq!(inner.pos.file.as_path(), Path::new("inc.yaml"));
    }

    #[test]
    fn dump_round_trips() {
        let text = "containers:\n  app:\n    setup:\n    - !Tar\n      url: ./x.tar\n    - !Sh \"echo: hi\"\n    environ: {}\n";
        let node = parse(text);
        let again = parse(&node.to_yaml());
        assert_eq!(strip(&node), strip(&again), "{}", node.to_yaml());
    }

    fn strip(node: &Node) -> String {
        match &node.value {
            Value::Scalar { text, .. } => format!("{:?}{text}", node.tag),
            Value::Seq(items) => items.iter().map(strip).collect::<Vec<_>>().join(","),
            Value::Map(e) => e
                .iter()
                .map(|(k, v)| format!("{}={}", strip(k), strip(v)))
                .collect::<Vec<_>>()
                .join(";"),
        }
    }
}
