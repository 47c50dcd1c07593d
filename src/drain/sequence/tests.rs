//! The state machine's decisions, with a fake NGINX and made-up census
//! views under tokio's paused clock: no root, no processes, exact times.
//! (The integration tests in `tests/` drive a real NGINX.)

use std::sync::Mutex;

use tokio::time::sleep;

use super::*;
use crate::drain::WaitPolicy;
use crate::drain::target::{BoxFuture, ExitWatch};
use crate::nginx::config::ShutdownTimeout;
use crate::nginx::process::ExitStatus;
use crate::nginx::{Master, ProcId};
use crate::report::Clock;
use crate::vocab::{CensusMethod, CensusSource, CutBy, DrainPhase, QuitReason, SignalMethod};

use crate::sockets::arrivals::{ArrivalLog, Arrivals};
use crate::sockets::view::{OpenConn, OpenDetail, Sample};

const MS: Duration = Duration::from_millis(1);
const TICK: Duration = Duration::from_millis(100);

/// How the fake master answers a signal.
#[derive(Clone, Copy)]
enum Answer {
    /// Exits after this long, its workers first (a graceful or fast exit).
    ExitAfter(Duration),
    /// Does nothing.
    Ignore,
}

/// A master with two workers that exits as told.
struct Fake {
    master: Master,
    exit: Arc<watch::Sender<bool>>,
    workers: Vec<(Worker, Arc<watch::Sender<bool>>)>,
    on_quit: Answer,
    on_term: Answer,
    deny: bool,
    shutdown_timeout: ShutdownTimeout,
    sent: Mutex<Vec<(Sig, Instant)>>,
    /// How the master exits, as the kernel would show it.
    exit_status: Mutex<ExitStatus>,
}

struct FakeChild(watch::Receiver<bool>);

impl ExitWatch for FakeChild {
    fn has_exited(&self) -> bool {
        *self.0.borrow()
    }
    fn exited(&self) -> BoxFuture<'_> {
        let mut rx = self.0.clone();
        Box::pin(async move {
            let _ = rx.wait_for(|e| *e).await;
        })
    }
}

impl Fake {
    fn new(on_quit: Answer, on_term: Answer) -> Fake {
        Fake::with_titles(on_quit, on_term, "nginx: worker process")
    }

    fn with_titles(on_quit: Answer, on_term: Answer, title: &str) -> Fake {
        Fake {
            master: Master {
                id: ProcId {
                    pid: 7,
                    start_ticks: 1,
                },
                title: "nginx: master process nginx".into(),
            },
            exit: Arc::new(watch::channel(false).0),
            workers: (8..10)
                .map(|pid| {
                    let w = Worker {
                        pid,
                        title: title.into(),
                    };
                    (w, Arc::new(watch::channel(false).0))
                })
                .collect(),
            on_quit,
            on_term,
            deny: false,
            shutdown_timeout: ShutdownTimeout::Unset,
            sent: Mutex::new(Vec::new()),
            exit_status: Mutex::new(ExitStatus::Code(0)),
        }
    }

    /// Makes the master exit after `after`; its workers first when
    /// `graceful`, else they stay (the master was killed).
    fn exit_later(&self, after: Duration, graceful: bool) {
        let exit = self.exit.clone();
        let workers: Vec<_> = self.workers.iter().map(|(_, tx)| tx.clone()).collect();
        tokio::spawn(async move {
            sleep(after).await;
            if graceful {
                for w in workers {
                    w.send_replace(true);
                }
            }
            exit.send_replace(true);
        });
    }

    fn sent(&self) -> Vec<(Sig, Duration)> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .map(|(s, at)| (*s, at.elapsed()))
            .collect()
    }

    fn signals(&self) -> Vec<Sig> {
        self.sent.lock().unwrap().iter().map(|(s, _)| *s).collect()
    }
}

