//! The PNG next to the table: requests per second as a ratio to direct Redis, and proxy
//! CPU per request, grouped by test, one bar per target.
//!
//! Text is drawn with a TrueType font read at run time (plotters' `ab_glyph` backend, no
//! system font lookup): DejaVu Sans from Debian's `fonts-dejavu-core` unless `--font`
//! names another.

use std::path::Path;

use anyhow::{Context, Result, bail};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::options::TargetKind;
use crate::report::Report;

/// Debian's `fonts-dejavu-core`.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// The family name the chart's text uses.
const FAMILY: &str = "sans-serif";
/// Bar colours per target, in `TARGETS` order.
const COLORS: [RGBColor; 5] = [
    RGBColor(120, 120, 120),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(214, 39, 40),
];
/// Bottom of the logarithmic CPU axis, µs.
const CPU_FLOOR: f64 = 0.05;

/// Loads the font for the chart's text; call once before [`write`].
pub fn load_font(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "reading the chart's font {} (Debian: apt-get install fonts-dejavu-core, or pass --font)",
            path.display()
        )
    })?;
    // plotters keeps the font for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    if plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).is_err() {
        bail!(
            "{} is not a TrueType font plotters can read",
            path.display()
        );
    }
    Ok(())
}

fn color(kind: TargetKind) -> RGBColor {
    let i = crate::options::TARGETS
        .iter()
        .position(|t| *t == kind)
        .unwrap_or(0);
    COLORS[i % COLORS.len()]
}

/// Draws the chart of `report` into a PNG at `path`.
pub fn write(report: &Report, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    draw(report, path).map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))
}

fn draw(report: &Report, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(700);
    let tests = &report.tests;
    let n = tests.len() as f64;
    let targets: Vec<TargetKind> = report.targets.iter().map(|t| t.kind).collect();
    let proxies: Vec<TargetKind> = targets
        .iter()
        .copied()
        .filter(|t| *t != TargetKind::Direct)
        .collect();
    let label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            tests
                .get(i as usize)
                .map(ToString::to_string)
                .unwrap_or_default()
        } else {
            String::new()
        }
    };
    // Bars of a group share 0.8 of the slot around the test's integer position.
    let bar = |slot: usize, count: usize| {
        let width = 0.8 / count.max(1) as f64;
        let x0 = -0.4 + width * slot as f64;
        (x0 + width * 0.1, x0 + width * 0.9)
    };

    // Left: requests/s over direct Redis's in the same round.
    let mut max_ratio: f64 = 1.2;
    for &t in tests {
        for &k in &proxies {
            if let Some(s) = report.summary(k, t) {
                max_ratio = max_ratio.max(s.ratio_max * 1.1);
            }
        }
    }
    let mut chart = ChartBuilder::on(&left)
        .caption(
            "requests/s, ratio to direct Redis (median, lowest-highest)",
            (FAMILY, 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(-0.5..n - 0.5, 0.0..max_ratio)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(tests.len() + 1)
        .x_label_formatter(&label)
        .y_desc("ratio to direct Redis")
        .label_style((FAMILY, 14))
        .draw()?;
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(-0.5, 1.0), (n - 0.5, 1.0)],
        BLACK.stroke_width(1),
    )))?;
    for (slot, &k) in proxies.iter().enumerate() {
        let c = color(k);
        let mut bars = Vec::new();
        let mut whiskers = Vec::new();
        for (i, &t) in tests.iter().enumerate() {
            let Some(s) = report.summary(k, t) else {
                continue;
            };
            let (x0, x1) = bar(slot, proxies.len());
            let (x0, x1) = (i as f64 + x0, i as f64 + x1);
            bars.push(Rectangle::new([(x0, 0.0), (x1, s.ratio)], c.filled()));
            let xm = (x0 + x1) / 2.0;
            whiskers.push(PathElement::new(
                vec![(xm, s.ratio_min), (xm, s.ratio_max)],
                BLACK.stroke_width(1),
            ));
        }
        chart
            .draw_series(bars)?
            .label(report.short_label(k))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        chart.draw_series(whiskers)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FAMILY, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;

    // Right: proxy CPU per request, logarithmic (P1 and P16 differ tenfold).
    let mut max_cpu: f64 = 1.0;
    for &t in tests {
        for &k in &proxies {
            if let Some(c) = report.summary(k, t).and_then(|s| s.proxy_cpu_us) {
                max_cpu = max_cpu.max(c * 1.5);
            }
        }
    }
    let mut chart = ChartBuilder::on(&right)
        .caption(
            "proxy CPU per request, µs (median, log scale)",
            (FAMILY, 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(-0.5..n - 0.5, (CPU_FLOOR..max_cpu).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(tests.len() + 1)
        .x_label_formatter(&label)
        .y_desc("µs of proxy CPU per request")
        .label_style((FAMILY, 14))
        .draw()?;
    for (slot, &k) in proxies.iter().enumerate() {
        let c = color(k);
        let mut bars = Vec::new();
        for (i, &t) in tests.iter().enumerate() {
            let Some(cpu) = report.summary(k, t).and_then(|s| s.proxy_cpu_us) else {
                continue;
            };
            let (x0, x1) = bar(slot, proxies.len());
            bars.push(Rectangle::new(
                [
                    (i as f64 + x0, CPU_FLOOR),
                    (i as f64 + x1, cpu.max(CPU_FLOOR)),
                ],
                c.filled(),
            ));
        }
        chart.draw_series(bars)?;
    }
    root.present()?;
    Ok(())
}
