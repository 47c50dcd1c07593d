//! From a socket dump to what the drain needs: which ports are served,
//! how many connections each holds, and which connections are new.
//!
//! Invariant kept here: connections from `--ignore-peer` ranges and to the
//! sidecar's own port never count as arrivals; a new connection from a
//! `--pool-peer` range counts as a request of its pool, never as a new
//! client.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
// A fast non-cryptographic hash. Peers choose their own addresses, but the
// map holds one entry per socket the kernel already has, so colliding keys
// cost an attacker one connection each: SipHash is not worth its price here.
use rustc_hash::FxHashMap;
use std::collections::hash_map::Entry;

use super::arrivals::{FewPeers, add_peers};
use super::{Activity, Sock, state};

/// Which local ports count as NGINX's, and which peers are not clients.
#[derive(Debug, Clone, Default)]
pub struct PortFilter {
    /// `--port`: only these. Empty: every listening port but `exclude`.
    pub only: BTreeSet<u16>,
    /// The sidecar's own port(s).
    pub exclude: BTreeSet<u16>,
    /// `--ignore-peer`: the node (kubelet probes and hooks).
    pub ignore_peers: Vec<IpNet>,
    /// `--pool-peer`: peers that reach NGINX only through a keep-alive pool
    /// (a balancer, an ingress controller): their new connections are the
    /// pool's own churn, counted with its requests.
    pub pool_peers: Vec<IpNet>,
}

impl PortFilter {
    pub(crate) fn port_counts(&self, port: u16) -> bool {
        !self.exclude.contains(&port) && (self.only.is_empty() || self.only.contains(&port))
    }
    pub(crate) fn peer_counts(&self, peer: &SocketAddr) -> bool {
        !self.ignore_peers.iter().any(|n| n.contains(&peer.ip()))
    }
    /// Whether a new connection from `peer` is a request of its pool (see
    /// `--pool-peer`), not a new client.
    pub(crate) fn pool_peer(&self, peer: &SocketAddr) -> bool {
        self.pool_peers.iter().any(|n| n.contains(&peer.ip()))
    }
}

/// Identifies one connection across samples: its two endpoints.
pub(crate) type ConnKey = (SocketAddr, SocketAddr);

/// What the census keeps of a connection: its two endpoints, hashed (8
/// bytes, not 64: a busy pod holds 100k connections). Two connections
/// colliding would need 2^32 of them.
pub(crate) type ConnId = u64;

pub(crate) fn conn_id(local: SocketAddr, peer: SocketAddr) -> ConnId {
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    local.hash(&mut h);
    peer.hash(&mut h);
    h.finish()
}

/// One census of the namespace, reduced to the counted ports.
#[derive(Debug, Clone, Default)]
pub struct Census {
    /// Listening ports that count, with their accept-queue length.
    pub listening: BTreeMap<u16, u32>,
    /// Open connections (NGINX has not closed its side) per counted port,
    /// client peers only.
    pub open: BTreeMap<u16, u32>,
    /// Every connection on a counted port from a client peer, in any state,
    /// TIME_WAIT included (so short connections that NGINX closed between
    /// two samples are still seen), with whether it is open and since when.
    pub(crate) conns: FxHashMap<ConnId, ConnState>,
    /// The open connections summed up for a drain's report, when the
    /// census was taken with detail (during a drain): bounded in size
    /// however many connections are open.
    pub(crate) detail: Option<Detail>,
    /// Listening ports that do not count (`--port` names others, or the
    /// sidecar's own): their connections' ends still account for accepts.
    pub(crate) other_listeners: BTreeSet<u16>,
    /// Whether a connection first seen in TIME_WAIT is an arrival. Not
    /// when the destroy events are watched: they reported it already.
    pub(crate) time_wait_arrives: bool,
    /// This census's generation: the map is updated in place from census
    /// to census (one map, not two, with 100k connections), and entries
    /// whose generation is older were not listed this time.
    generation: u8,
    /// The kernel gave `tcp_info` for the open connections (netlink):
    /// requests on open connections can be seen.
    pub(crate) activity_seen: bool,
    /// Open connections that carried a request after the census first saw
    /// them (a keep-alive pool reuses them), and of those, how many were
    /// idle (nothing queued either way: NGINX closes these at SIGQUIT).
    pub(crate) pooled_open: u32,
    pub(crate) pooled_idle: u32,
}

