//! The termination benchmark's harness: the kubelet's sequence against a
//! real NGINX under traffic, with each common preStop strategy, measured the
//! same way. Used by `benches/strategies.rs` (the full matrix) and by a
//! short test that keeps it from rotting.
//!
//! Runs in a PID and network namespace of its own (`pgrep -x nginx` must
//! see only this NGINX, and the census only its connections). The master is
//! reaped within a few milliseconds of its exit, as by a prompt PID 1.

use std::fmt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::client::{self, Failure};
use super::load::{self, LoadStats};
use super::{Nginx, NginxOptions, Sidecar};
use nginx_drain::sockets::{PortFilter, Source};
use nginx_drain::vocab::CensusMethod;

/// A preStop strategy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Strategy {
    /// No hook: SIGTERM at once.
    NoPreStop,
    /// `sleep N; nginx -s quit; while pgrep -x nginx; do sleep 1; done`.
    QuitPgrep { sleep_s: u64 },
    /// ingress-nginx's way: SIGQUIT, then check every second for any nginx.
    IngressNginx,
    /// SIGQUIT once no new connection for `quiet`, exit checked every 10 ms.
    FixedQuiet { quiet: Duration },
    /// nginx-drain with default flags.
    NginxDrain,
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strategy::NoPreStop => f.write_str("no preStop (SIGTERM)"),
            Strategy::QuitPgrep { sleep_s: 0 } => f.write_str("nginx -s quit + pgrep loop"),
            Strategy::QuitPgrep { sleep_s } => write!(f, "sleep {sleep_s} + quit + pgrep loop"),
            Strategy::IngressNginx => f.write_str("ingress-nginx style"),
            Strategy::FixedQuiet { quiet } => write!(f, "fixed quiet {} s", quiet.as_secs_f64()),
            Strategy::NginxDrain => f.write_str("nginx-drain (defaults)"),
        }
    }
}

/// The traffic and the grace period of one run.
#[derive(Debug, Clone, Copy)]
pub struct Traffic {
    /// New connections per second.
    pub rate: f64,
    /// Traffic before the pod is deleted.
    pub warmup: Duration,
    /// New connections keep arriving this long after the deletion.
    pub lag: Duration,
    /// Slow downloads in flight at the deletion (1 MiB at 500 KB/s).
    pub downloads: usize,
    /// Keep-alive clients, a request every 100 ms each, until the lag ends.
    pub keepalive: usize,
    /// A balancer's warm keep-alive pool: this many connections, opened
    /// (and used once) before anything else starts, carrying `pool_rate`
    /// requests a second until the lag ends (the balancer's stop); its
    /// failed requests count with the rest. With a pool, the downloads come
    /// on idle connections of it (one more each), not on new ones.
    pub pool_conns: usize,
    pub pool_rate: f64,
    pub grace: Duration,
    /// How the rate's clients end their connections.
    pub style: load::Style,
}

/// Time series, 100 ms per bucket, from the start of the run.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    pub ok: Vec<u32>,
    pub failed: Vec<u32>,
    pub open: Vec<u32>,
}

/// Moments, in seconds from the start of the run.
#[derive(Debug, Clone, Default)]
pub struct Marks {
    pub deletion: f64,
    pub lag_end: f64,
    pub sigquit: Option<f64>,
    pub last_download: Option<f64>,
    pub gone: Option<f64>,
    pub sigkill: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub strategy: Strategy,
    pub load: LoadStats,
    pub downloads_cut: usize,
    pub bytes_lost: u64,
    pub sigkill: bool,
    /// From the deletion to NGINX's exit.
    pub gone_after: Option<Duration>,
    /// From the deletion to the hook's return (when the kubelet moves on).
    pub hook_after: Duration,
    /// NGINX gone minus the oracle (the later of the lag's end and the last
    /// download's natural completion), in seconds; negative when NGINX went
    /// before the oracle, which means traffic was dropped.
    pub overhead: Option<f64>,
    pub timeline: Timeline,
    pub marks: Marks,
    /// nginx-drain's report: its message and the quiet rule's reasons (what
    /// ended the wait), for reading a cell's outliers.
    pub report: Option<String>,
}

const BUCKET: Duration = Duration::from_millis(100);
const DOWNLOAD: usize = 1 << 20;
/// nginx's `limit_rate 500k` is 500 KiB/s.
const DOWNLOAD_RATE: f64 = 512_000.0;

