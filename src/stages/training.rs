//! What the training stage kinds (`sft`, `dpo`) share: the base model (`{ init: tiny, … }`,
//! another stage's checkpoint or a checkpoint folder), images as model input, resuming from the instance's scratch
//! space, the per-step hook (progress bar, periodic saves), and writing checkpoints and
//! metrics tables.

use std::io::Cursor;
use std::path::Path;

use burn::tensor::Device;
use polars::prelude::DataFrame;
use serde::{Deserialize, Serialize};

use super::{RunContext, StageError, StageProgress, model_role};
use crate::data::DataError;
use crate::dsl::{Issue, ModelRef, Range};
use crate::model::device::Precision;
use crate::model::lora::LoraSpec;
use crate::model::policy::{Policy, Scored, TokenBatch};
use crate::model::tiny::TinyConfig;
use crate::model::{TrainedParts, Vlm};
use crate::store::{OutputKind, OutputRef};
use crate::train::fit::{StepRecord, TrainState};
use crate::train::optim::AdamW;
use crate::train::resume;

/// `train_vision` / `train_projector` as a trainer's params give them: `None` when neither is
/// set (the model's own default: a LLaVA's tower frozen, its projector trained unless LoRA
/// adapts the model). A PEFT adapter kept apart carries adapters only, so trained parts need
/// `merge_lora: true`.
pub fn trained_parts(
    base: &Base,
    vision: Option<bool>,
    projector: Option<bool>,
    lora: bool,
    adapters_apart: bool,
) -> Result<Option<TrainedParts>, Issue> {
    if vision.is_none() && projector.is_none() {
        return Ok(None);
    }
    if matches!(base, Base::Fresh(_)) {
        let key = if vision.is_some() { "params.train_vision" } else { "params.train_projector" };
        return Err(Issue::new(key, "applies to LLaVA checkpoints; the tiny model has no vision tower apart"));
    }
    let parts = TrainedParts { vision: vision.unwrap_or(false), projector: projector.unwrap_or(!lora) };
    if lora && adapters_apart && (parts.vision || parts.projector) {
        let key = if parts.projector { "params.train_projector" } else { "params.train_vision" };
        return Err(Issue::new(
            key,
            "with `merge_lora: false` the checkpoint keeps the base's weights and a PEFT adapter, which would not \
             carry a trained tower or projector; set `merge_lora: true`",
        ));
    }
    Ok(Some(parts))
}

/// The model with `parts` trained or frozen, when the params say.
pub fn with_trained_parts(model: Vlm, parts: Option<TrainedParts>) -> Result<Vlm, StageError> {
    match parts {
        None => Ok(model),
        Some(parts) => Ok(model.with_trained_parts(parts)?),
    }
}

/// What training starts from.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Base {
    /// `{ init: tiny, …sizes }`: a freshly initialised tiny model.
    Fresh(Fresh),
    /// `{ stage: NAME, output?: O }` or `{ path: DIR }`: an existing checkpoint.
    Checkpoint(ModelRef),
}

