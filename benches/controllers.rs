//! Each NGINX-based controller's own shutdown against nginx-drain, under the
//! real kubelet of `../shared/kubelet-rig`: NGINX Gateway Fabric, Kong,
//! APISIX, ingress-nginx and NGINX Inc's controller, each pod as its upstream chart renders it with the look-alike
//! images of `testbed/lookalikes` (see `tests/controllers.rs`), once with
//! the controller's own defaults and once wired by `nginx-drain inject`.
//! Same traffic for every case: 50 new connections/s from 2 s before the
//! deletion until 3 s after it, 4 keep-alive clients (a request every
//! 100 ms each) as long, 2 slow downloads (256 KiB at 64 KiB/s) started 1 s
//! before it, and one WebSocket through NGINX (a message every 200 ms)
//! opened 1.5 s before it.
//!
//! Per cell and run: failed requests (new connections and keep-alive),
//! cut downloads, the WebSocket's end (what ended it, from NGINX's log of
//! the signals it received and the container's exit, and when), the
//! preStop hook's duration (the kubelet's log), deletion -> pod gone,
//! SIGKILL (exit 137).
//! Prints a Markdown table for docs/BENCHMARKS.md.
//!
//! Run as root, after `scripts/image` and `scripts/kube`:
//! `cargo bench --bench controllers -- [--runs N] [--only CHART]` (default
//! 3 runs of every controller; CHART: nginx-gateway-fabric, kong, apisix,
//! ingress-nginx, nginx-ingress).

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use support::controllers::{CONTROLLERS, controller_pod, traffic};
use support::kubelet_rig::{DOWNLOAD_BYTES, Measured, rig, run_measured};

/// What ended the WebSocket, read from what NGINX logged (the signals it
/// received) and the container's exit: NGINX's own timer after a SIGQUIT,
/// a SIGTERM (NGINX's fast shutdown, at once or after a SIGQUIT), or the
/// kubelet's SIGKILL.
fn ws_cause(m: &Measured) -> String {
    let Some(ws) = &m.traffic.websocket else {
        return "none".into();
    };
    let ws = match ws {
        Ok(w) => w,
        Err(e) => return format!("did not open ({e})"),
    };
    if ws.how == "limit" {
        return "open at the client's limit".into();
    }
    let quit = m.nginx_log.contains("signal 3 (SIGQUIT) received");
    let term = m.nginx_log.contains("signal 15 (SIGTERM) received");
    let killed = m.nginx_exit == Some(137);
    let cause = match (killed, quit, term) {
        (true, _, _) => "cut by SIGKILL",
        (false, true, true) => "cut by SIGTERM after SIGQUIT",
        (false, false, true) => "cut by fast shutdown (SIGTERM)",
        (false, true, false) => "closed by NGINX's worker_shutdown_timeout",
        (false, false, false) => "closed (no signal logged)",
    };
    cause.to_string()
}

fn ws_at(m: &Measured) -> Option<f64> {
    match &m.traffic.websocket {
        Some(Ok(ws)) => Some(ws.at.saturating_duration_since(m.deleted).as_secs_f64()),
        _ => None,
    }
}

fn cell(runs: &[Measured]) -> String {
    let failed: Vec<String> = runs
        .iter()
        .map(|m| m.traffic.failed().to_string())
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
    let causes: Vec<String> = runs.iter().map(ws_cause).collect();
    let ats: Vec<String> = runs
        .iter()
        .map(|m| ws_at(m).map_or("-".into(), |a| format!("+{a:.1}")))
        .collect();
    let ws = if causes.iter().all(|c| *c == causes[0]) {
        format!("{} at {} s", causes[0], ats.join(", "))
    } else {
        let each: Vec<String> = causes
            .iter()
            .zip(&ats)
            .map(|(c, a)| format!("{c} at {a} s"))
            .collect();
        each.join("; ")
    };
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
        "{} | {} | {ws} | {} | {} | {}",
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
    let mut rows = Vec::new();
    for c in CONTROLLERS
        .iter()
        .filter(|c| only.as_deref().is_none_or(|o| o == c.chart))
    {
        for wired in [false, true] {
            let mut measured = Vec::new();
            for i in 0..runs {
                let case = format!("{}-{}-{i}", c.short, if wired { "drain" } else { "own" });
                let m = run_measured(
                    &rig,
                    &case,
                    controller_pod(c, wired, &case),
                    traffic(c.port),
                    c.nginx,
                );
                eprintln!(
                    "{case}: failed {} (new {:?}, keep-alive {:?}), downloads {:?}, WebSocket {:?} ({}), hook {:?} s, gone after {:.1} s, nginx exit {:?}",
                    m.traffic.failed(),
                    m.traffic.load.examples,
                    m.traffic.keepalive.examples,
                    m.traffic.downloads,
                    m.traffic
                        .websocket
                        .as_ref()
                        .map(|w| w.as_ref().map(|w| (&w.how, w.exchanged))),
                    ws_cause(&m),
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
        "| controller | shutdown | failed requests | cut downloads | WebSocket end (since deletion) | preStop hook | deletion -> pod gone | SIGKILL |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
