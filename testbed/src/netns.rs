//! Running a test or benchmark inside a network namespace of its own, as
//! root: `unshare --net`, loopback up. Inside, as in a pod, the only
//! listeners and connections are the ones the run makes itself.

use std::process::{Command, Output};

/// Set in the environment of the process that runs inside the namespace.
pub const INSIDE: &str = "NGINX_DRAIN_IN_OWN_NETNS";

/// True in the process that runs inside the namespace.
pub fn inside() -> bool {
    std::env::var_os(INSIDE).is_some()
}

/// Runs this executable again with `args` inside a fresh network namespace
/// and returns its output. Needs root (or CAP_SYS_ADMIN) and util-linux's
/// `unshare` and iproute2's `ip`.
pub fn rerun_self(args: &[&str]) -> Output {
    rerun_self_with(&["--net"], args)
}

/// Like [`rerun_self`], also in a PID namespace of its own (with its own
/// /proc), where `pgrep` sees only the run's processes.
pub fn rerun_self_with_own_pids(args: &[&str]) -> Output {
    rerun_self_with(&["--net", "--pid", "--fork", "--mount-proc"], args)
}

fn rerun_self_with(namespaces: &[&str], args: &[&str]) -> Output {
    let exe = std::env::current_exe().expect("current_exe");
    Command::new("unshare")
        .args(namespaces)
        .args(["sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
        .arg(&exe)
        .args(args)
        .env(INSIDE, "1")
        .output()
        .expect("run unshare (util-linux; needs root)")
}

/// For a benchmark's `main`: in the outer process, runs this executable
/// again with the same arguments inside its own namespaces (network, and
/// PID too with `own_pids`), relays its output and exits with its code.
/// Inside, returns the arguments.
pub fn enter(own_pids: bool) -> Vec<String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if inside() {
        return args;
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = if own_pids {
        rerun_self_with_own_pids(&a)
    } else {
        rerun_self(&a)
    };
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    std::process::exit(out.status.code().unwrap_or(1));
}

/// Runs `f` on a thread of its own that has joined the network namespace at
/// `ns` (e.g. `/proc/PID/ns/net`), with a tokio runtime of its own: sockets
/// it opens live in that namespace. Needs CAP_SYS_ADMIN (root).
pub fn run_in<T, F, Fut>(ns: &std::path::Path, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    let ns = std::fs::File::open(ns).expect("open the network namespace");
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns (root)");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f())
    })
    .join()
    .expect("the thread in the namespace")
}
