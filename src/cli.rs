//! Command-line and environment configuration. Every `serve` flag can also be
//! set through `NGINX_DRAIN_<FLAG>` (upper case, `-` as `_`), which is how
//! the Helm chart sets them.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

use crate::budget::MIN_DRAIN_TIMEOUT;
use crate::vocab::LogFormat;
use crate::vocab::{CensusMethod, OnFailure};

/// The default hook port. No common Kubernetes component or exporter uses
/// 10266; 9099 (an obvious choice) is Calico's health port, which collides
/// on ingress pods that run with hostNetwork.
pub(crate) const DEFAULT_PORT: u16 = 10266;

#[derive(Debug, Parser)]
#[command(
    name = "nginx-drain",
    version,
    about = "A preStop sidecar that drains NGINX gracefully before Kubernetes stops it",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the preStop hook (GET /prestop) and drain NGINX when it is called.
    Serve(Box<ServeArgs>),
    /// Ask the running sidecar whether its wiring is right: each check with
    /// ok or FAIL and the fix (`kubectl exec POD -c nginx-drain --
    /// /nginx-drain check`). Exit 0 when all pass, 1 when any fails, 2 when
    /// the sidecar cannot be asked.
    Check(InspectArgs),
    /// Print the running sidecar's /status readably (or as JSON).
    Status(InspectArgs),
    /// Wire nginx-drain into Kubernetes manifests: reads a multi-document
    /// YAML stream (a file, or stdin: `helm template ... | nginx-drain
    /// inject | kubectl apply -f -`, or as a Helm post-renderer) and writes
    /// it to stdout with the sidecar, the preStop hook, the shared process
    /// namespace and the grace arithmetic in every workload that runs NGINX.
    /// What it did goes to stderr. Idempotent and deterministic.
    Inject(InjectArgs),
    /// A mutating admission webhook (HTTPS) that wires Pods at CREATE by
    /// the same rules as `inject`, for pods no pipeline renders (GitOps,
    /// operators' Deployments): opt-in by the namespace label
    /// `nginx-drain.io/inject=enabled` or the pod annotation
    /// `nginx-drain.io/inject: enabled`; the annotation `disabled` opts a
    /// pod out. A pod it cannot wire is admitted unchanged, with an
    /// admission warning that says why. Install: charts/nginx-drain-webhook.
    Webhook(WebhookArgs),
}

impl Default for WiringArgs {
    /// The flags' own defaults, read from their clap attributes: no second
    /// copy of them to drift (the tests wire with these).
    fn default() -> Self {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            wiring: WiringArgs,
        }
        Only::parse_from(["nginx-drain"]).wiring
    }
}

/// `nginx-drain webhook`'s flags.
#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// Address to serve admission reviews on (HTTPS only). `[::]:8443` is
    /// dual-stack; in pods without IPv6 it falls back to 0.0.0.0:8443.
    #[arg(long, env = "NGINX_DRAIN_WEBHOOK_LISTEN", default_value = "[::]:8443", value_parser = parse_listen, value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// The serving certificate (PEM, the chain), read again when it
    /// changes on disk (a rotated Secret): the API server's connections
    /// keep being served by the old one until the new one loads.
    #[arg(
        long,
        env = "NGINX_DRAIN_WEBHOOK_TLS_CERT",
        default_value = "/etc/nginx-drain-webhook/tls/tls.crt",
        value_name = "PATH"
    )]
    pub tls_cert: PathBuf,
    /// The certificate's private key (PEM).
    #[arg(
        long,
        env = "NGINX_DRAIN_WEBHOOK_TLS_KEY",
        default_value = "/etc/nginx-drain-webhook/tls/tls.key",
        value_name = "PATH"
    )]
    pub tls_key: PathBuf,
    #[command(flatten)]
    pub wiring: WiringArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// `nginx-drain inject`'s flags.
#[derive(Debug, Clone, Args)]
pub struct InjectArgs {
    /// The manifests to read; `-` or none: stdin.
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub wiring: WiringArgs,
}

