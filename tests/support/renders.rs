//! Every render the tests make of the chart and of the overlays on the
//! upstream charts, in one place: the chart's checks (`tests/chart.rs`) and
//! the real API server's dry run (`tests/cluster.rs`) see the same objects.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub const CHART: &str = "charts/nginx-drain";
/// The namespace every render is made for.
pub const NAMESPACE: &str = "edge";

/// `helm` (NGINX_DRAIN_HELM); None, loudly, outside CI; a failure under CI.
pub fn helm() -> Option<String> {
    match std::env::var("NGINX_DRAIN_HELM") {
        Ok(h) if !h.is_empty() => Some(h),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "NGINX_DRAIN_HELM is not set under CI: scripts/test installs helm and sets it"
            );
            super::skipped("chart tests need helm; run scripts/test (it installs helm)");
            None
        }
    }
}

/// The chart's value sets that the tests render, each by name.
pub const CHART_MATRIX: [(&str, &[&str]); 10] = [
    (
        "your own nginx",
        &["charts/nginx-drain/examples/own-nginx-values.yaml"],
    ),
    (
        "kubernetes older than 1.29",
        &["sidecar.native=false", "--kube-version=1.28.0"],
    ),
    ("defaults", &[]),
    ("regular sidecar", &["sidecar.native=false"]),
    (
        "token on top",
        &["token.enabled=true", "token.value=s3cr3t-token"],
    ),
    (
        "network policy",
        &[
            "networkPolicy.enabled=true",
            "networkPolicy.hookFromCIDRs={10.0.0.0/16}",
        ],
    ),
    ("service monitor", &["serviceMonitor.enabled=true"]),
    ("drain events", &["events.enabled=true"]),
    (
        "alerts and dashboard",
        &["prometheusRule.enabled=true", "dashboard.enabled=true"],
    ),
    (
        "pdb, longer grace",
        &[
            "podDisruptionBudget.enabled=true",
            "terminationGracePeriodSeconds=60",
            "drain.maxDelay=40s",
        ],
    ),
];

/// `helm template web CHART --namespace edge --set ...` (`-f FILE` for an
/// entry that names a `.yaml` file; an entry starting `--` is a flag).
pub fn render(helm: &str, sets: &[&str]) -> Output {
    let mut cmd = Command::new(helm);
    cmd.args(["template", "web", CHART, "--namespace", NAMESPACE]);
    for s in sets {
        if s.starts_with("--") {
            cmd.arg(s);
        } else {
            let flag = if s.ends_with(".yaml") { "-f" } else { "--set" };
            cmd.args([flag, s]);
        }
    }
    cmd.output().expect("run helm")
}

