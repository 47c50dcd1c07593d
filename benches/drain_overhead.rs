//! Benchmark: the traffic-aware drain with default flags, at 100 new
//! connections/s with arrivals continuing 0, 3 and 8 s after the hook, and at
//! one connection every 2 s. Each cell runs several times against a fresh
//! NGINX and sidecar in a network namespace of its own.
//!
//! Overhead = NGINX gone minus the later of (lag end, last download done):
//! the time spent beyond the least any strategy could take without dropping
//! traffic. Also printed: failed requests, the wait before SIGQUIT, the
//! quiet period, and the sidecar's CPU during the hook.
//!
//! Run: `cargo bench --bench drain_overhead` (add `-- RUNS`, default 3).

use std::path::Path;
use std::time::Duration;

use testbed::netns;
use testbed::scenario::{self, Scenario};

fn main() {
    let args = netns::enter(false);
    let runs: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(3);
    let bin = Path::new(env!("CARGO_BIN_EXE_nginx-drain"));
    let rt = testbed::runtime().expect("tokio runtime");
    println!("traffic-aware drain, default flags, {runs} runs per cell (median [min..max])");
    println!(
        "{:<22} {:>8} {:>22} {:>22} {:>10} {:>12}",
        "cell", "failed", "overhead s", "wait before QUIT s", "quiet ms", "CPU % core"
    );
    let cells: [(&str, f64, u64, u64); 4] = [
        ("100/s, lag 0 s", 100.0, 0, 2),
        ("100/s, lag 3 s", 100.0, 3, 2),
        ("100/s, lag 8 s", 100.0, 8, 2),
        ("1 per 2 s, lag 3 s", 0.5, 3, 8),
    ];
    for (name, rate, lag, warmup) in cells {
        let mut failed = 0;
        let mut overhead = Vec::new();
        let mut wait = Vec::new();
        let mut quiet = Vec::new();
        let mut cpu = Vec::new();
        for _ in 0..runs {
            let r = rt.block_on(scenario::run(
                bin,
                Scenario {
                    rate,
                    lag: Duration::from_secs(lag),
                    warmup: Duration::from_secs(warmup),
                    keepalive: if rate >= 1.0 { 4 } else { 0 },
                    // As in production (the test harness defaults to debug).
                    args: vec!["--log-level".into(), "info".into()],
                    ..Default::default()
                },
            ));
            failed += r.load.failed() + r.keepalive.failed() + (2 - r.downloads_complete as u64);
            overhead.push(r.overhead.as_secs_f64());
            let t = &r.report["traffic"];
            wait.push(t["wait_before_sigquit_ms"].as_f64().unwrap_or(f64::NAN) / 1e3);
            quiet.push(t["quiet_period_ms"].as_f64().unwrap_or(f64::NAN));
            cpu.push(r.sidecar_cpu_share * 100.0);
        }
        println!(
            "{:<22} {:>8} {:>22} {:>22} {:>10.0} {:>12.2}",
            name,
            failed,
            spread(&mut overhead, 3),
            spread(&mut wait, 2),
            median(&mut quiet),
            median(&mut cpu)
        );
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn spread(v: &mut [f64], digits: usize) -> String {
    let m = median(v);
    format!(
        "{m:.digits$} [{:.digits$}..{:.digits$}]",
        v[0],
        v[v.len() - 1]
    )
}
