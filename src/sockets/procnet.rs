//! The fallback census: /proc/net/tcp and /proc/net/tcp6 of this network
//! namespace. About 4x slower than netlink, but always readable.

use crate::vocab::canonical;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::Sock;

/// Why a line of /proc/net/tcp{,6} was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected /proc/net/tcp line: {0}")]
pub struct BadLine(&'static str);

impl From<&'static str> for BadLine {
    fn from(what: &'static str) -> BadLine {
        BadLine(what)
    }
}

/// Every TCP socket of this network namespace. The kernel prints these
/// files a page at a time while sockets come and go, so one socket can be
/// printed twice: each socket (endpoints and state) is kept once.
pub(crate) fn dump() -> io::Result<Vec<Sock>> {
    let mut out = Vec::new();
    let mut seen = rustc_hash::FxHashSet::default();
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match std::fs::read_to_string(path) {
            Ok(text) => out.extend(
                text.lines()
                    .skip(1)
                    .filter_map(|l| parse_line(l).ok())
                    .filter(|s| seen.insert((s.local, s.peer, s.state))),
            ),
            // tcp6 is absent where IPv6 is disabled.
            Err(e) if e.kind() == io::ErrorKind::NotFound && path.ends_with('6') => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Parses one line of /proc/net/tcp{,6}:
/// `sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...`
/// with addresses as hex in the kernel's byte order (`0100007F:1F90`).
pub fn parse_line(line: &str) -> Result<Sock, BadLine> {
    let mut f = line.split_ascii_whitespace();
    let _sl = f.next().ok_or("empty line")?;
    let local = parse_addr(f.next().ok_or("no local address")?)?;
    let peer = parse_addr(f.next().ok_or("no remote address")?)?;
    let state = u8::from_str_radix(f.next().ok_or("no state")?, 16).map_err(|_| "bad state")?;
    let queues = f.next().ok_or("no queues")?;
    let (_tx, rx) = queues.split_once(':').ok_or("bad queues")?;
    let rx_queue = u32::from_str_radix(rx, 16).map_err(|_| "bad rx queue")?;
    let _timer = f.next().ok_or("no timer")?;
    let _retr = f.next().ok_or("no retransmits")?;
    let _uid = f.next().ok_or("no uid")?;
    let _timeout = f.next().ok_or("no timeout")?;
    let inode = f
        .next()
        .ok_or("no inode")?
        .parse::<u32>()
        .map_err(|_| "bad inode")?;
    Ok(Sock {
        state,
        local: canonical(local),
        peer: canonical(peer),
        rx_queue,
        inode,
        activity: None,
    })
}

fn parse_addr(s: &str) -> Result<SocketAddr, BadLine> {
    let (ip, port) = s.split_once(':').ok_or("address without port")?;
    let port = u16::from_str_radix(port, 16).map_err(|_| "bad port")?;
    // Hex digits only, so that the byte offsets below fall on characters
    // (a multibyte character would make a slice panic).
    if !ip.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(BadLine("address is not hex digits"));
    }
    let ip = match ip.len() {
        8 => {
            let v = u32::from_str_radix(ip, 16).map_err(|_| "bad IPv4")?;
            // The kernel prints the network-order address read as a native u32.
            IpAddr::V4(Ipv4Addr::from(v.to_ne_bytes()))
        }
        32 => {
            // Four 32-bit words, each printed as a native u32.
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let word =
                    u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).map_err(|_| "bad IPv6")?;
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return Err(BadLine("address is neither 8 nor 32 hex digits")),
    };
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_listener_and_connection() {
        let l = parse_line("   0: 0100007F:1F90 00000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0").unwrap();
        assert_eq!(l.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(l.state, crate::sockets::state::LISTEN);
        assert_eq!(l.rx_queue, 3);
        assert_eq!(l.inode, 12345);
        let c = parse_line("   1: 0100007F:1F90 0200007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 777 1 0").unwrap();
        assert_eq!(c.peer, "127.0.0.2:50000".parse().unwrap());
        assert!(c.is_open());
    }

    #[test]
    fn ipv6_and_v4_mapped() {
        let l = parse_line("   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1").unwrap();
        assert_eq!(l.local, "[::1]:8080".parse().unwrap());
        let m = parse_line("   0: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000200007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1").unwrap();
        assert_eq!(
            m.local,
            "127.0.0.1:8080".parse().unwrap(),
            "v4-mapped becomes v4"
        );
        assert_eq!(m.peer, "127.0.0.2:50000".parse().unwrap());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            "",
            "sl",
            "0: zz:1 00:0 0A 0:0 0 0 0 0 1",
            "0: 0100007F:1F90 00000000:0000 0A",
            "0: 0100007F:1F90 00000000:0000 0A 00000000 00 0 0 0 1",
            // 32 bytes with a multibyte character across a word boundary
            // (the word slices would cut it).
            "0: 00000000000000000000000é0000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1 1",
            "0: 000000\u{1F600}0000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1 1",
        ] {
            assert!(parse_line(bad).is_err(), "{bad:?}");
        }
    }
}
