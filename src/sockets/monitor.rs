//! A task that watches the pod's connections and publishes what it saw:
//! open connections per port, new arrivals, and the recent arrival log.
//!
//! Three sources, from cheap to dear:
//! - the namespace's accept and segment counters (`/proc/net/snmp`), read
//!   every 200 ms while idle and every 20 ms while a drain runs: whether
//!   anything new was accepted, or anything arrived at all (a request on an
//!   open connection), at the same cost for 10 or 100 000 open connections;
//! - the kernel's TCP destroy events, read as they come: every connection
//!   that ended, with its endpoints, so that one that opened and closed
//!   between two censuses (a client that closes first leaves nothing
//!   behind) is still counted;
//! - the census, which walks every socket on NGINX's ports with its
//!   `tcp_info` (what the client sent since the last census: requests on
//!   open connections): taken only when the counters show accepts that the
//!   destroy events do not account for (a connection that stays open) or
//!   segments that arrived since the last census, at least every 30 s while idle and
//!   every 100 ms while a drain runs, and always spaced by its own cost
//!   (50 times its duration while idle, 60 times while draining: 2 % and
//!   1.7 % of a core at most, however many connections are open; the idle
//!   periodic one 500 times: 0.2 %).
//!
//! The decisions are the [`super::sampler::Sampler`]'s, tested apart from
//! the kernel; this module holds the task that drives it, the handle the
//! drain and the HTTP server use, and the view it publishes.

use crate::vocab::{ArrivalsSeen, CensusMethod, CensusSource};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use super::arrivals::ArrivalLog;
use super::counters::Snmp;
use super::sampler::{Kernel, Look, Sampler, Sources};

use super::{PortFilter, counters};

/// How often the accept counter is read while idle.
pub(crate) const IDLE_EVERY: Duration = Duration::from_millis(200);
/// How often the accept counter is read while a drain runs: the delay
/// before an arrival that stays open is noticed.
pub(crate) const FAST_EVERY: Duration = Duration::from_millis(20);
/// While a drain runs, a census at least this often (open connections for
/// `/status` and the report), cost permitting.
pub(crate) const FAST_CENSUS_EVERY: Duration = Duration::from_millis(100);
/// The resolution of first sightings (connection ages).
pub(crate) const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub(crate) struct MonitorConfig {
    pub(crate) method: CensusMethod,
    pub(crate) filter: PortFilter,
}

/// A client connection NGINX holds open, as the census saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpenConn {
    pub(crate) local: std::net::SocketAddr,
    pub(crate) peer: std::net::SocketAddr,
    /// The first census that saw it open, to 0.1 s (the monitor's start for
    /// connections that were already open then: ages are lower bounds).
    pub(crate) first_seen: Instant,
}

/// The open client connections of a census taken during a drain, summed
/// up for its report (see `census::Detail`): bounded in size however many
/// connections are open. The total and the counts per port are the
/// sample's `open`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct OpenDetail {
    /// First seen before the drain's hook.
    pub(crate) before_hook: u32,
    /// The youngest one's first sighting.
    pub(crate) youngest: Option<Instant>,
    /// The oldest ones, oldest first (at most `census::OLDEST_KEPT`).
    pub(crate) oldest: Vec<OpenConn>,
}

/// One census, reduced.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sample {
    pub(crate) seq: u64,
    /// When the census began: what it counts as arrived came by then.
    pub(crate) at: Option<Instant>,
    /// When it ended: what it saw open was open at some moment between
    /// `at` and this (a dump of 100k sockets takes a quarter of a second,
    /// on another thread), so it says a connection was still open before
    /// a moment only if it ended before that moment.
    pub(crate) done: Option<Instant>,
    /// New client connections since the previous sample.
    pub(crate) arrivals: u32,
    /// Requests since the previous sample on connections already open.
    pub(crate) requests: u32,
    /// Open connections that carried more than one request (a keep-alive
    /// pool reuses them), and of those, the idle ones (nothing queued
    /// either way: NGINX closes these at SIGQUIT).
    pub(crate) pooled_open: u32,
    pub(crate) pooled_idle: u32,
    pub(crate) open: BTreeMap<u16, u32>,
    pub(crate) listening: BTreeMap<u16, u32>,
    /// The open client connections summed up, while a drain runs (fast
    /// sampling); none otherwise.
    pub(crate) detail: Option<Arc<OpenDetail>>,
}

impl Sample {
    pub(crate) fn open_total(&self) -> u32 {
        self.open.values().sum()
    }
}

