//! The DPO training loop over prepared batches: chosen and rejected of a batch through the
//! policy, reference log-probs computed once up front, the loss as TRL computes it, global-norm
//! clipping, HF's schedule, AdamW — and the metrics TRL logs, per step. A run can stop after
//! any step and go on from its [`TrainState`] to the same end.

use std::borrow::Cow;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::fit::{self, Schedule, StepRecord};
use super::losses::{LossConfig, dpo_loss};
use crate::model::policy::{Policy, TokenBatch};

/// A batch of pairs: the chosen and the rejected completions of the same rows, as one batch
/// — chosen rows first — that a single forward pass serves, as TRL's `concatenated_forward`
/// does: half the passes, each over twice the rows.
#[derive(Clone)]
pub struct Batch {
    both: TokenBatch,
    pairs: usize,
}

impl Batch {
    pub fn new(chosen: &TokenBatch, rejected: &TokenBatch) -> Batch {
        Batch { both: TokenBatch::concat(chosen, rejected), pairs: chosen.tokens.dims()[0] }
    }

    /// The chosen side alone (padded as in the batch).
    #[cfg(test)]
    pub fn chosen(&self) -> TokenBatch {
        self.both.rows(0, self.pairs)
    }

    /// Part `part` of `parts` equal ones (`parts` divides `pairs`): its pairs, in order.
    fn part(&self, part: usize, parts: usize) -> Batch {
        let n = self.pairs / parts;
        Batch::new(&self.both.rows(part * n, n), &self.both.rows(self.pairs + part * n, n))
    }

    /// A policy's summed log-probs of the chosen and the rejected rows, and the chosen rows'
    /// per-token means, from one forward pass.
    fn logps<P: Policy>(&self, policy: &P) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
        let (sums, means) = policy.completion_logps(&self.both);
        let n = self.pairs;
        (sums.clone().narrow(0, 0, n), sums.narrow(0, n, n), means.narrow(0, 0, n))
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub loss: LossConfig,
    /// Weight of an added NLL term on the chosen response (RPO); 0 for plain DPO.
    pub sft_weight: f64,
    /// How to optimise.
    pub schedule: Schedule,
}

impl Settings {
    /// Optimiser steps in the whole run.
    pub fn total_steps(&self, batches: usize) -> u64 {
        self.schedule.total_steps(batches)
    }
}

/// What TRL logs at every step, under TRL's names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepMetrics {
    pub step: u64,
    pub epoch: u64,
    pub loss: f64,
    #[serde(rename = "rewards/chosen")]
    pub rewards_chosen: f64,
    #[serde(rename = "rewards/rejected")]
    pub rewards_rejected: f64,
    #[serde(rename = "rewards/margins")]
    pub rewards_margins: f64,
    /// Share of pairs whose chosen reward is strictly above the rejected one.
    #[serde(rename = "rewards/accuracies")]
    pub rewards_accuracies: f64,
    #[serde(rename = "logps/chosen")]
    pub logps_chosen: f64,
    #[serde(rename = "logps/rejected")]
    pub logps_rejected: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Tokens (not padding) of the chosen and rejected rows the step trained on.
    #[serde(default)]
    pub tokens: u64,
}

/// Reference log-probs of every batch: (chosen, rejected), summed per row, detached.
pub type ReferenceLogps = Vec<(Tensor<1>, Tensor<1>)>;

/// What the policy is compared with: log-probs computed once, or the frozen reference model
/// itself, evaluated beside every step (no gradients recorded).
pub enum Reference<M> {
    Logps(ReferenceLogps),
    Model(M),
}

impl<M: Policy + Module> Reference<M> {
    /// The reference's log-probs of `batch`, which is part `part` of batch `i` (all of it as
    /// part 0 of one).
    fn logps(&self, i: usize, batch: &Batch, part: usize) -> (Tensor<1>, Tensor<1>) {
        match self {
            Reference::Logps(logps) => {
                let share = |t: &Tensor<1>| t.clone().narrow(0, part * batch.pairs, batch.pairs);
                (share(&logps[i].0), share(&logps[i].1))
            }
            Reference::Model(model) => reference_pair(model, batch),
        }
    }
}

/// A frozen model's log-probs of a batch's chosen and rejected sides, off the autodiff graph.
fn reference_pair<P: Policy>(reference: &P, batch: &Batch) -> (Tensor<1>, Tensor<1>) {
    let (chosen, rejected, _) = batch.logps(reference);
    (chosen.detach(), rejected.detach())
}

/// A frozen copy of `model`, for a reference: it computes exactly as the policy does — the
/// same autodiff ops, so at step 0 the two agree to the bit, in bf16 too — but records no
/// graph (a recording model would keep every forward's graph alive).
pub fn frozen<M: Module>(model: &M) -> M {
    model.clone().map(&mut Freeze)
}

/// Detaches every float weight into a tensor of its own that records nothing.
struct Freeze;

impl ModuleMapper for Freeze {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|weights| weights.detach()).set_require_grad(false)
    }
}

/// The reference model's log-probs of every batch, computed once. Give it a [`frozen`] model.
pub fn reference_logps<P: Policy>(reference: &P, batches: &[Batch]) -> ReferenceLogps {
    batches.iter().map(|b| reference_pair(reference, b)).collect()
}

/// A DPO run after some steps.
pub type TrainState<M> = fit::TrainState<M, StepMetrics>;

