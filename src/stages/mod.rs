//! Stage kinds. Each kind is one file exposing a [`Kind`]; a configured stage is a [`Stage`].
//!
//! Adding a kind is adding a file and one line to [`KINDS`].

mod aggregate;
mod annotate;
mod calling;
mod command;
mod dpo;
mod error;
mod evaluate;
mod export;
mod load;
mod pair;
mod progress;
mod sample;
mod sft;
mod synth;
mod training;
mod workspace_files;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use polars::prelude::DataFrame;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use error::StageError;
pub use progress::{DEFAULT_PROGRESS_INTERVAL, StageProgress};

use crate::data::DataError;
use crate::dsl::{Issue, serde_issue};
use crate::model::device::Precision;
use crate::store::{OutputKind, OutputRef, StatCache, Store, StoreError};
use crate::table::{self, TableFormat};

/// A stage kind: its name, the version of its semantics (part of every key), and how to
/// turn params into a runnable stage.
pub struct Kind {
    pub name: &'static str,
    /// Bumped whenever the kind's output for the same inputs changes.
    pub version: u32,
    /// Params that may hold model references (`{ stage: NAME }`), which add DAG edges.
    pub model_params: &'static [&'static str],
    /// `(param, output)`: a param whose value names a stage; that stage's `output` feeds the
    /// input role of the param's name (`baseline: mme-base` → role `baseline`).
    pub stage_inputs: &'static [(&'static str, &'static str)],
    pub configure: Configure,
}

/// Turns params (and the pipeline's models) into a runnable stage, or says what is wrong.
pub type Configure = fn(&Value, &ConfigureContext) -> Result<Box<dyn Stage>, Issue>;

/// What a kind may look at besides its params when it is configured.
pub struct ConfigureContext<'a> {
    /// The pipeline's `models:` entries.
    pub models: &'a BTreeMap<String, crate::dsl::ModelDef>,
    /// The stage's `runtime:` settings, for kinds that check them early (`dtype`).
    pub runtime: &'a crate::dsl::Runtime,
}

pub static KINDS: &[Kind] = &[
    load::KIND,
    synth::KIND,
    command::KIND,
    export::KIND,
    aggregate::KIND,
    pair::KIND,
    sample::KIND,
    annotate::KIND,
    sft::KIND,
    dpo::KIND,
    evaluate::KIND,
];

pub fn kind(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

/// What a stage declares it produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputDecl {
    pub name: String,
    /// Tables can feed any role that reads a table.
    pub table: bool,
}

/// Which inputs a stage reads.
pub enum Roles {
    /// Named roles, bound per DESIGN §3.
    Named(&'static [&'static str]),
    /// Every output of every needed stage (the `command` escape hatch).
    EveryNeed,
}

/// A configured stage, ready to run.
pub trait Stage: Send + Sync {
    /// Params as they enter the key: typed, defaults filled in.
    fn canonical_params(&self) -> Value;
    fn outputs(&self) -> Vec<OutputDecl>;
    fn roles(&self) -> Roles;
    /// Workspace files (or directories) whose bytes enter the key: none unless the kind
    /// reads the workspace.
    fn key_files(&self) -> Vec<PathBuf> {
        Vec::new()
    }
    fn run(&self, ctx: &RunContext) -> Result<BTreeMap<String, OutputRef>, StageError>;
    /// Workspace paths this stage writes; runs lock them so two never write one at once.
    fn workspace_outputs(&self) -> Vec<String> {
        Vec::new()
    }
    /// Whether it is cheap (reading, joining, writing tables): such instances stay in the
    /// driver's process unless their stage names another executor itself.
    fn is_cheap(&self) -> bool {
        false
    }
    /// Whether it sends model calls (through the memo).
    fn calls_models(&self) -> bool {
        false
    }
    /// Whether it trains a model (so `runtime.gradient_checkpointing` applies).
    fn trains(&self) -> bool {
        false
    }
    /// Called on a cache hit: puts workspace files the stage owns back in place.
    fn restore(&self, _ctx: &RunContext, _outputs: &BTreeMap<String, OutputRef>) -> Result<(), StageError> {
        Ok(())
    }
}

/// One bound input: which upstream output feeds a role.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Input {
    /// `instance.output`, for messages.
    pub from: String,
    pub output: OutputRef,
}

/// What a running stage may touch.
pub struct RunContext<'a> {
    pub workspace: &'a Path,
    pub store: &'a Store,
    /// The call memo a calling stage answers from and adds to: the cache's, or a private
    /// copy where another host runs the instance.
    pub memo: &'a Path,
    pub stat_cache: &'a StatCache,
    pub instance: &'a str,
    /// The instance's key: names its scratch space (state a crash should not lose).
    pub key: &'a str,
    pub inputs: &'a BTreeMap<String, Input>,
    /// `silkie run --offline`: no model call may be sent.
    pub offline: bool,
    /// On a terminal: where a stage may add a progress bar of its own.
    pub bars: Option<indicatif::MultiProgress>,
    /// Off a terminal: how often a long stage logs a progress line.
    pub progress_interval: std::time::Duration,
    /// The stage's `runtime:` settings (device, threads, …), never part of its key.
    pub runtime: &'a crate::dsl::Runtime,
}

