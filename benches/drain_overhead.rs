//! Benchmark: the traffic-aware drain with default flags, at 100 and 300
//! new connections/s with arrivals continuing 0, 3, 8 and 12 s after the
//! hook; clients that close first; one connection every 2 s (a long
//! history); and a short history (the sidecar started 1 s before the hook,
//! a burst of 8 keep-alive clients and 4 downloads, then one connection
//! every 2 s until 3 s after the hook, at least 5 runs). Each run has a
//! fresh NGINX and sidecar in a network namespace of its own.
//!
//! Overhead = NGINX gone minus the later of (lag end, last download done):
//! the time spent beyond the least any strategy could take without dropping
//! traffic. Also printed: failed requests, the wait before SIGQUIT, the
//! quiet period, and the sidecar's CPU during the hook.
//!
//! Run: `cargo bench --bench drain_overhead` (add `-- RUNS`, default 3;
//! `-- --only 300` runs the cells whose name contains "300"; any
//! `--sidecar=FLAG` is passed to the sidecar, e.g. `--sidecar=--min-delay=250ms`).

use std::path::Path;
use std::time::Duration;

use testbed::load::Style;
use testbed::netns;
use testbed::scenario::{self, Scenario};

struct Cell {
    name: &'static str,
    rate: f64,
    lag: u64,
    warmup: u64,
    style: Style,
    /// The short-history case: keep-alive burst until the hook, 4 downloads.
    short_history: bool,
    /// Keep-alive clients (a request every 100 ms each) until the lag ends;
    /// `None`: 4 with new connections, none at the low rates.
    keepalive: Option<usize>,
}

fn cells() -> Vec<Cell> {
    let mut cells = Vec::new();
    for (rate, names) in [
        (
            100.0,
            [
                "100/s, lag 0 s",
                "100/s, lag 3 s",
                "100/s, lag 8 s",
                "100/s, lag 12 s",
            ],
        ),
        (
            300.0,
            [
                "300/s, lag 0 s",
                "300/s, lag 3 s",
                "300/s, lag 8 s",
                "300/s, lag 12 s",
            ],
        ),
    ] {
        for (lag, name) in [0, 3, 8, 12].into_iter().zip(names) {
            cells.push(Cell {
                name,
                rate,
                lag,
                warmup: 2,
                style: Style::ServerCloses,
                short_history: false,
                keepalive: None,
            });
        }
    }
    cells.push(Cell {
        name: "300/s + 32 keep-alive, lag 3",
        rate: 300.0,
        lag: 3,
        warmup: 2,
        style: Style::ServerCloses,
        short_history: false,
        keepalive: Some(32),
    });
    for (name, style) in [
        ("100/s HTTP/1.0, lag 3 s", Style::Http10),
        ("100/s close-first, lag 3", Style::KeepAliveOnce),
    ] {
        cells.push(Cell {
            name,
            rate: 100.0,
            lag: 3,
            warmup: 2,
            style,
            short_history: false,
            keepalive: None,
        });
    }
    cells.push(Cell {
        name: "1 per 2 s, lag 3 s",
        rate: 0.5,
        lag: 3,
        warmup: 8,
        style: Style::ServerCloses,
        short_history: false,
        keepalive: None,
    });
    cells.push(Cell {
        name: "short history (1/2 s)",
        rate: 0.5,
        lag: 3,
        warmup: 1,
        style: Style::ServerCloses,
        short_history: true,
        keepalive: None,
    });
    cells
}

fn main() {
    let args = netns::enter(false);
    let only_at = args.iter().position(|a| a == "--only");
    let only = only_at.and_then(|i| args.get(i + 1).cloned());
    // The run count is a bare number, not the cell name after --only ("300").
    let runs: usize = args
        .iter()
        .enumerate()
        .filter(|(i, _)| only_at.is_none_or(|o| *i != o + 1))
        .find_map(|(_, a)| a.parse().ok())
        .unwrap_or(3);
    let sidecar_flags: Vec<String> = args
        .iter()
        .filter_map(|a| a.strip_prefix("--sidecar=").map(String::from))
        .collect();
    let bin = Path::new(env!("CARGO_BIN_EXE_nginx-drain"));
    let rt = testbed::runtime().expect("tokio runtime");
    println!(
        "traffic-aware drain, default flags{}, {runs} runs per cell, 5 for the short history (median [min..max])",
        if sidecar_flags.is_empty() {
            String::new()
        } else {
            format!(" + {}", sidecar_flags.join(" "))
        }
    );
    println!(
        "{:<26} {:>7} {:>22} {:>22} {:>9} {:>11}",
        "cell", "failed", "overhead s", "wait before QUIT s", "quiet ms", "CPU % core"
    );
    for cell in cells() {
        if only.as_deref().is_some_and(|o| !cell.name.contains(o)) {
            continue;
        }
        let runs = if cell.short_history {
            runs.max(5)
        } else {
            runs
        };
        let downloads = if cell.short_history { 4 } else { 2 };
        let mut failed = 0;
        let mut overhead = Vec::new();
        let mut wait = Vec::new();
        let mut quiet = Vec::new();
        let mut cpu = Vec::new();
        for _ in 0..runs {
            let mut args = vec!["--log-level".to_string(), "info".to_string()];
            args.extend(sidecar_flags.iter().cloned());
            let r = rt.block_on(scenario::run(
                bin,
                Scenario {
                    rate: cell.rate,
                    lag: Duration::from_secs(cell.lag),
                    warmup: Duration::from_secs(cell.warmup),
                    keepalive: if let Some(k) = cell.keepalive {
                        k
                    } else if cell.short_history {
                        8
                    } else if cell.rate >= 1.0 {
                        4
                    } else {
                        0
                    },
                    keepalive_until_hook: cell.short_history,
                    downloads,
                    style: cell.style,
                    // As in production (the test harness defaults to debug).
                    args,
                    ..Default::default()
                },
            ));
            failed +=
                r.load.failed() + r.keepalive.failed() + (downloads - r.downloads_complete) as u64;
            overhead.push(r.overhead.as_secs_f64());
            let t = &r.report["traffic"];
            wait.push(t["wait_before_sigquit_ms"].as_f64().unwrap_or(f64::NAN) / 1e3);
            quiet.push(t["quiet_period_ms"].as_f64().unwrap_or(f64::NAN));
            cpu.push(r.sidecar_cpu_share * 100.0);
        }
        println!(
            "{:<26} {:>7} {:>22} {:>22} {:>9.0} {:>11.2}",
            cell.name,
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