impl Target for Fake {
    fn master(&self) -> &Master {
        &self.master
    }
    fn exit_status(&self) -> ExitStatus {
        *self.exit_status.lock().unwrap()
    }
    fn signal_method(&self) -> SignalMethod {
        SignalMethod::Pidfd
    }
    fn signal(&self, sig: Sig) -> Result<(), SignalError> {
        if *self.exit.borrow() {
            return Err(SignalError::Exited(7));
        }
        if self.deny {
            return Err(SignalError::Permission(
                "cannot send SIGQUIT to nginx master pid 7 (EPERM): run nginx-drain with the same UID".into(),
            ));
        }
        self.sent.lock().unwrap().push((sig, Instant::now()));
        let answer = match sig {
            Sig::Quit => self.on_quit,
            Sig::Term => self.on_term,
        };
        if let Answer::ExitAfter(d) = answer {
            self.exit_later(d, true);
        }
        Ok(())
    }
    fn exited(&self) -> impl Future<Output = ()> + Send {
        let mut rx = self.exit.subscribe();
        async move {
            let _ = rx.wait_for(|e| *e).await;
        }
    }
    fn shutdown_timeout(&self) -> ShutdownTimeout {
        self.shutdown_timeout.clone()
    }
    fn children(&self) -> Vec<Child> {
        self.workers
            .iter()
            .map(|(w, tx)| Child {
                worker: w.clone(),
                exit: Arc::new(FakeChild(tx.subscribe())),
            })
            .collect()
    }
}

/// Census views as the monitor would publish them: one sample every
/// 100 ms, with `per_tick(t)` arrivals at time `t` since the hook.
struct FakeCensus {
    tx: watch::Sender<View>,
    log: ArrivalLog,
    seq: u64,
    /// The arrivals are requests on open connections (a keep-alive pool),
    /// not new connections.
    requests: bool,
}

/// Two client connections on port 80, open since `age` before now (before
/// any hook the tests make).
fn two_conns(age: Duration) -> Arc<OpenDetail> {
    let since = Instant::now() - age;
    Arc::new(OpenDetail {
        before_hook: 2,
        youngest: Some(since),
        oldest: [41_000, 41_001]
            .map(|p| OpenConn {
                local: "127.0.0.1:80".parse().unwrap(),
                peer: format!("10.0.0.9:{p}").parse().unwrap(),
                first_seen: since,
            })
            .to_vec(),
    })
}

impl FakeCensus {
    /// A monitor whose history holds `rate_per_tick` arrivals every 100 ms
    /// for the `history` before now.
    fn new(history: Duration, per_tick: u32) -> (Monitor, FakeCensus) {
        FakeCensus::with(history, per_tick, false)
    }

    /// [`FakeCensus::new`] whose arrivals are requests on open connections.
    fn pooled(history: Duration, per_tick: u32) -> (Monitor, FakeCensus) {
        FakeCensus::with(history, per_tick, true)
    }

    fn with(history: Duration, per_tick: u32, requests: bool) -> (Monitor, FakeCensus) {
        let now = Instant::now();
        let mut log = ArrivalLog::new(now.checked_sub(history).unwrap_or(now));
        let mut t = log.since + TICK;
        while t <= now && per_tick > 0 {
            let a = Arrivals {
                at: t,
                span: TICK,
                n: per_tick,
            };
            if requests {
                log.record_requests(a);
            } else {
                log.record(a);
            }
            t += TICK;
        }
        let view = View {
            sample: Sample {
                seq: 1,
                at: Some(now),
                arrivals: per_tick,
                open: [(80, 2)].into(),
                listening: [(80, 0)].into(),
                detail: Some(two_conns(Duration::from_secs(30))),
                ..Sample::default()
            },
            log: Arc::new(log.clone()),
            requests_seen: requests,
            ..View::empty(now, CensusMethod::Netlink, [80].into())
        };
        let (monitor, tx) = Monitor::manual(view);
        (
            monitor,
            FakeCensus {
                tx,
                log,
                seq: 1,
                requests,
            },
        )
    }

    /// Publishes samples every 100 ms for `how_long`, with `per_tick`
    /// arrivals while `t < arrivals_until` (from now), none after.
    fn run(mut self, how_long: Duration, arrivals_until: Duration, per_tick: u32) {
        tokio::spawn(async move {
            let start = Instant::now();
            let mut tick = tokio::time::interval_at(start + TICK, TICK);
            while start.elapsed() < how_long {
                let at = tick.tick().await;
                let n = if at - start <= arrivals_until {
                    per_tick
                } else {
                    0
                };
                let a = Arrivals { at, span: TICK, n };
                if self.requests {
                    self.log.record_requests(a);
                } else {
                    self.log.record(a);
                }
                self.seq += 1;
                let log = Arc::new(self.log.clone());
                let seq = self.seq;
                self.tx.send_modify(|v| {
                    v.sample = Sample {
                        seq,
                        at: Some(at),
                        arrivals: if self.requests { 0 } else { n },
                        requests: if self.requests { n } else { 0 },
                        open: [(80, 2)].into(),
                        listening: [(80, 0)].into(),
                        detail: v.sample.detail.clone(),
                        ..Sample::default()
                    };
                    v.log = log;
                });
            }
        });
    }
}

