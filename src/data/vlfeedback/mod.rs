//! Reads the released VLFeedback data as published: JSONL or Parquet rows
//! `{id, prompt, models, completions: [{model, response, annotations: {Aspect: {Rating, Rationale}}}]}`
//! with images at `<images>/{id}.jpg`, into the `instructions`, `responses` and `ratings` tables.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde::{Deserialize, Serialize};

mod json;
mod parse;

use parse::{Completion, OddAnnotations, Row, for_each_row};

use super::DataError;
use super::frame::{f64_col, frame, i64_col, str_col};
use super::images::{PutBlobs, store_images};
use super::rating::{ASPECTS, parse_rating};
use super::report::DataReport;

/// What to do with a row or image that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnBad {
    /// Fail the stage, naming the file and line.
    #[default]
    Error,
    /// Leave the instruction out and count it in the report.
    Skip,
}

pub struct Options<'a> {
    /// Directory holding `{id}.jpg`; `None` when the data comes without images.
    pub images: Option<&'a Path>,
    /// A row whose image is missing, undecodable or too large.
    pub on_bad_image: OnBad,
    pub max_image_pixels: u64,
    pub on_bad_row: OnBad,
    /// Who wrote the ratings (the release's judge is GPT-4V).
    pub judge: &'a str,
    pub source: &'a str,
}

/// The imported tables, sorted by their row keys.
pub struct Imported {
    pub instructions: DataFrame,
    pub responses: DataFrame,
    pub ratings: DataFrame,
    /// `{id}.jpg` → (blob digest, bytes), for every image the instructions use.
    pub images: BTreeMap<String, (String, u64)>,
    pub report: DataReport,
}

/// Reads `path` (JSONL, or Parquet by extension). `put_images` stores a batch of images'
/// bytes in the blob store and returns their digests and sizes.
pub fn import(path: &Path, shown: &str, opts: &Options, put_images: &mut PutBlobs) -> Result<Imported, DataError> {
    let mut report = DataReport::default();
    let mut rows: Vec<Row> = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut images = BTreeMap::new();
    let mut digests: Vec<Option<String>> = Vec::new();
    let mut odd = OddAnnotations::default();
    let mut located: Vec<(String, Row)> = Vec::new();
    let mut lines = 0;
    for_each_row(path, shown, opts.images.is_some(), &mut |location, parsed| {
        lines += 1;
        let row = match parsed {
            Ok((row, row_odd)) => {
                odd.add(row_odd);
                row
            }
            Err(reason) => return reject(opts.on_bad_row, &mut report, "bad_row", &location, &reason),
        };
        if let Some(first) = seen.get(&row.id) {
            let reason = format!("duplicate id `{}` (first seen at {first})", row.id);
            return reject(opts.on_bad_row, &mut report, "duplicate_id", &location, &reason);
        }
        seen.insert(row.id.clone(), location.clone());
        located.push((location, row));
        Ok(())
    })?;
    if lines == 0 {
        return Err(DataError::file(shown, "the file holds no rows"));
    }
    let files: Vec<PathBuf> = match opts.images {
        None => Vec::new(),
        Some(dir) => located.iter().map(|(_, row)| dir.join(format!("{}.jpg", row.id))).collect(),
    };
    let mut checked = store_images(&files, opts.max_image_pixels, put_images)?.into_iter();
    for (location, row) in located {
        let digest = match checked.next() {
            None => None,
            Some(Ok((digest, bytes))) => {
                images.insert(format!("{}.jpg", row.id), (digest.clone(), bytes));
                Some(digest)
            }
            Some(Err((reason, why))) => {
                reject(opts.on_bad_image, &mut report, reason, &location, &why)?;
                continue;
            }
        };
        digests.push(digest);
        rows.push(row);
    }
    report.input("rows", lines);
    report.note("unknown_aspect", odd.unknown_aspects);
    report.note("duplicate_aspect_annotation", odd.duplicates);
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by(|&a, &b| rows[a].id.cmp(&rows[b].id));
    // Building a table's columns is one core's work, so the two builds share the cores.
    let (instructions, responses_and_ratings) = rayon::join(
        || instructions_table(&rows, &digests, &order, opts.source),
        || response_tables(&rows, &order, opts.judge, &mut report),
    );
    let (instructions, (responses, ratings)) = (instructions?, responses_and_ratings?);
    report.output("instructions", instructions.height() as u64);
    report.output("responses", responses.height() as u64);
    report.output("ratings", ratings.height() as u64);
    Ok(Imported { instructions, responses, ratings, images, report })
}

fn reject(policy: OnBad, report: &mut DataReport, reason: &str, location: &str, why: &str) -> Result<(), DataError> {
    match policy {
        OnBad::Error => Err(DataError::Record { location: location.into(), problem: why.into() }),
        OnBad::Skip => {
            tracing::debug!("skipping {location}: {why}");
            report.drop(reason, 1);
            Ok(())
        }
    }
}

