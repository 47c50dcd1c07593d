//! One drain of one NGINX master, as a small explicit state machine:
//!
//! ```text
//! AwaitQuiet ──no new connection for the quiet period──▶ Quit
//!   (NGINX keeps serving)   (or --max-delay, or the budget)  │ SIGQUIT
//!                                                            ▼
//!             done (drained | nginx_died) ◀──exit── AwaitExit
//!                                                      │ escalate_at
//!                                                      ▼
//!             done (forced) ◀──exit── Forcing (SIGTERM sent)
//!             done (timeout) ◀──give_up_at──┘
//! ```
//!
//! Waiting is event-driven: the master's pidfd (its exit), one pidfd per
//! worker (progress), the census monitor's samples, and the budget's
//! deadlines. A 1 s tick only writes a progress line to the log.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

use super::budget::Budget;
use super::quiet::{QuitReason, quiet_period, sigquit_at};
use crate::nginx::process::ChildWatch;
use crate::nginx::{MasterHandle, Sig, SignalError, Worker, read_proc, workers};
use crate::report::{
    Clock, Durations, Outcome, Progress, Report, SamplePoint, Series, Snapshot, TrafficReport, ms,
};
use crate::sockets::Method;
use crate::sockets::monitor::{FAST_EVERY, Monitor, View};

/// How often a progress line is logged.
const PROGRESS_LOG_EVERY: Duration = Duration::from_secs(1);
/// At most this many points of the timeline are kept in the report.
const SERIES_CAP: usize = 600;

/// The states of one drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitQuiet,
    Quit,
    AwaitExit,
    Forcing,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::AwaitQuiet => "await_quiet",
            Phase::Quit => "quit",
            Phase::AwaitExit => "await_exit",
            Phase::Forcing => "forcing",
        }
    }
}

/// The traffic-aware wait's settings.
#[derive(Debug, Clone, Copy)]
pub struct WaitPolicy {
    pub min_delay: Duration,
    pub max_delay: Duration,
}

/// What the drain needs to know about the hook that started it.
pub struct Request {
    pub id: String,
    pub clock: Clock,
    pub peer: String,
    pub timeout: Duration,
    pub policy: WaitPolicy,
}

