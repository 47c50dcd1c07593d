//! What one drain observed, accumulated as it goes and turned into the
//! report at the end. Only facts live here; the decisions are in
//! `sequence` (when to act) and `outcome` (what it amounted to).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use std::sync::Arc;

use crate::nginx::Worker;
use crate::nginx::process::ExitStatus;
use crate::report::{
    Clock, ConnectionsReport, Durations, Progress, Report, SamplePoint, Series, TrafficReport, ms,
    rate2,
};
use crate::sockets::arrivals::Kind;
use crate::sockets::view::{FAST_CENSUS_EVERY, OpenDetail, View};
use crate::vocab::{ArrivalsSeen, CensusSource, DrainPhase, Outcome, QuitReason, SignalMethod};

/// How many recent censuses' connection lists are kept.
pub(crate) const RECENT_CENSUSES: usize = 8;

/// At most this many points of the timeline are kept in the report.
const SERIES_CAP: usize = 600;

/// The traffic-aware wait's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WaitPolicy {
    pub(crate) min_delay: Duration,
    pub(crate) max_delay: Duration,
}

/// What the drain needs to know about the hook that started it.
pub(crate) struct Request {
    pub(crate) id: String,
    pub(crate) clock: Clock,
    pub(crate) peer: String,
    pub(crate) timeout: Duration,
    pub(crate) policy: WaitPolicy,
    /// `--worker-shutdown-timeout`, when given.
    pub(crate) worker_shutdown_timeout: Option<Duration>,
}

/// Accumulates what was observed; turned into the report at the end.
pub(crate) struct Record {
    req: Request,
    workers_at_start: Vec<Worker>,
    signal_method: SignalMethod,
    master_pid: i32,
    master_title: String,
    sigquit: Option<Instant>,
    sigterm: Option<Instant>,
    exited: Option<Instant>,
    exit_status: Option<ExitStatus>,
    // Traffic.
    census: CensusSource,
    arrivals_seen: ArrivalsSeen,
    ports: Vec<u16>,
    kubelet_peers: Vec<String>,
    rate_before: f64,
    requests_rate_before: f64,
    /// New client connections between the hook and SIGQUIT.
    connections: Counted,
    /// Requests on connections already open, between the hook and SIGQUIT.
    requests: Counted,
    requests_seen: bool,
    /// Whether arrivals were still coming when the wait had to end
    /// (--max-delay or the budget): some met a closing NGINX.
    still_arriving: bool,
    quiet_ms: u64,
    quiet_reason: String,
    quit_reason: Option<QuitReason>,
    open_now: BTreeMap<u16, u32>,
    open_at_sigquit: BTreeMap<u16, u32>,
    /// Pooled connections (open, idle) in the latest census, and at SIGQUIT.
    pooled_now: (u32, u32),
    pooled_at_sigquit: (u32, u32),
    open_at_hook: u32,
    /// The open connections of the latest censuses (at most
    /// [`RECENT_CENSUSES`], each summed up: bounded in size), with when each
    /// was taken: the moment NGINX cut connections may lie a little before
    /// its exit.
    recent: std::collections::VecDeque<CensusOpen>,
    last_closed: Option<Instant>,
    series: Series,
    last_seq: u64,
}

/// The open connections of one census, as the drain keeps them.
#[derive(Debug, Clone)]
pub(crate) struct CensusOpen {
    pub(crate) at: Instant,
    /// When the census ended (see `Sample::done`).
    pub(crate) done: Instant,
    pub(crate) per_port: BTreeMap<u16, u32>,
    pub(crate) detail: Arc<OpenDetail>,
}

impl CensusOpen {
    fn of(at: Instant, s: &crate::sockets::view::Sample) -> CensusOpen {
        CensusOpen {
            at,
            done: s.done.unwrap_or(at).max(at),
            per_port: s.open.clone(),
            detail: s.detail.clone().unwrap_or_default(),
        }
    }

    pub(crate) fn total(&self) -> u32 {
        self.per_port.values().sum()
    }
}

/// Arrivals of one kind counted from the log between the hook and SIGQUIT
/// (a record that straddles the hook counts for its share), and the last.
struct Counted {
    kind: Kind,
    n: f64,
    until: Instant,
    last: Option<Instant>,
}

impl Counted {
    fn new(kind: Kind, hook: Instant, view: &View) -> Counted {
        Counted {
            kind,
            n: 0.0,
            until: hook,
            last: view.log.last_of(kind),
        }
    }

    /// Takes in the log's new records (counted until SIGQUIT: `counting`).
    fn observe(&mut self, view: &View, counting: bool) {
        let last = view.log.last_of(self.kind);
        if counting && let Some(last) = last.filter(|t| *t > self.until) {
            self.n += view.log.count_after_share(self.until, self.kind);
            self.until = last;
        }
        if last.is_some() {
            self.last = last;
        }
    }

    fn total(&self) -> u64 {
        self.n.round() as u64
    }
}