/// How a workload is wired: `inject`'s and `webhook`'s flags, one set for
/// both (one implementation of the wiring). Where a flag is not given, the
/// value comes from the workload (its NGINX container's securityContext,
/// ports and the pod's grace period) or from what is known of the
/// controller.
#[derive(Debug, Clone, Args)]
pub struct WiringArgs {
    /// The sidecar's image.
    #[arg(long, default_value = concat!("nginx-drain:", env!("CARGO_PKG_VERSION")), value_name = "IMAGE")]
    pub image: String,
    /// The NGINX container, by name (default: the container whose image is
    /// NGINX, OpenResty, ingress-nginx, NGINX Ingress, Kong, APISIX or NGINX
    /// Gateway Fabric's data plane).
    #[arg(long, value_name = "NAME")]
    pub container: Option<String>,
    /// The UID NGINX's master runs as (default: the container's or pod's
    /// runAsUser, else the controller's known UID).
    #[arg(long, value_name = "UID")]
    pub uid: Option<i64>,
    /// NGINX's client ports, repeatable (default: the NGINX container's TCP
    /// ports but metrics, admin, status, control and webhook ports).
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// A native sidecar (Kubernetes 1.29+); `false`: a regular container,
    /// for older clusters.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub native: bool,
    /// The pod's terminationGracePeriodSeconds (default: the workload's, or
    /// Kubernetes' 30).
    #[arg(long, value_name = "SECONDS")]
    pub grace_period: Option<u32>,
    /// Seconds of the grace period kept back from the drain budget (the
    /// kubelet's 2 s minimum after the hook, and the answer's trip).
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub margin: u32,
    /// The sidecar's --max-delay (the longest wait for traffic to stop).
    #[arg(long, default_value = "15s", value_parser = parse_duration, value_name = "DURATION")]
    pub max_delay: Duration,
    /// The sidecar's port (hook, probes, metrics).
    #[arg(long, default_value_t = 10266, value_name = "PORT")]
    pub hook_port: u16,
    /// Where else the preStop hook may come from, passed to the sidecar's
    /// `--allow-cidr` (repeatable or comma-separated): the kubelet's
    /// address on a CNI that gives pods no default route, whose sidecar
    /// otherwise says at start which range to allow and never turns Ready.
    #[arg(long = "allow-cidr", value_delimiter = ',', value_parser = parse_net, value_name = "CIDR")]
    pub allow_cidrs: Vec<IpNet>,
}