/// The latest time SIGQUIT may go out: `--max-delay` after the hook, or
/// earlier when the budget needs the time for the graceful quit itself
/// (a quarter of the budget, at most 5 s, before the escalation point).
pub fn latest_sigquit(
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

/// Accumulates what was observed; turned into the report at the end.
struct Record {
    req: Request,
    workers_at_start: Vec<Worker>,
    signal_method: &'static str,
    master_pid: i32,
    master_title: String,
    sigquit: Option<Instant>,
    sigterm: Option<Instant>,
    exited: Option<Instant>,
    // Traffic.
    census: &'static str,
    ports: Vec<u16>,
    rate_before: f64,
    arrivals_during_wait: u64,
    last_arrival: Option<Instant>,
    quiet_ms: u64,
    quiet_reason: String,
    quit_reason: Option<QuitReason>,
    open_now: BTreeMap<u16, u32>,
    open_at_sigquit: BTreeMap<u16, u32>,
    last_closed: Option<Instant>,
    series: Series,
    last_seq: u64,
}

impl Record {
    /// Takes in a census sample (once per sample).
    fn observe(&mut self, view: &View) {
        let s = &view.sample;
        let Some(at) = s.at else { return };
        if s.seq == self.last_seq || at < self.req.clock.mono {
            return;
        }
        self.last_seq = s.seq;
        self.census = method_name(view);
        self.ports = view.ports.iter().copied().collect();
        self.open_now = s.open.clone();
        if self.sigquit.is_none() {
            // A sample's arrivals happened over its span; count only the
            // share after the hook (the first sample straddles it).
            let hook = self.req.clock.mono;
            let start = at.checked_sub(s.span).unwrap_or(at);
            let share = if start >= hook || s.span.is_zero() {
                1.0
            } else {
                at.saturating_duration_since(hook).as_secs_f64() / s.span.as_secs_f64()
            };
            self.arrivals_during_wait += (f64::from(s.arrivals) * share).round() as u64;
        } else if self.last_closed.is_none() && s.open_total() == 0 {
            self.last_closed = Some(at);
        }
        if let Some(t) = view.log.last_arrival() {
            self.last_arrival = Some(t);
        }
        self.series.push(SamplePoint {
            t_ms: self.req.clock.millis_since_start(at),
            arrivals: s.arrivals,
            open: s.open_total(),
        });
    }

    fn finish(self, outcome: Outcome, message: String, workers_left: Vec<Worker>) -> Report {
        let clock = self.req.clock;
        let now = Instant::now();
        let stamp = |t: Option<Instant>| t.map(|t| clock.stamp(t));
        let traffic = self.quit_reason.map(|reason| TrafficReport {
            census: self.census,
            ports: self.ports.clone(),
            arrivals_per_second_before_hook: (self.rate_before * 100.0).round() / 100.0,
            arrivals_during_wait: self.arrivals_during_wait,
            last_arrival_at: stamp(self.last_arrival),
            quiet_period_ms: self.quiet_ms,
            quiet_period_reason: self.quiet_reason.clone(),
            sigquit_reason: reason,
            wait_before_sigquit_ms: self.sigquit.map_or(0, |t| clock.millis_since_start(t)),
            connections_at_sigquit: self.open_at_sigquit.clone(),
            last_connection_closed_at: stamp(self.last_closed),
            last_connection_closed_after_sigquit_ms: match (self.sigquit, self.last_closed) {
                (Some(q), Some(c)) => Some(ms(c.saturating_duration_since(q))),
                _ => None,
            },
            samples_every_ms: self.series.every_ms,
            samples: self.series.points.clone(),
        });
        Report {
            drain_id: self.req.id,
            outcome,
            message,
            master_pid: Some(self.master_pid),
            master_title: Some(self.master_title),
            workers_at_start: self.workers_at_start,
            workers_left,
            signal_method: Some(self.signal_method),
            hook_received_at: clock.stamp(clock.mono),
            hook_peer: self.req.peer,
            sigquit_at: stamp(self.sigquit),
            sigterm_at: stamp(self.sigterm),
            exited_at: stamp(self.exited),
            answered_at: clock.stamp(now),
            durations: Durations {
                hook_to_sigquit_ms: self.sigquit.map(|t| clock.millis_since_start(t)),
                sigquit_to_exit_ms: match (self.sigquit, self.exited) {
                    (Some(q), Some(e)) => Some(ms(e.saturating_duration_since(q))),
                    _ => None,
                },
                total_ms: clock.millis_since_start(now),
            },
            drain_timeout_ms: ms(self.req.timeout),
            traffic,
        }
    }
}

fn method_name(view: &View) -> &'static str {
    if view.error.is_some() && view.sample.at.is_none() {
        return "unavailable";
    }
    match view.method {
        Method::Proc => "proc",
        Method::Netlink | Method::Auto => "netlink",
    }
}

