//! The network namespace's TCP counters (`/proc/net/snmp`): how many
//! connections were accepted (`PassiveOpens`), at O(1) cost whatever the
//! number of open sockets. The census walks every socket on the counted
//! ports; this only says *whether* anything new was accepted, so the idle
//! monitor can skip censuses that would find nothing new.

use std::io;

/// `Tcp: PassiveOpens` of this network namespace.
pub(crate) fn passive_opens() -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/net/snmp")?;
    parse_passive_opens(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "/proc/net/snmp has no Tcp PassiveOpens",
        )
    })
}

/// Finds `PassiveOpens` in the two `Tcp:` lines (names, then values).
pub(crate) fn parse_passive_opens(text: &str) -> Option<u64> {
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let names = tcp.next()?;
    let values = tcp.next()?;
    let i = names
        .split_ascii_whitespace()
        .position(|n| n == "PassiveOpens")?;
    values.split_ascii_whitespace().nth(i)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_passive_opens_by_name() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
            Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails\n\
            Tcp: 1 200 120000 -1 17237 16865 349\nUdp: InDatagrams\nUdp: 5\n";
        assert_eq!(parse_passive_opens(text), Some(16865));
        assert_eq!(parse_passive_opens("Tcp: A B\nTcp: 1 2\n"), None);
        assert_eq!(parse_passive_opens("garbage"), None);
    }

    #[test]
    fn this_namespace_has_the_counter() {
        let before = passive_opens().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let _s = l.accept().unwrap();
        assert!(
            passive_opens().unwrap() > before,
            "an accepted connection counts"
        );
    }
}
