//! The rules that the API server and the kubelet enforce on a pod and that
//! JSON schemas cannot express ("exactly one handler"), plus the wiring
//! nginx-drain needs to work at all. Run on every rendered workload of our
//! chart and of the overlays on the upstream charts (`tests/chart.rs`).
//!
//! `check` returns one sentence per violation, naming the container and
//! the fix; empty means the pod would be admitted and drained.

use std::time::Duration;

use serde_json::Value;

/// The kubelet leaves at least this long after the hook before SIGKILL.
pub const KUBELET_MIN_AFTER_HOOK: Duration = Duration::from_secs(2);
/// What the sidecar keeps before the end of its budget for SIGTERM and the
/// answer (`drain/budget.rs`: 2 s fast shutdown + 0.25 s answer margin),
/// plus a second for NGINX to close and exit after its timer fires.
pub const ESCALATION_AND_EXIT: Duration = Duration::from_millis(3_250);
/// The sidecar's defaults, as `cli.rs` has them.
const DEFAULT_PORT: u16 = 10266;
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(25);
const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(15);

const HOOK_HANDLERS: [&str; 4] = ["exec", "httpGet", "tcpSocket", "sleep"];
const PROBE_HANDLERS: [&str; 4] = ["exec", "httpGet", "tcpSocket", "grpc"];

/// The pod template of a workload (or the spec of a Pod).
pub fn pod_spec(obj: &Value) -> Option<&Value> {
    match obj["kind"].as_str()? {
        "Deployment" | "DaemonSet" | "StatefulSet" | "ReplicaSet" | "Job" => {
            Some(&obj["spec"]["template"]["spec"])
        }
        "Pod" => Some(&obj["spec"]),
        _ => None,
    }
}

/// What the sidecar was told, from its args and env.
#[derive(Debug, Clone, PartialEq)]
pub struct SidecarFlags {
    pub port: u16,
    pub drain_timeout: Duration,
    pub max_delay: Duration,
    pub worker_shutdown_timeout: Option<Duration>,
}

fn flag(c: &Value, name: &str) -> Option<String> {
    let prefix = format!("--{name}=");
    let from_args = c["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix(&prefix).map(str::to_string));
    let env = format!("NGINX_DRAIN_{}", name.to_uppercase().replace('-', "_"));
    from_args.or_else(|| {
        c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == env.as_str())
            .and_then(|e| e["value"].as_str().map(str::to_string))
    })
}

pub fn sidecar_flags(c: &Value) -> SidecarFlags {
    let duration = |name, default| {
        flag(c, name).map_or(default, |v| {
            humantime::parse_duration(&v).unwrap_or_else(|e| panic!("--{name}={v}: {e}"))
        })
    };
    SidecarFlags {
        port: flag(c, "listen")
            .and_then(|l| l.rsplit(':').next().and_then(|p| p.parse().ok()))
            .unwrap_or(DEFAULT_PORT),
        drain_timeout: duration("drain-timeout", DEFAULT_DRAIN_TIMEOUT),
        max_delay: duration("max-delay", DEFAULT_MAX_DELAY),
        worker_shutdown_timeout: flag(c, "worker-shutdown-timeout")
            .map(|v| humantime::parse_duration(&v).expect("--worker-shutdown-timeout")),
    }
}

fn name(c: &Value) -> &str {
    c["name"].as_str().unwrap_or("?")
}

fn is_sidecar(c: &Value) -> bool {
    c["image"]
        .as_str()
        .is_some_and(|i| i.contains("nginx-drain"))
        || c["name"] == "nginx-drain"
}

