//! One YAML document as a tree of nodes that know where their text is:
//! what `splice` needs to change a value in place and leave every other
//! byte alone. Each node also carries its value as Kubernetes reads it
//! ([`super::resolve`]'s scalars, aliases expanded, `<<` merged as go-yaml
//! v2 merges), which is what `inject` wires.
//!
//! The events and their positions come from `saphyr-parser` (a YAML 1.2
//! parser that passes the YAML test suite); the syntax of 1.1 and 1.2 is
//! the same for everything a manifest holds, only the meaning of plain
//! scalars differs, and that is `resolve`'s.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use serde_norway::{Mapping, Value};

use super::resolve::{self, Tag};

/// Aliases may expand a document to at most this many nodes (a "billion
/// laughs" document would take all memory): more than any manifest holds.
const MAX_EXPANDED: usize = 1_000_000;

/// A parsed document: its root and the text the positions refer to.
#[derive(Debug)]
pub(crate) struct Tree {
    pub(crate) root: Node,
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// Where the node's text starts: its properties (anchor, tag) when it
    /// has any, else its content (for a block scalar: its first content
    /// line, not its `|` header).
    pub(crate) start: usize,
    /// Where its content ends: the byte after the last (a block scalar's
    /// trailing line breaks and a block collection's trailing comments are
    /// not content).
    pub(crate) end: usize,
    /// Where a line inserted after it goes: the start of the line after its
    /// last content (after a block scalar that keeps its trailing line
    /// breaks, `|+`, after those).
    pub(crate) after: usize,
    /// It has an anchor (`&name`).
    pub(crate) anchored: bool,
    pub(crate) kind: Kind,
    /// What Kubernetes reads.
    pub(crate) value: Value,
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Scalar {
        /// Empty: a value left out (`key:`), null.
        empty: bool,
    },
    Alias,
    Mapping {
        flow: bool,
        entries: Vec<Entry>,
        /// A flow mapping's closing `}`.
        close: usize,
    },
    Sequence {
        flow: bool,
        items: Vec<Item>,
        /// A flow sequence's closing `]`.
        close: usize,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) key: Node,
    /// The `:` between key and value (None: a flow entry without one).
    pub(crate) colon: Option<usize>,
    pub(crate) value: Node,
    /// A `<<` merge key.
    pub(crate) merge: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Item {
    /// Where the item's place starts: after its `- ` in a block sequence,
    /// the node itself in a flow one.
    pub(crate) from: usize,
    pub(crate) node: Node,
}

/// Why a document cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} column {col}: {what}")]
pub struct ParseError {
    /// 1-based line and column in the document.
    pub(crate) line: usize,
    pub(crate) col: usize,
    pub(crate) what: String,
}

enum Frame {
    Mapping {
        start: usize,
        anchor: usize,
        flow: bool,
        entries: Vec<Entry>,
        key: Option<Node>,
    },
    Sequence {
        start: usize,
        anchor: usize,
        flow: bool,
        items: Vec<Item>,
    },
}

/// Byte offsets of the parser's character positions.
struct Offsets<'a> {
    text: &'a str,
    /// Byte offset of each character (and of the end), when not ASCII.
    table: Option<Vec<usize>>,
}

impl Offsets<'_> {
    fn new(text: &str) -> Offsets<'_> {
        let table = (!text.is_ascii()).then(|| {
            text.char_indices()
                .map(|(b, _)| b)
                .chain(std::iter::once(text.len()))
                .collect()
        });
        Offsets { text, table }
    }

    fn byte(&self, char_index: usize) -> usize {
        match &self.table {
            Some(t) => t.get(char_index).copied().unwrap_or(self.text.len()),
            None => char_index.min(self.text.len()),
        }
    }
}

struct Builder<'a> {
    text: &'a str,
    at: Offsets<'a>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Value>,
    expanded: usize,
    root: Option<Node>,
    documents: usize,
}

