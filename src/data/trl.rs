//! Pairs as TRL's DPO trainer reads them: `prompt`, `chosen`, `rejected` and `images`.
//!
//! `conversational` (TRL's vision format): `prompt` is one user message whose content is an
//! image placeholder and the text, `chosen`/`rejected` one assistant message each.
//! `standard`: the three are plain strings. Images are embedded (Parquet, as the Hugging Face
//! `Image` feature stores them: `{bytes, path}`), referenced as files, or left out.

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use super::DataError;
use super::frame::{optional_strings, strings};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Style {
    #[default]
    Conversational,
    Standard,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Images {
    /// The image bytes inside the table (Parquet only).
    Embed,
    /// Image files beside the table; the column holds their paths.
    Files,
    /// No `images` column.
    None,
}

/// The TRL table for `pairs`. `image_path(digest)` names an image file for `Images::Files`;
/// `image_bytes(digest)` reads an image for `Images::Embed`.
pub fn trl_frame(
    pairs: &DataFrame,
    style: Style,
    images: Images,
    image_path: &dyn Fn(&str) -> String,
    image_bytes: &dyn Fn(&str) -> Result<Vec<u8>, DataError>,
) -> Result<DataFrame, DataError> {
    let prompts: Vec<Option<&str>> = strings(pairs, "pairs", "prompt")?.iter().collect();
    let chosen: Vec<Option<&str>> = strings(pairs, "pairs", "chosen")?.iter().collect();
    let rejected: Vec<Option<&str>> = strings(pairs, "pairs", "rejected")?.iter().collect();
    let digests = optional_strings(pairs, "pairs", "image")?.unwrap_or_else(|| vec![None; pairs.height()]);
    if pairs.height() == 0 {
        return Err(DataError::table("pairs", "there are no pairs to export"));
    }
    let has_image: Vec<bool> = digests.iter().map(|d| d.is_some() && images != Images::None).collect();
    let mut columns = match style {
        Style::Conversational => vec![
            user_messages(&texts(&prompts), &has_image)?,
            assistant_messages("chosen", &texts(&chosen))?,
            assistant_messages("rejected", &texts(&rejected))?,
        ],
        Style::Standard => vec![
            Series::new("prompt".into(), &prompts),
            Series::new("chosen".into(), &chosen),
            Series::new("rejected".into(), &rejected),
        ],
    };
    if images == Images::Files {
        let paths: Vec<String> = digests.iter().flatten().map(|d| image_path(d)).collect();
        let lengths = digests.iter().map(|d| usize::from(d.is_some()));
        columns.push(list_column("images", Series::new("".into(), paths), lengths)?);
    }
    let mut df = DataFrame::new(pairs.height(), columns.into_iter().map(Column::from).collect())?;
    if images == Images::Embed {
        let column = embedded_images(&digests, image_path, image_bytes)?;
        df.with_column(column)?;
    }
    Ok(df)
}

// The columns are built whole, as the JSON rows TRL reads would be parsed: a message is
// `{content: [{text, type}], role}` (keys in that order), a prompt one user message whose
// content is an image placeholder (`text` null) before the text when the row has an image.

/// A column's texts, a null one as empty (as the JSON rows had it).
fn texts<'a>(column: &[Option<&'a str>]) -> Vec<&'a str> {
    column.iter().map(|t| t.unwrap_or_default()).collect()
}

/// `prompt`: per row one user message.
fn user_messages(texts: &[&str], has_image: &[bool]) -> PolarsResult<Series> {
    let mut item_text: Vec<Option<&str>> = Vec::with_capacity(texts.len() * 2);
    let mut item_type: Vec<&str> = Vec::with_capacity(texts.len() * 2);
    for (text, &image) in texts.iter().zip(has_image) {
        if image {
            item_text.push(None);
            item_type.push("image");
        }
        item_text.push(Some(text));
        item_type.push("text");
    }
    let lengths = has_image.iter().map(|&image| 1 + usize::from(image));
    messages("prompt", "user", item_text, item_type, lengths)
}

/// `chosen` / `rejected`: per row one assistant message.
fn assistant_messages(name: &str, texts: &[&str]) -> PolarsResult<Series> {
    let item_text: Vec<Option<&str>> = texts.iter().map(|t| Some(*t)).collect();
    let item_type = vec!["text"; texts.len()];
    messages(name, "assistant", item_text, item_type, std::iter::repeat_n(1, texts.len()))
}

