//! The container image, run with podman against a real NGINX on the host
//! (host PID and network namespaces, as a pod's shared namespaces).
//!
//! `scripts/test` builds the image (`scripts/image`) and names it in
//! NGINX_DRAIN_TEST_IMAGE. Without it these tests are skipped, loudly, and
//! under CI (CI=true) that is a failure.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use testbed::client;
use testbed::scenario::wait_ready;
use testbed::{Nginx, NginxOptions, free_port};

mod support;

const HANG: Duration = Duration::from_secs(30);

fn image() -> Option<String> {
    match std::env::var("NGINX_DRAIN_TEST_IMAGE") {
        Ok(i) if !i.is_empty() => Some(i),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "NGINX_DRAIN_TEST_IMAGE is not set under CI: scripts/test builds the image and sets it"
            );
            support::skipped(
                "container tests need the image; run scripts/test (it builds it with buildah)",
            );
            None
        }
    }
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(["--storage-driver", "vfs", "--runtime", "runc"])
        .args(args)
        .output()
        .expect("podman (apt-get install podman runc)")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "podman failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs the image detached beside `nginx`, as `user`, with extra flags.
fn run(
    image: &str,
    name: &str,
    nginx: &Nginx,
    user: Option<&str>,
    extra: &[&str],
) -> std::net::SocketAddr {
    let port = free_port();
    let dir = nginx.work.path().to_str().unwrap().to_string();
    let volume = format!("{dir}:{dir}:ro");
    let listen = format!("127.0.0.1:{port}");
    let pid_file = nginx.pid_file().to_str().unwrap().to_string();
    let nginx_port = nginx.addr().port().to_string();
    let _ = podman(&["rm", "-f", name]);
    let mut args = vec![
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "host",
        "--pid",
        "host",
        // As the shared context's recipe: runc needs explicit limits here.
        "--ulimit",
        "nofile=20000:20000",
        "--ulimit",
        "nproc=4096:4096",
        "-v",
        &volume,
    ];
    if let Some(u) = user {
        args.extend(["--user", u]);
    }
    args.push(image);
    args.extend([
        "--listen",
        &listen,
        "--nginx-pid-file",
        &pid_file,
        "--port",
        &nginx_port,
    ]);
    args.extend_from_slice(extra);
    ok(podman(&args));
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_drains_a_real_nginx_and_exits_0_on_sigterm() {
    let Some(image) = image() else { return };
    let nginx = Nginx::start(NginxOptions::default()).unwrap();
    // The official nginx image's master runs as root: so does the sidecar.
    let addr = run(&image, "nginx-drain-test-ok", &nginx, Some("0"), &[]);
    wait_ready(addr).await;
    let download = client::spawn_download(nginx.addr(), "1m").await;
    let hook = client::get(addr, "/prestop", HANG).await.unwrap();
    let report: Value = serde_json::from_slice(&hook.body).unwrap();
    assert_eq!(report["outcome"], "drained", "{report:#}");
    assert_eq!(
        download.await.unwrap().unwrap().body.len(),
        1 << 20,
        "the download completed"
    );
    assert_eq!(nginx.sigquit_count(), 1);
    ok(podman(&["stop", "-t", "20", "nginx-drain-test-ok"]));
    let code = ok(podman(&["wait", "nginx-drain-test-ok"]));
    assert_eq!(
        code, "0",
        "the sidecar exits 0 on SIGTERM once nginx is gone"
    );
    let logs = podman(&["logs", "nginx-drain-test-ok"]);
    assert!(String::from_utf8_lossy(&logs.stderr).contains("nginx-drain exiting code=0"));
    ok(podman(&["rm", "nginx-drain-test-ok"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_user_cannot_signal_a_root_master_and_says_how_to_fix_it() {
    let Some(image) = image() else { return };
    let nginx = Nginx::start(NginxOptions::default()).unwrap();
    // The image's own user, 101, against a master running as root.
    let addr = run(
        &image,
        "nginx-drain-test-eperm",
        &nginx,
        None,
        &["--on-failure", "status"],
    );
    wait_ready(addr).await;
    let hook = client::get(addr, "/prestop", HANG).await.unwrap();
    assert_eq!(hook.status, 500);
    let report: Value = serde_json::from_slice(&hook.body).unwrap();
    assert_eq!(report["outcome"], "error");
    let msg = report["message"].as_str().unwrap();
    assert!(
        msg.contains("EPERM")
            && msg.contains("UID 0")
            && msg.contains("UID 101")
            && msg.contains("CAP_KILL"),
        "{msg}"
    );
    assert!(nginx.is_running(), "nginx untouched");
    assert_eq!(nginx.sigquit_count(), 0);
    drop(nginx); // the master goes, so the sidecar's SIGTERM ends it at once
    ok(podman(&["stop", "-t", "20", "nginx-drain-test-eperm"]));
    assert_eq!(ok(podman(&["wait", "nginx-drain-test-eperm"])), "0");
    ok(podman(&["rm", "nginx-drain-test-eperm"]));
}

#[test]
fn the_image_is_small_static_and_non_root() {
    let Some(image) = image() else { return };
    let user = ok(podman(&[
        "image",
        "inspect",
        "--format",
        "{{.Config.User}}",
        &image,
    ]));
    assert_eq!(user, "101:101");
    let entrypoint = ok(podman(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Entrypoint}}",
        &image,
    ]));
    assert_eq!(entrypoint, r#"["/nginx-drain","serve"]"#);
    let labels = ok(podman(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Labels}}",
        &image,
    ]));
    for key in [
        "org.opencontainers.image.source",
        "org.opencontainers.image.version",
        "org.opencontainers.image.licenses",
    ] {
        assert!(labels.contains(key), "{labels}");
    }
    let size: u64 = ok(podman(&[
        "image",
        "inspect",
        "--format",
        "{{.Size}}",
        &image,
    ]))
    .parse()
    .unwrap();
    println!("image size: {size} bytes");
    assert!(size <= 8_000_000, "image {size} bytes, goal <= 8 MB");
    assert!(Path::new("dist/nginx-drain").exists() || std::env::var_os("CI").is_none());
}

