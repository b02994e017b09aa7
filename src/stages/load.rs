//! `load`: reads a data file from the workspace into tables. The file's bytes (and, for
//! VLFeedback, its images') are in the key.
//!
//! `format: parquet|jsonl|csv` gives one `table`; `format: trl` reads preference pairs in
//! TRL's layout (conversational or standard, images embedded or as files) into a `table` of
//! `prompt`, `chosen`, `rejected` and `image`. `format: vlfeedback` reads the released
//! VLFeedback data (JSONL or Parquet) into `instructions`, `responses` and `ratings`, its
//! images into the store (the `images` output), and writes a data `report`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use polars::prelude::{BooleanChunked, Column, DataFrame, NewChunkedArray};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    ConfigureContext, Kind, OutputDecl, Roles, RunContext, Stage, StageError, canonical, parse_params, table_format,
};
use crate::data::DataError;
use crate::data::frame::strings;
use crate::data::images::{DEFAULT_MAX_PIXELS, check_image, store_images};
use crate::data::report::DataReport;
use crate::data::trl::TrlImage;
use crate::data::vlfeedback::{self, OnBad};
use crate::dsl::{Issue, Range};
use crate::store::{DirEntry, DirManifest, OutputKind, OutputRef};
use crate::table::{self, TableFormat};

pub const KIND: Kind = Kind { name: "load", version: 1, model_params: &[], stage_inputs: &[], configure };

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Format {
    Parquet,
    Jsonl,
    Csv,
    Vlfeedback,
    /// Preference pairs in TRL's layout (what `export` writes with `format: trl`).
    Trl,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    path: String,
    /// Inferred from the file extension when absent.
    #[serde(default)]
    format: Option<Format>,
    /// Images: the folder the `image` column's paths are relative to (their bytes go into the
    /// store and the column holds digests); for VLFeedback, the folder holding `{id}.jpg`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    images: Option<String>,
    /// What to do with a row whose image is missing, undecodable or over `max_image_pixels`
    /// (`on_missing_image`, its old name, still reads).
    #[serde(default, alias = "on_missing_image", skip_serializing_if = "Option::is_none")]
    on_bad_image: Option<OnBad>,
    /// The most pixels (width × height) an image may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_image_pixels: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on_bad_row: Option<OnBad>,
    /// VLFeedback: who wrote the ratings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    judge: Option<String>,
    /// VLFeedback: the `source` column of the instructions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<String>,
}

const VLFEEDBACK_ONLY: [&str; 3] = ["on_bad_row", "judge", "source"];

struct Load {
    params: Params,
}

fn configure(params: &Value, _: &ConfigureContext) -> Result<Box<dyn Stage>, Issue> {
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
    if format == Format::Trl
        && !matches!(TableFormat::from_path(params.path.as_ref()), Some(TableFormat::Jsonl | TableFormat::Parquet))
    {
        return Err(Issue::new(
            "params.path",
            format!("TRL data is read from .jsonl or .parquet files, not `{}`", params.path),
        ));
    }
    if format == Format::Vlfeedback {
        if !matches!(TableFormat::from_path(params.path.as_ref()), Some(TableFormat::Jsonl | TableFormat::Parquet)) {
            return Err(Issue::new(
                "params.path",
                format!("VLFeedback data is read from .jsonl or .parquet files, not `{}`", params.path),
            ));
        }
        params.on_bad_row.get_or_insert(OnBad::Error);
        params.judge.get_or_insert_with(|| "gpt-4v".to_string());
        params.source.get_or_insert_with(|| "vlfeedback".to_string());
    } else {
        let given = canonical(&params);
        if let Some(key) = VLFEEDBACK_ONLY.iter().find(|k| given.get(**k).is_some()) {
            return Err(Issue::new(format!("params.{key}"), format!("`{key}` applies to `format: vlfeedback` only")));
        }
    }
    if params.images.is_some() {
        params.on_bad_image.get_or_insert(OnBad::Error);
        let pixels = *params.max_image_pixels.get_or_insert(DEFAULT_MAX_PIXELS);
        Range::at_least(1.0).check("params.max_image_pixels", pixels as f64)?;
    } else if let Some(key) =
        [("on_bad_image", params.on_bad_image.is_some()), ("max_image_pixels", params.max_image_pixels.is_some())]
            .into_iter()
            .find_map(|(key, given)| given.then_some(key))
    {
        return Err(Issue::new(format!("params.{key}"), format!("`{key}` applies with `images:` only")));
    }
    Ok(Box::new(Load { params }))
}

