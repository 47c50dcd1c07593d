//! The sidecar's HTTP surface (hyper 1, HTTP/1.1): routes to a handle on the
//! drain. No drain logic lives here: handlers ask the owner and render what
//! it answers.
//!
//! Hardening, because the port is reachable from every pod in a flat
//! network: small per-connection buffers (requests with huge or too many
//! headers are refused without growing memory), a header read timeout
//! (slowloris), request bodies never read (the connection is closed after
//! the answer instead), and a connection limit that evicts the oldest *idle*
//! connection rather than refusing a new one, so that the kubelet's hook and
//! probes are served even when the limit is reached. Connections waiting on
//! a drain are busy and never evicted.
//!
//! Invariants kept here: a request refused for its peer or token never
//! reaches the owner (nothing is signalled, no state changes); a connection
//! waiting on a drain is never evicted.

use std::collections::BTreeMap;

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    ALLOW, AUTHORIZATION, CONTENT_TYPE, HeaderValue, USER_AGENT, WWW_AUTHENTICATE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::auth::{Access, TokenFile};
use crate::drain::Handle;
use crate::metrics::Metrics;
use crate::vocab::OnFailure;

/// A client must send its request head within this time (slowloris).
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long in-flight responses get to finish when the sidecar exits.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Per-connection read buffer: bounds what a request head may use.
const MAX_BUF: usize = 16 * 1024;
/// At most this many header lines per request.
const MAX_HEADERS: usize = 64;
/// Over the connection limit, only connections idle at least this long are
/// closed to make room (unless descriptors run out).
const EVICT_MIN_AGE: Duration = Duration::from_secs(1);

pub(crate) type Body = Full<Bytes>;

/// Access and behaviour of the HTTP surface.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Required bearer token for `/prestop` and `/status`.
    pub(crate) token: Option<Arc<TokenFile>>,
    /// Required bearer token for `/metrics`.
    pub(crate) metrics_token: Option<Arc<TokenFile>>,
    /// Peers allowed on `/prestop` and `/status`.
    pub(crate) access: Arc<Access>,
    pub(crate) on_failure: OnFailure,
    /// Open connections before the oldest idle one is evicted.
    pub(crate) max_connections: usize,
    /// Learn the kubelet's address from its probes and hooks
    /// (`--ignore-kubelet`).
    pub(crate) learn_kubelet: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            token: None,
            metrics_token: None,
            access: Arc::new(Access::new(Vec::new(), false, Vec::new())),
            on_failure: OnFailure::Status,
            max_connections: 512,
            learn_kubelet: true,
        }
    }
}

/// One open connection, as the limit sees it.
struct Slot {
    accepted: std::time::Instant,
    busy: AtomicBool,
    /// Asked to close; it goes when its task next runs.
    evicted: AtomicBool,
    evict: Notify,
}

/// The open connections, oldest first.
#[derive(Default)]
struct Tracker {
    next: AtomicU64,
    slots: Mutex<BTreeMap<u64, Arc<Slot>>>,
}

impl Tracker {
    fn add(&self) -> (u64, Arc<Slot>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            accepted: std::time::Instant::now(),
            busy: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        });
        self.lock().insert(id, slot.clone());
        (id, slot)
    }
    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }
    /// Open connections not already asked to close.
    fn live(&self) -> usize {
        self.lock()
            .values()
            .filter(|s| !s.evicted.load(Ordering::Relaxed))
            .count()
    }
    /// Asks up to `n` of the oldest idle connections that are at least
    /// `min_age` old to close; returns how many were asked. The age spares
    /// a burst of new connections whose requests are still being read.
    fn evict_oldest_idle(&self, n: usize, min_age: Duration) -> usize {
        let slots = self.lock();
        let mut asked = 0;
        for s in slots.values() {
            if asked == n {
                break;
            }
            if !s.busy.load(Ordering::Relaxed)
                && s.accepted.elapsed() >= min_age
                && !s.evicted.swap(true, Ordering::Relaxed)
            {
                s.evict.notify_one();
                asked += 1;
            }
        }
        asked
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Marks a connection busy while a request is being answered.
struct Busy(Arc<Slot>);
impl Busy {
    fn new(slot: &Arc<Slot>) -> Busy {
        slot.busy.store(true, Ordering::Relaxed);
        Busy(slot.clone())
    }
}
impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Relaxed);
    }
}

