//! `dpo`: preference tuning of a policy on a pairs table (DESIGN §6). The base is a fresh
//! tiny VLM (`base: { init: tiny, … }`) or the checkpoint of another stage
//! (`base: { stage: NAME }`); it is also the frozen reference. Outputs the trained
//! `checkpoint` (a directory), the per-step `training` metrics under TRL's names and, with
//! `precompute_ref`, the `reference` log-probs it computed once. Every `checkpoint_every`
//! steps the run's state is saved in the instance's scratch space; a killed run resumes there.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use polars::prelude::{Column, DataFrame};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Config, Kind, OutputDecl, Roles, RunContext, Stage, StageError, canonical, model_role, parse_params};
use crate::data::frame::{optional_strings, strings};
use crate::dsl::Issue;
use crate::model::checkpoint;
use crate::model::device;
use crate::model::policy::{Example, TokenBatch, blank_pixels, pixels};
use crate::model::tiny::{LoraSpec, TinyConfig, TinyVlm};
use crate::store::{OutputKind, OutputRef};
use crate::train::dpo::{self, Batch, Reference, TrainState};
use crate::train::losses::{LossConfig, LossType};
use crate::train::optim::AdamW;
use crate::train::resume;

pub const KIND: Kind = Kind { name: "dpo", version: 2, model_params: &["base"], stage_inputs: &[], configure };

