//! Faults and races, with real processes: what happens when NGINX dies, a
//! pid is recycled, the pid file lies, a thousand hooks arrive, the sidecar
//! itself is killed, signals cross, permissions are missing, a client never
//! speaks, the wall clock jumps, or NGINX is still starting.
//! docs/RELIABILITY.md maps each case to its test.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use testbed::client;
use testbed::scenario::wait_ready;
use testbed::{Bystander, Nginx, NginxOptions, Sidecar, free_port};

mod support;
use support::{bin, sidecar_for};

const HANG: Duration = Duration::from_secs(30);

fn raw_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    client::raw_get(addr, path, "")
}

fn body_json(resp: &str) -> Value {
    serde_json::from_str(client::body_of(resp)).unwrap_or_else(|e| panic!("not JSON ({e}): {resp}"))
}

async fn status(addr: SocketAddr) -> Value {
    let r = client::get(addr, "/status", HANG).await.unwrap();
    serde_json::from_slice(&r.body).unwrap()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

type Download = tokio::task::JoinHandle<Result<client::Fetched, client::Failure>>;
type Hook = std::thread::JoinHandle<std::io::Result<String>>;

/// A drain in progress: a download of /blob at `rate` in flight, the hook
/// called from a thread, and NGINX's log showing the SIGQUIT.
async fn drain_in_flight(nginx: &Nginx, sidecar: SocketAddr, rate: &str) -> (Download, Hook) {
    let download = client::spawn_download(nginx.addr(), rate).await;
    let hook = std::thread::spawn(move || raw_get(sidecar, "/prestop"));
    wait_until("SIGQUIT", || nginx.sigquit_count() == 1);
    (download, hook)
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| nginx_drain::nginx::procfs::parse_stat(&s).ok())
        .is_some_and(|s| !s.is_zombie())
}

/// Case 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_killed_mid_drain_is_nginx_died_within_a_second_never_drained() {
    let mut nginx = Nginx::start(NginxOptions::default()).unwrap();
    let sidecar = sidecar_for(&nginx, &[]);
    wait_ready(sidecar.addr).await;
    let download = client::spawn_download(nginx.addr(), "100k").await;
    let workers: Vec<i32> = nginx.workers().iter().map(|w| w.pid).collect();
    let addr = sidecar.addr;
    let hook = std::thread::spawn(move || {
        let r = raw_get(addr, "/prestop");
        (r, Instant::now())
    });
    wait_until("SIGQUIT", || nginx.sigquit_count() == 1);
    std::thread::sleep(Duration::from_millis(100));
    let killed = Instant::now();
    nginx.signal(Signal::SIGKILL).unwrap();
    let (r, answered) = hook.join().unwrap();
    let e = r.expect_err("default --on-failure reset: a reset, not an answer");
    assert_eq!(e.kind(), ErrorKind::ConnectionReset);
    assert!(
        answered - killed < Duration::from_secs(1),
        "answered {:?} after the kill",
        answered - killed
    );
    let s = status(addr).await;
    assert_eq!(s["last_report"]["outcome"], "nginx_died", "{s:#}");
    assert!(
        !s["last_report"]["workers_left"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        s["last_report"]["message"]
            .as_str()
            .unwrap()
            .contains("killed")
    );
    for w in workers {
        let _ = kill(Pid::from_raw(w), Signal::SIGKILL);
    }
    let _ = download.await;
    nginx.wait_exit(HANG);
}

