//! One score per response from its aspect ratings.

use std::collections::BTreeMap;

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use super::DataError;
use super::frame::{ResponseKeys, f64_col, floats, frame, integers, optional_integers, optional_strings, strings};
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
) -> Result<(DataFrame, DataReport), DataError> {
    let mut report = DataReport::default();
    report.input("responses", responses.height() as u64);
    report.input("ratings", ratings.height() as u64);
    let keys = ResponseKeys::read(responses, "responses")?;
    strings(responses, "responses", "response")?;
    if let Some((i, m, sample)) = keys.first_duplicate() {
        return Err(DataError::table(
            "responses",
            format!("two rows for instruction `{i}`, model `{m}`, sample {sample}"),
        ));
    }
    // Built only if a rating is not found next to the previous one (tables in another order).
    let mut row_of: Option<PlHashMap<(&str, &str, i64), usize>> = None;

    let rating_keys = ResponseKeys::read(ratings, "ratings")?;
    let aspect_col: Vec<Option<&str>> = strings(ratings, "ratings", "aspect")?.iter().collect();
    let values: Vec<Option<f64>> = floats(ratings, "ratings", "rating")?.iter().collect();
    // A row whose status says the judge gave no rating for the aspect counts as missing.
    let statuses = optional_strings(ratings, "ratings", "status")?.unwrap_or_else(|| vec![None; ratings.height()]);
    // Where each rating sat in its source (the release sums ratings in that order).
    let positions = optional_integers(ratings, "ratings", "position")?;
    let n_aspects = opts.aspects.len();
    let mut cells: Vec<Cell> = vec![Cell::Missing; keys.len() * n_aspects];
    let mut seen = vec![false; n_aspects];
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
        seen[slot] = true;
        let cell = &mut cells[response * n_aspects + slot];
        if *cell != Cell::Missing {
            duplicates += 1;
            continue;
        }
        let position = positions.as_ref().and_then(|p| p[row]).unwrap_or(slot as i64);
        *cell = match (statuses[row], values[row]) {
            (Some("missing"), _) => Cell::Missing,
            (_, Some(v)) if v.is_finite() => Cell::Rated(v, position),
            _ => Cell::Unparseable,
        };
    }
    if let Some(slot) = seen.iter().position(|s| !s) {
        let aspect = &opts.aspects[slot];
        let present: std::collections::BTreeSet<&str> = aspect_col.iter().flatten().copied().collect();
        let help =
            crate::dsl::did_you_mean(aspect, present.iter().copied()).map(|h| format!("; {h}")).unwrap_or_default();
        return Err(DataError::table(
            "ratings",
            format!(
                "no rating is for the aspect `{aspect}`; the ratings hold: {}{help}",
                present.into_iter().collect::<Vec<_>>().join(", ")
            ),
        ));
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
    let column = |name: &str| responses.column(name).cloned();
    let mut columns = vec![
        column("instruction_id")?,
        column("model")?,
        Column::new("sample_index".into(), &keys.sample),
        column("response")?,
    ];
    // Where each response sat in its source, when the responses say (VLFeedback does).
    if responses.column("completion_index").is_ok() {
        columns.push(Column::new("completion_index".into(), integers(responses, "responses", "completion_index")?));
    }
    columns.extend([f64_col("score", scores), Column::new("score_status".into(), statuses)]);
    for (slot, aspect) in opts.aspects.iter().enumerate() {
        columns.push(f64_col(aspect, (0..n).map(|row| cells[row * n_aspects + slot].value()).collect()));
    }
    let mut df = frame(n, columns)?;
    if !keys.is_sorted() {
        df = df.sort(
            ["instruction_id", "model", "sample_index"],
            SortMultipleOptions::default().with_maintain_order(true),
        )?;
    }
    report.output("scores", df.height() as u64);
    Ok((df, report))
}

/// One response's rating for one aspect.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cell {
    /// No rating row, or the judge gave none.
    Missing,
    /// A rating that is not a finite number.
    Unparseable,
    /// The rating and its position in the source.
    Rated(f64, i64),
}

impl Cell {
    fn value(self) -> Option<f64> {
        match self {
            Cell::Rated(v, _) => Some(v),
            _ => None,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Cell::Missing => MISSING,
            _ => UNPARSEABLE,
        }
    }
}

/// The score of one response from its aspect cells, and "ok" or why there is none.
fn score(cells: &[Cell], opts: &Options) -> (Option<f64>, &'static str) {
    if opts.missing == Missing::DropResponse
        && let Some(cell) = cells.iter().find(|c| c.value().is_none())
    {
        return (None, cell.reason());
    }
    // Summed in source order, as the release's `sum(float(r) for r in annotations.values())`.
    let mut used: smallvec::SmallVec<[(i64, usize, f64); 8]> = cells
        .iter()
        .enumerate()
        .filter_map(|(slot, c)| if let Cell::Rated(v, p) = c { Some((*p, slot, *v)) } else { None })
        .collect();
    if used.is_empty() {
        return (None, cells.first().map_or(MISSING, |c| c.reason()));
    }
    used.sort_by_key(|(position, slot, _)| (*position, *slot));
    let value = match opts.method {
        Method::Mean => used.iter().fold(0.0, |sum, (_, _, v)| sum + v) / used.len() as f64,
        Method::Min => used.iter().map(|(_, _, v)| *v).fold(f64::INFINITY, f64::min),
        Method::Weighted => {
            let weight = |slot: usize| opts.weights.get(&opts.aspects[slot]).copied().unwrap_or(0.0);
            let total: f64 = used.iter().map(|(_, slot, _)| weight(*slot)).sum();
            if total == 0.0 {
                return (None, "zero_weight");
            }
            used.iter().fold(0.0, |sum, (_, slot, v)| sum + weight(*slot) * v) / total
        }
    };
    // Finite ratings can still overflow to infinity, which compares as Python's does; only
    // a NaN (inf − inf) has no order.
    if value.is_nan() { (None, "not_a_number") } else { (Some(value), "ok") }
}
