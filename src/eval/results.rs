//! The `results` table every benchmark reports in: one row per metric, with the baseline's
//! value and the relative change to it when there is a baseline (fractions: 0.069 is +6.9 %).

use polars::prelude::{Column, DataFrame};

use super::EvalError;
use super::mme::MmeScores;
use super::mmhal::MmhalScores;

#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub benchmark: String,
    pub metric: String,
    pub value: f64,
}

fn metric(benchmark: &str, name: impl Into<String>, value: f64) -> Metric {
    Metric { benchmark: benchmark.to_string(), metric: name.into(), value }
}

/// Category totals (`perception`, `cognition`, … in their order), then `subtask/NAME` scores.
pub fn mme_metrics(benchmark: &str, scores: &MmeScores) -> Vec<Metric> {
    let mut out: Vec<Metric> = scores.order.iter().map(|c| metric(benchmark, c, scores.totals[c])).collect();
    out.extend(scores.subtasks.iter().map(|(name, s)| metric(benchmark, format!("subtask/{name}"), s.score)));
    out
}

/// `score` (mean 0–6), `hallucination_rate`, then `type/NAME` means.
pub fn mmhal_metrics(benchmark: &str, scores: &MmhalScores) -> Vec<Metric> {
    let mut out = vec![
        metric(benchmark, "score", scores.score),
        metric(benchmark, "hallucination_rate", scores.hallucination_rate),
    ];
    out.extend(scores.by_type.iter().map(|(t, v)| metric(benchmark, format!("type/{t}"), *v)));
    out
}

/// `(value − baseline) / |baseline|`; none against a zero baseline.
pub fn relative_change(value: f64, baseline: f64) -> Option<f64> {
    (baseline != 0.0).then(|| (value - baseline) / baseline.abs())
}

/// The results table: `benchmark`, `metric`, `value`, `baseline_value`, `relative_change`.
pub fn results_table(metrics: &[Metric], baseline: Option<&[Metric]>) -> Result<DataFrame, EvalError> {
    let base =
        |m: &Metric| baseline?.iter().find(|b| b.benchmark == m.benchmark && b.metric == m.metric).map(|b| b.value);
    let baseline_values: Vec<Option<f64>> = metrics.iter().map(base).collect();
    let changes: Vec<Option<f64>> =
        metrics.iter().zip(&baseline_values).map(|(m, b)| b.and_then(|b| relative_change(m.value, b))).collect();
    DataFrame::new(
        metrics.len(),
        vec![
            Column::new("benchmark".into(), metrics.iter().map(|m| m.benchmark.as_str()).collect::<Vec<_>>()),
            Column::new("metric".into(), metrics.iter().map(|m| m.metric.as_str()).collect::<Vec<_>>()),
            Column::new("value".into(), metrics.iter().map(|m| m.value).collect::<Vec<_>>()),
            Column::new("baseline_value".into(), baseline_values),
            Column::new("relative_change".into(), changes),
        ],
    )
    .map_err(EvalError::from)
}

/// The metrics of a results table.
pub fn read_results(df: &DataFrame) -> Result<Vec<Metric>, EvalError> {
    let missing = |column, expected| move |_| EvalError::ResultsColumn { column, expected };
    let text = |name: &'static str| -> Result<Vec<String>, EvalError> {
        let col = df.column(name).and_then(|c| c.str().cloned()).map_err(missing(name, "text"))?;
        Ok(col.iter().map(|v| v.unwrap_or_default().to_string()).collect())
    };
    let values = df.column("value").and_then(|c| c.f64().cloned()).map_err(missing("value", "numbers"))?;
    let (benchmarks, metrics) = (text("benchmark")?, text("metric")?);
    Ok(benchmarks
        .into_iter()
        .zip(metrics)
        .zip(values.iter())
        .map(|((benchmark, metric), value)| Metric { benchmark, metric, value: value.unwrap_or(f64::NAN) })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_changes_are_fractions_against_the_baseline() {
        assert_eq!(relative_change(1069.0, 1000.0), Some(0.069));
        assert_eq!(relative_change(0.2, 0.25).map(|c| (c * 1e12).round() / 1e12), Some(-0.2));
        assert_eq!(relative_change(3.0, 0.0), None);
        let now = [metric("mme", "perception", 1100.0), metric("mme", "cognition", 300.0)];
        let before = [metric("mme", "perception", 1000.0)];
        let df = results_table(&now, Some(&before)).unwrap();
        let change = df.column("relative_change").unwrap().f64().unwrap().clone();
        assert_eq!(change.get(0), Some(0.1));
        assert_eq!(change.get(1), None, "no baseline value, no change");
        assert_eq!(read_results(&df).unwrap(), now.to_vec());
    }
}
