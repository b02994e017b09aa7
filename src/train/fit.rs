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
use crate::model::master::f32_masters;

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

/// What an objective logs per step: made from its micro-batches' records, as HF's trainer
/// logs a step with gradient accumulation — each micro-batch weighs the same.
pub trait StepRecord: Clone + Serialize + DeserializeOwned {
    /// One record from several: a step's from its micro-batches', or a micro-batch's from
    /// its equal parts' (which average exactly).
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

impl<M: Module, R> TrainState<M, R> {
    /// A run that has not taken a step. What trains in a model whose weights are bf16 gets an
    /// f32 master (`model::master`), so the optimiser's state and updates are f32.
    pub fn start(model: M, optimizer: &AdamW) -> TrainState<M, R> {
        TrainState { model: f32_masters(model), optimizer: optimizer.config().init(), metrics: Vec::new() }
    }
}

/// Called after every step with the state so far; an error stops the run.
pub type AfterStep<'a, M, R, E> = dyn FnMut(&TrainState<M, R>) -> Result<(), E> + 'a;

/// What an objective gives [`fit`]: micro-batch `i` in `parts(i)` equal parts, and
/// `loss(model, i, part)`: that part's loss — its share of the micro-batch's mean, so the
/// parts' losses sum to it — and the part's record (the parts' records average to the
/// micro-batch's). The parts of a micro-batch train at once, each on its own thread with its
/// own copy of the model's autodiff leaves, their gradients summed in order: the numbers are
/// one pass's up to rounding, and the same from run to run.
pub struct Objective<'a, M, R> {
    pub parts: &'a dyn Fn(usize) -> usize,
    pub loss: &'a (dyn Fn(&M, usize, usize) -> (Tensor<1>, R) + Sync),
}

/// Trains from `state` over `batches` micro-batches in `order(epoch)` order to the end of
/// `schedule.epochs`, skipping the steps `state` has taken, on `objective`. After every step
/// `after_step` sees the state — to log, or to save it — and may stop the run with an error.
pub fn fit<M: Module + Send, R: StepRecord + Send, E>(
    mut state: TrainState<M, R>,
    batches: usize,
    schedule: &Schedule,
    order: &dyn Fn(usize) -> Vec<usize>,
    objective: &Objective<M, R>,
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
                let (gradients, record) = micro_batch_gradients(&state.model, i, group.len(), objective);
                for grads in gradients {
                    accumulator.accumulate(&state.model, grads);
                }
                parts.push(record);
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

/// Micro-batch `i`'s gradients (scaled by `1 / group`), part by part — one part on this
/// thread, several each on a thread of its own — and its record, whatever its parts.
fn micro_batch_gradients<M: Module + Send, R: StepRecord + Send>(
    model: &M,
    i: usize,
    group: usize,
    objective: &Objective<M, R>,
) -> (Vec<GradientsParams>, R) {
    let part = |model: &M, p: usize| {
        let (value, record) = (objective.loss)(model, i, p);
        let grads = value.div_scalar(group as f64).backward();
        (GradientsParams::from_grads(grads, model), record)
    };
    let parts = (objective.parts)(i).max(1);
    if parts == 1 {
        let (grads, record) = part(model, 0);
        return (vec![grads], record);
    }
    let device = model.devices().into_iter().next();
    std::thread::scope(|scope| {
        let running: Vec<_> = (0..parts)
            .map(|p| {
                // Fresh autodiff leaves over the same weights (and parameter ids): each thread
                // records a graph of its own instead of contending for one.
                let copy = match &device {
                    Some(device) => model.clone().fork(device),
                    None => model.clone(),
                };
                let part = &part;
                scope.spawn(move || part(&copy, p))
            })
            .collect();
        let done: Vec<(GradientsParams, R)> =
            running.into_iter().map(|t| t.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect();
        let (gradients, records): (Vec<_>, Vec<_>) = done.into_iter().unzip();
        (gradients, R::combine(&records, 0, 0, 0.0, 0.0))
    })
}

/// A seeded batch order per epoch, the same on every machine.
pub fn seeded_order(seed: u64, batches: usize) -> impl Fn(usize) -> Vec<usize> {
    move |epoch| {
        let mut idx: Vec<usize> = (0..batches).collect();
        idx.sort_by_key(|i| *blake3::hash(format!("{seed}:{epoch}:{i}").as_bytes()).as_bytes());
        idx
    }
}
