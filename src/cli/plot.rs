//! PNG plots: `silkie show STAGE.training --plot PATH` draws a training run's curves (a
//! smoothed line over the faint raw one, as TensorBoard draws them), `silkie metrics --plot
//! PATH` draws each metric's value per evaluated instance. The font ships with silkie (DejaVu
//! Sans), so plots look the same on any machine, fonts installed or not.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use polars::prelude::{DataFrame, DataType};

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const WIDTH: u32 = 960;

/// The curves worth plotting, those a table has: (column, colour). SFT logs only the loss.
const CURVES: [(&str, RGBColor); 3] = [
    ("loss", RGBColor(31, 119, 180)),
    ("rewards/margins", RGBColor(214, 39, 40)),
    ("rewards/accuracies", RGBColor(44, 160, 44)),
];

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// A baseline's bars are grey, so "before" reads apart from every "after".
const BASELINE_GREY: RGBColor = RGBColor(150, 150, 150);

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn column(df: &DataFrame, name: &str) -> Option<Result<Vec<f64>, String>> {
    let column = df.column(name).ok()?;
    let values = match column.cast(&DataType::Float64) {
        Ok(values) => values,
        Err(e) => return Some(Err(format!("`{name}`: {e}"))),
    };
    Some(values.f64().map_err(|e| format!("`{name}`: {e}")).map(|v| v.iter().map(|v| v.unwrap_or(f64::NAN)).collect()))
}

/// TensorBoard's smoothing: an exponential moving average with weight `weight` on the past,
/// debiased so the first points are not pulled towards zero. Gaps (NaN) stay gaps.
pub fn smoothed(values: &[f64], weight: f64) -> Vec<f64> {
    let mut last = 0.0;
    let mut seen = 0i32;
    values
        .iter()
        .map(|&v| {
            if !v.is_finite() {
                return f64::NAN;
            }
            last = last * weight + (1.0 - weight) * v;
            seen += 1;
            let debias = 1.0 - weight.powi(seen);
            if debias > 0.0 { last / debias } else { v }
        })
        .collect()
}

/// The `q` quantile (0..=1) of sorted finite values, linearly interpolated.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let at = q * (sorted.len() - 1) as f64;
    let (below, above) = (at.floor() as usize, at.ceil() as usize);
    sorted[below] + (sorted[above] - sorted[below]) * (at - below as f64)
}

/// The y range of a panel: the raw values' 2nd to 98th percentile, padded (TensorBoard's
/// "ignore outliers"): a spike — and the smoothed line's bump after it — is clipped at the
/// frame instead of squashing the rest of the curve into a flat line.
pub fn robust_bounds(raw: &[f64]) -> (f64, f64) {
    let mut finite: Vec<f64> = raw.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() {
        return (0.0, 1.0);
    }
    finite.sort_by(f64::total_cmp);
    let (lo, hi) = (quantile(&finite, 0.02), quantile(&finite, 0.98));
    let pad = ((hi - lo) * 0.08).max(1e-3 * hi.abs().max(1.0));
    (lo - pad, hi + pad)
}

/// Draws `training` (a `training` output: `step` and TRL's metric columns) into `path`, each
/// curve smoothed with `smoothing` (0: raw values only).
pub fn training_curves(training: &DataFrame, title: &str, smoothing: f64, path: &Path) -> Result<(), String> {
    let steps = column(training, "step").ok_or("the table has no `step` column: not training metrics")??;
    if steps.is_empty() {
        return Err("the table has no rows to plot".into());
    }
    let mut curves = Vec::new();
    for (name, colour) in CURVES {
        if let Some(values) = column(training, name) {
            curves.push((name, colour, values?));
        }
    }
    if curves.is_empty() {
        return Err("the table has none of the columns `loss`, `rewards/margins`: not training metrics".into());
    }
    let height = 300 * curves.len() as u32 + 60;
    save_png((WIDTH, height), path, |root| draw_curves(root, title, &steps, &curves, smoothing))
}

/// Renders through `draw` into a buffer and writes it as a PNG.
fn save_png(
    size: (u32, u32),
    path: &Path,
    draw: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> DrawResult,
) -> Result<(), String> {
    // Registering twice is harmless; the first registration wins.
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    let mut pixels = vec![0u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| format!("drawing the plot: {e}"))?;
        draw(&root).map_err(|e| format!("drawing the plot: {e}"))?;
        root.present().map_err(|e| format!("drawing the plot: {e}"))?;
    }
    let image = image::RgbImage::from_raw(size.0, size.1, pixels).ok_or("the plot buffer has the wrong size")?;
    image.save_with_format(path, image::ImageFormat::Png).map_err(|e| format!("{}: {e}", path.display()))
}