impl FakeCensus {
    /// Publishes a sample every 100 ms for `how_long`, each census ending
    /// `lag` after it began (a dump on another thread) and listing the two
    /// connections open until NGINX closes them at `closes_at`.
    fn run_slow(mut self, how_long: Duration, lag: Duration, closes_at: Instant) {
        tokio::spawn(async move {
            let start = Instant::now();
            let mut tick = tokio::time::interval_at(start + TICK, TICK);
            while start.elapsed() < how_long {
                let at = tick.tick().await;
                self.seq += 1;
                let seq = self.seq;
                let open = if at + lag >= closes_at { 0 } else { 2 };
                // Published when the census is done.
                tokio::time::sleep_until(at + lag).await;
                self.tx.send_modify(|v| {
                    v.sample = Sample {
                        seq,
                        at: Some(at),
                        done: Some(at + lag),
                        open: [(80, open)].into(),
                        listening: [(80, 0)].into(),
                        detail: v.sample.detail.clone(),
                        ..Sample::default()
                    };
                });
            }
        });
    }
}

fn request(timeout: Duration, max_delay: Duration) -> Request {
    Request {
        id: "test".into(),
        clock: Clock::now(),
        peer: "10.0.0.1:5000".into(),
        timeout,
        policy: WaitPolicy {
            min_delay: Duration::from_millis(250),
            max_delay,
        },
        worker_shutdown_timeout: None,
    }
}

async fn drain(fake: &Arc<Fake>, monitor: Monitor, timeout: Duration) -> Report {
    let snapshot = Arc::new(watch::channel(Snapshot::initial(String::new())).0);
    run(
        fake.clone(),
        request(timeout, Duration::from_secs(15)),
        snapshot,
        monitor,
    )
    .await
}

fn quiet_monitor() -> Monitor {
    let (monitor, census) = FakeCensus::new(Duration::ZERO, 0);
    census.run(Duration::from_secs(60), Duration::ZERO, 0);
    monitor
}

#[tokio::test(start_paused = true)]
async fn with_no_traffic_sigquit_goes_at_min_delay_and_the_exit_is_drained() {
    let fake = Arc::new(Fake::new(Answer::ExitAfter(40 * MS), Answer::Ignore));
    let r = drain(&fake, quiet_monitor(), Duration::from_secs(25)).await;
    assert_eq!(r.outcome, Outcome::Drained, "{}", r.message);
    assert_eq!(fake.signals(), [Sig::Quit]);
    assert_eq!(r.durations.hook_to_sigquit_ms, Some(250));
    assert_eq!(r.durations.sigquit_to_exit_ms, Some(40));
    assert!(r.workers_left.is_empty());
    let t = r.traffic.expect("traffic");
    assert_eq!(t.sigquit_reason, QuitReason::Quiet);
    assert_eq!(t.connections_at_sigquit, [(80, 2)].into());
}

#[tokio::test(start_paused = true)]
async fn nginx_keeps_serving_while_connections_arrive_and_quits_a_quiet_period_after_the_last() {
    // Ten arrivals a second for a minute before the hook and 3 s after it.
    let (monitor, census) = FakeCensus::new(Duration::from_secs(60), 1);
    census.run(Duration::from_secs(20), Duration::from_secs(3), 1);
    let fake = Arc::new(Fake::new(Answer::ExitAfter(40 * MS), Answer::Ignore));
    let r = drain(&fake, monitor, Duration::from_secs(25)).await;
    assert_eq!(r.outcome, Outcome::Drained, "{}", r.message);
    let waited = r.durations.hook_to_sigquit_ms.unwrap();
    // The last arrival at 3.0 s; a gap of 100 ms x 3 = 300 ms of silence.
    assert!(
        (3_300..=3_400).contains(&waited),
        "SIGQUIT {waited} ms after the hook"
    );
    let t = r.traffic.expect("traffic");
    assert_eq!(t.arrivals_during_wait, 30);
    assert_eq!(t.quiet_period_ms, 300);
    assert_eq!(fake.signals(), [Sig::Quit]);
}

