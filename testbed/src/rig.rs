//! The real kubelet of `../shared/kubelet-rig` (the kubelet, crictl and
//! containerd 2.x that `scripts/kube` builds from upstream Go modules,
//! Debian's runc, static pods in network and mount namespaces of their own), driven
//! from the tests: up, a pod from a manifest, traffic from inside the rig's
//! network, deletion, and what the kubelet, the runtime and the containers
//! said. `down` runs when the [`Rig`] is dropped, whatever happened.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

/// The clients' address inside the rig: a second address on the pods'
/// bridge (pods have no default route, so clients must be on their subnet),
/// neither the kubelet's (the bridge's first, 10.213.1.1) nor a pod's.
pub const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 213, 1, 250));
/// The port of the WebSocket echo backend that the controllers' look-alikes
/// proxy `/ws` to, on [`CLIENT_IP`] (a test runs it in the rig's network
/// while it needs it).
pub const WS_PORT: u16 = 9001;
/// Where the kubelet's probes and hooks come from (the bridge).
pub const KUBELET_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 213, 1, 1));

pub struct Rig {
    /// `../shared/kubelet-rig`.
    pub dir: PathBuf,
    /// `$RIG`: binaries, images, state and logs.
    pub home: PathBuf,
    /// The kubelet, crictl and containerd `scripts/kube` built.
    pub kube_bin: PathBuf,
}

impl Rig {
    /// Builds the images (the project's binary at `binary`) and starts the
    /// rig. Panics with what failed.
    pub fn up(dir: &Path, home: &Path, project: &Path, binary: &Path, kube_bin: &Path) -> Rig {
        let rig = Rig {
            dir: dir.to_path_buf(),
            home: home.to_path_buf(),
            kube_bin: kube_bin.to_path_buf(),
        };
        // A rig left over from an interrupted run holds the kubelet's cgroups.
        let _ = rig.script("rig.sh", &["down"]);
        let images = Command::new(dir.join("images.sh"))
            .arg(binary)
            .arg(project)
            .env("RIG", home)
            .current_dir(project)
            .output()
            .expect("run images.sh");
        ok("images.sh", &images);
        // The controllers' look-alikes, imported beside the rig's own
        // images at `up`.
        build_lookalikes(project, home, SocketAddr::new(CLIENT_IP, WS_PORT));
        let up = rig.script("rig.sh", &["up"]);
        ok("rig.sh up", &up);
        rig
    }

    fn script(&self, name: &str, args: &[&str]) -> Output {
        self.command(name)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {name}: {e}"))
    }