/// What training starts from (and compares against).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum Base {
    /// `{ init: tiny, …sizes }`: a freshly initialised tiny model.
    Fresh(Fresh),
    /// `{ stage: NAME, output?: O }`: the checkpoint another stage produced.
    Stage(StageRef),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fresh {
    init: InitKind,
    #[serde(flatten)]
    config: TinyConfigParams,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StageRef {
    stage: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    output: Option<String>,
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

fn beta() -> f64 {
    0.1
}
fn lr() -> f64 {
    1e-4
}
fn one() -> usize {
    1
}
fn batch_size() -> usize {
    8
}
fn warmup_ratio() -> f64 {
    0.1
}
fn yes() -> bool {
    true
}
fn checkpoint_every() -> u64 {
    50
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    base: Base,
    #[serde(default)]
    loss: LossType,
    #[serde(default = "beta")]
    beta: f64,
    #[serde(default)]
    label_smoothing: f64,
    #[serde(default = "lr")]
    lr: f64,
    #[serde(default = "one")]
    epochs: usize,
    #[serde(default = "batch_size")]
    batch_size: usize,
    #[serde(default = "warmup_ratio")]
    warmup_ratio: f64,
    #[serde(default)]
    max_grad_norm: Option<f64>,
    #[serde(default)]
    adamw: AdamW,
    /// Micro-batches of `batch_size` per optimiser step.
    #[serde(default = "one")]
    grad_accum: usize,
    /// Train LoRA adapters only; full fine-tuning without.
    #[serde(default)]
    lora: Option<LoraSpec>,
    /// Merge trained adapters into the checkpoint's weights (a plain model), or keep them
    /// apart (`adapter.json` beside the base weights; loading merges them).
    #[serde(default = "yes")]
    merge_lora: bool,
    /// Weight of an NLL term on the chosen response (RPO); 0 is plain DPO.
    #[serde(default)]
    sft_weight: f64,
    #[serde(default)]
    seed: u64,
    /// Longest token row (prompt + completion); longer rows lose their start. The model's
    /// `max_tokens` when unset.
    #[serde(default)]
    max_length: Option<usize>,
    /// Compute the reference log-probs once before training (and output them as the
    /// `reference` table) rather than running the frozen reference beside every step.
    #[serde(default = "yes")]
    precompute_ref: bool,
    /// Save the run's state every this many steps, to resume from after a crash. Not part
    /// of the key: it changes no result.
    #[serde(default = "checkpoint_every")]
    checkpoint_every: u64,
}

struct Dpo {
    params: Params,
}

fn configure(params: &Value, _: &Config) -> Result<Box<dyn Stage>, Issue> {
    let mut params: Params = parse_params(params)?;
    if let Base::Fresh(fresh) = &mut params.base {
        let model = fresh.config.resolve();
        if model.patch_size == 0 || !model.image_size.is_multiple_of(model.patch_size) {
            return Err(Issue::new("params.base.patch_size", "the patch size must divide the image size"));
        }
        if model.heads == 0 || !model.d_model.is_multiple_of(model.heads) {
            return Err(Issue::new("params.base.heads", "the number of heads must divide d_model"));
        }
        // Defaults filled in, so the key names every size.
        fresh.config = TinyConfigParams::from(&model);
    }
    if let Some(lora) = &params.lora
        && (lora.r == 0 || lora.targets.is_empty())
    {
        return Err(Issue::new("params.lora", "LoRA needs a rank of at least 1 and at least one target"));
    }
    if params.batch_size == 0 || params.epochs == 0 || params.grad_accum == 0 || params.checkpoint_every == 0 {
        return Err(Issue::new(
            "params",
            "`batch_size`, `epochs`, `grad_accum` and `checkpoint_every` must be at least 1",
        ));
    }
    if params.max_length.is_some_and(|n| n < 2) {
        return Err(Issue::new("params.max_length", "a row needs at least 2 tokens"));
    }
    if params.beta.is_nan() || params.beta <= 0.0 {
        return Err(Issue::new("params.beta", "beta must be positive"));
    }
    Ok(Box::new(Dpo { params }))
}

/// The base model: freshly initialised (seeded) or loaded from the referenced checkpoint.
fn base_model(base: &Base, ctx: &RunContext, device: &Device) -> Result<(TinyVlm, TinyConfig), StageError> {
    match base {
        Base::Fresh(fresh) => {
            let config = fresh.config.resolve();
            Ok((config.init(device), config))
        }
        Base::Stage(r) => {
            let input = ctx.input(&model_role(&r.stage, r.output.as_deref()))?;
            let dir = ctx.store.tmp_path("base");
            ctx.store.restore_dir(&input.output.digest, &dir)?;
            let loaded = checkpoint::load(&dir, device).map_err(|e| StageError::Failed(format!("{}: {e}", input.from)));
            let _ = std::fs::remove_dir_all(&dir);
            loaded
        }
    }
}

impl Dpo {
    /// An image blob as model input; a grey image when there is none.
    fn image(&self, ctx: &RunContext, digest: Option<&str>, size: usize) -> Result<Vec<f32>, StageError> {
        let Some(digest) = digest else { return Ok(blank_pixels(size)) };
        let bytes = std::fs::read(ctx.store.blob_path(digest))
            .map_err(|e| StageError::Failed(format!("image {digest}: {e}")))?;
        pixels(&bytes, size).map_err(|e| StageError::Failed(format!("image {digest}: {e}")))
    }

    /// The pairs table in batches of `batch_size` rows, in table order.
    fn batches(&self, ctx: &RunContext, model: &TinyConfig, device: &Device) -> Result<Vec<Batch>, StageError> {
        let pairs = ctx.read_table("pairs")?;
        let failed = StageError::Failed;
        let prompts: Vec<Option<&str>> = strings(&pairs, "pairs", "prompt").map_err(failed)?.iter().collect();
        let chosen: Vec<Option<&str>> = strings(&pairs, "pairs", "chosen").map_err(failed)?.iter().collect();
        let rejected: Vec<Option<&str>> = strings(&pairs, "pairs", "rejected").map_err(failed)?.iter().collect();
        let images =
            optional_strings(&pairs, "pairs", "image").map_err(failed)?.unwrap_or_else(|| vec![None; pairs.height()]);
        if pairs.height() == 0 {
            return Err(failed("there are no pairs to train on".into()));
        }
        let size = model.image_size;
        let len = self.params.max_length.map_or(model.max_tokens, |n| n.min(model.max_tokens));
        let mut batches = Vec::new();
        for start in (0..pairs.height()).step_by(self.params.batch_size) {
            let rows = start..(start + self.params.batch_size).min(pairs.height());
            let mut chosen_rows = Vec::with_capacity(rows.len());
            for r in rows.clone() {
                let pixels = self.image(ctx, images[r], size)?;
                let prompt = prompts[r].unwrap_or_default();
                chosen_rows.push(Example { pixels, prompt, completion: chosen[r].unwrap_or_default() });
            }
            let chosen_side = TokenBatch::new(chosen_rows, size, len, device);
            let rejected_rows: Vec<Example> = rows
                .map(|r| Example {
                    pixels: Vec::new(),
                    prompt: prompts[r].unwrap_or_default(),
                    completion: rejected[r].unwrap_or_default(),
                })
                .collect();
            let rejected_side = chosen_side.with_completions(rejected_rows, len);
            batches.push(Batch { chosen: chosen_side, rejected: rejected_side });
        }
        Ok(batches)
    }

    fn settings(&self) -> dpo::Settings {
        dpo::Settings {
            loss: LossConfig {
                loss: self.params.loss,
                beta: self.params.beta,
                label_smoothing: self.params.label_smoothing,
            },
            lr: self.params.lr,
            epochs: self.params.epochs,
            warmup_ratio: self.params.warmup_ratio,
            max_grad_norm: self.params.max_grad_norm,
            optimizer: self.params.adamw,
            grad_accum: self.params.grad_accum,
            sft_weight: self.params.sft_weight,
        }
    }
}

/// The reference log-probs of every batch: read back from an interrupted run's scratch
/// space, or computed now (and saved there, so a resumed run need not compute them again).
fn precomputed_reference(
    base: &TinyVlm,
    batches: &[Batch],
    scratch: &Path,
    device: &Device,
) -> Result<dpo::ReferenceLogps, StageError> {
    let saved = scratch.join("reference.json");
    if let Ok(bytes) = std::fs::read(&saved)
        && let Ok(rows) = serde_json::from_slice::<Vec<(Vec<f32>, Vec<f32>)>>(&bytes)
        && rows.len() == batches.len()
    {
        let tensor = |v: Vec<f32>| {
            let n = v.len();
            Tensor::<1>::from_data(TensorData::new(v, [n]), device)
        };
        return Ok(rows.into_iter().map(|(c, r)| (tensor(c), tensor(r))).collect());
    }
    let computed = dpo::reference_logps(base, batches);
    let rows: Vec<(Vec<f32>, Vec<f32>)> = computed.iter().map(|(c, r)| (floats(c), floats(r))).collect();
    let json = serde_json::to_vec(&rows).map_err(|e| StageError::Failed(e.to_string()))?;
    std::fs::write(&saved, json).map_err(|e| StageError::Failed(format!("{}: {e}", saved.display())))?;
    Ok(computed)
}

fn floats(t: &Tensor<1>) -> Vec<f32> {
    t.clone().into_data().convert::<f32>().try_to_vec().unwrap_or_default()
}

/// The reference log-probs as a table: one row per pair, in table order.
fn reference_table(reference: &dpo::ReferenceLogps) -> Result<DataFrame, StageError> {
    let chosen: Vec<f64> = reference.iter().flat_map(|(c, _)| floats(c)).map(f64::from).collect();
    let rejected: Vec<f64> = reference.iter().flat_map(|(_, r)| floats(r)).map(f64::from).collect();
    let rows: Vec<u32> = (0..chosen.len() as u32).collect();
    DataFrame::new(
        rows.len(),
        vec![
            Column::new("pair".into(), rows),
            Column::new("ref_logps/chosen".into(), chosen),
            Column::new("ref_logps/rejected".into(), rejected),
        ],
    )
    .map_err(|e| StageError::Failed(e.to_string()))
}

impl Stage for Dpo {
    fn canonical_params(&self) -> Value {
        let mut params = canonical(&self.params);
        if let Value::Object(map) = &mut params {
            map.remove("checkpoint_every");
        }
        params
    }

    fn outputs(&self) -> Vec<OutputDecl> {
        let mut outputs = vec![
            OutputDecl { name: "checkpoint".into(), table: false },
            OutputDecl { name: "training".into(), table: true },
        ];
        if self.params.precompute_ref {
            outputs.push(OutputDecl { name: "reference".into(), table: true });
        }
        outputs
    }

    fn roles(&self) -> Roles {
        Roles::Named(&["pairs"])
    }

    fn key_files(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    fn run(&self, ctx: &RunContext) -> Result<BTreeMap<String, OutputRef>, StageError> {
        let failed = |e: &dyn std::fmt::Display| StageError::Failed(e.to_string());
        let device = device::open(ctx.runtime.device.as_deref(), ctx.runtime.dtype.as_deref(), true)
            .map_err(|e| failed(&format!("runtime.device: {e}")))?;
        device.seed(self.params.seed);
        let (base, config) = base_model(&self.params.base, ctx, &device)?;
        let batches = self.batches(ctx, &config, &device)?;
        let settings = self.settings();
        let scratch = ctx.scratch_dir()?;
        let adapt = |model: TinyVlm| match &self.params.lora {
            Some(lora) => model.with_lora(lora),
            None => model,
        };
        let reference = if self.params.precompute_ref {
            Reference::Logps(precomputed_reference(&base, &batches, &scratch, &device)?)
        } else {
            Reference::Model(base.valid())
        };
        let state = match resume::load(&scratch, adapt(base.clone()), &settings.optimizer).map_err(|e| failed(&e))? {
            Some(state) => {
                tracing::info!("{}: resuming after step {}", ctx.instance, state.metrics.len());
                state
            }
            None => TrainState::start(adapt(base), &settings.optimizer),
        };
        let n = batches.len();
        let order = crate::train::fit::seeded_order(self.params.seed, n);
        let total = settings.total_steps(n);
        let bar = ctx.progress_bar(total, "steps");
        let every = self.params.checkpoint_every;
        let mut after_step = |state: &TrainState<TinyVlm>| -> Result<(), StageError> {
            let Some(m) = state.metrics.last() else { return Ok(()) };
            tracing::debug!(
                "{}: step {} loss {:.4} accuracy {:.2}",
                ctx.instance,
                m.step,
                m.loss,
                m.rewards_accuracies
            );
            if let Some(bar) = &bar {
                bar.set_position(m.step + 1);
                bar.set_message(format!("loss {:.4} margin {:.3}", m.loss, m.rewards_margins));
            }
            let done = m.step + 1;
            if done.is_multiple_of(every) && done < total {
                resume::save(state, &scratch).map_err(|e| failed(&e))?;
            }
            Ok(())
        };
        let state = dpo::train(state, &batches, &reference, &settings, &order, &mut after_step)?;
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        let (model, adapter) = match &self.params.lora {
            Some(lora) if !self.params.merge_lora => (state.model.valid(), Some(lora)),
            Some(_) => (state.model.valid().materialize(), None),
            None => (state.model, None),
        };
        let dir = ctx.store.tmp_path("checkpoint");
        checkpoint::save(&model, &config, adapter, &dir).map_err(|e| failed(&e))?;
        let (digest, bytes) = ctx.store.put_dir(&dir)?;
        let _ = std::fs::remove_dir_all(&dir);
        let mut training = metrics_table(&state.metrics).map_err(StageError::Failed)?;
        let mut outputs = BTreeMap::from([
            ("checkpoint".to_string(), OutputRef { digest, kind: OutputKind::Dir, rows: None, bytes, format: None }),
            ("training".to_string(), ctx.put_table(&mut training)?),
        ]);
        if let Reference::Logps(logps) = &reference {
            outputs.insert("reference".to_string(), ctx.put_table(&mut reference_table(logps)?)?);
        }
        ctx.store.clear_scratch(ctx.key);
        Ok(outputs)
    }
}

/// The metrics as a table, one row per step, columns under TRL's names.
fn metrics_table(metrics: &[dpo::StepMetrics]) -> Result<DataFrame, String> {
    use polars::prelude::{JsonFormat, JsonReader, SerReader};
    let rows: Vec<String> = metrics.iter().map(|m| serde_json::to_string(m).unwrap_or_default()).collect();
    JsonReader::new(Cursor::new(rows.join("\n").into_bytes()))
        .with_json_format(JsonFormat::JsonLines)
        .finish()
        .map_err(|e| e.to_string())
}