/// The error a handler returns to make hyper drop the connection; the
/// socket was set to reset (SO_LINGER 0) first.
#[derive(Debug, thiserror::Error)]
#[error("connection reset on purpose (--on-failure reset)")]
pub(crate) struct ResetConnection;

/// What a handler knows about its connection.
#[derive(Clone, Copy)]
pub(crate) struct Conn {
    pub(crate) peer: SocketAddr,
    fd: RawFd,
}

/// Serves until `stop` fires, then lets in-flight responses (hook answers)
/// finish for up to [`SHUTDOWN_GRACE`].
pub(crate) async fn serve(
    listener: TcpListener,
    handle: Handle,
    metrics: Arc<Metrics>,
    opts: Config,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let tracker = Arc::new(Tracker::default());
    let opts = Arc::new(opts);
    loop {
        if tracker.live() >= opts.max_connections
            && tracker.evict_oldest_idle(1, EVICT_MIN_AGE) == 0
        {
            tracing::debug!("connection limit reached and every connection is busy");
        }
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors: make room by closing the
                        // oldest idle connection, then try again.
                        // Out of descriptors: no age spares anyone idle.
                        let asked = tracker.evict_oldest_idle(8, Duration::ZERO);
                        tracing::warn!(error = %e, open = tracker.live(), evicting = asked, "accept failed: closing the oldest idle connections to make room");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                handle.note_own_accept();
                let _ = stream.set_nodelay(true);
                let conn = Conn { peer, fd: stream.as_raw_fd() };
                let (id, slot) = tracker.add();
                let handle = handle.clone();
                let metrics = metrics.clone();
                let opts2 = opts.clone();
                let slot2 = slot.clone();
                let svc = service_fn(move |req| {
                    let handle = handle.clone();
                    let metrics = metrics.clone();
                    let opts = opts2.clone();
                    let busy = Busy::new(&slot2);
                    async move {
                        let ctx = Exchange { conn, handle: &handle, metrics: &metrics, opts: &opts };
                        let r = route(req, ctx).await;
                        drop(busy);
                        r
                    }
                });
                let served = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .max_buf_size(MAX_BUF)
                    .max_headers(MAX_HEADERS)
                    .serve_connection(TokioIo::new(stream), svc);
                let served = graceful.watch(served);
                let tracker = tracker.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        r = served => if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        },
                        _ = slot.evict.notified() => {
                            tracing::debug!(%peer, "idle connection closed to stay within the connection limit");
                        }
                    }
                    tracker.remove(id);
                });
            }
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some HTTP connections were still open at exit");
    }
}

/// The User-Agent prefixes of the kubelet's probes and lifecycle hooks.
const KUBELET_AGENTS: [&[u8]; 2] = [b"kube-probe/", b"kube-lifecycle/"];

/// The kubelet's probes and hooks (by their User-Agent) reveal its address:
/// its probes of NGINX are not clients (see `sockets::probes`). Only from
/// peers the access rule admits and that may be the kubelet (loopback, the
/// node's address, a default gateway, `--allow-cidr`): a User-Agent is
/// anyone's to send. A kubelet request the rule refuses is remembered (a
/// kubelet the rule would refuse is a wiring problem). A hook without the
/// kubelet's User-Agent (a person with curl, a script) teaches nothing: its
/// address may be a client's.
fn learn_kubelet(ctx: &Exchange<'_>) {
    let peer = ctx.conn.peer.ip();
    let admitted = ctx.opts.access.note_kubelet(peer);
    if ctx.opts.learn_kubelet && admitted {
        if ctx.opts.access.may_be_kubelet(peer) {
            ctx.handle.learn_kubelet(peer);
        } else {
            tracing::debug!(%peer, "a request with the kubelet's User-Agent from an address the kubelet does not call from (not loopback, the node's address, a default gateway or --allow-cidr): not taken for the kubelet's");
        }
    }
}

