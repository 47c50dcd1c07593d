//! A real Kubernetes cluster on this machine, `../shared/cluster-rig`
//! (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, one
//! kubelet on containerd 2.x and runc, kube-proxy in iptables mode, in
//! network and mount namespaces of its own), on the binaries
//! `scripts/kube` builds from upstream Go modules. Driven from the tests
//! and the rollout benchmark: kubectl and helm inside the rig's network,
//! API watches stamped with when each event arrived, kube-proxy's DNAT
//! rules polled, clients in the rig's network. `down` runs when the
//! [`Cluster`] is dropped, whatever happened.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use serde_json::Value;

/// The node's address: clients inside the rig's network send from it, and
/// kube-proxy masquerades what they send to a Service (`masqueradeAll`,
/// the rig's default) to [`BRIDGE_IP`].
pub const NODE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 214, 0, 1));
/// The pods' bridge: the kubelet's probes and hooks come from it, and so
/// does every masqueraded Service connection.
pub const BRIDGE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 214, 1, 1));

/// NGINX as UID 101 on port 8080 (`localhost/rig-nginx:1.22.1-nonroot`),
/// as the chart's default nginx-unprivileged runs: the `restricted` Pod
/// Security profile admits it.
pub fn nonroot_nginx() -> ExtraImage<'static> {
    ExtraImage {
        tag: "localhost/rig-nginx:1.22.1-nonroot",
        containerfile: "FROM localhost/rig-nginx:1.22.1\n\
                        COPY nginx.conf /etc/nginx/nginx.conf\n\
                        USER 101:101\n",
        files: &[("nginx.conf", include_bytes!("../files/nginx-nonroot.conf"))],
    }
}

/// [`nonroot_nginx`] with a shell, `pgrep` and `sleep` (Debian's static
/// busybox, which the caller passes), for preStop hooks that script NGINX's
/// quit (`localhost/rig-nginx:1.22.1-nonroot-sh`).
pub fn nonroot_nginx_with_shell(busybox: &'static [u8]) -> ExtraImage<'static> {
    let files: &'static [(&'static str, &'static [u8])] =
        Box::leak(Box::new([("busybox", busybox)]));
    ExtraImage {
        tag: "localhost/rig-nginx:1.22.1-nonroot-sh",
        containerfile: "FROM localhost/rig-nginx:1.22.1-nonroot\n\
                        USER 0:0\n\
                        COPY --chmod=755 busybox /bin/busybox\n\
                        RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
                        USER 101:101\n",
        files,
    }
}

/// An image the tests add to the rig's own (pause, nginx, nginx-drain).
pub struct ExtraImage<'a> {
    /// `localhost/NAME:TAG`.
    pub tag: &'a str,
    /// Containerfile text (`FROM` one of the rig's images).
    pub containerfile: &'a str,
    /// Files placed in the build context, by name.
    pub files: &'a [(&'a str, &'a [u8])],
}

pub struct Cluster {
    /// `../shared/cluster-rig`.
    pub dir: PathBuf,
    /// `$RIG`: binaries, images, state and logs.
    pub home: PathBuf,
    /// What `scripts/kube` built.
    pub kube_bin: PathBuf,
}

