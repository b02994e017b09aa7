//! `export`: writes the table it needs to a workspace path as Parquet, JSONL or CSV — or,
//! with `format: trl`, pairs as TRL's DPO trainer reads them (Parquet or JSONL by extension),
//! or with `format: checkpoint` a training stage's checkpoint folder as it is stored (what a
//! `{ path: DIR }` model reference reads back) — `format: hf` the same, checked to be a
//! Hugging Face checkpoint, and `format: peft` only its LoRA adapter in PEFT's layout.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    ConfigureContext, Kind, OutputDecl, Roles, RunContext, Stage, StageError, canonical, parse_params, table_format,
    workspace_files,
};
use crate::data::DataError;
use crate::data::report::DataReport;
use crate::data::trl::{self, Images, Style};
use crate::dsl::Issue;
use crate::store::{DirEntry, DirManifest, OutputKind, OutputRef};
use crate::table::{self, TableFormat};

pub const KIND: Kind = Kind { name: "export", version: 1, model_params: &[], stage_inputs: &[], configure };

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Format {
    Parquet,
    Jsonl,
    Csv,
    Trl,
    Checkpoint,
    /// A checkpoint that is a Hugging Face model folder (`from_pretrained` reads it).
    Hf,
    /// A checkpoint's adapter kept apart (`merge_lora: false`), alone: what
    /// `PeftModel.from_pretrained` and vLLM's LoRA serving read.
    Peft,
}

impl Format {
    fn is_folder(self) -> bool {
        matches!(self, Format::Checkpoint | Format::Hf | Format::Peft)
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    path: String,
    #[serde(default)]
    format: Option<Format>,
    /// `trl`: conversational (TRL's vision format) or standard (plain strings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    style: Option<Style>,
    /// `trl`: embed (Parquet), files or none. Default: embed for Parquet, files for JSONL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    images: Option<Images>,
    /// `trl` with `images: files`: where the image files go [default: `<file stem>_images`
    /// beside the file].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    images_dir: Option<String>,
}

struct Export {
    params: Params,
    /// The file's own format (for `trl`, its container); none for a checkpoint folder.
    file_format: Option<TableFormat>,
}

fn configure(params: &Value, _: &ConfigureContext) -> Result<Box<dyn Stage>, Issue> {
    let mut params: Params = parse_params(params)?;
    if params.path.split(['/', '\\']).any(|part| part == "..") {
        return Err(Issue::new("params.path", format!("`{}` leaves the workspace; export inside it", params.path)));
    }
    if params.format.is_some_and(Format::is_folder) {
        if let Some(key) = ["style", "images", "images_dir"].iter().find(|k| canonical(&params).get(**k).is_some()) {
            return Err(Issue::new(format!("params.{key}"), format!("`{key}` applies to `format: trl` only")));
        }
        return Ok(Box::new(Export { params, file_format: None }));
    }
    let file_format = table_format(
        &params.path,
        match params.format {
            Some(Format::Parquet) => Some(TableFormat::Parquet),
            Some(Format::Jsonl) => Some(TableFormat::Jsonl),
            Some(Format::Csv) => Some(TableFormat::Csv),
            Some(Format::Trl | Format::Checkpoint | Format::Hf | Format::Peft) | None => None,
        },
    )?;
    params.format.get_or_insert(match file_format {
        TableFormat::Parquet => Format::Parquet,
        TableFormat::Jsonl => Format::Jsonl,
        TableFormat::Csv => Format::Csv,
    });
    if params.format == Some(Format::Trl) {
        if file_format == TableFormat::Csv {
            return Err(Issue::new("params.path", "TRL data is written as .parquet or .jsonl"));
        }
        params.style.get_or_insert_default();
        let images = *params.images.get_or_insert(if file_format == TableFormat::Parquet {
            Images::Embed
        } else {
            Images::Files
        });
        if images == Images::Embed && file_format != TableFormat::Parquet {
            return Err(Issue::new(
                "params.images",
                "embedded image bytes need a .parquet file; use `images: files` with JSONL",
            ));
        }
        if images == Images::Files {
            let default_dir = default_images_dir(&params.path);
            let dir = params.images_dir.get_or_insert(default_dir);
            if dir.split(['/', '\\']).any(|part| part == "..") {
                return Err(Issue::new("params.images_dir", format!("`{dir}` leaves the workspace")));
            }
        } else if params.images_dir.is_some() {
            return Err(Issue::new("params.images_dir", "`images_dir` applies to `images: files` only"));
        }
    } else if let Some(key) = ["style", "images", "images_dir"].iter().find(|k| canonical(&params).get(**k).is_some()) {
        return Err(Issue::new(format!("params.{key}"), format!("`{key}` applies to `format: trl` only")));
    }
    Ok(Box::new(Export { params, file_format: Some(file_format) }))
}

fn default_images_dir(path: &str) -> String {
    let path = Path::new(path);
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!("{stem}_images")).to_string_lossy().into_owned()
}