/// The methods each path answers; anything else gets 405 with `Allow`.
fn allowed_methods(path: &str) -> Option<&'static str> {
    match path {
        "/prestop" => Some("GET, POST"),
        "/healthz" | "/readyz" | "/wiring" | "/status" | "/metrics" => Some("GET, HEAD"),
        _ => None,
    }
}

/// What every handler needs.
pub(crate) struct Exchange<'a> {
    pub(crate) conn: Conn,
    pub(crate) handle: &'a Handle,
    pub(crate) metrics: &'a Metrics,
    pub(crate) opts: &'a Config,
}

/// Routes one request.
pub(crate) async fn route(
    req: Request<Incoming>,
    ctx: Exchange<'_>,
) -> Result<Response<Body>, ResetConnection> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let auth = req
        .headers()
        .get(AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec());
    let from_kubelet = req
        .headers()
        .get(USER_AGENT)
        .is_some_and(|ua| KUBELET_AGENTS.iter().any(|k| ua.as_bytes().starts_with(k)));
    if from_kubelet {
        learn_kubelet(&ctx);
    }
    // The body is never read: hyper closes the connection after the answer
    // instead of buffering whatever a client sends.
    drop(req);
    let Some(allow) = allowed_methods(&path) else {
        return Ok(json(
            StatusCode::NOT_FOUND,
            &error_body(&format!(
                "no such path {:?}; the endpoints are /prestop, /status, /healthz, /readyz, /metrics",
                path.chars().take(100).collect::<String>()
            )),
        ));
    };
    if !allow.split(", ").any(|m| m == method.as_str()) {
        return Ok(not_allowed(allow));
    }
    let refused = |token: &Option<Arc<TokenFile>>, check_peer: bool| {
        refusal(
            ctx.conn.peer,
            &path,
            auth.as_deref(),
            token,
            check_peer.then_some(&*ctx.opts.access),
        )
    };
    Ok(match path.as_str() {
        "/prestop" => {
            if let Some(r) = refused(&ctx.opts.token, true) {
                return refused_hook(&ctx, r);
            }
            return prestop(&ctx).await;
        }
        "/healthz" => text(StatusCode::OK, "ok\n".to_string()),
        // The sidecar's readiness in the chart: 503 while a wiring problem
        // makes the hook unable to work (see `crate::wiring`), so that a
        // misconfigured pod never turns Ready. Open, like the probes.
        "/wiring" => {
            let snap = ctx.handle.snapshot();
            let blocking: Vec<String> = snap
                .problems
                .iter()
                .filter(|p| p.blocking)
                .map(|p| format!("{}: {}\n", p.check, p.message))
                .collect();
            if blocking.is_empty() {
                text(StatusCode::OK, "ok\n".to_string())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, blocking.concat())
            }
        }
        "/readyz" => {
            let snap = ctx.handle.snapshot();
            if snap.is_ready() {
                text(StatusCode::OK, "ready\n".to_string())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {}\n", snap.detail),
                )
            }
        }
        "/status" => refused(&ctx.opts.token, true)
            .unwrap_or_else(|| json(StatusCode::OK, &ctx.handle.snapshot())),
        _ => refused(&ctx.opts.metrics_token, false).unwrap_or_else(|| {
            let mut r = Response::new(Full::new(Bytes::from(
                ctx.metrics.render(&ctx.handle.snapshot()),
            )));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }),
    })
}

