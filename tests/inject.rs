//! `nginx-drain inject` (the real binary) on the real upstream charts'
//! renders (`../shared/upstream-charts`): ingress-nginx 4.15.1 with a user's
//! own init container and volume, NGINX Inc's nginx-ingress 2.7.0, Kong
//! 3.4.1, APISIX 2.14.0, NGINX Gateway Fabric 2.6.7 (its `NginxProxy`), and
//! this project's chart. Each injected workload passes the API server's
//! rules that schemas miss (`support/pod_rules.rs`) and kubernetes-validate
//! `--strict`; injecting twice changes nothing; two runs agree; documents
//! it does not wire come back byte for byte. Then inject as a Helm 4
//! post-renderer plugin (`contrib/helm-plugin`).
//!
//! Needs helm (NGINX_DRAIN_HELM) and the upstream charts; without them it
//! says it skipped (under CI: fails).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

mod support;
use support::pod_rules;
use support::renders::{
    controller_config, helm, nginx_inc_chart, objects, rendered, upstream_charts, validate_workload,
};

fn inject(input: &str, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nginx-drain"))
        .arg("inject")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let text = input.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    out
}

fn template(helm: &str, chart: &Path, args: &[&str]) -> String {
    let out = Command::new(helm)
        .args(["template", "edge"])
        .arg(chart)
        .args(["--namespace", "edge"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A user's existing ingress-nginx values, with lists of their own: Helm's
/// list replacement dropped these in an overlay; inject appends.
const USER_VALUES: &str = r#"controller:
  extraInitContainers:
    - name: sysctl
      image: busybox:1.36
      command: [sysctl, -w, net.core.somaxconn=32768]
      securityContext: {privileged: true}
  extraVolumes:
    - name: geoip
      emptyDir: {}
  extraVolumeMounts:
    - name: geoip
      mountPath: /etc/nginx/geoip
"#;

struct Case {
    name: String,
    yaml: String,
    /// Words the stderr must hold (the hook it replaced).
    says: &'static str,
    /// Validate with kubernetes-validate (not for CRDs).
    validate: Option<&'static str>,
}

fn cases(helm: &str, upstream: &Path, scratch: &Path) -> Vec<Case> {
    let values = scratch.join("user-values.yaml");
    std::fs::write(&values, USER_VALUES).unwrap();
    let values = values.to_str().unwrap().to_string();
    let ingress = upstream.join("ingress-nginx");
    let inc = nginx_inc_chart(upstream, scratch);
    let mut out = Vec::new();
    for kind in ["Deployment", "DaemonSet"] {
        out.push(Case {
            name: format!("ingress-nginx 4.15.1 {kind}, the user's values"),
            yaml: template(
                helm,
                &ingress,
                &["-f", &values, "--set", &format!("controller.kind={kind}")],
            ),
            says: "exec `/wait-shutdown`",
            validate: Some(if kind == "Deployment" {
                "deployment"
            } else {
                "daemonset"
            }),
        });
    }
    for kind in ["deployment", "daemonset", "statefulset"] {
        out.push(Case {
            name: format!("nginx-ingress 2.7.0 {kind}"),
            yaml: template(helm, &inc, &["--set", &format!("controller.kind={kind}")]),
            says: "wired NGINX Ingress Controller",
            validate: Some(kind),
        });
    }
    out.push(Case {
        name: "kong 3.4.1".into(),
        yaml: template(helm, &upstream.join("kong"), &[]),
        says: "exec `kong quit --wait=15`",
        validate: Some("deployment"),
    });
    out.push(Case {
        name: "apisix 2.14.0".into(),
        yaml: template(helm, &upstream.join("apisix"), &[]),
        says: "exec `/bin/sh -c sleep 30`",
        validate: Some("deployment"),
    });
    out.push(Case {
        name: "nginx-gateway-fabric 2.6.7".into(),
        yaml: template(helm, &upstream.join("nginx-gateway-fabric"), &[]),
        says: "wired NGINX Gateway Fabric's data plane",
        validate: None,
    });
    out
}

fn is_nginx_workload(o: &Value) -> bool {
    pod_rules::pod_spec(o).is_some_and(|p| {
        p["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(p["initContainers"].as_array().into_iter().flatten())
            .any(|c| c["name"] == "nginx-drain")
    })
}

#[test]
fn the_upstream_charts_are_wired_idempotently_and_nothing_else_changes() {
    let Some(helm) = helm() else { return };
    let Some(upstream) = upstream_charts() else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    for case in cases(&helm, &upstream, scratch.path()) {
        let name = &case.name;
        let out = inject(&case.yaml, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{name}: {stderr}");
        let injected = String::from_utf8(out.stdout).unwrap();
        println!("{name}:\n{stderr}");
        assert!(stderr.contains(case.says), "{name}: {stderr}");
        let objs = objects(&injected);
        let wired: Vec<&Value> = objs.iter().filter(|o| is_nginx_workload(o)).collect();
        if case.validate.is_some() {
            assert_eq!(wired.len(), 1, "{name}: one NGINX workload wired");
            let w = wired[0];
            let broken = pod_rules::check(w, controller_config(&objs, w));
            assert!(broken.is_empty(), "{name}: {broken:#?}");
        } else {
            let np = objs.iter().find(|o| o["kind"] == "NginxProxy").unwrap();
            let patch = &np["spec"]["kubernetes"]["deployment"]["patches"][0]["value"];
            assert_eq!(
                patch["spec"]["template"]["spec"]["shareProcessNamespace"],
                true
            );
        }
        if let Some(kind) = case.validate {
            validate_workload(&injected, None, kind);
            validate_workload(&injected, Some("1.29.0"), kind);
        }
        if name.starts_with("ingress-nginx") {
            // The user's own list entries are still there.
            let pod = pod_rules::pod_spec(wired[0]).unwrap();
            let inits: Vec<&str> = pod["initContainers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap())
                .collect();
            assert_eq!(inits, ["sysctl", "nginx-drain"], "{name}");
            assert!(
                pod["volumes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|v| v["name"] == "geoip"),
                "{name}"
            );
        }
        // Idempotent, deterministic, and every document it did not wire
        // is there byte for byte.
        let twice = inject(&injected, &[]);
        assert!(twice.status.success());
        assert!(
            twice.stdout == injected.as_bytes(),
            "{name}: a second inject changed it"
        );
        let again = inject(&case.yaml, &[]);
        assert!(
            again.stdout == injected.as_bytes(),
            "{name}: two runs differ"
        );
        for doc in case.yaml.split("\n---\n") {
            let wired_kind = [
                "Deployment",
                "DaemonSet",
                "StatefulSet",
                "ConfigMap",
                "NginxProxy",
            ]
            .iter()
            .any(|k| doc.contains(&format!("\nkind: {k}\n")));
            if !wired_kind {
                assert!(injected.contains(doc), "{name}: a document changed:\n{doc}");
            }
        }
    }
}

#[test]
fn a_stream_that_is_already_wired_comes_back_unchanged() {
    let Some(helm) = helm() else { return };
    let ours = rendered(&helm, &[]);
    let out = inject(&ours, &[]);
    assert!(out.status.success());
    assert!(out.stdout == ours.as_bytes());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already has nginx-drain"));
}

#[test]
fn refusals_exit_2_with_the_fix_and_write_nothing() {
    let two = "kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: a, image: nginx}\n  - {name: b, image: openresty/openresty}\n";
    let out = inject(two, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--container"), "{err}");
    let out = inject(two, &["--container", "b", "--uid", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pod = &objects(&String::from_utf8(out.stdout).unwrap())[0];
    assert_eq!(
        pod["spec"]["containers"][1]["lifecycle"]["preStop"]["httpGet"]["path"],
        "/prestop"
    );
}

/// Helm 4 takes post-renderers as plugins: the one in `contrib/helm-plugin`
/// runs `nginx-drain inject` from PATH, flags through
/// `--post-renderer-args`.
#[test]
fn inject_works_as_a_helm_post_renderer_plugin() {
    let Some(helm) = helm() else { return };
    let Some(upstream) = upstream_charts() else {
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let env = |cmd: &mut Command| {
        for (k, d) in [
            ("HELM_DATA_HOME", "data"),
            ("HELM_CONFIG_HOME", "config"),
            ("HELM_CACHE_HOME", "cache"),
        ] {
            cmd.env(k, home.path().join(d));
        }
        cmd.env_remove("HELM_PLUGINS");
        let bin = Path::new(env!("CARGO_BIN_EXE_nginx-drain"))
            .parent()
            .unwrap();
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", bin.display()));
    };
    let mut install = Command::new(&helm);
    install.args(["plugin", "install", "contrib/helm-plugin"]);
    env(&mut install);
    let out = install.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut tpl = Command::new(&helm);
    tpl.args(["template", "edge"])
        .arg(upstream.join("ingress-nginx"))
        .args([
            "--post-renderer",
            "nginx-drain",
            "--post-renderer-args=--max-delay=20s",
        ]);
    env(&mut tpl);
    let out = tpl.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objs = objects(&String::from_utf8(out.stdout).unwrap());
    let w = objs
        .iter()
        .find(|o| is_nginx_workload(o))
        .expect("wired by helm");
    let broken = pod_rules::check(w, controller_config(&objs, w));
    assert!(broken.is_empty(), "{broken:#?}");
    let sidecar = &w["spec"]["template"]["spec"]["initContainers"][0];
    assert!(
        sidecar["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--max-delay=20s"),
        "{sidecar}"
    );
}