/// Parses one document (`text` holds at most one; None when it holds no
/// node, only comments or nothing).
pub(crate) fn parse(text: &str) -> Result<Option<Tree>, ParseError> {
    let mut b = Builder {
        text,
        at: Offsets::new(text),
        stack: Vec::new(),
        anchors: HashMap::new(),
        expanded: 0,
        root: None,
        documents: 0,
    };
    for ev in Parser::new_from_str(text) {
        let (ev, span) = ev.map_err(|e| ParseError {
            line: e.marker().line(),
            col: e.marker().col() + 1,
            what: e.info().to_string(),
        })?;
        b.event(ev, span)?;
    }
    Ok(b.root.map(|root| Tree { root }))
}

impl Builder<'_> {
    fn error(&self, at: usize, what: impl Into<String>) -> ParseError {
        let before = &self.text[..at.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        ParseError {
            line,
            col,
            what: what.into(),
        }
    }

    fn event(&mut self, ev: Event<'_>, span: Span) -> Result<(), ParseError> {
        let start = self.at.byte(span.start.index());
        let end = self.at.byte(span.end.index());
        match ev {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(self.error(
                        start,
                        "a second document without a `---` line before it (after `...`): kubectl reads only the first; put `---` between them",
                    ));
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                let node = self.scalar(&text, style, tag.as_deref(), start, end)?;
                self.node(node, anchor)?;
            }
            Event::Alias(id) => {
                let Some(v) = self.anchors.get(&id) else {
                    return Err(self.error(
                        start,
                        "an alias to an anchor not yet complete (a node that contains itself)",
                    ));
                };
                self.expanded += size(v);
                if self.expanded > MAX_EXPANDED {
                    return Err(self.error(
                        start,
                        format!("aliases expand the document to more than {MAX_EXPANDED} nodes"),
                    ));
                }
                let value = v.clone();
                let node = Node {
                    start,
                    end,
                    after: line_after(self.text, end),
                    anchored: false,
                    kind: Kind::Alias,
                    value,
                };
                self.node(node, 0)?;
            }
            Event::MappingStart(anchor, _) => {
                let flow = self.text[start..end].ends_with('{');
                self.stack.push(Frame::Mapping {
                    start,
                    anchor,
                    flow,
                    entries: Vec::new(),
                    key: None,
                });
            }
            Event::SequenceStart(anchor, _) => {
                let flow = self.text[start..end].ends_with('[');
                self.stack.push(Frame::Sequence {
                    start,
                    anchor,
                    flow,
                    items: Vec::new(),
                });
            }
            Event::MappingEnd => {
                let Some(Frame::Mapping {
                    start: s,
                    anchor,
                    flow,
                    entries,
                    ..
                }) = self.stack.pop()
                else {
                    unreachable!("the parser pairs its events")
                };
                let value = self.merged(&entries)?;
                let (node_end, after) = if flow {
                    (end, line_after(self.text, end))
                } else {
                    let last = entries.last().expect("a block mapping has an entry");
                    (
                        last.value.end.max(last.key.end),
                        last.value.after.max(last.key.after),
                    )
                };
                let node = Node {
                    start: s,
                    end: node_end,
                    after,
                    anchored: anchor != 0,
                    kind: Kind::Mapping {
                        flow,
                        entries,
                        close: start,
                    },
                    value,
                };
                self.node(node, anchor)?;
            }
            Event::SequenceEnd => {
                let Some(Frame::Sequence {
                    start: s,
                    anchor,
                    flow,
                    items,
                }) = self.stack.pop()
                else {
                    unreachable!("the parser pairs its events")
                };
                let value = Value::Sequence(items.iter().map(|i| i.node.value.clone()).collect());
                let (node_end, after) = if flow {
                    (end, line_after(self.text, end))
                } else {
                    let last = &items.last().expect("a block sequence has an item").node;
                    (last.end, last.after)
                };
                // A block sequence's events start at its first item's
                // content: its own start is its first `-`.
                let s = if flow {
                    s
                } else {
                    items.first().map_or(s, |i| i.from.saturating_sub(1))
                };
                let node = Node {
                    start: s,
                    end: node_end,
                    after,
                    anchored: anchor != 0,
                    kind: Kind::Sequence {
                        flow,
                        items,
                        close: start,
                    },
                    value,
                };
                self.node(node, anchor)?;
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
        Ok(())
    }

    fn scalar(
        &self,
        text: &str,
        style: ScalarStyle,
        tag: Option<&saphyr_parser::Tag>,
        start: usize,
        end: usize,
    ) -> Result<Node, ParseError> {
        let tag = tag.map(|t| Tag::of(&format!("{}{}", t.handle, t.suffix)));
        let value = match (tag, style) {
            (None, ScalarStyle::Plain) => resolve::plain(text),
            (None, _) => Value::from(text),
            (Some(t), _) => resolve::resolve(t, text).map_err(|e| self.error(start, e))?,
        };
        let block = matches!(style, ScalarStyle::Literal | ScalarStyle::Folded);
        let empty = style == ScalarStyle::Plain && text.is_empty() && start == end && tag.is_none();
        let (content_end, after) = if block {
            // The span runs to the next token: its trailing line breaks
            // (and the next line's indentation) are not content, but a
            // `|+` scalar keeps its trailing breaks, so a line inserted
            // after it goes after them.
            let content = self.text[start..end].trim_end_matches([' ', '\t', '\r', '\n']);
            let content_end = start + content.len();
            // Only a kept scalar (`|+`) ends with an empty line.
            let keep = text.ends_with("\n\n");
            let after = if keep {
                line_start(self.text, end)
            } else {
                line_after(self.text, content_end)
            };
            (content_end, after.max(line_after(self.text, content_end)))
        } else {
            (end, line_after(self.text, end))
        };
        Ok(Node {
            start,
            end: content_end,
            after,
            anchored: false,
            kind: Kind::Scalar { empty },
            value,
        })
    }

    /// A finished node: into its parent, or the document's root.
    fn node(&mut self, mut node: Node, anchor: usize) -> Result<(), ParseError> {
        if anchor != 0 {
            node.anchored = true;
            self.anchors.insert(anchor, node.value.clone());
        }
        let text = self.text;
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Mapping { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => {
                    let colon = find_colon(text, k.end);
                    let merge = matches!(&k.value, Value::String(s) if s == "<<")
                        && text[k.start..k.end] == *"<<";
                    let mut value = node;
                    if let (Kind::Scalar { empty: true }, Some(c)) = (&value.kind, colon) {
                        // A value left out: its place is right after the
                        // colon.
                        value.start = c + 1;
                        value.end = c + 1;
                        value.after = line_after(text, c + 1);
                    }
                    entries.push(Entry {
                        key: k,
                        colon,
                        value,
                        merge,
                    });
                }
            },
            Some(Frame::Sequence {
                items, flow, start, ..
            }) => {
                let from = if *flow {
                    node.start
                } else {
                    let search = items.last().map_or(*start, |i| i.node.end);
                    find_dash(text, search, node.start).map_or(node.start, |d| d + 1)
                };
                if let Kind::Scalar { empty: true } = node.kind {
                    node.start = from;
                    node.end = from;
                    node.after = line_after(text, from);
                }
                items.push(Item { from, node });
            }
        }
        Ok(())
    }

    /// A mapping's value as go-yaml v2 builds it: entries in order, each
    /// setting its key (a later one wins), a `<<` entry setting every key
    /// of the mapping (or mappings, the first winning) it names.
    fn merged(&self, entries: &[Entry]) -> Result<Value, ParseError> {
        let mut m = Mapping::new();
        for e in entries {
            if !e.merge {
                m.insert(key_value(&e.key.value), e.value.value.clone());
                continue;
            }
            let sources: Vec<&Value> = match &e.value.value {
                Value::Mapping(_) => vec![&e.value.value],
                Value::Sequence(list) => list.iter().rev().collect(),
                _ => vec![],
            };
            if sources.is_empty() || sources.iter().any(|v| !v.is_mapping()) {
                return Err(self.error(
                    e.key.start,
                    "map merge requires map or sequence of maps as the value",
                ));
            }
            for src in sources {
                for (k, v) in src.as_mapping().expect("checked") {
                    m.insert(k.clone(), v.clone());
                }
            }
        }
        Ok(Value::Mapping(m))
    }
}

