//! Acting on a process without ever hitting the wrong one.
//!
//! A pid is only a number: the process it named can exit and the number be
//! given to another. We therefore open a *pidfd* first, then check through
//! `/proc` that the pid still has the start time and title we identified.
//! From then on every signal goes through the pidfd, which refers to that one
//! process for as long as we hold it, and the pidfd becomes readable the
//! moment the process exits (while it is still an unreaped zombie), which is
//! how we await the exit without polling.
//!
//! On kernels without pidfds (< 5.3) we fall back to `kill(2)` after the same
//! identity check, and to a short-interval `/proc` check for the exit.
//!
//! Invariant kept here: no signal goes to a pid whose start time and title
//! were not checked against the identified master just before, and never by
//! pid when a pidfd exists.

use crate::vocab::SignalMethod;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::procfs::parse_status_uid;
use super::{Master, NotFound, ProcId, identify, read_proc};

/// How often the fallback (no pidfd) checks `/proc` for the exit.
const FALLBACK_EXIT_CHECK: Duration = Duration::from_millis(10);

/// The signals the drain sends, named by what they mean to nginx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sig {
    /// Graceful shutdown: listeners close, in-flight requests finish.
    Quit,
    /// Fast shutdown: in-flight requests are cut.
    Term,
}

impl Sig {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Sig::Quit => "SIGQUIT",
            Sig::Term => "SIGTERM",
        }
    }
    fn rustix(self) -> Signal {
        match self {
            Sig::Quit => Signal::QUIT,
            Sig::Term => Signal::TERM,
        }
    }
    fn nix(self) -> nix::sys::signal::Signal {
        match self {
            Sig::Quit => nix::sys::signal::Signal::SIGQUIT,
            Sig::Term => nix::sys::signal::Signal::SIGTERM,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SignalError {
    #[error("{0}")]
    Permission(String),
    #[error("nginx master pid {0} has already exited")]
    Exited(i32),
    #[error("{0}")]
    NotTheMaster(String),
    #[error("cannot signal nginx master pid {pid}: {error}")]
    Other { pid: i32, error: String },
}

/// A pidfd registered with tokio's reactor.
struct Pidfd(AsyncFd<OwnedFd>);

impl Pidfd {
    fn open(pid: i32) -> io::Result<Pidfd> {
        let pid = Pid::from_raw(pid).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let fd = pidfd_open(pid, PidfdFlags::empty())?;
        // SAFETY: the AsyncFd owns the OwnedFd for its whole life, so the raw
        // fd stays open and refers to the same pidfd until it is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Pidfd(fd))
    }

    /// True once the process has exited (zombie or reaped).
    fn has_exited(&self) -> bool {
        let mut fds = [PollFd::new(self.0.get_ref().as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
    }

    async fn exited(&self) {
        // Readiness is never cleared: once the process has exited the pidfd
        // stays readable, so every later call returns at once too.
        let _ = self.0.readable().await;
    }
}

static FALLBACK_LOGGED: AtomicBool = AtomicBool::new(false);
static PROC_READ_LOGGED: AtomicBool = AtomicBool::new(false);

/// Why `pidfd_open` failed, in words that name the cause and the fix.
fn pidfd_open_failure(e: &std::io::Error) -> String {
    use nix::errno::Errno;
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ENOSYS) => "pidfd_open is not in this kernel (Linux < 5.3)".into(),
        Some(Errno::EPERM | Errno::EACCES) => {
            "pidfd_open was refused (a seccomp profile blocks it: allow pidfd_open and pidfd_send_signal)".into()
        }
        Some(Errno::EMFILE | Errno::ENFILE) => {
            "pidfd_open failed: no file descriptor left (the sidecar's or the node's file limit is reached; raise the container's nofile limit)".into()
        }
        _ => format!("pidfd_open failed ({e})"),
    }
}

/// The one handle through which the drain signals the master and learns of
/// its exit.
pub(crate) struct MasterHandle {
    master: Master,
    pidfd: Option<Pidfd>,
    /// The kernel lets this process read the master's exit status (what it
    /// checks to show `/proc/PID/environ`): the same UID and a dumpable
    /// master, or CAP_SYS_PTRACE. Asked once, while the master runs.
    exit_readable: bool,
}

/// How the master exited, as far as it could be seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExitStatus {
    /// `exit(code)`: 0 after a graceful quit.
    Code(i32),
    /// Killed by this signal (SIGKILL: 9).
    Signal(i32),
    /// Not seen: the kernel hides it from this process, or the zombie was
    /// reaped before it could be read.
    Unknown,
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit status {c}"),
            ExitStatus::Signal(s) => {
                let name = nix::sys::signal::Signal::try_from(*s)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| format!("signal {s}"));
                write!(f, "killed by {name}")
            }
            ExitStatus::Unknown => f.write_str("unknown"),
        }
    }
}