fn instructions_table(
    rows: &[Row],
    digests: &[Option<String>],
    order: &[usize],
    source: &str,
) -> PolarsResult<DataFrame> {
    let n = order.len();
    frame(
        n,
        vec![
            str_col("id", order.iter().map(|&i| Some(&rows[i].id))),
            str_col("prompt", order.iter().map(|&i| Some(&rows[i].prompt))),
            str_col("image", order.iter().map(|&i| digests[i].as_ref())),
            str_col("source", std::iter::repeat_n(Some(source), n)),
        ],
    )
}

fn response_tables(
    rows: &[Row],
    order: &[usize],
    judge: &str,
    report: &mut DataReport,
) -> PolarsResult<(DataFrame, DataFrame)> {
    // (instruction id, model, sample index, completion)
    let mut responses: Vec<(&str, &str, i64, &Completion)> = Vec::new();
    for &i in order {
        let mut per_model: HashMap<&str, i64> = HashMap::new();
        for c in &rows[i].completions {
            let index = per_model.entry(&c.model).or_default();
            responses.push((&rows[i].id, &c.model, *index, c));
            *index += 1;
        }
    }
    responses.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
    let n = responses.len();
    let none_i64 = || i64_col("", vec![None; n]);
    let responses_df = frame(
        n,
        vec![
            str_col("instruction_id", responses.iter().map(|r| Some(r.0))),
            str_col("model", responses.iter().map(|r| Some(r.1))),
            i64_col("sample_index", responses.iter().map(|r| Some(r.2)).collect()),
            str_col("response", responses.iter().map(|r| Some(&r.3.response))),
            i64_col("completion_index", responses.iter().map(|r| Some(r.3.index)).collect()),
            str_col("finish_reason", std::iter::repeat_n(None::<&str>, n)),
            none_i64().with_name("tokens_in".into()),
            none_i64().with_name("tokens_out".into()),
            none_i64().with_name("latency_ms".into()),
            str_col("call_key", std::iter::repeat_n(None::<&str>, n)),
        ],
    )?;

    let mut cols: [Vec<Option<&str>>; 6] = Default::default(); // instruction_id, model, aspect, rating_text, rationale, status
    let mut sample_index = Vec::with_capacity(n * 3);
    let mut positions = Vec::with_capacity(n * 3);
    let mut values = Vec::with_capacity(n * 3);
    let (mut unparseable, mut missing, mut out_of_range) = (0, 0, 0);
    for (id, model, index, completion) in &responses {
        for (slot, aspect) in ASPECTS.iter().enumerate() {
            let (text, rationale, value, status) = match &completion.ratings[slot] {
                None => {
                    missing += 1;
                    (None, None, None, "missing")
                }
                Some(rating) => match parse_rating(&rating.text) {
                    Some(v) => {
                        if !(1.0..=5.0).contains(&v) {
                            out_of_range += 1;
                        }
                        (Some(rating.text.as_str()), Some(rating.rationale.as_str()), Some(v), "ok")
                    }
                    None => {
                        unparseable += 1;
                        (Some(rating.text.as_str()), Some(rating.rationale.as_str()), None, "unparseable")
                    }
                },
            };
            positions.push(completion.ratings[slot].as_ref().map(|r| r.position));
            cols[0].push(Some(id));
            cols[1].push(Some(model));
            cols[2].push(Some(aspect));
            cols[3].push(text);
            cols[4].push(rationale);
            cols[5].push(Some(status));
            sample_index.push(Some(*index));
            values.push(value);
        }
    }
    report.note("unparseable_rating", unparseable);
    report.note("missing_rating", missing);
    report.note("out_of_range_rating", out_of_range);
    let m = values.len();
    let named: Vec<_> =
        ["instruction_id", "model", "aspect", "rating_text", "rationale", "status"].into_iter().zip(cols).collect();
    let [ids, models, aspects, texts, rationales, statuses]: [Column; 6] = {
        use rayon::prelude::*;
        let built: Vec<Column> = named.into_par_iter().map(|(name, values)| str_col(name, values)).collect();
        built.try_into().expect("six columns")
    };
    let ratings_df = frame(
        m,
        vec![
            ids,
            models,
            i64_col("sample_index", sample_index),
            aspects,
            f64_col("rating", values),
            i64_col("position", positions),
            texts,
            rationales,
            statuses,
            str_col("judge", std::iter::repeat_n(Some(judge), m)),
            str_col("call_key", std::iter::repeat_n(None::<&str>, m)),
        ],
    )?;
    Ok((responses_df, ratings_df))
}