/// What the monitor publishes after every look that found something.
#[derive(Debug, Clone)]
pub(crate) struct View {
    /// The latest census.
    pub(crate) sample: Sample,
    pub(crate) log: Arc<ArrivalLog>,
    /// Where the census comes from now (`netlink` or `proc`).
    pub(crate) method: CensusMethod,
    /// Ports counted so far (listening now or before).
    pub(crate) ports: BTreeSet<u16>,
    /// Set when no census can be taken at all.
    pub(crate) error: Option<String>,
    /// Peers learned to be the kubelet (its probes and hooks), whose
    /// probes do not count (see [`super::probes`]).
    pub(crate) kubelet_peers: Vec<IpAddr>,
    /// Accepts in the namespace (less the sidecar's own) that neither a
    /// census nor a destroy event has accounted for yet: possibly arrivals.
    pub(crate) unattributed: u64,
    /// The accept counter (less the sidecar's own) as of the last look that
    /// accounted for every accept; `None` without the counter.
    pub(crate) accepted: Option<u64>,
    /// Whether the kernel's destroy events are watched.
    pub(crate) destroy_events: bool,
    /// Whether requests on open connections are seen (the census reads
    /// `tcp_info`: netlink, on a kernel that reports data segments).
    pub(crate) requests_seen: bool,
    /// The namespace's segment counter read just before the latest census:
    /// if it has not moved since, nothing arrived that the census missed.
    pub(crate) segments_at_census: Option<u64>,
}

impl View {
    /// A view with nothing seen yet.
    pub(crate) fn empty(since: Instant, method: CensusMethod, ports: BTreeSet<u16>) -> View {
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
            requests_seen: false,
            segments_at_census: None,
        }
    }

    /// Where the census comes from, as `/status` and the report name it:
    /// `netlink`, `proc` (the fallback), or `unavailable` while no census
    /// can be taken. The one place this label is decided.
    pub(crate) fn census_label(&self) -> CensusSource {
        match (&self.error, self.method) {
            (Some(_), _) => CensusSource::Unavailable,
            (None, CensusMethod::Proc) => CensusSource::Proc,
            (None, CensusMethod::Netlink | CensusMethod::Auto) => CensusSource::Netlink,
        }
    }

    /// Which arrivals are seen, as `/status` and the report name it:
    /// `every_connection` with the destroy events, else `census_only`.
    pub(crate) fn arrivals_label(&self) -> ArrivalsSeen {
        if self.destroy_events {
            ArrivalsSeen::EveryConnection
        } else {
            ArrivalsSeen::CensusOnly
        }
    }

    /// True when no census has ever been taken (and one has failed): the
    /// drain cannot judge traffic at all.
    pub(crate) fn is_blind(&self) -> bool {
        self.error.is_some() && self.sample.at.is_none()
    }
}

/// The namespace's accept and segment counters, as the monitor reads them:
/// the real ones are `/proc/net/snmp`'s `PassiveOpens` and `InSegs`; tests
/// script them.
pub(crate) type Counter = Box<dyn Fn() -> Option<Snmp> + Send + Sync>;

/// What the monitor task and its handles share.
pub(crate) struct Shared {
    counter: Counter,
    /// Connections the sidecar itself accepted: they move the namespace's
    /// accept counter without being NGINX's.
    own_accepts: AtomicU64,
    /// Asks for a look (and a census) now.
    pub(crate) poke: Notify,
    /// The poke asks for a census whatever the counters say (the drain's
    /// last look before a quiet SIGQUIT needs one taken after the silence
    /// began, to see requests on open connections).
    pub(crate) census_wanted: std::sync::atomic::AtomicBool,
    /// When the drain began and the accept counter then, for the first
    /// census after it.
    pub(crate) hook: std::sync::Mutex<Option<(Instant, Option<u64>)>>,
}

impl Shared {
    pub(crate) fn new(counter: Counter) -> Shared {
        Shared {
            counter,
            own_accepts: AtomicU64::new(0),
            poke: Notify::new(),
            census_wanted: std::sync::atomic::AtomicBool::new(false),
            hook: std::sync::Mutex::new(None),
        }
    }

    /// The namespace's accepts, less the sidecar's own, and its segments
    /// received: one read of the counters.
    pub(crate) fn counters(&self) -> (Option<u64>, Option<u64>) {
        match (self.counter)() {
            Some(c) => (
                Some(
                    c.passive_opens
                        .wrapping_sub(self.own_accepts.load(Ordering::Relaxed)),
                ),
                Some(c.in_segs),
            ),
            None => (None, None),
        }
    }

    /// The namespace's accepts, less the sidecar's own.
    pub(crate) fn accepted(&self) -> Option<u64> {
        self.counters().0
    }
}

#[derive(Clone)]
pub(crate) struct Monitor {
    view: watch::Receiver<View>,
    fast: Arc<watch::Sender<bool>>,
    learn: mpsc::UnboundedSender<IpAddr>,
    shared: Arc<Shared>,
}

