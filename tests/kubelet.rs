//! The chart's own pod, terminated by a real kubelet with containerd and
//! runc: `../shared/kubelet-rig` (its README), on the kubelet, crictl and
//! containerd that `scripts/kube` builds from upstream Go modules. Each case renders the
//! chart (`helm template`), takes the Deployment's pod template as a static
//! pod, sends traffic from inside the rig's network, deletes the manifest and
//! asserts from the clients, NGINX's log, the sidecar's report, the
//! kubelet's log and crictl.
//!
//! Needs root, helm (NGINX_DRAIN_HELM), the project's static binary
//! (`dist/nginx-drain`, built by scripts/image), the Kubernetes binaries
//! (`scripts/kube`; NGINX_DRAIN_KUBE_BIN) and the rig
//! (NGINX_DRAIN_KUBELET_RIG, default `../shared/kubelet-rig`). Without them
//! it says loudly that it skipped; under CI it fails instead.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testbed::client;
use testbed::load::{self, LoadStats};
use testbed::netns;
use testbed::rig::{self, CLIENT_IP, KUBELET_IP, Rig};

mod support;

const HANG: Duration = Duration::from_secs(60);
/// `/slow/` serves 64 KiB/s: 256 KiB take 4 s.
const DOWNLOAD_BYTES: usize = 256 << 10;

fn skip_or_fail(why: &str) -> Option<Rig> {
    assert!(
        std::env::var_os("CI").is_none(),
        "the real-kubelet cases must run under CI: {why}"
    );
    support::skipped(&format!("the real-kubelet cases: {why}"));
    None
}

