use serde_norway::{Mapping, Value};

use super::{parse, splice};

fn read(text: &str) -> Value {
    parse(text).expect("parses").expect("a node").root.value
}

/// `text` with `f` applied to its value, spliced.
fn edit(text: &str, f: impl FnOnce(&mut Value)) -> String {
    let tree = parse(text).unwrap().unwrap();
    let mut v = tree.root.value.clone();
    f(&mut v);
    splice(text, &tree, &v).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn at<'a>(v: &'a mut Value, path: &[&str]) -> &'a mut Value {
    let mut cur = v;
    for p in path {
        cur = match p.parse::<usize>() {
            Ok(i) => &mut cur.as_sequence_mut().unwrap()[i],
            Err(_) => cur.get_mut(*p).unwrap_or_else(|| panic!("no {p}")),
        };
    }
    cur
}

fn set(v: &mut Value, key: &str, value: Value) {
    v.as_mapping_mut().unwrap().insert(Value::from(key), value);
}

fn yaml(text: &str) -> Value {
    read(text)
}

#[test]
fn values_read_as_kubectl_reads_them() {
    let v = read(
        "mode: 0644\nflag: yes\nlabels: &l {app: web}\nmerged: {<<: *l, tier: edge}\nexplicit: {app: mine, <<: *l}\nlater: {<<: *l, app: mine}\nlist: {<<: [{a: 1}, {a: 2, b: 2}]}\ntagged: !!str 0644\nlocal: !thing {x: 1}\nquoted: '0644'\n80: port\nyes: key\n",
    );
    assert_eq!(v["mode"], Value::from(420));
    assert_eq!(v["flag"], Value::Bool(true));
    assert_eq!(v["merged"], yaml("{app: web, tier: edge}"));
    // go-yaml v2 sets keys in order: a merge after an explicit key wins.
    assert_eq!(v["explicit"], yaml("{app: web}"));
    assert_eq!(v["later"], yaml("{app: mine}"));
    assert_eq!(v["list"], yaml("{a: 1, b: 2}"));
    assert_eq!(v["tagged"], Value::from("0644"));
    assert_eq!(v["local"], yaml("{x: 1}"));
    assert_eq!(v["quoted"], Value::from("0644"));
    assert_eq!(v["80"], Value::from("port"));
    assert_eq!(v["true"], Value::from("key"));
}

#[test]
fn refusals_say_where_and_what() {
    let e = parse("a: 1\nb: [\n").unwrap_err();
    assert!(e.line >= 2, "{e}");
    let e = parse("a: !!int abc\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "line 1 column 4: cannot decode !!str `abc` as a !!int"
    );
    let e = parse("a: {<<: 1}\n").unwrap_err();
    assert!(e.what.contains("map merge requires map"), "{e}");
    let e = parse("a: 1\n...\nb: 2\n").unwrap_err();
    assert!(e.what.contains("kubectl reads only the first"), "{e}");
    let laughs: String = std::iter::once("a: &a [x, x, x, x, x, x, x, x, x, x]\n".to_string())
        .chain((b'b'..=b'k').map(|c| {
            let p = (c - 1) as char;
            format!(
                "{}: &{} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n",
                c as char, c as char
            )
        }))
        .collect();
    let e = parse(&laughs).unwrap_err();
    assert!(e.what.contains("more than"), "{e}");
}

