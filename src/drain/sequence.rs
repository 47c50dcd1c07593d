//! One drain of one NGINX master, as an explicit state machine: one method
//! per phase, each returning the next step.
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
//! Waiting is event-driven: the master's exit, one exit watch per worker
//! (progress), the census monitor's samples, and the budget's deadlines. A
//! 1 s tick only writes a progress line to the log. What the drain acts on is
//! a [`Target`], so the decisions are tested with a fake one under tokio's
//! paused clock (see the tests below); the integration tests drive a real
//! NGINX.
//!
//! Invariants kept here: at most one SIGQUIT (and one SIGTERM) per drain; no
//! SIGQUIT to an NGINX that is already quitting; SIGQUIT never later than
//! `latest_sigquit`; the report is returned before `give_up_at`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, Interval, sleep_until};

use super::outcome::{AtExit, Cut, classify, cut_moment};
use super::quiet::{Quiet, Stream, quiet_period, sigquit_at};
use super::record::{Record, Request};
use super::target::{Child, Target};
use crate::budget::{Budget, latest_sigquit};
use crate::nginx::config::ShutdownTimeout;
use crate::nginx::{Sig, SignalError, Worker, is_quitting};
use crate::report::{CUT_PEERS_LISTED, ConnectionsReport, CutConn, Report, Snapshot, ms};
use crate::sockets::arrivals::Kind;
use crate::sockets::monitor::Monitor;
use crate::sockets::view::View;
use crate::vocab::{DrainPhase, Outcome, QuitReason};

/// How often a progress line is logged.
const PROGRESS_LOG_EVERY: Duration = Duration::from_secs(1);

/// What a phase ended with.
enum Step {
    /// Go on with this phase.
    Next(DrainPhase),
    /// The master exited.
    Exited,
    /// The drain is over without an exit (an error, or the budget ran out).
    GiveUp(Outcome, String),
}

/// Runs one drain to its end and returns the report. Never returns later
/// than the budget allows.
pub(crate) async fn run<T: Target>(
    target: Arc<T>,
    req: Request,
    snapshot: Arc<watch::Sender<Snapshot>>,
    monitor: Monitor,
) -> Report {
    let mut drain = Running::start(target, req, snapshot, monitor);
    let mut phase = drain.first_phase();
    loop {
        let step = match phase {
            DrainPhase::AwaitQuiet => drain.await_quiet().await,
            DrainPhase::Quit => drain.quit(),
            DrainPhase::AwaitExit | DrainPhase::Forcing => drain.await_exit(phase).await,
            // The end is a step's (`Exited`, `GiveUp`), never a next phase.
            DrainPhase::Done => return drain.finish(),
        };
        match step {
            Step::Next(next) => phase = next,
            Step::Exited => return drain.finish(),
            Step::GiveUp(outcome, msg) => return drain.give_up(outcome, msg),
        }
    }
}

/// One drain in progress: what it acts on, what it watches, what it saw.
struct Running<T> {
    target: Arc<T>,
    budget: Budget,
    /// The latest SIGQUIT, and why it would go out then.
    latest: (Instant, QuitReason),
    monitor: Monitor,
    views: watch::Receiver<View>,
    /// False once the census monitor has stopped publishing.
    census_alive: bool,
    children: Vec<Child>,
    /// Children not yet seen exiting, for progress.
    remaining: BTreeMap<i32, Worker>,
    exits: JoinSet<i32>,
    snapshot: Arc<watch::Sender<Snapshot>>,
    log_tick: Interval,
    /// NGINX's worker_shutdown_timeout, read at the start.
    shutdown_timeout: ShutdownTimeout,
    rec: Record,
}

