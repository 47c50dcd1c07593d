//! `nginx-drain webhook`: a mutating admission webhook that wires Pods at
//! CREATE by `inject`'s rules, for the pods no pipeline renders (Argo CD has
//! no Helm post-renderer; operators create Deployments at run time).
//!
//! Two paths, one per opt-in, so that the webhook never reads the API (no
//! RBAC at all): the chart's MutatingWebhookConfiguration sends pods of
//! namespaces labelled `nginx-drain.io/inject=enabled` to
//! [`Path::Namespace`] (wired unless the pod's annotation says `disabled`),
//! and pods of other namespaces to [`Path::Annotated`] (wired only when the
//! annotation says `enabled`).
//!
//! It never refuses a pod: what it cannot wire is admitted with its spec
//! unchanged, with an admission warning that says why (`kubectl` prints
//! it) and the annotation [`NOT_WIRED`], and the chart sets `failurePolicy:
//! Ignore`, so pods are created when the webhook is down; its admission
//! policy (run by the API server itself) then warns of a pod that was
//! opted in and carries neither the sidecar nor that annotation. The
//! serving certificate is read again when its files change (a rotated
//! Secret): handshakes use the old one until the new one loads.

use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value as Json, json};

use crate::cli::{WebhookArgs, WiringArgs};
use crate::inject;

/// The annotation (and namespace label) that opts in or out.
pub const OPT_IN: &str = "nginx-drain.io/inject";
/// The annotation the webhook adds to a pod it wired.
pub const INJECTED: &str = "nginx-drain.io/injected";
/// The annotation the webhook adds to a pod it was asked to wire and left
/// unwired (its spec unchanged): why, for `kubectl describe pod`, and so
/// that the chart's admission policy can tell a pod the webhook reviewed
/// from one it never saw (the webhook down: `failurePolicy: Ignore`).
pub const NOT_WIRED: &str = "nginx-drain.io/not-wired";

/// The API server sends at most 3 MiB in a request.
const BODY_LIMIT: usize = 3 << 20;
/// The API server waits `timeoutSeconds` (the chart: 5 s); a client that
/// sends nothing for this long is gone.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The API server cuts admission warnings longer than this.
const WARNING_LIMIT: usize = 256;
/// How often the certificate's files are looked at.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// Which opt-in the request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    /// The namespace is labelled: wire unless the pod opts out.
    Namespace,
    /// Wire only a pod whose annotation opts in.
    Annotated,
}

impl Path {
    fn of(path: &str) -> Option<Path> {
        match path {
            "/inject/namespace" => Some(Path::Namespace),
            "/inject/annotated" => Some(Path::Annotated),
            _ => None,
        }
    }
}

/// Why the webhook cannot start, with the fix.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(
        "cannot load the serving certificate {cert} and key {key} ({why}): mount the webhook's TLS Secret there (charts/nginx-drain-webhook does), or give --tls-cert and --tls-key"
    )]
    Certificate {
        cert: PathBuf,
        key: PathBuf,
        why: String,
    },
    #[error("cannot listen on {addr} ({source}): give a free port with --listen")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// Runs the webhook until SIGTERM or SIGINT.
pub fn main(args: &WebhookArgs) -> Result<(), WebhookError> {
    let certs = Arc::new(Reloading::load(&args.tls_cert, &args.tls_key)?);
    let listener = crate::serve::bind(args.listen).map_err(|e| WebhookError::Listen {
        addr: e.addr,
        source: e.source,
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(WebhookError::Runtime)?;
    let wiring = Arc::new(args.wiring.clone());
    rt.block_on(async move {
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(|source| WebhookError::Listen {
                addr: args.listen,
                source,
            })?;
        tracing::info!(
            listen = %listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()),
            image = %wiring.image,
            cert = %args.tls_cert.display(),
            "nginx-drain webhook serving: POST /inject/namespace, /inject/annotated"
        );
        serve(listener, certs, wiring, stop_signal()).await;
        Ok(())
    })
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Serves admission reviews on `listener` until `stop`; connections in
/// flight finish (the API server retries nothing: a cut review is a pod
/// admitted unwired).
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    certs: Arc<Reloading>,
    wiring: Arc<WiringArgs>,
    stop: impl Future<Output = ()>,
) {
    let provider = Arc::new(ring_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(certs);
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let wiring = wiring.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |req| {
                let wiring = wiring.clone();
                async move { Ok::<_, std::convert::Infallible>(route(req, &wiring).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service);
            let _ = watcher.watch(conn).await;
        });
    }
    tracing::info!("stopping: finishing the reviews in flight");
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
}

async fn route(req: Request<Incoming>, wiring: &WiringArgs) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz" | "/readyz") => text(StatusCode::OK, "ok\n".into()),
        (&Method::POST, p) if Path::of(p).is_some() => {
            let path = Path::of(p).expect("matched");
            let started = Instant::now();
            let body = match Limited::new(req.into_body(), BODY_LIMIT).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("cannot read the AdmissionReview: {e}\n"),
                    );
                }
            };
            match review(&body, path, wiring) {
                Ok((answer, verdict)) => {
                    tracing::info!(
                        pod = %verdict.pod,
                        path = ?path,
                        wired = verdict.wired,
                        warnings = verdict.warnings,
                        took_us = started.elapsed().as_micros() as u64,
                        "{}", verdict.said
                    );
                    Response::builder()
                        .header(hyper::header::CONTENT_TYPE, "application/json")
                        .body(Full::new(Bytes::from(answer.to_string())))
                        .expect("a valid response")
                }
                Err(why) => {
                    tracing::warn!("a request that is no AdmissionReview: {why}");
                    text(StatusCode::BAD_REQUEST, format!("{why}\n"))
                }
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "nginx-drain webhook: POST /inject/namespace or /inject/annotated (AdmissionReview v1); GET /healthz\n".into(),
        ),
    }
}