/// Keys added after the last entry at its indentation, in block
/// mappings at any depth and in compact list items; comments, quoting,
/// octal and blank lines untouched.
#[test]
fn a_key_added_to_a_block_mapping_leaves_every_other_byte() {
    let text = "# top\nkind: Deployment   # kind\nspec:\n  template:\n    spec:\n      containers:\n      - name: nginx   # the one\n        image: 'nginx:1.27'\n\n        # its volumes\n        volumeMounts: [{name: c, mountPath: /c}]\n      volumes:\n      - name: c\n        configMap: {name: c, defaultMode: 0644}\n# trailing\n";
    let out = edit(text, |v| {
        let c = at(v, &["spec", "template", "spec", "containers", "0"]);
        set(
            c,
            "lifecycle",
            yaml("preStop: {httpGet: {path: /prestop, port: 10266}}"),
        );
        set(
            at(v, &["spec", "template", "spec"]),
            "shareProcessNamespace",
            Value::Bool(true),
        );
    });
    assert_eq!(
        out,
        "# top\nkind: Deployment   # kind\nspec:\n  template:\n    spec:\n      containers:\n      - name: nginx   # the one\n        image: 'nginx:1.27'\n\n        # its volumes\n        volumeMounts: [{name: c, mountPath: /c}]\n        lifecycle:\n          preStop:\n            httpGet:\n              path: \"/prestop\"\n              port: 10266\n      volumes:\n      - name: c\n        configMap: {name: c, defaultMode: 0644}\n      shareProcessNamespace: true\n# trailing\n"
    );
    assert_eq!(
        read(&out)["spec"]["template"]["spec"]["volumes"][0]["configMap"]["defaultMode"],
        Value::from(420)
    );
}

/// Items appended after the last, nested inserts before their parent's
/// at one place, flow collections edited inside their brackets.
#[test]
fn items_appended_and_flow_collections_edited_inside_their_brackets() {
    let text = "spec:\n  initContainers:\n  - name: init\n    args: [a]\n  containers: [{name: nginx, env: []}]\n  labels: {}\n";
    let out = edit(text, |v| {
        let s = at(v, &["spec"]);
        at(s, &["initContainers"])
            .as_sequence_mut()
            .unwrap()
            .push(yaml("{name: nginx-drain, restartPolicy: Always}"));
        at(s, &["initContainers", "0", "args"])
            .as_sequence_mut()
            .unwrap()
            .push(Value::from("b"));
        let c = at(s, &["containers", "0"]);
        set(c, "lifecycle", yaml("{preStop: {httpGet: {port: 1}}}"));
        at(c, &["env"])
            .as_sequence_mut()
            .unwrap()
            .push(yaml("{name: A, value: 'off'}"));
        set(at(s, &["labels"]), "a", Value::from("1"));
    });
    assert_eq!(
        out,
        "spec:\n  initContainers:\n  - name: init\n    args: [a, \"b\"]\n  - name: \"nginx-drain\"\n    restartPolicy: \"Always\"\n  containers: [{name: nginx, env: [{name: \"A\", value: \"off\"}], lifecycle: {preStop: {httpGet: {port: 1}}}}]\n  labels: {a: \"1\"}\n"
    );
}

/// A changed scalar in place, its comment kept; a replaced value written
/// anew at its key (a preStop hook); a value left out (`lifecycle:`)
/// filled; an anchor kept.
#[test]
fn values_replaced_in_place() {
    let text = "grace: 30 # seconds\nlifecycle:\n  preStop:\n    exec:\n      command: [sleep, '5']   # a guess\nempty:\nnext: &n 1\n";
    let out = edit(text, |v| {
        set(v, "grace", Value::from(45));
        set(
            at(v, &["lifecycle"]),
            "preStop",
            yaml("{httpGet: {port: 1}}"),
        );
        set(v, "empty", yaml("{a: 1}"));
        set(v, "next", Value::from(2));
    });
    assert_eq!(
        out,
        "grace: 45 # seconds\nlifecycle:\n  preStop:\n    httpGet:\n      port: 1\nempty:\n  a: 1\nnext: &n 2\n"
    );
}

/// A key that comes from a merge is set after it (go-yaml v2: the later
/// wins), its anchor's other users unchanged.
#[test]
fn a_merged_value_is_overridden_after_the_merge() {
    let text = "base: &b\n  runAsUser: 101\n  fsGroup: 101\nsc:\n  <<: *b\n";
    let out = edit(text, |v| {
        set(at(v, &["sc"]), "runAsUser", Value::from(0));
    });
    assert_eq!(
        out,
        "base: &b\n  runAsUser: 101\n  fsGroup: 101\nsc:\n  <<: *b\n  runAsUser: 0\n"
    );
}

