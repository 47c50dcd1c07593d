//! Benchmark: the admission webhook's latency and cost.
//!
//! The release binary's `webhook` on loopback with a certificate made here;
//! a client sends Pod CREATE reviews (a plain NGINX pod, wired) at 50 a
//! second for 20 s on one kept-alive TLS connection, as the API server
//! keeps its connections to a webhook, then the same on a new connection
//! each (the worst case: a handshake per review). Prints p50/p99/max of
//! the time from the request's first byte to the answer's last, the
//! webhook's CPU (share of a core) idle for 20 s and under each load, and
//! its peak RSS.
//!
//! Run: `cargo bench --bench webhook`.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use testbed::scenario::cpu_time;

const RATE: f64 = 50.0;
const SECONDS: u64 = 20;

fn review(i: u64) -> String {
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("bench-{i}"),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "web",
            "operation": "CREATE",
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"generateName": "web-7d9f-", "labels": {"app": "web"}},
                "spec": {"containers": [{
                    "name": "nginx",
                    "image": "nginxinc/nginx-unprivileged:1.27",
                    "ports": [{"containerPort": 8080}],
                    "securityContext": {"runAsUser": 101},
                }]},
            },
        },
    })
    .to_string()
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr, tls: &tokio_rustls::TlsConnector) -> Sender {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let s = tls
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn one(send: &mut Sender, i: u64) {
    let req = hyper::Request::post("/inject/namespace")
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(review(i))))
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(body.windows(9).any(|w| w == b"JSONPatch"), "wired");
}

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn rss_peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let pair = testbed::tls::pair(&["127.0.0.1"]);
    std::fs::write(dir.path().join("tls.crt"), &pair.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &pair.key_pem).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let bin = std::env::var("NGINX_DRAIN_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_nginx-drain").to_string());
    let mut child = Command::new(&bin)
        .args([
            "webhook",
            "--listen",
            &addr.to_string(),
            "--log-level",
            "warn",
        ])
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .stdout(Stdio::null())
        .spawn()
        .expect("start the webhook");
    let pid = child.id() as i32;

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(pair.ca_der.clone()))
        .unwrap();
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Up.
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "the webhook never listened");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let cpu0 = cpu_time(pid);
        tokio::time::sleep(Duration::from_secs(SECONDS)).await;
        let idle = (cpu_time(pid) - cpu0).as_secs_f64() / SECONDS as f64;
        println!(
            "webhook idle: {:.3} % of a core over {SECONDS} s",
            idle * 100.0
        );
        println!("| connections | reviews | p50 ms | p99 ms | max ms | CPU (% of a core) |");
        println!("|---|---|---|---|---|---|");
        for reuse in [true, false] {
            let n = (RATE * SECONDS as f64) as u64;
            let mut times = Vec::with_capacity(n as usize);
            let mut send = connect(addr, &tls).await;
            let cpu0 = cpu_time(pid);
            let start = Instant::now();
            for i in 0..n {
                let due = start + Duration::from_secs_f64(i as f64 / RATE);
                tokio::time::sleep_until(due.into()).await;
                let t = Instant::now();
                if !reuse {
                    send = connect(addr, &tls).await;
                }
                one(&mut send, i).await;
                times.push(t.elapsed());
            }
            let cpu = (cpu_time(pid) - cpu0).as_secs_f64() / start.elapsed().as_secs_f64();
            times.sort();
            println!(
                "| {} | {n} at {RATE}/s | {:.2} | {:.2} | {:.2} | {:.2} |",
                if reuse {
                    "one, kept alive"
                } else {
                    "a new one each (TLS handshake)"
                },
                quantile(&times, 0.5),
                quantile(&times, 0.99),
                quantile(&times, 1.0),
                cpu * 100.0
            );
        }
    });
    println!(
        "webhook peak RSS: {:.1} MiB",
        rss_peak_kib(child.id()) as f64 / 1024.0
    );
    let _ = child.kill();
    let _ = child.wait();
}
