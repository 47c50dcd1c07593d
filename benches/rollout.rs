//! The rollout benchmark on a real cluster (`../shared/cluster-rig` on the
//! Kubernetes binaries `scripts/kube` builds): a 3-replica Deployment of
//! NGINX (UID 101, port 8080) behind a ClusterIP Service, 100 new
//! connections/s through it (masqueraded by kube-proxy, as node-local
//! traffic is), 4 keep-alive clients and a 3 s download started every
//! second; `kubectl rollout restart`; once per strategy and run, each in a
//! fresh namespace:
//! - `none`: no preStop hook; the runtime sends the image's STOPSIGNAL
//!   (SIGQUIT) at once;
//! - `sleep 5`: Kubernetes' own `preStop: sleep: {seconds: 5}`, then SIGQUIT;
//! - `quit + pgrep`: `nginx -s quit; while pgrep -x nginx; do sleep 1; done`
//!   as an exec hook (the seed's strategy; Debian's static busybox has no
//!   `pgrep`, so the loop tests what `pgrep -x nginx` tests, a process
//!   whose name is `nginx`, with `grep -x nginx /proc/*/comm`);
//! - `nginx-drain`: this project's chart with its defaults.
//!
//! Per run: failed requests (new and keep-alive), cut downloads, the
//! rollout's duration, and per old pod: endpoint not ready -> kube-proxy's
//! rule gone (polled every 50 ms), deletion -> SIGQUIT, SIGQUIT -> NGINX's
//! exit. Prints a Markdown table (docs/BENCHMARKS.md).
//!
//! Run as root: `cargo bench --bench rollout -- [--runs N] [--only none|sleep|pgrep|drain]`
//! (default 3 runs of every strategy),
//! after `scripts/image` and `scripts/kube`; needs helm
//! (`NGINX_DRAIN_HELM`, scripts/test installs it) and Debian's
//! `busybox-static` (installed when missing).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use serde_json::{Value, json};
use testbed::cluster::{self, Cluster};
use testbed::rollout::{self, Phase, PodEnd, Target, ms_between};

const DOWNLOAD_BYTES: usize = 192 << 10;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Strategy {
    NoPreStop,
    Sleep5,
    QuitPgrep,
    NginxDrain,
}

impl Strategy {
    fn name(self) -> &'static str {
        match self {
            Strategy::NoPreStop => "none (STOPSIGNAL SIGQUIT)",
            Strategy::Sleep5 => "preStop sleep 5, then SIGQUIT",
            Strategy::QuitPgrep => "nginx -s quit + pgrep loop",
            Strategy::NginxDrain => "nginx-drain (chart defaults)",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Strategy::NoPreStop => "none",
            Strategy::Sleep5 => "sleep",
            Strategy::QuitPgrep => "pgrep",
            Strategy::NginxDrain => "drain",
        }
    }

    /// When SIGQUIT reached NGINX, as well as it can be known.
    fn sigquit(self, e: &PodEnd) -> Option<SystemTime> {
        match self {
            Strategy::NginxDrain => e.report_time("sigquit_at"),
            // `nginx -s quit` is the hook's first command.
            Strategy::QuitPgrep => e.hook_started,
            Strategy::NoPreStop | Strategy::Sleep5 => e.killed,
        }
    }

    /// When NGINX exited.
    fn exit(self, e: &PodEnd) -> Option<SystemTime> {
        match self {
            Strategy::NginxDrain => e.report_time("exited_at"),
            _ => e.exited.or(e.hook_done),
        }
    }
}

/// A plain Deployment and Service of the non-root NGINX with `lifecycle`.
fn plain(ns: &str, image: &str, lifecycle: Value) -> Value {
    let mut nginx = json!({
        "name": "nginx", "image": image, "imagePullPolicy": "Never",
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 5},
        "livenessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 10},
        "securityContext": {"runAsNonRoot": true, "runAsUser": 101, "runAsGroup": 101,
            "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}
    });
    if !lifecycle.is_null() {
        nginx["lifecycle"] = lifecycle;
    }
    json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "web", "namespace": ns},
         "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
           "template": {"metadata": {"labels": {"app": "web"}},
             "spec": {"terminationGracePeriodSeconds": 30,
               "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
               "containers": [nginx]}}}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "web", "namespace": ns},
         "spec": {"selector": {"app": "web"},
                  "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}
    ]})
}

