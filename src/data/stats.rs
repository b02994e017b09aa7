//! Per-model statistics: the paper's per-model score distribution and win rates.

use std::collections::BTreeMap;

use polars::prelude::*;

use super::frame::{f64_col, floats, frame, i64_col, str_col, strings};

const NOT_ASPECTS: [&str; 7] =
    ["instruction_id", "model", "sample_index", "response", "completion_index", "score", "score_status"];

#[derive(Default)]
struct Tally {
    responses: i64,
    scored: i64,
    sums: Vec<f64>,
    counts: Vec<i64>,
    pairs: i64,
    wins: i64,
}

/// One row per model: responses, how many have a score, the mean score and mean of each
/// aspect, and — given pairs — how often it appears in a pair and how often it is chosen.
pub fn by_model(scores: &DataFrame, pairs: Option<&DataFrame>) -> Result<DataFrame, super::DataError> {
    let aspects: Vec<String> = scores
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .filter(|n| !NOT_ASPECTS.contains(&n.as_str()))
        .collect();
    let mut columns = vec![floats(scores, "scores", "score")?];
    for aspect in &aspects {
        columns.push(floats(scores, "scores", aspect)?);
    }
    let models: Vec<Option<&str>> = strings(scores, "scores", "model")?.iter().collect();
    let width = columns.len();
    let mut tally: BTreeMap<&str, Tally> = BTreeMap::new();
    for (row, model) in models.iter().enumerate() {
        let t = tally.entry(model.unwrap_or("")).or_insert_with(|| Tally {
            sums: vec![0.0; width],
            counts: vec![0; width],
            ..Tally::default()
        });
        t.responses += 1;
        for (c, column) in columns.iter().enumerate() {
            if let Some(v) = column.get(row).filter(|v| v.is_finite()) {
                t.sums[c] += v;
                t.counts[c] += 1;
            }
        }
        t.scored = t.counts[0];
    }
    if let Some(pairs) = pairs {
        let chosen: Vec<Option<&str>> = strings(pairs, "pairs", "chosen_model")?.iter().collect();
        let rejected: Vec<Option<&str>> = strings(pairs, "pairs", "rejected_model")?.iter().collect();
        for (c, r) in chosen.iter().zip(&rejected) {
            if let Some(t) = c.and_then(|c| tally.get_mut(c)) {
                t.pairs += 1;
                t.wins += 1;
            }
            if let Some(t) = r.and_then(|r| tally.get_mut(r)) {
                t.pairs += 1;
            }
        }
    }
    let n = tally.len();
    let mean = |t: &Tally, c: usize| (t.counts[c] > 0).then(|| t.sums[c] / t.counts[c] as f64);
    let mut out = vec![
        str_col("model", tally.keys().map(Some)),
        i64_col("responses", tally.values().map(|t| Some(t.responses)).collect()),
        i64_col("scored", tally.values().map(|t| Some(t.scored)).collect()),
        f64_col("mean_score", tally.values().map(|t| mean(t, 0)).collect()),
    ];
    for (i, aspect) in aspects.iter().enumerate() {
        out.push(f64_col(&format!("mean_{aspect}"), tally.values().map(|t| mean(t, i + 1)).collect()));
    }
    if pairs.is_some() {
        out.push(i64_col("pairs", tally.values().map(|t| Some(t.pairs)).collect()));
        out.push(i64_col("wins", tally.values().map(|t| Some(t.wins)).collect()));
        out.push(f64_col(
            "win_rate",
            tally.values().map(|t| (t.pairs > 0).then(|| t.wins as f64 / t.pairs as f64)).collect(),
        ));
    }
    Ok(frame(n, out)?)
}
