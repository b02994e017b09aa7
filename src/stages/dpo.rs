//! `dpo`: preference tuning of the built-in tiny VLM on a pairs table (DESIGN §6). The
//! reference is the base model; its log-probs are computed once. Outputs the trained
//! `checkpoint` (a directory) and the per-step `training` metrics under TRL's names.
//!
//! This first version trains all weights of a freshly initialised (`base: { init: tiny }`)
//! model on the flex device; LoRA, checkpoints as a base, resume and LibTorch come next.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::PathBuf;

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Config, Kind, OutputDecl, Roles, RunContext, Stage, StageError, canonical, parse_params};
use crate::data::frame::{optional_strings, strings};
use crate::dsl::Issue;
use crate::model::checkpoint;
use crate::model::tiny::{LoraTarget, TinyConfig};
use crate::model::tokenizer::{BOS, ByteTokenizer, EOS, PAD};
use crate::store::{OutputKind, OutputRef};
use crate::train::dpo::{self, Batch, Side};
use crate::train::losses::{LossConfig, LossType};
use crate::train::optim::AdamW;

pub const KIND: Kind = Kind { name: "dpo", version: 1, model_params: &["base"], configure };

/// `{ init: tiny, …sizes }`: a freshly initialised tiny model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Base {
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

fn beta() -> f64 {
    0.1
}
fn lr() -> f64 {
    1e-4
}
fn epochs() -> usize {
    1
}
fn batch_size() -> usize {
    8
}
fn warmup_ratio() -> f64 {
    0.1
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
    #[serde(default = "epochs")]
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
    /// Train LoRA adapters only (merged into the checkpoint); full fine-tuning without.
    #[serde(default)]
    lora: Option<LoraParams>,
    /// Weight of an NLL term on the chosen response (RPO); 0 is plain DPO.
    #[serde(default)]
    sft_weight: f64,
    #[serde(default)]
    seed: u64,
}

fn one() -> usize {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoraParams {
    r: usize,
    alpha: f64,
    #[serde(default = "all_targets")]
    targets: Vec<LoraTarget>,
}

fn all_targets() -> Vec<LoraTarget> {
    vec![LoraTarget::Attention, LoraTarget::Mlp]
}

struct Dpo {
    params: Params,
    model: TinyConfig,
}

fn configure(params: &Value, _: &Config) -> Result<Box<dyn Stage>, Issue> {
    let mut params: Params = parse_params(params)?;
    let model = params.base.config.resolve();
    if model.patch_size == 0 || !model.image_size.is_multiple_of(model.patch_size) {
        return Err(Issue::new("params.base.patch_size", "the patch size must divide the image size"));
    }
    if model.heads == 0 || !model.d_model.is_multiple_of(model.heads) {
        return Err(Issue::new("params.base.heads", "the number of heads must divide d_model"));
    }
    if let Some(lora) = &params.lora
        && (lora.r == 0 || lora.targets.is_empty())
    {
        return Err(Issue::new("params.lora", "LoRA needs a rank of at least 1 and at least one target"));
    }
    if params.batch_size == 0 || params.epochs == 0 || params.grad_accum == 0 {
        return Err(Issue::new("params", "`batch_size`, `epochs` and `grad_accum` must be at least 1"));
    }
    if params.beta.is_nan() || params.beta <= 0.0 {
        return Err(Issue::new("params.beta", "beta must be positive"));
    }
    // Defaults filled in, so the key names every size.
    params.base.config = TinyConfigParams {
        image_size: Some(model.image_size),
        patch_size: Some(model.patch_size),
        d_model: Some(model.d_model),
        layers: Some(model.layers),
        heads: Some(model.heads),
        d_ff: Some(model.d_ff),
        max_tokens: Some(model.max_tokens),
    };
    Ok(Box::new(Dpo { params, model }))
}

/// The device `runtime.device` names; this build trains on flex.
fn device(ctx: &RunContext) -> Result<Device, StageError> {
    match ctx.runtime.device.as_deref().unwrap_or("flex") {
        "flex" | "cpu" => Ok(Device::flex().autodiff()),
        other if other.starts_with("libtorch") => Err(StageError::Failed(format!(
            "runtime.device `{other}` needs silkie built with the `tch` feature (LibTorch); this build has flex only"
        ))),
        other => {
            Err(StageError::Failed(format!("unknown runtime.device `{other}`; use flex, libtorch or libtorch-cuda:N")))
        }
    }
}

impl Dpo {
    /// Token rows (BOS, prompt, completion, EOS), truncated to keep the end, padded.
    fn encode(&self, prompt: &str, completion: &str) -> (Vec<i64>, Vec<bool>) {
        let t = ByteTokenizer;
        let prompt: Vec<u32> = std::iter::once(BOS).chain(t.encode(prompt)).collect();
        let completion: Vec<u32> = t.encode(completion).into_iter().chain([EOS]).collect();
        let mut tokens: Vec<i64> = prompt.iter().chain(&completion).map(|x| i64::from(*x)).collect();
        let mut mask: Vec<bool> = prompt.iter().map(|_| false).chain(completion.iter().map(|_| true)).collect();
        let max = self.model.max_tokens;
        if tokens.len() > max {
            let cut = tokens.len() - max;
            tokens.drain(..cut);
            mask.drain(..cut);
        }
        tokens.resize(max, i64::from(PAD));
        mask.resize(max, false);
        (tokens, mask)
    }

    /// An image blob as [3, size, size] floats in [0, 1]; a grey image when there is none.
    fn pixels(&self, ctx: &RunContext, digest: Option<&str>) -> Result<Vec<f32>, StageError> {
        let size = self.model.image_size as u32;
        let Some(digest) = digest else { return Ok(vec![0.5; 3 * (size * size) as usize]) };
        let bytes = std::fs::read(ctx.store.blob_path(digest))
            .map_err(|e| StageError::Failed(format!("image {digest}: {e}")))?;
        let img = image::ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| StageError::Failed(format!("image {digest}: {e}")))?
            .decode()
            .map_err(|e| StageError::Failed(format!("image {digest}: {e}")))?
            .resize_exact(size, size, image::imageops::FilterType::Triangle)
            .to_rgb8();
        let mut out = vec![0.0; 3 * (size * size) as usize];
        for (x, y, p) in img.enumerate_pixels() {
            for c in 0..3 {
                out[c * (size * size) as usize + (y * size + x) as usize] = p[c] as f32 / 255.0;
            }
        }
        Ok(out)
    }

    fn batches(&self, ctx: &RunContext, device: &Device) -> Result<Vec<Batch>, StageError> {
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
        let size = self.model.image_size;
        let len = self.model.max_tokens;
        let mut batches = Vec::new();
        for start in (0..pairs.height()).step_by(self.params.batch_size) {
            let rows: Vec<usize> = (start..(start + self.params.batch_size).min(pairs.height())).collect();
            let mut pixels = Vec::with_capacity(rows.len() * 3 * size * size);
            let (mut ct, mut cm, mut rt, mut rm) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for &r in &rows {
                pixels.extend(self.pixels(ctx, images[r])?);
                let prompt = prompts[r].unwrap_or_default();
                let (t, m) = self.encode(prompt, chosen[r].unwrap_or_default());
                ct.extend(t);
                cm.extend(m);
                let (t, m) = self.encode(prompt, rejected[r].unwrap_or_default());
                rt.extend(t);
                rm.extend(m);
            }
            let n = rows.len();
            let images = Tensor::<4>::from_data(TensorData::new(pixels, [n, 3, size, size]), device);
            let side = |tokens: Vec<i64>, mask: Vec<bool>| Side {
                images: images.clone(),
                tokens: Tensor::<2, Int>::from_data(TensorData::new(tokens, [n, len]), device),
                mask: Tensor::<2, Bool>::from_data(TensorData::new(mask, [n, len]), device),
            };
            batches.push(Batch { chosen: side(ct, cm), rejected: side(rt, rm) });
        }
        Ok(batches)
    }
}