impl<T: Target> Running<T> {
    fn start(
        target: Arc<T>,
        req: Request,
        snapshot: Arc<watch::Sender<Snapshot>>,
        monitor: Monitor,
    ) -> Running<T> {
        let budget = Budget::new(req.clock.mono, req.timeout);
        let latest = latest_sigquit(&budget, req.timeout, req.policy.max_delay);
        let master = target.master().clone();
        let children = target.children();
        let workers: Vec<Worker> = children.iter().map(|c| c.worker.clone()).collect();
        tracing::info!(
            pid = master.id.pid,
            workers = workers.len(),
            shutting_down = workers.iter().filter(|w| w.is_shutting_down()).count(),
            "draining nginx master"
        );
        monitor.set_fast(true);
        let mut views = monitor.view();
        let first = views.borrow_and_update().clone();
        // Watch every child for progress: current workers and old ones
        // still finishing requests after a reload. The master exits after
        // the last.
        let mut exits = JoinSet::new();
        for c in &children {
            let (exit, pid) = (c.exit.clone(), c.worker.pid);
            exits.spawn(async move {
                exit.exited().await;
                pid
            });
        }
        let remaining = workers.iter().map(|w| (w.pid, w.clone())).collect();
        let shutdown_timeout =
            ShutdownTimeout::given_or(req.worker_shutdown_timeout, || target.shutdown_timeout());
        let rec = Record::new(
            req,
            master.id.pid,
            master.title.clone(),
            target.signal_method(),
            workers,
            &first,
        );
        Running {
            target,
            budget,
            latest,
            monitor,
            views,
            census_alive: true,
            children,
            remaining,
            exits,
            snapshot,
            log_tick: tokio::time::interval_at(
                Instant::now() + PROGRESS_LOG_EVERY,
                PROGRESS_LOG_EVERY,
            ),
            shutdown_timeout,
            rec,
        }
    }

    fn pid(&self) -> i32 {
        self.rec.master_pid()
    }

    /// AwaitQuiet, unless NGINX is already quitting: then there is nothing
    /// to wait for and no SIGQUIT to send.
    fn first_phase(&mut self) -> DrainPhase {
        if is_quitting(self.rec.workers_at_start()) {
            self.rec.already_quitting();
            tracing::info!(
                pid = self.pid(),
                "nginx is already shutting down: not waiting for traffic, not sending another SIGQUIT"
            );
            DrainPhase::AwaitExit
        } else {
            DrainPhase::AwaitQuiet
        }
    }

    /// Publishes the drain's progress for `/status`.
    fn publish(&self, phase: DrainPhase, due: Option<Instant>) {
        let now = Instant::now();
        let progress = self.rec.progress(
            phase,
            self.budget.left(now),
            self.remaining.values().cloned().collect(),
            due,
            now,
        );
        self.snapshot.send_modify(|s| {
            s.workers = progress.workers_remaining.clone();
            s.drain = Some(progress);
        });
    }

