//! A multi-document YAML stream, split so that documents `inject` does not
//! change are written back byte for byte: only the documents it edits are
//! serialised anew (their leading comments, such as Helm's `# Source:`,
//! kept).

/// One document of the stream: the separator line that opened it (empty
/// for a first document with none) and its text up to the next separator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Doc {
    pub(crate) separator: String,
    pub(crate) text: String,
}

impl Doc {
    /// The document as the parser reads it: its separator line (and
    /// directives) with it, since a document may start on that line
    /// (`--- {kind: List}`).
    pub(crate) fn full(&self) -> String {
        join(std::slice::from_ref(self))
    }

    /// The comment lines at the top of the document (`# Source: ...`).
    pub(crate) fn leading_comments(&self) -> String {
        self.text
            .lines()
            .take_while(|l| l.trim_start().starts_with('#') || l.trim().is_empty())
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("{l}\n"))
            .collect()
    }
}

/// Splits a stream at lines that are `---` (optionally followed by a space
/// and more) at column 0. A line `...` (end of document) stays in its
/// document's text. Directives (`%YAML 1.1`), at the stream's start or
/// after a `...`, go with the document they precede: into its separator,
/// with anything between them and its `---`.
pub(crate) fn split(input: &str) -> Vec<Doc> {
    let mut docs = Vec::new();
    let mut cur = Doc {
        separator: String::new(),
        text: String::new(),
    };
    // Where a directive may stand, and those read, waiting for their `---`.
    let mut directives_allowed = true;
    let mut pending = String::new();
    for line in input.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if bare == "---" || bare.starts_with("--- ") {
            if !(cur.separator.is_empty() && cur.text.is_empty()) {
                docs.push(cur);
            }
            cur = Doc {
                separator: std::mem::take(&mut pending) + line,
                text: String::new(),
            };
            directives_allowed = false;
        } else if !pending.is_empty() || (directives_allowed && bare.starts_with('%')) {
            pending.push_str(line);
        } else {
            cur.text.push_str(line);
            let t = bare.trim();
            if bare == "..." {
                directives_allowed = true;
            } else if !(t.is_empty() || t.starts_with('#')) {
                directives_allowed = false;
            }
        }
    }
    // Directives with no document after them: the parser says what is
    // wrong with that.
    cur.text.push_str(&pending);
    if !(cur.separator.is_empty() && cur.text.is_empty()) {
        docs.push(cur);
    }
    docs
}

/// The stream again: `join(split(s)) == s` for any `s` that ends with a
/// newline (and for any other, one newline more at most).
pub(crate) fn join(docs: &[Doc]) -> String {
    let mut out = String::new();
    for d in docs {
        out.push_str(&d.separator);
        if !d.separator.is_empty() && !d.separator.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&d.text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_splits_into_its_documents_and_joins_back_byte_for_byte() {
        let s =
            "# a comment\nkind: A\n---\n# Source: x.yaml\nkind: B\n--- # c\nkind: C\n...\n---\n";
        let docs = split(s);
        assert_eq!(docs.len(), 4);
        assert_eq!(docs[0].separator, "");
        assert_eq!(docs[1].text, "# Source: x.yaml\nkind: B\n");
        assert_eq!(docs[1].leading_comments(), "# Source: x.yaml\n");
        assert_eq!(docs[2].separator, "--- # c\n");
        assert_eq!(join(&docs), s);
        // `---` inside a block scalar is indented: not a separator.
        let block = "data:\n  x: |\n    ---\n    y\n";
        assert_eq!(split(block).len(), 1);
        assert_eq!(join(&split("")), "");
    }

    /// A directive belongs to the document after it, even after another
    /// document's `...`; a `%` line inside a document is its content.
    #[test]
    fn directives_go_with_their_document() {
        let s = "%YAML 1.1\n# c\n---\nkind: A\n...\n%YAML 1.1\n---\nkind: B\n---\nx: |\n  %not\n";
        let docs = split(s);
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0].separator, "%YAML 1.1\n# c\n---\n");
        assert_eq!(docs[0].text, "kind: A\n...\n");
        assert_eq!(docs[1].separator, "%YAML 1.1\n---\n");
        assert_eq!(docs[2].text, "x: |\n  %not\n");
        assert_eq!(join(&docs), s);
        assert_eq!(docs[1].full(), "%YAML 1.1\n---\nkind: B\n");
    }

    proptest::proptest! {
        /// Documents inject leaves alone come back byte for byte: whatever
        /// the text, splitting and joining gives it back.
        #[test]
        fn any_stream_joins_back_to_itself(lines in proptest::collection::vec("(---|--- .{0,5}|\\.\\.\\.|%YAML 1.1|.{0,20})", 0..12)) {
            let s: String = lines.iter().map(|l| format!("{l}\n")).collect();
            proptest::prop_assert_eq!(join(&split(&s)), s);
        }
    }
}
