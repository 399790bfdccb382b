//! Pictures for `--plot FILE.svg|FILE.png`: GPU allocation curves of
//! `simulate`, forecasts with their bands and error by horizon of
//! `eval forecast`.
//!
//! Text is drawn with a system TrueType font (DejaVu Sans, Debian package
//! `fonts-dejavu-core`, or `APOLLO_PLOT_FONT`), so no font library is needed
//! at build time.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context as _};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::client::UsageError;

const FONT_CANDIDATES: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/local/share/fonts/DejaVuSans.ttf",
];

/// Registers the plot font once; a clear error when there is none.
fn ensure_font() -> anyhow::Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let path = std::env::var_os("APOLLO_PLOT_FONT")
            .map(PathBuf::from)
            .or_else(|| {
                FONT_CANDIDATES
                    .iter()
                    .map(PathBuf::from)
                    .find(|p| p.is_file())
            })
            .ok_or_else(|| {
                "plots need a TrueType font: install fonts-dejavu-core (apt-get install -y \
                 fonts-dejavu-core) or set APOLLO_PLOT_FONT to a .ttf file"
                    .to_string()
            })?;
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{} is not a usable TrueType font", path.display()))
    })
    .clone()
    .map_err(|e| anyhow::anyhow!(e))
}

/// The picture format, from the file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Svg,
    Png,
}

/// Checks a `--plot` path before any work is done.
pub(crate) fn check_path(path: &Path) -> Result<(), UsageError> {
    format(path).map(|_| ())
}

fn format(path: &Path) -> Result<Format, UsageError> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("svg") => Ok(Format::Svg),
        Some("png") => Ok(Format::Png),
        _ => Err(UsageError(format!(
            "--plot must end in .svg or .png, got {}",
            path.display()
        ))),
    }
}

/// Any drawing error as one message.
fn de<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("{e:?}")
}

