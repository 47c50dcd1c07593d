//! Each NGINX-based controller's own shutdown against nginx-drain, under the
//! real kubelet of `../shared/kubelet-rig`: NGINX Gateway Fabric, Kong,
//! APISIX, ingress-nginx and NGINX Inc's controller, each pod as its upstream chart renders it with the look-alike
//! images of `testbed/lookalikes` (see `tests/controllers.rs`), once with
//! the controller's own defaults and once wired by `nginx-drain inject`.
//! Same traffic for every case: 50 new connections/s from 2 s before the
//! deletion until 3 s after it, and 2 slow downloads (256 KiB at 64 KiB/s)
//! started 1 s before it.
//!
//! Per cell and run: failed requests, cut downloads, the preStop hook's
//! duration (the kubelet's log), deletion -> pod gone, SIGKILL (exit 137).
//! Prints a Markdown table for docs/BENCHMARKS.md.
//!
//! Run as root, after `scripts/image` and `scripts/kube`:
//! `cargo bench --bench controllers -- [--runs N] [--only CHART]` (default
//! 3 runs of every controller; CHART: nginx-gateway-fabric, kong, apisix,
//! ingress-nginx, nginx-ingress).

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::time::Duration;

use support::controllers::{allow_low_ports, chart_spec, gateway_fabric_pod, static_pod};
use support::kubelet_rig::{DOWNLOAD_BYTES, Measured, Plan, rig, run_measured};

struct Controller {
    name: &'static str,
    chart: &'static str,
    nginx: &'static str,
    port: u16,
}

const CONTROLLERS: [Controller; 5] = [
    Controller {
        name: "NGINX Gateway Fabric 2.6.7",
        chart: "nginx-gateway-fabric",
        nginx: "nginx",
        port: 8080,
    },
    Controller {
        name: "Kong 3.4.1",
        chart: "kong",
        nginx: "proxy",
        port: 8000,
    },
    Controller {
        name: "APISIX 2.14.0",
        chart: "apisix",
        nginx: "apisix",
        port: 9080,
    },
    Controller {
        name: "ingress-nginx 4.15.1",
        chart: "ingress-nginx",
        nginx: "controller",
        port: 80,
    },
    Controller {
        name: "NGINX Ingress Controller 2.7.0",
        chart: "nginx-ingress",
        nginx: "nginx-ingress",
        port: 80,
    },
];

fn pod(c: &Controller, wired: bool, case: &str) -> serde_json::Value {
    match c.chart {
        "nginx-gateway-fabric" => {
            let (np, _) = chart_spec(c.chart, "NginxProxy", wired);
            let mut p = gateway_fabric_pod(&np);
            p["metadata"]["name"] = serde_json::json!(case);
            p
        }
        "kong" => {
            let (spec, _) = chart_spec(c.chart, "Deployment", wired);
            static_pod(
                case,
                &spec,
                &[
                    ("proxy", "localhost/lookalike-kong:3.9"),
                    ("clear-stale-pid", "localhost/lookalike-kong:3.9"),
                ],
                &[],
            )
        }
        "ingress-nginx" | "nginx-ingress" => {
            let (spec, _) = chart_spec(c.chart, "Deployment", wired);
            let image = if c.chart == "ingress-nginx" {
                "localhost/lookalike-ingress-nginx:1.15.1"
            } else {
                "localhost/lookalike-nginx-ingress:5.6.0"
            };
            let mut p = static_pod(case, &spec, &[(c.nginx, image)], &[]);
            allow_low_ports(&mut p);
            p
        }
        _ => {
            let (spec, _) = chart_spec(c.chart, "Deployment", wired);
            static_pod(
                case,
                &spec,
                &[("apisix", "localhost/lookalike-apisix:3.16.0")],
                &["wait-etcd"],
            )
        }
    }
}

fn cell(runs: &[Measured]) -> String {
    let failed: Vec<String> = runs
        .iter()
        .map(|m| m.traffic.load.failed().to_string())
        .collect();
    let cut: Vec<String> = runs
        .iter()
        .map(|m| {
            m.traffic
                .downloads
                .iter()
                .filter(|d| **d != Ok(DOWNLOAD_BYTES))
                .count()
                .to_string()
        })
        .collect();
    let hook: Vec<String> = runs
        .iter()
        .map(|m| m.hook_secs.map_or("none".into(), |h| format!("{h:.1} s")))
        .collect();
    let gone: Vec<String> = runs
        .iter()
        .map(|m| format!("{:.1} s", m.gone_after.as_secs_f64()))
        .collect();
    let kill: Vec<String> = runs
        .iter()
        .map(|m| match m.nginx_exit {
            Some(137) => "yes".into(),
            Some(_) => "no".into(),
            // The kubelet removed the container before its exit code was
            // read: NGINX's master logs `exit` when it ends by itself.
            None if m.nginx_log.contains(": exit") => "no".into(),
            None => "?".into(),
        })
        .collect();
    format!(
        "{} | {} | {} | {} | {}",
        failed.join("/"),
        cut.join("/"),
        hook.join(", "),
        gone.join(", "),
        kill.join("/")
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let runs: usize = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let Some(rig) = rig() else {
        eprintln!("controllers bench: no rig (run as root after scripts/image and scripts/kube)");
        return;
    };
    let plan = |port| Plan {
        rate: 50.0,
        downloads: 2,
        lead: Duration::from_secs(2),
        lag: Duration::from_secs(3),
        download_bytes: DOWNLOAD_BYTES,
        port,
    };
    let mut rows = Vec::new();
    for c in CONTROLLERS
        .iter()
        .filter(|c| only.as_deref().is_none_or(|o| o == c.chart))
    {
        for wired in [false, true] {
            let mut measured = Vec::new();
            for i in 0..runs {
                let short = if c.chart == "nginx-gateway-fabric" {
                    "ngf"
                } else {
                    c.chart
                };
                let case = format!("{short}-{}-{i}", if wired { "drain" } else { "own" });
                let m = run_measured(&rig, &case, pod(c, wired, &case), plan(c.port), c.nginx);
                eprintln!(
                    "{case}: failed {}, downloads {:?}, hook {:?} s, gone after {:.1} s, nginx exit {:?}",
                    m.traffic.load.failed(),
                    m.traffic.downloads,
                    m.hook_secs,
                    m.gone_after.as_secs_f64(),
                    m.nginx_exit
                );
                measured.push(m);
            }
            let how = if wired {
                "nginx-drain (inject)"
            } else {
                "own default"
            };
            rows.push(format!("| {} | {how} | {} |", c.name, cell(&measured)));
        }
    }
    println!(
        "| controller | shutdown | failed requests | cut downloads | preStop hook | deletion -> pod gone | SIGKILL |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
