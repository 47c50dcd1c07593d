//! The Kubernetes binaries the suite builds itself from upstream Go modules
//! (`scripts/kube`: kubelet, kube-apiserver, kube-controller-manager,
//! kube-scheduler, kube-proxy, kubectl and etcd in one multi-call binary,
//! plus crictl and containerd 2.x), and how the shared rigs are told to use
//! them.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The folder `scripts/kube` built: `NGINX_DRAIN_KUBE_BIN` (scripts/test
/// sets it), else what `scripts/kube --print` names. An error says how to
/// build it.
pub fn bin_dir(project: &Path) -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("NGINX_DRAIN_KUBE_BIN") {
        let dir = PathBuf::from(dir);
        return if dir.join("kubelet").is_file() {
            Ok(dir)
        } else {
            Err(format!(
                "NGINX_DRAIN_KUBE_BIN={} holds no kubelet: run scripts/kube",
                dir.display()
            ))
        };
    }
    let out = Command::new(project.join("scripts/kube"))
        .arg("--print")
        .output()
        .map_err(|e| format!("cannot run scripts/kube --print: {e}"))?;
    if !out.status.success() {
        return Err(
            "the Kubernetes binaries are not built: run scripts/kube (15-25 min cold; scripts/test does it)"
                .into(),
        );
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

/// Points a rig script at `bin`: `KUBE_BIN` (the rigs link their
/// components from there) and `bin` first on `PATH`, so that the rigs' own
/// calls of `containerd`, `ctr` and the runc shim find the 2.x ones built
/// with the kubelet rather than Debian's 1.6.
pub fn use_bins(cmd: &mut Command, bin: &Path) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![bin.to_path_buf()];
    dirs.extend(std::env::split_paths(&path));
    cmd.env("KUBE_BIN", bin)
        .env("PATH", std::env::join_paths(dirs).expect("PATH"));
}