impl Export {
    fn images_dir(&self) -> Option<&str> {
        (self.params.images == Some(Images::Files)).then_some(self.params.images_dir.as_deref()).flatten()
    }

    /// Writes the TRL table; returns the image manifest when images go to files.
    fn write_trl(
        &self,
        ctx: &RunContext,
        df: &polars::prelude::DataFrame,
        tmp: &Path,
        file_format: TableFormat,
    ) -> Result<Option<DirManifest>, StageError> {
        let file_dir = Path::new(&self.params.path).parent().unwrap_or(Path::new(""));
        let images_dir = self.images_dir().map(PathBuf::from);
        // Paths in the table are relative to the table's own folder, so the two move together.
        let relative_dir = images_dir.as_ref().map(|d| d.strip_prefix(file_dir).unwrap_or(d).to_path_buf());
        let style = self.params.style.unwrap_or_default();
        let images = self.params.images.unwrap_or(Images::None);
        let digests = if images == Images::None { Vec::new() } else { ctx.stored_images(df, "pairs")? };
        // Each distinct image is looked at once (its name from its format, its bytes), however
        // many pairs show it: an instruction's image is in every one of its pairs.
        let distinct: BTreeSet<&str> = digests.iter().flatten().copied().collect();
        let names: HashMap<&str, (String, u64)> = {
            use rayon::prelude::*;
            distinct.par_iter().map(|&d| (d, image_file(ctx, d))).collect()
        };
        let name_of = |digest: &str| names.get(digest).map_or_else(|| image_file(ctx, digest).0, |n| n.0.clone());
        let image_path = |digest: &str| match &relative_dir {
            Some(dir) => dir.join(name_of(digest)).to_string_lossy().into_owned(),
            None => name_of(digest),
        };
        let read = |digest: &str| {
            ctx.store.read_blob(digest).map_err(|e| DataError::Store { what: "images", problem: e.to_string() })
        };
        let embedded: HashMap<&str, Vec<u8>> = match images {
            Images::Embed => distinct.iter().map(|&d| read(d).map(|bytes| (d, bytes))).collect::<Result<_, _>>()?,
            _ => HashMap::new(),
        };
        let image_bytes = |digest: &str| embedded.get(digest).cloned().map_or_else(|| read(digest), Ok);
        let mut out = trl::trl_frame(df, style, images, &image_path, &image_bytes)?;
        table::write(&mut out, tmp, file_format)?;
        if images != Images::Files {
            return Ok(None);
        }
        let mut manifest = DirManifest::default();
        for (digest, (name, bytes)) in names {
            manifest.files.insert(name, DirEntry { digest: digest.to_string(), bytes, executable: false });
        }
        Ok(Some(manifest))
    }
}

/// The input and output of `format: checkpoint`.
const CHECKPOINT: &str = "checkpoint";

