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

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testbed::client;
use testbed::netns;
use testbed::rig::{KUBELET_IP, Rig};

mod support;
use support::kubelet_rig::*;

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
    fn platform_digest(&self, digest: &str, arch: &str) -> String {
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
            port: 80,
            keepalive: 0,
            websocket: false,
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
        let exit = testbed::rig::rfc3339_time(r["exited_at"].as_str().unwrap()).unwrap();
        let done = testbed::rig::kubelet_log_time(hook_done).unwrap();
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
                .and_then(|l| testbed::rig::kubelet_log_time(l))
                .unwrap_or_else(|| panic!("no kill of {c}: {k:#?}"))
        };
        assert!(
            killed("nginx-drain") >= killed("nginx"),
            "the sidecar stopped after nginx"
        );
        assert_no_warning_from_probes(name, &seen);
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
            port: 80,
            keepalive: 0,
            websocket: false,
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
        assert_no_warning_from_probes(name, &seen);
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
            port: 80,
            keepalive: 0,
            websocket: false,
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
            port: 80,
            keepalive: 0,
            websocket: false,
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
        // No default route: this case is about its absence.
        let (static_name, pod_id, ip) = start_pod(&rig, name, &pod, false);
        let deadline = Instant::now() + HANG;
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
            port: 80,
            keepalive: 0,
            websocket: false,
        };
        let (t, _, seen) = run_case(&rig, name, pod, plan);
        assert_eq!(seen.report["outcome"], "drained", "{:#}", seen.report);
        assert_eq!(t.load.failed(), 0, "{:?}", t.load);
        println!("{name}: {image}: pulled by containerd from the registry, drained");
        assert!(registry.served(&digest), "the registry served the index");

        // No registry: the OCI archive, imported by containerd's ctr (what
        // `kind load image-archive` runs).
        let dir = tempfile::tempdir().unwrap();
        let archive = support::oci_archive(dir.path());
        let ctr = |args: &[&str]| {
            Command::new(rig.kube_bin.join("ctr"))
                .arg("--address")
                .arg(rig.home.join("run/containerd/containerd.sock"))
                .args(["-n", "k8s.io"])
                .args(args)
                .output()
                .expect("ctr")
        };
        let out = ctr(&[
            "images",
            "import",
            "--platform",
            "linux/amd64",
            archive.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "ctr images import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listed = String::from_utf8_lossy(&ctr(&["images", "ls", "-q"]).stdout).into_owned();
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            listed
                .lines()
                .any(|l| l.ends_with(&format!("nginx-drain:{version}"))),
            "ctr lists the imported image: {listed}"
        );
        println!(
            "ctr images import of scripts/image --oci-archive: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        );

        // The wrong platform: the arm64 manifest alone.
        let arm64 = registry.platform_digest(&digest, "arm64");
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
