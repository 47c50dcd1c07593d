//! What `inject` knows of each NGINX-based controller: how to recognise its
//! NGINX container, the UID its NGINX master runs as, which of its ports
//! carry clients, the preStop hook it ships, and where its NGINX
//! configuration keeps `worker-shutdown-timeout`. Everything controller-
//! specific is here, so that adding one is one entry.
//!
//! Sources: the charts in `../shared/upstream-charts/` (their README says how
//! each image starts and stops NGINX).

use serde_norway::Value;

/// An NGINX-based image `inject` recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Controller {
    /// kubernetes/ingress-nginx: the controller runs NGINX as UID 101.
    IngressNginx,
    /// NGINX Inc's NGINX Ingress Controller.
    NginxInc,
    /// Kong Gateway (OpenResty's nginx is the main process).
    Kong,
    /// Apache APISIX (openresty is the main process).
    Apisix,
    /// NGINX Gateway Fabric's data plane.
    GatewayFabric,
    /// NGINX or OpenResty images (official, unprivileged, Bitnami, ...).
    Nginx,
}

impl Controller {
    /// The controller whose NGINX runs in an image, from the image
    /// reference (`registry/repo:tag@digest`); None for images that are not
    /// NGINX (the controllers' other containers included: Kong's ingress
    /// controller, APISIX's ingress controller, NGF's control plane).
    pub(crate) fn of_image(image: &str) -> Option<Controller> {
        let repo = image_repository(image);
        let last = repo.rsplit('/').next().unwrap_or(repo);
        if repo.ends_with("ingress-nginx/controller")
            || repo.ends_with("ingress-nginx/controller-chroot")
        {
            Some(Controller::IngressNginx)
        } else if last == "nginx-ingress" || last == "nginx-plus-ingress" {
            Some(Controller::NginxInc)
        } else if repo.ends_with("nginx-gateway-fabric/nginx")
            || repo.ends_with("nginx-gateway-fabric/nginx-plus")
        {
            Some(Controller::GatewayFabric)
        } else if last == "kong" || last == "kong-gateway" {
            Some(Controller::Kong)
        } else if last == "apisix" {
            Some(Controller::Apisix)
        } else if last == "nginx" || last.starts_with("nginx-unprivileged") || last == "openresty" {
            Some(Controller::Nginx)
        } else {
            None
        }
    }

    /// The UID the image's NGINX master runs as when the pod spec does not
    /// say; None when the image does not fix one (the official `nginx`
    /// image's master is root, but a user's image may differ: ask).
    pub(crate) fn default_uid(self) -> Option<i64> {
        match self {
            Controller::IngressNginx | Controller::NginxInc | Controller::GatewayFabric => {
                Some(101)
            }
            Controller::Kong => Some(1000),
            Controller::Apisix => Some(636),
            Controller::Nginx => None,
        }
    }

    /// The ConfigMap key for NGINX's `worker_shutdown_timeout`, and the
    /// flag that names the ConfigMap in the controller's args.
    pub(crate) fn shutdown_timeout_key(self) -> Option<ConfigKey> {
        match self {
            Controller::IngressNginx => Some(ConfigKey {
                arg: "--configmap",
                key: "worker-shutdown-timeout",
                default: Some(240.0),
            }),
            Controller::NginxInc => Some(ConfigKey {
                arg: "-nginx-configmaps",
                key: "worker-shutdown-timeout",
                default: None,
            }),
            _ => None,
        }
    }

    /// The environment variable through which the controller's image sets
    /// NGINX's `worker_shutdown_timeout`: Kong turns `KONG_NGINX_MAIN_<X>`
    /// into the directive `<x>` in nginx.conf's main context (its "injected
    /// NGINX directives"). Kong sets no timer of its own.
    pub(crate) fn shutdown_timeout_env(self) -> Option<&'static str> {
        match self {
            Controller::Kong => Some("KONG_NGINX_MAIN_WORKER_SHUTDOWN_TIMEOUT"),
            _ => None,
        }
    }

    /// Where the controller keeps NGINX's `worker_shutdown_timeout` when
    /// `inject` cannot set it, in words: what a user changes so that NGINX
    /// closes WebSockets and streams within the drain budget (`limit`
    /// seconds), instead of the sidecar's SIGTERM at the escalation point.
    pub(crate) fn shutdown_timeout_hint(self, limit: u64) -> Option<String> {
        match self {
            Controller::Apisix => Some(format!(
                "APISIX keeps NGINX's worker_shutdown_timeout in its config.yaml (nginx_config.worker_shutdown_timeout, 240s by default; the chart has no value for it), which inject does not edit: set it to at most {limit}s, or a WebSocket or stream open at the hook makes the drain forced (NGINX gets SIGTERM at the escalation point)"
            )),
            Controller::GatewayFabric => Some(format!(
                "NGINX Gateway Fabric sets no worker_shutdown_timeout and its NginxProxy has no field for it: a WebSocket or stream open at the hook makes the drain forced (NGINX gets SIGTERM at the escalation point) unless a SnippetsFilter in the main context sets worker_shutdown_timeout to at most {limit}s"
            )),
            _ => None,
        }
    }

    /// An argument the controller's container gets, when it has none with
    /// that flag: ingress-nginx sleeps `--post-shutdown-grace-period` (10 s)
    /// after NGINX has exited before it exits itself; after a drain there is
    /// nothing left to wait for, and the pod would linger 10 s more.
    pub(crate) fn extra_arg(self) -> Option<(&'static str, &'static str)> {
        match self {
            Controller::IngressNginx => Some((
                "--post-shutdown-grace-period",
                "--post-shutdown-grace-period=0",
            )),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Controller::IngressNginx => "ingress-nginx",
            Controller::NginxInc => "NGINX Ingress Controller",
            Controller::Kong => "Kong",
            Controller::Apisix => "APISIX",
            Controller::GatewayFabric => "NGINX Gateway Fabric",
            Controller::Nginx => "NGINX",
        }
    }
}

