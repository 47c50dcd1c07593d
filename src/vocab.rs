//! The words of the sidecar: the enums and small facts every layer
//! shares (outcomes, quit reasons, phases, where counts come from, the
//! wiring checks, how failures are answered, how it logs), with their
//! JSON and log names written once (`words!`). Nothing here does I/O or
//! knows another module of the crate: it is the bottom layer (see
//! ARCHITECTURE.md).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Serialize;

/// How a drain ended. `drained`, `streams_closed` and `not_running` are
/// successes ([`Outcome::is_success`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// NGINX quit gracefully: every worker finished and the master exited,
    /// and no connection was cut.
    Drained,
    /// NGINX quit gracefully, but closed connections that had not ended by
    /// themselves (WebSockets, streams) at its `worker_shutdown_timeout`, as
    /// the operator configured it. A success: the hook is answered 200.
    StreamsClosed,
    /// The graceful quit did not finish in the budget; NGINX was stopped
    /// with SIGTERM (fast shutdown) before the budget ended.
    Forced,
    /// NGINX was still running when the budget ended, even after SIGTERM.
    Timeout,
    /// There was no NGINX master to drain.
    NotRunning,
    /// The master exited while its workers were still running: it was killed
    /// (e.g. SIGKILL, OOM), so in-flight requests may have been cut.
    NginxDied,
    /// The sidecar could not act (permissions, a pid file naming another
    /// process, several masters).
    Error,
}

impl Outcome {
    pub(crate) fn is_success(self) -> bool {
        matches!(
            self,
            Outcome::Drained | Outcome::StreamsClosed | Outcome::NotRunning
        )
    }
}
words!(Outcome {
    Drained => "drained",
    StreamsClosed => "streams_closed",
    Forced => "forced",
    Timeout => "timeout",
    NotRunning => "not_running",
    NginxDied => "nginx_died",
    Error => "error",
});

impl Serialize for Outcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Who ended the connections that were still open when NGINX exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CutBy {
    /// NGINX itself, when its `worker_shutdown_timeout` fired after SIGQUIT.
    NginxWorkerShutdownTimeout,
    /// NGINX's fast shutdown after the sidecar's SIGTERM (the escalation).
    Sigterm,
}

/// Why SIGQUIT went out when it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum QuitReason {
    /// No new connection for the quiet period.
    Quiet,
    /// `--max-delay` after the hook, arrivals or not.
    MaxDelay,
    /// The budget needs the rest of its time for the graceful quit.
    Budget,
    /// NGINX was already shutting down: nothing to wait for.
    AlreadyQuitting,
}
words!(QuitReason { Quiet => "quiet", MaxDelay => "max_delay", Budget => "budget", AlreadyQuitting => "already_quitting" });

/// What a drain is doing, as `/status` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DrainPhase {
    /// NGINX serves while new connections still arrive.
    AwaitQuiet,
    /// SIGQUIT is being sent.
    Quit,
    /// Waiting for NGINX to exit.
    AwaitExit,
    /// SIGTERM was sent: the budget is nearly spent.
    Forcing,
    /// Over; the counts are final.
    Done,
}
words!(DrainPhase { AwaitQuiet => "await_quiet", Quit => "quit", AwaitExit => "await_exit", Forcing => "forcing", Done => "done" });

/// Where the connection counts come from, as the report and `/status` say
/// (what [`CensusMethod`] turned out to be).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CensusSource {
    /// NETLINK_SOCK_DIAG.
    Netlink,
    /// /proc/net/tcp and tcp6, the fallback.
    Proc,
    /// No census can be taken.
    Unavailable,
}
words!(CensusSource { Netlink => "netlink", Proc => "proc", Unavailable => "unavailable" });

/// Which arrivals are seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ArrivalsSeen {
    /// Censuses and the kernel's destroy events: every connection.
    EveryConnection,
    /// Censuses alone: connections that clients closed first between two
    /// censuses are not seen.
    CensusOnly,
}
words!(ArrivalsSeen { EveryConnection => "every_connection", CensusOnly => "census_only" });