/// An anchored node edited in place would change its aliases: refused
/// (inject then writes the document anew).
#[test]
fn an_edit_that_would_change_an_alias_is_refused() {
    let text = "a: &x {k: 1}\nb: *x\n";
    let tree = parse(text).unwrap().unwrap();
    let mut v = tree.root.value.clone();
    set(at(&mut v, &["a"]), "k2", Value::from(2));
    let e = splice(text, &tree, &v).unwrap_err();
    assert!(e.contains("alias"), "{e}");
}

/// Line breaks as the text has them; a `|+` scalar's kept empty lines
/// stay its own; non-ASCII text before an edit.
#[test]
fn crlf_kept_strings_and_unicode() {
    let out = edit("a: b\r\nc: d\r\n", |v| set(v, "e", Value::from("f")));
    assert_eq!(out, "a: b\r\nc: d\r\ne: \"f\"\r\n");
    let out = edit("m:\n  s: |+\n    x\n\n  t: 1\n  u: |+\n    y\n\n", |v| {
        set(at(v, &["m"]), "z", Value::from(1));
    });
    assert_eq!(read(&out)["m"]["u"], Value::from("y\n\n"));
    assert_eq!(read(&out)["m"]["z"], Value::from(1));
    let out = edit("é: ü # ß\nx:\n  y: 1\n", |v| {
        set(at(v, &["x"]), "z", Value::from(2))
    });
    assert_eq!(out, "é: ü # ß\nx:\n  y: 1\n  z: 2\n");
}

/// No trailing newline, a document start line, a directive.
#[test]
fn document_markers_stay() {
    let out = edit("%YAML 1.1\n---\na: 1", |v| set(v, "b", Value::from(2)));
    assert_eq!(out, "%YAML 1.1\n---\na: 1\nb: 2\n");
    let out = edit("--- # doc\na: 1\n...\n", |v| set(v, "b", Value::from(2)));
    assert_eq!(out, "--- # doc\na: 1\nb: 2\n...\n");
}

fn mapping_of(pairs: &[(&str, Value)]) -> Value {
    let mut m = Mapping::new();
    for (k, v) in pairs {
        m.insert(Value::from(*k), v.clone());
    }
    Value::Mapping(m)
}

proptest::proptest! {
    /// Whatever is added where, the edit reads back as the new value, and
    /// the old text is all still there, in order: only insertions.
    #[test]
    fn edits_read_back_and_keep_every_line(
        style in 0usize..4,
        keys in proptest::collection::vec("[a-z]{1,6}", 1..4),
        add in proptest::collection::vec(("[a-z]{1,6}", "(.|\n){0,12}"), 1..4),
    ) {
        let body: String = keys.iter().enumerate().map(|(i, k)| format!("{k}{i}: v{i} # c{i}\n")).collect();
        let text = match style {
            0 => format!("top:\n  inner:\n{}", body.lines().map(|l| format!("    {l}\n")).collect::<String>()),
            1 => format!("top:\n  inner:\n  - {}", body.lines().collect::<Vec<_>>().join("\n    ") + "\n"),
            2 => format!("top: {{inner: {{{}}}}}\n", keys.iter().enumerate().map(|(i, k)| format!("{k}{i}: v{i}")).collect::<Vec<_>>().join(", ")),
            _ => format!("top:\n  inner: &a\n{}  other: *a\n", body.lines().map(|l| format!("    {l}\n")).collect::<String>()),
        };
        let tree = parse(&text).unwrap().unwrap();
        let mut v = tree.root.value.clone();
        let target = if style == 1 { at(&mut v, &["top", "inner", "0"]) } else { at(&mut v, &["top", "inner"]) };
        for (k, val) in &add {
            set(target, &format!("new_{k}"), mapping_of(&[("s", Value::from(val.as_str()))]));
        }
        match splice(&text, &tree, &v) {
            Ok(out) => {
                proptest::prop_assert_eq!(read(&out), v.clone(), "{}", out);
                let mut rest = out.bytes();
                for b in text.bytes() {
                    proptest::prop_assert!(rest.any(|o| o == b), "{:?} lost:\n{}", text, out);
                }
            }
            Err(e) => proptest::prop_assert!(style == 3, "{}", e),
        }
    }
}
