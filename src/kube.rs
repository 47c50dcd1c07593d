//! All knowledge of the Kubernetes API: the in-cluster configuration (the
//! API server's address, the service account's CA and token) and the one
//! call the sidecar makes, creating an Event on its own pod (`--events`).
//!
//! Why a hand-held HTTP/1.1 POST and not a client library: one call, one
//! resource, and the binary stays small and static (rustls with ring, no
//! OpenSSL). Why the core `v1` Event and not `events.k8s.io/v1`: it is what
//! `kubectl describe pod` and event exporters list, on every version.
//!
//! An Event is a courtesy, never part of the drain: it is posted after the
//! report exists, with a bounded time, and a failure is one log line that
//! names the fix (RBAC, the token, the address), never an error of the drain.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::json;

/// Where a pod's service account is mounted.
const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How long one Event may take, connection and answer included: the
/// sidecar's exit waits for it at most this long.
pub(crate) const POST_LIMIT: Duration = Duration::from_secs(5);

/// The API server's `message` field is validated at 1 KiB (events.k8s.io's
/// `note`); a longer one is cut at a character boundary.
const MESSAGE_LIMIT: usize = 1024;

/// The pod an Event is about (the downward API's `metadata.name`,
/// `metadata.namespace` and `metadata.uid`: `kubectl describe pod` lists
/// the Events whose object has the pod's uid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodRef {
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) uid: String,
}

/// What happened, in Kubernetes' words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    /// `Warning` rather than `Normal`.
    pub(crate) warning: bool,
    /// One CamelCase word (`Drained`, `DrainForced`).
    pub(crate) reason: &'static str,
    pub(crate) message: String,
}

/// Why Events cannot be posted, with what to do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KubeError {
    #[error(
        "--events needs the Kubernetes API from inside a pod, but {0} is not set: run the sidecar in a pod, or drop --events"
    )]
    NotInCluster(&'static str),
    #[error(
        "--events needs the pod's {var} from the downward API (fieldRef {field}): add it to the sidecar's env (the chart and `nginx-drain inject` set it)"
    )]
    MissingPodField {
        var: &'static str,
        field: &'static str,
    },
    #[error(
        "cannot read the service account's {what} {path} ({error}): mount the service account token (automountServiceAccountToken: true) or drop --events"
    )]
    ServiceAccount {
        what: &'static str,
        path: PathBuf,
        error: String,
    },
    #[error("cannot reach the API server at {addr} ({error})")]
    Unreachable { addr: String, error: String },
    #[error(
        "the API server refused to create the Event ({status}): give the pod's service account `create` on `events` in namespace {namespace} (chart: events.enabled creates that Role){detail}"
    )]
    Forbidden {
        status: u16,
        namespace: String,
        detail: String,
    },
    #[error("the API server answered {status} to the Event{detail}")]
    Status { status: u16, detail: String },
    #[error("the Event took longer than {0:?}")]
    TimedOut(Duration),
}

/// Posts Events on this pod through the API server.
#[derive(Clone)]
pub(crate) struct Events {
    /// `host:port`, with an IPv6 host in brackets.
    authority: String,
    host: String,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    token: PathBuf,
    pod: PodRef,
    /// The node's name, the Event's `source.host` (env `NODE_NAME`).
    node: Option<String>,
}

impl Events {
    /// The in-cluster configuration, as every client in a pod reads it:
    /// `KUBERNETES_SERVICE_HOST`/`_PORT`, the service account's `ca.crt` and
    /// `token` (read again for each Event: bound tokens rotate), and the
    /// pod from `POD_NAME`, `POD_NAMESPACE`, `POD_UID`.
    pub(crate) fn in_cluster() -> Result<Events, KubeError> {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        let host = var("KUBERNETES_SERVICE_HOST")
            .ok_or(KubeError::NotInCluster("KUBERNETES_SERVICE_HOST"))?;
        let port = var("KUBERNETES_SERVICE_PORT")
            .and_then(|p| p.parse().ok())
            .unwrap_or(443);
        let field = |var_name, field| {
            var(var_name).ok_or(KubeError::MissingPodField {
                var: var_name,
                field,
            })
        };
        let pod = PodRef {
            name: field("POD_NAME", "metadata.name")?,
            namespace: field("POD_NAMESPACE", "metadata.namespace")?,
            uid: field("POD_UID", "metadata.uid")?,
        };
        let dir = var("NGINX_DRAIN_SERVICE_ACCOUNT_DIR")
            .map_or_else(|| SERVICE_ACCOUNT.into(), PathBuf::from);
        Events::new(host, port, &dir, pod, var("NODE_NAME"))
    }

