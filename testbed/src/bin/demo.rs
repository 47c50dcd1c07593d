//! The demo (`scripts/demo`): the whole story in one command, on loopback.
//!
//! A real NGINX serves slow downloads and steady small requests; the pod is
//! "deleted"; a kubelet emulator calls the preStop hook of the sidecar
//! (`nginx-drain serve`'s own wiring, run in this process) exactly as the
//! kubelet would, then stops NGINX and would SIGKILL it at the end of the
//! grace period. Everything is printed as it happens, then the report and a
//! summary. The sidecar's state is read from its `/status`, as an operator
//! would.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use nginx_drain::cli::{Cli, Command, LogArgs};
use nginx_drain::{logging, serve};
use testbed::client::{self, Failure};
use testbed::{Kubelet, Nginx, NginxOptions};
use tokio::sync::watch;
use tokio::time::Instant;

const DOWNLOADS: usize = 4;
const DOWNLOAD_BYTES: usize = 2 << 20;
const DOWNLOAD_RATE: &str = "500k";
const REQUESTS_PER_SECOND: u64 = 20;
const GRACE: Duration = Duration::from_secs(30);
/// How long new requests keep arriving after the pod is deleted.
const LAG: Duration = Duration::from_secs(3);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(25);

/// Run a real NGINX on loopback, put traffic through it and drain it through
/// the hook exactly as the kubelet would, printing what happens.
#[derive(Debug, Parser)]
#[command(name = "demo")]
struct DemoArgs {
    /// The `nginx` binary to run (default: `nginx` on PATH, then /usr/sbin/nginx).
    #[arg(long, env = "NGINX_DRAIN_DEMO_NGINX", value_name = "PATH")]
    nginx: Option<std::path::PathBuf>,

    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    let args = DemoArgs::parse();
    logging::init(args.log.log_format, &args.log.log_level);
    let rt = match testbed::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nginx-drain demo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            println!("\nThe demo saw a failure (see above).");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("nginx-drain demo: {e}");
            ExitCode::from(2)
        }
    }
}

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
}

