//! The drain's deadlines, computed once from the hook's arrival.
//!
//! Pure arithmetic on monotonic instants, so that the rule can be read and
//! tested without NGINX.
//!
//! Invariants kept here: the answer goes out before the budget ends
//! (`give_up_at`), the escalation leaves NGINX's fast shutdown room before
//! that, and SIGQUIT is never later than `latest_sigquit`.

use std::time::Duration;

use tokio::time::Instant;

use crate::vocab::QuitReason;

/// Time we keep between giving up and the end of the budget, to write the
/// answer before the kubelet stops waiting.
pub(crate) const ANSWER_MARGIN: Duration = Duration::from_millis(250);

/// How long NGINX's fast shutdown may take: its master re-sends SIGTERM with
/// a doubling delay from 50 ms and SIGKILLs workers after about 1.5 s.
pub(crate) const FAST_SHUTDOWN_ALLOWANCE: Duration = Duration::from_secs(2);

/// The shortest `--drain-timeout` we accept: below this there is no room for
/// a graceful quit *and* an escalation.
pub(crate) const MIN_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    /// When the hook arrived; the budget counts from here.
    pub(crate) start: Instant,
    /// The end of the budget: the answer must be out before it.
    pub(crate) end: Instant,
    /// Send SIGTERM if NGINX is still running at this point.
    pub(crate) escalate_at: Instant,
    /// Answer `timeout` if NGINX is still running at this point.
    pub(crate) give_up_at: Instant,
}

impl Budget {
    /// Splits `timeout` counted from `start`: graceful quit until
    /// `escalate_at`, fast shutdown until `give_up_at`, then the answer.
    ///
    /// Both margins shrink with short budgets (at most a tenth and three
    /// tenths of the budget) so that a short budget still spends most of its
    /// time on the graceful quit.
    pub(crate) fn new(start: Instant, timeout: Duration) -> Budget {
        let answer = ANSWER_MARGIN.min(timeout / 10);
        let fast = FAST_SHUTDOWN_ALLOWANCE.min(timeout * 3 / 10);
        let end = start + timeout;
        let give_up_at = end - answer;
        Budget {
            start,
            end,
            escalate_at: give_up_at - fast,
            give_up_at,
        }
    }

    pub(crate) fn left(&self, now: Instant) -> Duration {
        self.end.saturating_duration_since(now)
    }
}

/// After its `worker_shutdown_timeout` fires, NGINX still needs a moment to
/// close its connections and exit.
pub(crate) const NGINX_EXIT_ALLOWANCE: Duration = Duration::from_secs(1);

/// The longest `worker_shutdown_timeout` that lets NGINX close its
/// long-lived connections itself before the escalation point, even when
/// SIGQUIT comes as late as the drain allows: the escalation point
/// (`timeout` - 2.25 s) less the latest SIGQUIT (`--max-delay`, or earlier
/// when the budget is short: [`latest_sigquit`]) less 1 s for NGINX's exit.
/// With the defaults (25 s, 15 s): 6.75 s.
pub(crate) fn max_worker_shutdown_timeout(timeout: Duration, max_delay: Duration) -> Duration {
    let b = Budget::new(Instant::now(), timeout);
    let (latest, _) = latest_sigquit(&b, timeout, max_delay);
    (b.escalate_at - latest).saturating_sub(NGINX_EXIT_ALLOWANCE)
}

/// The rule behind [`max_worker_shutdown_timeout`], in words with numbers.
pub(crate) fn worker_shutdown_rule(timeout: Duration, max_delay: Duration) -> String {
    let b = Budget::new(Instant::now(), timeout);
    let (latest, _) = latest_sigquit(&b, timeout, max_delay);
    let f = |d: Duration| humantime::format_duration(d).to_string();
    format!(
        "escalation {} after the hook - latest SIGQUIT {} - 1s for nginx to exit = {}",
        f(b.escalate_at - b.start),
        f(latest - b.start),
        f(max_worker_shutdown_timeout(timeout, max_delay))
    )
}

/// The latest time SIGQUIT may go out: `--max-delay` after the hook, or
/// earlier when the budget needs the time for the graceful quit itself
/// (a quarter of the budget, at most 5 s, before the escalation point).
pub(crate) fn latest_sigquit(
    budget: &Budget,
    timeout: Duration,
    max_delay: Duration,
) -> (Instant, QuitReason) {
    let reserve = (timeout / 4).min(Duration::from_secs(5));
    let by_budget = budget
        .escalate_at
        .checked_sub(reserve)
        .unwrap_or(budget.start)
        .max(budget.start);
    let by_max = budget.start + max_delay;
    if by_max <= by_budget {
        (by_max, QuitReason::MaxDelay)
    } else {
        (by_budget, QuitReason::Budget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_shutdown_timeout_fits_between_max_delay_and_the_escalation() {
        let d = |s| Duration::from_secs(s);
        assert_eq!(
            max_worker_shutdown_timeout(d(55), d(30)),
            Duration::from_millis(21_750)
        );
        assert_eq!(
            max_worker_shutdown_timeout(d(25), d(15)),
            Duration::from_millis(6_750)
        );
        // A short budget moves the latest SIGQUIT earlier (8 s: 3.75 s).
        assert_eq!(max_worker_shutdown_timeout(d(8), d(15)), d(1));
        assert_eq!(
            max_worker_shutdown_timeout(d(8), d(1)),
            Duration::from_millis(3_750)
        );
        assert!(
            worker_shutdown_rule(d(25), d(15))
                .contains("escalation 22s 750ms after the hook - latest SIGQUIT 15s")
        );
    }

    #[test]
    fn latest_sigquit_is_max_delay_unless_the_budget_needs_the_time() {
        let t0 = Instant::now();
        let b = Budget::new(t0, Duration::from_secs(25));
        assert_eq!(
            latest_sigquit(&b, Duration::from_secs(25), Duration::from_secs(15)),
            (t0 + Duration::from_secs(15), QuitReason::MaxDelay)
        );
        // escalate_at 22.75 s less 5 s reserve: 17.75 s.
        assert_eq!(
            latest_sigquit(&b, Duration::from_secs(25), Duration::from_secs(30)),
            (t0 + Duration::from_millis(17_750), QuitReason::Budget)
        );
        let short = Budget::new(t0, Duration::from_secs(2));
        let (at, _) = latest_sigquit(&short, Duration::from_secs(2), Duration::from_secs(15));
        assert!(at >= t0 && at < short.escalate_at);
    }

    #[test]
    fn default_budget_escalates_2_25s_before_the_end() {
        let t0 = Instant::now();
        let b = Budget::new(t0, Duration::from_secs(25));
        assert_eq!(b.end - t0, Duration::from_secs(25));
        assert_eq!(b.give_up_at - t0, Duration::from_millis(24_750));
        assert_eq!(b.escalate_at - t0, Duration::from_millis(22_750));
    }

    #[test]
    fn short_budget_keeps_most_of_its_time_for_the_graceful_quit() {
        let t0 = Instant::now();
        let b = Budget::new(t0, Duration::from_secs(2));
        assert_eq!(b.give_up_at - t0, Duration::from_millis(1800));
        assert_eq!(b.escalate_at - t0, Duration::from_millis(1200));
        assert!(b.start < b.escalate_at && b.escalate_at < b.give_up_at && b.give_up_at < b.end);
    }
}
