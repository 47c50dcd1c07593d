//! The controllers' pods for the kubelet rig (`tests/controllers.rs`,
//! `benches/controllers.rs`): each upstream chart's render, optionally
//! injected, made a static pod with the look-alike images of
//! `testbed/lookalikes`.

use serde_json::{Value, json};

use std::time::Duration;

use super::kubelet_rig::{DOWNLOAD_BYTES, Plan};
use super::renders::{helm, inject, objects, upstream_charts};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A controller of the rig's cases: its chart, the container that runs
/// NGINX, NGINX's client port, and what its look-alike needs.
pub struct Controller {
    /// As the tables name it (with the chart's version).
    pub name: &'static str,
    /// The chart's folder in `../shared/upstream-charts`.
    pub chart: &'static str,
    /// The short name of its pods.
    pub short: &'static str,
    /// The container that runs NGINX.
    pub nginx: &'static str,
    pub port: u16,
}

pub const CONTROLLERS: [Controller; 5] = [
    Controller {
        name: "NGINX Gateway Fabric 2.6.7",
        chart: "nginx-gateway-fabric",
        short: "ngf",
        nginx: "nginx",
        port: 8080,
    },
    Controller {
        name: "Kong 3.4.1",
        chart: "kong",
        short: "kong",
        nginx: "proxy",
        port: 8000,
    },
    Controller {
        name: "APISIX 2.14.0",
        chart: "apisix",
        short: "apisix",
        nginx: "apisix",
        port: 9080,
    },
    Controller {
        name: "ingress-nginx 4.15.1",
        chart: "ingress-nginx",
        short: "ingress-nginx",
        nginx: "controller",
        port: 80,
    },
    Controller {
        name: "NGINX Ingress Controller 2.7.0",
        chart: "nginx-ingress",
        short: "nginx-ingress",
        nginx: "nginx-ingress",
        port: 80,
    },
];

/// The traffic of every controller case, in the test and the benchmark
/// alike: 50 new connections/s from 2 s before the deletion until 3 s
/// after it, 4 keep-alive clients, 2 slow downloads and one WebSocket, to
/// NGINX's `port`.
pub fn traffic(port: u16) -> Plan {
    Plan {
        rate: 50.0,
        downloads: 2,
        lead: Duration::from_secs(2),
        lag: Duration::from_secs(3),
        download_bytes: DOWNLOAD_BYTES,
        port,
        keepalive: 4,
        websocket: true,
    }
}

/// The controller's pod as its chart renders it (wired by `inject` when
/// `wired`), made the rig's static pod `case` with the look-alike images.
pub fn controller_pod(c: &Controller, wired: bool, case: &str) -> Value {
    if c.chart == "nginx-gateway-fabric" {
        let (np, _) = chart_spec(c.chart, "NginxProxy", wired);
        let mut p = gateway_fabric_pod(&np);
        p["metadata"]["name"] = json!(case);
        p["metadata"]["labels"]["app"] = json!(case);
        return p;
    }
    let (spec, rendered) = chart_spec(c.chart, "Deployment", wired);
    let (images, drop): (&[(&str, &str)], &[&str]) = match c.chart {
        "kong" => (
            &[
                ("proxy", "localhost/lookalike-kong:3.9"),
                ("clear-stale-pid", "localhost/lookalike-kong:3.9"),
            ],
            &[],
        ),
        // APISIX's etcd is not in the rig: its init container waits for it.
        "apisix" => (
            &[("apisix", "localhost/lookalike-apisix:3.16.0")],
            &["wait-etcd"],
        ),
        "ingress-nginx" => (
            &[(
                "controller",
                "localhost/ingress-nginx/controller:v1.15.1-lookalike",
            )],
            &[],
        ),
        "nginx-ingress" => (
            &[("nginx-ingress", "localhost/lookalike-nginx-ingress:5.6.0")],
            &[],
        ),
        other => panic!("no look-alike for {other}"),
    };
    let mut p = static_pod(case, &spec, images, drop);
    if matches!(c.chart, "ingress-nginx" | "nginx-ingress") {
        allow_low_ports(&mut p);
        configmap_to_env(&mut p, c.nginx, &rendered);
    }
    p
}

/// The controller's ConfigMap key `worker-shutdown-timeout` (as rendered,
/// and as inject wrote it) given to its look-alike as
/// `CONFIGMAP_WORKER_SHUTDOWN_TIMEOUT`: the real controllers read their
/// ConfigMap from the API server, which a static pod has not.
pub fn configmap_to_env(pod: &mut Value, container: &str, rendered: &str) {
    let Some(value) = objects(rendered)
        .iter()
        .filter(|o| o["kind"] == "ConfigMap")
        .find_map(|o| {
            o["data"]["worker-shutdown-timeout"]
                .as_str()
                .map(str::to_string)
        })
    else {
        return;
    };
    let c = pod["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == container)
        .unwrap_or_else(|| panic!("no container {container}"));
    if !c["env"].is_array() {
        c["env"] = json!([]);
    }
    c["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "CONFIGMAP_WORKER_SHUTDOWN_TIMEOUT", "value": value}));
}

/// A rendered (and injected) pod spec made a static pod of the rig:
/// `images` names the look-alike for each of the controller's containers
/// (others become the busybox stand-in), `drop` the init containers that
/// wait for what the rig does not run (APISIX's etcd).
pub fn static_pod(name: &str, spec: &Value, images: &[(&str, &str)], drop: &[&str]) -> Value {
    let mut spec = spec.clone();
    for key in ["initContainers", "containers"] {
        let Some(list) = spec[key].as_array_mut() else {
            continue;
        };
        list.retain(|c| !drop.contains(&c["name"].as_str().unwrap_or_default()));
        for c in list.iter_mut() {
            let n = c["name"].as_str().unwrap_or_default().to_string();
            if n == "nginx-drain" {
                c["image"] = json!(format!("localhost/nginx-drain:{VERSION}"));
            } else if let Some((_, image)) = images.iter().find(|(cn, _)| *cn == n) {
                c["image"] = json!(image);
            } else {
                c["image"] = json!("localhost/lookalike-aux:1");
                let m = c.as_object_mut().unwrap();
                for k in [
                    "command",
                    "args",
                    "readinessProbe",
                    "livenessProbe",
                    "startupProbe",
                ] {
                    m.remove(k);
                }
            }
            c["imagePullPolicy"] = json!("Never");
        }
    }
    if let Some(volumes) = spec["volumes"].as_array_mut() {
        for v in volumes {
            if v.get("emptyDir").is_none() {
                *v = json!({"name": v["name"], "emptyDir": {}});
            }
        }
    }
    let m = spec.as_object_mut().unwrap();
    for k in [
        "serviceAccountName",
        "serviceAccount",
        "affinity",
        "topologySpreadConstraints",
    ] {
        m.remove(k);
    }
    m.insert("automountServiceAccountToken".into(), json!(false));
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": spec,
    })
}

