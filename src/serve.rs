//! `nginx-drain serve`: wires the listener, the drain owner, the HTTP server
//! and the process's own signals together, and decides the exit code.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::{Access, TokenError, TokenFile};
use crate::cli::ServeArgs;
use crate::metrics::Metrics;
use crate::nginx::{Locator, PidFileError};
use crate::report::Report;
use crate::sockets::PortFilter;
use crate::sockets::view::MonitorConfig;
use crate::vocab::Outcome;
use crate::{drain, http, kube};

/// Exit codes, as in linkerd-await: each means one thing. [`Error::exit_code`]
/// is the one place that maps an error to one.
pub mod exit {
    /// Exited after NGINX was gone (or none was running).
    pub const OK: u8 = 0;
    /// An internal failure while serving (see the log).
    pub const FAILURE: u8 = 1;
    /// Bad configuration: a flag, the pid file, the listen address.
    pub const CONFIG: u8 = 2;
}

/// A configuration problem found at startup: printed, then exit 2. Each
/// message names what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    PidFile(#[from] PidFileError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(
        "--min-delay {} is longer than --max-delay {}: make --min-delay the shorter one",
        humantime::format_duration(*min),
        humantime::format_duration(*max)
    )]
    DelayOrder { min: Duration, max: Duration },
    #[error("--port {0} is the sidecar's own port (--listen): name NGINX's ports")]
    OwnPort(u16),
    #[error(
        "--report-file {}: its directory does not exist; mount it or choose another path",
        .0.display()
    )]
    ReportDir(PathBuf),
}

/// Why `serve` stopped other than by finishing its work.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(io::Error),
    #[error("cannot use the listening socket: {0}")]
    Listener(io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
    #[error("the drain owner failed: {0}; please report this as a bug")]
    Owner(tokio::task::JoinError),
}

impl Error {
    /// The process's exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => exit::CONFIG,
            Error::Runtime(_) | Error::Listener(_) | Error::Signals(_) | Error::Owner(_) => {
                exit::FAILURE
            }
        }
    }
}

/// `listen` failed; the message says how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({source}){}", match source.kind() {
    io::ErrorKind::AddrInUse => ": another process uses this port; pick a free one with --listen (and the hook's port to match)",
    io::ErrorKind::PermissionDenied => ": ports below 1024 need CAP_NET_BIND_SERVICE; use a higher port",
    io::ErrorKind::AddrNotAvailable => ": that address is not on any interface of this pod",
    _ => "",
})]
pub struct ListenError {
    pub(crate) addr: SocketAddr,
    pub(crate) source: io::Error,
}

/// Everything `serve` needs, checked: the drain's configuration, the HTTP
/// surface's, the bound listener and where reports go.
#[derive(Debug)]
pub struct Prepared {
    pub(crate) drain: drain::Config,
    pub(crate) http: http::Config,
    pub listener: std::net::TcpListener,
    /// Where to write each final report (atomically), if anywhere.
    pub report_file: Option<PathBuf>,
    /// An Event on the pod for each drain (`--events`).
    pub events: bool,
}

/// The whole `serve` command: check the configuration, start a small
/// runtime, run until NGINX is gone after the sidecar's own SIGTERM/SIGINT.
pub fn main(args: &ServeArgs) -> Result<(), Error> {
    let prepared = prepare(args)?;
    // One thread is plenty: the sidecar waits on a few file descriptors,
    // and a small runtime keeps its memory small.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    rt.block_on(async {
        let stop = termination_signal().map_err(Error::Signals)?;
        run(prepared, stop).await
    })
}

/// Resolves at the process's first SIGTERM or SIGINT.
fn termination_signal() -> io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("received SIGTERM"),
            _ = int.recv() => tracing::info!("received SIGINT"),
        }
    })
}

