//! `nginx-drain serve` against a real NGINX on loopback, real clients and
//! real signals. Each test asserts what a user would check: bytes received,
//! status codes, what NGINX logged, exit codes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use testbed::client::{self, Failure, Fetched};
use testbed::{Bystander, Kubelet, Nginx, NginxOptions, Sidecar};

mod support;
use support::{bin, json, sidecar_for};

/// Generous bound that only catches hangs; timing goals live in the bench.
const HANG: Duration = Duration::from_secs(30);

fn nginx(opts: NginxOptions) -> Nginx {
    Nginx::start(opts).expect("start nginx (install it with: apt-get install -y nginx-light)")
}

async fn get(addr: SocketAddr, path: &str) -> Fetched {
    client::get(addr, path, HANG)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:?}"))
}

async fn wait_ready(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(addr, "/readyz").await;
        if r.status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "never ready: {}", r.text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Downloads of `/blob` at `rate`, each returned once its headers arrived.
async fn start_downloads(
    addr: SocketAddr,
    n: usize,
    rate: &str,
) -> Vec<tokio::task::JoinHandle<Result<Fetched, Failure>>> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(client::spawn_download(addr, rate).await);
    }
    v
}

fn assert_blob(f: &Fetched, size: usize) {
    assert_eq!(f.body.len(), size, "every byte of the download arrived");
    assert!(
        f.body
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i % 251) as u8),
        "download content intact"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_in_flight_complete_and_nginx_quits_exactly_once() {
    const SIZE: usize = 2 << 20;
    let nginx = nginx(NginxOptions {
        blob_bytes: SIZE,
        ..Default::default()
    });
    let mut sidecar = sidecar_for(&nginx, &[]);
    wait_ready(sidecar.addr).await;
    let downloads = start_downloads(nginx.addr(), 4, "1m").await;

    let kubelet = Kubelet::new(sidecar.addr, Duration::from_secs(30));
    let probe = async {
        // After SIGQUIT the listeners close: a new connection is refused
        // while the old downloads are still being served.
        let deadline = Instant::now() + HANG;
        while nginx.sigquit_count() == 0 {
            assert!(Instant::now() < deadline, "no SIGQUIT logged");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match client::request(nginx.addr(), "GET", "/").await {
                Err(Failure::Refused) => return nginx.is_running(),
                _ if Instant::now() > deadline => {
                    panic!("new connections still accepted 1 s after SIGQUIT")
                }
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    };
    let (term, refused_while_running) = tokio::join!(kubelet.terminate(&nginx), probe);
    assert!(
        refused_while_running,
        "the refused connection came while nginx still served downloads"
    );
    assert_eq!(
        support::assert_state_truth(sidecar.addr, Some(nginx.pid())).await,
        "drained"
    );

    let hook = term.hook.expect("hook answered");
    assert_eq!(hook.status, 200, "{}", hook.text());
    let report = json(&hook);
    assert_eq!(report["outcome"], "drained", "{report:#}");
    assert_eq!(report["master_pid"], nginx.pid());
    assert_eq!(report["workers_at_start"].as_array().unwrap().len(), 2);
    assert!(report["sigquit_at"].is_string() && report["exited_at"].is_string());
    assert!(
        report["durations"]["sigquit_to_exit_ms"].as_u64().unwrap() >= 1000,
        "waited for the 2 s downloads"
    );
    for d in downloads {
        assert_blob(&d.await.unwrap().expect("download completed"), SIZE);
    }
    assert_eq!(nginx.sigquit_count(), 1, "{}", nginx.error_log());
    assert!(
        !term.stop_found_nginx_running,
        "nginx was gone when the hook returned"
    );
    assert!(!term.sigkill_needed);

    sidecar.signal(Signal::SIGTERM).unwrap();
    let status = sidecar
        .wait_exit(HANG)
        .expect("sidecar exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", sidecar.log());
    let log = sidecar.log();
    for line in [
        "found nginx master",
        "preStop hook received",
        "SIGQUIT sent",
        "nginx master exited: drained",
        "drain finished",
    ] {
        assert!(log.contains(line), "log lacks {line:?}:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_hooks_share_one_drain() {
    let nginx = nginx(NginxOptions::default());
    let sidecar = sidecar_for(&nginx, &[]);
    wait_ready(sidecar.addr).await;
    // A download keeps the drain open for about a second, so hooks overlap.
    let downloads = start_downloads(nginx.addr(), 1, "1m").await;
    let hooks: Vec<_> = (0..100)
        .map(|_| {
            let addr = sidecar.addr;
            tokio::spawn(async move { client::get(addr, "/prestop", HANG).await })
        })
        .collect();
    let mut bodies = Vec::new();
    for h in hooks {
        let r = h.await.unwrap().expect("every hook answered");
        assert_eq!(r.status, 200);
        bodies.push(r.body);
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "100 identical reports"
    );
    assert_eq!(
        json(&get(sidecar.addr, "/prestop").await)["outcome"],
        "drained"
    );
    assert_eq!(
        get(sidecar.addr, "/prestop").await.body,
        bodies[0],
        "a later hook gets the stored report"
    );
    assert_eq!(
        nginx.sigquit_count(),
        1,
        "exactly one SIGQUIT: {}",
        nginx.error_log()
    );
    assert_blob(
        &downloads
            .into_iter()
            .next()
            .unwrap()
            .await
            .unwrap()
            .unwrap(),
        1 << 20,
    );
    let status = json(&get(sidecar.addr, "/status").await);
    assert_eq!(status["state"], "drained");
    assert_eq!(status["last_report"]["outcome"], "drained");
}

#[tokio::test]
async fn hook_answers_not_running_when_the_pid_file_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("nginx.pid");
    let sidecar = Sidecar::spawn(bin(), &["--nginx-pid-file", pid_file.to_str().unwrap()]).unwrap();
    assert_eq!(get(sidecar.addr, "/readyz").await.status, 503);
    let t0 = Instant::now();
    let hook = get(sidecar.addr, "/prestop").await;
    let took = t0.elapsed();
    assert_eq!(hook.status, 200);
    let report = json(&hook);
    assert_eq!(report["outcome"], "not_running");
    let msg = report["message"].as_str().unwrap();
    assert!(
        msg.contains(pid_file.to_str().unwrap()) && msg.contains("does not exist"),
        "{msg}"
    );
    support::assert_state_truth(sidecar.addr, None).await;
    assert!(took < Duration::from_secs(2), "answered in {took:?}");
}

/// NGINX never found (here: a pid file it never writes) once NGINX has had
/// its start window (`--nginx-start-timeout`) is no success: `/wiring`
/// fails with the places to look, so the pod never turns Ready, and a hook
/// answers `error` (here 500; by default a reset) instead of a
/// `not_running` that would let NGINX be stopped with no drain.
#[tokio::test]
async fn nginx_never_found_after_its_start_window_is_a_failure_not_a_success() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("nginx.pid");
    let sidecar = Sidecar::spawn(
        bin(),
        &[
            "--nginx-pid-file",
            pid_file.to_str().unwrap(),
            "--nginx-start-timeout",
            "1s",
            "--on-failure",
            "status",
        ],
    )
    .unwrap();
    // Within the window: NGINX may still be starting.
    let r = get(sidecar.addr, "/wiring").await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Then: a blocking problem, found by the wiring checks (every 5 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    let wiring = loop {
        let r = get(sidecar.addr, "/wiring").await;
        if r.status == 503 {
            break r.text();
        }
        assert!(Instant::now() < deadline, "/wiring stayed {}", r.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        wiring.contains("nginx_found")
            && wiring.contains("shareProcessNamespace")
            && wiring.contains("does not exist"),
        "{wiring}"
    );
    let hook = get(sidecar.addr, "/prestop").await;
    assert_eq!(hook.status, 500);
    let report = json(&hook);
    assert_eq!(report["outcome"], "error", "{report:#}");
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("no nginx master found"),
        "{report:#}"
    );
}

#[tokio::test]
async fn a_pid_file_naming_another_process_is_never_signalled() {
    let mut sleeper = Bystander::spawn();
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("nginx.pid");
    std::fs::write(&pid_file, format!("{}\n", sleeper.pid())).unwrap();
    let sidecar = Sidecar::spawn(
        bin(),
        &[
            "--nginx-pid-file",
            pid_file.to_str().unwrap(),
            "--on-failure",
            "status",
        ],
    )
    .unwrap();
    let ready = get(sidecar.addr, "/readyz").await;
    assert_eq!(ready.status, 503);
    let hook = get(sidecar.addr, "/prestop").await;
    assert_eq!(hook.status, 500);
    let report = json(&hook);
    assert_eq!(report["outcome"], "error");
    let msg = report["message"].as_str().unwrap();
    assert!(
        msg.contains("sleep 60")
            && msg.contains("not an nginx master")
            && msg.contains("not signalled"),
        "{msg}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(sleeper.is_alive(), "sleep is still alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_just_before_the_hook_waits_for_the_old_worker() {
    let nginx = nginx(NginxOptions {
        workers: 1,
        ..Default::default()
    });
    let sidecar = sidecar_for(&nginx, &[]);
    wait_ready(sidecar.addr).await;
    let download = start_downloads(nginx.addr(), 1, "500k").await.remove(0);
    nginx.signal(Signal::SIGHUP).unwrap();
    let deadline = Instant::now() + HANG;
    while !nginx.workers().iter().any(|w| w.is_shutting_down()) {
        assert!(Instant::now() < deadline, "no old worker after reload");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hook = get(sidecar.addr, "/prestop").await;
    let report = json(&hook);
    assert_eq!(report["outcome"], "drained", "{report:#}");
    let titles: Vec<&str> = report["workers_at_start"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["title"].as_str().unwrap())
        .collect();
    assert!(
        titles.iter().any(|t| t.ends_with("is shutting down")),
        "{titles:?}"
    );
    let fetched = download
        .await
        .unwrap()
        .expect("old worker finished the download");
    assert_blob(&fetched, 1 << 20);
    assert!(
        !nginx.is_running(),
        "hook answered only after every worker, old ones included"
    );
}

#[tokio::test]
async fn a_zombie_master_counts_as_exited() {
    let mut nginx = nginx(NginxOptions::default());
    let sidecar = sidecar_for(&nginx, &[]);
    wait_ready(sidecar.addr).await;
    // The test is nginx's parent and does not reap it until the end, like a
    // PID 1 that reaps late.
    let report = json(&get(sidecar.addr, "/prestop").await);
    assert_eq!(report["outcome"], "drained");
    assert!(
        nginx.is_zombie(),
        "the hook answered while the master was still an unreaped zombie"
    );
    assert!(nginx.wait_exit(HANG).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_that_cannot_finish_is_forced_before_the_budget_ends() {
    let nginx = nginx(NginxOptions {
        blob_bytes: 8 << 20,
        ..Default::default()
    });
    let sidecar = sidecar_for(&nginx, &["--drain-timeout", "3s", "--on-failure", "status"]);
    wait_ready(sidecar.addr).await;
    let download = start_downloads(nginx.addr(), 1, "100k").await.remove(0);
    let term = Kubelet::new(sidecar.addr, Duration::from_secs(5))
        .terminate(&nginx)
        .await;
    let hook = term.hook.expect("hook answered");
    assert!(
        term.hook_took < Duration::from_secs(3),
        "answered within the budget: {:?}",
        term.hook_took
    );
    assert_eq!(hook.status, 500);
    let report = json(&hook);
    assert_eq!(report["outcome"], "forced", "{report:#}");
    assert!(report["sigterm_at"].is_string());
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("terminationGracePeriodSeconds")
    );
    assert!(
        !term.stop_found_nginx_running,
        "nginx was already gone when the hook returned"
    );
    assert!(!term.sigkill_needed, "the kubelet never needed SIGKILL");
    assert!(
        matches!(download.await.unwrap(), Err(Failure::ShortRead { .. })),
        "the forced stop cut the download, as the report says"
    );
    // Forced, but NGINX is gone: no master, and the sidecar says so.
    assert_eq!(
        support::assert_state_truth(sidecar.addr, Some(nginx.pid())).await,
        "drained"
    );
}

#[tokio::test]
async fn sigterm_before_the_hook_keeps_serving_until_nginx_is_gone() {
    let nginx = nginx(NginxOptions::default());
    let mut sidecar = sidecar_for(&nginx, &[]);
    wait_ready(sidecar.addr).await;
    sidecar.signal(Signal::SIGTERM).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        sidecar.try_status().is_none(),
        "sidecar stays up while nginx runs"
    );
    assert_eq!(get(sidecar.addr, "/healthz").await.status, 200);
    assert_eq!(
        json(&get(sidecar.addr, "/status").await)["shutting_down"],
        true
    );
    let report = json(&get(sidecar.addr, "/prestop").await);
    assert_eq!(report["outcome"], "drained");
    let status = sidecar.wait_exit(HANG).expect("exits once nginx is gone");
    assert_eq!(status.code(), Some(0), "{}", sidecar.log());
}

#[tokio::test]
async fn sigint_with_no_nginx_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("nginx.pid");
    let mut sidecar =
        Sidecar::spawn(bin(), &["--nginx-pid-file", pid_file.to_str().unwrap()]).unwrap();
    sidecar.signal(Signal::SIGINT).unwrap();
    let status = sidecar.wait_exit(HANG).expect("exits");
    assert_eq!(status.code(), Some(0));
}

/// A hook right after NGINX restarted (before the sidecar's next rescan,
/// 500 ms) drains the new master: the old master's stored report is not
/// the answer, or the new one would be stopped with no drain.
#[tokio::test]
async fn a_hook_right_after_a_restart_drains_the_new_master() {
    let mut first = nginx(NginxOptions::default());
    let sidecar = sidecar_for(&first, &[]);
    wait_ready(sidecar.addr).await;
    assert_eq!(
        json(&get(sidecar.addr, "/prestop").await)["outcome"],
        "drained"
    );
    first.wait_exit(HANG).unwrap();
    let second = first.restart().unwrap();
    let report = json(&get(sidecar.addr, "/prestop").await);
    assert_eq!(report["master_pid"], second.pid(), "{report:#}");
    assert_eq!(report["outcome"], "drained");
}

#[tokio::test]
async fn a_restarted_nginx_is_found_and_drained_again() {
    let mut first = nginx(NginxOptions::default());
    let sidecar = sidecar_for(&first, &[]);
    wait_ready(sidecar.addr).await;
    assert_eq!(
        json(&get(sidecar.addr, "/prestop").await)["outcome"],
        "drained"
    );
    assert_eq!(
        get(sidecar.addr, "/readyz").await.status,
        503,
        "not ready after the drain"
    );
    first.wait_exit(HANG).unwrap();

    let second = first.restart().unwrap();
    wait_ready(sidecar.addr).await;
    let status = json(&get(sidecar.addr, "/status").await);
    assert_eq!(status["master"]["pid"], second.pid());
    assert_eq!(
        status["last_report"]["master_pid"],
        first.pid(),
        "the old report stays available"
    );
    let report = json(&get(sidecar.addr, "/prestop").await);
    assert_eq!(report["outcome"], "drained");
    assert_eq!(report["master_pid"], second.pid());
    assert_eq!(
        second.sigquit_count(),
        2,
        "one SIGQUIT per master (shared error log)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_finds_the_one_master_among_decoys() {
    // A PID namespace of its own (as a pod with shareProcessNamespace), so
    // that other tests' nginx masters are not visible. Needs root (CI is).
    let work = Nginx::prepare(NginxOptions::default()).unwrap();
    let decoy_dir = tempfile::tempdir().unwrap();
    let decoy = decoy_dir.path().join("nginx");
    std::fs::copy("/bin/sleep", &decoy).unwrap();
    let port = testbed::free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let nginx_cmd = format!("{:?}", work.command()).replace('"', "'");
    let script = format!(
        "(exec -a nginx-ingress-controller sleep 60) & {decoy} 60 & {nginx_cmd} & exec {bin} serve --listen {addr} --port {port}",
        port = work.port,
        decoy = decoy.display(),
        bin = bin().display()
    );
    let mut cmd = std::process::Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--mount-proc",
        "--kill-child",
        "bash",
        "-c",
        &script,
    ]);
    let sidecar = Sidecar::spawn_command(cmd, addr).expect("unshare --pid needs root");
    wait_ready(sidecar.addr).await;
    let status = json(&get(sidecar.addr, "/status").await);
    assert!(
        status["master"]["title"]
            .as_str()
            .unwrap()
            .starts_with("nginx: master process"),
        "{status:#}"
    );
    let report = json(&get(sidecar.addr, "/prestop").await);
    assert_eq!(
        report["outcome"],
        "drained",
        "{report:#}\n{}",
        sidecar.log()
    );
    let sigquits = std::fs::read_to_string(work.error_log())
        .unwrap()
        .matches("signal 3 (SIGQUIT) received")
        .count();
    assert_eq!(sigquits, 1);
    let decoy_alive = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .any(|c| String::from_utf8_lossy(&c).contains(decoy.to_str().unwrap()));
    assert!(decoy_alive, "the decoy named nginx was not signalled");
}

#[tokio::test]
async fn http_surface_404_405_and_probes() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("nginx.pid");
    let sidecar = Sidecar::spawn(bin(), &["--nginx-pid-file", pid_file.to_str().unwrap()]).unwrap();
    let r = get(sidecar.addr, "/nope").await;
    assert_eq!(r.status, 404);
    assert!(json(&r)["error"].as_str().unwrap().contains("/prestop"));
    let r = client::request(sidecar.addr, "DELETE", "/prestop")
        .await
        .unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow").as_deref(), Some("GET, POST"));
    let r = client::request(sidecar.addr, "POST", "/prestop")
        .await
        .unwrap();
    assert_eq!(
        json(&r)["outcome"],
        "not_running",
        "POST is accepted like GET"
    );
    assert_eq!(get(sidecar.addr, "/healthz").await.text(), "ok\n");
    let r = get(sidecar.addr, "/readyz").await;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("does not exist"), "{}", r.text());
}

#[test]
fn configuration_errors_exit_2_with_a_fix() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .arg("serve")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--drain-timeout", "25"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("25s"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run(&["--nginx-pid-file", dir.path().to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(err.contains("is a directory"), "{err}");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (code, err) = run(&["--listen", &busy.local_addr().unwrap().to_string()]);
    assert_eq!(code, Some(2));
    assert!(err.contains("another process uses this port"), "{err}");
    let (code, err) = run(&["--log-format", "xml"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("text") && err.contains("json"), "{err}");
    let out = std::process::Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:1"])
        .env("NGINX_DRAIN_DRAIN_TIMEOUT", "oops")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "env vars are validated like flags"
    );
}

#[test]
fn the_product_binary_has_no_demo_subcommand() {
    // The demo lives in the testbed crate; the image's binary is the product.
    let out = std::process::Command::new(bin())
        .arg("demo")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unrecognized subcommand 'demo'"),
        "{stderr}"
    );
}
