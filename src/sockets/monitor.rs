//! A task that watches the pod's connections and publishes what it saw:
//! open connections per port, new arrivals, and the recent arrival log.
//!
//! Three sources, from cheap to dear:
//! - the namespace's accept counter (`/proc/net/snmp`), read every 200 ms
//!   while idle and every 20 ms while a drain runs: whether anything new
//!   was accepted, at the same cost for 10 or 100 000 open connections;
//! - the kernel's TCP destroy events, read as they come: every connection
//!   that ended, with its endpoints, so that one that opened and closed
//!   between two censuses (a client that closes first leaves nothing
//!   behind) is still counted;
//! - the census, which walks every socket on NGINX's ports: taken only when
//!   the counter shows accepts that the destroy events do not account for
//!   (a connection that stays open), at least every 30 s while idle and
//!   every 100 ms while a drain runs, and always spaced by its own cost
//!   (50 times its duration while idle, 60 times while draining: 2 % and
//!   1.7 % of a core at most, however many connections are open; the idle
//!   periodic one 500 times: 0.2 %).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use super::arrivals::{ArrivalLog, Arrivals, FewPeers, add_peers, take_probes};
use super::census::conn_id;
use super::netlink::DestroyWatch;
use super::probes::{self, ProbeBudget};
use super::{Census, Method, PortFilter, Sock, Source, counters};

/// How often the accept counter is read while idle.
pub const IDLE_EVERY: Duration = Duration::from_millis(200);
/// How often the accept counter is read while a drain runs: the delay
/// before an arrival that stays open is noticed.
pub const FAST_EVERY: Duration = Duration::from_millis(20);
/// While a drain runs, a census at least this often (open connections for
/// `/status` and the report), cost permitting.
pub const FAST_CENSUS_EVERY: Duration = Duration::from_millis(100);
/// While idle, a census at least this often (the open connections, their
/// ages, listeners that appeared), even when nothing was accepted.
pub const IDLE_CENSUS_AT_LEAST_EVERY: Duration = Duration::from_secs(30);
/// Censuses are at least this many times their own duration apart while
/// idle (at most 2 % of a core)...
const IDLE_COST_FACTOR: u32 = 50;
/// ...the idle periodic census, when nothing asks for one (at most 0.2 %:
/// with 100k connections, every 50 s rather than 30, never beyond 60 s)...
const IDLE_PERIODIC_COST_FACTOR: u32 = 500;
const IDLE_CENSUS_STRETCHED_AT_MOST: Duration = Duration::from_secs(60);
/// ...and while a drain runs (at most 1.7 %).
const FAST_COST_FACTOR: u32 = 60;
/// The resolution of first sightings (connection ages).
pub const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct MonitorConfig {
    pub method: Method,
    pub filter: PortFilter,
}

/// A client connection NGINX holds open, as the census saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenConn {
    pub local: std::net::SocketAddr,
    pub peer: std::net::SocketAddr,
    /// The first census that saw it open, to 0.1 s (the monitor's start for
    /// connections that were already open then: ages are lower bounds).
    pub first_seen: Instant,
}

/// One census, reduced.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub seq: u64,
    pub at: Option<Instant>,
    /// Time since the previous sample.
    pub span: Duration,
    /// New client connections since the previous sample.
    pub arrivals: u32,
    pub open: BTreeMap<u16, u32>,
    pub listening: BTreeMap<u16, u32>,
    /// Each open client connection, while a drain wants detail (fast
    /// sampling); empty otherwise, to keep idle samples cheap.
    pub conns: Arc<Vec<OpenConn>>,
}

impl Sample {
    pub fn open_total(&self) -> u32 {
        self.open.values().sum()
    }
}

/// What the monitor publishes after every look that found something.
#[derive(Debug, Clone)]
pub struct View {
    /// The latest census.
    pub sample: Sample,
    pub log: Arc<ArrivalLog>,
    /// Where the census comes from now (`netlink` or `proc`).
    pub method: Method,
    /// Ports counted so far (listening now or before).
    pub ports: BTreeSet<u16>,
    /// Set when no census can be taken at all.
    pub error: Option<String>,
    /// Peers learned to be the kubelet (its probes and hooks), whose
    /// probes do not count (see [`super::probes`]).
    pub kubelet_peers: Vec<IpAddr>,
    /// Accepts in the namespace (less the sidecar's own) that neither a
    /// census nor a destroy event has accounted for yet: possibly arrivals.
    pub unattributed: u64,
    /// The accept counter (less the sidecar's own) as of the last look that
    /// accounted for every accept; `None` without the counter.
    pub accepted: Option<u64>,
    /// Whether the kernel's destroy events are watched.
    pub destroy_events: bool,
}

