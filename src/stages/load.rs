//! `load`: reads a data file from the workspace into tables. The file's bytes (and, for
//! VLFeedback, its images') are in the key.
//!
//! `format: parquet|jsonl|csv` gives one `table`. `format: vlfeedback` reads the released
//! VLFeedback data (JSONL or Parquet) into `instructions`, `responses` and `ratings`, its
//! images into the store (the `images` output), and writes a data `report`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Config, Kind, OutputDecl, Roles, RunContext, Stage, StageError, canonical, parse_params, table_format};
use crate::data::vlfeedback::{self, OnBad};
use crate::dsl::Issue;
use crate::store::{DirEntry, DirManifest, OutputKind, OutputRef};
use crate::table::{self, TableFormat};

pub const KIND: Kind = Kind { name: "load", version: 1, model_params: &[], configure };

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Format {
    Parquet,
    Jsonl,
    Csv,
    Vlfeedback,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    path: String,
    /// Inferred from the file extension when absent.
    #[serde(default)]
    format: Option<Format>,
    /// VLFeedback: the directory holding `{id}.jpg`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    images: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on_missing_image: Option<OnBad>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on_bad_row: Option<OnBad>,
    /// VLFeedback: who wrote the ratings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    judge: Option<String>,
    /// VLFeedback: the `source` column of the instructions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<String>,
}

const VLFEEDBACK_ONLY: [&str; 5] = ["images", "on_missing_image", "on_bad_row", "judge", "source"];

struct Load {
    params: Params,
}

fn configure(params: &Value, _: &Config) -> Result<Box<dyn Stage>, Issue> {
    let mut params: Params = parse_params(params)?;
    let format = match params.format {
        Some(f) => f,
        None => match table_format(&params.path, None)? {
            TableFormat::Parquet => Format::Parquet,
            TableFormat::Jsonl => Format::Jsonl,
            TableFormat::Csv => Format::Csv,
        },
    };
    params.format = Some(format);
    if format == Format::Vlfeedback {
        if !matches!(TableFormat::from_path(params.path.as_ref()), Some(TableFormat::Jsonl | TableFormat::Parquet)) {
            return Err(Issue::new(
                "params.path",
                format!("VLFeedback data is read from .jsonl or .parquet files, not `{}`", params.path),
            ));
        }
        params.on_missing_image.get_or_insert(OnBad::Error);
        params.on_bad_row.get_or_insert(OnBad::Error);
        params.judge.get_or_insert_with(|| "gpt-4v".to_string());
        params.source.get_or_insert_with(|| "vlfeedback".to_string());
    } else {
        let given = canonical(&params);
        if let Some(key) = VLFEEDBACK_ONLY.iter().find(|k| given.get(**k).is_some()) {
            return Err(Issue::new(format!("params.{key}"), format!("`{key}` applies to `format: vlfeedback` only")));
        }
    }
    Ok(Box::new(Load { params }))
}

fn table(name: &str) -> OutputDecl {
    OutputDecl { name: name.into(), table: true }
}

impl Load {
    fn format(&self) -> Format {
        self.params.format.unwrap_or(Format::Parquet)
    }

    fn run_vlfeedback(&self, ctx: &RunContext) -> Result<BTreeMap<String, OutputRef>, StageError> {
        let images = self.params.images.as_ref().map(|dir| ctx.workspace.join(dir));
        let options = vlfeedback::Options {
            images: images.as_deref(),
            on_missing_image: self.params.on_missing_image.unwrap_or_default(),
            on_bad_row: self.params.on_bad_row.unwrap_or_default(),
            judge: self.params.judge.as_deref().unwrap_or("gpt-4v"),
            source: self.params.source.as_deref().unwrap_or("vlfeedback"),
        };
        let mut store_image = |path: &std::path::Path| ctx.store.put_file(path).map_err(|e| e.to_string());
        let path = ctx.workspace.join(&self.params.path);
        let mut imported =
            vlfeedback::import(&path, &self.params.path, &options, &mut store_image).map_err(StageError::Failed)?;
        let mut outputs = BTreeMap::new();
        outputs.insert("instructions".to_string(), ctx.put_table(&mut imported.instructions)?);
        outputs.insert("responses".to_string(), ctx.put_table(&mut imported.responses)?);
        outputs.insert("ratings".to_string(), ctx.put_table(&mut imported.ratings)?);
        if self.params.images.is_some() {
            let files = imported
                .images
                .into_iter()
                .map(|(name, (digest, bytes))| (name, DirEntry { digest, bytes, executable: false }))
                .collect();
            let (digest, bytes) = ctx.store.put_manifest(&DirManifest { files })?;
            outputs.insert(
                "images".to_string(),
                OutputRef { digest, kind: OutputKind::Dir, rows: None, bytes, format: None },
            );
        }
        outputs.insert("report".to_string(), ctx.put_report(&imported.report)?);
        Ok(outputs)
    }
}

impl Stage for Load {
    fn canonical_params(&self) -> Value {
        canonical(&self.params)
    }

    fn outputs(&self) -> Vec<OutputDecl> {
        match self.format() {
            Format::Vlfeedback => {
                let mut outs = vec![table("instructions"), table("responses"), table("ratings")];
                if self.params.images.is_some() {
                    outs.push(OutputDecl { name: "images".into(), table: false });
                }
                outs.push(OutputDecl { name: "report".into(), table: false });
                outs
            }
            _ => vec![table("table")],
        }
    }

    fn roles(&self) -> Roles {
        Roles::Named(&[])
    }

    fn key_files(&self) -> Vec<PathBuf> {
        let mut files = vec![PathBuf::from(&self.params.path)];
        files.extend(self.params.images.as_ref().map(PathBuf::from));
        files
    }

    fn run(&self, ctx: &RunContext) -> Result<BTreeMap<String, OutputRef>, StageError> {
        let format = match self.format() {
            Format::Vlfeedback => return self.run_vlfeedback(ctx),
            Format::Parquet => TableFormat::Parquet,
            Format::Jsonl => TableFormat::Jsonl,
            Format::Csv => TableFormat::Csv,
        };
        let path = ctx.workspace.join(&self.params.path);
        let mut df = table::read(&path, format)?;
        if df.height() == 0 {
            return Err(StageError::Failed(format!("{}: the table has no rows", self.params.path)));
        }
        Ok(BTreeMap::from([("table".to_string(), ctx.put_table(&mut df)?)]))
    }
}
