//! Prometheus metrics (`/metrics`, OpenMetrics text). Observes drain events
//! and the current state; never decides anything.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::report::{Report, Snapshot};
use crate::vocab::Check;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CutByLabel {
    /// `nginx_worker_shutdown_timeout` or `sigterm`.
    by: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabel {
    /// A wiring check (`Check`).
    check: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    /// The HTTP status, or `reset` when the connection was reset on purpose.
    code: String,
}

pub(crate) struct Metrics {
    registry: Mutex<Registry>,
    drains: Family<OutcomeLabel, Counter>,
    duration: Histogram,
    wait: Histogram,
    at_sigquit: Histogram,
    hooks: Family<CodeLabel, Counter>,
    master_up: Gauge,
    workers: Gauge,
    arrivals: Gauge<f64, AtomicU64>,
    open: Gauge,
    undrained: Counter,
    cut: Family<CutByLabel, Counter>,
    wiring: Family<CheckLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut r = Registry::with_prefix("nginx_drain");
        let drains = Family::<OutcomeLabel, Counter>::default();
        r.register("drains", "Drains finished, by outcome (drained, streams_closed, forced, timeout, not_running, nginx_died, error)", drains.clone());
        let cut = Family::<CutByLabel, Counter>::default();
        r.register(
            "cut_connections",
            "Client connections still open when NGINX exited, closed by its worker_shutdown_timeout or by the escalation's SIGTERM (by)",
            cut.clone(),
        );
        // 50 ms .. ~100 s.
        let duration = Histogram::new(exponential_buckets(0.05, 2.0, 12));
        r.register(
            "drain_duration_seconds",
            "Time from the preStop hook's arrival to its answer",
            duration.clone(),
        );
        let wait = Histogram::new(exponential_buckets(0.05, 2.0, 12));
        r.register(
            "wait_before_sigquit_seconds",
            "Time NGINX kept serving after the hook, waiting for new connections to stop",
            wait.clone(),
        );
        let at_sigquit = Histogram::new([0.0, 1.0, 10.0, 100.0, 1_000.0, 10_000.0]);
        r.register(
            "connections_at_sigquit",
            "Open client connections when SIGQUIT was sent",
            at_sigquit.clone(),
        );
        let hooks = Family::<CodeLabel, Counter>::default();
        r.register(
            "hook_requests",
            "Requests to /prestop, by HTTP status (or reset)",
            hooks.clone(),
        );
        let master_up = Gauge::default();
        r.register(
            "nginx_master_up",
            "1 while an NGINX master is found and running",
            master_up.clone(),
        );
        let workers = Gauge::default();
        r.register(
            "nginx_workers",
            "NGINX worker processes (children of the master)",
            workers.clone(),
        );
        let arrivals = Gauge::<f64, AtomicU64>::default();
        r.register(
            "arrivals_per_second",
            "New client connections per second over the last minute, from the connection census",
            arrivals.clone(),
        );
        let open = Gauge::default();
        r.register(
            "open_connections",
            "Open client connections on NGINX's ports, from the connection census",
            open.clone(),
        );
        let undrained = Counter::default();
        r.register(
            "undrained_exits",
            "NGINX masters that exited with no drain having run (the preStop hook never reached nginx-drain: not wired, refused, on the wrong container; or NGINX crashed)",
            undrained.clone(),
        );
        let wiring = Family::<CheckLabel, Gauge>::default();
        r.register("wiring_problems", wiring_help(), wiring.clone());
        r.register(
            "build",
            "nginx-drain's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Metrics {
            registry: Mutex::new(r),
            drains,
            duration,
            wait,
            at_sigquit,
            hooks,
            master_up,
            workers,
            arrivals,
            open,
            undrained,
            cut,
            wiring,
        }
    }

    /// Records a finished drain (or an immediate not_running/error answer).
    pub(crate) fn observe_report(&self, report: &Report) {
        self.drains
            .get_or_create(&OutcomeLabel {
                outcome: report.outcome.as_str().to_string(),
            })
            .inc();
        self.duration
            .observe(report.durations.total_ms as f64 / 1e3);
        if let Some(c) = &report.connections
            && let Some(by) = c.cut_by
            && c.cut > 0
        {
            let by = serde_json::to_value(by)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            self.cut
                .get_or_create(&CutByLabel { by })
                .inc_by(u64::from(c.cut));
        }
        if let Some(t) = &report.traffic
            && report.sigquit_at.is_some()
        {
            self.wait.observe(t.wait_before_sigquit_ms as f64 / 1e3);
            self.at_sigquit
                .observe(f64::from(t.connections_at_sigquit.values().sum::<u32>()));
        }
    }

    /// Records the answer to one hook request.
    pub(crate) fn observe_hook(&self, code: &str) {
        self.hooks
            .get_or_create(&CodeLabel {
                code: code.to_string(),
            })
            .inc();
    }

    /// Renders OpenMetrics text, with the gauges taken from `snapshot`.
    pub(crate) fn render(&self, snapshot: &Snapshot) -> String {
        self.master_up.set(i64::from(snapshot.master_running()));
        for &check in Check::ALL {
            let failing = snapshot.problems.iter().any(|p| p.check == check);
            self.wiring
                .get_or_create(&CheckLabel {
                    check: check.as_str().to_string(),
                })
                .set(i64::from(failing));
        }
        self.workers.set(snapshot.workers.len() as i64);
        // The owner counts; the counter catches up at each scrape.
        let seen = self.undrained.get();
        if snapshot.undrained_exits > seen {
            self.undrained.inc_by(snapshot.undrained_exits - seen);
        }
        if let Some(t) = &snapshot.traffic {
            self.arrivals.set(t.arrivals_per_second_last_minute);
            self.open.set(i64::from(t.open.values().sum::<u32>()));
        }
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = encode(&mut out, &registry) {
            out = format!("# cannot encode metrics: {e}\n# EOF\n");
        }
        out
    }
}

/// The wiring gauge's help, listing every check (from the one list of them,
/// so that it cannot drift).
fn wiring_help() -> String {
    let checks: Vec<&str> = Check::ALL.iter().map(|c| c.as_str()).collect();
    format!(
        "1 for each wiring check that fails now ({}; see /status for the fix), 0 otherwise",
        checks.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openmetrics_with_the_contract_names() {
        let m = Metrics::new();
        m.observe_hook("200");
        let text = m.render(&Snapshot::initial(String::new()));
        for name in [
            "nginx_drain_hook_requests_total{code=\"200\"} 1",
            "nginx_drain_nginx_master_up 0",
            "nginx_drain_build_info{version=",
            "# TYPE nginx_drain_drain_duration_seconds histogram",
        ] {
            assert!(text.contains(name), "missing {name}:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
