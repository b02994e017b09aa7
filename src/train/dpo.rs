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
mod tests {
    use super::*;
    use crate::model::policy::Example;
    use crate::model::tiny::{TinyConfig, TinyVlm};
    use crate::train::losses::LossType;
    use crate::train::optim::AdamW;
    use burn::tensor::Device;
    use std::convert::Infallible;

    const SMALL: TinyConfig =
        TinyConfig { image_size: 16, patch_size: 8, d_model: 32, layers: 1, heads: 2, d_ff: 64, max_tokens: 24 };

    /// Sigmoid DPO at β 0.1 with `sft_weight` and `schedule`.
    fn sigmoid(sft_weight: f64, schedule: Schedule) -> Settings {
        Settings { loss: LossConfig { loss: LossType::Sigmoid, beta: 0.1, label_smoothing: 0.0 }, sft_weight, schedule }
    }

    /// `epochs` at `lr`: no warm-up, clipping at 1, AdamW's defaults, no accumulation.
    fn schedule(lr: f64, epochs: usize) -> Schedule {
        Schedule { lr, epochs, warmup_ratio: 0.0, max_grad_norm: Some(1.0), optimizer: AdamW::default(), grad_accum: 1 }
    }

    fn side(texts: &[(&str, &str)], device: &Device) -> TokenBatch {
        let rows = texts
            .iter()
            .map(|(prompt, completion)| Example { pixels: vec![0.25; 3 * 16 * 16], prompt, completion })
            .collect();
        TokenBatch::new(rows, 16, 24, device)
    }

    /// Trains `model` from scratch against itself as the reference.
    pub(crate) fn run(
        model: TinyVlm,
        batches: &[Batch],
        settings: &Settings,
        order: &dyn Fn(usize) -> Vec<usize>,
    ) -> (TinyVlm, Vec<StepMetrics>) {
        let reference = Reference::Logps(reference_logps(&frozen(&model), batches));
        let start = TrainState::start(model, &settings.schedule.optimizer);
        let Ok(state) = train(start, batches, &reference, settings, order, &mut |_| Ok::<(), Infallible>(()));
        (state.model, state.metrics)
    }

