//! What the sidecar reports: the drain report (`/prestop`), the status
//! snapshot (`/status`) and the words both use (outcomes, quit reasons).
//! The drain decides and fills these in; HTTP, the metrics and the report
//! file only read them. Nothing here imports the drain.
//!
//! - `series`: the bounded timeline of census samples.
//! - `file`: `--report-file`, written atomically.

pub(crate) mod file;
mod series;

pub(crate) use series::Series;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::time::Instant;

use crate::nginx::{Master, Worker};
use crate::vocab::{
    ArrivalsSeen, CensusSource, CutBy, DrainPhase, Outcome, Problem, QuitReason, SignalMethod,
};

/// Maps monotonic instants to wall-clock time, anchored once at the hook's
/// arrival. All decisions use the monotonic clock; a wall-clock jump during a
/// drain only shifts the printed timestamps, never a deadline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    pub(crate) mono: Instant,
    pub(crate) wall: SystemTime,
}

impl Clock {
    pub(crate) fn now() -> Clock {
        Clock {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }
    /// The wall-clock time of `at`, before the anchor as well as after it
    /// (an arrival seen before the hook is printed at its own time, not the
    /// hook's).
    pub(crate) fn wall_of(&self, at: Instant) -> SystemTime {
        if at >= self.mono {
            self.wall + at.duration_since(self.mono)
        } else {
            self.wall
                .checked_sub(self.mono.duration_since(at))
                .unwrap_or(SystemTime::UNIX_EPOCH)
        }
    }
    pub(crate) fn stamp(&self, at: Instant) -> String {
        humantime::format_rfc3339_millis(self.wall_of(at)).to_string()
    }
    pub(crate) fn millis_since_start(&self, at: Instant) -> u64 {
        ms(at.saturating_duration_since(self.mono))
    }
}

/// Whole milliseconds, as every duration in the JSON is written.
pub(crate) fn ms(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

/// A rate as the JSON and the metrics show it: two decimals.
pub(crate) fn rate2(per_second: f64) -> f64 {
    (per_second * 100.0).round() / 100.0
}

/// The client connections around the drain, and those that were cut: still
/// open when NGINX exited, closed by it rather than finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct ConnectionsReport {
    /// Open client connections in the drain's first census (at the hook).
    pub(crate) open_at_hook: u32,
    /// Open client connections when SIGQUIT was sent.
    pub(crate) open_at_sigquit: u32,
    /// Open in the last census before NGINX exited.
    pub(crate) open_at_exit: u32,
    /// How long before the exit that census was taken.
    pub(crate) last_census_before_exit_ms: Option<u64>,
    /// NGINX's `worker_shutdown_timeout` as read from its configuration:
    /// a duration such as `20s`, `unset`, or why it could not be read.
    pub(crate) worker_shutdown_timeout: String,
    /// Connections cut: closed by NGINX's worker shutdown timeout or by the
    /// escalation's SIGTERM while still open.
    pub(crate) cut: u32,
    /// Who cut them, when any were.
    pub(crate) cut_by: Option<CutBy>,
    pub(crate) cut_per_port: BTreeMap<u16, u32>,
    /// Of the cut, how many were open since before the hook: long-lived
    /// connections (WebSockets, streams), not requests that began during the
    /// drain.
    pub(crate) cut_open_before_hook: u32,
    /// The youngest and oldest cut connection's age at the exit (since the
    /// census first saw it: a lower bound).
    pub(crate) cut_youngest_ms: Option<u64>,
    pub(crate) cut_oldest_ms: Option<u64>,
    /// The cut connections, oldest first, at most [`CUT_PEERS_LISTED`].
    pub(crate) cut_peers: Vec<CutConn>,
}

/// At most this many cut connections are listed by peer (as many as a
/// census keeps by name).
pub(crate) const CUT_PEERS_LISTED: usize = crate::sockets::census::OLDEST_KEPT;

/// One cut connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct CutConn {
    /// The client's address:port.
    pub(crate) peer: String,
    /// NGINX's port it was connected to.
    pub(crate) port: u16,
    /// Its age at the exit (since the census first saw it).
    pub(crate) age_ms: u64,
    pub(crate) open_before_hook: bool,
}

