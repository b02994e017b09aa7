//! The optimisation loop every trainer shares (DPO, SFT): seeded batch order per epoch,
//! gradient accumulation, clipping by the global norm, HF's cosine schedule with warm-up and
//! AdamW — and a state that can stop after any step and go on to the same end.

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::clip::clip_global_norm;
use super::optim::AdamW;
use super::schedule::{cosine_with_warmup, warmup_steps};

/// How to optimise, whatever the objective.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub lr: f64,
    pub epochs: usize,
    pub warmup_ratio: f64,
    pub max_grad_norm: Option<f64>,
    pub optimizer: AdamW,
    /// Micro-batches whose gradients are summed before one optimiser step.
    pub grad_accum: usize,
}

impl Schedule {
    /// Optimiser steps in the whole run.
    pub fn total_steps(&self, batches: usize) -> u64 {
        (batches.div_ceil(self.grad_accum.max(1)) * self.epochs) as u64
    }
}

/// What an objective logs per step: made from its micro-batches' parts.
pub trait StepRecord: Clone + Serialize + DeserializeOwned {
    /// One step's record from its micro-batches' (equal-sized ones average exactly).
    fn combine(parts: &[Self], step: u64, epoch: u64, lr: f64, grad_norm: f64) -> Self;
    /// A few words for a progress bar: "loss 0.4121 margin 0.310".
    fn summary(&self) -> String;
    /// Tokens (not padding) the policy read in this step, for throughput.
    fn tokens(&self) -> u64;
}

/// A run after some steps: enough to go on exactly as if it had never stopped.
pub struct TrainState<M, R> {
    pub model: M,
    pub optimizer: ModuleOptimizer,
    /// Records of the steps done so far; their count is the next step's number.
    pub metrics: Vec<R>,
}

impl<M, R> TrainState<M, R> {
    /// A run that has not taken a step.
    pub fn start(model: M, optimizer: &AdamW) -> TrainState<M, R> {
        TrainState { model, optimizer: optimizer.config().init(), metrics: Vec::new() }
    }
}

/// Called after every step with the state so far; an error stops the run.
pub type AfterStep<'a, M, R, E> = dyn FnMut(&TrainState<M, R>) -> Result<(), E> + 'a;

/// Trains from `state` over `batches` micro-batches in `order(epoch)` order to the end of
/// `schedule.epochs`, skipping the steps `state` has taken. `loss(model, i)` is micro-batch
/// `i`'s mean loss and its share of the record. After every step `after_step` sees the state
/// — to log, or to save it — and may stop the run with an error.
pub fn fit<M: Module, R: StepRecord, E>(
    mut state: TrainState<M, R>,
    batches: usize,
    schedule: &Schedule,
    order: &dyn Fn(usize) -> Vec<usize>,
    loss: &dyn Fn(&M, usize) -> (Tensor<1>, R),
    after_step: &mut AfterStep<M, R, E>,
) -> Result<TrainState<M, R>, E> {
    let k = schedule.grad_accum.max(1);
    let total = schedule.total_steps(batches);
    let warmup = warmup_steps(schedule.warmup_ratio, total);
    let mut step = 0u64;
    for epoch in 0..schedule.epochs {
        for group in order(epoch).chunks(k) {
            if step < state.metrics.len() as u64 {
                step += 1;
                continue;
            }
            // Each micro-batch's mean loss is scaled by 1/k: the summed gradients then equal
            // those of one batch k times as large.
            let mut accumulator = GradientsAccumulator::new();
            let mut parts = Vec::with_capacity(group.len());
            for &i in group {
                let (value, part) = loss(&state.model, i);
                parts.push(part);
                let scaled = value.div_scalar(group.len() as f64);
                accumulator.accumulate(&state.model, GradientsParams::from_grads(scaled.backward(), &state.model));
            }
            let mut grads = accumulator.grads();
            let grad_norm = clip_global_norm(&state.model, &mut grads, schedule.max_grad_norm.unwrap_or(f64::INFINITY));
            let lr = cosine_with_warmup(schedule.lr, step, warmup, total);
            state.model = state.optimizer.step(lr, state.model, grads);
            state.metrics.push(R::combine(&parts, step, epoch as u64, lr, grad_norm));
            after_step(&state)?;
            step += 1;
        }
    }
    Ok(state)
}

/// A seeded batch order per epoch, the same on every machine.
pub fn seeded_order(seed: u64, batches: usize) -> impl Fn(usize) -> Vec<usize> {
    move |epoch| {
        let mut idx: Vec<usize> = (0..batches).collect();
        idx.sort_by_key(|i| *blake3::hash(format!("{seed}:{epoch}:{i}").as_bytes()).as_bytes());
        idx
    }
}
