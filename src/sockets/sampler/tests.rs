//! The sampler's decisions under tokio's paused clock, against a scripted
//! kernel: a socket table, a queue of destroy events, an accept counter and
//! a CPU clock that each census advances. No root, no NGINX, no wall time.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::*;
use crate::sockets::Activity;
use crate::sockets::arrivals::Kind;
use crate::sockets::counters::Snmp;
use crate::sockets::monitor::Monitor;
use crate::sockets::state;
use crate::sockets::view::Counter;

/// What the scripted kernel holds.
#[derive(Default)]
struct World {
    socks: Vec<Sock>,
    destroyed: VecDeque<Sock>,
    censuses: u32,
    /// CPU time each census costs.
    census_cpu: Duration,
    /// The kernel dropped destroy events (the socket's receive buffer
    /// overflowed): the next read reports it, as ENOBUFS does.
    overrun: bool,
    /// The next this many censuses fail.
    failing: u32,
}

#[derive(Clone)]
struct Script {
    world: Arc<Mutex<World>>,
    ready: Arc<Notify>,
    accepted: Arc<AtomicU64>,
    segments: Arc<AtomicU64>,
}

impl Script {
    fn new() -> Script {
        let s = Script {
            world: Arc::default(),
            ready: Arc::new(Notify::new()),
            accepted: Arc::new(AtomicU64::new(1000)),
            segments: Arc::new(AtomicU64::new(5000)),
        };
        s.world
            .lock()
            .unwrap()
            .socks
            .push(sock(state::LISTEN, "0.0.0.0:80", "0.0.0.0:0"));
        s
    }

    fn counter(&self) -> Counter {
        let a = self.accepted.clone();
        let segs = self.segments.clone();
        Box::new(move || {
            Some(Snmp {
                passive_opens: a.load(Ordering::Relaxed),
                in_segs: segs.load(Ordering::Relaxed),
            })
        })
    }

    /// NGINX accepts a connection from `peer` that stays open.
    fn open(&self, peer: &str) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.world
            .lock()
            .unwrap()
            .socks
            .push(sock(state::ESTABLISHED, "10.0.0.5:80", peer));
    }

    /// A connection from `peer` ends: gone from the table, and its destroy
    /// event queued. `accepted`: it was accepted since the last look and no
    /// census saw it (a short connection).
    fn end(&self, peer: &str, accepted: bool) {
        if accepted {
            self.accepted.fetch_add(1, Ordering::Relaxed);
        }
        let s = sock(state::CLOSE, "10.0.0.5:80", peer);
        let mut w = self.world.lock().unwrap();
        w.socks.retain(|x| x.peer != s.peer);
        w.destroyed.push_back(s);
        drop(w);
        self.ready.notify_one();
    }

    /// `n` short connections are accepted and end, and the kernel drops
    /// their destroy events.
    fn lose(&self, n: u64) {
        self.accepted.fetch_add(n, Ordering::Relaxed);
        self.world.lock().unwrap().overrun = true;
        self.ready.notify_one();
    }

    /// A keep-alive client opened a connection before the monitor started
    /// (a warm pool): NGINX holds it open with its `tcp_info`.
    fn pooled(&self, peer: &str) {
        let mut s = sock(state::ESTABLISHED, "10.0.0.5:80", peer);
        s.activity = Some(Activity {
            data_segs_in: 1,
            data_segs_out: 1,
            last_data_recv_ms: 0,
            queued: 0,
        });
        self.world.lock().unwrap().socks.push(s);
    }

    /// A request and its reply on the open connection from `peer`: its
    /// counters move, and so does the namespace's segment counter (the
    /// accept counter does not). `ago_ms`: how long before the next census
    /// the kernel will say it came.
    fn request(&self, peer: &str, ago_ms: u32) {
        let peer: SocketAddr = peer.parse().unwrap();
        let mut w = self.world.lock().unwrap();
        let s = w.socks.iter_mut().find(|s| s.peer == peer).expect("open");
        let a = s.activity.as_mut().expect("tcp_info");
        a.data_segs_in += 1;
        a.data_segs_out += 1;
        a.last_data_recv_ms = ago_ms;
        drop(w);
        self.segments.fetch_add(2, Ordering::Relaxed);
    }

    fn censuses(&self) -> u32 {
        self.world.lock().unwrap().censuses
    }
}

impl Sources for Script {
    fn method(&self) -> CensusMethod {
        CensusMethod::Netlink
    }

    fn watches_destroyed(&self) -> bool {
        true
    }

