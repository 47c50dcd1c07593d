//! Access control, hardened HTTP, metrics and visible failures, against a
//! real NGINX and the real binary. Bad inputs are sent over raw sockets.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use testbed::client;
use testbed::scenario::wait_ready;
use testbed::{Nginx, NginxOptions, Sidecar};

mod support;
use support::{bin, json, sidecar_for};

const HANG: Duration = Duration::from_secs(30);

/// One request with extra header lines, over a raw socket: status and body.
fn raw_request(addr: SocketAddr, path: &str, headers: &str) -> std::io::Result<(u16, String)> {
    let answer = client::raw_get(addr, path, headers)?;
    Ok((
        client::status_of(&answer),
        client::body_of(&answer).to_string(),
    ))
}

/// Sends `bytes` and reads what comes back within 2 s: the status code of
/// the first response, if any.
fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let _ = s.write_all(bytes);
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok())
}

fn healthz_within_1s(addr: SocketAddr) {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect to the sidecar");
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf)
        .expect("/healthz answered within 1 s");
    assert!(buf.starts_with("HTTP/1.1 200"), "{buf}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
}

fn token_file(dir: &Path, token: &str) -> std::path::PathBuf {
    let p = dir.join("token");
    std::fs::write(&p, format!("{token}\n")).unwrap();
    p
}

