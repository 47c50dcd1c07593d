use super::*;

/// The wiring flags at their defaults, with a test image (the webhook's
/// tests wire with these too).
pub(crate) fn opts() -> WiringArgs {
    WiringArgs {
        image: "nginx-drain:test".into(),
        ..WiringArgs::default()
    }
}

fn docs(out: &str) -> Vec<Value> {
    stream::split(out)
        .iter()
        .map(|d| {
            yaml::parse(&d.full())
                .unwrap()
                .map_or(Value::Null, |t| t.root.value)
        })
        .collect()
}

fn args(c: &Value) -> Vec<String> {
    seq(c, "args")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// As ingress-nginx renders it (trimmed): a ConfigMap without the key, and
/// a controller with `/wait-shutdown`, a webhook port and a 300 s grace.
const INGRESS_NGINX: &str = r#"# Source: ingress-nginx/templates/controller-configmap.yaml
apiVersion: v1
kind: ConfigMap
metadata:
  name: edge-controller
data:
  allow-snippet-annotations: "false"
---
# Source: ingress-nginx/templates/controller-service.yaml
apiVersion: v1
kind: Service
metadata:
  name: edge-controller
spec:
  ports:
    - {name: http, port: 80}
---
# Source: ingress-nginx/templates/controller-deployment.yaml
apiVersion: apps/v1
kind: Deployment
metadata:
  name: edge-controller
  namespace: ingress
spec:
  template:
    spec:
      containers:
        - name: controller
          image: registry.k8s.io/ingress-nginx/controller:v1.15.1@sha256:594c
          lifecycle:
            preStop:
              exec:
                command: [/wait-shutdown]
          args:
            - /nginx-ingress-controller
            - --configmap=$(POD_NAMESPACE)/edge-controller
          securityContext: {runAsUser: 101, runAsGroup: 82}
          ports:
            - {name: http, containerPort: 80, protocol: TCP}
            - {name: https, containerPort: 443, protocol: TCP}
            - {name: webhook, containerPort: 8443, protocol: TCP}
          volumeMounts:
            - {name: webhook-cert, mountPath: /usr/local/certificates/}
      initContainers:
        - {name: sysctl, image: busybox, command: [sysctl, -w, net.core.somaxconn=65535]}
      terminationGracePeriodSeconds: 300
      volumes:
        - {name: webhook-cert, secret: {secretName: edge-admission}}
"#;

#[test]
fn ingress_nginx_is_wired_and_nothing_else_is_touched() {
    let out = inject(INGRESS_NGINX, &opts()).unwrap();
    let d = docs(&out.output);
    // The Service is written back byte for byte.
    let svc_in = &stream::split(INGRESS_NGINX)[1];
    assert_eq!(&stream::split(&out.output)[1], svc_in);
    let pod = &d[2]["spec"]["template"]["spec"];
    assert_eq!(pod["shareProcessNamespace"], Value::from(true));
    assert_eq!(pod["terminationGracePeriodSeconds"], Value::from(300));
    // Lists are appended to: the user's init container and volume stay.
    let inits = seq(pod, "initContainers");
    assert_eq!(inits[0]["name"], s("sysctl"));
    assert_eq!(inits[1]["name"], s(SIDECAR));
    assert_eq!(inits[1]["restartPolicy"], s("Always"));
    assert_eq!(seq(pod, "volumes").len(), 1);
    let nginx = &seq(pod, "containers")[0];
    assert_eq!(
        nginx["lifecycle"]["preStop"],
        map([(
            "httpGet",
            map([("path", s("/prestop")), ("port", Value::from(10266))])
        )])
    );
    assert_eq!(seq(nginx, "volumeMounts").len(), 1);
    assert_eq!(
        args(nginx).last().map(String::as_str),
        Some("--post-shutdown-grace-period=0"),
        "appended to the controller's own args"
    );
    let a = args(&inits[1]);
    for want in [
        "--drain-timeout=295s",
        "--grace-period=300s",
        "--port=80",
        "--port=443",
        "--worker-shutdown-timeout=240s",
        "--allow-kubelet=true",
    ] {
        assert!(a.contains(&want.to_string()), "{want}: {a:?}");
    }
    assert!(
        !a.contains(&"--port=8443".to_string()),
        "the webhook is no client port"
    );
    let sc = &inits[1]["securityContext"];
    assert_eq!(sc["runAsUser"], Value::from(101));
    assert_eq!(sc["runAsGroup"], Value::from(82));
    assert_eq!(sc["runAsNonRoot"], Value::from(true));
    // The controller's default (240 s) fits 295 s: written out as it is.
    assert_eq!(d[0]["data"]["worker-shutdown-timeout"], s("240s"));
    assert_eq!(d[0]["data"]["allow-snippet-annotations"], s("false"));
    // Helm's `# Source:` comments stay on the documents inject rewrote.
    assert!(
        out.output
            .contains("# Source: ingress-nginx/templates/controller-deployment.yaml\n")
    );
    let notes = out.notes.join("\n");
    assert!(
        notes.contains("replaced its preStop hook, exec `/wait-shutdown`"),
        "{notes}"
    );
}

#[test]
fn injecting_twice_changes_nothing_and_runs_agree() {
    let once = inject(INGRESS_NGINX, &opts()).unwrap().output;
    let again = inject(INGRESS_NGINX, &opts()).unwrap().output;
    assert_eq!(once, again, "deterministic");
    let twice = inject(&once, &opts()).unwrap();
    assert_eq!(twice.output, once, "idempotent");
    assert!(
        twice
            .notes
            .iter()
            .any(|n| n.contains("already has nginx-drain"))
    );
}

#[test]
fn a_timeout_past_the_budget_is_brought_within_it() {
    // A 60 s grace: budget 55 s, limit 55 - 2.25 - 15 - 1 = 36.75 s.
    let input = INGRESS_NGINX
        .replace(
            "terminationGracePeriodSeconds: 300",
            "terminationGracePeriodSeconds: 60",
        )
        .replace(
            "allow-snippet-annotations: \"false\"",
            "worker-shutdown-timeout: 240s",
        );
    let out = inject(&input, &opts()).unwrap();
    let d = docs(&out.output);
    assert_eq!(d[0]["data"]["worker-shutdown-timeout"], s("36s"));
    let a = args(&seq(&d[2]["spec"]["template"]["spec"], "initContainers")[1]);
    assert!(
        a.contains(&"--worker-shutdown-timeout=36s".to_string()),
        "{a:?}"
    );
    assert!(
        out.notes.iter().any(|n| n.contains("(was \"240s\")")),
        "{:?}",
        out.notes
    );
}

#[test]
fn what_cannot_work_is_refused_with_the_fix() {
    let plain = |containers: &str, extra: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  template:\n    spec:\n{extra}      containers:\n{containers}"
        )
    };
    let cases = [
        (
            plain("        - {name: nginx, image: 'nginx:1.27'}\n", ""),
            "give --uid",
        ),
        (
            plain(
                "        - {name: a, image: 'nginx:1.27'}\n        - {name: b, image: 'openresty/openresty'}\n",
                "",
            ),
            "name the one to drain with --container",
        ),
        (
            plain(
                "        - {name: nginx, image: 'nginx:1.27', securityContext: {runAsUser: 101}}\n",
                "      terminationGracePeriodSeconds: 6\n",
            ),
            "give --grace-period 8 or more",
        ),
        (
            plain(
                "        - {name: nginx, image: 'nginx:1.27', securityContext: {runAsUser: 101}, ports: [{containerPort: 10266}]}\n",
                "",
            ),
            "--hook-port",
        ),
        ("kind: [".to_string(), "is not valid YAML"),
        (
            plain(
                "        - {name: nginx, image: 'nginx:1.27', securityContext: {runAsUser: 101}}\n",
                "      terminationGracePeriodSeconds: -9223372036854775808\n",
            ),
            "is negative (the API server takes it as 1 s): give --grace-period",
        ),
        (
            plain(
                "        - {name: nginx, image: 'nginx:1.27', securityContext: {runAsUser: 101}}\n",
                "      terminationGracePeriodSeconds: 9223372036854775807\n",
            ),
            "is over a day",
        ),
        (
            "apiVersion: apps.kruise.io/v1alpha1\nkind: CloneSet\nmetadata: {name: edge}\nspec:\n  template:\n    spec:\n      containers: [{name: web, image: 'nginx:1.27'}]\n".to_string(),
            "CloneSet edge: runs NGINX (container web at spec.template.spec.containers), but inject does not know the kind CloneSet: wire it by hand",
        ),
    ];
    for (input, fix) in cases {
        let e = inject(&input, &opts()).unwrap_err().to_string();
        assert!(e.contains(fix), "{input}: {e}");
    }
    // With what was missing, the same inputs wire.
    let o = WiringArgs {
        uid: Some(0),
        ..opts()
    };
    let out = inject(
        &plain("        - {name: nginx, image: 'nginx:1.27'}\n", ""),
        &o,
    )
    .unwrap();
    let d = docs(&out.output);
    let c = &seq(&d[0]["spec"]["template"]["spec"], "initContainers")[0];
    assert_eq!(c["securityContext"]["runAsUser"], Value::from(0));
    assert_eq!(c["securityContext"]["runAsNonRoot"], Value::from(false));
}