/// What the census knows of one connection (8 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnState {
    /// NGINX has not closed its side.
    pub(crate) open: bool,
    /// Some census saw the full socket (any state but TIME_WAIT): the
    /// connection was counted then, so its destroy event is not an arrival.
    pub(crate) alive: bool,
    /// The census generation that last listed it.
    generation: u8,
    /// Its state before the census that is listing it now (for a socket
    /// that a dump lists twice): bit 0 known, bit 1 open.
    was: u8,
    /// The census tick (the caller's clock) at which it was first seen
    /// open, carried over from census to census.
    pub(crate) since: u32,
    /// The client's and NGINX's data segments so far (`tcp_info`), when
    /// known: what the next census compares with.
    segs: Option<(u32, u32)>,
    /// It carried a request after the census first saw it open.
    reused: bool,
}

const WAS_KNOWN: u8 = 1;
const WAS_OPEN: u8 = 2;

/// How many of the oldest open connections a census with detail keeps by
/// name (the report lists at most this many cut connections).
pub(crate) const OLDEST_KEPT: usize = 20;

/// The open connections of a census with detail, summed up: how many were
/// first seen before the drain's hook, the youngest's first sighting, and
/// the [`OLDEST_KEPT`] oldest by name. A few hundred bytes where the list
/// of 100k connections would be 8 MB a census.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Detail {
    /// First seen before this tick (the drain's hook).
    pub(crate) hook_tick: u32,
    pub(crate) before_hook: u32,
    /// The latest first sighting (tick).
    pub(crate) youngest: Option<u32>,
    /// The oldest, oldest first: (first sighting, endpoints).
    pub(crate) oldest: Vec<(u32, ConnKey)>,
}

impl Detail {
    fn new(hook_tick: u32) -> Detail {
        Detail {
            hook_tick,
            ..Default::default()
        }
    }

    /// Takes in one open connection first seen at `since`.
    fn add(&mut self, since: u32, key: ConnKey) {
        self.before_hook += u32::from(since < self.hook_tick);
        self.youngest = Some(self.youngest.map_or(since, |y| y.max(since)));
        // Kept sorted, oldest first, bounded: a connection younger than
        // every kept one when full is passed by (no heap of 100k).
        if self.oldest.len() == OLDEST_KEPT && self.oldest.last().is_some_and(|(s, _)| *s <= since)
        {
            return;
        }
        let at = self.oldest.partition_point(|(s, _)| *s <= since);
        self.oldest.insert(at, (since, key));
        self.oldest.truncate(OLDEST_KEPT);
    }
}

/// The connections new since an earlier census.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewConns {
    pub n: u32,
    /// Who they came from, when few peers did.
    pub peers: FewPeers,
    /// And the requests since then on connections already open.
    pub requests: Requests,
}

/// Requests since an earlier census on connections that were already open
/// then (a balancer's keep-alive pool): data the client sent, read from
/// `tcp_info`'s counters. A connection's arrival counts its first request;
/// these are the ones after it.
///
/// How many: a request is at least one data segment from the client, and on
/// one connection the next request waits for the previous reply, so a
/// connection carried at most `min(data segments in, data segments out + 1)`
/// requests: a body sent in many segments counts once, a stream of replies
/// to one request counts once. Traffic NGINX alone sends (downloads,
/// server-sent events, WebSocket pushes) carries no client data and is
/// never a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requests {
    pub n: u32,
    /// On this many connections.
    pub conns: u32,
    /// The latest, in milliseconds before the census.
    pub latest_ms_ago: Option<u32>,
}

impl Requests {
    /// A new connection from a `--pool-peer`: its first request (its later
    /// ones are added by [`Requests::add`]). `activity`: its `tcp_info`,
    /// when it is open (when its last data came).
    fn add_pool_connection(&mut self, activity: Option<&Activity>, counted: bool) {
        self.n = self.n.saturating_add(1);
        self.conns += u32::from(!counted);
        if let Some(a) = activity {
            self.latest(a);
        }
    }

    fn add(&mut self, n: u32, a: &Activity) {
        if n == 0 {
            return;
        }
        self.n = self.n.saturating_add(n);
        self.conns += 1;
        self.latest(a);
    }

    /// The latest request is the one whose client data came last.
    fn latest(&mut self, a: &Activity) {
        self.latest_ms_ago = Some(
            self.latest_ms_ago
                .map_or(a.last_data_recv_ms, |m| m.min(a.last_data_recv_ms)),
        );
    }
}

