//! How a drain that saw NGINX's master exit ended, decided from what was
//! observed and nothing else. Pure, so that every verdict and every message
//! is tested without processes.
//!
//! Invariant kept here: `drained` only when the master exited after our
//! SIGQUIT (or after a quit already under way), with no worker left behind
//! and no SIGTERM sent.

use crate::report::Outcome;

/// What the drain saw by the time the master exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AtExit {
    pub master_pid: i32,
    /// Children still alive when the master exited: it was killed, since a
    /// graceful master exits after its last child.
    pub workers_left: usize,
    /// NGINX was already quitting when the drain began (no SIGQUIT of ours).
    pub already_quitting: bool,
    /// Milliseconds from the hook to our SIGQUIT, if one was sent.
    pub sigquit_after_hook_ms: Option<u64>,
    /// Milliseconds from our SIGQUIT (or the drain's start, without one) to
    /// the exit.
    pub exit_after_quit_ms: u64,
    /// We sent SIGTERM (the escalation) before the exit.
    pub sigterm_sent: bool,
    /// New connections between the hook and SIGQUIT.
    pub arrivals_during_wait: u64,
}

/// The outcome and the one sentence that explains it (and, on failure,
/// what to do).
pub fn classify(o: &AtExit) -> (Outcome, String) {
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
    if o.sigquit_after_hook_ms.is_none() && !o.already_quitting {
        return (
            Outcome::NginxDied,
            format!(
                "nginx master pid {pid} exited before the drain sent SIGQUIT (stopped by something else while nginx-drain waited for traffic to stop); connections arriving after that were refused"
            ),
        );
    }
    if o.sigterm_sent {
        return (
            Outcome::Forced,
            format!(
                "nginx did not finish its requests in time and was stopped with SIGTERM; it exited {quit_ms} ms after SIGQUIT. Requests still in flight were cut: raise terminationGracePeriodSeconds and --drain-timeout, or lower nginx's worker_shutdown_timeout"
            ),
        );
    }
    let waited = o.sigquit_after_hook_ms.unwrap_or(0);
    (
        Outcome::Drained,
        format!(
            "nginx exited gracefully: SIGQUIT {waited} ms after the hook ({} new connections in that time), exit {quit_ms} ms after SIGQUIT; every in-flight request finished",
            o.arrivals_during_wait
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
        }
    }

    #[test]
    fn a_graceful_exit_after_our_sigquit_is_drained() {
        let (o, msg) = classify(&graceful());
        assert_eq!(o, Outcome::Drained);
        assert!(
            msg.contains("SIGQUIT 250 ms after the hook (3 new connections"),
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
    fn our_sigterm_makes_it_forced_and_says_what_to_change() {
        let (o, msg) = classify(&AtExit {
            sigterm_sent: true,
            exit_after_quit_ms: 22_800,
            ..graceful()
        });
        assert_eq!(o, Outcome::Forced);
        assert!(msg.contains("22800 ms after SIGQUIT"), "{msg}");
        assert!(msg.contains("worker_shutdown_timeout"), "{msg}");
    }
}
