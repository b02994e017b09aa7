//! Reads the released VLFeedback data as published: JSONL or Parquet rows
//! `{id, prompt, models, completions: [{model, response, annotations: {Aspect: {Rating, Rationale}}}]}`
//! with images at `<images>/{id}.jpg`, into the `instructions`, `responses` and `ratings` tables.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::frame::{f64_col, frame, i64_col, str_col};
use super::images::{PutBlobs, store_images};
use super::rating::{ASPECTS, aspect_id, parse_rating};
use super::report::DataReport;
use crate::table;

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

/// One aspect's annotation, as the source writes it.
struct Rating {
    text: String,
    rationale: String,
    /// Where the annotation sits among the completion's annotations in the source.
    position: i64,
}

struct Completion {
    /// Where the completion sits in its row's `completions`.
    index: i64,
    model: String,
    response: String,
    /// Per aspect id; `None` when the aspect is absent.
    ratings: [Option<Rating>; 3],
}

struct Row {
    id: String,
    prompt: String,
    completions: Vec<Completion>,
}

/// Reads `path` (JSONL, or Parquet by extension). `put_images` stores a batch of images'
/// bytes in the blob store and returns their digests and sizes.
pub fn import(path: &Path, shown: &str, opts: &Options, put_images: &mut PutBlobs) -> Result<Imported, String> {
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
        return Err(format!("{shown}: the file holds no rows"));
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
    let instructions = instructions_table(&rows, &digests, &order, opts.source).map_err(|e| e.to_string())?;
    let (responses, ratings) = response_tables(&rows, &order, opts.judge, &mut report).map_err(|e| e.to_string())?;
    report.output("instructions", instructions.height() as u64);
    report.output("responses", responses.height() as u64);
    report.output("ratings", ratings.height() as u64);
    Ok(Imported { instructions, responses, ratings, images, report })
}

fn reject(policy: OnBad, report: &mut DataReport, reason: &str, location: &str, why: &str) -> Result<(), String> {
    match policy {
        OnBad::Error => Err(format!("{location}: {why}")),
        OnBad::Skip => {
            tracing::debug!("skipping {location}: {why}");
            report.drop(reason, 1);
            Ok(())
        }
    }
}

/// One record: its JSON, and the order of each completion's annotation keys as written
/// (serde_json's maps are sorted; the release sums the ratings in file order, which can matter
/// to the last bit).
struct Record {
    value: Value,
    annotation_order: Vec<Vec<String>>,
}

/// A row as read, with the annotations in it that do not count; or why it is not a row.
type ParsedRow = Result<(Row, OddAnnotations), String>;

/// Calls `f` with (location, the row or why it is not one) for every record, in file order.
fn for_each_row(
    path: &Path,
    shown: &str,
    names_images: bool,
    f: &mut dyn FnMut(String, ParsedRow) -> Result<(), String>,
) -> Result<(), String> {
    if table::TableFormat::from_path(path) == Some(table::TableFormat::Parquet) {
        let mut df = table::read(path, table::TableFormat::Parquet).map_err(|e| e.to_string())?;
        // Image bytes have no JSON form, and the images come from the images folder anyway.
        let keep: Vec<String> =
            df.columns().iter().filter(|c| !table::holds_binary(c.dtype())).map(|c| c.name().to_string()).collect();
        df = df.select(keep).map_err(|e| format!("{shown}: {e}"))?;
        let mut lines = Vec::new();
        JsonWriter::new(&mut lines)
            .with_json_format(JsonFormat::JsonLines)
            .finish(&mut df)
            .map_err(|e| format!("{shown}: {e}"))?;
        return each_line(BufReader::new(lines.as_slice()), &|n| format!("{shown}: row {n}"), names_images, f);
    }
    let file = std::fs::File::open(path).map_err(|e| format!("{shown}: {e}"))?;
    each_line(BufReader::new(file), &|n| format!("{shown}:{n}"), names_images, f)
}

