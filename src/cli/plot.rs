//! `silkie show STAGE.training --plot PATH`: a training run's loss and reward-margin curves,
//! one panel each, as a PNG. The font ships with silkie (DejaVu Sans), so plots look the same
//! on any machine, fonts installed or not.

use std::path::Path;

use plotters::prelude::*;
use polars::prelude::{DataFrame, DataType};

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const SIZE: (u32, u32) = (960, 720);

/// The curves worth plotting: (column, colour).
const CURVES: [(&str, RGBColor); 2] = [("loss", RGBColor(31, 119, 180)), ("rewards/margins", RGBColor(214, 39, 40))];

fn column(df: &DataFrame, name: &str) -> Result<Vec<f64>, String> {
    let column = df.column(name).map_err(|_| format!("the table has no `{name}` column: not training metrics"))?;
    let values = column.cast(&DataType::Float64).map_err(|e| format!("`{name}`: {e}"))?;
    let values = values.f64().map_err(|e| format!("`{name}`: {e}"))?;
    Ok(values.iter().map(|v| v.unwrap_or(f64::NAN)).collect())
}

/// The y range of a curve, padded so a flat line is still visible.
fn bounds(values: &[f64]) -> (f64, f64) {
    let finite = values.iter().copied().filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-3);
    (lo - pad, hi + pad)
}

/// Draws `training` (a `training` output: `step` and TRL's metric columns) into `path`.
pub fn training_curves(training: &DataFrame, title: &str, path: &Path) -> Result<(), String> {
    let steps = column(training, "step")?;
    if steps.is_empty() {
        return Err("the table has no rows to plot".into());
    }
    let curves: Vec<(&str, RGBColor, Vec<f64>)> = CURVES
        .iter()
        .map(|(name, colour)| Ok((*name, *colour, column(training, name)?)))
        .collect::<Result<_, String>>()?;
    // Registering twice is harmless; the first registration wins.
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    let (width, height) = SIZE;
    let mut pixels = vec![0u8; (width * height * 3) as usize];
    draw(&mut pixels, title, &steps, &curves).map_err(|e| format!("drawing the plot: {e}"))?;
    let image = image::RgbImage::from_raw(width, height, pixels).ok_or("the plot buffer has the wrong size")?;
    image.save_with_format(path, image::ImageFormat::Png).map_err(|e| format!("{}: {e}", path.display()))
}

fn draw(
    pixels: &mut [u8],
    title: &str,
    steps: &[f64],
    curves: &[(&str, RGBColor, Vec<f64>)],
) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::with_buffer(pixels, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 24))?;
    let last = steps.iter().copied().fold(0.0, f64::max).max(1.0);
    for (area, (name, colour, values)) in root.split_evenly((curves.len(), 1)).iter().zip(curves) {
        let (lo, hi) = bounds(values);
        let mut chart = ChartBuilder::on(area)
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..last, lo..hi)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(*name)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style(("sans-serif", 15))
            .draw()?;
        let points = steps.iter().copied().zip(values.iter().copied()).filter(|(_, y)| y.is_finite());
        chart.draw_series(LineSeries::new(points, colour.stroke_width(2)))?.label(*name);
    }
    root.present()?;
    Ok(())
}

/// One panel per metric, a bar per evaluated instance: `panels` is (title, [(label, value)]).
pub fn metric_bars(panels: &[(String, Vec<(String, f64)>)], path: &Path) -> Result<(), String> {
    if panels.is_empty() {
        return Err("nothing to plot".into());
    }
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    let (width, height) = (SIZE.0, (260 * panels.len() as u32).max(300));
    let mut pixels = vec![0u8; (width * height * 3) as usize];
    draw_bars(&mut pixels, (width, height), panels).map_err(|e| format!("drawing the plot: {e}"))?;
    let image = image::RgbImage::from_raw(width, height, pixels).ok_or("the plot buffer has the wrong size")?;
    image.save_with_format(path, image::ImageFormat::Png).map_err(|e| format!("{}: {e}", path.display()))
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn draw_bars(
    pixels: &mut [u8],
    size: (u32, u32),
    panels: &[(String, Vec<(String, f64)>)],
) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::with_buffer(pixels, size).into_drawing_area();
    root.fill(&WHITE)?;
    for (area, (title, bars)) in root.split_evenly((panels.len(), 1)).iter().zip(panels) {
        let top = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1e-9) * 1.15;
        let bottom = bars.iter().map(|b| b.1).fold(0.0, f64::min);
        let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
        let mut chart = ChartBuilder::on(area)
            .margin(12)
            .caption(title, ("sans-serif", 18))
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..bars.len() as f64, bottom..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(bars.len())
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - x.floor() - 0.5).abs() < 1e-6 {
                    labels.get(i).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .label_style(("sans-serif", 14))
            .draw()?;
        chart.draw_series(bars.iter().enumerate().map(|(i, (_, value))| {
            let colour = PALETTE[i % PALETTE.len()];
            Rectangle::new([(i as f64 + 0.15, 0.0), (i as f64 + 0.85, *value)], colour.filled())
        }))?;
        chart.draw_series(bars.iter().enumerate().map(|(i, (_, value))| {
            Text::new(format!("{value:.3}"), (i as f64 + 0.3, *value), ("sans-serif", 14).into_font())
        }))?;
    }
    root.present()?;
    Ok(())
}