/// How `check` and `status` reach the sidecar. By default they find the
/// `nginx-drain serve` process in the container and use its `--listen`
/// and `--token-file`.
#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// The sidecar's address, instead of the serve process's `--listen`.
    #[arg(long, value_parser = parse_listen, value_name = "ADDR:PORT")]
    pub url: Option<SocketAddr>,
    /// The bearer token file, instead of the serve process's `--token-file`.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Print /status as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to serve the hook and probes on. The default `[::]:10266` is
    /// dual-stack; in pods without IPv6 it falls back to 0.0.0.0:10266.
    #[arg(long, env = "NGINX_DRAIN_LISTEN", default_value_t = SocketAddr::from(([0u16; 8], DEFAULT_PORT)), value_parser = parse_listen, value_name = "ADDR:PORT")]
    pub listen: SocketAddr,

    /// NGINX's pid file (its `pid` directive). Without it, the master is
    /// found in the shared PID namespace by its title "nginx: master process".
    /// A file that does not exist yet is fine: NGINX may start later.
    #[arg(long, env = "NGINX_DRAIN_NGINX_PID_FILE", value_name = "PATH")]
    pub nginx_pid_file: Option<PathBuf>,

    /// How long after the sidecar starts NGINX may take to appear. Until
    /// then a hook with no NGINX to drain answers not_running (a pod deleted
    /// while it starts); after it, no master found is a blocking wiring
    /// problem (`nginx_found`: the pod does not turn Ready, `/wiring` says
    /// why) and a hook answers `error`: a wrong --nginx-pid-file, no shared
    /// PID namespace or a master with another title would otherwise stop
    /// NGINX with no drain and call it a success.
    #[arg(long, env = "NGINX_DRAIN_NGINX_START_TIMEOUT", default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub nginx_start_timeout: Duration,

    /// The whole budget of one drain, counted from the hook's arrival:
    /// graceful quit, escalation to SIGTERM and the answer all fit in it.
    /// Keep it below terminationGracePeriodSeconds (default 30s) by a few
    /// seconds so that the kubelet never needs SIGKILL.
    #[arg(long, env = "NGINX_DRAIN_DRAIN_TIMEOUT", default_value = "25s", value_parser = parse_drain_timeout, value_name = "DURATION")]
    pub drain_timeout: Duration,

    /// The shortest wait between the hook and SIGQUIT, even when no traffic
    /// is seen: the quiet period's floor (five looks at the accept counter,
    /// which is read every 20 ms during a drain).
    #[arg(long, env = "NGINX_DRAIN_MIN_DELAY", default_value = "100ms", value_parser = parse_duration, value_name = "DURATION")]
    pub min_delay: Duration,

    /// The longest wait between the hook and SIGQUIT while new connections
    /// keep arriving (load balancers that are slow to deregister the pod).
    /// Also capped so that the budget keeps time for the graceful quit.
    #[arg(long, env = "NGINX_DRAIN_MAX_DELAY", default_value = "15s", value_parser = parse_duration, value_name = "DURATION")]
    pub max_delay: Duration,

    /// NGINX's `worker_shutdown_timeout`, when the sidecar cannot read
    /// NGINX's configuration itself (it reads the master's file through
    /// /proc/PID/root, which needs the master's UID and capabilities).
    /// It tells NGINX's own closing of long-lived connections apart from
    /// requests that finished, and is checked against the budget at start.
    #[arg(long, env = "NGINX_DRAIN_WORKER_SHUTDOWN_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    pub worker_shutdown_timeout: Option<Duration>,

    /// After a drain that did not succeed (forced, timeout, error), keep
    /// serving `/metrics` this long once NGINX is gone and the sidecar's own
    /// SIGTERM came, so that a scrape can still count it; never past the
    /// grace period less 2 s (`--grace-period`, else the budget plus 3 s).
    /// `0s`: exit at once. Successful drains never linger.
    #[arg(long, env = "NGINX_DRAIN_METRICS_LINGER", default_value = "10s", value_parser = parse_linger, value_name = "DURATION")]
    pub metrics_linger: Duration,

    /// The pod's `terminationGracePeriodSeconds` (the chart passes it): the
    /// budget is checked against it at start (it must end at least 2 s
    /// before it, the kubelet's minimum stop). Without it, not checked.
    #[arg(long, env = "NGINX_DRAIN_GRACE_PERIOD", value_parser = parse_duration, value_name = "DURATION")]
    pub grace_period: Option<Duration>,

    /// Count only connections to these local ports as NGINX traffic
    /// (repeatable; env: comma-separated). Default: every TCP port listening
    /// in the pod's network namespace except the sidecar's own.
    #[arg(
        long = "port",
        env = "NGINX_DRAIN_PORT",
        value_delimiter = ',',
        value_name = "PORT"
    )]
    pub ports: Vec<u16>,

    /// Connections from these peers are not client traffic and never delay
    /// the quit: health checkers and monitors other than the kubelet, whose
    /// address is learned (`--ignore-kubelet`). Repeatable; an address or a
    /// CIDR; env: comma-separated.
    #[arg(long = "ignore-peer", env = "NGINX_DRAIN_IGNORE_PEER", value_delimiter = ',', value_parser = parse_net, value_name = "CIDR")]
    pub ignore_peers: Vec<IpNet>,

    /// Peers that reach NGINX only through a keep-alive pool: a balancer
    /// that connects from addresses of its own (an L7 load balancer in IP
    /// mode, HAProxy, the ingress controller in front of an app). Their new
    /// connections are the pool's churn and count as its requests, so the
    /// quit follows the pool a quiet period after it stops, not three of its
    /// sparse reconnects. Never list an address other clients share (a
    /// node's, behind kube-proxy's SNAT): their new connections would be
    /// judged by the pool's rate. Repeatable; an address or a CIDR; env:
    /// comma-separated. Default: none (every new connection is a client).
    #[arg(long = "pool-peer", env = "NGINX_DRAIN_POOL_PEER", value_delimiter = ',', value_parser = parse_net, value_name = "CIDR")]
    pub pool_peers: Vec<IpNet>,

    /// Learn the kubelet's address from the requests it makes to the
    /// sidecar (probes with User-Agent `kube-probe/`, hooks with
    /// `kube-lifecycle/`; other callers teach nothing) and stop counting its
    /// probes of NGINX as client arrivals: from that address, up to 3
    /// connections at once and 2 a second are taken to be probes, and any
    /// more are clients (node-local or masqueraded Service traffic shares
    /// the address). Which address the kubelet uses depends on the CNI
    /// (often the bridge's, not the node's), so it is learned, not
    /// configured. `false`: every connection from it counts.
    #[arg(long, env = "NGINX_DRAIN_IGNORE_KUBELET", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub ignore_kubelet: bool,

    /// Where the connection census comes from: `auto` (netlink, falling back
    /// to /proc/net/tcp when netlink is refused), `netlink` or `proc`.
    #[arg(long, env = "NGINX_DRAIN_CENSUS", value_enum, default_value_t = CensusMethod::Auto)]
    pub census: CensusMethod,

    /// Require `Authorization: Bearer <token>` on /prestop and /status, with
    /// the token read from this file (a mounted Secret; re-read when it
    /// changes). An unreadable or empty file is a startup error.
    #[arg(long, env = "NGINX_DRAIN_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// Only peers in these ranges may call /prestop and /status (403 for
    /// others; with `--allow-kubelet`, these in addition to the kubelet's
    /// addresses). Repeatable; env: comma-separated. Default: any peer.
    #[arg(long = "allow-cidr", env = "NGINX_DRAIN_ALLOW_CIDR", value_delimiter = ',', value_parser = parse_net, value_name = "CIDR")]
    pub allow_cidrs: Vec<IpNet>,

    /// Only the kubelet may call /prestop and /status, by its address: the
    /// node's (`--node-ip`), the pod's default gateways (read from the
    /// pod's routing table: the node's end of the pod's link, where the
    /// kubelet's requests come from with bridge CNIs and Cilium) and
    /// loopback (the pod itself). No secret to copy; another pod cannot
    /// send from these addresses. A kubelet request from an address this
    /// refuses is a wiring problem (`hook_access`) with the fix.
    #[arg(long, env = "NGINX_DRAIN_ALLOW_KUBELET", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub allow_kubelet: bool,

    /// The node's IP addresses, for `--allow-kubelet` (the downward API's
    /// `status.hostIP`, or `status.hostIPs` on dual-stack nodes). Env:
    /// comma-separated. When neither is given, the env `HOST_IP` is read
    /// (the name the downward API examples use), like `POD_IP`.
    #[arg(
        long = "node-ip",
        env = "NGINX_DRAIN_NODE_IP",
        value_delimiter = ',',
        value_name = "IP"
    )]
    pub node_ips: Vec<IpAddr>,

    /// Require a bearer token (read from this file) on /metrics too.
    #[arg(long, env = "NGINX_DRAIN_METRICS_TOKEN_FILE", value_name = "PATH")]
    pub metrics_token_file: Option<PathBuf>,

    /// When a drain does not succeed (forced, timeout, nginx_died, error):
    /// `reset` closes the hook's connection with a TCP reset so that the
    /// kubelet records a FailedPreStopHook event (it ignores status codes);
    /// `status` answers 500 with the report.
    #[arg(long, env = "NGINX_DRAIN_ON_FAILURE", value_enum, default_value_t = OnFailure::Reset)]
    pub on_failure: OnFailure,

    /// Write each final report as JSON to this file, atomically (e.g. the
    /// container's terminationMessagePath, /dev/termination-log).
    #[arg(long, env = "NGINX_DRAIN_REPORT_FILE", value_name = "PATH")]
    pub report_file: Option<PathBuf>,

    /// Create a Kubernetes Event on the pod for each drain's outcome (reason
    /// `Drained`, `DrainForced`…, the report's message), as `kubectl
    /// describe pod` and event exporters show. Needs the pod's service
    /// account token mounted, `create` on `events` in its namespace, and
    /// the env `POD_UID` (downward API `metadata.uid`) beside `POD_NAME`
    /// and `POD_NAMESPACE`. An Event that cannot be created is a log line;
    /// the drain never waits on it.
    #[arg(long, env = "NGINX_DRAIN_EVENTS", default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub events: bool,

    /// Open HTTP connections before the oldest idle one is closed to make
    /// room (connections waiting on a drain are never closed). Lowered
    /// automatically to fit the process's file limit.
    #[arg(long, env = "NGINX_DRAIN_MAX_CONNECTIONS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(4..), value_name = "N")]
    pub max_connections: u32,

    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log format: `text` for humans, `json` for log pipelines.
    #[arg(long, env = "NGINX_DRAIN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log level (`error`, `warn`, `info`, `debug`, `trace`, `off`) or a
    /// filter (`nginx_drain=debug,warn`); anything else is refused.
    #[arg(long, env = "NGINX_DRAIN_LOG_LEVEL", default_value = "info", value_parser = parse_log_level, value_name = "FILTER")]
    pub log_level: String,
}