/// Lines read and parsed together, on every core, before they are handed on in order.
const LINES_PER_BATCH: usize = 4096;

fn each_line(
    mut reader: impl BufRead,
    locate: &dyn Fn(usize) -> String,
    names_images: bool,
    f: &mut dyn FnMut(String, ParsedRow) -> Result<(), String>,
) -> Result<(), String> {
    use rayon::prelude::*;
    let mut line = 0;
    loop {
        let mut batch: Vec<(usize, Vec<u8>)> = Vec::with_capacity(LINES_PER_BATCH);
        while batch.len() < LINES_PER_BATCH {
            let mut buf = Vec::new();
            if reader.read_until(b'\n', &mut buf).map_err(|e| format!("{}: {e}", locate(line + 1)))? == 0 {
                break;
            }
            line += 1;
            batch.push((line, buf));
        }
        if batch.is_empty() {
            return Ok(());
        }
        let parsed: Vec<Option<ParsedRow>> = batch.par_iter().map(|(_, text)| parse_line(text, names_images)).collect();
        for ((line, _), row) in batch.iter().zip(parsed) {
            if let Some(row) = row {
                f(locate(*line), row)?;
            }
        }
    }
}

/// One line of the file: nothing when blank, else the row or why it is not one.
fn parse_line(bytes: &[u8], names_images: bool) -> Option<ParsedRow> {
    let text = match std::str::from_utf8(bytes) {
        Err(e) => return Some(Err(format!("not UTF-8 (invalid byte at column {})", e.valid_up_to() + 1))),
        Ok(text) if text.trim().is_empty() => return None,
        Ok(text) => text,
    };
    let record = serde_json::from_str::<Value>(text)
        .map_err(|e| format!("invalid JSON (column {}): {e}", e.column()))
        .map(|value| Record { value, annotation_order: annotation_order(text) });
    Some(record.and_then(|record| parse_row(&record, names_images)))
}

/// The annotation keys of each completion, in the order the text gives them.
fn annotation_order(text: &str) -> Vec<Vec<String>> {
    #[derive(Deserialize)]
    struct Row {
        #[serde(default)]
        completions: Vec<CompletionKeys>,
    }
    #[derive(Deserialize)]
    struct CompletionKeys {
        #[serde(default, deserialize_with = "keys_in_order")]
        annotations: Vec<String>,
    }
    fn keys_in_order<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        struct Keys;
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = Vec<String>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Vec<String>, A::Error> {
                let mut keys = Vec::new();
                while let Some((key, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                    keys.push(key);
                }
                Ok(keys)
            }
            fn visit_unit<E>(self) -> Result<Vec<String>, E> {
                Ok(Vec::new())
            }
        }
        d.deserialize_any(Keys)
    }
    serde_json::from_str::<Row>(text)
        .map(|r| r.completions.into_iter().map(|c| c.annotations).collect())
        .unwrap_or_default()
}

fn text_of(value: &Value, what: &str) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Null => Err(format!("`{what}` is missing")),
        other => Err(format!("`{what}` must be text, found {}", crate::dsl::type_name(other))),
    }
}

/// Annotations that do not count, counted for the report.
#[derive(Default)]
struct OddAnnotations {
    unknown_aspects: u64,
    /// A second annotation of one aspect in one completion (`Ethics` beside `Ethical
    /// Considerations`, or a key written twice): the first counts.
    duplicates: u64,
}

impl OddAnnotations {
    fn add(&mut self, other: OddAnnotations) {
        self.unknown_aspects += other.unknown_aspects;
        self.duplicates += other.duplicates;
    }
}

