//! Long-lived connections through a real NGINX, drained by the real binary:
//! WebSockets (a real echo backend behind NGINX, real clients exchanging
//! messages), an HTTP/2 download (a real h2 client), idle keep-alives. The
//! report must name what was cut and never claim more than was observed.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use testbed::client::{self, Fetched};
use testbed::scenario::wait_ready;
use testbed::ws::{EchoBackend, WsClient};
use testbed::{Nginx, NginxOptions, h2};

mod support;
use support::{json, sidecar_for};

/// Bounds that only catch hangs.
const HANG: Duration = Duration::from_secs(30);
const WEBSOCKETS: usize = 5;
/// A client's WebSocket stays open at most this long on its own.
const WS_LIMIT: Duration = Duration::from_secs(40);

async fn nginx_with_websockets(extra_main: &str) -> (EchoBackend, Nginx) {
    let backend = EchoBackend::start().await.unwrap();
    let nginx = Nginx::start(NginxOptions {
        extra_main: extra_main.into(),
        extra_server: backend.location(),
        ..Default::default()
    })
    .unwrap();
    (backend, nginx)
}

async fn open_websockets(nginx: SocketAddr) -> Vec<WsClient> {
    let mut clients = Vec::new();
    for _ in 0..WEBSOCKETS {
        clients.push(
            WsClient::open(nginx, Duration::from_millis(200), WS_LIMIT)
                .await
                .expect("a WebSocket through nginx"),
        );
    }
    clients
}

