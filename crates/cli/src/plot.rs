//! PNG plots of training curves (plotters, bitmap backend).
//!
//! Text needs a TrueType font; plotters is built without system font discovery (which would need
//! fontconfig at build time), so a font is loaded from the usual system paths. Without one the
//! curves are still drawn, unlabelled, and the caller is told.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::Context;
use plotters::prelude::*;

pub use ember_scheduler::report::CurvePoint;

const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers a system font once; false when none was found.
fn font_available() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        FONT_PATHS.iter().filter_map(|p| std::fs::read(p).ok()).any(|bytes| {
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
        })
    })
}

/// Reads one series off a curve point.
type Metric = fn(&CurvePoint) -> f64;

/// Draws window AUC and logloss against examples seen. Returns false if no font was found (the
/// plot then has no text).
pub fn training_curves(points: &[CurvePoint], title: &str, path: &Path) -> anyhow::Result<bool> {
    let with_text = font_available();
    let root = BitMapBackend::new(path, (1100, 450)).into_drawing_area();
    root.fill(&WHITE).context("drawing")?;
    let (left, right) = root.split_horizontally(550);
    let max_x = points.iter().map(|p| p.examples).max().unwrap_or(1).max(1) as f64;
    let series: [(&str, Metric, _); 2] = [
        ("progressive AUC (window)", |p| p.window_auc, &left),
        ("progressive logloss (window)", |p| p.window_logloss, &right),
    ];
    for (name, value, area) in series {
        let ys: Vec<f64> = points.iter().map(value).filter(|v| v.is_finite()).collect();
        let (lo, hi) = ys.iter().fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        let (lo, hi) = if ys.is_empty() { (0.0, 1.0) } else { (lo - 0.02, hi + 0.02) };
        let mut builder = ChartBuilder::on(area);
        builder.margin(15).x_label_area_size(35).y_label_area_size(55);
        if with_text {
            builder.caption(format!("{title}: {name}"), ("sans-serif", 18));
        }
        let mut chart = builder.build_cartesian_2d(0f64..max_x, lo..hi).context("chart")?;
        let mut mesh = chart.configure_mesh();
        if with_text {
            mesh.x_desc("examples")
                .label_style(("sans-serif", 13))
                .x_label_formatter(&|x| format!("{:.0}k", x / 1000.0));
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw().context("mesh")?;
        let line = points.iter().filter(|p| value(p).is_finite()).map(|p| (p.examples as f64, value(p)));
        chart.draw_series(LineSeries::new(line, BLUE.stroke_width(2))).context("series")?;
    }
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(with_text)
}

/// Draws several runs' window AUC against examples seen, one coloured line per run, named in a
/// legend. Returns false if no font was found.
pub fn compare_auc(runs: &[(String, Vec<CurvePoint>)], title: &str, path: &Path) -> anyhow::Result<bool> {
    let lines: Vec<Line> = runs
        .iter()
        .map(|(name, points)| Line {
            name: name.clone(),
            points: points.iter().map(|p| (p.examples as f64, p.window_auc)).collect(),
        })
        .collect();
    let axes = Axes { x: "examples seen".into(), y: "progressive AUC (window)".into(), x_in_thousands: true };
    draw_lines(&lines, &[], title, &axes, path)
}

/// One named line of a plot.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Line {
    /// Its legend entry.
    pub name: String,
    /// (x, y) points; non-finite ys are left out.
    pub points: Vec<(f64, f64)>,
}

/// A vertical mark at `x`, named in the legend by its kind (marks of one name share a colour).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Mark {
    /// Where.
    pub x: f64,
    /// What.
    pub name: String,
}

/// Axis descriptions.
pub struct Axes {
    /// Under the x axis.
    pub x: String,
    /// Beside the y axis.
    pub y: String,
    /// Label x ticks as `12k`.
    pub x_in_thousands: bool,
}

