//! The chart on a real cluster: `../shared/cluster-rig` (etcd, API server,
//! controller manager, scheduler, a kubelet on containerd, kube-proxy in
//! iptables mode) on the Kubernetes 1.37 binaries `scripts/kube` builds from
//! upstream Go modules. `helm install` of the chart (3 replicas, the PDB, a
//! ClusterIP Service) into a namespace that enforces the `restricted` Pod
//! Security profile; clients in the rig's network at 100 new connections/s
//! through the ClusterIP, keep-alive clients and downloads in flight, all
//! masqueraded by kube-proxy to the bridge's address, the same address the
//! kubelet's probes and hooks come from; then a rollout, evictions through
//! the Eviction API (the PDB respected) and a scale-down, each asserted from
//! the clients and from every old pod's final status: its report and the
//! containers' exit codes, read from an API watch.
//!
//! Needs root, helm (NGINX_DRAIN_HELM), the project's static binary
//! (`dist/nginx-drain`), the Kubernetes binaries (`scripts/kube`;
//! NGINX_DRAIN_KUBE_BIN) and the rig (NGINX_DRAIN_CLUSTER_RIG, default
//! `../shared/cluster-rig`). Without them it says loudly that it skipped;
//! under CI it fails instead.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testbed::cluster::{BRIDGE_IP, Cluster};
use testbed::rollout::{self, HANG, Phase, Target};

mod support;
use support::renders::{self, CHART_MATRIX, objects, overlay_renders, rendered};

/// How the skip message names this file's cases.
const CASES: &str = "the real-cluster cases";
const NS: &str = "edge";
const RELEASE: &str = "web";
const DEPLOYMENT: &str = "web-nginx-drain";
/// Each download: 192 KiB of `/slow/` at 64 KiB/s, 3 s.
const DOWNLOAD_BYTES: usize = 192 << 10;

fn cluster() -> Option<Cluster> {
    let i = match support::rig_inputs(
        "NGINX_DRAIN_CLUSTER_RIG",
        "cluster-rig",
        "namespaces, containerd, iptables",
    ) {
        Ok(i) => i,
        Err(why) => return support::skip_or_fail(CASES, &why),
    };
    if std::env::var_os("NGINX_DRAIN_HELM").is_none() {
        return support::skip_or_fail(CASES, "no helm: NGINX_DRAIN_HELM (scripts/test sets it)");
    }
    // Not under the project: containerd's overlay snapshots need a plain
    // file system.
    let home = std::env::temp_dir().join("nginx-drain-cluster-rig");
    std::fs::create_dir_all(&home).unwrap();
    Some(Cluster::up(
        &i.dir,
        &home,
        &i.project,
        &i.binary,
        &i.kube_bin,
        &[
            testbed::cluster::nonroot_nginx(),
            // The same NGINX under the name users' Deployments give it
            // (inject and the webhook know NGINX by its image).
            testbed::cluster::ExtraImage {
                tag: PLAIN_NGINX,
                containerfile: "FROM localhost/rig-nginx:1.22.1-nonroot\n",
                files: &[],
            },
        ],
    ))
}

