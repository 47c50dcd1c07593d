//! The connection monitor's decisions, apart from its I/O: when to take a
//! census, how accepts are accounted for, what counts as an arrival and when
//! it happened, and what the view says. It reads the kernel through
//! [`Sources`] (the real one is [`Kernel`]), so that its decisions are
//! tested under tokio's paused clock with a scripted kernel, like the
//! drain's state machine (`sampler/tests.rs`).
//!
//! Invariants kept here: every accept is accounted for by a census that saw
//! its connection or by its destroy event, and until then the view says so
//! (`unattributed`, which keeps the drain from a quiet SIGQUIT); a
//! connection counts once; censuses are spaced by their own CPU cost; the
//! kubelet's probes are budgeted, not ignored (`probes`).

use crate::vocab::CensusMethod;
use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::time::Instant;

use super::arrivals::{ArrivalLog, Arrivals, FewPeers, add_peers, take_probes};
use super::census::conn_id;
use super::netlink::DestroyWatch;
use super::probes::{self, ProbeBudget};
use super::view::{
    FAST_CENSUS_EVERY, MonitorConfig, OpenConn, OpenDetail, Sample, Shared, TICK, View,
};
use super::{Census, NewConns, PortFilter, Sock, Source};

/// Censuses are at least this many times their own CPU cost apart while
/// idle (at most 2 % of a core)...
const IDLE_COST_FACTOR: u32 = 50;
/// ...the idle periodic census, when nothing asks for one (at most 0.2 %:
/// with 100k connections, every 50 s rather than 30, never beyond 60 s)...
const IDLE_PERIODIC_COST_FACTOR: u32 = 500;
/// While idle, a census at least this often (the open connections, their
/// ages, listeners that appeared), even when nothing was accepted.
pub(crate) const IDLE_CENSUS_AT_LEAST_EVERY: Duration = Duration::from_secs(30);
const IDLE_CENSUS_STRETCHED_AT_MOST: Duration = Duration::from_secs(60);
/// ...and while a drain runs (at most 1.7 %).
const FAST_COST_FACTOR: u32 = 60;

/// What the sampler reads from the kernel besides the accept counter (which
/// its handles read too: [`Shared`]): the TCP destroy events and the census.
pub(crate) trait Sources {
    /// Where the census comes from now.
    fn method(&self) -> CensusMethod;
    /// Whether the destroy events are watched.
    fn watches_destroyed(&self) -> bool;
    /// Resolves when destroy events are queued; never when none are
    /// watched.
    fn destroyed_ready(&self) -> impl Future<Output = ()> + Send + '_;
    /// The destroy events queued now, into `out`; true when the kernel
    /// dropped some.
    fn read_destroyed(&mut self, out: &mut Vec<Sock>) -> io::Result<bool>;
    /// Stops watching the destroy events (they failed).
    fn stop_destroyed(&mut self);
    /// A census of `job` (see `Source::census_since`), off the caller's
    /// thread where it is real: what it found, and the job given back with
    /// its state updated (or kept, when no census could be taken).
    fn census(&mut self, job: CensusJob) -> impl Future<Output = CensusDone> + Send + '_;
}

/// What one census needs, owned, so that it can run on another thread: the
/// filter, the ports seen so far and the census before it, which it updates
/// in place.
pub(crate) struct CensusJob {
    pub(crate) filter: PortFilter,
    pub(crate) ports_seen: BTreeSet<u16>,
    pub(crate) before: Option<Census>,
    /// The drain's hook (tick), when a drain wants detail.
    pub(crate) detail: Option<u32>,
    pub(crate) tick: u32,
    pub(crate) time_wait_arrives: bool,
}

/// A census done: the job back, what it found, and its CPU cost (on the
/// thread that took it).
pub(crate) struct CensusDone {
    pub(crate) job: CensusJob,
    pub(crate) result: io::Result<(Census, NewConns)>,
    pub(crate) cpu: Duration,
}

impl CensusJob {
    /// Takes the census from `source`, on the calling thread.
    pub(crate) fn run(mut self, source: &mut Source) -> CensusDone {
        let cpu_before = thread_cpu_time();
        let result = source.census_since(
            &self.filter,
            &mut self.ports_seen,
            &mut self.before,
            self.detail,
            self.tick,
            self.time_wait_arrives,
        );
        CensusDone {
            cpu: thread_cpu_time().saturating_sub(cpu_before),
            job: self,
            result,
        }
    }
}