/// Durations of the drain's phases, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Durations {
    /// Hook arrival to SIGQUIT.
    pub(crate) hook_to_sigquit_ms: Option<u64>,
    /// SIGQUIT to the master's exit.
    pub(crate) sigquit_to_exit_ms: Option<u64>,
    /// Hook arrival to the answer.
    pub(crate) total_ms: u64,
}

/// What the census saw around the drain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct TrafficReport {
    pub(crate) census: CensusSource,
    pub(crate) arrivals_seen: ArrivalsSeen,
    /// The ports counted as NGINX's.
    pub(crate) ports: Vec<u16>,
    /// Addresses learned to be the kubelet's, not counted as clients.
    pub(crate) kubelet_peers: Vec<String>,
    /// New client connections per second over the minute before the hook.
    pub(crate) arrivals_per_second_before_hook: f64,
    /// New client connections between the hook and SIGQUIT.
    pub(crate) arrivals_during_wait: u64,
    /// The last new client connection seen (before the answer).
    pub(crate) last_arrival_at: Option<String>,
    /// Whether requests on connections already open (a balancer's
    /// keep-alive pool) were seen: the census read `tcp_info` (netlink).
    /// When false, the next three fields are zero and absent.
    pub(crate) requests_seen: bool,
    /// Requests per second on connections already open, over the minute
    /// before the hook.
    pub(crate) requests_per_second_before_hook: f64,
    /// Requests on connections already open between the hook and SIGQUIT
    /// (with `--pool-peer`, the listed balancers' new connections too).
    pub(crate) requests_during_wait: u64,
    /// The last request seen on a connection already open (before SIGQUIT).
    pub(crate) last_request_at: Option<String>,
    /// The quiet period in force when SIGQUIT was sent, and how it was chosen.
    pub(crate) quiet_period_ms: u64,
    pub(crate) quiet_period_reason: String,
    /// `quiet`, `max_delay`, `budget` or `already_quitting`.
    pub(crate) sigquit_reason: QuitReason,
    pub(crate) wait_before_sigquit_ms: u64,
    /// Open client connections per port when SIGQUIT was sent.
    pub(crate) connections_at_sigquit: BTreeMap<u16, u32>,
    /// Of those, the connections a keep-alive pool was reusing (they
    /// carried a request after the census first saw them), and of those,
    /// the idle ones (nothing queued either way: NGINX closes them at once,
    /// and a request sent on one just then fails).
    pub(crate) pooled_at_sigquit: u32,
    pub(crate) pooled_idle_at_sigquit: u32,
    /// When the census first saw no open client connection after SIGQUIT.
    pub(crate) last_connection_closed_at: Option<String>,
    pub(crate) last_connection_closed_after_sigquit_ms: Option<u64>,
    /// The census samples from the hook on (bounded: when full, neighbours
    /// are merged and the spacing doubles).
    pub(crate) samples_every_ms: u64,
    pub(crate) samples: Vec<SamplePoint>,
}

/// One point of the drain's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct SamplePoint {
    /// Milliseconds since the hook arrived.
    pub(crate) t_ms: u64,
    /// New client connections since the previous point.
    pub(crate) arrivals: u32,
    /// Requests on connections already open since the previous point.
    pub(crate) requests: u32,
    /// Open client connections at this point.
    pub(crate) open: u32,
}