impl Export {
    /// The checkpoint folder, written to `path`: as it is stored (its digest stays its own),
    /// checked to be a Hugging Face model folder for `hf`, or for `peft` its adapter alone.
    fn export_checkpoint(&self, ctx: &RunContext) -> Result<BTreeMap<String, OutputRef>, StageError> {
        let input = ctx.input(CHECKPOINT)?;
        if input.output.kind != OutputKind::Dir {
            return Err(StageError::input(
                &input.from,
                format!(
                    "is not a checkpoint folder; `format: {}` exports what `dpo` or `sft` outputs as `checkpoint`",
                    self.format_name()
                ),
            ));
        }
        let manifest = ctx.store.read_dir_manifest(&input.output.digest)?;
        let (name, output) = match self.params.format {
            Some(Format::Peft) => (ADAPTER, adapter_alone(ctx, &manifest, &input.from)?),
            Some(Format::Hf) => {
                require_hugging_face(ctx, &manifest, &input.from)?;
                (CHECKPOINT, input.output.clone())
            }
            _ => (CHECKPOINT, input.output.clone()),
        };
        workspace_files::place(ctx, &self.params.path, &output)?;
        Ok(BTreeMap::from([(name.to_string(), output)]))
    }

    fn format_name(&self) -> &'static str {
        match self.params.format {
            Some(Format::Hf) => "hf",
            Some(Format::Peft) => "peft",
            _ => "checkpoint",
        }
    }

    fn trl_report(&self, pairs: &polars::prelude::DataFrame) -> DataReport {
        let mut report = DataReport::default();
        report.input("pairs", pairs.height() as u64);
        report.output("rows", pairs.height() as u64);
        let with_image = pairs.column("image").map_or(0, |c| c.len() - c.null_count()) as u64;
        let images = self.params.images.unwrap_or(Images::None);
        report.note(
            if images == Images::Embed { "images_embedded" } else { "images_as_files" },
            if images == Images::None { 0 } else { with_image },
        );
        report.note("rows_without_image", pairs.height() as u64 - with_image);
        report
    }
}

/// The output of `format: peft`.
const ADAPTER: &str = "adapter";

/// The checkpoint's `adapter/` folder as a folder of its own, stored.
fn adapter_alone(ctx: &RunContext, checkpoint: &DirManifest, from: &str) -> Result<OutputRef, StageError> {
    let prefix = format!("{}/", crate::model::lora::ADAPTER_DIR);
    let mut adapter = DirManifest::default();
    for (name, entry) in &checkpoint.files {
        if let Some(inside) = name.strip_prefix(&prefix) {
            adapter.files.insert(inside.to_string(), entry.clone());
        }
    }
    if !adapter.files.contains_key("adapter_config.json") {
        return Err(StageError::input(
            from,
            format!(
                "holds no PEFT adapter (no {prefix}adapter_config.json): train it with `lora` and `merge_lora: \
                 false`, or export the whole model with `format: hf`"
            ),
        ));
    }
    let (digest, bytes) = ctx.store.put_manifest(&adapter)?;
    Ok(OutputRef { digest, kind: OutputKind::Dir, rows: None, bytes, format: None })
}

/// Fails unless the checkpoint's config.json names a `model_type`, as every Hugging Face
/// model folder's does.
fn require_hugging_face(ctx: &RunContext, checkpoint: &DirManifest, from: &str) -> Result<(), StageError> {
    let config = checkpoint.files.get("config.json").and_then(|entry| {
        let bytes = ctx.store.read_blob(&entry.digest).ok()?;
        serde_json::from_slice::<Value>(&bytes).ok()
    });
    if config.as_ref().and_then(|c| c.get("model_type")).and_then(Value::as_str).is_some() {
        return Ok(());
    }
    Err(StageError::input(
        from,
        "is not a Hugging Face model folder (its config.json names no `model_type`: silkie's tiny model keeps a \
         layout of its own); export it with `format: checkpoint`",
    ))
}