/// `--container` naming no container of any workload is an error that says
/// so; a workload without it is left alone, with a note when it runs
/// NGINX.
#[test]
fn a_container_name_that_matches_nothing_is_an_error() {
    let two = "kind: Deployment\nmetadata: {name: a}\nspec:\n  template:\n    spec:\n      containers: [{name: web, image: 'nginx:1.27'}]\n---\nkind: Deployment\nmetadata: {name: b}\nspec:\n  template:\n    spec:\n      containers: [{name: proxy, image: 'nginx:1.27'}]\n";
    let o = |name: &str| WiringArgs {
        container: Some(name.into()),
        uid: Some(0),
        ..opts()
    };
    let e = inject(two, &o("ngnix")).unwrap_err().to_string();
    assert!(
        e.contains("--container ngnix: no workload in the input has a container of that name"),
        "{e}"
    );
    let out = inject(two, &o("proxy")).unwrap();
    assert!(
        out.notes
            .iter()
            .any(|n| n
                .contains("Deployment a: left as it is: no container named proxy (it has web)")),
        "{:?}",
        out.notes
    );
    let d = docs(&out.output);
    assert!(d[0]["spec"]["template"]["spec"]["initContainers"].is_null());
    assert!(!d[1]["spec"]["template"]["spec"]["initContainers"].is_null());
}

