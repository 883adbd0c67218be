//! The SVG plot of a comparison: p95 latency per time bucket and instances held over time, one
//! line per strategy.
//!
//! Drawn with plotters' SVG backend alone (no font rasterising, no bitmap encoders): text is
//! written as SVG `<text>` and laid out by the viewer, so the dependency stays four small crates.

use super::Report;
use plotters::prelude::*;
use std::path::Path;

/// One colour per strategy, in the order of the reports.
const COLOURS: [RGBColor; 5] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
];

/// Writes the plot of `reports` to `path`; `subtitle` describes the run.
pub fn write_svg(path: &Path, reports: &[Report], subtitle: &str) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1100, 760)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root
        .titled(
            "flotilla simulate: simulated, not measured",
            ("sans-serif", 20),
        )?
        .titled(subtitle, ("sans-serif", 13))?;
    let (upper, lower) = root.split_vertically(420);
    let x_max = reports.iter().map(|r| r.simulated_s).fold(1.0, f64::max);
    let colour = |i: usize| COLOURS[i % COLOURS.len()];

    let p95 = reports
        .iter()
        .flat_map(|r| r.series.p95_ms.iter().flatten());
    let (lo, hi) = p95.fold((f64::INFINITY, 0.0f64), |(lo, hi), &v| {
        (lo.min(v), hi.max(v))
    });
    let (lo, hi) = if lo.is_finite() && hi > 0.0 {
        // From a power of ten, where plotters starts a log axis's labels.
        (10f64.powf(lo.max(1e-3).log10().floor()), hi * 1.25)
    } else {
        (1.0, 10.0)
    };
    let mut chart = ChartBuilder::on(&upper)
        .caption(
            "p95 latency of tasks completed in each interval (ms, log scale)",
            ("sans-serif", 15),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max, (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("simulated time (s)")
        .y_desc("p95 (ms)")
        .light_line_style(WHITE)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    for (i, report) in reports.iter().enumerate() {
        let width = report.series.bucket_s;
        let points: Vec<(f64, f64)> = report
            .series
            .p95_ms
            .iter()
            .enumerate()
            .filter_map(|(b, v)| v.map(|v| ((b as f64 + 0.5) * width, v)))
            .collect();
        let c = colour(i);
        chart
            .draw_series(LineSeries::new(points, c.stroke_width(2)))?
            .label(report.strategy.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;

    let most = reports
        .iter()
        .flat_map(|r| r.series.instances.iter().copied())
        .max()
        .unwrap_or(1);
    let mut chart = ChartBuilder::on(&lower)
        .caption(
            "instances held (starting, serving or draining)",
            ("sans-serif", 15),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max, 0.0..(f64::from(most) * 1.15 + 1.0))?;
    chart
        .configure_mesh()
        .x_desc("simulated time (s)")
        .y_desc("instances")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    for (i, report) in reports.iter().enumerate() {
        let width = report.series.bucket_s;
        // A step line: each interval's value held across the interval.
        let points: Vec<(f64, f64)> = report
            .series
            .instances
            .iter()
            .enumerate()
            .flat_map(|(b, &n)| {
                let start = b as f64 * width;
                [
                    (start, f64::from(n)),
                    (
                        (start + width).min(report.simulated_s.max(start)),
                        f64::from(n),
                    ),
                ]
            })
            .collect();
        let c = colour(i);
        chart
            .draw_series(LineSeries::new(points, c.stroke_width(2)))?
            .label(report.strategy.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
