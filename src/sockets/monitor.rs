//! A task that watches the pod's connections and publishes what it saw:
//! open connections per port, new arrivals, and the recent arrival log.
//!
//! Three sources, from cheap to dear:
//! - the namespace's accept and segment counters (`/proc/net/snmp`), read
//!   every 200 ms while idle and every 20 ms while a drain runs: whether
//!   anything new was accepted, or anything arrived at all (a request on an
//!   open connection), at the same cost for 10 or 100 000 open connections;
//! - the kernel's TCP destroy events, read as they come: every connection
//!   that ended, with its endpoints, so that one that opened and closed
//!   between two censuses (a client that closes first leaves nothing
//!   behind) is still counted;
//! - the census, which walks every socket on NGINX's ports with its
//!   `tcp_info` (what the client sent since the last census: requests on
//!   open connections): taken only when the counters show accepts that the
//!   destroy events do not account for (a connection that stays open) or
//!   segments that arrived since the last census, at least every 30 s while idle and
//!   every 100 ms while a drain runs, and always spaced by its own cost
//!   (50 times its duration while idle, 60 times while draining: 2 % and
//!   1.7 % of a core at most, however many connections are open; the idle
//!   periodic one 500 times: 0.2 %).
//!
//! The decisions are the [`super::sampler::Sampler`]'s, tested apart from
//! the kernel; this module holds the task that drives it and the handle the
//! drain and the HTTP server use; what it publishes is `super::view`'s.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::sampler::{Kernel, Look, Sampler, Sources};
use super::view::{Counter, FAST_EVERY, IDLE_EVERY, MonitorConfig, Shared, View};

use super::counters;

#[derive(Clone)]
pub(crate) struct Monitor {
    view: watch::Receiver<View>,
    fast: Arc<watch::Sender<bool>>,
    learn: mpsc::UnboundedSender<IpAddr>,
    shared: Arc<Shared>,
}

impl Monitor {
    /// Starts sampling. Must be called inside a tokio runtime.
    pub(crate) fn spawn(config: MonitorConfig) -> Monitor {
        let kernel = Kernel::new(&config);
        let counter: Counter = Box::new(|| counters::read().ok());
        Monitor::spawn_with(config, kernel, counter)
    }