/// Case 1b: the whole tree SIGKILLed at once (as a container's cgroup is),
/// mid-drain, a download in flight: however the exits are ordered (the
/// workers may be gone before the master), the answer is never a success
/// that says every request finished, and when the kernel shows the
/// master's exit status (root here) it is `nginx_died`, killed by SIGKILL.
/// The report never contradicts itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_killed_at_once_mid_drain_is_never_drained_with_every_request_finished() {
    for run in 0..8 {
        let mut nginx = Nginx::start(NginxOptions {
            blob_bytes: 2 << 20,
            ..Default::default()
        })
        .unwrap();
        let sidecar = sidecar_for(&nginx, &["--on-failure", "status"]);
        wait_ready(sidecar.addr).await;
        let download = client::spawn_download(nginx.addr(), "20k").await;
        let addr = sidecar.addr;
        let hook = std::thread::spawn(move || raw_get(addr, "/prestop"));
        wait_until("SIGQUIT", || nginx.sigquit_count() == 1);
        std::thread::sleep(Duration::from_millis(1400));
        let mut pids: Vec<i32> = nginx.workers().iter().map(|w| w.pid).collect();
        pids.push(nginx.pid());
        for p in pids {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        let report = body_json(&hook.join().unwrap().unwrap());
        let outcome = report["outcome"].as_str().unwrap();
        let message = report["message"].as_str().unwrap();
        let exit = report["exit_status"].as_str().unwrap_or("");
        println!("run {run}: {outcome}, exit {exit:?}: {message}");
        assert!(
            !(outcome == "drained" && message.contains("every in-flight request finished")),
            "run {run}: {report:#}"
        );
        if exit.starts_with("killed") {
            assert_eq!(outcome, "nginx_died", "run {run}: {report:#}");
        }
        let cut = download.await.unwrap();
        assert!(cut.is_err(), "the download was cut: {cut:?}");
        nginx.wait_exit(HANG);
    }
}

/// Case 2: the pid in a stale pid file is given to another process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recycled_pid_is_never_signalled() {
    let mut nginx = Nginx::start(NginxOptions::default()).unwrap();
    let sidecar = sidecar_for(&nginx, &["--on-failure", "status"]);
    wait_ready(sidecar.addr).await;
    let m = nginx.pid();
    // NGINX crashes and leaves its pid file behind.
    let workers: Vec<i32> = nginx.workers().iter().map(|w| w.pid).collect();
    nginx.signal(Signal::SIGKILL).unwrap();
    for w in workers {
        let _ = kill(Pid::from_raw(w), Signal::SIGKILL);
    }
    nginx.wait_exit(HANG).unwrap();
    // Recycle the pid: make the next fork get it (ns_last_pid, as root).
    let mut impostor = None;
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (m - 1).to_string())
            .expect("write ns_last_pid (root)");
        let child = Bystander::spawn();
        if child.pid() as i32 == m {
            impostor = Some(child);
            break;
        }
    }
    let mut impostor =
        impostor.expect("could not recycle the pid (another process forked in between 200 times)");
    let deadline = Instant::now() + HANG;
    let ready = loop {
        let r = raw_get(sidecar.addr, "/readyz").unwrap();
        // (Right after fork, before exec, the child still has the test's
        // own title: wait for the one of `sleep`.)
        if (r.contains("not an nginx master") && r.contains("sleep 60"))
            || Instant::now() > deadline
        {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(
        ready.contains(&format!("pid {m}")) && ready.contains("sleep 60"),
        "{ready}"
    );
    let r = raw_get(sidecar.addr, "/prestop").unwrap();
    assert!(r.starts_with("HTTP/1.1 500"), "{r}");
    let report = body_json(&r);
    assert_eq!(report["outcome"], "error");
    let msg = report["message"].as_str().unwrap();
    assert!(
        msg.contains("not an nginx master") && msg.contains("not signalled"),
        "{msg}"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        impostor.is_alive(),
        "the process that got the pid was not signalled"
    );
}

/// Case 4: what the pid file may hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pid_files_that_lie_are_named_in_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("nginx.pid");
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
    // What the file holds (None: a directory), the outcome, the message.
    let cases: [(Option<&str>, &str, &str); 5] = [
        (Some(""), "not_running", "is empty"),
        (Some("nginx\n"), "error", "does not hold a positive pid"),
        (Some("4194303\n"), "not_running", "stale pid file"),
        (None, "error", "is a directory"),
        (Some("-"), "not_running", "does not exist"),
    ];
    for (content, outcome, words) in cases {
        let _ = std::fs::remove_file(&pid_file);
        let _ = std::fs::remove_dir(&pid_file);
        match content {
            Some("-") => {}
            Some(c) => std::fs::write(&pid_file, c).unwrap(),
            None => std::fs::create_dir(&pid_file).unwrap(),
        }
        let report = body_json(&raw_get(sidecar.addr, "/prestop").unwrap());
        let msg = report["message"].as_str().unwrap();
        assert_eq!(report["outcome"], outcome, "{content:?}: {msg}");
        assert!(
            msg.contains(words) && msg.contains(pid_file.to_str().unwrap()),
            "{content:?}: {msg}"
        );
    }
}