impl ExitStatus {
    /// From a `waitpid` status word.
    pub(crate) fn from_wait(status: i32) -> ExitStatus {
        let sig = status & 0x7f;
        if sig == 0 {
            ExitStatus::Code((status >> 8) & 0xff)
        } else {
            ExitStatus::Signal(sig)
        }
    }
}

impl std::fmt::Debug for MasterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterHandle")
            .field("master", &self.master)
            .field("pidfd", &self.pidfd.is_some())
            .finish()
    }
}

impl MasterHandle {
    /// Opens a handle on `master` and checks that the pid still names it.
    /// Must be called inside a tokio runtime.
    pub(crate) fn open(master: Master) -> Result<MasterHandle, NotFound> {
        let pid = master.id.pid;
        let pidfd = match Pidfd::open(pid) {
            Ok(fd) => Some(fd),
            Err(e) if e.raw_os_error() == Some(libc_esrch()) => {
                return Err(NotFound::NotRunning(format!(
                    "nginx master pid {pid} exited before it could be watched"
                )));
            }
            Err(e) => {
                if !FALLBACK_LOGGED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %e,
                        "{}: falling back to kill(2) after an identity check, and to checking /proc every 10ms for the exit",
                        pidfd_open_failure(&e)
                    );
                }
                None
            }
        };
        let exit_readable = std::fs::File::open(format!("/proc/{pid}/environ")).is_ok();
        let handle = MasterHandle {
            master,
            pidfd,
            exit_readable,
        };
        // The check *after* opening the pidfd is what ties the pidfd to the
        // process we identified: had the pid been recycled in between, its
        // start time would differ.
        match handle.verify() {
            Ok(()) => Ok(handle),
            Err(SignalError::Exited(_)) => Err(NotFound::NotRunning(format!(
                "nginx master pid {pid} has exited"
            ))),
            Err(e) => Err(NotFound::Unusable(e.to_string())),
        }
    }

    pub(crate) fn master(&self) -> &Master {
        &self.master
    }

    pub(crate) fn id(&self) -> ProcId {
        self.master.id
    }

    pub(crate) fn uses_pidfd(&self) -> bool {
        self.pidfd.is_some()
    }

    /// How signals reach the master, as the report and logs name it:
    /// `pidfd`, or `kill` on kernels without pidfds.
    pub(crate) fn signal_method(&self) -> SignalMethod {
        if self.uses_pidfd() {
            SignalMethod::Pidfd
        } else {
            SignalMethod::Kill
        }
    }

    /// Checks that the pid still names the master we identified.
    pub(crate) fn verify(&self) -> Result<(), SignalError> {
        let pid = self.master.id.pid;
        if self.has_exited() {
            return Err(SignalError::Exited(pid));
        }
        match identify(pid) {
            Ok(now) if now.id == self.master.id => Ok(()),
            Ok(now) => Err(SignalError::NotTheMaster(format!(
                "pid {pid} now names another nginx master (start time {} ticks, expected {}): the pid was reused; not signalled",
                now.id.start_ticks, self.master.id.start_ticks
            ))),
            Err(NotFound::NotRunning(_)) => Err(SignalError::Exited(pid)),
            Err(NotFound::Unusable(m)) => Err(SignalError::NotTheMaster(m)),
        }
    }

    /// Sends `sig` to the master, after checking its identity.
    pub(crate) fn signal(&self, sig: Sig) -> Result<(), SignalError> {
        self.verify()?;
        let pid = self.master.id.pid;
        let result = match &self.pidfd {
            Some(fd) => pidfd_send_signal(fd.0.get_ref().as_fd(), sig.rustix())
                .map_err(|e| e.raw_os_error()),
            None => nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig.nix())
                .map_err(|e| e as i32),
        };
        match result {
            Ok(()) => Ok(()),
            Err(errno) if errno == libc_esrch() => Err(SignalError::Exited(pid)),
            Err(errno) if errno == nix::errno::Errno::EPERM as i32 => {
                Err(SignalError::Permission(permission_message(pid, sig)))
            }
            Err(errno) => Err(SignalError::Other {
                pid,
                error: nix::errno::Errno::from_raw(errno).desc().to_string(),
            }),
        }
    }

    /// Whether a signal would be allowed, asked with the null signal (no
    /// signal is delivered): EPERM is found when NGINX starts, not at the
    /// first drain. The message names the fix.
    pub(crate) fn may_signal(&self) -> Result<(), String> {
        let pid = self.master.id.pid;
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
            Err(nix::errno::Errno::EPERM) => Err(permission_message(pid, Sig::Quit)),
            // Gone or not: nothing the wiring can fix.
            _ => Ok(()),
        }
    }

    /// True once the master has exited; a zombie counts as exited.
    pub(crate) fn has_exited(&self) -> bool {
        match &self.pidfd {
            Some(fd) => fd.has_exited(),
            None => match read_proc(self.master.id.pid) {
                Ok(info) => {
                    info.stat.is_zombie() || info.stat.start_ticks != self.master.id.start_ticks
                }
                // Gone from /proc: exited and reaped.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                Err(e) if e.raw_os_error() == Some(libc_esrch()) => true,
                // Anything else (EACCES, EMFILE) says nothing of the master:
                // taking it for an exit would end the drain as if NGINX had
                // quit.
                Err(e) => {
                    if !PROC_READ_LOGGED.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            pid = self.master.id.pid,
                            error = %e,
                            "cannot read the nginx master's /proc entry to see whether it exited; still taking it to run"
                        );
                    }
                    false
                }
            },
        }
    }

    /// How the master exited, read from its zombie's `/proc/PID/stat` when
    /// the kernel shows it here and the zombie is not reaped yet (only
    /// once it has exited; `Unknown` otherwise).
    pub(crate) fn exit_status(&self) -> ExitStatus {
        if !self.exit_readable {
            return ExitStatus::Unknown;
        }
        match read_proc(self.master.id.pid) {
            Ok(info)
                if info.stat.is_zombie() && info.stat.start_ticks == self.master.id.start_ticks =>
            {
                info.stat
                    .exit_code
                    .map_or(ExitStatus::Unknown, ExitStatus::from_wait)
            }
            _ => ExitStatus::Unknown,
        }
    }

    /// Resolves when the master exits (at exit, not at reaping).
    pub(crate) async fn exited(&self) {
        match &self.pidfd {
            Some(fd) => fd.exited().await,
            None => {
                while !self.has_exited() {
                    tokio::time::sleep(FALLBACK_EXIT_CHECK).await;
                }
            }
        }
    }
}

