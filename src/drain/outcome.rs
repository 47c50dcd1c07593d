//! How a drain that saw NGINX's master exit ended, decided from what was
//! observed and nothing else. Pure, so that every verdict and every message
//! is tested without processes.
//!
//! Which connections were **cut**: NGINX never closes a connection in the
//! middle of its work on its own, except when its `worker_shutdown_timeout`
//! fires (it then closes everything still open and exits) or when it is
//! stopped fast (our SIGTERM). So the connections still open in the last
//! census before the exit were cut when the exit came at or after SIGQUIT +
//! worker_shutdown_timeout, or after our SIGTERM; otherwise NGINX exited
//! because they had finished (a graceful exit comes right after the last
//! request ends). The census samples every 100 ms during a drain, so a
//! request that finished within that last interval before a cut is counted
//! with the cut ones.
//!
//! Invariant kept here: `drained` only when the master exited after our
//! SIGQUIT (or after a quit already under way), with no worker left behind,
//! no SIGTERM sent, and no connection cut.

use std::time::Duration;

use tokio::time::Instant;

use crate::budget::{max_worker_shutdown_timeout, worker_shutdown_rule};
use crate::nginx::config::ShutdownTimeout;
use crate::nginx::process::ExitStatus;
use crate::vocab::{CutBy, Outcome};

/// How much earlier than SIGQUIT + worker_shutdown_timeout an exit may
/// come and still be the timer's (signal delivery, timer granularity).
pub(crate) const TIMER_SLACK: Duration = Duration::from_millis(50);

/// Whether NGINX cut connections, by whom, and when: at our SIGTERM, or
/// when its worker_shutdown_timeout fired (if the exit came then). The
/// connections cut are those open in the last census before that moment.
pub(crate) fn cut_moment(
    sigquit: Option<Instant>,
    sigterm: Option<Instant>,
    exited: Instant,
    shutdown_timeout: &ShutdownTimeout,
) -> Option<(CutBy, Instant)> {
    if let Some(t) = sigterm {
        return Some((CutBy::Sigterm, t));
    }
    let (Some(quit), Some(t)) = (sigquit, shutdown_timeout.duration()) else {
        return None;
    };
    let fired = quit + t;
    (exited + TIMER_SLACK >= fired).then_some((CutBy::NginxWorkerShutdownTimeout, fired))
}

/// What the drain saw by the time the master exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AtExit {
    pub(crate) master_pid: i32,
    /// Children still alive when the master exited: it was killed, since a
    /// graceful master exits after its last child.
    pub(crate) workers_left: usize,
    /// NGINX was already quitting when the drain began (no SIGQUIT of ours).
    pub(crate) already_quitting: bool,
    /// Milliseconds from the hook to our SIGQUIT, if one was sent.
    pub(crate) sigquit_after_hook_ms: Option<u64>,
    /// Milliseconds from our SIGQUIT (or the drain's start, without one) to
    /// the exit.
    pub(crate) exit_after_quit_ms: u64,
    /// We sent SIGTERM (the escalation) before the exit.
    pub(crate) sigterm_sent: bool,
    /// New connections between the hook and SIGQUIT.
    pub(crate) arrivals_during_wait: u64,
    /// Requests on connections already open between the hook and SIGQUIT,
    /// when they were seen (`None`: not seen, without `tcp_info`).
    pub(crate) requests_during_wait: Option<u64>,
    /// Arrivals were still coming when the wait had to end (--max-delay or
    /// the budget): some met NGINX closing.
    pub(crate) still_arriving: bool,
    /// Open in the last census before the exit, and how long before it.
    pub(crate) open_at_exit: u32,
    pub(crate) last_census_before_exit_ms: Option<u64>,
    /// How the master exited, when the kernel showed it.
    pub(crate) exit: ExitStatus,
    pub(crate) cut: Cut,
    pub(crate) shutdown_timeout: ShutdownTimeout,
    pub(crate) drain_timeout: Duration,
    pub(crate) max_delay: Duration,
}

