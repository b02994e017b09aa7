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
        let Ok(state) = pool
            .install(|| train(start, &data, reference, &settings, &|_| vec![0, 1], &mut |_| Ok::<(), Infallible>(())));
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