    fn new(
        host: String,
        port: u16,
        service_account: &Path,
        pod: PodRef,
        node: Option<String>,
    ) -> Result<Events, KubeError> {
        let ca = service_account.join("ca.crt");
        let sa_error = |what, path: &Path, error: String| KubeError::ServiceAccount {
            what,
            path: path.to_path_buf(),
            error,
        };
        let mut roots = rustls::RootCertStore::empty();
        let certs =
            CertificateDer::pem_file_iter(&ca).map_err(|e| sa_error("CA", &ca, e.to_string()))?;
        for cert in certs {
            let cert = cert.map_err(|e| sa_error("CA", &ca, e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| sa_error("CA", &ca, e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(sa_error("CA", &ca, "no certificate in it".into()));
        }
        // Read once now, so that a token this UID cannot read (projected
        // tokens are 0600 root's unless the pod sets fsGroup or every
        // container runs as one UID) is said at the start.
        let token = service_account.join("token");
        std::fs::read(&token).map_err(|e| {
            sa_error(
                "token",
                &token,
                format!("{e}; a projected token is readable by the pod's fsGroup: set securityContext.fsGroup to the sidecar's group"),
            )
        })?;
        // ring: a static build for both architectures with no C toolchain
        // beyond the cross gcc (aws-lc-rs needs cmake and its own build).
        // Its missing post-quantum key exchange does not matter for an
        // Event's text on the cluster's own network.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| sa_error("CA", &ca, e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let authority = match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => format!("[{host}]:{port}"),
            _ => format!("{host}:{port}"),
        };
        Ok(Events {
            authority,
            host,
            port,
            tls: Arc::new(tls),
            token,
            pod,
            node,
        })
    }

    pub(crate) fn pod(&self) -> &PodRef {
        &self.pod
    }

    /// Creates `event` on the pod, within [`POST_LIMIT`].
    pub(crate) async fn post(&self, event: &Event) -> Result<(), KubeError> {
        let body = body(&self.pod, self.node.as_deref(), event, SystemTime::now());
        let path = format!("/api/v1/namespaces/{}/events", self.pod.namespace);
        tokio::time::timeout(POST_LIMIT, self.send(&path, body.to_string()))
            .await
            .map_err(|_| KubeError::TimedOut(POST_LIMIT))?
    }

    async fn send(&self, path: &str, body: String) -> Result<(), KubeError> {
        let unreachable = |error: String| KubeError::Unreachable {
            addr: self.authority.clone(),
            error,
        };
        let token =
            std::fs::read_to_string(&self.token).map_err(|e| KubeError::ServiceAccount {
                what: "token",
                path: self.token.clone(),
                error: e.to_string(),
            })?;
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let name =
            ServerName::try_from(self.host.clone()).map_err(|e| unreachable(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| unreachable(format!("TLS: {e}")))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(conn);
        let request = Request::post(path)
            .header(hyper::header::HOST, &self.authority)
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            )
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::ACCEPT, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("nginx-drain/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| unreachable(e.to_string()))?;
        let answer = send
            .send_request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = answer.status().as_u16();
        let text = answer
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if (200..300).contains(&status) {
            return Ok(());
        }
        // The API server's Status object says why.
        let detail = serde_json::from_slice::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(|m| format!(": {m}")))
            .unwrap_or_default();
        Err(match status {
            401 | 403 => KubeError::Forbidden {
                status,
                namespace: self.pod.namespace.clone(),
                detail,
            },
            _ => KubeError::Status { status, detail },
        })
    }
}

/// The Event object: a `v1` Event on the pod, counted once, stamped now.
fn body(pod: &PodRef, node: Option<&str>, event: &Event, now: SystemTime) -> serde_json::Value {
    let at = humantime::format_rfc3339_seconds(now).to_string();
    let message = crate::vocab::cut_to(event.message.clone(), MESSAGE_LIMIT);
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "generateName": format!("{}.nginx-drain.", pod.name),
            "namespace": pod.namespace,
        },
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": pod.name,
            "namespace": pod.namespace,
            "uid": pod.uid,
        },
        "reason": event.reason,
        "message": message,
        "type": if event.warning { "Warning" } else { "Normal" },
        "source": {"component": "nginx-drain", "host": node},
        "reportingComponent": "nginx-drain",
        "reportingInstance": pod.name,
        "firstTimestamp": at,
        "lastTimestamp": at,
        "count": 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodRef {
        PodRef {
            name: "web-7d9f".into(),
            namespace: "shop".into(),
            uid: "0a1b2c3d-0000-4000-8000-000000000001".into(),
        }
    }

    #[test]
    fn the_event_names_the_pod_by_uid_so_that_describe_lists_it() {
        let e = Event {
            warning: true,
            reason: "DrainForced",
            message: "forced: 1 WebSocket cut by SIGTERM at 22.9 s".into(),
        };
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        let b = body(&pod(), Some("node-1"), &e, at);
        assert_eq!(b["involvedObject"]["uid"], pod().uid);
        assert_eq!(b["involvedObject"]["kind"], "Pod");
        assert_eq!(b["metadata"]["namespace"], "shop");
        assert_eq!(b["metadata"]["generateName"], "web-7d9f.nginx-drain.");
        assert_eq!(b["type"], "Warning");
        assert_eq!(b["reason"], "DrainForced");
        assert_eq!(b["source"]["host"], "node-1");
        assert_eq!(b["firstTimestamp"], "2026-11-30T00:53:20Z");
        assert_eq!(b["count"], 1);
    }

