//! One drain of one NGINX master, as a small explicit state machine:
//!
//! ```text
//! Quit ──SIGQUIT──▶ AwaitExit ──exit──▶ done (drained | nginx_died)
//!                     │ escalate_at
//!                     ▼
//!                   Forcing ──SIGTERM──▶ exit ──▶ done (forced)
//!                     │ give_up_at
//!                     ▼
//!                   done (timeout)
//! ```
//!
//! Waiting is event-driven: the master's pidfd (its exit), one pidfd per
//! worker (progress), and the budget's two deadlines. A 1 s tick only
//! writes a progress line to the log; it never decides anything.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

use super::budget::Budget;
use crate::nginx::process::ChildWatch;
use crate::nginx::{MasterHandle, Sig, SignalError, Worker, read_proc, workers};
use crate::report::{Clock, Durations, Outcome, Progress, Report, Snapshot, ms};

/// How often a progress line is logged while NGINX finishes its requests.
const PROGRESS_LOG_EVERY: Duration = Duration::from_secs(1);

/// The states of one drain. A later step (waiting for traffic to stop) goes
/// in front of `Quit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Quit,
    AwaitExit,
    Forcing,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Quit => "quit",
            Phase::AwaitExit => "await_exit",
            Phase::Forcing => "forcing",
        }
    }
}

/// What the drain needs to know about the hook that started it.
pub struct Request {
    pub id: String,
    pub clock: Clock,
    pub peer: String,
    pub timeout: Duration,
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
}

impl Record {
    fn finish(self, outcome: Outcome, message: String, workers_left: Vec<Worker>) -> Report {
        let clock = self.req.clock;
        let now = Instant::now();
        let stamp = |t: Option<Instant>| t.map(|t| clock.stamp(t));
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
        }
    }
}

/// Runs one drain to its end and returns the report. Never returns later
/// than the budget allows.
pub async fn run(
    handle: Arc<MasterHandle>,
    req: Request,
    snapshot: Arc<watch::Sender<Snapshot>>,
) -> Report {
    let budget = Budget::new(req.clock.mono, req.timeout);
    let master = handle.master().clone();
    let start_workers = workers(&master.id);
    tracing::info!(
        pid = master.id.pid,
        workers = start_workers.len(),
        shutting_down = start_workers
            .iter()
            .filter(|w| w.is_shutting_down())
            .count(),
        "draining nginx master"
    );

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

    let mut rec = Record {
        req,
        workers_at_start: start_workers,
        signal_method: if handle.uses_pidfd() { "pidfd" } else { "kill" },
        master_pid: master.id.pid,
        master_title: master.title.clone(),
        sigquit: None,
        sigterm: None,
        exited: None,
    };
    let publish = |phase: Phase, rec: &Record, remaining: &BTreeMap<i32, Worker>| {
        let now = Instant::now();
        let progress = Progress {
            drain_id: rec.req.id.clone(),
            phase: phase.name(),
            hook_received_at: rec.req.clock.stamp(rec.req.clock.mono),
            elapsed_ms: rec.req.clock.millis_since_start(now),
            budget_left_ms: ms(budget.left(now)),
            sigquit_at: rec.sigquit.map(|t| rec.req.clock.stamp(t)),
            workers_remaining: remaining.values().cloned().collect(),
        };
        snapshot.send_modify(|s| {
            s.workers = progress.workers_remaining.clone();
            s.drain = Some(progress);
        });
    };

    let mut phase = Phase::Quit;
    let mut log_tick =
        tokio::time::interval_at(Instant::now() + PROGRESS_LOG_EVERY, PROGRESS_LOG_EVERY);
    loop {
        publish(phase, &rec, &remaining);
        match phase {
            Phase::Quit => match handle.signal(Sig::Quit) {
                Ok(()) => {
                    rec.sigquit = Some(Instant::now());
                    tracing::info!(
                        pid = master.id.pid,
                        method = rec.signal_method,
                        "SIGQUIT sent: nginx stops accepting and finishes in-flight requests"
                    );
                    phase = Phase::AwaitExit;
                }
                Err(SignalError::Exited(pid)) => {
                    let msg = format!(
                        "nginx master pid {pid} exited before SIGQUIT could be sent; nothing left to drain"
                    );
                    tracing::info!("{msg}");
                    return rec.finish(Outcome::NotRunning, msg, Vec::new());
                }
                Err(e) => {
                    let msg = e.to_string();
                    tracing::error!("{msg}");
                    return rec.finish(Outcome::Error, msg, remaining.into_values().collect());
                }
            },
            Phase::AwaitExit | Phase::Forcing => {
                tokio::select! {
                    biased;
                    _ = handle.exited() => break,
                    Some(Ok(pid)) = exits.join_next() => {
                        remaining.remove(&pid);
                        tracing::info!(pid, remaining = remaining.len(), "nginx worker exited");
                    }
                    _ = sleep_until(budget.escalate_at), if phase == Phase::AwaitExit => {
                        phase = Phase::Forcing;
                        match handle.signal(Sig::Term) {
                            Ok(()) => {
                                rec.sigterm = Some(Instant::now());
                                tracing::warn!(
                                    pid = master.id.pid,
                                    workers_remaining = remaining.len(),
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
                        return rec.finish(Outcome::Timeout, msg, left);
                    }
                    _ = log_tick.tick() => {
                        tracing::info!(
                            pid = master.id.pid,
                            workers_remaining = remaining.len(),
                            budget_left_ms = ms(budget.left(Instant::now())),
                            "waiting for nginx to finish in-flight requests"
                        );
                    }
                }
            }
        }
    }

    let exited = Instant::now();
    rec.exited = Some(exited);
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
    } else if rec.sigterm.is_some() {
        (
            Outcome::Forced,
            format!(
                "nginx did not finish its requests in time and was stopped with SIGTERM; it exited {quit_ms} ms after SIGQUIT. Requests still in flight were cut: raise terminationGracePeriodSeconds and --drain-timeout, or lower nginx's worker_shutdown_timeout"
            ),
        )
    } else {
        (
            Outcome::Drained,
            format!(
                "nginx exited gracefully {quit_ms} ms after SIGQUIT; every in-flight request finished"
            ),
        )
    };
    match outcome {
        Outcome::Drained => {
            tracing::info!(pid = master.id.pid, quit_ms, "nginx master exited: drained")
        }
        _ => tracing::warn!(pid = master.id.pid, outcome = outcome.as_str(), "{msg}"),
    }
    publish(phase, &rec, &BTreeMap::new());
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
