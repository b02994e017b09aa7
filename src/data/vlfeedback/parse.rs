//! Reading the released file: its lines (or Parquet rows as JSON lines), parsed in batches
//! on every core and handed on in file order, each a row or the reason it is not one.

use std::io::{BufRead, BufReader};
use std::path::Path;

use polars::prelude::*;
use serde_json::Value;

use super::json::{Annotation, Field, RawRow};

use crate::data::DataError;
use crate::data::rating::{ASPECTS, aspect_id};
use crate::table;

/// One aspect's annotation, as the source writes it.
pub(super) struct Rating {
    pub text: String,
    pub rationale: String,
    /// Where the annotation sits among the completion's annotations in the source.
    pub position: i64,
}

pub(super) struct Completion {
    /// Where the completion sits in its row's `completions`.
    pub index: i64,
    pub model: String,
    pub response: String,
    /// Per aspect id; `None` when the aspect is absent.
    pub ratings: [Option<Rating>; 3],
}

pub(super) struct Row {
    pub id: String,
    pub prompt: String,
    pub completions: Vec<Completion>,
}

/// A row as read, with the annotations in it that do not count; or why it is not a row.
pub(super) type ParsedRow = Result<(Row, OddAnnotations), String>;

/// Calls `f` with (location, the row or why it is not one) for every record, in file order.
pub(super) fn for_each_row(
    path: &Path,
    shown: &str,
    names_images: bool,
    f: &mut dyn FnMut(String, ParsedRow) -> Result<(), DataError>,
) -> Result<(), DataError> {
    if table::TableFormat::from_path(path) == Some(table::TableFormat::Parquet) {
        let mut df = table::read(path, table::TableFormat::Parquet)?;
        // Image bytes have no JSON form, and the images come from the images folder anyway.
        let keep: Vec<String> =
            df.columns().iter().filter(|c| !table::holds_binary(c.dtype())).map(|c| c.name().to_string()).collect();
        df = df.select(keep)?;
        let mut lines = Vec::new();
        JsonWriter::new(&mut lines).with_json_format(JsonFormat::JsonLines).finish(&mut df)?;
        return each_line(BufReader::new(lines.as_slice()), &|n| format!("{shown}: row {n}"), names_images, f);
    }
    let file = std::fs::File::open(path).map_err(|source| DataError::Io { path: shown.into(), source })?;
    each_line(BufReader::new(file), &|n| format!("{shown}:{n}"), names_images, f)
}

/// Lines read and parsed together, on every core, before they are handed on in order.
const LINES_PER_BATCH: usize = 4096;

