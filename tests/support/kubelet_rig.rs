//! The real kubelet rig's cases, shared by `tests/kubelet.rs` (the chart's
//! pod) and `tests/controllers.rs` (the controllers' look-alikes): bringing
//! the rig up, the traffic of a case, running a static pod to its
//! termination and reading what the kubelet, NGINX and the sidecar said.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testbed::client;
use testbed::load::{self, LoadStats};
use testbed::netns;
use testbed::rig::{self, CLIENT_IP, Rig, WS_PORT};
use testbed::ws::{EchoBackend, WsClient, WsEnd};

pub const HANG: Duration = Duration::from_secs(60);
/// `/slow/` serves 64 KiB/s: 256 KiB take 4 s.
pub const DOWNLOAD_BYTES: usize = 256 << 10;

pub fn rig() -> Option<Rig> {
    let i = match super::rig_inputs(
        "NGINX_DRAIN_KUBELET_RIG",
        "kubelet-rig",
        "namespaces, containerd",
    ) {
        Ok(i) => i,
        Err(why) => return super::skip_or_fail("the real-kubelet cases", &why),
    };
    // Not under the project: containerd's overlay snapshots need a plain
    // file system (the checkout may itself sit on an overlay).
    let home = std::env::temp_dir().join("nginx-drain-kubelet-rig");
    std::fs::create_dir_all(&home).unwrap();
    Some(Rig::up(&i.dir, &home, &i.project, &i.binary, &i.kube_bin))
}

/// The chart rendered with the rig's images and `sets`, as a static pod
/// named `name`, plus the token its hook sends (if any).
pub fn pod_manifest(name: &str, sets: &[&str]) -> (Value, Option<String>) {
    let helm = std::env::var("NGINX_DRAIN_HELM").expect("NGINX_DRAIN_HELM (scripts/test sets it)");
    let version = env!("CARGO_PKG_VERSION");
    let mut cmd = Command::new(helm);
    cmd.args([
        "template",
        "web",
        "charts/nginx-drain",
        "--namespace",
        "default",
    ]);
    for s in [
        // The rig's NGINX is like the official image: root master, port 80
        // (the chart README's values for it).
        "nginx.image.repository=localhost/rig-nginx",
        "nginx.image.tag=1.22.1",
        "nginx.image.pullPolicy=Never",
        "nginx.containerPort=80",
        "nginx.securityContext.runAsNonRoot=false",
        "nginx.securityContext.runAsUser=0",
        "nginx.securityContext.runAsGroup=0",
        "nginx.securityContext.capabilities.add={CHOWN,SETUID,SETGID,NET_BIND_SERVICE}",
        "drain.runAsUser=0",
        "drain.image.repository=localhost/nginx-drain",
        &format!("drain.image.tag={version}"),
        "drain.image.pullPolicy=Never",
    ]
    .iter()
    .map(|s| s as &str)
    .chain(sets.iter().copied())
    {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().expect("helm");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut py = Command::new("python3")
        .args(["-c", "import sys, json, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    py.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let objs: Vec<Value> = serde_json::from_slice(&py.wait_with_output().unwrap().stdout).unwrap();
    let deploy = objs.iter().find(|o| o["kind"] == "Deployment").unwrap();
    let token = objs
        .iter()
        .find(|o| o["kind"] == "Secret")
        .and_then(|s| s["data"]["token"].as_str())
        .map(|b64| {
            let out = Command::new("base64")
                .arg("-d")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    c.stdin.take().unwrap().write_all(b64.as_bytes())?;
                    c.wait_with_output()
                })
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        });
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default",
                     "labels": deploy["spec"]["template"]["metadata"]["labels"]},
        "spec": deploy["spec"]["template"]["spec"],
    });
    (pod, token)
}

/// Static pods cannot use Secrets: the token is mounted from a file the
/// test writes, in place of the chart's Secret volume.
pub fn token_from_host_path(pod: &mut Value, token: &str, dir: &Path) {
    let file = dir.join("token");
    std::fs::write(&file, token).unwrap();
    for v in pod["spec"]["volumes"].as_array_mut().unwrap() {
        if v["name"] == "drain-token" {
            *v = json!({"name": "drain-token",
                        "hostPath": {"path": dir.display().to_string(), "type": "Directory"}});
        }
    }
}