/// What one review decided, for the log.
#[derive(Debug)]
pub(crate) struct Verdict {
    pod: String,
    wired: bool,
    warnings: usize,
    said: String,
}

/// Answers one AdmissionReview: always allowed, with a patch when the pod
/// was wired and warnings for what needs the user.
pub(crate) fn review(
    body: &[u8],
    path: Path,
    wiring: &WiringArgs,
) -> Result<(Json, Verdict), String> {
    let review: Json = serde_json::from_slice(body).map_err(|e| {
        format!("the body is not JSON ({e}): the API server sends an AdmissionReview")
    })?;
    let request = &review["request"];
    let uid = request["uid"]
        .as_str()
        .ok_or("the AdmissionReview has no request.uid")?;
    let api_version = review["apiVersion"]
        .as_str()
        .unwrap_or("admission.k8s.io/v1");
    let pod = &request["object"];
    let namespace = request["namespace"]
        .as_str()
        .or_else(|| pod["metadata"]["namespace"].as_str())
        .unwrap_or_default();
    let name = pod["metadata"]["name"]
        .as_str()
        .or_else(|| pod["metadata"]["generateName"].as_str().map(|_| ""))
        .unwrap_or_default();
    let label = match pod["metadata"]["generateName"].as_str() {
        Some(g) if name.is_empty() => format!("{namespace}/{g}*"),
        _ => format!("{namespace}/{name}"),
    };
    let (patch, warnings, wired, said) = decide(request, pod, namespace, &label, path, wiring);
    let mut response = json!({"uid": uid, "allowed": true});
    if let Some(patch) = patch {
        use base64::Engine as _;
        response["patchType"] = json!("JSONPatch");
        response["patch"] =
            json!(base64::engine::general_purpose::STANDARD.encode(patch.to_string()));
    }
    if !warnings.is_empty() {
        response["warnings"] = json!(warnings);
    }
    let verdict = Verdict {
        pod: label,
        wired,
        warnings: warnings.len(),
        said,
    };
    Ok((
        json!({"apiVersion": api_version, "kind": "AdmissionReview", "response": response}),
        verdict,
    ))
}

