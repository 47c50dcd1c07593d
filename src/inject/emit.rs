//! The YAML `inject` writes for the documents it changed: block style, and
//! every string quoted, so that no YAML 1.1 reader takes a string for
//! something else. The Kubernetes API server, kubectl and Helm read YAML
//! 1.1 (`sigs.k8s.io/yaml` over go-yaml v2), where an unquoted `off`, `yes`
//! or `0755` is a bool or an octal number: Kong's chart sets an env value
//! `"off"`, and a YAML 1.2 serializer writes it back bare, turning it into
//! `false` on the way to the cluster (found by kubernetes-validate on the
//! real Kong render).
//!
//! Multi-line strings are literal blocks (`|`), for readable ConfigMaps.

use std::fmt::Write;

use serde_norway::Value;

/// One document, ending with a newline.
pub(crate) fn document(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Mapping(m) if !m.is_empty() => mapping(&mut out, m, 0),
        Value::Sequence(s) if !s.is_empty() => sequence(&mut out, s, 0),
        other => {
            // Indented, so that no line of a block reads as `---` or `...`.
            out.push_str(&scalar(other, 2));
            out.push('\n');
        }
    }
    out
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

/// A block mapping's entries, each line at `indent`.
pub(crate) fn mapping(out: &mut String, m: &serde_norway::Mapping, indent: usize) {
    for (k, v) in m {
        pad(out, indent);
        out.push_str(&key(k));
        out.push(':');
        value_after(out, v, indent);
    }
}

/// A block list's items, each `-` at `indent`.
pub(crate) fn sequence(out: &mut String, s: &[Value], indent: usize) {
    for v in s {
        pad(out, indent);
        out.push('-');
        match v {
            // `- key: value` with the rest of the mapping under it.
            Value::Mapping(m) if !m.is_empty() => {
                let mut inner = String::new();
                mapping(&mut inner, m, indent + 2);
                out.push(' ');
                out.push_str(&inner[indent + 2..]);
            }
            Value::Sequence(s) if !s.is_empty() => {
                out.push('\n');
                sequence(out, s, indent + 2);
            }
            other => {
                out.push(' ');
                out.push_str(&scalar(other, indent + 2));
                out.push('\n');
            }
        }
    }
}

/// What follows `key:`: a nested block on the next lines, or a scalar.
fn value_after(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Mapping(m) if !m.is_empty() => {
            out.push('\n');
            mapping(out, m, indent + 2);
        }
        // Kubernetes' own style: list items at the key's indentation.
        Value::Sequence(s) if !s.is_empty() => {
            out.push('\n');
            sequence(out, s, indent);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other, indent + 2));
            out.push('\n');
        }
    }
}

/// A mapping key: bare when no reader can misread it, else quoted.
pub(crate) fn key(k: &Value) -> String {
    match k {
        Value::String(s) if is_plain_key(s) => s.clone(),
        other => scalar(other, 0),
    }
}

/// Keys left bare: names as Kubernetes writes them, never a word YAML 1.1
/// reads as a bool or null.
fn is_plain_key(s: &str) -> bool {
    const AMBIGUOUS: [&str; 22] = [
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
        "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF",
    ];
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
        && !AMBIGUOUS.contains(&s)
        && !s.eq_ignore_ascii_case("null")
}

/// A scalar (a string with lines as a literal block at `indent`).
pub(crate) fn scalar(v: &Value, indent: usize) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s, indent),
        Value::Mapping(_) => "{}".into(),
        Value::Sequence(_) => "[]".into(),
        Value::Tagged(t) => {
            // Kubernetes objects carry no tags; keep the value, drop none.
            format!("{} {}", t.tag, scalar(&t.value, indent))
        }
    }
}

/// Characters YAML reads as line breaks besides `\n` and `\r`.
const YAML_ONLY_BREAKS: [char; 3] = ['\u{85}', '\u{2028}', '\u{2029}'];

/// A value on one line, in flow style (`{key: value, ...}`, `[...]`,
/// strings double-quoted): what goes inside a flow collection, or in place
/// of a value whose indentation a block would have to guess.
pub(crate) fn flow(v: &Value) -> String {
    match v {
        Value::Mapping(m) => {
            let entries: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{}: {}", key(k), flow(v)))
                .collect();
            format!("{{{}}}", entries.join(", "))
        }
        Value::Sequence(s) => {
            let items: Vec<String> = s.iter().map(flow).collect();
            format!("[{}]", items.join(", "))
        }
        Value::String(s) => quoted(s),
        Value::Tagged(t) => format!("{} {}", t.tag, flow(&t.value)),
        other => scalar(other, 0),
    }
}

