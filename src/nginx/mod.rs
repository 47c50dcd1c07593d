//! Everything the sidecar knows about NGINX: how to find its master process,
//! how to tell that a pid is still that master, its workers, and how to
//! signal it and await its exit.
//!
//! This module knows nothing of HTTP, Kubernetes or the drain's rules. It
//! reads `/proc` of the (shared) PID namespace and returns plain values.

pub(crate) mod config;
pub(crate) mod process;
pub mod procfs;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub(crate) use process::{MasterHandle, Sig, SignalError};
use procfs::{Stat, parse_cmdline, parse_pid_file, parse_stat};

/// The title nginx gives its master process (OpenResty's is the same).
/// Matching on the title's prefix, not on "nginx" anywhere in the name, keeps
/// `nginx-ingress-controller`, wrapper scripts and log shippers out.
pub(crate) const MASTER_TITLE_PREFIX: &str = "nginx: master process";

/// One process, named so that a recycled pid can never be mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct ProcId {
    pub pid: i32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_ticks: u64,
}

/// An NGINX master process as identified from `/proc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Master {
    #[serde(flatten)]
    pub id: ProcId,
    pub title: String,
}

/// A child of the master: a worker, an old worker still finishing requests
/// after a reload (`... is shutting down`), or the cache manager/loader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Worker {
    pub pid: i32,
    pub title: String,
}

impl Worker {
    pub fn is_shutting_down(&self) -> bool {
        self.title.ends_with("is shutting down")
    }
}

/// True when the master is already quitting: it has children and every one
/// says "is shutting down" (someone sent SIGQUIT before us). The one place
/// this is decided.
pub(crate) fn is_quitting(workers: &[Worker]) -> bool {
    !workers.is_empty() && workers.iter().all(Worker::is_shutting_down)
}

/// How the sidecar finds the master.
#[derive(Debug, Clone)]
pub(crate) enum Locator {
    /// Read the pid from this file (nginx's `pid` directive).
    PidFile(PathBuf),
    /// Scan the shared PID namespace for exactly one master process.
    Discover,
}

/// Why no master can be used right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotFound {
    /// Nothing to drain: NGINX has not started yet or has already exited.
    NotRunning(String),
    /// Something is there but it is not safe to act on it (a pid file naming
    /// another process, several masters, an unreadable pid file).
    Unusable(String),
}

impl NotFound {
    pub(crate) fn message(&self) -> &str {
        match self {
            NotFound::NotRunning(m) | NotFound::Unusable(m) => m,
        }
    }
}

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// What a process looks like right now, as far as identity is concerned.
#[derive(Debug, Clone)]
pub(crate) struct ProcInfo {
    pub(crate) stat: Stat,
    pub(crate) title: String,
}

/// Reads `/proc/PID/stat` and `/proc/PID/cmdline`. Both stay readable for
/// non-dumpable processes of other UIDs (ingress-nginx's master), unlike
/// `/proc/PID/fd` and `/proc/PID/environ`, which we never touch.
pub(crate) fn read_proc(pid: i32) -> io::Result<ProcInfo> {
    let stat_text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let stat = parse_stat(&stat_text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let raw = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    Ok(ProcInfo {
        stat,
        title: parse_cmdline(&raw),
    })
}

fn is_master_title(title: &str) -> bool {
    title.starts_with(MASTER_TITLE_PREFIX)
}

fn all_pids() -> io::Result<Vec<i32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        if let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// All live processes in this PID namespace. Processes that exit while we
/// read are skipped: they are not there any more.
fn all_processes() -> io::Result<Vec<ProcInfo>> {
    Ok(all_pids()?
        .into_iter()
        .filter_map(|pid| read_proc(pid).ok())
        .collect())
}

/// Checks that `pid` is, right now, a live NGINX master; returns it.
pub(crate) fn identify(pid: i32) -> Result<Master, NotFound> {
    let info = match read_proc(pid) {
        Ok(info) => info,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(NotFound::NotRunning(format!("pid {pid} is not running")));
        }
        Err(e) => {
            return Err(NotFound::Unusable(format!(
                "cannot read /proc/{pid}/stat or cmdline ({e}): mount the shared PID namespace's /proc (shareProcessNamespace: true)"
            )));
        }
    };
    if info.stat.is_zombie() {
        return Err(NotFound::NotRunning(format!(
            "pid {pid} has exited (zombie, not yet reaped)"
        )));
    }
    if !is_master_title(&info.title) {
        let what = if info.title.is_empty() {
            format!("({})", info.stat.comm)
        } else {
            info.title.chars().take(80).collect()
        };
        return Err(NotFound::Unusable(format!(
            "pid {pid} is {what:?}, not an nginx master process (its title does not start with {MASTER_TITLE_PREFIX:?}); it was not signalled"
        )));
    }
    Ok(Master {
        id: ProcId {
            pid,
            start_ticks: info.stat.start_ticks,
        },
        title: info.title,
    })
}