impl Cluster {
    /// Builds the images (the rig's, with the project's binary at
    /// `binary`, and `extra`) and starts the cluster. Panics with what
    /// failed.
    pub fn up(
        dir: &Path,
        home: &Path,
        project: &Path,
        binary: &Path,
        kube_bin: &Path,
        extra: &[ExtraImage<'_>],
    ) -> Cluster {
        let c = Cluster {
            dir: dir.to_path_buf(),
            home: home.to_path_buf(),
            kube_bin: kube_bin.to_path_buf(),
        };
        // A rig left over from an interrupted run holds its cgroups.
        let _ = c.rig(&["down"]).output();
        let images = c
            .rig(&["images"])
            .arg(binary)
            .arg(project)
            .current_dir(project)
            .output()
            .expect("run rig.sh images");
        ok("rig.sh images", &images);
        for image in extra {
            c.build_image(image);
        }
        // The controllers' look-alikes, for their charts' own releases (no
        // WebSocket backend here: `/ws` answers 502).
        crate::rig::build_lookalikes(project, home, SocketAddr::from(([127, 0, 0, 1], 9)));
        let up = c.rig(&["up"]).output().expect("run rig.sh up");
        ok("rig.sh up", &up);
        eprintln!("{}", String::from_utf8_lossy(&up.stdout).trim());
        c.default_route_for_pods();
        c
    }

    /// The rig's CNI (bridge + host-local) gives pods only their subnet's
    /// route; the CNIs clusters run (flannel, Calico, Cilium, kubenet, the
    /// clouds') give them a default route too, through which a pod reaches
    /// the API server's Service (`KUBERNETES_SERVICE_HOST`, for the drain
    /// Events). The same bridge config with a default route through the
    /// bridge: containerd reads the config again for each pod created after.
    fn default_route_for_pods(&self) {
        let conf = self.home.join("run/cni/net.d/10-cluster-rig.conflist");
        let Ok(text) = std::fs::read_to_string(&conf) else {
            panic!("the rig's CNI config is not at {}", conf.display());
        };
        let mut v: serde_json::Value = serde_json::from_str(&text).expect("the rig's CNI config");
        let ipam = &mut v["plugins"][0]["ipam"];
        assert!(ipam.is_object(), "the rig's CNI config has no ipam: {text}");
        ipam["routes"] = serde_json::json!([{"dst": "0.0.0.0/0"}]);
        // Written beside, then renamed over: containerd never reads half.
        let tmp = conf.with_extension("tmp");
        std::fs::write(&tmp, v.to_string()).expect("write the CNI config");
        std::fs::rename(&tmp, &conf).expect("replace the CNI config");
    }

    /// `rig.sh ARGS` with the rig's `$RIG` and the suite's binaries.
    pub fn rig(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.dir.join("rig.sh"));
        cmd.args(args).env("RIG", &self.home);
        crate::kube::use_bins(&mut cmd, &self.kube_bin);
        cmd
    }

