//! The sidecar's HTTP surface (hyper 1, HTTP/1.1): routes to a handle on the
//! drain. No drain logic lives here: handlers ask the owner and render what
//! it answers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::drain::Handle;

/// A client must send its request head within this time (slowloris).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long in-flight responses get to finish when the sidecar exits.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

pub type Body = Full<Bytes>;

/// Serves until `stop` fires, then lets in-flight responses (hook answers)
/// finish for up to [`SHUTDOWN_GRACE`].
pub async fn serve(listener: TcpListener, handle: Handle, mut stop: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let handle = handle.clone();
                let svc = service_fn(move |req| {
                    let handle = handle.clone();
                    async move { Ok::<_, Infallible>(route(req, peer, &handle).await) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
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

/// Routes one request. Public so that tests and the demo can reason about
/// the same table the server uses.
pub async fn route(req: Request<Incoming>, peer: SocketAddr, handle: &Handle) -> Response<Body> {
    let method = req.method().clone();
    match req.uri().path() {
        "/prestop" => {
            if method != Method::GET && method != Method::POST {
                return not_allowed("GET, POST");
            }
            match handle.prestop(peer).await {
                Some(report) => {
                    let status = StatusCode::from_u16(report.http_status())
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    json(status, &*report)
                }
                None => json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &error_body("the sidecar is shutting down and cannot start a drain"),
                ),
            }
        }
        "/healthz" => {
            if method != Method::GET && method != Method::HEAD {
                return not_allowed("GET, HEAD");
            }
            text(StatusCode::OK, "ok\n".to_string())
        }
        "/readyz" => {
            if method != Method::GET && method != Method::HEAD {
                return not_allowed("GET, HEAD");
            }
            let snap = handle.snapshot();
            if snap.is_ready() {
                text(StatusCode::OK, "ready\n".to_string())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {}\n", snap.detail),
                )
            }
        }
        "/status" => {
            if method != Method::GET && method != Method::HEAD {
                return not_allowed("GET, HEAD");
            }
            json(StatusCode::OK, &handle.snapshot())
        }
        other => json(
            StatusCode::NOT_FOUND,
            &error_body(&format!(
                "no such path {other:?}; the endpoints are /prestop, /status, /healthz, /readyz"
            )),
        ),
    }
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