fn deploy(c: &Cluster, s: Strategy, ns: &str, helm: &str) -> Target {
    c.kubectl_ok(&["create", "namespace", ns]);
    c.kubectl_ok(&[
        "label",
        "namespace",
        ns,
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    let base = "localhost/rig-nginx:1.22.1-nonroot";
    let (deployment, selector) = match s {
        Strategy::NginxDrain => {
            let version = env!("CARGO_PKG_VERSION");
            // The rig's CNI gives pods no default route: the kubelet's
            // address (the bridge) is allowed by hand.
            let bridge = format!(
                "hookAccess.allowCIDRs={{{}/32}}",
                testbed::cluster::BRIDGE_IP
            );
            let sets = [
                &bridge,
                "replicaCount=3",
                "nginx.image.repository=localhost/rig-nginx",
                "nginx.image.tag=1.22.1-nonroot",
                "nginx.image.pullPolicy=Never",
                "drain.image.repository=localhost/nginx-drain",
                &format!("drain.image.tag={version}"),
                "drain.image.pullPolicy=Never",
            ];
            let mut args = vec![helm, "install", "web", "charts/nginx-drain", "-n", ns];
            for v in &sets {
                args.extend_from_slice(&["--set", v]);
            }
            c.sh(&args);
            ("web-nginx-drain", "app.kubernetes.io/instance=web")
        }
        _ => {
            let (image, lifecycle) = match s {
                Strategy::NoPreStop => (base.to_string(), Value::Null),
                Strategy::Sleep5 => (
                    base.to_string(),
                    json!({"preStop": {"sleep": {"seconds": 5}}}),
                ),
                _ => (
                    format!("{base}-sh"),
                    json!({"preStop": {"exec": {"command": ["/bin/sh", "-c",
                        "/usr/sbin/nginx -s quit; while grep -qsx nginx /proc/[0-9]*/comm; do sleep 1; done"]}}}),
                ),
            };
            let out = c.kubectl_stdin(
                &["apply", "-f", "-"],
                plain(ns, &image, lifecycle).to_string().as_bytes(),
            );
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            ("web", "app=web")
        }
    };
    rollout::ready_target(c, ns, deployment, selector, "nginx", DOWNLOAD_BYTES)
}

/// One strategy's run, reduced to the table's numbers.
struct Row {
    failed: u64,
    sent: u64,
    cut: usize,
    downloads: usize,
    rollout_s: f64,
    gone_s: f64,
    rule_lag_ms: Vec<i64>,
    to_sigquit_ms: Vec<i64>,
    to_exit_ms: Vec<i64>,
    sigkill: usize,
}

fn reduce(s: Strategy, p: &Phase) -> Row {
    let secs = |a: SystemTime, b: SystemTime| b.duration_since(a).unwrap_or_default().as_secs_f64();
    Row {
        failed: p.clients.load.failed() + p.clients.keepalive.failed(),
        sent: p.clients.load.sent + p.clients.keepalive.sent,
        cut: p.clients.cut_downloads(DOWNLOAD_BYTES),
        downloads: p.clients.downloads.len(),
        rollout_s: secs(p.action_at, p.action_done),
        gone_s: secs(p.action_at, p.last_gone),
        rule_lag_ms: p
            .pods
            .iter()
            .filter_map(|e| ms_between(e.not_ready_at, e.rule_gone_at))
            .collect(),
        to_sigquit_ms: p
            .pods
            .iter()
            .filter_map(|e| ms_between(e.deleted_at, s.sigquit(e)))
            .collect(),
        to_exit_ms: p
            .pods
            .iter()
            .filter_map(|e| ms_between(s.sigquit(e), s.exit(e)))
            .collect(),
        sigkill: p.pods.iter().filter(|e| e.nginx_exit == Some(137)).count(),
    }
}

fn range(v: &[i64]) -> String {
    match (v.iter().min(), v.iter().max()) {
        (Some(a), Some(b)) if a == b => format!("{a}"),
        (Some(a), Some(b)) => format!("{a}–{b}"),
        _ => "?".into(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    assert!(
        nix::unistd::getuid().is_root(),
        "run as root (namespaces, containerd, iptables)"
    );
    let project = std::env::current_dir().unwrap();
    let helm = std::env::var("NGINX_DRAIN_HELM")
        .expect("NGINX_DRAIN_HELM: helm (scripts/test installs it into .tools/bin)");
    let kube_bin = testbed::kube::bin_dir(&project).expect("the Kubernetes binaries");
    if !Path::new("/bin/busybox").is_file() {
        let ok = Command::new("apt-get")
            .args(["install", "-y", "-qq", "busybox-static"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "apt-get install busybox-static");
    }
    let busybox: &'static [u8] = Box::leak(
        std::fs::read("/bin/busybox")
            .expect("/bin/busybox")
            .into_boxed_slice(),
    );
    let dir = std::env::var_os("NGINX_DRAIN_CLUSTER_RIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new("..").join("shared").join("cluster-rig"));
    let home = std::env::temp_dir().join("nginx-drain-cluster-rig");
    std::fs::create_dir_all(&home).unwrap();
    let c = Cluster::up(
        &dir,
        &home,
        &project,
        &project.join("dist/nginx-drain"),
        &kube_bin,
        &[
            cluster::nonroot_nginx(),
            cluster::nonroot_nginx_with_shell(busybox),
        ],
    );
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let all: Vec<Strategy> = [
        Strategy::NoPreStop,
        Strategy::Sleep5,
        Strategy::QuitPgrep,
        Strategy::NginxDrain,
    ]
    .into_iter()
    .filter(|s| only.as_deref().is_none_or(|o| o == s.slug()))
    .collect();
    let mut table: Vec<(Strategy, Vec<Row>)> = Vec::new();
    for s in all {
        let mut rows = Vec::new();
        for run in 1..=runs {
            let ns = format!("bench-{}-{run}", s.slug());
            let t = deploy(&c, s, &ns, &helm);
            let p = rollout::run(&c, &t, 3, || {
                c.kubectl_ok(&[
                    "-n",
                    &ns,
                    "rollout",
                    "restart",
                    &format!("deployment/{}", t.deployment),
                ]);
                rollout::rollout_status(&c, &t);
                "kubectl rollout restart, rollout finished".into()
            });
            rollout::print(&format!("{} run {run}", s.name()), &p, DOWNLOAD_BYTES);
            rows.push(reduce(s, &p));
            c.kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]);
        }
        table.push((s, rows));
    }
    println!();
    println!(
        "| strategy | failed requests (of ~N per run) | cut downloads | rollout (restart -> `rollout status` done; -> last old pod gone) | endpoint not ready -> kube-proxy rule gone, ms | deletion -> SIGQUIT, ms | SIGQUIT -> NGINX exit, ms | SIGKILL |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (s, rows) in &table {
        let join = |f: &dyn Fn(&Row) -> String| rows.iter().map(f).collect::<Vec<_>>().join(", ");
        let all =
            |f: &dyn Fn(&Row) -> &Vec<i64>| rows.iter().flat_map(f).copied().collect::<Vec<_>>();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            s.name(),
            join(&|r| format!("{} of {}", r.failed, r.sent)),
            join(&|r| format!("{} of {}", r.cut, r.downloads)),
            join(&|r| format!("{:.1} s; {:.1} s", r.rollout_s, r.gone_s)),
            range(&all(&|r| &r.rule_lag_ms)),
            range(&all(&|r| &r.to_sigquit_ms)),
            range(&all(&|r| &r.to_exit_ms)),
            rows.iter().map(|r| r.sigkill).sum::<usize>(),
        );
    }
}
