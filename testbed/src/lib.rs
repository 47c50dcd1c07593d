//! A real NGINX and real clients on loopback, for the demo, the tests and
//! the benchmarks. Nothing here is used by `serve`.
//!
//! Everything talks to 127.0.0.1 only, and every loop is bounded.

pub mod client;
pub mod cluster;
pub mod fixture;
pub mod h2;
pub mod kube;
pub mod kubelet;
pub mod load;
pub mod netns;
pub mod rig;
pub mod rollout;
pub mod scenario;
pub mod sidecar;
pub mod strategies;
pub mod tls;
pub mod ws;

use std::net::TcpListener;
use std::path::{Path, PathBuf};

pub use fixture::{Nginx, NginxOptions};
pub use kubelet::{Kubelet, Termination};
pub use sidecar::Sidecar;

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Finds the `nginx` binary: the given path, `nginx` on PATH, then
/// /usr/sbin/nginx (Debian's place, not on a non-root user's PATH).
pub fn find_nginx(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(format!("{} does not exist", p.display()))
        };
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nginx"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin/nginx")])
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "nginx is not installed: run `sudo apt-get update && sudo apt-get install -y nginx-light` (Debian/Ubuntu), or pass its path".to_string()
        })
}

/// The runtime the benchmarks and the demo use: two workers, like the
/// machine's two cores.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// A process that must never be signalled (`sleep 60`), killed and reaped
/// when dropped.
pub struct Bystander(std::process::Child);

impl Bystander {
    pub fn spawn() -> Bystander {
        Bystander(
            std::process::Command::new("sleep")
                .arg("60")
                .spawn()
                .expect("spawn sleep"),
        )
    }
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
    /// True while it has not exited (nothing killed it).
    pub fn is_alive(&mut self) -> bool {
        self.0.try_wait().ok().flatten().is_none()
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