/// A key as JSON has it (sigs.k8s.io/yaml makes every key a string: `80:`
/// is `"80"`, `yes:` is `"true"`).
pub(crate) fn key_value(v: &Value) -> Value {
    match v {
        Value::String(_) => v.clone(),
        Value::Null => Value::from("null"),
        Value::Bool(b) => Value::from(b.to_string()),
        Value::Number(n) => Value::from(n.to_string()),
        // Collections as keys: go-yaml v2 refuses them into a map; kept.
        other => other.clone(),
    }
}

/// The number of nodes in a value (what an alias costs to expand).
fn size(v: &Value) -> usize {
    match v {
        Value::Mapping(m) => 1 + m.iter().map(|(k, v)| size(k) + size(v)).sum::<usize>(),
        Value::Sequence(s) => 1 + s.iter().map(size).sum::<usize>(),
        _ => 1,
    }
}

/// The start of the line holding `at`.
pub(crate) fn line_start(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].rfind('\n').map_or(0, |i| i + 1)
}

/// The start of the line after the one holding `at` (the text's end if
/// there is none).
pub(crate) fn line_after(text: &str, at: usize) -> usize {
    let at = at.min(text.len());
    text[at..].find('\n').map_or(text.len(), |i| at + i + 1)
}

/// The column of `at` (in characters).
pub(crate) fn column(text: &str, at: usize) -> usize {
    text[line_start(text, at)..at].chars().count()
}

