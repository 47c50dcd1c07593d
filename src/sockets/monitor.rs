//! A task that takes a census at a steady cadence and publishes what it saw:
//! open connections per port, new arrivals, and the recent arrival log.
//!
//! It samples every 200 ms while idle (to learn the arrival rate before a
//! hook comes) and every 100 ms while a drain wants detail. Not faster: for
//! each dump the kernel walks its whole established-socket hash table, which
//! all network namespaces share (262 144 buckets on a typical node), so a
//! census has a fixed cost of about half a millisecond even in an idle pod;
//! at 100 ms that is about 1 % of a core while a drain runs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::arrivals::{ArrivalLog, Arrivals};
use super::{Census, Method, PortFilter, Source, counters};

pub const IDLE_EVERY: Duration = Duration::from_millis(200);
pub const FAST_EVERY: Duration = Duration::from_millis(100);
/// While idle, a census that the namespace's accept counter says would find
/// nothing new is skipped, but one is taken at least this often (for the
/// open connections, their ages, and listeners that appeared).
pub const IDLE_CENSUS_AT_LEAST_EVERY: Duration = Duration::from_secs(30);
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

/// What the monitor publishes after every sample.
#[derive(Debug, Clone)]
pub struct View {
    pub sample: Sample,
    pub log: Arc<ArrivalLog>,
    /// Where the census comes from now (`netlink` or `proc`).
    pub method: Method,
    /// Ports counted so far (listening now or before).
    pub ports: BTreeSet<u16>,
    /// Set when no census can be taken at all.
    pub error: Option<String>,
    /// Peers learned to be the kubelet (its probes and hooks), whose
    /// connections no longer count.
    pub kubelet_peers: Vec<IpAddr>,
}

impl View {
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

    /// True when no census has ever been taken (and one has failed): the
    /// drain cannot judge traffic at all.
    pub fn is_blind(&self) -> bool {
        self.error.is_some() && self.sample.at.is_none()
    }
}

#[derive(Clone)]
pub struct Monitor {
    view: watch::Receiver<View>,
    fast: Arc<watch::Sender<bool>>,
    learn: mpsc::UnboundedSender<IpAddr>,
    /// Connections the sidecar itself accepted: they move the namespace's
    /// accept counter without being NGINX's.
    own_accepts: Arc<AtomicU64>,
}

impl Monitor {
    /// Starts sampling. Must be called inside a tokio runtime.
    pub fn spawn(config: MonitorConfig) -> Monitor {
        let now = Instant::now();
        let (view_tx, view) = watch::channel(View {
            sample: Sample::default(),
            log: Arc::new(ArrivalLog::new(now)),
            method: config.method,
            ports: config.filter.only.clone(),
            error: None,
            kubelet_peers: Vec::new(),
        });
        let (fast, fast_rx) = watch::channel(false);
        let (learn, learn_rx) = mpsc::unbounded_channel();
        let own_accepts = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(config, view_tx, fast_rx, learn_rx, own_accepts.clone()));
        Monitor {
            view,
            fast: Arc::new(fast),
            learn,
            own_accepts,
        }
    }

    /// The sidecar accepted a connection of its own (the HTTP server).
    pub fn note_own_accept(&self) {
        self.own_accepts.fetch_add(1, Ordering::Relaxed);
    }

    /// `ip` is the kubelet's (its probes and hooks come from it): its
    /// connections stop counting, and the arrivals already logged from it
    /// are taken back where the census can tell them apart.
    pub fn ignore_kubelet(&self, ip: IpAddr) {
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
                own_accepts: Arc::default(),
            },
            view_tx,
        )
    }

    pub fn view(&self) -> watch::Receiver<View> {
        self.view.clone()
    }

    /// Samples every 100 ms while `on`, every 200 ms otherwise.
    pub fn set_fast(&self, on: bool) {
        self.fast
            .send_if_modified(|f| std::mem::replace(f, on) != on);
    }
}

async fn run(
    config: MonitorConfig,
    view: watch::Sender<View>,
    mut fast: watch::Receiver<bool>,
    mut learn: mpsc::UnboundedReceiver<IpAddr>,
    own_accepts: Arc<AtomicU64>,
) {
    let mut state = Sampler::new(config, view, own_accepts);
    loop {
        let every = if *fast.borrow_and_update() {
            FAST_EVERY
        } else {
            IDLE_EVERY
        };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            Some(ip) = learn.recv() => {
                state.ignore_kubelet(ip);
                continue;
            }
            changed = fast.changed() => {
                if changed.is_err() {
                    return;
                }
                // Going fast: sample now (a drain just started). Going slow:
                // nothing to see now; do not compete with the hook's answer.
                if !*fast.borrow() {
                    continue;
                }
            }
        }
        let fast_now = *fast.borrow();
        state.sample(fast_now);
    }
}

