//! What the connection monitor publishes (the [`View`] of its latest
//! census and arrival log) and what its task and its handles share: the
//! data between `monitor` (the task and the handle) and `sampler` (the
//! decisions), so that neither imports the other both ways.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::PortFilter;
use super::arrivals::ArrivalLog;
use super::counters::Snmp;
use crate::vocab::{ArrivalsSeen, CensusMethod, CensusSource};

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

    /// The sidecar accepted a connection of its own.
    pub(crate) fn note_own_accept(&self) {
        self.own_accepts.fetch_add(1, Ordering::Relaxed);
    }

    /// The namespace's accepts, less the sidecar's own.
    pub(crate) fn accepted(&self) -> Option<u64> {
        self.counters().0
    }
}