/// A stored image's file name, `<digest>.<ext>` with the extension from its own bytes, and
/// its size — from one open of the blob.
fn image_file(ctx: &RunContext, digest: &str) -> (String, u64) {
    let blob = ctx.store.open_blob(digest).ok();
    let bytes = blob.as_ref().map_or(0, |b| b.len());
    let ext = blob
        .and_then(|b| image::ImageReader::new(std::io::BufReader::new(b)).with_guessed_format().ok())
        .and_then(|r| r.format())
        .and_then(|f| f.extensions_str().first().copied())
        .unwrap_or("img");
    (format!("{digest}.{ext}"), bytes)
}

impl Stage for Export {
    fn canonical_params(&self) -> Value {
        canonical(&self.params)
    }

    fn outputs(&self) -> Vec<OutputDecl> {
        if self.file_format.is_none() {
            let name = if self.params.format == Some(Format::Peft) { ADAPTER } else { CHECKPOINT };
            return vec![OutputDecl { name: name.into(), table: false }];
        }
        let mut outs = vec![OutputDecl { name: "file".into(), table: true }];
        if self.images_dir().is_some() {
            outs.push(OutputDecl { name: "images".into(), table: false });
        }
        if self.params.format == Some(Format::Trl) {
            outs.push(OutputDecl { name: "report".into(), table: false });
        }
        outs
    }

    fn is_cheap(&self) -> bool {
        true
    }

    fn roles(&self) -> Roles {
        Roles::Named(if self.file_format.is_none() { &[CHECKPOINT] } else { &["table"] })
    }

    fn workspace_outputs(&self) -> Vec<String> {
        let mut paths = vec![self.params.path.clone()];
        paths.extend(self.images_dir().map(String::from));
        paths
    }

    fn run(&self, ctx: &RunContext) -> Result<BTreeMap<String, OutputRef>, StageError> {
        let Some(file_format) = self.file_format else { return self.export_checkpoint(ctx) };
        let mut df = ctx.read_table("table")?;
        let tmp = ctx.store.tmp_path(&format!("export.{file_format}"));
        let manifest = match self.params.format {
            Some(Format::Trl) => self.write_trl(ctx, &df, &tmp, file_format)?,
            _ => {
                table::write(&mut df, &tmp, file_format)?;
                None
            }
        };
        let (digest, bytes) = ctx.store.adopt(&tmp)?;
        let file = OutputRef {
            digest,
            kind: OutputKind::File,
            rows: Some(df.height() as u64),
            bytes,
            format: Some(file_format.to_string()),
        };
        let mut outputs = BTreeMap::from([("file".to_string(), file)]);
        if let Some(manifest) = manifest {
            let (digest, bytes) = ctx.store.put_manifest(&manifest)?;
            outputs.insert(
                "images".to_string(),
                OutputRef { digest, kind: OutputKind::Dir, rows: None, bytes, format: None },
            );
        }
        if self.params.format == Some(Format::Trl) {
            outputs.insert("report".to_string(), ctx.put_report(&self.trl_report(&df))?);
        }
        workspace_files::place(ctx, &self.params.path, &outputs["file"])?;
        if let (Some(dir), Some(images)) = (self.images_dir(), outputs.get("images")) {
            workspace_files::place(ctx, dir, images)?;
        }
        Ok(outputs)
    }

    fn restore(&self, ctx: &RunContext, outputs: &BTreeMap<String, OutputRef>) -> Result<(), StageError> {
        if let Some(folder) = outputs.get(CHECKPOINT).or_else(|| outputs.get(ADAPTER)) {
            workspace_files::restore(ctx, &self.params.path, folder)?;
        }
        if let Some(file) = outputs.get("file") {
            workspace_files::restore(ctx, &self.params.path, file)?;
        }
        if let (Some(dir), Some(images)) = (self.images_dir(), outputs.get("images")) {
            workspace_files::restore(ctx, dir, images)?;
        }
        Ok(())
    }
}