impl Record {
    // What the drain did, as it did it.

    /// NGINX was already shutting down at the hook: no wait, no SIGQUIT.
    pub(crate) fn already_quitting(&mut self) {
        self.quit_reason = Some(QuitReason::AlreadyQuitting);
        self.quiet_reason = "nginx was already shutting down".into();
    }

    /// The quiet period as last judged (`None`: no census to judge by).
    pub(crate) fn set_quiet(&mut self, period_ms: Option<u64>, reason: String) {
        if let Some(p) = period_ms {
            self.quiet_ms = p;
        }
        self.quiet_reason = reason;
    }

    /// The wait ended, for `reason`: the open connections now are those at
    /// SIGQUIT. `still_arriving`: arrivals were still coming (the wait
    /// ended on a deadline within a quiet period of the last one).
    pub(crate) fn quit_decided(&mut self, reason: QuitReason, still_arriving: bool) {
        self.quit_reason = Some(reason);
        self.still_arriving = still_arriving;
        self.open_at_sigquit = self.open_now.clone();
        self.pooled_at_sigquit = self.pooled_now;
    }

    pub(crate) fn sigquit_sent(&mut self, at: Instant) {
        self.sigquit = Some(at);
    }

    pub(crate) fn sigterm_sent(&mut self, at: Instant) {
        self.sigterm = Some(at);
    }

    /// The master exited at `at`; after a SIGQUIT, NGINX had closed every
    /// connection by then.
    pub(crate) fn nginx_exited(&mut self, at: Instant, status: ExitStatus) {
        self.exited = Some(at);
        self.exit_status = Some(status);
        if self.last_closed.is_none() && self.sigquit.is_some() {
            self.last_closed = Some(at);
        }
    }

    // What was seen so far.

    pub(crate) fn req(&self) -> &Request {
        &self.req
    }
    pub(crate) fn sigquit(&self) -> Option<Instant> {
        self.sigquit
    }
    pub(crate) fn sigterm(&self) -> Option<Instant> {
        self.sigterm
    }
    pub(crate) fn quiet_reason(&self) -> &str {
        &self.quiet_reason
    }
    pub(crate) fn quiet_ms(&self) -> u64 {
        self.quiet_ms
    }
    pub(crate) fn quit_reason(&self) -> Option<QuitReason> {
        self.quit_reason
    }
    pub(crate) fn open_now(&self) -> &BTreeMap<u16, u32> {
        &self.open_now
    }
    pub(crate) fn open_at_sigquit(&self) -> &BTreeMap<u16, u32> {
        &self.open_at_sigquit
    }
    pub(crate) fn open_at_hook(&self) -> u32 {
        self.open_at_hook
    }
    pub(crate) fn last_closed(&self) -> Option<Instant> {
        self.last_closed
    }
    pub(crate) fn workers_at_start(&self) -> &[Worker] {
        &self.workers_at_start
    }
    pub(crate) fn signal_method(&self) -> SignalMethod {
        self.signal_method
    }
    pub(crate) fn master_pid(&self) -> i32 {
        self.master_pid
    }

    pub(crate) fn new(
        req: Request,
        master_pid: i32,
        master_title: String,
        signal_method: SignalMethod,
        workers_at_start: Vec<Worker>,
        first: &View,
    ) -> Record {
        let req_hook = req.clock.mono;
        Record {
            rate_before: first.log.rate_before(req_hook, Kind::Connections),
            requests_rate_before: first.log.rate_before(req_hook, Kind::Requests),
            connections: Counted::new(Kind::Connections, req_hook, first),
            requests: Counted::new(Kind::Requests, req_hook, first),
            requests_seen: first.requests_seen,
            still_arriving: false,
            req,
            workers_at_start,
            signal_method,
            master_pid,
            master_title,
            sigquit: None,
            sigterm: None,
            exited: None,
            exit_status: None,
            census: first.census_label(),
            arrivals_seen: first.arrivals_label(),
            ports: first.ports.iter().copied().collect(),
            kubelet_peers: first
                .kubelet_peers
                .iter()
                .map(ToString::to_string)
                .collect(),
            quiet_ms: 0,
            quiet_reason: String::new(),
            quit_reason: None,
            open_now: first.sample.open.clone(),
            open_at_sigquit: BTreeMap::new(),
            pooled_now: (first.sample.pooled_open, first.sample.pooled_idle),
            pooled_at_sigquit: (0, 0),
            open_at_hook: first.sample.open_total(),
            recent: first
                .sample
                .at
                .map(|at| CensusOpen::of(at, &first.sample))
                .into_iter()
                .collect(),
            last_closed: None,
            series: Series::new(SERIES_CAP, ms(FAST_CENSUS_EVERY)),
            last_seq: first.sample.seq,
        }
    }