/// [`render`], which must succeed; the YAML.
pub fn rendered(helm: &str, sets: &[&str]) -> String {
    let out = render(helm, sets);
    assert!(
        out.status.success(),
        "helm template {sets:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The rendered objects as JSON, via PyYAML.
pub fn objects(yaml: &str) -> Vec<Value> {
    let mut py = Command::new("python3")
        .args(["-c", "import sys, json, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with PyYAML");
    py.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Where the unmodified upstream charts are: NGINX_DRAIN_UPSTREAM_CHARTS,
/// else `../shared/upstream-charts` beside this checkout. None, loudly,
/// outside CI; a failure under CI.
pub fn upstream_charts() -> Option<PathBuf> {
    let dir = std::env::var_os("NGINX_DRAIN_UPSTREAM_CHARTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new("..").join("shared").join("upstream-charts"));
    if dir.join("ingress-nginx").is_dir() && dir.join("nginx-ingress").is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the upstream charts are not at {}: under CI the overlays must be rendered against them; set NGINX_DRAIN_UPSTREAM_CHARTS",
        dir.display()
    );
    super::skipped(&format!(
        "the overlays were not rendered against the upstream charts: none at {}; set NGINX_DRAIN_UPSTREAM_CHARTS to the folder holding ingress-nginx/ and nginx-ingress/",
        dir.display()
    ));
    None
}

/// A copy of NGINX Inc's chart whose schema loads its Kubernetes
/// definitions from the local file instead of a URL (offline), so that
/// `helm template` still checks the values against the schema.
pub fn nginx_inc_chart(upstream: &Path, into: &Path) -> PathBuf {
    let chart = into.join("nginx-ingress");
    let ok = Command::new("cp")
        .arg("-r")
        .arg(upstream.join("nginx-ingress"))
        .arg(&chart)
        .status()
        .unwrap();
    assert!(ok.success());
    let defs = std::fs::canonicalize(upstream.join("nginx-ingress-schema-definitions-1.36.0.json"))
        .expect("the local schema definitions beside the charts");
    let schema = chart.join("values.schema.json");
    let _ = Command::new("chmod")
        .arg("-R")
        .arg("u+w")
        .arg(&chart)
        .status();
    let text = std::fs::read_to_string(&schema).unwrap();
    let url = "https://raw.githubusercontent.com/nginxinc/kubernetes-json-schema/master/v1.36.1/_definitions.json";
    assert!(
        text.contains(url),
        "the schema's $refs moved: update this test"
    );
    std::fs::write(
        &schema,
        text.replace(url, &format!("file://{}", defs.display())),
    )
    .unwrap();
    chart
}

/// One overlay rendered on an upstream chart.
pub struct OverlayRender {
    /// `ingress-nginx 4.15.1 kind=DaemonSet`.
    pub case: String,
    /// The controller's workload kind, lower-case.
    pub workload_kind: String,
    pub yaml: String,
}

/// Each overlay in `charts/nginx-drain/examples/` on its upstream chart,
/// for every controller kind: 5 renders.
/// `scratch` holds the offline copy of NGINX Inc's chart.
pub fn overlay_renders(helm: &str, upstream: &Path, scratch: &Path) -> Vec<OverlayRender> {
    let inc = nginx_inc_chart(upstream, scratch);
    let ingress_nginx = upstream.join("ingress-nginx");
    let charts: [(&str, &Path, &str, &[&str]); 2] = [
        (
            "ingress-nginx 4.15.1",
            &ingress_nginx,
            "ingress-nginx-values.yaml",
            &["Deployment", "DaemonSet"],
        ),
        (
            "nginx-ingress 2.7.0",
            &inc,
            "nginx-inc-values.yaml",
            &["deployment", "daemonset", "statefulset"],
        ),
    ];
    let mut renders = Vec::new();
    for (chart_name, chart, overlay, kinds) in charts {
        let overlay = format!("{CHART}/examples/{overlay}");
        for kind_value in kinds {
            let out = Command::new(helm)
                .args(["template", "edge"])
                .arg(chart)
                .args(["--namespace", NAMESPACE, "-f", &overlay])
                .args(["--set", &format!("controller.kind={kind_value}")])
                .output()
                .expect("run helm");
            let case = format!("{chart_name} kind={kind_value}");
            assert!(
                out.status.success(),
                "{case}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            renders.push(OverlayRender {
                case,
                workload_kind: kind_value.to_lowercase(),
                yaml: String::from_utf8(out.stdout).unwrap(),
            });
        }
    }
    renders
}

/// kubernetes-validate --strict at `version` (None: the newest it knows),
/// which must have seen a `workload` (lower-case kind).
pub fn validate_workload(yaml: &str, version: Option<&str>, workload: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, yaml).unwrap();
    let mut cmd = Command::new("kubernetes-validate");
    cmd.arg("--strict");
    if let Some(v) = version {
        cmd.args(["-k", v]);
    }
    let out = cmd
        .arg(&file)
        .output()
        .expect("kubernetes-validate (pip install kubernetes-validate)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("ERROR"),
        "{version:?}: {text}"
    );
    // It passes empty input: make sure it saw the objects.
    assert!(
        text.contains(&format!("passed for resource {workload}/")),
        "{text}"
    );
}

/// The ConfigMap the controller reads its NGINX configuration from (named
/// in its `--configmap` or `-nginx-configmaps` argument).
pub fn controller_config<'a>(objs: &'a [Value], workload: &Value) -> Option<&'a Value> {
    let containers = workload["spec"]["template"]["spec"]["containers"].as_array()?;
    let name = containers
        .iter()
        .flat_map(|c| c["args"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .find_map(|a| {
            let (flag, value) = a.split_once('=')?;
            flag.trim_start_matches('-')
                .starts_with("configmap")
                .then(|| value.rsplit('/').next().unwrap_or(value).to_string())
                .or_else(|| {
                    flag.ends_with("nginx-configmaps")
                        .then(|| value.rsplit('/').next().unwrap_or(value).to_string())
                })
        })?;
    objs.iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == name.as_str())
        .map(|c| &c["data"])
}

/// `nginx-drain inject ARGS` (this package's binary) with `yaml` on its
/// stdin: whatever it answers.
pub fn run_inject(yaml: &str, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nginx-drain"))
        .arg("inject")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nginx-drain inject");
    let mut stdin = child.stdin.take().unwrap();
    let text = yaml.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    out
}

/// [`run_inject`] with no flags, which must succeed; the injected stream.
pub fn inject(yaml: &str) -> String {
    let out = run_inject(yaml, &[]);
    assert!(
        out.status.success(),
        "inject: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `helm template edge CHART --namespace edge ARGS`, which must succeed.
pub fn template(helm: &str, chart: &Path, args: &[&str]) -> String {
    let out = Command::new(helm)
        .args(["template", "edge"])
        .arg(chart)
        .args(["--namespace", NAMESPACE])
        .args(args)
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm template {}: {}",
        chart.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
