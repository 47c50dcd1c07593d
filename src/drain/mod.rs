//! The drain: one long-lived task (the *owner*) that tracks the current NGINX
//! master and runs at most one drain per master.
//!
//! Hook handlers never run drains. They ask the owner, which starts the drain
//! if none exists for this master (single flight) and hands back a `watch`
//! receiver on which the report will appear. A thousand concurrent hooks cost
//! a thousand receivers and exactly one SIGQUIT; a hook after the drain gets
//! the stored report at once. A client that disconnects drops its receiver
//! and nothing else: the drain goes on.
//!
//! The owner also decides when the sidecar may exit after its own SIGTERM:
//! once no drain is running and the master it watches has exited.
//!
//! Invariants kept here: only the owner starts drains, one per master (so at
//! most one SIGQUIT each); a hook's client leaving cancels nothing; the
//! `ReportSink` (metrics, report file) sees every final report before any
//! hook does; the sidecar never exits while a drain runs.

pub(crate) mod outcome;
pub(crate) mod quiet;
pub(crate) mod record;
pub(crate) mod sequence;
pub(crate) mod target;

pub(crate) use record::WaitPolicy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tracing::Instrument;

use crate::nginx::config::ShutdownTimeout;
use crate::nginx::{Locator, MasterHandle, NotFound, is_quitting, workers};
use crate::report::{Clock, Durations, Report, Snapshot, State, TrafficStatus, ms, rate2};
use crate::sockets::arrivals::Kind;
use crate::sockets::monitor::Monitor;
use crate::sockets::view::MonitorConfig;
use crate::vocab::{Check, Outcome, Problem};
use crate::wiring::{self};

/// How often the owner looks for a master while it has none (NGINX starting,
/// or restarted after a drain). Not on the drain path.
pub(crate) const DISCOVERY_INTERVAL: Duration = Duration::from_millis(500);

/// After its own SIGTERM, the sidecar waits for the master at most the drain
/// budget plus this margin when no hook arrives.
pub(crate) const EXIT_MARGIN: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) locator: Locator,
    pub(crate) drain_timeout: Duration,
    pub(crate) policy: WaitPolicy,
    pub(crate) census: MonitorConfig,
    /// `--worker-shutdown-timeout`: NGINX's, as the operator states it;
    /// else read from NGINX's configuration.
    pub(crate) worker_shutdown_timeout: Option<Duration>,
    pub(crate) wiring: WiringConfig,
    /// `--metrics-linger`.
    pub(crate) metrics_linger: Duration,
    /// `--nginx-start-timeout`: how long NGINX may take to appear.
    pub(crate) nginx_start_timeout: Duration,
}

/// What the wiring checks need to know of the pod (see `crate::wiring`).
#[derive(Debug, Clone)]
pub(crate) struct WiringConfig {
    pub(crate) listen: SocketAddr,
    pub(crate) pod_ip: Option<std::net::IpAddr>,
    /// Running in a pod: only there is a loopback `--listen` a problem.
    pub(crate) in_pod: bool,
    pub(crate) grace_period: Option<Duration>,
    /// Who may call the hook (the HTTP surface's rule, shared).
    pub(crate) access: Arc<crate::auth::Access>,
}

/// How often the owner re-checks the wiring (the census may fail later).
const WIRING_EVERY: Duration = Duration::from_secs(5);

/// Called with every final report before any hook sees it: the wiring
/// connects the metrics and the report file here, so that the drain knows
/// nothing of either.
pub(crate) type ReportSink = Arc<dyn Fn(&Report) + Send + Sync>;

type ReportRx = watch::Receiver<Option<Arc<Report>>>;

enum Command {
    Prestop {
        peer: String,
        reply: oneshot::Sender<ReportRx>,
    },
}

/// The handle HTTP handlers use: start or join a drain, read the state.
#[derive(Clone)]
pub(crate) struct Handle {
    commands: mpsc::Sender<Command>,
    snapshot: watch::Receiver<Snapshot>,
    monitor: Monitor,
}

impl Handle {
    /// Starts a drain (or joins the one in progress) and waits for its report.
    pub(crate) async fn prestop(&self, peer: SocketAddr) -> Option<Arc<Report>> {
        let (reply, rx) = oneshot::channel();
        let peer = peer.to_string();
        self.commands
            .send(Command::Prestop { peer, reply })
            .await
            .ok()?;
        let mut report = rx.await.ok()?;
        let r = report.wait_for(Option::is_some).await.ok()?;
        r.clone()
    }

