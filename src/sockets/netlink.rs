//! NETLINK_SOCK_DIAG (inet_diag) dumps of TCP sockets, IPv4 and IPv6.
//!
//! Two dumps per census keep the kernel's work small on busy pods: the
//! listeners (the kernel walks only its listening hash), then the other
//! states filtered *in the kernel* by local port with an inet_diag bytecode
//! program, so that sockets on other ports (upstream connections, clients'
//! own ends) are never formatted or copied. Of the connections, the kernel
//! also reports `tcp_info` (INET_DIAG_INFO), from which three counters are
//! read ([`Activity`]): the census needs state, endpoints, queues, and
//! whether the client sent data since the last look.

use crate::vocab::canonical;
use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;

use netlink_packet_core::{
    Emitable, ErrorBuffer, NLA_HEADER_SIZE, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR,
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NlasIterator, Parseable, parse_u32,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{
    AF_INET, AF_INET6, INET_DIAG_INFO, IPPROTO_TCP, SOCK_DIAG_BY_FAMILY,
};
use netlink_packet_sock_diag::inet::{
    ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags,
};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr as NlAddr};

use super::{Activity, Sock};

// Kernel ABI (include/uapi/linux/inet_diag.h) that netlink-packet-sock-diag
// does not export: the bytecode filter's opcodes.
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_BC_JMP: u8 = 1;
const INET_DIAG_BC_S_EQ: u8 = 11;

// Offsets in `struct tcp_info` (include/uapi/linux/tcp.h) of the counters
// the census reads. The kernel sends as much of the struct as it has, so a
// shorter one (before Linux 4.6, which added the data segment counters)
// gives no [`Activity`] rather than a wrong one.
const TCPI_LAST_DATA_RECV: usize = 52;
const TCPI_NOTSENT_BYTES: usize = 144;
const TCPI_DATA_SEGS_IN: usize = 152;
const TCPI_DATA_SEGS_OUT: usize = 156;
const TCPI_NEEDED: usize = TCPI_DATA_SEGS_OUT + 4;

pub(crate) struct Dumper {
    socket: Socket,
    buf: Vec<u8>,
    seq: u32,
}

impl Dumper {
    pub(crate) fn new() -> io::Result<Dumper> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&NlAddr::new(0, 0))?;
        let mut d = Dumper {
            socket,
            buf: Vec::with_capacity(1 << 16),
            seq: 0,
        };
        // Fail here, not at the first sample, if the kernel refuses dumps.
        let mut out: Vec<Sock> = Vec::new();
        d.listeners(&mut out)?;
        d.connections(&[80].into(), true, &mut out)?;
        Ok(d)
    }

    /// Every listening TCP socket.
    pub(crate) fn listeners(&mut self, out: &mut impl Extend<Sock>) -> io::Result<()> {
        for family in [AF_INET, AF_INET6] {
            self.dump(family, StateFlags::LISTEN, None, false, out)?;
        }
        Ok(())
    }

    /// Every non-listening TCP socket whose local port is in `ports`, with
    /// its [`Activity`] where the kernel has one (not in TIME_WAIT); the
    /// IPv6 ones only with `v6`. Returns how many IPv6 sockets were listed.
    ///
    /// Why IPv6 is optional: each dump walks the kernel's whole table of
    /// established sockets, which child network namespaces share with the
    /// node by default (`net.ipv4.tcp_child_ehash_entries` = 0): 262 144
    /// buckets here, about 2 ms a family however few sockets the pod has.
    /// A pod with no IPv6 listener on its counted ports has no IPv6
    /// connection on them (an accepted socket has its listener's family).
    pub(crate) fn connections(
        &mut self,
        ports: &BTreeSet<u16>,
        v6: bool,
        out: &mut impl Extend<Sock>,
    ) -> io::Result<usize> {
        if ports.is_empty() {
            return Ok(0);
        }
        let program = local_port_filter(ports);
        let states = StateFlags::all() - StateFlags::LISTEN;
        self.dump(AF_INET, states.clone(), Some(&program), true, out)?;
        if !v6 {
            return Ok(0);
        }
        let mut counted = Counting { out, n: 0 };
        self.dump(AF_INET6, states, Some(&program), true, &mut counted)?;
        Ok(counted.n)
    }

    /// Every non-listening TCP socket.
    #[cfg(any(test, feature = "testbed"))]
    pub(crate) fn connections_on_any_port(
        &mut self,
        out: &mut impl Extend<Sock>,
    ) -> io::Result<()> {
        for family in [AF_INET, AF_INET6] {
            self.dump(
                family,
                StateFlags::all() - StateFlags::LISTEN,
                None,
                false,
                out,
            )?;
        }
        Ok(())
    }

    fn dump(
        &mut self,
        family: u8,
        states: StateFlags,
        bytecode: Option<&[u8]>,
        info: bool,
        out: &mut impl Extend<Sock>,
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let req = request(family, states, self.seq, bytecode, info);
        self.socket.send(&req, 0)?;
        loop {
            self.buf.clear();
            let n = self.socket.recv(&mut self.buf, 0)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "netlink closed",
                ));
            }
            if parse_datagram(&self.buf[..n.min(self.buf.len())], self.seq, out)? {
                return Ok(());
            }
        }
    }
}