/// Requests a connection carried between two readings of its counters:
/// `before` (client, NGINX data segments) or none (a new connection, whose
/// first request is its arrival).
fn requests_between(before: Option<(u32, u32)>, a: &Activity) -> u32 {
    match before {
        Some((din, dout)) => {
            let d_in = a.data_segs_in.wrapping_sub(din);
            let d_out = a.data_segs_out.wrapping_sub(dout);
            // Counters only grow: a difference in the upper half is a
            // counter that went back (another socket reusing the endpoints).
            if d_in == 0 || d_in > u32::MAX / 2 || d_out > u32::MAX / 2 {
                0
            } else {
                d_in.min(d_out.saturating_add(1))
            }
        }
        None => a
            .data_segs_in
            .min(a.data_segs_out.saturating_add(1))
            .saturating_sub(1),
    }
}

impl Census {
    /// Builds a census. `ports_seen` is the set of ports known to be NGINX's
    /// so far (listeners close at SIGQUIT, their connections stay): it is
    /// extended with today's listeners.
    #[cfg(any(test, feature = "testbed"))]
    pub fn take(socks: &[Sock], filter: &PortFilter, ports_seen: &mut BTreeSet<u16>) -> Census {
        Census::take_since(socks, filter, ports_seen, None, None, 0).0
    }

    /// [`Census::take`], and the connections new since `before` (none
    /// without one), with who they came from; with `detail` (the drain's
    /// hook, as a tick), the open connections summed up ([`Detail`]).
    /// `tick` is the caller's clock: what a
    /// connection first seen open now is stamped with.
    #[cfg(any(test, feature = "testbed"))]
    pub fn take_since(
        socks: &[Sock],
        filter: &PortFilter,
        ports_seen: &mut BTreeSet<u16>,
        before: Option<&Census>,
        detail: Option<u32>,
        tick: u32,
    ) -> (Census, NewConns) {
        Census::take_with(
            socks,
            filter,
            ports_seen,
            before.cloned(),
            (detail, tick),
            true,
        )
    }

    /// [`Census::take_since`], updating `before` in place, and saying
    /// whether a connection first seen in TIME_WAIT is an arrival (see
    /// [`CensusBuilder::time_wait_arrives`]).
    pub fn take_with(
        socks: &[Sock],
        filter: &PortFilter,
        ports_seen: &mut BTreeSet<u16>,
        before: Option<Census>,
        (detail, tick): (Option<u32>, u32),
        time_wait_arrives: bool,
    ) -> (Census, NewConns) {
        let listeners: Vec<Sock> = socks
            .iter()
            .filter(|s| s.state == state::LISTEN)
            .copied()
            .collect();
        let mut b = CensusBuilder::new(&listeners, filter, ports_seen, before, detail, tick)
            .time_wait_arrives(time_wait_arrives);
        b.extend(socks.iter().filter(|s| s.state != state::LISTEN).copied());
        b.finish()
    }

    /// Connections in `self` that were not in `before`, or that were closing
    /// before and are open now (a new connection reusing the endpoints of
    /// one in TIME_WAIT).
    #[cfg(any(test, feature = "testbed"))]
    pub fn arrivals_since(&self, before: &Census) -> u32 {
        let n = self
            .conns
            .iter()
            .filter(|(id, now)| match before.conns.get(*id) {
                None => true,
                Some(was) => now.open && !was.open,
            })
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    #[cfg(any(test, feature = "testbed"))]
    pub fn open_total(&self) -> u32 {
        self.open.values().sum()
    }

    /// Whether this census (or one before it) saw `id`'s full socket: its
    /// arrival was counted by a census, not left to its destroy event.
    pub(crate) fn saw_alive(&self, id: ConnId) -> bool {
        self.conns.get(&id).is_some_and(|c| c.alive)
    }
}

/// A census built while a dump streams in: the listeners first, then each
/// connection as it is parsed, so that a dump of 100k sockets is never held
/// whole in memory. It updates the previous census in place.
pub(crate) struct CensusBuilder<'a> {
    c: Census,
    filter: &'a PortFilter,
    ports: &'a BTreeSet<u16>,
    /// There was a previous census to compare with.
    had_before: bool,
    /// The caller's clock, for connections first seen now.
    tick: u32,
    /// New connections, as (id, peer): few, so kept with their peers.
    new: Vec<(ConnId, IpAddr)>,
    requests: Requests,
}

