//! `sft`: supervised fine-tuning of the tiny VLM on (image, prompt) → target rows — in the
//! synthetic world, instructions → their true answers. It can be made deliberately imperfect:
//! `label_noise` swaps a share of targets for another row's (within the same `noise_by` group,
//! so a wrong count stays a count), and few `epochs` undertrain; a policy that sometimes
//! hallucinates is what preference tuning is for. `snapshots: [N, …]` adds the checkpoint after
//! step N as output `stepN`: one run yields policies of several training lengths.

use std::collections::{BTreeMap, HashMap};

use burn::module::Module;
use burn::tensor::Device;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::training::{
    Base, StepHook, check_loop, check_optimiser, checkpoint_every, encode_rows, image_file, key_params, metrics_table,
    one, put_checkpoint, resume_or_start, trained_parts, with_trained_parts,
};
use super::{ConfigureContext, Kind, OutputDecl, Roles, RunContext, Stage, StageError, parse_params, precision};
use crate::data::DataError;
use crate::data::frame::strings;
use crate::data::report::DataReport;
use crate::dsl::{Issue, Range};
use crate::model::device::Precision;
use crate::model::policy::{Chat, Policy, Scored, TokenBatch};
use crate::model::{TrainedParts, Vlm};
use crate::store::OutputRef;
use crate::train::fit::{Schedule, seeded_order};
use crate::train::optim::AdamW;
use crate::train::sft::{self, SftMetrics};

pub const KIND: Kind = Kind { name: "sft", version: 1, model_params: &["base"], stage_inputs: &[], configure };

fn lr() -> f64 {
    1e-3
}
fn batch_size() -> usize {
    16
}
fn warmup_ratio() -> f64 {
    0.05
}
fn max_grad_norm() -> Option<f64> {
    Some(1.0)
}
fn prompt() -> String {
    "prompt".into()
}
fn target() -> String {
    "response".into()
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    base: Base,
    #[serde(default = "lr")]
    lr: f64,
    #[serde(default = "one")]
    epochs: usize,
    #[serde(default = "batch_size")]
    batch_size: usize,
    #[serde(default = "warmup_ratio")]
    warmup_ratio: f64,
    #[serde(default = "max_grad_norm")]
    max_grad_norm: Option<f64>,
    #[serde(default)]
    adamw: AdamW,
    #[serde(default = "one")]
    grad_accum: usize,
    /// Train the vision tower too (frozen by default, as the paper trains).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    train_vision: Option<bool>,
    /// Train the projector too (by default it trains unless LoRA adapts the model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    train_projector: Option<bool>,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    max_length: Option<usize>,
    /// Column of the prompt.
    #[serde(default = "prompt")]
    prompt: String,
    /// Column of the text to learn.
    #[serde(default = "target")]
    target: String,
    /// Share of rows whose target is replaced by another row's.
    #[serde(default)]
    label_noise: f64,
    /// Column whose value a replacement must share (e.g. the question kind).
    #[serde(default)]
    noise_by: Option<String>,
    /// Steps after which the checkpoint is also an output (`stepN`).
    #[serde(default)]
    snapshots: Vec<u64>,
    /// Save the run's state every this many steps (not part of the key).
    #[serde(default = "checkpoint_every")]
    checkpoint_every: u64,
}

struct Sft {
    params: Params,
    precision: Precision,
    parts: Option<TrainedParts>,
}

fn configure(params: &Value, config: &ConfigureContext) -> Result<Box<dyn Stage>, Issue> {
    let mut params: Params = parse_params(params)?;
    params.base.settle()?;
    check_loop(params.batch_size, params.epochs, params.grad_accum, params.checkpoint_every, params.max_length)?;
    check_optimiser(params.lr, params.warmup_ratio, params.max_grad_norm, &params.adamw)?;
    Range::at_least(0.0).at_most(1.0).check("params.label_noise", params.label_noise)?;
    if params.snapshots.contains(&0) {
        return Err(Issue::new("params.snapshots", "steps count from 1"));
    }
    params.snapshots.sort_unstable();
    params.snapshots.dedup();
    let parts = trained_parts(&params.base, params.train_vision, params.train_projector, false, false)?;
    Ok(Box::new(Sft { params, precision: precision(config, true)?, parts }))
}

/// One training row.
struct Row<'a> {
    image: Option<&'a str>,
    prompt: &'a str,
    target: String,
}