/// The CPU time the calling thread has used: what a census costs.
fn thread_cpu_time() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// The real kernel: the census source (netlink or /proc) and the destroy
/// events, when it gives them.
pub(crate) struct Kernel {
    /// The census source; lent to the blocking thread while a census runs
    /// there, so that the runtime's one thread (the hook's answer, `/readyz`,
    /// the drain's timers) never waits for a dump of 100k sockets.
    source: Option<Source>,
    method: CensusMethod,
    /// The kernel's destroy events, when it gives them (not with `--census
    /// proc`); without them, connections that open and close between two
    /// censuses with the client closing first go unseen.
    destroyed: Option<AsyncFd<DestroyWatch>>,
}

impl Kernel {
    pub(crate) fn new(config: &MonitorConfig) -> Kernel {
        let source = Source::new(config.method);
        let destroyed = if source.method == CensusMethod::Netlink {
            let watch = DestroyWatch::new().and_then(|w| {
                // SAFETY: the watch owns its netlink socket for its whole
                // life, and `as_raw_fd` always returns that socket.
                unsafe { AsyncFd::register_with_interest(w, tokio::io::Interest::READABLE) }
                    .map_err(|e| e.into_parts().1)
            });
            match watch {
                Ok(fd) => Some(fd),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the kernel's TCP destroy events (NETLINK_SOCK_DIAG groups): connections that open and close between two censuses, the client closing first, go uncounted; the quiet period may be judged on too few arrivals");
                    None
                }
            }
        } else {
            tracing::warn!(
                "counting connections from /proc/net/tcp{{,6}} without the kernel's destroy events: connections that open and close between two censuses, the client closing first, go uncounted"
            );
            None
        };
        Kernel {
            method: source.method,
            source: Some(source),
            destroyed,
        }
    }
}

impl Sources for Kernel {
    fn method(&self) -> CensusMethod {
        self.method
    }

    fn watches_destroyed(&self) -> bool {
        self.destroyed.is_some()
    }

    async fn destroyed_ready(&self) {
        match &self.destroyed {
            Some(fd) => {
                if let Ok(mut guard) = fd.readable().await {
                    // Cleared before reading: an event that lands after the
                    // read sets it again (no wakeup is lost).
                    guard.clear_ready();
                }
            }
            None => std::future::pending().await,
        }
    }

    fn read_destroyed(&mut self, out: &mut Vec<Sock>) -> io::Result<bool> {
        match &mut self.destroyed {
            Some(fd) => fd.get_mut().read(out),
            None => Ok(false),
        }
    }

    fn stop_destroyed(&mut self) {
        self.destroyed = None;
    }

    async fn census(&mut self, job: CensusJob) -> CensusDone {
        let Some(mut source) = self.source.take() else {
            // Only a census that panicked leaves no source: no census then.
            return CensusDone {
                job,
                result: Err(io::Error::other("the census source was lost")),
                cpu: Duration::ZERO,
            };
        };
        match tokio::task::spawn_blocking(move || {
            let done = job.run(&mut source);
            (source, done)
        })
        .await
        {
            Ok((source, done)) => {
                self.method = source.method;
                self.source = Some(source);
                done
            }
            Err(e) => {
                tracing::error!(error = %e, "the census thread failed: no census from now on; please report this as a bug");
                std::future::pending().await
            }
        }
    }
}

/// Why the monitor looks now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Look {
    /// Its own cadence.
    Regular,
    /// The drain's last look: a census if any accept is unaccounted for.
    Attribute,
    /// A drain started: a census now, for the open connections at the hook.
    Census,
}