impl<'a> CensusBuilder<'a> {
    /// Starts from the dump's listeners and the previous census (updated
    /// in place); `ports_seen` (the ports known to be NGINX's so far) is
    /// extended with today's.
    pub(crate) fn new(
        listeners: &[Sock],
        filter: &'a PortFilter,
        ports_seen: &'a mut BTreeSet<u16>,
        before: Option<Census>,
        detail: Option<u32>,
        tick: u32,
    ) -> CensusBuilder<'a> {
        let had_before = before.is_some();
        let mut c = before.unwrap_or_default();
        c.generation = c.generation.wrapping_add(1);
        c.listening.clear();
        c.open.clear();
        c.detail = detail.map(Detail::new);
        c.other_listeners.clear();
        c.time_wait_arrives = true;
        c.activity_seen = false;
        c.pooled_open = 0;
        c.pooled_idle = 0;
        for s in listeners.iter().filter(|s| s.state == state::LISTEN) {
            let port = s.local.port();
            if filter.port_counts(port) {
                *c.listening.entry(port).or_default() += s.rx_queue;
                ports_seen.insert(port);
            } else {
                c.other_listeners.insert(port);
            }
        }
        ports_seen.extend(filter.only.iter().copied());
        CensusBuilder {
            c,
            filter,
            ports: ports_seen,
            had_before,
            tick,
            new: Vec::new(),
            requests: Requests::default(),
        }
    }

    /// With the destroy events watched, a connection first seen in
    /// TIME_WAIT is not an arrival: its destroy event reported it.
    pub(crate) fn time_wait_arrives(mut self, yes: bool) -> Self {
        self.c.time_wait_arrives = yes;
        self
    }

    /// The ports whose connections count (listening now, or before).
    pub(crate) fn ports(&self) -> &BTreeSet<u16> {
        self.ports
    }

    fn add(&mut self, s: Sock) {
        let port = s.local.port();
        if s.state == state::LISTEN
            || !self.ports.contains(&port)
            || !self.filter.peer_counts(&s.peer)
        {
            return;
        }
        let generation = self.c.generation;
        let id = conn_id(s.local, s.peer);
        let open = s.is_open();
        let full = s.state != state::TIME_WAIT;
        let tick = self.tick;
        // A pair of endpoints counts once, even if a dump lists it twice (or
        // lists a closing socket beside a new one that reuses them): open
        // wins. `was` is its state before this census.
        // The requests it carried since the last census (with counters).
        let mut requests = 0;
        let (was, newly_open, pooled) = match self.c.conns.entry(id) {
            Entry::Occupied(mut e) => {
                let st = e.get_mut();
                if st.generation == generation {
                    // Listed twice in this dump.
                    let newly_open = open && !st.open;
                    st.open |= open;
                    st.alive |= full;
                    (st.was, newly_open, st.reused)
                } else {
                    let was = WAS_KNOWN | if st.open { WAS_OPEN } else { 0 };
                    // Open since an earlier census that saw it open; else
                    // since now.
                    let since = if st.open { st.since } else { tick };
                    let mut reused = st.reused && st.open;
                    let segs = match (open, s.activity) {
                        (true, Some(a)) => {
                            let before = if st.open { st.segs } else { None };
                            requests = requests_between(before, &a);
                            reused |= before.is_some() && requests > 0;
                            Some((a.data_segs_in, a.data_segs_out))
                        }
                        _ => None,
                    };
                    *st = ConnState {
                        open,
                        alive: full || st.alive,
                        generation,
                        was,
                        since,
                        segs,
                        reused,
                    };
                    (was, open, reused)
                }
            }
            Entry::Vacant(v) => {
                let segs = match (open, s.activity) {
                    (true, Some(a)) => {
                        requests = requests_between(None, &a);
                        Some((a.data_segs_in, a.data_segs_out))
                    }
                    _ => None,
                };
                v.insert(ConnState {
                    open,
                    alive: full,
                    generation,
                    was: 0,
                    since: tick,
                    segs,
                    reused: false,
                });
                (0, open, false)
            }
        };
        if let Some(a) = s.activity.filter(|_| newly_open) {
            self.c.activity_seen = true;
            if pooled {
                self.c.pooled_open += 1;
                self.c.pooled_idle += u32::from(a.queued == 0);
            }
            if self.had_before {
                self.requests.add(requests, &a);
            }
        }
        if newly_open {
            *self.c.open.entry(port).or_default() += 1;
            if let Some(d) = &mut self.c.detail {
                let since = self.c.conns.get(&id).map_or(tick, |st| st.since);
                d.add(since, (s.local, s.peer));
            }
        }
        if self.had_before {
            let is_new = if was & WAS_KNOWN == 0 {
                full || self.c.time_wait_arrives
            } else {
                open && was & WAS_OPEN == 0
            };
            if is_new && self.filter.pool_peer(&s.peer) {
                let counted = open && requests > 0 && s.activity.is_some();
                self.requests
                    .add_pool_connection(s.activity.as_ref().filter(|_| open), counted);
            } else if is_new {
                self.new.push((id, s.peer.ip()));
            }
        }
    }

    /// The census as far as it got, when a dump fails half-way: a good
    /// `before` for the next attempt (what it listed is current, what it
    /// did not is from the census before).
    pub(crate) fn abandon(self) -> Census {
        self.c
    }

    pub(crate) fn finish(mut self) -> (Census, NewConns) {
        let generation = self.c.generation;
        // Connections no longer listed are gone.
        self.c.conns.retain(|_, st| st.generation == generation);
        self.new.sort_unstable_by_key(|(id, _)| *id);
        self.new.dedup_by_key(|(id, _)| *id);
        let arrivals = NewConns {
            n: u32::try_from(self.new.len()).unwrap_or(u32::MAX),
            peers: add_peers(Some(Box::default()), self.new.iter().map(|(_, ip)| ip)),
            requests: self.requests,
        };
        (self.c, arrivals)
    }
}

