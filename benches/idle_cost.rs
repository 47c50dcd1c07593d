//! Benchmark: what the sidecar costs while it waits for a hook, as the
//! number of open connections grows (busy ingress pods hold 10k-100k
//! keep-alive connections for days).
//!
//! In a network namespace of its own: a real NGINX, N idle keep-alive
//! client connections on loopback (both ends in the namespace, so the pod
//! has about 2N sockets), the sidecar idle for 65 s: its CPU (share of one
//! core, from /proc/PID/stat) and RSS. Before, every idle census walked every
//! socket on NGINX's ports every 200 ms; now the namespace's accept counter
//! (`/proc/net/snmp`) says when a census can find nothing new, and an idle
//! census runs at least every 30 s.
//!
//! Then 20 s with a balancer's keep-alive pool among them (16 connections,
//! 200 requests/s, no new connection): the sidecar's CPU while it watches
//! requests on open connections (the segment counter moves, so censuses
//! with `tcp_info` run, spaced by their cost).
//!
//! Then a drain with those N connections open: 100 new connections/s for
//! 2 s before the hook and 3 s after it (a load balancer's lag), the hook,
//! NGINX's graceful exit: the sidecar's CPU over the hook's duration, the
//! requests that failed, and the sidecar's peak RSS (VmHWM) over its life.
//!
//! Run: `cargo bench --bench idle_cost [-- N...]` (default 0 1000 10000).
//! One process may hold at most 20 000 files here and one source address has
//! about 28 000 ephemeral ports, so the clients are spread over helper
//! processes of 12 500 connections each, from 127.0.0.2, 127.0.0.3, ...;
//! NGINX gets a worker per 12 500 connections. `NGINX_DRAIN_BIN` measures
//! another build of the binary.

use std::io::{BufRead, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use testbed::scenario::cpu_time;
use testbed::{Kubelet, Nginx, NginxOptions, Sidecar, load, netns};

/// Longer than the idle census's period (30 s, or 500 times its cost, at
/// most 60 s), so that one falls in.
const IDLE: Duration = Duration::from_secs(65);
/// Connections per helper process (and per NGINX worker).
const PER_PROCESS: usize = 12_500;

/// Helper mode: `--hold N ADDR FROM`: opens N keep-alive connections to
/// ADDR from FROM, says "ready", and holds them until stdin closes.
fn hold(args: &[String]) -> ! {
    let n: usize = args[1].parse().unwrap();
    let addr: SocketAddr = args[2].parse().unwrap();
    let from: IpAddr = args[3].parse().unwrap();
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&SocketAddr::new(from, 0).into()).unwrap();
        sock.connect(&addr.into())
            .unwrap_or_else(|e| panic!("connection {i} from {from}: {e}"));
        let mut s: std::net::TcpStream = sock.into();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf).unwrap();
        held.push(s);
    }
    println!("ready");
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    std::process::exit(0);
}

