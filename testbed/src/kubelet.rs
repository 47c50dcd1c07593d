//! A small kubelet emulator: the termination sequence of one container with
//! an httpGet preStop hook, as a real kubelet (1.32, checked against one in
//! `../shared/kubelet-rig`) does it.
//!
//! 1. GET the hook, from the kubelet's own address with its User-Agent
//!    ([`client::kubelet_hook`]); no client timeout other than the grace
//!    period; the status code is ignored (the kubelet ignores it too) but
//!    recorded.
//! 2. Ask the runtime to stop the container: it sends the image's
//!    STOPSIGNAL (SIGQUIT for the official nginx image; SIGTERM for images
//!    without one) with what is left of the grace period: the grace less the
//!    hook's duration in whole seconds, rounded down, at least 2 s.
//! 3. When that ends, SIGKILL, and record that it was needed: that is what
//!    nginx-drain must prevent.

use std::net::SocketAddr;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::client::{self, Failure, Fetched};
use super::fixture::Nginx;

/// The kubelet's floor for the time between SIGTERM and SIGKILL.
const MINIMUM_GRACE: Duration = Duration::from_secs(2);

pub struct Kubelet {
    /// The sidecar's address.
    pub hook: SocketAddr,
    pub path: String,
    pub grace: Duration,
    /// The NGINX image's STOPSIGNAL: SIGQUIT for the official image.
    pub stop_signal: Signal,
}

#[derive(Debug)]
pub struct Termination {
    pub hook: Result<Fetched, Failure>,
    pub hook_took: Duration,
    /// NGINX was still running when the hook returned, so the stop signal
    /// mattered.
    pub stop_found_nginx_running: bool,
    /// What was left of the grace period for the stop, as the kubelet
    /// computes it.
    pub stop_grace: Duration,
    pub sigkill_needed: bool,
    /// From the start of termination to the master's exit (as seen here).
    pub nginx_gone_after: Option<Duration>,
}

impl Kubelet {
    pub fn new(hook: SocketAddr, grace: Duration) -> Kubelet {
        Kubelet {
            hook,
            path: "/prestop".into(),
            grace,
            stop_signal: Signal::SIGQUIT,
        }
    }

    /// The grace left for the stop after a hook that took `hook_took`: the
    /// kubelet subtracts whole seconds, rounded down, and keeps at least 2 s.
    pub fn grace_after_hook(&self, hook_took: Duration) -> Duration {
        let left = self.grace.as_secs().saturating_sub(hook_took.as_secs());
        Duration::from_secs(left).max(MINIMUM_GRACE)
    }

    /// Runs the termination sequence against `nginx`'s master.
    pub async fn terminate(&self, nginx: &Nginx) -> Termination {
        let t0 = Instant::now();
        let deadline = t0 + self.grace;
        let hook =
            match tokio::time::timeout_at(deadline, client::kubelet_hook(self.hook, &self.path))
                .await
            {
                Ok(r) => r,
                Err(_) => Err(Failure::Other(
                    "hook still running when the grace period ended".into(),
                )),
            };
        let hook_took = t0.elapsed();
        let running = nginx.is_running();
        if running {
            let _ = nginx.signal(self.stop_signal);
        }
        let stop_grace = self.grace_after_hook(hook_took);
        let kill_at = Instant::now() + stop_grace;
        let mut gone = (!running).then_some(hook_took);
        while gone.is_none() && Instant::now() < kill_at {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if !nginx.is_running() {
                gone = Some(t0.elapsed());
            }
        }
        let sigkill_needed = gone.is_none();
        if sigkill_needed {
            let _ = nginx.signal(Signal::SIGKILL);
        }
        Termination {
            hook,
            hook_took,
            stop_found_nginx_running: running,
            stop_grace,
            sigkill_needed,
            nginx_gone_after: gone,
        }
    }
}