/// Skips spaces, line breaks and comments from `at`.
fn skip_blank(text: &str, mut at: usize) -> usize {
    let b = text.as_bytes();
    while at < b.len() {
        match b[at] {
            b' ' | b'\t' | b'\r' | b'\n' => at += 1,
            b'#' if at == 0 || matches!(b[at - 1], b' ' | b'\t' | b'\n' | b'\r') => {
                at = line_after(text, at);
            }
            _ => break,
        }
    }
    at
}

/// The `:` after a key that ends at `key_end`.
fn find_colon(text: &str, key_end: usize) -> Option<usize> {
    let at = skip_blank(text, key_end);
    (text.as_bytes().get(at) == Some(&b':')).then_some(at)
}

/// The `-` of a block sequence item, between `from` (the sequence's start
/// or the previous item's end) and the item's node at `node`.
fn find_dash(text: &str, from: usize, node: usize) -> Option<usize> {
    let b = text.as_bytes();
    // An item on its dash's line: `- ` right before it.
    let mut i = node.min(b.len());
    while i > 0 {
        i -= 1;
        match b[i] {
            b' ' | b'\t' => {}
            b'-' => return Some(i),
            _ => break,
        }
    }
    // Else the first `-` after the previous item (the node starts on a
    // later line: a block scalar's content).
    let at = skip_blank(text, from.min(b.len()));
    (b.get(at) == Some(&b'-')).then_some(at)
}

impl Node {
    /// The node's anchor as written (`&name`), found among the properties
    /// after `from` (where its place starts).
    pub(crate) fn anchor_text<'t>(&self, text: &'t str, from: usize) -> Option<&'t str> {
        if !self.anchored {
            return None;
        }
        let mut at = from;
        loop {
            at = skip_blank(text, at);
            let rest = &text[at..];
            let token_len = rest.find([' ', '\t', '\r', '\n']).unwrap_or(rest.len());
            match rest.as_bytes().first() {
                Some(b'&') => return Some(&rest[..token_len]),
                Some(b'!') => at += token_len,
                _ => return None,
            }
        }
    }
}