    /// `rig.sh in CMD...` (the rig's network, KUBECONFIG set), which must
    /// succeed; its stdout.
    pub fn sh(&self, args: &[&str]) -> String {
        let mut all = vec!["in"];
        all.extend_from_slice(args);
        let out = self.rig(&all).output().expect("run rig.sh in");
        ok(&format!("{args:?}"), &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kubectl ARGS, whatever it answers.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        let mut all = vec!["kubectl"];
        all.extend_from_slice(args);
        self.rig(&all).output().expect("run kubectl")
    }

    /// kubectl ARGS, which must succeed; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        ok(&format!("kubectl {args:?}"), &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kubectl ARGS -o json, parsed.
    pub fn kubectl_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&all)).expect("kubectl's JSON")
    }

    /// kubectl ARGS with `input` on stdin (`apply -f -`, `create --raw`).
    pub fn kubectl_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut all = vec!["kubectl"];
        all.extend_from_slice(args);
        let mut child = self
            .rig(&all)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write kubectl's stdin");
        child.wait_with_output().expect("kubectl")
    }

    /// The holder of the rig's namespaces.
    fn holder(&self) -> String {
        std::fs::read_to_string(self.home.join("run/holder.pid"))
            .expect("the rig is up (run/holder.pid)")
            .trim()
            .to_string()
    }

    /// The rig's network namespace (for [`crate::netns::run_in`]).
    pub fn netns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.holder()))
    }

    /// Watches `kubectl get ARGS --watch` (with `--output-watch-events -o
    /// json`), stamping each event with when it arrived.
    pub fn watch(&self, args: &[&str]) -> Watch {
        let mut all = vec!["in", "kubectl", "get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--watch", "--output-watch-events", "-o", "json"]);
        // A process group of its own: `rig.sh in` runs kubectl as a
        // grandchild, which must end with it.
        let mut child = self
            .rig(&all)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("run kubectl get --watch");
        let stdout = child.stdout.take().expect("stdout");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let thread = std::thread::spawn(move || {
            let stream =
                serde_json::Deserializer::from_reader(BufReader::new(stdout)).into_iter::<Value>();
            for ev in stream {
                let Ok(ev) = ev else { break };
                let at = SystemTime::now();
                sink.lock().expect("events").push(Event {
                    at,
                    kind: ev["type"].as_str().unwrap_or_default().to_string(),
                    object: ev["object"].clone(),
                });
            }
        });
        Watch {
            child,
            events,
            thread: Some(thread),
        }
    }

    /// Polls kube-proxy's DNAT rules (`iptables-save -t nat` in the rig's
    /// network) every `every`: which pod addresses a Service still
    /// forwards to, and when that changed.
    pub fn dnat_poller(&self, every: Duration) -> DnatPoller {
        let holder = self.holder();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let changes = Arc::new(Mutex::new(Vec::new()));
        let sink = changes.clone();
        let thread = std::thread::spawn(move || {
            let mut before: BTreeSet<IpAddr> = BTreeSet::new();
            // Bounded: at most an hour of polls.
            for _ in 0..(3_600_000 / every.as_millis().max(1)) {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                // Stamped when the read begins: the table is read a few
                // milliseconds later, so a change is placed no later than
                // it happened by more than one poll.
                let at = SystemTime::now();
                let out = Command::new("nsenter")
                    .args([
                        "-t",
                        &holder,
                        "-n",
                        "-m",
                        "--",
                        "iptables-save",
                        "-t",
                        "nat",
                    ])
                    .output();
                if let Ok(out) = out {
                    let now = dnat_targets(&String::from_utf8_lossy(&out.stdout));
                    let mut s = sink.lock().expect("changes");
                    for ip in now.difference(&before) {
                        s.push((at, *ip, true));
                    }
                    for ip in before.difference(&now) {
                        s.push((at, *ip, false));
                    }
                    before = now;
                }
                std::thread::sleep(every);
            }
        });
        DnatPoller {
            stop,
            changes,
            thread: Some(thread),
        }
    }

    /// Builds `image` FROM the rig's images, in the rig's own buildah
    /// storage, and saves it where `up` imports images from.
    fn build_image(&self, image: &ExtraImage<'_>) {
        let ctx = self
            .home
            .join("images")
            .join(format!("ctx-{}", image.tag.replace(['/', ':'], "-")));
        let _ = std::fs::remove_dir_all(&ctx);
        std::fs::create_dir_all(&ctx).expect("build context");
        std::fs::write(ctx.join("Containerfile"), image.containerfile).expect("Containerfile");
        for (name, bytes) in image.files {
            std::fs::write(ctx.join(name), bytes).expect("context file");
        }
        let buildah = |args: &[&str]| {
            let out = Command::new("buildah")
                .arg("--root")
                .arg(self.home.join("buildah/root"))
                .arg("--runroot")
                .arg(self.home.join("buildah/runroot"))
                .args(["--storage-driver", "vfs"])
                .args(args)
                .output()
                .expect("run buildah");
            ok(&format!("buildah {args:?}"), &out);
        };
        let ctx_s = ctx.to_str().expect("a UTF-8 path");
        buildah(&[
            "bud",
            "--quiet",
            "--isolation",
            "chroot",
            "-t",
            image.tag,
            "-f",
            &format!("{ctx_s}/Containerfile"),
            ctx_s,
        ]);
        let tar = self
            .home
            .join("images")
            .join(format!("{}.tar", image.tag.replace(['/', ':'], "-")));
        let _ = std::fs::remove_file(&tar);
        buildah(&[
            "push",
            "--quiet",
            image.tag,
            &format!("docker-archive:{}:{}", tar.display(), image.tag),
        ]);
    }

    /// A component's log (`kubelet`, `kube-proxy`, ...).
    pub fn log(&self, component: &str) -> String {
        std::fs::read_to_string(self.home.join("logs").join(format!("{component}.log")))
            .unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        match self.rig(&["down"]).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "rig.sh down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("rig.sh down: {e}"),
        }
    }
}

/// An API watch's event, stamped with when it arrived here.
#[derive(Debug, Clone)]
pub struct Event {
    pub at: SystemTime,
    /// `ADDED`, `MODIFIED`, `DELETED`.
    pub kind: String,
    pub object: Value,
}

pub struct Watch {
    child: Child,
    events: Arc<Mutex<Vec<Event>>>,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    /// The events so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("events").clone()
    }

    /// Ends the watch; every event it saw.
    pub fn stop(mut self) -> Vec<Event> {
        self.end();
        self.events()
    }

    fn end(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.wait();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.end();
    }
}

pub struct DnatPoller {
    stop: Arc<AtomicBool>,
    /// (when, pod address, present): each appearance and disappearance.
    changes: Arc<Mutex<Vec<(SystemTime, IpAddr, bool)>>>,
    thread: Option<JoinHandle<()>>,
}