/// Checks the configuration and binds the listener. Everything that can be
/// wrong with the flags is reported here, before anything runs.
pub fn prepare(args: &ServeArgs) -> Result<Prepared, ConfigError> {
    let locator = match &args.nginx_pid_file {
        Some(p) => Locator::PidFile(p.clone()),
        None => Locator::Discover,
    };
    locator.check_at_startup()?;
    if args.min_delay > args.max_delay {
        return Err(ConfigError::DelayOrder {
            min: args.min_delay,
            max: args.max_delay,
        });
    }
    if args.ports.contains(&args.listen.port()) {
        return Err(ConfigError::OwnPort(args.listen.port()));
    }
    let load = |p: &Option<PathBuf>| -> Result<Option<Arc<TokenFile>>, TokenError> {
        p.as_deref()
            .map(|p| TokenFile::load(p).map(Arc::new))
            .transpose()
    };
    let token = load(&args.token_file)?;
    let metrics_token = load(&args.metrics_token_file)?;
    if let Some(p) = &args.report_file {
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
        if dir.is_some_and(|d| !d.is_dir()) {
            return Err(ConfigError::ReportDir(p.clone()));
        }
    }
    let listener = bind(args.listen)?;
    let own_port = listener
        .local_addr()
        .map_or(args.listen.port(), |a| a.port());
    // `--node-ip`, else the downward API's `HOST_IP` (read like `POD_IP`;
    // an address that does not parse is left out, and the `hook_access`
    // check then says no address is known).
    let node_ips = if args.node_ips.is_empty() {
        std::env::var("HOST_IP")
            .unwrap_or_default()
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect()
    } else {
        args.node_ips.clone()
    };
    let access = Arc::new(Access::new(
        args.allow_cidrs.clone(),
        args.allow_kubelet,
        node_ips,
    ));
    Ok(Prepared {
        drain: drain::Config {
            locator,
            drain_timeout: args.drain_timeout,
            policy: drain::WaitPolicy {
                min_delay: args.min_delay,
                max_delay: args.max_delay,
            },
            worker_shutdown_timeout: args.worker_shutdown_timeout,
            metrics_linger: args.metrics_linger,
            nginx_start_timeout: args.nginx_start_timeout,
            wiring: drain::WiringConfig {
                listen: listener.local_addr().unwrap_or(args.listen),
                // The downward API's pod IP, and whether this runs in a pod
                // at all (every pod has the API server's address in its env).
                pod_ip: std::env::var("POD_IP").ok().and_then(|s| s.parse().ok()),
                in_pod: std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
                grace_period: args.grace_period,
                access: access.clone(),
            },
            census: MonitorConfig {
                method: args.census,
                filter: PortFilter {
                    only: args.ports.iter().copied().collect(),
                    exclude: [own_port].into(),
                    ignore_peers: args.ignore_peers.clone(),
                    pool_peers: args.pool_peers.clone(),
                },
            },
        },
        http: http::Config {
            token,
            metrics_token,
            access: access.clone(),
            on_failure: args.on_failure,
            max_connections: fit_file_limit(args.max_connections as usize),
            learn_kubelet: args.ignore_kubelet,
        },
        listener,
        report_file: args.report_file.clone(),
        events: args.events,
    })
}

/// The connection limit, lowered so that open connections cannot exhaust
/// the process's file descriptors (a few are kept for netlink, /proc and
/// pidfds).
fn fit_file_limit(wanted: usize) -> usize {
    const RESERVED: u64 = 24;
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) if soft.saturating_sub(RESERVED) < wanted as u64 => {
            let fit = soft.saturating_sub(RESERVED).max(4) as usize;
            tracing::warn!(
                wanted,
                fit,
                file_limit = soft,
                "the file limit is low: the HTTP connection limit is lowered to fit"
            );
            fit
        }
        _ => wanted,
    }
}

/// Binds `addr`. The unspecified IPv6 address is bound dual-stack
/// (IPV6_V6ONLY off, whatever the sysctl says); where the pod has no IPv6 at
/// all, it falls back to the IPv4 wildcard instead of failing.
pub(crate) fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, ListenError> {
    use nix::errno::Errno;
    let wildcard_v6 = matches!(addr, SocketAddr::V6(a) if a.ip().is_unspecified());
    match bind_socket(addr, wildcard_v6) {
        Ok(l) => Ok(l),
        Err(e)
            if wildcard_v6
                && [
                    Errno::EAFNOSUPPORT,
                    Errno::EADDRNOTAVAIL,
                    Errno::EPROTONOSUPPORT,
                ]
                .iter()
                .any(|n| e.raw_os_error() == Some(*n as i32)) =>
        {
            let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port()));
            tracing::info!(error = %e, "IPv6 is not available here: listening on IPv4 only");
            bind_socket(v4, false).map_err(|source| ListenError { addr: v4, source })
        }
        Err(source) => Err(ListenError { addr, source }),
    }
}