/// The patch (if wired), the warnings, whether it was wired, and what the
/// log says.
fn decide(
    request: &Json,
    pod: &Json,
    namespace: &str,
    label: &str,
    path: Path,
    wiring: &WiringArgs,
) -> (Option<Json>, Vec<String>, bool, String) {
    let none = |said: &str| (None, Vec::new(), false, said.to_string());
    if request["kind"]["kind"].as_str() != Some("Pod")
        || request["operation"].as_str() != Some("CREATE")
        || request["subResource"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    {
        return none("not a Pod's CREATE: left alone");
    }
    let opt = pod["metadata"]["annotations"][OPT_IN]
        .as_str()
        .map(str::to_ascii_lowercase);
    match (opt.as_deref(), path) {
        (Some("disabled" | "false"), _) => return none("opted out by its annotation"),
        (Some("enabled" | "true"), _) | (_, Path::Namespace) => {}
        (_, Path::Annotated) => return none("not opted in"),
    }
    if !pod["metadata"].is_object() || !pod["spec"].is_object() {
        let said = "not wired: the pod has no metadata or spec object";
        return (None, vec![warning(said)], false, said.to_string());
    }
    let mut object = pod.clone();
    object["kind"] = json!("Pod");
    if object["metadata"]["namespace"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        object["metadata"]["namespace"] = json!(namespace);
    }
    // For the notes' names (only the spec and the annotation are patched):
    // a ReplicaSet's pod has a generateName and no name yet.
    if object["metadata"]["name"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        let generated = label.rsplit('/').next().unwrap_or(label);
        object["metadata"]["name"] = json!(generated);
    }
    let mut value: serde_norway::Value = match serde_norway::to_value(&object) {
        Ok(v) => v,
        Err(e) => {
            return (
                None,
                vec![warning(&format!("not wired: the pod cannot be read ({e})"))],
                false,
                format!("not wired: the pod cannot be read ({e})"),
            );
        }
    };
    let mut notes = Vec::new();
    match inject::wire_pod_object(&mut value, wiring, &mut notes) {
        Ok(true) => {
            let spec = match serde_json::to_value(&value["spec"]) {
                Ok(s) => s,
                Err(e) => {
                    return none(&format!(
                        "not wired: the wired spec cannot be written ({e})"
                    ));
                }
            };
            let mut patch = vec![json!({"op": "replace", "path": "/spec", "value": spec})];
            patch.push(annotate(pod, INJECTED, env!("CARGO_PKG_VERSION")));
            // What the user must still do (a ConfigMap key the webhook
            // cannot reach) is a warning; what was done is the log's.
            let warnings: Vec<String> = notes
                .iter()
                .filter(|n| n.contains("make sure"))
                .map(|n| warning(n))
                .collect();
            let said = notes.join("; ");
            (Some(Json::Array(patch)), warnings, true, said)
        }
        Ok(false) => {
            // Opted in, yet nothing to wire: say why when the pod asked.
            let said = if notes.is_empty() {
                format!("{label}: no NGINX container found: left as it is")
            } else {
                notes.join("; ")
            };
            let asked = opt
                .as_deref()
                .is_some_and(|o| o == "enabled" || o == "true");
            let wired_before = inject::has_sidecar(&value["spec"]);
            let warnings = if asked && !wired_before {
                vec![warning(&format!("not wired: {said}"))]
            } else {
                Vec::new()
            };
            // Reviewed and left unwired: the annotation says why (a pod
            // already wired is left exactly as it is).
            let patch = (!wired_before)
                .then(|| Json::Array(vec![annotate(pod, NOT_WIRED, &reason(&said))]));
            (patch, warnings, false, said)
        }
        Err(e) => {
            let said = format!("not wired: {e}");
            let patch = Json::Array(vec![annotate(pod, NOT_WIRED, &reason(&e.to_string()))]);
            (Some(patch), vec![warning(&said)], false, said)
        }
    }
}

/// A JSON Patch operation that sets one annotation of `pod` (adding the
/// map when the pod has none).
fn annotate(pod: &Json, key: &str, value: &str) -> Json {
    if pod["metadata"]["annotations"].is_object() {
        json!({"op": "add", "path": format!("/metadata/annotations/{}", key.replace('~', "~0").replace('/', "~1")), "value": value})
    } else {
        json!({"op": "add", "path": "/metadata/annotations", "value": {(key): value}})
    }
}

/// What [`NOT_WIRED`] says: the reason, cut short.
fn reason(said: &str) -> String {
    crate::vocab::cut_to(said.to_string(), WARNING_LIMIT)
}

/// An admission warning: prefixed, and cut to what the API server keeps.
fn warning(text: &str) -> String {
    crate::vocab::cut_to(format!("nginx-drain: {text}"), WARNING_LIMIT)
}

#[allow(deprecated)] // See kube.rs: ring keeps the static build simple.
fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The serving certificate, read again when its files change.
#[derive(Debug)]
pub(crate) struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// The files' modification times when loaded.
    stamp: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

fn stamp(cert: &FsPath, key: &FsPath) -> (Option<SystemTime>, Option<SystemTime>) {
    let m = |p: &FsPath| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (m(cert), m(key))
}

fn load_pair(cert: &FsPath, key: &FsPath) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let private =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| format!("{}: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| format!("the key does not belong to the certificate ({e})"))?;
    Ok(Arc::new(certified))
}

impl Reloading {
    pub(crate) fn load(cert: &FsPath, key: &FsPath) -> Result<Reloading, WebhookError> {
        let stamp = stamp(cert, key);
        let loaded = load_pair(cert, key).map_err(|why| WebhookError::Certificate {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            why,
        })?;
        Ok(Reloading {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            state: Mutex::new(Loaded {
                key: loaded,
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    /// The current pair; the files looked at once a [`RELOAD_EVERY`], and
    /// loaded again when they changed. A pair that does not load (a Secret
    /// half-written) keeps the old one in service.
    fn current(&self) -> Arc<CertifiedKey> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.checked.elapsed() >= RELOAD_EVERY {
            s.checked = Instant::now();
            let now = stamp(&self.cert, &self.key);
            if now != s.stamp {
                match load_pair(&self.cert, &self.key) {
                    Ok(k) => {
                        s.key = k;
                        s.stamp = now;
                        tracing::info!(cert = %self.cert.display(), "serving certificate reloaded");
                    }
                    Err(why) => {
                        tracing::warn!(
                            "the serving certificate changed but does not load ({why}): the old one stays in service"
                        )
                    }
                }
            }
        }
        s.key.clone()
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

#[cfg(test)]
mod tests;
