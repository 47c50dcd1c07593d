//! One disruption of a Deployment on the real cluster ([`crate::cluster`]),
//! measured end to end: clients in the rig's network through the Service's
//! ClusterIP (new connections at a steady rate, keep-alive clients,
//! downloads in flight), API watches of the pods and EndpointSlices,
//! kube-proxy's rules polled, and, per pod that went away, its timeline
//! (deleted, endpoint not ready, rule gone, the kubelet's hook and kill,
//! the sidecar's report) and how its containers ended. The cluster e2e
//! (`tests/cluster.rs`) asserts on it; the rollout benchmark
//! (`benches/rollout.rs`) prints it.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::cluster::{self, Cluster, Event};
use crate::load::{self, LoadStats, Until};
use crate::netns;

/// Catches hangs only.
pub const HANG: Duration = Duration::from_secs(240);

/// What a disruption is done to, and with which traffic.
#[derive(Debug, Clone)]
pub struct Target {
    pub namespace: String,
    pub deployment: String,
    /// A label selector for the Deployment's pods.
    pub selector: String,
    /// The NGINX container's name.
    pub nginx: String,
    pub service_ip: IpAddr,
    /// New connections per second through the ClusterIP.
    pub rate: f64,
    /// Bytes of each download of `/slow/` (64 KiB/s), one started a second.
    pub download_bytes: usize,
}