/// The controller's ConfigMap is found inside a `List`, and in the
/// workload's own namespace, not by its name alone.
#[test]
fn configmaps_are_found_in_lists_and_in_their_namespace() {
    let controller = |ns: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: edge, namespace: {ns}}}\nspec:\n  template:\n    spec:\n      containers:\n      - {{name: controller, image: 'registry.k8s.io/ingress-nginx/controller:v1.15.1', args: ['--configmap=$(POD_NAMESPACE)/edge']}}\n"
        )
    };
    let input = format!(
        "kind: List\nitems:\n- {{kind: ConfigMap, metadata: {{name: edge, namespace: b}}, data: {{worker-shutdown-timeout: 5s}}}}\n- {{kind: ConfigMap, metadata: {{name: edge, namespace: a}}, data: {{}}}}\n---\n{}---\n{}",
        controller("a"),
        controller("b")
    );
    let out = inject(&input, &opts()).unwrap();
    let d = docs(&out.output);
    let items = seq(&d[0], "items");
    assert_eq!(
        items[0]["data"]["worker-shutdown-timeout"],
        Value::from("5s")
    );
    assert_eq!(
        items[1]["data"]["worker-shutdown-timeout"],
        Value::from("6s")
    );
    let told = |doc: &Value| {
        args(&seq(&doc["spec"]["template"]["spec"], "initContainers")[0])
            .into_iter()
            .find(|a| a.starts_with("--worker-shutdown-timeout"))
    };
    assert_eq!(told(&d[1]).as_deref(), Some("--worker-shutdown-timeout=6s"));
    assert_eq!(told(&d[2]).as_deref(), Some("--worker-shutdown-timeout=5s"));
}

/// Jobs run to completion and take no traffic: Kong's migrations run its
/// image, and pass through untouched.
#[test]
fn jobs_running_an_nginx_image_are_left_alone() {
    let job = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: kong-migrations}\nspec:\n  template:\n    spec:\n      containers: [{name: migrations, image: 'kong:3.9', args: [kong, migrations, up]}]\n";
    let out = inject(job, &opts()).unwrap();
    assert_eq!(out.output, job);
}