/// The monitor task's state: the census source, what it learned, and the
/// arrival log it publishes.
struct Sampler {
    source: Source,
    filter: PortFilter,
    view: watch::Sender<View>,
    own_accepts: Arc<AtomicU64>,
    /// Accepts in the namespace, less the sidecar's own, at the last check.
    last_accepted: Option<u64>,
    /// When the counter last said "nothing new", or a census ran.
    last_check: Instant,
    last_census: Option<Instant>,
    ports_seen: BTreeSet<u16>,
    log: ArrivalLog,
    prev: Option<Census>,
    /// The clock of the census's first sightings: ticks of [`TICK`] since.
    epoch: Instant,
    seq: u64,
    failing: bool,
}

impl Sampler {
    fn new(
        config: MonitorConfig,
        view: watch::Sender<View>,
        own_accepts: Arc<AtomicU64>,
    ) -> Sampler {
        let now = Instant::now();
        Sampler {
            source: Source::new(config.method),
            filter: config.filter,
            view,
            own_accepts,
            last_accepted: None,
            last_check: now,
            last_census: None,
            ports_seen: BTreeSet::new(),
            log: ArrivalLog::new(now),
            prev: None,
            epoch: now,
            seq: 0,
            failing: false,
        }
    }

    /// Connections from `ip` (the kubelet's) stop counting, and its logged
    /// arrivals are taken back.
    fn ignore_kubelet(&mut self, ip: IpAddr) {
        if !self.filter.peer_counts(&std::net::SocketAddr::new(ip, 0)) {
            return;
        }
        self.filter.ignore_peers.push(IpNet::from(ip));
        let taken = self.log.forget_peer(ip);
        tracing::info!(
            peer = %ip,
            arrivals_taken_back = taken,
            "connections from the kubelet's address (its probes and hooks come from there) no longer count as client arrivals"
        );
        let log_now = Arc::new(self.log.clone());
        self.view.send_modify(|v| {
            v.log = log_now;
            v.kubelet_peers.push(ip);
        });
    }

    /// The namespace's accepts, less the sidecar's own.
    fn accepted(&self) -> Option<u64> {
        counters::passive_opens()
            .ok()
            .map(|n| n.wrapping_sub(self.own_accepts.load(Ordering::Relaxed)))
    }

    /// Idle and nothing accepted since the last look: a census would find
    /// no arrival. Skip it (its cost grows with the open connections),
    /// unless the last one is getting old.
    fn can_skip(&self, fast: bool, accepted: Option<u64>, at: Instant) -> bool {
        !fast
            && accepted.is_some()
            && accepted == self.last_accepted
            && self
                .last_census
                .is_some_and(|t| at.saturating_duration_since(t) < IDLE_CENSUS_AT_LEAST_EVERY)
    }

    /// One look: a census unless it can be skipped, then the view.
    fn sample(&mut self, fast: bool) {
        let at = Instant::now();
        let accepted = self.accepted();
        if self.can_skip(fast, accepted, at) {
            self.last_check = at;
            return;
        }
        // Anything new arrived after the last check that found nothing.
        let span = at.saturating_duration_since(self.last_check);
        let tick =
            u32::try_from(at.saturating_duration_since(self.epoch).as_millis() / TICK.as_millis())
                .unwrap_or(u32::MAX);
        let taken = self.source.census_since(
            &self.filter,
            &mut self.ports_seen,
            self.prev.as_ref(),
            fast,
            tick,
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
        let (arrivals, peers) = (new.n, new.peers);
        if self.prev.is_some() {
            self.log.record_from(
                Arrivals {
                    at,
                    span,
                    n: arrivals,
                },
                peers,
            );
        }
        self.last_accepted = accepted;
        self.last_check = at;
        self.last_census = Some(at);
        self.seq += 1;
        let conns = self.track_open(&census, fast);
        let sample = Sample {
            seq: self.seq,
            at: Some(at),
            span: if self.prev.is_some() {
                span
            } else {
                Duration::ZERO
            },
            arrivals,
            open: census.open.clone(),
            listening: census.listening.clone(),
            conns,
        };
        let log_now = Arc::new(self.log.clone());
        let method = self.source.method;
        let ports = self.ports_seen.clone();
        self.view.send_modify(|v| {
            v.sample = sample;
            v.log = log_now;
            v.method = method;
            v.ports = ports;
            v.error = None;
        });
        self.prev = Some(census);
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
