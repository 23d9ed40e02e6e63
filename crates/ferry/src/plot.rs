//! SVG plots of benchmark figures (plotters).

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

/// One measured cell: a series (algorithm and conditions), a size, two times.
pub struct Point {
    pub series: String,
    pub size_mib: u64,
    pub latency_ms: f64,
    pub total_ms: f64,
}

const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Two panels side by side: migration latency and total time (log scales) against resident
/// size, one line per series.
pub fn latency_and_total(path: &Path, points: &[Point]) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("plotting {}: {e}", path.display());
    let root = SVGBackend::new(path, (1400, 620)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let panels = root.split_evenly((1, 2));
    let mut series: Vec<&str> = Vec::new();
    for p in points {
        if !series.contains(&p.series.as_str()) {
            series.push(&p.series);
        }
    }
    let x_max = points
        .iter()
        .map(|p| p.size_mib)
        .max()
        .unwrap_or(16)
        .max(16) as f64
        * 1.5;
    let x_min = points.iter().map(|p| p.size_mib).min().unwrap_or(16).max(1) as f64 / 1.5;
    for (panel, (title, pick)) in panels.iter().zip([
        (
            "migration latency (ms)",
            (|p: &Point| p.latency_ms) as fn(&Point) -> f64,
        ),
        (
            "total time until no residual dependency (ms)",
            |p: &Point| p.total_ms,
        ),
    ]) {
        let y_max = points.iter().map(pick).fold(1.0, f64::max) * 2.0;
        let y_min = points
            .iter()
            .map(pick)
            .filter(|v| *v > 0.0)
            .fold(f64::INFINITY, f64::min)
            .min(y_max / 4.0)
            / 2.0;
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((x_min..x_max).log_scale(), (y_min..y_max).log_scale())
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("resident size (MiB)")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.1}"))
            .draw()
            .map_err(|e| err(&e))?;
        for (i, s) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let mut line: Vec<(f64, f64)> = points
                .iter()
                .filter(|p| p.series == *s)
                .map(|p| (p.size_mib as f64, pick(p).max(y_min)))
                .collect();
            line.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(*s)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart
                .draw_series(
                    line.into_iter()
                        .map(|xy| Circle::new(xy, 3, color.filled())),
                )
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg_with_both_panels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.svg");
        let points: Vec<Point> = [16u64, 256, 1024]
            .iter()
            .flat_map(|&s| {
                ["total-copy", "freeze-free"].map(|a| Point {
                    series: a.to_string(),
                    size_mib: s,
                    latency_ms: s as f64 / 10.0,
                    total_ms: s as f64,
                })
            })
            .collect();
        latency_and_total(&path, &points).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("<svg") && svg.contains("migration latency"));
        assert!(svg.contains("freeze-free") && svg.contains("total-copy"));
    }
}