#[test]
fn workloads_without_nginx_and_other_kinds_pass_through_byte_for_byte() {
    let input = "kind: Deployment\nmetadata: {name: api}\nspec:\n  template:\n    spec:\n      containers: [{name: api, image: 'ghcr.io/x/api:1'}]\n---\nkind: Secret\nstringData: {a: b}  # comment\n---\n# only a comment\n";
    let out = inject(input, &opts()).unwrap();
    assert_eq!(out.output, input);
    assert!(out.notes.is_empty());
}

#[test]
fn kong_and_apisix_lose_their_fixed_waits() {
    let kong = "kind: Deployment\nmetadata: {name: k}\nspec:\n  template:\n    spec:\n      containers:\n      - name: ingress-controller\n        image: kong/kubernetes-ingress-controller:3.5\n      - name: proxy\n        image: kong:3.9\n        lifecycle: {preStop: {exec: {command: [kong, quit, --wait=15]}}}\n        ports:\n        - {name: proxy, containerPort: 8000}\n        - {name: proxy-tls, containerPort: 8443}\n        - {name: status, containerPort: 8100}\n";
    let out = inject(kong, &opts()).unwrap();
    let pod = &docs(&out.output)[0]["spec"]["template"]["spec"];
    let a = args(&seq(pod, "initContainers")[0]);
    assert!(a.contains(&"--port=8000".into()) && a.contains(&"--port=8443".into()));
    assert!(!a.contains(&"--port=8100".into()));
    assert_eq!(
        seq(pod, "initContainers")[0]["securityContext"]["runAsUser"],
        Value::from(1000)
    );
    assert!(
        out.notes.iter().any(|n| n.contains("kong quit --wait=15")),
        "{:?}",
        out.notes
    );
    // Kong sets no worker_shutdown_timeout: written through its injected
    // directive variable, and told to the sidecar.
    let proxy = seq(pod, "containers")
        .iter()
        .find(|c| c["name"] == s("proxy"))
        .unwrap();
    let env: Vec<(String, String)> = seq(proxy, "env")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().into(),
                e["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        env,
        vec![(
            "KONG_NGINX_MAIN_WORKER_SHUTDOWN_TIMEOUT".to_string(),
            "6s".to_string()
        )]
    );
    assert!(a.contains(&"--worker-shutdown-timeout=6s".into()), "{a:?}");
    assert!(
        out.notes
            .iter()
            .any(|n| n
                .contains("KONG_NGINX_MAIN_WORKER_SHUTDOWN_TIMEOUT to 6s (was unset: no timer)")),
        "{:?}",
        out.notes
    );
    let apisix = "kind: Deployment\nmetadata: {name: a}\nspec:\n  template:\n    spec:\n      containers:\n      - name: apisix\n        image: apache/apisix:3.16.0-ubuntu\n        lifecycle: {preStop: {exec: {command: [/bin/sh, -c, sleep 30]}}}\n";
    let out = inject(
        apisix,
        &WiringArgs {
            native: false,
            ..opts()
        },
    )
    .unwrap();
    let pod = &docs(&out.output)[0]["spec"]["template"]["spec"];
    let sidecar = &seq(pod, "containers")[1];
    assert_eq!(sidecar["name"], s(SIDECAR));
    assert!(sidecar["restartPolicy"].is_null(), "a regular container");
    assert_eq!(sidecar["securityContext"]["runAsUser"], Value::from(636));
    assert!(
        out.notes
            .iter()
            .any(|n| n.contains("nginx_config.worker_shutdown_timeout") && n.contains("at most 6s")),
        "{:?}",
        out.notes
    );
}

#[test]
fn allowed_ranges_reach_the_sidecar() {
    let opts = WiringArgs {
        allow_cidrs: vec![
            "10.244.0.1/32".parse().unwrap(),
            "fd00::/64".parse().unwrap(),
        ],
        ..opts()
    };
    let out = inject(INGRESS_NGINX, &opts).unwrap();
    let d = docs(&out.output);
    let a = args(&seq(&d[2]["spec"]["template"]["spec"], "initContainers")[1]);
    assert!(
        a.contains(&"--allow-cidr=10.244.0.1/32".to_string()),
        "{a:?}"
    );
    assert!(a.contains(&"--allow-cidr=fd00::/64".to_string()), "{a:?}");
    assert!(a.contains(&"--allow-kubelet=true".to_string()), "{a:?}");
}