async fn run(args: DemoArgs) -> Result<bool, String> {
    let t0 = Instant::now();
    let at = move || format!("[{:5.2}s]", t0.elapsed().as_secs_f64());
    println!(
        "nginx-drain demo: a real NGINX on loopback, drained through the preStop hook as the kubelet does it\n"
    );

    let nginx = Nginx::start(NginxOptions {
        workers: 2,
        blob_bytes: DOWNLOAD_BYTES,
        binary: args.nginx.clone(),
        ..Default::default()
    })
    .map_err(|e| format!("cannot start nginx: {e}"))?;
    println!(
        "{} nginx master pid {} with {} workers on http://{}",
        at(),
        nginx.pid(),
        nginx.workers().len(),
        nginx.addr()
    );

    // The sidecar exactly as `nginx-drain serve` runs it, with the flags a
    // user would give, in this process.
    let pid_file = nginx.pid_file();
    let cli = Cli::try_parse_from([
        "nginx-drain".to_string(),
        "serve".into(),
        "--listen=127.0.0.1:0".into(),
        format!("--nginx-pid-file={}", pid_file.display()),
        format!("--port={}", nginx.addr().port()),
        format!(
            "--drain-timeout={}",
            humantime::format_duration(DRAIN_TIMEOUT)
        ),
    ])
    .map_err(|e| e.to_string())?;
    let Command::Serve(serve_args) = cli.command else {
        unreachable!("parsed from a serve command line")
    };
    let prepared = serve::prepare(&serve_args).map_err(|e| e.to_string())?;
    let hook_addr = prepared.listener.local_addr().map_err(|e| e.to_string())?;
    let (_stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve::run(prepared, async move {
        let _ = stop_rx.await;
    }));
    let ready_by = Instant::now() + Duration::from_secs(5);
    loop {
        match client::get(hook_addr, "/readyz", Duration::from_secs(1)).await {
            Ok(r) if r.status == 200 => break,
            Ok(r) if Instant::now() > ready_by => {
                return Err(format!(
                    "the sidecar did not find nginx: {}",
                    r.text().trim()
                ));
            }
            Err(e) if Instant::now() > ready_by => {
                return Err(format!("the sidecar does not answer: {e:?}"));
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    println!(
        "{} sidecar ready on http://{hook_addr} (preStop hook: GET /prestop, drain budget {})",
        at(),
        humantime::format_duration(DRAIN_TIMEOUT)
    );

    let counters = Arc::new(Counters::default());
    // Steady new connections: before the pod is deleted, and for LAG after,
    // as a load balancer that is slow to deregister the pod sends them.
    let (deleted_tx, deleted_rx) = watch::channel(false);
    let steady = {
        let c = counters.clone();
        let addr = nginx.addr();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / REQUESTS_PER_SECOND));
            for _ in 0..REQUESTS_PER_SECOND * 20 {
                tick.tick().await;
                if *deleted_rx.borrow() {
                    break;
                }
                let c = c.clone();
                tokio::spawn(async move {
                    match client::get(addr, "/", Duration::from_secs(5)).await {
                        Ok(r) if r.status == 200 => c.ok.fetch_add(1, Ordering::Relaxed),
                        _ => c.failed.fetch_add(1, Ordering::Relaxed),
                    };
                });
            }
        })
    };

    println!(
        "{} {REQUESTS_PER_SECOND} new requests/s (one connection each)",
        at()
    );
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let mut downloads = Vec::new();
    for _ in 0..DOWNLOADS {
        let d = client::start(
            nginx.addr(),
            "GET",
            &format!("/blob?rate={DOWNLOAD_RATE}"),
            "",
        )
        .await
        .map_err(|e| format!("download did not start: {e:?}"))?;
        let c = counters.clone();
        downloads.push(tokio::spawn(async move {
            d.finish_counting(Some(&c.bytes)).await
        }));
    }
    println!(
        "{} {DOWNLOADS} downloads of {} MiB at {DOWNLOAD_RATE}B/s in flight (about {} s each)",
        at(),
        DOWNLOAD_BYTES >> 20,
        DOWNLOAD_BYTES / 500_000
    );

    tokio::time::sleep(Duration::from_millis(200)).await;
    println!(
        "{} pod deleted: kubelet calls GET http://{hook_addr}/prestop; the load balancer keeps sending new requests for {} s",
        at(),
        LAG.as_secs()
    );
    let lb = tokio::spawn(async move {
        tokio::time::sleep(LAG).await;
        let _ = deleted_tx.send(true);
        let _ = steady.await;
    });
    tokio::spawn(async move {
        let _ = lb.await;
        println!(
            "{} load balancer: endpoint removed, new requests stop",
            at()
        );
    });

    let kubelet = Kubelet::new(hook_addr, GRACE);
    let kubelet_stop_signal = kubelet.stop_signal;
    let terminate = kubelet.terminate(&nginx);
    tokio::pin!(terminate);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let term = loop {
        tokio::select! {
            term = &mut terminate => break term,
            _ = tick.tick() => {
                let status: serde_json::Value = client::get(hook_addr, "/status", Duration::from_secs(1))
                    .await
                    .ok()
                    .and_then(|r| serde_json::from_slice(&r.body).ok())
                    .unwrap_or_default();
                let drain = &status["drain"];
                let phase = drain["phase"].as_str().unwrap_or("-").to_string();
                let open: u64 = drain["open_connections"]
                    .as_object()
                    .map_or(0, |o| o.values().filter_map(|v| v.as_u64()).sum());
                println!(
                    "{} drain phase {phase:<11} open conns {open:>3}  nginx workers {}  requests ok {} failed {}  downloaded {:.1} of {} MiB",
                    at(),
                    nginx.workers().len(),
                    counters.ok.load(Ordering::Relaxed),
                    counters.failed.load(Ordering::Relaxed),
                    counters.bytes.load(Ordering::Relaxed) as f64 / (1u64 << 20) as f64,
                    (DOWNLOADS * DOWNLOAD_BYTES) >> 20,
                );
            }
        }
    };

    let mut ok = true;
    match &term.hook {
        Ok(resp) => {
            // The timeline is long: show its size, not its points.
            let mut report: serde_json::Value =
                serde_json::from_slice(&resp.body).unwrap_or_default();
            if let Some(samples) = report
                .pointer_mut("/traffic/samples")
                .and_then(|s| s.as_array_mut())
            {
                let n = samples.len();
                samples.clear();
                report["traffic"]["samples"] = format!("({n} points, see /status)").into();
            }
            println!(
                "{} hook answered HTTP {} after {:.2}s with the report:\n{}",
                at(),
                resp.status,
                term.hook_took.as_secs_f64(),
                serde_json::to_string_pretty(&report).unwrap_or_else(|_| resp.text())
            );
        }
        Err(e) => {
            println!("{} hook failed: {e:?}", at());
            ok = false;
        }
    }
    println!(
        "{} kubelet: stop the nginx container ({:?}, the official image's STOPSIGNAL, with {} s of grace left) {}; SIGKILL {}",
        at(),
        kubelet_stop_signal,
        term.stop_grace.as_secs(),
        if term.stop_found_nginx_running {
            "(it was still running)"
        } else {
            "found nothing left to stop"
        },
        if term.sigkill_needed {
            "WAS NEEDED"
        } else {
            "not needed"
        }
    );

    let mut complete = 0;
    let mut cut = Vec::new();
    for d in downloads {
        match d.await {
            Ok(Ok(f)) if f.body.len() == DOWNLOAD_BYTES => complete += 1,
            Ok(Ok(f)) => cut.push(format!("short: {} bytes", f.body.len())),
            Ok(Err(Failure::ShortRead { received, .. })) => {
                cut.push(format!("cut at {received} bytes"))
            }
            Ok(Err(e)) => cut.push(format!("{e:?}")),
            Err(e) => cut.push(e.to_string()),
        }
    }
    let failed = counters.failed.load(Ordering::Relaxed);
    println!("\nSummary");
    println!("  downloads complete with every byte: {complete} of {DOWNLOADS} {cut:?}");
    println!(
        "  small requests: {} ok, {failed} failed",
        counters.ok.load(Ordering::Relaxed)
    );
    println!(
        "  nginx gone {:.2}s after the pod was deleted (new requests stopped after {} s); SIGQUITs in nginx's log: {}; SIGKILL needed: {}",
        term.nginx_gone_after.map_or(f64::NAN, |d| d.as_secs_f64()),
        LAG.as_secs(),
        nginx.sigquit_count(),
        term.sigkill_needed
    );
    ok &=
        complete == DOWNLOADS && failed == 0 && !term.sigkill_needed && nginx.sigquit_count() == 1;
    Ok(ok)
}