/// Case 5: unreadable at startup (run as nobody, so permissions apply).
#[test]
fn an_unreadable_pid_file_stops_the_start_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let pid_file = dir.path().join("nginx.pid");
    std::fs::write(&pid_file, "1\n").unwrap();
    std::fs::set_permissions(
        &pid_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--nginx-pid-file"])
        .arg(&pid_file)
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Permission denied") && err.contains("readable"),
        "{err}"
    );
}

/// Case 6: the pid file is rewritten while a drain runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pid_file_replaced_during_the_drain_changes_nothing() {
    let nginx = Nginx::start(NginxOptions::default()).unwrap();
    let sidecar = sidecar_for(&nginx, &[]);
    wait_ready(sidecar.addr).await;
    let (download, hook) = drain_in_flight(&nginx, sidecar.addr, "1m").await;
    let mut other = Bystander::spawn();
    std::fs::write(nginx.pid_file(), format!("{}\n", other.pid())).unwrap();
    let r = hook.join().unwrap().unwrap();
    assert_eq!(body_json(&r)["outcome"], "drained", "{r}");
    assert_eq!(download.await.unwrap().unwrap().body.len(), 1 << 20);
    assert!(
        other.is_alive(),
        "the pid the file now names was not signalled"
    );
}

/// Case 8.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_hooks_some_leaving_early_share_one_drain() {
    let nginx = Nginx::start(NginxOptions::default()).unwrap();
    let sidecar = sidecar_for(&nginx, &[]);
    wait_ready(sidecar.addr).await;
    let download = client::spawn_download(nginx.addr(), "1m").await;
    let addr = sidecar.addr;
    let mut stay = Vec::new();
    let mut leave = Vec::new();
    for i in 0..1000 {
        if i % 5 == 4 {
            leave.push(tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                tokio::io::AsyncWriteExt::write_all(
                    &mut s,
                    b"GET /prestop HTTP/1.1\r\nHost: x\r\n\r\n",
                )
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                // ...and leave mid-drain.
            }));
        } else {
            stay.push(tokio::spawn(async move {
                client::get(addr, "/prestop", HANG).await
            }));
        }
    }
    for l in leave {
        l.await.unwrap();
    }
    let mut bodies = Vec::new();
    for h in stay {
        let r = h
            .await
            .unwrap()
            .expect("every client that stayed got an answer");
        assert_eq!(r.status, 200);
        bodies.push(r.body);
    }
    assert_eq!(bodies.len(), 800);
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "identical reports");
    assert_eq!(nginx.sigquit_count(), 1, "exactly one SIGQUIT");
    assert_eq!(
        download.await.unwrap().unwrap().body.len(),
        1 << 20,
        "the drain was unaffected"
    );
}

/// Case 9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_restarted_mid_drain_waits_without_a_second_sigquit() {
    let nginx = Nginx::start(NginxOptions::default()).unwrap();
    let first = sidecar_for(&nginx, &[]);
    wait_ready(first.addr).await;
    let (download, _hook) = drain_in_flight(&nginx, first.addr, "500k").await;
    first.signal(Signal::SIGKILL).unwrap();
    drop(first);
    let second = sidecar_for(&nginx, &[]);
    let deadline = Instant::now() + HANG;
    loop {
        let s = status(second.addr).await;
        if s["state"] == "quitting" {
            break;
        }
        assert!(Instant::now() < deadline, "{s:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        raw_get(second.addr, "/readyz")
            .unwrap()
            .starts_with("HTTP/1.1 503"),
        "a quitting nginx is not ready"
    );
    let r = raw_get(second.addr, "/prestop").unwrap();
    let report = body_json(&r);
    assert_eq!(report["outcome"], "drained", "{report:#}");
    assert_eq!(report["traffic"]["sigquit_reason"], "already_quitting");
    assert_eq!(nginx.sigquit_count(), 1, "no second SIGQUIT");
    assert!(!nginx.is_running());
    assert_eq!(download.await.unwrap().unwrap().body.len(), 1 << 20);
}