fn draw_curves(
    root: &DrawingArea<BitMapBackend, Shift>,
    title: &str,
    steps: &[f64],
    curves: &[(&str, RGBColor, Vec<f64>)],
    smoothing: f64,
) -> DrawResult {
    let (header, body) = root.split_vertically(48);
    header.draw(&Text::new(title.to_string(), (24, 14), ("sans-serif", 22).into_font().color(&BLACK)))?;
    let last = steps.iter().copied().fold(0.0, f64::max).max(1.0);
    for (area, (name, colour, raw)) in body.split_evenly((curves.len(), 1)).iter().zip(curves) {
        let smooth = smoothed(raw, smoothing);
        let (lo, hi) = robust_bounds(raw);
        let clip = |points: &[f64]| -> Vec<(f64, f64)> {
            steps.iter().zip(points).filter(|(_, y)| y.is_finite()).map(|(x, y)| (*x, y.clamp(lo, hi))).collect()
        };
        let mut chart = ChartBuilder::on(area)
            .margin(14)
            .margin_top(30)
            .caption(*name, ("sans-serif", 17))
            .x_label_area_size(42)
            .y_label_area_size(72)
            .build_cartesian_2d(0.0..last, lo..hi)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| tick(*y))
            .label_style(("sans-serif", 14))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        chart
            .draw_series(LineSeries::new(clip(raw), colour.mix(0.25).stroke_width(1)))?
            .label("per step")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.mix(0.25).stroke_width(2)));
        if smoothing > 0.0 {
            chart
                .draw_series(LineSeries::new(clip(&smooth), colour.stroke_width(2)))?
                .label(format!("smoothed (EMA {smoothing})"))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .label_font(("sans-serif", 13))
            .draw()?;
    }
    Ok(())
}

/// A tick label short enough for the axis: 0.693, 12.5, 1.2e-4.
/// Axis ticks sit on round numbers, so a value far below 1e-3 is a rounding error of 0.
fn tick(y: f64) -> String {
    let a = y.abs();
    if a < 1e-9 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{y:.1e}")
    } else {
        trimmed(format!("{y:.4}"))
    }
}

/// A measured value as `silkie metrics` prints it: one decimal from 100 up, else three.
fn value_label(v: f64) -> String {
    trimmed(if v.abs() >= 100.0 { format!("{v:.1}") } else { format!("{v:.3}") })
}

fn trimmed(number: String) -> String {
    if number.contains('.') { number.trim_end_matches('0').trim_end_matches('.').to_string() } else { number }
}

/// One evaluated instance's value of a metric.
pub struct Bar {
    /// `pipeline:instance`, as `silkie metrics` prints it.
    pub label: String,
    pub value: f64,
    /// Relative to its baseline; `None` for a baseline itself.
    pub change: Option<f64>,
    /// Another bar's baseline.
    pub is_baseline: bool,
}

/// One panel per metric, a horizontal bar per evaluated instance, under one legend that gives
/// every instance its colour: `panels` is (title, bars).
pub fn metric_bars(panels: &[(String, Vec<Bar>)], path: &Path) -> Result<(), String> {
    if panels.is_empty() {
        return Err("nothing to plot".into());
    }
    let mut legend: Vec<(&str, bool)> = Vec::new();
    for bar in panels.iter().flat_map(|(_, bars)| bars) {
        if !legend.iter().any(|(label, _)| *label == bar.label) {
            legend.push((&bar.label, bar.is_baseline));
        }
    }
    let colour_of = |label: &str| -> RGBColor {
        let mut tuned = 0;
        for (l, baseline) in &legend {
            if *l == label {
                return if *baseline { BASELINE_GREY } else { PALETTE[tuned % PALETTE.len()] };
            }
            tuned += usize::from(!*baseline);
        }
        BASELINE_GREY
    };
    let legend_rows = legend.len().div_ceil(2) as u32;
    let legend_height = 20 + 24 * legend_rows;
    let heights: Vec<u32> = panels.iter().map(|(_, bars)| 70 + 34 * bars.len() as u32).collect();
    let size = (WIDTH, legend_height + heights.iter().sum::<u32>());
    save_png(size, path, |root| {
        let (top, mut rest) = root.split_vertically(legend_height);
        draw_legend(&top, &legend, &colour_of)?;
        for ((title, bars), height) in panels.iter().zip(&heights) {
            let (area, below) = rest.split_vertically(*height);
            draw_bar_panel(&area, title, bars, &colour_of)?;
            rest = below;
        }
        Ok(())
    })
}

