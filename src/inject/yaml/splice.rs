//! Writes a document's new value into its old text, changing only what
//! changed: a key added to a mapping goes on new lines after its last entry
//! (or before a flow mapping's `}`), an item added to a list after its last
//! item, a changed scalar in place; every other byte (comments, quoting,
//! anchors, blank lines, key order) stays. Where a value cannot be edited in
//! place (keys removed, a kind changed, a value that comes from an alias or
//! a merge), its whole value is written anew at its place.
//!
//! The result is checked by reading it back: it must read as the new value,
//! or the caller falls back to writing the whole document anew (an anchor
//! edited in place also changes its aliases).

use serde_norway::{Mapping, Value};

use super::tree::{self, Kind, Node, Tree, column, key_value};
use crate::inject::emit;

/// One change to the text: `from..to` replaced by `text`.
#[derive(Debug)]
struct Edit {
    from: usize,
    to: usize,
    text: String,
}

/// Where a node sits, which says how a value written in its place looks.
#[derive(Debug, Clone, Copy)]
enum Place {
    Root,
    /// A mapping's value: its place starts after the colon; `indent` is
    /// its key's column; `block`: the mapping is a block mapping.
    Value {
        from: usize,
        indent: usize,
        block: bool,
    },
    /// A list's item: its place starts after its `-` (block) or at the
    /// node (flow).
    Item {
        from: usize,
        block: bool,
    },
}

/// `text` (whose tree is `tree`) with its value changed to `new`; Err with
/// the reason when that cannot be done by edits that read back as `new`.
pub(crate) fn splice(text: &str, tree: &Tree, new: &Value) -> Result<String, String> {
    let mut d = Differ {
        text,
        edits: Vec::new(),
    };
    d.node(&tree.root, new, Place::Root)?;
    let out = apply(text, d.edits)?;
    match tree::parse(&out) {
        Ok(Some(t)) if t.root.value == *new => Ok(out),
        Ok(_) => Err("edited in place, it would read differently (an anchor edited in place changes its aliases too)".into()),
        Err(e) => Err(format!("edited in place, it would not parse ({e})")),
    }
}

struct Differ<'a> {
    text: &'a str,
    edits: Vec<Edit>,
}