/// An `Extend` that counts what passes through.
struct Counting<'a, E> {
    out: &'a mut E,
    n: usize,
}

impl<E: Extend<Sock>> Extend<Sock> for Counting<'_, E> {
    fn extend<I: IntoIterator<Item = Sock>>(&mut self, iter: I) {
        let n = &mut self.n;
        self.out.extend(iter.into_iter().inspect(|_| *n += 1));
    }
}

/// The kernel's multicast groups of destroyed TCP sockets
/// (include/uapi/linux/sock_diag.h: `SKNLGRP_INET_TCP_DESTROY` = 1,
/// `SKNLGRP_INET6_TCP_DESTROY` = 3), as a bind mask (group n is bit n-1).
const SKNLGRP_INET_TCP_DESTROY: u32 = 1;
const SKNLGRP_INET6_TCP_DESTROY: u32 = 3;
const DESTROY_GROUPS: u32 =
    (1 << (SKNLGRP_INET_TCP_DESTROY - 1)) | (1 << (SKNLGRP_INET6_TCP_DESTROY - 1));
/// The receive buffer asked for: a few thousand events between two reads
/// (the kernel caps it at `net.core.rmem_max` for unprivileged sockets).
const DESTROY_RCVBUF: usize = 4 << 20;

/// Every TCP socket the kernel destroys in this network namespace, as it
/// happens: a connection that NGINX accepted and that ended between two
/// censuses (whichever side closed first) is reported here with its
/// endpoints. No privilege is needed to join these groups, and reading them
/// costs per connection ended, not per connection open.
pub(crate) struct DestroyWatch {
    socket: Socket,
    buf: Vec<u8>,
}

impl DestroyWatch {
    pub(crate) fn new() -> io::Result<DestroyWatch> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind(&NlAddr::new(0, DESTROY_GROUPS))?;
        socket.set_non_blocking(true)?;
        // Best effort: the default buffer holds a few hundred events.
        let _ = socket.set_rx_buf_sz(DESTROY_RCVBUF);
        Ok(DestroyWatch {
            socket,
            buf: Vec::with_capacity(1 << 16),
        })
    }

    /// Reads every event queued now (never blocks) into `out`. Returns
    /// whether the kernel dropped events since the last read (its receive
    /// buffer overflowed): some connections that ended went unseen.
    pub(crate) fn read(&mut self, out: &mut impl Extend<Sock>) -> io::Result<bool> {
        let mut overrun = false;
        loop {
            self.buf.clear();
            match self.socket.recv(&mut self.buf, 0) {
                Ok(0) => return Ok(overrun),
                Ok(n) => {
                    parse_datagram(&self.buf[..n.min(self.buf.len())], 0, out)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(overrun),
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOBUFS as i32) => {
                    overrun = true
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl std::os::fd::AsRawFd for DestroyWatch {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }
}

/// A dump request, with an optional bytecode filter attached as the
/// INET_DIAG_REQ_BYTECODE attribute; with `info`, each socket's `tcp_info`.
fn request(
    family: u8,
    states: StateFlags,
    seq: u32,
    bytecode: Option<&[u8]>,
    info: bool,
) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: if info {
                ExtensionFlags::INFO
            } else {
                ExtensionFlags::empty()
            },
            states,
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    packet.finalize();
    let mut req = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut req);
    if let Some(code) = bytecode {
        let nla_len = 4 + code.len();
        req.extend_from_slice(&(nla_len as u16).to_ne_bytes());
        req.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        req.extend_from_slice(code);
        req.resize(req.len().next_multiple_of(4), 0);
        let total = req.len() as u32;
        req[..4].copy_from_slice(&total.to_ne_bytes());
    }
    req
}

/// An inet_diag program that accepts sockets whose local port is one of
/// `ports`: `S_EQ p1 || S_EQ p2 || ...`, laid out as `ss` compiles an OR
/// (each test is followed by a jump to the end, which a failed test skips).
/// The kernel's audit requires every jump target to lie on the chain of
/// "yes" jumps, which this layout satisfies.
pub(crate) fn local_port_filter(ports: &BTreeSet<u16>) -> Vec<u8> {
    let ports: Vec<u16> = ports.iter().copied().collect();
    let mut code = Vec::with_capacity(ports.len() * 12);
    for (i, port) in ports.iter().enumerate() {
        // inet_diag_bc_op { code: u8, yes: u8, no: u16 }, then the port op.
        code.extend_from_slice(&[INET_DIAG_BC_S_EQ, 8]);
        code.extend_from_slice(&12u16.to_ne_bytes());
        code.extend_from_slice(&[0, 0]);
        code.extend_from_slice(&port.to_ne_bytes());
        if i + 1 < ports.len() {
            // Jump to the end: past the 4-byte jump and the remaining tests.
            let rest = (ports.len() - i - 1) * 12 - 4;
            code.extend_from_slice(&[INET_DIAG_BC_JMP, 4]);
            code.extend_from_slice(&((rest + 4) as u16).to_ne_bytes());
        }
    }
    code
}

/// Parses one datagram of a dump into `out`. Returns true at the end of the
/// dump. Messages of other sequence numbers (a stale dump) are skipped.
pub fn parse_datagram(mut bytes: &[u8], seq: u32, out: &mut impl Extend<Sock>) -> io::Result<bool> {
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad sock_diag message: {what}"),
        )
    };
    while !bytes.is_empty() {
        let msg = NetlinkBuffer::new_checked(bytes).map_err(|e| bad(&e.to_string()))?;
        let len = msg.length() as usize;
        if len < 16 || len > bytes.len() {
            return Err(bad("length"));
        }
        if msg.sequence_number() == seq {
            let payload = &bytes[16..len];
            match msg.message_type() {
                NLMSG_DONE => return Ok(true),
                NLMSG_ERROR => match nlmsg_error(payload)? {
                    // An acknowledgement: no error, and nothing to read.
                    None => {}
                    Some(e) => return Err(e),
                },
                SOCK_DIAG_BY_FAMILY => {
                    let h = InetResponseHeader::parse(payload).map_err(|e| bad(&e.to_string()))?;
                    let activity = payload
                        .get(h.buffer_len()..)
                        .and_then(tcp_info)
                        .and_then(|info| activity(info, h.recv_queue));
                    let id = &h.socket_id;
                    out.extend(std::iter::once(Sock {
                        state: h.state,
                        local: canonical(SocketAddr::new(id.source_address, id.source_port)),
                        peer: canonical(SocketAddr::new(
                            id.destination_address,
                            id.destination_port,
                        )),
                        rx_queue: h.recv_queue,
                        inode: h.inode,
                        activity,
                    }));
                }
                _ => {}
            }
        }
        // Messages are 4-byte aligned within a datagram.
        let step = len.next_multiple_of(4);
        bytes = &bytes[step.min(bytes.len())..];
    }
    Ok(false)
}

