//! NETLINK_SOCK_DIAG (inet_diag) dumps of every TCP socket, IPv4 and IPv6.

use std::io;
use std::net::SocketAddr;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr as NlAddr};

use super::{Sock, canonical};

pub struct Dumper {
    socket: Socket,
    buf: Vec<u8>,
    seq: u32,
}

impl Dumper {
    pub fn new() -> io::Result<Dumper> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&NlAddr::new(0, 0))?;
        let mut d = Dumper {
            socket,
            buf: Vec::with_capacity(1 << 16),
            seq: 0,
        };
        // Fail here, not at the first sample, if the kernel refuses dumps.
        d.dump()?;
        Ok(d)
    }

    pub fn dump(&mut self) -> io::Result<Vec<Sock>> {
        let mut out = Vec::new();
        self.dump_family(AF_INET, &mut out)?;
        self.dump_family(AF_INET6, &mut out)?;
        Ok(out)
    }

    fn dump_family(&mut self, family: u8, out: &mut Vec<Sock>) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::empty(),
                states: StateFlags::all(),
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

/// Parses one datagram of a dump into `out`. Returns true at the end of the
/// dump. Messages of other sequence numbers (a stale dump) are skipped.
pub fn parse_datagram(mut bytes: &[u8], seq: u32, out: &mut Vec<Sock>) -> io::Result<bool> {
    while !bytes.is_empty() {
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad sock_diag message: {e}"),
            )
        })?;
        let len = msg.header.length as usize;
        if len == 0 || len > bytes.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad netlink message length",
            ));
        }
        if msg.header.sequence_number == seq {
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(true),
                NetlinkPayload::Error(e) => {
                    let code = e.code.map_or(0, |c| -c.get());
                    return Err(io::Error::from_raw_os_error(code));
                }
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let id = &r.header.socket_id;
                    out.push(Sock {
                        state: r.header.state,
                        local: canonical(SocketAddr::new(id.source_address, id.source_port)),
                        peer: canonical(SocketAddr::new(
                            id.destination_address,
                            id.destination_port,
                        )),
                        rx_queue: r.header.recv_queue,
                        inode: r.header.inode,
                    });
                }
                _ => {}
            }
        }
        // Messages are 4-byte aligned within a datagram.
        let step = (len + 3) & !3;
        bytes = &bytes[step.min(bytes.len())..];
    }
    Ok(false)
}