/// What the clients saw.
#[derive(Debug, Default)]
pub struct Traffic {
    /// The new connections, one request each.
    pub load: LoadStats,
    /// The keep-alive clients, all together.
    pub keepalive: LoadStats,
    pub downloads: Vec<Result<usize, String>>,
    /// The WebSocket's end (or why it did not open).
    pub websocket: Option<Result<WsEnd, String>>,
}

impl Traffic {
    /// Requests that failed, new connections and keep-alive together.
    pub fn failed(&self) -> u64 {
        self.load.failed() + self.keepalive.failed()
    }
}

/// A keep-alive client sends a request this often.
const KEEPALIVE_EVERY: Duration = Duration::from_millis(100);
/// The WebSocket client sends a message (and reads its echo) this often.
const WS_EVERY: Duration = Duration::from_millis(200);
/// The WebSocket client gives up after this long (ingress-nginx's default
/// 240 s worker shutdown timeout and 10 s post-shutdown wait fit in it).
pub const WS_LIMIT: Duration = Duration::from_secs(330);

/// The traffic of a case: `rate` new connections/s from the clients'
/// address from now until `lag` after the deletion (which happens `lead`
/// from now), `keepalive` clients (a request every 100 ms each, on one
/// connection, sent again once on a new one when NGINX closed the idle
/// connection it was written to, as HTTP clients do) for as long, `downloads`
/// slow downloads started 1 s before the deletion, and with `websocket` one
/// WebSocket through NGINX to an echo backend on the clients' address
/// (exchanging a message every 200 ms) opened 1.5 s before the deletion and
/// followed to its end.
#[derive(Clone, Copy)]
pub struct Plan {
    pub rate: f64,
    pub downloads: usize,
    pub lead: Duration,
    pub lag: Duration,
    /// Bytes of each download (at 64 KiB/s).
    pub download_bytes: usize,
    /// NGINX's port in the pod.
    pub port: u16,
    /// Keep-alive clients.
    pub keepalive: usize,
    /// One WebSocket through NGINX (`/ws`, the look-alikes' location).
    pub websocket: bool,
}

/// Runs `plan` in the rig's network and calls `delete` at the deletion.
pub fn traffic_and_delete(
    rig: &Rig,
    pod_ip: IpAddr,
    plan: Plan,
    delete: impl FnOnce() + Send + 'static,
) -> (Traffic, Instant) {
    let Plan {
        rate,
        downloads,
        lead,
        lag,
        download_bytes,
        port,
        keepalive,
        websocket,
    } = plan;
    let nginx = SocketAddr::new(pod_ip, port);
    let (tx, rx) = std::sync::mpsc::channel();
    let traffic = netns::run_in(&rig.netns(), move || async move {
        let t0 = tokio::time::Instant::now();
        let deleted_at = t0 + lead;
        let backend = if websocket {
            let addr = SocketAddr::new(CLIENT_IP, WS_PORT);
            let b = EchoBackend::start_on(addr).await;
            Some(b.unwrap_or_else(|e| panic!("the WebSocket backend on {addr}: {e}")))
        } else {
            None
        };
        let max = (rate * (lead + lag).as_secs_f64()).ceil() as u64 + 1;
        let load = (rate > 0.0).then(|| {
            tokio::spawn(load::open_loop(
                nginx,
                rate,
                Some(CLIENT_IP),
                deleted_at + lag,
                max,
            ))
        });
        let kept: Vec<_> = (0..keepalive)
            .map(|_| {
                tokio::spawn(load::keepalive_client(
                    nginx,
                    Some(CLIENT_IP),
                    KEEPALIVE_EVERY,
                    deleted_at + lag,
                    true,
                ))
            })
            .collect();
        let ws = if backend.is_some() {
            tokio::time::sleep_until(deleted_at - Duration::from_millis(1500)).await;
            Some(WsClient::open_from(Some(CLIENT_IP), nginx, WS_EVERY, WS_LIMIT).await)
        } else {
            None
        };
        tokio::time::sleep_until(deleted_at - Duration::from_secs(1)).await;
        let mut dl = Vec::new();
        for _ in 0..downloads {
            let d = client::start_from(
                Some(CLIENT_IP),
                nginx,
                "GET",
                "/slow/big.bin",
                &format!("Range: bytes=0-{}\r\n", download_bytes - 1),
            )
            .await;
            dl.push(tokio::spawn(async move {
                match d {
                    Ok(d) => d
                        .finish()
                        .await
                        .map(|f| f.body.len())
                        .map_err(|e| format!("{e:?}")),
                    Err(e) => Err(format!("did not start: {e:?}")),
                }
            }));
        }
        tokio::time::sleep_until(deleted_at).await;
        let _ = tx.send(Instant::now());
        delete();
        let mut t = Traffic::default();
        if let Some(l) = load {
            t.load = l.await.unwrap();
        }
        for k in kept {
            t.keepalive.merge(&k.await.unwrap());
        }
        for d in dl {
            t.downloads.push(d.await.unwrap());
        }
        t.websocket = match ws {
            Some(Ok(c)) => Some(Ok(c.end().await)),
            Some(Err(e)) => Some(Err(format!("did not open: {e}"))),
            None => None,
        };
        drop(backend);
        t
    });
    (traffic, rx.recv().unwrap())
}