fn pgrep_nginx() -> bool {
    Command::new("pgrep")
        .args(["-x", "nginx"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs one termination with `strategy`. `bin` is the nginx-drain binary.
pub async fn run(bin: &Path, strategy: Strategy, t: Traffic) -> Outcome {
    let mut nginx = Nginx::start(NginxOptions {
        blob_bytes: DOWNLOAD,
        ..Default::default()
    })
    .expect("nginx");
    let addr = nginx.addr();
    // Reap the master as soon as it exits (a prompt PID 1).
    nginx.reap_in_background();
    // Behind a balancer's pool, the downloads come on idle connections of
    // its pool too (opened and used with the rest, then idle until the
    // download): all of a pooled cell's traffic reaches NGINX through the
    // balancer, as it does behind an L7 balancer or an ingress controller.
    let (pool, mut pooled_idle) = if t.pool_conns > 0 {
        let mut p = load::Pool::open(addr, None, t.pool_conns + t.downloads)
            .await
            .expect("the pool connects");
        let idle = p.split_off(t.downloads);
        (Some(p), idle)
    } else {
        (None, Vec::new())
    };
    let sidecar = match strategy {
        Strategy::NginxDrain => {
            let pid_file = nginx.pid_file();
            let s = Sidecar::spawn(
                bin,
                &[
                    "--nginx-pid-file",
                    pid_file.to_str().unwrap_or_default(),
                    "--log-level",
                    "info",
                ],
            )
            .expect("sidecar");
            super::scenario::wait_ready(s.addr).await;
            Some(s)
        }
        _ => None,
    };

    let t0 = Instant::now();
    let deletion = t0 + t.warmup;
    let lag_end = deletion + t.lag;
    let secs = |i: Instant| i.saturating_duration_since(t0).as_secs_f64();
    let max = (t.rate * (t.warmup + t.lag).as_secs_f64()).ceil() as u64 + 1;
    let load = tokio::spawn(load::open_loop_with(
        addr, t.rate, None, lag_end, max, t.style,
    ));
    let keepalive: Vec<_> = (0..t.keepalive)
        .map(|_| tokio::spawn(load::keepalive(addr, Duration::from_millis(100), lag_end)))
        .chain(pool.map(|p| tokio::spawn(p.run(t.pool_rate, lag_end))))
        .collect();

    // The census, every 100 ms, for the open-connections line.
    let stop = Arc::new(AtomicBool::new(false));
    let census = {
        let stop = stop.clone();
        let port = addr.port();
        tokio::spawn(async move {
            let mut src = Source::new(CensusMethod::Auto);
            let filter = PortFilter {
                only: [port].into(),
                ..Default::default()
            };
            let mut seen = Default::default();
            let mut open = Vec::new();
            let mut tick = tokio::time::interval(BUCKET);
            while !stop.load(Ordering::SeqCst) && open.len() < 6000 {
                tick.tick().await;
                let n = src.census(&filter, &mut seen).map_or(0, |c| c.open_total());
                open.push(n);
            }
            open
        })
    };

    tokio::time::sleep_until(deletion - Duration::from_millis(300)).await;
    let mut downloads = Vec::new();
    for _ in 0..t.downloads {
        let d = match pooled_idle.pop() {
            Some(conn) => client::start_on(conn, addr, "GET", "/blob?rate=500k", "").await,
            None => client::start(addr, "GET", "/blob?rate=500k", "").await,
        };
        if let Ok(d) = d {
            let started = Instant::now();
            downloads.push(tokio::spawn(async move {
                (started, d.finish().await, Instant::now())
            }));
        }
    }
    tokio::time::sleep_until(deletion).await;

    let gone = || !nginx.is_running();
    let mut sigquit = None;
    let mut report = None;
    // The preStop hook.
    match strategy {
        Strategy::NoPreStop => {}
        Strategy::QuitPgrep { sleep_s } => {
            tokio::time::sleep(Duration::from_secs(sleep_s)).await;
            sigquit = Some(Instant::now());
            let _ = nginx.work.command().args(["-s", "quit"]).output();
            while pgrep_nginx() && Instant::now() < deletion + t.grace {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Strategy::IngressNginx => {
            sigquit = Some(Instant::now());
            let _ = nginx.signal(Signal::SIGQUIT);
            while pgrep_nginx() && Instant::now() < deletion + t.grace {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Strategy::FixedQuiet { quiet } => {
            let mut src = Source::new(CensusMethod::Auto);
            let filter = PortFilter {
                only: [addr.port()].into(),
                ..Default::default()
            };
            let mut seen = Default::default();
            let mut prev = src.census(&filter, &mut seen).ok();
            let mut last = deletion;
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let now = Instant::now();
                if let Ok(c) = src.census(&filter, &mut seen) {
                    if prev.as_ref().is_some_and(|p| c.arrivals_since(p) > 0) {
                        last = now;
                    }
                    prev = Some(c);
                }
                if now - last >= quiet || now >= deletion + t.grace {
                    break;
                }
            }
            sigquit = Some(Instant::now());
            let _ = nginx.signal(Signal::SIGQUIT);
            while !gone() && Instant::now() < deletion + t.grace {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Strategy::NginxDrain => {
            let s = sidecar.as_ref().expect("sidecar");
            if let Ok(r) = client::get(s.addr, "/prestop", t.grace).await
                && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&r.body)
            {
                if let Some(ms) = v["durations"]["hook_to_sigquit_ms"].as_u64() {
                    sigquit = Some(deletion + Duration::from_millis(ms));
                }
                let t = &v["traffic"];
                report = Some(format!(
                    "{} | {} after {} ms: {} | new {} during the wait, requests {} during the wait, last request {}",
                    v["message"].as_str().unwrap_or_default(),
                    t["sigquit_reason"],
                    t["wait_before_sigquit_ms"],
                    t["quiet_period_reason"].as_str().unwrap_or_default(),
                    t["arrivals_during_wait"],
                    t["requests_during_wait"],
                    t["last_request_at"],
                ));
            }
        }
    }
    let hook_returned = Instant::now();
    // Then the kubelet: SIGTERM, and SIGKILL when the grace period ends.
    if !gone() {
        let _ = nginx.signal(Signal::SIGTERM);
    }
    let kill_at = (deletion + t.grace).max(Instant::now() + Duration::from_secs(2));
    let mut gone_at = None;
    while Instant::now() < kill_at {
        if gone() {
            // The exit itself, as the reaper saw it (not when we looked).
            gone_at = Some(
                nginx
                    .exited_at()
                    .map_or_else(Instant::now, Instant::from_std),
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut sigkill = None;
    if gone_at.is_none() {
        sigkill = Some(Instant::now());
        let _ = nginx.signal(Signal::SIGKILL);
        for w in nginx.workers() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(w.pid), Signal::SIGKILL);
        }
    }

    let mut load = load.await.unwrap_or_default();
    for k in keepalive {
        // Keep-alive and pooled requests count with the rest (the timeline
        // shows the new connections only).
        let k = k.await.unwrap_or_default();
        let events = std::mem::take(&mut load.events);
        load.merge(&k);
        load.events = events;
    }
    let mut cut = 0;
    let mut lost = 0;
    let mut natural_end = deletion;
    let mut last_download = None;
    for d in downloads {
        let Ok((started, r, done)) = d.await else {
            continue;
        };
        match r {
            Ok(f) if f.body.len() == DOWNLOAD => {
                natural_end = natural_end.max(done);
                last_download = Some(secs(done));
            }
            // Cut: it would have ended at its nominal rate.
            r => {
                cut += 1;
                lost += match r {
                    Ok(f) => (DOWNLOAD - f.body.len()) as u64,
                    Err(Failure::ShortRead { received, .. }) => DOWNLOAD as u64 - received,
                    Err(_) => DOWNLOAD as u64,
                };
                natural_end = natural_end
                    .max(started + Duration::from_secs_f64(DOWNLOAD as f64 / DOWNLOAD_RATE));
            }
        }
    }
    tokio::time::sleep(BUCKET * 3).await;
    stop.store(true, Ordering::SeqCst);
    let open = census.await.unwrap_or_default();
    drop(sidecar);

    let buckets = open.len().max(((secs(Instant::now())) / 0.1) as usize + 1);
    let mut tl = Timeline {
        ok: vec![0; buckets],
        failed: vec![0; buckets],
        open,
    };
    tl.open.resize(buckets, 0);
    for (at, ok) in &load.events {
        let i = ((secs(*at) / 0.1) as usize).min(buckets - 1);
        if *ok {
            tl.ok[i] += 1;
        } else {
            tl.failed[i] += 1;
        }
    }
    let oracle = lag_end.max(natural_end);
    Outcome {
        strategy,
        downloads_cut: cut,
        bytes_lost: lost,
        sigkill: sigkill.is_some(),
        gone_after: gone_at.map(|g| g - deletion),
        hook_after: hook_returned - deletion,
        overhead: gone_at.map(|g| {
            if g >= oracle {
                (g - oracle).as_secs_f64()
            } else {
                -(oracle - g).as_secs_f64()
            }
        }),
        marks: Marks {
            deletion: secs(deletion),
            lag_end: secs(lag_end),
            sigquit: sigquit.map(secs),
            last_download,
            gone: gone_at.map(secs),
            sigkill: sigkill.map(secs),
        },
        load,
        timeline: tl,
        report,
    }
}