/// The last look before a quiet SIGQUIT: the views say nothing arrived,
/// but the accept counter moved (a client connected between two looks).
/// The drain asks for a look and waits; only the view that accounts for the
/// accept, with its arrival, ends the wait, a quiet period later.
#[tokio::test(start_paused = true)]
async fn an_accept_no_view_accounts_for_holds_the_quiet_sigquit() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let counter = Arc::new(AtomicU64::new(1000));
    let (_, census) = FakeCensus::new(Duration::from_secs(60), 1);
    let reader = counter.clone();
    let view = census.tx.borrow().clone();
    let (monitor, tx) = Monitor::manual_counting(
        View {
            accepted: Some(1000),
            ..view
        },
        Box::new(move || {
            Some(crate::sockets::counters::Snmp {
                passive_opens: reader.load(Ordering::Relaxed),
                in_segs: 0,
            })
        }),
    );
    let mut log = census.log.clone();
    tokio::spawn(async move {
        // 200 ms after the hook a client connects; no view shows it...
        sleep(200 * MS).await;
        counter.store(1001, Ordering::Relaxed);
        // ...until the census that the last look asked for, at 500 ms.
        sleep(300 * MS).await;
        log.record(Arrivals {
            at: Instant::now(),
            span: MS,
            n: 1,
        });
        let log = Arc::new(log);
        tx.send_modify(|v| {
            v.log = log;
            v.accepted = Some(1001);
        });
    });
    let fake = Arc::new(Fake::new(Answer::ExitAfter(40 * MS), Answer::Ignore));
    let r = drain(&fake, monitor, Duration::from_secs(25)).await;
    assert_eq!(r.outcome, Outcome::Drained, "{}", r.message);
    let waited = r.durations.hook_to_sigquit_ms.unwrap();
    // Without the last look: SIGQUIT at the 300 ms quiet period.
    assert!(
        waited >= 500 + 300,
        "SIGQUIT {waited} ms after the hook, before the unaccounted accept was seen"
    );
    let t = r.traffic.expect("traffic");
    assert_eq!(t.arrivals_during_wait, 1);
    // Then a quiet period after that arrival: the 550 ms silence before it
    // is among the last 16 gaps, so the quiet period grew to 3 x 550 ms.
    assert_eq!(t.quiet_period_ms, 1648, "{}", t.quiet_period_reason);
    assert!(
        waited <= 500 + 1648 + 20,
        "SIGQUIT {waited} ms after the hook: {t:?}"
    );
}

/// A warm keep-alive pool (a balancer's) carries 200 requests a second and
/// no new connection: its requests hold the quit until they stop, like new
/// connections would, and the report counts them apart.
#[tokio::test(start_paused = true)]
async fn requests_on_a_warm_pool_hold_the_quit_until_they_stop() {
    let (monitor, census) = FakeCensus::pooled(Duration::from_secs(60), 20);
    census.run(Duration::from_secs(20), Duration::from_secs(3), 20);
    let fake = Arc::new(Fake::new(Answer::ExitAfter(40 * MS), Answer::Ignore));
    let r = drain(&fake, monitor, Duration::from_secs(25)).await;
    assert_eq!(r.outcome, Outcome::Drained, "{}", r.message);
    let waited = r.durations.hook_to_sigquit_ms.unwrap();
    // The last request at 3.0 s, then the 250 ms floor of silence.
    assert!(
        (3_250..=3_350).contains(&waited),
        "SIGQUIT {waited} ms after the hook"
    );
    let t = r.traffic.expect("traffic");
    assert_eq!(t.sigquit_reason, QuitReason::Quiet);
    assert_eq!(t.arrivals_during_wait, 0, "no new connection");
    assert_eq!(t.requests_during_wait, 600);
    assert!(t.requests_seen);
    assert_eq!(t.requests_per_second_before_hook, 200.0);
    assert!(t.last_request_at.is_some() && t.last_arrival_at.is_none());
    assert!(
        r.message
            .contains("0 new connections and 600 requests on open connections"),
        "{}",
        r.message
    );
}

