//! nginx-drain: a preStop sidecar that drains NGINX before Kubernetes stops it.
//!
//! Data flows one way: **observe → decide → act → report**.
//!
//! - [`nginx`] observes and acts: finds the master in `/proc`, checks its
//!   identity, lists its workers, signals it through a pidfd and awaits its
//!   exit. It knows nothing of HTTP or Kubernetes.
//! - [`drain`] decides: the owner task (single flight per master), the drain
//!   sequence as a small state machine, and its budget.
//! - [`report`] is what is reported: the JSON of `/prestop` and `/status`.
//! - [`http`] serves the hook and probes; [`serve`] wires it all together and
//!   handles the sidecar's own SIGTERM.
//! - [`testbed`] runs a real NGINX and real clients for the demo, the tests
//!   and the benchmarks.

pub mod auth;
pub mod cli;
pub mod demo;
pub mod drain;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod nginx;
pub mod report;
pub mod serve;
pub mod sockets;
pub mod testbed;
