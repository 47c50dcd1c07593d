//! A small kubelet emulator: the termination sequence of one container with
//! an httpGet preStop hook, as pkg/kubelet does it.
//!
//! 1. GET the hook; no client timeout other than the grace period; the status
//!    code is ignored (the kubelet ignores it too) but recorded.
//! 2. Send the container's main process SIGTERM.
//! 3. When the grace period ends (at least 2 s after SIGTERM), SIGKILL, and
//!    record that it was needed: that is what nginx-drain must prevent.

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
}

#[derive(Debug)]
pub struct Termination {
    pub hook: Result<Fetched, Failure>,
    pub hook_took: Duration,
    /// NGINX was still running when the hook returned, so SIGTERM mattered.
    pub sigterm_found_nginx_running: bool,
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
        }
    }

    /// Runs the termination sequence against `nginx`'s master.
    pub async fn terminate(&self, nginx: &Nginx) -> Termination {
        let t0 = Instant::now();
        let deadline = t0 + self.grace;
        let hook =
            match tokio::time::timeout_at(deadline, client::request(self.hook, "GET", &self.path))
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
            let _ = nginx.signal(Signal::SIGTERM);
        }
        let kill_at = deadline.max(Instant::now() + MINIMUM_GRACE);
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
            sigterm_found_nginx_running: running,
            sigkill_needed,
            nginx_gone_after: gone,
        }
    }
}