impl View {
    /// A view with nothing seen yet.
    pub fn empty(since: Instant, method: Method, ports: BTreeSet<u16>) -> View {
        View {
            sample: Sample::default(),
            log: Arc::new(ArrivalLog::new(since)),
            method,
            ports,
            error: None,
            kubelet_peers: Vec::new(),
            unattributed: 0,
            accepted: None,
            destroy_events: false,
        }
    }

    /// Where the census comes from, as `/status` and the report name it:
    /// `netlink`, `proc` (the fallback), or `unavailable` while no census
    /// can be taken. The one place this label is decided.
    pub fn census_label(&self) -> &'static str {
        match (&self.error, self.method) {
            (Some(_), _) => "unavailable",
            (None, Method::Proc) => "proc",
            (None, Method::Netlink | Method::Auto) => "netlink",
        }
    }

    /// Which arrivals are seen, as `/status` and the report name it:
    /// `every_connection` with the destroy events, else `census_only`.
    pub fn arrivals_label(&self) -> &'static str {
        if self.destroy_events {
            "every_connection"
        } else {
            "census_only"
        }
    }

    /// True when no census has ever been taken (and one has failed): the
    /// drain cannot judge traffic at all.
    pub fn is_blind(&self) -> bool {
        self.error.is_some() && self.sample.at.is_none()
    }
}

/// What the monitor task and its handles share.
#[derive(Default)]
struct Shared {
    /// Connections the sidecar itself accepted: they move the namespace's
    /// accept counter without being NGINX's.
    own_accepts: AtomicU64,
    /// Asks for a look (and a census) now.
    poke: Notify,
    /// When the drain began and the accept counter then, for the first
    /// census after it.
    hook: std::sync::Mutex<Option<(Instant, Option<u64>)>>,
}

impl Shared {
    /// The namespace's accepts, less the sidecar's own.
    fn accepted(&self) -> Option<u64> {
        counters::passive_opens()
            .ok()
            .map(|n| n.wrapping_sub(self.own_accepts.load(Ordering::Relaxed)))
    }
}

#[derive(Clone)]
pub struct Monitor {
    view: watch::Receiver<View>,
    fast: Arc<watch::Sender<bool>>,
    learn: mpsc::UnboundedSender<IpAddr>,
    shared: Arc<Shared>,
}

impl Monitor {
    /// Starts sampling. Must be called inside a tokio runtime.
    pub fn spawn(config: MonitorConfig) -> Monitor {
        let (view_tx, view) = watch::channel(View::empty(
            Instant::now(),
            config.method,
            config.filter.only.clone(),
        ));
        let (fast, fast_rx) = watch::channel(false);
        let (learn, learn_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        tokio::spawn(run(config, view_tx, fast_rx, learn_rx, shared.clone()));
        Monitor {
            view,
            fast: Arc::new(fast),
            learn,
            shared,
        }
    }

    /// The sidecar accepted a connection of its own (the HTTP server).
    pub fn note_own_accept(&self) {
        self.shared.own_accepts.fetch_add(1, Ordering::Relaxed);
    }

    /// `ip` is the kubelet's (its probes and hooks come from it): its
    /// probes stop counting (see [`super::probes`]), including those
    /// already logged where the census can tell them apart.
    pub fn learn_kubelet(&self, ip: IpAddr) {
        let _ = self
            .learn
            .send(super::canonical(std::net::SocketAddr::new(ip, 0)).ip());
    }

    /// A monitor with no sampling task: the caller publishes the views.
    /// For the drain's unit tests, which feed it census views they make up.
    pub fn manual(initial: View) -> (Monitor, watch::Sender<View>) {
        let (view_tx, view) = watch::channel(initial);
        let (fast, _) = watch::channel(false);
        let (learn, _) = mpsc::unbounded_channel();
        (
            Monitor {
                view,
                fast: Arc::new(fast),
                learn,
                shared: Arc::default(),
            },
            view_tx,
        )
    }

    pub fn view(&self) -> watch::Receiver<View> {
        self.view.clone()
    }

    /// Looks every 20 ms while `on`, every 200 ms otherwise.
    pub fn set_fast(&self, on: bool) {
        if on && !*self.fast.borrow() {
            let mark = (Instant::now(), self.shared.accepted());
            if let Ok(mut h) = self.shared.hook.lock() {
                *h = Some(mark);
            }
        }
        self.fast
            .send_if_modified(|f| std::mem::replace(f, on) != on);
    }

    /// Whether `view` may be stale: something was accepted that it does
    /// not account for (read from the counter now, O(1)). A drain about to
    /// send SIGQUIT asks this last, and on `true` calls [`Monitor::look_now`]
    /// and waits for the next view.
    pub fn accepted_since(&self, view: &View) -> bool {
        if view.unattributed > 0 {
            return true;
        }
        match (view.accepted, self.shared.accepted()) {
            (Some(seen), Some(now)) => now != seen,
            // No counter: the census alone judges.
            _ => false,
        }
    }

    /// Asks for a look and a census now (the drain's last look).
    pub fn look_now(&self) {
        self.shared.poke.notify_one();
    }
}

async fn run(
    config: MonitorConfig,
    view: watch::Sender<View>,
    mut fast: watch::Receiver<bool>,
    mut learn: mpsc::UnboundedReceiver<IpAddr>,
    shared: Arc<Shared>,
) {
    let mut state = Sampler::new(config, view, shared.clone());
    let mut next = Instant::now();
    loop {
        let every = if *fast.borrow_and_update() {
            FAST_EVERY
        } else {
            IDLE_EVERY
        };
        let mut look = Look::Regular;
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            Some(ip) = learn.recv() => {
                state.learn_kubelet(ip);
                continue;
            }
            () = shared.poke.notified() => look = Look::Attribute,
            ready = readable(&state.destroyed) => {
                if let Ok(mut guard) = ready {
                    // Cleared before reading: an event that lands after the
                    // read sets it again (no wakeup is lost).
                    guard.clear_ready();
                }
                state.read_destroyed();
                continue;
            }
            changed = fast.changed() => {
                if changed.is_err() {
                    return;
                }
                // Going fast: look now (a drain just started). Going slow:
                // nothing to see now; do not compete with the hook's answer.
                if !*fast.borrow() {
                    continue;
                }
                look = Look::Census;
            }
        }
        let fast_now = *fast.borrow();
        state.tick(fast_now, look);
        next = Instant::now() + every;
    }
}