    /// When SIGQUIT is due as of the latest census, and why: once new
    /// connections and requests on open connections have each been quiet
    /// for their own quiet period (the later of the two).
    fn sigquit_due(&mut self, view: &View, now: Instant) -> (Instant, QuitReason) {
        if view.is_blind() {
            self.rec.set_quiet(
                None,
                "no connection census available: waited --max-delay".into(),
            );
            return self.latest;
        }
        let policy = self.rec.req().policy;
        let hook = self.rec.req().clock.mono;
        let kinds: &[Kind] = if view.requests_seen {
            &[Kind::Connections, Kind::Requests]
        } else {
            &[Kind::Connections]
        };
        let mut judged: Vec<(Instant, QuitReason, Quiet, Kind)> = Vec::new();
        let mut idle = Vec::new();
        for &kind in kinds {
            let stream = Stream::of(&view.log, kind);
            let q = quiet_period(&stream, now, policy.min_delay, policy.max_delay);
            if stream.total() == 0 {
                idle.push(q.reason);
                continue;
            }
            let (at, reason) = sigquit_at(
                hook,
                stream.last_arrival(),
                q.period,
                policy.min_delay,
                self.latest.0,
                self.latest.1,
            );
            judged.push((at, reason, q, kind));
        }
        let Some((at, reason, q, kind)) = judged.iter().max_by_key(|j| j.0).cloned() else {
            // Nothing arrived of either kind: nothing to wait for.
            let words = if view.requests_seen {
                "no client connection and no request on an open one"
            } else {
                "no client connection (requests on open connections are not seen without netlink's tcp_info)"
            };
            let observed = now.saturating_duration_since(view.log.since).as_secs_f64();
            self.rec.set_quiet(
                Some(ms(policy.min_delay)),
                format!(
                    "{words} in the last {:.1} s: nothing to wait for (--min-delay)",
                    observed.min(60.0)
                ),
            );
            return sigquit_at(
                hook,
                None,
                policy.min_delay,
                policy.min_delay,
                self.latest.0,
                self.latest.1,
            );
        };
        let label = |k: Kind| match k {
            Kind::Connections => "new connections",
            Kind::Requests => "requests on open connections",
        };
        let mut words = format!("{}: {}", label(kind), q.reason);
        for (_, _, other, k) in judged.iter().filter(|j| j.3 != kind) {
            words.push_str(&format!(
                "; {} (quiet sooner): {} ms",
                label(*k),
                ms(other.period)
            ));
        }
        for other in &idle {
            words.push_str(&format!("; {other}"));
        }
        self.rec.set_quiet(Some(ms(q.period)), words);
        (at, reason)
    }

    /// NGINX keeps serving until new connections stop arriving (or the
    /// wait must end). Every census sample re-judges the quiet period.
    async fn await_quiet(&mut self) -> Step {
        loop {
            let view = self.views.borrow_and_update().clone();
            self.rec.observe(&view);
            let now = Instant::now();
            let (at, reason) = self.sigquit_due(&view, now);
            self.publish(DrainPhase::AwaitQuiet, Some(at));
            // The last look before a quiet SIGQUIT: anything accepted that
            // this view does not account for may be an arrival, and a
            // request on an open connection shows only in a census: one
            // taken after the silence began, unless nothing arrived at all
            // since the last. Look again rather than quit on a stale view.
            let last_look = now >= at && reason == QuitReason::Quiet && self.census_alive;
            let unseen_accept = last_look && self.monitor.accepted_since(&view);
            let unseen_request = last_look
                && !unseen_accept
                && view.sample.open_total() > 0
                && view.sample.at.is_none_or(|c| c < at)
                && self.monitor.data_since(&view);
            let stale = unseen_accept || unseen_request;
            if unseen_accept {
                self.monitor.look_now();
            } else if unseen_request {
                self.monitor.census_now();
            } else if now >= at {
                self.quiet_reached(reason, now, &view);
                return Step::Next(DrainPhase::Quit);
            }
            let wake = if stale { self.latest.0 } else { at };
            tokio::select! {
                biased;
                _ = self.target.exited() => return Step::Exited,
                changed = self.views.changed(), if self.census_alive => {
                    // The monitor is gone: decide on the deadlines alone.
                    self.census_alive = changed.is_ok();
                }
                _ = sleep_until(wake) => {}
                Some(Ok(pid)) = self.exits.join_next() => {
                    self.remaining.remove(&pid);
                }
                _ = self.log_tick.tick() => self.log_waiting(at),
            }
        }
    }