/// A sidecar for `nginx` that wants the token `s3cret-token` and admits
/// 127.0.0.1 only (127.0.0.2 plays "another pod"), with `extra` flags.
fn guarded_sidecar(nginx: &Nginx, dir: &Path, extra: &[&str]) -> Sidecar {
    let tf = token_file(dir, "s3cret-token");
    let mut args = vec![
        "--token-file",
        tf.to_str().unwrap(),
        "--allow-cidr",
        "127.0.0.1/32",
    ];
    args.extend_from_slice(extra);
    sidecar_for(nginx, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_right_token_from_an_allowed_peer_drains() {
    let nginx = Nginx::start(NginxOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // With `--on-failure status` refusals are answered (the default resets
    // them: see the next test).
    let sidecar = guarded_sidecar(&nginx, dir.path(), &["--on-failure", "status"]);
    wait_ready(sidecar.addr).await;

    let (code, body) = raw_request(sidecar.addr, "/prestop", "").unwrap();
    assert_eq!(code, 401, "no token: {body}");
    let r = client::start(sidecar.addr, "GET", "/prestop", "")
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert!(
        r.headers
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{}",
        r.headers
    );
    let (code, _) =
        raw_request(sidecar.addr, "/prestop", "Authorization: Bearer wrong\r\n").unwrap();
    assert_eq!(code, 401, "wrong token");
    let (code, _) = raw_request(sidecar.addr, "/status", "").unwrap();
    assert_eq!(code, 401, "/status needs the token too");
    // The right token from outside --allow-cidr.
    let d = client::start_from(
        Some("127.0.0.2".parse().unwrap()),
        sidecar.addr,
        "GET",
        "/prestop",
        "Authorization: Bearer s3cret-token\r\n",
    )
    .await
    .unwrap();
    assert_eq!(d.status, 403);
    // Probes stay open.
    assert_eq!(raw_request(sidecar.addr, "/healthz", "").unwrap().0, 200);
    assert_eq!(raw_request(sidecar.addr, "/readyz", "").unwrap().0, 200);
    assert_eq!(raw_request(sidecar.addr, "/metrics", "").unwrap().0, 200);
    assert!(nginx.is_running());
    assert_eq!(nginx.sigquit_count(), 0, "nginx untouched by refused hooks");
    let log = sidecar.log();
    assert!(
        log.contains("refused: missing or wrong bearer token") && log.contains("127.0.0.1:"),
        "{log}"
    );
    assert!(
        log.contains("refused: the peer's address is not allowed") && log.contains("127.0.0.2:"),
        "{log}"
    );

    let (code, body) = raw_request(
        sidecar.addr,
        "/prestop",
        "Authorization: Bearer s3cret-token\r\n",
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"outcome\": \"drained\""), "{body}");
    assert_eq!(nginx.sigquit_count(), 1);
}

/// A hook refused for its token or peer, answered, would count as a
/// successful hook for the kubelet, which then stops NGINX undrained. By
/// default it is reset instead (FailedPreStopHook), the log says what to
/// fix, and the exit that follows without a drain is an error and a metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_hook_is_reset_by_default_and_the_undrained_exit_is_loud() {
    let mut nginx = Nginx::start(NginxOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sidecar = guarded_sidecar(&nginx, dir.path(), &[]);
    wait_ready(sidecar.addr).await;
    let reset_for = |from: &str, headers: &str| {
        let local = std::net::SocketAddr::new(from.parse().unwrap(), 0);
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&local.into()).unwrap();
        s.connect(&sidecar.addr.into()).unwrap();
        let mut s: TcpStream = s.into();
        s.set_read_timeout(Some(HANG)).unwrap();
        s.write_all(format!("GET /prestop HTTP/1.1\r\nHost: x\r\n{headers}\r\n").as_bytes())
            .unwrap();
        let mut buf = Vec::new();
        let e = s.read_to_end(&mut buf).expect_err("a reset, not an answer");
        assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
        assert!(
            buf.is_empty(),
            "no response bytes: {}",
            String::from_utf8_lossy(&buf)
        );
    };
    reset_for("127.0.0.1", "");
    reset_for(
        "127.0.0.1",
        "Authorization: Bearer <set with --set-string, see above>\r\n",
    );
    reset_for("127.0.0.2", "Authorization: Bearer s3cret-token\r\n");
    assert!(nginx.is_running());
    assert_eq!(
        nginx.sigquit_count(),
        0,
        "nothing drained for a refused hook"
    );
    let log = sidecar.log();
    assert!(
        log.contains("a preStop hook was refused and nothing was drained")
            && log.contains("Bearer <the token in --token-file>")
            && log.contains("its address 127.0.0.2 is not allowed")
            && log.contains("allow its address with --allow-cidr 127.0.0.2/32")
            && log.contains("127.0.0.2:"),
        "{log}"
    );

    // The kubelet goes on to stop NGINX: without a drain.
    nginx.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(nginx.wait_exit(HANG).is_some(), "nginx stopped");
    let auth = "Authorization: Bearer s3cret-token\r\n";
    let deadline = Instant::now() + HANG;
    loop {
        let (code, body) = raw_request(sidecar.addr, "/status", auth).unwrap();
        assert_eq!(code, 200, "{body}");
        let status: Value = serde_json::from_str(&body).unwrap();
        if status["undrained_exits"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "never counted: {status:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, metrics) = raw_request(sidecar.addr, "/metrics", "").unwrap();
    assert!(
        metrics.contains("nginx_drain_undrained_exits_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nginx_drain_hook_requests_total{code=\"401\"} 2")
            && metrics.contains("nginx_drain_hook_requests_total{code=\"403\"} 1"),
        "{metrics}"
    );
    let log = sidecar.log();
    assert!(
        log.contains("ERROR") && log.contains("no preStop hook had reached nginx-drain"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_replaces_the_old_one() {
    // The layout of a mounted Secret: token -> ..data/token, ..data -> ..v1.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (v, t) in [("..v1", "old-token"), ("..v2", "new-token")] {
        std::fs::create_dir(d.join(v)).unwrap();
        std::fs::write(d.join(v).join("token"), t).unwrap();
    }
    std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/token", d.join("token")).unwrap();
    let nginx = Nginx::start(NginxOptions::default()).unwrap();
    let sidecar = sidecar_for(&nginx, &["--token-file", d.join("token").to_str().unwrap()]);
    wait_ready(sidecar.addr).await;
    let status_with = |token: &str| {
        raw_request(
            sidecar.addr,
            "/status",
            &format!("Authorization: Bearer {token}\r\n"),
        )
        .unwrap()
        .0
    };
    assert_eq!(status_with("old-token"), 200);
    // Swap atomically, as the kubelet does: a new symlink renamed over ..data.
    std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    assert_eq!(status_with("old-token"), 401);
    assert_eq!(status_with("new-token"), 200);
    let (code, body) = raw_request(
        sidecar.addr,
        "/prestop",
        "Authorization: Bearer new-token\r\n",
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
}

#[test]
fn an_empty_or_missing_token_file_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    for (path, expect) in [
        (empty.to_str().unwrap(), "is empty"),
        ("/nonexistent/token", "cannot read token file"),
    ] {
        let out = Command::new(bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--token-file", path])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_never_stop_the_probes_or_touch_nginx() {
    let nginx = Nginx::start(NginxOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tf = token_file(dir.path(), "tok");
    // A file limit of 64 (as under `ulimit -n 64`): far fewer descriptors
    // than the connections below, so only evicting idle connections keeps
    // the probes and the hook answered.
    let addr = SocketAddr::from(([127, 0, 0, 1], testbed::free_port()));
    let mut cmd = Command::new("prlimit");
    cmd.args(["--nofile=64:64", "--"])
        .arg(bin())
        .args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--port",
            &nginx.addr().port().to_string(),
        ])
        .arg("--nginx-pid-file")
        .arg(nginx.pid_file())
        .arg("--token-file")
        .arg(&tf);
    let sidecar = Sidecar::spawn_command(cmd, addr).expect("prlimit (util-linux)");
    wait_ready(sidecar.addr).await;
    assert!(
        sidecar.log().contains("the file limit is low"),
        "{}",
        sidecar.log()
    );

    let big_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let many_headers = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..10_000)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect::<String>()
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "garbage request line",
            b"\x00\x01\xffgarbage garbage\r\n\r\n".to_vec(),
        ),
        ("HTTP/0.9", b"GET /prestop\r\n".to_vec()),
        (
            "unknown version",
            b"GET /prestop HTTP/7.3\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("64 KiB header", big_header.into_bytes()),
        ("10 000 header lines", many_headers.into_bytes()),
        (
            "a body on GET /prestop without a token",
            [
                b"GET /prestop HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n".to_vec(),
                vec![b'x'; 256 * 1024],
            ]
            .concat(),
        ),
    ];
    for (name, bytes) in &cases {
        let status = send_raw(addr, bytes);
        assert!(
            status.is_none_or(|s| s >= 400),
            "{name}: answered {status:?}"
        );
        healthz_within_1s(addr);
    }
    // Pipelined requests are answered in order.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(HANG)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let codes: Vec<&str> = out
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &out[i + 9..i + 12])
        .collect();
    assert_eq!(codes, ["200", "200", "404"], "{out}");

    // Slowloris: 50 clients that never finish their headers, and 300 idle
    // connections, far over the 64 descriptors.
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ").unwrap();
        slow.push(c);
    }
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(addr).unwrap());
    }
    std::thread::sleep(Duration::from_millis(200));
    healthz_within_1s(addr);
    assert!(nginx.is_running());
    assert_eq!(nginx.sigquit_count(), 0, "no bad input reached nginx");
    // The hook is still served at the limit.
    let (code, body) = raw_request(addr, "/prestop", "Authorization: Bearer tok\r\n").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"outcome\": \"drained\""));
    drop(slow);
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_client_that_leaves_does_not_cancel_the_drain() {
    let nginx = Nginx::start(NginxOptions::default()).unwrap();
    let sidecar = sidecar_for(&nginx, &[]);
    wait_ready(sidecar.addr).await;
    let download = client::spawn_download(nginx.addr(), "1m").await;
    {
        let mut s = TcpStream::connect(sidecar.addr).unwrap();
        s.write_all(b"GET /prestop HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
    } // the client disconnects mid-drain
    let fetched = download.await.unwrap().expect("the download completes");
    assert_eq!(fetched.body.len(), 1 << 20);
    let deadline = Instant::now() + HANG;
    loop {
        let status = json(&client::get(sidecar.addr, "/status", HANG).await.unwrap());
        if status["last_report"]["outcome"] == "drained" {
            break;
        }
        assert!(Instant::now() < deadline, "{status:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!nginx.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_openmetrics_and_count_the_drains() {
    let mut nginx = Nginx::start(NginxOptions::default()).unwrap();
    let sidecar = sidecar_for(&nginx, &[]);
    wait_ready(sidecar.addr).await;
    assert_eq!(raw_request(sidecar.addr, "/prestop", "").unwrap().0, 200);
    nginx.wait_exit(HANG).unwrap();
    let second = nginx.restart().unwrap();
    wait_ready(sidecar.addr).await;
    assert_eq!(raw_request(sidecar.addr, "/prestop", "").unwrap().0, 200);
    drop(second);
    let m = client::get(sidecar.addr, "/metrics", HANG).await.unwrap();
    assert!(
        m.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = m.text();
    // Python's prometheus_client OpenMetrics parser: a real, strict parser.
    let script = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
fams = {f.name: f for f in text_string_to_metric_families(sys.stdin.read())}
def value(name, sample, **labels):
    for s in fams[name].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise SystemExit(f"no sample {sample} {labels}")
assert value("nginx_drain_drains", "nginx_drain_drains_total", outcome="drained") == 2
assert value("nginx_drain_hook_requests", "nginx_drain_hook_requests_total", code="200") == 2
assert value("nginx_drain_drain_duration_seconds", "nginx_drain_drain_duration_seconds_count") == 2
assert value("nginx_drain_build", "nginx_drain_build_info") == 1
for name in ["nginx_drain_wait_before_sigquit_seconds", "nginx_drain_connections_at_sigquit",
             "nginx_drain_nginx_master_up", "nginx_drain_nginx_workers",
             "nginx_drain_arrivals_per_second", "nginx_drain_open_connections"]:
    assert name in fams, name
print("ok")
"#;
    let mut py = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with prometheus_client (scripts/test installs it)");
    py.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_drain_resets_the_hook_by_default_or_answers_500() {
    for mode in ["reset", "status"] {
        let nginx = Nginx::start(NginxOptions {
            blob_bytes: 8 << 20,
            ..Default::default()
        })
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let report_file = dir.path().join("termination-log");
        let mut args = vec![
            "--drain-timeout",
            "3s",
            "--report-file",
            report_file.to_str().unwrap(),
        ];
        if mode == "status" {
            args.extend(["--on-failure", "status"]);
        }
        let sidecar = sidecar_for(&nginx, &args);
        wait_ready(sidecar.addr).await;
        let download = client::spawn_download(nginx.addr(), "100k").await;
        let mut s = TcpStream::connect(sidecar.addr).unwrap();
        s.set_read_timeout(Some(HANG)).unwrap();
        s.write_all(b"GET /prestop HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = Vec::new();
        let read = s.read_to_end(&mut buf);
        match mode {
            "reset" => {
                let e = read.expect_err("a reset, not a response");
                assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
                assert!(buf.is_empty(), "no response bytes before the reset");
            }
            _ => {
                let text = String::from_utf8_lossy(&buf);
                assert!(text.starts_with("HTTP/1.1 500"), "{text}");
                assert!(text.contains("\"outcome\": \"forced\""), "{text}");
            }
        }
        let status = json(&client::get(sidecar.addr, "/status", HANG).await.unwrap());
        assert_eq!(
            status["last_report"]["outcome"], "forced",
            "the report stays on /status"
        );
        let written: Value = serde_json::from_slice(&std::fs::read(&report_file).unwrap()).unwrap();
        assert_eq!(written["outcome"], "forced");
        assert_eq!(written["drain_id"], status["last_report"]["drain_id"]);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
        assert!(
            download.await.unwrap().is_err(),
            "the forced stop cut the download"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_pod_namespace_and_drain_id() {
    let nginx = Nginx::start(NginxOptions::default()).unwrap();
    let pid_file = nginx.pid_file();
    let port = nginx.addr().port();
    let addr = SocketAddr::from(([127, 0, 0, 1], testbed::free_port()));
    let mut cmd = Command::new(bin());
    cmd.args([
        "serve",
        "--listen",
        &addr.to_string(),
        "--log-format",
        "json",
        "--port",
        &port.to_string(),
    ])
    .arg("--nginx-pid-file")
    .arg(&pid_file)
    .env("POD_NAME", "web-7f9c")
    .env("POD_NAMESPACE", "edge");
    let sidecar = Sidecar::spawn_command(cmd, addr).unwrap();
    wait_ready(addr).await;
    let report = json(&client::get(addr, "/prestop", HANG).await.unwrap());
    let id = report["drain_id"].as_str().unwrap().to_string();
    // The owner logs "drain finished" right after the hook is answered.
    let deadline = Instant::now() + HANG;
    while !sidecar.log().contains("drain finished") {
        assert!(Instant::now() < deadline, "{}", sidecar.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lines: Vec<Value> = sidecar
        .log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["pod"] == "web-7f9c" && l["namespace"] == "edge")
    );
    let sigquit = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("SIGQUIT sent")
        })
        .unwrap();
    // Every line of the drain carries its id at the top level, and values
    // are JSON values, not strings of Rust's debug formatting.
    assert_eq!(sigquit["drain_id"], id.as_str(), "{sigquit}");
    assert!(sigquit["open"].is_object(), "{sigquit}");
    assert!(sigquit.get("span").is_none(), "{sigquit}");
    let done = lines
        .iter()
        .find(|l| l["message"] == "drain finished")
        .unwrap();
    assert_eq!(done["drain_id"], id.as_str());
    assert!(
        done["report"].is_object(),
        "the report as an object: {done}"
    );
    assert_eq!(done["report"]["drain_id"], id.as_str());
    assert!(done["total_ms"].is_u64(), "{done}");
    let serving = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("nginx-drain serving")
        })
        .unwrap();
    assert_eq!(serving["ports"], serde_json::json!([port]), "{serving}");
    assert_eq!(serving["listen"], addr.to_string(), "{serving}");
    assert_eq!(serving["on_failure"], "reset", "{serving}");
    for l in &lines {
        let text = l.to_string();
        assert!(
            !text.contains("Some(") && !text.contains("\\\"{"),
            "Rust debug formatting or escaped JSON in a log line: {text}"
        );
    }
}

/// A flag that does not parse, with `--log-format json`: the error is one
/// JSON line too (exit 2), and it says the form the flag wants.
#[test]
fn a_bad_flag_is_a_json_error_line_in_json_mode() {
    let out = Command::new(bin())
        .args(["serve", "--log-format", "json", "--listen", "10266"])
        .env("POD_NAME", "web-7f9c")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    let line: Value = serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {err}"));
    assert_eq!(line["level"], "ERROR");
    assert_eq!(line["pod"], "web-7f9c");
    assert!(
        line["message"].as_str().unwrap().contains("[::]:10266"),
        "{line}"
    );
    // A mistyped level is refused, not a silent log.
    let out = Command::new(bin())
        .args(["serve", "--log-level", "warning2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a log level"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the sidecar at `addr` says of its wiring: `/status`'s problems (by
/// check, with whether each blocks), the metric per check, and `/wiring`.
async fn wiring(addr: SocketAddr) -> (Vec<(String, bool, String)>, String, u16) {
    let status = json(&client::get(addr, "/status", HANG).await.unwrap());
    let problems = status["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["check"].as_str().unwrap().to_string(),
                p["blocking"].as_bool().unwrap(),
                p["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let metrics = client::get(addr, "/metrics", HANG).await.unwrap().text();
    let wiring = client::get(addr, "/wiring", HANG).await.unwrap().status;
    (problems, metrics, wiring)
}

/// `nginx-drain check --url ADDR`: its exit code and output.
fn check(addr: SocketAddr) -> (Option<i32>, String) {
    let out = Command::new(bin())
        .args(["check", "--url", &addr.to_string()])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("nginx-drain check:\n{text}");
    (out.status.code(), text)
}

/// One misconfiguration, as every place that must show it shows it: the
/// log (at start, with the fix), `/status`, the metric, `/wiring` (503 when
/// it blocks the hook) and `nginx-drain check` (exit 1, FAIL and the fix).
async fn assert_found(sidecar: &Sidecar, check_name: &str, blocking: bool, fix: &str) {
    let deadline = Instant::now() + HANG;
    let (problems, metrics, wiring_status) = loop {
        let seen = wiring(sidecar.addr).await;
        if seen.0.iter().any(|(c, _, _)| c == check_name) || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (_, b, message) = problems
        .iter()
        .find(|(c, _, _)| c == check_name)
        .unwrap_or_else(|| panic!("no {check_name} problem: {problems:?}"));
    assert_eq!(*b, blocking, "{check_name}");
    assert!(message.contains(fix), "{check_name}: {message}");
    assert!(
        metrics.contains(&format!(
            "nginx_drain_wiring_problems{{check=\"{check_name}\"}} 1"
        )),
        "{metrics}"
    );
    assert_eq!(wiring_status, if blocking { 503 } else { 200 });
    let log = sidecar.log();
    assert!(
        log.lines()
            .any(|l| l.contains("wiring problem") && l.contains(fix)),
        "logged at start with the fix: {log}"
    );
    let (code, out) = check(sidecar.addr);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains(&format!("FAIL  {check_name}")) && l.contains(fix)),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_right_wiring_passes_every_check() {
    let nginx = Nginx::start(NginxOptions::default()).unwrap();
    let sidecar = sidecar_for(
        &nginx,
        &["--worker-shutdown-timeout", "5s", "--grace-period", "30s"],
    );
    wait_ready(sidecar.addr).await;
    let (problems, metrics, wiring_status) = wiring(sidecar.addr).await;
    assert!(problems.is_empty(), "{problems:?}");
    assert!(metrics.contains("nginx_drain_wiring_problems{check=\"signal_permission\"} 0"));
    assert_eq!(wiring_status, 200);
    let (code, out) = check(sidecar.addr);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ok    signal_permission") && out.contains("every check passed"));
    assert!(
        out.contains(&format!("master pid {}", nginx.pid())),
        "{out}"
    );
}

/// The sidecar as another UID than NGINX's root master: found when NGINX
/// is, before any hook (it used to look healthy until the first rollout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_uid_is_found_at_start() {
    let nginx = Nginx::start(NginxOptions::default()).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], testbed::free_port()));
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bin())
        .args(["serve", "--listen", &addr.to_string(), "--port"])
        .arg(nginx.addr().port().to_string())
        .arg("--nginx-pid-file")
        .arg(nginx.pid_file());
    let sidecar = Sidecar::spawn_command(cmd, addr).unwrap();
    wait_ready(addr).await;
    assert_found(&sidecar, "signal_permission", true, "CAP_KILL").await;
    assert_eq!(nginx.sigquit_count(), 0, "nothing was signalled");
}

/// No shared PID namespace: the sidecar is PID 1 of its own and sees no
/// NGINX. Found at start, and the hook answers an error (reset by default,
/// 500 here), not `not_running`: a misconfigured pod must not look like a
/// successful drain to the kubelet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_shared_pid_namespace_is_found_at_start_and_the_hook_fails() {
    let nginx = Nginx::start(NginxOptions::default()).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], testbed::free_port()));
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child", "--"])
        .arg(bin())
        .args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--on-failure",
            "status",
            "--port",
        ])
        .arg(nginx.addr().port().to_string());
    let sidecar = Sidecar::spawn_command(cmd, addr).unwrap();
    assert_found(
        &sidecar,
        "shared_pid_namespace",
        true,
        "shareProcessNamespace: true",
    )
    .await;
    let hook = client::get(addr, "/prestop", HANG).await.unwrap();
    assert_eq!(hook.status, 500);
    let report = json(&hook);
    assert_eq!(report["outcome"], "error", "{report:#}");
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("shareProcessNamespace: true"),
        "{report:#}"
    );
    assert!(nginx.is_running() && nginx.sigquit_count() == 0);
}

