//! The pod's wiring, checked when the sidecar starts and whenever the NGINX
//! master changes: what would make a drain fail, found at pod start rather
//! than at the first rollout, when nothing can be done about it.
//!
//! Each problem names its fix. *Blocking* problems (the hook cannot work at
//! all: no shared PID namespace, no permission to signal NGINX, a listen
//! address the kubelet cannot reach, an access rule that refuses the
//! kubelet) make `/wiring` answer 503, which the
//! chart uses as the sidecar's readiness probe: a misconfigured pod never
//! turns Ready, so a rollout stalls on its first new pod while the old pods
//! keep serving, and `kubectl describe` shows the fix. Nothing gates NGINX's
//! start (the native sidecar has no startup probe), so no check can
//! deadlock the pod. Other problems (the budget against the grace period,
//! NGINX's `worker_shutdown_timeout`, the destroy events) are warnings: the
//! log, the metric `nginx_drain_wiring_problems{check}` and `/status`.
//!
//! Pure: the checks read what [`Observed`] says; the owner and the wiring
//! gather it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::auth::KubeletSeen;
use crate::budget;
use crate::nginx::config::ShutdownTimeout;
use crate::vocab::{ArrivalsSeen, CensusMethod, CensusSource, Check, Problem};

/// What the checks look at.
#[derive(Debug, Clone)]
pub(crate) struct Observed {
    /// The sidecar's own pid: 1 means a PID namespace of its own.
    pub(crate) own_pid: u32,
    pub(crate) listen: SocketAddr,
    /// The pod's IP (`POD_IP`, from the downward API), when given.
    pub(crate) pod_ip: Option<IpAddr>,
    /// Running in a pod (outside one, a loopback `--listen` is fine).
    pub(crate) in_pod: bool,
    /// The null signal's answer for the current master (`None`: no master).
    pub(crate) signal: Option<Result<(), String>>,
    pub(crate) census_method: CensusMethod,
    pub(crate) census: CensusSource,
    /// What the monitor sees of arrivals; None before its first census
    /// (it has not said yet whether it watches the destroy events).
    pub(crate) arrivals_seen: Option<ArrivalsSeen>,
    pub(crate) drain_timeout: Duration,
    pub(crate) max_delay: Duration,
    /// `--grace-period` (the pod's terminationGracePeriodSeconds), when given.
    pub(crate) grace_period: Option<Duration>,
    /// NGINX's worker_shutdown_timeout for the current master.
    pub(crate) shutdown_timeout: Option<ShutdownTimeout>,
    /// With `--allow-kubelet`: the rule and what the kubelet's requests
    /// showed of it.
    pub(crate) hook_access: Option<HookAccess>,
    /// No NGINX master found since the sidecar started, for longer than
    /// `--nginx-start-timeout`.
    pub(crate) nginx_missing: Option<NginxMissing>,
}

/// NGINX not found for longer than it may take to start.
#[derive(Debug, Clone)]
pub(crate) struct NginxMissing {
    /// How long it has been searched for.
    pub(crate) searched: Duration,
    /// What the last search found instead.
    pub(crate) why: String,
}

/// The `nginx_found` problem in words, with the fix.
pub(crate) fn nginx_missing_message(m: &NginxMissing) -> String {
    format!(
        "no nginx master found in the {} since the sidecar started{}: check that the pod shares its PID namespace (shareProcessNamespace: true), that --nginx-pid-file names the file of NGINX's `pid` directive (as the sidecar sees it, through its own mounts), and that the master's title starts with \"nginx: master process\"; if NGINX takes longer to start here, raise --nginx-start-timeout",
        humantime::format_duration(Duration::from_secs(m.searched.as_secs())),
        if m.why.is_empty() {
            String::new()
        } else {
            format!(" ({})", m.why)
        }
    )
}

