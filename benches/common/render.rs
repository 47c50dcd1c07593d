//! The benchmark's output: a Markdown table per cell and an SVG timeline
//! per strategy. Shared by `benches/strategies.rs` and `tests/strategies.rs`.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use testbed::strategies::{Outcome, Strategy};

pub fn preamble(runs: usize) -> String {
    format!(
        "Each cell: {runs} run(s) per strategy, median [min..max]. Overhead = NGINX gone minus the oracle, the later of the lag's end and the last in-flight download's natural completion: the least time any strategy could take without dropping traffic (negative: NGINX went too early, and traffic was dropped).\n\n"
    )
}

/// One cell's table: a row per strategy.
pub fn table(cell: &str, rows: &[(Strategy, Vec<Outcome>)]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "### {cell}\n");
    let _ = writeln!(
        md,
        "| strategy | failed requests | downloads cut | bytes lost | SIGKILL | NGINX gone after (s) | overhead (s) | hook returned after (s) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for (s, outcomes) in rows {
        let runs = outcomes.len();
        let stat = |f: &dyn Fn(&Outcome) -> f64| {
            let mut v: Vec<f64> = outcomes.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            (v[v.len() / 2], v[0], v[v.len() - 1])
        };
        let show = |(m, lo, hi): (f64, f64, f64), d: usize| {
            if runs > 1 && lo != hi {
                format!("{m:.d$} [{lo:.d$}..{hi:.d$}]")
            } else {
                format!("{m:.d$}")
            }
        };
        let kills = outcomes.iter().filter(|o| o.sigkill).count();
        let _ = writeln!(
            md,
            "| {s} | {} | {} | {} | {kills}/{runs} | {} | {} | {} |",
            show(stat(&|o| o.load.failed() as f64), 0),
            show(stat(&|o| o.downloads_cut as f64), 0),
            show(stat(&|o| o.bytes_lost as f64), 0),
            show(
                stat(&|o| o.gone_after.map_or(f64::NAN, |d| d.as_secs_f64())),
                2
            ),
            show(stat(&|o| o.overhead.unwrap_or(f64::NAN)), 2),
            show(stat(&|o| o.hook_after.as_secs_f64()), 2),
        );
    }
    md.push('\n');
    md
}

pub fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// A timeline: requests per 100 ms (ok, failed) and open connections, with
/// the run's moments as vertical lines.
pub fn draw(path: &Path, title: &str, o: &Outcome) -> Result<(), Box<dyn std::error::Error>> {
    register_font()?;
    let t = &o.timeline;
    let n = t.ok.len().max(1);
    let secs = n as f64 / 10.0;
    let top =
        t.ok.iter()
            .zip(&t.failed)
            .map(|(a, b)| a + b)
            .chain(t.open.iter().copied())
            .max()
            .unwrap_or(1)
            .max(1) as f64
            * 1.15;
    let root = SVGBackend::new(path, (900, 320)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(40)
        .build_cartesian_2d(0f64..secs, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("per 100 ms / open")
        .disable_mesh()
        .draw()?;
    fn bars(v: &[u32], base: Option<&[u32]>, color: RGBColor) -> Vec<Rectangle<(f64, f64)>> {
        v.iter()
            .enumerate()
            .map(|(i, y)| {
                let b = base.map_or(0, |b| b[i]) as f64;
                let x = i as f64 / 10.0;
                Rectangle::new([(x, b), (x + 0.09, b + *y as f64)], color.filled())
            })
            .collect()
    }
    chart
        .draw_series(bars(&t.ok, None, RGBColor(120, 180, 120)))?
        .label("requests ok")
        .legend(|(x, y)| {
            Rectangle::new(
                [(x, y - 4), (x + 10, y + 4)],
                RGBColor(120, 180, 120).filled(),
            )
        });
    chart
        .draw_series(bars(&t.failed, Some(&t.ok), RED))?
        .label("requests failed")
        .legend(|(x, y)| Rectangle::new([(x, y - 4), (x + 10, y + 4)], RED.filled()));
    chart
        .draw_series(LineSeries::new(
            t.open
                .iter()
                .enumerate()
                .map(|(i, y)| (i as f64 / 10.0 + 0.05, *y as f64)),
            BLUE.stroke_width(2),
        ))?
        .label("open connections")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 12, y)], BLUE.stroke_width(2)));
    let m = &o.marks;
    let marks = [
        (Some(m.deletion), "deleted", BLACK),
        (Some(m.lag_end), "LB stops", RGBColor(120, 120, 120)),
        (m.sigquit, "SIGQUIT", RGBColor(200, 120, 0)),
        (m.last_download, "last download", RGBColor(0, 140, 140)),
        (m.gone, "NGINX gone", RGBColor(120, 0, 160)),
        (m.sigkill, "SIGKILL", RED),
    ];
    for (i, (at, label, color)) in marks.into_iter().enumerate() {
        if let Some(x) = at {
            chart.draw_series(std::iter::once(PathElement::new(
                [(x, 0.0), (x, top)],
                color.stroke_width(1),
            )))?;
            // Staggered, so that labels of nearby moments do not overlap.
            let y = top * (0.97 - 0.07 * i as f64);
            chart.draw_series(std::iter::once(Text::new(
                label.to_string(),
                (x + 0.03, y),
                ("sans-serif", 11).into_font().color(&color),
            )))?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}

fn register_font() -> Result<(), Box<dyn std::error::Error>> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let path = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
        let bytes = std::fs::read(path)
            .map_err(|e| format!("{path}: {e} (apt-get install fonts-dejavu-core)"))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| "bad font".to_string())
    })
    .clone()
    .map_err(Into::into)
}
