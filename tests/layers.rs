//! The crate's layering, enforced: each module of `src/` imports only from
//! the layers below its own, as ARCHITECTURE.md's layer table lists them
//! (the table is read here, so it cannot drift from the code), and no two
//! submodules of one module import each other, even through others (no
//! cycle). Test code (`#[cfg(test)]` modules, `tests.rs` files) is left
//! out: a test may reach anywhere.
//!
//! Pure text work on the source files: runs in milliseconds, without root.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `src/a/b.rs` -> `a::b`; `mod.rs` and `lib.rs` name their folder.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The text without comments and without `#[cfg(test)]` modules (inline
/// ones skipped to their closing brace).
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let code = line.split("//").next().unwrap_or("");
        if line.trim() == "#[cfg(test)]"
            && let Some(next) = lines.peek()
        {
            let t = next.trim_start();
            let is_mod = t.starts_with("mod ")
                || t.starts_with("pub mod ")
                || t.starts_with("pub(crate) mod ");
            if is_mod && t.ends_with(';') {
                lines.next();
                continue;
            }
            if is_mod && t.ends_with('{') {
                let mut depth = 0i32;
                for l in lines.by_ref() {
                    depth += l.matches('{').count() as i32 - l.matches('}').count() as i32;
                    if depth <= 0 {
                        break;
                    }
                }
                continue;
            }
        }
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Every `crate::`, `super::` and `self::` path in `code`, as segments.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            // A whole word: `crate::`, not `my_crate::`.
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            let rest = &code[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let segs: Vec<String> = rest[..end]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            found.push(segs.clone());
            // Grouped imports: `crate::a::{b, c::d}` names a::b and a::c.
            let after = &rest[end..];
            if let Some(group) = after.strip_prefix('{') {
                let inner = &group[..group.find('}').unwrap_or(group.len())];
                for item in inner.split(',') {
                    let item = item.trim().split(" as ").next().unwrap_or("").trim();
                    if item.is_empty() || item == "self" {
                        continue;
                    }
                    let mut p = segs.clone();
                    p.extend(item.split("::").map(str::to_string));
                    found.push(p);
                }
            }
        }
    }
    found
}

/// The module a path names, from module `m`: the longest known prefix.
fn target(m: &str, path: &[String], modules: &BTreeSet<String>) -> Option<String> {
    let mut abs: Vec<String> = match path.first().map(String::as_str) {
        Some("crate") => Vec::new(),
        Some("super") | Some("self") => {
            let mut base: Vec<String> = m.split("::").map(str::to_string).collect();
            let mut rest = path;
            while let Some(first) = rest.first() {
                match first.as_str() {
                    "super" => {
                        base.pop();
                    }
                    "self" => {}
                    _ => break,
                }
                rest = &rest[1..];
            }
            base.extend(rest.iter().cloned());
            return longest(&base, modules);
        }
        _ => return None,
    };
    abs.extend(path[1..].iter().cloned());
    longest(&abs, modules)
}

fn longest(segs: &[String], modules: &BTreeSet<String>) -> Option<String> {
    (1..=segs.len())
        .rev()
        .map(|i| segs[..i].join("::"))
        .find(|c| modules.contains(c))
}

/// ARCHITECTURE.md's layer table: module -> layer.
fn layers(doc: &str) -> BTreeMap<String, u32> {
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("Layers"))
        .expect("ARCHITECTURE.md has a `## Layers` section");
    let mut out = BTreeMap::new();
    for row in section.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let Some(Ok(layer)) = cells.get(1).map(|c| c.parse::<u32>()) else {
            continue;
        };
        for module in cells[2].split(',') {
            let m = module.trim().trim_matches('`');
            assert!(
                out.insert(m.to_string(), layer).is_none(),
                "{m} listed twice"
            );
        }
    }
    assert!(!out.is_empty(), "the layer table has no rows");
    out
}

struct Crate {
    modules: BTreeSet<String>,
    /// module -> the modules it imports (outside test code).
    imports: BTreeMap<String, BTreeSet<String>>,
}

fn read_crate() -> Crate {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut imports = BTreeMap::new();
    for f in &files {
        let m = module_of(&src, f);
        if m == "main" || m.ends_with("tests") {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(f).unwrap());
        let set: BTreeSet<String> = paths(&code)
            .iter()
            .filter_map(|p| target(&m, p, &modules))
            .filter(|t| *t != m && !t.is_empty())
            .collect();
        imports.insert(m, set);
    }
    Crate { modules, imports }
}

