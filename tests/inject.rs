//! `nginx-drain inject` (the real binary) on the real upstream charts'
//! renders (`../shared/upstream-charts`): ingress-nginx 4.15.1, NGINX Inc's
//! nginx-ingress 2.7.0, Kong 3.4.1, APISIX 2.14.0, NGINX Gateway Fabric
//! 2.6.7 (its `NginxProxy`), and a plain Deployment, each with a user's own
//! init container, volume and mount that must survive; and this project's
//! chart. Each injected workload passes the API server's
//! rules that schemas miss (`support/pod_rules.rs`) and kubernetes-validate
//! `--strict`; injecting twice changes nothing; two runs agree; documents
//! it does not wire come back byte for byte. Then inject as a Helm 4
//! post-renderer plugin (`contrib/helm-plugin`).
//!
//! Needs helm (NGINX_DRAIN_HELM) and the upstream charts; without them it
//! says it skipped (under CI: fails).

use std::path::Path;
use std::process::Command;

use serde_json::Value;

mod support;
use support::pod_rules;
use support::renders::{
    controller_config, helm, nginx_inc_chart, objects, rendered, run_inject, template,
    upstream_charts, validate_workload,
};

/// The same user's own init container, volume and mount, in each chart's
/// values: Helm's list replacement dropped such entries in an overlay;
/// inject appends, so each must survive.
const USER_INIT: &str = "{name: user-init, image: 'busybox:1.36', command: ['true']}";
const USER_VOLUME: &str = "{name: user-data, emptyDir: {}}";
const USER_MOUNT: &str = "{name: user-data, mountPath: /srv/user-data}";

fn values(template: &str) -> String {
    template
        .replace("INIT", USER_INIT)
        .replace("VOLUME", USER_VOLUME)
        .replace("MOUNT", USER_MOUNT)
}