/// Everything the case looks at after the pod's containers have exited.
pub struct Seen {
    pub nginx_exit: i64,
    pub sidecar_exit: i64,
    pub nginx_log: String,
    /// The sidecar's log (its wiring problems, when a probe failed).
    pub sidecar_log: String,
    /// The sidecar's termination message.
    pub report: Value,
    pub kubelet: Vec<String>,
}

pub fn run_case(rig: &Rig, name: &str, pod: Value, plan: Plan) -> (Traffic, Instant, Seen) {
    run_case_for(rig, name, pod, plan, "nginx")
}

/// The containers that run for the whole pod's life: its containers and
/// its native sidecars.
fn pod_containers(pod: &Value) -> usize {
    let spec = &pod["spec"];
    spec["containers"].as_array().map_or(0, Vec::len)
        + spec["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["restartPolicy"] == "Always")
            .count()
}

/// Applies `pod` as the static pod `name` and waits until its containers
/// run; with `route`, gives it a default route (as most CNIs do) and puts
/// the clients' address on the bridge. The static pod's name, the sandbox
/// and its IP.
pub fn start_pod(rig: &Rig, name: &str, pod: &Value, route: bool) -> (String, String, IpAddr) {
    let static_name = format!("{name}-rig-node");
    let file = rig.home.join(format!("{name}.json"));
    std::fs::write(&file, serde_json::to_vec_pretty(pod).unwrap()).unwrap();
    rig.sh(&["apply", file.to_str().unwrap()]);
    let deadline = Instant::now() + HANG;
    let (pod_id, ip) = loop {
        if let Some(p) = rig.pod(&static_name) {
            break p;
        }
        assert!(Instant::now() < deadline, "{name}: no pod sandbox");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        rig.wait_running(&pod_id, pod_containers(pod), HANG),
        "{name}: containers did not start: {:#?}",
        rig.containers(&pod_id)
    );
    if route {
        rig.add_client_address();
        rig.add_default_route(&pod_id);
    }
    (static_name, pod_id, ip)
}

/// [`run_case`] for a pod whose NGINX container is named `nginx_container`.
pub fn run_case_for(
    rig: &Rig,
    name: &str,
    pod: Value,
    plan: Plan,
    nginx_container: &str,
) -> (Traffic, Instant, Seen) {
    let (static_name, pod_id, ip) = start_pod(rig, name, &pod, true);
    // Let the kubelet probe a few times, and NGINX settle.
    std::thread::sleep(Duration::from_secs(3));
    let (nginx, sidecar) = nginx_and_sidecar(rig, name, &pod_id, nginx_container);
    a_stranger_is_refused(rig, name, ip, &sidecar);
    let manifest = format!("{name}.json");
    let mut delete = rig.command("rig.sh");
    delete.args(["delete", &manifest]);
    let (t, deleted) = traffic_and_delete(rig, ip, plan, move || {
        let st = delete.status();
        assert!(st.is_ok_and(|s| s.success()), "rig.sh delete");
    });
    let seen = collect(rig, name, &static_name, &nginx, &sidecar);
    (t, deleted, seen)
}

/// The containers of a running pod started by [`start_pod`]: its NGINX
/// container (named `nginx_container`) and its sidecar.
pub fn nginx_and_sidecar(
    rig: &Rig,
    name: &str,
    pod_id: &str,
    nginx_container: &str,
) -> (Value, Value) {
    let containers = rig.containers(pod_id);
    let by = |n: &str| {
        containers
            .iter()
            .find(|c| c["status"]["metadata"]["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("{name}: no container {n}"))
    };
    (by(nginx_container), by("nginx-drain"))
}

/// What a deleted pod left: waits for its NGINX and sidecar containers to
/// exit and reads their exit codes, NGINX's log, the sidecar's report (its
/// termination message) and the kubelet's log of it.
pub fn collect(rig: &Rig, name: &str, static_name: &str, nginx: &Value, sidecar: &Value) -> Seen {
    let id = |c: &Value| c["status"]["id"].as_str().unwrap().to_string();
    let message_file = Rig::termination_log_path(sidecar).expect("the sidecar's termination-log");
    // The kubelet removes a deleted static pod's containers (their logs and
    // termination messages) right after they exit: read while they last.
    let (mut nginx_log, mut message) = (String::new(), String::new());
    let mut sidecar_log = String::new();
    let deadline = Instant::now() + HANG;
    let (nginx_exit, sidecar_exit) = loop {
        if let Ok(log) = rig.logs(nginx) {
            nginx_log = log;
        }
        if let Ok(log) = rig.logs(sidecar) {
            sidecar_log = log;
        }
        if let Ok(m) = rig.read_inside(&message_file)
            && !m.is_empty()
        {
            message = m;
        }
        if let (Some(n), Some(s)) = (rig.exit_code(&id(nginx)), rig.exit_code(&id(sidecar))) {
            break (n, s);
        }
        assert!(
            Instant::now() < deadline,
            "{name}: the containers did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let report: Value = serde_json::from_str(&message).unwrap_or_else(|e| {
        panic!("{name}: the termination message is the report ({e}): {message:?}")
    });
    Seen {
        nginx_exit,
        sidecar_exit,
        nginx_log,
        sidecar_log,
        report,
        kubelet: rig.kubelet_log(static_name),
    }
}

/// Another pod's `/prestop` (from [`CLIENT_IP`], an address on the pod
/// network that is not the kubelet's) is refused: the connection is reset
/// (the chart's `--on-failure reset`, so that a refused kubelet would record
/// FailedPreStopHook), the sidecar logs the refusal with its fix, and NGINX
/// is not touched (each case asserts one SIGQUIT, the kubelet's).
pub fn a_stranger_is_refused(rig: &Rig, name: &str, pod_ip: IpAddr, sidecar: &Value) {
    let hook = SocketAddr::new(pod_ip, 10266);
    let got = netns::run_in(&rig.netns(), move || async move {
        let d = client::start_from(Some(CLIENT_IP), hook, "GET", "/prestop", "")
            .await
            .map_err(|e| format!("{e:?}"))?;
        d.finish().await.map_err(|e| format!("{e:?}"))
    });
    match got {
        Err(e) => assert_eq!(e, "Reset", "{name}: the stranger's /prestop"),
        Ok(f) => panic!(
            "{name}: the stranger's /prestop was answered {} {}",
            f.status,
            f.text()
        ),
    }
    let deadline = Instant::now() + HANG;
    loop {
        let log = rig.logs(sidecar).unwrap_or_default();
        if let Some(l) = log
            .lines()
            .find(|l| l.contains("a preStop hook was refused"))
        {
            assert!(
                l.contains(&CLIENT_IP.to_string()) && l.contains("is not allowed"),
                "{name}: {l}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: no refusal logged: {log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn line<'a>(lines: &'a [String], what: &str, container: &str) -> Option<&'a String> {
    let c = format!("containerName=\"{container}\"");
    lines.iter().find(|l| l.contains(what) && l.contains(&c))
}

/// No probe warning from the sidecar's probes at any time, nor from
/// NGINX's once the hook ran (a drain must not look like an unhealthy pod)
/// until NGINX exited: after that the kubelet may probe a container whose
/// process is gone before its status says so (a "connection refused" the
/// drain cannot prevent). The kubelet (1.37) probes a container the moment
/// it starts, before NGINX (or a regular-container sidecar) listens: a
/// "connection refused" before the hook is the kubelet's race with the
/// start-up, not the drain's doing; any other sidecar probe failure (a 503
/// from /wiring) counts, and the sidecar's log of wiring problems is shown.
pub fn assert_no_warning_from_probes(name: &str, seen: &Seen) {
    let kubelet = &seen.kubelet;
    let hook = kubelet
        .iter()
        .find(|l| l.contains("Running preStop hook"))
        .and_then(|l| rig::kubelet_log_time(l))
        .unwrap_or(f64::MAX);
    let exited = seen.report["exited_at"]
        .as_str()
        .and_then(rig::rfc3339_time)
        .unwrap_or(f64::MAX);
    let unhealthy: Vec<&String> = kubelet
        .iter()
        .filter(|l| l.contains("reason=\"Unhealthy\"") || l.contains("Probe failed"))
        .filter(|l| {
            let t = rig::kubelet_log_time(l);
            let at_start = l.contains("connect: connection refused") && t.is_some_and(|t| t < hook);
            let after_exit = !l.contains("nginx-drain") && t.is_some_and(|t| t >= exited);
            !after_exit
                && ((l.contains("nginx-drain") && !at_start)
                    || l.contains("Liveness")
                    || t.is_some_and(|t| t >= hook))
        })
        .collect();
    let wiring: Vec<&str> = seen
        .sidecar_log
        .lines()
        .filter(|l| l.contains("wiring") || l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(
        unhealthy.is_empty(),
        "{name}: probe warnings: {unhealthy:#?}\nthe sidecar's wiring log: {wiring:#?}"
    );
}

/// What a termination looked like from outside, with or without a sidecar
/// (the controllers' own defaults have none): for the benchmark.
#[derive(Debug)]
pub struct Measured {
    pub traffic: Traffic,
    /// The NGINX container's exit code (137: SIGKILL), if seen.
    pub nginx_exit: Option<i64>,
    pub nginx_log: String,
    /// From the deletion to the pod's sandbox gone.
    pub gone_after: Duration,
    /// The preStop hook's run, from the kubelet's log, in seconds.
    pub hook_secs: Option<f64>,
    /// When the pod was deleted.
    pub deleted: Instant,
}

/// Runs `pod` to its deletion under `plan`, watching the NGINX container
/// (`nginx_container`) and the pod from the deletion on.
pub fn run_measured(
    rig: &Rig,
    name: &str,
    pod: Value,
    plan: Plan,
    nginx_container: &str,
) -> Measured {
    let (static_name, pod_id, ip) = start_pod(rig, name, &pod, true);
    std::thread::sleep(Duration::from_secs(3));
    let nginx = rig
        .containers(&pod_id)
        .into_iter()
        .find(|c| c["status"]["metadata"]["name"] == nginx_container)
        .unwrap_or_else(|| panic!("{name}: no container {nginx_container}"));
    let nginx_id = nginx["status"]["id"].as_str().unwrap().to_string();
    let manifest = format!("{name}.json");
    let mut delete = rig.command("rig.sh");
    delete.args(["delete", &manifest]);
    let (deleted_tx, deleted_rx) = std::sync::mpsc::channel::<Instant>();
    std::thread::scope(|scope| {
        // From the deletion: the NGINX container's log and the moment the
        // pod is gone (the kubelet removes a static pod's containers right
        // after they exit, so the log is read while it is there; the exit
        // code stays in the kubelet's and containerd's logs).
        let static_name = &static_name;
        let nginx = &nginx;
        let watcher = scope.spawn(move || {
            let deleted = deleted_rx.recv().unwrap();
            let mut log = String::new();
            let deadline = Instant::now() + WS_LIMIT + HANG;
            loop {
                if let Ok(l) = rig.logs(nginx) {
                    log = l;
                }
                if rig.pod(static_name).is_none() {
                    return (log, deleted, deleted.elapsed());
                }
                assert!(Instant::now() < deadline, "{name}: the pod did not go away");
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let (traffic, _) = traffic_and_delete(rig, ip, plan, move || {
            let _ = deleted_tx.send(Instant::now());
            let st = delete.status();
            assert!(st.is_ok_and(|s| s.success()), "rig.sh delete");
        });
        let (nginx_log, deleted, gone_after) = watcher.join().unwrap();
        let nginx_exit = rig.exit_code(&nginx_id);
        let kubelet = rig.kubelet_log(static_name);
        let at = |what: &str| {
            line(&kubelet, what, nginx_container).and_then(|l| rig::kubelet_log_time(l))
        };
        let hook_secs = match (
            at("Running preStop hook"),
            at("PreStop hook completed")
                .or_else(|| at("PreStop hook failed"))
                .or_else(|| at("PreStop hook not completed in grace period")),
        ) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        Measured {
            traffic,
            nginx_exit,
            nginx_log,
            gone_after,
            hook_secs,
            deleted,
        }
    })
}