/// The words a flag takes for a vocabulary type, each with its help (what
/// `--help` lists): clap knows the types here, and only here.
macro_rules! flag_words {
    ($t:ty { $($v:ident => $help:literal),* $(,)? }) => {
        impl ValueEnum for $t {
            fn value_variants<'a>() -> &'a [Self] {
                <$t>::ALL
            }
            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                Some(clap::builder::PossibleValue::new(self.as_str()).help(match self {
                    $(<$t>::$v => $help),*
                }))
            }
        }
    };
}

flag_words!(CensusMethod {
    Auto => "NETLINK_SOCK_DIAG, falling back to /proc when netlink is refused",
    Netlink => "NETLINK_SOCK_DIAG only",
    Proc => "/proc/net/tcp and /proc/net/tcp6 only",
});
flag_words!(OnFailure {
    Status => "Answer 500 with the report",
    Reset => "Reset the connection (TCP RST, no response), so that the kubelet records a FailedPreStopHook event: it ignores status codes",
});
flag_words!(LogFormat {
    Text => "For humans",
    Json => "One JSON object a line, for log pipelines",
});

/// The longest duration any flag takes: a day, far beyond any grace period
/// a kubelet keeps a pod for, and far from overflowing the monotonic clock
/// when added to now (a value like `100000000y` would panic there).
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// A duration no longer than [`MAX_DURATION`]; `how` shows the form.
fn bounded_duration(s: &str, how: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e}: {how}"))?;
    if d > MAX_DURATION {
        return Err(format!(
            "{s} is longer than {}, which no grace period comes near: {how}",
            humantime::format_duration(MAX_DURATION)
        ));
    }
    Ok(d)
}

