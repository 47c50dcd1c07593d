//! Benchmark: how soon after NGINX's master exits does the hook answer?
//!
//! The anchors (a `pgrep` loop, ingress-nginx's /wait-shutdown) check once a
//! second, so they answer 0 to 1000 ms late (plus the zombie's reaping).
//! nginx-drain waits on a pidfd. Here a separate thread of the benchmark
//! watches the same master through its own pidfd and timestamps the exit;
//! the delay is the hook's answer minus that timestamp, on one monotonic
//! clock. Also printed: the not_running answer time, the idle RSS and CPU of
//! `serve`, and the binary's size.
//!
//! Run: `cargo bench --bench hook_latency` (add `-- RUNS` for more runs).
//! Runs in a network namespace of its own (root).

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use rustix::process::{Pid, PidfdFlags, pidfd_open};
use testbed::client;
use testbed::{Nginx, NginxOptions, Sidecar, netns};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn summary(name: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    println!(
        "{name:<44} n={:<3} median {:>7.2} ms  p90 {:>7.2} ms  min {:>7.2} ms  max {:>7.2} ms",
        v.len(),
        percentile(&v, 0.5),
        percentile(&v, 0.9),
        v[0],
        v[v.len() - 1]
    );
}

fn main() {
    // A network namespace of its own: the sidecar counts connections to
    // every listening port, and the host's own services are not NGINX's.
    let args = netns::enter(false);
    let runs: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(50);
    let bin = Path::new(env!("CARGO_BIN_EXE_nginx-drain"));
    let rt = testbed::runtime().expect("tokio runtime");

    let mut nginx = Nginx::start(NginxOptions::default()).expect("start nginx");
    let pid_file = nginx.pid_file();
    // The fixture checks that each restarted NGINX accepts connections: a
    // real arrival from 127.0.0.1 (client closing first, counted by the
    // destroy events) that would make every idle drain wait for traffic.
    // No client traffic runs here, so that address is ignored.
    let sidecar = Sidecar::spawn(
        bin,
        &[
            "--nginx-pid-file",
            pid_file.to_str().unwrap(),
            "--ignore-peer",
            "127.0.0.1/32",
        ],
    )
    .expect("start sidecar");

    // Idle footprint, with NGINX running and nothing happening.
    std::thread::sleep(Duration::from_secs(2));
    let (rss_kib, cpu) = footprint(sidecar.pid());
    let size = std::fs::metadata(bin).map(|m| m.len()).unwrap_or(0);

    let mut exit_to_answer = Vec::new();
    let mut hook_total = Vec::new();
    for run in 0..runs {
        if run > 0 {
            nginx = nginx.restart().expect("restart nginx");
        }
        rt.block_on(wait_ready(sidecar.addr));
        let pidfd = pidfd_open(Pid::from_raw(nginx.pid()).unwrap(), PidfdFlags::empty())
            .expect("pidfd_open");
        let watcher = std::thread::spawn(move || {
            let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::NONE).expect("poll pidfd");
            Instant::now()
        });
        let t0 = Instant::now();
        let resp = rt
            .block_on(client::get(
                sidecar.addr,
                "/prestop",
                Duration::from_secs(30),
            ))
            .expect("hook");
        let answered = Instant::now();
        assert_eq!(resp.status, 200, "{}", resp.text());
        let exited = watcher.join().unwrap();
        exit_to_answer.push(answered.saturating_duration_since(exited).as_secs_f64() * 1e3);
        hook_total.push((answered - t0).as_secs_f64() * 1e3);
        nginx.wait_exit(Duration::from_secs(10)).expect("reaped");
    }

    // No NGINX at all (discovery finds no master here, or several: either
    // way nothing to drain): the answer must come at once. Discovery scans
    // all of /proc, the slower of the two locators.
    let lonely = Sidecar::spawn(bin, &[]).expect("start sidecar");
    let mut not_running = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        let r = rt
            .block_on(client::get(lonely.addr, "/prestop", Duration::from_secs(5)))
            .expect("hook");
        not_running.push(t0.elapsed().as_secs_f64() * 1e3);
        assert!(r.text().contains("\"drain_id\""), "{}", r.text());
    }

    println!("nginx-drain hook latency ({runs} drains of a real nginx, idle, 2 workers)");
    summary(
        "master exit -> hook answer (goal median <= 5 ms)",
        exit_to_answer,
    );
    summary("hook sent -> answer (whole idle drain)", hook_total);
    summary("hook answer with no master (discovery scan)", not_running);
    println!(
        "serve idle RSS: {:.1} MiB; idle CPU over 2 s: {cpu:.2} % of one core",
        rss_kib as f64 / 1024.0
    );
    println!("binary size (this profile): {:.2} MB", size as f64 / 1e6);
}

async fn wait_ready(addr: std::net::SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(r) = client::get(addr, "/readyz", Duration::from_secs(5)).await
            && r.status == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("sidecar never ready");
}

/// RSS (KiB) and CPU (% of one core over 2 s) of the process, via sysinfo.
fn footprint(pid: i32) -> (u64, f32) {
    use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
    let pid = Pid::from_u32(pid as u32);
    let kind = ProcessRefreshKind::nothing().with_memory().with_cpu();
    let mut sys = System::new().expect("sysinfo");
    sys.refresh_processes_specifics(ProcessesToUpdate::Some(&[pid]), true, kind);
    std::thread::sleep(Duration::from_secs(2));
    sys.refresh_processes_specifics(ProcessesToUpdate::Some(&[pid]), true, kind);
    let p = sys.process(pid).expect("sidecar process");
    (p.memory() / 1024, p.cpu_usage())
}
