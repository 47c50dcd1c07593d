//! Recent arrivals of new client connections, as the census saw them.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::probes::ProbeBudget;

/// How far back arrivals are kept.
pub(crate) const HISTORY: Duration = Duration::from_secs(60);

/// One census sample that saw `n` new connections during `span` before `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Arrivals {
    pub(crate) at: Instant,
    pub(crate) span: Duration,
    pub(crate) n: u32,
}

/// A sample's arrivals by peer address, when they came from few peers
/// (`None`: from many, where one peer's share does not matter).
pub(crate) type FewPeers = Option<Box<[(IpAddr, u32)]>>;

/// Of the arrivals in `list` from `ip`, those `budget` takes to be the
/// kubelet's probes: removed from `list`, and returned.
pub(crate) fn take_probes(
    list: &mut Box<[(IpAddr, u32)]>,
    ip: IpAddr,
    at: Instant,
    span: Duration,
    budget: &mut ProbeBudget,
) -> u32 {
    let Some(i) = list.iter().position(|(p, _)| *p == ip) else {
        return 0;
    };
    let probes = budget.take(at, span, list[i].1);
    list[i].1 -= probes;
    if list[i].1 == 0 {
        *list = list.iter().filter(|(p, _)| *p != ip).copied().collect();
    }
    probes
}

/// At most this many distinct peers are kept per sample.
pub(crate) const FEW_PEERS: usize = 8;

/// `peers` with more arrivals from `ips`, one each; `None` (many) once more
/// than [`FEW_PEERS`] distinct peers are seen, or if it already was.
pub(crate) fn add_peers<'a>(
    peers: FewPeers,
    ips: impl IntoIterator<Item = &'a IpAddr>,
) -> FewPeers {
    let mut peers: Vec<(IpAddr, u32)> = Vec::from(peers?);
    for ip in ips {
        if let Some((_, n)) = peers.iter_mut().find(|(p, _)| p == ip) {
            *n += 1;
        } else if peers.len() < FEW_PEERS {
            peers.push((*ip, 1));
        } else {
            return None;
        }
    }
    Some(peers.into_boxed_slice())
}

/// Recent arrivals, sample by sample (only samples that saw some).
#[derive(Debug, Clone)]
pub(crate) struct ArrivalLog {
    /// When observation began: silence since then is observed silence.
    pub(crate) since: Instant,
    entries: VecDeque<Arrivals>,
    /// Per entry, how many of `peers` are its ([`MANY`]: it came from many
    /// peers, not listed).
    peer_counts: VecDeque<u8>,
    /// Every entry's peers, in order, flattened: no allocation per entry,
    /// so that the log (published, and so cloned, at every look of a
    /// drain: thousands of entries at hundreds of connections a second)
    /// copies as plain memory.
    peers: VecDeque<(IpAddr, u32)>,
}

/// An entry whose arrivals came from many peers.
const MANY: u8 = u8::MAX;
/// An entry of requests on open connections (from many peers, as far as the
/// probe budget is concerned: the kubelet opens a connection per probe).
const REQUESTS: u8 = u8::MAX - 1;

/// What an entry of the log counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// New client connections.
    Connections,
    /// Requests on connections that were already open.
    Requests,
}

impl Kind {
    fn of(count: u8) -> Kind {
        if count == REQUESTS {
            Kind::Requests
        } else {
            Kind::Connections
        }
    }
}

impl ArrivalLog {
    pub(crate) fn new(since: Instant) -> ArrivalLog {
        ArrivalLog {
            since,
            entries: VecDeque::new(),
            peer_counts: VecDeque::new(),
            peers: VecDeque::new(),
        }
    }

    #[cfg(test)]
    pub(crate) fn record(&mut self, a: Arrivals) {
        self.record_from(a, None);
    }

    /// Records a sample's arrivals with who they came from, when few did.
    pub(crate) fn record_from(&mut self, a: Arrivals, peers: FewPeers) {
        self.insert(a, peers, false);
    }

    /// Records requests on connections that were already open.
    pub(crate) fn record_requests(&mut self, a: Arrivals) {
        self.insert(a, None, true);
    }