impl Stage for Dpo {
    fn canonical_params(&self) -> Value {
        canonical(&self.params)
    }

    fn outputs(&self) -> Vec<OutputDecl> {
        vec![
            OutputDecl { name: "checkpoint".into(), table: false },
            OutputDecl { name: "training".into(), table: true },
        ]
    }

    fn roles(&self) -> Roles {
        Roles::Named(&["pairs"])
    }

    fn key_files(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    fn run(&self, ctx: &RunContext) -> Result<BTreeMap<String, OutputRef>, StageError> {
        let device = device(ctx)?;
        device.seed(self.params.seed);
        let model = match &self.params.lora {
            Some(lora) => self.model.init(&device).with_lora(lora.r, lora.alpha, &lora.targets),
            None => self.model.init(&device),
        };
        let batches = self.batches(ctx, &device)?;
        let settings = dpo::Settings {
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
        };
        let seed = self.params.seed;
        let n = batches.len();
        // A seeded order per epoch, the same whatever the machine.
        let order = |epoch: usize| {
            let mut idx: Vec<usize> = (0..n).collect();
            idx.sort_by_key(|i| blake3::hash(format!("{seed}:{epoch}:{i}").as_bytes()).to_hex().to_string());
            idx
        };
        let mut log = |m: &dpo::StepMetrics| {
            tracing::debug!(
                "{}: step {} loss {:.4} accuracy {:.2}",
                ctx.instance,
                m.step,
                m.loss,
                m.rewards_accuracies
            );
        };
        let (model, metrics) = dpo::train(model, &batches, &settings, &order, &mut log);
        // Adapters are merged: the checkpoint is a plain model whatever trained it.
        let model = if self.params.lora.is_some() {
            burn::module::Module::materialize(burn::module::Module::valid(&model))
        } else {
            model
        };
        let dir = ctx.store.tmp_path("checkpoint");
        checkpoint::save(&model, &self.model, &dir).map_err(|e| StageError::Failed(e.to_string()))?;
        let (digest, bytes) = ctx.store.put_dir(&dir)?;
        let _ = std::fs::remove_dir_all(&dir);
        let mut training = metrics_table(&metrics).map_err(StageError::Failed)?;
        Ok(BTreeMap::from([
            ("checkpoint".to_string(), OutputRef { digest, kind: OutputKind::Dir, rows: None, bytes, format: None }),
            ("training".to_string(), ctx.put_table(&mut training)?),
        ]))
    }
}

/// The metrics as a table, one row per step, columns under TRL's names.
fn metrics_table(metrics: &[dpo::StepMetrics]) -> Result<polars::prelude::DataFrame, String> {
    use polars::prelude::{JsonFormat, JsonReader, SerReader};
    let rows: Vec<String> = metrics.iter().map(|m| serde_json::to_string(m).unwrap_or_default()).collect();
    JsonReader::new(Cursor::new(rows.join("\n").into_bytes()))
        .with_json_format(JsonFormat::JsonLines)
        .finish()
        .map_err(|e| e.to_string())
}