/// The input role under which a `{ stage: NAME, output: O }` model reference reaches a stage.
pub fn model_role(stage: &str, output: Option<&str>) -> String {
    match output {
        Some(output) => format!("model:{stage}.{output}"),
        None => format!("model:{stage}"),
    }
}

impl RunContext<'_> {
    /// Progress over `total` `unit`s: a bar on a terminal, periodic lines elsewhere.
    pub fn progress(&self, total: u64, unit: &'static str) -> StageProgress {
        StageProgress::new(self.bars.as_ref(), self.progress_interval, self.instance, total, unit)
    }

    /// A folder that outlives a crash of this instance's run (for the same key), for state to
    /// resume from; [`Store::clear_scratch`] removes it once the outputs are stored.
    pub fn scratch_dir(&self) -> Result<PathBuf, StageError> {
        let dir = self.store.scratch_dir(self.key)?;
        // Whose progress this is, for `gc` to say.
        let owner = dir.join(crate::store::SCRATCH_OWNER);
        if !owner.exists() {
            self.store.write_atomic(&owner, self.instance.as_bytes())?;
        }
        Ok(dir)
    }

    pub fn input(&self, role: &str) -> Result<&Input, StageError> {
        self.inputs.get(role).ok_or_else(|| StageError::input(format!("role `{role}`"), "has no input bound to it"))
    }

    /// Reads a table input (a Parquet table, or a file in a table format).
    /// The `image` column of `df` (table `table`) as stored-image digests, one per row (all
    /// `None` without the column); a value that is not an image in the store is an error naming
    /// the row (the run names the stage) — most often a column of file paths that `load` was
    /// not told to read.
    pub fn stored_images<'t>(&self, df: &'t DataFrame, table: &str) -> Result<Vec<Option<&'t str>>, StageError> {
        let Some(images) = crate::data::frame::optional_strings(df, table, "image")? else {
            return Ok(vec![None; df.height()]);
        };
        // Each distinct image is looked up once, however many rows show it.
        let mut known = std::collections::HashSet::new();
        let mut stored = |v: &str| known.contains(v) || (self.store.has_blob(v) && known.insert(v.to_string()));
        if let Some((row, value)) =
            images.iter().enumerate().find_map(|(row, v)| v.filter(|v| !stored(v)).map(|v| (row, v)))
        {
            let problem = format!(
                "is {}, which is not an image in the store; to use image files, load the table with `images: \
                 FOLDER` (a `load` param): each value is then read as a path under FOLDER and stored",
                crate::dsl::elide(value, 80),
            );
            return Err(DataError::value(table, row + 1, "image", problem).into());
        }
        Ok(images)
    }

    pub fn read_table(&self, role: &str) -> Result<DataFrame, StageError> {
        let input = self.input(role)?;
        let path = self.store.blob_path(&input.output.digest);
        if !path.is_file() {
            return Err(StoreError::MissingBlob { digest: input.output.digest.clone() }.into());
        }
        let format = match (input.output.kind, input.output.format.as_deref()) {
            (OutputKind::Table, _) => TableFormat::Parquet,
            (OutputKind::File, Some(f)) => serde_json::from_value(Value::String(f.to_string()))
                .map_err(|_| StageError::input(&input.from, format!("holds `{f}`, which is not a table format")))?,
            _ => return Err(StageError::input(&input.from, "is not a table")),
        };
        Ok(table::read(&path, format)?)
    }

    /// Stores a table as Parquet and describes it as an output.
    pub fn put_table(&self, df: &mut DataFrame) -> Result<OutputRef, StageError> {
        let tmp = self.store.tmp_path("table.parquet");
        table::write(df, &tmp, TableFormat::Parquet)?;
        let (digest, bytes) = self.store.adopt(&tmp)?;
        Ok(OutputRef { digest, kind: OutputKind::Table, rows: Some(df.height() as u64), bytes, format: None })
    }

    /// Stores several tables at once, each on a core of its own (writing one — encoding and
    /// compressing its columns — is mostly one core's work): output name → its reference.
    pub fn put_tables(&self, tables: Vec<(&str, &mut DataFrame)>) -> Result<BTreeMap<String, OutputRef>, StageError> {
        use rayon::prelude::*;
        tables.into_par_iter().map(|(name, df)| Ok((name.to_string(), self.put_table(df)?))).collect()
    }

    /// Stores a data report (JSON) as the `report` output.
    pub fn put_report(&self, report: &crate::data::report::DataReport) -> Result<OutputRef, StageError> {
        let json = serde_json::to_vec_pretty(report).map_err(|e| StageError::Internal(e.to_string()))?;
        let (digest, bytes) = self.store.put_bytes(&json)?;
        Ok(OutputRef { digest, kind: OutputKind::File, rows: None, bytes, format: Some("report".into()) })
    }

    /// A path inside the workspace, refusing ones that leave it.
    pub fn workspace_path(&self, relative: &str) -> Result<PathBuf, StageError> {
        workspace_path(self.workspace, relative)
    }
}