fn draw_legend(
    area: &DrawingArea<BitMapBackend, Shift>,
    legend: &[(&str, bool)],
    colour_of: &dyn Fn(&str) -> RGBColor,
) -> DrawResult {
    let font = ("sans-serif", 14).into_font().color(&BLACK);
    for (i, (label, baseline)) in legend.iter().enumerate() {
        let x = 24 + (i % 2) as i32 * (WIDTH as i32 / 2);
        let y = 12 + (i / 2) as i32 * 24;
        area.draw(&Rectangle::new([(x, y + 2), (x + 16, y + 16)], colour_of(label).filled()))?;
        let text = if *baseline { format!("{label} (baseline)") } else { (*label).to_string() };
        area.draw(&Text::new(text, (x + 24, y + 1), font.clone()))?;
    }
    Ok(())
}

fn draw_bar_panel(
    area: &DrawingArea<BitMapBackend, Shift>,
    title: &str,
    bars: &[Bar],
    colour_of: &dyn Fn(&str) -> RGBColor,
) -> DrawResult {
    let lo = bars.iter().map(|b| b.value).fold(0.0, f64::min);
    let hi = bars.iter().map(|b| b.value).fold(0.0, f64::max);
    // Room past each bar's end for its value, so no text sits on a bar.
    let span = (hi - lo).max(1e-9);
    let (lo, hi) = (if lo < 0.0 { lo - 0.3 * span } else { 0.0 }, hi + 0.3 * span);
    let n = bars.len();
    // The first instance on top: bar i sits in segment n - 1 - i.
    let slot = |i: usize| n - 1 - i;
    let longest = bars.iter().map(|b| b.label.chars().count()).max().unwrap_or(1) as u32;
    let mut chart = ChartBuilder::on(area)
        .margin(10)
        .margin_right(24)
        .caption(title, ("sans-serif", 17))
        .x_label_area_size(28)
        .y_label_area_size((longest * 8 + 16).min(WIDTH / 2))
        .build_cartesian_2d(lo..hi, (0..n).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(RGBColor(235, 235, 235))
        .y_labels(n)
        .y_label_formatter(&|segment| match segment {
            SegmentValue::CenterOf(j) if *j < n => bars[slot(*j)].label.clone(),
            _ => String::new(),
        })
        .x_label_formatter(&|x| tick(*x))
        .label_style(("sans-serif", 14))
        .draw()?;
    chart.draw_series(
        Histogram::horizontal(&chart)
            .margin(6)
            .style_func(|segment, _| match segment {
                SegmentValue::Exact(j) | SegmentValue::CenterOf(j) if *j < n => {
                    colour_of(&bars[slot(*j)].label).filled()
                }
                _ => BASELINE_GREY.filled(),
            })
            .data(bars.iter().enumerate().map(|(i, bar)| (slot(i), bar.value))),
    )?;
    let gap = 0.01 * (hi - lo);
    chart.draw_series(bars.iter().enumerate().map(|(i, bar)| {
        let text = match bar.change {
            Some(change) => format!("{} ({:+.1} %)", value_label(bar.value), 100.0 * change),
            None => value_label(bar.value),
        };
        let (x, anchor) = if bar.value < 0.0 {
            (bar.value - gap, Pos::new(HPos::Right, VPos::Center))
        } else {
            (bar.value + gap, Pos::new(HPos::Left, VPos::Center))
        };
        Text::new(
            text,
            (x, SegmentValue::CenterOf(slot(i))),
            TextStyle::from(("sans-serif", 14).into_font()).pos(anchor),
        )
    }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_is_tensorboards_debiased_moving_average() {
        // The first point is the value itself (no pull towards zero), gaps stay gaps.
        let s = smoothed(&[1.0, 3.0, f64::NAN, 3.0], 0.5);
        assert_eq!(s[0], 1.0);
        assert!((s[1] - (0.5 * 0.5 + 0.5 * 3.0) / 0.75).abs() < 1e-12);
        assert!(s[2].is_nan());
        assert_eq!(smoothed(&[2.0, 5.0], 0.0), vec![2.0, 5.0]);
    }

    #[test]
    fn a_spike_is_clipped_instead_of_setting_the_range() {
        let mut raw: Vec<f64> = (0..200).map(|i| 0.7 - 0.001 * i as f64).collect();
        raw[100] = 1000.0;
        let (lo, hi) = robust_bounds(&raw);
        assert!(lo < 0.5 && lo > 0.3 && hi > 0.7 && hi < 1.0, "{lo}..{hi}");
        // A flat curve still gets a visible range.
        let (lo, hi) = robust_bounds(&[2.0; 10]);
        assert!(lo < 2.0 && hi > 2.0);
    }
}