/// Runs one drain to its end and returns the report. Never returns later
/// than the budget allows.
pub async fn run(
    handle: Arc<MasterHandle>,
    req: Request,
    snapshot: Arc<watch::Sender<Snapshot>>,
    monitor: Monitor,
) -> Report {
    let budget = Budget::new(req.clock.mono, req.timeout);
    let master = handle.master().clone();
    let start_workers = workers(&master.id);
    let already_quitting =
        !start_workers.is_empty() && start_workers.iter().all(|w| w.is_shutting_down());
    tracing::info!(
        pid = master.id.pid,
        workers = start_workers.len(),
        shutting_down = start_workers
            .iter()
            .filter(|w| w.is_shutting_down())
            .count(),
        "draining nginx master"
    );
    monitor.set_fast(true);
    let mut view_rx = monitor.view();
    let first_view = view_rx.borrow_and_update().clone();

    // Watch every child for progress: current workers and old ones still
    // finishing requests after a reload. The master exits after the last.
    let mut remaining: BTreeMap<i32, Worker> = BTreeMap::new();
    let mut watches: Vec<Arc<ChildWatch>> = Vec::new();
    let mut exits: JoinSet<i32> = JoinSet::new();
    for w in &start_workers {
        if let Some(watch) = ChildWatch::open(w.pid, &master.id) {
            let watch = Arc::new(watch);
            watches.push(watch.clone());
            exits.spawn(async move {
                watch.exited_ref().await;
                watch.pid
            });
            remaining.insert(w.pid, w.clone());
        }
    }

    let timeout = req.timeout;
    let policy = req.policy;
    let mut rec = Record {
        rate_before: first_view.log.rate_before(req.clock.mono),
        req,
        workers_at_start: start_workers,
        signal_method: if handle.uses_pidfd() { "pidfd" } else { "kill" },
        master_pid: master.id.pid,
        master_title: master.title.clone(),
        sigquit: None,
        sigterm: None,
        exited: None,
        census: method_name(&first_view),
        ports: first_view.ports.iter().copied().collect(),
        arrivals_during_wait: 0,
        last_arrival: first_view.log.last_arrival(),
        quiet_ms: 0,
        quiet_reason: String::new(),
        quit_reason: None,
        open_now: first_view.sample.open.clone(),
        open_at_sigquit: BTreeMap::new(),
        last_closed: None,
        series: Series::new(SERIES_CAP, ms(FAST_EVERY)),
        last_seq: first_view.sample.seq,
    };
    let (latest, latest_reason) = latest_sigquit(&budget, timeout, policy.max_delay);
    let mut due: Option<Instant> = None;

    let publish =
        |phase: Phase, rec: &Record, remaining: &BTreeMap<i32, Worker>, due: Option<Instant>| {
            let now = Instant::now();
            let progress = Progress {
                drain_id: rec.req.id.clone(),
                phase: phase.name(),
                hook_received_at: rec.req.clock.stamp(rec.req.clock.mono),
                elapsed_ms: rec.req.clock.millis_since_start(now),
                budget_left_ms: ms(budget.left(now)),
                sigquit_at: rec.sigquit.map(|t| rec.req.clock.stamp(t)),
                workers_remaining: remaining.values().cloned().collect(),
                open_connections: rec.open_now.clone(),
                arrivals_during_wait: rec.arrivals_during_wait,
                quiet_period_ms: (phase == Phase::AwaitQuiet).then_some(rec.quiet_ms),
                sigquit_due_in_ms: due.map(|d| ms(d.saturating_duration_since(now))),
            };
            snapshot.send_modify(|s| {
                s.workers = progress.workers_remaining.clone();
                s.drain = Some(progress);
            });
        };

    let mut phase = if already_quitting {
        rec.quit_reason = Some(QuitReason::AlreadyQuitting);
        rec.quiet_reason = "nginx was already shutting down".into();
        tracing::info!(
            pid = master.id.pid,
            "nginx is already shutting down: not waiting for traffic, not sending another SIGQUIT"
        );
        Phase::AwaitExit
    } else {
        Phase::AwaitQuiet
    };
    // False once the census monitor has stopped publishing.
    let mut census_alive = true;
    let mut log_tick =
        tokio::time::interval_at(Instant::now() + PROGRESS_LOG_EVERY, PROGRESS_LOG_EVERY);
    let mut last_logged_arrivals = 0u64;
    let exited_early = loop {
        publish(phase, &rec, &remaining, due);
        match phase {
            Phase::AwaitQuiet => {
                let view = view_rx.borrow_and_update().clone();
                rec.observe(&view);
                let now = Instant::now();
                let (at, reason) = if view.error.is_some() && view.sample.at.is_none() {
                    rec.quiet_reason = "no connection census available: waited --max-delay".into();
                    (latest, latest_reason)
                } else {
                    let q = quiet_period(&view.log, now, policy.min_delay, policy.max_delay);
                    rec.quiet_ms = ms(q.period);
                    rec.quiet_reason = q.reason;
                    sigquit_at(
                        rec.req.clock.mono,
                        view.log.last_arrival(),
                        q.period,
                        policy.min_delay,
                        latest,
                        latest_reason,
                    )
                };
                due = Some(at);
                if now >= at {
                    rec.quit_reason = Some(reason);
                    rec.open_at_sigquit = rec.open_now.clone();
                    let waited = rec.req.clock.millis_since_start(now);
                    match reason {
                        QuitReason::Quiet => tracing::info!(
                            waited_ms = waited,
                            arrivals_during_wait = rec.arrivals_during_wait,
                            quiet_period_ms = rec.quiet_ms,
                            why = %rec.quiet_reason,
                            "new connections have stopped: no arrival for the quiet period"
                        ),
                        _ => tracing::warn!(
                            waited_ms = waited,
                            arrivals_during_wait = rec.arrivals_during_wait,
                            reason = ?reason,
                            "new connections were still arriving, but the wait must end here (--max-delay or the budget): connections arriving after SIGQUIT are refused"
                        ),
                    }
                    due = None;
                    phase = Phase::Quit;
                    continue;
                }
                tokio::select! {
                    biased;
                    _ = handle.exited() => break true,
                    changed = view_rx.changed(), if census_alive => {
                        // The monitor is gone: decide on the deadlines alone.
                        census_alive = changed.is_ok();
                    }
                    _ = sleep_until(at) => {}
                    Some(Ok(pid)) = exits.join_next() => {
                        remaining.remove(&pid);
                    }
                    _ = log_tick.tick() => {
                        let new = rec.arrivals_during_wait - last_logged_arrivals;
                        last_logged_arrivals = rec.arrivals_during_wait;
                        tracing::info!(
                            arrivals_last_second = new,
                            open = ?rec.open_now,
                            quiet_period_ms = rec.quiet_ms,
                            sigquit_in_ms = ms(at.saturating_duration_since(Instant::now())),
                            "nginx keeps serving while new connections arrive"
                        );
                    }
                }
            }
            Phase::Quit => match handle.signal(Sig::Quit) {
                Ok(()) => {
                    rec.sigquit = Some(Instant::now());
                    tracing::info!(
                        pid = master.id.pid,
                        method = rec.signal_method,
                        open = ?rec.open_at_sigquit,
                        "SIGQUIT sent: nginx stops accepting and finishes in-flight requests"
                    );
                    phase = Phase::AwaitExit;
                }
                Err(SignalError::Exited(_)) => break true,
                Err(e) => {
                    let msg = e.to_string();
                    tracing::error!("{msg}");
                    monitor.set_fast(false);
                    return rec.finish(Outcome::Error, msg, remaining.into_values().collect());
                }
            },
            Phase::AwaitExit | Phase::Forcing => {
                tokio::select! {
                    biased;
                    _ = handle.exited() => break false,
                    Some(Ok(pid)) = exits.join_next() => {
                        remaining.remove(&pid);
                        tracing::info!(pid, remaining = remaining.len(), "nginx worker exited");
                    }
                    changed = view_rx.changed(), if census_alive => {
                        // Without samples the other events (exit, the
                        // budget's deadlines) still decide: never block here.
                        census_alive = changed.is_ok();
                        if census_alive {
                            let view = view_rx.borrow_and_update().clone();
                            let had_closed = rec.last_closed.is_some();
                            rec.observe(&view);
                            if !had_closed && let Some(t) = rec.last_closed {
                                tracing::info!(after_sigquit_ms = rec.sigquit.map(|q| ms(t.saturating_duration_since(q))), "no open client connection left");
                            }
                        }
                    }
                    _ = sleep_until(budget.escalate_at), if phase == Phase::AwaitExit => {
                        phase = Phase::Forcing;
                        match handle.signal(Sig::Term) {
                            Ok(()) => {
                                rec.sigterm = Some(Instant::now());
                                tracing::warn!(
                                    pid = master.id.pid,
                                    workers_remaining = remaining.len(),
                                    open = ?rec.open_now,
                                    budget_left_ms = ms(budget.left(Instant::now())),
                                    "graceful quit did not finish within the budget: SIGTERM sent (fast shutdown) so that nginx is gone before the grace period ends"
                                );
                            }
                            Err(SignalError::Exited(_)) => {}
                            Err(e) => tracing::error!("escalation failed: {e}"),
                        }
                    }
                    _ = sleep_until(budget.give_up_at) => {
                        let left = still_running(&watches, &remaining);
                        let msg = format!(
                            "nginx master pid {} still running {} ms after the hook, even after SIGTERM: answering before the {} ms budget ends; the kubelet will SIGKILL it. Check for stuck workers and raise terminationGracePeriodSeconds with --drain-timeout",
                            master.id.pid, rec.req.clock.millis_since_start(Instant::now()), ms(rec.req.timeout)
                        );
                        tracing::error!("{msg}");
                        monitor.set_fast(false);
                        return rec.finish(Outcome::Timeout, msg, left);
                    }
                    _ = log_tick.tick() => {
                        tracing::info!(
                            pid = master.id.pid,
                            workers_remaining = remaining.len(),
                            open = ?rec.open_now,
                            budget_left_ms = ms(budget.left(Instant::now())),
                            "waiting for nginx to finish in-flight requests"
                        );
                    }
                }
            }
        }
    };

    monitor.set_fast(false);
    let exited = Instant::now();
    rec.exited = Some(exited);
    if rec.last_closed.is_none() && rec.sigquit.is_some() {
        // NGINX closes every connection before its master exits.
        rec.last_closed = Some(exited);
    }
    let left = still_running(&watches, &remaining);
    let quit_ms = rec
        .sigquit
        .map_or(0, |q| ms(exited.saturating_duration_since(q)));
    let (outcome, msg) = if !left.is_empty() {
        (
            Outcome::NginxDied,
            format!(
                "nginx master pid {} exited while {} of its workers were still running: it was killed (SIGKILL, OOM?), not drained; in-flight requests may have been cut",
                master.id.pid,
                left.len()
            ),
        )
    } else if exited_early && rec.quit_reason != Some(QuitReason::AlreadyQuitting) {
        (
            Outcome::NginxDied,
            format!(
                "nginx master pid {} exited before the drain sent SIGQUIT (stopped by something else while nginx-drain waited for traffic to stop); connections arriving after that were refused",
                master.id.pid
            ),
        )
    } else if rec.sigterm.is_some() {
        (
            Outcome::Forced,
            format!(
                "nginx did not finish its requests in time and was stopped with SIGTERM; it exited {quit_ms} ms after SIGQUIT. Requests still in flight were cut: raise terminationGracePeriodSeconds and --drain-timeout, or lower nginx's worker_shutdown_timeout"
            ),
        )
    } else {
        let waited = rec
            .sigquit
            .map_or(0, |q| rec.req.clock.millis_since_start(q));
        (
            Outcome::Drained,
            format!(
                "nginx exited gracefully: SIGQUIT {waited} ms after the hook ({} new connections in that time), exit {quit_ms} ms after SIGQUIT; every in-flight request finished",
                rec.arrivals_during_wait
            ),
        )
    };
    match outcome {
        Outcome::Drained => {
            tracing::info!(pid = master.id.pid, quit_ms, "nginx master exited: drained")
        }
        _ => tracing::warn!(pid = master.id.pid, outcome = outcome.as_str(), "{msg}"),
    }
    publish(phase, &rec, &BTreeMap::new(), None);
    rec.finish(outcome, msg, left)
}

/// Workers among `remaining` that are still alive. Uses the pidfds, so a
/// recycled pid is never mistaken for a worker.
fn still_running(watches: &[Arc<ChildWatch>], remaining: &BTreeMap<i32, Worker>) -> Vec<Worker> {
    watches
        .iter()
        .filter(|w| !w.has_exited())
        .filter_map(|w| {
            remaining.get(&w.pid).cloned().or_else(|| {
                read_proc(w.pid).ok().map(|p| Worker {
                    pid: w.pid,
                    title: p.title,
                })
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