    /// The sidecar accepted a connection of its own: not NGINX's traffic,
    /// though it moves the namespace's accept counter.
    pub(crate) fn note_own_accept(&self) {
        self.monitor.note_own_accept();
    }

    /// A request came from the kubelet (its probe or hook): its address
    /// is not a client's.
    pub(crate) fn learn_kubelet(&self, ip: std::net::IpAddr) {
        self.monitor.learn_kubelet(ip);
    }

    /// The state as `/status` shows it, with the latest census.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut snap = self.snapshot.borrow().clone();
        let view = self.monitor.view();
        let view = view.borrow();
        snap.traffic = Some(TrafficStatus {
            census: view.census_label(),
            arrivals_seen: view.arrivals_label(),
            ports: view.ports.iter().copied().collect(),
            listening: view.sample.listening.clone(),
            open: view.sample.open.clone(),
            arrivals_per_second_last_minute: rate2(
                view.log.rate_before(Instant::now(), Kind::Connections),
            ),
            requests_seen: view.requests_seen,
            requests_per_second_last_minute: rate2(
                view.log.rate_before(Instant::now(), Kind::Requests),
            ),
            kubelet_peers: view.kubelet_peers.iter().map(ToString::to_string).collect(),
        });
        snap
    }
}

/// Starts the owner task. It returns once `shutdown` has fired and NGINX is
/// gone (or the exit bound has passed).
pub(crate) fn spawn(
    config: Config,
    on_report: ReportSink,
    shutdown: watch::Receiver<bool>,
) -> (Handle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let detail = format!("looking for nginx via {}", config.locator.describe());
    let (snap_tx, snap_rx) = watch::channel(Snapshot::initial(detail));
    let monitor = Monitor::spawn(config.census.clone());
    let owner = Owner {
        monitor: monitor.clone(),
        on_report,
        config,
        commands: rx,
        snapshot: Arc::new(snap_tx),
        master: None,
        drain: None,
        last_problem: None,
        shutdown,
        exit_by: None,
        signal: None,
        shutdown_timeout: None,
        problems: Vec::new(),
        linger: None,
        started: Instant::now(),
        ever_found: false,
    };
    let task = tokio::spawn(owner.run());
    (
        Handle {
            commands: tx,
            snapshot: snap_rx,
            monitor,
        },
        task,
    )
}

/// The drain in flight: where its report comes and goes, and whom it drains.
struct InFlight {
    report: ReportRx,
    /// Where its report goes: the task sends through it, and the owner too
    /// if the task fails, so that hooks already waiting get an answer.
    publish: Arc<watch::Sender<Option<Arc<Report>>>>,
    task: Option<JoinHandle<Report>>,
    /// When its hook arrived (the grace period runs from about then).
    hook: Instant,
}

struct Owner {
    config: Config,
    monitor: Monitor,
    on_report: ReportSink,
    commands: mpsc::Receiver<Command>,
    snapshot: Arc<watch::Sender<Snapshot>>,
    /// The master being watched; kept after its exit until a new one appears.
    master: Option<Arc<MasterHandle>>,
    /// The drain of `master`, running or finished.
    drain: Option<InFlight>,
    /// The last "not found" reason, logged once per change.
    last_problem: Option<NotFound>,
    shutdown: watch::Receiver<bool>,
    exit_by: Option<Instant>,
    /// The current master's answer to the null signal.
    signal: Option<Result<(), String>>,
    /// The current master's worker_shutdown_timeout.
    shutdown_timeout: Option<ShutdownTimeout>,
    /// The wiring problems last published (and logged).
    problems: Vec<Problem>,
    /// Until when the sidecar stays up after its exit was decided.
    linger: Option<Instant>,
    /// When the owner started, and whether it ever found a master: one
    /// never found after `--nginx-start-timeout` is a wiring problem.
    started: Instant,
    ever_found: bool,
}