/// A budget that does not end 2 s before the pod's grace period: a warning
/// (the hook still works), in every place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_past_the_grace_period_is_found_at_start() {
    let nginx = Nginx::start(NginxOptions::default()).unwrap();
    let sidecar = sidecar_for(
        &nginx,
        &["--grace-period", "20s", "--worker-shutdown-timeout", "5s"],
    );
    wait_ready(sidecar.addr).await;
    assert_found(
        &sidecar,
        "budget",
        false,
        "lower --drain-timeout to at most 18s",
    )
    .await;
}

/// NGINX's configuration unreadable to the sidecar (root, but with every
/// capability dropped, against a root master: /proc/PID/root is refused,
/// as in most pods): its worker_shutdown_timeout cannot be checked, and the
/// fix is to give it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_nginx_config_is_found_at_start() {
    let nginx = Nginx::start(NginxOptions::default()).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], testbed::free_port()));
    let mut cmd = Command::new("setpriv");
    cmd.args(["--inh-caps=-all", "--bounding-set=-all", "--"])
        .arg(bin())
        .args(["serve", "--listen", &addr.to_string(), "--port"])
        .arg(nginx.addr().port().to_string())
        .arg("--nginx-pid-file")
        .arg(nginx.pid_file());
    let sidecar = Sidecar::spawn_command(cmd, addr).unwrap();
    wait_ready(addr).await;
    assert_found(
        &sidecar,
        "worker_shutdown_timeout",
        false,
        "give it with --worker-shutdown-timeout",
    )
    .await;
}

