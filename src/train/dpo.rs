//! The DPO training loop over prepared batches: chosen and rejected of a batch through the
//! policy, reference log-probs computed once up front, the loss as TRL computes it, global-norm
//! clipping, HF's schedule, AdamW — and the metrics TRL logs, per step.

use burn::optim::{GradientsAccumulator, GradientsParams};
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
    /// Micro-batches whose gradients are summed before one optimiser step.
    pub grad_accum: usize,
    /// Weight of an added NLL term on the chosen response (RPO); 0 for plain DPO.
    pub sft_weight: f64,
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
    side_logps_and_mean(model, side).0
}

/// Summed and per-token mean completion log-probs of one side.
fn side_logps_and_mean(model: &TinyVlm, side: &Side) -> (Tensor<1>, Tensor<1>) {
    completion_logps(model.forward(side.images.clone(), side.tokens.clone()), side.tokens.clone(), side.mask.clone())
}

/// The metrics of one step from those of its micro-batches (equal-sized ones average exactly).
fn average(parts: &[StepMetrics]) -> StepMetrics {
    let n = parts.len().max(1) as f64;
    let avg = |f: fn(&StepMetrics) -> f64| parts.iter().map(f).sum::<f64>() / n;
    StepMetrics {
        step: parts[0].step,
        epoch: parts[0].epoch,
        loss: avg(|m| m.loss),
        rewards_chosen: avg(|m| m.rewards_chosen),
        rewards_rejected: avg(|m| m.rewards_rejected),
        rewards_margins: avg(|m| m.rewards_margins),
        rewards_accuracies: avg(|m| m.rewards_accuracies),
        logps_chosen: avg(|m| m.logps_chosen),
        logps_rejected: avg(|m| m.logps_rejected),
        lr: 0.0,
        grad_norm: 0.0,
    }
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
    let k = settings.grad_accum.max(1);
    let total = (batches.len().div_ceil(k) * settings.epochs) as u64;
    let warmup = warmup_steps(settings.warmup_ratio, total);
    let mut optimizer = settings.optimizer.config().init();
    let mut metrics = Vec::with_capacity(total as usize);
    let mut step = 0u64;
    for epoch in 0..settings.epochs {
        for group in order(epoch).chunks(k) {
            // Each micro-batch's mean loss is scaled by 1/k: the summed gradients then equal
            // those of one batch k times as large.
            let mut accumulator = GradientsAccumulator::new();
            let mut parts = Vec::with_capacity(group.len());
            for &i in group {
                let batch = &batches[i];
                let (chosen, chosen_token_mean) = side_logps_and_mean(&model, &batch.chosen);
                let rejected = side_logps(&model, &batch.rejected);
                let (ref_chosen, ref_rejected) = reference[i].clone();
                let out = dpo_loss(chosen.clone(), rejected.clone(), ref_chosen, ref_rejected, &settings.loss);
                let mut loss = out.losses.mean();
                if settings.sft_weight != 0.0 {
                    // RPO-style: the chosen response's per-token negative log-likelihood.
                    loss = loss + chosen_token_mean.mean().neg().mul_scalar(settings.sft_weight);
                }
                let margins = out.chosen_rewards.clone() - out.rejected_rewards.clone();
                parts.push(StepMetrics {
                    step,
                    epoch: epoch as u64,
                    loss: loss.clone().into_scalar::<f32>() as f64,
                    rewards_chosen: mean(out.chosen_rewards.detach()),
                    rewards_rejected: mean(out.rejected_rewards.detach()),
                    rewards_margins: mean(margins.clone().detach()),
                    rewards_accuracies: mean(margins.greater_elem(0.0).float()),
                    logps_chosen: mean(chosen.detach()),
                    logps_rejected: mean(rejected.detach()),
                    lr: 0.0,
                    grad_norm: 0.0,
                });
                let scaled = loss.div_scalar(group.len() as f64);
                accumulator.accumulate(&model, GradientsParams::from_grads(scaled.backward(), &model));
            }
            let mut grads = accumulator.grads();
            let grad_norm = clip_global_norm(&model, &mut grads, settings.max_grad_norm.unwrap_or(f64::INFINITY));
            let lr = cosine_with_warmup(settings.lr, step, warmup, total);
            model = optimizer.step(lr, model, grads);
            let m = StepMetrics { lr, grad_norm, ..average(&parts) };
            on_step(&m);
            metrics.push(m);
            step += 1;
        }
    }
    (model, metrics)
}