    /// Records stay in the order of their `at`: one that happened before
    /// the last recorded (requests a census dates back by `tcp_info`) goes
    /// in its place, so that the last record is the last arrival.
    fn insert(&mut self, a: Arrivals, peers: FewPeers, requests: bool) {
        if a.n > 0 {
            // Where it goes, and where its peers go in the flat list: after
            // every record with an `at` not later than its own.
            let later = self
                .entries
                .iter()
                .rev()
                .take_while(|e| e.at > a.at)
                .count();
            let i = self.entries.len() - later;
            let peers_after: usize = self
                .peer_counts
                .iter()
                .rev()
                .take(later)
                .filter(|c| **c < REQUESTS)
                .map(|c| usize::from(*c))
                .sum();
            let p = self.peers.len() - peers_after;
            self.entries.insert(i, a);
            match peers {
                _ if requests => self.peer_counts.insert(i, REQUESTS),
                Some(list) if list.len() < usize::from(REQUESTS) => {
                    self.peer_counts.insert(i, list.len() as u8);
                    for (k, peer) in list.iter().enumerate() {
                        self.peers.insert(p + k, *peer);
                    }
                }
                _ => self.peer_counts.insert(i, MANY),
            }
        }
        let newest = self.entries.back().map_or(a.at, |e| e.at.max(a.at));
        while self
            .entries
            .front()
            .is_some_and(|e| newest.saturating_duration_since(e.at) > HISTORY)
        {
            self.entries.pop_front();
            let c = self.peer_counts.pop_front().unwrap_or(MANY);
            if c < REQUESTS {
                self.peers.drain(..usize::from(c));
            }
        }
    }

    /// Takes back the arrivals from `ip` (the kubelet's address, learned
    /// late) that `budget` says were its probes, replaying the samples of
    /// few peers in order; samples of many peers cannot tell and keep
    /// theirs. Returns how many were taken back. (Rare: once per address
    /// learned; the log is rebuilt.)
    pub(crate) fn forgive_probes(&mut self, ip: IpAddr, budget: &mut ProbeBudget) -> u64 {
        let old = std::mem::replace(self, ArrivalLog::new(self.since));
        let mut taken = 0u64;
        let mut listed = old.peers.into_iter();
        for (mut e, c) in old.entries.into_iter().zip(old.peer_counts) {
            if c == REQUESTS {
                self.record_requests(e);
                continue;
            }
            let mut peers: FewPeers =
                (c != MANY).then(|| listed.by_ref().take(usize::from(c)).collect());
            if let Some(list) = &mut peers {
                let probes = take_probes(list, ip, e.at, e.span, budget);
                e.n -= probes.min(e.n);
                taken += u64::from(probes);
            }
            self.record_from(e, peers);
        }
        taken
    }

    pub(crate) fn last_arrival(&self) -> Option<Instant> {
        self.entries.back().map(|e| e.at)
    }

    /// The records of one kind.
    fn of_kind(&self, kind: Kind) -> impl DoubleEndedIterator<Item = &Arrivals> {
        self.entries
            .iter()
            .zip(&self.peer_counts)
            .filter(move |(_, c)| Kind::of(**c) == kind)
            .map(|(e, _)| e)
    }

    /// The last arrival of one kind.
    pub(crate) fn last_of(&self, kind: Kind) -> Option<Instant> {
        self.of_kind(kind).next_back().map(|e| e.at)
    }

    /// Arrivals of one kind recorded after `t`; a record whose span
    /// straddles `t` counts for the share of its span after `t` (arrivals
    /// are spread evenly over a record's span).
    pub(crate) fn count_after_share(&self, t: Instant, kind: Kind) -> f64 {
        self.of_kind(kind)
            .filter(|e| e.at > t)
            .map(|e| {
                let start = e.at.checked_sub(e.span).unwrap_or(e.at);
                let share = if start >= t || e.span.is_zero() {
                    1.0
                } else {
                    e.at.saturating_duration_since(t).as_secs_f64() / e.span.as_secs_f64()
                };
                f64::from(e.n) * share
            })
            .sum()
    }