impl Monitor {
    /// Starts sampling. Must be called inside a tokio runtime.
    pub(crate) fn spawn(config: MonitorConfig) -> Monitor {
        let kernel = Kernel::new(&config);
        let counter: Counter = Box::new(|| counters::read().ok());
        Monitor::spawn_with(config, kernel, counter)
    }

    /// [`Monitor::spawn`] over other sources and counter (the sampler's
    /// tests script the kernel).
    pub(crate) fn spawn_with<S: Sources + Send + 'static>(
        config: MonitorConfig,
        sources: S,
        counter: Counter,
    ) -> Monitor {
        let (view_tx, view) = watch::channel(View::empty(
            Instant::now(),
            sources.method(),
            config.filter.only.clone(),
        ));
        let (fast, fast_rx) = watch::channel(false);
        let (learn, learn_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::new(counter));
        let sampler = Sampler::new(sources, config.filter, view_tx, shared.clone());
        tokio::spawn(run(sampler, fast_rx, learn_rx, shared.clone()));
        Monitor {
            view,
            fast: Arc::new(fast),
            learn,
            shared,
        }
    }

    /// The sidecar accepted a connection of its own (the HTTP server).
    pub(crate) fn note_own_accept(&self) {
        self.shared.own_accepts.fetch_add(1, Ordering::Relaxed);
    }

    /// `ip` is the kubelet's (its probes and hooks come from it): its
    /// probes stop counting (see [`super::probes`]), including those
    /// already logged where the census can tell them apart.
    pub(crate) fn learn_kubelet(&self, ip: IpAddr) {
        let _ = self
            .learn
            .send(crate::vocab::canonical(std::net::SocketAddr::new(ip, 0)).ip());
    }

    /// A monitor with no sampling task: the caller publishes the views.
    /// For the drain's unit tests, which feed it census views they make up.
    #[cfg(test)]
    pub(crate) fn manual(initial: View) -> (Monitor, watch::Sender<View>) {
        Monitor::manual_counting(initial, Box::new(|| None))
    }

    /// [`Monitor::manual`] whose accept counter is `counter`.
    #[cfg(test)]
    pub(crate) fn manual_counting(
        initial: View,
        counter: Counter,
    ) -> (Monitor, watch::Sender<View>) {
        let (view_tx, view) = watch::channel(initial);
        let (fast, _) = watch::channel(false);
        let (learn, _) = mpsc::unbounded_channel();
        (
            Monitor {
                view,
                fast: Arc::new(fast),
                learn,
                shared: Arc::new(Shared::new(counter)),
            },
            view_tx,
        )
    }

    pub(crate) fn view(&self) -> watch::Receiver<View> {
        self.view.clone()
    }

    /// Looks every 20 ms while `on`, every 200 ms otherwise.
    pub(crate) fn set_fast(&self, on: bool) {
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
    pub(crate) fn accepted_since(&self, view: &View) -> bool {
        if view.unattributed > 0 {
            return true;
        }
        match (view.accepted, self.shared.accepted()) {
            (Some(seen), Some(now)) => now != seen,
            // No counter: the census alone judges.
            _ => false,
        }
    }

    /// Whether a request on an open connection may have arrived that
    /// `view`'s census did not see: requests are seen, and a segment
    /// arrived since that census (read from the counter now, O(1)).
    pub(crate) fn data_since(&self, view: &View) -> bool {
        view.requests_seen
            && match (view.segments_at_census, self.shared.counters().1) {
                (Some(seen), Some(now)) => seen != now,
                _ => true,
            }
    }

    /// Asks for a look and a census now (the drain's last look).
    pub(crate) fn look_now(&self) {
        self.shared.poke.notify_one();
    }

    /// Asks for a census now, whatever the counters say (as soon as its
    /// cost allows): the drain's last look when requests may have arrived
    /// on open connections.
    pub(crate) fn census_now(&self) {
        self.shared.census_wanted.store(true, Ordering::Relaxed);
        self.shared.poke.notify_one();
    }
}

/// The monitor task: thin. It waits for the next look, a poke, destroy
/// events or the drain's start, and lets the [`Sampler`] decide the rest.
async fn run<S: Sources>(
    mut state: Sampler<S>,
    mut fast: watch::Receiver<bool>,
    mut learn: mpsc::UnboundedReceiver<IpAddr>,
    shared: Arc<Shared>,
) {
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
            () = shared.poke.notified() => {
                look = if shared.census_wanted.swap(false, Ordering::Relaxed) {
                    Look::Census
                } else {
                    Look::Attribute
                };
            }
            () = state.sources.destroyed_ready() => {
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
        state.tick(fast_now, look).await;
        next = Instant::now() + every;
    }
}
