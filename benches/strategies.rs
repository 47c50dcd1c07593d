//! The termination benchmark: every common preStop strategy against the same
//! real NGINX and traffic, side by side, several runs per cell; a Markdown
//! table and SVG timelines.
//!
//! Run: `cargo bench --bench strategies -- [--runs N] [--out DIR] [--quick]
//! [--cells TEXT] [--strategies TEXT]`
//! (defaults: 3 runs, docs/bench). `--quick` is one tiny cell, for checking
//! that the harness still works. Runs in PID and network namespaces of its
//! own (root), so that `pgrep -x nginx` and the census see only this run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use testbed::load::Style;
use testbed::netns;
use testbed::strategies::{self, Outcome, Strategy, Traffic};

#[path = "common/render.rs"]
mod render;

fn main() {
    let args = netns::enter(true);
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let quick = args.iter().any(|a| a == "--quick");
    let runs: usize = flag("--runs")
        .and_then(|r| r.parse().ok())
        .unwrap_or(if quick { 1 } else { 3 });
    let out_dir = PathBuf::from(flag("--out").unwrap_or_else(|| "docs/bench".into()));
    std::fs::create_dir_all(&out_dir).expect("create the output directory");
    let bin = Path::new(env!("CARGO_BIN_EXE_nginx-drain"));
    let rt = testbed::runtime().expect("tokio runtime");

    let all = [
        Strategy::NoPreStop,
        Strategy::QuitPgrep { sleep_s: 0 },
        Strategy::QuitPgrep { sleep_s: 2 },
        Strategy::QuitPgrep { sleep_s: 5 },
        Strategy::QuitPgrep { sleep_s: 10 },
        Strategy::IngressNginx,
        Strategy::FixedQuiet {
            quiet: Duration::from_millis(300),
        },
        Strategy::FixedQuiet {
            quiet: Duration::from_secs(15),
        },
        Strategy::NginxDrain,
    ];
    let base = Traffic {
        rate: 100.0,
        warmup: Duration::from_secs(3),
        lag: Duration::ZERO,
        downloads: 4,
        keepalive: 4,
        grace: Duration::from_secs(30),
        style: Style::ServerCloses,
        pool_conns: 0,
        pool_rate: 0.0,
    };
    // What a balancer's warm keep-alive pool meets: no preStop, a fixed
    // sleep, the seed's quit loop, nginx-drain.
    let pooled_strategies = [
        Strategy::NoPreStop,
        Strategy::QuitPgrep { sleep_s: 5 },
        Strategy::QuitPgrep { sleep_s: 0 },
        Strategy::NginxDrain,
    ];
    // 16 connections at 200 requests/s, warm for over a minute before the
    // deletion (the sidecar's whole history), going on for the lag: the
    // balancer's deregistration. Two downloads in flight, each on an idle
    // connection of the pool (everything comes through the balancer).
    let pool = Traffic {
        rate: 0.0,
        warmup: Duration::from_secs(61),
        keepalive: 0,
        downloads: 2,
        pool_conns: 16,
        pool_rate: 200.0,
        ..base
    };
    let cells: Vec<(String, Traffic, Vec<Strategy>)> = if quick {
        vec![(
            "50/s, lag 1 s".into(),
            Traffic {
                rate: 50.0,
                warmup: Duration::from_secs(1),
                lag: Duration::from_secs(1),
                downloads: 2,
                keepalive: 2,
                ..base
            },
            vec![Strategy::NoPreStop, Strategy::NginxDrain],
        )]
    } else {
        let mut c = Vec::new();
        for lag in [0, 3, 8] {
            c.push((
                format!("100/s, lag {lag} s"),
                Traffic {
                    lag: Duration::from_secs(lag),
                    ..base
                },
                all.to_vec(),
            ));
        }
        c.push((
            // One request per connection, then the client closes (NGINX
            // would keep it alive): NGINX's socket is gone at once and no
            // TIME_WAIT stays on its side, so only the destroy events see
            // these connections.
            "100/s, clients close first, lag 3 s".into(),
            Traffic {
                lag: Duration::from_secs(3),
                style: Style::KeepAliveOnce,
                ..base
            },
            all.to_vec(),
        ));
        for lag in [0, 3, 8] {
            c.push((
                format!("pool 16 x 200/s, lag {lag} s"),
                Traffic {
                    lag: Duration::from_secs(lag),
                    ..pool
                },
                pooled_strategies.to_vec(),
            ));
        }
        c.push((
            "pool 16 x 200/s + 100 new/s, lag 3 s".into(),
            Traffic {
                rate: 100.0,
                lag: Duration::from_secs(3),
                ..pool
            },
            pooled_strategies.to_vec(),
        ));
        c.push((
            "1 per 2 s, lag 3 s".into(),
            // New connections only: the low rate is the point of this cell.
            Traffic {
                rate: 0.5,
                warmup: Duration::from_secs(9),
                lag: Duration::from_secs(3),
                keepalive: 0,
                ..base
            },
            all.to_vec(),
        ));
        c
    };

    // `--cells TEXT` reruns only the cells whose name contains TEXT; each
    // cell's table is kept in its own file and results.md joins them all.
    let only = flag("--cells");
    // `--strategies TEXT` runs only the strategies whose name contains TEXT
    // (the tables then hold only those rows).
    let only_strategies = flag("--strategies");
    for (cell, traffic, strategies) in &cells {
        if only.as_deref().is_some_and(|o| !cell.contains(o)) {
            continue;
        }
        let mut rows = Vec::new();
        for &s in strategies {
            if only_strategies
                .as_deref()
                .is_some_and(|o| !s.to_string().contains(o))
            {
                continue;
            }
            let outcomes: Vec<Outcome> = (0..runs)
                .map(|_| rt.block_on(strategies::run(bin, s, *traffic)))
                .collect();
            for o in &outcomes {
                if let Some(r) = &o.report {
                    eprintln!("{cell}, {s}: {r}");
                }
            }
            let name = format!("{}--{}", render::slug(cell), render::slug(&s.to_string()));
            if let Err(e) = render::draw(
                &out_dir.join(format!("{name}.svg")),
                &format!("{s}, {cell}"),
                &outcomes[outcomes.len() / 2],
            ) {
                eprintln!("cannot draw {name}.svg: {e}");
            }
            rows.push((s, outcomes));
        }
        let table = render::table(cell, &rows);
        std::fs::write(
            out_dir.join(format!("cell-{}.md", render::slug(cell))),
            &table,
        )
        .expect("write the cell's table");
    }
    let mut md = render::preamble(runs);
    for (cell, _, _) in &cells {
        if let Ok(t) =
            std::fs::read_to_string(out_dir.join(format!("cell-{}.md", render::slug(cell))))
        {
            md.push_str(&t);
        }
    }
    std::fs::write(out_dir.join("results.md"), &md).expect("write results.md");
    print!("{md}");
}
