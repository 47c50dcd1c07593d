//! Each NGINX-based controller's pod as its upstream chart renders it
//! (`../shared/upstream-charts`), wired with `nginx-drain inject` the way
//! README tells users, and terminated by the real kubelet of
//! `../shared/kubelet-rig`: NGINX Gateway Fabric (its data plane, built from
//! the chart's `NginxProxy` as NGF's provisioner builds it), Kong and
//! APISIX. The images are look-alikes (`testbed/lookalikes`: each
//! controller's process tree, user, STOPSIGNAL and stop behaviour, from
//! Debian's nginx); what a static pod cannot hold (Secrets, ConfigMaps,
//! service accounts) becomes an emptyDir, and a controller's other
//! containers wait in a busybox stand-in.
//!
//! The traffic of every case: 50 new connections/s continuing 3 s after the
//! deletion and 2 slow downloads in flight. Asserted: the drain's report
//! `drained`, no failed request, every download byte, one SIGQUIT, no
//! SIGKILL.
//!
//! Needs what `tests/kubelet.rs` needs, and the upstream charts.

use std::time::Duration;

use serde_json::{Value, json};
use testbed::rig::Rig;

mod support;
use support::kubelet_rig::*;
use support::renders::{helm, inject, objects, upstream_charts};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A rendered (and injected) pod spec made a static pod of the rig:
/// `images` names the look-alike for each of the controller's containers
/// (others become the busybox stand-in), `drop` the init containers that
/// wait for what the rig does not run (APISIX's etcd).
fn static_pod(name: &str, spec: &Value, images: &[(&str, &str)], drop: &[&str]) -> Value {
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

/// `helm template` of an upstream chart, injected; the workload's pod spec.
fn injected_spec(chart: &str, kind: &str) -> (Value, String) {
    let helm = helm().expect("helm");
    let upstream = upstream_charts().expect("the upstream charts");
    let out = std::process::Command::new(&helm)
        .args(["template", "edge"])
        .arg(upstream.join(chart))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let injected = inject(&String::from_utf8(out.stdout).unwrap());
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
fn gateway_fabric_pod(np: &Value) -> Value {
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
fn merge(into: &mut Value, patch: &Value) {
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

fn plan(port: u16) -> Plan {
    Plan {
        rate: 50.0,
        downloads: 2,
        lead: Duration::from_secs(2),
        lag: Duration::from_secs(3),
        download_bytes: DOWNLOAD_BYTES,
        port,
    }
}

/// What every controller's drain must give its users.
fn assert_drained(rig: &Rig, name: &str, pod: Value, nginx: &str, port: u16, nginx_exit: &[i64]) {
    let (t, _, seen) = run_case_for(rig, name, pod, plan(port), nginx);
    let r = &seen.report;
    println!(
        "{name}: outcome {} hook->SIGQUIT {} ms, total {} ms; {} ok, {} failed; downloads {:?}; nginx exit {}, sidecar exit {}",
        r["outcome"],
        r["durations"]["hook_to_sigquit_ms"],
        r["durations"]["total_ms"],
        t.load.ok,
        t.load.failed(),
        t.downloads,
        seen.nginx_exit,
        seen.sidecar_exit
    );
    assert_eq!(r["outcome"], "drained", "{name}: {r:#}");
    assert_eq!(t.load.failed(), 0, "{name}: {:?}", t.load);
    assert!(t.load.ok > 100, "{name}: {:?}", t.load);
    assert_eq!(
        t.downloads,
        vec![Ok(DOWNLOAD_BYTES), Ok(DOWNLOAD_BYTES)],
        "{name}"
    );
    assert_eq!(
        seen.nginx_log
            .matches("signal 3 (SIGQUIT) received")
            .count(),
        1,
        "{name}: one SIGQUIT: {}",
        seen.nginx_log
    );
    assert!(
        nginx_exit.contains(&seen.nginx_exit),
        "{name}: the container's exit {} (137: SIGKILL)",
        seen.nginx_exit
    );
    assert_eq!(seen.sidecar_exit, 0, "{name}");
}

#[test]
fn each_controllers_pod_wired_by_inject_drains_under_a_real_kubelet() {
    let Some(rig) = rig() else { return };
    if upstream_charts().is_none() {
        return;
    }

    // Kong: nginx is the main process; its own `kong quit --wait=15`
    // preStop is replaced by the drain's hook.
    let (spec, _) = injected_spec("kong", "Deployment");
    let pod = static_pod(
        "kong",
        &spec,
        &[
            ("proxy", "localhost/lookalike-kong:3.9"),
            ("clear-stale-pid", "localhost/lookalike-kong:3.9"),
        ],
        &[],
    );
    assert_drained(&rig, "kong", pod, "proxy", 8000, &[0]);

    // APISIX: openresty's nginx as the main process; `sleep 30` replaced.
    let (spec, _) = injected_spec("apisix", "Deployment");
    let pod = static_pod(
        "apisix",
        &spec,
        &[("apisix", "localhost/lookalike-apisix:3.16.0")],
        &["wait-etcd"],
    );
    assert_drained(&rig, "apisix", pod, "apisix", 9080, &[0]);

    // NGINX Gateway Fabric: after the drain, the kubelet's SIGTERM reaches
    // the entrypoint, which signals the already-gone nginx: with bash the
    // `kill` fails under `set -e` (exit 1, as the upstream README says);
    // this busybox look-alike may still hold nginx's status (exit 0).
    // Never 137: no SIGKILL.
    let (np, _) = injected_spec("nginx-gateway-fabric", "NginxProxy");
    let pod = gateway_fabric_pod(&np);
    assert_drained(&rig, "ngf", pod, "nginx", 8080, &[0, 1]);
}
