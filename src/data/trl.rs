//! Pairs as TRL's DPO trainer reads them: `prompt`, `chosen`, `rejected` and `images`.
//!
//! `conversational` (TRL's vision format): `prompt` is one user message whose content is an
//! image placeholder and the text, `chosen`/`rejected` one assistant message each.
//! `standard`: the three are plain strings. Images are embedded (Parquet, as the Hugging Face
//! `Image` feature stores them: `{bytes, path}`), referenced as files, or left out.

use std::io::Cursor;

use polars::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

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
    image_bytes: &dyn Fn(&str) -> Result<Vec<u8>, String>,
) -> Result<DataFrame, String> {
    let prompts: Vec<Option<&str>> = strings(pairs, "pairs", "prompt")?.iter().collect();
    let chosen: Vec<Option<&str>> = strings(pairs, "pairs", "chosen")?.iter().collect();
    let rejected: Vec<Option<&str>> = strings(pairs, "pairs", "rejected")?.iter().collect();
    let digests = optional_strings(pairs, "pairs", "image")?.unwrap_or_else(|| vec![None; pairs.height()]);
    if pairs.height() == 0 {
        return Err("there are no pairs to export".into());
    }
    let mut lines = String::new();
    for row in 0..pairs.height() {
        let has_image = digests[row].is_some() && images != Images::None;
        let mut record = match style {
            Style::Conversational => json!({
                "prompt": [user_message(prompts[row].unwrap_or_default(), has_image)],
                "chosen": [assistant_message(chosen[row].unwrap_or_default())],
                "rejected": [assistant_message(rejected[row].unwrap_or_default())],
            }),
            Style::Standard => json!({"prompt": prompts[row], "chosen": chosen[row], "rejected": rejected[row]}),
        };
        if images == Images::Files {
            record["images"] = json!(digests[row].map(image_path).into_iter().collect::<Vec<_>>());
        }
        lines.push_str(&record.to_string());
        lines.push('\n');
    }
    let mut df = JsonReader::new(Cursor::new(lines.into_bytes()))
        .with_json_format(JsonFormat::JsonLines)
        .infer_schema_len(None)
        .finish()
        .map_err(|e| e.to_string())?;
    let mut order = vec!["prompt", "chosen", "rejected"];
    if images == Images::Files {
        order.push("images");
    }
    df = df.select(order).map_err(|e| e.to_string())?;
    if images == Images::Embed {
        let column = embedded_images(&digests, image_path, image_bytes)?;
        df.with_column(column).map_err(|e| e.to_string())?;
    }
    Ok(df)
}

fn user_message(text: &str, with_image: bool) -> Value {
    let mut content = Vec::new();
    if with_image {
        content.push(json!({"type": "image", "text": null}));
    }
    content.push(json!({"type": "text", "text": text}));
    json!({"role": "user", "content": content})
}

fn assistant_message(text: &str) -> Value {
    json!({"role": "assistant", "content": [{"type": "text", "text": text}]})
}

/// `images`: a list per row of `{bytes, path}` structs, the layout of Hugging Face images.
fn embedded_images(
    digests: &[Option<&str>],
    image_path: &dyn Fn(&str) -> String,
    image_bytes: &dyn Fn(&str) -> Result<Vec<u8>, String>,
) -> Result<Column, String> {
    let mut lists: Vec<Option<Series>> = Vec::with_capacity(digests.len());
    for digest in digests {
        let (bytes, paths): (Vec<Vec<u8>>, Vec<String>) = match digest {
            Some(d) => (vec![image_bytes(d)?], vec![image_path(d)]),
            None => (Vec::new(), Vec::new()),
        };
        let n = bytes.len();
        let fields = [
            BinaryChunked::from_iter(bytes.iter().map(|b| Some(b.as_slice()))).with_name("bytes".into()).into_series(),
            Series::new("path".into(), paths),
        ];
        let item = StructChunked::from_series("item".into(), n, fields.iter()).map_err(|e| e.to_string())?;
        lists.push(Some(item.into_series()));
    }
    let list: ListChunked = lists.into_iter().collect();
    Ok(list.with_name("images".into()).into_column())
}