impl DnatPoller {
    /// When the last DNAT rule to `ip` disappeared (and did not come back).
    pub fn gone_at(&self, ip: IpAddr) -> Option<SystemTime> {
        let changes = self.changes.lock().expect("changes");
        let last = changes.iter().rev().find(|(_, i, _)| *i == ip)?;
        (!last.2).then_some(last.0)
    }

    pub fn stop(mut self) -> Vec<(SystemTime, IpAddr, bool)> {
        self.end();
        self.changes.lock().expect("changes").clone()
    }

    fn end(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for DnatPoller {
    fn drop(&mut self) {
        self.end();
    }
}

/// The pod addresses a Service still sends new connections to: each
/// endpoint chain's DNAT target (`-A KUBE-SEP-X ... -j DNAT --to-destination
/// 10.214.1.5:8080`), counted only while a Service chain jumps to it
/// (`-A KUBE-SVC-Y ... -j KUBE-SEP-X`): kube-proxy deletes an endpoint's
/// chain some syncs after it stopped using it.
pub fn dnat_targets(nat: &str) -> BTreeSet<IpAddr> {
    let mut target: BTreeMap<&str, IpAddr> = BTreeMap::new();
    let mut used: BTreeSet<&str> = BTreeSet::new();
    for l in nat.lines() {
        let mut words = l.split_whitespace();
        if words.next() != Some("-A") {
            continue;
        }
        let chain = words.next().unwrap_or_default();
        let jump = l
            .split(" -j ")
            .nth(1)
            .and_then(|j| j.split_whitespace().next());
        if chain.starts_with("KUBE-SEP-") && jump == Some("DNAT") {
            let ip = l
                .split("--to-destination ")
                .nth(1)
                .and_then(|d| d.split_whitespace().next())
                .and_then(|d| d.rsplit_once(':'))
                .and_then(|(ip, _)| ip.parse().ok());
            if let Some(ip) = ip {
                target.insert(chain, ip);
            }
        } else if chain.starts_with("KUBE-SVC-")
            && let Some(j) = jump.filter(|j| j.starts_with("KUBE-SEP-"))
        {
            used.insert(j);
        }
    }
    target
        .into_iter()
        .filter(|(chain, _)| used.contains(chain))
        .map(|(_, ip)| ip)
        .collect()
}

/// Per pod (by name), the last state an API watch showed of it: what it
/// was when it went away.
pub fn last_seen(events: &[Event]) -> BTreeMap<String, (SystemTime, Value)> {
    let mut last = BTreeMap::new();
    for e in events {
        if let Some(name) = e.object["metadata"]["name"].as_str() {
            last.insert(name.to_string(), (e.at, e.object.clone()));
        }
    }
    last
}

/// When a watch first showed `pred` true of the object named `name`.
pub fn first_when(
    events: &[Event],
    name: &str,
    pred: impl Fn(&Event) -> bool,
) -> Option<SystemTime> {
    events
        .iter()
        .filter(|e| e.object["metadata"]["name"] == name)
        .find(|e| pred(e))
        .map(|e| e.at)
}

/// A container's status in a pod object, native sidecars included.
pub fn container_status<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    ["containerStatuses", "initContainerStatuses"]
        .iter()
        .filter_map(|k| pod["status"][k].as_array())
        .flatten()
        .find(|c| c["name"] == name)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dnat_targets_are_the_pod_addresses() {
        let nat = "-A KUBE-SEP-AAA -s 10.214.1.5/32 -m comment --comment \"edge/web:http\" -j KUBE-MARK-MASQ\n\
                   -A KUBE-SEP-AAA -p tcp -m comment --comment \"edge/web:http\" -m tcp -j DNAT --to-destination 10.214.1.5:8080\n\
                   -A KUBE-SEP-BBB -p tcp -m tcp -j DNAT --to-destination 10.214.1.7:8080\n\
                   -A KUBE-SEP-CCC -p tcp -m tcp -j DNAT --to-destination 10.214.1.9:8080\n\
                   -A KUBE-SVC-XYZ -m statistic --mode random --probability 0.5 -j KUBE-SEP-AAA\n\
                   -A KUBE-SVC-XYZ -j KUBE-SEP-BBB\n";
        let t = dnat_targets(nat);
        // CCC's chain is left over, no Service uses it.
        assert_eq!(
            t.into_iter().map(|i| i.to_string()).collect::<Vec<_>>(),
            ["10.214.1.5", "10.214.1.7"]
        );
    }
}