impl StepRecord for StepMetrics {
    fn combine(parts: &[Self], step: u64, epoch: u64, lr: f64, grad_norm: f64) -> Self {
        let n = parts.len().max(1) as f64;
        let avg = |f: fn(&StepMetrics) -> f64| parts.iter().map(f).sum::<f64>() / n;
        StepMetrics {
            step,
            epoch,
            loss: avg(|m| m.loss),
            rewards_chosen: avg(|m| m.rewards_chosen),
            rewards_rejected: avg(|m| m.rewards_rejected),
            rewards_margins: avg(|m| m.rewards_margins),
            rewards_accuracies: avg(|m| m.rewards_accuracies),
            logps_chosen: avg(|m| m.logps_chosen),
            logps_rejected: avg(|m| m.logps_rejected),
            lr,
            grad_norm,
            tokens: parts.iter().map(|m| m.tokens).sum(),
        }
    }

    fn summary(&self) -> String {
        format!("loss {:.4} margin {:.3} accuracy {:.2}", self.loss, self.rewards_margins, self.rewards_accuracies)
    }

    fn tokens(&self) -> u64 {
        self.tokens
    }
}

fn mean(t: Tensor<1>) -> f64 {
    t.mean().into_scalar::<f32>() as f64
}

/// The loss of one micro-batch, with its share of the step's metrics.
fn micro_batch<P: Policy>(
    model: &P,
    batch: &Batch,
    reference: (Tensor<1>, Tensor<1>),
    settings: &Settings,
) -> (Tensor<1>, StepMetrics) {
    let (chosen, rejected, chosen_token_mean) = batch.logps(model);
    let out = dpo_loss(chosen.clone(), rejected.clone(), reference.0, reference.1, &settings.loss);
    let mut loss = out.losses.mean();
    if settings.sft_weight != 0.0 {
        // RPO-style: the chosen response's per-token negative log-likelihood.
        loss = loss + chosen_token_mean.mean().neg().mul_scalar(settings.sft_weight);
    }
    let margins = out.chosen_rewards.clone() - out.rejected_rewards.clone();
    let metrics = StepMetrics {
        step: 0,
        epoch: 0,
        loss: loss.clone().into_scalar::<f32>() as f64,
        rewards_chosen: mean(out.chosen_rewards.detach()),
        rewards_rejected: mean(out.rejected_rewards.detach()),
        rewards_margins: mean(margins.clone().detach()),
        rewards_accuracies: mean(margins.greater_elem(0.0).float()),
        logps_chosen: mean(chosen.detach()),
        logps_rejected: mean(rejected.detach()),
        lr: 0.0,
        grad_norm: 0.0,
        tokens: batch.both.text_tokens,
    };
    (loss, metrics)
}

/// Trains from `state` on `order`-shuffled batches to the end of `settings.epochs`, skipping
/// the steps `state` has already taken; `order(epoch)` gives an epoch's batch order (seeded by
/// the caller, so a resumed run sees the same order). After every step `after_step` sees the
/// state — to log, or to save it — and may stop the run with an error.
///
/// On flex a batch trains in as many equal parts at once as its pairs and flex's threads
/// allow (see [`fit::Objective`]).
pub fn train<M: Policy + Module + Send + Sync, E>(
    state: TrainState<M>,
    batches: &[Batch],
    reference: &Reference<M>,
    settings: &Settings,
    order: &dyn Fn(usize) -> Vec<usize>,
    after_step: &mut dyn FnMut(&TrainState<M>) -> Result<(), E>,
) -> Result<TrainState<M>, E> {
    let threads = state.model.devices().first().map_or(1, crate::model::device::train_threads);
    let parts = |i: usize| greatest_common_divisor(batches[i].pairs, threads.max(1));
    let loss = |model: &M, i: usize, part: usize| {
        let n = parts(i);
        let batch = if n == 1 { Cow::Borrowed(&batches[i]) } else { Cow::Owned(batches[i].part(part, n)) };
        let (loss, metrics) = micro_batch(model, &batch, reference.logps(i, &batch, part), settings);
        (loss.div_scalar(n as f64), metrics)
    };
    let objective = fit::Objective { parts: &parts, loss: &loss };
    fit::fit(state, batches.len(), &settings.schedule, order, &objective, after_step)
}

fn greatest_common_divisor(a: usize, b: usize) -> usize {
    if b == 0 { a } else { greatest_common_divisor(b, a % b) }
}

/// The share of pairs whose implicit reward (β·(policy − reference) log-ratio) favours the
/// chosen response strictly — `rewards/accuracies` on data the policy did not train on.
pub fn reward_accuracy<P: Policy>(policy: &P, reference: &P, batches: &[Batch], beta: f64) -> f64 {
    let (mut right, mut total) = (0.0, 0.0);
    for batch in batches {
        let (policy_chosen, policy_rejected, _) = batch.logps(policy);
        let (reference_chosen, reference_rejected, _) = batch.logps(reference);
        let chosen = (policy_chosen - reference_chosen).mul_scalar(beta);
        let rejected = (policy_rejected - reference_rejected).mul_scalar(beta);
        let [n] = chosen.dims();
        right += mean((chosen - rejected).greater_elem(0.0).float()) * n as f64;
        total += n as f64;
    }
    if total == 0.0 { 0.0 } else { right / total }
}

#[cfg(test)]
mod tests;
