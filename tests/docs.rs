//! The docs cannot drift from the code: the configuration reference lists
//! every flag and environment variable `--help` does (and no other), the
//! chart's README every key of values.yaml (and no other), every relative
//! link in the docs leads to a file (and a heading) that exists, and the
//! README keeps to what a user reads first (its size, the install within
//! its first 80 lines).
//!
//! Runs the real binary's `--help`; no root, no network: the fast tier.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn help(command: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_nginx-drain"))
        .args([command, "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// The long flags and environment variables `--help` lists.
fn flags_in_help(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut flags = BTreeSet::new();
    let mut envs = BTreeSet::new();
    for line in text.lines() {
        let t = line.trim_start();
        let t = t.strip_prefix("-h, ").unwrap_or(t);
        if let Some(rest) = t.strip_prefix("--") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if name != "help" {
                flags.insert(format!("--{name}"));
            }
        }
        if let Some(i) = line.find("[env: ") {
            let env: String = line[i + 6..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            envs.insert(env);
        }
    }
    (flags, envs)
}

/// The first cells of a markdown section's table rows: `--flag ...` and
/// any `NGINX_DRAIN_*` names in the row.
fn flags_in_table(section: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut flags = BTreeSet::new();
    let mut envs = BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `--")) {
        // `a\|b` is a pipe inside a cell.
        let row = row.replace("\\|", "/");
        // Every `--flag` the first cell names (one row may list several).
        let first = row.split('|').nth(1).unwrap();
        for code in first.split('`').skip(1).step_by(2) {
            if code.starts_with("--") {
                let name: String = code
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                flags.insert(name);
            }
        }
        let second = row.split('|').nth(2).unwrap_or("");
        for word in second.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("NGINX_DRAIN_") {
                envs.insert(word.to_string());
            }
        }
    }
    (flags, envs)
}

/// The text of `doc` from the heading `start` to the next heading of the
/// same level.
fn section<'a>(doc: &'a str, start: &str) -> &'a str {
    let at = doc
        .find(start)
        .unwrap_or_else(|| panic!("no section {start}"));
    let level = start.chars().take_while(|c| *c == '#').count();
    let marker = format!("\n{} ", "#".repeat(level));
    let rest = &doc[at + start.len()..];
    let end = rest.find(&marker).map_or(rest.len(), |i| i);
    &rest[..end]
}

#[test]
fn the_configuration_reference_lists_every_flag_and_variable_and_no_other() {
    let doc = read("docs/configuration.md");
    for (command, heading) in [
        ("serve", "## `nginx-drain serve`"),
        ("inject", "## `nginx-drain inject`"),
        ("webhook", "## `nginx-drain webhook`"),
    ] {
        let (flags, envs) = flags_in_help(&help(command));
        let (documented, documented_envs) = flags_in_table(section(&doc, heading));
        let missing: Vec<_> = flags.difference(&documented).collect();
        let stale: Vec<_> = documented.difference(&flags).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "{command}: flags in --help but not in docs/configuration.md: {missing:?}; documented but gone: {stale:?}"
        );
        let missing: Vec<_> = envs.difference(&documented_envs).collect();
        let stale: Vec<_> = documented_envs.difference(&envs).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "{command}: variables in --help but not in docs/configuration.md: {missing:?}; documented but gone: {stale:?}"
        );
        println!(
            "{command}: {} flags and {} variables documented",
            flags.len(),
            envs.len()
        );
    }
}

/// Every key path of a YAML mapping (`a.b.c`), and its parents.
fn key_paths(v: &serde_norway::Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let serde_norway::Value::Mapping(m) = v {
        for (k, v) in m {
            let k = k.as_str().unwrap();
            let path = if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}.{k}")
            };
            out.insert(path.clone());
            key_paths(v, &path, out);
        }
    }
}