/// A column of one message per row, by `role`, whose contents are consecutive runs of
/// `content_lengths` items.
fn messages(
    name: &str,
    role: &str,
    item_text: Vec<Option<&str>>,
    item_type: Vec<&str>,
    content_lengths: impl Iterator<Item = usize>,
) -> PolarsResult<Series> {
    let items = struct_series(
        "",
        item_text.len(),
        [Series::new("text".into(), item_text), Series::new("type".into(), item_type)],
    )?;
    let content = list_column("content", items, content_lengths)?;
    let rows = content.len();
    let message = struct_series("", rows, [content, Series::new("role".into(), vec![role; rows])])?;
    list_column(name, message, std::iter::repeat_n(1, rows))
}

fn struct_series<const N: usize>(name: &str, len: usize, fields: [Series; N]) -> PolarsResult<Series> {
    StructChunked::from_series(name.into(), len, fields.iter()).map(|s| s.into_series())
}

/// A list column whose rows take consecutive runs of `lengths` values.
fn list_column(name: &str, values: Series, lengths: impl Iterator<Item = usize>) -> PolarsResult<Series> {
    use polars_arrow::offset::{Offsets, OffsetsBuffer};
    let values = values.rechunk();
    let field = values.dtype().to_arrow_field("item".into(), CompatLevel::newest());
    let offsets: OffsetsBuffer<i64> = Offsets::try_from_lengths(lengths)?.into();
    let array =
        LargeListArray::try_new(ArrowDataType::LargeList(Box::new(field)), offsets, values.chunks()[0].clone(), None)?;
    Ok(ListChunked::with_chunk(name.into(), array).into_series())
}

/// `images`: a list per row of `{bytes, path}` structs, the layout of Hugging Face images.
fn embedded_images(
    digests: &[Option<&str>],
    image_path: &dyn Fn(&str) -> String,
    image_bytes: &dyn Fn(&str) -> Result<Vec<u8>, DataError>,
) -> Result<Column, DataError> {
    let present: Vec<&str> = digests.iter().flatten().copied().collect();
    let bytes: Vec<Vec<u8>> = present.iter().map(|d| image_bytes(d)).collect::<Result<_, _>>()?;
    let paths: Vec<String> = present.iter().map(|d| image_path(d)).collect();
    let fields = [
        BinaryChunked::from_iter(bytes.iter().map(|b| Some(b.as_slice()))).with_name("bytes".into()).into_series(),
        Series::new("path".into(), paths),
    ];
    let items = struct_series("item", present.len(), fields)?;
    let lengths = digests.iter().map(|d| usize::from(d.is_some()));
    Ok(list_column("images", items, lengths)?.into_column())
}

/// A TRL preference table read back: the prompt, chosen and rejected texts per row, and
/// its image — as bytes (embedded) or a file path (relative to where the table says).
pub struct ReadPairs {
    pub prompt: Vec<String>,
    pub chosen: Vec<String>,
    pub rejected: Vec<String>,
    pub images: Vec<Option<TrlImage>>,
}

pub enum TrlImage {
    Bytes(Vec<u8>),
    Path(String),
}

/// Reads `prompt`, `chosen`, `rejected` and (when there) `images` of a TRL table, in either
/// style: plain strings, or messages (`[{role, content: [{type, text}]}]`). A row must hold
/// one user turn (an optional system message is refused: a pairs table has no place for it)
/// and at most one image. `file` names the table in errors.
pub fn read_pairs(df: &DataFrame, file: &str) -> Result<ReadPairs, DataError> {
    // A cell's problem, located.
    let at = |row: usize, name: &str| {
        let location = format!("{file}: row {}, `{name}`", row + 1);
        move |problem| DataError::Record { location, problem }
    };
    let text_column = |name: &str, role: &str| -> Result<Vec<String>, DataError> {
        let column = df.column(name).map_err(|_| {
            DataError::file(file, format!("no `{name}` column (TRL's layout has prompt, chosen, rejected)"))
        })?;
        let series = column.as_materialized_series();
        (0..series.len()).map(|row| message_text(series, row, role).map_err(at(row, name))).collect()
    };
    let images = match df.column("images") {
        Err(_) => (0..df.height()).map(|_| None).collect(),
        Ok(column) => {
            let series = column.as_materialized_series();
            (0..series.len()).map(|row| row_image(series, row).map_err(at(row, "images"))).collect::<Result<_, _>>()?
        }
    };
    Ok(ReadPairs {
        prompt: text_column("prompt", "user")?,
        chosen: text_column("chosen", "assistant")?,
        rejected: text_column("rejected", "assistant")?,
        images,
    })
}