    fn quiet_reached(&mut self, reason: QuitReason, now: Instant, view: &View) {
        // Still arriving: the wait ends on a deadline, and the last arrival
        // came less than a quiet period before it.
        let still_arriving = reason != QuitReason::Quiet
            && view.log.last_arrival().is_some_and(|t| {
                now.saturating_duration_since(t) < Duration::from_millis(self.rec.quiet_ms())
            });
        self.rec.quit_decided(reason, still_arriving);
        let waited = self.rec.since_hook(now);
        match reason {
            QuitReason::Quiet => tracing::info!(
                waited_ms = waited,
                arrivals_during_wait = self.rec.arrivals_during_wait(),
                requests_during_wait = self.rec.requests_during_wait(),
                quiet_period_ms = self.rec.quiet_ms(),
                why = %self.rec.quiet_reason(),
                "traffic has stopped: no new connection and no request for the quiet period"
            ),
            _ if still_arriving => tracing::warn!(
                waited_ms = waited,
                arrivals_during_wait = self.rec.arrivals_during_wait(),
                requests_during_wait = self.rec.requests_during_wait(),
                reason = %reason,
                "traffic was still arriving, but the wait must end here (--max-delay or the budget): after SIGQUIT new connections are refused and idle keep-alive connections closed"
            ),
            _ => tracing::info!(
                waited_ms = waited,
                arrivals_during_wait = self.rec.arrivals_during_wait(),
                requests_during_wait = self.rec.requests_during_wait(),
                reason = %reason,
                "the wait ends here (--max-delay or the budget); nothing arrived for a quiet period before it"
            ),
        }
    }

    fn log_waiting(&mut self, at: Instant) {
        tracing::info!(
            arrivals_during_wait = self.rec.arrivals_during_wait(),
            requests_during_wait = self.rec.requests_during_wait(),
            open = %crate::vocab::json(self.rec.open_now()),
            quiet_period_ms = self.rec.quiet_ms(),
            sigquit_in_ms = ms(at.saturating_duration_since(Instant::now())),
            "nginx keeps serving while new connections and requests arrive"
        );
    }

    /// Sends the one SIGQUIT: graceful shutdown.
    fn quit(&mut self) -> Step {
        self.publish(DrainPhase::Quit, None);
        match self.target.signal(Sig::Quit) {
            Ok(()) => {
                self.rec.sigquit_sent(Instant::now());
                tracing::info!(
                    pid = self.pid(),
                    method = %self.rec.signal_method(),
                    open = %crate::vocab::json(self.rec.open_at_sigquit()),
                    "SIGQUIT sent: nginx stops accepting and finishes in-flight requests"
                );
                Step::Next(DrainPhase::AwaitExit)
            }
            Err(SignalError::Exited(_)) => Step::Exited,
            Err(e) => {
                let msg = e.to_string();
                tracing::error!("{msg}");
                Step::GiveUp(Outcome::Error, msg)
            }
        }
    }

    /// Waits for the master's exit; at `escalate_at` sends SIGTERM (once)
    /// and goes on as Forcing; at `give_up_at` answers `timeout`.
    async fn await_exit(&mut self, phase: DrainPhase) -> Step {
        loop {
            self.publish(phase, None);
            tokio::select! {
                biased;
                _ = self.target.exited() => return Step::Exited,
                Some(Ok(pid)) = self.exits.join_next() => {
                    self.remaining.remove(&pid);
                    tracing::info!(pid, remaining = self.remaining.len(), "nginx worker exited");
                }
                changed = self.views.changed(), if self.census_alive => {
                    // Without samples the other events (exit, the budget's
                    // deadlines) still decide: never block here.
                    self.census_alive = changed.is_ok();
                    if self.census_alive {
                        self.observe_after_quit();
                    }
                }
                _ = sleep_until(self.budget.escalate_at), if phase == DrainPhase::AwaitExit => {
                    self.escalate();
                    return Step::Next(DrainPhase::Forcing);
                }
                _ = sleep_until(self.budget.give_up_at) => {
                    let msg = format!(
                        "nginx master pid {} still running {} ms after the hook, even after SIGTERM: answering before the {} ms budget ends; the kubelet will SIGKILL it. Check for stuck workers and raise terminationGracePeriodSeconds with --drain-timeout",
                        self.pid(), self.rec.since_hook(Instant::now()), ms(self.rec.req().timeout)
                    );
                    tracing::error!("{msg}");
                    return Step::GiveUp(Outcome::Timeout, msg);
                }
                _ = self.log_tick.tick() => {
                    tracing::info!(
                        pid = self.pid(),
                        workers_remaining = self.remaining.len(),
                        open = %crate::vocab::json(self.rec.open_now()),
                        budget_left_ms = ms(self.budget.left(Instant::now())),
                        "waiting for nginx to finish in-flight requests"
                    );
                }
            }
        }
    }