/// The kubelet-only access rule as the checks see it.
#[derive(Debug, Clone)]
pub(crate) struct HookAccess {
    /// The rule in words.
    pub(crate) rule: String,
    /// It names at least one address the kubelet may call from.
    pub(crate) knows_an_address: bool,
    pub(crate) seen: KubeletSeen,
}

/// The kubelet's shortest stop after a hook: the budget must end this long
/// before the grace period.
const KUBELET_MINIMUM: Duration = Duration::from_secs(2);

/// Every failed check, in [`Check`] order.
pub(crate) fn problems(o: &Observed) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut fail = |check: Check, message: String| {
        out.push(Problem {
            check,
            blocking: check.is_blocking(),
            message,
        });
    };
    let d = |d: Duration| humantime::format_duration(d).to_string();
    if o.own_pid == 1 {
        fail(
            Check::SharedPidNamespace,
            "the sidecar is PID 1 of a PID namespace of its own, so it cannot see NGINX: set shareProcessNamespace: true in the pod spec".into(),
        );
    }
    if let Some(Err(why)) = &o.signal {
        fail(Check::SignalPermission, why.clone());
    }
    let ip = o.listen.ip();
    if ip.is_loopback() && (o.in_pod || o.pod_ip.is_some()) {
        fail(
            Check::ListenReachable,
            format!(
                "--listen {} is a loopback address: the kubelet calls the hook on the pod IP and cannot reach it; listen on [::]:{port} (or 0.0.0.0:{port})",
                o.listen,
                port = o.listen.port()
            ),
        );
    } else if let Some(pod) = o.pod_ip
        && !ip.is_unspecified()
        && ip != pod
    {
        fail(
            Check::ListenReachable,
            format!(
                "--listen {} is not the pod IP {pod}: the kubelet calls the hook on the pod IP; listen on [::]:{port}",
                o.listen,
                port = o.listen.port()
            ),
        );
    }
    if let Some(m) = &o.nginx_missing {
        fail(Check::NginxFound, nginx_missing_message(m));
    }
    if o.census == CensusSource::Unavailable {
        fail(
            Check::Census,
            "no connection census can be taken (netlink and /proc/net/tcp both failed): every drain waits --max-delay before SIGQUIT; allow NETLINK_SOCK_DIAG in the seccomp profile, or make /proc/net/tcp readable".into(),
        );
    }
    if o.census_method != CensusMethod::Proc && o.arrivals_seen == Some(ArrivalsSeen::CensusOnly) {
        fail(
            Check::DestroyEvents,
            "the kernel's TCP destroy events are not available (NETLINK_SOCK_DIAG refused?): connections that clients close between two censuses go uncounted and the quiet period may be judged on too few arrivals; allow NETLINK_SOCK_DIAG sockets in the seccomp profile".into(),
        );
    }
    if let Some(grace) = o.grace_period
        && o.drain_timeout + KUBELET_MINIMUM > grace
    {
        fail(
            Check::Budget,
            format!(
                "--drain-timeout {} does not end {} before the grace period {}: the kubelet would SIGKILL NGINX mid-drain; lower --drain-timeout to at most {} or raise terminationGracePeriodSeconds",
                d(o.drain_timeout),
                d(KUBELET_MINIMUM),
                d(grace),
                d(grace.saturating_sub(KUBELET_MINIMUM))
            ),
        );
    }
    let limit = budget::max_worker_shutdown_timeout(o.drain_timeout, o.max_delay);
    match &o.shutdown_timeout {
        Some(ShutdownTimeout::Set(t)) if *t > limit => fail(
            Check::WorkerShutdownTimeout,
            format!(
                "nginx's worker_shutdown_timeout {} is longer than the budget leaves it ({}): one WebSocket or stream open at the hook makes the drain forced; set it to at most {}",
                d(*t),
                budget::worker_shutdown_rule(o.drain_timeout, o.max_delay),
                d(limit)
            ),
        ),
        Some(ShutdownTimeout::Unset) => fail(
            Check::WorkerShutdownTimeout,
            format!(
                "nginx's worker_shutdown_timeout is not set: one WebSocket or stream open at the hook holds NGINX until the sidecar's SIGTERM and the drain is forced; set it to at most {}",
                d(limit)
            ),
        ),
        Some(ShutdownTimeout::Unknown(why)) => fail(
            Check::WorkerShutdownTimeout,
            format!(
                "nginx's worker_shutdown_timeout cannot be checked against the budget ({why}): give it with --worker-shutdown-timeout (it should be at most {}), so that connections NGINX closes at its timer are told from cut ones",
                d(limit)
            ),
        ),
        None => {}
        Some(ShutdownTimeout::Set(_)) => {}
    }
    if let Some(h) = &o.hook_access
        && !h.seen.admitted
    {
        if let Some(ip) = h.seen.refused.first() {
            let from: Vec<String> = h.seen.refused.iter().map(ToString::to_string).collect();
            fail(
                Check::HookAccess,
                format!(
                    "the kubelet calls this pod from {} (its probes' User-Agent), which --allow-kubelet refuses (it admits {}): at the first rollout the hook would be refused and NGINX stopped undrained; allow the address with --allow-cidr {} (chart: hookAccess.allowCIDRs)",
                    from.join(", "),
                    h.rule,
                    ipnet::IpNet::from(*ip)
                ),
            );
        } else if !h.knows_an_address && o.in_pod {
            fail(
                Check::HookAccess,
                format!(
                    "--allow-kubelet knows no address the kubelet could call from ({}): the pod has no default route and no --node-ip was given; set the env HOST_IP from the downward API's status.hostIP, or allow the kubelet's address with --allow-cidr",
                    h.rule
                ),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Observed {
        Observed {
            own_pid: 42,
            listen: "[::]:10266".parse().unwrap(),
            pod_ip: Some("10.1.2.3".parse().unwrap()),
            in_pod: true,
            signal: Some(Ok(())),
            census_method: CensusMethod::Auto,
            census: CensusSource::Netlink,
            arrivals_seen: Some(ArrivalsSeen::EveryConnection),
            drain_timeout: Duration::from_secs(25),
            max_delay: Duration::from_secs(15),
            grace_period: Some(Duration::from_secs(30)),
            shutdown_timeout: Some(ShutdownTimeout::Set(Duration::from_secs(5))),
            hook_access: Some(HookAccess {
                rule:
                    "the kubelet's addresses (node: 10.0.0.4; default gateway: 10.1.2.1; loopback)"
                        .into(),
                knows_an_address: true,
                seen: KubeletSeen {
                    admitted: true,
                    refused: Vec::new(),
                },
            }),
            nginx_missing: None,
        }
    }

    fn checks(o: &Observed) -> Vec<Check> {
        problems(o).iter().map(|p| p.check).collect()
    }

    /// No master found for longer than NGINX may take to start blocks the
    /// pod's readiness, with the places to look.
    #[test]
    fn nginx_never_found_is_a_blocking_problem() {
        let p = problems(&Observed {
            nginx_missing: Some(NginxMissing {
                searched: Duration::from_millis(61_500),
                why: "no process titled \"nginx: master process\"".into(),
            }),
            ..good()
        });
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].check, Check::NginxFound);
        assert!(p[0].blocking);
        assert!(
            p[0].message.contains("in the 1m 1s since")
                && p[0].message.contains("shareProcessNamespace")
                && p[0].message.contains("--nginx-pid-file")
                && p[0].message.contains("--nginx-start-timeout"),
            "{}",
            p[0].message
        );
    }

    #[test]
    fn a_good_pod_has_no_problem() {
        assert!(problems(&good()).is_empty());
        // What is not known is not checked: no pod IP, no master yet, no
        // grace period given.
        let unknown = Observed {
            pod_ip: None,
            signal: None,
            grace_period: None,
            shutdown_timeout: None,
            ..good()
        };
        assert!(problems(&unknown).is_empty());
    }

    #[test]
    fn each_misconfiguration_is_found_and_names_its_fix() {
        let cases: Vec<(Observed, Check, &str)> = vec![
            (
                Observed {
                    own_pid: 1,
                    ..good()
                },
                Check::SharedPidNamespace,
                "shareProcessNamespace: true",
            ),
            (
                Observed {
                    signal: Some(Err(
                        "cannot send SIGQUIT (EPERM): run as UID 101 or add CAP_KILL".into(),
                    )),
                    ..good()
                },
                Check::SignalPermission,
                "CAP_KILL",
            ),
            (
                Observed {
                    listen: "127.0.0.1:10266".parse().unwrap(),
                    ..good()
                },
                Check::ListenReachable,
                "[::]:10266",
            ),
            (
                Observed {
                    listen: "10.9.9.9:10266".parse().unwrap(),
                    ..good()
                },
                Check::ListenReachable,
                "not the pod IP",
            ),
            (
                Observed {
                    census: CensusSource::Unavailable,
                    ..good()
                },
                Check::Census,
                "NETLINK_SOCK_DIAG",
            ),
            (
                Observed {
                    arrivals_seen: Some(ArrivalsSeen::CensusOnly),
                    ..good()
                },
                Check::DestroyEvents,
                "seccomp",
            ),
            (
                Observed {
                    grace_period: Some(Duration::from_secs(26)),
                    ..good()
                },
                Check::Budget,
                "at most 24s",
            ),
            (
                Observed {
                    shutdown_timeout: Some(ShutdownTimeout::Set(Duration::from_secs(240))),
                    ..good()
                },
                Check::WorkerShutdownTimeout,
                "at most",
            ),
            (
                Observed {
                    shutdown_timeout: Some(ShutdownTimeout::Unset),
                    ..good()
                },
                Check::WorkerShutdownTimeout,
                "not set",
            ),
            (
                Observed {
                    shutdown_timeout: Some(ShutdownTimeout::Unknown("Permission denied".into())),
                    ..good()
                },
                Check::WorkerShutdownTimeout,
                "--worker-shutdown-timeout",
            ),
            (
                Observed {
                    hook_access: Some(HookAccess {
                        rule: "the kubelet's addresses (node: 10.0.0.4; default gateway: none; loopback)".into(),
                        knows_an_address: true,
                        seen: KubeletSeen {
                            admitted: false,
                            refused: vec!["10.1.2.1".parse().unwrap()],
                        },
                    }),
                    ..good()
                },
                Check::HookAccess,
                "--allow-cidr 10.1.2.1/32",
            ),
            (
                Observed {
                    hook_access: Some(HookAccess {
                        rule: "the kubelet's addresses (node: none; default gateway: none; loopback)".into(),
                        knows_an_address: false,
                        seen: KubeletSeen::default(),
                    }),
                    ..good()
                },
                Check::HookAccess,
                "HOST_IP",
            ),
        ];
        for (o, check, fix) in cases {
            let p = problems(&o);
            assert_eq!(checks(&o), [check], "{p:?}");
            assert!(p[0].message.contains(fix), "{check}: {}", p[0].message);
            assert_eq!(p[0].blocking, check.is_blocking());
        }
        // Outside a pod (a test, a demo), loopback is where it should be.
        let local = Observed {
            listen: "127.0.0.1:10266".parse().unwrap(),
            pod_ip: None,
            in_pod: false,
            ..good()
        };
        assert!(problems(&local).is_empty());
        // --census proc chose no destroy events: not a problem.
        let chosen = Observed {
            census_method: CensusMethod::Proc,
            census: CensusSource::Proc,
            arrivals_seen: Some(ArrivalsSeen::CensusOnly),
            ..good()
        };
        assert!(problems(&chosen).is_empty());
        // Before the monitor's first census: not known yet, no warning
        // (it was logged at every start, then cleared).
        let starting = Observed {
            arrivals_seen: None,
            ..good()
        };
        assert!(problems(&starting).is_empty());
    }
}
