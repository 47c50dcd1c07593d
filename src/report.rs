//! The JSON the sidecar answers with: the drain report (`/prestop`) and the
//! status snapshot (`/status`). Plain serde types: no logic lives here beyond
//! turning monotonic instants into wall-clock timestamps for humans.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::time::Instant;

use crate::nginx::{Master, Worker};

/// How a drain ended. Only `drained` and `not_running` are successes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// NGINX quit gracefully: every worker finished and the master exited.
    Drained,
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
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Drained | Outcome::NotRunning)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Drained => "drained",
            Outcome::Forced => "forced",
            Outcome::Timeout => "timeout",
            Outcome::NotRunning => "not_running",
            Outcome::NginxDied => "nginx_died",
            Outcome::Error => "error",
        }
    }
}

/// Maps monotonic instants to wall-clock time, anchored once at the hook's
/// arrival. All decisions use the monotonic clock; a wall-clock jump during a
/// drain only shifts the printed timestamps, never a deadline.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub mono: Instant,
    pub wall: SystemTime,
}

impl Clock {
    pub fn now() -> Clock {
        Clock {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }
    pub fn stamp(&self, at: Instant) -> String {
        let wall = self.wall + at.saturating_duration_since(self.mono);
        humantime::format_rfc3339_millis(wall).to_string()
    }
    pub fn millis_since_start(&self, at: Instant) -> u64 {
        ms(at.saturating_duration_since(self.mono))
    }
}

pub fn ms(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

/// Durations of the drain's phases, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Durations {
    /// Hook arrival to SIGQUIT.
    pub hook_to_sigquit_ms: Option<u64>,
    /// SIGQUIT to the master's exit.
    pub sigquit_to_exit_ms: Option<u64>,
    /// Hook arrival to the answer.
    pub total_ms: u64,
}

/// The answer to a preStop hook: what happened, when, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub drain_id: String,
    pub outcome: Outcome,
    /// One sentence for humans: what happened and, on failure, what to do.
    pub message: String,
    pub master_pid: Option<i32>,
    pub master_title: Option<String>,
    pub workers_at_start: Vec<Worker>,
    /// Workers still alive when the drain ended (empty when drained).
    pub workers_left: Vec<Worker>,
    /// `pidfd` or `kill` (the fallback on kernels without pidfds).
    pub signal_method: Option<&'static str>,
    pub hook_received_at: String,
    pub hook_peer: String,
    pub sigquit_at: Option<String>,
    pub sigterm_at: Option<String>,
    pub exited_at: Option<String>,
    pub answered_at: String,
    pub durations: Durations,
    pub drain_timeout_ms: u64,
}

impl Report {
    pub fn http_status(&self) -> u16 {
        if self.outcome.is_success() { 200 } else { 500 }
    }
}

/// What the drain is doing right now, for `/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub drain_id: String,
    pub phase: &'static str,
    pub hook_received_at: String,
    pub elapsed_ms: u64,
    pub budget_left_ms: u64,
    pub sigquit_at: Option<String>,
    pub workers_remaining: Vec<Worker>,
}

/// The sidecar's state as `/status` shows it and `/readyz` judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// No master found yet (or the last one exited): the next hook answers
    /// `not_running`.
    Searching,
    /// A master is running and no drain has started: ready.
    Ready,
    /// The master is running but already quitting (started by someone else,
    /// or before the sidecar restarted): not ready.
    Quitting,
    /// A drain is in progress.
    Draining,
    /// The drain finished; waiting for a new master.
    Drained,
    /// Something is there but cannot be used safely; see `detail`.
    Unusable,
}

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub state: State,
    /// Why the sidecar is in this state, in words.
    pub detail: String,
    pub master: Option<Master>,
    pub workers: Vec<Worker>,
    pub drain: Option<Progress>,
    pub last_report: Option<Arc<Report>>,
    /// The sidecar received SIGTERM/SIGINT and exits once NGINX is gone.
    pub shutting_down: bool,
}

impl Snapshot {
    pub fn initial(detail: String) -> Snapshot {
        Snapshot {
            state: State::Searching,
            detail,
            master: None,
            workers: Vec::new(),
            drain: None,
            last_report: None,
            shutting_down: false,
        }
    }
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }
}
