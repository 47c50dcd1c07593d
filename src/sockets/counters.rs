//! The network namespace's TCP counters (`/proc/net/snmp`), at O(1) cost
//! whatever the number of open sockets: how many connections were accepted
//! (`PassiveOpens`) and how many segments arrived (`InSegs`). The census
//! walks every socket on the counted ports; these only say *whether*
//! anything new was accepted, or anything arrived at all, so the monitor
//! can skip censuses that would find nothing new.

use std::io;

/// The namespace's TCP counters the monitor reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Snmp {
    /// `Tcp: PassiveOpens`: connections accepted.
    pub(crate) passive_opens: u64,
    /// `Tcp: InSegs`: segments received, data or not, on any connection.
    pub(crate) in_segs: u64,
}

/// This network namespace's counters.
pub(crate) fn read() -> io::Result<Snmp> {
    let text = std::fs::read_to_string("/proc/net/snmp")?;
    parse(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "/proc/net/snmp has no Tcp PassiveOpens and InSegs",
        )
    })
}

/// Finds the counters by name in the two `Tcp:` lines (names, then values).
pub(crate) fn parse(text: &str) -> Option<Snmp> {
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let names: Vec<&str> = tcp.next()?.split_ascii_whitespace().collect();
    let values: Vec<&str> = tcp.next()?.split_ascii_whitespace().collect();
    let value = |name: &str| -> Option<u64> {
        let i = names.iter().position(|n| *n == name)?;
        values.get(i)?.parse().ok()
    };
    Some(Snmp {
        passive_opens: value("PassiveOpens")?,
        in_segs: value("InSegs")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_counters_by_name() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
            Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails InSegs\n\
            Tcp: 1 200 120000 -1 17237 16865 349 90210\nUdp: InDatagrams\nUdp: 5\n";
        assert_eq!(
            parse(text),
            Some(Snmp {
                passive_opens: 16865,
                in_segs: 90210
            })
        );
        assert_eq!(parse("Tcp: A B\nTcp: 1 2\n"), None);
        assert_eq!(parse("Tcp: PassiveOpens\nTcp: 1\n"), None, "no InSegs");
        assert_eq!(parse("garbage"), None);
    }

    #[test]
    fn this_namespace_has_the_counters() {
        use std::io::Write;
        let before = read().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let _s = l.accept().unwrap();
        c.write_all(b"x").unwrap();
        let after = read().unwrap();
        assert!(
            after.passive_opens > before.passive_opens,
            "an accepted connection counts"
        );
        assert!(after.in_segs > before.in_segs, "and its segments");
    }
}
