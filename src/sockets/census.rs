//! From a socket dump to what the drain needs: which ports are served,
//! how many connections each holds, and which connections are new.
//!
//! Invariant kept here: connections from `--ignore-peer` ranges and to the
//! sidecar's own port never count as arrivals.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
// A fast non-cryptographic hash. Peers choose their own addresses, but the
// map holds one entry per socket the kernel already has, so colliding keys
// cost an attacker one connection each: SipHash is not worth its price here.
use rustc_hash::FxHashMap;

use super::arrivals::{FEW_PEERS, FewPeers};
use super::{Sock, state};

/// Which local ports count as NGINX's, and which peers are not clients.
#[derive(Debug, Clone, Default)]
pub struct PortFilter {
    /// `--port`: only these. Empty: every listening port but `exclude`.
    pub only: BTreeSet<u16>,
    /// The sidecar's own port(s).
    pub exclude: BTreeSet<u16>,
    /// `--ignore-peer`: the node (kubelet probes and hooks).
    pub ignore_peers: Vec<IpNet>,
}

impl PortFilter {
    pub fn port_counts(&self, port: u16) -> bool {
        !self.exclude.contains(&port) && (self.only.is_empty() || self.only.contains(&port))
    }
    pub fn peer_counts(&self, peer: &SocketAddr) -> bool {
        !self.ignore_peers.iter().any(|n| n.contains(&peer.ip()))
    }
}

/// Identifies one connection across samples: its two endpoints.
pub type ConnKey = (SocketAddr, SocketAddr);

/// One census of the namespace, reduced to the counted ports.
#[derive(Debug, Clone, Default)]
pub struct Census {
    /// Listening ports that count, with their accept-queue length.
    pub listening: BTreeMap<u16, u32>,
    /// Open connections (NGINX has not closed its side) per counted port,
    /// client peers only.
    pub open: BTreeMap<u16, u32>,
    /// Every connection on a counted port from a client peer, in any state,
    /// TIME_WAIT included (so short connections that closed between two
    /// samples are still seen), with whether it is open.
    pub conns: FxHashMap<ConnKey, bool>,
}

impl Census {
    /// Builds a census. `ports_seen` is the set of ports known to be NGINX's
    /// so far (listeners close at SIGQUIT, their connections stay): it is
    /// extended with today's listeners.
    pub fn take(socks: &[Sock], filter: &PortFilter, ports_seen: &mut BTreeSet<u16>) -> Census {
        let mut c = Census {
            conns: FxHashMap::with_capacity_and_hasher(socks.len(), Default::default()),
            ..Census::default()
        };
        for s in socks.iter().filter(|s| s.state == state::LISTEN) {
            let port = s.local.port();
            if filter.port_counts(port) {
                *c.listening.entry(port).or_default() += s.rx_queue;
                ports_seen.insert(port);
            }
        }
        ports_seen.extend(filter.only.iter().copied());
        for s in socks.iter().filter(|s| s.state != state::LISTEN) {
            let port = s.local.port();
            if !ports_seen.contains(&port) || !filter.peer_counts(&s.peer) {
                continue;
            }
            // A pair of endpoints counts once, even if a dump lists it twice
            // (or lists a closing socket beside a new one that reuses them):
            // open wins.
            let key = (s.local, s.peer);
            let was_open = c.conns.get(&key).copied();
            let open = s.is_open();
            if open && was_open != Some(true) {
                *c.open.entry(port).or_default() += 1;
            }
            c.conns.insert(key, open || was_open == Some(true));
        }
        c
    }

    /// Connections in `self` that were not in `before`, or that were closing
    /// before and are open now (a new connection reusing the endpoints of
    /// one in TIME_WAIT).
    pub fn arrivals_since(&self, before: &Census) -> u32 {
        self.arrivals_by_peer(before).0
    }

    /// [`Census::arrivals_since`], with who arrived when few peers did
    /// (at most [`FEW_PEERS`] distinct addresses).
    pub fn arrivals_by_peer(&self, before: &Census) -> (u32, FewPeers) {
        let mut n = 0u32;
        let mut peers: Vec<(IpAddr, u32)> = Vec::new();
        let mut many = false;
        for (key, open) in &self.conns {
            let new = match before.conns.get(key) {
                None => true,
                Some(was_open) => *open && !*was_open,
            };
            if !new {
                continue;
            }
            n = n.saturating_add(1);
            if many {
                continue;
            }
            let ip = key.1.ip();
            if let Some((_, c)) = peers.iter_mut().find(|(p, _)| *p == ip) {
                *c += 1;
            } else if peers.len() < FEW_PEERS {
                peers.push((ip, 1));
            } else {
                many = true;
            }
        }
        (n, (!many).then(|| peers.into_boxed_slice()))
    }

    pub fn open_total(&self) -> u32 {
        self.open.values().sum()
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
        assert!(c.conns.values().all(|open| *open));
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