/// A watch on one worker's exit, for progress reporting.
pub(crate) struct ChildWatch {
    pidfd: Pidfd,
}

impl ChildWatch {
    /// Opens a watch on `pid` if it is still a child of `master`.
    pub(crate) fn open(pid: i32, master: &ProcId) -> Option<ChildWatch> {
        let pidfd = Pidfd::open(pid).ok()?;
        let info = read_proc(pid).ok()?;
        (info.stat.ppid == master.pid && !info.stat.is_zombie()).then_some(ChildWatch { pidfd })
    }

    pub(crate) fn has_exited(&self) -> bool {
        self.pidfd.has_exited()
    }

    pub(crate) async fn exited_ref(&self) {
        self.pidfd.exited().await;
    }
}

fn libc_esrch() -> i32 {
    nix::errno::Errno::ESRCH as i32
}

fn permission_message(pid: i32, sig: Sig) -> String {
    let owner = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| parse_status_uid(&s));
    let me = nix::unistd::getuid().as_raw();
    let owner = owner.map_or("another UID".to_string(), |u| format!("UID {u}"));
    format!(
        "cannot send {} to nginx master pid {pid} (EPERM): the master runs as {owner} and nginx-drain as UID {me}; run nginx-drain with the same UID as the nginx master (101 in ingress-nginx) or grant it CAP_KILL",
        sig.name()
    )
}