impl Extend<Sock> for CensusBuilder<'_> {
    fn extend<I: IntoIterator<Item = Sock>>(&mut self, iter: I) {
        for s in iter {
            self.add(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(state: u8, local: &str, peer: &str) -> Sock {
        Sock {
            state,
            local: local.parse().unwrap(),
            peer: peer.parse().unwrap(),
            rx_queue: 0,
            inode: 0,
            activity: None,
        }
    }

    fn filter() -> PortFilter {
        PortFilter {
            exclude: [10266].into(),
            ignore_peers: vec!["10.0.0.1/32".parse().unwrap()],
            ..Default::default()
        }
    }

    #[test]
    fn new_connections_since_an_earlier_census_with_their_peers() {
        let listen = sock(state::LISTEN, "0.0.0.0:80", "0.0.0.0:0");
        let old = sock(state::ESTABLISHED, "10.1.0.5:80", "10.2.0.9:40000");
        let mut seen = BTreeSet::new();
        let (a, none) = Census::take_since(&[listen, old], &filter(), &mut seen, None, None, 1);
        assert_eq!(none.n, 0, "no earlier census: nothing is new");
        let fresh = sock(state::ESTABLISHED, "10.1.0.5:80", "10.2.0.7:41000");
        let short = sock(state::TIME_WAIT, "10.1.0.5:80", "10.2.0.7:41001");
        let socks = [listen, old, fresh, fresh, short];
        let (b, new) = Census::take_since(&socks, &filter(), &mut seen, Some(&a), Some(2), 2);
        assert_eq!(new.n, 2, "the listed-twice one counts once");
        assert_eq!(
            new.peers.as_deref(),
            Some(&[("10.2.0.7".parse().unwrap(), 2)][..])
        );
        assert_eq!(b.arrivals_since(&a), 2);
        let d = b.detail.as_ref().expect("with detail");
        assert_eq!(d.oldest.len(), 2, "the open ones by name, oldest first");
        assert_eq!(d.oldest[0].1.1, old.peer, "first seen at 1");
        assert_eq!((d.before_hook, d.youngest), (1, Some(2)));
    }

    #[test]
    fn a_socket_listed_twice_counts_once_and_open_wins() {
        let est = sock(state::ESTABLISHED, "10.1.0.5:80", "10.2.0.9:40000");
        let socks = [
            sock(state::LISTEN, "0.0.0.0:80", "0.0.0.0:0"),
            est,
            est,
            // A closing socket beside a new one that reuses its endpoints.
            sock(state::TIME_WAIT, "10.1.0.5:80", "10.2.0.9:40001"),
            sock(state::ESTABLISHED, "10.1.0.5:80", "10.2.0.9:40001"),
            sock(state::TIME_WAIT, "10.1.0.5:80", "10.2.0.9:40001"),
        ];
        let mut seen = BTreeSet::new();
        let c = Census::take(&socks, &filter(), &mut seen);
        assert_eq!(c.open.get(&80), Some(&2));
        assert_eq!(c.conns.len(), 2);
        assert!(c.conns.values().all(|s| s.open));
    }

    #[test]
    fn counts_client_connections_on_listening_ports_only() {
        let socks = [
            sock(state::LISTEN, "0.0.0.0:80", "0.0.0.0:0"),
            sock(state::LISTEN, "0.0.0.0:10266", "0.0.0.0:0"),
            sock(state::ESTABLISHED, "10.1.0.5:80", "10.2.0.9:40000"),
            sock(state::ESTABLISHED, "10.1.0.5:80", "10.0.0.1:40001"), // the node: ignored
            sock(state::ESTABLISHED, "10.1.0.5:10266", "10.2.0.9:40002"), // the sidecar's port
            sock(state::ESTABLISHED, "10.1.0.5:43210", "10.3.0.1:8080"), // an upstream
            sock(state::TIME_WAIT, "10.1.0.5:80", "10.2.0.9:40003"),
        ];
        let mut seen = BTreeSet::new();
        let c = Census::take(&socks, &filter(), &mut seen);
        assert_eq!(c.listening.keys().copied().collect::<Vec<_>>(), vec![80]);
        assert_eq!(c.open.get(&80), Some(&1));
        assert_eq!(c.conns.len(), 2, "the open one and the TIME_WAIT one");
    }

    #[test]
    fn arrivals_are_new_endpoints_and_reopened_ones() {
        let mut seen = BTreeSet::new();
        let l = sock(state::LISTEN, "0.0.0.0:80", "0.0.0.0:0");
        let a = Census::take(
            &[
                l,
                sock(state::ESTABLISHED, "1.1.1.1:80", "2.2.2.2:1"),
                sock(state::TIME_WAIT, "1.1.1.1:80", "2.2.2.2:2"),
            ],
            &filter(),
            &mut seen,
        );
        let b = Census::take(
            &[
                sock(state::TIME_WAIT, "1.1.1.1:80", "2.2.2.2:1"), // same conn, now closed
                sock(state::ESTABLISHED, "1.1.1.1:80", "2.2.2.2:2"), // TIME_WAIT reused: new
                sock(state::TIME_WAIT, "1.1.1.1:80", "2.2.2.2:3"), // came and went: new
            ],
            &filter(),
            &mut seen,
        );
        assert_eq!(b.arrivals_since(&a), 2);
        assert!(b.listening.is_empty(), "listener closed (SIGQUIT)");
        assert_eq!(
            b.open.get(&80),
            Some(&1),
            "port 80 still counted after its listener closed"
        );
    }

    /// With the destroy events watched, a TIME_WAIT first seen by a census
    /// is not an arrival (its destroy event was); a connection a census saw
    /// alive stays known as seen after it closes, so that its destroy event
    /// is not counted again.
    #[test]
    fn with_destroy_events_time_wait_is_not_an_arrival_and_alive_is_remembered() {
        let l = sock(state::LISTEN, "0.0.0.0:80", "0.0.0.0:0");
        let mut seen = BTreeSet::new();
        let take = |socks: &[Sock], before: Option<&Census>, seen: &mut BTreeSet<u16>| {
            Census::take_with(socks, &filter(), seen, before.cloned(), (None, 0), false)
        };
        let (a, _) = take(&[l], None, &mut seen);
        let est = sock(state::ESTABLISHED, "1.1.1.1:80", "2.2.2.2:1");
        let tw = sock(state::TIME_WAIT, "1.1.1.1:80", "2.2.2.2:2");
        let (b, new) = take(&[l, est, tw], Some(&a), &mut seen);
        assert_eq!(new.n, 1, "the open one only");
        let id = |s: &Sock| conn_id(s.local, s.peer);
        assert!(b.saw_alive(id(&est)));
        assert!(!b.saw_alive(id(&tw)), "its destroy event counts it");
        let est_closed = sock(state::TIME_WAIT, "1.1.1.1:80", "2.2.2.2:1");
        let (c, new) = take(&[l, est_closed, tw], Some(&b), &mut seen);
        assert_eq!(new.n, 0);
        assert!(c.saw_alive(id(&est)), "seen alive before, in TIME_WAIT now");
        // The same census without destroy events counts the TIME_WAIT.
        let (_, new) = Census::take_with(
            &[l, est, tw],
            &filter(),
            &mut seen,
            Some(a.clone()),
            (None, 0),
            true,
        );
        assert_eq!(new.n, 2);
    }

    /// The map is updated in place: what a dump no longer lists is gone,
    /// first sightings carry over, and an abandoned dump leaves a usable
    /// `before`.
    #[test]
    fn updated_in_place_from_census_to_census() {
        let l = sock(state::LISTEN, "0.0.0.0:80", "0.0.0.0:0");
        let c1 = sock(state::ESTABLISHED, "1.1.1.1:80", "2.2.2.2:1");
        let c2 = sock(state::ESTABLISHED, "1.1.1.1:80", "2.2.2.2:2");
        let c3 = sock(state::ESTABLISHED, "1.1.1.1:80", "2.2.2.2:3");
        let f = filter();
        // Builds a census; `complete: false` abandons it after the sockets.
        let build = |socks: &[Sock], before: Option<Census>, tick, complete: bool| {
            let mut seen = BTreeSet::new();
            let mut b = CensusBuilder::new(&[l], &f, &mut seen, before, Some(tick), tick);
            b.extend(socks.iter().copied());
            if complete {
                let (c, new) = b.finish();
                (c, new.n)
            } else {
                (b.abandon(), 0)
            }
        };
        let (a, _) = build(&[c1, c2], None, 1, true);
        let (b, new) = build(&[c2, c3], Some(a), 5, true);
        assert_eq!(new, 1);
        assert_eq!(b.conns.len(), 2, "c1 is gone");
        assert_eq!(
            b.conns[&conn_id(c2.local, c2.peer)].since,
            1,
            "carried over"
        );
        assert_eq!(b.conns[&conn_id(c3.local, c3.peer)].since, 5);
        assert_eq!(b.open.get(&80), Some(&2));
        // A dump that fails after listing c3 only, then a full one.
        let (half, _) = build(&[c3], Some(b), 6, false);
        let (c, new) = build(&[c2, c3], Some(half), 7, true);
        assert_eq!(new, 0, "nothing new after all");
        assert_eq!(c.conns.len(), 2);
        assert_eq!(c.detail.map(|d| d.oldest.len()), Some(2));
    }

    /// With 100 000 connections open, a census with detail keeps the 20
    /// oldest by name and counts the rest: bounded, whatever the number.
    #[test]
    fn detail_keeps_the_oldest_and_counts_the_rest() {
        let mut d = Detail::new(500);
        let key = |i: u32| -> ConnKey {
            (
                "10.1.0.5:80".parse().unwrap(),
                SocketAddr::new([10, 9, (i >> 8) as u8, i as u8].into(), 40000),
            )
        };
        for i in (0..1000u32).rev() {
            d.add(i, key(i));
        }
        assert_eq!(d.oldest.len(), OLDEST_KEPT);
        assert!(
            d.oldest
                .iter()
                .enumerate()
                .all(|(k, (s, _))| *s == k as u32)
        );
        assert_eq!((d.before_hook, d.youngest), (500, Some(999)));
    }

    /// An open connection with its `tcp_info` counters.
    fn active(peer: &str, segs_in: u32, segs_out: u32, ago_ms: u32, queued: u32) -> Sock {
        Sock {
            activity: Some(Activity {
                data_segs_in: segs_in,
                data_segs_out: segs_out,
                last_data_recv_ms: ago_ms,
                queued,
            }),
            ..sock(state::ESTABLISHED, "10.1.0.5:80", peer)
        }
    }

    /// `--pool-peer`: a new connection from a balancer that only pools is a
    /// request of its pool (its first request, and its later ones), even
    /// when it is gone by the census (TIME_WAIT: its destroy event counts
    /// it, see the sampler); from any other peer, a new client.
    #[test]
    fn a_new_connection_from_a_pool_peer_is_a_request_of_its_pool() {
        let l = sock(state::LISTEN, "0.0.0.0:80", "0.0.0.0:0");
        let f = PortFilter {
            pool_peers: vec!["10.2.0.0/24".parse().unwrap()],
            ..filter()
        };
        assert!(f.pool_peer(&"10.2.0.9:1".parse().unwrap()));
        assert!(!f.pool_peer(&"10.3.0.9:1".parse().unwrap()));
        let mut seen = BTreeSet::new();
        let take = |socks: &[Sock], before: Option<Census>, seen: &mut BTreeSet<u16>| {
            Census::take_with(socks, &f, seen, before, (None, 0), false)
        };
        let (a, _) = take(&[l, active("10.2.0.9:40000", 1, 1, 5, 0)], None, &mut seen);
        let (_, new) = take(
            &[
                l,
                active("10.2.0.9:40000", 1, 1, 900, 0),
                // The balancer's new connection, with a second request.
                active("10.2.0.9:40001", 2, 2, 20, 0),
                // One with its first request only.
                active("10.2.0.8:40002", 1, 1, 30, 0),
                // A client of its own.
                active("10.3.0.7:41000", 1, 1, 10, 0),
            ],
            Some(a),
            &mut seen,
        );
        assert_eq!(new.n, 1, "the client's connection is new");
        assert_eq!(
            new.peers.as_deref(),
            Some(&[("10.3.0.7".parse().unwrap(), 1)][..])
        );
        assert_eq!(
            new.requests,
            Requests {
                n: 3,
                conns: 2,
                latest_ms_ago: Some(20)
            },
            "the pool's two new connections are three requests"
        );
    }

    /// Requests on connections already open are counted from their data
    /// segments: one a request, at most one more than the replies between
    /// (a body in many segments is not many requests), none for data NGINX
    /// alone sent (a download); a new connection's first request is its
    /// arrival.
    #[test]
    fn requests_on_open_connections_are_counted_from_tcp_info() {
        let l = sock(state::LISTEN, "0.0.0.0:80", "0.0.0.0:0");
        let mut seen = BTreeSet::new();
        let take = |socks: &[Sock], before: Option<Census>, seen: &mut BTreeSet<u16>| {
            Census::take_with(socks, &filter(), seen, before, (None, 0), false)
        };
        let pool = "10.2.0.9:40000";
        let upload = "10.2.0.9:40001";
        let download = "10.2.0.9:40002";
        let (a, first) = take(
            &[
                l,
                active(pool, 10, 10, 5, 0),
                active(upload, 1, 1, 5, 0),
                active(download, 1, 50, 900, 4096),
            ],
            None,
            &mut seen,
        );
        assert_eq!(first.requests, Requests::default(), "no census before");
        assert!(a.activity_seen);
        let (b, new) = take(
            &[
                l,
                // Three requests answered, the latest 30 ms ago.
                active(pool, 13, 13, 30, 0),
                // A body in 40 segments and one reply: at most two requests.
                active(upload, 41, 2, 70, 0),
                // NGINX sent 200 more segments, the client nothing.
                active(download, 1, 250, 1900, 8192),
                // A new connection that already carried two requests.
                active("10.2.0.7:41000", 2, 2, 10, 0),
            ],
            Some(a),
            &mut seen,
        );
        assert_eq!(new.n, 1, "one new connection");
        assert_eq!(
            new.requests,
            Requests {
                n: 3 + 2 + 1,
                conns: 3,
                latest_ms_ago: Some(10)
            }
        );
        assert_eq!(b.pooled_open, 2, "the pool and the upload were reused");
        assert_eq!(b.pooled_idle, 2);
        // A counter that went back (the endpoints reused by another
        // socket) is no request; the pool, busy now, is not idle.
        let (c, new) = take(
            &[l, active(pool, 14, 13, 0, 300), active(upload, 3, 1, 5, 0)],
            Some(b),
            &mut seen,
        );
        assert_eq!(new.requests.n, 1, "{:?}", new.requests);
        assert_eq!((c.pooled_open, c.pooled_idle), (2, 1));
        // From /proc (no tcp_info): nothing seen.
        let (d, new) = take(
            &[l, sock(state::ESTABLISHED, "10.1.0.5:80", pool)],
            Some(c),
            &mut seen,
        );
        assert_eq!(new.requests, Requests::default());
        assert!(!d.activity_seen);
    }

    #[test]
    fn explicit_ports_restrict() {
        let f = PortFilter {
            only: [443].into(),
            ..filter()
        };
        let mut seen = BTreeSet::new();
        let c = Census::take(
            &[
                sock(state::LISTEN, "0.0.0.0:80", "0.0.0.0:0"),
                sock(state::LISTEN, "0.0.0.0:443", "0.0.0.0:0"),
                sock(state::ESTABLISHED, "1.1.1.1:80", "2.2.2.2:1"),
            ],
            &f,
            &mut seen,
        );
        assert_eq!(c.listening.keys().copied().collect::<Vec<_>>(), vec![443]);
        assert!(c.conns.is_empty());
    }
}