/// A string double-quoted with JSON's escapes (a subset of YAML's), and
/// YAML's where JSON leaves a character raw that YAML does not.
fn quoted(s: &str) -> String {
    // YAML also breaks lines at NEL and the Unicode separators, and wants
    // DEL, the C1 controls, the BOM and the non-characters escaped, which
    // JSON leaves raw.
    let json = serde_json::to_string(s).expect("a string serialises");
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_control()
            || YAML_ONLY_BREAKS.contains(&c)
            || matches!(c, '\u{feff}' | '\u{fffe}' | '\u{ffff}')
        {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// A string: a literal block when it has lines, else double-quoted.
fn string(s: &str, indent: usize) -> String {
    let block_ok = s.contains('\n')
        && !s.starts_with([' ', '\n', '\t'])
        && !s.chars().any(|c| {
            c == '\r'
                || (c.is_control() && c != '\n' && c != '\t')
                || matches!(c, '\u{feff}' | '\u{fffe}' | '\u{ffff}')
        })
        && !s.lines().any(|l| l.ends_with([' ', '\t']));
    if !block_ok || s.contains(YAML_ONLY_BREAKS) {
        return quoted(s);
    }
    let trailing = s.len() - s.trim_end_matches('\n').len();
    let chomp = match trailing {
        0 => "-",
        1 => "",
        _ => "+",
    };
    let mut out = format!("|{chomp}");
    let body = s.strip_suffix('\n').unwrap_or(s);
    for line in body.split('\n') {
        out.push('\n');
        if !line.is_empty() {
            let _ = write!(out, "{}{line}", " ".repeat(indent));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// As kubectl reads it.
    fn read(text: &str) -> Value {
        crate::inject::yaml::parse(text)
            .unwrap()
            .map_or(Value::Null, |t| t.root.value)
    }

    #[test]
    fn strings_yaml_1_1_would_misread_are_quoted() {
        let v: Value = read(
            "env:\n- {name: KONG_ADMIN_GUI_ACCESS_LOG, value: 'off'}\n- {name: N, value: '0755'}\nport: 80\nok: true\n",
        );
        let out = document(&v);
        assert!(out.contains("value: \"off\""), "{out}");
        assert!(out.contains("value: \"0755\""), "{out}");
        assert!(
            out.contains("port: 80\n") && out.contains("ok: true\n"),
            "{out}"
        );
        assert_eq!(read(&out), v);
    }

    #[test]
    fn kubernetes_objects_read_as_kubernetes_writes_them() {
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels:\n    app.kubernetes.io/name: web\nspec:\n  template:\n    spec:\n      containers:\n      - name: nginx\n        args:\n        - --port=80\n        ports:\n        - containerPort: 80\n          name: http\n      volumes: []\ndata:\n  nginx.conf: |\n    events {}\n    http {}\n";
        let v: Value = read(text);
        let out = document(&v);
        assert!(out.contains("      containers:\n      - name: \"nginx\"\n        args:\n        - \"--port=80\"\n"), "{out}");
        assert!(
            out.contains("  nginx.conf: |\n    events {}\n    http {}\n"),
            "{out}"
        );
        assert_eq!(read(&out), v);
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "(.|\n|\t| ){0,30}".prop_map(Value::from),
            prop::sample::select(vec![
                "off", "yes", "~", "null", "0x1F", "1_000", "1:20", "-", ":", "#", "- a", "a: b",
                "'", "\"", "|", ">"
            ])
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 40, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Sequence),
                prop::collection::vec(("[a-z_./-]{1,8}|on|y|1|.{0,6}", inner), 0..5).prop_map(
                    |kv| {
                        let mut m = serde_norway::Mapping::new();
                        for (k, v) in kv {
                            m.insert(Value::from(k), v);
                        }
                        Value::Mapping(m)
                    }
                ),
            ]
        })
    }

    proptest! {
        /// Whatever inject writes reads back as the same value.
        #[test]
        fn what_is_written_reads_back_the_same(v in value()) {
            let out = document(&v);
            let back: Value = crate::inject::yaml::parse(&out)
                .map_err(|e| TestCaseError::fail(format!("{e}: {out}")))?
                .map_or(Value::Null, |t| t.root.value);
            prop_assert_eq!(back, v, "{}", out);
        }
    }
}
