//! The traffic-aware drain with **default flags**, against a real NGINX and
//! real load on loopback.
//!
//! Each test re-runs itself inside a network namespace of its own
//! (`unshare --net`, as root), where, as in a pod, the only listeners and
//! connections are the test's: nginx, the sidecar and the load generators.
//! So "every TCP port listening in the namespace" means this test's nginx.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nginx_drain::sockets::{Census, Method, PortFilter, Source, state};
use nginx_drain::testbed::client::{self, Fetched};
use nginx_drain::testbed::load::{self, LoadStats};
use nginx_drain::testbed::{Kubelet, Nginx, NginxOptions, Sidecar, Termination};
use serde_json::Value;
use tokio::time::Instant;

const HANG: Duration = Duration::from_secs(60);
const IN_NETNS: &str = "NGINX_DRAIN_TEST_IN_NETNS";

/// Runs test `name` again inside a fresh network namespace and checks that
/// it passed there. Returns true in the outer process (which then returns);
/// false inside the namespace, where the test body runs.
fn in_own_netns(name: &str) -> bool {
    if std::env::var_os(IN_NETNS).is_some() {
        return false;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args([
            "--net",
            "sh",
            "-c",
            "ip link set lo up && exec \"$0\" \"$@\"",
        ])
        .arg(&exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(IN_NETNS, "1")
        .output()
        .expect("run unshare (util-linux; needs root)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "{name} failed in its network namespace"
    );
    assert!(
        stdout.contains("1 passed"),
        "{name} did not run in its namespace"
    );
    true
}

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nginx-drain"))
}

fn json(f: &Fetched) -> Value {
    serde_json::from_slice(&f.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", f.text()))
}

async fn wait_ready(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = client::get(addr, "/readyz", HANG).await
            && r.status == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "sidecar never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Scenario {
    /// New connections per second from clients.
    rate: f64,
    /// How long before the hook the load runs (the sidecar learns the rate).
    warmup: Duration,
    /// How long after the hook new connections keep arriving.
    lag: Duration,
    downloads: usize,
    keepalive: usize,
    /// Probe-like connections from 127.0.0.2 (the "node") all along.
    node_probes: bool,
    args: Vec<&'static str>,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            rate: 100.0,
            warmup: Duration::from_secs(2),
            lag: Duration::ZERO,
            downloads: 2,
            keepalive: 4,
            node_probes: false,
            args: Vec::new(),
        }
    }
}

struct Run {
    report: Value,
    load: LoadStats,
    keepalive: LoadStats,
    probes: LoadStats,
    downloads_complete: usize,
    sigquits: usize,
    term: Termination,
    /// NGINX gone minus the later of lag end and the last download.
    overhead: Duration,
    sidecar_log: String,
}

async fn run(s: Scenario) -> Run {
    const BLOB: usize = 1 << 20;
    let nginx = Nginx::start(NginxOptions {
        blob_bytes: BLOB,
        ..Default::default()
    })
    .expect("nginx");
    let pid_file = nginx.pid_file();
    let mut args = vec!["--nginx-pid-file", pid_file.to_str().unwrap()];
    args.extend(s.args.iter().copied());
    let sidecar = Sidecar::spawn(bin(), &args).expect("sidecar");
    wait_ready(sidecar.addr).await;

    let t0 = Instant::now();
    let hook_at = t0 + s.warmup;
    let lag_end = hook_at + s.lag;
    let addr = nginx.addr();
    let max = (s.rate * (s.warmup + s.lag).as_secs_f64()).ceil() as u64 + 1;
    let load = tokio::spawn(load::open_loop(addr, s.rate, None, lag_end, max));
    let keepalive: Vec<_> = (0..s.keepalive)
        .map(|_| tokio::spawn(load::keepalive(addr, Duration::from_millis(100), lag_end)))
        .collect();
    let probes = if s.node_probes {
        let node: IpAddr = "127.0.0.2".parse().unwrap();
        // Probes go on until the test ends, as the kubelet's would.
        Some(tokio::spawn(load::open_loop(
            addr,
            10.0,
            Some(node),
            t0 + HANG,
            600,
        )))
    } else {
        None
    };

    // Slow downloads in flight at the hook: 1 MiB at 500 KB/s, ~2 s each.
    tokio::time::sleep_until(hook_at - Duration::from_millis(500)).await;
    let mut downloads = Vec::new();
    for _ in 0..s.downloads {
        let d = client::start(addr, "GET", "/blob?rate=500k", "")
            .await
            .expect("download starts");
        downloads.push(tokio::spawn(async move {
            let r = d.finish().await;
            (r, Instant::now())
        }));
    }
    tokio::time::sleep_until(hook_at).await;
    let term = Kubelet::new(sidecar.addr, Duration::from_secs(30))
        .terminate(&nginx)
        .await;
    let gone = t0
        + Duration::ZERO.max(Duration::from_secs(0))
        + term.nginx_gone_after.map_or(HANG, |d| d + s.warmup);

    let load = load.await.unwrap();
    let mut ka = LoadStats::default();
    for k in keepalive {
        ka.merge(&k.await.unwrap());
    }
    let mut complete = 0;
    let mut last_done = hook_at;
    for d in downloads {
        let (r, done) = d.await.unwrap();
        if r.is_ok_and(|f| f.body.len() == BLOB) {
            complete += 1;
        }
        last_done = last_done.max(done);
    }
    let probes = match probes {
        Some(p) => {
            p.abort();
            LoadStats::default()
        }
        None => LoadStats::default(),
    };
    let report = json(term.hook.as_ref().expect("hook answered"));
    Run {
        report,
        load,
        keepalive: ka,
        probes,
        downloads_complete: complete,
        sigquits: nginx.sigquit_count(),
        overhead: gone.saturating_duration_since(lag_end.max(last_done)),
        sidecar_log: sidecar.log(),
        term,
    }
}

