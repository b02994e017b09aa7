//! The LibTorch devices (built with `--features tch`): the same training on flex and on
//! LibTorch CPU agrees step by step, the `dpo` stage runs on LibTorch, LLaVA's logits there are
//! transformers', and a CUDA device that is not there is an error, not a crash.
#![cfg(feature = "tch")]
// Burn marks its LibTorch backend deprecated; silkie keeps it behind `tch` (see model/device.rs).
#![allow(deprecated)]

mod common;

use std::convert::Infallible;

use burn::module::Module;
use burn::tensor::Device;
use common::{Workspace, status_of};
use silkie::model::device::Precision;
use silkie::model::policy::{Example, TokenBatch};
use silkie::model::tiny::{TinyConfig, TinyVlm};
use silkie::train::dpo::{Batch, Reference, Settings, StepMetrics, TrainState, frozen, reference_logps, train};
use silkie::train::fit::Schedule;
use silkie::train::losses::{LossConfig, LossType};
use silkie::train::optim::AdamW;

const CONFIG: TinyConfig =
    TinyConfig { image_size: 16, patch_size: 8, d_model: 32, layers: 2, heads: 2, d_ff: 64, max_tokens: 24 };

fn batches(device: &Device) -> Vec<Batch> {
    let side = |rows: &[(&str, &str)]| {
        let examples = rows
            .iter()
            .enumerate()
            .map(|(i, (prompt, completion))| Example { pixels: vec![0.1 * i as f32; 3 * 16 * 16], prompt, completion })
            .collect();
        TokenBatch::new(examples, 16, 24, device)
    };
    let data = [("Colour?", "Red.", "Blue."), ("Count?", "Two.", "Nine."), ("Shape?", "A disc.", "A cube.")];
    (0..3)
        .map(|b| {
            let rows = [data[b], data[(b + 1) % 3]];
            Batch::new(&side(&rows.map(|r| (r.0, r.1))), &side(&rows.map(|r| (r.0, r.2))))
        })
        .collect()
}

fn losses(model: TinyVlm, device: &Device) -> Vec<StepMetrics> {
    let data = batches(device);
    let settings = Settings {
        loss: LossConfig { loss: LossType::Sigmoid, beta: 0.1, label_smoothing: 0.0 },
        sft_weight: 0.1,
        schedule: Schedule {
            lr: 5e-3,
            epochs: 2,
            warmup_ratio: 0.2,
            max_grad_norm: Some(1.0),
            optimizer: AdamW { weight_decay: 0.01, ..AdamW::default() },
            grad_accum: 1,
        },
    };
    let reference = Reference::Logps(reference_logps(&frozen(&model), &data));
    let start = TrainState::start(model, &settings.schedule.optimizer);
    let Ok(state) = train(start, &data, &reference, &settings, &|_| vec![2, 0, 1], &mut |_| Ok::<(), Infallible>(()));
    state.metrics
}

/// The same short run from the same initial weights on flex and on LibTorch CPU, computing
/// in `precision`: both runs' metrics and the largest relative difference of their losses.
fn flex_and_libtorch(precision: Precision) -> (Vec<StepMetrics>, Vec<StepMetrics>, f64) {
    let flex = Device::flex().autodiff();
    flex.seed(5);
    let model = CONFIG.init(&flex);
    let torch = Device::libtorch().autodiff();
    let on_torch = CONFIG.init(&torch).load_record(model.clone().into_record());
    let a = losses(model.with_precision(precision), &flex);
    let b = losses(on_torch.with_precision(precision), &torch);
    let worst = a.iter().zip(&b).map(|(x, y)| (x.loss - y.loss).abs() / x.loss.abs()).fold(0.0, f64::max);
    eprintln!("largest relative loss difference in {precision:?}, flex vs libtorch: {worst:e}");
    (a, b, worst)
}

#[test]
fn flex_and_libtorch_cpu_give_the_same_per_step_losses() {
    let (a, b, _) = flex_and_libtorch(Precision::F32);
    assert_eq!(a.len(), 6);
    for (x, y) in a.iter().zip(&b) {
        let rel = (x.loss - y.loss).abs() / x.loss.abs().max(1e-12);
        assert!(rel < 1e-4, "step {}: flex {} vs libtorch {} (relative {rel:e})", x.step, x.loss, y.loss);
        let rel = (x.grad_norm - y.grad_norm).abs() / x.grad_norm.abs().max(1e-12);
        assert!(rel < 1e-3, "step {}: grad norm flex {} vs libtorch {}", x.step, x.grad_norm, y.grad_norm);
    }
    assert!(a.last().unwrap().loss < a[0].loss, "the loss did not fall: {a:?}");
}

#[test]
fn bf16_on_libtorch_cpu_trains_as_bf16_on_flex_does() {
    let (a, b, worst) = flex_and_libtorch(Precision::Bf16);
    // Two bf16 implementations round differently: agreement to bf16's precision, not f32's.
    assert!(worst < 2e-2, "flex {a:?}\nlibtorch {b:?}");
    assert!(b.last().unwrap().loss < b[0].loss, "the loss did not fall on libtorch: {b:?}");
}

fn pipeline() -> String {
    common::dpo_pipeline(2, 4)
}

fn pairs_csv() -> String {
    common::counting_pairs_csv(8)
}

#[test]
fn the_dpo_stage_trains_on_libtorch_cpu() {
    let ws = Workspace::new();
    ws.write("pairs.csv", &pairs_csv());
    ws.write("pipeline.yaml", &format!("{}    runtime: {{ device: libtorch }}\n", pipeline()));
    let record = ws.run(&[]);
    assert_eq!(status_of(&record, "policy"), "ran");
    let training = ws.silkie(&["show", "policy.training", "--format", "json"]).json();
    assert_eq!(training.as_array().unwrap().len(), 4);
    assert!((training[0]["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-5, "{}", training[0]);
}

#[test]
fn a_cuda_device_that_is_not_there_fails_the_stage_clearly() {
    let ws = Workspace::new();
    ws.write("pairs.csv", &pairs_csv());
    // Index 99: past the end on any machine, with or without a GPU.
    ws.write("pipeline.yaml", &format!("{}    runtime: {{ device: libtorch-cuda:99 }}\n", pipeline()));
    let out = ws.silkie(&["run"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("libtorch-cuda:99"), "{}", out.stdout);
}

#[test]
fn llava_logits_on_libtorch_cpu_equal_transformers() {
    for args in [&["--vision", "clip", "--text", "llama"][..], &["--vision", "siglip", "--text", "qwen2"][..]] {
        let gap = common::llava::logits_gap(args, Some("libtorch"));
        assert!(gap < 1e-4, "{args:?}: max |silkie − transformers| = {gap}");
    }
}