/// After a drain that did not succeed, the sidecar keeps answering
/// `/metrics` for `--metrics-linger` once NGINX is gone and its own SIGTERM
/// came (a scrape can still count the forced drain), bounded by the grace
/// period; after a successful drain it exits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_drain_stays_scrapeable_for_a_bounded_linger() {
    for (linger, grace, failed) in [
        ("3s", "30s", true),
        ("3s", "30s", false),
        ("10s", "6s", true),
    ] {
        let nginx = Nginx::start(NginxOptions {
            blob_bytes: 8 << 20,
            ..Default::default()
        })
        .unwrap();
        let mut sidecar = sidecar_for(
            &nginx,
            &[
                "--drain-timeout",
                "3s",
                "--grace-period",
                grace,
                "--metrics-linger",
                linger,
                "--on-failure",
                "status",
            ],
        );
        wait_ready(sidecar.addr).await;
        // A download that cannot finish in the budget, in flight.
        let _download = match failed {
            true => Some(client::spawn_download(nginx.addr(), "100k").await),
            false => None,
        };
        let hook_at = Instant::now();
        let hook = client::get(sidecar.addr, "/prestop", HANG).await.unwrap();
        assert_eq!(
            json(&hook)["outcome"],
            if failed { "forced" } else { "drained" }
        );
        sidecar.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
        let signalled = Instant::now();
        if failed {
            let m = client::get(sidecar.addr, "/metrics", HANG)
                .await
                .unwrap()
                .text();
            assert!(
                m.contains("nginx_drain_drains_total{outcome=\"forced\"} 1"),
                "{m}"
            );
        }
        let status = sidecar.wait_exit(HANG).expect("the sidecar exits");
        assert!(status.success(), "{status}");
        let lingered = signalled.elapsed();
        match (failed, linger) {
            (false, _) => assert!(lingered < Duration::from_secs(2), "no linger: {lingered:?}"),
            (true, "3s") => assert!(
                (Duration::from_millis(2_500)..Duration::from_secs(8)).contains(&lingered),
                "a 3 s linger: {lingered:?}"
            ),
            // A 6 s grace period ends 4 s after the hook (less the kubelet's
            // 2 s): the 10 s linger is cut there.
            _ => assert!(
                hook_at.elapsed() < Duration::from_secs(6),
                "bounded by the grace period: {:?} after the hook",
                hook_at.elapsed()
            ),
        }
    }
}