/// A pool pinned to the pod (through a ClusterIP, conntrack keeps its
/// connections) never stops: the wait ends at --max-delay, and the report
/// says that requests were still arriving, never that every request
/// finished.
#[tokio::test(start_paused = true)]
async fn a_pinned_pool_is_quit_at_max_delay_and_the_report_says_requests_still_came() {
    let (monitor, census) = FakeCensus::pooled(Duration::from_secs(60), 20);
    census.run(Duration::from_secs(40), Duration::from_secs(40), 20);
    let fake = Arc::new(Fake::new(Answer::ExitAfter(40 * MS), Answer::Ignore));
    let r = drain(&fake, monitor, Duration::from_secs(25)).await;
    assert_eq!(r.outcome, Outcome::Drained, "{}", r.message);
    assert_eq!(r.durations.hook_to_sigquit_ms, Some(15_000));
    let t = r.traffic.as_ref().expect("traffic");
    assert_eq!(t.sigquit_reason, QuitReason::MaxDelay);
    assert!(
        r.message.contains("still arriving") && r.message.contains("ClusterIP"),
        "{}",
        r.message
    );
    assert!(
        !r.message.contains("every in-flight request finished"),
        "{}",
        r.message
    );
}

/// The last look before a quiet SIGQUIT: the views show the pool silent,
/// but their census predates the due time and a segment arrived since (a
/// request only a census sees). The drain asks for a census and waits; the
/// one that shows the request moves the quit a quiet period later.
#[tokio::test(start_paused = true)]
async fn a_request_after_the_last_census_holds_the_quiet_sigquit() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let segments = Arc::new(AtomicU64::new(5000));
    let (_, census) = FakeCensus::pooled(Duration::from_secs(60), 1);
    let reader = segments.clone();
    let view = census.tx.borrow().clone();
    let (monitor, tx) = Monitor::manual_counting(
        View {
            segments_at_census: Some(5000),
            ..view
        },
        Box::new(move || {
            Some(crate::sockets::counters::Snmp {
                passive_opens: 0,
                in_segs: reader.load(Ordering::Relaxed),
            })
        }),
    );
    let mut log = census.log.clone();
    tokio::spawn(async move {
        // 200 ms after the hook a request comes on an open connection: the
        // counter moves, no census shows it...
        sleep(200 * MS).await;
        segments.store(5002, Ordering::Relaxed);
        // ...until the census the last look asked for, at 500 ms.
        sleep(300 * MS).await;
        log.record_requests(Arrivals {
            at: Instant::now() - 300 * MS,
            span: 300 * MS,
            n: 1,
        });
        let log = Arc::new(log);
        tx.send_modify(|v| {
            v.log = log;
            v.sample.at = Some(Instant::now());
            v.sample.seq += 1;
            v.segments_at_census = Some(5002);
        });
    });
    let fake = Arc::new(Fake::new(Answer::ExitAfter(40 * MS), Answer::Ignore));
    let r = drain(&fake, monitor, Duration::from_secs(25)).await;
    assert_eq!(r.outcome, Outcome::Drained, "{}", r.message);
    let waited = r.durations.hook_to_sigquit_ms.unwrap();
    let t = r.traffic.expect("traffic");
    // Without the last look: SIGQUIT at the 300 ms quiet period.
    assert!(
        waited >= 500,
        "SIGQUIT {waited} ms after the hook, before the census that saw the request"
    );
    assert_eq!(t.requests_during_wait, 1);
    assert!(
        waited >= 200 + t.quiet_period_ms,
        "a quiet period after the request: {waited} ms, {t:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_quit_that_does_not_finish_is_forced_at_the_escalation_point_once() {
    let fake = Arc::new(Fake::new(Answer::Ignore, Answer::ExitAfter(100 * MS)));
    let r = drain(&fake, quiet_monitor(), Duration::from_secs(10)).await;
    assert_eq!(r.outcome, Outcome::Forced, "{}", r.message);
    assert_eq!(fake.signals(), [Sig::Quit, Sig::Term]);
    // Budget 10 s: answer margin 250 ms, fast shutdown 2 s: SIGTERM at 7.75 s.
    let sent = fake.sent();
    assert_eq!(sent[0].1 - sent[1].1, Duration::from_millis(7_500));
    assert_eq!(r.durations.total_ms, 7_850);
}

#[tokio::test(start_paused = true)]
async fn a_master_that_ignores_sigterm_too_is_answered_timeout_before_the_budget_ends() {
    let fake = Arc::new(Fake::new(Answer::Ignore, Answer::Ignore));
    let r = drain(&fake, quiet_monitor(), Duration::from_secs(10)).await;
    assert_eq!(r.outcome, Outcome::Timeout, "{}", r.message);
    assert_eq!(r.durations.total_ms, 9_750, "250 ms before the budget ends");
    assert_eq!(r.workers_left.len(), 2);
    assert!(r.message.contains("SIGKILL"), "{}", r.message);
}