impl Owner {
    async fn run(mut self) {
        self.refresh();
        let mut wiring = tokio::time::interval(WIRING_EVERY);
        wiring.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.may_exit() {
                let now = Instant::now();
                let until = match self.linger {
                    Some(until) => until,
                    None => {
                        let until = self.linger_deadline(now);
                        if until > now {
                            tracing::info!(
                                linger_ms = ms(until - now),
                                "nginx is gone after a drain that did not succeed: serving /metrics a little longer, so that a scrape can still count it"
                            );
                        }
                        self.linger = Some(until);
                        until
                    }
                };
                if now >= until {
                    tracing::info!("nginx is gone and no drain is running: exiting");
                    return;
                }
            }
            let master = self.master.clone();
            let master_alive = master.as_ref().is_some_and(|m| !m.has_exited());
            let draining = self.drain.as_ref().is_some_and(|d| d.task.is_some());
            let next_scan = Instant::now() + DISCOVERY_INTERVAL;
            let exit_by = self.exit_by;
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Prestop { peer, reply }) => self.on_prestop(peer, reply),
                    None => return,
                },
                report = async { self.drain.as_mut().and_then(|d| d.task.as_mut()).expect("guarded").await }, if draining => {
                    self.on_drain_finished(report);
                }
                _ = async { master.as_ref().expect("guarded").exited().await }, if master_alive && !draining => {
                    self.on_exit_without_drain(master.as_ref().map_or(0, |m| m.id().pid));
                    self.refresh();
                }
                _ = sleep_until(next_scan), if !master_alive && !draining => self.refresh(),
                _ = wiring.tick() => self.check_wiring(),
                changed = self.shutdown.changed(), if self.exit_by.is_none() => {
                    if changed.is_err() || *self.shutdown.borrow() {
                        self.on_shutdown();
                    }
                }
                _ = sleep_until(self.linger.unwrap_or_else(Instant::now)), if self.linger.is_some() => {}
                _ = sleep_until(exit_by.unwrap_or_else(Instant::now)), if exit_by.is_some() && !draining && self.linger.is_none() => {
                    tracing::warn!(
                        "nginx is still running {} ms after the sidecar's SIGTERM and no hook came: exiting anyway",
                        ms(self.config.drain_timeout + EXIT_MARGIN)
                    );
                    return;
                }
            }
        }
    }

    /// The master exited while no drain was running. Without any drain
    /// for it, NGINX took its stop signal unprepared: the misconfiguration
    /// this sidecar exists to prevent, so it is loud and counted.
    fn on_exit_without_drain(&mut self, pid: i32) {
        if self.drain.is_some() {
            // A drain ran for this master and ended without its exit (an
            // error, or the budget): its report already said so.
            tracing::warn!(pid, "nginx master exited after its drain had ended");
            return;
        }
        self.snapshot.send_modify(|s| s.undrained_exits += 1);
        tracing::error!(
            pid,
            "nginx master exited and no preStop hook had reached nginx-drain: NGINX got its stop signal without a drain, so in-flight requests may have been cut. Likely causes: the pod's preStop hook is not an httpGet to this sidecar's port (or sits on another container), the hook was refused (wrong or missing bearer token, peer outside --allow-cidr: see the warnings above), or NGINX crashed or was stopped by hand"
        );
    }

    /// Until when the sidecar stays up once it may exit: after a drain
    /// that did not succeed, `--metrics-linger` more, but never past the
    /// grace period less the kubelet's 2 s (from `--grace-period`, else the
    /// budget plus 3 s of its 5 s margin), counted from the hook; else now.
    fn linger_deadline(&self, now: Instant) -> Instant {
        let Some(d) = &self.drain else { return now };
        let failed = d
            .report
            .borrow()
            .as_ref()
            .is_some_and(|r| !r.outcome.is_success());
        if !failed {
            return now;
        }
        let grace_end = match self.config.wiring.grace_period {
            Some(g) => d.hook + g.saturating_sub(Duration::from_secs(2)),
            None => d.hook + self.config.drain_timeout + Duration::from_secs(3),
        };
        (now + self.config.metrics_linger).min(grace_end).max(now)
    }

    fn may_exit(&self) -> bool {
        self.exit_by.is_some()
            && self.drain.as_ref().is_none_or(|d| d.task.is_none())
            && self.master.as_ref().is_none_or(|m| m.has_exited())
    }

    fn on_shutdown(&mut self) {
        let bound = self.config.drain_timeout + EXIT_MARGIN;
        self.exit_by = Some(Instant::now() + bound);
        self.snapshot.send_modify(|s| s.shutting_down = true);
        let running = self.master.as_ref().is_some_and(|m| !m.has_exited());
        if running {
            tracing::info!(
                bound_ms = ms(bound),
                "received SIGTERM/SIGINT: staying up until the nginx master has exited (the preStop hook may still arrive)"
            );
        } else {
            tracing::info!("received SIGTERM/SIGINT and no nginx master is running");
        }
    }

    /// Looks for the master and updates the state. Idempotent.
    fn refresh(&mut self) {
        if let Some(m) = &self.master
            && !m.has_exited()
        {
            return;
        }
        self.signal = None;
        self.shutdown_timeout = None;
        self.locate();
        self.check_wiring();
    }

    /// Finds the master (or says why not) and publishes it.
    fn locate(&mut self) {
        match self.config.locator.locate().and_then(MasterHandle::open) {
            Ok(handle) => {
                let master = handle.master().clone();
                let workers = workers(&master.id);
                let quitting = is_quitting(&workers);
                tracing::info!(
                    pid = master.id.pid,
                    title = %master.title,
                    workers = workers.len(),
                    signal_method = %handle.signal_method(),
                    "found nginx master"
                );
                self.signal = Some(handle.may_signal());
                self.shutdown_timeout = Some(ShutdownTimeout::given_or(
                    self.config.worker_shutdown_timeout,
                    || crate::nginx::config::shutdown_timeout(&master),
                ));
                self.log_fitting_shutdown_timeout();
                if quitting {
                    tracing::warn!(
                        pid = master.id.pid,
                        "nginx master is already shutting down (all workers say \"is shutting down\"): not ready; a hook will wait for its exit"
                    );
                }
                self.master = Some(Arc::new(handle));
                self.drain = None;
                self.last_problem = None;
                self.ever_found = true;
                self.snapshot.send_modify(|s| {
                    s.state = if quitting {
                        State::Quitting
                    } else {
                        State::Ready
                    };
                    s.detail = if quitting {
                        format!("nginx master {} is already shutting down", master.id.pid)
                    } else {
                        format!("nginx master {} is running", master.id.pid)
                    };
                    s.master = Some(master);
                    s.workers = workers;
                    s.drain = None;
                });
            }
            Err(problem) => {
                if self.last_problem.as_ref() != Some(&problem) {
                    match &problem {
                        NotFound::NotRunning(m) => tracing::info!("no nginx master to watch: {m}"),
                        NotFound::Unusable(m) => tracing::error!("{m}"),
                    }
                    self.last_problem = Some(problem.clone());
                }
                let drained = self.drain.is_some();
                self.snapshot.send_modify(|s| {
                    s.state = match (&problem, drained) {
                        (NotFound::Unusable(_), _) => State::Unusable,
                        (_, true) => State::Drained,
                        _ => State::Searching,
                    };
                    s.detail = problem.message().to_string();
                    s.workers.clear();
                });
            }
        }
    }

    /// Says at discovery that NGINX's worker_shutdown_timeout fits the
    /// budget (a misfit is a wiring problem: `check_wiring`).
    fn log_fitting_shutdown_timeout(&self) {
        let (timeout, max_delay) = (self.config.drain_timeout, self.config.policy.max_delay);
        if let Some(t @ ShutdownTimeout::Set(d)) = &self.shutdown_timeout
            && *d <= crate::budget::max_worker_shutdown_timeout(timeout, max_delay)
        {
            tracing::info!(
                worker_shutdown_timeout = %t,
                "nginx closes connections that never end by themselves (WebSockets, streams) inside the budget ({})",
                crate::budget::worker_shutdown_rule(timeout, max_delay)
            );
        }
    }

    /// How long NGINX has been searched for and why it was not found, once
    /// that is longer than `--nginx-start-timeout` and no master was ever
    /// found.
    fn nginx_missing(&self) -> Option<wiring::NginxMissing> {
        let searched = self.started.elapsed();
        (!self.ever_found && searched > self.config.nginx_start_timeout).then(|| {
            wiring::NginxMissing {
                searched,
                why: self
                    .last_problem
                    .as_ref()
                    .map_or_else(String::new, |p| p.message().to_string()),
            }
        })
    }

    /// Runs the wiring checks on what is known now, publishes the problems
    /// and logs each one that appeared (with its fix) or went away.
    fn check_wiring(&mut self) {
        let view = self.monitor.view();
        let (census, arrivals_seen) = {
            let v = view.borrow();
            // Before the first census the monitor has not said whether
            // it watches the destroy events.
            let started = v.sample.seq > 0 || v.error.is_some();
            (v.census_label(), started.then(|| v.arrivals_label()))
        };
        let w = &self.config.wiring;
        let problems = wiring::problems(&wiring::Observed {
            own_pid: std::process::id(),
            listen: w.listen,
            pod_ip: w.pod_ip,
            in_pod: w.in_pod,
            signal: self.signal.clone(),
            census_method: self.config.census.method,
            census,
            arrivals_seen,
            drain_timeout: self.config.drain_timeout,
            max_delay: self.config.policy.max_delay,
            grace_period: w.grace_period,
            shutdown_timeout: self.shutdown_timeout.clone(),
            // `seen` first: judging it may read the routes again, which
            // the rule's description then shows.
            hook_access: w.access.kubelet_only().then(|| wiring::HookAccess {
                seen: w.access.kubelet_seen(),
                knows_an_address: w.access.knows_an_address(),
                rule: w.access.describe(),
            }),
            nginx_missing: self.nginx_missing(),
        });
        if problems == self.problems {
            return;
        }
        for p in problems.iter().filter(|p| !self.problems.contains(p)) {
            if p.blocking {
                tracing::error!(check = %p.check, "wiring problem: {}", p.message);
            } else {
                tracing::warn!(check = %p.check, "wiring problem: {}", p.message);
            }
        }
        for p in self
            .problems
            .iter()
            .filter(|p| !problems.iter().any(|n| n.check == p.check))
        {
            tracing::info!(check = %p.check, "wiring problem resolved");
        }
        self.problems = problems.clone();
        self.snapshot.send_modify(|s| s.problems = problems);
    }

    fn on_prestop(&mut self, peer: String, reply: oneshot::Sender<ReportRx>) {
        // A finished drain whose master is gone answers only if no new
        // master has started since (NGINX restarted within the 500 ms
        // between two rescans): look now, or the new master would be
        // stopped with no drain while the hook got the old report.
        let finished = self.drain.as_ref().is_some_and(|d| d.task.is_none());
        if finished && self.master.as_ref().is_none_or(|m| m.has_exited()) {
            self.refresh();
        }
        if let Some(d) = &self.drain {
            tracing::info!(%peer, "preStop hook received: joining the drain in progress (or its result)");
            let _ = reply.send(d.report.clone());
            return;
        }
        let clock = Clock::now();
        let id = drain_id(clock.wall, std::process::id());
        tracing::info!(%peer, drain_id = %id, "preStop hook received");
        self.refresh();
        let master = match &self.master {
            Some(m) if !m.has_exited() => m.clone(),
            _ => {
                // With no shared PID namespace there is nothing the sidecar
                // could ever see: a misconfiguration, not a pod with no
                // NGINX. It must not look like a successful drain.
                let miswired = self
                    .problems
                    .iter()
                    .find(|p| p.check == Check::SharedPidNamespace)
                    .map(|p| NotFound::Unusable(format!("nothing was drained: {}", p.message)))
                    .or_else(|| {
                        // Never found, and no longer starting: the sidecar
                        // looks in the wrong place.
                        self.nginx_missing().map(|m| {
                            NotFound::Unusable(format!(
                                "nothing was drained: {}",
                                wiring::nginx_missing_message(&m)
                            ))
                        })
                    });
                let problem = miswired
                    .or_else(|| {
                        self.last_problem.clone().map(|p| match p {
                            // Within --nginx-start-timeout: NGINX may not
                            // have started yet (a pod deleted while it
                            // starts), nothing to drain.
                            NotFound::NotRunning(m) if !self.ever_found => {
                                NotFound::NotRunning(format!(
                                    "{m} (no nginx master yet, {} ms after the sidecar started; --nginx-start-timeout {})",
                                    ms(self.started.elapsed()),
                                    humantime::format_duration(self.config.nginx_start_timeout)
                                ))
                            }
                            p => p,
                        })
                    })
                    .unwrap_or_else(|| {
                        NotFound::NotRunning("the nginx master has exited".to_string())
                    });
                let report = immediate_report(id, clock, peer, &problem, self.config.drain_timeout);
                tracing::info!(outcome = report.outcome.as_str(), "{}", report.message);
                (self.on_report)(&report);
                let report = Arc::new(report);
                self.snapshot
                    .send_modify(|s| s.last_report = Some(report.clone()));
                let (_tx, rx) = watch::channel(Some(report));
                let _ = reply.send(rx);
                return;
            }
        };
        let (tx, rx) = watch::channel(None);
        let publish = Arc::new(tx);
        let tx = publish.clone();
        let req = record::Request {
            id: id.clone(),
            clock,
            peer,
            timeout: self.config.drain_timeout,
            policy: self.config.policy,
            worker_shutdown_timeout: self.config.worker_shutdown_timeout,
        };
        let snapshot = self.snapshot.clone();
        let monitor = self.monitor.clone();
        let on_report = self.on_report.clone();
        let span = tracing::info_span!("drain", drain_id = %id);
        let task = tokio::spawn(
            async move {
                let report = sequence::run(master, req, snapshot, monitor).await;
                // Metrics and the report file first: whoever reads them
                // after the hook's answer finds this drain there.
                on_report(&report);
                let _ = tx.send(Some(Arc::new(report.clone())));
                report
            }
            .instrument(span),
        );
        self.snapshot.send_modify(|s| {
            s.state = State::Draining;
            s.detail = "a drain is in progress".to_string();
        });
        self.drain = Some(InFlight {
            report: rx.clone(),
            publish,
            task: Some(task),
            hook: clock.mono,
        });
        let _ = reply.send(rx);
    }

    fn on_drain_finished(&mut self, joined: Result<Report, tokio::task::JoinError>) {
        let Some(drain) = self.drain.as_mut() else {
            return;
        };
        drain.task = None;
        let report = match joined {
            Ok(r) => Arc::new(r),
            Err(e) => {
                let r = failed_drain_report(&e, self.config.drain_timeout);
                (self.on_report)(&r);
                drain.publish.send_replace(Some(r.clone()));
                r
            }
        };
        tracing::info!(
            drain_id = %report.drain_id,
            outcome = report.outcome.as_str(),
            total_ms = report.durations.total_ms,
            report = %serde_json::to_string(&*report).unwrap_or_default(),
            "drain finished"
        );
        // The truth after the drain is whether the master still runs: a
        // drain that timed out or could not signal leaves NGINX serving.
        let running = self.master.as_ref().is_some_and(|m| !m.has_exited());
        self.snapshot.send_modify(|s| {
            if running {
                s.state = State::DrainFailed;
                s.detail = format!(
                    "drain {} finished ({}) and the nginx master still runs",
                    report.drain_id,
                    report.outcome.as_str()
                );
            } else {
                s.state = State::Drained;
                s.detail = format!(
                    "drain {} finished: {}",
                    report.drain_id,
                    report.outcome.as_str()
                );
                s.workers.clear();
            }
            s.last_report = Some(report.clone());
        });
    }
}