#[test]
fn kongs_own_shutdown_timeout_is_kept_when_it_fits_and_shortened_when_not() {
    let kong = |env: &str| {
        format!(
            "kind: Deployment\nmetadata: {{name: k}}\nspec:\n  template:\n    spec:\n      containers:\n      - name: proxy\n        image: kong:3.9\n        env:\n        - {{name: KONG_DATABASE, value: 'off'}}\n{env}"
        )
    };
    let var = |out: &str| -> Value {
        let d = docs(out);
        let proxy = &seq(&d[0]["spec"]["template"]["spec"], "containers")[0];
        seq(proxy, "env")
            .iter()
            .find(|e| e["name"] == s("KONG_NGINX_MAIN_WORKER_SHUTDOWN_TIMEOUT"))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let sidecar_arg = |out: &str| {
        let d = docs(out);
        args(&seq(&d[0]["spec"]["template"]["spec"], "initContainers")[0])
            .into_iter()
            .find(|a| a.starts_with("--worker-shutdown-timeout"))
    };
    // Fits: kept, and the sidecar told.
    let out = inject(
        &kong("        - {name: KONG_NGINX_MAIN_WORKER_SHUTDOWN_TIMEOUT, value: 4s}\n"),
        &opts(),
    )
    .unwrap();
    assert_eq!(var(&out.output)["value"], s("4s"));
    assert_eq!(
        sidecar_arg(&out.output).as_deref(),
        Some("--worker-shutdown-timeout=4s")
    );
    // Too long for the budget: brought within it, the user's other
    // variables untouched.
    let out = inject(
        &kong("        - {name: KONG_NGINX_MAIN_WORKER_SHUTDOWN_TIMEOUT, value: 60s}\n"),
        &opts(),
    )
    .unwrap();
    assert_eq!(var(&out.output)["value"], s("6s"));
    assert!(out.output.contains("KONG_DATABASE"), "{}", out.output);
    assert!(
        out.notes.iter().any(|n| n.contains("(was \"60s\")")),
        "{:?}",
        out.notes
    );
    // From a ConfigMap or Secret: not touched, the sidecar not told, and
    // the user told what to check.
    let out = inject(
        &kong("        - name: KONG_NGINX_MAIN_WORKER_SHUTDOWN_TIMEOUT\n          valueFrom: {configMapKeyRef: {name: kong-env, key: wst}}\n"),
        &opts(),
    )
    .unwrap();
    assert!(var(&out.output)["value"].is_null());
    assert_eq!(sidecar_arg(&out.output), None);
    assert!(
        out.notes
            .iter()
            .any(|n| n.contains("comes from valueFrom") && n.contains("at most 6s")),
        "{:?}",
        out.notes
    );
}

#[test]
fn gateway_fabric_is_wired_through_its_nginx_proxy() {
    let np = "apiVersion: gateway.nginx.org/v1alpha2\nkind: NginxProxy\nmetadata: {name: proxy-config}\nspec:\n  kubernetes:\n    deployment:\n      replicas: 1\n      container:\n        image: {repository: ghcr.io/nginx/nginx-gateway-fabric/nginx, tag: 2.6.7}\n      patches:\n      - type: Merge\n        value: {metadata: {labels: {team: edge}}}\n";
    let out = inject(np, &opts()).unwrap();
    let d = &docs(&out.output)[0]["spec"]["kubernetes"]["deployment"];
    assert_eq!(d["pod"]["terminationGracePeriodSeconds"], Value::from(30));
    assert_eq!(
        d["container"]["lifecycle"]["preStop"]["httpGet"]["path"],
        s("/prestop")
    );
    assert_eq!(d["container"]["image"]["tag"], s("2.6.7"));
    let patches = seq(d, "patches");
    assert_eq!(patches.len(), 2, "the user's patch stays first");
    let spec = &patches[1]["value"]["spec"]["template"]["spec"];
    assert_eq!(spec["shareProcessNamespace"], Value::from(true));
    assert_eq!(seq(spec, "initContainers")[0]["name"], s(SIDECAR));
    assert_eq!(inject(&out.output, &opts()).unwrap().output, out.output);
    assert!(
        out.notes
            .iter()
            .any(|n| n.contains("SnippetsFilter") && n.contains("at most 6s")),
        "{:?}",
        out.notes
    );
}