    fn observe_after_quit(&mut self) {
        let view = self.views.borrow_and_update().clone();
        let had_closed = self.rec.last_closed().is_some();
        self.rec.observe(&view);
        if !had_closed && let Some(t) = self.rec.last_closed() {
            tracing::info!(
                after_sigquit_ms = self
                    .rec
                    .sigquit()
                    .map(|q| ms(t.saturating_duration_since(q))),
                "no open client connection left"
            );
        }
    }

    /// The graceful quit did not finish in time: SIGTERM (fast shutdown), so
    /// that NGINX is gone before the grace period ends.
    fn escalate(&mut self) {
        match self.target.signal(Sig::Term) {
            Ok(()) => {
                self.rec.sigterm_sent(Instant::now());
                tracing::warn!(
                    pid = self.pid(),
                    workers_remaining = self.remaining.len(),
                    open = %crate::vocab::json(self.rec.open_now()),
                    budget_left_ms = ms(self.budget.left(Instant::now())),
                    "graceful quit did not finish within the budget: SIGTERM sent (fast shutdown) so that nginx is gone before the grace period ends"
                );
            }
            Err(SignalError::Exited(_)) => {}
            Err(e) => tracing::error!("escalation failed: {e}"),
        }
    }

    /// Children still alive, asked of their exit watches now (a recycled
    /// pid is never mistaken for a worker).
    fn still_running(&self) -> Vec<Worker> {
        self.children
            .iter()
            .filter(|c| !c.exit.has_exited())
            .map(|c| c.worker.clone())
            .collect()
    }

    /// Ends the drain without an exit: the report as it stands.
    fn give_up(self, outcome: Outcome, msg: String) -> Report {
        self.monitor.set_fast(false);
        let left = self.still_running();
        self.publish_done(None);
        checked(self.rec.finish(outcome, msg, left, None))
    }

    /// The drain is over: `/status` shows it as done, with what NGINX cut.
    fn publish_done(&self, cut: Option<u32>) {
        let now = Instant::now();
        let mut progress = self.rec.progress(
            DrainPhase::Done,
            self.budget.left(now),
            Vec::new(),
            None,
            now,
        );
        progress.cut_connections = cut;
        if cut.is_some() {
            // NGINX has exited: it holds no connection any more.
            progress.open_connections.clear();
        }
        self.snapshot.send_modify(|s| {
            s.workers.clear();
            s.drain = Some(progress);
        });
    }