/// A plain Deployment as a user writes it.
const PLAIN: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: edge}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
      initContainers: [INIT]
      containers:
      - name: nginx
        image: nginxinc/nginx-unprivileged:1.27
        ports: [{name: http, containerPort: 8080}]
        volumeMounts: [MOUNT]
        securityContext: {runAsUser: 101, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
      volumes: [VOLUME]
";

struct Case {
    name: String,
    yaml: String,
    /// Words the stderr must hold (the hook it replaced).
    says: &'static str,
    /// Validate with kubernetes-validate (not for CRDs).
    validate: Option<&'static str>,
}

fn cases(helm: &str, upstream: &Path, scratch: &Path) -> Vec<Case> {
    let file = |name: &str, text: &str| {
        let p = scratch.join(name);
        std::fs::write(&p, values(text)).unwrap();
        p.to_str().unwrap().to_string()
    };
    let ingress_values = file(
        "ingress-nginx.yaml",
        "controller:\n  extraInitContainers: [INIT]\n  extraVolumes: [VOLUME]\n  extraVolumeMounts: [MOUNT]\n",
    );
    let inc_values = file(
        "nginx-ingress.yaml",
        "controller:\n  initContainers: [INIT]\n  volumes: [VOLUME]\n  volumeMounts: [MOUNT]\n",
    );
    let kong_values = file(
        "kong.yaml",
        "deployment:\n  initContainers: [INIT]\n  userDefinedVolumes: [VOLUME]\n  userDefinedVolumeMounts: [MOUNT]\n",
    );
    let apisix_values = file(
        "apisix.yaml",
        "extraInitContainers: [INIT]\nextraVolumes: [VOLUME]\nextraVolumeMounts: [MOUNT]\n",
    );
    let ngf_values = file(
        "ngf.yaml",
        "nginx:\n  pod: {volumes: [VOLUME]}\n  container: {volumeMounts: [MOUNT]}\n  patches:\n  - type: StrategicMerge\n    value: {spec: {template: {spec: {initContainers: [INIT]}}}}\n",
    );
    let ingress = upstream.join("ingress-nginx");
    let inc = nginx_inc_chart(upstream, scratch);
    let mut out = Vec::new();
    for kind in ["Deployment", "DaemonSet"] {
        out.push(Case {
            name: format!("ingress-nginx 4.15.1 {kind}"),
            yaml: template(
                helm,
                &ingress,
                &[
                    "-f",
                    &ingress_values,
                    "--set",
                    &format!("controller.kind={kind}"),
                ],
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
            yaml: template(
                helm,
                &inc,
                &[
                    "-f",
                    &inc_values,
                    "--set",
                    &format!("controller.kind={kind}"),
                ],
            ),
            says: "wired NGINX Ingress Controller",
            validate: Some(kind),
        });
    }
    out.push(Case {
        name: "kong 3.4.1".into(),
        yaml: template(helm, &upstream.join("kong"), &["-f", &kong_values]),
        says: "exec `kong quit --wait=15`",
        validate: Some("deployment"),
    });
    out.push(Case {
        name: "apisix 2.14.0".into(),
        yaml: template(helm, &upstream.join("apisix"), &["-f", &apisix_values]),
        says: "exec `/bin/sh -c sleep 30`",
        validate: Some("deployment"),
    });
    out.push(Case {
        name: "nginx-gateway-fabric 2.6.7".into(),
        yaml: template(
            helm,
            &upstream.join("nginx-gateway-fabric"),
            &["-f", &ngf_values],
        ),
        says: "wired NGINX Gateway Fabric's data plane",
        validate: None,
    });
    out.push(Case {
        name: "a plain Deployment".into(),
        yaml: values(PLAIN),
        says: "wired NGINX container nginx",
        validate: Some("deployment"),
    });
    out
}

/// The user's init container, volume and mount are still in `pod` (the
/// mount on the container that runs NGINX).
fn users_entries_survive(name: &str, pod: &Value) {
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x["name"].as_str().map(str::to_string))
            .collect()
    };
    let inits = names(&pod["initContainers"]);
    assert!(
        inits.contains(&"user-init".to_string()),
        "{name}: {inits:?}"
    );
    assert_eq!(
        inits.last().map(String::as_str),
        Some("nginx-drain"),
        "{name}: appended"
    );
    assert!(
        names(&pod["volumes"]).contains(&"user-data".to_string()),
        "{name}"
    );
    let nginx = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["lifecycle"]["preStop"]["httpGet"]["path"] == "/prestop")
        .expect("the NGINX container");
    assert!(
        names(&nginx["volumeMounts"]).contains(&"user-data".to_string()),
        "{name}: {nginx}"
    );
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
        let out = run_inject(&case.yaml, &[]);
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
            let patches = np["spec"]["kubernetes"]["deployment"]["patches"]
                .as_array()
                .unwrap();
            let patch = &patches.last().unwrap()["value"];
            assert_eq!(
                patch["spec"]["template"]["spec"]["shareProcessNamespace"],
                true
            );
        }
        if let Some(kind) = case.validate {
            validate_workload(&injected, None, kind);
            validate_workload(&injected, Some("1.29.0"), kind);
        }
        if case.validate.is_some() {
            users_entries_survive(name, pod_rules::pod_spec(wired[0]).unwrap());
        } else {
            let np = objs.iter().find(|o| o["kind"] == "NginxProxy").unwrap();
            let d = &np["spec"]["kubernetes"]["deployment"];
            assert_eq!(d["pod"]["volumes"][0]["name"], "user-data", "{name}: {d}");
            assert_eq!(
                d["container"]["volumeMounts"][0]["name"], "user-data",
                "{name}"
            );
            let patches = d["patches"].as_array().unwrap();
            assert_eq!(patches.len(), 2, "{name}: the user's patch and inject's");
            assert_eq!(
                patches[0]["value"]["spec"]["template"]["spec"]["initContainers"][0]["name"],
                "user-init"
            );
        }
        // Idempotent, deterministic, and every document it did not wire
        // is there byte for byte.
        let twice = run_inject(&injected, &[]);
        assert!(twice.status.success());
        assert!(
            twice.stdout == injected.as_bytes(),
            "{name}: a second inject changed it"
        );
        let again = run_inject(&case.yaml, &[]);
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
    let out = run_inject(&ours, &[]);
    assert!(out.status.success());
    assert!(out.stdout == ours.as_bytes());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already has nginx-drain"));
}

