//! What a YAML scalar is to Kubernetes: go-yaml v2's rules, which
//! `sigs.k8s.io/yaml` applies under kubectl, Helm and the API server. They
//! are YAML 1.1's, not 1.2's: `0644` is octal (420), `yes`, `on` and `off`
//! are booleans, `1_000` is a thousand. A YAML 1.2 reader takes `0644` for
//! the string `"0644"`, which the API then refuses where it wants a number
//! (`defaultMode`), or for a number where `off` was meant as a string.
//!
//! This is the one place that knows these rules; `tree` applies them to
//! every scalar, `<<` merge keys and aliases.

use serde_norway::Value;

/// The tag prefix `!!` stands for.
pub(crate) const YAML_TAG: &str = "tag:yaml.org,2002:";

/// A plain (unquoted, untagged) scalar, as go-yaml v2 resolves it.
pub(crate) fn plain(s: &str) -> Value {
    resolve(Tag::Implicit, s).unwrap_or_else(|_| Value::from(s))
}

/// The tag a scalar carries, as go-yaml v2 tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tag {
    /// No tag, plain style: resolved by its text.
    Implicit,
    Str,
    Bool,
    Int,
    Float,
    Timestamp,
    Binary,
    /// `!!null`, a local tag (`!foo`), the non-specific `!` or any other:
    /// go-yaml v2 leaves the text a string.
    Other,
}

impl Tag {
    /// From a tag's full name (the `!!` handle expanded).
    pub(crate) fn of(full: &str) -> Tag {
        match full.strip_prefix(YAML_TAG) {
            Some("str") => Tag::Str,
            Some("bool") => Tag::Bool,
            Some("int") => Tag::Int,
            Some("float") => Tag::Float,
            Some("timestamp") => Tag::Timestamp,
            Some("binary") => Tag::Binary,
            _ => Tag::Other,
        }
    }
}

/// A scalar with a tag (or a quoted one, `Tag::Str`), as go-yaml v2
/// decodes it into an `interface{}`: an error where it refuses (`!!int
/// abc`), with its words.
pub(crate) fn resolve(tag: Tag, s: &str) -> Result<Value, String> {
    match tag {
        Tag::Str | Tag::Other | Tag::Timestamp => return Ok(Value::from(s)),
        Tag::Binary => return binary(s).map(Value::from),
        Tag::Implicit | Tag::Bool | Tag::Int | Tag::Float => {}
    }
    let found = implicit(s);
    let found_tag = match &found {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        _ => "str",
    };
    let is_int = matches!(&found, Value::Number(n) if !n.is_f64());
    match (tag, &found) {
        (Tag::Implicit, _) | (Tag::Bool, Value::Bool(_)) => Ok(found),
        (Tag::Int, _) if is_int => Ok(found),
        (Tag::Float, Value::Number(n)) => Ok(Value::from(n.as_f64().unwrap_or(f64::NAN))),
        _ => Err(format!(
            "cannot decode !!{found_tag} `{s}` as a !!{}",
            match tag {
                Tag::Bool => "bool",
                Tag::Int => "int",
                _ => "float",
            }
        )),
    }
}

/// go-yaml v2's `resolve` for an untagged plain scalar.
fn implicit(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return Value::Bool(true);
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Value::Bool(false);
        }
        ".nan" | ".NaN" | ".NAN" => return Value::from(f64::NAN),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::from(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::from(f64::NEG_INFINITY),
        _ => {}
    }
    match s.as_bytes()[0] {
        b'.' => match go_float(s) {
            Some(f) => Value::from(f),
            None => Value::from(s),
        },
        b'+' | b'-' | b'0'..=b'9' => {
            let plain: String = s.chars().filter(|c| *c != '_').collect();
            if let Some(i) = go_parse_int(&plain) {
                Value::from(i)
            } else if let Some(u) = go_parse_uint(&plain) {
                Value::from(u)
            } else if is_yaml_float(&plain)
                && let Some(f) = go_float(&plain)
            {
                Value::from(f)
            } else {
                Value::from(s)
            }
        }
        _ => Value::from(s),
    }
}