/// The place in the workspace a stage may write, restore or delete at `relative`. Checked
/// on the disk, not as text only: no folder on the way may be a symbolic link that leads out
/// of the workspace, and an absolute path must resolve inside it, so neither `..`, an
/// absolute path elsewhere, nor a link to a folder outside can lead a write or a delete out.
/// The path itself may be a link: outputs replace it, never write through it.
pub(crate) fn workspace_path(workspace: &Path, relative: &str) -> Result<PathBuf, StageError> {
    let rel = Path::new(relative);
    if rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(StageError::workspace(relative, "leaves the workspace; outputs must stay inside it"));
    }
    let path = workspace.join(rel);
    // The common case costs one lstat per folder below the workspace, not a realpath.
    if let Some(inner) = path.strip_prefix(workspace).ok().and_then(Path::parent) {
        let mut at = workspace.to_path_buf();
        let mut linked = false;
        for part in inner.components() {
            at.push(part);
            match std::fs::symlink_metadata(&at) {
                Err(_) => break, // made as a real folder when the output is written
                Ok(meta) if meta.file_type().is_symlink() => {
                    linked = true;
                    break;
                }
                Ok(_) => {}
            }
        }
        if !linked {
            return Ok(path);
        }
    }
    resolves_inside(workspace, &path, relative)
}

/// The slow check: the deepest folder of `path` that exists, resolved with its links, lies
/// inside the resolved workspace.
fn resolves_inside(workspace: &Path, path: &Path, relative: &str) -> Result<PathBuf, StageError> {
    let root = std::fs::canonicalize(workspace).map_err(StageError::io(workspace))?;
    let mut existing = path.parent();
    while let Some(dir) = existing
        && std::fs::symlink_metadata(dir).is_err()
    {
        existing = dir.parent();
    }
    let resolved = existing
        .map(std::fs::canonicalize)
        .transpose()
        .map_err(|e| StageError::workspace(relative, format!("has a folder that cannot be resolved: {e}")))?;
    match resolved {
        Some(dir) if dir.starts_with(&root) => Ok(path.to_path_buf()),
        Some(dir) => Err(StageError::workspace(
            relative,
            format!(
                "lies outside the workspace {} (its folder resolves to {}{}); silkie writes only inside it",
                root.display(),
                dir.display(),
                if Path::new(relative).is_absolute() { "" } else { ", through a symbolic link" },
            ),
        )),
        None => Err(StageError::workspace(relative, "has no folder to write in")),
    }
}

/// The table format of a `path` param: the explicit `format` param, else the extension.
pub(crate) fn table_format(path: &str, format: Option<TableFormat>) -> Result<TableFormat, Issue> {
    format.or_else(|| TableFormat::from_path(path.as_ref())).ok_or_else(|| {
        Issue::new("params.path", format!("cannot tell the format of `{path}` from its extension"))
            .with_help(Some("set `format:` to parquet, jsonl or csv".into()))
    })
}

/// `runtime.dtype` of a stage: it applies to the checkpoints the stage runs, so a bf16 stage
/// that runs none is told so rather than ignored.
pub fn precision(config: &ConfigureContext, runs_checkpoints: bool) -> Result<Precision, Issue> {
    let precision = config.runtime.compute.dtype.unwrap_or_default();
    if precision != Precision::F32 && !runs_checkpoints {
        return Err(Issue::new(
            "runtime.dtype",
            format!("{precision} applies to the checkpoints a stage runs (`{{ stage: … }}`), and this stage runs none"),
        ));
    }
    Ok(precision)
}

/// Puts `precision` into a stage's key params (nothing for f32).
pub fn key_precision(params: &mut Value, precision: Precision) {
    if let Value::Object(map) = params {
        precision.add_to_key(map);
    }
}

/// Parses a kind's params into its typed struct (with `deny_unknown_fields`), so that
/// errors carry the key path under `params`.
pub fn parse_params<P: DeserializeOwned>(params: &Value) -> Result<P, Issue> {
    serde_path_to_error::deserialize(params.clone()).map_err(|e| {
        let inner = e.path().to_string();
        let path = if inner == "." { "params".to_string() } else { format!("params.{inner}") };
        serde_issue(path, &e.into_inner().to_string())
    })
}

/// Serializes typed params back to JSON: this is what enters the key (defaults filled in).
pub fn canonical<P: serde::Serialize>(params: &P) -> Value {
    serde_json::to_value(params).unwrap_or(Value::Null)
}