impl Differ<'_> {
    fn node(&mut self, n: &Node, new: &Value, place: Place) -> Result<(), String> {
        if n.value == *new {
            return Ok(());
        }
        let in_place = match (&n.kind, new) {
            (
                Kind::Mapping {
                    flow,
                    entries,
                    close,
                },
                Value::Mapping(m),
            ) => self.mapping(n, *flow, entries, *close, m)?,
            (Kind::Sequence { flow, items, close }, Value::Sequence(v)) => {
                self.sequence(n, *flow, items, *close, v)?
            }
            _ => false,
        };
        if !in_place {
            self.replace(n, new, place)?;
        }
        Ok(())
    }

    /// Edits a mapping in place: false when it cannot (a key went).
    fn mapping(
        &mut self,
        n: &Node,
        flow: bool,
        entries: &[tree::Entry],
        close: usize,
        new: &Mapping,
    ) -> Result<bool, String> {
        let old = n.value.as_mapping().expect("a mapping's value");
        if old.keys().any(|k| !new.contains_key(k)) {
            return Ok(false);
        }
        let mut added = Mapping::new();
        for (k, v) in new {
            match old.get(k) {
                Some(was) if was == v => {}
                // go-yaml v2 sets keys in order, a later entry winning: the
                // last entry that sets this one is where its value is.
                Some(_) => match entries.iter().rev().find(|e| sets(e, k)) {
                    Some(e) if !e.merge && e.colon.is_some() => {
                        let from = e.colon.expect("checked") + 1;
                        let place = Place::Value {
                            from,
                            indent: column(self.text, e.key.start),
                            block: !flow,
                        };
                        self.node(&e.value, v, place)?;
                    }
                    // From a merge: set here, after it, it wins.
                    _ => {
                        added.insert(k.clone(), v.clone());
                    }
                },
                None => {
                    added.insert(k.clone(), v.clone());
                }
            }
        }
        if added.is_empty() {
            return Ok(true);
        }
        if flow {
            let items: Vec<String> = added
                .iter()
                .map(|(k, v)| format!("{}: {}", emit::key(k), emit::flow(v)))
                .collect();
            self.insert_in_flow(close, items.join(", "));
        } else {
            let first = entries.first().expect("a block mapping has an entry");
            let mut lines = String::new();
            emit::mapping(&mut lines, &added, column(self.text, first.key.start));
            self.insert_lines(n.after, lines);
        }
        Ok(true)
    }

    /// Edits a list in place: false when it cannot (it got shorter).
    fn sequence(
        &mut self,
        n: &Node,
        flow: bool,
        items: &[tree::Item],
        close: usize,
        new: &[Value],
    ) -> Result<bool, String> {
        if new.len() < items.len() {
            return Ok(false);
        }
        for (item, v) in items.iter().zip(new) {
            let place = Place::Item {
                from: item.from,
                block: !flow,
            };
            self.node(&item.node, v, place)?;
        }
        let added = &new[items.len()..];
        if added.is_empty() {
            return Ok(true);
        }
        if flow {
            let items: Vec<String> = added.iter().map(emit::flow).collect();
            self.insert_in_flow(close, items.join(", "));
        } else {
            let mut lines = String::new();
            emit::sequence(&mut lines, added, column(self.text, n.start));
            self.insert_lines(n.after, lines);
        }
        Ok(true)
    }

    /// Entries before a flow collection's closing bracket at `close`.
    fn insert_in_flow(&mut self, close: usize, items: String) {
        let before = self.text[..close].trim_end();
        let text = if before.ends_with(['{', '[', ',']) {
            items
        } else {
            format!(", {items}")
        };
        self.edits.push(Edit {
            from: close,
            to: close,
            text,
        });
    }

    /// Lines (ending with a line break) at the start of a line.
    fn insert_lines(&mut self, at: usize, lines: String) {
        let text = if at == self.text.len() && !self.text.is_empty() && !self.text.ends_with('\n') {
            format!("\n{lines}")
        } else {
            lines
        };
        self.edits.push(Edit {
            from: at,
            to: at,
            text,
        });
    }

    /// Writes `new` in `n`'s place (its anchor kept).
    fn replace(&mut self, n: &Node, new: &Value, place: Place) -> Result<(), String> {
        let (from, text) = match place {
            Place::Root => return Err("the document is no longer a mapping".into()),
            Place::Value {
                from,
                indent,
                block,
            } => {
                let anchor = n
                    .anchor_text(self.text, from)
                    .map(|a| format!(" {a}"))
                    .unwrap_or_default();
                let body = match new {
                    Value::Mapping(m) if block && !m.is_empty() => {
                        let mut s = String::new();
                        emit::mapping(&mut s, m, indent + 2);
                        format!("{anchor}\n{}", s.trim_end_matches('\n'))
                    }
                    Value::Sequence(q) if block && !q.is_empty() => {
                        let mut s = String::new();
                        emit::sequence(&mut s, q, indent);
                        format!("{anchor}\n{}", s.trim_end_matches('\n'))
                    }
                    other if block => format!("{anchor} {}", emit::scalar(other, indent + 2)),
                    other => format!("{anchor} {}", emit::flow(other)),
                };
                (from, body)
            }
            Place::Item { from, block } => {
                let anchor = n
                    .anchor_text(self.text, from)
                    .map(|a| format!("{a} "))
                    .unwrap_or_default();
                let lead = if block { " " } else { "" };
                (from, format!("{lead}{anchor}{}", emit::flow(new)))
            }
        };
        self.edits.push(Edit {
            from,
            to: n.end.max(from),
            text,
        });
        Ok(())
    }
}

/// Whether entry `e` sets key `k` (itself, or by merging a mapping that
/// has it).
fn sets(e: &tree::Entry, k: &Value) -> bool {
    if !e.merge {
        return key_value(&e.key.value) == *k;
    }
    match &e.value.value {
        Value::Mapping(m) => m.contains_key(k),
        Value::Sequence(list) => list
            .iter()
            .any(|m| m.as_mapping().is_some_and(|m| m.contains_key(k))),
        _ => false,
    }
}

/// The text with the edits made, in the order they were found where two
/// are at one place (an inner mapping's new keys before its parent's).
/// A text with `\r\n` line breaks gets them in what is added too.
fn apply(text: &str, mut edits: Vec<Edit>) -> Result<String, String> {
    edits.sort_by_key(|e| e.from);
    let crlf = text.contains("\r\n");
    let mut out =
        String::with_capacity(text.len() + edits.iter().map(|e| e.text.len()).sum::<usize>());
    let mut at = 0;
    for e in edits {
        if e.from < at {
            return Err("two edits overlap".into());
        }
        out.push_str(&text[at..e.from]);
        if crlf {
            out.push_str(&e.text.replace('\n', "\r\n"));
        } else {
            out.push_str(&e.text);
        }
        at = e.to;
    }
    out.push_str(&text[at..]);
    Ok(out)
}