    /// Takes in a census sample (once per sample).
    pub(crate) fn observe(&mut self, view: &View) {
        // Arrivals come from the log: censuses and destroy events both
        // record there, a census sample holds only its own.
        let counting = self.sigquit.is_none();
        self.connections.observe(view, counting);
        self.requests.observe(view, counting);
        if counting {
            self.requests_seen = view.requests_seen;
        }
        let s = &view.sample;
        let Some(at) = s.at else { return };
        if s.seq == self.last_seq || at < self.req.clock.mono {
            return;
        }
        self.last_seq = s.seq;
        self.census = view.census_label();
        self.arrivals_seen = view.arrivals_label();
        self.ports = view.ports.iter().copied().collect();
        self.kubelet_peers = view.kubelet_peers.iter().map(ToString::to_string).collect();
        self.open_now = s.open.clone();
        self.pooled_now = (s.pooled_open, s.pooled_idle);
        if self.recent.len() == RECENT_CENSUSES {
            self.recent.pop_front();
        }
        self.recent.push_back(CensusOpen::of(at, s));
        if self.sigquit.is_some() && self.last_closed.is_none() && s.open_total() == 0 {
            self.last_closed = Some(at);
        }
        self.series.push(SamplePoint {
            t_ms: self.req.clock.millis_since_start(at),
            arrivals: s.arrivals,
            requests: s.requests,
            open: s.open_total(),
        });
    }

    /// The latest census that ended at or before `t`, with its
    /// connections: what was open just before `t` (one that ended after
    /// may have listed the socket table after `t`). The oldest kept when
    /// none did.
    pub(crate) fn census_before(&self, t: Instant) -> Option<CensusOpen> {
        self.recent
            .iter()
            .rev()
            .find(|c| c.done <= t)
            .or(self.recent.front())
            .cloned()
    }

    /// New client connections between the hook and SIGQUIT.
    pub(crate) fn arrivals_during_wait(&self) -> u64 {
        self.connections.total()
    }

    /// Requests on connections already open between the hook and SIGQUIT.
    pub(crate) fn requests_during_wait(&self) -> u64 {
        self.requests.total()
    }

    /// Whether requests on open connections were seen.
    pub(crate) fn requests_seen(&self) -> bool {
        self.requests_seen
    }

    /// Whether arrivals were still coming when the wait had to end.
    pub(crate) fn still_arriving(&self) -> bool {
        self.still_arriving
    }

    /// Milliseconds from the hook to `t`.
    pub(crate) fn since_hook(&self, t: Instant) -> u64 {
        self.req.clock.millis_since_start(t)
    }

    /// The drain's progress as `/status` shows it.
    pub(crate) fn progress(
        &self,
        phase: DrainPhase,
        left: Duration,
        remaining: Vec<Worker>,
        due: Option<Instant>,
        now: Instant,
    ) -> Progress {
        Progress {
            drain_id: self.req.id.clone(),
            phase,
            hook_received_at: self.req.clock.stamp(self.req.clock.mono),
            elapsed_ms: self.since_hook(now),
            budget_left_ms: ms(left),
            sigquit_at: self.sigquit.map(|t| self.req.clock.stamp(t)),
            workers_remaining: remaining,
            open_connections: self.open_now.clone(),
            arrivals_during_wait: self.arrivals_during_wait(),
            cut_connections: None,
            quiet_period_ms: (phase == DrainPhase::AwaitQuiet).then_some(self.quiet_ms),
            sigquit_due_in_ms: due.map(|d| ms(d.saturating_duration_since(now))),
        }
    }

    pub(crate) fn finish(
        self,
        outcome: Outcome,
        message: String,
        workers_left: Vec<Worker>,
        connections: Option<ConnectionsReport>,
    ) -> Report {
        let clock = self.req.clock;
        let now = Instant::now();
        let stamp = |t: Option<Instant>| t.map(|t| clock.stamp(t));
        let traffic = self.quit_reason.map(|reason| TrafficReport {
            census: self.census,
            arrivals_seen: self.arrivals_seen,
            ports: self.ports.clone(),
            kubelet_peers: self.kubelet_peers.clone(),
            arrivals_per_second_before_hook: rate2(self.rate_before),
            arrivals_during_wait: self.arrivals_during_wait(),
            last_arrival_at: stamp(self.connections.last),
            requests_seen: self.requests_seen,
            requests_per_second_before_hook: rate2(self.requests_rate_before),
            requests_during_wait: self.requests_during_wait(),
            last_request_at: stamp(self.requests.last),
            quiet_period_ms: self.quiet_ms,
            quiet_period_reason: self.quiet_reason.clone(),
            sigquit_reason: reason,
            wait_before_sigquit_ms: self.sigquit.map_or(0, |t| clock.millis_since_start(t)),
            connections_at_sigquit: self.open_at_sigquit.clone(),
            pooled_at_sigquit: self.pooled_at_sigquit.0,
            pooled_idle_at_sigquit: self.pooled_at_sigquit.1,
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
            exit_status: self.exit_status.map(|e| e.to_string()),
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
            connections,
        }
    }
}