/// The whole tree killed at once (SIGKILL to master and workers): no
/// worker is left behind, yet the kernel's exit status says it was killed,
/// and the report says so; a report never says "every in-flight request
/// finished" while connections were open at an exit it could not see.
#[tokio::test(start_paused = true)]
async fn a_tree_killed_at_once_is_nginx_died_and_an_unseen_exit_claims_nothing() {
    let fake = Arc::new(Fake::new(Answer::Ignore, Answer::Ignore));
    *fake.exit_status.lock().unwrap() = ExitStatus::Signal(9);
    let monitor = quiet_monitor();
    fake.exit_later(Duration::from_millis(1500), true);
    let r = drain(&fake, monitor, Duration::from_secs(25)).await;
    assert_eq!(r.outcome, Outcome::NginxDied, "{}", r.message);
    assert!(r.message.contains("killed by SIGKILL"), "{}", r.message);
    assert_eq!(r.exit_status.as_deref(), Some("killed by SIGKILL"));
    assert!(r.contradictions().is_empty(), "{:?}", r.contradictions());
    // The same exit, its status unseen: drained, as a graceful exit would
    // be, but the two connections the last census saw are not claimed.
    let fake = Arc::new(Fake::new(Answer::Ignore, Answer::Ignore));
    *fake.exit_status.lock().unwrap() = ExitStatus::Unknown;
    fake.exit_later(Duration::from_millis(1500), true);
    let r = drain(&fake, quiet_monitor(), Duration::from_secs(25)).await;
    assert_eq!(r.outcome, Outcome::Drained, "{}", r.message);
    assert!(
        !r.message.contains("every in-flight request finished")
            && r.message.contains("unless its workers were killed"),
        "{}",
        r.message
    );
    assert!(r.contradictions().is_empty(), "{:?}", r.contradictions());
}

#[tokio::test(start_paused = true)]
async fn a_master_killed_with_its_workers_alive_is_nginx_died_not_drained() {
    let fake = Arc::new(Fake::new(Answer::Ignore, Answer::Ignore));
    let monitor = quiet_monitor();
    // Killed 1 s after the hook (after SIGQUIT at 250 ms); workers stay.
    fake.exit_later(Duration::from_secs(1), false);
    let r = drain(&fake, monitor, Duration::from_secs(25)).await;
    assert_eq!(r.outcome, Outcome::NginxDied, "{}", r.message);
    assert_eq!(r.workers_left.len(), 2);
    assert_eq!(fake.signals(), [Sig::Quit]);
}

#[tokio::test(start_paused = true)]
async fn an_exit_before_our_sigquit_is_nginx_died_and_nothing_is_signalled() {
    let (monitor, census) = FakeCensus::new(Duration::from_secs(60), 1);
    census.run(Duration::from_secs(20), Duration::from_secs(10), 1);
    let fake = Arc::new(Fake::new(Answer::ExitAfter(MS), Answer::Ignore));
    fake.exit_later(Duration::from_secs(1), true);
    let r = drain(&fake, monitor, Duration::from_secs(25)).await;
    assert_eq!(r.outcome, Outcome::NginxDied, "{}", r.message);
    assert!(
        r.message.contains("before the drain sent SIGQUIT"),
        "{}",
        r.message
    );
    assert!(fake.signals().is_empty());
    assert_eq!(r.durations.total_ms, 1_000);
}

#[tokio::test(start_paused = true)]
async fn an_nginx_already_quitting_gets_no_second_sigquit() {
    let fake = Arc::new(Fake::with_titles(
        Answer::Ignore,
        Answer::Ignore,
        "nginx: worker process is shutting down",
    ));
    fake.exit_later(Duration::from_millis(500), true);
    let r = drain(&fake, quiet_monitor(), Duration::from_secs(25)).await;
    assert_eq!(r.outcome, Outcome::Drained, "{}", r.message);
    assert!(fake.signals().is_empty());
    assert_eq!(
        r.traffic.unwrap().sigquit_reason,
        QuitReason::AlreadyQuitting
    );
}