#[test]
fn a_plain_file_is_read_from_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deploy.yaml");
    std::fs::write(&file, values(PLAIN)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_nginx-drain"))
        .arg("inject")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objs = objects(&String::from_utf8(out.stdout).unwrap());
    assert!(is_nginx_workload(&objs[0]));
    let missing = Command::new(env!("CARGO_BIN_EXE_nginx-drain"))
        .args(["inject", "/nonexistent/deploy.yaml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("cannot read /nonexistent/deploy.yaml")
    );
}

#[test]
fn refusals_exit_2_with_the_fix_and_write_nothing() {
    let two = "kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: a, image: nginx}\n  - {name: b, image: openresty/openresty}\n";
    let out = run_inject(two, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--container"), "{err}");
    let out = run_inject(two, &["--container", "b", "--uid", "0"]);
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

/// kubectl from the Kubernetes binaries `scripts/kube` builds
/// (NGINX_DRAIN_KUBE_BIN); None, loudly, without them (under CI: fails).
fn kubectl() -> Option<std::path::PathBuf> {
    match std::env::var_os("NGINX_DRAIN_KUBE_BIN") {
        Some(dir) => Some(Path::new(&dir).join("kubectl")),
        None => support::skip_or_fail(
            "inject's YAML cases read by kubectl",
            "no Kubernetes binaries: NGINX_DRAIN_KUBE_BIN (scripts/test sets it)",
        ),
    }
}

/// The objects of a stream as kubectl reads them (`kubectl label --local
/// -o json`: kubectl's own stream reader and YAML-to-JSON, no server; the
/// label it adds taken off again). A `List`'s items come out one by one.
fn kubectl_reads(kubectl: &Path, yaml: &str) -> Vec<Value> {
    use std::io::Write as _;
    let mut child = Command::new(kubectl)
        .args([
            "label",
            "--local",
            "-f",
            "-",
            "-o",
            "json",
            "nginx-drain-probe=1",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl cannot read:\n{yaml}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter::<Value>()
        .map(|o| {
            let mut o = o.unwrap();
            let labels = o["metadata"]["labels"].as_object_mut().unwrap();
            labels.remove("nginx-drain-probe");
            if labels.is_empty() {
                o["metadata"].as_object_mut().unwrap().remove("labels");
            }
            o
        })
        .collect()
}

/// Manifests as people write them (`support/yaml_cases.rs`): inject
/// changes only what it wires, byte for byte around it, and what it writes
/// reads, to the real kubectl, as the input plus the wiring: the same as
/// inject wiring kubectl's own reading of the input (so inject read every
/// value as kubectl does: octal modes, YAML 1.1 booleans, merge keys,
/// tags). Each case's own checks on what kubectl reads.
#[test]
fn manifests_are_edited_without_loss_and_read_as_kubectl_reads_them() {
    let Some(kubectl) = kubectl() else { return };
    for case in support::yaml_cases::YAML_CASES {
        let out = run_inject(case.text, &[]);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{}: {err}", case.name);
        let output = String::from_utf8(out.stdout).unwrap();
        if let Err(e) = support::yaml_cases::only_inserted(case.text, case.replaced, &output) {
            panic!("{}: {e}\n--- output:\n{output}", case.name);
        }
        for says in case.says {
            assert!(
                err.contains(says),
                "{}: notes lack {says:?}: {err}",
                case.name
            );
        }
        assert!(!err.contains("written anew"), "{}: {err}", case.name);
        if !case.kubectl {
            // kubectl's stream reader splits a `%YAML` directive from its
            // document (and fails): the directive stays where it was.
            assert!(
                output.starts_with("%YAML 1.1\n---\n"),
                "{}: {output}",
                case.name
            );
            let again = run_inject(&output, &[]);
            assert_eq!(again.stdout, output.as_bytes(), "{}: twice", case.name);
            println!(
                "{}: edited in place (kubectl cannot read a %YAML stream)",
                case.name
            );
            continue;
        }
        let read = kubectl_reads(&kubectl, &output);
        let as_json: String = kubectl_reads(&kubectl, case.text)
            .iter()
            .map(|o| format!("---\n{o}\n"))
            .collect();
        let expected = kubectl_reads(&kubectl, &support::renders::inject(&as_json));
        assert_eq!(
            read, expected,
            "{}: reads otherwise than kubectl's reading wired\n{output}",
            case.name
        );
        for (i, pointer, want) in case.reads {
            let want: Value = serde_json::from_str(want).unwrap();
            assert_eq!(
                read[*i].pointer(pointer),
                Some(&want),
                "{}: {pointer}\n{output}",
                case.name
            );
        }
        println!(
            "{}: {} objects read by kubectl as the input plus the wiring; {} bytes added, the rest untouched",
            case.name,
            read.len(),
            output.len() as i64 - case.text.len() as i64
        );
    }
}