/// Draws lines and vertical marks. Returns false if no font was found.
pub fn draw_lines(lines: &[Line], marks: &[Mark], title: &str, axes: &Axes, path: &Path) -> anyhow::Result<bool> {
    let with_text = font_available();
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).context("drawing")?;
    let points = || lines.iter().flat_map(|l| l.points.iter()).filter(|(_, y)| y.is_finite());
    let (x_lo, x_hi) = points().fold((f64::MAX, f64::MIN), |(lo, hi), (x, _)| (lo.min(*x), hi.max(*x)));
    let (x_lo, x_hi) = if x_lo > x_hi { (0.0, 1.0) } else { (x_lo.min(0.0), x_hi.max(x_lo + 1.0)) };
    let (lo, hi) = points().fold((f64::MAX, f64::MIN), |(lo, hi), (_, y)| (lo.min(*y), hi.max(*y)));
    let (lo, hi) = if lo > hi { (0.0, 1.0) } else { (lo - 0.01, hi + 0.01) };
    let mut builder = ChartBuilder::on(&root);
    builder.margin(15).x_label_area_size(35).y_label_area_size(55);
    if with_text {
        builder.caption(title, ("sans-serif", 18));
    }
    let mut chart = builder.build_cartesian_2d(x_lo..x_hi, lo..hi).context("chart")?;
    let mut mesh = chart.configure_mesh();
    if with_text {
        mesh.x_desc(axes.x.as_str()).y_desc(axes.y.as_str()).label_style(("sans-serif", 13));
        if axes.x_in_thousands {
            mesh.x_label_formatter(&|x| format!("{:.0}k", x / 1000.0));
        }
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw().context("mesh")?;
    let mut kinds: Vec<&str> = Vec::new();
    for mark in marks {
        let first = !kinds.contains(&mark.name.as_str());
        if first {
            kinds.push(&mark.name);
        }
        const MARKS: [RGBColor; 4] = [BLACK, MAGENTA, CYAN, RGBColor(255, 140, 0)];
        let colour = MARKS[kinds.iter().position(|k| *k == mark.name).unwrap_or(0) % MARKS.len()].to_rgba();
        let series =
            chart.draw_series(LineSeries::new([(mark.x, lo), (mark.x, hi)], colour.stroke_width(2))).context("mark")?;
        if with_text && first {
            series
                .label(mark.name.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
        }
    }
    for (i, line) in lines.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        let points = line.points.iter().copied().filter(|(_, y)| y.is_finite());
        let series = chart.draw_series(LineSeries::new(points, colour.stroke_width(2))).context("series")?;
        if with_text {
            series
                .label(line.name.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
        }
    }
    if with_text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .context("legend")?;
    }
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(with_text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curves.png");
        let points: Vec<CurvePoint> = (1..20)
            .map(|i| CurvePoint {
                examples: i * 1000,
                seconds: i as f64,
                window_auc: 0.6 + i as f64 * 0.01,
                window_logloss: 0.6 - i as f64 * 0.005,
                examples_per_sec: 1000.0,
                window_rows: 1000,
            })
            .collect();
        training_curves(&points, "test", &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(bytes.len() > 5_000, "a real image, {} bytes", bytes.len());
        let runs = vec![("a".to_string(), points.clone()), ("b".to_string(), points[5..].to_vec())];
        let compared = dir.path().join("compared.png");
        compare_auc(&runs, "test", &compared).unwrap();
        assert_eq!(&std::fs::read(&compared).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
        let lines = [Line { name: "a".into(), points: vec![(0.0, 0.6), (1.0, f64::NAN), (2.0, 0.7)] }];
        let marks = [Mark { x: 1.0, name: "held".into() }, Mark { x: 1.5, name: "held".into() }];
        let axes = Axes { x: "window".into(), y: "AUC".into(), x_in_thousands: false };
        let marked = dir.path().join("marked.png");
        draw_lines(&lines, &marks, "test", &axes, &marked).unwrap();
        assert_eq!(&std::fs::read(&marked).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
    }
}