impl Locator {
    /// Says where the master is looked for, for messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Locator::PidFile(p) => format!("pid file {}", p.display()),
            Locator::Discover => format!(
                "discovery of a process titled {MASTER_TITLE_PREFIX:?} in /proc (shared PID namespace)"
            ),
        }
    }

    /// Finds the master now. Never blocks for long: a few small reads.
    pub(crate) fn locate(&self) -> Result<Master, NotFound> {
        match self {
            Locator::PidFile(path) => locate_by_pid_file(path),
            Locator::Discover => discover(),
        }
    }

    /// Startup check: problems that will not fix themselves (a pid file that
    /// is a directory or unreadable). A missing pid file is fine: NGINX may
    /// start after the sidecar.
    pub(crate) fn check_at_startup(&self) -> Result<(), PidFileError> {
        if let Locator::PidFile(path) = self {
            match std::fs::read_to_string(path) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(PidFileError::new(path, e)),
            }
        }
        Ok(())
    }
}

/// A pid file that cannot be read (not one that does not exist yet).
#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("--nginx-pid-file {} is a directory: give the file that nginx's `pid` directive names", .0.display())]
    Directory(PathBuf),
    #[error("cannot read --nginx-pid-file {} ({source}){}", path.display(), if source.kind() == io::ErrorKind::PermissionDenied {
        ": mount it readable for the sidecar's user (the nginx pid file is normally mode 0644)"
    } else {
        ""
    })]
    Unreadable { path: PathBuf, source: io::Error },
}

impl PidFileError {
    fn new(path: &Path, source: io::Error) -> PidFileError {
        if path.is_dir() {
            PidFileError::Directory(path.to_path_buf())
        } else {
            PidFileError::Unreadable {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

fn locate_by_pid_file(path: &Path) -> Result<Master, NotFound> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(NotFound::NotRunning(format!(
                "pid file {} does not exist (nginx not started yet, or already exited)",
                path.display()
            )));
        }
        Err(e) => return Err(NotFound::Unusable(PidFileError::new(path, e).to_string())),
    };
    if text.trim().is_empty() {
        // nginx creates the file and writes it in two steps: an empty file is
        // a master being born (or one that died mid-write).
        return Err(NotFound::NotRunning(format!(
            "pid file {} is empty (nginx starting?)",
            path.display()
        )));
    }
    let pid = parse_pid_file(&text)
        .map_err(|e| NotFound::Unusable(format!("pid file {}: {e}", path.display())))?;
    identify(pid).map_err(|nf| match nf {
        NotFound::NotRunning(m) => NotFound::NotRunning(format!(
            "pid file {} names pid {pid}, but {m} (stale pid file)",
            path.display()
        )),
        NotFound::Unusable(m) => {
            NotFound::Unusable(format!("pid file {} names pid {pid}: {m}", path.display()))
        }
    })
}

fn discover() -> Result<Master, NotFound> {
    let procs = all_processes()
        .map_err(|e| NotFound::Unusable(format!("cannot list /proc ({e}): is /proc mounted?")))?;
    let masters: Vec<Master> = procs
        .into_iter()
        .filter(|p| !p.stat.is_zombie() && is_master_title(&p.title))
        .map(|p| Master {
            id: ProcId {
                pid: p.stat.pid,
                start_ticks: p.stat.start_ticks,
            },
            title: p.title,
        })
        .collect();
    match masters.len() {
        0 => Err(NotFound::NotRunning(format!(
            "no process titled {MASTER_TITLE_PREFIX:?} in this PID namespace: nginx is not running yet, or the pod lacks shareProcessNamespace: true"
        ))),
        1 => Ok(masters.into_iter().next().expect("one master")),
        _ => {
            let list: Vec<String> = masters
                .iter()
                .map(|m| format!("pid {} ({:?})", m.id.pid, m.title))
                .collect();
            Err(NotFound::Unusable(format!(
                "found {} nginx masters: {}; not choosing one: pass --nginx-pid-file to name the one to drain",
                masters.len(),
                list.join(", ")
            )))
        }
    }
}

/// The master's children right now: current workers, old workers still
/// "shutting down" after a reload, cache processes.
pub fn workers(master: &ProcId) -> Vec<Worker> {
    let Ok(procs) = all_processes() else {
        return Vec::new();
    };
    procs
        .into_iter()
        .filter(|p| p.stat.ppid == master.pid && !p.stat.is_zombie())
        .map(|p| Worker {
            pid: p.stat.pid,
            title: if p.title.is_empty() {
                p.stat.comm
            } else {
                p.title
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_title_prefix_is_exact() {
        assert!(is_master_title(
            "nginx: master process /usr/sbin/nginx -c /etc/nginx/nginx.conf"
        ));
        assert!(!is_master_title("nginx-ingress-controller --configmap=x"));
        assert!(!is_master_title("/bin/sh /usr/local/bin/nginx-wrapper"));
        assert!(!is_master_title("nginx: worker process"));
    }

    #[test]
    fn missing_pid_file_is_not_running_and_names_the_path() {
        let err = Locator::PidFile("/nonexistent/nginx.pid".into())
            .locate()
            .unwrap_err();
        assert!(matches!(err, NotFound::NotRunning(_)));
        assert!(err.message().contains("/nonexistent/nginx.pid"));
    }

    #[test]
    fn our_own_pid_is_not_a_master() {
        let err = identify(std::process::id() as i32).unwrap_err();
        assert!(matches!(err, NotFound::Unusable(_)), "{err:?}");
        assert!(err.message().contains("not an nginx master"));
    }

    #[test]
    fn pid_file_that_is_a_directory_fails_startup() {
        let dir = tempfile::tempdir().unwrap();
        let err = Locator::PidFile(dir.path().to_path_buf())
            .check_at_startup()
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a directory"), "{err}");
    }
}
