//! `nginx-drain webhook`, the real binary, over real TLS on loopback: an
//! AdmissionReview answered with the wiring patch, and the serving
//! certificate rotated on disk (a new CA, as when a self-managed Secret is
//! renewed) while reviews keep coming: none fails, and new connections get
//! the new certificate within seconds.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

/// A CA and a serving certificate for 127.0.0.1 that it signed.
struct Pair {
    ca: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
    cert: CertificateDer<'static>,
}

fn pair() -> Pair {
    let p = testbed::tls::pair(&["127.0.0.1", "localhost"]);
    Pair {
        ca: CertificateDer::from(p.ca_der),
        cert_pem: p.cert_pem,
        key_pem: p.key_pem,
        cert: CertificateDer::from(p.cert_der),
    }
}

/// Writes the pair as the kubelet updates a Secret volume: new files
/// beside, then renamed over (each file changes at once).
fn install(dir: &Path, p: &Pair) {
    for (name, text) in [("tls.key", &p.key_pem), ("tls.crt", &p.cert_pem)] {
        let tmp = dir.join(format!(".{name}.new"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Webhook(Child);

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn review_body(uid: &str) -> String {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "shop",
            "operation": "CREATE",
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"generateName": "web-"},
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

/// One review on a new connection: the answer and the certificate the
/// server showed.
async fn post(
    addr: SocketAddr,
    roots: &[CertificateDer<'static>],
    uid: &str,
) -> Result<(Value, CertificateDer<'static>), String> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let shown = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(conn);
    let req = hyper::Request::post("/inject/namespace")
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(review_body(uid))))
        .unwrap();
    let res = send
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    if status != 200 {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok((serde_json::from_slice(&body).unwrap(), shown))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_are_answered_over_tls_and_a_rotated_certificate_drops_none() {
    let dir = tempfile::tempdir().unwrap();
    let first = pair();
    install(dir.path(), &first);
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let _webhook = Webhook(
        Command::new(env!("CARGO_BIN_EXE_nginx-drain"))
            .args(["webhook", "--listen", &addr.to_string()])
            .arg("--tls-cert")
            .arg(dir.path().join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.path().join("tls.key"))
            .args(["--image", "nginx-drain:webhook-test"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start the webhook"),
    );
    // Up within a few seconds (a hang bound, not a goal).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (answer, shown) = loop {
        match post(addr, std::slice::from_ref(&first.ca), "first").await {
            Ok(a) => break a,
            Err(e) => {
                assert!(Instant::now() < deadline, "the webhook never answered: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(shown, first.cert);
    let response = &answer["response"];
    assert_eq!(response["uid"], "first");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let patch: Vec<Value> = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(response["patch"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let spec = &patch[0]["value"];
    assert_eq!(patch[0]["path"], "/spec");
    assert_eq!(
        spec["initContainers"][0]["image"],
        "nginx-drain:webhook-test"
    );
    assert_eq!(spec["shareProcessNamespace"], true);

    // Rotation: a client that trusts both CAs (the caBundle carries both
    // while a rotation is under way) sends reviews without a pause while
    // the files are replaced.
    let second = pair();
    let both = [first.ca.clone(), second.ca.clone()];
    let mut sent = 0u32;
    let mut failed = Vec::new();
    let mut rotated_at = None;
    let mut new_seen_after = None;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) && sent < 2000 {
        if rotated_at.is_none() && started.elapsed() > Duration::from_millis(500) {
            install(dir.path(), &second);
            rotated_at = Some(Instant::now());
        }
        sent += 1;
        match post(addr, &both, &format!("r{sent}")).await {
            Ok((a, shown)) => {
                assert_eq!(a["response"]["allowed"], true);
                if let Some(at) = rotated_at
                    && shown == second.cert
                    && new_seen_after.is_none()
                {
                    new_seen_after = Some(at.elapsed());
                }
            }
            Err(e) => failed.push(e),
        }
        if new_seen_after.is_some_and(|d| started.elapsed() > d + Duration::from_secs(1)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        failed.is_empty(),
        "{} of {sent} reviews failed: {failed:?}",
        failed.len()
    );
    let took = new_seen_after.expect("the new certificate was never served");
    println!(
        "{sent} reviews, 0 failed; the rotated certificate served {:.2} s after the files changed",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Only the new CA now.
    let (_, shown) = post(addr, std::slice::from_ref(&second.ca), "after")
        .await
        .unwrap();
    assert_eq!(shown, second.cert);
}