    fn batch(rows: &[usize], device: &Device) -> Batch {
        let data = [("Q0", "aa", "bbb"), ("Q1", "cc", "d"), ("Q2", "eee", "ff"), ("Q3", "g", "hh")];
        let chosen: Vec<(&str, &str)> = rows.iter().map(|&i| (data[i].0, data[i].1)).collect();
        let rejected: Vec<(&str, &str)> = rows.iter().map(|&i| (data[i].0, data[i].2)).collect();
        Batch::new(&side(&chosen, device), &side(&rejected, device))
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
                Batch::new(&side(&chosen, device), &side(&rejected, device))
            })
            .collect()
    }

    #[test]
    fn training_learns_a_rule_that_holds_on_held_out_pairs() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let reference = SMALL.init(&device);
        let train_set = rule_batches(0..32, 8, &device);
        let held_out = rule_batches(100..132, 8, &device);
        let settings = sigmoid(0.0, Schedule { warmup_ratio: 0.1, ..schedule(2e-3, 4) });
        let before = reward_accuracy(&reference, &reference, &held_out, 0.1);
        let (policy, _) = run(reference.clone(), &train_set, &settings, &|_| (0..4).collect());
        let after = reward_accuracy(&policy, &reference, &held_out, 0.1);
        assert_eq!(before, 0.0, "policy = reference gives no strict preference");
        eprintln!("held-out reward accuracy: {before} before, {after} after training");
        assert!(after >= 0.8, "held-out reward accuracy {after}");
    }

    #[test]
    fn the_sft_term_adds_the_chosen_nll_to_the_loss() {
        let device = Device::flex().autodiff();
        let model = SMALL.init(&device);
        let data = [batch(&[0, 1], &device)];
        let nll = -mean(model.completion_logps(&data[0].chosen()).1);
        let settings = sigmoid(0.5, Schedule { max_grad_norm: None, ..schedule(1e-3, 1) });
        let (_, metrics) = run(model, &data, &settings, &|_| vec![0]);
        let want = std::f64::consts::LN_2 + 0.5 * nll;
        assert!((metrics[0].loss - want).abs() < 1e-4, "{} vs {want}", metrics[0].loss);
    }

    #[test]
    fn accumulating_k_micro_batches_equals_one_batch_k_times_larger() {
        let device = Device::flex().autodiff();
        let model = SMALL.init(&device);
        let settings = |grad_accum| sigmoid(0.0, Schedule { grad_accum, ..schedule(1e-3, 1) });
        let whole = [batch(&[0, 1, 2, 3], &device)];
        let halves = [batch(&[0, 1], &device), batch(&[2, 3], &device)];
        let (one, m1) = run(model.clone(), &whole, &settings(1), &|_| vec![0]);
        let (two, m2) = run(model, &halves, &settings(2), &|_| vec![0, 1]);
        assert_eq!((m1.len(), m2.len()), (1, 1));
        assert!((m1[0].loss - m2[0].loss).abs() < 1e-6);
        assert!(
            (m1[0].grad_norm - m2[0].grad_norm).abs() < 1e-4 * m1[0].grad_norm.max(1.0),
            "{} vs {}",
            m1[0].grad_norm,
            m2[0].grad_norm
        );
        let probe = batch(&[0, 1, 2, 3], &device).chosen();
        let a: Vec<f32> = one.forward(probe.images.clone(), probe.tokens.clone()).into_data().try_to_vec().unwrap();
        let b: Vec<f32> = two.forward(probe.images, probe.tokens).into_data().try_to_vec().unwrap();
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "the two updates differ by {worst}");
    }

    #[test]
    fn a_batch_split_over_threads_trains_as_one_pass_does() {
        let device = Device::flex().autodiff();
        let model = SMALL.init(&device);
        // Four pairs and two, accumulated into one step: with four threads the first splits
        // in four and the second in two, and the step's record must still weigh the two
        // micro-batches alike, as one thread does.
        let data = [batch(&[0, 1, 2, 3], &device), batch(&[1, 2], &device)];
        let settings = sigmoid(0.5, Schedule { grad_accum: 2, ..schedule(1e-2, 2) });
        let on = |threads, reference: &Reference<TinyVlm>| {
            // flex splits a batch over the threads of the pool it trains in.
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let start = TrainState::start(model.clone(), &settings.schedule.optimizer);
            let Ok(state) = pool.install(|| {
                train(start, &data, reference, &settings, &|_| vec![0, 1], &mut |_| Ok::<(), Infallible>(()))
            });
            (weights(&state.model), state.metrics)
        };
        let logps = Reference::Logps(reference_logps(&frozen(&model), &data));
        let (one, records) = on(1, &logps);
        for (threads, reference) in [(2, &logps), (4, &logps), (4, &Reference::Model(frozen(&model)))] {
            let (split, split_records) = on(threads, reference);
            let worst = one.iter().zip(&split).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-4, "{threads} threads: the weights differ by {worst}");
            for (a, b) in records.iter().zip(&split_records) {
                let close = |x: f64, y: f64| (x - y).abs() < 1e-5 * x.abs().max(1.0);
                assert!(close(a.loss, b.loss) && close(a.rewards_margins, b.rewards_margins), "{a:?} vs {b:?}");
                assert!(close(a.logps_chosen, b.logps_chosen) && close(a.grad_norm, b.grad_norm), "{a:?} vs {b:?}");
                assert_eq!(a.tokens, b.tokens);
            }
        }
    }

    fn weights(model: &TinyVlm) -> Vec<f32> {
        let probe = batch(&[0, 1, 2, 3], &model.devices()[0]).chosen();
        model.forward(probe.images, probe.tokens).into_data().try_to_vec().unwrap()
    }

    /// Stops a run of `trained` (the model, or it with LoRA adapters) after `stop_after`
    /// steps (saving there), resumes it from the save and returns the final model; `None` for
    /// `stop_after` runs it through in one go. The reference is `model`.
    fn stop_and_resume(model: TinyVlm, trained: TinyVlm, stop_after: Option<usize>) -> (TinyVlm, Vec<StepMetrics>) {
        let device = model.devices()[0].clone();
        let data: Vec<Batch> = (0..4).map(|i| batch(&[i, (i + 1) % 4], &device)).collect();
        let settings = sigmoid(
            0.0,
            Schedule {
                warmup_ratio: 0.25,
                optimizer: AdamW { weight_decay: 0.01, ..AdamW::default() },
                ..schedule(1e-2, 2)
            },
        );
        let reference = Reference::Logps(reference_logps(&frozen(&model), &data));
        let order = |epoch: usize| if epoch == 0 { vec![2, 0, 3, 1] } else { vec![1, 3, 0, 2] };
        let dir = tempfile::tempdir().unwrap();
        let start = TrainState::start(trained.clone(), &settings.schedule.optimizer);
        let mut stop = |state: &TrainState<TinyVlm>| {
            if Some(state.metrics.len()) == stop_after {
                super::super::resume::save(state, dir.path()).unwrap();
                return Err("stopped");
            }
            Ok(())
        };
        let state = match train(start, &data, &reference, &settings, &order, &mut stop) {
            Ok(state) => state,
            Err(_) => {
                let resumed =
                    super::super::resume::load(dir.path(), trained, &settings.schedule.optimizer).unwrap().unwrap();
                assert_eq!(resumed.metrics.len(), stop_after.unwrap());
                let Ok(state) = train(resumed, &data, &reference, &settings, &order, &mut |_| Ok::<(), Infallible>(()));
                state
            }
        };
        (state.model.valid().materialize(), state.metrics)
    }

    #[test]
    fn a_run_stopped_and_resumed_ends_with_the_same_weights_as_one_run() {
        let device = Device::flex().autodiff();
        let model = SMALL.init(&device);
        let spec =
            crate::model::lora::LoraSpec { r: 2, alpha: 4.0, targets: vec![crate::model::lora::LoraTarget::Attention] };
        // LoRA's down-projections start random: made once, so both runs start from the same
        // ones whatever other tests draw from the device's generator meanwhile.
        for lora in [false, true] {
            let trained = if lora { model.clone().with_lora(&spec).unwrap() } else { model.clone() };
            let (whole, m1) = stop_and_resume(model.clone(), trained.clone(), None);
            let (resumed, m2) = stop_and_resume(model.clone(), trained, Some(3));
            assert_eq!(m1, m2, "lora {lora}: the metrics differ");
            assert_eq!(weights(&whole), weights(&resumed), "lora {lora}: the weights differ");
        }
    }
}
