//! The termination benchmark's harness on a tiny configuration (seconds),
//! so that it cannot rot: the same code as `cargo bench --bench strategies`,
//! one small cell, and the outcomes it must show.

use std::path::Path;
use std::time::Duration;

use testbed::netns;
use testbed::strategies::{self, Strategy, Traffic};

#[path = "../benches/common/render.rs"]
mod render;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_tells_a_sigterm_from_a_drain() {
    // Own PID and network namespaces: pgrep and the census see only this run.
    if !netns::inside() {
        let out = netns::rerun_self_with_own_pids(&[
            "--exact",
            "the_harness_tells_a_sigterm_from_a_drain",
            "--nocapture",
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("{stdout}");
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "failed in its namespaces"
        );
        return;
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_nginx-drain"));
    let traffic = Traffic {
        rate: 50.0,
        warmup: Duration::from_secs(1),
        lag: Duration::from_secs(1),
        downloads: 2,
        keepalive: 2,
        pool_conns: 2,
        pool_rate: 20.0,
        grace: Duration::from_secs(10),
        style: Default::default(),
    };
    let mut rows = Vec::new();
    for s in [
        Strategy::NoPreStop,
        Strategy::IngressNginx,
        Strategy::NginxDrain,
    ] {
        rows.push((s, vec![strategies::run(bin, s, traffic).await]));
    }
    let (no_hook, ingress, drain) = (&rows[0].1[0], &rows[1].1[0], &rows[2].1[0]);
    assert!(
        no_hook.load.failed() > 0 && no_hook.downloads_cut == 2,
        "SIGTERM refuses and cuts: {:?}",
        no_hook.load
    );
    assert!(
        ingress.load.refused > 0 && ingress.downloads_cut == 0,
        "quitting at once refuses the lag's connections"
    );
    // Its loop answers the hook only at a check after NGINX is gone. (How
    // much later is a benchmark's number, not a test's: it varies with the
    // load; an assertion that it was > 0 failed on a busy run.)
    assert!(
        ingress.hook_after >= ingress.gone_after.unwrap(),
        "the pgrep loop answered before NGINX was gone: {:?} vs {:?}",
        ingress.hook_after,
        ingress.gone_after
    );
    assert_eq!(drain.load.failed(), 0, "{:?}", drain.load);
    assert_eq!(drain.downloads_cut, 0);
    assert!(!drain.sigkill && drain.marks.sigquit.is_some());
    assert!(
        drain.marks.sigquit.unwrap() >= drain.marks.lag_end,
        "SIGQUIT after the lag"
    );
    let table = render::table("50/s, lag 1 s", &rows);
    assert_eq!(
        table.lines().filter(|l| l.starts_with("| ")).count(),
        4,
        "{table}"
    );
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join(format!(
        "{}.svg",
        render::slug("50/s, lag 1 s -- nginx-drain (defaults)")
    ));
    assert!(
        svg.ends_with("50-s-lag-1-s-nginx-drain-defaults.svg"),
        "{svg:?}"
    );
    assert!(render::preamble(1).contains("oracle"));
    render::draw(&svg, "nginx-drain", drain).expect("draw (fonts-dejavu-core)");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("SIGQUIT") && text.contains("NGINX gone"));
    println!("{table}");
}