/// The answer to a preStop hook: what happened, when, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Report {
    pub(crate) drain_id: String,
    pub(crate) outcome: Outcome,
    /// One sentence for humans: what happened and, on failure, what to do.
    pub(crate) message: String,
    pub(crate) master_pid: Option<i32>,
    pub(crate) master_title: Option<String>,
    pub(crate) workers_at_start: Vec<Worker>,
    /// Workers still alive when the drain ended (empty when drained).
    pub(crate) workers_left: Vec<Worker>,
    pub(crate) signal_method: Option<SignalMethod>,
    pub(crate) hook_received_at: String,
    pub(crate) hook_peer: String,
    pub(crate) sigquit_at: Option<String>,
    pub(crate) sigterm_at: Option<String>,
    pub(crate) exited_at: Option<String>,
    /// How the master exited, when the kernel showed it (its zombie's
    /// status): `exit status 0` after a graceful quit, `killed by SIGKILL`,
    /// or `unknown` (the kernel hides it from the sidecar, or the zombie was
    /// reaped first); null when it did not exit during the drain.
    pub(crate) exit_status: Option<String>,
    pub(crate) answered_at: String,
    pub(crate) durations: Durations,
    pub(crate) drain_timeout_ms: u64,
    /// What the connection census saw; absent when nothing was drained.
    pub(crate) traffic: Option<TrafficReport>,
    /// The connections NGINX held at the exit, and those it cut; absent
    /// when NGINX did not exit during the drain.
    pub(crate) connections: Option<ConnectionsReport>,
}

impl Report {
    pub(crate) fn http_status(&self) -> u16 {
        if self.outcome.is_success() { 200 } else { 500 }
    }

    /// Where the report contradicts itself (nothing, when it is right): an
    /// outcome its own facts rule out, or a sentence they do not support.
    /// The drain checks every report it makes; the tests check every report
    /// they see.
    pub(crate) fn contradictions(&self) -> Vec<String> {
        let mut wrong = Vec::new();
        let cut = self.connections.as_ref().map_or(0, |c| c.cut);
        let open_at_exit = self.connections.as_ref().map_or(0, |c| c.open_at_exit);
        let killed = self
            .exit_status
            .as_deref()
            .is_some_and(|e| e.starts_with("killed"));
        match self.outcome {
            Outcome::Drained => {
                if self.sigterm_at.is_some() {
                    wrong.push("drained, yet SIGTERM was sent".to_string());
                }
                if !self.workers_left.is_empty() {
                    wrong.push("drained, yet workers were left".into());
                }
                if cut > 0 {
                    wrong.push(format!("drained, yet {cut} connections were cut"));
                }
            }
            Outcome::StreamsClosed => {
                let by_timer = self
                    .connections
                    .as_ref()
                    .is_some_and(|c| c.cut_by == Some(CutBy::NginxWorkerShutdownTimeout));
                if cut == 0 || !by_timer {
                    wrong.push("streams_closed, yet nothing was cut by NGINX's timer".into());
                }
            }
            Outcome::Forced if self.sigterm_at.is_none() => {
                wrong.push("forced, yet no SIGTERM was sent".into());
            }
            _ => {}
        }
        if killed && matches!(self.outcome, Outcome::Drained | Outcome::StreamsClosed) {
            wrong.push(format!(
                "{}, yet the master was {}",
                self.outcome.as_str(),
                self.exit_status.as_deref().unwrap_or("?")
            ));
        }
        if self.message.contains("every in-flight request finished") {
            if !self.outcome.is_success() {
                wrong.push("says every request finished, and failed".into());
            }
            if open_at_exit > 0 {
                wrong.push(format!(
                    "says every request finished, yet {open_at_exit} connections were open in the last census before the exit"
                ));
            }
        }
        if let Some(t) = &self.traffic {
            if self.message.contains(" 0 new connections") && t.arrivals_during_wait > 0 {
                wrong.push(format!(
                    "says 0 new connections, and counted {}",
                    t.arrivals_during_wait
                ));
            }
            if t.requests_during_wait > 0
                && self.message.contains("new connections in that time")
                && !self.message.contains("requests on open connections")
            {
                wrong.push("names new connections only, and requests came on open ones".into());
            }
        }
        wrong
    }
}

/// What the drain is doing right now, for `/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Progress {
    pub(crate) drain_id: String,
    pub(crate) phase: DrainPhase,
    pub(crate) hook_received_at: String,
    pub(crate) elapsed_ms: u64,
    pub(crate) budget_left_ms: u64,
    pub(crate) sigquit_at: Option<String>,
    pub(crate) workers_remaining: Vec<Worker>,
    /// Open client connections per port, from the latest census.
    pub(crate) open_connections: BTreeMap<u16, u32>,
    pub(crate) arrivals_during_wait: u64,
    /// Once NGINX has exited: the connections it cut.
    pub(crate) cut_connections: Option<u32>,
    /// While waiting for traffic to stop: the quiet period and when SIGQUIT
    /// is due at the latest.
    pub(crate) quiet_period_ms: Option<u64>,
    pub(crate) sigquit_due_in_ms: Option<u64>,
}

