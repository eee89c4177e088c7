//! The training-curve plot written into a model directory: training (and validation) loss per
//! epoch on the left, validation Recall/NDCG@k on the right when present. SVG, via `plotters`.

use std::path::Path;

use plotters::prelude::*;

use crate::train::EpochLog;

/// Draws the curves of `log` into an SVG file at `path`.
pub fn training_curve_svg(log: &[EpochLog], val_k: usize, path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, (960, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(480);
    let epochs = log.len().max(1) as f64;

    let losses: Vec<f64> = log
        .iter()
        .flat_map(|e| std::iter::once(e.train_loss).chain(e.val_loss))
        .filter(|v| v.is_finite())
        .collect();
    let (lo, hi) = bounds(&losses);
    let mut chart = ChartBuilder::on(&left)
        .caption("loss", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(1f64..epochs.max(2.0), lo..hi)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(
            log.iter().map(|e| (e.epoch as f64, e.train_loss)),
            &BLUE,
        ))
        .map_err(|e| e.to_string())?
        .label("train_loss")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLUE));
    if log.iter().any(|e| e.val_loss.is_some()) {
        chart
            .draw_series(LineSeries::new(
                log.iter()
                    .filter_map(|e| e.val_loss.map(|v| (e.epoch as f64, v))),
                &RED,
            ))
            .map_err(|e| e.to_string())?
            .label("val_loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], RED));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;

    if log.iter().any(|e| e.val_recall.is_some()) {
        let metrics: Vec<f64> = log
            .iter()
            .flat_map(|e| e.val_recall.into_iter().chain(e.val_ndcg))
            .collect();
        let (_, hi) = bounds(&metrics);
        let mut chart = ChartBuilder::on(&right)
            .caption(format!("validation @{val_k}"), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(1f64..epochs.max(2.0), 0f64..hi)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .draw()
            .map_err(|e| e.to_string())?;
        for (name, color, get) in [
            (
                "recall",
                GREEN,
                (|e: &EpochLog| e.val_recall) as fn(&EpochLog) -> Option<f64>,
            ),
            ("ndcg", MAGENTA, |e: &EpochLog| e.val_ndcg),
        ] {
            chart
                .draw_series(LineSeries::new(
                    log.iter()
                        .filter_map(|e| get(e).map(|v| (e.epoch as f64, v))),
                    &color,
                ))
                .map_err(|e| e.to_string())?
                .label(format!("{name}@{val_k}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

fn bounds(values: &[f64]) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-6);
    (lo - pad, hi + pad)
}