    #[test]
    fn a_long_message_is_cut_at_a_character_boundary() {
        let e = Event {
            warning: false,
            reason: "Drained",
            message: "é".repeat(700),
        };
        let b = body(&pod(), None, &e, SystemTime::UNIX_EPOCH);
        let m = b["message"].as_str().unwrap();
        assert!(m.len() <= MESSAGE_LIMIT, "{}", m.len());
        assert!(m.ends_with("..."));
        assert_eq!(b["type"], "Normal");
        assert!(b["source"]["host"].is_null());
    }

    #[test]
    fn configuration_errors_say_what_to_set() {
        let dir = tempfile::tempdir().unwrap();
        let err = Events::new("10.96.0.1".into(), 443, dir.path(), pod(), None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("ca.crt") && err.contains("automountServiceAccountToken"),
            "{err}"
        );
        std::fs::write(dir.path().join("ca.crt"), "not a certificate\n").unwrap();
        let err = Events::new("10.96.0.1".into(), 443, dir.path(), pod(), None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no certificate"), "{err}");
    }
}

#[cfg(test)]
mod over_tls {
    //! The Event's POST over real TLS to a stand-in API server on loopback
    //! (rustls, a certificate for 127.0.0.1 from a CA the service account
    //! directory holds, as in a pod).
    use super::*;
    use rustls_pki_types::PrivateKeyDer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An API server that answers every request with `status` and the
    /// request it got.
    async fn api_server(
        dir: &Path,
        status: &'static str,
    ) -> (u16, tokio::task::JoinHandle<String>) {
        let pair = testbed::tls::pair(&["127.0.0.1"]);
        std::fs::write(dir.join("ca.crt"), &pair.ca_pem).unwrap();
        std::fs::write(dir.join("token"), "the-token\n").unwrap();
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(pair.cert_der)],
                PrivateKeyDer::try_from(pair.key_der).unwrap(),
            )
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let served = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then the body by its Content-Length.
            loop {
                let n = tls.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if got.len() >= end + 4 + len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            let body = r#"{"kind":"Status","message":"events is forbidden: User \"system:serviceaccount:shop:default\" cannot create resource \"events\""}"#;
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            tls.write_all(answer.as_bytes()).await.unwrap();
            tls.shutdown().await.unwrap();
            String::from_utf8_lossy(&got).into_owned()
        });
        (port, served)
    }

    fn event() -> Event {
        Event {
            warning: false,
            reason: "Drained",
            message: "drain 7ebae3f3: nginx exited gracefully".into(),
        }
    }

    fn pod() -> PodRef {
        PodRef {
            name: "web-1".into(),
            namespace: "shop".into(),
            uid: "u-1".into(),
        }
    }

    #[tokio::test]
    async fn an_event_is_posted_to_the_pods_namespace_with_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let (port, served) = api_server(dir.path(), "201 Created").await;
        let events = Events::new("127.0.0.1".into(), port, dir.path(), pod(), None).unwrap();
        events.post(&event()).await.unwrap();
        let got = served.await.unwrap();
        assert!(
            got.starts_with("POST /api/v1/namespaces/shop/events HTTP/1.1\r\n"),
            "{got}"
        );
        assert!(got.contains("authorization: Bearer the-token\r\n"), "{got}");
        let body: serde_json::Value =
            serde_json::from_str(&got[got.find("\r\n\r\n").unwrap() + 4..]).unwrap();
        assert_eq!(body["involvedObject"]["uid"], "u-1");
        assert_eq!(body["reason"], "Drained");
    }

    #[tokio::test]
    async fn a_refusal_names_the_rbac_to_grant() {
        let dir = tempfile::tempdir().unwrap();
        let (port, served) = api_server(dir.path(), "403 Forbidden").await;
        let events = Events::new("127.0.0.1".into(), port, dir.path(), pod(), None).unwrap();
        let err = events.post(&event()).await.unwrap_err().to_string();
        served.await.unwrap();
        assert!(
            err.contains("`create` on `events` in namespace shop")
                && err.contains("cannot create resource"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_api_server_is_one_error_in_bounded_time() {
        let dir = tempfile::tempdir().unwrap();
        let (port, served) = api_server(dir.path(), "201 Created").await;
        served.abort();
        let events = Events::new("127.0.0.1".into(), port, dir.path(), pod(), None).unwrap();
        let err = events.post(&event()).await.unwrap_err().to_string();
        assert!(
            err.contains("cannot reach the API server at 127.0.0.1:"),
            "{err}"
        );
    }
}