fn rig() -> Option<Rig> {
    let dir = std::env::var_os("NGINX_DRAIN_KUBELET_RIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new("..").join("shared").join("kubelet-rig"));
    if !dir.join("rig.sh").is_file() {
        return skip_or_fail(&format!(
            "no rig at {} (set NGINX_DRAIN_KUBELET_RIG)",
            dir.display()
        ));
    }
    if !nix::unistd::getuid().is_root() {
        return skip_or_fail("it needs root (namespaces, containerd)");
    }
    let project = std::env::current_dir().unwrap();
    let binary = project.join("dist/nginx-drain");
    if !binary.is_file() {
        return skip_or_fail("no dist/nginx-drain: run scripts/image first (scripts/test does)");
    }
    let kube_bin = match testbed::kube::bin_dir(&project) {
        Ok(dir) => dir,
        Err(why) => return skip_or_fail(&why),
    };
    // Not under the project: containerd's overlay snapshots need a plain
    // file system (the checkout may itself sit on an overlay).
    let home = std::env::temp_dir().join("nginx-drain-kubelet-rig");
    std::fs::create_dir_all(&home).unwrap();
    Some(Rig::up(&dir, &home, &project, &binary, &kube_bin))
}

/// The chart rendered with the rig's images and `sets`, as a static pod
/// named `name`, plus the token its hook sends (if any).
fn pod_manifest(name: &str, sets: &[&str]) -> (Value, Option<String>) {
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
fn token_from_host_path(pod: &mut Value, token: &str, dir: &Path) {
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
struct Traffic {
    load: LoadStats,
    downloads: Vec<Result<usize, String>>,
}

/// The traffic of a case: `rate` new connections/s from the clients'
/// address from now until `lag` after the deletion (which happens `lead`
/// from now), and `downloads` slow downloads started 1 s before the
/// deletion.
#[derive(Clone, Copy)]
struct Plan {
    rate: f64,
    downloads: usize,
    lead: Duration,
    lag: Duration,
    /// Bytes of each download (at 64 KiB/s).
    download_bytes: usize,
}

/// Runs `plan` in the rig's network and calls `delete` at the deletion.
fn traffic_and_delete(
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
    } = plan;
    let nginx = SocketAddr::new(pod_ip, 80);
    let (tx, rx) = std::sync::mpsc::channel();
    let traffic = netns::run_in(&rig.netns(), move || async move {
        let t0 = tokio::time::Instant::now();
        let deleted_at = t0 + lead;
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
        for d in dl {
            t.downloads.push(d.await.unwrap());
        }
        t
    });
    (traffic, rx.recv().unwrap())
}

/// A real OCI registry (Debian's `docker-registry`) serving plain HTTP on
/// 127.0.0.1:5000 inside the rig's network namespace, where the rig's
/// containerd pulls from; stopped on drop.
struct Registry {
    child: std::process::Child,
    netns: PathBuf,
    addr: &'static str,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start(rig: &Rig) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\nhttp: {{addr: 127.0.0.1:5000}}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let netns = rig.netns();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["docker-registry", "serve"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (apt-get install docker-registry; scripts/test does)");
        let r = Registry {
            child,
            netns,
            addr: "127.0.0.1:5000",
            _dir: dir,
        };
        let deadline = Instant::now() + HANG;
        while r.get("/v2/", "").is_none() {
            assert!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        r
    }

    /// GET `path` inside the rig's network: the body, or None.
    fn get(&self, path: &str, accept: &str) -> Option<String> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .args(["curl", "-sf", "-H"])
            .arg(format!("Accept: {accept}"))
            .arg(format!("http://{}{path}", self.addr))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `scripts/image --no-build --push` of the index scripts/test built;
    /// the digest it prints.
    fn push_index(&self, reference: &str) -> String {
        let version = env!("CARGO_PKG_VERSION");
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .args([
                "scripts/image",
                "--no-build",
                "--tls-verify=false",
                "--push",
            ])
            .arg(format!("{reference}:{version}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "scripts/image --push: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{}", text.trim());
        text.lines()
            .find_map(|l| l.strip_prefix("digest: "))
            .expect("scripts/image prints the digest")
            .trim()
            .to_string()
    }

    fn served(&self, digest: &str) -> bool {
        self.get(
            &format!("/v2/nginx-drain/manifests/{digest}"),
            "application/vnd.oci.image.index.v1+json",
        )
        .is_some()
    }

    /// The digest of one platform's manifest in the index `digest`.
    fn platform_digest(&self, _reference: &str, digest: &str, arch: &str) -> String {
        let index: Value = serde_json::from_str(
            &self
                .get(
                    &format!("/v2/nginx-drain/manifests/{digest}"),
                    "application/vnd.oci.image.index.v1+json",
                )
                .expect("the index"),
        )
        .unwrap();
        let platforms: Vec<String> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| format!("{}/{}", m["platform"]["os"], m["platform"]["architecture"]))
            .collect();
        assert_eq!(
            platforms,
            ["\"linux\"/\"amd64\"", "\"linux\"/\"arm64\""],
            "one index, both platforms"
        );
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["platform"]["architecture"] == arch)
            .and_then(|m| m["digest"].as_str())
            .unwrap()
            .to_string()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything the case looks at after the pod's containers have exited.
struct Seen {
    nginx_exit: i64,
    sidecar_exit: i64,
    nginx_log: String,
    /// The sidecar's termination message.
    report: Value,
    kubelet: Vec<String>,
}

fn run_case(rig: &Rig, name: &str, pod: Value, plan: Plan) -> (Traffic, Instant, Seen) {
    let static_name = format!("{name}-rig-node");
    let file = rig.home.join(format!("{name}.json"));
    std::fs::write(&file, serde_json::to_vec_pretty(&pod).unwrap()).unwrap();
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
        rig.wait_containers(&pod_id, 2, "CONTAINER_RUNNING", HANG),
        "{name}: containers did not start: {:#?}",
        rig.containers(&pod_id)
    );
    rig.add_client_address();
    rig.add_default_route(&pod_id);
    // Let the kubelet probe a few times, and NGINX settle.
    std::thread::sleep(Duration::from_secs(3));
    let containers = rig.containers(&pod_id);
    let by = |n: &str| {
        containers
            .iter()
            .find(|c| c["status"]["metadata"]["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("{name}: no container {n}"))
    };
    let (nginx, sidecar) = (by("nginx"), by("nginx-drain"));
    a_stranger_is_refused(rig, name, ip, &sidecar);
    let id = |c: &Value| c["status"]["id"].as_str().unwrap().to_string();
    let message_file = Rig::termination_log_path(&sidecar).expect("the sidecar's termination-log");
    let manifest = format!("{name}.json");
    let mut delete = rig.command("rig.sh");
    delete.args(["delete", &manifest]);
    let (t, deleted) = traffic_and_delete(rig, ip, plan, move || {
        let st = delete.status();
        assert!(st.is_ok_and(|s| s.success()), "rig.sh delete");
    });
    // The kubelet removes a deleted static pod's containers (their logs and
    // termination messages) right after they exit: read while they last.
    let (mut nginx_log, mut message) = (String::new(), String::new());
    let deadline = Instant::now() + HANG;
    let (nginx_exit, sidecar_exit) = loop {
        if let Ok(log) = rig.logs(&nginx) {
            nginx_log = log;
        }
        if let Ok(m) = rig.read_inside(&message_file)
            && !m.is_empty()
        {
            message = m;
        }
        if let (Some(n), Some(s)) = (rig.exit_code(&id(&nginx)), rig.exit_code(&id(&sidecar))) {
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
    let seen = Seen {
        nginx_exit,
        sidecar_exit,
        nginx_log,
        report,
        kubelet: rig.kubelet_log(&static_name),
    };
    (t, deleted, seen)
}

/// Another pod's `/prestop` (from [`CLIENT_IP`], an address on the pod
/// network that is not the kubelet's) is refused: the connection is reset
/// (the chart's `--on-failure reset`, so that a refused kubelet would record
/// FailedPreStopHook), the sidecar logs the refusal with its fix, and NGINX
/// is not touched (each case asserts one SIGQUIT, the kubelet's).
fn a_stranger_is_refused(rig: &Rig, name: &str, pod_ip: IpAddr, sidecar: &Value) {
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

fn line<'a>(lines: &'a [String], what: &str, container: &str) -> Option<&'a String> {
    let c = format!("containerName=\"{container}\"");
    lines.iter().find(|l| l.contains(what) && l.contains(&c))
}

/// No probe warning from the sidecar's probes at any time, nor from
/// NGINX's once the hook ran (a drain must not look like an unhealthy pod).
/// The kubelet (1.37) probes a container the moment it starts, before NGINX
/// (or a regular-container sidecar) listens: a "connection refused" before
/// the hook is the kubelet's race with the start-up, not the drain's doing;
/// any other sidecar probe failure (a 503 from /wiring) counts.
fn assert_no_warning_from_probes(name: &str, kubelet: &[String]) {
    let hook = kubelet
        .iter()
        .find(|l| l.contains("Running preStop hook"))
        .and_then(|l| rig::kubelet_log_time(l))
        .unwrap_or(f64::MAX);
    let unhealthy: Vec<&String> = kubelet
        .iter()
        .filter(|l| l.contains("reason=\"Unhealthy\"") || l.contains("Probe failed"))
        .filter(|l| {
            let at_start = l.contains("connect: connection refused")
                && rig::kubelet_log_time(l).is_some_and(|t| t < hook);
            (l.contains("nginx-drain") && !at_start)
                || l.contains("Liveness")
                || rig::kubelet_log_time(l).is_some_and(|t| t >= hook)
        })
        .collect();
    assert!(
        unhealthy.is_empty(),
        "{name}: probe warnings: {unhealthy:#?}"
    );
}

#[test]
fn a_real_kubelet_terminates_the_charts_pod_without_dropping_anything() {
    let Some(rig) = rig() else { return };
    let started = Instant::now();
    let work = rig.home.join("cases");
    std::fs::create_dir_all(&work).unwrap();

    // 1. The chart's defaults: a native sidecar whose hook needs no token
    //    (the kubelet's address; another pod is refused), traffic continuing
    //    3 s after deletion and downloads in flight.
    {
        let name = "native";
        let (pod, token) = pod_manifest(name, &[]);
        assert!(token.is_none(), "no token by default");
        let plan = Plan {
            rate: 50.0,
            downloads: 2,
            lead: Duration::from_secs(2),
            lag: Duration::from_secs(3),
            download_bytes: DOWNLOAD_BYTES,
        };
        let (t, deleted, seen) = run_case(&rig, name, pod, plan);
        let r = &seen.report;
        println!("{name}: report {}", serde_json::to_string(r).unwrap());
        assert_eq!(r["outcome"], "drained", "{r:#}");
        assert_eq!(t.load.failed(), 0, "{name}: failed requests {:?}", t.load);
        assert!(t.load.ok > 100, "{:?}", t.load);
        assert_eq!(t.downloads, vec![Ok(DOWNLOAD_BYTES), Ok(DOWNLOAD_BYTES)]);
        assert_eq!(
            seen.nginx_log
                .matches("signal 3 (SIGQUIT) received")
                .count(),
            1,
            "{}",
            seen.nginx_log
        );
        assert_eq!(seen.nginx_exit, 0, "no SIGKILL");
        assert_eq!(seen.sidecar_exit, 0);
        assert_eq!(
            r["traffic"]["kubelet_peers"],
            json!([KUBELET_IP.to_string()]),
            "{r:#}"
        );
        // The kernel's destroy events reach a sidecar with every capability
        // dropped, in the pod's network namespace.
        assert_eq!(r["traffic"]["arrivals_seen"], "every_connection", "{r:#}");
        // The timeline, from the kubelet's log and the report.
        let k = &seen.kubelet;
        let hook_run = line(k, "Running preStop hook", "nginx").expect("hook run");
        let hook_done = line(k, "PreStop hook completed", "nginx").expect("hook completed");
        let exit = rig::rfc3339_time(r["exited_at"].as_str().unwrap()).unwrap();
        let done = rig::kubelet_log_time(hook_done).unwrap();
        assert!(
            done >= exit - 0.005 && done - exit < 0.5,
            "hook completed {done} vs exit {exit}"
        );
        // The sidecar is stopped after NGINX: the kubelet kills it once the
        // main containers are gone.
        let killed = |c: &str| {
            let tag = format!("containerName=\"{c}\"");
            k.iter()
                .find(|l| {
                    l.contains("\"Killing container with a grace period\"") && l.contains(&tag)
                })
                .and_then(|l| rig::kubelet_log_time(l))
                .unwrap_or_else(|| panic!("no kill of {c}: {k:#?}"))
        };
        assert!(
            killed("nginx-drain") >= killed("nginx"),
            "the sidecar stopped after nginx"
        );
        assert_no_warning_from_probes(name, k);
        println!(
            "{name}: timeline: manifest deleted at {:?} (test clock); kubelet ran the hook at {}; hook received {}; SIGQUIT {}; nginx exit {}; kubelet: hook completed at {}; stopping nginx at {:.3}, the sidecar at {:.3} (s of the day); nginx exit code {}; sidecar exit code {}",
            deleted,
            hook_run.split_ascii_whitespace().nth(1).unwrap_or("?"),
            r["hook_received_at"],
            r["sigquit_at"],
            r["exited_at"],
            hook_done.split_ascii_whitespace().nth(1).unwrap_or("?"),
            killed("nginx"),
            killed("nginx-drain"),
            seen.nginx_exit,
            seen.sidecar_exit,
        );
    }

    // 2. The sidecar as a regular container.
    {
        let name = "regular";
        // With a token on top of the address rule (from a file: static pods
        // cannot use Secrets).
        let (mut pod, token) = pod_manifest(
            name,
            &[
                "sidecar.native=false",
                "token.enabled=true",
                "token.value=s3cr3t-token",
            ],
        );
        let dir = work.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        token_from_host_path(&mut pod, token.as_deref().expect("the token"), &dir);
        let plan = Plan {
            rate: 20.0,
            downloads: 1,
            lead: Duration::from_secs(2),
            lag: Duration::from_secs(2),
            download_bytes: DOWNLOAD_BYTES,
        };
        let (t, _, seen) = run_case(&rig, name, pod, plan);
        let r = &seen.report;
        println!(
            "{name}: report outcome {} message {}",
            r["outcome"], r["message"]
        );
        assert_eq!(r["outcome"], "drained", "{r:#}");
        assert_eq!(t.load.failed(), 0, "{:?}", t.load);
        assert_eq!(t.downloads, vec![Ok(DOWNLOAD_BYTES)]);
        assert_eq!(seen.nginx_exit, 0);
        assert_eq!(
            seen.sidecar_exit, 0,
            "the sidecar's own SIGTERM: exit 0 once nginx is gone"
        );
        assert_no_warning_from_probes(name, &seen.kubelet);
    }

    // 3. A budget too short for a download: forced inside the budget, the
    //    hook's reset recorded by the kubelet, no SIGKILL needed.
    {
        let name = "forced";
        let (pod, _) = pod_manifest(name, &["terminationGracePeriodSeconds=8"]);
        // 1 MiB at 64 KiB/s: 16 s, far past the 3 s budget.
        let plan = Plan {
            rate: 0.0,
            downloads: 1,
            lead: Duration::from_secs(2),
            lag: Duration::ZERO,
            download_bytes: 1 << 20,
        };
        let (t, _, seen) = run_case(&rig, name, pod, plan);
        let r = &seen.report;
        println!(
            "{name}: report outcome {} message {}",
            r["outcome"], r["message"]
        );
        assert_eq!(r["outcome"], "forced", "{r:#}");
        assert!(
            t.downloads[0].is_err(),
            "the download was cut: {:?}",
            t.downloads
        );
        let failed = seen
            .kubelet
            .iter()
            .any(|l| l.contains("PreStop hook failed") || l.contains("FailedPreStopHook"));
        assert!(
            failed,
            "the kubelet recorded the failed hook: {:#?}",
            seen.kubelet
        );
        assert_ne!(seen.nginx_exit, 137, "no SIGKILL");
    }

    // 4. The kubelet's readiness probe on NGINX's port every second and no
    //    other traffic: the quit is not delayed.
    {
        let name = "probed";
        let (mut pod, _) = pod_manifest(name, &[]);
        for c in pod["spec"]["containers"].as_array_mut().unwrap() {
            if c["name"] == "nginx" {
                c["readinessProbe"]["periodSeconds"] = json!(1);
            }
        }
        let plan = Plan {
            rate: 0.0,
            downloads: 0,
            lead: Duration::from_secs(3),
            lag: Duration::ZERO,
            download_bytes: 0,
        };
        let (_, _, seen) = run_case(&rig, name, pod, plan);
        let r = &seen.report;
        println!(
            "{name}: report outcome {} traffic {}",
            r["outcome"], r["traffic"]
        );
        assert_eq!(r["outcome"], "drained", "{r:#}");
        assert_eq!(
            r["traffic"]["kubelet_peers"],
            json!([KUBELET_IP.to_string()]),
            "{r:#}"
        );
        let waited = r["durations"]["hook_to_sigquit_ms"].as_u64().unwrap();
        assert!(
            waited < 1_500,
            "probes delayed SIGQUIT by {waited} ms: {r:#}"
        );
    }
    // 5. A CNI that gives the pod no default route (this rig's own): the
    //    kubelet's address is unknown to the sidecar, which refuses its
    //    probes' address as a hook caller and says so at start, with the
    //    fix, and keeps the pod from turning Ready (/wiring 503).
    {
        let name = "no-route";
        let (pod, _) = pod_manifest(name, &[]);
        let static_name = format!("{name}-rig-node");
        let file = rig.home.join(format!("{name}.json"));
        std::fs::write(&file, serde_json::to_vec_pretty(&pod).unwrap()).unwrap();
        rig.sh(&["apply", file.to_str().unwrap()]);
        let deadline = Instant::now() + HANG;
        let (pod_id, ip) = loop {
            if let Some(p) = rig.pod(&static_name) {
                break p;
            }
            assert!(Instant::now() < deadline, "{name}: no pod sandbox");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(rig.wait_containers(&pod_id, 2, "CONTAINER_RUNNING", HANG));
        let sidecar = rig
            .containers(&pod_id)
            .into_iter()
            .find(|c| c["status"]["metadata"]["name"] == "nginx-drain")
            .expect("the sidecar");
        let fix = format!("--allow-cidr {KUBELET_IP}/32");
        let line = loop {
            let log = rig.logs(&sidecar).unwrap_or_default();
            if let Some(l) = log
                .lines()
                .find(|l| l.contains("wiring problem") && l.contains("hook_access"))
            {
                break l.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "{name}: no hook_access problem logged: {log}"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        println!("{name}: {line}");
        assert!(line.contains(&fix), "{name}: the fix names {fix}: {line}");
        let wiring = netns::run_in(&rig.netns(), move || async move {
            client::get(
                SocketAddr::new(ip, 10266),
                "/wiring",
                Duration::from_secs(10),
            )
            .await
        })
        .expect("/wiring");
        assert_eq!(wiring.status, 503, "{}", wiring.text());
        assert!(wiring.text().contains(&fix), "{}", wiring.text());
        rig.sh(&["delete", &format!("{name}.json")]);
        let deadline = Instant::now() + HANG;
        while rig.pod(&static_name).is_some() {
            assert!(Instant::now() < deadline, "{name}: the pod did not go away");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // 6. The image as users get it: pushed by `scripts/image --push` to a
    //    real registry (Debian's docker-registry, the CNCF distribution
    //    registry) in the rig's network, and pulled by containerd by the
    //    index's digest (imagePullPolicy IfNotPresent, nothing pre-imported).
    //    Then the arm64 image's own manifest by digest on this amd64 node:
    //    it must fail, saying why (exec format error), never run.
    {
        let registry = Registry::start(&rig);
        let reference = format!("{}/nginx-drain", registry.addr);
        let digest = registry.push_index(&reference);
        let name = "pulled";
        let (pod, _) = pod_manifest(
            name,
            &[
                &format!("drain.image.repository={reference}"),
                &format!("drain.image.digest={digest}"),
                "drain.image.pullPolicy=IfNotPresent",
            ],
        );
        let image = pod["spec"]["initContainers"][0]["image"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(image, format!("{reference}@{digest}"));
        let plan = Plan {
            rate: 20.0,
            downloads: 1,
            lead: Duration::from_secs(2),
            lag: Duration::from_secs(1),
            download_bytes: DOWNLOAD_BYTES,
        };
        let (t, _, seen) = run_case(&rig, name, pod, plan);
        assert_eq!(seen.report["outcome"], "drained", "{:#}", seen.report);
        assert_eq!(t.load.failed(), 0, "{:?}", t.load);
        println!("{name}: {image}: pulled by containerd from the registry, drained");
        assert!(registry.served(&digest), "the registry served the index");

        // The wrong platform: the arm64 manifest alone.
        let arm64 = registry.platform_digest(&reference, &digest, "arm64");
        let name = "wrong-platform";
        let (pod, _) = pod_manifest(
            name,
            &[
                &format!("drain.image.repository={reference}"),
                &format!("drain.image.digest={arm64}"),
                "drain.image.pullPolicy=IfNotPresent",
            ],
        );
        let file = rig.home.join(format!("{name}.json"));
        std::fs::write(&file, serde_json::to_vec_pretty(&pod).unwrap()).unwrap();
        rig.sh(&["apply", file.to_str().unwrap()]);
        let static_name = format!("{name}-rig-node");
        // containerd does not check the platform of a manifest pulled by its
        // own digest (only an index is matched against the node): it pulls
        // the arm64 image, and the kernel refuses to execute the binary.
        // The failure must be that, stated, and the pod never Ready.
        let deadline = Instant::now() + HANG;
        let status = loop {
            if let Some((pod_id, _)) = rig.pod(&static_name) {
                let sidecar = rig
                    .containers(&pod_id)
                    .into_iter()
                    .find(|c| c["status"]["metadata"]["name"] == "nginx-drain");
                if let Some(c) = sidecar
                    && c["status"]["state"] == "CONTAINER_EXITED"
                {
                    break c;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{name}: the arm64 sidecar neither ran nor failed: {:#?}",
                rig.kubelet_log(&static_name)
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let st = &status["status"];
        let said = format!(
            "{} {} {}",
            st["reason"],
            st["message"],
            rig.logs(&status).unwrap_or_default()
        );
        println!(
            "{name}: {}@{arm64} on linux/amd64: exit {}, {}",
            reference,
            st["exitCode"],
            said.trim()
        );
        assert!(
            said.contains("exec format error"),
            "{name}: the failure names the wrong platform: {st:#}"
        );
        assert_ne!(st["exitCode"], 0);
        rig.sh(&["delete", &format!("{name}.json")]);
        let deadline = Instant::now() + HANG;
        while rig.pod(&static_name).is_some() {
            assert!(Instant::now() < deadline, "{name}: the pod did not go away");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!(
        "real-kubelet cases: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