fn table(name: &str) -> OutputDecl {
    OutputDecl { name: name.into(), table: true }
}

impl Load {
    /// Replaces the `image` column's paths (relative to `images`) by the stored images'
    /// digests; a missing or unreadable image fails the stage naming its row, or with
    /// `on_bad_image: skip` drops the row and counts it.
    fn store_image_column(
        &self,
        ctx: &RunContext,
        df: &mut DataFrame,
        images: &str,
    ) -> Result<(DirManifest, DataReport), StageError> {
        let shown = &self.params.path;
        let paths: Vec<Option<String>> = strings(df, shown, "image")?.iter().map(|p| p.map(String::from)).collect();
        let mut report = DataReport::default();
        report.input("rows", df.height() as u64);
        let mut manifest = DirManifest::default();
        let mut digests = Vec::with_capacity(paths.len());
        let mut keep = Vec::with_capacity(paths.len());
        let inside = |path: &str| !(Path::new(path).is_absolute() || path.split(['/', '\\']).any(|p| p == ".."));
        let files: Vec<PathBuf> =
            paths.iter().flatten().filter(|p| inside(p)).map(|p| ctx.workspace.join(images).join(p)).collect();
        let mut put = |blobs: &[&[u8]]| put_images(ctx, blobs);
        let mut checked_files = store_images(&files, self.max_pixels(), &mut put)?.into_iter();
        for (row, path) in paths.iter().enumerate() {
            let Some(path) = path else {
                digests.push(None);
                keep.push(true);
                continue;
            };
            let checked = match inside(path) {
                false => Err(("missing_image", format!("image `{path}` is outside `{images}`"))),
                true => checked_files.next().expect("one check per image inside the folder"),
            };
            match checked {
                Ok((digest, bytes)) => {
                    manifest.files.insert(path.clone(), DirEntry { digest: digest.clone(), bytes, executable: false });
                    digests.push(Some(digest));
                    keep.push(true);
                }
                Err((reason, why)) if self.params.on_bad_image == Some(OnBad::Skip) => {
                    tracing::debug!("{shown}: row {}: {why}", row + 1);
                    report.drop(reason, 1);
                    digests.push(None);
                    keep.push(false);
                }
                Err((_, why)) => return Err(DataError::file_row(shown, row + 1, why).into()),
            }
        }
        df.with_column(Column::new("image".into(), digests)).map_err(DataError::from)?;
        let mask = BooleanChunked::from_slice("keep".into(), &keep);
        *df = df.filter(&mask).map_err(DataError::from)?;
        report.output("table", df.height() as u64);
        Ok((manifest, report))
    }

    /// A TRL table as a pairs table: `prompt`, `chosen`, `rejected` texts and an `image`
    /// column — stored images' digests when the table embeds them, else file paths (relative
    /// to `images:`), which the `images:` step stores as for any table.
    fn trl_pairs(&self, ctx: &RunContext, df: &DataFrame) -> Result<DataFrame, StageError> {
        let shown = &self.params.path;
        let read = crate::data::trl::read_pairs(df, shown)?;
        let embedded = read.images.iter().any(|i| matches!(i, Some(TrlImage::Bytes(_))));
        let mut image: Vec<Option<String>> = Vec::with_capacity(read.images.len());
        let mut blobs = Vec::new();
        for (row, item) in read.images.into_iter().enumerate() {
            match item {
                None => image.push(None),
                Some(TrlImage::Path(path)) if embedded => {
                    let problem =
                        format!("image `{path}` is a path while other rows embed theirs; use one or the other");
                    return Err(DataError::file_row(shown, row + 1, problem).into());
                }
                Some(TrlImage::Path(path)) if self.params.images.is_none() => {
                    let problem = format!(
                        "image `{path}` is a file path: set `images:` to the folder the paths are relative to (for \
                         what `export` writes, the table's folder)"
                    );
                    return Err(DataError::file_row(shown, row + 1, problem).into());
                }
                Some(TrlImage::Path(path)) => image.push(Some(path)),
                Some(TrlImage::Bytes(bytes)) => {
                    let checked = check_image(bytes, "embedded in it", self.max_pixels())
                        .map_err(|(_, why)| DataError::file_row(shown, row + 1, why))?;
                    image.push(Some(String::new()));
                    blobs.push(checked);
                }
            }
        }
        if embedded {
            let slices: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
            let mut digests = ctx.store.put_blobs(&slices)?.into_iter().map(|(digest, _)| digest);
            for slot in image.iter_mut().flatten() {
                *slot = digests.next().expect("a digest per stored image");
            }
        }
        DataFrame::new(
            read.prompt.len(),
            vec![
                Column::new("prompt".into(), read.prompt),
                Column::new("chosen".into(), read.chosen),
                Column::new("rejected".into(), read.rejected),
                Column::new("image".into(), image),
            ],
        )
        .map_err(|e| DataError::from(e).into())
    }

