//! Recent arrivals of new client connections, as the census saw them.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// How far back arrivals are kept.
pub const HISTORY: Duration = Duration::from_secs(60);
/// At most this many gaps are reconstructed (the most recent).
const MAX_GAPS: usize = 1024;

/// One census sample that saw `n` new connections during `span` before `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrivals {
    pub at: Instant,
    pub span: Duration,
    pub n: u32,
}

/// Recent arrivals, sample by sample (only samples that saw some).
#[derive(Debug, Clone)]
pub struct ArrivalLog {
    /// When observation began: silence since then is observed silence.
    pub since: Instant,
    entries: VecDeque<Arrivals>,
}

impl ArrivalLog {
    pub fn new(since: Instant) -> ArrivalLog {
        ArrivalLog {
            since,
            entries: VecDeque::new(),
        }
    }

    pub fn record(&mut self, a: Arrivals) {
        if a.n > 0 {
            self.entries.push_back(a);
        }
        while self
            .entries
            .front()
            .is_some_and(|e| a.at.saturating_duration_since(e.at) > HISTORY)
        {
            self.entries.pop_front();
        }
    }

    pub fn last_arrival(&self) -> Option<Instant> {
        self.entries.back().map(|e| e.at)
    }

    /// Arrivals recorded after `t`.
    pub fn count_after(&self, t: Instant) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.at > t)
            .map(|e| u64::from(e.n))
            .sum()
    }

    /// Arrivals per second over the history before `t`.
    pub fn rate_before(&self, t: Instant) -> f64 {
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

    /// Gaps between consecutive arrivals, placing a sample's `n` arrivals
    /// evenly over its span (the census only says how many, not when).
    pub fn gaps(&self) -> Vec<Duration> {
        let mut times: Vec<Instant> = Vec::new();
        for e in &self.entries {
            let start = e.at.checked_sub(e.span).unwrap_or(e.at);
            for k in 0..e.n {
                let frac = (f64::from(k) + 0.5) / f64::from(e.n);
                times.push(start + e.span.mul_f64(frac));
            }
        }
        let mut gaps: Vec<Duration> = times
            .windows(2)
            .map(|w| w[1].saturating_duration_since(w[0]))
            .collect();
        if gaps.len() > MAX_GAPS {
            gaps.drain(..gaps.len() - MAX_GAPS);
        }
        gaps
    }

    pub fn total(&self) -> u64 {
        self.entries.iter().map(|e| u64::from(e.n)).sum()
    }
}
