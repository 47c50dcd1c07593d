//! The JSON the sidecar answers with: the drain report (`/prestop`) and the
//! status snapshot (`/status`). Plain serde types: no logic lives here beyond
//! turning monotonic instants into wall-clock timestamps for humans.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::time::Instant;

use crate::drain::quiet::QuitReason;
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

/// What the census saw around the drain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrafficReport {
    /// `netlink` or `proc` (the fallback), or `unavailable`.
    pub census: &'static str,
    /// The ports counted as NGINX's.
    pub ports: Vec<u16>,
    /// New client connections per second over the minute before the hook.
    pub arrivals_per_second_before_hook: f64,
    /// New client connections between the hook and SIGQUIT.
    pub arrivals_during_wait: u64,
    pub last_arrival_at: Option<String>,
    /// The quiet period in force when SIGQUIT was sent, and how it was chosen.
    pub quiet_period_ms: u64,
    pub quiet_period_reason: String,
    /// `quiet`, `max_delay`, `budget` or `already_quitting`.
    pub sigquit_reason: QuitReason,
    pub wait_before_sigquit_ms: u64,
    /// Open client connections per port when SIGQUIT was sent.
    pub connections_at_sigquit: BTreeMap<u16, u32>,
    /// When the census first saw no open client connection after SIGQUIT.
    pub last_connection_closed_at: Option<String>,
    pub last_connection_closed_after_sigquit_ms: Option<u64>,
    /// The census samples from the hook on (bounded: when full, neighbours
    /// are merged and the spacing doubles).
    pub samples_every_ms: u64,
    pub samples: Vec<SamplePoint>,
}

/// One point of the drain's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SamplePoint {
    /// Milliseconds since the hook arrived.
    pub t_ms: u64,
    /// New client connections since the previous point.
    pub arrivals: u32,
    /// Open client connections at this point.
    pub open: u32,
}

/// A bounded timeline: at most `cap` points; when full, pairs merge.
#[derive(Debug, Clone)]
pub struct Series {
    cap: usize,
    stride: u32,
    pending: u32,
    pending_arrivals: u32,
    pub every_ms: u64,
    pub points: Vec<SamplePoint>,
}

impl Series {
    pub fn new(cap: usize, every_ms: u64) -> Series {
        Series {
            cap: cap.max(2),
            stride: 1,
            pending: 0,
            pending_arrivals: 0,
            every_ms,
            points: Vec::new(),
        }
    }

    pub fn push(&mut self, p: SamplePoint) {
        self.pending += 1;
        self.pending_arrivals += p.arrivals;
        if self.pending < self.stride {
            return;
        }
        self.points.push(SamplePoint {
            arrivals: self.pending_arrivals,
            ..p
        });
        self.pending = 0;
        self.pending_arrivals = 0;
        if self.points.len() >= self.cap {
            let merged = self
                .points
                .chunks(2)
                .map(|c| {
                    let last = c[c.len() - 1];
                    SamplePoint {
                        arrivals: c.iter().map(|x| x.arrivals).sum(),
                        ..last
                    }
                })
                .collect();
            self.points = merged;
            self.stride *= 2;
            self.every_ms *= 2;
        }
    }
}

/// The answer to a preStop hook: what happened, when, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    /// What the connection census saw; absent when nothing was drained.
    pub traffic: Option<TrafficReport>,
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
    /// Open client connections per port, from the latest census.
    pub open_connections: BTreeMap<u16, u32>,
    pub arrivals_during_wait: u64,
    /// While waiting for traffic to stop: the quiet period and when SIGQUIT
    /// is due at the latest.
    pub quiet_period_ms: Option<u64>,
    pub sigquit_due_in_ms: Option<u64>,
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
    /// The latest connection census.
    pub traffic: Option<TrafficStatus>,
}

/// The connection census as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrafficStatus {
    /// `netlink`, `proc` (the fallback) or `unavailable`.
    pub census: &'static str,
    pub ports: Vec<u16>,
    /// Listening ports with their accept-queue length.
    pub listening: BTreeMap<u16, u32>,
    /// Open client connections per port.
    pub open: BTreeMap<u16, u32>,
    pub arrivals_per_second_last_minute: f64,
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
            traffic: None,
        }
    }
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }
}

/// The kubelet keeps at most this many bytes of a termination message.
pub const TERMINATION_MESSAGE_LIMIT: usize = 4096;

/// Writes `report` as compact JSON to `path`: to a temporary file in the same
/// directory, then renamed over `path`, so that a reader never sees half a
/// report. Where `path` is a mount point (the kubelet bind-mounts
/// `terminationMessagePath`), renaming over it is impossible; then it is
/// rewritten in place. Reports over 4 KiB (the kubelet's limit for a
/// termination message) lose their timeline first.
pub fn write_file(path: &std::path::Path, report: &Report) -> std::io::Result<()> {
    use std::io::Write;
    let mut body = serde_json::to_vec(report).map_err(std::io::Error::other)?;
    if body.len() > TERMINATION_MESSAGE_LIMIT
        && let Some(t) = &report.traffic
    {
        let mut slim = report.clone();
        slim.traffic = Some(TrafficReport {
            samples: Vec::new(),
            ..t.clone()
        });
        body = serde_json::to_vec(&slim).map_err(std::io::Error::other)?;
    }
    body.push(b'\n');
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let staged = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    match staged {
        Ok(()) => Ok(()),
        Err(_) => {
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)?;
            f.write_all(&body)?;
            f.sync_all()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_stays_bounded_and_keeps_every_arrival() {
        let mut s = Series::new(8, 50);
        for i in 0..100u64 {
            s.push(SamplePoint {
                t_ms: i * 50,
                arrivals: 1,
                open: i as u32,
            });
        }
        assert!(s.points.len() <= 8);
        let kept: u32 = s.points.iter().map(|p| p.arrivals).sum();
        assert!(
            (100 - 16..=100).contains(&kept),
            "at most one stride pending: {kept}"
        );
        assert!(s.every_ms > 50);
        assert!(s.points.windows(2).all(|w| w[0].t_ms < w[1].t_ms));
    }
}