/// Case 10: reloads and signals crossing a drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_and_sidecar_signals_during_a_drain() {
    let nginx = Nginx::start(NginxOptions::default()).unwrap();
    let mut sidecar = sidecar_for(&nginx, &["--min-delay", "1s"]);
    wait_ready(sidecar.addr).await;
    let download = client::spawn_download(nginx.addr(), "1m").await;
    let addr = sidecar.addr;
    let hook = std::thread::spawn(move || raw_get(addr, "/prestop"));
    std::thread::sleep(Duration::from_millis(300));
    // A reload while nginx-drain waits for traffic to stop...
    nginx.signal(Signal::SIGHUP).unwrap();
    // ...and the sidecar's own SIGTERM and SIGINT.
    sidecar.signal(Signal::SIGTERM).unwrap();
    sidecar.signal(Signal::SIGINT).unwrap();
    wait_until("SIGQUIT", || nginx.sigquit_count() == 1);
    // A reload after SIGQUIT: nginx ignores it while quitting.
    nginx.signal(Signal::SIGHUP).unwrap();
    let r = hook.join().unwrap().unwrap();
    let report = body_json(&r);
    assert_eq!(report["outcome"], "drained", "{report:#}");
    assert!(report["durations"]["hook_to_sigquit_ms"].as_u64().unwrap() >= 1000);
    assert_eq!(download.await.unwrap().unwrap().body.len(), 1 << 20);
    assert_eq!(nginx.sigquit_count(), 1);
    assert!(!nginx.is_running());
    let code = sidecar
        .wait_exit(HANG)
        .expect("the sidecar exits after nginx is gone");
    assert_eq!(code.code(), Some(0));
}

/// Case 11: no permission to signal the master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_permission_the_answer_names_the_fix_and_nothing_hangs() {
    let nginx = Nginx::start(NginxOptions::default()).unwrap();
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bin())
        .args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--on-failure",
            "status",
            "--port",
            &nginx.addr().port().to_string(),
        ])
        .arg("--nginx-pid-file")
        .arg(nginx.pid_file());
    let sidecar = Sidecar::spawn_command(cmd, addr).unwrap();
    wait_ready(addr).await;
    let t = Instant::now();
    let r = raw_get(sidecar.addr, "/prestop").unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "no hang: {:?}",
        t.elapsed()
    );
    assert!(r.starts_with("HTTP/1.1 500"), "{r}");
    let report = body_json(&r);
    assert_eq!(report["outcome"], "error");
    let msg = report["message"].as_str().unwrap();
    assert!(
        msg.contains("EPERM")
            && msg.contains("UID 0")
            && msg.contains("UID 65534")
            && msg.contains("CAP_KILL"),
        "{msg}"
    );
    assert!(nginx.is_running() && nginx.sigquit_count() == 0);
    // The drain failed and NGINX still runs: the sidecar says so, and its
    // metric says a master is up.
    assert_eq!(
        support::assert_state_truth(sidecar.addr, Some(nginx.pid())).await,
        "drain_failed"
    );
}

/// A master that neither SIGQUIT nor SIGTERM moves (stopped here with
/// SIGSTOP: signals wait): the drain answers `timeout` before the budget
/// ends, and the sidecar says NGINX still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_that_never_exits_is_timeout_and_still_shown_running() {
    let nginx = Nginx::start(NginxOptions::default()).unwrap();
    let sidecar = sidecar_for(&nginx, &["--drain-timeout", "3s", "--on-failure", "status"]);
    wait_ready(sidecar.addr).await;
    let pid = nix::unistd::Pid::from_raw(nginx.pid());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let t = Instant::now();
    let r = raw_get(sidecar.addr, "/prestop").unwrap();
    let took = t.elapsed();
    let report = body_json(&r);
    // Resumed before any assertion can fail: it then quits on the queued
    // signals and the fixture's cleanup finds it gone.
    let state = support::assert_state_truth(sidecar.addr, Some(nginx.pid())).await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(
        took < Duration::from_secs(3),
        "answered within the budget: {took:?}"
    );
    assert!(r.starts_with("HTTP/1.1 500"), "{r}");
    assert_eq!(report["outcome"], "timeout", "{report:#}");
    assert!(report["sigterm_at"].is_string(), "{report:#}");
    assert_eq!(state, "drain_failed");
}