/// Calls `$chart(root, args...)` on an SVG or PNG drawing area for `$path`.
macro_rules! on_backend {
    ($path:expr, $size:expr, $chart:ident ( $($arg:expr),* )) => {{
        ensure_font()?;
        let path: &Path = $path;
        let r = match format(path)? {
            Format::Svg => $chart(SVGBackend::new(path, $size).into_drawing_area(), $($arg),*),
            Format::Png => $chart(BitMapBackend::new(path, $size).into_drawing_area(), $($arg),*),
        };
        r.with_context(|| format!("cannot draw {}", path.display()))
    }};
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// One policy's mean allocation curve.
#[derive(Debug, Clone)]
pub(crate) struct AllocationCurve {
    /// Policy name.
    pub(crate) policy: String,
    /// Allocation (%) at 1 %, 2 %, ... arrived.
    pub(crate) points: Vec<f64>,
}

/// A published reference point: (label, arrived %, allocation %).
pub(crate) type Published = (String, f64, f64);

/// GPU allocation vs arrived workload per policy, with published points.
pub(crate) fn allocation(
    path: &Path,
    title: &str,
    curves: &[AllocationCurve],
    published: &[Published],
) -> anyhow::Result<()> {
    on_backend!(
        path,
        (1000, 650),
        allocation_chart(title, curves, published)
    )
}

fn allocation_chart<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    curves: &[AllocationCurve],
    published: &[Published],
) -> anyhow::Result<()> {
    root.fill(&WHITE).map_err(de)?;
    let x_max = curves
        .iter()
        .map(|c| c.points.len())
        .max()
        .unwrap_or(100)
        .max(100) as f64;
    let y_min = curves
        .iter()
        .flat_map(|c| c.points.iter().copied())
        .chain(published.iter().map(|p| p.2))
        .filter(|v| v.is_finite())
        .fold(100.0f64, f64::min)
        .min(50.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..x_max, (y_min - 2.0).max(0.0)..100.0)
        .map_err(de)?;
    chart
        .configure_mesh()
        .x_desc("arrived workload: requested GPU / capacity (%)")
        .y_desc("GPU allocated (%)")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(de)?;
    for (i, c) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                c.points
                    .iter()
                    .enumerate()
                    .map(|(k, v)| ((k + 1) as f64, *v)),
                color.stroke_width(2),
            ))
            .map_err(de)?
            .label(c.policy.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    if !published.is_empty() {
        chart
            .draw_series(
                published
                    .iter()
                    .map(|(_, x, y)| Cross::new((*x, *y), 7, BLACK.stroke_width(2))),
            )
            .map_err(de)?
            .label(published[0].0.clone())
            .legend(|(x, y)| Cross::new((x + 10, y), 6, BLACK.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(de)?;
    root.present().map_err(de)?;
    Ok(())
}

/// A forecast to draw: history and actuals, the forecast and its band.
#[derive(Debug, Clone)]
pub(crate) struct ForecastPanel {
    /// Series name.
    pub(crate) title: String,
    /// Observed values, the forecast origin at `origin`.
    pub(crate) actual: Vec<f64>,
    /// Index of the first forecast step in `actual`.
    pub(crate) origin: usize,
    /// Point forecast per step after the origin.
    pub(crate) mean: Vec<f64>,
    /// Lower bound per step.
    pub(crate) lower: Vec<f64>,
    /// Upper bound per step.
    pub(crate) upper: Vec<f64>,
    /// Interval level (e.g. 0.95).
    pub(crate) level: f64,
    /// Model name.
    pub(crate) model: String,
}

/// Actual vs forecast with its band, one panel per series, plus error by
/// horizon per model in the last panel: `(model, [(horizon, ratio to naive)])`.
pub(crate) fn forecasts(
    path: &Path,
    panels: &[ForecastPanel],
    error_by_horizon: &[(String, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    if panels.is_empty() && error_by_horizon.is_empty() {
        bail!("nothing to plot");
    }
    let n = panels.len() + usize::from(!error_by_horizon.is_empty());
    let rows = n.div_ceil(2) as u32;
    on_backend!(
        path,
        (1200, 330 * rows),
        forecast_chart(panels, error_by_horizon)
    )
}

fn forecast_chart<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    panels: &[ForecastPanel],
    error_by_horizon: &[(String, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    root.fill(&WHITE).map_err(de)?;
    let n = panels.len() + usize::from(!error_by_horizon.is_empty());
    let areas = root.split_evenly((n.div_ceil(2), 2));
    for (p, area) in panels.iter().zip(areas.iter()) {
        let len = p.actual.len().max(p.origin + p.mean.len());
        let vals = p
            .actual
            .iter()
            .chain(&p.upper)
            .chain(&p.lower)
            .copied()
            .filter(|v| v.is_finite());
        let (lo, hi) = vals.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
        let (lo, hi) = if lo > hi {
            (0.0, 1.0)
        } else {
            (lo, hi + (hi - lo).max(1e-9) * 0.05)
        };
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{} — {}", p.title, p.model), ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..len as f64, lo..hi)
            .map_err(de)?;
        chart
            .configure_mesh()
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(de)?;
        let band: Vec<(f64, f64)> = p
            .upper
            .iter()
            .enumerate()
            .map(|(k, v)| ((p.origin + k) as f64, *v))
            .chain(
                p.lower
                    .iter()
                    .enumerate()
                    .rev()
                    .map(|(k, v)| ((p.origin + k) as f64, *v)),
            )
            .collect();
        chart
            .draw_series(std::iter::once(Polygon::new(
                band,
                COLORS[0].mix(0.2).filled(),
            )))
            .map_err(de)?
            .label(format!("{:.0} % interval", p.level * 100.0))
            .legend(|(x, y)| {
                Rectangle::new([(x, y - 5), (x + 20, y + 5)], COLORS[0].mix(0.2).filled())
            });
        chart
            .draw_series(LineSeries::new(
                p.actual.iter().enumerate().map(|(k, v)| (k as f64, *v)),
                BLACK.stroke_width(1),
            ))
            .map_err(de)?
            .label("actual")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
        chart
            .draw_series(LineSeries::new(
                p.mean
                    .iter()
                    .enumerate()
                    .map(|(k, v)| ((p.origin + k) as f64, *v)),
                COLORS[0].stroke_width(2),
            ))
            .map_err(de)?
            .label("forecast")
            .legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], COLORS[0].stroke_width(2))
            });
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .label_font(("sans-serif", 11))
            .draw()
            .map_err(de)?;
    }
    if !error_by_horizon.is_empty() {
        let area = &areas[panels.len()];
        let x_max = error_by_horizon
            .iter()
            .flat_map(|(_, v)| v.iter().map(|p| p.0))
            .fold(1.0f64, f64::max);
        let y_max = error_by_horizon
            .iter()
            .flat_map(|(_, v)| v.iter().map(|p| p.1))
            .filter(|v| v.is_finite())
            .fold(1.2f64, f64::max);
        let mut chart = ChartBuilder::on(area)
            .caption("error relative to naive, by horizon", ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..x_max * 1.05, 0.0..y_max * 1.05)
            .map_err(de)?;
        chart
            .configure_mesh()
            .x_desc("horizon (steps)")
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(de)?;
        for (i, (model, pts)) in error_by_horizon.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(de)?
                .label(model.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
                .map_err(de)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .label_font(("sans-serif", 11))
            .draw()
            .map_err(de)?;
    }
    root.present().map_err(de)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_svg_and_png_are_accepted() {
        assert!(check_path(Path::new("a.svg")).is_ok());
        assert!(check_path(Path::new("b.PNG")).is_ok());
        assert!(check_path(Path::new("c.jpg")).is_err());
        assert!(check_path(Path::new("noext")).is_err());
    }

    #[test]
    fn forecast_svg_has_a_panel_per_series_and_the_error_chart() {
        if ensure_font().is_err() {
            eprintln!("skipping: no TrueType font installed (fonts-dejavu-core)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fc.svg");
        let panel = |t: &str| ForecastPanel {
            title: t.into(),
            actual: (0..40).map(f64::from).collect(),
            origin: 30,
            mean: vec![30.0; 10],
            lower: vec![25.0; 10],
            upper: vec![35.0; 10],
            level: 0.95,
            model: "auto(ets)".into(),
        };
        forecasts(
            &path,
            &[panel("series-a"), panel("series-b")],
            &[("naive".into(), vec![(5.0, 1.0), (15.0, 1.0)])],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("series-a") && svg.contains("series-b"));
        assert!(svg.contains("95 % interval"));
        assert!(svg.contains("error relative to naive"));
        assert!(
            forecasts(&path, &[], &[]).is_err(),
            "nothing to draw is an error"
        );
    }

    #[test]
    fn allocation_svg_has_every_policy_and_the_published_point() {
        if ensure_font().is_err() {
            eprintln!("skipping: no TrueType font installed (fonts-dejavu-core)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alloc.svg");
        let curves = vec![
            AllocationCurve {
                policy: "apollo".into(),
                points: (1..=130).map(|x| (x as f64).min(95.0)).collect(),
            },
            AllocationCurve {
                policy: "random".into(),
                points: (1..=130).map(|x| (x as f64).min(86.0)).collect(),
            },
        ];
        allocation(
            &path,
            "openb default",
            &curves,
            &[("published FGD".into(), 100.0, 95.23)],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("apollo") && svg.contains("random"));
        assert!(svg.contains("published FGD"));
        assert!(svg.matches("<polyline").count() >= 2, "one line per policy");
    }
}