impl Sft {
    /// The rows, with `label_noise` applied (seeded per row); counts the noised rows.
    fn rows<'a>(
        &self,
        ctx: &RunContext,
        table: &'a polars::prelude::DataFrame,
        report: &mut DataReport,
    ) -> Result<Vec<Row<'a>>, StageError> {
        let prompts = strings(table, "examples", &self.params.prompt)?;
        let targets = strings(table, "examples", &self.params.target)?;
        let images = ctx.stored_images(table, "examples")?;
        let groups: Vec<Option<String>> = match &self.params.noise_by {
            Some(column) => strings(table, "examples", column)?.iter().map(|v| v.map(String::from)).collect(),
            None => vec![None; table.height()],
        };
        // Rows of each group, in table order: a noised row takes another row's target from it.
        let mut members: HashMap<&Option<String>, Vec<usize>> = HashMap::new();
        for (j, group) in groups.iter().enumerate() {
            members.entry(group).or_default().push(j);
        }
        let mut rows = Vec::with_capacity(table.height());
        let mut noised = 0;
        for (i, ((prompt, target), image)) in prompts.iter().zip(targets.iter()).zip(images).enumerate() {
            let (Some(prompt), Some(target)) = (prompt, target) else {
                let column = if prompt.is_none() { &self.params.prompt } else { &self.params.target };
                return Err(DataError::value("examples", i + 1, column, "is empty").into());
            };
            let mut rng = crate::eval::synth::rng_for(self.params.seed, "label-noise", i as u64);
            let mut target = target.to_string();
            if rng.random::<f64>() < self.params.label_noise {
                let same = &members[&groups[i]];
                if same.len() > 1 {
                    // The k-th of the group's other rows: `same` without row i itself.
                    let k = rng.random_range(0..same.len() - 1);
                    let j = if same[k] < i { same[k] } else { same[k + 1] };
                    if let Some(other) = targets.get(j) {
                        noised += usize::from(other != target);
                        target = other.to_string();
                    }
                }
            }
            rows.push(Row { image, prompt, target });
        }
        report.input("examples", table.height() as u64);
        report.note("label_noise", noised as u64);
        report.output("examples", rows.len() as u64);
        Ok(rows)
    }

    /// The rows in batches of `batch_size`, encoded by `policy`.
    fn batches(
        &self,
        ctx: &RunContext,
        rows: &[Row],
        policy: &impl Policy,
        device: &Device,
    ) -> Result<Vec<TokenBatch>, StageError> {
        if rows.is_empty() {
            return Err(DataError::table("examples", "there are no examples to train on").into());
        }
        rows.chunks(self.params.batch_size)
            .enumerate()
            .map(|(b, chunk)| {
                let files: Vec<Option<Vec<u8>>> =
                    chunk.iter().map(|r| image_file(ctx, r.image)).collect::<Result<_, _>>()?;
                let scored: Vec<Scored> = chunk
                    .iter()
                    .zip(&files)
                    .map(|(r, file)| Scored {
                        chat: Chat::user(None, file.as_deref(), r.prompt),
                        completion: &r.target,
                    })
                    .collect();
                let first = b * self.params.batch_size + 1;
                encode_rows(policy, &scored, ("examples", first), self.params.max_length, device)
            })
            .collect()
    }

    fn schedule(&self) -> Schedule {
        Schedule {
            lr: self.params.lr,
            epochs: self.params.epochs,
            warmup_ratio: self.params.warmup_ratio,
            max_grad_norm: self.params.max_grad_norm,
            optimizer: self.params.adamw,
            grad_accum: self.params.grad_accum,
        }
    }
}

fn snapshot_name(step: u64) -> String {
    format!("step{step}")
}

impl Stage for Sft {
    fn canonical_params(&self) -> Value {
        key_params(&self.params, self.precision)
    }

    fn outputs(&self) -> Vec<OutputDecl> {
        let mut outputs = vec![
            OutputDecl { name: "checkpoint".into(), table: false },
            OutputDecl { name: "training".into(), table: true },
            OutputDecl { name: "report".into(), table: false },
        ];
        outputs.extend(self.params.snapshots.iter().map(|s| OutputDecl { name: snapshot_name(*s), table: false }));
        outputs
    }

    fn trains(&self) -> bool {
        true
    }

    fn roles(&self) -> Roles {
        Roles::Named(&["examples"])
    }

    fn run(&self, ctx: &RunContext) -> Result<BTreeMap<String, OutputRef>, StageError> {
        let (device, base) = self.params.base.open(ctx, self.params.seed, self.precision)?;
        let table = ctx.read_table("examples")?;
        let mut report = DataReport::default();
        let rows = self.rows(ctx, &table, &mut report)?;
        let batches = self.batches(ctx, &rows, &base, &device)?;
        let schedule = self.schedule();
        let total = schedule.total_steps(batches.len());
        if let Some(past) = self.params.snapshots.iter().find(|s| **s > total) {
            return Err(StageError::param(
                "params.snapshots",
                format!("snapshot at step {past}, but the run has only {total} steps"),
            ));
        }
        let scratch = ctx.scratch_dir()?;
        let base = with_trained_parts(base, self.parts)?;
        let state = resume_or_start::<SftMetrics>(ctx, &scratch, base, &schedule.optimizer)?;
        // Snapshots taken so far (kept across a resume).
        let saved = scratch.join("snapshots.json");
        let mut snapshots: BTreeMap<String, OutputRef> =
            std::fs::read(&saved).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        let order = seeded_order(self.params.seed, batches.len());
        let hook = StepHook::new(ctx, &scratch, self.params.checkpoint_every, total, state.metrics.len());
        let mut after_step = |state: &crate::train::fit::TrainState<Vlm, SftMetrics>| -> Result<(), StageError> {
            let done = state.metrics.len() as u64;
            if self.params.snapshots.contains(&done) {
                let out = put_checkpoint(ctx, &state.model.valid(), None)?;
                snapshots.insert(snapshot_name(done), out);
                let json = serde_json::to_vec(&snapshots).map_err(|e| StageError::Internal(e.to_string()))?;
                std::fs::write(&saved, json).map_err(StageError::io(&saved))?;
            }
            hook.after(state)
        };
        let state = sft::train(state, &batches, &schedule, &order, &mut after_step)?;
        hook.finish();
        let mut outputs = BTreeMap::from([
            ("checkpoint".to_string(), put_checkpoint(ctx, &state.model.valid(), None)?),
            ("training".to_string(), ctx.put_table(&mut metrics_table(&state.metrics)?)?),
            ("report".to_string(), ctx.put_report(&report)?),
        ]);
        outputs.extend(snapshots);
        ctx.store.clear_scratch(ctx.key);
        Ok(outputs)
    }
}