#[tokio::test(start_paused = true)]
async fn without_any_census_sigquit_waits_for_max_delay() {
    let (monitor, census) = FakeCensus::new(Duration::ZERO, 0);
    census.tx.send_modify(|v| {
        v.sample = Sample::default();
        v.error = Some("netlink and /proc/net/tcp both failed".into());
    });
    let fake = Arc::new(Fake::new(Answer::ExitAfter(MS), Answer::Ignore));
    let snapshot = Arc::new(watch::channel(Snapshot::initial(String::new())).0);
    let r = run(
        fake.clone(),
        request(Duration::from_secs(25), Duration::from_secs(2)),
        snapshot,
        monitor,
    )
    .await;
    assert_eq!(r.outcome, Outcome::Drained, "{}", r.message);
    assert_eq!(r.durations.hook_to_sigquit_ms, Some(2_000));
    let t = r.traffic.unwrap();
    assert_eq!(t.sigquit_reason, QuitReason::MaxDelay);
    assert_eq!(t.census, CensusSource::Unavailable);
}

#[tokio::test(start_paused = true)]
async fn a_census_monitor_that_stops_never_holds_the_drain_past_its_deadlines() {
    let (monitor, census) = FakeCensus::new(Duration::ZERO, 0);
    drop(census);
    let fake = Arc::new(Fake::new(Answer::Ignore, Answer::ExitAfter(MS)));
    let r = drain(&fake, monitor, Duration::from_secs(10)).await;
    assert_eq!(r.outcome, Outcome::Forced, "{}", r.message);
    assert_eq!(r.durations.hook_to_sigquit_ms, Some(250));
}

#[tokio::test(start_paused = true)]
async fn a_refused_signal_ends_the_drain_with_an_error_that_names_the_fix() {
    let mut fake = Fake::new(Answer::Ignore, Answer::Ignore);
    fake.deny = true;
    let fake = Arc::new(fake);
    let r = drain(&fake, quiet_monitor(), Duration::from_secs(25)).await;
    assert_eq!(r.outcome, Outcome::Error);
    assert!(r.message.contains("same UID"), "{}", r.message);
    assert_eq!(r.durations.total_ms, 250);
}

#[tokio::test(start_paused = true)]
async fn status_shows_each_phase_as_the_drain_moves() {
    let fake = Arc::new(Fake::new(
        Answer::ExitAfter(Duration::from_secs(2)),
        Answer::Ignore,
    ));
    let monitor = quiet_monitor();
    let snapshot = Arc::new(watch::channel(Snapshot::initial(String::new())).0);
    let mut rx = snapshot.subscribe();
    let task = tokio::spawn(run(
        fake.clone(),
        request(Duration::from_secs(25), Duration::from_secs(15)),
        snapshot,
        monitor,
    ));
    let mut phases: Vec<DrainPhase> = Vec::new();
    while rx.changed().await.is_ok() {
        let phase = rx.borrow_and_update().drain.as_ref().map(|d| d.phase);
        if let Some(p) = phase
            && phases.last() != Some(&p)
        {
            phases.push(p);
        }
    }
    let r = task.await.unwrap();
    assert_eq!(r.outcome, Outcome::Drained);
    // `quit` lasts no time at all (SIGQUIT is one call): a watcher sees
    // the phases around it.
    assert_eq!(
        phases,
        [
            DrainPhase::AwaitQuiet,
            DrainPhase::AwaitExit,
            DrainPhase::Done
        ]
    );
}

/// A census that began before NGINX's timer fired but listed the sockets
/// after it (a slow dump, off the runtime thread) saw the streams closed:
/// it is no evidence of what was open before the timer, the one that
/// ended before it is (the WebSocket case in CI: "drained" where the timer
/// had cut it).
#[tokio::test(start_paused = true)]
async fn what_the_timer_cut_is_judged_by_a_census_that_ended_before_it() {
    let start = Instant::now();
    let (monitor, census) = FakeCensus::new(Duration::ZERO, 0);
    // SIGQUIT at the 250 ms minimum, the timer 4 s later; the master's
    // exit 100 ms after that, after a census that began before the timer
    // and ended after it.
    census.run_slow(
        Duration::from_secs(60),
        80 * MS,
        start + Duration::from_millis(4_250),
    );
    let mut fake = Fake::new(
        Answer::ExitAfter(Duration::from_millis(4_100)),
        Answer::Ignore,
    );
    fake.shutdown_timeout = ShutdownTimeout::Set(Duration::from_secs(4));
    let fake = Arc::new(fake);
    let r = drain(&fake, monitor, Duration::from_secs(25)).await;
    assert_eq!(r.outcome, Outcome::StreamsClosed, "{}", r.message);
    let c = r.connections.expect("connections");
    assert_eq!(
        (c.cut, c.cut_by),
        (2, Some(CutBy::NginxWorkerShutdownTimeout))
    );
}