/// What every traffic-aware drain must give the user.
fn assert_clean(r: &Run, downloads: usize) {
    assert_eq!(
        r.report["outcome"], "drained",
        "{:#}\n{}",
        r.report, r.sidecar_log
    );
    assert_eq!(
        r.load.failed(),
        0,
        "new connections failed: {:?} (report {:#})",
        r.load,
        r.report["traffic"]
    );
    assert!(r.load.ok > 0);
    assert_eq!(
        r.keepalive.failed(),
        0,
        "keep-alive requests failed: {:?}",
        r.keepalive
    );
    assert_eq!(r.downloads_complete, downloads, "every download complete");
    assert_eq!(r.sigquits, 1, "exactly one SIGQUIT");
    assert!(
        !r.term.sigkill_needed && !r.term.sigterm_found_nginx_running,
        "nginx gone when the hook returned"
    );
    println!(
        "overhead {:.3} s; wait before SIGQUIT {} ms; quiet period {} ms ({}); arrivals during wait {}",
        r.overhead.as_secs_f64(),
        r.report["traffic"]["wait_before_sigquit_ms"],
        r.report["traffic"]["quiet_period_ms"],
        r.report["traffic"]["quiet_period_reason"],
        r.report["traffic"]["arrivals_during_wait"],
    );
}