    /// A rig script with the rig's `$RIG` and the suite's binaries.
    pub fn command(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.dir.join(name));
        cmd.env("RIG", &self.home);
        crate::kube::use_bins(&mut cmd, &self.kube_bin);
        cmd
    }

    /// `rig.sh ARGS`, which must succeed; its stdout.
    pub fn sh(&self, args: &[&str]) -> String {
        let out = self.script("rig.sh", args);
        ok(&format!("rig.sh {args:?}"), &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `crictl ARGS -o json`, parsed; null when crictl fails (an object
    /// that went away between a list and an inspect).
    pub fn crictl_json(&self, args: &[&str]) -> Value {
        // Flags before the positional ids: crictl reads what follows an id
        // as more ids.
        let mut a = vec!["crictl", args[0], "-o", "json"];
        a.extend_from_slice(&args[1..]);
        let out = self.script("rig.sh", &a);
        if !out.status.success() {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// The rig's network namespace (for [`crate::netns::run_in`]).
    pub fn netns(&self) -> PathBuf {
        let holder = std::fs::read_to_string(self.home.join("run/holder.pid"))
            .expect("the rig is up (run/holder.pid)");
        PathBuf::from(format!("/proc/{}/ns/net", holder.trim()))
    }

    /// The static pod's sandbox id and IP, once it has one.
    pub fn pod(&self, name: &str) -> Option<(String, IpAddr)> {
        let pods = self.crictl_json(&["pods", "--name", name]);
        let id = pods["items"]
            .as_array()?
            .iter()
            .find(|p| p["state"] == "SANDBOX_READY")?["id"]
            .as_str()?
            .to_string();
        let ip = self.crictl_json(&["inspectp", &id])["status"]["network"]["ip"]
            .as_str()?
            .parse()
            .ok()?;
        Some((id, ip))
    }

    /// Gives the pod a default route through the bridge ([`KUBELET_IP`]),
    /// as bridge CNIs with `isDefaultGateway` (flannel, kubenet) and Cilium
    /// do: the rig's CNI gives pods only their subnet.
    pub fn add_default_route(&self, pod_id: &str) {
        let pid = self.crictl_json(&["inspectp", pod_id])["info"]["pid"]
            .as_u64()
            .expect("the sandbox's pid (crictl inspectp .info.pid)");
        let out = Command::new("nsenter")
            .args([
                "-t",
                &pid.to_string(),
                "-n",
                "ip",
                "route",
                "replace",
                "default",
                "via",
            ])
            .arg(KUBELET_IP.to_string())
            .output()
            .expect("nsenter");
        ok("ip route replace default (in the pod)", &out);
    }

    /// Puts [`CLIENT_IP`] on the pods' bridge (which the CNI creates with
    /// the first pod); once is enough.
    pub fn add_client_address(&self) {
        let out = self.script(
            "rig.sh",
            &[
                "in",
                "ip",
                "addr",
                "replace",
                &format!("{CLIENT_IP}/32"),
                "dev",
                "rigbr0",
            ],
        );
        ok("ip addr replace (the clients' address)", &out);
    }

    /// The pod's containers by name: `crictl inspect` of each.
    pub fn containers(&self, pod_id: &str) -> Vec<Value> {
        let list = self.crictl_json(&["ps", "-a", "--pod", pod_id]);
        list["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["id"].as_str())
            .map(|id| self.crictl_json(&["inspect", id]))
            .collect()
    }

    /// Waits until at least `n` of the pod's containers run (init
    /// containers that ran to completion do not count); false on timeout.
    pub fn wait_running(&self, pod_id: &str, n: usize, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            let running = self
                .containers(pod_id)
                .iter()
                .filter(|c| c["status"]["state"] == "CONTAINER_RUNNING")
                .count();
            if running >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// A container's log (stdout and stderr, in the CRI log format), read
    /// from the rig's mount namespace, where the kubelet keeps it (while the
    /// container exists).
    pub fn logs(&self, container: &Value) -> std::io::Result<String> {
        self.read_inside(container["status"]["logPath"].as_str().unwrap_or_default())
    }

    /// A file of the rig's mount namespace, read from here.
    pub fn read_inside(&self, path: &str) -> std::io::Result<String> {
        let holder = std::fs::read_to_string(self.home.join("run/holder.pid"))?;
        std::fs::read_to_string(format!("/proc/{}/root{path}", holder.trim()))
    }

    /// Where a container's termination message lives (the host side of its
    /// `/dev/termination-log`), from `crictl inspect`.
    pub fn termination_log_path(container: &Value) -> Option<String> {
        container["status"]["mounts"]
            .as_array()?
            .iter()
            .find(|m| m["containerPath"] == "/dev/termination-log")?["hostPath"]
            .as_str()
            .map(str::to_string)
    }

    /// A container's exit code as the kubelet's pod lifecycle events
    /// logged it (`"Generic (PLEG): container finished" ... exitCode=N`),
    /// else as containerd logged its main process's exit (the kubelet
    /// removes a deleted pod's containers right after they exit, sometimes
    /// before its PLEG saw them exited).
    pub fn exit_code(&self, container_id: &str) -> Option<i64> {
        let text = std::fs::read_to_string(self.home.join("logs/kubelet.log")).ok()?;
        text.lines()
            .filter(|l| l.contains("container finished") && l.contains(container_id))
            .find_map(|l| l.rsplit("exitCode=").next()?.trim().parse().ok())
            .or_else(|| self.exit_status_logged(container_id))
    }

    /// The exit status of a container's main process from containerd's
    /// exit event (`received container exit event container_id:"ID"
    /// id:"ID" ... exit_status:N`; the field is left out when 0; an exec's
    /// event, such as a preStop command's, has another `id`).
    fn exit_status_logged(&self, container_id: &str) -> Option<i64> {
        let text = std::fs::read_to_string(self.home.join("logs/containerd.log")).ok()?;
        exit_status_in(&text, container_id)
    }

    /// The kubelet's log lines about `pod` (its static-pod name).
    pub fn kubelet_log(&self, pod: &str) -> Vec<String> {
        let text = std::fs::read_to_string(self.home.join("logs/kubelet.log")).unwrap_or_default();
        let needle = format!("pod=\"default/{pod}\"");
        text.lines()
            .filter(|l| l.contains(&needle))
            .map(str::to_string)
            .collect()
    }
}

/// [`Rig::exit_status_logged`] on containerd's log text.
fn exit_status_in(text: &str, container_id: &str) -> Option<i64> {
    let main = format!(r#"container_id:\"{container_id}\"  id:\"{container_id}\""#);
    let line = text
        .lines()
        .find(|l| l.contains("received container exit event") && l.contains(&main))?;
    Some(match line.split("exit_status:").nth(1) {
        Some(rest) => rest
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()?,
        None => 0,
    })
}

/// Builds the controllers' look-alike images (`testbed/lookalikes`) into
/// `$RIG/images` (`home`), whence a rig imports them at `up`; their NGINX
/// proxies `/ws` to `ws_backend`. Panics with what failed.
pub fn build_lookalikes(project: &Path, home: &Path, ws_backend: SocketAddr) {
    let out = Command::new(project.join("testbed/lookalikes/build.sh"))
        .arg(home.join("images"))
        .arg(home.join("buildah-lookalikes"))
        .env("WS_BACKEND", ws_backend.to_string())
        .output()
        .expect("run testbed/lookalikes/build.sh");
    ok("testbed/lookalikes/build.sh", &out);
}

impl Drop for Rig {
    fn drop(&mut self) {
        let out = self.script("rig.sh", &["down"]);
        if !out.status.success() {
            eprintln!(
                "rig.sh down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The time of a kubelet log line (`I1127 23:44:27.639466 ...`) as seconds
/// since midnight, to order it against the sidecar's report.
pub fn kubelet_log_time(line: &str) -> Option<f64> {
    let t = line.split_ascii_whitespace().nth(1)?;
    let mut parts = t.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// An RFC 3339 UTC timestamp (`2026-11-27T23:44:27.638Z`) as seconds since
/// midnight.
pub fn rfc3339_time(stamp: &str) -> Option<f64> {
    let t = stamp.split('T').nth(1)?.trim_end_matches('Z');
    kubelet_log_time(&format!("I {t}"))
}

#[cfg(test)]
mod tests {
    use super::exit_status_in;

    #[test]
    fn a_main_process_exit_is_read_from_containerds_log_and_an_execs_is_not() {
        let log = concat!(
            r#"time="t" level=info msg="received container exit event container_id:\"c1\"  id:\"e9\"  pid:70  exit_status:2  exited_at:{seconds:1}""#,
            "\n",
            r#"time="t" level=info msg="received container exit event container_id:\"c1\"  id:\"c1\"  pid:60  exit_status:137  exited_at:{seconds:1}""#,
            "\n",
            r#"time="t" level=info msg="received container exit event container_id:\"c2\"  id:\"c2\"  pid:61  exited_at:{seconds:1}""#,
        );
        assert_eq!(exit_status_in(log, "c1"), Some(137));
        assert_eq!(exit_status_in(log, "c2"), Some(0), "0 is left out");
        assert_eq!(exit_status_in(log, "c3"), None);
    }
}
