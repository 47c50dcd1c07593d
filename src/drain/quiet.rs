//! The quiet-period rule: when have new connections stopped arriving?
//!
//! In plain words: we watch how far apart new client connections arrive.
//! Silence is evidence that traffic has stopped only when it is long
//! compared with those gaps: a few hundred milliseconds mean a lot at 100
//! connections a second and nothing at one every two seconds. So the quiet
//! period is **three times the typical gap**, where the typical gap is the
//! gap length that covers 90 % of the time between recent arrivals (a
//! percentile weighted by time, so that bursts are judged by the long
//! silences between them, not by their many tiny gaps), bounded by
//! `--min-delay` and `--max-delay`, and SIGQUIT goes out once no new
//! connection has arrived for that long (and never before `--min-delay` after
//! the hook, never after `--max-delay`, never so late that the budget cannot
//! hold the graceful quit).
//!
//! For Poisson arrivals at rate λ the time-weighted 90th percentile gap is
//! 3.9/λ, so the quiet period is 11.7/λ: the chance that traffic was still
//! flowing and merely paused that long is e^-11.7, about 1 in 100 000. At
//! 100 connections/s that is 117 ms (above the 100 ms floor); for evenly
//! spaced arrivals it is three gaps.
//!
//! **Skeptical with little evidence.** A rate is established by arrivals
//! spread over time, not by many connections at once: a burst (clients
//! reconnecting, a page's parallel requests) within one look is one
//! *event*. With fewer than eight gaps between events (a short history, or
//! one dominated by a burst), the typical gap is the *longest* gap between
//! events, the observed silence before the first one included (the silence
//! after the last arrival is what is being judged, so it must not inflate
//! the estimate): with few gaps, the time-weighted p90 is the longest one
//! anyway, and a mean would let a burst or a stray request pull it down. A
//! sidecar that saw 12 connections in one burst 0.8 s after it started waits
//! 3 x 0.8 s = 2.4 s after it, not 3 x 67 ms; one that then sees a
//! connection 2 s later waits 6 s after that one. With no arrival at all in
//! the last minute there is nothing to wait for and `--min-delay` applies.
//!
//! **A falling rate.** The percentile of the minute's gaps describes the
//! minute; the traffic being judged is the latest. During a rollout each
//! old pod's share of a Service falls while kube-proxy still routes to it
//! (new endpoints join before the old one leaves), and a quiet period
//! learned at the earlier rate is then too short: measured on a real
//! cluster, 5 connections refused when one pod's arrivals thinned from ~33
//! to ~20 a second and a chance silence of 180 ms came before kube-proxy's
//! rule change. So the typical gap is the larger of the episode's p90 and
//! the p90 of the last [`RECENT_GAPS`] gaps: a rate that fell shows within
//! a few arrivals. At a steady rate the two agree (at 100/s both stay under
//! the `--min-delay` floor).
//!
//! **One episode at a time.** A silence longer than `--max-delay` in the
//! minute of history (a pod idle for 40 s, then busy) would have ended any
//! wait by itself: the percentile is taken over the arrivals after it, so
//! that the old silence does not dominate it.
//!
//! **Two sources.** New connections and requests on connections already
//! open (a balancer's keep-alive pool) are two arrival processes, often at
//! very different rates and each stopping when its own router stops: a
//! pool at 80 requests a second beside one new connection every 2 s. Merged,
//! the pool's gaps would make a 2 s silence of new connections look final.
//! So each kind is judged against its own gaps, and SIGQUIT waits until
//! both are quiet (the later of their due times).
//!
//! Pure functions over instants and counts: tested without NGINX.

use std::time::Duration;

use tokio::time::Instant;

use crate::sockets::arrivals::{ArrivalLog, Arrivals, HISTORY, Kind};
pub(crate) use crate::vocab::QuitReason;

/// The quiet period is this many typical gaps.
pub(crate) const GAP_MULTIPLIER: u32 = 3;
/// The typical gap is this percentile of recent gaps.
pub(crate) const GAP_PERCENTILE: f64 = 0.9;
/// Below this many gaps between events (looks that saw arrivals) the
/// percentile is noise: use the longest gap between events instead.
pub(crate) const MIN_GAPS_FOR_PERCENTILE: usize = 8;
/// The latest gaps, whose p90 the typical gap is never below (see "A falling
/// rate").
pub(crate) const RECENT_GAPS: usize = 16;

