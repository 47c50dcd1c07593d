//! The connection census of the pod's network namespace (shared with NGINX):
//! every TCP socket, from NETLINK_SOCK_DIAG, or from /proc/net/tcp{,6} when
//! netlink is refused.
//!
//! This module observes and returns plain values. It does not map sockets to
//! processes: NGINX's /proc/PID/fd may be unreadable (non-dumpable, another
//! UID), so ports and peers are all we use.

pub(crate) mod arrivals;
pub mod census;
pub(crate) mod counters;
pub(crate) mod monitor;
pub mod netlink;
pub(crate) mod probes;
pub mod procnet;
pub mod routes;
pub(crate) mod sampler;
pub(crate) mod view;

use crate::vocab::CensusMethod;
use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;

pub(crate) use census::CensusBuilder;
pub use census::{Census, NewConns, PortFilter};

/// TCP states as the kernel numbers them (include/net/tcp_states.h).
pub mod state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
}

/// One TCP socket as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sock {
    pub state: u8,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// Receive queue; for a listener, the accept queue's current length.
    pub rx_queue: u32,
    pub inode: u32,
    /// What the kernel's `tcp_info` says of the data it carried, when the
    /// census asked for it (netlink, open connections); `None` from /proc.
    pub activity: Option<Activity>,
}

/// A connection's data counters from `tcp_info` (INET_DIAG_INFO): what the
/// census needs to see requests arriving on connections that are already
/// open (a balancer's keep-alive pool), without NGINX's help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    /// Segments that carried data from the client (`tcpi_data_segs_in`),
    /// since the connection began; ACKs alone do not count.
    pub data_segs_in: u32,
    /// Segments that carried data to the client (`tcpi_data_segs_out`).
    pub data_segs_out: u32,
    /// Milliseconds since the client last sent data (`tcpi_last_data_recv`).
    pub last_data_recv_ms: u32,
    /// Bytes NGINX has not read yet, plus bytes it wrote that the kernel has
    /// not sent yet (`tcpi_notsent_bytes`): zero when NGINX has taken every
    /// request and handed every reply on, waiting for the client (idle).
    pub queued: u32,
}

impl Sock {
    /// A connection NGINX still holds open (it has not closed its side).
    pub(crate) fn is_open(&self) -> bool {
        matches!(
            self.state,
            state::ESTABLISHED | state::SYN_RECV | state::NEW_SYN_RECV | state::CLOSE_WAIT
        )
    }
}

/// A source of socket dumps. Netlink is tried first (fast, ~4 ms for 10k
/// sockets); if the kernel or a seccomp profile refuses it, the source
/// switches to /proc for good and says so once.
pub struct Source {
    netlink: Option<netlink::Dumper>,
    pub(crate) method: CensusMethod,
    /// `--census netlink`: never /proc, even when netlink fails (no census
    /// then, and the wiring check says so).
    netlink_only: bool,
    /// Whether IPv6 connections are dumped (see `Dumper::connections`):
    /// unknown until the first census, then from the first IPv6 listener
    /// or connection on a counted port on, for good (connections outlive
    /// their listener, which SIGQUIT closes).
    v6: Option<bool>,
}

impl Source {
    pub fn new(method: CensusMethod) -> Source {
        let netlink = match method {
            CensusMethod::Proc => None,
            CensusMethod::Auto | CensusMethod::Netlink => match netlink::Dumper::new() {
                Ok(d) => Some(d),
                Err(e) if method == CensusMethod::Auto => {
                    tracing::warn!(error = %e, "NETLINK_SOCK_DIAG refused: counting connections from /proc/net/tcp and /proc/net/tcp6 instead (slower)");
                    None
                }
                Err(e) => {
                    tracing::error!(error = %e, "NETLINK_SOCK_DIAG refused and --census netlink was given: no connection census (every drain waits --max-delay); allow NETLINK_SOCK_DIAG in the seccomp profile, or use --census auto to count from /proc/net/tcp");
                    None
                }
            },
        };
        let netlink_only = method == CensusMethod::Netlink;
        let method = if netlink.is_some() || netlink_only {
            CensusMethod::Netlink
        } else {
            CensusMethod::Proc
        };
        Source {
            netlink,
            method,
            netlink_only,
            v6: None,
        }
    }