async fn lag_case(name: &str, lag_s: u64) {
    if in_own_netns(name) {
        return;
    }
    let r = run(Scenario {
        lag: Duration::from_secs(lag_s),
        ..Default::default()
    })
    .await;
    assert_clean(&r, 2);
    let t = &r.report["traffic"];
    assert_eq!(t["sigquit_reason"], "quiet", "{t:#}");
    assert_eq!(t["census"], "netlink");
    assert!(
        t["arrivals_per_second_before_hook"].as_f64().unwrap() > 20.0,
        "{t:#}"
    );
    let waited = t["wait_before_sigquit_ms"].as_u64().unwrap();
    assert!(
        waited >= lag_s * 1000,
        "SIGQUIT only after the lag: {waited} ms"
    );
    if lag_s > 0 {
        assert!(
            t["arrivals_during_wait"].as_u64().unwrap() >= lag_s * 50,
            "{t:#}"
        );
    }
    assert!(!t["samples"].as_array().unwrap().is_empty());
    assert!(t["last_connection_closed_at"].is_string(), "{t:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_0s_at_100_per_second() {
    lag_case("lag_0s_at_100_per_second", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_3s_at_100_per_second() {
    lag_case("lag_3s_at_100_per_second", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_8s_at_100_per_second() {
    lag_case("lag_8s_at_100_per_second", 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_rate_one_every_two_seconds_loses_nothing() {
    if in_own_netns("low_rate_one_every_two_seconds_loses_nothing") {
        return;
    }
    let r = run(Scenario {
        rate: 0.5,
        warmup: Duration::from_secs(7),
        lag: Duration::from_secs(3),
        keepalive: 0,
        ..Default::default()
    })
    .await;
    assert_clean(&r, 2);
    let q = r.report["traffic"]["quiet_period_ms"].as_u64().unwrap();
    assert!(q >= 2000, "a quiet period of at least one gap: {q} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_from_an_ignored_peer_do_not_delay_the_quit() {
    if in_own_netns("probes_from_an_ignored_peer_do_not_delay_the_quit") {
        return;
    }
    let r = run(Scenario {
        node_probes: true,
        args: vec!["--ignore-peer", "127.0.0.2"],
        ..Default::default()
    })
    .await;
    assert_clean(&r, 2);
    let t = &r.report["traffic"];
    // The probes (10/s) went on through the wait; client traffic stopped at
    // the hook. Counted, the probes would hold SIGQUIT off until
    // --max-delay (15 s).
    assert!(
        t["arrivals_during_wait"].as_u64().unwrap() <= 2,
        "node probes not counted: {t:#}"
    );
    let waited = t["wait_before_sigquit_ms"].as_u64().unwrap();
    assert!(
        waited < 2000,
        "probes continued, yet SIGQUIT came after {waited} ms"
    );
    let _ = r.probes;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proc_fallback_drains_as_well() {
    if in_own_netns("proc_fallback_drains_as_well") {
        return;
    }
    let r = run(Scenario {
        lag: Duration::from_secs(2),
        args: vec!["--census", "proc"],
        ..Default::default()
    })
    .await;
    assert_clean(&r, 2);
    assert_eq!(r.report["traffic"]["census"], "proc");
    assert!(
        r.report["traffic"]["wait_before_sigquit_ms"]
            .as_u64()
            .unwrap()
            >= 2000
    );
}

/// Established connections per local port and listening ports, from `ss`.
fn ss_counts() -> (
    std::collections::BTreeMap<u16, u32>,
    std::collections::BTreeSet<u16>,
) {
    let out = Command::new("ss")
        .args(["-tanH"])
        .output()
        .expect("ss (iproute2)");
    let mut est = std::collections::BTreeMap::new();
    let mut listening = std::collections::BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        let port: u16 = f[3]
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        match f[0] {
            "ESTAB" => *est.entry(port).or_default() += 1,
            "LISTEN" => {
                listening.insert(port);
            }
            _ => {}
        }
    }
    (est, listening)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn census_matches_ss_while_load_runs() {
    if in_own_netns("census_matches_ss_while_load_runs") {
        return;
    }
    let nginx = Nginx::start(NginxOptions {
        extra_ports: 1,
        ..Default::default()
    })
    .unwrap();
    let idle_port = nginx.work.extra_ports[0];
    let idle_addr = SocketAddr::from(([127, 0, 0, 1], idle_port));
    let mut held = Vec::new();
    for _ in 0..37 {
        held.push(tokio::net::TcpStream::connect(idle_addr).await.unwrap());
    }
    let until = Instant::now() + Duration::from_secs(3);
    let load = tokio::spawn(load::open_loop(nginx.addr(), 200.0, None, until, 1000));
    tokio::time::sleep(Duration::from_millis(500)).await;
    for method in [Method::Netlink, Method::Proc] {
        let (ss_before, ss_listen) = ss_counts();
        let socks = Source::new(method).dump().unwrap();
        let (ss_after, _) = ss_counts();
        let mut seen = Default::default();
        let census = Census::take(&socks, &PortFilter::default(), &mut seen);
        let ours_listen: std::collections::BTreeSet<u16> =
            census.listening.keys().copied().collect();
        assert_eq!(ours_listen, ss_listen, "{method:?}: listening ports");
        let est = |p: u16| {
            socks
                .iter()
                .filter(|s| s.state == state::ESTABLISHED && s.local.port() == p)
                .count() as u32
        };
        // Idle connections are stable: exact. (The server side counts one
        // per connection; the client side has an ephemeral local port.)
        assert_eq!(est(idle_port), 37, "{method:?}");
        assert_eq!(ss_before.get(&idle_port), Some(&37));
        // Under load the count moves between the reads: it must lie within
        // what ss saw just before and just after, give or take a few.
        let p = nginx.addr().port();
        let (lo, hi) = {
            let a = *ss_before.get(&p).unwrap_or(&0);
            let b = *ss_after.get(&p).unwrap_or(&0);
            (a.min(b).saturating_sub(5), a.max(b) + 5)
        };
        assert!(
            (lo..=hi).contains(&est(p)),
            "{method:?}: {} not in {lo}..={hi}",
            est(p)
        );
    }
    let stats = load.await.unwrap();
    assert_eq!(stats.failed(), 0);
    drop(held);
}