fn bind_socket(addr: SocketAddr, dual_stack: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if dual_stack {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Runs the sidecar until it has seen NGINX go after `stop` resolved (the
/// sidecar's own SIGTERM in production; the demo and tests pass their own).
///
/// This is the one place where the parts are wired: the metrics are made
/// here and observe every final report (with the report file) before any
/// hook sees it; the HTTP surface renders the drain's handle and the
/// metrics.
pub async fn run(
    prepared: Prepared,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let Prepared {
        drain: config,
        http: http_opts,
        listener,
        report_file,
        events,
    } = prepared;
    let listener = TcpListener::from_std(listener).map_err(Error::Listener)?;
    let local = listener.local_addr().ok();
    let words = |v: Vec<String>| crate::vocab::json(&v);
    tracing::info!(
        listen = %local.map_or_else(|| "unknown".to_string(), |a| a.to_string()),
        nginx = %config.locator.describe(),
        drain_timeout = %humantime::format_duration(config.drain_timeout),
        min_delay = %humantime::format_duration(config.policy.min_delay),
        max_delay = %humantime::format_duration(config.policy.max_delay),
        ports = %crate::vocab::json(&config.census.filter.only),
        ignore_peers = %words(config.census.filter.ignore_peers.iter().map(|n| n.to_string()).collect()),
        pool_peers = %words(config.census.filter.pool_peers.iter().map(|n| n.to_string()).collect()),
        token = http_opts.token.as_ref().map(|t| t.path().display().to_string()),
        hook_access = %http_opts.access.describe(),
        on_failure = %http_opts.on_failure,
        max_connections = http_opts.max_connections,
        ignore_kubelet = http_opts.learn_kubelet,
        report_file = report_file.as_ref().map(|p| p.display().to_string()),
        version = env!("CARGO_PKG_VERSION"),
        "nginx-drain serving: preStop hook at GET /prestop"
    );

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        stop.await;
        let _ = shutdown_tx.send(true);
    });

    let events = events.then(kube::Events::in_cluster).and_then(|e| {
        e.inspect(|e| {
            tracing::info!(pod = %e.pod().name, uid = %e.pod().uid, "--events: each drain's outcome becomes an Event on the pod");
        })
        .inspect_err(|e| tracing::error!("no drain Events: {e}"))
        .ok()
    });
    let posting: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
    let metrics = Arc::new(Metrics::new());
    let observer = metrics.clone();
    let posts = posting.clone();
    let on_report: drain::ReportSink = Arc::new(move |report: &Report| {
        observer.observe_report(report);
        if let Some(path) = &report_file
            && let Err(e) = crate::report::file::write(path, report)
        {
            tracing::error!("cannot write --report-file {}: {e}", path.display());
        }
        if let Some(events) = &events {
            let events = events.clone();
            let event = event_of(report);
            let drain_id = report.drain_id.clone();
            let task = tokio::spawn(async move {
                match events.post(&event).await {
                    Ok(()) => {
                        tracing::info!(drain_id, reason = event.reason, "Event created on the pod")
                    }
                    Err(e) => tracing::warn!(
                        drain_id,
                        reason = event.reason,
                        "the drain's Event was dropped: {e}"
                    ),
                }
            });
            posts.lock().unwrap_or_else(|e| e.into_inner()).push(task);
        }
    });
    let (handle, owner) = drain::spawn(config, on_report, shutdown_rx);
    let (stop_http, stop_rx) = watch::channel(false);
    let server = tokio::spawn(http::serve(listener, handle, metrics, http_opts, stop_rx));
    let result = owner.await.map_err(Error::Owner);
    // The Events still being created go out before the sidecar exits (each
    // is bounded by kube::POST_LIMIT).
    let pending = std::mem::take(&mut *posting.lock().unwrap_or_else(|e| e.into_inner()));
    for task in pending {
        let _ = tokio::time::timeout(kube::POST_LIMIT + Duration::from_secs(1), task).await;
    }
    let _ = stop_http.send(true);
    let _ = server.await;
    let code = result.as_ref().map_or_else(Error::exit_code, |()| exit::OK);
    tracing::info!(code, "nginx-drain exiting");
    result
}

/// A drain's outcome in Kubernetes' words: a CamelCase reason, `Warning`
/// when it did not succeed, and the report's one-sentence message (which
/// names the fix on a failure).
fn event_of(report: &Report) -> kube::Event {
    let reason = match report.outcome {
        Outcome::Drained => "Drained",
        Outcome::StreamsClosed => "DrainedStreamsClosed",
        Outcome::Forced => "DrainForced",
        Outcome::Timeout => "DrainTimedOut",
        Outcome::NotRunning => "NginxNotRunning",
        Outcome::NginxDied => "NginxDied",
        Outcome::Error => "DrainFailed",
    };
    kube::Event {
        warning: !report.outcome.is_success(),
        reason,
        message: format!("drain {}: {}", report.drain_id, report.message),
    }
}