    fn max_pixels(&self) -> u64 {
        self.params.max_image_pixels.unwrap_or(DEFAULT_MAX_PIXELS)
    }

    fn format(&self) -> Format {
        self.params.format.unwrap_or(Format::Parquet)
    }

    fn run_vlfeedback(&self, ctx: &RunContext) -> Result<BTreeMap<String, OutputRef>, StageError> {
        let images = self.params.images.as_ref().map(|dir| ctx.workspace.join(dir));
        let options = vlfeedback::Options {
            images: images.as_deref(),
            on_bad_image: self.params.on_bad_image.unwrap_or_default(),
            max_image_pixels: self.max_pixels(),
            on_bad_row: self.params.on_bad_row.unwrap_or_default(),
            judge: self.params.judge.as_deref().unwrap_or("gpt-4v"),
            source: self.params.source.as_deref().unwrap_or("vlfeedback"),
        };
        let mut put = |blobs: &[&[u8]]| put_images(ctx, blobs);
        let path = ctx.workspace.join(&self.params.path);
        let mut imported = vlfeedback::import(&path, &self.params.path, &options, &mut put)?;
        let mut outputs = ctx.put_tables(vec![
            ("instructions", &mut imported.instructions),
            ("responses", &mut imported.responses),
            ("ratings", &mut imported.ratings),
        ])?;
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
            _ if self.params.images.is_some() => {
                vec![
                    table("table"),
                    OutputDecl { name: "images".into(), table: false },
                    OutputDecl { name: "report".into(), table: false },
                ]
            }
            _ => vec![table("table")],
        }
    }

    fn is_cheap(&self) -> bool {
        true
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
            Format::Trl => TableFormat::from_path(self.params.path.as_ref()).unwrap_or(TableFormat::Parquet),
        };
        let path = ctx.workspace.join(&self.params.path);
        let mut df = table::read(&path, format)?;
        if self.format() == Format::Trl {
            df = self.trl_pairs(ctx, &df)?;
        }
        if df.height() == 0 {
            return Err(DataError::file(&self.params.path, "the table has no rows").into());
        }
        let Some(images) = &self.params.images else {
            return Ok(BTreeMap::from([("table".to_string(), ctx.put_table(&mut df)?)]));
        };
        let (manifest, report) = self.store_image_column(ctx, &mut df, images)?;
        let (digest, bytes) = ctx.store.put_manifest(&manifest)?;
        Ok(BTreeMap::from([
            ("table".to_string(), ctx.put_table(&mut df)?),
            ("images".to_string(), OutputRef { digest, kind: OutputKind::Dir, rows: None, bytes, format: None }),
            ("report".to_string(), ctx.put_report(&report)?),
        ]))
    }
}

/// Stores a batch of checked images, for `data`'s image reading (which never names the store).
fn put_images(ctx: &RunContext, blobs: &[&[u8]]) -> Result<Vec<(String, u64)>, DataError> {
    ctx.store.put_blobs(blobs).map_err(|e| DataError::Store { what: "images", problem: e.to_string() })
}