/// Where a controller keeps NGINX's worker shutdown timeout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConfigKey {
    /// The controller's flag naming its ConfigMap (`NAMESPACE/NAME`).
    pub(crate) arg: &'static str,
    pub(crate) key: &'static str,
    /// The controller's value when the key is absent (seconds); None: NGINX
    /// waits for every connection (no timer).
    pub(crate) default: Option<f64>,
}

/// `registry/repo` of an image reference, without tag or digest.
fn image_repository(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    // A tag follows the last ':' after the last '/' (a registry may have a
    // port: `host:5000/repo:tag`).
    match no_digest.rfind(':') {
        Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
        _ => no_digest,
    }
}

/// Port names that carry no client traffic: connections to them never hold
/// a drain (an exporter scraped every 2 s would otherwise make every drain
/// wait `--max-delay`).
pub(crate) fn is_client_port(name: &str) -> bool {
    const NOT_CLIENTS: [&str; 12] = [
        "metrics",
        "webhook",
        "admin",
        "status",
        "prometheus",
        "health",
        "readiness",
        "liveness",
        "control",
        "probe",
        "profil",
        "agent",
    ];
    let n = name.to_ascii_lowercase();
    !NOT_CLIENTS.iter().any(|x| n.contains(x))
}

/// What a preStop hook that `inject` replaces did, in words for stderr.
pub(crate) fn describe_hook(hook: &Value) -> String {
    if let Some(cmd) = hook["exec"]["command"].as_sequence() {
        let words: Vec<&str> = cmd.iter().filter_map(Value::as_str).collect();
        let text = words.join(" ");
        let why = if text.contains("wait-shutdown") {
            "ingress-nginx's own quit"
        } else if text.contains("kong quit") {
            "Kong's fixed wait, then SIGQUIT"
        } else if text.contains("sleep") {
            "a fixed sleep"
        } else if text.contains("nginx -s quit") || text.contains("nginx -s stop") {
            "a quit with no wait for the endpoints"
        } else {
            "a command"
        };
        format!("exec `{text}` ({why})")
    } else if !hook["httpGet"].is_null() {
        format!(
            "httpGet {}",
            hook["httpGet"]["path"].as_str().unwrap_or("/")
        )
    } else if !hook["sleep"].is_null() {
        let secs = hook["sleep"]["seconds"].as_i64().unwrap_or_default();
        format!("sleep {secs}s (a fixed sleep)")
    } else {
        "a hook".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_recognised_by_repository_not_tag_or_registry() {
        let cases = [
            (
                "registry.k8s.io/ingress-nginx/controller:v1.15.1@sha256:594c",
                Some(Controller::IngressNginx),
            ),
            ("nginx/nginx-ingress:5.6.0", Some(Controller::NginxInc)),
            (
                "private.example:5000/nginx/nginx-ingress",
                Some(Controller::NginxInc),
            ),
            ("kong:3.9", Some(Controller::Kong)),
            ("kong/kong-gateway:3.9", Some(Controller::Kong)),
            ("kong/kubernetes-ingress-controller:3.5", None),
            ("apache/apisix:3.16.0-ubuntu", Some(Controller::Apisix)),
            ("apache/apisix-ingress-controller:1.8", None),
            (
                "ghcr.io/nginx/nginx-gateway-fabric/nginx:2.6.7",
                Some(Controller::GatewayFabric),
            ),
            ("ghcr.io/nginx/nginx-gateway-fabric:2.6.7", None),
            ("nginx:1.27", Some(Controller::Nginx)),
            (
                "nginxinc/nginx-unprivileged:1.27-alpine",
                Some(Controller::Nginx),
            ),
            ("openresty/openresty:alpine", Some(Controller::Nginx)),
            ("busybox:1.28", None),
            ("prom/nginx-prometheus-exporter:1.1", None),
        ];
        for (image, want) in cases {
            assert_eq!(Controller::of_image(image), want, "{image}");
        }
    }

    #[test]
    fn client_ports_are_told_from_exporters_and_admin_ports() {
        for p in ["http", "https", "proxy", "proxy-tls", "tls", "web"] {
            assert!(is_client_port(p), "{p}");
        }
        for p in [
            "metrics",
            "webhook",
            "admin",
            "status",
            "control",
            "cmetrics",
            "prometheus",
        ] {
            assert!(!is_client_port(p), "{p}");
        }
    }
}