    /// Arrivals of one kind per second over the history before `t`.
    pub(crate) fn rate_before(&self, t: Instant, kind: Kind) -> f64 {
        let span = t.saturating_duration_since(self.since).min(HISTORY);
        if span.is_zero() {
            return 0.0;
        }
        let from = t.checked_sub(span).unwrap_or(self.since);
        let n: u64 = self
            .of_kind(kind)
            .filter(|e| e.at > from && e.at <= t)
            .map(|e| u64::from(e.n))
            .sum();
        n as f64 / span.as_secs_f64()
    }

    #[cfg(test)]
    /// The records, oldest first (the quiet rule's statistics read them:
    /// `drain::quiet`).
    pub(crate) fn entries(&self) -> impl DoubleEndedIterator<Item = &Arrivals> + ExactSizeIterator {
        self.entries.iter()
    }

    /// The records with what each counts, oldest first.
    pub(crate) fn entries_with_kind(
        &self,
    ) -> impl DoubleEndedIterator<Item = (&Arrivals, Kind)> + ExactSizeIterator {
        self.entries
            .iter()
            .zip(&self.peer_counts)
            .map(|(e, c)| (e, Kind::of(*c)))
    }

    #[cfg(test)]
    /// Samples that saw arrivals: the evidence of a rate. A burst of many
    /// connections within one sample is one event.
    pub(crate) fn events(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub(crate) fn total(&self) -> u64 {
        self.entries.iter().map(|e| u64::from(e.n)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubelet_learned_late_has_its_probes_taken_back_not_its_clients() {
        let t0 = Instant::now();
        let kubelet: IpAddr = "10.213.1.1".parse().unwrap();
        let client: IpAddr = "10.2.0.9".parse().unwrap();
        let mut log = ArrivalLog::new(t0);
        let s = Duration::from_millis(200);
        // A probe alone, a probe with a client, a sample of many peers, and
        // 40 connections in one look from the kubelet's address (clients
        // the node masqueraded).
        log.record_from(
            Arrivals {
                at: t0 + s,
                span: s,
                n: 1,
            },
            Some([(kubelet, 1)].into()),
        );
        log.record_from(
            Arrivals {
                at: t0 + 2 * s,
                span: s,
                n: 3,
            },
            Some([(kubelet, 1), (client, 2)].into()),
        );
        log.record_from(
            Arrivals {
                at: t0 + 3 * s,
                span: s,
                n: 50,
            },
            None,
        );
        log.record_from(
            Arrivals {
                at: t0 + 4 * s,
                span: s,
                n: 40,
            },
            Some([(kubelet, 40)].into()),
        );
        assert_eq!(log.total(), 94);
        let mut budget = ProbeBudget::default();
        // Both probes, and of the 40 only what the budget holds then
        // (3 at once, refilled at 2/s: 1 left + 0.8 s x 2/s = 2.2 -> 2).
        assert_eq!(log.forgive_probes(kubelet, &mut budget), 4);
        assert_eq!(log.total(), 90);
        assert_eq!(log.events(), 3, "the probe-only sample is gone");
    }

    /// A record dated before the last one (requests a census dates back)
    /// takes its place in time, peers and all: the last record is always
    /// the last arrival.
    #[test]
    fn records_stay_in_the_order_of_their_time() {
        let t0 = Instant::now();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let ms = Duration::from_millis;
        let mut log = ArrivalLog::new(t0);
        let rec = |at, n| Arrivals {
            at: t0 + at,
            span: Duration::ZERO,
            n,
        };
        log.record_from(rec(ms(100), 1), Some([(a, 1)].into()));
        log.record_from(rec(ms(300), 2), Some([(b, 2)].into()));
        log.record_from(rec(ms(200), 5), None);
        log.record_from(rec(ms(250), 1), Some([(a, 1)].into()));
        let at: Vec<_> = log.entries().map(|e| e.at - t0).collect();
        assert_eq!(at, vec![ms(100), ms(200), ms(250), ms(300)]);
        assert_eq!(log.last_arrival(), Some(t0 + ms(300)));
        // The peers followed their records: taking back `a`'s as probes
        // replays them in order.
        let mut budget = ProbeBudget::default();
        assert_eq!(log.forgive_probes(a, &mut budget), 2);
        assert_eq!(log.total(), 7);
        assert_eq!(log.events(), 2);
    }
}
