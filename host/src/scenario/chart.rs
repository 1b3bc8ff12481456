//! PNG charts of a load scenario's timeline: panels stacked over one time
//! axis (seconds since the load began), each with its own y axis and
//! legend, and the story's events (a spike, a failure, a reload, a kill)
//! as dashed vertical lines across every panel.

use anyhow::{Context, anyhow};
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The font text is drawn with. Debian's fonts-dejavu-core puts it here,
/// and scripts/setup.sh installs that package; `GATEWAY_CHART_FONT` names
/// another TTF file.
const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FONT_FAMILY: &str = "sans-serif";

const WIDTH: u32 = 1400;
const PANEL_HEIGHT: u32 = 280;
const TITLE_HEIGHT: u32 = 40;

/// One line of a panel.
pub struct Series {
    pub name: String,
    pub color: RGBColor,
    /// (seconds since the start, value); a value that is not finite
    /// (a step with no answers has no latency) breaks the line there.
    pub points: Vec<(f64, f64)>,
}

/// One panel: a y axis and the lines drawn against it.
pub struct Panel {
    pub title: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

/// Something that happened at a moment of the run, drawn as a dashed
/// vertical line labelled with `label`.
pub struct Marker {
    pub at_s: f64,
    pub label: String,
    pub color: RGBColor,
}

/// The colours lines take, in order; distinct on white and in grey.
pub const PALETTE: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
];

/// Draws `panels` over the time axis `0..=end_s` into a PNG at `path`.
pub fn draw(
    path: &Path,
    title: &str,
    end_s: f64,
    panels: &[Panel],
    markers: &[Marker],
) -> anyhow::Result<()> {
    register_font()?;
    let height = TITLE_HEIGHT + PANEL_HEIGHT * panels.len().max(1) as u32;
    let root = BitMapBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let body = root.titled(title, (FONT_FAMILY, 24)).map_err(plot_error)?;
    let areas = body.split_evenly((panels.len().max(1), 1));
    let end_s = if end_s > 0.0 { end_s } else { 1.0 };
    for (panel, area) in panels.iter().zip(&areas) {
        draw_panel(area, panel, end_s, markers)?;
    }
    root.present()
        .map_err(plot_error)
        .with_context(|| format!("writing {}", path.display()))
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    panel: &Panel,
    end_s: f64,
    markers: &[Marker],
) -> anyhow::Result<()> {
    let y_max = panel
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    // Headroom above the highest point, and a visible axis when every
    // value is zero (an error rate that stayed at 0).
    let y_max = if y_max > 0.0 { y_max * 1.15 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT_FAMILY, 18))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..end_s, 0.0..y_max)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(panel.y_label.as_str())
        .label_style((FONT_FAMILY, 13))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(plot_error)?;
    for (i, marker) in markers.iter().enumerate() {
        // Labels of events close in time go one under the other.
        let row = markers[..i]
            .iter()
            .filter(|m| (m.at_s - marker.at_s).abs() < end_s / 50.0)
            .count();
        let label_y = y_max * (1.0 - 0.09 * row as f64);
        let style = ShapeStyle::from(marker.color.mix(0.7)).stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new(
                [(marker.at_s, 0.0), (marker.at_s, y_max)],
                6,
                4,
                style,
            ))
            .map_err(plot_error)?;
        chart
            .draw_series(std::iter::once(Text::new(
                marker.label.clone(),
                (marker.at_s, label_y),
                (FONT_FAMILY, 12).into_font().color(&marker.color),
            )))
            .map_err(plot_error)?;
    }
    for series in &panel.series {
        let style = ShapeStyle::from(series.color).stroke_width(2);
        let mut drawn = false;
        for run in finite_runs(&series.points) {
            let line = chart
                .draw_series(LineSeries::new(run, style))
                .map_err(plot_error)?;
            // One legend entry per series, however many runs it breaks into.
            if !drawn {
                let color = series.color;
                line.label(series.name.as_str()).legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                });
                drawn = true;
            }
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT_FAMILY, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

/// The stretches of `points` whose values are finite, each drawn as its
/// own line so a gap shows as a gap rather than a drop to zero.
fn finite_runs(points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    let mut runs = vec![Vec::new()];
    for &(x, y) in points {
        if y.is_finite() {
            runs.last_mut().unwrap().push((x, y));
        } else if !runs.last().unwrap().is_empty() {
            runs.push(Vec::new());
        }
    }
    runs.retain(|r| !r.is_empty());
    runs
}

/// plotters keeps fonts in a registry of its own that wants `'static`
/// bytes: the file is read once and kept for the process's life.
fn register_font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let path = std::env::var_os("GATEWAY_CHART_FONT")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(FONT_PATH));
            let bytes = std::fs::read(&path).map_err(|e| {
                format!(
                    "chart font {}: {e} (scripts/setup.sh installs fonts-dejavu-core; \
                     GATEWAY_CHART_FONT names another TTF file)",
                    path.display()
                )
            })?;
            plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, bytes.leak())
                .map_err(|_| format!("chart font {}: not a TrueType font", path.display()))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart: {e:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_in_the_values_splits_the_line() {
        let runs = finite_runs(&[(0.0, 1.0), (1.0, f64::NAN), (2.0, 3.0), (3.0, 4.0)]);
        assert_eq!(runs, vec![vec![(0.0, 1.0)], vec![(2.0, 3.0), (3.0, 4.0)]]);
    }
}