/// The INET_DIAG_INFO attribute among a response's attributes, if any (a
/// malformed attribute list ends the search: no activity, not an error).
fn tcp_info(attrs: &[u8]) -> Option<&[u8]> {
    NlasIterator::new(attrs)
        .map_while(Result::ok)
        .find(|nla| nla.kind() == INET_DIAG_INFO)
        .and_then(|nla| {
            let len = usize::from(nla.length());
            nla.into_inner().get(NLA_HEADER_SIZE..len)
        })
}

/// The census's counters from a `tcp_info`, when it is long enough to hold
/// them; `recv_queue` (what NGINX has not read) from the response's header.
pub(crate) fn activity(info: &[u8], recv_queue: u32) -> Option<Activity> {
    let at = |offset: usize| parse_u32(info.get(offset..offset + 4)?).ok();
    if info.len() < TCPI_NEEDED {
        return None;
    }
    Some(Activity {
        data_segs_in: at(TCPI_DATA_SEGS_IN)?,
        data_segs_out: at(TCPI_DATA_SEGS_OUT)?,
        last_data_recv_ms: at(TCPI_LAST_DATA_RECV)?,
        queued: recv_queue.saturating_add(at(TCPI_NOTSENT_BYTES)?),
    })
}

/// An `NLMSG_ERROR` payload (`struct nlmsgerr`: an `int error`, then the
/// request's header), decoded per netlink(7): 0 is an acknowledgement
/// (`None`), a negative errno is that error; anything else (a positive
/// code, or `i32::MIN`, which has no errno) is a malformed message, an
/// error too, never a panic.
fn nlmsg_error(payload: &[u8]) -> io::Result<Option<io::Error>> {
    let buf = ErrorBuffer::new_checked(payload).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("netlink error message: {e}"),
        )
    })?;
    Ok(buf.code().map(|code| match code.get().checked_neg() {
        Some(errno) if errno > 0 => io::Error::from_raw_os_error(errno),
        _ => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("netlink error message with an invalid code {code}"),
        ),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_program_layout() {
        let one = local_port_filter(&[80].into());
        assert_eq!(one.len(), 8);
        let two = local_port_filter(&[80, 443].into());
        // test(8) jump(4) test(8): the jump skips the last test to the end.
        assert_eq!(two.len(), 20);
        assert_eq!(two[8], INET_DIAG_BC_JMP);
        assert_eq!(u16::from_ne_bytes([two[10], two[11]]), 12);
    }

    /// One netlink message: a 16-byte header (length, type, flags,
    /// sequence, port) and `payload`.
    fn message(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = 16 + payload.len() as u32;
        let mut m = Vec::new();
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m
    }

    /// `struct nlmsgerr`: the code, then the request's 16-byte header.
    fn nlmsgerr(code: i32) -> Vec<u8> {
        let mut p = code.to_ne_bytes().to_vec();
        p.extend_from_slice(&[0u8; 16]);
        p
    }

    #[test]
    fn error_messages_decode_per_the_kernels_abi() {
        let mut out = Vec::new();
        // An ACK (code 0) is no error: the dump goes on to its DONE.
        let mut ack_then_done = message(NLMSG_ERROR, 7, &nlmsgerr(0));
        ack_then_done.extend(message(NLMSG_DONE, 7, &[0u8; 4]));
        assert!(parse_datagram(&ack_then_done, 7, &mut out).unwrap());
        // A negative errno is that error.
        let e = parse_datagram(&message(NLMSG_ERROR, 7, &nlmsgerr(-1)), 7, &mut out).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(1), "EPERM");
        // Codes with no errno are malformed, not a panic or an overflow.
        for code in [i32::MIN, 5, i32::MAX] {
            let e =
                parse_datagram(&message(NLMSG_ERROR, 7, &nlmsgerr(code)), 7, &mut out).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{code}");
            assert!(e.to_string().contains("invalid code"), "{code}: {e}");
        }
        // A truncated error message is an error.
        assert!(parse_datagram(&message(NLMSG_ERROR, 7, &[1, 2]), 7, &mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn garbage_datagrams_are_errors() {
        let mut out = Vec::new();
        assert!(parse_datagram(&[1, 2, 3], 1, &mut out).is_err());
        let mut msg = vec![0u8; 16];
        msg[..4].copy_from_slice(&100u32.to_ne_bytes());
        assert!(
            parse_datagram(&msg, 1, &mut out).is_err(),
            "length beyond the datagram"
        );
        assert!(out.is_empty());
    }

    /// The kernel's `tcp_info` counts a connection's requests and replies:
    /// three exchanges on one open connection are three data segments each
    /// way, and the last came a moment ago.
    #[test]
    fn tcp_info_counts_the_exchanges_on_an_open_connection() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let client = c.local_addr().unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 64];
        for _ in 0..3 {
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0);
        }
        let mut d = Dumper::new().expect("sock_diag works here");
        let mut socks = Vec::new();
        d.connections(&[port].into(), false, &mut socks).unwrap();
        let server = socks
            .iter()
            .find(|x| x.local.port() == port && x.peer == client)
            .expect("the accepted connection is listed");
        let a = server.activity.expect("tcp_info for an open connection");
        assert_eq!((a.data_segs_in, a.data_segs_out), (3, 3), "{a:?}");
        assert!(a.last_data_recv_ms < 5_000, "{a:?}");
        assert_eq!(a.queued, 0, "nothing pending: idle");
    }

    /// A truncated or missing `tcp_info` gives no activity, not a panic.
    #[test]
    fn short_tcp_info_is_no_activity() {
        assert_eq!(activity(&[0u8; TCPI_NEEDED - 1], 0), None);
        let mut info = [0u8; TCPI_NEEDED];
        info[TCPI_NOTSENT_BYTES] = 2;
        assert!(activity(&info, 1).is_some_and(|a| a.queued == 3));
        assert_eq!(tcp_info(&[1, 2, 3]), None);
    }

    /// A connection whose client closes first leaves no socket behind on
    /// the server's side within a millisecond; its destroy event names it.
    #[test]
    fn destroy_events_name_connections_the_client_closed() {
        use std::io::{Read, Write};
        let mut watch = DestroyWatch::new().expect("joining the destroy groups needs no privilege");
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut client_ports = Vec::new();
        for _ in 0..3 {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            client_ports.push(c.local_addr().unwrap().port());
            let (mut s, _) = l.accept().unwrap();
            c.write_all(b"x").unwrap();
            drop(c); // the client closes first
            let mut buf = [0u8; 8];
            while s.read(&mut buf).unwrap_or(0) > 0 {}
        }
        let mut ended = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            watch.read(&mut ended).unwrap();
            let seen = client_ports
                .iter()
                .filter(|p| {
                    ended
                        .iter()
                        .any(|s: &Sock| s.local.port() == port && s.peer.port() == **p)
                })
                .count();
            if seen == client_ports.len() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("not every server-side end was reported: {ended:?}");
    }
}