/// The report of a drain task that failed (a panic: only a bug gets
/// here), sent on the drain's own channel so that the hooks already
/// waiting on it are answered `error`, not "shutting down".
fn failed_drain_report(e: &tokio::task::JoinError, timeout: Duration) -> Arc<Report> {
    let msg = format!("the drain task failed: {e}; please report this as a bug");
    tracing::error!("{msg}");
    let clock = Clock::now();
    Arc::new(immediate_report(
        drain_id(clock.wall, std::process::id()),
        clock,
        String::new(),
        &NotFound::Unusable(msg),
        timeout,
    ))
}

/// The report for a hook that found nothing to drain.
fn immediate_report(
    id: String,
    clock: Clock,
    peer: String,
    problem: &NotFound,
    timeout: Duration,
) -> Report {
    let (outcome, message) = match problem {
        NotFound::NotRunning(m) => (Outcome::NotRunning, format!("nothing to drain: {m}")),
        NotFound::Unusable(m) => (Outcome::Error, m.clone()),
    };
    let now = Instant::now();
    Report {
        drain_id: id,
        outcome,
        message,
        master_pid: None,
        master_title: None,
        workers_at_start: Vec::new(),
        workers_left: Vec::new(),
        signal_method: None,
        hook_received_at: clock.stamp(clock.mono),
        hook_peer: peer,
        sigquit_at: None,
        sigterm_at: None,
        exited_at: None,
        exit_status: None,
        answered_at: clock.stamp(now),
        durations: Durations {
            hook_to_sigquit_ms: None,
            sigquit_to_exit_ms: None,
            total_ms: clock.millis_since_start(now),
        },
        drain_timeout_ms: ms(timeout),
        traffic: None,
        connections: None,
    }
}