/// A cell's text: a string as it is, or the text parts of its one `role` message.
fn message_text(series: &Series, row: usize, role: &str) -> Result<String, String> {
    match series.dtype() {
        DataType::String => Ok(series.str().map_err(|e| e.to_string())?.get(row).unwrap_or_default().to_string()),
        DataType::List(_) => {
            let Some(messages) = series.list().map_err(|e| e.to_string())?.get_as_series(row) else {
                return Ok(String::new());
            };
            if messages.len() != 1 {
                return Err(format!("{} messages; a pairs row holds one {role} message", messages.len()));
            }
            let fields = messages.struct_().map_err(|_| "messages must be {role, content} maps".to_string())?;
            let said = fields.field_by_name("role").map_err(|_| "a message has no `role`".to_string())?;
            let said = said.str().map_err(|e| e.to_string())?.get(0).unwrap_or_default().to_string();
            if said != role {
                return Err(format!("a `{said}` message where a `{role}` one belongs"));
            }
            let content = fields.field_by_name("content").map_err(|_| "a message has no `content`".to_string())?;
            match content.dtype() {
                DataType::String => {
                    Ok(content.str().map_err(|e| e.to_string())?.get(0).unwrap_or_default().to_string())
                }
                _ => {
                    let parts = content.list().map_err(|e| e.to_string())?.get_as_series(0).unwrap_or_default();
                    let parts = parts.struct_().map_err(|_| "content parts must be {type, text} maps".to_string())?;
                    let kinds = parts.field_by_name("type").map_err(|_| "a content part has no `type`".to_string())?;
                    let texts = parts.field_by_name("text").map_err(|_| "a content part has no `text`".to_string())?;
                    let (kinds, texts) =
                        (kinds.str().map_err(|e| e.to_string())?, texts.str().map_err(|e| e.to_string())?);
                    let text: Vec<&str> = (0..kinds.len())
                        .filter(|&i| kinds.get(i) == Some("text"))
                        .filter_map(|i| texts.get(i))
                        .collect();
                    Ok(text.join("\n"))
                }
            }
        }
        other => Err(format!("expected a string or a list of messages, found {other}")),
    }
}

/// A row's image: none, one embedded `{bytes, path}` or one path.
fn row_image(series: &Series, row: usize) -> Result<Option<TrlImage>, String> {
    let Some(items) = series.list().map_err(|_| "expected a list of images".to_string())?.get_as_series(row) else {
        return Ok(None);
    };
    match items.len() {
        0 => return Ok(None),
        1 => {}
        n => return Err(format!("{n} images; a pairs row holds one")),
    }
    match items.dtype() {
        DataType::String => Ok(items.str().map_err(|e| e.to_string())?.get(0).map(|p| TrlImage::Path(p.to_string()))),
        DataType::Struct(_) => {
            let fields = items.struct_().map_err(|e| e.to_string())?;
            if let Ok(bytes) = fields.field_by_name("bytes")
                && let Some(bytes) = bytes.binary().map_err(|e| e.to_string())?.get(0)
            {
                return Ok(Some(TrlImage::Bytes(bytes.to_vec())));
            }
            let path =
                fields.field_by_name("path").map_err(|_| "an image with neither `bytes` nor `path`".to_string())?;
            Ok(path.str().map_err(|e| e.to_string())?.get(0).map(|p| TrlImage::Path(p.to_string())))
        }
        other => Err(format!("expected image paths or {{bytes, path}} maps, found {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pairs() -> DataFrame {
        df!(
            "prompt" => ["What is on the mat?", "Count them."],
            "chosen" => ["A cat.", "Three."],
            "rejected" => ["A dog.", "Two."],
            "image" => [Some("d1"), None],
        )
        .unwrap()
    }

    fn rows(df: &mut DataFrame) -> Vec<serde_json::Value> {
        crate::table::to_json_rows(df).unwrap()
    }

    #[test]
    fn conversational_rows_are_the_messages_trl_reads() {
        let no_bytes = |_: &str| Ok(Vec::new());
        let mut df =
            trl_frame(&pairs(), Style::Conversational, Images::Files, &|d| format!("img/{d}.jpg"), &no_bytes).unwrap();
        let user = |text: &str, image: bool| {
            let mut content = Vec::new();
            if image {
                content.push(json!({"text": null, "type": "image"}));
            }
            content.push(json!({"text": text, "type": "text"}));
            json!([{"content": content, "role": "user"}])
        };
        let assistant = |text: &str| json!([{"content": [{"text": text, "type": "text"}], "role": "assistant"}]);
        assert_eq!(
            rows(&mut df),
            [
                json!({"prompt": user("What is on the mat?", true), "chosen": assistant("A cat."), "rejected": assistant("A dog."), "images": ["img/d1.jpg"]}),
                json!({"prompt": user("Count them.", false), "chosen": assistant("Three."), "rejected": assistant("Two."), "images": []}),
            ]
        );
        let mut standard = trl_frame(&pairs(), Style::Standard, Images::None, &|d| d.to_string(), &no_bytes).unwrap();
        assert_eq!(rows(&mut standard)[1], json!({"prompt": "Count them.", "chosen": "Three.", "rejected": "Two."}));
    }
}
