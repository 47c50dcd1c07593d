//! One termination scenario with traffic, as a load balancer and the
//! kubelet would produce it: new connections at a steady rate that go on
//! for LAG seconds after the hook, keep-alive clients, slow downloads in
//! flight, probes from the node. Shared by the tests and the benchmarks.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::client::{self, Fetched};
use super::load::{self, LoadStats, Style, Until};
use super::{Kubelet, Nginx, NginxOptions, Sidecar, Termination};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const HANG: Duration = Duration::from_secs(60);

fn json(f: &Fetched) -> Value {
    serde_json::from_slice(&f.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", f.text()))
}

/// Waits until the sidecar's `/readyz` answers 200 (at most 10 s).
pub async fn wait_ready(addr: SocketAddr) {
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

/// CPU time (user + system) a process has used so far.
pub fn cpu_time(pid: i32) -> Duration {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            let f: Vec<&str> = rest.split_ascii_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz.max(1))
}

#[derive(Debug, Clone)]
pub struct Scenario {
    /// New connections per second from clients.
    pub rate: f64,
    /// How long before the hook the load runs (the sidecar learns the rate).
    pub warmup: Duration,
    /// How long after the hook new connections keep arriving.
    pub lag: Duration,
    pub downloads: usize,
    pub keepalive: usize,
    /// The keep-alive clients stop at the hook instead of the lag's end
    /// (clients that opened connections in a burst just before it).
    pub keepalive_until_hook: bool,
    /// Probe-like connections from 127.0.0.2 (the "node") all along.
    pub node_probes: bool,
    /// The kubelet's readiness probe of NGINX: a connection a second from
    /// [`client::KUBELET_ADDR`], all along (the hook comes from there too).
    pub kubelet_probes: bool,
    /// The kubelet also probes the sidecar (`kube-probe/` User-Agent, every
    /// second), from which the sidecar learns its address before the hook.
    pub kubelet_probes_sidecar: bool,
    /// Where the clients' new connections come from (default: loopback's
    /// 127.0.0.1). [`client::KUBELET_ADDR`]: clients the node masquerades
    /// to the kubelet's address, as kube-proxy does.
    pub clients_from: Option<IpAddr>,
    /// Where the check "does NGINX still serve during the wait?" comes
    /// from (it is one more arrival unless that address is ignored).
    pub check_from: Option<IpAddr>,
    /// How the rate's clients end their connections.
    pub style: Style,
    /// The rate's clients connect over IPv6 (`[::1]`).
    pub ipv6: bool,
    /// A balancer's warm keep-alive pool: this many connections, opened
    /// (and used once) before the sidecar starts, so that no census ever
    /// saw them arrive, as with a pool older than the arrival history.
    pub pool_conns: usize,
    /// Requests a second over the pool, from the start until the lag's end.
    pub pool_rate: f64,
    /// The pool never stops (pinned to the pod, as through a ClusterIP):
    /// it sends until the termination is over.
    pub pool_pinned: bool,
    pub args: Vec<String>,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            rate: 100.0,
            warmup: Duration::from_secs(2),
            lag: Duration::ZERO,
            downloads: 2,
            keepalive: 4,
            keepalive_until_hook: false,
            node_probes: false,
            kubelet_probes: false,
            kubelet_probes_sidecar: false,
            clients_from: None,
            check_from: None,
            style: Style::ServerCloses,
            ipv6: false,
            pool_conns: 0,
            pool_rate: 0.0,
            pool_pinned: false,
            args: Vec::new(),
        }
    }
}

pub struct Run {
    /// When the hook was sent.
    pub hook_at: Instant,
    /// One instant and the wall-clock time at that instant, to place the
    /// clients' instants against the report's timestamps.
    pub anchor: (Instant, std::time::SystemTime),
    pub report: Value,
    pub load: LoadStats,
    pub keepalive: LoadStats,
    /// The balancer's pool (empty without one).
    pub pool: LoadStats,
    pub downloads_complete: usize,
    pub sigquits: usize,
    pub term: Termination,
    /// NGINX gone minus the later of lag end and the last download.
    pub overhead: Duration,
    pub sidecar_log: String,
    /// 40 ms after the hook (before the 100 ms `--min-delay`): `/readyz`'s status, `/status`, and the status of
    /// a request to NGINX.
    pub readyz_during_wait: Option<u16>,
    pub status_during_wait: Option<Value>,
    pub nginx_during_wait: Option<u16>,
    /// The sidecar's CPU time during the hook, as a share of one core.
    pub sidecar_cpu_share: f64,
}

impl Run {
    /// Whether a client instant came at or after a report's timestamp
    /// (`hook_received_at`, ...), both placed on the wall clock.
    pub fn at_or_after(&self, at: Instant, stamp: &str) -> bool {
        let wall = self.anchor.1 + at.saturating_duration_since(self.anchor.0)
            - self.anchor.0.saturating_duration_since(at);
        let stamp = humantime::parse_rfc3339(stamp).expect("an RFC 3339 timestamp");
        wall >= stamp
    }
}