/// The sidecar's state as `/status` shows it and `/readyz` judges it. It
/// says whether an NGINX master runs as truly as `ps` would: only
/// `ready`, `quitting`, `draining` and `drain_failed` have one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum State {
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
    /// The drain finished and the master exited; waiting for a new master.
    Drained,
    /// The drain finished but the master still runs (the outcome says why:
    /// `timeout`, `error`): NGINX serves on, out of the sidecar's hands.
    DrainFailed,
    /// Something is there but cannot be used safely; see `detail`.
    Unusable,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Snapshot {
    /// The wiring checks that fail now, each with its fix
    /// (`crate::wiring`).
    pub(crate) problems: Vec<Problem>,
    pub(crate) state: State,
    /// Why the sidecar is in this state, in words.
    pub(crate) detail: String,
    pub(crate) master: Option<Master>,
    pub(crate) workers: Vec<Worker>,
    pub(crate) drain: Option<Progress>,
    pub(crate) last_report: Option<Arc<Report>>,
    /// The sidecar received SIGTERM/SIGINT and exits once NGINX is gone.
    pub(crate) shutting_down: bool,
    /// NGINX masters that exited with no drain having run for them (the
    /// hook never reached the sidecar, or NGINX crashed), since the start.
    pub(crate) undrained_exits: u64,
    /// The latest connection census.
    pub(crate) traffic: Option<TrafficStatus>,
}

/// The connection census as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct TrafficStatus {
    pub(crate) census: CensusSource,
    pub(crate) arrivals_seen: ArrivalsSeen,
    pub(crate) ports: Vec<u16>,
    /// Listening ports with their accept-queue length.
    pub(crate) listening: BTreeMap<u16, u32>,
    /// Open client connections per port.
    pub(crate) open: BTreeMap<u16, u32>,
    pub(crate) arrivals_per_second_last_minute: f64,
    /// Whether requests on open connections are seen (`tcp_info`).
    pub(crate) requests_seen: bool,
    /// Requests on open connections per second over the last minute.
    pub(crate) requests_per_second_last_minute: f64,
    /// Addresses learned to be the kubelet's (from its probes and hooks):
    /// their connections to NGINX never count as arrivals.
    pub(crate) kubelet_peers: Vec<String>,
}

impl Snapshot {
    pub(crate) fn initial(detail: String) -> Snapshot {
        Snapshot {
            state: State::Searching,
            detail,
            master: None,
            workers: Vec::new(),
            drain: None,
            last_report: None,
            shutting_down: false,
            undrained_exits: 0,
            traffic: None,
            problems: Vec::new(),
        }
    }

    /// Whether a master is running, in this state.
    pub(crate) fn master_running(&self) -> bool {
        self.master.is_some()
            && matches!(
                self.state,
                State::Ready | State::Quitting | State::Draining | State::DrainFailed
            )
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.state == State::Ready
    }
}

#[cfg(test)]
mod clock_tests {
    use super::*;

    #[test]
    fn instants_before_the_anchor_are_stamped_at_their_own_time() {
        let clock = Clock::now();
        let before = clock.mono.checked_sub(Duration::from_millis(1500)).unwrap();
        let after = clock.mono + Duration::from_millis(250);
        let wall = |at| clock.wall_of(at).duration_since(clock.wall);
        assert_eq!(wall(after).unwrap(), Duration::from_millis(250));
        assert_eq!(
            clock.wall.duration_since(clock.wall_of(before)).unwrap(),
            Duration::from_millis(1500),
            "1.5 s before the hook, not the hook's time"
        );
        assert_ne!(clock.stamp(before), clock.stamp(clock.mono));
    }
}