/// Go's `strconv.ParseFloat` on what reaches it here: a finite result (Go
/// refuses an overflow with ErrRange, and go-yaml then keeps the string).
fn go_float(s: &str) -> Option<f64> {
    // Rust takes "inf" and "nan" words Go would too, but none starts with
    // a digit, a sign and a digit, or a dot (checked by the callers).
    s.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// go-yaml v2's float pattern: `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn is_yaml_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    let digits = |i: &mut usize| {
        let from = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - from
    };
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    } else {
        if digits(&mut i) == 0 {
            return false;
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            digits(&mut i);
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// The digits of an integer and its base, as Go's `strconv.ParseInt(s, 0,
/// 64)` reads a prefix: `0x` hex, `0o` or a bare leading `0` octal, `0b`
/// binary, else decimal.
fn base_and_digits(s: &str) -> (u32, &str) {
    let b = s.as_bytes();
    if b.len() >= 2 && b[0] == b'0' {
        match b[1] {
            b'x' | b'X' => (16, &s[2..]),
            b'o' | b'O' => (8, &s[2..]),
            b'b' | b'B' => (2, &s[2..]),
            _ => (8, &s[1..]),
        }
    } else {
        (10, s)
    }
}

/// Go's `strconv.ParseUint(s, 0, 64)` (no sign).
fn go_parse_uint(s: &str) -> Option<u64> {
    let (base, digits) = base_and_digits(s);
    if digits.is_empty() || !digits.bytes().all(|c| (c as char).is_digit(base)) {
        return None;
    }
    u64::from_str_radix(digits, base).ok()
}

/// Go's `strconv.ParseInt(s, 0, 64)`: an optional sign, then as
/// [`go_parse_uint`], within i64.
fn go_parse_int(s: &str) -> Option<i64> {
    let (neg, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let u = go_parse_uint(rest)?;
    if neg {
        if u == 1 << 63 {
            Some(i64::MIN)
        } else {
            i64::try_from(u).ok().map(|i| -i)
        }
    } else {
        i64::try_from(u).ok()
    }
}

/// `!!binary`: standard base64 (line breaks ignored, as Go's decoder
/// does), the bytes as a string (invalid UTF-8 replaced, as JSON
/// encoding does).
fn binary(s: &str) -> Result<String, String> {
    let bad = || "!!binary value contains invalid base64 data".to_string();
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = Vec::new();
    let mut padding = 0;
    let mut n = 0;
    for c in s.bytes().filter(|c| !matches!(c, b'\r' | b'\n')) {
        n += 1;
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                padding += 1;
                continue;
            }
            _ => return Err(bad()),
        };
        if padding > 0 {
            return Err(bad());
        }
        bits = (bits << 6) | u32::from(v);
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
        }
    }
    if n % 4 != 0 || padding > 2 {
        return Err(bad());
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn int(i: i64) -> Value {
        Value::from(i)
    }

    /// What kubectl made of each (`kubectl label --local -o json` on a
    /// ConfigMap whose `data` held them; see tests/inject.rs for the real
    /// kubectl over whole documents).
    #[test]
    fn scalars_read_as_go_yaml_v2_reads_them() {
        let cases: Vec<(&str, Value)> = vec![
            ("0644", int(420)),
            ("0o644", int(420)),
            ("0600", int(384)),
            ("0", int(0)),
            ("08", Value::from(8.0)),
            ("0x1F", int(31)),
            ("0b101", int(5)),
            ("-0x10", int(-16)),
            ("+12", int(12)),
            ("1_000", int(1000)),
            ("9223372036854775807", int(i64::MAX)),
            ("-9223372036854775808", int(i64::MIN)),
            ("18446744073709551615", Value::from(u64::MAX)),
            ("1e3", Value::from(1000.0)),
            ("1.5", Value::from(1.5)),
            (".5", Value::from(0.5)),
            ("1.", Value::from(1.0)),
            ("1e999", Value::from("1e999")),
            ("yes", Value::Bool(true)),
            ("On", Value::Bool(true)),
            ("off", Value::Bool(false)),
            ("N", Value::Bool(false)),
            ("oN", Value::from("oN")),
            ("~", Value::Null),
            ("", Value::Null),
            ("Null", Value::Null),
            ("nUll", Value::from("nUll")),
            ("<<", Value::from("<<")),
            ("2001-12-14", Value::from("2001-12-14")),
            ("1:20", Value::from("1:20")),
            ("12h", Value::from("12h")),
            ("0x", Value::from("0x")),
            ("-", Value::from("-")),
            (".", Value::from(".")),
            ("+.inf", Value::from(f64::INFINITY)),
            (".iNf", Value::from(".iNf")),
            ("nginx:1.27", Value::from("nginx:1.27")),
        ];
        for (s, want) in cases {
            assert_eq!(plain(s), want, "{s:?}");
        }
        assert!(matches!(plain(".nan"), Value::Number(n) if n.as_f64().unwrap().is_nan()));
    }

    #[test]
    fn tags_decide_as_go_yaml_v2_decides() {
        assert_eq!(resolve(Tag::Str, "0644"), Ok(Value::from("0644")));
        assert_eq!(resolve(Tag::Int, "0644"), Ok(int(420)));
        assert_eq!(resolve(Tag::Float, "1"), Ok(Value::from(1.0)));
        assert_eq!(resolve(Tag::Bool, "yes"), Ok(Value::Bool(true)));
        assert_eq!(resolve(Tag::Other, "yes"), Ok(Value::from("yes")));
        assert_eq!(
            resolve(Tag::Timestamp, "2001-12-14"),
            Ok(Value::from("2001-12-14"))
        );
        assert_eq!(
            resolve(Tag::Int, "abc"),
            Err("cannot decode !!str `abc` as a !!int".into())
        );
        assert_eq!(
            resolve(Tag::Int, "1.5"),
            Err("cannot decode !!float `1.5` as a !!int".into())
        );
        assert_eq!(
            resolve(Tag::Bool, "1"),
            Err("cannot decode !!int `1` as a !!bool".into())
        );
        assert_eq!(resolve(Tag::Binary, "aGVsbG8=\n"), Ok(Value::from("hello")));
        assert!(resolve(Tag::Binary, "aGVsbG8").is_err());
        assert_eq!(Tag::of("tag:yaml.org,2002:int"), Tag::Int);
        assert_eq!(Tag::of("!"), Tag::Other);
    }

    proptest! {
        /// Every decimal integer in range reads as itself, with or without
        /// a sign or underscores between its digits.
        #[test]
        fn decimal_integers_read_as_themselves(i in any::<i64>()) {
            let s = i.to_string();
            prop_assume!(!s.trim_start_matches('-').starts_with('0') || i == 0);
            prop_assert_eq!(plain(&s), int(i));
        }

        /// Octal with a leading zero, as Go reads it.
        #[test]
        fn leading_zero_is_octal(u in 1u32..0o777777) {
            prop_assert_eq!(plain(&format!("0{u:o}")), int(i64::from(u)));
        }

        /// Whatever the text, reading it never panics, and what is not a
        /// number, a bool or null stays the text.
        #[test]
        fn any_text_reads_without_panic(s in ".{0,24}") {
            let v = plain(&s);
            if let Value::String(t) = v {
                prop_assert_eq!(t, s);
            }
        }
    }
}