    /// [`Monitor::spawn`] over other sources and counter (the sampler's
    /// tests script the kernel).
    pub(crate) fn spawn_with<S: Sources + Send + 'static>(
        config: MonitorConfig,
        sources: S,
        counter: Counter,
    ) -> Monitor {
        let (view_tx, view) = watch::channel(View::empty(
            Instant::now(),
            sources.method(),
            config.filter.only.clone(),
        ));
        let (fast, fast_rx) = watch::channel(false);
        let (learn, learn_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::new(counter));
        let sampler = Sampler::new(sources, config.filter, view_tx, shared.clone());
        tokio::spawn(run(sampler, fast_rx, learn_rx, shared.clone()));
        Monitor {
            view,
            fast: Arc::new(fast),
            learn,
            shared,
        }
    }

    /// The sidecar accepted a connection of its own (the HTTP server).
    pub(crate) fn note_own_accept(&self) {
        self.shared.note_own_accept();
    }

    /// `ip` is the kubelet's (its probes and hooks come from it): its
    /// probes stop counting (see [`super::probes`]), including those
    /// already logged where the census can tell them apart.
    pub(crate) fn learn_kubelet(&self, ip: IpAddr) {
        let _ = self
            .learn
            .send(crate::vocab::canonical(std::net::SocketAddr::new(ip, 0)).ip());
    }

    /// A monitor with no sampling task: the caller publishes the views.
    /// For the drain's unit tests, which feed it census views they make up.
    #[cfg(test)]
    pub(crate) fn manual(initial: View) -> (Monitor, watch::Sender<View>) {
        Monitor::manual_counting(initial, Box::new(|| None))
    }

    /// [`Monitor::manual`] whose accept counter is `counter`.
    #[cfg(test)]
    pub(crate) fn manual_counting(
        initial: View,
        counter: Counter,
    ) -> (Monitor, watch::Sender<View>) {
        let (view_tx, view) = watch::channel(initial);
        let (fast, _) = watch::channel(false);
        let (learn, _) = mpsc::unbounded_channel();
        (
            Monitor {
                view,
                fast: Arc::new(fast),
                learn,
                shared: Arc::new(Shared::new(counter)),
            },
            view_tx,
        )
    }

    pub(crate) fn view(&self) -> watch::Receiver<View> {
        self.view.clone()
    }

    /// Looks every 20 ms while `on`, every 200 ms otherwise.
    pub(crate) fn set_fast(&self, on: bool) {
        if on && !*self.fast.borrow() {
            let mark = (Instant::now(), self.shared.accepted());
            if let Ok(mut h) = self.shared.hook.lock() {
                *h = Some(mark);
            }
        }
        self.fast
            .send_if_modified(|f| std::mem::replace(f, on) != on);
    }

    /// Whether `view` may be stale: something was accepted that it does
    /// not account for (read from the counter now, O(1)). A drain about to
    /// send SIGQUIT asks this last, and on `true` calls [`Monitor::look_now`]
    /// and waits for the next view.
    pub(crate) fn accepted_since(&self, view: &View) -> bool {
        if view.unattributed > 0 {
            return true;
        }
        match (view.accepted, self.shared.accepted()) {
            (Some(seen), Some(now)) => now != seen,
            // No counter: the census alone judges.
            _ => false,
        }
    }

    /// Whether a request on an open connection may have arrived that
    /// `view`'s census did not see: requests are seen, and a segment
    /// arrived since that census (read from the counter now, O(1)).
    pub(crate) fn data_since(&self, view: &View) -> bool {
        view.requests_seen
            && match (view.segments_at_census, self.shared.counters().1) {
                (Some(seen), Some(now)) => seen != now,
                _ => true,
            }
    }

    /// Asks for a look and a census now (the drain's last look).
    pub(crate) fn look_now(&self) {
        self.shared.poke.notify_one();
    }

    /// Asks for a census now, whatever the counters say (as soon as its
    /// cost allows): the drain's last look when requests may have arrived
    /// on open connections.
    pub(crate) fn census_now(&self) {
        self.shared.census_wanted.store(true, Ordering::Relaxed);
        self.shared.poke.notify_one();
    }
}

/// The monitor task: thin. It waits for the next look, a poke, destroy
/// events or the drain's start, and lets the [`Sampler`] decide the rest.
async fn run<S: Sources>(
    mut state: Sampler<S>,
    mut fast: watch::Receiver<bool>,
    mut learn: mpsc::UnboundedReceiver<IpAddr>,
    shared: Arc<Shared>,
) {
    let mut next = Instant::now();
    loop {
        let every = if *fast.borrow_and_update() {
            FAST_EVERY
        } else {
            IDLE_EVERY
        };
        let mut look = Look::Regular;
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            Some(ip) = learn.recv() => {
                state.learn_kubelet(ip);
                continue;
            }
            () = shared.poke.notified() => {
                look = if shared.census_wanted.swap(false, Ordering::Relaxed) {
                    Look::Census
                } else {
                    Look::Attribute
                };
            }
            () = state.sources.destroyed_ready() => {
                state.read_destroyed();
                continue;
            }
            changed = fast.changed() => {
                if changed.is_err() {
                    return;
                }
                // Going fast: look now (a drain just started). Going slow:
                // nothing to see now; do not compete with the hook's answer.
                if !*fast.borrow() {
                    continue;
                }
                look = Look::Census;
            }
        }
        let fast_now = *fast.borrow();
        state.tick(fast_now, look).await;
        next = Instant::now() + every;
    }
}
