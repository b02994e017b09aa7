//! The DPO training loop over prepared batches: chosen and rejected of a batch through the
//! policy, reference log-probs computed once up front, the loss as TRL computes it, global-norm
//! clipping, HF's schedule, AdamW — and the metrics TRL logs, per step.

use burn::optim::GradientsParams;
use burn::tensor::{Bool, Int, Tensor};
use serde::Serialize;

use super::clip::clip_global_norm;
use super::logps::completion_logps;
use super::losses::{LossConfig, dpo_loss};
use super::optim::AdamW;
use super::schedule::{cosine_with_warmup, warmup_steps};
use crate::model::tiny::TinyVlm;

/// One side of a batch of pairs: images and token rows with their completion masks.
#[derive(Clone)]
pub struct Side {
    pub images: Tensor<4>,
    pub tokens: Tensor<2, Int>,
    pub mask: Tensor<2, Bool>,
}

#[derive(Clone)]
pub struct Batch {
    pub chosen: Side,
    pub rejected: Side,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub loss: LossConfig,
    pub lr: f64,
    pub epochs: usize,
    pub warmup_ratio: f64,
    pub max_grad_norm: Option<f64>,
    pub optimizer: AdamW,
}

/// What TRL logs at every step, under TRL's names.
#[derive(Debug, Clone, Serialize, PartialEq)]
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
}

fn side_logps(model: &TinyVlm, side: &Side) -> Tensor<1> {
    completion_logps(model.forward(side.images.clone(), side.tokens.clone()), side.tokens.clone(), side.mask.clone()).0
}

fn mean(t: Tensor<1>) -> f64 {
    t.mean().into_scalar::<f32>() as f64
}

/// Trains `model` on `order`-shuffled batches for `settings.epochs`; `order(epoch)` gives the
/// batch order of an epoch (seeded by the caller). Returns the model and per-step metrics.
pub fn train(
    mut model: TinyVlm,
    batches: &[Batch],
    settings: &Settings,
    order: &dyn Fn(usize) -> Vec<usize>,
    on_step: &mut dyn FnMut(&StepMetrics),
) -> (TinyVlm, Vec<StepMetrics>) {
    // The reference is the model before training: its log-probs are computed once.
    let reference: Vec<(Tensor<1>, Tensor<1>)> = batches
        .iter()
        .map(|b| (side_logps(&model, &b.chosen).detach(), side_logps(&model, &b.rejected).detach()))
        .collect();
    let total = (batches.len() * settings.epochs) as u64;
    let warmup = warmup_steps(settings.warmup_ratio, total);
    let mut optimizer = settings.optimizer.config().init();
    let mut metrics = Vec::with_capacity(total as usize);
    let mut step = 0u64;
    for epoch in 0..settings.epochs {
        for i in order(epoch) {
            let batch = &batches[i];
            let chosen = side_logps(&model, &batch.chosen);
            let rejected = side_logps(&model, &batch.rejected);
            let (ref_chosen, ref_rejected) = reference[i].clone();
            let out = dpo_loss(chosen.clone(), rejected.clone(), ref_chosen, ref_rejected, &settings.loss);
            let loss = out.losses.mean();
            let margins = out.chosen_rewards.clone() - out.rejected_rewards.clone();
            let accuracy = mean(margins.clone().greater_elem(0.0).float());
            let record_loss = loss.clone().into_scalar::<f32>() as f64;
            let mut grads = GradientsParams::from_grads(loss.backward(), &model);
            let grad_norm = match settings.max_grad_norm {
                Some(max) => clip_global_norm(&model, &mut grads, max),
                None => clip_global_norm(&model, &mut grads, f64::INFINITY),
            };
            let lr = cosine_with_warmup(settings.lr, step, warmup, total);
            model = optimizer.step(lr, model, grads);
            let m = StepMetrics {
                step,
                epoch: epoch as u64,
                loss: record_loss,
                rewards_chosen: mean(out.chosen_rewards.detach()),
                rewards_rejected: mean(out.rejected_rewards.detach()),
                rewards_margins: mean(margins.detach()),
                rewards_accuracies: accuracy,
                logps_chosen: mean(chosen.detach()),
                logps_rejected: mean(rejected.detach()),
                lr,
                grad_norm,
            };
            on_step(&m);
            metrics.push(m);
            step += 1;
        }
    }
    (model, metrics)
}