    /// The connections open at the exit, those cut, and the report of them.
    fn connections_at_exit(&self, exited: Instant) -> (Cut, ConnectionsReport) {
        let moment = cut_moment(
            self.rec.sigquit(),
            self.rec.sigterm(),
            exited,
            &self.shutdown_timeout,
        );
        // The connections open just before NGINX cut them, or just before
        // it exited.
        let open = self.rec.census_before(moment.map_or(exited, |(_, at)| at));
        let census_at = open.as_ref().map_or(exited, |c| c.at);
        let total = open.as_ref().map_or(0, |c| c.total());
        let by = moment.map(|(by, _)| by).filter(|_| total > 0);
        let age = |first_seen: Instant| ms(exited.saturating_duration_since(first_seen));
        let summary = match (&open, by) {
            (Some(c), Some(by)) => Cut {
                by: Some(by),
                total,
                before_hook: c.detail.before_hook.min(total),
                youngest_ms: c.detail.youngest.map_or(0, age),
                oldest_ms: c.detail.oldest.first().map_or(0, |o| age(o.first_seen)),
            },
            _ => Cut::default(),
        };
        let cut_peers = match (&open, by) {
            (Some(c), Some(_)) => c
                .detail
                .oldest
                .iter()
                .take(CUT_PEERS_LISTED)
                .map(|o| CutConn {
                    peer: o.peer.to_string(),
                    port: o.local.port(),
                    age_ms: age(o.first_seen),
                    open_before_hook: o.first_seen < self.rec.req().clock.mono,
                })
                .collect(),
            _ => Vec::new(),
        };
        let report = ConnectionsReport {
            open_at_hook: self.rec.open_at_hook(),
            open_at_sigquit: self.rec.open_at_sigquit().values().sum(),
            open_at_exit: total,
            last_census_before_exit_ms: Some(ms(exited.saturating_duration_since(census_at))),
            worker_shutdown_timeout: self.shutdown_timeout.to_string(),
            cut: summary.total,
            cut_by: summary.by,
            cut_per_port: match (&open, by) {
                (Some(c), Some(_)) => c.per_port.clone(),
                _ => BTreeMap::new(),
            },
            cut_open_before_hook: summary.before_hook,
            cut_youngest_ms: (summary.total > 0).then_some(summary.youngest_ms),
            cut_oldest_ms: (summary.total > 0).then_some(summary.oldest_ms),
            cut_peers,
        };
        (summary, report)
    }

    /// The master exited: classify what was seen.
    fn finish(mut self) -> Report {
        self.monitor.set_fast(false);
        let exited = Instant::now();
        let exit = self.target.exit_status();
        self.rec.nginx_exited(exited, exit);
        let left = self.still_running();
        let (cut, connections) = self.connections_at_exit(exited);
        let seen = AtExit {
            master_pid: self.pid(),
            workers_left: left.len(),
            already_quitting: self.rec.quit_reason() == Some(QuitReason::AlreadyQuitting),
            sigquit_after_hook_ms: self.rec.sigquit().map(|q| self.rec.since_hook(q)),
            exit_after_quit_ms: self
                .rec
                .sigquit()
                .map_or(0, |q| ms(exited.saturating_duration_since(q))),
            sigterm_sent: self.rec.sigterm().is_some(),
            arrivals_during_wait: self.rec.arrivals_during_wait(),
            requests_during_wait: self
                .rec
                .requests_seen()
                .then(|| self.rec.requests_during_wait()),
            still_arriving: self.rec.still_arriving(),
            open_at_exit: connections.open_at_exit,
            last_census_before_exit_ms: connections.last_census_before_exit_ms,
            exit,
            cut,
            shutdown_timeout: self.shutdown_timeout.clone(),
            drain_timeout: self.rec.req().timeout,
            max_delay: self.rec.req().policy.max_delay,
        };
        let (outcome, msg) = classify(&seen);
        match outcome {
            Outcome::Drained => tracing::info!(
                pid = seen.master_pid,
                quit_ms = seen.exit_after_quit_ms,
                "nginx master exited: drained"
            ),
            _ => tracing::warn!(
                pid = seen.master_pid,
                outcome = outcome.as_str(),
                cut = connections.cut,
                cut_peers = %crate::vocab::json(&connections.cut_peers.iter().map(|c| c.peer.as_str()).collect::<Vec<_>>()),
                "{msg}"
            ),
        }
        self.remaining.clear();
        self.publish_done(Some(connections.cut));
        checked(self.rec.finish(outcome, msg, left, Some(connections)))
    }
}

/// A report that contradicts itself is a bug: it is logged (and fails
/// the tests), never sent as it is without a word.
fn checked(report: Report) -> Report {
    let wrong = report.contradictions();
    for c in &wrong {
        tracing::error!(drain_id = %report.drain_id, "the report contradicts itself ({c}); please report this as a bug");
    }
    debug_assert!(wrong.is_empty(), "{wrong:?}: {report:?}");
    report
}

#[cfg(test)]
mod tests;
