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
//! deletion, 4 keep-alive clients, 2 slow downloads in flight and one
//! WebSocket through NGINX. Asserted: no failed request, every download
//! byte, one SIGQUIT, no SIGKILL, and the WebSocket's end as each
//! controller's NGINX is configured: closed by NGINX's own
//! `worker_shutdown_timeout` where it fits the drain budget (Kong, with the
//! timer inject gives it; ingress-nginx, whose 240 s fits its 300 s grace;
//! NGINX Inc, with the timer inject writes into its ConfigMap), the report
//! `streams_closed`; cut by the sidecar's SIGTERM at the escalation point
//! where NGINX has no timer inject can set (NGF) or a longer one (APISIX's
//! 240 s in its config.yaml), the report `forced` and naming it.
//!
//! Needs what `tests/kubelet.rs` needs, and the upstream charts.

use testbed::rig::Rig;

mod support;
use support::controllers::{CONTROLLERS, Controller, controller_pod, traffic};
use support::kubelet_rig::*;
use support::renders::upstream_charts;

/// What the drain gives each controller's users: the report's outcome and
/// who ended the WebSocket (`cut_by`), and the NGINX container's exit codes
/// that are not a SIGKILL.
fn expected(chart: &str) -> (&'static str, &'static str, &'static [i64]) {
    match chart {
        // After the drain, the kubelet's SIGTERM reaches NGF's entrypoint,
        // which signals the already-gone nginx: with bash the `kill` fails
        // under `set -e` (exit 1, as the upstream README says); this busybox
        // look-alike may still hold nginx's status (exit 0).
        "nginx-gateway-fabric" => ("forced", "sigterm", &[0, 1]),
        "kong" => ("streams_closed", "nginx_worker_shutdown_timeout", &[0]),
        "apisix" => ("forced", "sigterm", &[0]),
        // The controller's own quit finds NGINX gone ("Error during
        // shutdown", exit 1, or 0 if the shell still held NGINX's status),
        // with no post-shutdown wait (inject sets it to 0).
        "ingress-nginx" => ("streams_closed", "nginx_worker_shutdown_timeout", &[0, 1]),
        "nginx-ingress" => ("streams_closed", "nginx_worker_shutdown_timeout", &[0]),
        other => panic!("{other}"),
    }
}

fn assert_drained(rig: &Rig, c: &Controller) {
    let name = c.short;
    let pod = controller_pod(c, true, name);
    let (outcome, cut_by, nginx_exit) = expected(c.chart);
    let (t, deleted, seen) = run_case_for(rig, name, pod, traffic(c.port), c.nginx);
    let r = &seen.report;
    let ws = t
        .websocket
        .clone()
        .expect("a WebSocket")
        .expect("it opened");
    println!(
        "{name}: outcome {} hook->SIGQUIT {} ms, total {} ms; {} ok, {} failed; keep-alive {} ok, {} failed, {} retried; downloads {:?}; WebSocket {} after {} messages, {:.1} s after the deletion; nginx exit {}, sidecar exit {}",
        r["outcome"],
        r["durations"]["hook_to_sigquit_ms"],
        r["durations"]["total_ms"],
        t.load.ok,
        t.load.failed(),
        t.keepalive.ok,
        t.keepalive.failed(),
        t.keepalive.retried,
        t.downloads,
        ws.how,
        ws.exchanged,
        ws.at.saturating_duration_since(deleted).as_secs_f64(),
        seen.nginx_exit,
        seen.sidecar_exit
    );
    assert_eq!(r["outcome"], outcome, "{name}: {r:#}");
    assert_eq!(t.failed(), 0, "{name}: {:?} {:?}", t.load, t.keepalive);
    assert!(t.load.ok > 100, "{name}: {:?}", t.load);
    assert!(t.keepalive.ok > 100, "{name}: {:?}", t.keepalive);
    assert_eq!(
        t.downloads,
        vec![Ok(DOWNLOAD_BYTES), Ok(DOWNLOAD_BYTES)],
        "{name}"
    );
    // The WebSocket worked through NGINX, then NGINX (or its exit) ended it
    // after the deletion; the report says who, and that it was open before
    // the hook.
    assert!(ws.exchanged > 5, "{name}: {ws:?}");
    assert_ne!(ws.how, "limit", "{name}: {ws:?}");
    assert!(ws.at > deleted, "{name}: {ws:?}");
    let conns = &r["connections"];
    assert_eq!(conns["cut_by"], cut_by, "{name}: {conns:#}");
    assert!(
        conns["cut_open_before_hook"].as_u64() >= Some(1),
        "{name}: {conns:#}"
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
    for c in &CONTROLLERS {
        assert_drained(&rig, c);
    }
}