/// The monitor task's state: the census source, the destroy events, what
/// it learned, and the arrival log it publishes.
///
/// How arrivals are counted, exactly and without walking every socket:
/// a connection NGINX accepted is either seen by a census while its socket
/// exists (counted then), or ends before any census saw it, and then its
/// destroy event reports it (counted then). The namespace's accept counter
/// says, at O(1) cost, whether anything was accepted that neither has
/// accounted for yet ("unattributed"): only then is a census worth its cost.
pub(crate) struct Sampler<S: Sources> {
    /// The kernel (or, in tests, a script of it).
    pub(crate) sources: S,
    filter: PortFilter,
    view: watch::Sender<View>,
    shared: Arc<Shared>,
    /// The kernel dropped destroy events since the last census.
    lost_events: bool,
    /// The destroy events of one read (a buffer kept between reads).
    ended: Vec<Sock>,
    /// Accepts (less the sidecar's own) read just before the last census.
    accepted_at_census: Option<u64>,
    /// Accepted connections since then that ended before any census saw
    /// them (their destroy events), on any port: they account for accepts.
    ended_unseen: u64,
    /// The kubelet's addresses, each with its probe budget.
    kubelet: Vec<(IpAddr, ProbeBudget)>,
    /// Arrivals from destroy events not recorded yet, by peer.
    short: Vec<IpAddr>,
    /// Of the destroy events read, those from a `--pool-peer`: requests of
    /// its pool, recorded as such (not yet recorded).
    pool_short: u32,
    /// Accepts not accounted for at the last tick.
    unattributed: u64,
    /// Arrivals recorded since the last census (its sample's count).
    since_census: u32,
    /// What the view was last given: unattributed accepts and the counter,
    /// and the log (cloned again only when it changed).
    published: (u64, Option<u64>),
    published_log: Arc<ArrivalLog>,
    log_changed: bool,
    /// The segment counter read just before the last census, and at the
    /// last look: when they differ, something arrived since that census
    /// (perhaps a request on an open connection, which only a census sees).
    segments_at_census: Option<u64>,
    segments_now: Option<u64>,
    /// The last look at which no segment had arrived since the last census:
    /// requests the next census finds came after it (as `last_clear` is
    /// for accepts). Without it, requests after an idle while would be
    /// spread back over the whole while, inventing long gaps between them.
    segments_clear: Instant,
    /// Whether censuses see requests on open connections (`tcp_info`).
    requests_seen: bool,
    /// The last tick at which every accept was accounted for.
    last_clear: Instant,
    last_tick: Instant,
    last_census: Option<Instant>,
    /// What the last census cost (CPU time): censuses are spaced so that
    /// they stay a small share of a core however many connections are open.
    census_cost: Duration,
    ports_seen: BTreeSet<u16>,
    log: ArrivalLog,
    prev: Option<Census>,
    /// The clock of the census's first sightings: ticks of [`TICK`] since.
    epoch: Instant,
    /// The latest drain's hook on that clock.
    hook_tick: Option<u32>,
    seq: u64,
    failing: bool,
}

impl<S: Sources> Sampler<S> {
    pub(crate) fn new(
        sources: S,
        filter: PortFilter,
        view: watch::Sender<View>,
        shared: Arc<Shared>,
    ) -> Sampler<S> {
        let now = Instant::now();
        let requests_seen = sources.method() == CensusMethod::Netlink;
        Sampler {
            requests_seen,
            sources,
            filter,
            view,
            shared,
            lost_events: false,
            ended: Vec::new(),
            accepted_at_census: None,
            ended_unseen: 0,
            short: Vec::new(),
            pool_short: 0,
            kubelet: Vec::new(),
            unattributed: 0,
            since_census: 0,
            published: (0, None),
            published_log: Arc::new(ArrivalLog::new(now)),
            log_changed: false,
            segments_at_census: None,
            segments_now: None,
            segments_clear: now,
            last_clear: now,
            last_tick: now,
            last_census: None,
            census_cost: Duration::ZERO,
            ports_seen: BTreeSet::new(),
            log: ArrivalLog::new(now),
            prev: None,
            epoch: now,
            hook_tick: None,
            seq: 0,
            failing: false,
        }
    }

    /// `ip` is the kubelet's: from now on, its connections beyond the probe
    /// budget count (clients the node masqueraded) and those within it do
    /// not (its probes); the arrivals logged from it before are judged the
    /// same way, where a sample of few peers can tell.
    pub(crate) fn learn_kubelet(&mut self, ip: IpAddr) {
        if !self.filter.peer_counts(&std::net::SocketAddr::new(ip, 0))
            || self.kubelet.iter().any(|(k, _)| *k == ip)
        {
            return;
        }
        let mut budget = ProbeBudget::default();
        let taken = self.log.forgive_probes(ip, &mut budget);
        self.kubelet.push((ip, budget));
        tracing::info!(
            peer = %ip,
            probes_taken_back = taken,
            "learned the kubelet's address (its probes and hooks come from there): up to {} connections at once and {} a second from it are taken to be its probes; more are clients (the node masquerades Service traffic to this address)",
            probes::BURST,
            probes::PER_SECOND,
        );
        self.published_log = Arc::new(self.log.clone());
        self.log_changed = false;
        let log_now = self.published_log.clone();
        self.view.send_modify(|v| {
            v.log = log_now;
            v.kubelet_peers.push(ip);
        });
    }