fn handlers(v: &Value, kinds: &[&'static str]) -> Vec<&'static str> {
    kinds.iter().copied().filter(|k| !v[*k].is_null()).collect()
}

/// The UID a container runs as, as far as the manifest says.
fn uid(c: &Value, pod: &Value) -> Option<i64> {
    c["securityContext"]["runAsUser"]
        .as_i64()
        .or_else(|| pod["securityContext"]["runAsUser"].as_i64())
}

fn has_cap_kill(c: &Value) -> bool {
    c["securityContext"]["capabilities"]["add"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|cap| cap.eq_ignore_ascii_case("KILL") || cap.eq_ignore_ascii_case("CAP_KILL"))
}

/// An httpGet's port must be a number or a port name declared on the same
/// container (the kubelet resolves names in that container only).
fn port_resolves(c: &Value, port: &Value) -> Option<u16> {
    if let Some(n) = port.as_u64() {
        return u16::try_from(n).ok();
    }
    let want = port.as_str()?;
    if let Ok(n) = want.parse() {
        return Some(n);
    }
    c["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == want)
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|n| u16::try_from(n).ok())
}

/// A hook or probe `v` of container `c` (named `what`): exactly one handler,
/// and an httpGet port that resolves on that container.
fn check_handler(bad: &mut Vec<String>, c: &Value, what: &str, v: &Value, kinds: &[&'static str]) {
    if v.is_null() {
        return;
    }
    let n = name(c);
    let found = handlers(v, kinds);
    if found.len() != 1 {
        bad.push(format!(
            "container {n}: {what} has {} handlers {found:?}; exactly one is allowed: the API server rejects the pod (set the others to null in the values)",
            found.len()
        ));
    }
    if !v["httpGet"].is_null() && port_resolves(c, &v["httpGet"]["port"]).is_none() {
        bad.push(format!(
            "container {n}: {what}.httpGet.port {} is neither a number nor a port declared on this container",
            v["httpGet"]["port"]
        ));
    }
}

/// Checks one workload (or pod). `config` is the controller's NGINX
/// configuration (ConfigMap data) when there is one, for the worker
/// shutdown timeout.
pub fn check(obj: &Value, config: Option<&Value>) -> Vec<String> {
    let Some(pod) = pod_spec(obj) else {
        return Vec::new();
    };
    let mut bad = Vec::new();
    let inits: Vec<&Value> = pod["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let mains: Vec<&Value> = pod["containers"].as_array().into_iter().flatten().collect();

    for (c, init) in inits
        .iter()
        .map(|c| (*c, true))
        .chain(mains.iter().map(|c| (*c, false)))
    {
        let n = name(c);
        for hook in ["preStop", "postStart"] {
            let what = format!("lifecycle.{hook}");
            check_handler(&mut bad, c, &what, &c["lifecycle"][hook], &HOOK_HANDLERS);
        }
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            check_handler(&mut bad, c, probe, &c[probe], &PROBE_HANDLERS);
        }
        if !init && !c["restartPolicy"].is_null() {
            bad.push(format!(
                "container {n}: restartPolicy is allowed only on init containers (native sidecars)"
            ));
        }
    }

    let sidecars: Vec<&Value> = inits
        .iter()
        .chain(&mains)
        .copied()
        .filter(|c| is_sidecar(c))
        .collect();
    let [sidecar] = sidecars[..] else {
        bad.push(format!(
            "{} nginx-drain containers in the pod: exactly one is needed",
            sidecars.len()
        ));
        return bad;
    };
    if inits.iter().any(|c| is_sidecar(c)) && sidecar["restartPolicy"] != "Always" {
        bad.push(
            "the nginx-drain init container needs restartPolicy: Always (a native sidecar), or it blocks the pod's start"
                .into(),
        );
    }
    let flags = sidecar_flags(sidecar);

    if pod["shareProcessNamespace"] != true {
        bad.push(
            "shareProcessNamespace is not true: nginx-drain cannot see NGINX's processes".into(),
        );
    }
    let grace = Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30));
    if grace < flags.drain_timeout + KUBELET_MIN_AFTER_HOOK {
        bad.push(format!(
            "terminationGracePeriodSeconds {}s < --drain-timeout {} + {}s: the kubelet would SIGKILL NGINX mid-drain",
            grace.as_secs(),
            humantime::format_duration(flags.drain_timeout),
            KUBELET_MIN_AFTER_HOOK.as_secs()
        ));
    }

    // The hooks: exactly one preStop reaches the sidecar; nothing else in
    // the pod stops NGINX on its own.
    let mut reaching = Vec::new();
    for c in inits.iter().chain(&mains) {
        let h = &c["lifecycle"]["preStop"];
        if h.is_null() {
            continue;
        }
        let get = &h["httpGet"];
        let to_sidecar = !get.is_null()
            && get["path"] == "/prestop"
            && port_resolves(c, &get["port"]) == Some(flags.port);
        if to_sidecar {
            reaching.push(*c);
        }
        if !h["exec"].is_null() || (!get.is_null() && !to_sidecar) {
            bad.push(format!(
                "container {}: a preStop hook other than nginx-drain's ({}): it would stop or delay NGINX beside the drain; remove it",
                name(c),
                h
            ));
        }
        if let Some(headers) = get["httpHeaders"].as_array() {
            for hd in headers {
                let v = hd["value"].as_str().unwrap_or_default();
                if hd["name"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case("authorization"))
                    && (!v.starts_with("Bearer ")
                        || v[7..].is_empty()
                        || v[7..].contains(['<', ' ', '>']))
                {
                    bad.push(format!(
                        "container {}: the preStop hook's Authorization header is {v:?}, not \"Bearer <the token>\": the sidecar refuses it (set it with --set-string as the overlay says)",
                        name(c)
                    ));
                }
            }
        }
    }
    let nginx = match reaching[..] {
        [c] => Some(c),
        _ => {
            bad.push(format!(
                "{} preStop hooks reach nginx-drain (GET /prestop on port {}): exactly one is needed, on the NGINX container",
                reaching.len(),
                flags.port
            ));
            None
        }
    };
    if let Some(nginx) = nginx {
        if is_sidecar(nginx) {
            bad.push("the preStop hook is on the sidecar itself: put it on the NGINX container, whose stop it must delay".into());
        }
        // The official images' masters run as root when nothing says otherwise.
        let nginx_uid = uid(nginx, pod).unwrap_or(0);
        let sidecar_uid = uid(sidecar, pod).unwrap_or(101);
        if nginx_uid != sidecar_uid && !has_cap_kill(sidecar) {
            bad.push(format!(
                "nginx-drain runs as UID {sidecar_uid} and NGINX's container {} as UID {nginx_uid}: it cannot signal the master; run it as UID {nginx_uid} or add CAP_KILL",
                name(nginx)
            ));
        }
    }

    // Long-lived connections end inside the budget: NGINX closes them
    // `worker-shutdown-timeout` after SIGQUIT, which may come as late as
    // --max-delay after the hook; then NGINX must exit before the sidecar
    // escalates.
    if let Some(config) = config {
        match config["worker-shutdown-timeout"].as_str() {
            None => bad.push(format!(
                "no worker-shutdown-timeout in NGINX's ConfigMap: one WebSocket keeps NGINX past the {} budget and every drain is forced",
                humantime::format_duration(flags.drain_timeout)
            )),
            Some(t) => {
                let t = humantime::parse_duration(t).unwrap_or_else(|e| panic!("worker-shutdown-timeout {t}: {e}"));
                if flags.worker_shutdown_timeout.is_some_and(|told| told != t) {
                    bad.push(format!(
                        "the sidecar's --worker-shutdown-timeout differs from NGINX's worker-shutdown-timeout {}: give the sidecar the same value",
                        humantime::format_duration(t)
                    ));
                }
                if flags.max_delay + t + ESCALATION_AND_EXIT > flags.drain_timeout {
                    bad.push(format!(
                        "worker-shutdown-timeout {} + --max-delay {} + {} (escalation and exit) exceeds --drain-timeout {}: lower worker-shutdown-timeout",
                        humantime::format_duration(t),
                        humantime::format_duration(flags.max_delay),
                        humantime::format_duration(ESCALATION_AND_EXIT),
                        humantime::format_duration(flags.drain_timeout)
                    ));
                }
            }
        }
    }
    bad
}
