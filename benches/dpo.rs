//! DPO training throughput of the tiny VLM on the flex device at two sizes (DESIGN §9):
//! tokens per second of a full step (policy forward on chosen and rejected, loss, backward,
//! clipping, AdamW), batch 8 × 64 tokens. LibTorch joins with the `tch` feature.
//!
//! `cargo bench --bench dpo`.

use std::time::Instant;

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use silkie::model::tiny::TinyConfig;
use silkie::train::dpo::{Batch, Settings, Side, train};
use silkie::train::losses::{LossConfig, LossType};
use silkie::train::optim::AdamW;

mod support;
use support::peak_rss_mb;

const BATCH: usize = 8;
const TOKENS: usize = 64;
const STEPS: usize = 10;

fn side(device: &Device, salt: i64) -> Side {
    let tokens: Vec<i64> = (0..BATCH * TOKENS).map(|i| (i as i64 * 31 + salt) % 256).collect();
    let mask: Vec<bool> = (0..BATCH * TOKENS).map(|i| i % TOKENS >= TOKENS / 2).collect();
    Side {
        images: Tensor::<4>::ones([BATCH, 3, 32, 32], device).mul_scalar(0.5),
        tokens: Tensor::<2, Int>::from_data(TensorData::new(tokens, [BATCH, TOKENS]), device),
        mask: Tensor::<2, Bool>::from_data(TensorData::new(mask, [BATCH, TOKENS]), device),
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("dpo bench: run it with `cargo bench --bench dpo`");
        return;
    }
    let sizes = [("d64 × 2 layers", 64, 2, 4), ("d128 × 4 layers", 128, 4, 4)];
    for (name, d_model, layers, heads) in sizes {
        let device = Device::flex().autodiff();
        let config =
            TinyConfig { image_size: 32, patch_size: 8, d_model, layers, heads, d_ff: d_model * 2, max_tokens: TOKENS };
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
        let mut times = Vec::new();
        let mut last = Instant::now();
        let mut on_step = |_: &silkie::train::dpo::StepMetrics| {
            times.push(last.elapsed());
            last = Instant::now();
        };
        train(model, &batches, &settings, &|_| vec![0], &mut on_step);
        // The first step warms up (allocations, reference pass): leave it out.
        let steady = &times[1..];
        let per_step = steady.iter().map(|t| t.as_secs_f64()).sum::<f64>() / steady.len() as f64;
        // Chosen and rejected: 2 × batch × tokens per step.
        let tokens = (2 * BATCH * TOKENS) as f64;
        println!(
            "flex, tiny VLM {name} ({} image patches + {TOKENS} tokens, batch {BATCH}): {:.0} ms per step, {:.0} tokens/s; peak RSS {:.0} MB",
            config.patches(),
            per_step * 1e3,
            tokens / per_step,
            peak_rss_mb()
        );
    }
}