    async fn destroyed_ready(&self) {
        loop {
            let pending = {
                let w = self.world.lock().unwrap();
                !w.destroyed.is_empty() || w.overrun
            };
            if pending {
                return;
            }
            self.ready.notified().await;
        }
    }

    fn read_destroyed(&mut self, out: &mut Vec<Sock>) -> io::Result<bool> {
        let mut w = self.world.lock().unwrap();
        out.extend(w.destroyed.drain(..));
        Ok(std::mem::take(&mut w.overrun))
    }

    fn stop_destroyed(&mut self) {}

    async fn census(&mut self, mut job: CensusJob) -> CensusDone {
        let mut guard = self.world.lock().unwrap();
        let w = &mut *guard;
        w.censuses += 1;
        let cpu = w.census_cpu;
        if w.failing > 0 {
            w.failing -= 1;
            return CensusDone {
                job,
                result: Err(io::Error::other("the census failed (scripted)")),
                cpu,
            };
        }
        let result = Census::take_with(
            &w.socks,
            &job.filter,
            &mut job.ports_seen,
            job.before.take(),
            (job.detail, job.tick),
            job.time_wait_arrives,
        );
        CensusDone {
            job,
            result: Ok(result),
            cpu,
        }
    }
}

fn sock(st: u8, local: &str, peer: &str) -> Sock {
    Sock {
        state: st,
        local: local.parse().unwrap(),
        peer: peer.parse().unwrap(),
        rx_queue: 0,
        inode: 1,
        activity: None,
    }
}

fn spawn(script: &Script) -> Monitor {
    spawn_with(script, PortFilter::default())
}

fn spawn_with(script: &Script, filter: PortFilter) -> Monitor {
    let config = MonitorConfig {
        method: CensusMethod::Netlink,
        filter,
    };
    Monitor::spawn_with(config, script.clone(), script.counter())
}

/// Lets the monitor run for `d` of paused time.
async fn run_for(d: Duration) {
    tokio::time::sleep(d).await;
}

const LOOK: Duration = Duration::from_millis(250);