    /// Takes one census: the listeners, then the connections on the ports
    /// that count (extending `ports_seen` with today's listeners).
    #[cfg(any(test, feature = "testbed"))]
    pub fn census(
        &mut self,
        filter: &PortFilter,
        ports_seen: &mut BTreeSet<u16>,
    ) -> io::Result<Census> {
        self.census_since(filter, ports_seen, &mut None, None, 0, true)
            .map(|(c, _)| c)
    }

    /// [`Source::census`], with the connections new since `before` (see
    /// [`Census::take_since`]), which it takes and updates in place. Every
    /// listener, then every other socket on a counted port: by netlink the
    /// port filter runs in the kernel and the connections stream into the
    /// census as they are parsed (a dump is never held whole).
    /// `time_wait_arrives`: see [`CensusBuilder::time_wait_arrives`]. When
    /// no census can be taken, `before` is left for the next attempt (as
    /// far as a failed dump got: still a good `before`), so that what
    /// arrives in between is still new to it and ages are kept.
    pub fn census_since(
        &mut self,
        filter: &PortFilter,
        ports_seen: &mut BTreeSet<u16>,
        before: &mut Option<Census>,
        detail: Option<u32>,
        tick: u32,
        time_wait_arrives: bool,
    ) -> io::Result<(Census, NewConns)> {
        if let Some(d) = &mut self.netlink {
            let mut listeners = Vec::new();
            let failed = match d.listeners(&mut listeners) {
                Err(e) => e,
                Ok(()) => {
                    let mut seen = ports_seen.clone();
                    let mut b = CensusBuilder::new(
                        &listeners,
                        filter,
                        &mut seen,
                        before.take(),
                        detail,
                        tick,
                    )
                    .time_wait_arrives(time_wait_arrives);
                    let ports = b.ports().clone();
                    let v6_listener = listeners.iter().any(|s| {
                        s.state == state::LISTEN
                            && s.local.is_ipv6()
                            && filter.port_counts(s.local.port())
                    });
                    let v6 = self.v6 != Some(false) || v6_listener;
                    match d.connections(&ports, v6, &mut b) {
                        Ok(listed_v6) => {
                            self.v6 = Some(self.v6 == Some(true) || v6_listener || listed_v6 > 0);
                            let done = b.finish();
                            *ports_seen = seen;
                            return Ok(done);
                        }
                        Err(e) => {
                            *before = Some(b.abandon());
                            e
                        }
                    }
                }
            };
            if self.netlink_only {
                return Err(io::Error::new(
                    failed.kind(),
                    format!(
                        "NETLINK_SOCK_DIAG dump failed ({failed}) and --census netlink allows no other source"
                    ),
                ));
            }
            tracing::warn!(error = %failed, "NETLINK_SOCK_DIAG dump failed: counting connections from /proc/net/tcp and /proc/net/tcp6 from now on");
            self.netlink = None;
            self.method = CensusMethod::Proc;
        } else if self.netlink_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "NETLINK_SOCK_DIAG is refused and --census netlink allows no other source: allow it in the seccomp profile, or use --census auto",
            ));
        }
        let socks = procnet::dump()?;
        Ok(Census::take_with(
            &socks,
            filter,
            ports_seen,
            before.take(),
            (detail, tick),
            time_wait_arrives,
        ))
    }

    /// Every TCP socket of this network namespace, IPv4 and IPv6.
    #[cfg(any(test, feature = "testbed"))]
    pub fn dump(&mut self) -> io::Result<Vec<Sock>> {
        if let Some(d) = &mut self.netlink {
            let mut socks = Vec::new();
            d.listeners(&mut socks)?;
            d.connections_on_any_port(&mut socks)?;
            return Ok(socks);
        }
        procnet::dump()
    }
}