/// `helm template` of an upstream chart, injected when `wired`; the
/// workload's pod spec (the `NginxProxy`'s spec for NGF).
pub fn chart_spec(chart: &str, kind: &str, wired: bool) -> (Value, String) {
    let helm = helm().expect("helm");
    let upstream = upstream_charts().expect("the upstream charts");
    // NGINX Inc's chart loads its schema's definitions by URL: rendered
    // from a copy that points them at the local file.
    let scratch = tempfile::tempdir().unwrap();
    let path = if chart == "nginx-ingress" {
        super::renders::nginx_inc_chart(&upstream, scratch.path())
    } else {
        upstream.join(chart)
    };
    let rendered = super::renders::template(&helm, &path, &[]);
    let injected = if wired { inject(&rendered) } else { rendered };
    let objs = objects(&injected);
    let o = objs
        .iter()
        .find(|o| o["kind"] == kind && (kind != "Deployment" || !o["spec"]["template"].is_null()))
        .unwrap_or_else(|| panic!("{chart}: no {kind}"))
        .clone();
    let spec = if kind == "NginxProxy" {
        o["spec"].clone()
    } else {
        o["spec"]["template"]["spec"].clone()
    };
    (spec, injected)
}

/// NGF's data-plane pod as its provisioner builds it (the nginx container
/// as UID 101:1001 with a read-only root, the pid file on the `nginx-run`
/// emptyDir), then the `NginxProxy`'s pod and container settings, then its
/// StrategicMerge patches (lists of containers and volumes merged by name).
pub fn gateway_fabric_pod(np: &Value) -> Value {
    let d = &np["kubernetes"]["deployment"];
    let mut spec = json!({
        "securityContext": {"fsGroup": 1001, "runAsNonRoot": true},
        "containers": [{
            "name": "nginx",
            "image": "localhost/lookalike-ngf:2.6.7",
            "ports": [{"name": "http", "containerPort": 8080}],
            "securityContext": {
                "runAsUser": 101, "runAsGroup": 1001, "readOnlyRootFilesystem": true,
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"}
            },
            "volumeMounts": [
                {"name": "nginx-run", "mountPath": "/var/run/nginx"},
                {"name": "nginx-tmp", "mountPath": "/tmp"}
            ]
        }],
        "volumes": [
            {"name": "nginx-run", "emptyDir": {}},
            {"name": "nginx-tmp", "emptyDir": {}}
        ]
    });
    if let Some(g) = d["pod"]["terminationGracePeriodSeconds"].as_i64() {
        spec["terminationGracePeriodSeconds"] = json!(g);
    }
    if !d["container"]["lifecycle"].is_null() {
        spec["containers"][0]["lifecycle"] = d["container"]["lifecycle"].clone();
    }
    for p in d["patches"].as_array().into_iter().flatten() {
        assert_eq!(p["type"], "StrategicMerge", "{p}");
        merge(&mut spec, &p["value"]["spec"]["template"]["spec"]);
    }
    static_pod(
        "ngf",
        &spec,
        &[("nginx", "localhost/lookalike-ngf:2.6.7")],
        &[],
    )
}

/// A strategic merge of `patch` into `into`: maps key by key, lists of
/// named objects by name, other values replaced.
pub fn merge(into: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *into = patch.clone();
        return;
    };
    if !into.is_object() {
        *into = json!({});
    }
    for (k, v) in p {
        match (into.get_mut(k), v) {
            (Some(Value::Array(list)), Value::Array(items))
                if items.iter().all(|i| i["name"].is_string()) =>
            {
                for item in items {
                    match list.iter_mut().find(|x| x["name"] == item["name"]) {
                        Some(x) => merge(x, item),
                        None => list.push(item.clone()),
                    }
                }
            }
            (Some(slot), _) if v.is_object() => merge(slot, v),
            _ => {
                into[k.as_str()] = v.clone();
            }
        }
    }
}

/// Lets the pod's non-root NGINX bind ports below 1024 (80, 443), as the
/// real ingress-nginx and NGINX Inc images do with the binary's
/// cap_net_bind_service, which the look-alikes do not carry: a safe sysctl
/// of the pod's own network namespace.
pub fn allow_low_ports(pod: &mut Value) {
    let sc = &mut pod["spec"]["securityContext"];
    if !sc.is_object() {
        *sc = json!({});
    }
    let sysctls = &mut sc["sysctls"];
    if !sysctls.is_array() {
        *sysctls = json!([]);
    }
    sysctls
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}));
}