/// `scripts/image` builds one OCI index with linux/amd64 and linux/arm64,
/// each image with its platform, the OCI labels and a size under 5 MB; its
/// `--oci-archive` loads with podman.
#[test]
fn the_index_holds_both_platforms_and_its_archive_loads() {
    let Some(image) = image() else { return };
    let out = Command::new("buildah")
        .args(["--storage-driver", "vfs", "manifest", "inspect"])
        .arg(format!("{image}-index"))
        .output()
        .expect("buildah");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let index: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let platforms: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    for arch in ["amd64", "arm64"] {
        let one = format!("{image}-linux-{arch}");
        let what = ok(podman(&[
            "image",
            "inspect",
            "--format",
            "{{.Os}}/{{.Architecture}} {{.Size}} {{json .Config.Labels}}",
            &one,
        ]));
        println!("{one}: {what}");
        assert!(what.starts_with(&format!("linux/{arch} ")), "{what}");
        let size: u64 = what.split(' ').nth(1).unwrap().parse().unwrap();
        // 4.0 MB until TLS came in (rustls and ring, for the webhook and the
        // drain Events): 6.5 MB.
        assert!(size <= 7_000_000, "{one}: {size} bytes, goal <= 7 MB");
        for label in [
            "org.opencontainers.image.version",
            "org.opencontainers.image.revision",
            "org.opencontainers.image.source",
            "org.opencontainers.image.licenses",
        ] {
            assert!(what.contains(label), "{one}: {what}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let archive = support::oci_archive(dir.path());
    // Into a storage of its own, as on another machine (loading into this
    // one would retag the images the index points at).
    let root = dir.path().join("root");
    let runroot = dir.path().join("runroot");
    let isolated = |args: &[&str]| {
        Command::new("podman")
            .args(["--storage-driver", "vfs", "--root"])
            .arg(&root)
            .arg("--runroot")
            .arg(&runroot)
            .args(args)
            .output()
            .expect("podman")
    };
    let loaded = ok(isolated(&["load", "-i", archive.to_str().unwrap()]));
    assert!(loaded.contains("nginx-drain"), "{loaded}");
    let arch = ok(isolated(&[
        "image",
        "inspect",
        "--format",
        "{{.Architecture}}",
        &image,
    ]));
    assert_eq!(
        arch, "amd64",
        "podman loads this machine's platform from the index"
    );
}