/// Every sample name in an OpenMetrics text.
fn sample_names(metrics: &str) -> std::collections::BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next().map(String::from))
        .collect()
}

/// The samples of `families` in an OpenMetrics text, with `extra` labels
/// added (as Prometheus adds its target's): `(series, value)`.
fn samples(metrics: &str, families: &[&str], extra: &str) -> Vec<(String, f64)> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            if !families.contains(&name) {
                return None;
            }
            let series = match series.split_once('{') {
                Some((n, labels)) => format!("{n}{{{extra},{labels}"),
                None => format!("{series}{{{extra}}}"),
            };
            Some((series, value.parse().ok()?))
        })
        .collect()
}

/// The chart's alerts (`files/rules.yaml`, as its PrometheusRule holds them)
/// pass `promtool check rules`, and `promtool test rules` fires each one on
/// the series of real sidecars' `/metrics`: a forced drain, a refused hook
/// and a budget past the grace period in one pod, an NGINX exit with no
/// drain in another. Every metric the rules and the dashboard query exists
/// in that output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_alerts_fire_on_real_metrics_and_the_dashboard_queries_real_ones() {
    if which("promtool").is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing under CI: scripts/test installs Debian's prometheus"
        );
        support::skipped("promtool is not installed (apt-get install prometheus)");
        return;
    }
    // Pod A: a forced drain, a refused hook, a budget past the grace.
    let nginx = Nginx::start(NginxOptions {
        blob_bytes: 8 << 20,
        ..Default::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret").unwrap();
    let a = sidecar_for(
        &nginx,
        &[
            "--drain-timeout",
            "3s",
            "--grace-period",
            "4s",
            "--token-file",
            token.to_str().unwrap(),
            "--on-failure",
            "status",
        ],
    );
    wait_ready(a.addr).await;
    let (refused, _) = raw_request(a.addr, "/prestop", "").unwrap();
    assert_eq!(refused, 401);
    let _download = client::spawn_download(nginx.addr(), "100k").await;
    let (forced, body) =
        raw_request(a.addr, "/prestop", "Authorization: Bearer s3cret\r\n").unwrap();
    assert_eq!(forced, 500, "{body}");
    let metrics_a = client::get(a.addr, "/metrics", HANG).await.unwrap().text();
    // Pod B: NGINX stopped behind the sidecar's back.
    let nginx_b = Nginx::start(NginxOptions::default()).unwrap();
    let b = sidecar_for(&nginx_b, &[]);
    wait_ready(b.addr).await;
    nginx_b.signal(nix::sys::signal::Signal::SIGQUIT).unwrap();
    let deadline = Instant::now() + HANG;
    let metrics_b = loop {
        let m = client::get(b.addr, "/metrics", HANG).await.unwrap().text();
        if m.contains("nginx_drain_undrained_exits_total 1") {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "no undrained exit counted; nginx running: {}; sidecar log:\n{}\n{m}",
            nginx_b.is_running(),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let rules_src = std::fs::read_to_string("charts/nginx-drain/files/rules.yaml")
        .unwrap()
        .replace("WINDOW", "15m");
    // Every metric the rules and the dashboard query is one the sidecar has.
    let names = sample_names(&metrics_a);
    let dashboard = std::fs::read_to_string("charts/nginx-drain/files/dashboard.json").unwrap();
    for (what, text) in [("rules", &rules_src), ("dashboard", &dashboard)] {
        let mut rest = text.as_str();
        while let Some(i) = rest.find("nginx_drain_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                names.contains(&name),
                "{what} queries {name}, which /metrics does not have: {names:?}"
            );
            rest = &rest[i + name.len()..];
        }
    }

    let work = tempfile::tempdir().unwrap();
    let rules = work.path().join("rules.yaml");
    std::fs::write(&rules, &rules_src).unwrap();
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The series, 0 for two minutes and then what the sidecars said.
    let mut series = Vec::new();
    for (metrics, pod) in [(&metrics_a, "web-a"), (&metrics_b, "web-b")] {
        let extra = format!("namespace=\"edge\",pod=\"{pod}\"");
        for (s, v) in samples(
            metrics,
            &[
                "nginx_drain_drains_total",
                "nginx_drain_hook_requests_total",
                "nginx_drain_undrained_exits_total",
                "nginx_drain_wiring_problems",
            ],
            &extra,
        ) {
            series.push(serde_json::json!({"series": s, "values": format!("0 0 {v}x8")}));
        }
    }
    // The annotations as the rules' templates render them for `labels`.
    let rule_json = objects_of(&rules_src);
    let annotations = |alert: &str, labels: &serde_json::Map<String, Value>| {
        let rule = rule_json["groups"][0]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["alert"] == alert)
            .unwrap();
        let mut out = serde_json::Map::new();
        for (k, v) in rule["annotations"].as_object().unwrap() {
            let mut text = v.as_str().unwrap().to_string();
            for (lk, lv) in labels {
                text = text.replace(&format!("{{{{ $labels.{lk} }}}}"), lv.as_str().unwrap());
            }
            out.insert(k.clone(), Value::String(text));
        }
        Value::Object(out)
    };
    let alert = |name: &str, severity: &str, all: Vec<Value>| {
        let exp: Vec<Value> = all
            .into_iter()
            .map(|labels| {
                let labels = labels.as_object().unwrap().clone();
                let mut exp_labels = labels.clone();
                exp_labels.insert("severity".into(), severity.into());
                serde_json::json!({"exp_labels": exp_labels, "exp_annotations": annotations(name, &labels)})
            })
            .collect();
        serde_json::json!({"eval_time": "9m", "alertname": name, "exp_alerts": exp})
    };
    // One wiring alert per check the sidecar reported failing (the budget
    // among them).
    let failing: Vec<String> = metrics_a
        .lines()
        .filter_map(|l| {
            l.strip_prefix("nginx_drain_wiring_problems{check=\"")?
                .strip_suffix("\"} 1")
                .map(String::from)
        })
        .collect();
    assert!(failing.contains(&"budget".to_string()), "{failing:?}");
    let tests = serde_json::json!({
        "rule_files": [rules.to_str().unwrap()],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                alert("NginxDrainNotDrained", "warning", vec![serde_json::json!({"namespace": "edge", "pod": "web-a", "outcome": "forced"})]),
                alert("NginxDrainHookRefused", "warning", vec![serde_json::json!({"namespace": "edge", "pod": "web-a", "code": "401"})]),
                alert("NginxDrainWiringProblem", "warning", failing
                    .iter()
                    .map(|c| serde_json::json!({"namespace": "edge", "pod": "web-a", "check": c}))
                    .collect()),
                alert("NginxDrainUndrainedExit", "critical", vec![serde_json::json!({"namespace": "edge", "pod": "web-b"})]),
            ],
        }],
    });
    let test_file = work.path().join("tests.yaml");
    std::fs::write(&test_file, tests.to_string()).unwrap();
    let out = Command::new("promtool")
        .arg("test")
        .arg("rules")
        .arg(&test_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}\n{tests:#}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// YAML as JSON, through PyYAML.
fn objects_of(yaml: &str) -> Value {
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    py.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    serde_json::from_slice(&py.wait_with_output().unwrap().stdout).unwrap()
}