/// Case 12: a client that connects and never sends a request holds its
/// worker through a graceful quit; the budget still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_cannot_hold_the_drain_past_the_budget() {
    let nginx = Nginx::start(NginxOptions::default()).unwrap();
    let sidecar = sidecar_for(&nginx, &["--drain-timeout", "4s", "--on-failure", "status"]);
    wait_ready(sidecar.addr).await;
    let _silent = TcpStream::connect(nginx.addr()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let term = testbed::Kubelet::new(sidecar.addr, Duration::from_secs(6))
        .terminate(&nginx)
        .await;
    assert!(
        term.hook_took < Duration::from_secs(4),
        "answered within the budget: {:?}",
        term.hook_took
    );
    let hook = term.hook.unwrap();
    let report: Value = serde_json::from_slice(&hook.body).unwrap();
    assert_eq!(report["outcome"], "forced", "{report:#}");
    assert!(!term.sigkill_needed && !term.stop_found_nginx_running);
}

/// Case 14: a wall-clock jump during the wait changes no deadline.
/// libfaketime moves CLOCK_REALTIME by a day while the drain waits; the
/// monotonic clock, which every deadline uses, is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_jump_changes_no_deadline() {
    let lib = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("libfaketime (apt-get install faketime; scripts/test does)");
    let nginx = Nginx::start(NginxOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = Command::new(bin());
    cmd.args([
        "serve",
        "--listen",
        &addr.to_string(),
        "--min-delay",
        "2s",
        "--port",
        &nginx.addr().port().to_string(),
    ])
    .arg("--nginx-pid-file")
    .arg(nginx.pid_file())
    .env("LD_PRELOAD", lib)
    .env("FAKETIME_TIMESTAMP_FILE", &offset)
    .env("FAKETIME_NO_CACHE", "1")
    .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    let sidecar = Sidecar::spawn_command(cmd, addr).unwrap();
    wait_ready(addr).await;
    let hook = std::thread::spawn(move || raw_get(addr, "/prestop"));
    std::thread::sleep(Duration::from_millis(700));
    std::fs::write(&offset, "+1d\n").unwrap();
    let r = hook.join().unwrap().unwrap();
    let report = body_json(&r);
    assert_eq!(report["outcome"], "drained");
    let waited = report["durations"]["hook_to_sigquit_ms"].as_u64().unwrap();
    assert!(
        (2000..4000).contains(&waited),
        "SIGQUIT {waited} ms after the hook, as --min-delay says"
    );
    // The report's timestamps are anchored once at the hook and advanced by
    // the monotonic clock, so they do not jump either...
    let at = |k: &str| humantime::parse_rfc3339(report[k].as_str().unwrap()).unwrap();
    let shown = at("answered_at")
        .duration_since(at("hook_received_at"))
        .unwrap();
    assert!(shown < Duration::from_secs(10), "{shown:?}");
    // ...while the process's wall clock did jump: its log lines say so.
    let stamps: Vec<std::time::SystemTime> = sidecar
        .log()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok())
        .collect();
    let span = stamps.last().unwrap().duration_since(stamps[0]).unwrap();
    assert!(
        span > Duration::from_secs(3600),
        "the wall clock did jump in the sidecar: {span:?}"
    );
    drop(sidecar);
}

/// Case 16: NGINX started a moment ago, before the sidecar's next scan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_right_after_nginx_starts_finds_it() {
    let work = Nginx::prepare(NginxOptions::default()).unwrap();
    let pid_file = work.pid_file();
    let port = work.port.to_string();
    let sidecar = Sidecar::spawn(
        bin(),
        &[
            "--nginx-pid-file",
            pid_file.to_str().unwrap(),
            "--port",
            &port,
        ],
    )
    .unwrap();
    assert!(
        raw_get(sidecar.addr, "/readyz")
            .unwrap()
            .starts_with("HTTP/1.1 503")
    );
    let mut child = work.command().spawn().unwrap();
    wait_until("nginx's pid file", || {
        std::fs::read_to_string(&pid_file).is_ok_and(|s| !s.trim().is_empty())
    });
    let r = raw_get(sidecar.addr, "/prestop").unwrap();
    assert_eq!(body_json(&r)["outcome"], "drained", "{r}");
    let status = child.wait().unwrap();
    assert!(status.success() || status.code().is_some());
    assert!(!alive(child.id() as i32));
}