    /// Reads the destroy events queued now. A server-side connection (on a
    /// port NGINX listens or listened on) that no census saw alive accounts
    /// for one accept; from a client peer, it is an arrival.
    pub(crate) fn read_destroyed(&mut self) {
        if !self.sources.watches_destroyed() {
            return;
        }
        let mut ended = std::mem::take(&mut self.ended);
        ended.clear();
        match self.sources.read_destroyed(&mut ended) {
            Ok(overrun) => self.lost_events |= overrun,
            Err(e) => {
                tracing::warn!(error = %e, "reading the kernel's TCP destroy events failed: counting from censuses alone from now on");
                self.sources.stop_destroyed();
                return;
            }
        }
        self.count_ended(&ended);
        self.ended = ended;
        // Recorded now, each at the moment the kernel reported it (a short
        // connection ends within milliseconds of its arrival), not spread
        // evenly over the next look's span: the quiet rule judges silences
        // by the gaps between arrivals, and evening them out would hide
        // their spread and make its quiet period too short.
        if !self.short.is_empty() {
            let short = std::mem::take(&mut self.short);
            self.record(
                Instant::now(),
                Duration::ZERO,
                u32::try_from(short.len()).unwrap_or(u32::MAX),
                add_peers(Some(Box::default()), &short),
            );
        }
        if self.pool_short > 0 {
            let n = std::mem::take(&mut self.pool_short);
            self.log_changed = true;
            self.log.record_requests(Arrivals {
                at: Instant::now(),
                span: Duration::ZERO,
                n,
            });
        }
    }

    /// Accounts for the connections that ended (see [`Sampler::read_destroyed`]).
    fn count_ended(&mut self, ended: &[Sock]) {
        // Before the first census there is nothing to compare with.
        let Some(prev) = &self.prev else {
            return;
        };
        for s in ended {
            let port = s.local.port();
            // A listener closing (NGINX quitting, restarting or reloading)
            // has no peer: it is not a connection.
            if s.peer.port() == 0 || self.filter.exclude.contains(&port) {
                continue;
            }
            let counted = self.ports_seen.contains(&port);
            // A connection that no census saw (for other listeners, the
            // census keeps none: each of their ends accounts for an accept).
            if counted && prev.saw_alive(conn_id(s.local, s.peer)) {
                continue;
            }
            if !counted && !prev.other_listeners.contains(&port) {
                continue; // the client end of a connection, or an upstream
            }
            self.ended_unseen += 1;
            tracing::trace!(local = %s.local, peer = %s.peer, state = s.state, counted, "ended unseen");
            if !(counted && self.filter.peer_counts(&s.peer)) {
                continue;
            }
            if self.filter.pool_peer(&s.peer) {
                self.pool_short += 1;
            } else {
                self.short.push(s.peer.ip());
            }
        }
    }

    /// Whether a census is due now.
    fn census_due(&self, fast: bool, look: Look, at: Instant) -> bool {
        let Some(last) = self.last_census else {
            return true;
        };
        let since = at.saturating_duration_since(last);
        let (periodic, cost_share) = if fast {
            (FAST_CENSUS_EVERY, FAST_COST_FACTOR)
        } else {
            (
                (self.census_cost * IDLE_PERIODIC_COST_FACTOR)
                    .clamp(IDLE_CENSUS_AT_LEAST_EVERY, IDLE_CENSUS_STRETCHED_AT_MOST),
                IDLE_COST_FACTOR,
            )
        };
        let min_gap = self.census_cost * cost_share;
        // Segments arrived since the last census: perhaps requests on open
        // connections, which only a census sees (with `tcp_info`).
        let arrived = self.requests_seen && self.segments_now != self.segments_at_census;
        let asked = match look {
            Look::Regular => false,
            Look::Attribute => self.unattributed > 0,
            // A drain starts: a census now, unless one was just taken that
            // cost so much (100k connections) that another would break the
            // drain's CPU bound; the next comes when the bound allows.
            Look::Census => since >= min_gap,
        };
        if asked || self.accepted_at_census.is_none() {
            return true;
        }
        since >= periodic.max(min_gap) || ((self.unattributed > 0 || arrived) && since >= min_gap)
    }