/// The quiet period chosen, and why, in words for the report.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Quiet {
    pub(crate) period: Duration,
    pub(crate) typical_gap: Option<Duration>,
    pub(crate) reason: String,
}

/// The arrivals of one kind, oldest first: new connections, or requests on
/// connections already open. Each kind is judged against its own gaps (see
/// "Two sources" in the module's doc).
pub(crate) struct Stream {
    /// When observation began.
    since: Instant,
    entries: Vec<Arrivals>,
    kind: Kind,
}

impl Stream {
    pub(crate) fn of(log: &ArrivalLog, kind: Kind) -> Stream {
        Stream {
            since: log.since,
            entries: log
                .entries_with_kind()
                .filter(|(_, k)| *k == kind)
                .map(|(e, _)| *e)
                .collect(),
            kind,
        }
    }

    pub(crate) fn total(&self) -> u64 {
        self.entries.iter().map(|e| u64::from(e.n)).sum()
    }

    pub(crate) fn last_arrival(&self) -> Option<Instant> {
        self.entries.last().map(|e| e.at)
    }
}

/// Chooses the quiet period of one kind of arrival as of `now`.
pub(crate) fn quiet_period(stream: &Stream, now: Instant, min: Duration, max: Duration) -> Quiet {
    let observed = now.saturating_duration_since(stream.since).min(HISTORY);
    let total = stream.total();
    if total == 0 {
        return Quiet {
            period: min,
            typical_gap: None,
            reason: format!(
                "no {} in the last {:.1} s: nothing to wait for (--min-delay)",
                match stream.kind {
                    Kind::Connections => "client connection",
                    Kind::Requests => "request on an open connection",
                },
                observed.as_secs_f64()
            ),
        };
    }
    let events = stream.entries.len();
    // A silence longer than --max-delay would have ended any wait: the
    // traffic before it is another episode, and one such silence must not
    // dominate the time-weighted percentile of the current one.
    let episode = Episode::of(stream, max);
    let (gap, how) = if episode.events().saturating_sub(1) >= MIN_GAPS_FOR_PERCENTILE {
        let gaps = episode.gaps();
        let all = time_weighted_percentile(&gaps, GAP_PERCENTILE);
        let recent = time_weighted_percentile(
            &gaps[gaps.len().saturating_sub(RECENT_GAPS)..],
            GAP_PERCENTILE,
        );
        if recent > all {
            (
                recent,
                format!(
                    "p90 of the last {} gaps by time; of all {}: {:.0} ms",
                    RECENT_GAPS.min(gaps.len()),
                    gaps.len(),
                    all.as_secs_f64() * 1e3
                ),
            )
        } else {
            (all, format!("p90 of {} gaps by time", gaps.len()))
        }
    } else {
        // Few events: the longest gap between them, counting the observed
        // silence before the first. The silence since the last arrival is
        // what is being judged, so it must not inflate the estimate.
        let span = stream
            .last_arrival()
            .map_or(observed, |last| {
                last.saturating_duration_since(stream.since)
            })
            .min(HISTORY);
        let what = match stream.kind {
            Kind::Connections => "connections",
            Kind::Requests => "requests",
        };
        let how = if total > events as u64 {
            format!(
                "longest of {events} gaps between {events} looks with arrivals ({total} {what}) in {:.1} s: too little evidence for a rate, a burst counts once",
                span.as_secs_f64()
            )
        } else {
            format!(
                "longest gap, {total} arrivals in {:.1} s",
                span.as_secs_f64()
            )
        };
        (longest_gap_between_events(stream), how)
    };
    let raw = gap * GAP_MULTIPLIER;
    let period = raw.clamp(min, max);
    let bound = if raw < min {
        " (raised to --min-delay)"
    } else if raw > max {
        " (capped at --max-delay)"
    } else {
        ""
    };
    Quiet {
        period,
        typical_gap: Some(gap),
        reason: format!(
            "typical gap {:.0} ms ({how}) x {GAP_MULTIPLIER} = {:.0} ms{bound}",
            gap.as_secs_f64() * 1e3,
            raw.as_secs_f64() * 1e3
        ),
    }
}