/// Runs the scenario against a fresh NGINX and a fresh sidecar (`bin`).
pub async fn run(bin: &Path, s: Scenario) -> Run {
    const BLOB: usize = 1 << 20;
    let nginx = Nginx::start(NginxOptions {
        blob_bytes: BLOB,
        ipv6: s.ipv6,
        ..Default::default()
    })
    .expect("nginx");
    let pid_file = nginx.pid_file();
    let mut args = vec!["--nginx-pid-file", pid_file.to_str().unwrap()];
    args.extend(s.args.iter().map(String::as_str));
    let pool = if s.pool_conns > 0 {
        Some(
            load::Pool::open(nginx.addr(), None, s.pool_conns)
                .await
                .expect("the pool connects"),
        )
    } else {
        None
    };
    let sidecar = Sidecar::spawn(bin, &args).expect("sidecar");
    wait_ready(sidecar.addr).await;

    let t0 = Instant::now();
    let anchor = (t0, std::time::SystemTime::now());
    let hook_at = t0 + s.warmup;
    let lag_end = hook_at + s.lag;
    let addr = nginx.addr();
    let max = (s.rate * (s.warmup + s.lag).as_secs_f64()).ceil() as u64 + 1;
    let load_addr = if s.ipv6 { nginx.addr_v6() } else { addr };
    let load = tokio::spawn(load::open_loop_with(
        load_addr,
        s.rate,
        s.clients_from,
        lag_end,
        max,
        s.style,
    ));
    let terminated = Arc::new(AtomicBool::new(false));
    let pool = pool.map(|p| {
        let until = if s.pool_pinned {
            Until::Flag(terminated.clone(), hook_at + HANG)
        } else {
            Until::At(lag_end)
        };
        tokio::spawn(p.run(s.pool_rate, until))
    });
    let ka_until = if s.keepalive_until_hook {
        hook_at
    } else {
        lag_end
    };
    let keepalive: Vec<_> = (0..s.keepalive)
        .map(|_| tokio::spawn(load::keepalive(addr, Duration::from_millis(100), ka_until)))
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
    let kubelet_probes = s.kubelet_probes.then(|| {
        tokio::spawn(load::open_loop(
            addr,
            1.0,
            Some(client::KUBELET_ADDR),
            t0 + HANG,
            60,
        ))
    });
    let sidecar_probes = s.kubelet_probes_sidecar.then(|| {
        let hook = sidecar.addr;
        tokio::spawn(async move {
            for _ in 0..60 {
                let probe = client::start_from(
                    Some(client::KUBELET_ADDR),
                    hook,
                    "GET",
                    "/healthz",
                    "User-Agent: kube-probe/1.32\r\n",
                );
                if let Ok(d) = probe.await {
                    let _ = d.finish().await;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    });

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
    let cpu_before = cpu_time(sidecar.pid());
    let kubelet_start = Instant::now();
    // While the drain waits for traffic to stop: what /readyz and /status say,
    // and whether NGINX still serves.
    let observe = async {
        tokio::time::sleep(Duration::from_millis(40)).await;
        let ready = client::get(sidecar.addr, "/readyz", HANG)
            .await
            .ok()
            .map(|r| r.status);
        let status = client::get(sidecar.addr, "/status", HANG)
            .await
            .ok()
            .map(|r| json(&r));
        let served = match client::start_from(s.check_from, addr, "GET", "/", "").await {
            Ok(d) => d.finish().await.ok().map(|r| r.status),
            Err(_) => None,
        };
        (ready, status, served)
    };
    let kubelet = Kubelet::new(sidecar.addr, Duration::from_secs(30));
    let (term, (readyz_during_wait, status_during_wait, nginx_during_wait)) =
        tokio::join!(kubelet.terminate(&nginx), observe);
    terminated.store(true, Ordering::Relaxed);
    let sidecar_cpu = cpu_time(sidecar.pid()).saturating_sub(cpu_before);
    let gone = kubelet_start + term.nginx_gone_after.unwrap_or(HANG);

    let load = load.await.unwrap();
    let pool = match pool {
        Some(p) => p.await.unwrap(),
        None => LoadStats::default(),
    };
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
    for p in [probes, kubelet_probes].into_iter().flatten() {
        p.abort();
    }
    if let Some(p) = sidecar_probes {
        p.abort();
    }
    let report = json(term.hook.as_ref().expect("hook answered"));
    Run {
        hook_at,
        anchor,
        report,
        load,
        keepalive: ka,
        pool,
        downloads_complete: complete,
        sigquits: nginx.sigquit_count(),
        overhead: gone.saturating_duration_since(lag_end.max(last_done)),
        sidecar_log: sidecar.log(),
        readyz_during_wait,
        status_during_wait,
        nginx_during_wait,
        sidecar_cpu_share: sidecar_cpu.as_secs_f64() / term.hook_took.as_secs_f64().max(1e-3),
        term,
    }
}
