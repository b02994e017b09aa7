//! `dpo`: preference tuning of a policy on a pairs table (DESIGN §6). The base is a fresh
//! tiny VLM (`base: { init: tiny, … }`) or the checkpoint of another stage
//! (`base: { stage: NAME }`); it is also the frozen reference. Outputs the trained
//! `checkpoint` (a directory), the per-step `training` metrics under TRL's names and, with
//! `precompute_ref`, the `reference` log-probs it computed once. Every `checkpoint_every`
//! steps the run's state is saved in the instance's scratch space; a killed run resumes there.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use polars::prelude::{Column, DataFrame};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::training::{
    Base, StepHook, check_loop, check_optimiser, checkpoint_every, encode_rows, image_file, key_params, metrics_table,
    one, put_checkpoint, resume_or_start, trained_parts, with_trained_parts,
};
use super::{ConfigureContext, Kind, OutputDecl, Roles, RunContext, Stage, StageError, parse_params, precision};
use crate::data::DataError;
use crate::data::frame::strings;
use crate::dsl::{Issue, Range};
use crate::model::device::Precision;
use crate::model::lora::LoraSpec;
use crate::model::policy::{Chat, Policy, Scored};
use crate::model::{TrainedParts, Vlm};
use crate::store::OutputRef;
use crate::train::dpo::{self, Batch, Reference};
use crate::train::fit::{Schedule, seeded_order};
use crate::train::losses::{LossConfig, LossType};
use crate::train::optim::AdamW;

// v4: the reference computes through the policy's own (autodiff) ops, which rounds differently.
pub const KIND: Kind = Kind { name: "dpo", version: 4, model_params: &["base"], stage_inputs: &[], configure };

fn beta() -> f64 {
    0.1
}
fn lr() -> f64 {
    1e-4
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
    /// Train the vision tower too (frozen by default, as the paper trains).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    train_vision: Option<bool>,
    /// Train the projector too (by default it trains unless LoRA adapts the model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    train_projector: Option<bool>,
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
    precision: Precision,
    parts: Option<TrainedParts>,
}

fn configure(params: &Value, config: &ConfigureContext) -> Result<Box<dyn Stage>, Issue> {
    let mut params: Params = parse_params(params)?;
    params.base.settle()?;
    if let Some(lora) = &params.lora
        && (lora.r == 0 || lora.targets.is_empty())
    {
        return Err(Issue::new("params.lora", "LoRA needs a rank of at least 1 and at least one target"));
    }
    check_loop(params.batch_size, params.epochs, params.grad_accum, params.checkpoint_every, params.max_length)?;
    check_optimiser(params.lr, params.warmup_ratio, params.max_grad_norm, &params.adamw)?;
    Range::above(0.0).check("params.beta", params.beta)?;
    // TRL's conservative DPO: a share of flipped labels, at most a half.
    Range::at_least(0.0).at_most(0.5).check("params.label_smoothing", params.label_smoothing)?;
    Range::at_least(0.0).check("params.sft_weight", params.sft_weight)?;
    let parts = trained_parts(
        &params.base,
        params.train_vision,
        params.train_projector,
        params.lora.is_some(),
        !params.merge_lora,
    )?;
    Ok(Box::new(Dpo { params, precision: precision(config, true)?, parts }))
}