    /// One look: the accept counter and the destroy events; a census when
    /// something is unattributed (spaced by its cost) or one is due; then
    /// the view.
    pub(crate) async fn tick(&mut self, fast: bool, look: Look) {
        self.read_destroyed();
        let at = Instant::now();
        let (accepted, segments) = self.shared.counters();
        self.segments_now = segments;
        self.unattributed = match (accepted, self.accepted_at_census) {
            (Some(a), Some(k)) => a.saturating_sub(k).saturating_sub(self.ended_unseen),
            _ => 1,
        };
        if self.census_due(fast, look, at) {
            self.census(fast, at, accepted).await;
        } else {
            let short = std::mem::take(&mut self.short);
            if !short.is_empty() {
                let span = at.saturating_duration_since(self.last_tick);
                self.record(
                    at,
                    span,
                    short.len() as u32,
                    add_peers(Some(Box::default()), &short),
                );
            }
            // Nothing new for the view: no wakeup for its readers (the
            // drain asking for a look always gets an answer).
            let news = !short.is_empty()
                || look == Look::Attribute
                || (self.unattributed, accepted) != self.published;
            if news {
                self.publish(None, accepted);
            }
        }
        if self.unattributed == 0 {
            self.last_clear = at;
        }
        if self.segments_now == self.segments_at_census {
            self.segments_clear = at;
        }
        self.last_tick = at;
    }

    async fn census(&mut self, fast: bool, at: Instant, accepted: Option<u64>) {
        let tick = self.tick_of(at);
        let watched = self.sources.watches_destroyed();
        let first = self.prev.is_none();
        // The first census after the hook: if nothing was accepted since
        // the hook, every connection it sees for the first time was
        // accepted before it, and is stamped so.
        let mark = self.shared.hook.lock().ok().and_then(|mut h| h.take());
        if let Some((hook, _)) = mark {
            self.hook_tick = Some(self.tick_of(hook));
        }
        let tick = match mark {
            Some((hook, at_hook)) if at_hook.is_some() && at_hook == accepted => {
                tick.min(self.tick_of(hook).saturating_sub(1))
            }
            _ => tick,
        };
        // While a drain runs, the open connections summed up against its
        // hook (for what the report says of connections NGINX cut).
        let detail = fast.then(|| self.hook_tick.unwrap_or(tick));
        // The previous census is updated in place (one map, not two); kept
        // when no census can be taken. It runs on another thread.
        let job = CensusJob {
            filter: self.filter.clone(),
            ports_seen: std::mem::take(&mut self.ports_seen),
            before: self.prev.take(),
            detail,
            tick,
            time_wait_arrives: !watched,
        };
        let done = self.sources.census(job).await;
        self.ports_seen = done.job.ports_seen;
        self.prev = done.job.before;
        // What it found, it found by now (a census of 100k sockets takes a
        // quarter of a second): arrivals are recorded at its end, never
        // earlier than they may have come; the sample is as fresh as its
        // start (what came after may be unseen).
        let at_end = Instant::now();
        let (census, new) = match done.result {
            Ok(c) => {
                self.failing = false;
                c
            }
            Err(e) => {
                if !self.failing {
                    tracing::error!(error = %e, "cannot take a connection census (netlink and /proc/net/tcp both failed): the drain cannot see traffic and waits --max-delay before SIGQUIT");
                    self.failing = true;
                }
                self.view.send_modify(|v| v.error = Some(e.to_string()));
                return;
            }
        };
        // What it cost the CPU, not the wall clock: on a busy machine the
        // wall time includes every other process's turns, and censuses
        // spaced by that would see new connections late.
        self.census_cost = done.cpu;
        tracing::trace!(conns = census.conns.len(), open = %crate::vocab::json(&census.open), new = new.n, requests = new.requests.n, cost_us = self.census_cost.as_micros() as u64, "census");
        if census.open.values().any(|n| *n > 0) {
            // Open connections without `tcp_info` (/proc, or a kernel
            // older than 4.6): requests on them cannot be seen.
            self.requests_seen = census.activity_seen;
        }
        self.segments_at_census = self.segments_now;
        let short = std::mem::take(&mut self.short);
        let mut arrivals = new.n.saturating_add(short.len() as u32);
        if self.lost_events && watched {
            // Events were dropped: every accept not otherwise accounted
            // for counts (more waiting, never a refusal).
            arrivals = arrivals.max(u32::try_from(self.unattributed).unwrap_or(u32::MAX));
        }
        self.lost_events = false;
        // Anything new arrived after the last tick that had nothing
        // unaccounted for.
        let span = at_end.saturating_duration_since(self.last_clear);
        if !first {
            self.record(at_end, span, arrivals, add_peers(new.peers, &short));
            self.record_requests(at_end, &new.requests);
        }
        self.accepted_at_census = accepted;
        self.ended_unseen = 0;
        self.unattributed = 0;
        self.last_census = Some(at);
        self.seq += 1;
        let detail = self.open_detail(&census);
        let since_census = std::mem::take(&mut self.since_census);
        let sample = Sample {
            seq: self.seq,
            at: Some(at),
            done: Some(at_end),
            arrivals: if first { 0 } else { since_census },
            requests: if first { 0 } else { new.requests.n },
            pooled_open: census.pooled_open,
            pooled_idle: census.pooled_idle,
            open: census.open.clone(),
            listening: census.listening.clone(),
            detail,
        };
        self.prev = Some(census);
        self.publish(Some(sample), accepted);
    }