fn parse_row(record: &Record, names_images: bool) -> Result<(Row, OddAnnotations), String> {
    let mut odd = OddAnnotations::default();
    let obj = record.value.as_object().ok_or("expected a JSON object")?;
    let id = text_of(obj.get("id").unwrap_or(&Value::Null), "id")?;
    // The id names the image file: it must stay inside the images folder.
    if names_images && (id.is_empty() || id.starts_with(['/', '\\']) || id.split(['/', '\\']).any(|p| p == "..")) {
        return Err(format!("id `{id}` cannot name an image inside the images folder"));
    }
    let prompt = text_of(obj.get("prompt").unwrap_or(&Value::Null), "prompt")?;
    let completions =
        obj.get("completions").and_then(Value::as_array).ok_or("`completions` is missing or not a list")?;
    if completions.is_empty() {
        return Err("`completions` is empty".into());
    }
    let mut parsed = Vec::with_capacity(completions.len());
    for (i, c) in completions.iter().enumerate() {
        let at = |field: &str| format!("completions[{i}].{field}");
        let model = text_of(c.get("model").unwrap_or(&Value::Null), &at("model"))?;
        let response = text_of(c.get("response").unwrap_or(&Value::Null), &at("response"))?;
        let annotations = c
            .get("annotations")
            .and_then(Value::as_object)
            .ok_or_else(|| format!("`{}` is missing or not a map", at("annotations")))?;
        let mut ratings: [Option<Rating>; 3] = Default::default();
        let order = record.annotation_order.get(i);
        // A key written twice reaches us once (a JSON map keeps its last value); the text says so.
        if let Some(keys) = order {
            let distinct: std::collections::BTreeSet<&String> = keys.iter().collect();
            odd.duplicates += (keys.len() - distinct.len()) as u64;
        }
        for (name, annotation) in annotations {
            // Parquet gives every row every aspect field; an absent one comes back as null.
            if annotation.is_null() {
                continue;
            }
            let Some(aspect) = aspect_id(name) else {
                odd.unknown_aspects += 1;
                continue;
            };
            let slot = ASPECTS.iter().position(|a| *a == aspect).expect("aspect ids come from ASPECTS");
            if ratings[slot].is_some() {
                odd.duplicates += 1;
                continue;
            }
            let rating = match annotation.get("Rating") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            let rationale = annotation.get("Rationale").and_then(Value::as_str).unwrap_or_default().to_string();
            let position = order.and_then(|keys| keys.iter().position(|k| k == name)).unwrap_or(slot);
            ratings[slot] = Some(Rating { text: rating, rationale, position: position as i64 });
        }
        parsed.push(Completion { index: i as i64, model, response, ratings });
    }
    Ok((Row { id, prompt, completions: parsed }, odd))
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
    let [ids, models, aspects, texts, rationales, statuses] = cols;
    let ratings_df = frame(
        m,
        vec![
            str_col("instruction_id", ids),
            str_col("model", models),
            i64_col("sample_index", sample_index),
            str_col("aspect", aspects),
            f64_col("rating", values),
            i64_col("position", positions),
            str_col("rating_text", texts),
            str_col("rationale", rationales),
            str_col("status", statuses),
            str_col("judge", std::iter::repeat_n(Some(judge), m)),
            str_col("call_key", std::iter::repeat_n(None::<&str>, m)),
        ],
    )?;
    Ok((responses_df, ratings_df))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(text: &str) -> Record {
        Record { value: serde_json::from_str(text).unwrap(), annotation_order: annotation_order(text) }
    }

    #[test]
    fn a_second_annotation_of_one_aspect_is_counted_and_the_first_kept() {
        let text = r#"{"id": "a", "prompt": "p", "completions": [{"model": "m", "response": "r", "annotations": {
            "Ethical Considerations": {"Rating": "5", "Rationale": "first"}, "Ethics": {"Rating": "1", "Rationale": "second"},
            "Helpfulness": {"Rating": "3"}, "Helpfulness": {"Rating": "4"}}}]}"#;
        let (row, odd) = parse_row(&record(text), false).unwrap();
        assert_eq!(odd.duplicates, 2, "one aspect under two names, and one key written twice");
        let ethics = row.completions[0].ratings[2].as_ref().unwrap();
        assert_eq!((ethics.text.as_str(), ethics.rationale.as_str()), ("5", "first"));
    }
}
