//! nginx-drain: a preStop sidecar that drains NGINX before Kubernetes stops it.
//!
//! Data flows one way: **observe → decide → act → report**.
//!
//! - [`nginx`] observes and acts on NGINX's processes: finds the master in
//!   `/proc`, checks its identity, lists its workers, signals it through a
//!   pidfd and awaits its exit. It knows nothing of HTTP or Kubernetes.
//! - [`sockets`] observes the pod's TCP sockets: the connection census and
//!   the arrival log. It knows nothing of NGINX's processes or of HTTP.
//! - [`drain`] decides: the owner task (single flight per master), the drain
//!   as a state machine over a [`drain::target::Target`], its budget and the
//!   quiet rule.
//! - [`report`] is what is reported and the words for it (outcomes, quit
//!   reasons): the JSON of `/prestop` and `/status`, the report file.
//! - [`kube`] is all the sidecar knows of the Kubernetes API: the
//!   in-cluster configuration and one call, an Event on its pod per drain
//!   (`--events`).
//! - [`webhook`] serves `inject`'s wiring as a mutating admission webhook.
//! - [`http`] serves the hook and probes; [`metrics`] observes reports and
//!   the snapshot; [`serve`] wires it all together, handles the sidecar's own
//!   signals and maps errors to exit codes; [`cli`] is the flags.
//!
//! The demo and the test machinery (a real NGINX, clients, a kubelet
//! emulator) live in the `testbed` crate of this workspace: the product
//! binary cannot link them.

/// Writes an enum's snake_case name (its JSON word) for logs and text.
macro_rules! words {
    ($t:ty { $($v:ident => $w:literal),* $(,)? }) => {
        #[allow(dead_code)]
        impl $t {
            /// Every value, in order.
            pub const ALL: &'static [Self] = &[$(Self::$v),*];
            /// The word the JSON and the logs use.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $w),* }
            }
            /// The value a word names.
            pub fn from_word(word: &str) -> Option<Self> {
                match word { $($w => Some(Self::$v),)* _ => None }
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub mod budget;
pub mod vocab;

pub mod auth;
pub mod cli;
pub mod drain;
pub mod http;
pub mod inject;
pub mod inspect;
pub mod kube;
pub mod logging;
pub mod metrics;
pub mod nginx;
pub mod report;
pub mod serve;
pub mod sockets;
pub mod webhook;
pub mod wiring;