fn each_line(
    mut reader: impl BufRead,
    locate: &dyn Fn(usize) -> String,
    names_images: bool,
    f: &mut dyn FnMut(String, ParsedRow) -> Result<(), DataError>,
) -> Result<(), DataError> {
    use rayon::prelude::*;
    let mut line = 0;
    loop {
        let mut batch: Vec<(usize, Vec<u8>)> = Vec::with_capacity(LINES_PER_BATCH);
        while batch.len() < LINES_PER_BATCH {
            let mut buf = Vec::new();
            let read = reader.read_until(b'\n', &mut buf);
            if read.map_err(|e| DataError::Record { location: locate(line + 1), problem: e.to_string() })? == 0 {
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
    Some(parse_row(text, names_images))
}

fn text_of(field: Field, what: &str) -> Result<String, String> {
    match field {
        Field::Text(s) => Ok(s.into_owned()),
        Field::Other(Value::Number(n)) => Ok(n.to_string()),
        Field::Other(Value::Null) => Err(format!("`{what}` is missing")),
        Field::Other(other) => Err(format!("`{what}` must be text, found {}", crate::dsl::type_name(&other))),
    }
}

/// Annotations that do not count, counted for the report.
#[derive(Default)]
pub(super) struct OddAnnotations {
    pub unknown_aspects: u64,
    /// A second annotation of one aspect in one completion (`Ethics` beside `Ethical
    /// Considerations`, or a key written twice): the first counts.
    pub duplicates: u64,
}

impl OddAnnotations {
    pub fn add(&mut self, other: OddAnnotations) {
        self.unknown_aspects += other.unknown_aspects;
        self.duplicates += other.duplicates;
    }
}

fn parse_row(text: &str, names_images: bool) -> Result<(Row, OddAnnotations), String> {
    let RawRow(row) =
        serde_json::from_str::<RawRow>(text).map_err(|e| format!("invalid JSON (column {}): {e}", e.column()))?;
    let row = row.ok_or("expected a JSON object")?;
    let mut odd = OddAnnotations::default();
    let id = text_of(row.id, "id")?;
    // The id names the image file: it must stay inside the images folder.
    if names_images && (id.is_empty() || id.starts_with(['/', '\\']) || id.split(['/', '\\']).any(|p| p == "..")) {
        return Err(format!("id `{id}` cannot name an image inside the images folder"));
    }
    let prompt = text_of(row.prompt, "prompt")?;
    let completions = row.completions.0.ok_or("`completions` is missing or not a list")?;
    if completions.is_empty() {
        return Err("`completions` is empty".into());
    }
    let mut parsed = Vec::with_capacity(completions.len());
    for (i, c) in completions.into_iter().enumerate() {
        let at = |field: &str| format!("completions[{i}].{field}");
        let model = text_of(c.model, &at("model"))?;
        let response = text_of(c.response, &at("response"))?;
        let annotations = c.annotations.0.ok_or_else(|| format!("`{}` is missing or not a map", at("annotations")))?;
        // A key written twice reaches us once, with its last value (as a JSON map keeps it).
        odd.duplicates += annotations.repeated as u64;
        let mut ratings: [Option<Rating>; 3] = Default::default();
        for entry in annotations.entries {
            // Parquet gives every row every aspect field; an absent one comes back as null.
            let Annotation::Fields { rating, rationale } = entry.value else { continue };
            let Some(aspect) = aspect_id(&entry.key) else {
                odd.unknown_aspects += 1;
                continue;
            };
            let slot = ASPECTS.iter().position(|a| *a == aspect).expect("aspect ids come from ASPECTS");
            if ratings[slot].is_some() {
                odd.duplicates += 1;
                continue;
            }
            let rating = match rating {
                Field::Text(s) => s.into_owned(),
                Field::Other(Value::Null) => String::new(),
                Field::Other(other) => other.to_string(),
            };
            let rationale = match rationale {
                Field::Text(s) => s.into_owned(),
                Field::Other(_) => String::new(),
            };
            ratings[slot] = Some(Rating { text: rating, rationale, position: entry.position as i64 });
        }
        parsed.push(Completion { index: i as i64, model, response, ratings });
    }
    Ok((Row { id, prompt, completions: parsed }, odd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_annotation_of_one_aspect_is_counted_and_the_first_kept() {
        let text = r#"{"id": "a", "prompt": "p", "completions": [{"model": "m", "response": "r", "annotations": {
            "Ethical Considerations": {"Rating": "5", "Rationale": "first"}, "Ethics": {"Rating": "1", "Rationale": "second"},
            "Helpfulness": {"Rating": "3"}, "Helpfulness": {"Rating": "4"}}}]}"#;
        let (row, odd) = parse_row(text, false).unwrap();
        assert_eq!(odd.duplicates, 2, "one aspect under two names, and one key written twice");
        let ethics = row.completions[0].ratings[2].as_ref().unwrap();
        assert_eq!((ethics.text.as_str(), ethics.rationale.as_str()), ("5", "first"));
        let helpfulness = row.completions[0].ratings[0].as_ref().unwrap();
        assert_eq!((helpfulness.text.as_str(), helpfulness.position), ("4", 2), "the last value, where first written");
    }

    #[test]
    fn values_of_any_shape_read_as_the_release_reads_them_or_are_named() {
        let row =
            |completion: &str| format!(r#"{{"id": 7, "prompt": "a \"quoted\" p", "completions": [{completion}]}}"#);
        let good = row(r#"{"model": "m", "response": "r", "extra": [1, {"x": null}], "annotations": {
            "Helpfulness": {"Rating": 4, "Rationale": 3}, "Ethics": null, "Visual Faithfulness": {"Rating": {"a": 1}},
            "Style": {"Rating": "1"}}}"#);
        let (parsed, odd) = parse_row(&good, false).unwrap();
        assert_eq!((parsed.id.as_str(), parsed.prompt.as_str()), ("7", "a \"quoted\" p"));
        let ratings = &parsed.completions[0].ratings;
        let helpfulness = ratings[0].as_ref().unwrap();
        assert_eq!((helpfulness.text.as_str(), helpfulness.rationale.as_str()), ("4", ""));
        assert_eq!(ratings[1].as_ref().unwrap().text, r#"{"a":1}"#);
        assert!(ratings[2].is_none(), "a null annotation is an absent one");
        assert_eq!(odd.unknown_aspects, 1);

        let failing = |text: &str| parse_row(text, false).err().unwrap();
        // A value no row uses is still JSON that must be valid.
        let unused = r#"{"id": "a", "prompt": "p", "models": [1e999], "completions": []}"#;
        assert!(failing(unused).starts_with("invalid JSON"), "{}", failing(unused));
        assert_eq!(failing("[1, 2]"), "expected a JSON object");
        assert_eq!(
            failing(r#"{"id": "a", "prompt": "p", "completions": {"m": 1}}"#),
            "`completions` is missing or not a list"
        );
        assert_eq!(failing(&row(r#""just text""#)), "`completions[0].model` is missing");
        assert_eq!(
            failing(&row(r#"{"model": ["m"], "response": "r", "annotations": {}}"#)),
            "`completions[0].model` must be text, found list"
        );
        assert_eq!(
            failing(&row(r#"{"model": "m", "response": "r", "annotations": [1]}"#)),
            "`completions[0].annotations` is missing or not a map"
        );
        assert_eq!(
            failing(r#"{"id": "a", "prompt": }"#),
            "invalid JSON (column 23): expected value at line 1 column 23"
        );
    }
}
