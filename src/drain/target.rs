//! What a drain acts on, as a trait: the NGINX master (signal it, await its
//! exit) and its children at the start of the drain (each one's exit).
//!
//! The real target is [`MasterHandle`] (pidfds, identity checks); the
//! drain's unit tests use a fake that exits when told, so that every decision
//! of the state machine can be tested under tokio's paused clock, without
//! root or NGINX.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::nginx::config::{ShutdownTimeout, shutdown_timeout};
use crate::nginx::process::{ChildWatch, ExitStatus};
use crate::nginx::{Master, MasterHandle, Sig, SignalError, Worker, workers};
use crate::vocab::SignalMethod;

/// A boxed future borrowed from its owner.
pub(crate) type BoxFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// One child's exit, observed without polling.
pub(crate) trait ExitWatch: Send + Sync {
    /// True once the child has exited. Exact at the moment it is asked:
    /// this, not the order in which exit events are handled, decides
    /// whether the master left a worker behind.
    fn has_exited(&self) -> bool;
    /// Resolves when the child has exited.
    fn exited(&self) -> BoxFuture<'_>;
}

/// A child of the master at the start of the drain.
#[derive(Clone)]
pub(crate) struct Child {
    pub(crate) worker: Worker,
    pub(crate) exit: Arc<dyn ExitWatch>,
}

/// The process a drain stops.
pub(crate) trait Target: Send + Sync + 'static {
    fn master(&self) -> &Master;
    /// How signals are delivered (`pidfd` or `kill`), for the report.
    fn signal_method(&self) -> SignalMethod;
    /// Sends `sig` to the master.
    fn signal(&self, sig: Sig) -> Result<(), SignalError>;
    /// Resolves when the master has exited.
    fn exited(&self) -> impl Future<Output = ()> + Send;
    /// How the master exited, once it has, as far as it can be seen.
    fn exit_status(&self) -> ExitStatus;
    /// The master's children now, each with a watch on its exit.
    fn children(&self) -> Vec<Child>;
    /// The master's `worker_shutdown_timeout`, from its configuration.
    fn shutdown_timeout(&self) -> ShutdownTimeout;
}

impl ExitWatch for ChildWatch {
    fn has_exited(&self) -> bool {
        ChildWatch::has_exited(self)
    }
    fn exited(&self) -> BoxFuture<'_> {
        Box::pin(self.exited_ref())
    }
}

impl Target for MasterHandle {
    fn master(&self) -> &Master {
        MasterHandle::master(self)
    }
    fn signal_method(&self) -> SignalMethod {
        MasterHandle::signal_method(self)
    }
    fn signal(&self, sig: Sig) -> Result<(), SignalError> {
        MasterHandle::signal(self, sig)
    }
    fn exited(&self) -> impl Future<Output = ()> + Send {
        MasterHandle::exited(self)
    }
    fn exit_status(&self) -> ExitStatus {
        MasterHandle::exit_status(self)
    }
    /// Current workers and old ones still finishing requests after a
    /// reload; a child that is already gone is left out.
    fn children(&self) -> Vec<Child> {
        let id = self.master().id;
        workers(&id)
            .into_iter()
            .filter_map(|w| {
                let watch = ChildWatch::open(w.pid, &id)?;
                Some(Child {
                    worker: w,
                    exit: Arc::new(watch),
                })
            })
            .collect()
    }
    fn shutdown_timeout(&self) -> ShutdownTimeout {
        shutdown_timeout(self.master())
    }
}
