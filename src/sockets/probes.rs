//! The kubelet's probes, told apart from client connections that share its
//! source address.
//!
//! The kubelet probes NGINX's ports from one address (with a bridge CNI, the
//! bridge's), and the sidecar learns it from the probes and hooks it
//! receives itself. Client traffic can come from that same address: the node
//! masquerades Service traffic that is node-local, or all of it under
//! kube-proxy's `masqueradeAll`, and traffic forwarded to a local pod under
//! `externalTrafficPolicy: Cluster`. Ignoring the address then ignores those
//! clients, and the sidecar quits while the Service still sends (measured on
//! a real cluster: 11-36 failed requests a rollout); counting it lets a probe
//! every 10 s stretch the quiet period to `--max-delay`.
//!
//! What tells them apart is the rate. A probe runs at most once a second
//! (`periodSeconds` >= 1), a container has at most three (startup,
//! readiness, liveness), and HTTP, TCP and gRPC probes each open a new
//! connection. So from the kubelet's address, a bucket of [`BURST`]
//! connections refilled at [`PER_SECOND`] is taken to be probes, and every
//! connection beyond it is a client. Clients masqueraded at more than that
//! rate per pod are counted (all but two a second); below it they are
//! indistinguishable from probes, as before.
//!
//! Invariants: never more connections are taken to be probes than
//! `BURST + PER_SECOND x elapsed` since the address was learned or first seen;
//! pure (the caller's instants), so the paused-clock tests drive it.

use std::time::Duration;

use tokio::time::Instant;

/// Probes a second, sustained: two probes of one second each (readiness and
/// liveness on NGINX's port).
pub(crate) const PER_SECOND: f64 = 2.0;
/// Probes at once: startup, readiness and liveness due together.
pub(crate) const BURST: f64 = 3.0;

/// The probe budget of one kubelet address.
#[derive(Debug, Clone)]
pub(crate) struct ProbeBudget {
    tokens: f64,
    at: Option<Instant>,
}

impl Default for ProbeBudget {
    fn default() -> Self {
        ProbeBudget {
            tokens: BURST,
            at: None,
        }
    }
}

impl ProbeBudget {
    /// Of `n` connections from the kubelet's address seen over `span` up to
    /// `at`, how many are taken to be its probes (the rest are clients).
    /// A look that covers a long span (a census after an idle while) may
    /// hold that span's probes, so the bucket holds up to `BURST` plus the
    /// span's refill.
    pub(crate) fn take(&mut self, at: Instant, span: Duration, n: u32) -> u32 {
        let elapsed = self
            .at
            .map_or(Duration::ZERO, |t| at.saturating_duration_since(t));
        let cap = BURST + PER_SECOND * span.as_secs_f64();
        self.tokens = (self.tokens + PER_SECOND * elapsed.as_secs_f64()).min(cap.max(BURST));
        self.at = Some(self.at.map_or(at, |t| t.max(at)));
        let probes = (self.tokens.floor() as u32).min(n);
        self.tokens -= f64::from(probes);
        probes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const LOOK: Duration = Duration::from_millis(200);

    #[test]
    fn probes_every_second_are_all_probes() {
        let t0 = Instant::now();
        let mut b = ProbeBudget::default();
        for k in 1..=120u32 {
            // readiness and liveness, both every second, at the same moment
            assert_eq!(b.take(t0 + S * k, LOOK, 2), 2, "second {k}");
        }
    }

    #[test]
    fn masqueraded_clients_count_beyond_the_probe_rate() {
        let t0 = Instant::now();
        let mut b = ProbeBudget::default();
        // 100 connections a second, seen in looks of 20 ms (2 each).
        let mut probes = 0;
        for k in 1..=500u32 {
            probes += b.take(
                t0 + Duration::from_millis(20) * k,
                Duration::from_millis(20),
                2,
            );
        }
        // 10 s: at most the burst plus 2 a second were taken for probes.
        assert!(probes <= 3 + 20, "{probes} of 1000 taken for probes");
        assert!(probes >= 20, "the probes among them: {probes}");
    }

    #[test]
    fn a_long_look_may_hold_that_spans_probes() {
        let t0 = Instant::now();
        let mut b = ProbeBudget::default();
        assert_eq!(b.take(t0, LOOK, 1), 1);
        // A census 30 s later that saw 30 probe connections (one a second).
        assert_eq!(b.take(t0 + 30 * S, 30 * S, 30), 30);
        // But not 100: the rest are clients.
        let mut c = ProbeBudget::default();
        c.take(t0, LOOK, 0);
        assert_eq!(c.take(t0 + 30 * S, 30 * S, 100), 63);
    }

    #[test]
    fn never_more_than_the_budget_whatever_the_looks() {
        let t0 = Instant::now();
        let mut b = ProbeBudget::default();
        let mut taken = 0u64;
        let mut t = t0;
        for k in 0..10_000u32 {
            t += Duration::from_millis(u64::from(k % 7) * 3);
            taken += u64::from(b.take(t, Duration::from_millis(u64::from(k % 7) * 3), k % 5));
        }
        let bound = BURST + PER_SECOND * t.duration_since(t0).as_secs_f64();
        assert!(taken as f64 <= bound, "{taken} > {bound}");
    }
}
