//! Benchmark: how long one connection census takes with 1k and 10k
//! established loopback connections, by netlink and by /proc, beside
//! `ss -tan` on the same sockets. Goal: < 5 ms at 10k by netlink.
//!
//! Runs inside a network namespace of its own (as root), so that the
//! sockets counted are exactly the ones it opens.
//! Run: `cargo bench --bench census [-- N...]` (default 1000 10000).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nginx_drain::sockets::{Census, PortFilter, Source};
use nginx_drain::vocab::CensusMethod;
use testbed::{Nginx, NginxOptions, netns};

fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

fn main() {
    let args = netns::enter(false);
    let counts: Vec<usize> = {
        let v: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
        if v.is_empty() { vec![1_000, 10_000] } else { v }
    };
    // Room for 10k client sockets in this process.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).unwrap();

    let nginx = Nginx::start(NginxOptions {
        workers: 2,
        worker_connections: 12_000,
        extra_http: "client_header_timeout 300s;".into(),
        ..Default::default()
    })
    .expect("nginx");
    let mut held = Vec::new();
    println!(
        "one census: listeners, then the sockets on the counted ports (loopback: each connection"
    );
    println!(
        "also has a client-side socket, on an ephemeral port, which netlink filters in the kernel)"
    );
    println!(
        "{:>12} {:>14} {:>14} {:>14}",
        "connections", "netlink ms", "/proc ms", "ss -tan ms"
    );
    for target in counts {
        while held.len() < target {
            match std::net::TcpStream::connect(nginx.addr()) {
                Ok(s) => held.push(s),
                Err(e) => panic!("connection {}: {e} (file limit {hard})", held.len()),
            }
        }
        // Wait until every connection is established on the server side.
        let mut src = Source::new(CensusMethod::Netlink);
        let port = nginx.addr().port();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let socks = src.dump().unwrap();
            let mut seen = Default::default();
            let c = Census::take(&socks, &PortFilter::default(), &mut seen);
            if c.open.get(&port).copied().unwrap_or(0) as usize >= target {
                break;
            }
            assert!(Instant::now() < deadline, "connections not established");
            std::thread::sleep(Duration::from_millis(50));
        }
        let time = |method: CensusMethod| {
            let mut src = Source::new(method);
            (0..30)
                .map(|_| {
                    let t = Instant::now();
                    let mut seen = Default::default();
                    std::hint::black_box(src.census(&PortFilter::default(), &mut seen).unwrap());
                    t.elapsed()
                })
                .collect::<Vec<_>>()
        };
        let netlink = time(CensusMethod::Netlink);
        let proc = time(CensusMethod::Proc);
        let ss: Vec<Duration> = (0..10)
            .map(|_| {
                let t = Instant::now();
                Command::new("ss")
                    .arg("-tan")
                    .stdout(Stdio::null())
                    .status()
                    .expect("ss");
                t.elapsed()
            })
            .collect();
        println!(
            "{:>12} {:>14.2} {:>14.2} {:>14.2}",
            target,
            median_ms(netlink),
            median_ms(proc),
            median_ms(ss)
        );
    }
}