impl Dpo {
    /// The pairs table in batches of `batch_size` rows, in table order, encoded by `policy`.
    fn batches(&self, ctx: &RunContext, policy: &impl Policy, device: &Device) -> Result<Vec<Batch>, StageError> {
        let pairs = ctx.read_table("pairs")?;
        let prompts: Vec<Option<&str>> = strings(&pairs, "pairs", "prompt")?.iter().collect();
        let chosen: Vec<Option<&str>> = strings(&pairs, "pairs", "chosen")?.iter().collect();
        let rejected: Vec<Option<&str>> = strings(&pairs, "pairs", "rejected")?.iter().collect();
        let images = ctx.stored_images(&pairs, "pairs")?;
        if pairs.height() == 0 {
            return Err(DataError::table("pairs", "there are no pairs to train on").into());
        }
        let mut batches = Vec::new();
        for start in (0..pairs.height()).step_by(self.params.batch_size) {
            let rows = start..(start + self.params.batch_size).min(pairs.height());
            let files: Vec<Option<Vec<u8>>> =
                rows.clone().map(|r| image_file(ctx, images[r])).collect::<Result<_, _>>()?;
            let side = |answers: &[Option<&str>]| {
                let scored: Vec<Scored> = rows
                    .clone()
                    .zip(&files)
                    .map(|(r, file)| Scored {
                        chat: Chat::user(None, file.as_deref(), prompts[r].unwrap_or_default()),
                        completion: answers[r].unwrap_or_default(),
                    })
                    .collect();
                encode_rows(policy, &scored, ("pairs", rows.start + 1), self.params.max_length, device)
            };
            batches.push(Batch::new(&side(&chosen)?, &side(&rejected)?));
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
            sft_weight: self.params.sft_weight,
            schedule: Schedule {
                lr: self.params.lr,
                epochs: self.params.epochs,
                warmup_ratio: self.params.warmup_ratio,
                max_grad_norm: self.params.max_grad_norm,
                optimizer: self.params.adamw,
                grad_accum: self.params.grad_accum,
            },
        }
    }
}

/// The reference log-probs of every batch: read back from an interrupted run's scratch
/// space, or computed now (and saved there, so a resumed run need not compute them again).
fn precomputed_reference(
    base: &Vlm,
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
    let json = serde_json::to_vec(&rows).map_err(|e| StageError::Internal(e.to_string()))?;
    std::fs::write(&saved, json).map_err(StageError::io(&saved))?;
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
    .map_err(|e| DataError::from(e).into())
}

impl Stage for Dpo {
    fn canonical_params(&self) -> Value {
        key_params(&self.params, self.precision)
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

    fn trains(&self) -> bool {
        true
    }

    fn roles(&self) -> Roles {
        Roles::Named(&["pairs"])
    }

    fn run(&self, ctx: &RunContext) -> Result<BTreeMap<String, OutputRef>, StageError> {
        let (device, base) = self.params.base.open(ctx, self.params.seed, self.precision)?;
        let batches = self.batches(ctx, &base, &device)?;
        let settings = self.settings();
        let scratch = ctx.scratch_dir()?;
        let adapt = |model: Vlm| {
            let model = match &self.params.lora {
                Some(lora) => model.with_lora(lora).map_err(|e| StageError::param("params.lora", e.to_string()))?,
                None => model,
            };
            with_trained_parts(model, self.parts)
        };
        let reference = if self.params.precompute_ref {
            Reference::Logps(precomputed_reference(&dpo::frozen(&base).for_inference(), &batches, &scratch, &device)?)
        } else {
            Reference::Model(dpo::frozen(&base).for_inference())
        };
        let state = resume_or_start(ctx, &scratch, adapt(base)?, &settings.schedule.optimizer)?;
        let order = seeded_order(self.params.seed, batches.len());
        let total = settings.total_steps(batches.len());
        let hook = StepHook::new(ctx, &scratch, self.params.checkpoint_every, total, state.metrics.len());
        let state = dpo::train(state, &batches, &reference, &settings, &order, &mut |s| hook.after(s))?;
        hook.finish();
        let (model, adapter) = match &self.params.lora {
            Some(lora) if !self.params.merge_lora => (state.model.valid(), Some(lora)),
            Some(_) => (state.model.valid().materialize(), None),
            None => (state.model, None),
        };
        let mut outputs = BTreeMap::from([
            ("checkpoint".to_string(), put_checkpoint(ctx, &model, adapter)?),
            ("training".to_string(), ctx.put_table(&mut metrics_table(&state.metrics)?)?),
        ]);
        if let Reference::Logps(logps) = &reference {
            outputs.insert("reference".to_string(), ctx.put_table(&mut reference_table(logps)?)?);
        }
        ctx.store.clear_scratch(ctx.key);
        Ok(outputs)
    }
}