#[tokio::test(start_paused = true)]
async fn a_connection_that_stays_open_is_found_by_a_census_and_counted_once() {
    let k = Script::new();
    let m = spawn(&k);
    run_for(LOOK).await;
    let before = k.censuses();
    k.open("10.1.0.7:40000");
    run_for(LOOK).await;
    let v = m.view().borrow().clone();
    assert!(
        k.censuses() > before,
        "an accept nobody accounted for asks for a census"
    );
    assert_eq!(v.log.total(), 1);
    assert_eq!(v.sample.open.get(&80), Some(&1));
    assert_eq!(v.unattributed, 0);
    // Its end is no second arrival: a census saw it alive.
    k.end("10.1.0.7:40000", false);
    run_for(LOOK).await;
    assert_eq!(m.view().borrow().log.total(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_ended_before_any_census_counts_by_its_destroy_event() {
    let k = Script::new();
    let m = spawn(&k);
    run_for(LOOK).await;
    let before = k.censuses();
    k.end("10.1.0.8:40001", true);
    run_for(LOOK).await;
    let v = m.view().borrow().clone();
    assert_eq!(v.log.total(), 1, "counted once, from its destroy event");
    assert_eq!(v.unattributed, 0, "the event accounts for the accept");
    assert_eq!(k.censuses(), before, "so no census was needed");
}

#[tokio::test(start_paused = true)]
async fn accepts_whose_destroy_events_were_lost_count_as_arrivals() {
    let k = Script::new();
    let m = spawn(&k);
    run_for(LOOK).await;
    // One short connection with its event, four without: the census finds
    // none of them open, so only the lost-event rule can count them.
    k.end("10.1.0.8:40001", true);
    k.lose(4);
    run_for(LOOK * 4).await;
    let v = m.view().borrow().clone();
    assert_eq!(
        v.log.total(),
        5,
        "every accept nothing else accounts for is an arrival"
    );
    assert_eq!(v.unattributed, 0, "and none is left unattributed");
}

#[tokio::test(start_paused = true)]
async fn destroy_events_are_stamped_when_read_not_spread_over_a_look() {
    let k = Script::new();
    let m = spawn(&k);
    run_for(LOOK).await;
    for i in 0..3u16 {
        k.end(&format!("10.1.0.9:{}", 41000 + i), true);
        run_for(Duration::from_millis(300)).await;
    }
    let gaps = crate::drain::quiet::gaps(&m.view().borrow().log, Kind::Connections);
    assert_eq!(
        gaps,
        vec![Duration::from_millis(300); 2],
        "the gaps between the events, as they came"
    );
}

#[tokio::test(start_paused = true)]
async fn the_last_look_before_sigquit_sees_an_accept_no_view_has_yet() {
    let k = Script::new();
    let m = spawn(&k);
    m.set_fast(true);
    run_for(LOOK).await;
    let view = m.view().borrow().clone();
    assert!(!m.accepted_since(&view), "nothing new");
    // A client connects between two looks: the drain's last look reads the
    // counter and must not take the silence for quiet.
    k.open("10.1.0.10:42000");
    assert!(m.accepted_since(&view), "the counter moved: look again");
    let mut rx = m.view();
    rx.borrow_and_update();
    m.look_now();
    let view = tokio::time::timeout(LOOK, async {
        loop {
            rx.changed().await.unwrap();
            let v = rx.borrow_and_update().clone();
            if v.log.total() == 1 {
                return v;
            }
        }
    })
    .await
    .expect("the look found the arrival");
    assert_eq!(view.unattributed, 0);
    assert!(!m.accepted_since(&view), "the new view accounts for it");
}

#[tokio::test(start_paused = true)]
async fn censuses_are_spaced_by_their_own_cpu_cost() {
    let k = Script::new();
    // A costly census (a pod with very many connections): 10 ms of CPU.
    k.world.lock().unwrap().census_cpu = Duration::from_millis(10);
    let _m = spawn(&k);
    run_for(LOOK).await;
    let before = k.censuses();
    // A new connection that stays open every 50 ms for 5 s: each asks for a
    // census, and at 50 times 10 ms apart at most 11 may run.
    for i in 0..100u16 {
        k.open(&format!("10.1.1.1:{}", 43000 + i));
        run_for(Duration::from_millis(50)).await;
    }
    let taken = k.censuses() - before;
    assert!((5..=11).contains(&taken), "{taken} censuses in 5 s");
}

#[tokio::test(start_paused = true)]
async fn the_kubelets_probes_are_budgeted_and_its_clients_counted() {
    let k = Script::new();
    let m = spawn(&k);
    run_for(LOOK).await;
    m.learn_kubelet("10.2.0.1".parse().unwrap());
    run_for(LOOK).await;
    // 20 connections a second from the kubelet's address for 5 s: its
    // probes (2 a second, 3 at once) are not arrivals, the rest are.
    for i in 0..100u16 {
        k.end(&format!("10.2.0.1:{}", 44000 + i), true);
        run_for(Duration::from_millis(50)).await;
    }
    let v = m.view().borrow().clone();
    let total = v.log.total();
    assert!((84..=90).contains(&total), "{total} of 100 counted");
    assert_eq!(
        v.kubelet_peers,
        vec!["10.2.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    // After a quiet while, a probe a second, alone: none counted.
    run_for(Duration::from_secs(2)).await;
    let before = m.view().borrow().log.total();
    for i in 0..5u16 {
        k.end(&format!("10.2.0.1:{}", 45000 + i), true);
        run_for(Duration::from_secs(1)).await;
    }
    assert_eq!(m.view().borrow().log.total(), before);
}

#[tokio::test(start_paused = true)]
async fn the_first_census_after_the_hook_stamps_what_it_first_sees_as_before_the_hook() {
    let k = Script::new();
    let m = spawn(&k);
    run_for(LOOK).await;
    // A connection accepted just before the hook, not yet seen by a census
    // (no look ran in between).
    k.open("10.1.2.3:46000");
    let hook = Instant::now();
    m.set_fast(true);
    run_for(LOOK).await;
    let v = m.view().borrow().clone();
    let detail = v.sample.detail.clone().expect("detail during a drain");
    let conn = detail
        .oldest
        .iter()
        .find(|c| c.peer == "10.1.2.3:46000".parse::<SocketAddr>().unwrap())
        .expect("the census at the hook lists it");
    assert_eq!(detail.before_hook, 1, "counted as open before the hook");
    assert!(
        conn.first_seen < hook,
        "no accept since the hook: it was open before it"
    );
}

/// Requests on a connection that was already open (a warm keep-alive pool)
/// move no accept counter: the segment counter asks for a census, whose
/// `tcp_info` counts them, dated when the kernel says the latest came. With
/// nothing arriving, no census runs.
#[tokio::test(start_paused = true)]
async fn requests_on_a_warm_pool_are_arrivals_dated_by_tcp_info() {
    let k = Script::new();
    k.pooled("10.3.0.1:50000");
    let m = spawn(&k);
    run_for(LOOK).await;
    let quiet = k.censuses();
    run_for(Duration::from_secs(5)).await;
    assert_eq!(k.censuses(), quiet, "nothing arrived: no census");
    assert_eq!(m.view().borrow().log.total(), 0, "the pool is no arrival");
    assert!(m.view().borrow().requests_seen);
    // A request a second for 3 s, each seen 40 ms after it came.
    let mut sent = Vec::new();
    for _ in 0..3 {
        k.request("10.3.0.1:50000", 40);
        sent.push(Instant::now());
        run_for(Duration::from_secs(1)).await;
    }
    let v = m.view().borrow().clone();
    assert_eq!(v.log.total(), 3, "each request once");
    assert_eq!(v.log.last_of(Kind::Connections), None, "no new connection");
    let last = v.log.last_of(Kind::Requests).expect("a request");
    let census = v.sample.at.expect("a census");
    assert_eq!(
        census - last,
        Duration::from_millis(40),
        "dated by tcp_info"
    );
    assert!(last >= *sent.last().unwrap() - Duration::from_millis(40));
    assert_eq!((v.sample.pooled_open, v.sample.pooled_idle), (1, 1));
    // The view knows what the counter said at its census: nothing since.
    assert!(!m.data_since(&v));
    k.request("10.3.0.1:50000", 0);
    assert!(m.data_since(&v), "a segment arrived after that census");
}

/// Requests that begin after an idle while are dated after the last look
/// that saw no segment arrive, not spread back over the whole while: the
/// gaps between them stay what they were (a spread over the idle 5 s would
/// have made the quiet period seconds long).
#[tokio::test(start_paused = true)]
async fn requests_after_an_idle_while_are_not_spread_over_it() {
    let k = Script::new();
    k.pooled("10.3.0.1:50000");
    let m = spawn(&k);
    // Between two looks, so that the first census after the idle while
    // finds several requests.
    run_for(Duration::from_millis(5_010)).await;
    for _ in 0..20 {
        k.request("10.3.0.1:50000", 0);
        run_for(Duration::from_millis(50)).await;
    }
    run_for(LOOK).await;
    let v = m.view().borrow().clone();
    assert_eq!(v.log.total(), 20);
    let gaps = crate::drain::quiet::gaps(&v.log, Kind::Requests);
    let longest = gaps.iter().max().copied().unwrap_or_default();
    assert!(
        longest <= Duration::from_millis(200),
        "no gap longer than a look: {gaps:?}"
    );
}

/// A census that fails keeps the one before it: a connection that opens
/// while censuses fail is an arrival at the next census that works, and
/// the connections open all along keep their first sighting.
#[tokio::test(start_paused = true)]
async fn a_failed_census_keeps_the_one_before() {
    let k = Script::new();
    k.open("10.1.0.7:40000");
    let m = spawn(&k);
    run_for(LOOK).await;
    let first_seen = |v: &View| {
        v.sample
            .detail
            .as_ref()?
            .oldest
            .iter()
            .find(|c| c.peer == "10.1.0.7:40000".parse::<SocketAddr>().unwrap())
            .map(|c| c.first_seen)
    };
    m.set_fast(true);
    run_for(LOOK).await;
    let before = first_seen(&m.view().borrow()).expect("seen open");
    k.world.lock().unwrap().failing = 3;
    k.open("10.1.0.8:40001");
    run_for(LOOK * 4).await;
    let v = m.view().borrow().clone();
    assert_eq!(v.log.total(), 1, "counted once the census works again");
    assert_eq!(first_seen(&v), Some(before), "its age is kept");
}

/// `--pool-peer`: the balancer's new connections, whether a census sees
/// them open or only their destroy events do, are requests of its pool;
/// another peer's are new connections, and every accept is accounted for.
#[tokio::test(start_paused = true)]
async fn a_pool_peers_new_connections_are_requests_of_its_pool() {
    let k = Script::new();
    let m = spawn_with(
        &k,
        PortFilter {
            pool_peers: vec!["10.3.0.1/32".parse().unwrap()],
            ..Default::default()
        },
    );
    run_for(LOOK).await;
    k.open("10.3.0.1:50001");
    run_for(LOOK).await;
    k.end("10.3.0.1:50002", true);
    run_for(LOOK).await;
    let v = m.view().borrow().clone();
    assert_eq!(v.log.total(), 2);
    assert_eq!(v.log.last_of(Kind::Connections), None, "no new client");
    assert!(v.log.last_of(Kind::Requests).is_some());
    assert_eq!(v.unattributed, 0);
    k.open("10.3.0.2:50003");
    k.end("10.3.0.2:50004", true);
    run_for(LOOK).await;
    let v = m.view().borrow().clone();
    assert_eq!(v.log.total(), 4);
    assert!(
        v.log.last_of(Kind::Connections).is_some(),
        "another peer's connections are clients"
    );
    assert_eq!(v.unattributed, 0);
}
