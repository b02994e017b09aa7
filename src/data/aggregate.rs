//! One score per response from its aspect ratings.

use std::collections::BTreeMap;

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use super::frame::{ResponseKeys, f64_col, floats, frame, strings};
use super::report::DataReport;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The plain mean, as the paper does.
    #[default]
    Mean,
    Min,
    /// Σ weight·rating / Σ weight over the aspects used.
    Weighted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Missing {
    /// A response with any unusable rating gets no score, and every pair touching it is
    /// dropped (and counted) by `pair` — the released recipe.
    #[default]
    DropResponse,
    /// Score from the usable aspects only; no score when none is usable.
    DropAspect,
}

pub struct Options {
    /// Aspect ids, in column order.
    pub aspects: Vec<String>,
    pub weights: BTreeMap<String, f64>,
    pub method: Method,
    pub missing: Missing,
}

/// Why a response has no score.
const UNPARSEABLE: &str = "unparseable_rating";
const MISSING: &str = "missing_rating";

/// `scores`: every response, its score (null when it has none, with `score_status` saying
/// why) and one column per aspect.
pub fn aggregate(
    responses: &DataFrame,
    ratings: &DataFrame,
    opts: &Options,
) -> Result<(DataFrame, DataReport), String> {
    let mut report = DataReport::default();
    report.input("responses", responses.height() as u64);
    report.input("ratings", ratings.height() as u64);
    let keys = ResponseKeys::read(responses, "responses")?;
    strings(responses, "responses", "response")?;
    if let Some((i, m, sample)) = keys.first_duplicate() {
        return Err(format!("table `responses`: two rows for instruction `{i}`, model `{m}`, sample {sample}"));
    }
    // Built only if a rating is not found next to the previous one (tables in another order).
    let mut row_of: Option<PlHashMap<(&str, &str, i64), usize>> = None;

    let rating_keys = ResponseKeys::read(ratings, "ratings")?;
    let aspect_col: Vec<Option<&str>> = strings(ratings, "ratings", "aspect")?.iter().collect();
    let values: Vec<Option<f64>> = floats(ratings, "ratings", "rating")?.iter().collect();
    // A row whose status says the judge gave no rating for the aspect counts as missing.
    let statuses: Vec<Option<&str>> = match ratings.column("status") {
        Ok(_) => strings(ratings, "ratings", "status")?.iter().collect(),
        Err(_) => vec![None; ratings.height()],
    };
    let n_aspects = opts.aspects.len();
    // Per response and aspect: None = no rating row, Some(None) = a rating that is not a number.
    let mut cells: Vec<Option<Option<f64>>> = vec![None; keys.len() * n_aspects];
    let (mut orphans, mut duplicates, mut other_aspects) = (0, 0, 0);
    // Silkie's tables come sorted alike, so the next rating's response is almost always the
    // one just found or the one after it: try those before hashing.
    let mut last = 0usize;
    for row in 0..rating_keys.len() {
        let Some(slot) = aspect_col[row].and_then(|a| opts.aspects.iter().position(|x| x == a)) else {
            other_aspects += 1;
            continue;
        };
        let key = rating_keys.key(row);
        let response = if last < keys.len() && keys.key(last) == key {
            last
        } else if last + 1 < keys.len() && keys.key(last + 1) == key {
            last + 1
        } else {
            let index = row_of.get_or_insert_with(|| (0..keys.len()).map(|r| (keys.key(r), r)).collect());
            match index.get(&key) {
                Some(&r) => r,
                None => {
                    orphans += 1;
                    continue;
                }
            }
        };
        last = response;
        let cell = &mut cells[response * n_aspects + slot];
        if cell.is_some() {
            duplicates += 1;
            continue;
        }
        if statuses[row] != Some("missing") {
            *cell = Some(values[row].filter(|v| v.is_finite()));
        }
    }
    report.note("rating_without_response", orphans);
    report.note("duplicate_rating_ignored", duplicates);
    report.note("rating_of_unselected_aspect", other_aspects);

    let mut scores = Vec::with_capacity(keys.len());
    let mut statuses: Vec<&str> = Vec::with_capacity(keys.len());
    for row in 0..keys.len() {
        let (score, status) = score(&cells[row * n_aspects..(row + 1) * n_aspects], opts);
        if status != "ok" {
            report.note(&format!("unscored_{status}"), 1);
        }
        scores.push(score);
        statuses.push(status);
    }
    let n = keys.len();
    // The responses' own columns go through as they are; only the new ones are built.
    let column = |name: &str| responses.column(name).cloned().map_err(|e| e.to_string());
    let mut columns = vec![
        column("instruction_id")?,
        column("model")?,
        Column::new("sample_index".into(), &keys.sample),
        column("response")?,
        f64_col("score", scores),
        Column::new("score_status".into(), statuses),
    ];
    for (slot, aspect) in opts.aspects.iter().enumerate() {
        columns.push(f64_col(aspect, (0..n).map(|row| cells[row * n_aspects + slot].flatten()).collect()));
    }
    let mut df = frame(n, columns).map_err(|e| e.to_string())?;
    if !keys.is_sorted() {
        df = df
            .sort(["instruction_id", "model", "sample_index"], SortMultipleOptions::default().with_maintain_order(true))
            .map_err(|e| e.to_string())?;
    }
    report.output("scores", df.height() as u64);
    Ok((df, report))
}

/// The score of one response from its aspect cells, and "ok" or why there is none.
fn score(cells: &[Option<Option<f64>>], opts: &Options) -> (Option<f64>, &'static str) {
    let unusable = cells.iter().find(|c| !matches!(c, Some(Some(_))));
    let reason = |c: &Option<Option<f64>>| if c.is_none() { MISSING } else { UNPARSEABLE };
    if opts.missing == Missing::DropResponse
        && let Some(cell) = unusable
    {
        return (None, reason(cell));
    }
    let used = || cells.iter().enumerate().filter_map(|(i, c)| c.flatten().map(|v| (i, v)));
    let count = used().count();
    if count == 0 {
        return (None, cells.first().map_or(MISSING, reason));
    }
    let value = match opts.method {
        Method::Mean => used().map(|(_, v)| v).sum::<f64>() / count as f64,
        Method::Min => used().map(|(_, v)| v).fold(f64::INFINITY, f64::min),
        Method::Weighted => {
            let weight = |i: usize| opts.weights.get(&opts.aspects[i]).copied().unwrap_or(0.0);
            let total: f64 = used().map(|(i, _)| weight(i)).sum();
            if total == 0.0 {
                return (None, MISSING);
            }
            used().map(|(i, v)| weight(i) * v).sum::<f64>() / total
        }
    };
    (Some(value), "ok")
}
