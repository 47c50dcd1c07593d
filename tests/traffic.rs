//! The traffic-aware drain with **default flags**, against a real NGINX and
//! real load on loopback.
//!
//! Each test re-runs itself inside a network namespace of its own
//! (`unshare --net`, as root), where, as in a pod, the only listeners and
//! connections are the test's: nginx, the sidecar and the load generators.
//! So "every TCP port listening in the namespace" means this test's nginx.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use nginx_drain::sockets::{Census, PortFilter, Source, state};
use nginx_drain::vocab::CensusMethod;
use testbed::Nginx;
use testbed::NginxOptions;
use testbed::load::{self, Style};
use testbed::netns;
use testbed::scenario::{Run, Scenario};
use tokio::time::Instant;

mod support;
use support::bin;

/// Runs test `name` again inside a network namespace of its own and checks
/// that it passed there. Returns true in the outer process (which then
/// returns); false inside the namespace, where the test body runs.
fn in_own_netns(name: &str) -> bool {
    if netns::inside() {
        return false;
    }
    let out = netns::rerun_self(&["--exact", name, "--nocapture", "--test-threads=1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
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

async fn run_scenario(s: Scenario) -> Run {
    testbed::scenario::run(bin(), s).await
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
        !r.term.sigkill_needed && !r.term.stop_found_nginx_running,
        "nginx gone when the hook returned"
    );
    assert!(
        r.sidecar_cpu_share < 0.5,
        "sidecar CPU {:.1} %",
        r.sidecar_cpu_share * 100.0
    );
    println!(
        "sidecar CPU {:.2} % of a core; overhead {:.3} s; wait before SIGQUIT {} ms; quiet period {} ms ({}); arrivals during wait {}",
        r.sidecar_cpu_share * 100.0,
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
    let r = run_scenario(Scenario {
        lag: Duration::from_secs(lag_s),
        ..Default::default()
    })
    .await;
    assert_clean(&r, 2);
    let t = &r.report["traffic"];
    assert_eq!(t["sigquit_reason"], "quiet", "{t:#}");
    assert_eq!(t["census"], "netlink");
    assert_eq!(t["arrivals_seen"], "every_connection");
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
    // The moment the hook arrived: not ready, draining, NGINX still serving.
    assert_eq!(r.readyz_during_wait, Some(503));
    assert_eq!(r.nginx_during_wait, Some(200));
    let status = r.status_during_wait.as_ref().unwrap();
    assert_eq!(status["state"], "draining");
    assert_eq!(status["drain"]["phase"], "await_quiet", "{status:#}");
    assert!(status["drain"]["sigquit_due_in_ms"].is_u64());
    assert_eq!(status["traffic"]["census"], "netlink");
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
    let r = run_scenario(Scenario {
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
    let r = run_scenario(Scenario {
        node_probes: true,
        args: vec!["--ignore-peer".into(), "127.0.0.2".into()],
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
}

/// The sidecar started a second before the hook, a burst of connections
/// (8 keep-alive clients, 4 downloads) right before it, then one new
/// connection every 2 s until 3 s after it: a burst is no rate, and nothing
/// may be refused. (The keep-alive clients stop at the hook: their later
/// requests would race NGINX's closing of idle keep-alive connections at
/// SIGQUIT, which no connection count can foresee.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_history_with_a_burst_refuses_nothing() {
    if in_own_netns("a_short_history_with_a_burst_refuses_nothing") {
        return;
    }
    let r = run_scenario(Scenario {
        rate: 0.5,
        warmup: Duration::from_secs(1),
        lag: Duration::from_secs(3),
        keepalive: 8,
        keepalive_until_hook: true,
        downloads: 4,
        ..Default::default()
    })
    .await;
    assert_clean(&r, 4);
    let reason = r.report["traffic"]["quiet_period_reason"].as_str().unwrap();
    assert!(
        !reason.contains("p90"),
        "too little evidence for a percentile: {reason}"
    );
}

/// Clients that close first (HTTP/1.0; HTTP/1.1 with `Connection: close`
/// closed right after the answer; one keep-alive request, then close) leave
/// NGINX's socket gone within a millisecond and their TIME_WAIT on their
/// own side: no census sees them. 50 new connections a second going on 3 s
/// after the hook, over IPv4 and IPv6: every one is counted (the report's
/// count against the clients' own), none is refused, and SIGQUIT comes
/// within the quiet period of the last one.
async fn close_first_case(style: Style, ipv6: bool) {
    let r = run_scenario(Scenario {
        rate: 50.0,
        warmup: Duration::from_secs(2),
        lag: Duration::from_secs(3),
        keepalive: 0,
        style,
        ipv6,
        // The scenario's own check that NGINX serves during the wait is not
        // the traffic under test.
        check_from: Some("127.0.0.9".parse().unwrap()),
        args: vec!["--ignore-peer".into(), "127.0.0.9".into()],
        ..Default::default()
    })
    .await;
    assert_clean(&r, 2);
    let t = &r.report["traffic"];
    // The clients' connections from the moment the sidecar received the
    // hook (on the wall clock: on a busy machine the hook can reach it tens
    // of milliseconds after the test sent it, and the clients keep opening
    // connections meanwhile).
    let received = r.report["hook_received_at"].as_str().unwrap();
    let clients_after_hook = r
        .load
        .events
        .iter()
        .filter(|(at, _)| r.at_or_after(*at, received))
        .count() as i64;
    let counted = t["arrivals_during_wait"].as_i64().unwrap();
    // A connection opened within a few milliseconds of the hook may fall on
    // either side of it (the report's timestamps are to the millisecond).
    assert!(
        (counted - clients_after_hook).abs() <= 2,
        "{style:?} ipv6={ipv6}: the clients opened {clients_after_hook} connections after the hook, the report counted {counted}: {t:#}"
    );
    let last = r
        .load
        .last_sent
        .unwrap()
        .saturating_duration_since(r.hook_at);
    let waited = Duration::from_millis(t["wait_before_sigquit_ms"].as_u64().unwrap());
    let quiet = Duration::from_millis(t["quiet_period_ms"].as_u64().unwrap());
    // Generous: the quiet period after the last arrival, plus a second of
    // slack for a loaded machine (the census-only count waited 7-8 s more).
    assert!(
        waited <= last + quiet + Duration::from_secs(1),
        "{style:?} ipv6={ipv6}: SIGQUIT {waited:?} after the hook, the last arrival at {last:?}, quiet period {quiet:?}: {t:#}"
    );
}

/// One test per client behaviour and address family, each in a network
/// namespace of its own.
macro_rules! close_first_test {
    ($name:ident, $style:expr, $ipv6:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            if in_own_netns(stringify!($name)) {
                return;
            }
            close_first_case($style, $ipv6).await;
        }
    };
}

close_first_test!(
    http10_clients_that_close_first_are_all_counted_over_ipv4,
    Style::Http10,
    false
);
close_first_test!(
    http10_clients_that_close_first_are_all_counted_over_ipv6,
    Style::Http10,
    true
);
close_first_test!(
    connection_close_clients_that_close_first_are_all_counted_over_ipv4,
    Style::Http11Close,
    false
);
close_first_test!(
    connection_close_clients_that_close_first_are_all_counted_over_ipv6,
    Style::Http11Close,
    true
);
close_first_test!(
    one_request_keepalive_clients_are_all_counted,
    Style::KeepAliveOnce,
    false
);

/// NGINX's listeners closing (a quit, a restart) end sockets too; their
/// destroy events have no peer and are not arrivals. Two restarts of a
/// 2-worker NGINX (4 listeners closed), then a hook: nothing to wait for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_closing_are_not_arrivals() {
    if in_own_netns("listeners_closing_are_not_arrivals") {
        return;
    }
    let mut nginx = Nginx::start(NginxOptions::default()).unwrap();
    // The fixture's own checks that NGINX accepts connections come from
    // 127.0.0.1: real arrivals, not the subject here.
    let sidecar =
        testbed::Sidecar::for_nginx(bin(), &nginx, &["--ignore-peer", "127.0.0.1/32"]).unwrap();
    testbed::scenario::wait_ready(sidecar.addr).await;
    for _ in 0..2 {
        nginx.signal(nix::sys::signal::Signal::SIGQUIT).unwrap();
        nginx
            .wait_exit(Duration::from_secs(10))
            .expect("nginx quit");
        nginx = nginx.restart().unwrap();
        testbed::scenario::wait_ready(sidecar.addr).await;
    }
    let hook = testbed::client::get(sidecar.addr, "/prestop", Duration::from_secs(30))
        .await
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&hook.body).unwrap();
    let t = &r["traffic"];
    assert_eq!(r["outcome"], "drained", "{r:#}");
    assert!(
        t["quiet_period_reason"]
            .as_str()
            .unwrap()
            .starts_with("no client connection"),
        "closed listeners counted as arrivals: {t:#}"
    );
}

/// The kubelet probes NGINX from an address of its own (the CNI bridge's in
/// a pod), which nobody configured. Learned from its probes of the sidecar,
/// or from the hook alone, it never delays the quit.
async fn kubelet_case(probes_sidecar: bool) {
    let r = run_scenario(Scenario {
        rate: 0.0,
        warmup: Duration::from_secs(4),
        keepalive: 0,
        downloads: 0,
        kubelet_probes: true,
        kubelet_probes_sidecar: probes_sidecar,
        // The scenario's own check that NGINX serves during the wait is not
        // the traffic under test.
        check_from: Some("127.0.0.9".parse().unwrap()),
        args: vec!["--ignore-peer".into(), "127.0.0.9".into()],
        ..Default::default()
    })
    .await;
    assert_clean(&r, 0);
    let t = &r.report["traffic"];
    assert_eq!(
        t["kubelet_peers"],
        serde_json::json!(["127.0.0.3"]),
        "{t:#}"
    );
    assert_eq!(t["sigquit_reason"], "quiet", "{t:#}");
    // Counted, a probe a second would hold SIGQUIT off for three gaps (3 s).
    let waited = t["wait_before_sigquit_ms"].as_u64().unwrap();
    assert!(
        waited < 1_500,
        "probes delayed SIGQUIT by {waited} ms: {t:#}"
    );
    assert!(
        r.sidecar_log.contains("learned the kubelet's address"),
        "{}",
        r.sidecar_log
    );
}

/// Clients that reach NGINX from the kubelet's own address, as kube-proxy
/// makes them when it masquerades node-local Service traffic (or all of it,
/// `masqueradeAll`): learning that address from the kubelet's probes must not
/// make the sidecar blind to them. Probes every second go on beside them.
async fn masqueraded_case(rate: f64) {
    let r = run_scenario(Scenario {
        rate,
        lag: Duration::from_secs(5),
        kubelet_probes: true,
        kubelet_probes_sidecar: true,
        clients_from: Some(testbed::client::KUBELET_ADDR),
        ..Default::default()
    })
    .await;
    assert_clean(&r, 2);
    let t = &r.report["traffic"];
    assert_eq!(
        t["kubelet_peers"],
        serde_json::json!(["127.0.0.3"]),
        "{t:#}"
    );
    assert_eq!(t["sigquit_reason"], "quiet", "{t:#}");
    let waited = t["wait_before_sigquit_ms"].as_u64().unwrap();
    assert!(
        waited >= 5_000,
        "SIGQUIT before the clients on the kubelet's address stopped: {waited} ms: {t:#}"
    );
    // They were counted as clients (all but the probe budget's 2 a second).
    let counted = t["arrivals_during_wait"].as_f64().unwrap();
    assert!(
        counted >= 5.0 * (rate - 3.0) * 0.8,
        "{counted} of ~{} arrivals counted: {t:#}",
        5.0 * rate
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_masqueraded_to_the_kubelets_address_at_20_per_second_are_counted() {
    if in_own_netns("clients_masqueraded_to_the_kubelets_address_at_20_per_second_are_counted") {
        return;
    }
    masqueraded_case(20.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_masqueraded_to_the_kubelets_address_at_100_per_second_are_counted() {
    if in_own_netns("clients_masqueraded_to_the_kubelets_address_at_100_per_second_are_counted") {
        return;
    }
    masqueraded_case(100.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_probes_learned_from_its_probes_of_the_sidecar_do_not_delay_the_quit() {
    if in_own_netns("kubelet_probes_learned_from_its_probes_of_the_sidecar_do_not_delay_the_quit") {
        return;
    }
    kubelet_case(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_probes_learned_from_the_hook_alone_do_not_delay_the_quit() {
    if in_own_netns("kubelet_probes_learned_from_the_hook_alone_do_not_delay_the_quit") {
        return;
    }
    kubelet_case(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proc_fallback_drains_as_well() {
    if in_own_netns("proc_fallback_drains_as_well") {
        return;
    }
    let r = run_scenario(Scenario {
        lag: Duration::from_secs(2),
        args: vec!["--census".into(), "proc".into()],
        ..Default::default()
    })
    .await;
    assert_clean(&r, 2);
    assert_eq!(r.report["traffic"]["census"], "proc");
    assert_eq!(
        r.report["traffic"]["arrivals_seen"], "census_only",
        "no destroy events without netlink"
    );
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
    for method in [CensusMethod::Netlink, CensusMethod::Proc] {
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

/// A balancer's warm keep-alive pool: 16 connections opened before the
/// sidecar started (no census saw them arrive), 200 requests a second over
/// them and no new connection, going on for LAG after the hook (the
/// balancer's deregistration), with downloads in flight. Its requests hold
/// the quit until they stop; none fails.
async fn pool_case(name: &str, lag_s: u64, new_per_second: f64) {
    if in_own_netns(name) {
        return;
    }
    let r = run_scenario(Scenario {
        rate: new_per_second,
        keepalive: 0,
        pool_conns: 16,
        pool_rate: 200.0,
        lag: Duration::from_secs(lag_s),
        warmup: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    let t = &r.report["traffic"];
    assert_eq!(
        r.report["outcome"], "drained",
        "{:#}\n{}",
        r.report, r.sidecar_log
    );
    assert!(r.pool.ok >= 200, "the pool carried requests: {:?}", r.pool);
    assert_eq!(
        r.pool.failed(),
        0,
        "pooled requests failed: {:?} (report {t:#})",
        r.pool
    );
    assert_eq!(r.load.failed(), 0, "new connections failed: {:?}", r.load);
    assert_eq!(r.downloads_complete, 2, "every download complete");
    assert_eq!(r.sigquits, 1, "exactly one SIGQUIT");
    assert_eq!(t["sigquit_reason"], "quiet", "{t:#}");
    assert_eq!(t["requests_seen"], true, "{t:#}");
    let waited = t["wait_before_sigquit_ms"].as_u64().unwrap();
    assert!(
        waited >= lag_s * 1000,
        "SIGQUIT only after the pool stopped: {waited} ms"
    );
    assert!(
        t["requests_per_second_before_hook"].as_f64().unwrap() > 50.0,
        "the pool's rate was seen before the hook: {t:#}"
    );
    let requests = t["requests_during_wait"].as_u64().unwrap();
    assert!(
        requests >= lag_s * 100,
        "{requests} requests counted in {lag_s} s at 200/s"
    );
    if lag_s > 0 {
        assert!(t["last_request_at"].is_string(), "{t:#}");
    }
    let message = r.report["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("{requests} requests on open connections")),
        "{message}"
    );
    println!(
        "pool lag {lag_s} s + {new_per_second}/s new: SIGQUIT after {waited} ms, overhead {:.3} s, {requests} requests during the wait, quiet period {} ms ({}), {} pooled at SIGQUIT ({} idle), sidecar CPU {:.2} %",
        r.overhead.as_secs_f64(),
        t["quiet_period_ms"],
        t["quiet_period_reason"],
        t["pooled_at_sigquit"],
        t["pooled_idle_at_sigquit"],
        r.sidecar_cpu_share * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_pool_that_stops_at_the_hook_is_drained_without_a_failed_request() {
    pool_case(
        "a_warm_pool_that_stops_at_the_hook_is_drained_without_a_failed_request",
        0,
        0.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_pool_that_goes_on_3s_after_the_hook_holds_the_quit_and_loses_nothing() {
    pool_case(
        "a_warm_pool_that_goes_on_3s_after_the_hook_holds_the_quit_and_loses_nothing",
        3,
        0.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_pool_mixed_with_new_connections_loses_nothing() {
    pool_case(
        "a_warm_pool_mixed_with_new_connections_loses_nothing",
        3,
        100.0,
    )
    .await;
}

/// A pool pinned to the pod (as one through a ClusterIP, which conntrack
/// keeps on the terminating pod) never stops: the quit waits --max-delay
/// and no longer, and the report says requests were still arriving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_pool_is_quit_at_max_delay_and_reported() {
    if in_own_netns("a_pinned_pool_is_quit_at_max_delay_and_reported") {
        return;
    }
    let r = run_scenario(Scenario {
        rate: 0.0,
        keepalive: 0,
        downloads: 0,
        pool_conns: 16,
        pool_rate: 200.0,
        pool_pinned: true,
        warmup: Duration::from_secs(3),
        args: vec!["--max-delay".into(), "2s".into()],
        ..Default::default()
    })
    .await;
    let t = &r.report["traffic"];
    assert_eq!(r.report["outcome"], "drained", "{:#}", r.report);
    assert_eq!(t["sigquit_reason"], "max_delay", "{t:#}");
    let waited = t["wait_before_sigquit_ms"].as_u64().unwrap();
    assert!((2000..2500).contains(&waited), "{waited} ms");
    assert!(t["requests_during_wait"].as_u64().unwrap() >= 200, "{t:#}");
    assert!(t["pooled_at_sigquit"].as_u64().unwrap() > 0, "{t:#}");
    let message = r.report["message"].as_str().unwrap();
    assert!(
        message.contains("still arriving") && !message.contains("every in-flight request finished"),
        "{message}"
    );
    println!(
        "pinned pool: SIGQUIT after {waited} ms; the pool saw {:?}",
        r.pool
    );
}

/// A request with the kubelet's User-Agent is believed only from an address
/// the kubelet calls from (loopback, the node's, a default gateway,
/// `--allow-cidr`): with open access, another pod sending it is not taken
/// for the kubelet, whose probes would then not count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_pod_cannot_pass_for_the_kubelet() {
    if in_own_netns("another_pod_cannot_pass_for_the_kubelet") {
        return;
    }
    let stranger: std::net::IpAddr = "10.9.9.9".parse().unwrap();
    let st = Command::new("ip")
        .args(["addr", "add", "10.9.9.9/32", "dev", "lo"])
        .status()
        .unwrap();
    assert!(st.success(), "ip addr add");
    let nginx = Nginx::start(NginxOptions::default()).unwrap();
    let sidecar = testbed::Sidecar::for_nginx(bin(), &nginx, &[]).unwrap();
    testbed::scenario::wait_ready(sidecar.addr).await;
    for from in [stranger, testbed::client::KUBELET_ADDR] {
        let probe = testbed::client::start_from(
            Some(from),
            sidecar.addr,
            "GET",
            "/healthz",
            "User-Agent: kube-probe/1.32\r\n",
        )
        .await
        .unwrap();
        probe.finish().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = testbed::client::get(sidecar.addr, "/status", Duration::from_secs(10))
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    assert_eq!(
        status["traffic"]["kubelet_peers"],
        serde_json::json!([testbed::client::KUBELET_ADDR.to_string()]),
        "{status:#}"
    );
}