/// The cut connections, summed up for the message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Cut {
    pub(crate) by: Option<CutBy>,
    pub(crate) total: u32,
    /// Of those, open since before the hook.
    pub(crate) before_hook: u32,
    /// Ages at the exit, in milliseconds.
    pub(crate) youngest_ms: u64,
    pub(crate) oldest_ms: u64,
}

impl Cut {
    /// "5 connections open since before the hook, 31-40 s old".
    fn describe(&self) -> String {
        let ages = if self.oldest_ms - self.youngest_ms < 1_000 {
            format!("{:.0} s old", self.oldest_ms as f64 / 1e3)
        } else {
            format!(
                "{:.0}-{:.0} s old",
                self.youngest_ms as f64 / 1e3,
                self.oldest_ms as f64 / 1e3
            )
        };
        let during = self.total - self.before_hook;
        match (self.before_hook, during) {
            (n, 0) => format!(
                "{n} connection{} open since before the hook, {ages}: WebSockets or streams that end only when closed, or long downloads",
                plural(n)
            ),
            (0, n) => format!(
                "{n} connection{} opened during the drain, {ages}: requests longer than the budget",
                plural(n)
            ),
            (b, d) => format!(
                "{b} connection{} open since before the hook (WebSockets or streams) and {d} opened during the drain, {ages}",
                plural(b)
            ),
        }
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn timeout_words(t: &ShutdownTimeout) -> String {
    match t {
        ShutdownTimeout::Unset => "it is not set".into(),
        ShutdownTimeout::Unknown(why) => format!("nginx-drain could not read it: {why}"),
        set => format!("it is {set}"),
    }
}

/// The outcome and the one sentence that explains it (and, on failure,
/// what to do).
pub(crate) fn classify(o: &AtExit) -> (Outcome, String) {
    let pid = o.master_pid;
    let quit_ms = o.exit_after_quit_ms;
    if o.workers_left > 0 {
        return (
            Outcome::NginxDied,
            format!(
                "nginx master pid {pid} exited while {} of its workers were still running: it was killed (SIGKILL, OOM?), not drained; in-flight requests may have been cut",
                o.workers_left
            ),
        );
    }
    // The kernel's word, when it gives it: a master killed (SIGKILL, the
    // OOM killer) or exiting on an error did not quit gracefully, even if
    // its workers died with it and left nothing behind.
    match o.exit {
        ExitStatus::Signal(_) => {
            return (
                Outcome::NginxDied,
                format!(
                    "nginx master pid {pid} was {}: not drained; requests in flight ({} connection{} open in the last census) were cut",
                    o.exit,
                    o.open_at_exit,
                    plural(o.open_at_exit)
                ),
            );
        }
        ExitStatus::Code(c) if c != 0 => {
            return (
                Outcome::NginxDied,
                format!(
                    "nginx master pid {pid} ended with {} (an error, not a graceful quit): not drained; see NGINX's error log",
                    o.exit
                ),
            );
        }
        _ => {}
    }
    if o.sigquit_after_hook_ms.is_none() && !o.already_quitting {
        return (
            Outcome::NginxDied,
            format!(
                "nginx master pid {pid} exited before the drain sent SIGQUIT (stopped by something else while nginx-drain waited for traffic to stop); connections arriving after that were refused"
            ),
        );
    }
    let limit = max_worker_shutdown_timeout(o.drain_timeout, o.max_delay);
    if o.sigterm_sent {
        let held = if o.cut.total > 0 {
            format!("it still held {}", o.cut.describe())
        } else {
            "requests still in flight were cut".to_string()
        };
        let advice = if limit < Duration::from_secs(1) {
            format!(
                "The budget leaves no room for nginx to close such connections itself ({}): raise terminationGracePeriodSeconds and --drain-timeout",
                worker_shutdown_rule(o.drain_timeout, o.max_delay)
            )
        } else if o.cut.total == 0 || o.cut.before_hook > 0 {
            format!(
                "Set nginx's worker_shutdown_timeout to at most {} ({}) so that NGINX closes such connections itself inside the budget ({})",
                humantime::format_duration(limit),
                worker_shutdown_rule(o.drain_timeout, o.max_delay),
                timeout_words(&o.shutdown_timeout)
            )
        } else {
            "Raise terminationGracePeriodSeconds and --drain-timeout for requests that long"
                .to_string()
        };
        return (
            Outcome::Forced,
            format!(
                "nginx did not exit within the budget and was stopped with SIGTERM {quit_ms} ms after SIGQUIT: {held}. {advice}"
            ),
        );
    }
    let waited = o.sigquit_after_hook_ms.unwrap_or(0);
    if o.cut.by == Some(CutBy::NginxWorkerShutdownTimeout) {
        return (
            Outcome::StreamsClosed,
            format!(
                "nginx quit gracefully (SIGQUIT {waited} ms after the hook, exit {quit_ms} ms after it), but its worker_shutdown_timeout closed {}; they are listed in connections.cut_peers. Every other request finished",
                o.cut.describe()
            ),
        );
    }
    let tail = match (&o.shutdown_timeout, o.open_at_exit) {
        _ if o.still_arriving => format!(
            "; traffic was still arriving when the wait had to end (--max-delay {}): after SIGQUIT nginx refuses new connections and closes idle keep-alive ones, so a request sent just then failed unless its client retried it. A client pool pinned to this pod (one that reaches it through a ClusterIP keeps its connections) never stops by itself; a balancer that had not yet deregistered the pod does",
            humantime::format_duration(o.max_delay)
        ),
        (ShutdownTimeout::Unknown(why), n) if n > 0 => format!(
            "; {n} connection{} still open in the last census before the exit may have been closed by nginx's worker_shutdown_timeout, which nginx-drain could not read ({why})",
            plural(n)
        ),
        // Still open in the last census: a graceful exit comes after the
        // last request ends, so they ended in between; but workers killed
        // look the same from here (their master then exits 0 too, its
        // children gone), so it is said, not claimed.
        (_, n) if n > 0 => format!(
            "; {n} connection{} open in the last census, {} ms before the exit, ended in between (NGINX exits gracefully only after its last request), unless its workers were killed{}",
            plural(n),
            o.last_census_before_exit_ms.unwrap_or(0),
            if o.exit == ExitStatus::Unknown {
                " (the master's exit status could not be read here)"
            } else {
                ""
            }
        ),
        _ => "; every in-flight request finished".to_string(),
    };
    let seen = match o.requests_during_wait {
        Some(r) => format!(
            "{} new connections and {r} requests on open connections in that time",
            o.arrivals_during_wait
        ),
        None => format!(
            "{} new connections in that time; requests on open connections were not seen",
            o.arrivals_during_wait
        ),
    };
    (
        Outcome::Drained,
        format!(
            "nginx exited gracefully: SIGQUIT {waited} ms after the hook ({seen}), exit {quit_ms} ms after SIGQUIT{tail}"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graceful() -> AtExit {
        AtExit {
            master_pid: 7,
            workers_left: 0,
            already_quitting: false,
            sigquit_after_hook_ms: Some(250),
            exit_after_quit_ms: 40,
            sigterm_sent: false,
            arrivals_during_wait: 3,
            requests_during_wait: Some(0),
            still_arriving: false,
            open_at_exit: 0,
            last_census_before_exit_ms: Some(20),
            exit: ExitStatus::Code(0),
            cut: Cut::default(),
            shutdown_timeout: ShutdownTimeout::Set(Duration::from_secs(4)),
            drain_timeout: Duration::from_secs(25),
            max_delay: Duration::from_secs(15),
        }
    }

    fn websockets() -> Cut {
        Cut {
            by: Some(CutBy::NginxWorkerShutdownTimeout),
            total: 5,
            before_hook: 5,
            youngest_ms: 31_200,
            oldest_ms: 40_100,
        }
    }

    #[test]
    fn a_graceful_exit_after_our_sigquit_is_drained() {
        let (o, msg) = classify(&graceful());
        assert_eq!(o, Outcome::Drained);
        assert!(
            msg.contains(
                "SIGQUIT 250 ms after the hook (3 new connections and 0 requests on open connections"
            ) && msg.contains("every in-flight request finished"),
            "{msg}"
        );
    }

    /// The message never says "every in-flight request finished" while
    /// requests were still arriving when the wait ended, and never counts
    /// requests it could not see.
    #[test]
    fn a_drain_that_quit_on_arriving_traffic_says_so() {
        let (o, msg) = classify(&AtExit {
            still_arriving: true,
            arrivals_during_wait: 0,
            requests_during_wait: Some(2_998),
            ..graceful()
        });
        assert_eq!(o, Outcome::Drained);
        assert!(
            msg.contains("0 new connections and 2998 requests on open connections")
                && msg.contains("still arriving")
                && msg.contains("--max-delay 15s"),
            "{msg}"
        );
        assert!(!msg.contains("every in-flight request finished"), "{msg}");
        let (_, msg) = classify(&AtExit {
            requests_during_wait: None,
            ..graceful()
        });
        assert!(
            msg.contains(
                "3 new connections in that time; requests on open connections were not seen"
            ),
            "{msg}"
        );
    }

    #[test]
    fn a_worker_left_behind_means_killed_whatever_else_happened() {
        for sigterm_sent in [false, true] {
            let (o, msg) = classify(&AtExit {
                workers_left: 2,
                sigterm_sent,
                ..graceful()
            });
            assert_eq!(o, Outcome::NginxDied);
            assert!(msg.contains("2 of its workers"), "{msg}");
        }
    }

    #[test]
    fn an_exit_before_our_sigquit_is_someone_else_unless_nginx_was_quitting() {
        let early = AtExit {
            sigquit_after_hook_ms: None,
            ..graceful()
        };
        let (o, msg) = classify(&early);
        assert_eq!(o, Outcome::NginxDied);
        assert!(msg.contains("before the drain sent SIGQUIT"), "{msg}");
        let (o, _) = classify(&AtExit {
            already_quitting: true,
            ..early
        });
        assert_eq!(o, Outcome::Drained);
    }

    #[test]
    fn forced_by_websockets_names_them_and_advises_a_shutdown_timeout_not_a_longer_grace() {
        let (o, msg) = classify(&AtExit {
            sigterm_sent: true,
            exit_after_quit_ms: 22_800,
            cut: Cut {
                by: Some(CutBy::Sigterm),
                ..websockets()
            },
            shutdown_timeout: ShutdownTimeout::Unset,
            ..graceful()
        });
        assert_eq!(o, Outcome::Forced);
        assert!(
            msg.contains(
                "5 connections open since before the hook, 31-40 s old: WebSockets or streams"
            ),
            "{msg}"
        );
        assert!(
            msg.contains("worker_shutdown_timeout to at most 6s 750ms")
                && msg.contains("it is not set"),
            "{msg}"
        );
        assert!(!msg.contains("terminationGracePeriodSeconds"), "{msg}");
    }

    #[test]
    fn forced_by_a_long_download_advises_a_longer_budget() {
        let (o, msg) = classify(&AtExit {
            sigterm_sent: true,
            cut: Cut {
                by: Some(CutBy::Sigterm),
                total: 1,
                before_hook: 0,
                youngest_ms: 22_000,
                oldest_ms: 22_000,
            },
            ..graceful()
        });
        assert_eq!(o, Outcome::Forced);
        assert!(
            msg.contains("1 connection opened during the drain, 22 s old"),
            "{msg}"
        );
        assert!(msg.contains("terminationGracePeriodSeconds"), "{msg}");
    }

    #[test]
    fn streams_closed_by_nginx_are_a_success_that_says_so() {
        let (o, msg) = classify(&AtExit {
            exit_after_quit_ms: 4_010,
            open_at_exit: 5,
            cut: websockets(),
            ..graceful()
        });
        assert_eq!(o, Outcome::StreamsClosed);
        assert!(o.is_success());
        assert!(
            msg.contains("worker_shutdown_timeout closed 5 connections open since before the hook"),
            "{msg}"
        );
        assert!(!msg.contains("every in-flight request finished"), "{msg}");
    }

    #[test]
    fn an_unreadable_config_with_open_connections_claims_nothing() {
        let (o, msg) = classify(&AtExit {
            open_at_exit: 2,
            shutdown_timeout: ShutdownTimeout::Unknown("EACCES".into()),
            ..graceful()
        });
        assert_eq!(o, Outcome::Drained);
        assert!(!msg.contains("every in-flight request finished"), "{msg}");
        assert!(msg.contains("could not read (EACCES)"), "{msg}");
    }

    #[test]
    fn who_cut_follows_the_timer_and_the_escalation() {
        let t0 = Instant::now();
        let wst = ShutdownTimeout::Set(Duration::from_secs(4));
        let q = Some(t0 + Duration::from_secs(1));
        let at = |ms| t0 + Duration::from_millis(ms);
        // Exit when the timer fires: cut by NGINX, at the timer.
        assert_eq!(
            cut_moment(q, None, at(5_001), &wst),
            Some((CutBy::NginxWorkerShutdownTimeout, at(5_000)))
        );
        // Exit well before it: those requests finished.
        assert_eq!(cut_moment(q, None, at(3_000), &wst), None);
        // No timer known: nothing can be called cut.
        assert_eq!(
            cut_moment(q, None, at(5_000), &ShutdownTimeout::Unset),
            None
        );
        // Our SIGTERM cuts whatever is open at that moment.
        assert_eq!(
            cut_moment(q, Some(at(2_000)), at(2_010), &wst),
            Some((CutBy::Sigterm, at(2_000)))
        );
    }

    proptest::proptest! {
        /// Whatever was seen, the verdict never contradicts it: `drained`
        /// only with nothing cut, no SIGTERM and no worker left; a master
        /// the kernel saw killed is never a success; "every in-flight
        /// request finished" only when no connection was open at the exit
        /// or the exit was seen graceful.
        #[test]
        fn the_verdict_never_contradicts_what_was_seen(
            workers_left in 0usize..3,
            sigquit in proptest::option::of(0u64..20_000),
            already_quitting: bool,
            sigterm_sent: bool,
            open_at_exit in 0u32..4,
            cut_total in 0u32..4,
            cut_by_timer: bool,
            exit in 0u8..4,
            timeout_known in 0u8..3,
            still_arriving: bool,
        ) {
            let cut = Cut {
                by: (cut_total > 0).then_some(if cut_by_timer {
                    CutBy::NginxWorkerShutdownTimeout
                } else {
                    CutBy::Sigterm
                }),
                total: cut_total,
                before_hook: cut_total / 2,
                youngest_ms: 1_000,
                oldest_ms: 2_000,
            };
            let o = AtExit {
                workers_left,
                sigquit_after_hook_ms: sigquit,
                already_quitting,
                sigterm_sent,
                open_at_exit,
                cut,
                still_arriving,
                exit: match exit {
                    0 => ExitStatus::Code(0),
                    1 => ExitStatus::Code(1),
                    2 => ExitStatus::Signal(9),
                    _ => ExitStatus::Unknown,
                },
                shutdown_timeout: match timeout_known {
                    0 => ShutdownTimeout::Set(Duration::from_secs(5)),
                    1 => ShutdownTimeout::Unset,
                    _ => ShutdownTimeout::Unknown("unreadable".into()),
                },
                ..graceful()
            };
            let (outcome, msg) = classify(&o);
            if outcome == Outcome::Drained {
                proptest::prop_assert!(!o.sigterm_sent && o.workers_left == 0, "{msg}");
                proptest::prop_assert!(o.cut.by != Some(CutBy::NginxWorkerShutdownTimeout), "{msg}");
            }
            if matches!(o.exit, ExitStatus::Signal(_)) {
                proptest::prop_assert!(!outcome.is_success(), "{outcome:?}: {msg}");
            }
            if msg.contains("every in-flight request finished") {
                proptest::prop_assert!(outcome.is_success(), "{msg}");
                proptest::prop_assert!(o.open_at_exit == 0, "{msg}");
                proptest::prop_assert!(!o.still_arriving, "{msg}");
            }
        }
    }
}