/// A short id shared by a drain's log lines and its report: the hook's
/// time and the sidecar's pid, both folded into the 32 bits shown (sidecars
/// in a fleet often share a pid, so the time varies the id; the pid tells
/// apart drains that began in the same nanosecond).
fn drain_id(wall: SystemTime, pid: u32) -> String {
    let nanos = wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()) as u64;
    let time = (nanos as u32) ^ ((nanos >> 32) as u32);
    // An odd multiplier maps distinct pids to distinct words.
    format!("{:08x}", time ^ pid.wrapping_mul(0x9E37_79B9))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An owner with no NGINX to find (a pid file that does not exist).
    fn owner() -> Owner {
        let dir = std::env::temp_dir().join("nginx-drain-owner-test-none");
        let census = MonitorConfig {
            method: crate::vocab::CensusMethod::Proc,
            filter: Default::default(),
        };
        let (monitor, _) = Monitor::manual(crate::sockets::view::View::empty(
            Instant::now(),
            crate::vocab::CensusMethod::Proc,
            Default::default(),
        ));
        let (_, commands) = mpsc::channel(1);
        let (_, shutdown) = watch::channel(false);
        Owner {
            config: Config {
                locator: Locator::PidFile(dir.join("nginx.pid")),
                drain_timeout: Duration::from_secs(25),
                policy: WaitPolicy {
                    min_delay: Duration::from_millis(100),
                    max_delay: Duration::from_secs(15),
                },
                census,
                worker_shutdown_timeout: None,
                wiring: WiringConfig {
                    listen: "[::]:10266".parse().unwrap(),
                    pod_ip: None,
                    in_pod: false,
                    grace_period: None,
                    access: Arc::new(crate::auth::Access::new(Vec::new(), false, Vec::new())),
                },
                metrics_linger: Duration::ZERO,
                nginx_start_timeout: Duration::from_secs(60),
            },
            monitor,
            on_report: Arc::new(|_: &Report| {}),
            commands,
            snapshot: Arc::new(watch::channel(Snapshot::initial(String::new())).0),
            master: None,
            drain: None,
            last_problem: None,
            shutdown,
            exit_by: None,
            signal: None,
            shutdown_timeout: None,
            problems: Vec::new(),
            linger: None,
            started: Instant::now(),
            ever_found: false,
        }
    }

    /// A drain task that panics: the hooks already waiting on its report
    /// (as `Handle::prestop` waits) get an `error` report, not a closed
    /// channel, which the HTTP layer answers "shutting down".
    #[tokio::test]
    async fn hooks_waiting_on_a_drain_that_panics_get_an_error_report() {
        let mut owner = owner();
        let (tx, rx) = watch::channel(None::<Arc<Report>>);
        let publish = Arc::new(tx);
        let in_task = publish.clone();
        let task = tokio::spawn(async move {
            let _keep = in_task;
            if std::hint::black_box(true) {
                panic!("a bug");
            }
            unreachable!()
        });
        let waiting = tokio::spawn({
            let mut rx = rx.clone();
            async move {
                let r = rx.wait_for(Option::is_some).await.ok()?;
                r.clone()
            }
        });
        owner.drain = Some(InFlight {
            report: rx,
            publish,
            task: None,
            hook: Instant::now(),
        });
        let joined = task.await;
        owner.on_drain_finished(joined);
        let r = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("answered in time")
            .unwrap()
            .expect("answered, not closed");
        assert_eq!(r.outcome, Outcome::Error);
        assert!(r.message.contains("the drain task failed"), "{}", r.message);
    }

    #[test]
    fn the_drain_id_holds_both_the_time_and_the_pid() {
        let t = UNIX_EPOCH + Duration::from_nanos(1_764_600_000_123_456_789);
        assert_ne!(drain_id(t, 7), drain_id(t, 8), "the pid reaches the id");
        assert_ne!(
            drain_id(t, 7),
            drain_id(t + Duration::from_nanos(1), 7),
            "so does the time"
        );
        assert_eq!(drain_id(t, 7).len(), 8);
    }
}