fn top(m: &str) -> &str {
    m.split("::").next().unwrap()
}

#[test]
fn each_module_imports_only_from_the_layers_below_it() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md"))
            .unwrap();
    let layer = layers(&doc);
    let c = read_crate();
    let tops: BTreeSet<&str> = c
        .modules
        .iter()
        .map(|m| top(m))
        .filter(|t| !t.is_empty() && *t != "main")
        .collect();
    for t in &tops {
        assert!(
            layer.contains_key(*t),
            "module {t} is in no layer: add it to ARCHITECTURE.md's layer table"
        );
    }
    for l in layer.keys() {
        assert!(
            tops.contains(l.as_str()),
            "ARCHITECTURE.md lists {l}, which src/ has not"
        );
    }
    let mut upward = Vec::new();
    for (m, deps) in &c.imports {
        let Some(&mine) = layer.get(top(m)) else {
            continue;
        };
        for d in deps {
            if top(d) == top(m) || d.is_empty() {
                continue;
            }
            let theirs = layer[top(d)];
            if theirs >= mine {
                upward.push(format!("{m} (layer {mine}) imports {d} (layer {theirs})"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports from a layer not below: {upward:#?}"
    );
    println!(
        "{} modules in {} layers; every import goes down",
        c.imports.len(),
        layer.values().collect::<BTreeSet<_>>().len()
    );
}

#[test]
fn no_two_submodules_of_a_module_import_each_other() {
    let c = read_crate();
    // Within each parent: the edges between its children (an import of a
    // grandchild counts as one of the child that holds it).
    let child_of = |parent: &str, m: &str| -> Option<String> {
        let rest = if parent.is_empty() {
            m
        } else {
            m.strip_prefix(parent)?.strip_prefix("::")?
        };
        let first = rest.split("::").next()?;
        Some(if parent.is_empty() {
            first.to_string()
        } else {
            format!("{parent}::{first}")
        })
    };
    let parents: BTreeSet<String> = c
        .modules
        .iter()
        .filter_map(|m| m.rsplit_once("::").map(|(p, _)| p.to_string()))
        .collect();
    let mut cycles = Vec::new();
    for parent in &parents {
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (m, deps) in &c.imports {
            let Some(from) = child_of(parent, m) else {
                continue;
            };
            for d in deps {
                if let Some(to) = child_of(parent, d)
                    && to != from
                {
                    edges.entry(from.clone()).or_default().insert(to);
                }
            }
        }
        if let Some(cycle) = find_cycle(&edges) {
            cycles.push(cycle.join(" -> "));
        }
    }
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
}

/// A cycle in `edges`, as the modules along it.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut c = stack[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for next in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|n| visit(n, edges, &mut Vec::new(), &mut done))
}

/// The checker itself: an upward import and a cycle are found.
#[test]
fn the_checker_finds_what_it_looks_for() {
    let code = code_of(
        "use crate::a::{b, c::d as e};\n// crate::ignored\n#[cfg(test)]\nmod tests {\n    use crate::z;\n}\nfn f() { super::g::h(); }\n",
    );
    let p = paths(&code);
    assert!(p.contains(&vec!["crate".into(), "a".into(), "b".into()]));
    assert!(p.contains(&vec!["crate".into(), "a".into(), "c".into(), "d".into()]));
    assert!(
        !p.iter()
            .any(|p| p.contains(&"z".to_string()) || p.contains(&"ignored".to_string()))
    );
    let modules: BTreeSet<String> = ["a", "a::c", "x", "x::g"].map(String::from).into();
    assert_eq!(
        target("x::y", &p[p.len() - 1], &modules).as_deref(),
        Some("x::g")
    );
    let edges: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), ["b".to_string()].into()),
        ("b".to_string(), ["c".to_string()].into()),
        ("c".to_string(), ["a".to_string()].into()),
    ]
    .into();
    assert_eq!(find_cycle(&edges).unwrap(), ["a", "b", "c", "a"]);
    let table = layers(
        "# A\n## Layers\n| layer | modules | what |\n|---|---|---|\n| 0 | `vocab` | words |\n| 1 | `nginx`, `sockets` | observers |\n## Next\n| 5 | `x` | no |\n",
    );
    assert_eq!(table.len(), 3);
    assert_eq!(table["sockets"], 1);
}