/// The chart's values for the rig: its images (NGINX as UID 101 on 8080,
/// like the chart's default nginx-unprivileged), 3 replicas and the PDB;
/// the chart's defaults pass `restricted` as they are. The rig's CNI gives
/// pods no default route, so the kubelet's address (the bridge) is allowed
/// by hand, as README tells users of such CNIs.
fn chart_values() -> Vec<String> {
    let version = env!("CARGO_PKG_VERSION");
    let bridge = format!(
        "hookAccess.allowCIDRs={{{}/32}}",
        testbed::cluster::BRIDGE_IP
    );
    [
        bridge.as_str(),
        "replicaCount=3",
        "podDisruptionBudget.enabled=true",
        "nginx.image.repository=localhost/rig-nginx",
        "nginx.image.tag=1.22.1-nonroot",
        "nginx.image.pullPolicy=Never",
        "drain.image.repository=localhost/nginx-drain",
        &format!("drain.image.tag={version}"),
        "drain.image.pullPolicy=Never",
        // Each drain's outcome as an Event on its pod (a Role, a
        // ServiceAccount, the token projected into the sidecar only).
        "events.enabled=true",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn install(c: &Cluster) -> Target {
    let helm = std::env::var("NGINX_DRAIN_HELM").unwrap();
    c.kubectl_ok(&["create", "namespace", NS]);
    c.kubectl_ok(&[
        "label",
        "namespace",
        NS,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    ]);
    let mut args = vec![
        helm.clone(),
        "install".into(),
        RELEASE.into(),
        "charts/nginx-drain".into(),
        "--namespace".into(),
        NS.into(),
    ];
    for v in chart_values() {
        args.push("--set".into());
        args.push(v);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    println!("{}", c.sh(&args));
    rollout::ready_target(
        c,
        NS,
        DEPLOYMENT,
        &format!("app.kubernetes.io/instance={RELEASE}"),
        "nginx",
        DOWNLOAD_BYTES,
    )
}

/// Every old pod has one Event from its sidecar, as `kubectl describe pod`
/// lists them (by the pod's name and uid): `Drained`, `Normal`, the
/// report's drain id and message.
fn assert_drain_events(c: &Cluster, p: &Phase, sidecar_log: &str) {
    for pod in &p.pods {
        let out = c.kubectl_ok(&[
            "-n",
            NS,
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={},involvedObject.kind=Pod", pod.name),
            "-o",
            "json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let ours: Vec<&serde_json::Value> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["source"]["component"] == "nginx-drain")
            .collect();
        if ours.len() != 1 {
            let said: Vec<&str> = sidecar_log
                .lines()
                .filter(|l| {
                    let l = l.to_ascii_lowercase();
                    l.contains("event") || l.contains("token") || l.contains("sigterm")
                })
                .collect();
            panic!(
                "{}: one drain Event, not {}: {out}\nthe old sidecars said: {said:#?}",
                pod.name,
                ours.len(),
            );
        }
        let e = ours[0];
        assert_eq!(e["reason"], "Drained", "{e:#}");
        assert_eq!(e["type"], "Normal", "{e:#}");
        assert!(e["involvedObject"]["uid"].is_string(), "{e:#}");
        let id = pod.report["drain_id"].as_str().unwrap();
        let message = e["message"].as_str().unwrap();
        assert!(
            message.contains(id) && message.contains(pod.report["message"].as_str().unwrap()),
            "{}: {message}",
            pod.name
        );
        println!(
            "{}: Event {} {}: {message}",
            pod.name, e["type"], e["reason"]
        );
    }
}

/// What every phase must give the user.
fn assert_clean(name: &str, p: &Phase) {
    assert_clean_with(name, p, &[0]);
}

/// [`assert_clean`], with the NGINX container's exit codes that are not a
/// SIGKILL (a controller that runs NGINX may exit 1 after its drain).
fn assert_clean_with(name: &str, p: &Phase, nginx_exits: &[i64]) {
    let seen = &p.clients;
    let reports: Vec<String> = p.pods.iter().map(|e| e.report.to_string()).collect();
    assert_eq!(
        seen.load.failed(),
        0,
        "{name}: new connections failed: {} of {} ({:?}); reports: {reports:#?}",
        seen.load.failed(),
        seen.load.sent,
        seen.load.examples
    );
    assert!(seen.load.ok > 300, "{name}: {} ok", seen.load.ok);
    assert_eq!(
        seen.keepalive.failed(),
        0,
        "{name}: keep-alive requests failed: {:?}",
        seen.keepalive.examples
    );
    assert!(!seen.downloads.is_empty());
    for d in &seen.downloads {
        assert_eq!(
            *d,
            Ok(DOWNLOAD_BYTES),
            "{name}: every download byte; reports: {reports:#?}"
        );
    }
    for e in &p.pods {
        let outcome = e.report["outcome"].as_str().unwrap_or("no report");
        assert!(
            outcome == "drained" || outcome == "streams_closed",
            "{name}: {} ended {outcome}: {:#}",
            e.name,
            e.report
        );
        assert!(
            e.nginx_exit.is_some_and(|x| nginx_exits.contains(&x)),
            "{name}: {}: NGINX's container exit {:?} (137: SIGKILL)",
            e.name,
            e.nginx_exit
        );
        assert_eq!(
            e.sidecar_exit,
            Some(0),
            "{name}: {}: the sidecar's exit",
            e.name
        );
        // Masqueraded by kube-proxy, the clients share the kubelet's
        // address: learned, and the clients still counted.
        assert_eq!(
            e.report["traffic"]["kubelet_peers"],
            json!([BRIDGE_IP.to_string()]),
            "{name}: {}: {:#}",
            e.name,
            e.report["traffic"]
        );
    }
}

/// The manifest docs/controllers.md gives for wiring by hand (the YAML
/// block after "The wiring by hand"), as users copy it.
fn readme_manifest() -> String {
    let readme = std::fs::read_to_string("docs/controllers.md").unwrap();
    let from = readme
        .find("The wiring by hand")
        .expect("docs/controllers.md's manifest section");
    let block = &readme[from..];
    let start = block.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
    let end = start + block[start..].find("```").unwrap();
    block[start..end].to_string()
}

/// Kinds no API server serves without a CRD that is not installed here.
const NOT_SERVED: [&str; 2] = ["ServiceMonitor", "PrometheusRule"];
/// Kinds the renders hold that live outside any namespace.
const CLUSTER_SCOPED: [&str; 3] = [
    "MutatingWebhookConfiguration",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
];

/// Every render the chart tests check (the chart's value sets, each overlay
/// on its upstream chart), docs/controllers.md's manifest and the webhook's
/// chart, created with `kubectl create --dry-run=server`,
/// each in a namespace of its own that enforces and warns `restricted`:
/// accepted, and no Pod Security warning for a workload's template. Each
/// pod template is also created as a Pod (`--dry-run=server`), where the
/// profile is enforced, not only warned.
fn server_side_dry_run(c: &Cluster) {
    let helm = renders::helm().expect("helm (checked at start)");
    let mut all: Vec<(String, String)> = CHART_MATRIX
        .iter()
        .map(|(name, sets)| (format!("chart, {name}"), rendered(&helm, sets)))
        .collect();
    let scratch = tempfile::tempdir().unwrap();
    if let Some(upstream) = renders::upstream_charts() {
        all.extend(
            overlay_renders(&helm, &upstream, scratch.path())
                .into_iter()
                .map(|r| (r.case, r.yaml)),
        );
    }
    all.push(("docs/controllers.md's manifest".into(), readme_manifest()));
    // The webhook's own chart, as installed by default (self-managed
    // certificate) and with its certificate rotated.
    for (case, sets) in [
        ("webhook chart", &[][..]),
        (
            "webhook chart, tls.rotate",
            &["--set", "tls.rotate=true"][..],
        ),
    ] {
        let yaml = renders::template(&helm, Path::new("charts/nginx-drain-webhook"), sets);
        all.push((case.into(), yaml));
    }
    let mut pods = 0;
    for (n, (case, yaml)) in all.iter().enumerate() {
        let ns = format!("dry-run-{n}");
        c.kubectl_ok(&["create", "namespace", &ns]);
        c.kubectl_ok(&[
            "label",
            "namespace",
            &ns,
            "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/enforce-version=latest",
            "pod-security.kubernetes.io/warn=restricted",
            "pod-security.kubernetes.io/warn-version=latest",
        ]);
        let objs: Vec<Value> = objects(yaml)
            .into_iter()
            .filter(|o| !NOT_SERVED.contains(&o["kind"].as_str().unwrap_or_default()))
            .map(|mut o| {
                let cluster_scoped =
                    CLUSTER_SCOPED.contains(&o["kind"].as_str().unwrap_or_default());
                if !cluster_scoped
                    && (o["metadata"]["namespace"] == renders::NAMESPACE
                        || o["metadata"]["namespace"].is_null())
                {
                    o["metadata"]["namespace"] = json!(ns);
                }
                o
            })
            .collect();
        let list = json!({"apiVersion": "v1", "kind": "List", "items": objs});
        let out = c.kubectl_stdin(
            &["create", "--dry-run=server", "-f", "-"],
            list.to_string().as_bytes(),
        );
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{case}: the API server refused: {said}"
        );
        assert!(
            !said.contains("PodSecurity"),
            "{case}: not restricted: {said}"
        );
        for (i, o) in objs.iter().enumerate() {
            let template = &o["spec"]["template"];
            let spec = if o["kind"] == "CronJob" {
                &o["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            } else {
                &template["spec"]
            };
            if !spec.is_object() {
                continue;
            }
            // Its ServiceAccount exists only in the (dry-run) list: the pod's
            // admission would look it up. It has no bearing on Pod Security.
            let mut spec = spec.clone();
            if let Some(spec) = spec.as_object_mut() {
                spec.remove("serviceAccountName");
                spec.remove("serviceAccount");
            }
            // A StatefulSet's claims become volumes of its pods.
            for claim in o["spec"]["volumeClaimTemplates"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let volume = json!({"name": claim["metadata"]["name"], "emptyDir": {}});
                match spec["volumes"].as_array_mut() {
                    Some(v) => v.push(volume),
                    None => spec["volumes"] = json!([volume]),
                }
            }
            let pod = json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("dry-run-{i}"), "namespace": ns,
                             "labels": template["metadata"]["labels"]},
                "spec": spec});
            let out = c.kubectl_stdin(
                &["create", "--dry-run=server", "-f", "-"],
                pod.to_string().as_bytes(),
            );
            assert!(
                out.status.success(),
                "{case}: {} {}'s pod refused in a restricted namespace: {}",
                o["kind"],
                o["metadata"]["name"],
                String::from_utf8_lossy(&out.stderr)
            );
            pods += 1;
        }
        println!(
            "{case}: {} objects accepted by the API server (dry run), pods restricted",
            objs.len()
        );
    }
    println!(
        "server-side dry run: {} renders, {pods} pod templates accepted in restricted namespaces ({} not served here: no CRD)",
        all.len(),
        NOT_SERVED.join(", ")
    );
}

/// Manifests as people write them (`support/yaml_cases.rs`: octal modes,
/// anchors and merges, tags, Lists, namespaces, CRLF), wired by `inject`
/// and handed to the API server as inject wrote them (`kubectl create
/// --dry-run=server -f -`: kubectl reads the YAML, the server validates):
/// accepted. Not the `%YAML` case (kubectl cannot read that stream) nor the
/// Argo Rollout (no CRD here).
fn inject_cases_dry_run(c: &Cluster) {
    let mut accepted = 0;
    for case in support::yaml_cases::YAML_CASES {
        if !(case.kubectl && case.served) {
            continue;
        }
        let wired = renders::inject(case.text);
        for ns in case.namespaces {
            let _ = c.kubectl_stdin(&["create", "namespace", ns], b"");
        }
        // Objects that name no namespace go to one of their own.
        let mut args = vec!["create", "--dry-run=server", "-f", "-"];
        if case.namespaces.is_empty() {
            let _ = c.kubectl_stdin(&["create", "namespace", "inject-cases"], b"");
            args.extend(["-n", "inject-cases"]);
        }
        let out = c.kubectl_stdin(&args, wired.as_bytes());
        assert!(
            out.status.success(),
            "{}: the API server refused what inject wrote: {}\n{wired}",
            case.name,
            String::from_utf8_lossy(&out.stderr)
        );
        accepted += 1;
    }
    println!("inject's YAML cases: {accepted} outputs accepted by the API server (dry run)");
}

/// POSTs an Eviction for `pod`; Ok on 201, Err(what the API said) else.
fn evict(c: &Cluster, pod: &str) -> Result<(), String> {
    let body = json!({"apiVersion": "policy/v1", "kind": "Eviction",
                      "metadata": {"name": pod, "namespace": NS}});
    let out = c.kubectl_stdin(
        &[
            "create",
            "--raw",
            &format!("/api/v1/namespaces/{NS}/pods/{pod}/eviction"),
            "-f",
            "-",
        ],
        body.to_string().as_bytes(),
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// The Pod Security warnings the API server gives for `yaml`'s objects in
/// a namespace that warns (but does not enforce) `restricted`: one line per
/// workload that would violate it, naming the containers and fields.
fn pod_security_warnings(c: &Cluster, ns: &str, yaml: &str) -> BTreeSet<String> {
    c.kubectl_ok(&["create", "namespace", ns]);
    c.kubectl_ok(&[
        "label",
        "namespace",
        ns,
        "pod-security.kubernetes.io/warn=restricted",
        "pod-security.kubernetes.io/warn-version=latest",
    ]);
    let objs: Vec<Value> = objects(yaml)
        .into_iter()
        .filter(|o| !NOT_SERVED.contains(&o["kind"].as_str().unwrap_or_default()))
        .filter(|o| o["kind"] != "NginxProxy")
        .map(|mut o| {
            o["metadata"]["namespace"] = json!(ns);
            o
        })
        .collect();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objs});
    let out = c.kubectl_stdin(
        &["create", "--dry-run=server", "-f", "-"],
        list.to_string().as_bytes(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "{ns}: the API server refused: {stderr}"
    );
    stderr
        .lines()
        .filter(|l| l.contains("PodSecurity"))
        .map(str::to_string)
        .collect()
}

/// `nginx-drain inject` keeps a pod in the `restricted` profile whenever
/// its NGINX container is: on each upstream chart's render, the real API
/// server's Pod Security warnings after injecting are exactly those
/// before (the controllers' own, if any), and none names the sidecar.
fn inject_adds_no_pod_security_violation(c: &Cluster) {
    let Some(helm) = renders::helm() else { return };
    let Some(upstream) = renders::upstream_charts() else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let inc = renders::nginx_inc_chart(&upstream, scratch.path());
    let charts: [(&str, PathBuf); 4] = [
        ("ingress-nginx", upstream.join("ingress-nginx")),
        ("nginx-ingress", inc),
        ("kong", upstream.join("kong")),
        ("apisix", upstream.join("apisix")),
    ];
    for (n, (name, chart)) in charts.iter().enumerate() {
        let yaml = renders::template(&helm, chart, &[]);
        let injected = renders::inject(&yaml);
        let before = pod_security_warnings(c, &format!("psa-{n}-before"), &yaml);
        let after = pod_security_warnings(c, &format!("psa-{n}-after"), &injected);
        let after: BTreeSet<String> = after
            .into_iter()
            .map(|l| l.replace(&format!("psa-{n}-after"), &format!("psa-{n}-before")))
            .collect();
        println!(
            "{name}: Pod Security restricted warnings before inject {}, after {}",
            before.len(),
            after.len()
        );
        assert!(
            !after.iter().any(|l| l.contains("nginx-drain")),
            "{name}: the sidecar violates restricted: {after:#?}"
        );
        assert_eq!(
            after, before,
            "{name}: inject changed the Pod Security verdict"
        );
    }
}

/// The values both ingress-nginx releases share: no admission webhook (its
/// certificate job's image is not here), 2 replicas, a ClusterIP Service.
const INGRESS_NGINX_SETS: [&str; 6] = [
    "--set",
    "controller.admissionWebhooks.enabled=false",
    "--set",
    "controller.replicaCount=2",
    "--set",
    "controller.service.type=ClusterIP",
];

/// Helm with nginx-drain's post-renderer plugin installed (from
/// `contrib/helm-plugin`, into a Helm home of its own) and the built
/// `nginx-drain` first on PATH, as README tells users.
struct HelmWithPlugin {
    helm: PathBuf,
    env: Vec<String>,
    _home: tempfile::TempDir,
}

impl HelmWithPlugin {
    fn new(c: &Cluster, helm: String) -> HelmWithPlugin {
        let home = tempfile::tempdir().unwrap();
        let bin = Path::new(env!("CARGO_BIN_EXE_nginx-drain"))
            .parent()
            .unwrap();
        let env = vec![
            format!("HELM_DATA_HOME={}", home.path().join("data").display()),
            format!("HELM_CONFIG_HOME={}", home.path().join("config").display()),
            format!("HELM_CACHE_HOME={}", home.path().join("cache").display()),
            format!(
                "PATH={}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        ];
        let h = HelmWithPlugin {
            helm: PathBuf::from(helm),
            env,
            _home: home,
        };
        let plugin = std::env::current_dir().unwrap().join("contrib/helm-plugin");
        h.run(c, &["plugin", "install", plugin.to_str().unwrap()]);
        h
    }

    fn run(&self, c: &Cluster, args: &[&str]) -> String {
        let helm = self.helm.to_str().unwrap();
        let mut all: Vec<&str> = vec!["env"];
        all.extend(self.env.iter().map(String::as_str));
        all.push(helm);
        all.extend_from_slice(args);
        c.sh(&all)
    }
}

/// Helm as a user runs it: an existing ingress-nginx release with values
/// of its own (replicas, a Service annotation, its own volume), upgraded
/// with `--reuse-values --post-renderer nginx-drain` (the Helm 4 plugin in
/// `contrib/helm-plugin`). The release's manifest afterwards is exactly
/// `inject` of the manifest before: no value of the release was lost, and
/// the API server accepted the wired objects.
fn helm_upgrade_with_the_post_renderer_keeps_the_release(c: &Cluster) {
    let Some(helm) = renders::helm() else { return };
    let Some(upstream) = renders::upstream_charts() else {
        return;
    };
    let h = HelmWithPlugin::new(c, helm);
    let helm_in = |args: &[&str]| h.run(c, args);
    let chart = upstream.join("ingress-nginx");
    let chart = chart.to_str().unwrap();
    let ns = "ingress-user";
    helm_in(
        &[
            &["install", "edge", chart, "-n", ns, "--create-namespace"][..],
            &INGRESS_NGINX_SETS,
            &[
                "--set-string",
                "controller.service.annotations.example\\.com/lb=internal",
                "--set",
                "controller.extraVolumes[0].name=user-data",
                "--set",
                "controller.extraVolumes[0].emptyDir.medium=Memory",
            ],
        ]
        .concat(),
    );
    let before = helm_in(&["get", "manifest", "edge", "-n", ns]);
    helm_in(&[
        "upgrade",
        "--install",
        "edge",
        chart,
        "-n",
        ns,
        "--reuse-values",
        "--post-renderer",
        "nginx-drain",
    ]);
    let after = helm_in(&["get", "manifest", "edge", "-n", ns]);
    let key = |o: &Value| {
        format!(
            "{}/{}",
            o["kind"].as_str().unwrap_or_default(),
            o["metadata"]["name"].as_str().unwrap_or_default()
        )
    };
    let sorted = |yaml: &str| {
        let mut v = objects(yaml);
        v.sort_by_key(key);
        v
    };
    let expected = sorted(&renders::inject(&before));
    let got = sorted(&after);
    assert_eq!(got.len(), expected.len(), "the release's objects");
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(
            g,
            e,
            "{}: the upgraded release differs from inject of the release",
            key(g)
        );
    }
    let deploy = c.kubectl_json(&[
        "-n",
        ns,
        "get",
        "deployment",
        "edge-ingress-nginx-controller",
    ]);
    assert_eq!(deploy["spec"]["replicas"], 2, "the release's own value");
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["shareProcessNamespace"], true);
    assert!(
        pod["initContainers"]
            .as_array()
            .is_some_and(|i| i.iter().any(|c| c["name"] == "nginx-drain")),
        "{pod}"
    );
    let svc = c.kubectl_json(&["-n", ns, "get", "service", "edge-ingress-nginx-controller"]);
    assert_eq!(svc["metadata"]["annotations"]["example.com/lb"], "internal");
    println!(
        "helm upgrade --reuse-values --post-renderer nginx-drain: {} objects, each as inject makes it; the API server holds the wired Deployment",
        got.len()
    );
    // Its cluster-scoped objects (the IngressClass `nginx`, cluster roles)
    // go with the release, so that another release of the chart can be
    // installed.
    helm_in(&["uninstall", "edge", "-n", ns]);
    c.kubectl_ok(&["delete", "namespace", ns, "--wait=false"]);
}

/// ingress-nginx's own chart (`../shared/upstream-charts`), installed the
/// way README tells its users: `helm install --post-renderer nginx-drain`,
/// with `--allow-cidr` for this CNI (no default route in pods) and the
/// sidecar's image; the controller's image is the look-alike
/// (`testbed/lookalikes`, named like the upstream repository so that inject
/// knows it), which binds 80 and 443 as UID 101 through the pods' safe
/// sysctl (the real image's binary has cap_net_bind_service). 2 replicas,
/// a ClusterIP Service. The Target for [`rollout::run`].
fn ingress_nginx_release(c: &Cluster) -> Option<Target> {
    let helm = renders::helm()?;
    let upstream = renders::upstream_charts()?;
    let h = HelmWithPlugin::new(c, helm);
    let ns = "front";
    let chart = upstream.join("ingress-nginx");
    let allow = format!("--post-renderer-args=--allow-cidr={BRIDGE_IP}/32");
    let image = format!(
        "--post-renderer-args=--image=localhost/nginx-drain:{}",
        env!("CARGO_PKG_VERSION")
    );
    let out = h.run(
        c,
        &[
            &[
                "install",
                "front",
                chart.to_str().unwrap(),
                "-n",
                ns,
                "--create-namespace",
                "--post-renderer",
                "nginx-drain",
                &allow,
                &image,
            ][..],
            &INGRESS_NGINX_SETS,
            &[
                "--set",
                "controller.image.repository=localhost/ingress-nginx/controller",
                "--set",
                "controller.image.tag=v1.15.1-lookalike",
                "--set",
                "controller.image.digest=",
                "--set",
                "controller.image.pullPolicy=Never",
                "--set-string",
                "controller.sysctls.net\\.ipv4\\.ip_unprivileged_port_start=0",
            ],
        ]
        .concat(),
    );
    println!("{out}");
    Some(rollout::ready_target(
        c,
        ns,
        "front-ingress-nginx-controller",
        "app.kubernetes.io/instance=front,app.kubernetes.io/component=controller",
        "controller",
        DOWNLOAD_BYTES,
    ))
}

/// HAProxy in the rig's network, stopped on drop.
struct Balancer(std::process::Child);

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where HAProxy listens in the rig's network, for the L4 case.
const L4_FRONT: &str = "127.0.0.2";

/// An L4 balancer as an NLB in instance mode is: HAProxy in `mode tcp` in
/// front of the node's NodePort of a LoadBalancer Service with
/// `externalTrafficPolicy: Local`, health-checking kube-proxy's
/// `healthCheckNodePort` (`inter 1s fall 3`). The chart's Deployment rolls
/// under the usual clients, sent to HAProxy: every client connection is
/// one connection to a pod (conntrack keeps a keep-alive client on its old
/// pod until NGINX closes it). Returns the phase and HAProxy's log.
fn haproxy_l4_rollout(c: &Cluster, t: &Target) -> (Phase, String) {
    let selector =
        c.kubectl_json(&["-n", NS, "get", "service", DEPLOYMENT])["spec"]["selector"].clone();
    let svc = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web-l4", "namespace": NS},
        "spec": {
            "type": "LoadBalancer",
            "externalTrafficPolicy": "Local",
            "selector": selector,
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    });
    let out = c.kubectl_stdin(&["apply", "-f", "-"], svc.to_string().as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svc = c.kubectl_json(&["-n", NS, "get", "service", "web-l4"]);
    let node_port = svc["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("a nodePort");
    let health = svc["spec"]["healthCheckNodePort"]
        .as_u64()
        .expect("a healthCheckNodePort (externalTrafficPolicy: Local)");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("haproxy.cfg");
    let node = testbed::cluster::NODE_IP;
    std::fs::write(
        &config,
        format!(
            "global\n  log stdout format raw local0 info\n  maxconn 4096\n\
             defaults\n  mode tcp\n  log global\n  log-format \"conn %ts %s %B\"\n\
             timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n\
             frontend fe\n  bind {L4_FRONT}:80\n  default_backend nodes\n\
             backend nodes\n  option httpchk GET /healthz\n\
             server node {node}:{node_port} check port {health} inter 1s fall 3 rise 2\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("haproxy.log");
    let out = std::fs::File::create(&log).unwrap();
    let _haproxy = Balancer(
        std::process::Command::new("nsenter")
            .arg(format!("--net={}", c.netns().display()))
            .args(["haproxy", "-db", "-f"])
            .arg(&config)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("haproxy (apt-get install haproxy; scripts/test does)"),
    );
    // kube-proxy's NodePort and health check rules, and HAProxy's first
    // checks.
    std::thread::sleep(Duration::from_secs(3));
    let through = Target {
        service_ip: L4_FRONT.parse().unwrap(),
        ..t.clone()
    };
    let p = rollout::run(c, &through, 3, || {
        c.kubectl_ok(&[
            "-n",
            NS,
            "rollout",
            "restart",
            &format!("deployment/{DEPLOYMENT}"),
        ]);
        rollout::rollout_status(c, t);
        "HAProxy mode tcp -> NodePort (externalTrafficPolicy: Local): kubectl rollout restart, rollout finished".into()
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    c.kubectl_ok(&["-n", NS, "delete", "service", "web-l4"]);
    (p, text)
}

#[test]
fn a_real_cluster_rolls_evicts_and_scales_the_chart_without_a_failed_request() {
    let Some(c) = cluster() else { return };
    let started = Instant::now();
    // NGINX_DRAIN_CLUSTER_ONLY=webhook: the webhook's cases alone; =dry-run:
    // the server-side dry runs alone (while working on them; CI runs
    // everything).
    match std::env::var("NGINX_DRAIN_CLUSTER_ONLY").as_deref() {
        Ok("webhook") => {
            webhook_cases(&c);
            return;
        }
        Ok("dry-run") => {
            server_side_dry_run(&c);
            return;
        }
        _ => {}
    }
    // 0. Every render the tests make, accepted by the API server; inject
    //    keeps the upstream charts' Pod Security verdict.
    server_side_dry_run(&c);
    inject_cases_dry_run(&c);
    inject_adds_no_pod_security_violation(&c);
    helm_upgrade_with_the_post_renderer_keeps_the_release(&c);
    let t = install(&c);
    println!(
        "installed in a restricted namespace: 3 pods Ready and routed, ClusterIP {} ({:.1} s after start)",
        t.service_ip,
        started.elapsed().as_secs_f64()
    );

    // The old pods' sidecar logs, kept from their files while they last
    // (for what an Event's absence would need explaining).
    let sidecar_log = tempfile::NamedTempFile::new().unwrap();
    let mut tail = c
        .rig(&[
            "in",
            "sh",
            "-c",
            &format!("exec tail -q -n +1 -F /var/log/pods/{NS}_*/nginx-drain/*.log"),
        ])
        .stdout(sidecar_log.reopen().unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // 1. A rolling update.
    let p = rollout::run(&c, &t, 3, || {
        c.kubectl_ok(&[
            "-n",
            NS,
            "rollout",
            "restart",
            &format!("deployment/{DEPLOYMENT}"),
        ]);
        rollout::rollout_status(&c, &t);
        "kubectl rollout restart, rollout finished".into()
    });
    rollout::print("rollout restart", &p, DOWNLOAD_BYTES);
    assert_clean("rollout", &p);
    assert_eq!(p.pods.len(), 3);
    let _ = tail.kill();
    let _ = tail.wait();
    assert_drain_events(
        &c,
        &p,
        &std::fs::read_to_string(sidecar_log.path()).unwrap(),
    );

    // 2. Evictions through the Eviction API, as `kubectl drain` and cluster
    //    autoscalers make them: every pod, the PDB (minAvailable 1)
    //    refusing what would leave too few.
    let p = rollout::run(&c, &t, 3, || {
        let mut refused = 0;
        let mut refusal = String::new();
        for pod in rollout::pod_names(&c, &t) {
            let deadline = Instant::now() + HANG;
            loop {
                match evict(&c, &pod) {
                    Ok(()) => break,
                    Err(e) => {
                        assert!(
                            e.contains("disruption budget") || e.contains("TooManyRequests"),
                            "evicting {pod}: {e}"
                        );
                        assert!(Instant::now() < deadline, "evicting {pod}: {e}");
                        refused += 1;
                        refusal = e;
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
            }
        }
        rollout::rollout_status(&c, &t);
        format!(
            "3 pods evicted, {refused} evictions refused by the PDB{}",
            if refused > 0 {
                format!(" (\"{}\")", refusal.lines().last().unwrap_or_default())
            } else {
                String::new()
            }
        )
    });
    rollout::print("evictions", &p, DOWNLOAD_BYTES);
    assert_clean("evictions", &p);

    // 3. An L4 balancer (an NLB in instance mode) in front of the node.
    let (p, haproxy) = haproxy_l4_rollout(&c, &t);
    rollout::print("L4 balancer rollout restart", &p, DOWNLOAD_BYTES);
    assert_clean("L4 balancer", &p);
    let conns: Vec<&str> = haproxy
        .lines()
        .filter_map(|l| l.strip_prefix("conn "))
        .collect();
    let failed: Vec<&&str> = conns.iter().filter(|l| l.starts_with('S')).collect();
    println!(
        "L4 balancer: {} connections logged by HAProxy, {} ended by a server error",
        conns.len(),
        failed.len()
    );
    assert!(conns.len() as u64 >= p.clients.load.ok, "{haproxy}");
    assert!(failed.is_empty(), "HAProxy: {failed:?}");

    // 4. A scale-down.
    let p = rollout::run(&c, &t, 2, || {
        c.kubectl_ok(&[
            "-n",
            NS,
            "scale",
            &format!("deployment/{DEPLOYMENT}"),
            "--replicas=1",
        ]);
        "kubectl scale --replicas=1".into()
    });
    rollout::print("scale 3 -> 1", &p, DOWNLOAD_BYTES);
    assert_clean("scale-down", &p);

    // 5. ingress-nginx's own chart wired by the post-renderer, rolled under
    //    the same traffic through its Service. After each drain the
    //    controller's own quit finds NGINX gone ("Error during shutdown",
    //    exit 1, or 0 if its shell still held NGINX's status).
    if let Some(t) = ingress_nginx_release(&c) {
        let p = rollout::run(&c, &t, 2, || {
            c.kubectl_ok(&[
                "-n",
                &t.namespace,
                "rollout",
                "restart",
                &format!("deployment/{}", t.deployment),
            ]);
            rollout::rollout_status(&c, &t);
            "ingress-nginx: kubectl rollout restart, rollout finished".into()
        });
        rollout::print("ingress-nginx rollout restart", &p, DOWNLOAD_BYTES);
        assert_clean_with("ingress-nginx rollout", &p, &[0, 1]);
        assert_eq!(p.pods.len(), 2);
    }

    // 6. The admission webhook: a labelled namespace's plain Deployment
    //    wired at creation and rolled, opt-out and annotation opt-in, the
    //    webhook down, and its certificate rotated while pods are created.
    webhook_cases(&c);

    println!(
        "real-cluster cases: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

const WEBHOOK_NS: &str = "nginx-drain-webhook";
/// NGINX 1.22 as UID 101 on 8080, named as plain NGINX images are.
const PLAIN_NGINX: &str = "localhost/nginx:1.22.1-nonroot";
const WEB_NS: &str = "web";

/// A plain NGINX Deployment and its Service, nothing of nginx-drain in it.
fn plain_deployment(name: &str, replicas: u32) -> String {
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name, "namespace": WEB_NS},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {
                        "metadata": {"labels": {"app": name}},
                        "spec": {
                            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                            "containers": [{
                                "name": "nginx",
                                "image": PLAIN_NGINX,
                                "imagePullPolicy": "Never",
                                "ports": [{"name": "http", "containerPort": 8080}],
                                "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 2},
                                "securityContext": {
                                    "runAsUser": 101, "runAsGroup": 101, "runAsNonRoot": true,
                                    "allowPrivilegeEscalation": false,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                            }],
                        },
                    },
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": WEB_NS},
                "spec": {
                    "selector": {"app": name},
                    "ports": [{"port": 80, "targetPort": "http"}],
                },
            },
        ],
    })
    .to_string()
}

/// The provisioner stand-in's identity: a ServiceAccount that may read
/// ConfigMaps and create Deployments in the web namespace, nothing else.
const PROVISIONER: &str = "system:serviceaccount:nginx-drain-webhook:provisioner";

/// A controller that creates an NGINX Deployment at run time, as NGF's
/// provisioner does for each Gateway: here each ConfigMap labelled
/// `gateway.example/class=nginx` in the web namespace is a Gateway, and the
/// controller (a reconcile loop every 500 ms, as the ServiceAccount
/// [`PROVISIONER`]) creates `<name>-nginx` for it. The webhook must wire its
/// pods: the Deployment itself carries no trace of nginx-drain.
fn provisioned_deployment_is_wired(c: &Cluster) {
    c.kubectl_ok(&["-n", WEBHOOK_NS, "create", "serviceaccount", "provisioner"]);
    c.kubectl_ok(&[
        "-n",
        WEB_NS,
        "create",
        "role",
        "provisioner",
        "--verb=get,list,watch",
        "--resource=configmaps",
    ]);
    c.kubectl_ok(&[
        "-n",
        WEB_NS,
        "create",
        "role",
        "provisioner-deployments",
        "--verb=get,list,create",
        "--resource=deployments.apps",
    ]);
    for role in ["provisioner", "provisioner-deployments"] {
        c.kubectl_ok(&[
            "-n",
            WEB_NS,
            "create",
            "rolebinding",
            role,
            &format!("--role={role}"),
            &format!("--serviceaccount={WEBHOOK_NS}:provisioner"),
        ]);
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    let created = std::thread::scope(|s| {
        let controller = s.spawn(|| {
            let mut created = Vec::new();
            let deadline = Instant::now() + HANG;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let gateways = c.kubectl_json(&[
                    "--as",
                    PROVISIONER,
                    "-n",
                    WEB_NS,
                    "get",
                    "configmaps",
                    "-l",
                    "gateway.example/class=nginx",
                ]);
                for g in gateways["items"].as_array().into_iter().flatten() {
                    let gw = g["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let name = format!("{gw}-nginx");
                    if created.contains(&name) {
                        continue;
                    }
                    let mut d: Value = serde_json::from_str(&plain_deployment(&name, 2)).unwrap();
                    let mut deployment = d["items"][0].take();
                    deployment["metadata"]["ownerReferences"] = json!([{
                        "apiVersion": "v1", "kind": "ConfigMap",
                        "name": gw, "uid": g["metadata"]["uid"],
                    }]);
                    let out = c.kubectl_stdin(
                        &["--as", PROVISIONER, "create", "-f", "-"],
                        deployment.to_string().as_bytes(),
                    );
                    assert!(
                        out.status.success(),
                        "the provisioner could not create {name}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    created.push(name);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            created
        });
        c.kubectl_ok(&[
            "-n",
            WEB_NS,
            "create",
            "configmap",
            "edge",
            "--from-literal=listeners=http:80",
        ]);
        c.kubectl_ok(&[
            "-n",
            WEB_NS,
            "label",
            "configmap",
            "edge",
            "gateway.example/class=nginx",
        ]);
        let deadline = Instant::now() + HANG;
        while Instant::now() < deadline
            && c.kubectl(&["-n", WEB_NS, "get", "deployment", "edge-nginx"])
                .status
                .code()
                != Some(0)
        {
            std::thread::sleep(Duration::from_millis(250));
        }
        c.kubectl_ok(&[
            "-n",
            WEB_NS,
            "rollout",
            "status",
            "deployment/edge-nginx",
            "--timeout=180s",
        ]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        controller.join().expect("the provisioner")
    });
    assert_eq!(
        created,
        ["edge-nginx"],
        "the provisioner made one Deployment"
    );
    let d = c.kubectl_json(&["-n", WEB_NS, "get", "deployment", "edge-nginx"]);
    assert!(
        !d["spec"]["template"].to_string().contains("nginx-drain"),
        "the Deployment as its controller wrote it: {d:#}"
    );
    let pods = web_pods(c, "edge-nginx");
    assert!(
        pods.len() == 2 && pods.iter().all(|(_, w)| *w),
        "the provisioned Deployment's pods wired by the webhook (and Ready: the sidecar's wiring checks passed): {pods:?}\n{}",
        webhook_diagnostics(c)
    );
    println!(
        "provisioner stand-in: Deployment edge-nginx created by {PROVISIONER}; both pods wired and Ready"
    );
    c.kubectl_ok(&["-n", WEB_NS, "delete", "configmap", "edge", "--wait=false"]);
}

/// The pods of `app` in the web namespace: (name, wired).
fn web_pods(c: &Cluster, app: &str) -> Vec<(String, bool)> {
    let v = c.kubectl_json(&["-n", WEB_NS, "get", "pods", "-l", &format!("app={app}")]);
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            let wired = p["spec"]["initContainers"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["name"] == "nginx-drain"))
                && p["metadata"]["annotations"]["nginx-drain.io/injected"].is_string();
            (p["metadata"]["name"].as_str().unwrap().to_string(), wired)
        })
        .collect()
}

fn webhook_helm(c: &Cluster, action: &str, extra: &[&str]) -> String {
    let helm = std::env::var("NGINX_DRAIN_HELM").unwrap();
    let version = env!("CARGO_PKG_VERSION");
    let image_tag = format!("image.tag={version}");
    let sidecar = format!("wiring.image=localhost/nginx-drain:{version}");
    let bridge = format!("wiring.allowCIDRs={{{BRIDGE_IP}/32}}");
    let mut args = vec![
        helm.as_str(),
        action,
        "ndw",
        "charts/nginx-drain-webhook",
        "--namespace",
        WEBHOOK_NS,
        "--set",
        "image.repository=localhost/nginx-drain",
        "--set",
        &image_tag,
        "--set",
        "image.pullPolicy=Never",
        "--set",
        &sidecar,
        "--set",
        &bridge,
        "--wait",
        "--timeout",
        "180s",
    ];
    args.extend_from_slice(extra);
    c.sh(&args)
}

/// What the webhook's pods logged and how the API server sees its
/// configuration, for a failure's message.
fn webhook_diagnostics(c: &Cluster) -> String {
    let logs = c
        .rig(&[
            "in",
            "sh",
            "-c",
            &format!("tail -n 15 /var/log/pods/{WEBHOOK_NS}_*/webhook/*.log; grep -i webhook \"$RIG\"/logs/kube-apiserver.log | tail -n 5"),
        ])
        .output()
        .unwrap();
    let config = c.kubectl(&["get", "mutatingwebhookconfigurations", "-o", "yaml"]);
    let policy = c.kubectl(&["get", "validatingadmissionpolicies", "-o", "yaml"]);
    format!(
        "webhook logs and the API server's: {}{}\nconfiguration: {}\npolicies: {}{}",
        String::from_utf8_lossy(&logs.stdout),
        String::from_utf8_lossy(&logs.stderr),
        String::from_utf8_lossy(&config.stdout),
        String::from_utf8_lossy(&policy.stdout),
        String::from_utf8_lossy(&policy.stderr)
    )
}

fn webhook_cases(c: &Cluster) {
    let started = Instant::now();
    c.kubectl_ok(&["create", "namespace", WEBHOOK_NS]);
    c.kubectl_ok(&[
        "label",
        "namespace",
        WEBHOOK_NS,
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    println!("{}", webhook_helm(c, "install", &[]));
    c.kubectl_ok(&["create", "namespace", WEB_NS]);
    c.kubectl_ok(&[
        "label",
        "namespace",
        WEB_NS,
        "nginx-drain.io/inject=enabled",
        "pod-security.kubernetes.io/enforce=restricted",
    ]);

    // A plain Deployment in the labelled namespace: wired at creation, and
    // rolled under traffic without a failed request.
    let out = c.kubectl_stdin(
        &["apply", "-f", "-"],
        plain_deployment("plain", 3).as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = rollout::ready_target(c, WEB_NS, "plain", "app=plain", "nginx", DOWNLOAD_BYTES);
    let pods = web_pods(c, "plain");
    assert!(
        pods.len() == 3 && pods.iter().all(|(_, w)| *w),
        "every pod wired by the webhook: {pods:?}\n{}",
        webhook_diagnostics(c)
    );
    let p = rollout::run(c, &t, 3, || {
        c.kubectl_ok(&["-n", WEB_NS, "rollout", "restart", "deployment/plain"]);
        rollout::rollout_status(c, &t);
        "webhook-wired Deployment: kubectl rollout restart, rollout finished".into()
    });
    rollout::print("webhook-wired rollout restart", &p, DOWNLOAD_BYTES);
    assert_clean("webhook-wired rollout", &p);

    // A Deployment that no one rendered: a small controller (standing in
    // for NGINX Gateway Fabric's provisioner) creates one per Gateway it
    // sees, as its own ServiceAccount; the webhook wires its pods.
    provisioned_deployment_is_wired(c);

    // Opt-out by annotation; opt-in by annotation elsewhere.
    let pod = |ns: &str, name: &str, annotation: Option<&str>| {
        let mut v = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
            "spec": {
                // Admission is what is tested: the pods never run.
                "nodeSelector": {"nginx-drain.io/test": "never-scheduled"},
                "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "nginx",
                    "image": PLAIN_NGINX,
                    "imagePullPolicy": "Never",
                    "ports": [{"containerPort": 8080}],
                    "securityContext": {
                        "runAsUser": 101, "runAsNonRoot": true,
                        "allowPrivilegeEscalation": false,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }],
            },
        });
        if let Some(a) = annotation {
            v["metadata"]["annotations"] = json!({"nginx-drain.io/inject": a});
        }
        v.to_string()
    };
    let create = |yaml: String| {
        let out = c.kubectl_stdin(&["create", "-f", "-", "-o", "json"], yaml.as_bytes());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let warnings = String::from_utf8_lossy(&out.stderr).into_owned();
        let wired = v["spec"]["initContainers"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["name"] == "nginx-drain"));
        (wired, warnings)
    };
    let (wired, _) = create(pod(WEB_NS, "opted-out", Some("disabled")));
    assert!(!wired, "the opt-out annotation is honoured");
    c.kubectl_ok(&["create", "namespace", "elsewhere"]);
    let (wired, _) = create(pod("elsewhere", "not-asked", None));
    assert!(
        !wired,
        "outside a labelled namespace, only the annotation opts in"
    );
    let (wired, _) = create(pod("elsewhere", "asked", Some("enabled")));
    assert!(wired, "the opt-in annotation is honoured");
    // A pod it cannot wire: admitted unchanged, the warning says why.
    let mut short = serde_json::from_str::<Value>(&pod(WEB_NS, "short-grace", None)).unwrap();
    short["spec"]["terminationGracePeriodSeconds"] = json!(4);
    let (wired, warnings) = create(short.to_string());
    assert!(!wired);
    assert!(
        warnings.contains("nginx-drain: not wired") && warnings.contains("--grace-period"),
        "kubectl shows why: {warnings}"
    );
    assert!(
        !warnings.contains("did not answer"),
        "a pod the webhook reviewed is not said to be unseen: {warnings}"
    );

    // Rotation: new CA and certificate (the bundle keeps the old CA) while
    // pods are created, until both replicas serve the new pair.
    // The replicas that loaded a new pair, by their log files (`kubectl
    // logs` cannot reach the rig's kubelet by its name).
    let reloaded = |c: &Cluster| {
        let out = c
            .rig(&[
                "in",
                "sh",
                "-c",
                &format!("grep -l 'serving certificate reloaded' /var/log/pods/{WEBHOOK_NS}_*/webhook/*.log | wc -l"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<usize>()
            .unwrap_or(0)
    };
    println!(
        "{}",
        webhook_helm(c, "upgrade", &["--set", "tls.rotate=true"])
    );
    let rotated = Instant::now();
    let mut created = 0;
    let mut unwired = Vec::new();
    while created < 200 {
        created += 1;
        let name = format!("during-rotation-{created}");
        let (wired, warnings) = create(pod(WEB_NS, &name, None));
        if !wired {
            unwired.push(format!("{name}: {warnings}"));
        }
        if reloaded(c) >= 2 {
            // A few more on the new pair.
            for k in 0..3 {
                let name = format!("after-rotation-{k}");
                let (wired, warnings) = create(pod(WEB_NS, &name, None));
                if !wired {
                    unwired.push(format!("{name}: {warnings}"));
                }
            }
            break;
        }
        assert!(
            rotated.elapsed() < HANG,
            "the webhook never loaded the rotated certificate"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    println!(
        "webhook rotation: {created} pods created while the replicas loaded the new pair ({:.0} s), {} unwired",
        rotated.elapsed().as_secs_f64(),
        unwired.len()
    );
    assert!(
        unwired.is_empty(),
        "admissions failed during rotation: {unwired:#?}"
    );

    // The webhook down: pods are still created, unwired.
    c.kubectl_ok(&[
        "-n",
        WEBHOOK_NS,
        "scale",
        "deployment/ndw-nginx-drain-webhook",
        "--replicas=0",
    ]);
    let deadline = Instant::now() + HANG;
    while !c.kubectl_json(&[
        "-n",
        WEBHOOK_NS,
        "get",
        "endpoints",
        "ndw-nginx-drain-webhook",
    ])["subsets"]
        .is_null()
    {
        assert!(
            Instant::now() < deadline,
            "the webhook's endpoints never emptied"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (wired, warnings) = create(pod(WEB_NS, "while-down", None));
    assert!(!wired, "created unwired while the webhook is down");
    println!(
        "webhook down: the pod was created unwired; kubectl said: {:?}",
        warnings.trim()
    );
    // The chart's admission policy, run by the API server itself, says so.
    assert!(
        warnings.contains("nginx-drain: not wired: the webhook")
            && warnings.contains("did not answer"),
        "kubectl warns of a pod created unwired while the webhook was down: {warnings:?}\n{}",
        webhook_diagnostics(c)
    );
    println!("webhook cases: {:.1} s", started.elapsed().as_secs_f64());
}
