//! The DPO step benchmark that `silkie bench dpo` and `cargo bench --bench dpo` share:
//! tokens per second of a full training step (policy forward on chosen and rejected, loss,
//! backward, global-norm clipping, AdamW) on the tiny VLM, batch 8 × 64 tokens.

use std::convert::Infallible;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::dpo::{Batch, Reference, Settings, TrainState, frozen, reference_logps, train};
use super::fit::Schedule;
use super::losses::{LossConfig, LossType};
use super::optim::AdamW;
use crate::model::Vlm;
use crate::model::device::Precision;
use crate::model::policy::{Chat, Policy, Scored, TokenBatch};
use crate::model::tiny::TinyConfig;

pub const BATCH: usize = 8;
pub const TOKENS: usize = 64;

/// The two model sizes measured: (name, d_model, layers).
pub const SIZES: [(&str, usize, usize); 2] = [("d64 × 2 layers", 64, 2), ("d128 × 4 layers", 128, 4)];

pub struct Throughput {
    pub config: TinyConfig,
    /// The model's parameter count: what a reimplementation elsewhere must match.
    pub params: usize,
    pub ms_per_step: f64,
    pub tokens_per_second: f64,
}

fn side(device: &Device, salt: i64) -> TokenBatch {
    let tokens: Vec<i64> = (0..BATCH * TOKENS).map(|i| (i as i64 * 31 + salt) % 256).collect();
    let mask: Vec<bool> = (0..BATCH * TOKENS).map(|i| i % TOKENS >= TOKENS / 2).collect();
    TokenBatch {
        images: Tensor::<4>::ones([BATCH, 3, 32, 32], device).mul_scalar(0.5),
        image_rows: (0..BATCH).collect(),
        tokens: Tensor::<2, Int>::from_data(TensorData::new(tokens, [BATCH, TOKENS]), device),
        mask: Tensor::<2, Bool>::from_data(TensorData::new(mask, [BATCH, TOKENS]), device),
        text_tokens: (BATCH * TOKENS) as u64,
        pad: i64::from(crate::model::tokenizer::PAD),
    }
}

/// `steps` timed steps (after one warm-up step) of size `SIZES[size]` on `device` (autodiff),
/// computing in `precision`.
pub fn dpo_steps(device: &Device, precision: Precision, size: usize, steps: usize) -> Throughput {
    let (_, d_model, layers) = SIZES[size.min(SIZES.len() - 1)];
    let config =
        TinyConfig { image_size: 32, patch_size: 8, d_model, layers, heads: 4, d_ff: d_model * 2, max_tokens: TOKENS };
    let model = config.init(device).with_precision(precision);
    let params = model.num_params();
    let batches = vec![Batch::new(&side(device, 1), &side(device, 2))];
    let per_step = seconds_per_step(model, &batches, steps);
    // Chosen and rejected: 2 × batch × tokens per step.
    let tokens = (2 * BATCH * TOKENS) as f64;
    Throughput { config, params, ms_per_step: per_step * 1e3, tokens_per_second: tokens / per_step }
}

/// What [`dpo_steps_on`] measured on a checkpoint.
pub struct CheckpointThroughput {
    /// Parameters, and those that train (LoRA's factors only, with LoRA).
    pub params: usize,
    pub trainable: usize,
    /// Tokens of a step that are not padding (chosen and rejected rows).
    pub tokens: u64,
    pub ms_per_step: f64,
    pub tokens_per_second: f64,
}

/// The prompts and answers [`dpo_steps_on`] trains on, a pair per row, about one picture:
/// fixed, so another implementation can build the same batch.
pub const CHECKPOINT_ROWS: [(&str, &str, &str); 4] = [
    ("What is in the picture?", "A red square on a blue field.", "There are three circles."),
    ("How many circles are there?", "There are three circles.", "A small house."),
    ("Describe the image in detail.", "The image shows a small house beside a tall tree.", "A red square."),
    ("What colour is the square?", "The square is red.", "The lazy dog sleeps."),
];