/// Opens `n` idle keep-alive connections to `addr` through helper
/// processes; they close when the children are dropped.
fn hold_connections(n: usize, addr: SocketAddr) -> Vec<Child> {
    let me = std::env::current_exe().unwrap();
    let mut children = Vec::new();
    let mut left = n;
    let mut k = 2u8;
    while left > 0 {
        let take = left.min(PER_PROCESS);
        let mut child = Command::new(&me)
            .args([
                "--hold",
                &take.to_string(),
                &addr.to_string(),
                &format!("127.0.0.{k}"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "helper {k}");
        children.push(child);
        left -= take;
        k += 1;
    }
    children
}

/// The time a balancer's pool runs among the idle connections.
const POOLED: Duration = Duration::from_secs(20);

fn rss_kib(pid: i32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// A `/proc/PID/status` field in KiB (`VmRSS:`, `VmHWM:` for the peak).
fn status_kib(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))?
                .split_ascii_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// `/readyz`'s answer times, asked every 20 ms until `until`: median, p99
/// and the longest, in milliseconds.
async fn readyz_latencies(addr: SocketAddr, until: tokio::time::Instant) -> String {
    let mut took = Vec::new();
    while tokio::time::Instant::now() < until && took.len() < 5_000 {
        let t = std::time::Instant::now();
        if testbed::client::get(addr, "/readyz", Duration::from_secs(10))
            .await
            .is_ok()
        {
            took.push(t.elapsed().as_secs_f64() * 1e3);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    took.sort_by(f64::total_cmp);
    let at = |q: f64| {
        took.get(((took.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    format!(
        "{} answers, median {:.2} ms, p99 {:.2} ms, longest {:.2} ms",
        took.len(),
        at(0.5),
        at(0.99),
        took.last().copied().unwrap_or(f64::NAN)
    )
}

/// A drain under 100 new connections/s that go on 3 s after the hook:
/// the sidecar's CPU over the hook (% of a core), the hook's duration, and
/// the failed requests.
async fn drain(nginx: &Nginx, sidecar: &Sidecar) -> (f64, f64, u64, String) {
    let start = tokio::time::Instant::now();
    let hook_at = start + Duration::from_secs(2);
    let load = tokio::spawn(load::open_loop(
        nginx.addr(),
        100.0,
        None,
        hook_at + Duration::from_secs(3),
        600,
    ));
    tokio::time::sleep_until(hook_at).await;
    let cpu0 = cpu_time(sidecar.pid());
    let term = Kubelet::new(sidecar.addr, Duration::from_secs(60))
        .terminate(nginx)
        .await;
    let cpu = cpu_time(sidecar.pid()).saturating_sub(cpu0);
    let stats = load.await.expect("load");
    let took = term.hook_took.as_secs_f64();
    let message = term
        .hook
        .as_ref()
        .ok()
        .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h.body).ok())
        .map(|r| {
            let t = |f: &str| r[f].as_str().and_then(|s| humantime::parse_rfc3339(s).ok());
            let answer_after_exit = match (t("exited_at"), t("answered_at")) {
                (Some(e), Some(a)) => a.duration_since(e).map_or("?".to_string(), |d| {
                    format!("{:.1} ms", d.as_secs_f64() * 1e3)
                }),
                _ => "?".into(),
            };
            format!(
                "{} [quiet: {}] [hook answered {answer_after_exit} after NGINX's exit]",
                r["message"].as_str().unwrap_or("?"),
                r["traffic"]["quiet_period_reason"].as_str().unwrap_or("?")
            )
        })
        .unwrap_or_else(|| "no report".into());
    (
        cpu.as_secs_f64() / took.max(1e-3) * 100.0,
        took,
        stats.failed(),
        message,
    )
}

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().is_some_and(|a| a == "--hold") {
        hold(&raw);
    }
    let args = netns::enter(false);
    let counts: Vec<usize> = {
        let v: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
        if v.is_empty() {
            vec![0, 1_000, 10_000]
        } else {
            v
        }
    };
    let bin = std::env::var_os("NGINX_DRAIN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_nginx-drain")));
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).unwrap();

    println!("sidecar {} idle for {} s", bin.display(), IDLE.as_secs());
    println!(
        "{:>12} {:>16} {:>10} {:>18} {:>18} {:>10} {:>8} {:>14}",
        "connections",
        "CPU % of a core",
        "RSS MiB",
        "pooled CPU % core",
        "drain CPU % core",
        "drain s",
        "failed",
        "peak RSS MiB"
    );
    let rt = testbed::runtime().expect("tokio runtime");
    for n in counts {
        let nginx = Nginx::start(NginxOptions {
            workers: n.div_ceil(PER_PROCESS).max(2),
            worker_connections: 19_000,
            extra_http: "keepalive_timeout 300s; keepalive_requests 100000;".into(),
            ..Default::default()
        })
        .expect("nginx");
        let sidecar = Sidecar::for_nginx(&bin, &nginx, &[]).expect("sidecar");
        let held = hold_connections(n, nginx.addr());
        // Let the census learn them all, then measure a quiet stretch.
        std::thread::sleep(Duration::from_secs(6));
        let cpu0 = cpu_time(sidecar.pid());
        std::thread::sleep(IDLE);
        let cpu = cpu_time(sidecar.pid()).saturating_sub(cpu0);
        let rss = rss_kib(sidecar.pid());
        // A balancer's warm pool among the idle connections: censuses run
        // (the segment counter moves); `/readyz` asked every 20 ms
        // meanwhile says whether the sidecar's one runtime thread waits
        // for them.
        let (pooled, readyz) = rt.block_on(async {
            let pool = load::Pool::open(nginx.addr(), None, 16)
                .await
                .expect("the pool connects");
            let cpu0 = cpu_time(sidecar.pid());
            let until = tokio::time::Instant::now() + POOLED;
            let probe = tokio::spawn(readyz_latencies(sidecar.addr, until));
            let stats = pool.run(200.0, until).await;
            assert_eq!(stats.failed(), 0, "{stats:?}");
            (
                cpu_time(sidecar.pid()).saturating_sub(cpu0),
                probe.await.unwrap(),
            )
        });
        let (drain_cpu, drain_s, failed, message) = rt.block_on(drain(&nginx, &sidecar));
        let peak = status_kib(sidecar.pid(), "VmHWM:");
        println!(
            "{:>12} {:>16.2} {:>10.1} {:>18.2} {:>18.2} {:>10.2} {:>8} {:>14.1}",
            n,
            cpu.as_secs_f64() / IDLE.as_secs_f64() * 100.0,
            rss as f64 / 1024.0,
            pooled.as_secs_f64() / POOLED.as_secs_f64() * 100.0,
            drain_cpu,
            drain_s,
            failed,
            peak as f64 / 1024.0
        );
        println!("{:>12} {message}", "");
        println!("{:>12} /readyz while censuses run: {readyz}", "");
        for mut c in held {
            drop(c.stdin.take());
            let _ = c.wait();
        }
    }
}