#[tokio::test(start_paused = true)]
async fn streams_closed_by_nginxs_timer_are_their_own_success_and_are_listed() {
    // Two WebSockets open for 30 s at the hook; NGINX closes them 4 s after
    // SIGQUIT, when its worker_shutdown_timeout fires, and exits.
    let mut fake = Fake::new(Answer::ExitAfter(Duration::from_secs(4)), Answer::Ignore);
    fake.shutdown_timeout = ShutdownTimeout::Set(Duration::from_secs(4));
    let fake = Arc::new(fake);
    let r = drain(&fake, quiet_monitor(), Duration::from_secs(25)).await;
    assert_eq!(r.outcome, Outcome::StreamsClosed, "{}", r.message);
    assert_eq!(r.http_status(), 200);
    let c = r.connections.expect("connections");
    assert_eq!((c.cut, c.cut_open_before_hook), (2, 2));
    assert_eq!(c.cut_by, Some(CutBy::NginxWorkerShutdownTimeout));
    assert_eq!(c.cut_per_port, [(80, 2)].into());
    assert_eq!(c.worker_shutdown_timeout, "4s");
    assert_eq!(c.cut_peers.len(), 2);
    assert_eq!(c.cut_peers[0].peer, "10.0.0.9:41000");
    assert!(
        c.cut_peers
            .iter()
            .all(|p| p.open_before_hook && p.age_ms >= 34_000)
    );
    assert!(
        r.message
            .contains("worker_shutdown_timeout closed 2 connections"),
        "{}",
        r.message
    );
}

#[tokio::test(start_paused = true)]
async fn connections_that_finish_before_nginxs_timer_are_not_cut() {
    // The same connections, but NGINX exits 2 s after SIGQUIT, before its
    // 10 s timer: they were downloads that finished.
    let mut fake = Fake::new(Answer::ExitAfter(Duration::from_secs(2)), Answer::Ignore);
    fake.shutdown_timeout = ShutdownTimeout::Set(Duration::from_secs(10));
    let fake = Arc::new(fake);
    let r = drain(&fake, quiet_monitor(), Duration::from_secs(25)).await;
    assert_eq!(r.outcome, Outcome::Drained, "{}", r.message);
    let c = r.connections.unwrap();
    assert_eq!((c.open_at_exit, c.cut), (2, 0));
    assert!(c.cut_peers.is_empty() && c.cut_by.is_none());
    // Open in the last census: said to have ended before the exit, as a
    // graceful exit implies, not claimed (killed workers look the same).
    assert!(
        r.message.contains("2 connections open in the last census")
            && r.message.contains("ended in between")
            && !r.message.contains("every in-flight request finished"),
        "{}",
        r.message
    );
}

#[tokio::test(start_paused = true)]
async fn forced_by_websockets_says_what_held_nginx_and_what_helps() {
    let fake = Arc::new(Fake::new(Answer::Ignore, Answer::ExitAfter(100 * MS)));
    let r = drain(&fake, quiet_monitor(), Duration::from_secs(25)).await;
    assert_eq!(r.outcome, Outcome::Forced, "{}", r.message);
    let c = r.connections.unwrap();
    assert_eq!((c.cut, c.cut_by), (2, Some(CutBy::Sigterm)));
    assert!(
        r.message
            .contains("2 connections open since before the hook, 53 s old: WebSockets or streams")
            && r.message
                .contains("worker_shutdown_timeout to at most 6s 750ms")
            && r.message.contains("it is not set"),
        "{}",
        r.message
    );
}

#[tokio::test(start_paused = true)]
async fn status_after_the_drain_shows_it_done_with_final_counts() {
    let mut fake = Fake::new(Answer::ExitAfter(Duration::from_secs(4)), Answer::Ignore);
    fake.shutdown_timeout = ShutdownTimeout::Set(Duration::from_secs(4));
    let fake = Arc::new(fake);
    let snapshot = Arc::new(watch::channel(Snapshot::initial(String::new())).0);
    let rx = snapshot.subscribe();
    run(
        fake.clone(),
        request(Duration::from_secs(25), Duration::from_secs(15)),
        snapshot,
        quiet_monitor(),
    )
    .await;
    let snap = rx.borrow();
    let d = snap.drain.as_ref().unwrap();
    assert_eq!(d.phase, DrainPhase::Done);
    assert_eq!(d.cut_connections, Some(2));
    assert!(d.open_connections.is_empty() && d.workers_remaining.is_empty());
}
