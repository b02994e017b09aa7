//! Reading the released file: its lines (or Parquet rows as JSON lines), parsed in batches
//! on every core and handed on in file order, each a row or the reason it is not one.

use std::io::{BufRead, BufReader};
use std::path::Path;

use polars::prelude::*;
use serde::Deserialize;
use serde_json::Value;

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

/// One record: its JSON, and the order of each completion's annotation keys as written
/// (serde_json's maps are sorted; the release sums the ratings in file order, which can matter
/// to the last bit).
struct Record {
    value: Value,
    annotation_order: Vec<Vec<String>>,
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