fn parse_drain_timeout(s: &str) -> Result<Duration, String> {
    let d = bounded_duration(s, "write a duration such as 25s or 1m30s")?;
    if d < MIN_DRAIN_TIMEOUT {
        return Err(format!(
            "{s} is shorter than {}: a drain needs time to quit gracefully and to escalate",
            humantime::format_duration(MIN_DRAIN_TIMEOUT)
        ));
    }
    Ok(d)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    bounded_duration(s, "write a duration such as 250ms or 15s")
}

/// An address (`10.0.0.1`, `::1`) or a network (`10.0.0.0/8`).
fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is neither an IP address nor a CIDR such as 10.0.0.0/8"))
}

/// A duration that may be zero.
fn parse_linger(s: &str) -> Result<Duration, String> {
    bounded_duration(s, "write a duration such as 10s, or 0s")
}

/// An address and a port; a bare port or address says which form is meant.
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        let hint = if let Ok(port) = s.parse::<u16>() {
            format!("[::]:{port} (every address) or 0.0.0.0:{port} (IPv4 only)")
        } else {
            "[::]:10266, 0.0.0.0:10266 or 127.0.0.1:10266".to_string()
        };
        format!("{s:?} is not an address with a port: write it as {hint}")
    })
}

/// A level name (`error`, `warn` or `warning`, `info`, `debug`, `trace`,
/// `off`) or a filter of `target=level` directives and level names. A bare
/// word that is no level is refused: tracing would read it as a target and
/// turn every line off, errors included.
fn parse_log_level(s: &str) -> Result<String, String> {
    const HOW: &str =
        "use error, warn, info, debug, trace or off, or a filter such as nginx_drain=debug,warn";
    let mut directives = Vec::new();
    for d in s.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let lower = d.to_ascii_lowercase();
        directives.push(match lower.as_str() {
            "warning" => "warn".to_string(),
            "off" | "error" | "warn" | "info" | "debug" | "trace" => lower,
            _ if d.contains('=') => d.to_string(),
            _ => return Err(format!("{d:?} is not a log level: {HOW}")),
        });
    }
    if directives.is_empty() {
        return Err(format!("no log level given: {HOW}"));
    }
    let filter = directives.join(",");
    tracing_subscriber::EnvFilter::try_new(&filter)
        .map(|_| filter)
        .map_err(|e| format!("{e}: {HOW}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_timeout_accepts_humantime_and_rejects_nonsense() {
        assert_eq!(
            parse_drain_timeout("1m30s").unwrap(),
            Duration::from_secs(90)
        );
        assert!(parse_drain_timeout("25").unwrap_err().contains("25s"));
        assert!(
            parse_drain_timeout("100ms")
                .unwrap_err()
                .contains("shorter")
        );
    }

    /// Durations that would overflow the clock when added to now are
    /// refused with the limit, not a panic at the hook.
    #[test]
    fn huge_durations_are_refused_not_a_panic() {
        for parse in [parse_drain_timeout, parse_duration, parse_linger] {
            let e = parse("100000000y").unwrap_err();
            assert!(e.contains("longer than 1day"), "{e}");
            assert!(parse("24h").is_ok());
        }
    }

    #[test]
    fn a_listen_address_without_its_form_says_which_form() {
        assert_eq!(
            parse_listen("[::]:10266").unwrap(),
            "[::]:10266".parse().unwrap()
        );
        let e = parse_listen("10266").unwrap_err();
        assert!(
            e.contains("[::]:10266") && e.contains("0.0.0.0:10266"),
            "{e}"
        );
        assert!(
            parse_listen("localhost")
                .unwrap_err()
                .contains("address with a port")
        );
    }

    #[test]
    fn log_levels_are_level_names_or_filters_and_nothing_else() {
        assert_eq!(parse_log_level("info").unwrap(), "info");
        assert_eq!(parse_log_level("WARNING").unwrap(), "warn");
        assert_eq!(
            parse_log_level("nginx_drain=debug, warn").unwrap(),
            "nginx_drain=debug,warn"
        );
        // Read as a target, these would turn every line off.
        for bad in ["verbose", "warnings", "loud", ""] {
            let e = parse_log_level(bad).unwrap_err();
            assert!(e.contains("use error, warn, info"), "{bad}: {e}");
        }
        assert!(parse_log_level("nginx_drain=debg").is_err());
    }

    #[test]
    fn peers_are_addresses_or_networks() {
        assert_eq!(parse_net("10.0.0.1").unwrap().to_string(), "10.0.0.1/32");
        assert_eq!(parse_net("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("::1").unwrap().to_string(), "::1/128");
        assert!(parse_net("node").unwrap_err().contains("CIDR"));
    }

    #[test]
    fn every_flag_reads_its_env_var() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        let serve = cmd.find_subcommand("serve").unwrap();
        for arg in serve.get_arguments() {
            let long = arg.get_long().unwrap_or_default();
            if long == "help" || long == "version" {
                continue;
            }
            let expected = format!("NGINX_DRAIN_{}", long.to_uppercase().replace('-', "_"));
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(expected.as_str()),
                "--{long}"
            );
        }
    }
}