    fn record(&mut self, at: Instant, span: Duration, mut n: u32, mut peers: FewPeers) {
        // The kubelet's probes are not arrivals; what else comes from its
        // address is (see `probes`). A sample of many peers cannot tell:
        // all of it counts.
        if let Some(list) = &mut peers {
            for (ip, budget) in &mut self.kubelet {
                n -= take_probes(list, *ip, at, span, budget).min(n);
            }
        }
        if n > 0 {
            tracing::trace!(n, ?peers, span_ms = span.as_millis() as u64, "arrivals");
        }
        self.since_census = self.since_census.saturating_add(n);
        self.log_changed |= n > 0;
        self.log.record_from(Arrivals { at, span, n }, peers);
    }

    /// Records the requests a census found on connections that were already
    /// open at the census before (`at`): at the moment the latest one came
    /// (`tcp_info` says how long ago, to the kernel's tick), the others
    /// spread between the previous census and it. They are arrivals like new
    /// connections, for the quiet rule and its history, but never the
    /// kubelet's probes (it opens a connection for each).
    fn record_requests(&mut self, at: Instant, r: &super::census::Requests) {
        if r.n == 0 {
            return;
        }
        let from = self
            .last_census
            .map_or(at, |c| c.max(self.segments_clear))
            .min(at);
        let ago = Duration::from_millis(u64::from(r.latest_ms_ago.unwrap_or(0)));
        let latest = at.checked_sub(ago).unwrap_or(at).clamp(from, at);
        tracing::trace!(
            n = r.n,
            conns = r.conns,
            ago_ms = ago.as_millis() as u64,
            "requests on open connections"
        );
        self.log_changed = true;
        self.log.record_requests(Arrivals {
            at: latest,
            span: latest.saturating_duration_since(from),
            n: r.n,
        });
    }

    /// Publishes the log (and a new census sample, if any). `accepted` is
    /// the counter value up to which every accept is accounted for, when
    /// nothing is unattributed.
    fn publish(&mut self, sample: Option<Sample>, accepted: Option<u64>) {
        self.published = (self.unattributed, accepted);
        if self.log_changed {
            self.published_log = Arc::new(self.log.clone());
            self.log_changed = false;
        }
        let log_now = self.published_log.clone();
        let method = self.sources.method();
        let ports = self.ports_seen.clone();
        let unattributed = self.unattributed;
        let watched = self.sources.watches_destroyed();
        let (requests_seen, segments_at_census) = (self.requests_seen, self.segments_at_census);
        self.view.send_modify(|v| {
            if let Some(sample) = sample {
                v.sample = sample;
                v.error = None;
            }
            v.log = log_now;
            v.method = method;
            v.ports = ports;
            v.unattributed = unattributed;
            v.destroy_events = watched;
            v.requests_seen = requests_seen;
            v.segments_at_census = segments_at_census;
            if unattributed == 0 {
                v.accepted = accepted;
            }
        });
    }

    /// The census's clock: ticks of [`TICK`] since the sampler began.
    fn tick_of(&self, at: Instant) -> u32 {
        u32::try_from(at.saturating_duration_since(self.epoch).as_millis() / TICK.as_millis())
            .unwrap_or(u32::MAX)
    }

    /// The census's detail (while a drain runs) on the monotonic clock.
    fn open_detail(&self, census: &Census) -> Option<Arc<OpenDetail>> {
        let d = census.detail.as_ref()?;
        let at = |tick: u32| self.epoch + TICK * tick;
        Some(Arc::new(OpenDetail {
            before_hook: d.before_hook,
            youngest: d.youngest.map(at),
            oldest: d
                .oldest
                .iter()
                .map(|&(since, (local, peer))| OpenConn {
                    local,
                    peer,
                    first_seen: at(since),
                })
                .collect(),
        }))
    }
}

#[cfg(test)]
mod tests;