fn cut_peers(report: &Value) -> BTreeSet<String> {
    report["connections"]["cut_peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["peer"].as_str().unwrap().to_string())
        .collect()
}

fn assert_complete(d: Result<Fetched, client::Failure>, size: usize) {
    let f = d.expect("the download finished");
    assert_eq!(f.status, 200);
    assert_eq!(f.body.len(), size, "every byte arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_without_a_shutdown_timeout_are_forced_and_named() {
    let (_backend, nginx) = nginx_with_websockets("").await;
    let sidecar = sidecar_for(
        &nginx,
        &[
            "--drain-timeout",
            "8s",
            "--max-delay",
            "1s",
            "--on-failure",
            "status",
        ],
    );
    wait_ready(sidecar.addr).await;
    let ws = open_websockets(nginx.addr()).await;
    let locals: BTreeSet<String> = ws.iter().map(|c| c.local.to_string()).collect();
    let downloads = [
        client::spawn_download(nginx.addr(), "2m").await,
        client::spawn_download(nginx.addr(), "2m").await,
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;

    let hook = client::get(sidecar.addr, "/prestop", HANG).await.unwrap();
    let report = json(&hook);
    eprintln!("report: {report}");
    assert_eq!(hook.status, 500, "{report:#}");
    assert_eq!(report["outcome"], "forced", "{report:#}");
    assert!(
        report["durations"]["total_ms"].as_u64().unwrap() < 8_000,
        "{report:#}"
    );
    let c = &report["connections"];
    assert_eq!(c["cut"], WEBSOCKETS, "{report:#}");
    assert_eq!(c["cut_open_before_hook"], WEBSOCKETS);
    assert_eq!(c["cut_by"], "sigterm");
    assert_eq!(c["worker_shutdown_timeout"], "unset");
    assert_eq!(cut_peers(&report), locals, "the WebSockets, by peer");
    let msg = report["message"].as_str().unwrap();
    assert!(
        msg.contains("5 connections open since before the hook")
            && msg.contains("WebSockets or streams")
            && msg.contains("worker_shutdown_timeout to at most"),
        "{msg}"
    );
    for d in downloads {
        assert_complete(d.await.unwrap(), 1 << 20);
    }
    for c in ws {
        let end = c.end().await;
        assert_ne!(end.how, "limit", "{end:?}");
        assert!(end.exchanged > 0, "{end:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_closed_by_nginxs_shutdown_timeout_are_streams_closed_and_listed() {
    let (_backend, nginx) = nginx_with_websockets("worker_shutdown_timeout 2s;").await;
    // The default --on-failure reset: a routine drain must answer 200.
    let sidecar = sidecar_for(&nginx, &["--drain-timeout", "8s", "--max-delay", "1s"]);
    wait_ready(sidecar.addr).await;
    assert!(
        sidecar.log().contains("inside the budget (escalation 5s 750ms after the hook - latest SIGQUIT 1s - 1s for nginx to exit = 3s 750ms)"),
        "{}",
        sidecar.log()
    );
    let ws = open_websockets(nginx.addr()).await;
    let locals: BTreeSet<String> = ws.iter().map(|c| c.local.to_string()).collect();
    let download = client::spawn_download(nginx.addr(), "2m").await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let hook = client::get(sidecar.addr, "/prestop", HANG).await.unwrap();
    let report = json(&hook);
    eprintln!("report: {report}");
    assert_eq!(hook.status, 200, "{report:#}");
    assert_eq!(report["outcome"], "streams_closed", "{report:#}");
    assert_eq!(
        support::assert_state_truth(sidecar.addr, Some(nginx.pid())).await,
        "drained"
    );
    let c = &report["connections"];
    assert_eq!(c["cut"], WEBSOCKETS, "{report:#}");
    assert_eq!(c["cut_by"], "nginx_worker_shutdown_timeout");
    assert_eq!(c["worker_shutdown_timeout"], "2s");
    assert_eq!(cut_peers(&report), locals);
    assert!(
        report["connections"]["cut_peers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["open_before_hook"] == true),
        "{report:#}"
    );
    assert!(
        !report["message"]
            .as_str()
            .unwrap()
            .contains("every in-flight request finished")
    );
    assert_complete(download.await.unwrap(), 1 << 20);
    for c in ws {
        let end = c.end().await;
        assert_ne!(end.how, "limit", "{end:?}");
    }
    let status = json(&client::get(sidecar.addr, "/status", HANG).await.unwrap());
    assert_eq!(status["drain"]["phase"], "done", "{status:#}");
    assert_eq!(status["drain"]["cut_connections"], WEBSOCKETS);
    let metrics = client::get(sidecar.addr, "/metrics", HANG).await.unwrap();
    assert!(
        metrics
            .text()
            .contains("nginx_drain_cut_connections_total{by=\"nginx_worker_shutdown_timeout\"} 5"),
        "{}",
        metrics.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_and_requests_only_are_drained_with_nothing_cut() {
    let nginx = Nginx::start(NginxOptions {
        extra_main: "worker_shutdown_timeout 10s;".into(),
        ..Default::default()
    })
    .unwrap();
    let sidecar = sidecar_for(&nginx, &[]);
    wait_ready(sidecar.addr).await;
    let mut downloads = Vec::new();
    for _ in 0..3 {
        downloads.push(client::spawn_download(nginx.addr(), "1m").await);
    }
    for _ in 0..5 {
        assert_eq!(
            client::get(nginx.addr(), "/", HANG).await.unwrap().status,
            200
        );
    }
    let hook = client::get(sidecar.addr, "/prestop", HANG).await.unwrap();
    let report = json(&hook);
    eprintln!("report: {report}");
    assert_eq!(report["outcome"], "drained", "{report:#}");
    assert_eq!(report["connections"]["cut"], 0, "{report:#}");
    assert!(
        report["connections"]["cut_peers"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // Every request finished: claimed when the last census saw nothing
    // open, said of what it saw open otherwise (a graceful exit implies it).
    let message = report["message"].as_str().unwrap();
    if report["connections"]["open_at_exit"] == 0 {
        assert!(
            message.contains("every in-flight request finished"),
            "{message}"
        );
    } else {
        assert!(message.contains("ended in between"), "{message}");
    }
    for d in downloads {
        assert_complete(d.await.unwrap(), 1 << 20);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_download_in_flight_completes_and_is_drained() {
    let nginx = Nginx::start(NginxOptions {
        h2c: true,
        ..Default::default()
    })
    .unwrap();
    let h2c = nginx.work.h2c_port.unwrap();
    // SIGQUIT at most 1 s after the hook, the download 4 s long: it is in
    // flight at SIGQUIT however long the quiet rule waits on a busy machine.
    let sidecar = sidecar_for(&nginx, &["--port", &h2c.to_string(), "--max-delay", "1s"]);
    wait_ready(sidecar.addr).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], h2c));
    let download = tokio::spawn(async move { h2::get(addr, "/blob?rate=256k", HANG).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hook = client::get(sidecar.addr, "/prestop", HANG).await.unwrap();
    let report = json(&hook);
    eprintln!("report: {report}");
    assert_eq!(report["outcome"], "drained", "{report:#}");
    assert_eq!(report["connections"]["cut"], 0);
    assert!(
        report["connections"]["open_at_sigquit"].as_u64().unwrap() >= 1,
        "the census saw the HTTP/2 connection: {report:#}"
    );
    let answer = download.await.unwrap().expect("the HTTP/2 download");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.len(), 1 << 20, "every byte over HTTP/2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_idle_keepalives_do_not_hold_the_drain() {
    let nginx = Nginx::start(NginxOptions::default()).unwrap();
    let sidecar = sidecar_for(&nginx, &[]);
    wait_ready(sidecar.addr).await;
    let mut idle = Vec::new();
    for _ in 0..10 {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(nginx.addr()).unwrap();
        s.set_read_timeout(Some(HANG)).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        idle.push(s);
    }
    // Let the arrivals age past their quiet period: only idleness is left.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hook = client::get(sidecar.addr, "/prestop", HANG).await.unwrap();
    let report = json(&hook);
    eprintln!("report: {report}");
    assert_eq!(report["outcome"], "drained", "{report:#}");
    assert_eq!(report["connections"]["open_at_sigquit"], 10, "{report:#}");
    assert_eq!(report["connections"]["cut"], 0);
    // NGINX closes idle keep-alives at SIGQUIT: nothing holds the exit. (A
    // bound that only catches a hang; the timing is measured in benches.)
    assert!(
        report["durations"]["sigquit_to_exit_ms"].as_u64().unwrap() < 2_000,
        "{report:#}"
    );
}

/// Streams are not requests. A warm keep-alive pool (a balancer's) goes on
/// 1.5 s after the hook, beside three WebSocket feeds that NGINX's backend
/// keeps pushing to and a slow download: traffic NGINX alone sends carries
/// no client data, so only the pool holds the quit, which comes a quiet
/// period after the pool stops, not at --max-delay; NGINX's
/// worker_shutdown_timeout then closes the feeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_and_downloads_do_not_hold_the_quit_a_pool_does() {
    let backend = EchoBackend::start_pushing(Duration::from_millis(100))
        .await
        .unwrap();
    let nginx = Nginx::start(NginxOptions {
        extra_main: "worker_shutdown_timeout 2s;".into(),
        extra_server: backend.location(),
        ..Default::default()
    })
    .unwrap();
    let pool = testbed::load::Pool::open(nginx.addr(), None, 8)
        .await
        .expect("the pool connects");
    let sidecar = sidecar_for(&nginx, &["--drain-timeout", "12s", "--max-delay", "6s"]);
    wait_ready(sidecar.addr).await;
    let mut feeds = Vec::new();
    for _ in 0..3 {
        feeds.push(WsClient::listen(nginx.addr(), WS_LIMIT).await.unwrap());
    }
    let download = client::spawn_download(nginx.addr(), "400k").await;
    let hook_at = tokio::time::Instant::now() + Duration::from_secs(2);
    let pool = tokio::spawn(pool.run(100.0, hook_at + Duration::from_millis(1500)));
    tokio::time::sleep_until(hook_at).await;

    let hook = client::get(sidecar.addr, "/prestop", HANG).await.unwrap();
    let report = json(&hook);
    let t = &report["traffic"];
    assert_eq!(report["outcome"], "streams_closed", "{report:#}");
    assert_eq!(t["sigquit_reason"], "quiet", "{t:#}");
    let waited = t["wait_before_sigquit_ms"].as_u64().unwrap();
    assert!(
        (1500..3000).contains(&waited),
        "SIGQUIT a quiet period after the pool stopped (1.5 s), not at --max-delay: {waited} ms"
    );
    assert!(t["requests_during_wait"].as_u64().unwrap() >= 75, "{t:#}");
    let pool = pool.await.unwrap();
    assert_eq!(pool.failed(), 0, "{pool:?}");
    assert_eq!(
        report["connections"]["cut_by"],
        "nginx_worker_shutdown_timeout"
    );
    for f in feeds {
        let end = f.end().await;
        assert_ne!(end.how, "limit", "NGINX ended it: {end:?}");
        assert!(end.exchanged >= 20, "the feed kept sending: {end:?}");
    }
    assert_complete(download.await.unwrap(), 1 << 20);
}

/// A WebSocket used request/response (the client sends, the backend
/// answers, then silence) is, to the kernel, a keep-alive connection
/// carrying requests, which a balancer's pool of one connection would be
/// too: it counts as requests, and so holds the quit, at most --max-delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_used_request_response_counts_as_requests_up_to_max_delay() {
    let (_backend, nginx) = nginx_with_websockets("worker_shutdown_timeout 2s;").await;
    let sidecar = sidecar_for(&nginx, &["--drain-timeout", "10s", "--max-delay", "2s"]);
    wait_ready(sidecar.addr).await;
    let ws = WsClient::open(nginx.addr(), Duration::from_millis(200), WS_LIMIT)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let hook = client::get(sidecar.addr, "/prestop", HANG).await.unwrap();
    let report = json(&hook);
    let t = &report["traffic"];
    assert_eq!(report["outcome"], "streams_closed", "{report:#}");
    assert_eq!(t["sigquit_reason"], "max_delay", "{t:#}");
    assert!(t["requests_during_wait"].as_u64().unwrap() >= 5, "{t:#}");
    let end = ws.end().await;
    assert_ne!(end.how, "limit", "NGINX ended it: {end:?}");
}