/// Where the census comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CensusMethod {
    /// NETLINK_SOCK_DIAG, falling back to /proc when netlink is refused.
    Auto,
    /// NETLINK_SOCK_DIAG only.
    Netlink,
    /// /proc/net/tcp and /proc/net/tcp6 only.
    Proc,
}
words!(CensusMethod { Auto => "auto", Netlink => "netlink", Proc => "proc" });

/// How signals reach the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SignalMethod {
    /// Through a pidfd: never to a recycled pid.
    Pidfd,
    /// `kill(2)` after an identity check, on kernels without pidfds.
    Kill,
}
words!(SignalMethod { Pidfd => "pidfd", Kill => "kill" });

/// What to do with the hook's connection when a drain did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Answer 500 with the report.
    Status,
    /// Reset the connection (TCP RST, no response), so that the kubelet
    /// records a FailedPreStopHook event: it ignores status codes.
    Reset,
}
words!(OnFailure { Status => "status", Reset => "reset" });

/// A thing the checks look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// The pod shares one PID namespace: the sidecar can see NGINX.
    SharedPidNamespace,
    /// The sidecar may signal the NGINX master (same UID, or CAP_KILL).
    SignalPermission,
    /// The kubelet can reach the hook on `--listen`.
    ListenReachable,
    /// A connection census can be taken.
    Census,
    /// The kernel's destroy events are watched (every connection counted).
    DestroyEvents,
    /// The drain's budget ends before the pod's grace period.
    Budget,
    /// NGINX's `worker_shutdown_timeout` fits the budget.
    WorkerShutdownTimeout,
    /// `--allow-kubelet` admits the address the kubelet calls from.
    HookAccess,
    /// An NGINX master was found within `--nginx-start-timeout`.
    NginxFound,
}
words!(Check {
    SharedPidNamespace => "shared_pid_namespace",
    SignalPermission => "signal_permission",
    ListenReachable => "listen_reachable",
    Census => "census",
    DestroyEvents => "destroy_events",
    Budget => "budget",
    WorkerShutdownTimeout => "worker_shutdown_timeout",
    HookAccess => "hook_access",
    NginxFound => "nginx_found",
});

impl Check {
    /// The hook cannot work at all while this fails.
    pub fn is_blocking(self) -> bool {
        matches!(
            self,
            Check::SharedPidNamespace
                | Check::SignalPermission
                | Check::ListenReachable
                | Check::HookAccess
                | Check::NginxFound
        )
    }
}

/// A failed check and its fix, in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub check: Check,
    pub blocking: bool,
    pub message: String,
}

/// How the sidecar logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// For humans.
    Text,
    /// One JSON object a line, for log pipelines.
    Json,
}
words!(LogFormat { Text => "text", Json => "json" });

/// An address as the kernel's IPv4 form when it is an IPv4-mapped IPv6
/// one (`::ffff:10.0.0.1` is `10.0.0.1`): a dual-stack listener reports
/// IPv4 peers mapped, a census and a rule compare them unmapped.
pub(crate) fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// [`unmapped`], for a socket address.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(unmapped(addr.ip()), addr.port())
}

/// A value logged as a field (`ports = %vocab::json(&ports)`): JSON text,
/// which JSON lines embed as a value and text lines show as it is.
pub(crate) fn json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("\"unserializable: {e}\""))
}

/// An NGINX time (`worker_shutdown_timeout 240s;`, and the controllers'
/// ConfigMap keys that become one): `30s`, `1m30s`, `500ms`, or a bare
/// number of seconds.
pub(crate) fn parse_nginx_time(v: &str) -> Option<Duration> {
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse().ok().map(Duration::from_secs);
    }
    humantime::parse_duration(v).ok()
}

/// `text` cut to at most `limit` bytes at a character boundary, with `...`
/// where it was cut (an API server's field limit: an Event's message, an
/// admission warning).
pub(crate) fn cut_to(mut text: String, limit: usize) -> String {
    if text.len() > limit {
        let mut at = limit.saturating_sub(3);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
        text.push_str("...");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_times() {
        assert_eq!(parse_nginx_time("240s"), Some(Duration::from_secs(240)));
        assert_eq!(parse_nginx_time("10"), Some(Duration::from_secs(10)));
        assert_eq!(parse_nginx_time("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_nginx_time("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_nginx_time("soon"), None);
    }
}
