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
        if a.n > 0 {
            self.entries.push_back(a);
            match peers {
                Some(list) if list.len() < usize::from(MANY) => {
                    self.peer_counts.push_back(list.len() as u8);
                    self.peers.extend(list.iter().copied());
                }
                _ => self.peer_counts.push_back(MANY),
            }
        }
        while self
            .entries
            .front()
            .is_some_and(|e| a.at.saturating_duration_since(e.at) > HISTORY)
        {
            self.entries.pop_front();
            let c = self.peer_counts.pop_front().unwrap_or(MANY);
            if c != MANY {
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

    /// Arrivals recorded after `t`; a record whose span straddles `t`
    /// counts for the share of its span after `t` (arrivals are spread
    /// evenly over a record's span).
    pub(crate) fn count_after_share(&self, t: Instant) -> f64 {
        self.entries
            .iter()
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

    /// Arrivals per second over the history before `t`.
    pub(crate) fn rate_before(&self, t: Instant) -> f64 {
        let span = t.saturating_duration_since(self.since).min(HISTORY);
        if span.is_zero() {
            return 0.0;
        }
        let from = t.checked_sub(span).unwrap_or(self.since);
        let n: u64 = self
            .entries
            .iter()
            .filter(|e| e.at > from && e.at <= t)
            .map(|e| u64::from(e.n))
            .sum();
        n as f64 / span.as_secs_f64()
    }

    /// The records, oldest first (the quiet rule's statistics read them:
    /// `drain::quiet`).
    pub(crate) fn entries(&self) -> impl DoubleEndedIterator<Item = &Arrivals> + ExactSizeIterator {
        self.entries.iter()
    }

    /// Samples that saw arrivals: the evidence of a rate. A burst of many
    /// connections within one sample is one event.
    pub(crate) fn events(&self) -> usize {
        self.entries.len()
    }

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
}
