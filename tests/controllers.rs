//! Each NGINX-based controller's pod as its upstream chart renders it
//! (`../shared/upstream-charts`), wired with `nginx-drain inject` the way
//! README tells users, and terminated by the real kubelet of
//! `../shared/kubelet-rig`: NGINX Gateway Fabric (its data plane, built from
//! the chart's `NginxProxy` as NGF's provisioner builds it), Kong, APISIX,
//! ingress-nginx and NGINX Inc's controller. The images are look-alikes (`testbed/lookalikes`: each
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

use serde_json::Value;
use testbed::rig::Rig;

mod support;
use support::controllers::{allow_low_ports, chart_spec, gateway_fabric_pod, static_pod};
use support::kubelet_rig::*;
use support::renders::upstream_charts;

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
    let (spec, _) = chart_spec("kong", "Deployment", true);
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
    let (spec, _) = chart_spec("apisix", "Deployment", true);
    let pod = static_pod(
        "apisix",
        &spec,
        &[("apisix", "localhost/lookalike-apisix:3.16.0")],
        &["wait-etcd"],
    );
    assert_drained(&rig, "apisix", pod, "apisix", 9080, &[0]);

    // ingress-nginx: its `/wait-shutdown` replaced; after the drain the
    // controller's own quit finds NGINX gone ("Error during shutdown",
    // exit 1, or 0 if the shell still held NGINX's status), with no
    // post-shutdown wait (inject sets it to 0).
    let (spec, _) = chart_spec("ingress-nginx", "Deployment", true);
    let mut pod = static_pod(
        "ingress-nginx",
        &spec,
        &[("controller", "localhost/lookalike-ingress-nginx:1.15.1")],
        &[],
    );
    allow_low_ports(&mut pod);
    assert_drained(&rig, "ingress-nginx", pod, "controller", 80, &[0, 1]);

    // NGINX Inc: the controller exits 0 with NGINX.
    let (spec, _) = chart_spec("nginx-ingress", "Deployment", true);
    let mut pod = static_pod(
        "nginx-ingress",
        &spec,
        &[("nginx-ingress", "localhost/lookalike-nginx-ingress:5.6.0")],
        &[],
    );
    allow_low_ports(&mut pod);
    assert_drained(&rig, "nginx-ingress", pod, "nginx-ingress", 80, &[0]);

    // NGINX Gateway Fabric: after the drain, the kubelet's SIGTERM reaches
    // the entrypoint, which signals the already-gone nginx: with bash the
    // `kill` fails under `set -e` (exit 1, as the upstream README says);
    // this busybox look-alike may still hold nginx's status (exit 0).
    // Never 137: no SIGKILL.
    let (np, _) = chart_spec("nginx-gateway-fabric", "NginxProxy", true);
    let pod = gateway_fabric_pod(&np);
    assert_drained(&rig, "ngf", pod, "nginx", 8080, &[0, 1]);
}
