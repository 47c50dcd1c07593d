//! Benchmark: what the sidecar costs while it waits for a hook, as the
//! number of open connections grows (busy ingress pods hold 10k-100k
//! keep-alive connections for days).
//!
//! In a network namespace of its own: a real NGINX, N idle keep-alive
//! client connections on loopback (both ends in the namespace, so the pod
//! has about 2N sockets), the sidecar idle for 10 s: its CPU (share of one
//! core, from /proc/PID/stat) and RSS. Before this change every idle census
//! walked every socket on NGINX's ports every 200 ms; now the namespace's
//! accept counter (`/proc/net/snmp`) says when a census can find nothing new,
//! and an idle census runs at least every 5 s.
//!
//! Run: `cargo bench --bench idle_cost [-- N...]` (default 0 1000 10000;
//! one process holds at most ~20 000 files here, and each connection costs
//! one). `NGINX_DRAIN_BIN` measures another build of the binary.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use testbed::scenario::cpu_time;
use testbed::{Nginx, NginxOptions, Sidecar, netns};

const IDLE: Duration = Duration::from_secs(10);

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_ascii_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn main() {
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
        "{:>12} {:>16} {:>10}",
        "connections", "CPU % of a core", "RSS MiB"
    );
    for n in counts {
        let nginx = Nginx::start(NginxOptions {
            workers: 2,
            worker_connections: (n + 1_000).max(4_096),
            extra_http: "keepalive_timeout 300s; keepalive_requests 100000;".into(),
            ..Default::default()
        })
        .expect("nginx");
        let sidecar = Sidecar::for_nginx(&bin, &nginx, &[]).expect("sidecar");
        let mut held = Vec::with_capacity(n);
        for i in 0..n {
            let mut s = std::net::TcpStream::connect(nginx.addr())
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).unwrap();
            held.push(s);
        }
        // Let the census learn them all, then measure a quiet stretch.
        std::thread::sleep(Duration::from_secs(6));
        let cpu0 = cpu_time(sidecar.pid());
        std::thread::sleep(IDLE);
        let cpu = cpu_time(sidecar.pid()).saturating_sub(cpu0);
        println!(
            "{:>12} {:>16.2} {:>10.1}",
            n,
            cpu.as_secs_f64() / IDLE.as_secs_f64() * 100.0,
            rss_kib(sidecar.pid()) as f64 / 1024.0
        );
        drop(held);
    }
}
