//! Supervised fine-tuning: the negative log-likelihood of each row's completion given its
//! image and prompt, averaged over completion tokens (as TRL's SFT trainer does), through the
//! shared loop.

use burn::module::Module;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::fit::{self, AfterStep, Schedule, StepRecord, TrainState};
use crate::model::policy::{Policy, TokenBatch};

/// What is logged per step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SftMetrics {
    pub step: u64,
    pub epoch: u64,
    /// Mean negative log-likelihood per completion token.
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Tokens (not padding) of the rows the step trained on.
    #[serde(default)]
    pub tokens: u64,
}

impl StepRecord for SftMetrics {
    fn combine(parts: &[Self], step: u64, epoch: u64, lr: f64, grad_norm: f64) -> Self {
        let loss = parts.iter().map(|p| p.loss).sum::<f64>() / parts.len().max(1) as f64;
        SftMetrics { step, epoch, loss, lr, grad_norm, tokens: parts.iter().map(|p| p.tokens).sum() }
    }

    fn summary(&self) -> String {
        format!("loss {:.4}", self.loss)
    }

    fn tokens(&self) -> u64 {
        self.tokens
    }
}

/// A batch's loss: summed completion log-probs over the number of completion tokens, negated.
pub fn nll(model: &impl Policy, batch: &TokenBatch) -> Tensor<1> {
    let (summed, _) = model.completion_logps(batch);
    let tokens = batch.mask.clone().int().sum().float().cast(summed.dtype()).clamp_min(1.0);
    summed.sum().neg() / tokens
}

/// Trains from `state` to the end of `schedule.epochs` (see [`fit::fit`]).
pub fn train<M: Policy + Module + Send, E>(
    state: TrainState<M, SftMetrics>,
    batches: &[TokenBatch],
    schedule: &Schedule,
    order: &dyn Fn(usize) -> Vec<usize>,
    after_step: &mut AfterStep<M, SftMetrics, E>,
) -> Result<TrainState<M, SftMetrics>, E> {
    // One part per batch: the loss is a mean over the batch's tokens, which equal row counts
    // would not split evenly.
    let loss = |model: &M, i: usize, _part: usize| {
        let loss = nll(model, &batches[i]);
        let value = loss.clone().into_scalar::<f32>() as f64;
        let tokens = batches[i].text_tokens;
        (loss, SftMetrics { step: 0, epoch: 0, loss: value, lr: 0.0, grad_norm: 0.0, tokens })
    };
    let objective = fit::Objective { parts: &|_| 1, loss: &loss };
    fit::fit(state, batches.len(), schedule, order, &objective, after_step)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::policy::{Example, Sampling};
    use crate::model::tiny::TinyConfig;
    use crate::train::optim::AdamW;
    use burn::tensor::Device;
    use std::convert::Infallible;

    #[test]
    fn sft_teaches_the_answers_it_is_shown() {
        let device = Device::flex().autodiff();
        device.seed(2);
        let config =
            TinyConfig { image_size: 16, patch_size: 8, d_model: 32, layers: 1, heads: 2, d_ff: 64, max_tokens: 24 };
        let model = config.init(&device);
        let rows = |i: usize| {
            let (pixel, answer) = if i.is_multiple_of(2) { (0.1, "Dark.") } else { (0.9, "Light.") };
            Example { pixels: vec![pixel; 3 * 16 * 16], prompt: "Shade?", completion: answer }
        };
        let batches: Vec<TokenBatch> =
            (0..4).map(|b| TokenBatch::new((0..4).map(|i| rows(b * 4 + i)).collect(), 16, 24, &device)).collect();
        let schedule = Schedule {
            lr: 1e-2,
            epochs: 30,
            warmup_ratio: 0.0,
            max_grad_norm: Some(1.0),
            optimizer: AdamW::default(),
            grad_accum: 1,
        };
        let start = TrainState::start(model, &schedule.optimizer);
        let order = fit::seeded_order(0, batches.len());
        let Ok(state) = train(start, &batches, &schedule, &order, &mut |_| Ok::<(), Infallible>(()));
        let first = state.metrics[0].loss;
        let last = state.metrics.last().unwrap().loss;
        assert!(last < first / 10.0, "the loss fell only from {first} to {last}");
        // It answers from the image: dark → "Dark.", light → "Light.".
        let model = state.model.valid();
        let inner = Device::flex();
        let answer = |shade: f32| {
            let image = Tensor::<3>::ones([3, 16, 16], &inner).mul_scalar(shade);
            model.generate_from(image, "Shade?", &Sampling { max_new_tokens: 8, ..Sampling::default() }).text
        };
        assert_eq!((answer(0.1).as_str(), answer(0.9).as_str()), ("Dark.", "Light."));
    }
}