/// The refusal for a peer `access` (when given) does not admit, or a
/// missing or wrong token, if any.
fn refusal(
    peer: SocketAddr,
    path: &str,
    auth: Option<&[u8]>,
    token: &Option<Arc<TokenFile>>,
    access: Option<&Access>,
) -> Option<Response<Body>> {
    if let Some(access) = access
        && !access.admits(peer.ip())
    {
        tracing::warn!(%peer, %path, allowed = %access.describe(), "refused: the peer's address is not allowed");
        return Some(json(
            StatusCode::FORBIDDEN,
            &error_body(&format!(
                "your address {} is not allowed: only {}",
                peer.ip(),
                access.describe()
            )),
        ));
    }
    if let Some(t) = token
        && !t.accepts(auth)
    {
        tracing::warn!(%peer, %path, "refused: missing or wrong bearer token");
        let mut r = json(
            StatusCode::UNAUTHORIZED,
            &error_body("a valid bearer token is required (Authorization: Bearer <token>)"),
        );
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"nginx-drain\""),
        );
        return Some(r);
    }
    None
}

/// A refused `/prestop`. The kubelet ignores status codes: an answered 401
/// or 403 counts as a successful hook, it goes on to stop NGINX, and NGINX
/// takes the fast shutdown. So with `--on-failure reset` the refusal resets
/// the connection too and the kubelet records FailedPreStopHook.
fn refused_hook(
    ctx: &Exchange<'_>,
    refusal: Response<Body>,
) -> Result<Response<Body>, ResetConnection> {
    let status = refusal.status();
    ctx.metrics.observe_hook(status.as_str());
    let fix = if status == StatusCode::FORBIDDEN {
        format!(
            "its address {} is not allowed (only {}): if it was the kubelet (User-Agent kube-lifecycle/), allow its address with --allow-cidr {} (chart: hookAccess.allowCIDRs); otherwise something other than the kubelet tried to stop NGINX",
            ctx.conn.peer.ip(),
            ctx.opts.access.describe(),
            ipnet::IpNet::from(ctx.conn.peer.ip())
        )
    } else {
        "its Authorization header is not \"Bearer <the token in --token-file>\": fix the preStop hook's httpHeaders (a placeholder left in an overlay does this)".to_string()
    };
    tracing::error!(
        peer = %ctx.conn.peer,
        status = status.as_u16(),
        "a preStop hook was refused and nothing was drained: {fix}"
    );
    if ctx.opts.on_failure == OnFailure::Reset {
        tracing::warn!(peer = %ctx.conn.peer, "resetting the refused hook's connection so that the kubelet records FailedPreStopHook instead of a silent success (--on-failure reset)");
        reset(ctx.conn.fd);
        return Err(ResetConnection);
    }
    Ok(refusal)
}

/// `/prestop`: start or join the drain and answer with its report (or, on
/// failure with `--on-failure reset`, reset the connection).
async fn prestop(ctx: &Exchange<'_>) -> Result<Response<Body>, ResetConnection> {
    let peer = ctx.conn.peer;
    let resp = match ctx.handle.prestop(peer).await {
        Some(report) if !report.outcome.is_success() && ctx.opts.on_failure == OnFailure::Reset => {
            ctx.metrics.observe_hook("reset");
            tracing::warn!(%peer, drain_id = %report.drain_id, outcome = report.outcome.as_str(), "resetting the hook's connection so that the kubelet records FailedPreStopHook (--on-failure reset); the report is on /status");
            reset(ctx.conn.fd);
            return Err(ResetConnection);
        }
        Some(report) => {
            let status = StatusCode::from_u16(report.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            json(status, &*report)
        }
        None => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &error_body("the sidecar is shutting down and cannot start a drain"),
        ),
    };
    ctx.metrics.observe_hook(resp.status().as_str());
    Ok(resp)
}

/// Makes the coming close of `fd` send a TCP RST.
fn reset(fd: RawFd) {
    // SAFETY: the connection that owns `fd` is alive while its handler runs.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let _ = socket2::SockRef::from(&fd).set_linger(Some(Duration::ZERO));
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

fn error_body(msg: &str) -> ErrorBody<'_> {
    ErrorBody { error: msg }
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let mut body = serde_json::to_vec_pretty(value)
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot render JSON: {e}\"}}").into_bytes());
    body.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = json(
        StatusCode::METHOD_NOT_ALLOWED,
        &error_body(&format!("method not allowed; use {allow}")),
    );
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    resp
}