/// This thread's CPU time (the census runs on the sampling task's thread).
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// Why the monitor looks now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Look {
    /// Its own cadence.
    Regular,
    /// The drain's last look: a census if any accept is unaccounted for.
    Attribute,
    /// A drain started: a census now, for the open connections at the hook.
    Census,
}

/// Resolves when the destroy events have something to read (never when
/// they are not watched).
async fn readable(
    fd: &Option<AsyncFd<DestroyWatch>>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, DestroyWatch>> {
    match fd {
        Some(fd) => fd.readable().await,
        None => std::future::pending().await,
    }
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
struct Sampler {
    source: Source,
    filter: PortFilter,
    view: watch::Sender<View>,
    shared: Arc<Shared>,
    /// The kernel's destroy events, when it gives them (not with `--census
    /// proc`); without them, connections that open and close between two
    /// censuses with the client closing first go unseen.
    destroyed: Option<AsyncFd<DestroyWatch>>,
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
    /// Accepts not accounted for at the last tick.
    unattributed: u64,
    /// Arrivals recorded since the last census (its sample's count).
    since_census: u32,
    /// What the view was last given: unattributed accepts and the counter,
    /// and the log (cloned again only when it changed).
    published: (u64, Option<u64>),
    published_log: Arc<ArrivalLog>,
    log_changed: bool,
    /// The last tick at which every accept was accounted for.
    last_clear: Instant,
    last_tick: Instant,
    last_census: Option<Instant>,
    /// What the last census cost (wall time): censuses are spaced so that
    /// they stay a small share of a core however many connections are open.
    census_cost: Duration,
    ports_seen: BTreeSet<u16>,
    log: ArrivalLog,
    prev: Option<Census>,
    /// The clock of the census's first sightings: ticks of [`TICK`] since.
    epoch: Instant,
    seq: u64,
    failing: bool,
}

impl Sampler {
    fn new(config: MonitorConfig, view: watch::Sender<View>, shared: Arc<Shared>) -> Sampler {
        let now = Instant::now();
        let source = Source::new(config.method);
        let destroyed = if source.method == Method::Netlink {
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
        Sampler {
            source,
            filter: config.filter,
            view,
            shared,
            destroyed,
            lost_events: false,
            ended: Vec::new(),
            accepted_at_census: None,
            ended_unseen: 0,
            short: Vec::new(),
            kubelet: Vec::new(),
            unattributed: 0,
            since_census: 0,
            published: (0, None),
            published_log: Arc::new(ArrivalLog::new(now)),
            log_changed: false,
            last_clear: now,
            last_tick: now,
            last_census: None,
            census_cost: Duration::ZERO,
            ports_seen: BTreeSet::new(),
            log: ArrivalLog::new(now),
            prev: None,
            epoch: now,
            seq: 0,
            failing: false,
        }
    }

    /// `ip` is the kubelet's: from now on, its connections beyond the probe
    /// budget count (clients the node masqueraded) and those within it do
    /// not (its probes); the arrivals logged from it before are judged the
    /// same way, where a sample of few peers can tell.
    fn learn_kubelet(&mut self, ip: IpAddr) {
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
    fn read_destroyed(&mut self) {
        let Some(fd) = &mut self.destroyed else {
            return;
        };
        let mut ended = std::mem::take(&mut self.ended);
        ended.clear();
        match fd.get_mut().read(&mut ended) {
            Ok(overrun) => self.lost_events |= overrun,
            Err(e) => {
                tracing::warn!(error = %e, "reading the kernel's TCP destroy events failed: counting from censuses alone from now on");
                self.destroyed = None;
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
            if counted && self.filter.peer_counts(&s.peer) {
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
        since >= periodic.max(min_gap) || (self.unattributed > 0 && since >= min_gap)
    }

    /// One look: the accept counter and the destroy events; a census when
    /// something is unattributed (spaced by its cost) or one is due; then
    /// the view.
    fn tick(&mut self, fast: bool, look: Look) {
        self.read_destroyed();
        let at = Instant::now();
        let accepted = self.shared.accepted();
        self.unattributed = match (accepted, self.accepted_at_census) {
            (Some(a), Some(k)) => a.saturating_sub(k).saturating_sub(self.ended_unseen),
            _ => 1,
        };
        if self.census_due(fast, look, at) {
            self.census(fast, at, accepted);
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
        self.last_tick = at;
    }

    fn census(&mut self, fast: bool, at: Instant, accepted: Option<u64>) {
        let tick =
            u32::try_from(at.saturating_duration_since(self.epoch).as_millis() / TICK.as_millis())
                .unwrap_or(u32::MAX);
        let watched = self.destroyed.is_some();
        let first = self.prev.is_none();
        // The first census after the hook: if nothing was accepted since
        // the hook, every connection it sees for the first time was
        // accepted before it, and is stamped so.
        let tick = match self.shared.hook.lock().map(|mut h| h.take()) {
            Ok(Some((hook, at_hook))) if at_hook.is_some() && at_hook == accepted => {
                let hook_tick = u32::try_from(
                    hook.saturating_duration_since(self.epoch).as_millis() / TICK.as_millis(),
                )
                .unwrap_or(u32::MAX);
                tick.min(hook_tick.saturating_sub(1))
            }
            _ => tick,
        };
        let cpu_before = thread_cpu();
        // The previous census is updated in place (one map, not two).
        let taken = self.source.census_since(
            &self.filter,
            &mut self.ports_seen,
            self.prev.take(),
            fast,
            tick,
            !watched,
        );
        let (census, new) = match taken {
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
        self.census_cost = thread_cpu().saturating_sub(cpu_before);
        tracing::trace!(conns = census.conns.len(), open = ?census.open, new = new.n, cost_us = self.census_cost.as_micros() as u64, "census");
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
        let span = at.saturating_duration_since(self.last_clear);
        if !first {
            self.record(at, span, arrivals, add_peers(new.peers, &short));
        }
        let since_last = at.saturating_duration_since(self.last_census.unwrap_or(at));
        self.accepted_at_census = accepted;
        self.ended_unseen = 0;
        self.unattributed = 0;
        self.last_census = Some(at);
        self.seq += 1;
        let conns = self.track_open(&census, fast);
        let since_census = std::mem::take(&mut self.since_census);
        let sample = Sample {
            seq: self.seq,
            at: Some(at),
            span: if first { Duration::ZERO } else { since_last },
            arrivals: if first { 0 } else { since_census },
            open: census.open.clone(),
            listening: census.listening.clone(),
            conns,
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
        let method = self.source.method;
        let ports = self.ports_seen.clone();
        let unattributed = self.unattributed;
        let watched = self.destroyed.is_some();
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
            if unattributed == 0 {
                v.accepted = accepted;
            }
        });
    }

    /// While a drain wants detail, the open connections with their first
    /// sightings (kept in the census itself: 8 bytes a connection).
    fn track_open(&self, census: &Census, detail: bool) -> Arc<Vec<OpenConn>> {
        if !detail {
            return Arc::default();
        }
        Arc::new(
            census
                .endpoints
                .iter()
                .map(|&(id, (local, peer))| OpenConn {
                    local,
                    peer,
                    first_seen: self.epoch + TICK * census.conns.get(&id).map_or(0, |c| c.since),
                })
                .collect(),
        )
    }
}