/// The Target of a Deployment and its Service of the same name (100 new
/// connections/s, downloads of `download_bytes`), once its rollout has
/// finished and kube-proxy routes the Service to every pod.
pub fn ready_target(
    c: &Cluster,
    namespace: &str,
    deployment: &str,
    selector: &str,
    nginx: &str,
    download_bytes: usize,
) -> Target {
    let svc = c.kubectl_json(&["-n", namespace, "get", "service", deployment]);
    let t = Target {
        namespace: namespace.into(),
        deployment: deployment.into(),
        selector: selector.into(),
        nginx: nginx.into(),
        service_ip: svc["spec"]["clusterIP"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("the Service's ClusterIP"),
        rate: 100.0,
        download_bytes,
    };
    rollout_status(c, &t);
    wait_for_routes(c, &t);
    t
}

/// What the clients saw.
#[derive(Debug, Default)]
pub struct Clients {
    pub load: LoadStats,
    pub keepalive: LoadStats,
    pub downloads: Vec<Result<usize, String>>,
}

impl Clients {
    /// Downloads that did not receive every byte.
    pub fn cut_downloads(&self, bytes: usize) -> usize {
        self.downloads.iter().filter(|d| **d != Ok(bytes)).count()
    }
}

/// How one pod that went away ended.
#[derive(Debug)]
pub struct PodEnd {
    pub name: String,
    pub ip: Option<IpAddr>,
    /// The sidecar's report (its termination message), or null.
    pub report: Value,
    pub nginx_exit: Option<i64>,
    pub sidecar_exit: Option<i64>,
    pub deleted_at: Option<SystemTime>,
    pub not_ready_at: Option<SystemTime>,
    pub rule_gone_at: Option<SystemTime>,
    /// The kubelet's log for the NGINX container: the hook's start and end,
    /// the stop signal, and the container's exit as the kubelet saw it.
    pub hook_started: Option<SystemTime>,
    pub hook_done: Option<SystemTime>,
    pub killed: Option<SystemTime>,
    pub exited: Option<SystemTime>,
}

impl PodEnd {
    /// A timestamp of the report (`sigquit_at`, ...).
    pub fn report_time(&self, field: &str) -> Option<SystemTime> {
        self.report[field]
            .as_str()
            .and_then(|s| humantime::parse_rfc3339(s).ok())
    }
}

/// One disruption's measurements.
#[derive(Debug)]
pub struct Phase {
    /// When the clients started (3 s before the action).
    pub began: SystemTime,
    pub action_at: SystemTime,
    /// When the action's own wait returned (`rollout status`, ...).
    pub action_done: SystemTime,
    /// When the last old pod left the API.
    pub last_gone: SystemTime,
    pub said: String,
    pub clients: Clients,
    pub pods: Vec<PodEnd>,
    /// When each failed new connection started.
    pub failed_at: Vec<SystemTime>,
}

/// Seconds from `from` to `t`, as text ("?" when unknown).
pub fn secs(t: Option<SystemTime>, from: SystemTime) -> String {
    t.and_then(|t| t.duration_since(from).ok())
        .map_or("?".into(), |d| format!("{:.2}", d.as_secs_f64()))
}

/// Milliseconds from `a` to `b` (negative when `b` came first).
pub fn ms_between(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<i64> {
    let (a, b) = (a?, b?);
    Some(match b.duration_since(a) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    })
}

/// Clients in the rig's network through the ClusterIP until `stop`.
fn clients(c: &Cluster, t: &Target, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Clients> {
    let ns = c.netns();
    let (svc, rate, bytes) = (t.service_ip, t.rate, t.download_bytes);
    std::thread::spawn(move || {
        netns::run_in(&ns, move || async move {
            let target = SocketAddr::new(svc, 80);
            let until = Until::Flag(stop, tokio::time::Instant::now() + HANG);
            let load = tokio::spawn(load::open_loop(
                target,
                rate,
                None,
                until.clone(),
                (rate * HANG.as_secs_f64()) as u64,
            ));
            let keepalive: Vec<_> = (0..4)
                .map(|_| {
                    tokio::spawn(load::keepalive_client(
                        target,
                        None,
                        Duration::from_millis(250),
                        until.clone(),
                        true,
                    ))
                })
                .collect();
            let downloads = tokio::spawn(load::downloads(
                target,
                None,
                "/slow/big.bin",
                bytes,
                Duration::from_secs(1),
                until,
            ));
            let mut out = Clients {
                load: load.await.unwrap_or_default(),
                ..Default::default()
            };
            for k in keepalive {
                out.keepalive.merge(&k.await.unwrap_or_default());
            }
            out.downloads = downloads.await.unwrap_or_default();
            out
        })
    })
}

/// Whether an EndpointSlice event shows `ip` as not ready.
fn not_ready(e: &Event, ip: IpAddr) -> bool {
    e.object["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|ep| {
            ep["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|a| a.as_str() == Some(&ip.to_string()))
                && ep["conditions"]["ready"] == false
        })
}

/// The running pods of `t`, by name.
pub fn pod_names(c: &Cluster, t: &Target) -> BTreeSet<String> {
    c.kubectl_json(&["-n", &t.namespace, "get", "pods", "-l", &t.selector])["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
        .collect()
}

/// `kubectl rollout status`, which must finish within 180 s.
pub fn rollout_status(c: &Cluster, t: &Target) {
    let out = c.kubectl(&[
        "-n",
        &t.namespace,
        "rollout",
        "status",
        &format!("deployment/{}", t.deployment),
        "--timeout=180s",
    ]);
    assert!(
        out.status.success(),
        "the rollout did not finish: {}{}\nevents:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&c.kubectl(&["-n", &t.namespace, "get", "events"]).stdout)
    );
}

/// Waits until kube-proxy routes the Service to every running pod of `t`:
/// until then a new Service has only kube-proxy's REJECT for Services
/// without endpoints, and clients are refused by the node, not by a pod.
pub fn wait_for_routes(c: &Cluster, t: &Target) {
    let deadline = Instant::now() + HANG;
    loop {
        let pods: BTreeSet<IpAddr> =
            c.kubectl_json(&["-n", &t.namespace, "get", "pods", "-l", &t.selector])["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .filter_map(|p| p["status"]["podIP"].as_str()?.parse().ok())
                .collect();
        let routed = cluster::dnat_targets(&c.sh(&["iptables-save", "-t", "nat"]));
        if !pods.is_empty() && pods.is_subset(&routed) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "kube-proxy does not route to the pods {pods:?}: {routed:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The kubelet's log line time (`I1201 21:50:46.080906 ...`), this year.
fn kubelet_time(line: &str) -> Option<SystemTime> {
    let mut w = line.split_ascii_whitespace();
    let date = w.next()?.get(1..5)?;
    let time = w.next()?;
    let year = humantime::format_rfc3339(SystemTime::now()).to_string();
    let stamp = format!(
        "{}-{}-{}T{}Z",
        year.get(..4)?,
        date.get(..2)?,
        date.get(2..)?,
        time
    );
    humantime::parse_rfc3339(&stamp).ok()
}

/// From the kubelet's log, for `pod`'s container `container`: the first
/// line containing each of `what`.
fn kubelet_times(
    log: &str,
    ns: &str,
    pod: &str,
    container: &str,
    what: &[&str],
) -> Vec<Option<SystemTime>> {
    let pod_tag = format!("pod=\"{ns}/{pod}\"");
    let c_tag = format!("containerName=\"{container}\"");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&pod_tag) && l.contains(&c_tag))
        .collect();
    what.iter()
        .map(|w| {
            lines
                .iter()
                .find(|l| l.contains(w))
                .and_then(|l| kubelet_time(l))
        })
        .collect()
}

/// Runs `action` with the clients going from 3 s before it to 3 s after
/// the `gone` old pods have left the API, and measures everything.
pub fn run(c: &Cluster, t: &Target, gone: usize, action: impl FnOnce() -> String) -> Phase {
    let began = SystemTime::now();
    let pods = c.watch(&["pods", "-n", &t.namespace]);
    let slices = c.watch(&["endpointslices", "-n", &t.namespace]);
    let rules = c.dnat_poller(Duration::from_millis(50));
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = clients(c, t, stop.clone());
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let action_at = SystemTime::now();
    let said = action();
    let action_done = SystemTime::now();
    let deadline = Instant::now() + HANG;
    let deleted = loop {
        let deleted: Vec<String> = pods
            .events()
            .iter()
            .filter(|e| e.kind == "DELETED")
            .filter_map(|e| e.object["metadata"]["name"].as_str().map(String::from))
            .collect();
        if deleted.len() >= gone {
            break deleted;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {gone} pods left the API: {deleted:?}",
            deleted.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let last_gone = SystemTime::now();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let seen = traffic.join().expect("the clients' thread");
    let pod_events = pods.stop();
    let slice_events = slices.stop();
    let kubelet = c.log("kubelet");
    let last = cluster::last_seen(&pod_events);
    let anchor = (started, began);
    let failed_at = seen
        .load
        .events
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(at, _)| anchor.1 + at.into_std().saturating_duration_since(anchor.0))
        .collect();
    let ends = deleted
        .iter()
        .map(|p| {
            let obj = last.get(p).map(|(_, o)| o.clone()).unwrap_or(Value::Null);
            let ip: Option<IpAddr> = obj["status"]["podIP"].as_str().and_then(|s| s.parse().ok());
            let exit = |name: &str| {
                cluster::container_status(&obj, name)
                    .and_then(|s| s["state"]["terminated"]["exitCode"].as_i64())
            };
            let message = cluster::container_status(&obj, "nginx-drain")
                .and_then(|s| s["state"]["terminated"]["message"].as_str())
                .unwrap_or_default();
            let k = kubelet_times(
                &kubelet,
                &t.namespace,
                p,
                &t.nginx,
                &[
                    "\"Running preStop hook\"",
                    "\"PreStop hook completed\"",
                    "\"Killing container with a grace period\"",
                    "\"Container exited normally\"",
                ],
            );
            PodEnd {
                name: p.clone(),
                ip,
                report: serde_json::from_str(message).unwrap_or(Value::Null),
                nginx_exit: exit(&t.nginx),
                sidecar_exit: exit("nginx-drain"),
                deleted_at: cluster::first_when(&pod_events, p, |e| {
                    !e.object["metadata"]["deletionTimestamp"].is_null()
                }),
                not_ready_at: ip
                    .and_then(|ip| slice_events.iter().find(|e| not_ready(e, ip)).map(|e| e.at)),
                rule_gone_at: ip.and_then(|ip| rules.gone_at(ip)),
                hook_started: k[0],
                hook_done: k[1],
                killed: k[2],
                exited: k[3],
            }
        })
        .collect();
    Phase {
        began,
        action_at,
        action_done,
        last_gone,
        said,
        clients: seen,
        pods: ends,
        failed_at,
    }
}

/// Prints a phase: the clients' counts and each old pod's timeline, in
/// seconds after the phase began.
pub fn print(name: &str, p: &Phase, download_bytes: usize) {
    let c = &p.clients;
    println!(
        "{name} (began {}): {}; {:.1} s; clients: {} new connections ({} failed: {:?}), {} keep-alive requests ({} failed, {} retried on a closed idle connection), {} downloads ({} cut)",
        humantime::format_rfc3339_millis(p.began),
        p.said,
        p.last_gone
            .duration_since(p.began)
            .unwrap_or_default()
            .as_secs_f64(),
        c.load.sent,
        c.load.failed(),
        c.load.examples,
        c.keepalive.sent,
        c.keepalive.failed(),
        c.keepalive.retried,
        c.downloads.len(),
        c.cut_downloads(download_bytes),
    );
    if !p.failed_at.is_empty() {
        let at: Vec<String> = p
            .failed_at
            .iter()
            .map(|t| secs(Some(*t), p.began))
            .collect();
        println!("  failed connections started at (s after the phase began): {at:?}");
    }
    for e in &p.pods {
        let r = &e.report;
        println!(
            "  {} ({}): deleted {} s, endpoint not ready {} s, rule gone {} s, hook {}-{} s, kill {} s, exited {} s; report: hook {} s, SIGQUIT {} s, NGINX exit {} s, outcome {}, waited {} ms ({} arrivals, {}; quiet period {} ms: {}); exit codes nginx {:?}, sidecar {:?}",
            e.name,
            e.ip.map_or("?".into(), |i| i.to_string()),
            secs(e.deleted_at, p.began),
            secs(e.not_ready_at, p.began),
            secs(e.rule_gone_at, p.began),
            secs(e.hook_started, p.began),
            secs(e.hook_done, p.began),
            secs(e.killed, p.began),
            secs(e.exited, p.began),
            secs(e.report_time("hook_received_at"), p.began),
            secs(e.report_time("sigquit_at"), p.began),
            secs(e.report_time("exited_at"), p.began),
            r["outcome"],
            r["traffic"]["wait_before_sigquit_ms"],
            r["traffic"]["arrivals_during_wait"],
            r["traffic"]["sigquit_reason"],
            r["traffic"]["quiet_period_ms"],
            r["traffic"]["quiet_period_reason"],
            e.nginx_exit,
            e.sidecar_exit,
        );
    }
}