/// The share of pairs whose implicit reward (β·(policy − reference) log-ratio) favours the
/// chosen response strictly — `rewards/accuracies` on data the policy did not train on.
pub fn reward_accuracy(policy: &TinyVlm, reference: &TinyVlm, batches: &[Batch], beta: f64) -> f64 {
    let (mut right, mut total) = (0.0, 0.0);
    for batch in batches {
        let chosen = (side_logps(policy, &batch.chosen) - side_logps(reference, &batch.chosen)).mul_scalar(beta);
        let rejected = (side_logps(policy, &batch.rejected) - side_logps(reference, &batch.rejected)).mul_scalar(beta);
        let [n] = chosen.dims();
        right += mean((chosen - rejected).greater_elem(0.0).float()) * n as f64;
        total += n as f64;
    }
    if total == 0.0 { 0.0 } else { right / total }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tiny::TinyConfig;
    use crate::model::tokenizer::{BOS, ByteTokenizer, EOS, PAD};
    use crate::train::losses::LossType;
    use burn::tensor::{Device, TensorData};

    fn side(texts: &[(&str, &str)], device: &Device) -> Side {
        let len = 24;
        let t = ByteTokenizer;
        let (mut tokens, mut mask) = (Vec::new(), Vec::new());
        for (prompt, completion) in texts {
            let p: Vec<i64> = std::iter::once(BOS).chain(t.encode(prompt)).map(i64::from).collect();
            let c: Vec<i64> = t.encode(completion).into_iter().chain([EOS]).map(i64::from).collect();
            let mut row: Vec<i64> = p.iter().chain(&c).copied().collect();
            let mut m: Vec<bool> = p.iter().map(|_| false).chain(c.iter().map(|_| true)).collect();
            row.resize(len, i64::from(PAD));
            m.resize(len, false);
            tokens.extend(row);
            mask.extend(m);
        }
        let n = texts.len();
        Side {
            images: Tensor::<4>::ones([n, 3, 16, 16], device).mul_scalar(0.25),
            tokens: Tensor::from_data(TensorData::new(tokens, [n, len]), device),
            mask: Tensor::from_data(TensorData::new(mask, [n, len]), device),
        }
    }

    fn batch(rows: &[usize], device: &Device) -> Batch {
        let data = [("Q0", "aa", "bbb"), ("Q1", "cc", "d"), ("Q2", "eee", "ff"), ("Q3", "g", "hh")];
        let chosen: Vec<(&str, &str)> = rows.iter().map(|&i| (data[i].0, data[i].1)).collect();
        let rejected: Vec<(&str, &str)> = rows.iter().map(|&i| (data[i].0, data[i].2)).collect();
        Batch { chosen: side(&chosen, device), rejected: side(&rejected, device) }
    }

    /// Pairs whose chosen answer starts with "a" and rejected with "z", after varied prompts.
    fn rule_batches(range: std::ops::Range<usize>, per_batch: usize, device: &Device) -> Vec<Batch> {
        let word = |i: usize, salt: usize| -> String {
            (0..3).map(|j| (b'b' + ((i * 7 + j * 5 + salt) % 20) as u8) as char).collect()
        };
        let rows: Vec<(String, String, String)> =
            range.map(|i| (format!("Item {i}?"), format!("a{}", word(i, 1)), format!("z{}", word(i, 2)))).collect();
        rows.chunks(per_batch)
            .map(|chunk| {
                let chosen: Vec<(&str, &str)> = chunk.iter().map(|r| (r.0.as_str(), r.1.as_str())).collect();
                let rejected: Vec<(&str, &str)> = chunk.iter().map(|r| (r.0.as_str(), r.2.as_str())).collect();
                Batch { chosen: side(&chosen, device), rejected: side(&rejected, device) }
            })
            .collect()
    }

    #[test]
    fn training_learns_a_rule_that_holds_on_held_out_pairs() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let config =
            TinyConfig { image_size: 16, patch_size: 8, d_model: 32, layers: 1, heads: 2, d_ff: 64, max_tokens: 24 };
        let reference = config.init(&device);
        let train_set = rule_batches(0..32, 8, &device);
        let held_out = rule_batches(100..132, 8, &device);
        let settings = Settings {
            loss: LossConfig { loss: LossType::Sigmoid, beta: 0.1, label_smoothing: 0.0 },
            lr: 2e-3,
            epochs: 4,
            warmup_ratio: 0.1,
            max_grad_norm: Some(1.0),
            optimizer: AdamW::default(),
            grad_accum: 1,
            sft_weight: 0.0,
        };
        let before = reward_accuracy(&reference, &reference, &held_out, 0.1);
        let (policy, _) = train(reference.clone(), &train_set, &settings, &|_| (0..4).collect(), &mut |_| {});
        let after = reward_accuracy(&policy, &reference, &held_out, 0.1);
        assert_eq!(before, 0.0, "policy = reference gives no strict preference");
        eprintln!("held-out reward accuracy: {before} before, {after} after training");
        assert!(after >= 0.8, "held-out reward accuracy {after}");
    }

    #[test]
    fn the_sft_term_adds_the_chosen_nll_to_the_loss() {
        let device = Device::flex().autodiff();
        let config =
            TinyConfig { image_size: 16, patch_size: 8, d_model: 32, layers: 1, heads: 2, d_ff: 64, max_tokens: 24 };
        let model = config.init(&device);
        let data = [batch(&[0, 1], &device)];
        let nll = -mean(side_logps_and_mean(&model, &data[0].chosen).1);
        let settings = Settings {
            loss: LossConfig { loss: LossType::Sigmoid, beta: 0.1, label_smoothing: 0.0 },
            lr: 1e-3,
            epochs: 1,
            warmup_ratio: 0.0,
            max_grad_norm: None,
            optimizer: AdamW::default(),
            grad_accum: 1,
            sft_weight: 0.5,
        };
        let (_, metrics) = train(model, &data, &settings, &|_| vec![0], &mut |_| {});
        let want = std::f64::consts::LN_2 + 0.5 * nll;
        assert!((metrics[0].loss - want).abs() < 1e-4, "{} vs {want}", metrics[0].loss);
    }

    #[test]
    fn accumulating_k_micro_batches_equals_one_batch_k_times_larger() {
        let device = Device::flex().autodiff();
        let config =
            TinyConfig { image_size: 16, patch_size: 8, d_model: 32, layers: 1, heads: 2, d_ff: 64, max_tokens: 24 };
        let model = config.init(&device);
        let settings = |grad_accum| Settings {
            loss: LossConfig { loss: LossType::Sigmoid, beta: 0.1, label_smoothing: 0.0 },
            lr: 1e-3,
            epochs: 1,
            warmup_ratio: 0.0,
            max_grad_norm: Some(1.0),
            optimizer: AdamW::default(),
            grad_accum,
            sft_weight: 0.0,
        };
        let whole = [batch(&[0, 1, 2, 3], &device)];
        let halves = [batch(&[0, 1], &device), batch(&[2, 3], &device)];
        let (one, m1) = train(model.clone(), &whole, &settings(1), &|_| vec![0], &mut |_| {});
        let (two, m2) = train(model, &halves, &settings(2), &|_| vec![0, 1], &mut |_| {});
        assert_eq!((m1.len(), m2.len()), (1, 1));
        assert!((m1[0].loss - m2[0].loss).abs() < 1e-6);
        assert!(
            (m1[0].grad_norm - m2[0].grad_norm).abs() < 1e-4 * m1[0].grad_norm.max(1.0),
            "{} vs {}",
            m1[0].grad_norm,
            m2[0].grad_norm
        );
        let probe = batch(&[0, 1, 2, 3], &device).chosen;
        let a: Vec<f32> = one.forward(probe.images.clone(), probe.tokens.clone()).into_data().try_to_vec().unwrap();
        let b: Vec<f32> = two.forward(probe.images, probe.tokens).into_data().try_to_vec().unwrap();
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "the two updates differ by {worst}");
    }
}
