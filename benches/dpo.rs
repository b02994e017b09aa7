//! DPO training throughput of the tiny VLM at two sizes, on flex and (built with `tch`) on
//! LibTorch CPU (DESIGN §9): tokens per second of a full step (policy forward on chosen and
//! rejected, loss, backward, global-norm clipping, AdamW), batch 8 × 64 tokens, and the peak
//! memory of a process that does only that. Each device × size runs in a child process of
//! its own, so each peak is its own.
//!
//! `cargo bench --bench dpo` (flex); `scripts/libtorch-env` sourced and
//! `cargo bench --features tch --bench dpo` for both.

use std::convert::Infallible;
use std::time::Instant;

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use silkie::model::device;
use silkie::model::policy::TokenBatch;
use silkie::model::tiny::TinyConfig;
use silkie::train::dpo::{Batch, Reference, Settings, TrainState, reference_logps, train};
use silkie::train::losses::{LossConfig, LossType};
use silkie::train::optim::AdamW;

mod support;
use support::peak_rss_mb;

const BATCH: usize = 8;
const TOKENS: usize = 64;
const STEPS: usize = 10;
const SIZES: [(&str, usize, usize); 2] = [("d64 × 2 layers", 64, 2), ("d128 × 4 layers", 128, 4)];

fn side(device: &Device, salt: i64) -> TokenBatch {
    let tokens: Vec<i64> = (0..BATCH * TOKENS).map(|i| (i as i64 * 31 + salt) % 256).collect();
    let mask: Vec<bool> = (0..BATCH * TOKENS).map(|i| i % TOKENS >= TOKENS / 2).collect();
    TokenBatch {
        images: Tensor::<4>::ones([BATCH, 3, 32, 32], device).mul_scalar(0.5),
        tokens: Tensor::<2, Int>::from_data(TensorData::new(tokens, [BATCH, TOKENS]), device),
        mask: Tensor::<2, Bool>::from_data(TensorData::new(mask, [BATCH, TOKENS]), device),
    }
}

/// One device × size: prints a line of figures.
fn measure(device_name: &str, size: usize) {
    let (name, d_model, layers) = SIZES[size];
    let device = match device::open(Some(device_name), None, true) {
        Ok(device) => device,
        Err(e) => return println!("{device_name}: skipped ({e})"),
    };
    let config =
        TinyConfig { image_size: 32, patch_size: 8, d_model, layers, heads: 4, d_ff: d_model * 2, max_tokens: TOKENS };
    let model = config.init(&device);
    let batches = vec![Batch { chosen: side(&device, 1), rejected: side(&device, 2) }];
    let settings = Settings {
        loss: LossConfig { loss: LossType::Sigmoid, beta: 0.1, label_smoothing: 0.0 },
        lr: 1e-4,
        epochs: STEPS + 1,
        warmup_ratio: 0.0,
        max_grad_norm: Some(1.0),
        optimizer: AdamW::default(),
        grad_accum: 1,
        sft_weight: 0.0,
    };
    let reference = Reference::Logps(reference_logps(&model, &batches));
    let mut times = Vec::new();
    let mut last = Instant::now();
    let mut after_step = |_: &TrainState<_>| {
        times.push(last.elapsed());
        last = Instant::now();
        Ok::<(), Infallible>(())
    };
    let Ok(_) =
        train(TrainState::start(model, &settings), &batches, &reference, &settings, &|_| vec![0], &mut after_step);
    // The first step warms up (allocations, kernels): leave it out.
    let steady = &times[1..];
    let per_step = steady.iter().map(|t| t.as_secs_f64()).sum::<f64>() / steady.len() as f64;
    // Chosen and rejected: 2 × batch × tokens per step.
    let tokens = (2 * BATCH * TOKENS) as f64;
    println!(
        "{device_name:8} tiny VLM {name} ({} image patches + {TOKENS} tokens, batch {BATCH}): {:.0} ms per step, {:.0} tokens/s; peak RSS {:.0} MB",
        config.patches(),
        per_step * 1e3,
        tokens / per_step,
        peak_rss_mb()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--one") {
        let size = args.get(at + 2).and_then(|s| s.parse().ok()).unwrap_or(0);
        return measure(&args[at + 1], size);
    }
    if !args.iter().any(|a| a == "--bench") {
        println!("dpo bench: run it with `cargo bench --bench dpo`");
        return;
    }
    let devices: &[&str] = if cfg!(feature = "tch") { &["flex", "libtorch"] } else { &["flex"] };
    let Ok(me) = std::env::current_exe() else { return println!("dpo bench: cannot find its own executable") };
    for size in 0..SIZES.len() {
        for device in devices {
            let status = std::process::Command::new(&me).args(["--one", device, &size.to_string()]).status();
            if !status.is_ok_and(|s| s.success()) {
                println!("{device} size {size}: the measuring process failed");
            }
        }
    }
}