/// The keys the chart README's values table names: `a.{b,c}` is `a.b` and
/// `a.c`; `x` / `y` and `x`, `y` are both.
fn documented_values(readme: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for row in section(readme, "## Values")
        .lines()
        .filter(|l| l.starts_with("| `"))
    {
        let first = row.split('|').nth(1).unwrap();
        // Split at `/` and `,` outside braces.
        let mut parts = Vec::new();
        let (mut depth, mut from) = (0, 0);
        for (i, c) in first.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                '/' | ',' if depth == 0 => {
                    parts.push(&first[from..i]);
                    from = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&first[from..]);
        for part in parts {
            let key = part.trim().trim_matches('`').trim();
            if key.is_empty() {
                continue;
            }
            match key.split_once(".{") {
                Some((head, tail)) => {
                    for leaf in tail.trim_end_matches('}').split(',') {
                        out.insert(format!("{head}.{}", leaf.trim()));
                    }
                }
                None => {
                    out.insert(key.to_string());
                }
            }
        }
    }
    out
}

#[test]
fn the_charts_readme_lists_every_value_and_no_other() {
    for chart in ["charts/nginx-drain", "charts/nginx-drain-webhook"] {
        chart_readme_lists_every_value(chart);
    }
}

fn chart_readme_lists_every_value(chart: &str) {
    let values: serde_norway::Value =
        serde_norway::from_str(&read(&format!("{chart}/values.yaml"))).unwrap();
    let mut paths = BTreeSet::new();
    key_paths(&values, "", &mut paths);
    let documented = documented_values(&read(&format!("{chart}/README.md")));
    // A path is documented when it or a parent is (`nginx.resources` covers
    // its requests and limits); a parent is covered by its children.
    let covered = |p: &str| {
        documented.contains(p)
            || documented
                .iter()
                .any(|d| p.starts_with(&format!("{d}.")) || d.starts_with(&format!("{p}.")))
    };
    let missing: Vec<&String> = paths.iter().filter(|p| !covered(p)).collect();
    let stale: Vec<&String> = documented.iter().filter(|d| !paths.contains(*d)).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "{chart}: values.yaml keys missing from the chart README's table: {missing:?}; documented but not in values.yaml: {stale:?}"
    );
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![
        root().join("README.md"),
        root().join("ARCHITECTURE.md"),
        root().join("charts/nginx-drain/README.md"),
        root().join("charts/nginx-drain-webhook/README.md"),
    ];
    for e in std::fs::read_dir(root().join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            files.push(p);
        }
    }
    files
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, punctuation
/// but `-` and `_` dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_relative_link_in_the_docs_leads_somewhere() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut in_code = false;
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                in_code = !in_code;
            }
            if in_code {
                continue;
            }
            let mut rest = line;
            while let Some(i) = rest.find("](") {
                let after = &rest[i + 2..];
                let Some(end) = after.find(')') else { break };
                let target = &after[..end];
                rest = &after[end..];
                if target.starts_with("http") || target.starts_with("mailto:") {
                    continue;
                }
                let (path, frag) = target.split_once('#').unwrap_or((target, ""));
                let dest = if path.is_empty() {
                    file.clone()
                } else {
                    file.parent().unwrap().join(path)
                };
                checked += 1;
                if !dest.exists() {
                    broken.push(format!("{}: {target} (no such file)", file.display()));
                    continue;
                }
                if !frag.is_empty() && dest.extension().is_some_and(|x| x == "md") {
                    let doc = std::fs::read_to_string(&dest).unwrap();
                    let anchors: BTreeSet<String> = doc
                        .lines()
                        .filter(|l| l.starts_with('#'))
                        .map(|l| anchor(l.trim_start_matches('#')))
                        .collect();
                    if !anchors.contains(frag) {
                        broken.push(format!("{}: {target} (no such heading)", file.display()));
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links: {broken:#?}");
    println!("{checked} relative links lead somewhere");
}

#[test]
fn the_readme_is_read_in_five_minutes() {
    let readme = read("README.md");
    assert!(
        readme.len() <= 20_000,
        "README.md is {} characters: move detail to docs/",
        readme.len()
    );
    let first_80: String = readme.lines().take(80).collect::<Vec<_>>().join("\n");
    for must in [
        "scripts/demo",
        "scripts/test",
        "nginx-drain inject",
        "ingress-nginx",
        "NGINX Gateway Fabric",
        "Kong",
        "APISIX",
        "NGINX Ingress Controller",
    ] {
        assert!(
            first_80.contains(must),
            "README's first 80 lines lack {must}"
        );
    }
    for must in [
        "nginx-drain check",
        "Three things must hold",
        "docs/configuration.md",
    ] {
        assert!(readme.contains(must), "README lacks {must}");
    }
}