/// At most this many gaps are reconstructed (the most recent).
const MAX_GAPS: usize = 1024;

/// The part of a stream from its last silence longer than `--max-delay`
/// on: the current episode of traffic (the whole stream when there was
/// none).
pub(crate) struct Episode<'a> {
    entries: &'a [Arrivals],
    kind: Kind,
}

impl<'a> Episode<'a> {
    pub(crate) fn of(stream: &'a Stream, longer_than: Duration) -> Episode<'a> {
        let e = &stream.entries;
        let from = e
            .iter()
            .zip(e.iter().skip(1))
            .enumerate()
            .filter(|(_, (a, b))| {
                let b_start = b.at.checked_sub(b.span).unwrap_or(b.at);
                b_start.saturating_duration_since(a.at) > longer_than
            })
            .map(|(i, _)| i + 1)
            .next_back()
            .unwrap_or(0);
        Episode {
            entries: &e[from..],
            kind: stream.kind,
        }
    }

    pub(crate) fn gaps(&self) -> Vec<Duration> {
        gaps_of(self.entries, self.kind)
    }

    /// Looks that saw arrivals in this episode.
    pub(crate) fn events(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    fn total(&self) -> u64 {
        self.entries.iter().map(|e| u64::from(e.n)).sum()
    }
}

/// Gaps between consecutive arrivals of one kind in the log.
#[cfg(test)]
pub(crate) fn gaps(log: &ArrivalLog, kind: Kind) -> Vec<Duration> {
    let s = Stream::of(log, kind);
    gaps_of(&s.entries, kind)
}

/// Gaps between consecutive arrivals, placing a record's `n` arrivals
/// evenly over its span (a census only says how many new connections came,
/// not when; a destroy event's record has no span; of requests on open
/// connections, `tcp_info` dates the latest, at the record's end); the most
/// recent [`MAX_GAPS`].
fn gaps_of(entries: &[Arrivals], kind: Kind) -> Vec<Duration> {
    let offset = match kind {
        Kind::Connections => 0.5,
        Kind::Requests => 1.0,
    };
    // Only the most recent gaps are kept: the records that hold them (and
    // a margin, for spans that reach back over their neighbours), not the
    // whole minute (18 000 arrivals at 300 a second, at every look).
    let mut need = (MAX_GAPS + 1 + 64) as u64;
    let from = entries
        .iter()
        .rposition(|e| {
            need = need.saturating_sub(u64::from(e.n));
            need == 0
        })
        .unwrap_or(0);
    let entries = &entries[from..];
    let mut times: Vec<Instant> =
        Vec::with_capacity(entries.iter().map(|e| e.n as usize).sum::<usize>());
    for e in entries {
        let start = e.at.checked_sub(e.span).unwrap_or(e.at);
        for k in 0..e.n {
            let frac = (f64::from(k) + offset) / f64::from(e.n);
            times.push(start + e.span.mul_f64(frac));
        }
    }
    // Records are in the order of their ends; a census's record spans back
    // over destroy events recorded meanwhile.
    times.sort_unstable();
    let mut gaps: Vec<Duration> = times
        .windows(2)
        .map(|w| w[1].saturating_duration_since(w[0]))
        .collect();
    if gaps.len() > MAX_GAPS {
        gaps.drain(..gaps.len() - MAX_GAPS);
    }
    gaps
}

/// The longest gap between two looks that saw arrivals, counting the
/// observed silence before the first (from the stream's start, at most the
/// history's minute before the last).
pub(crate) fn longest_gap_between_events(stream: &Stream) -> Duration {
    let Some(last) = stream.entries.last() else {
        return Duration::ZERO;
    };
    let mut prev = stream
        .since
        .max(last.at.checked_sub(HISTORY).unwrap_or(stream.since));
    let mut longest = Duration::ZERO;
    for e in &stream.entries {
        longest = longest.max(e.at.saturating_duration_since(prev));
        prev = e.at;
    }
    longest
}

/// The gap length `g` such that a share `p` of the time between arrivals
/// was spent in gaps no longer than `g`. Weighting by time, not by count,
/// is what a silence is compared with: a burst of twenty connections every
/// five seconds has nineteen tiny gaps per burst, yet almost all of its time
/// is spent in the five-second ones.
pub(crate) fn time_weighted_percentile(gaps: &[Duration], p: f64) -> Duration {
    let mut sorted = gaps.to_vec();
    sorted.sort_unstable();
    let total: Duration = sorted.iter().sum();
    let target = total.mul_f64(p);
    let mut acc = Duration::ZERO;
    for g in &sorted {
        acc += *g;
        if acc >= target {
            return *g;
        }
    }
    sorted.last().copied().unwrap_or_default()
}

/// When to send SIGQUIT: once `quiet` has passed since the last arrival (or
/// since the hook, whichever is later counts from `min_delay`), and no later
/// than `latest`.
pub(crate) fn sigquit_at(
    hook: Instant,
    last_arrival: Option<Instant>,
    quiet: Duration,
    min_delay: Duration,
    latest: Instant,
    latest_reason: QuitReason,
) -> (Instant, QuitReason) {
    let earliest = hook + min_delay;
    let after_silence = last_arrival.map_or(earliest, |t| t + quiet);
    let at = earliest.max(after_silence);
    if at >= latest {
        (latest, latest_reason)
    } else {
        (at, QuitReason::Quiet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const MIN: Duration = Duration::from_millis(250);

    fn conns(log: &ArrivalLog) -> Stream {
        Stream::of(log, Kind::Connections)
    }
    const MAX: Duration = Duration::from_secs(15);

    /// A log of `secs` seconds of samples every `every`, `per_sample` arrivals
    /// in each, or one arrival every `every` when per_sample is 1.
    fn steady(t0: Instant, secs: u64, every: Duration, per_sample: u32) -> ArrivalLog {
        let mut log = ArrivalLog::new(t0);
        let mut t = t0 + every;
        while t <= t0 + Duration::from_secs(secs) {
            log.record(Arrivals {
                at: t,
                span: every,
                n: per_sample,
            });
            t += every;
        }
        log
    }

    #[test]
    fn hundred_per_second_gives_a_short_quiet_period() {
        let t0 = Instant::now();
        // 100/s sampled every 50 ms: 5 per sample, 10 ms apart.
        let log = steady(t0, 10, 50 * MS, 5);
        let q = quiet_period(&conns(&log), t0 + Duration::from_secs(10), MIN, MAX);
        assert_eq!(q.typical_gap, Some(10 * MS));
        assert_eq!(
            q.period, MIN,
            "30 ms raised to the 250 ms floor: {}",
            q.reason
        );
        assert!(q.reason.contains("p90"), "{}", q.reason);
        assert!(q.reason.contains("min-delay"));
    }

    #[test]
    fn one_every_two_seconds_waits_three_gaps() {
        let t0 = Instant::now();
        let log = steady(t0, 30, Duration::from_secs(2), 1);
        let q = quiet_period(&conns(&log), t0 + Duration::from_secs(30), MIN, MAX);
        assert_eq!(q.period, Duration::from_secs(6), "{}", q.reason);
    }

    #[test]
    fn few_arrivals_use_the_longest_gap() {
        let t0 = Instant::now();
        let mut log = ArrivalLog::new(t0);
        for s in [1, 3] {
            log.record(Arrivals {
                at: t0 + Duration::from_secs(s),
                span: 50 * MS,
                n: 1,
            });
        }
        // Judged at 4 s and at 10 s: the silence since the last arrival
        // does not change the estimate (gaps of 1 s and 2 s before it).
        for now in [4, 10] {
            let q = quiet_period(&conns(&log), t0 + Duration::from_secs(now), MIN, MAX);
            assert_eq!(q.typical_gap, Some(Duration::from_secs(2)));
            assert_eq!(q.period, Duration::from_secs(6));
        }
    }

    #[test]
    fn a_burst_in_a_short_history_is_one_event_not_a_rate() {
        // The sidecar started 1 s before the hook; 8 keep-alive clients and
        // 4 downloads connected in one sample 0.8 s in; then one connection
        // every 2 s. Counted per connection the gap is 67 ms and SIGQUIT
        // comes at the 250 ms floor, refusing the next arrival.
        let t0 = Instant::now();
        let mut log = ArrivalLog::new(t0);
        log.record(Arrivals {
            at: t0 + 800 * MS,
            span: 200 * MS,
            n: 12,
        });
        let q = quiet_period(&conns(&log), t0 + Duration::from_secs(1), MIN, MAX);
        assert_eq!(q.period, Duration::from_millis(2400), "{}", q.reason);
        assert!(q.reason.contains("a burst counts once"), "{}", q.reason);
        // The next arrival 2 s later is more evidence, and is waited for.
        log.record(Arrivals {
            at: t0 + Duration::from_millis(2_800),
            span: 200 * MS,
            n: 1,
        });
        let q = quiet_period(&conns(&log), t0 + Duration::from_secs(3), MIN, MAX);
        assert_eq!(q.period, Duration::from_secs(6), "{}", q.reason);
        // A stray request between them does not pull the estimate down.
        log.record(Arrivals {
            at: t0 + Duration::from_millis(3_000),
            span: 200 * MS,
            n: 1,
        });
        let q = quiet_period(&conns(&log), t0 + Duration::from_millis(3_100), MIN, MAX);
        assert_eq!(q.period, Duration::from_secs(6), "{}", q.reason);
    }

    #[test]
    fn a_rate_that_fell_lengthens_the_quiet_period() {
        // 30/s for 20 s (33 ms apart), then the pod's share falls to 12/s
        // (83 ms apart) as a rollout adds endpoints: 16 arrivals later, the
        // quiet period follows the new rate, not the minute's.
        let t0 = Instant::now();
        let mut log = steady(t0, 20, 33 * MS, 1);
        let steady_q = quiet_period(&conns(&log), t0 + Duration::from_secs(20), MIN, MAX);
        assert_eq!(steady_q.typical_gap, Some(33 * MS), "{}", steady_q.reason);
        let mut t = t0 + Duration::from_secs(20);
        for _ in 0..16 {
            t += 83 * MS;
            log.record(Arrivals {
                at: t,
                span: 20 * MS,
                n: 1,
            });
        }
        let q = quiet_period(&conns(&log), t, MIN, MAX);
        assert_eq!(q.typical_gap, Some(83 * MS), "{}", q.reason);
        assert!(q.reason.contains("last 16 gaps"), "{}", q.reason);
    }

    #[test]
    fn rare_arrivals_are_capped_at_max_delay() {
        let t0 = Instant::now();
        let log = steady(t0, 60, Duration::from_secs(20), 1);
        let q = quiet_period(&conns(&log), t0 + Duration::from_secs(60), MIN, MAX);
        assert_eq!(q.period, MAX);
        assert!(q.reason.contains("capped"));
    }

    #[test]
    fn no_traffic_means_min_delay() {
        let t0 = Instant::now();
        let q = quiet_period(
            &conns(&ArrivalLog::new(t0)),
            t0 + Duration::from_secs(5),
            MIN,
            MAX,
        );
        assert_eq!(q.period, MIN);
        assert_eq!(q.typical_gap, None);
    }

    /// Each kind of arrival is judged against its own gaps: a balancer's
    /// pool at 80 requests a second that stops does not make one new
    /// connection every 2 s look like 12 ms apart (merged, the quiet period
    /// would be 0.4 s, and the next connection refused); and requests a
    /// dear census saw up to its moment do not make a silence of new
    /// connections meanwhile (merged, a gap of seconds).
    #[test]
    fn each_kind_of_arrival_is_judged_against_its_own_gaps() {
        let t0 = Instant::now();
        let mut log = ArrivalLog::new(t0);
        for k in 1..=50u32 {
            log.record_requests(Arrivals {
                at: t0 + 20 * MS * k,
                span: 20 * MS,
                n: 2,
            });
        }
        for s in [0u64, 2] {
            log.record(Arrivals {
                at: t0 + Duration::from_millis(500) + Duration::from_secs(s),
                span: Duration::ZERO,
                n: 1,
            });
        }
        let now = t0 + Duration::from_millis(2_600);
        let c = quiet_period(&conns(&log), now, MIN, MAX);
        assert_eq!(c.period, Duration::from_secs(6), "{}", c.reason);
        let r = quiet_period(&Stream::of(&log, Kind::Requests), now, MIN, MAX);
        assert_eq!(r.period, MIN, "{}", r.reason);
    }

    #[test]
    fn old_arrivals_fall_out_of_the_history() {
        let t0 = Instant::now();
        let mut log = steady(t0, 10, 50 * MS, 5);
        log.record(Arrivals {
            at: t0 + Duration::from_secs(100),
            span: 50 * MS,
            n: 0,
        });
        assert_eq!(log.last_arrival(), None);
    }

    #[test]
    fn bursts_are_judged_by_their_long_gaps() {
        // 20 arrivals within one 50 ms sample every 5 s: most gaps are
        // tiny, but the p90 is the 5 s between bursts.
        let t0 = Instant::now();
        let mut log = ArrivalLog::new(t0);
        for s in (5..=60).step_by(5) {
            log.record(Arrivals {
                at: t0 + Duration::from_secs(s),
                span: 50 * MS,
                n: 20,
            });
        }
        let q = quiet_period(&conns(&log), t0 + Duration::from_secs(60), MIN, MAX);
        assert!(q.period >= Duration::from_secs(10), "{}", q.reason);
    }

    #[test]
    fn a_silence_longer_than_max_delay_starts_a_new_episode() {
        // 10 arrivals, 40 s of silence, then 100/s for 5 s (a pod idle,
        // then busy): the old silence is another episode.
        let t0 = Instant::now();
        let mut log = ArrivalLog::new(t0);
        log.record(Arrivals {
            at: t0 + Duration::from_secs(1),
            span: 100 * MS,
            n: 10,
        });
        let busy = t0 + Duration::from_secs(41);
        let mut t = busy;
        while t < busy + Duration::from_secs(5) {
            t += 20 * MS;
            log.record(Arrivals {
                at: t,
                span: 20 * MS,
                n: 2,
            });
        }
        let q = quiet_period(&conns(&log), t, MIN, MAX);
        assert_eq!(q.typical_gap, Some(10 * MS), "{}", q.reason);
        assert_eq!(q.period, MIN, "{}", q.reason);
        // The same history without the long silence keeps every gap.
        assert_eq!(
            Episode::of(&conns(&log), Duration::from_secs(60)).total(),
            log.total()
        );
    }

    #[test]
    fn time_weighting() {
        let g = |ms: u64| Duration::from_millis(ms);
        let mut gaps = vec![g(1); 19];
        gaps.push(g(5000));
        assert_eq!(time_weighted_percentile(&gaps, 0.9), g(5000));
        assert_eq!(time_weighted_percentile(&[g(10); 50], 0.9), g(10));
        assert_eq!(time_weighted_percentile(&[], 0.9), Duration::ZERO);
    }

    #[test]
    fn sigquit_timing() {
        let hook = Instant::now();
        let latest = hook + MAX;
        // No arrivals: min delay after the hook.
        assert_eq!(
            sigquit_at(hook, None, MIN, MIN, latest, QuitReason::MaxDelay),
            (hook + MIN, QuitReason::Quiet)
        );
        // Traffic continued 3 s after the hook: quiet period after the last one.
        let last = hook + Duration::from_secs(3);
        assert_eq!(
            sigquit_at(hook, Some(last), MIN, MIN, latest, QuitReason::MaxDelay),
            (last + MIN, QuitReason::Quiet)
        );
        // Silence long before the hook: min delay after the hook.
        let long_ago = hook.checked_sub(Duration::from_secs(10)).unwrap_or(hook);
        assert_eq!(
            sigquit_at(
                hook,
                Some(long_ago),
                Duration::from_secs(6),
                MIN,
                latest,
                QuitReason::MaxDelay
            )
            .0,
            hook + MIN
        );
        // Arrivals never stop: latest.
        let late = hook + Duration::from_secs(20);
        assert_eq!(
            sigquit_at(hook, Some(late), MIN, MIN, latest, QuitReason::Budget),
            (latest, QuitReason::Budget)
        );
    }
}