/// `::ffff:a.b.c.d` (an IPv4 client on a dual-stack socket) as `a.b.c.d`,
/// so that peer ranges and ports match whatever the socket family.
#[cfg(test)]
mod tests {
    use super::*;

    /// `--census netlink` with netlink refused: no census at all (an
    /// error that says why), never the /proc fallback it excludes; `auto`
    /// falls back.
    #[test]
    fn netlink_only_never_falls_back_to_proc() {
        let refused = |netlink_only: bool| Source {
            netlink: None,
            method: if netlink_only {
                CensusMethod::Netlink
            } else {
                CensusMethod::Proc
            },
            netlink_only,
            v6: None,
        };
        let mut seen = BTreeSet::new();
        let e = refused(true)
            .census(&PortFilter::default(), &mut seen)
            .unwrap_err();
        assert!(e.to_string().contains("--census netlink"), "{e}");
        assert!(
            refused(false)
                .census(&PortFilter::default(), &mut seen)
                .is_ok()
        );
    }

    /// The census dumps IPv6 connections only where an IPv6 listener
    /// counts (an accepted socket has its listener's family), and then
    /// finds them; IPv4 ones always.
    #[test]
    fn ipv6_connections_are_dumped_once_an_ipv6_listener_counts() {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _c4 = std::net::TcpStream::connect(v4.local_addr().unwrap()).unwrap();
        let _s4 = v4.accept().unwrap();
        let mut src = Source::new(CensusMethod::Netlink);
        let only = |ports: &[u16]| PortFilter {
            only: ports.iter().copied().collect(),
            ..Default::default()
        };
        let p4 = v4.local_addr().unwrap().port();
        let mut seen = BTreeSet::new();
        let c = src.census(&only(&[p4]), &mut seen).unwrap();
        assert_eq!(c.open.get(&p4), Some(&1));
        assert_eq!(src.v6, Some(false), "no IPv6 listener counts: not dumped");
        let Ok(v6) = std::net::TcpListener::bind("[::1]:0") else {
            return; // no IPv6 on this machine
        };
        let _c6 = std::net::TcpStream::connect(v6.local_addr().unwrap()).unwrap();
        let _s6 = v6.accept().unwrap();
        let p6 = v6.local_addr().unwrap().port();
        let c = src.census(&only(&[p4, p6]), &mut seen).unwrap();
        assert_eq!(c.open.get(&p6), Some(&1), "the IPv6 connection is found");
        assert_eq!(src.v6, Some(true));
        drop(v6);
        let c = src.census(&only(&[p4, p6]), &mut seen).unwrap();
        assert_eq!(
            c.open.get(&p6),
            Some(&1),
            "its listener closed (SIGQUIT), the connection is still dumped"
        );
    }

    /// Both sources see a listener and a connection this test makes.
    #[test]
    fn netlink_and_proc_see_our_own_sockets() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_s, _) = l.accept().unwrap();
        let client_port = c.local_addr().unwrap().port();
        for method in [CensusMethod::Netlink, CensusMethod::Proc] {
            let mut src = Source::new(method);
            assert_eq!(src.method, method, "netlink works on this kernel");
            let socks = src.dump().unwrap();
            assert!(
                socks
                    .iter()
                    .any(|s| s.state == state::LISTEN && s.local.port() == port),
                "{method:?}: listener"
            );
            assert!(
                socks.iter().any(|s| s.state == state::ESTABLISHED
                    && s.local.port() == port
                    && s.peer.port() == client_port
                    && s.peer.ip().is_loopback()),
                "{method:?}: accepted connection"
            );
        }
    }
}