/// `steps` timed DPO steps (after one warm-up step) of `model` on one batch of `pairs` pairs
/// from [`CHECKPOINT_ROWS`] (repeated as needed), each about `image` (an encoded picture file).
pub fn dpo_steps_on(
    model: Vlm,
    image: &[u8],
    pairs: usize,
    steps: usize,
    device: &Device,
) -> Result<CheckpointThroughput, String> {
    let params = model.num_params();
    let rows = |side: usize| -> Vec<Scored<'_>> {
        (0..pairs.max(1))
            .map(|i| {
                let (prompt, chosen, rejected) = CHECKPOINT_ROWS[i % CHECKPOINT_ROWS.len()];
                Scored {
                    chat: Chat::user(None, Some(image), prompt),
                    completion: if side == 0 { chosen } else { rejected },
                }
            })
            .collect()
    };
    let chosen = model.encode(&rows(0), None, device).map_err(|e| e.to_string())?;
    let rejected = model.encode(&rows(1), None, device).map_err(|e| e.to_string())?;
    let tokens = chosen.text_tokens + rejected.text_tokens;
    let batches = vec![Batch::new(&chosen, &rejected)];
    let trainable = trainable_params(&model);
    let per_step = seconds_per_step(model, &batches, steps);
    Ok(CheckpointThroughput {
        params,
        trainable,
        tokens,
        ms_per_step: per_step * 1e3,
        tokens_per_second: tokens as f64 / per_step,
    })
}

/// The picture [`dpo_steps_on`] is given unless told otherwise: 64 × 64 gradients, as PNG.
pub fn picture() -> Vec<u8> {
    let image =
        image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, ((x + y) * 2) as u8]));
    let mut png = Vec::new();
    image.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).expect("a PNG encodes in memory");
    png
}

/// Parameters that record gradients.
fn trainable_params<M: Module>(model: &M) -> usize {
    struct Count(usize);
    impl burn::module::ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            if param.is_require_grad() {
                self.0 += param.shape().num_elements();
            }
        }
    }
    let mut count = Count(0);
    model.visit(&mut count);
    count.0
}

/// Mean seconds of a full DPO step (sigmoid loss, β 0.1, AdamW at 1e-4, clipping at 1) of
/// `model` on `batches`, over `steps` steps after a warm-up one.
fn seconds_per_step<M: Policy + Module + Send + Sync>(model: M, batches: &[Batch], steps: usize) -> f64 {
    let settings = Settings {
        loss: LossConfig { loss: LossType::Sigmoid, beta: 0.1, label_smoothing: 0.0 },
        sft_weight: 0.0,
        schedule: Schedule {
            lr: 1e-4,
            epochs: (steps.max(1) + 1).div_ceil(batches.len()),
            warmup_ratio: 0.0,
            max_grad_norm: Some(1.0),
            optimizer: AdamW::default(),
            grad_accum: 1,
        },
    };
    let reference = Reference::Logps(reference_logps(&frozen(&model), batches));
    let mut times = Vec::new();
    let mut last = Instant::now();
    let mut after_step = |state: &TrainState<M>| {
        // Reading the loss back waits for the device, so the step is really over.
        let _ = state.metrics.last();
        times.push(last.elapsed());
        last = Instant::now();
        Ok::<(), Infallible>(())
    };
    let order = |_: usize| (0..batches.len()).collect::<Vec<_>>();
    let Ok(_) = train(
        TrainState::start(model, &settings.schedule.optimizer),
        batches,
        &reference,
        &settings,
        &order,
        &mut after_step,
    );
    // The first step warms up (allocations, kernels): it is left out.
    let steady = &times[1..];
    steady.iter().map(|t| t.as_secs_f64()).sum::<f64>() / steady.len().max(1) as f64
}

/// This process's peak resident memory so far, in MB (Linux; NaN elsewhere).
pub fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
