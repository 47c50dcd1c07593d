//! What the integration tests share: the binary under test, a sidecar for a
//! testbed NGINX, and reading JSON answers. Each test file includes it with
//! `mod support;` (not every file uses every helper).
#![allow(dead_code)]

use std::path::Path;

use serde_json::Value;
use testbed::client::Fetched;
use testbed::{Nginx, Sidecar};

pub mod controllers;
pub mod kubelet_rig;
pub mod pod_rules;
pub mod renders;
pub mod yaml_cases;

/// Says loudly that the calling test did not run, and why, and records it
/// in the file `NGINX_DRAIN_SKIPPED` names (scripts/test sets it), so that
/// the suite's closing line counts it as skipped, not as passed. The test
/// then returns without asserting anything.
/// A rig's cases (`cases`, e.g. "the real-kubelet cases") cannot run:
/// under CI that fails the test; elsewhere it is recorded as skipped.
pub fn skip_or_fail<T>(cases: &str, why: &str) -> Option<T> {
    assert!(
        std::env::var_os("CI").is_none(),
        "{cases} must run under CI: {why}"
    );
    skipped(&format!("{cases}: {why}"));
    None
}

pub fn skipped(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    eprintln!("SKIPPED: {test} did NOT run: {why}");
    if let Some(file) = std::env::var_os("NGINX_DRAIN_SKIPPED") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
        {
            // One write of the whole line: tests run in parallel, and
            // O_APPEND keeps one write(2) together.
            let _ = f.write_all(format!("{test}: {}\n", why.replace('\n', " ")).as_bytes());
        }
    }
}

/// What the sidecar says about NGINX's master (`/status`'s `state`, the
/// metric `nginx_drain_nginx_master_up`, `/readyz`) checked against the
/// process table: it says a master runs exactly when one does (a zombie
/// has exited). Returns the state.
pub async fn assert_state_truth(sidecar: std::net::SocketAddr, master_pid: Option<i32>) -> String {
    use std::time::Duration;
    let alive = master_pid.is_some_and(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| nginx_drain::nginx::procfs::parse_stat(&s).ok())
            .is_some_and(|st| !st.is_zombie())
    });
    let limit = Duration::from_secs(10);
    let status = json(
        &testbed::client::get(sidecar, "/status", limit)
            .await
            .unwrap(),
    );
    let state = status["state"].as_str().unwrap_or_default().to_string();
    let metrics = testbed::client::get(sidecar, "/metrics", limit)
        .await
        .unwrap()
        .text();
    let up = metrics
        .lines()
        .find_map(|l| l.strip_prefix("nginx_drain_nginx_master_up "))
        .unwrap_or_else(|| panic!("no nginx_master_up in /metrics:\n{metrics}"))
        .trim()
        .to_string();
    let readyz = testbed::client::get(sidecar, "/readyz", limit)
        .await
        .unwrap()
        .status;
    let says_running = ["ready", "quitting", "draining", "drain_failed"].contains(&state.as_str());
    assert_eq!(
        says_running,
        alive,
        "/status says {state:?} but the master is {}: {status:#}",
        if alive { "running" } else { "gone" }
    );
    assert_eq!(
        up,
        if alive { "1" } else { "0" },
        "nginx_master_up against ps"
    );
    if !alive {
        assert_eq!(readyz, 503, "not ready without a master");
    }
    state
}

/// The `nginx-drain` binary under test: the one cargo built for these
/// tests, or `NGINX_DRAIN_TEST_BIN` (scripts/test runs the core cases with
/// the arm64 build through qemu-user this way).
pub fn bin() -> &'static Path {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var_os("NGINX_DRAIN_TEST_BIN")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_nginx-drain").into())
    })
}

/// `nginx-drain serve` for `nginx` (its pid file and port), with `extra` flags.
pub fn sidecar_for(nginx: &Nginx, extra: &[&str]) -> Sidecar {
    Sidecar::for_nginx(bin(), nginx, extra).expect("start sidecar")
}

/// The JSON body of an answer (every JSON answer ends with a newline).
pub fn json(f: &Fetched) -> Value {
    assert!(f.body.ends_with(b"\n"), "JSON bodies end with a newline");
    serde_json::from_slice(&f.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", f.text()))
}

/// `scripts/image --no-build --oci-archive DIR/nginx-drain.tar`: the index
/// scripts/test built, as an OCI archive; its path.
pub fn oci_archive(dir: &Path) -> std::path::PathBuf {
    let archive = dir.join("nginx-drain.tar");
    let out = std::process::Command::new("scripts/image")
        .args(["--no-build", "--oci-archive"])
        .arg(&archive)
        .output()
        .expect("scripts/image");
    assert!(
        out.status.success(),
        "scripts/image --oci-archive: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    archive
}

/// What a real-Kubernetes rig (`../shared/kubelet-rig`,
/// `../shared/cluster-rig`) needs before it can come up.
pub struct RigInputs {
    /// The rig's scripts.
    pub dir: std::path::PathBuf,
    pub project: std::path::PathBuf,
    /// The static binary scripts/image built.
    pub binary: std::path::PathBuf,
    /// The Kubernetes binaries scripts/kube built.
    pub kube_bin: std::path::PathBuf,
}

/// The rig `folder` of `../shared` (or `$env`), root, the static binary and
/// the Kubernetes binaries; the reason when one is missing. `needs` says
/// what root is for.
pub fn rig_inputs(env: &str, folder: &str, needs: &str) -> Result<RigInputs, String> {
    let dir = std::env::var_os(env)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new("..").join("shared").join(folder));
    if !dir.join("rig.sh").is_file() {
        return Err(format!("no rig at {} (set {env})", dir.display()));
    }
    if !nix::unistd::getuid().is_root() {
        return Err(format!("it needs root ({needs})"));
    }
    let project = std::env::current_dir().unwrap();
    let binary = project.join("dist/nginx-drain");
    if !binary.is_file() {
        return Err("no dist/nginx-drain: run scripts/image first (scripts/test does)".into());
    }
    let kube_bin = testbed::kube::bin_dir(&project)?;
    Ok(RigInputs {
        dir,
        project,
        binary,
        kube_bin,
    })
}