impl<'de> Deserialize<'de> for Base {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(deserializer)?;
        if value.get("init").is_some() {
            return serde_json::from_value(value).map(Base::Fresh).map_err(D::Error::custom);
        }
        match ModelRef::parse(&value, &[]).map_err(D::Error::custom)?.0 {
            ModelRef::Named(name) => Err(D::Error::custom(format!(
                "`{name}` names a `models:` entry, which its provider serves and silkie cannot train; \
                 start from `{{ init: tiny }}`, a stage's checkpoint `{{ stage: NAME }}` or a folder `{{ path: DIR }}`"
            ))),
            reference => Ok(Base::Checkpoint(reference)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fresh {
    init: InitKind,
    #[serde(flatten)]
    config: TinyConfigParams,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum InitKind {
    Tiny,
}

/// The tiny model's sizes, each with the default of [`TinyConfig`].
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct TinyConfigParams {
    #[serde(default)]
    image_size: Option<usize>,
    #[serde(default)]
    patch_size: Option<usize>,
    #[serde(default)]
    d_model: Option<usize>,
    #[serde(default)]
    layers: Option<usize>,
    #[serde(default)]
    heads: Option<usize>,
    #[serde(default)]
    d_ff: Option<usize>,
    #[serde(default)]
    max_tokens: Option<usize>,
}

impl TinyConfigParams {
    fn resolve(&self) -> TinyConfig {
        let d = TinyConfig::default();
        TinyConfig {
            image_size: self.image_size.unwrap_or(d.image_size),
            patch_size: self.patch_size.unwrap_or(d.patch_size),
            d_model: self.d_model.unwrap_or(d.d_model),
            layers: self.layers.unwrap_or(d.layers),
            heads: self.heads.unwrap_or(d.heads),
            d_ff: self.d_ff.unwrap_or(d.d_ff),
            max_tokens: self.max_tokens.unwrap_or(d.max_tokens),
        }
    }
}

impl From<&TinyConfig> for TinyConfigParams {
    fn from(c: &TinyConfig) -> Self {
        TinyConfigParams {
            image_size: Some(c.image_size),
            patch_size: Some(c.patch_size),
            d_model: Some(c.d_model),
            layers: Some(c.layers),
            heads: Some(c.heads),
            d_ff: Some(c.d_ff),
            max_tokens: Some(c.max_tokens),
        }
    }
}

impl Base {
    /// Checks a fresh model's sizes and fills in every default, so the key names them all.
    pub fn settle(&mut self) -> Result<(), Issue> {
        if let Base::Fresh(fresh) = self {
            let model = fresh.config.resolve();
            if model.max_tokens < 2 {
                return Err(Issue::new("params.base.max_tokens", "a model needs room for at least 2 tokens"));
            }
            if model.image_size == 0 || model.patch_size == 0 || !model.image_size.is_multiple_of(model.patch_size) {
                return Err(Issue::new(
                    "params.base.patch_size",
                    "the image size must be a positive multiple of the patch size",
                ));
            }
            if model.heads == 0 || !model.d_model.is_multiple_of(model.heads) {
                return Err(Issue::new("params.base.heads", "the number of heads must divide d_model"));
            }
            fresh.config = TinyConfigParams::from(&model);
        }
        Ok(())
    }

    /// Where training runs and what it starts from: the device `runtime.device` names (able
    /// to compute in `precision`, recording gradients, seeded), and on it the base model
    /// computing in `precision` — freshly initialised from that seed, or the referenced
    /// checkpoint.
    pub fn open(&self, ctx: &RunContext, seed: u64, precision: Precision) -> Result<(Device, Vlm), StageError> {
        let mut device = crate::model::device::open(ctx.runtime.compute.device.as_deref(), precision, true)
            .map_err(|e| StageError::param(format!("runtime.{}", e.setting()), e.to_string()))?;
        if ctx.runtime.compute.gradient_checkpointing == Some(true) {
            device = device.gradient_checkpointing();
        }
        device.seed(seed);
        let model = self.load(ctx, &device)?;
        let model = model.with_precision(precision)?.for_training()?;
        Ok((device, model))
    }

    fn load(&self, ctx: &RunContext, device: &Device) -> Result<Vlm, StageError> {
        match self {
            Base::Fresh(fresh) => Ok(Vlm::Tiny(fresh.config.resolve().init(device))),
            Base::Checkpoint(reference) => {
                let folder = CheckpointFolder::open(ctx, reference)?;
                crate::model::load(folder.path(), device)
                    .map_err(|e| StageError::input(&folder.from, format!("does not load: {e}")))
            }
        }
    }
}

/// A checkpoint as a folder to load from: a `{ path }` reference's own folder, or a stored
/// one restored for the load and removed after.
struct CheckpointFolder {
    dir: std::path::PathBuf,
    restored: bool,
    /// What it is, for errors: the input it came from or the folder.
    from: String,
}

impl CheckpointFolder {
    fn open(ctx: &RunContext, reference: &ModelRef) -> Result<CheckpointFolder, StageError> {
        if let Some(dir) = reference.path() {
            return Ok(CheckpointFolder { dir: ctx.workspace.join(dir), restored: false, from: format!("`{dir}`") });
        }
        let (stage, output) =
            reference.stage().ok_or_else(|| StageError::Internal(format!("`{reference}` is not a checkpoint")))?;
        let input = ctx.input(&model_role(stage, output))?;
        let dir = ctx.store.tmp_path("base");
        let folder = CheckpointFolder { dir, restored: true, from: input.from.clone() };
        ctx.store.restore_dir(&input.output.digest, &folder.dir)?;
        Ok(folder)
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for CheckpointFolder {
    fn drop(&mut self) {
        if self.restored {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A trainer's params as they enter its key: all but `checkpoint_every`, which changes no
/// result, and its precision.
pub fn key_params(params: &impl Serialize, precision: Precision) -> serde_json::Value {
    let mut value = super::canonical(params);
    if let serde_json::Value::Object(map) = &mut value {
        map.remove("checkpoint_every");
    }
    super::key_precision(&mut value, precision);
    value
}

/// Checks the optimiser settings every trainer has against the ranges HF's `TrainingArguments`
/// and `torch.optim.AdamW` accept (a learning rate above 1 is refused too: it only diverges).
pub fn check_optimiser(lr: f64, warmup_ratio: f64, max_grad_norm: Option<f64>, adamw: &AdamW) -> Result<(), Issue> {
    Range::above(0.0).at_most(1.0).check("params.lr", lr)?;
    Range::at_least(0.0).at_most(1.0).check("params.warmup_ratio", warmup_ratio)?;
    if let Some(norm) = max_grad_norm {
        Range::above(0.0)
            .check("params.max_grad_norm", norm)
            .map_err(|i| i.with_help(Some("leave `max_grad_norm` out to train without clipping".into())))?;
    }
    Range::at_least(0.0).below(1.0).check("params.adamw.beta1", adamw.beta1)?;
    Range::at_least(0.0).below(1.0).check("params.adamw.beta2", adamw.beta2)?;
    Range::above(0.0).at_most(1.0).check("params.adamw.epsilon", adamw.epsilon)?;
    Range::at_least(0.0).at_most(1.0).check("params.adamw.weight_decay", adamw.weight_decay)
}

/// The default of `epochs` and `grad_accum`, for serde.
pub fn one() -> usize {
    1
}

/// The default of `checkpoint_every`, for serde: a save every 50 steps.
pub fn checkpoint_every() -> u64 {
    50
}

/// Checks the settings every trainer has.
pub fn check_loop(
    batch_size: usize,
    epochs: usize,
    grad_accum: usize,
    checkpoint_every: u64,
    max_length: Option<usize>,
) -> Result<(), Issue> {
    if batch_size == 0 || epochs == 0 || grad_accum == 0 || checkpoint_every == 0 {
        return Err(Issue::new(
            "params",
            "`batch_size`, `epochs`, `grad_accum` and `checkpoint_every` must be at least 1",
        ));
    }
    if max_length.is_some_and(|n| n < 2) {
        return Err(Issue::new("params.max_length", "a row needs at least 2 tokens"));
    }
    Ok(())
}

/// `rows` (rows `first`.. of `table`, counted from 1) encoded by `policy` as one batch; an
/// error names the rows.
pub fn encode_rows(
    policy: &impl Policy,
    rows: &[Scored],
    (table, first): (&str, usize),
    max_length: Option<usize>,
    device: &Device,
) -> Result<TokenBatch, StageError> {
    policy.encode(rows, max_length, device).map_err(|e| {
        let last = first + rows.len() - 1;
        DataError::Rows { table: table.into(), first, last, problem: e.to_string() }.into()
    })
}

/// A stored image's file, for a model to read; none when the row has no image.
pub fn image_file(ctx: &RunContext, digest: Option<&str>) -> Result<Option<Vec<u8>>, StageError> {
    let Some(digest) = digest else { return Ok(None) };
    Ok(Some(ctx.store.read_blob(digest)?))
}

/// The run's state from an interrupted run's last save in `scratch`, or a fresh start.
pub fn resume_or_start<R: StepRecord>(
    ctx: &RunContext,
    scratch: &Path,
    fresh: Vlm,
    optimizer: &AdamW,
) -> Result<TrainState<Vlm, R>, StageError> {
    let resumed = resume::load(scratch, fresh.clone(), optimizer)?;
    Ok(match resumed {
        Some(state) => {
            tracing::info!("{}: resuming after step {}", ctx.instance, state.metrics.len());
            state
        }
        None => TrainState::start(fresh, optimizer),
    })
}

/// After each step: progress (a bar, or a line at a steady interval), and a save every
/// `every` steps.
pub struct StepHook<'a> {
    progress: StageProgress,
    scratch: &'a Path,
    every: u64,
    total: u64,
    /// Steps taken before this process started (a resumed run): not part of its throughput.
    resumed_at: usize,
}

impl<'a> StepHook<'a> {
    /// For a run of `total` steps that has taken `resumed_at` of them already.
    pub fn new(ctx: &'a RunContext<'a>, scratch: &'a Path, every: u64, total: u64, resumed_at: usize) -> StepHook<'a> {
        let progress = ctx.progress(total, "steps").starting_at(resumed_at as u64);
        StepHook { progress, scratch, every, total, resumed_at }
    }

    pub fn after<R: StepRecord>(&self, state: &TrainState<Vlm, R>) -> Result<(), StageError> {
        let done = state.metrics.len();
        let Some(last) = state.metrics.last() else { return Ok(()) };
        self.progress.update(done as u64, self.total, |elapsed| {
            let tokens: u64 = state.metrics.iter().skip(self.resumed_at).map(R::tokens).sum();
            let rate = tokens as f64 / elapsed.as_secs_f64().max(1e-9);
            format!("{}, {rate:.0} tokens/s", last.summary())
        });
        if (done as u64).is_multiple_of(self.every) && (done as u64) < self.total {
            resume::save(state, self.scratch)?;
        }
        Ok(())
    }

    pub fn finish(&self) {
        self.progress.finish();
    }
}

/// Stores `model` as a checkpoint directory output; `adapter` when its adapters stay apart.
pub fn put_checkpoint(ctx: &RunContext, model: &Vlm, adapter: Option<&LoraSpec>) -> Result<OutputRef, StageError> {
    let dir = ctx.store.tmp_path("checkpoint");
    model.save(&dir, adapter)?;
    let stored = ctx.store.put_dir(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let (digest, bytes) = stored?;
    Ok(OutputRef { digest, kind: OutputKind::Dir, rows: None, bytes, format: None })
}

/// Per-step records as a table, one row per step, a column per field.
pub fn metrics_table<R: Serialize>(metrics: &[R]) -> Result<DataFrame, StageError> {
    use polars::prelude::{JsonFormat, JsonReader, SerReader};
    let rows: Vec<String> = metrics.iter().map(|m| serde_json::to_string(m).unwrap_or_default()).collect();
    JsonReader::new(Cursor::new(rows.join("\n").into_bytes()))
        .with_json_format(JsonFormat::JsonLines)
        .finish()
        .map_err(|e| DataError::from(e).into())
}
