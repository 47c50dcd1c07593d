//! `nginx-drain serve`: wires the listener, the drain owner, the HTTP server
//! and the process's own signals together, and decides the exit code.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use std::sync::Arc;

use crate::auth::TokenFile;
use crate::cli::ServeArgs;
use crate::drain;
use crate::http;
use crate::nginx::Locator;
use crate::sockets::PortFilter;
use crate::sockets::monitor::MonitorConfig;

/// Exit codes, as in linkerd-await: each means one thing.
pub mod exit {
    /// Exited after NGINX was gone (or none was running).
    pub const OK: u8 = 0;
    /// An internal failure while serving (see the log).
    pub const FAILURE: u8 = 1;
    /// Bad configuration: a flag, the pid file, the listen address.
    pub const CONFIG: u8 = 2;
}

/// A configuration problem found at startup: printed, then exit 2.
#[derive(Debug)]
pub struct ConfigError(pub String);

/// Checks the configuration and binds the listener. Everything that can be
/// wrong with the flags is reported here, before anything runs.
pub fn prepare(
    args: &ServeArgs,
) -> Result<(drain::Config, http::Options, std::net::TcpListener), ConfigError> {
    let locator = match &args.nginx_pid_file {
        Some(p) => Locator::PidFile(p.clone()),
        None => Locator::Discover,
    };
    locator.check_at_startup().map_err(ConfigError)?;
    if args.min_delay > args.max_delay {
        return Err(ConfigError(format!(
            "--min-delay {} is longer than --max-delay {}: make --min-delay the shorter one",
            humantime::format_duration(args.min_delay),
            humantime::format_duration(args.max_delay)
        )));
    }
    if args.ports.contains(&args.listen.port()) {
        return Err(ConfigError(format!(
            "--port {} is the sidecar's own port (--listen): name NGINX's ports",
            args.listen.port()
        )));
    }
    let load = |p: &Option<std::path::PathBuf>| -> Result<Option<Arc<TokenFile>>, ConfigError> {
        p.as_deref()
            .map(|p| TokenFile::load(p).map(Arc::new).map_err(ConfigError))
            .transpose()
    };
    let token = load(&args.token_file)?;
    let metrics_token = load(&args.metrics_token_file)?;
    if let Some(p) = &args.report_file {
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
        if dir.is_some_and(|d| !d.is_dir()) {
            return Err(ConfigError(format!(
                "--report-file {}: its directory does not exist; mount it or choose another path",
                p.display()
            )));
        }
    }
    let listener = bind(args.listen).map_err(ConfigError)?;
    let own_port = listener
        .local_addr()
        .map_or(args.listen.port(), |a| a.port());
    Ok((
        drain::Config {
            locator,
            drain_timeout: args.drain_timeout,
            policy: drain::sequence::WaitPolicy {
                min_delay: args.min_delay,
                max_delay: args.max_delay,
            },
            census: MonitorConfig {
                method: args.census,
                filter: PortFilter {
                    only: args.ports.iter().copied().collect(),
                    exclude: [own_port].into(),
                    ignore_peers: args.ignore_peers.clone(),
                },
            },
            report_file: args.report_file.clone(),
        },
        http::Options {
            token,
            metrics_token,
            allow: args.allow_cidrs.clone(),
            on_failure: args.on_failure,
            max_connections: fit_file_limit(args.max_connections as usize),
        },
        listener,
    ))
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
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, String> {
    let wildcard_v6 = matches!(addr, SocketAddr::V6(a) if a.ip().is_unspecified());
    match bind_socket(addr, wildcard_v6) {
        Ok(l) => Ok(l),
        Err(e)
            if wildcard_v6
                && matches!(
                    e.raw_os_error(),
                    Some(libc_eafnosupport) if libc_eafnosupport == nix::errno::Errno::EAFNOSUPPORT as i32
                        || libc_eafnosupport == nix::errno::Errno::EADDRNOTAVAIL as i32
                        || libc_eafnosupport == nix::errno::Errno::EPROTONOSUPPORT as i32
                ) =>
        {
            let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port()));
            tracing::info!(error = %e, "IPv6 is not available here: listening on IPv4 only");
            bind_socket(v4, false).map_err(|e| listen_error(v4, &e))
        }
        Err(e) => Err(listen_error(addr, &e)),
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

fn listen_error(addr: SocketAddr, e: &io::Error) -> String {
    let fix = match e.kind() {
        io::ErrorKind::AddrInUse => {
            ": another process uses this port; pick a free one with --listen (and the hook's port to match)"
        }
        io::ErrorKind::PermissionDenied => {
            ": ports below 1024 need CAP_NET_BIND_SERVICE; use a higher port"
        }
        io::ErrorKind::AddrNotAvailable => ": that address is not on any interface of this pod",
        _ => "",
    };
    format!("cannot listen on {addr} ({e}){fix}")
}

/// Runs the sidecar until it has seen NGINX go (after its own SIGTERM).
pub async fn run(
    config: drain::Config,
    http_opts: http::Options,
    listener: std::net::TcpListener,
) -> ExitCode {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot use the listening socket: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let local = listener.local_addr().ok();
    tracing::info!(
        listen = ?local,
        nginx = %config.locator.describe(),
        drain_timeout = %humantime::format_duration(config.drain_timeout),
        min_delay = %humantime::format_duration(config.policy.min_delay),
        max_delay = %humantime::format_duration(config.policy.max_delay),
        ports = ?config.census.filter.only,
        ignore_peers = ?config.census.filter.ignore_peers.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        token = http_opts.token.as_ref().map(|t| t.path().display().to_string()),
        allow_cidrs = ?http_opts.allow.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        on_failure = ?http_opts.on_failure,
        max_connections = http_opts.max_connections,
        report_file = ?config.report_file,
        version = env!("CARGO_PKG_VERSION"),
        "nginx-drain serving: preStop hook at GET /prestop"
    );

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let signals = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("cannot install signal handlers: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    tokio::spawn(async move {
        let (mut term, mut int) = signals;
        tokio::select! {
            _ = term.recv() => tracing::info!("received SIGTERM"),
            _ = int.recv() => tracing::info!("received SIGINT"),
        }
        let _ = shutdown_tx.send(true);
    });

    let (handle, owner) = drain::spawn(config, shutdown_rx);
    let (stop_http, stop_rx) = watch::channel(false);
    let server = tokio::spawn(http::serve(listener, handle, http_opts, stop_rx));
    let code = match owner.await {
        Ok(()) => exit::OK,
        Err(e) => {
            tracing::error!("the drain owner failed: {e}; please report this as a bug");
            exit::FAILURE
        }
    };
    let _ = stop_http.send(true);
    let _ = server.await;
    tracing::info!(code, "nginx-drain exiting");
    ExitCode::from(code)
}
