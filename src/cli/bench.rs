//! `silkie bench dpo`: a DPO training step timed — the tiny model at two sizes, or with
//! `--model DIR` a checkpoint folder on a fixed batch of pairs about one picture.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use super::{Failure, Format, Outcome, print_json};
use silkie::model::device::Precision;

#[derive(Args)]
pub struct BenchArgs {
    /// What to measure
    #[arg(value_enum)]
    pub what: BenchTarget,
    /// flex, libtorch or libtorch-cuda:N
    #[arg(long, default_value = "flex")]
    pub device: String,
    /// f32, or bf16 (mixed precision: bf16 compute over f32 weights)
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Timed steps per model size (after one warm-up step)
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// A checkpoint folder (a Hugging Face LLaVA, or silkie's own) to time instead of the
    /// built-in tiny sizes, on a fixed batch of 8 pairs about one picture
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// A LLaVA config.json (a published model's, say) to time with random weights instead:
    /// nothing to download; a word-level tokenizer and plain template stand in for its own
    #[arg(long, value_name = "FILE", conflicts_with = "model")]
    pub config: Option<PathBuf>,
    /// With --model or --config: recompute activations in the backward pass (less memory)
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// With --model or --config: LoRA of this rank (alpha twice it) on attention and MLP; 0 trains every weight
    #[arg(long, default_value_t = 16)]
    pub lora: usize,
    /// With --model or --config: preference pairs per step (each a chosen and a rejected row)
    #[arg(long, default_value_t = 8)]
    pub pairs: usize,
    /// With --model or --config: the picture file the pairs are about [default: 64×64 gradients]
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchTarget {
    /// Full DPO steps of the tiny VLM at two sizes, batch 8 × 64 tokens
    Dpo,
}

pub fn run(args: BenchArgs) -> Outcome {
    use silkie::train::bench::{BATCH, SIZES, TOKENS, dpo_steps, peak_rss_mb};
    let BenchTarget::Dpo = args.what;
    let precision: Precision = args.dtype.parse().map_err(|e| Failure::Invalid(format!("--dtype: {e}")))?;
    let mut device = silkie::model::device::open(Some(&args.device), precision, true)
        .map_err(|e| Failure::Invalid(format!("--{}: {e}", e.setting())))?;
    if args.gradient_checkpointing {
        device = device.gradient_checkpointing();
    }
    if let Some(dir) = &args.model {
        let model = silkie::model::load(dir, &device).map_err(|e| Failure::Invalid(format!("--model: {e}")))?;
        return bench_checkpoint(&args, model, dir, precision, &device);
    }
    if let Some(config) = &args.config {
        let (model, _folder) = random_model(config, &device)?;
        return bench_checkpoint(&args, model, config, precision, &device);
    }
    let mut rows = Vec::new();
    for (size, (name, _, _)) in SIZES.iter().enumerate() {
        let t = dpo_steps(&device, precision, size, args.steps.max(1));
        if args.format == Format::Text {
            println!(
                "{} {} tiny VLM {name} ({} patches + {TOKENS} tokens, batch {BATCH}): {:.1} ms per step, {:.0} tokens/s",
                args.device,
                precision,
                t.config.patches(),
                t.ms_per_step,
                t.tokens_per_second
            );
        }
        rows.push(serde_json::json!({
            "device": args.device, "dtype": precision.to_string(), "size": name, "batch": BATCH, "tokens": TOKENS,
            "ms_per_step": t.ms_per_step, "tokens_per_second": t.tokens_per_second,
        }));
    }
    match args.format {
        Format::Json => print_json(&serde_json::json!({"runs": rows, "peak_rss_mb": peak_rss_mb()})),
        Format::Text => println!("peak RSS {:.0} MB", peak_rss_mb()),
    }
    Ok(true)
}

/// A model of `config`'s shape with random weights, built in a folder of its own (the config
/// and the stand-ins written beside it), removed when the returned guard drops.
fn random_model(config: &Path, device: &burn::tensor::Device) -> Result<(silkie::model::Vlm, TempFolder), Failure> {
    let invalid = |e: &dyn std::fmt::Display| Failure::Invalid(format!("--config {}: {e}", config.display()));
    let folder = TempFolder(std::env::temp_dir().join(format!("silkie-bench-{}", std::process::id())));
    std::fs::create_dir_all(&folder.0).map_err(|e| invalid(&e))?;
    std::fs::copy(config, folder.0.join("config.json")).map_err(|e| invalid(&e))?;
    let model = silkie::model::random(&folder.0, device).map_err(|e| invalid(&e))?;
    Ok((model, folder))
}

struct TempFolder(PathBuf);

impl Drop for TempFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `silkie bench dpo --model DIR` or `--config FILE`: DPO steps of that model (`from`).
fn bench_checkpoint(
    args: &BenchArgs,
    mut model: silkie::model::Vlm,
    from: &Path,
    precision: Precision,
    device: &burn::tensor::Device,
) -> Outcome {
    use silkie::model::lora::{LoraSpec, all_targets};
    use silkie::train::bench::{dpo_steps_on, peak_rss_mb, picture};
    let invalid = |e: String| Failure::Invalid(format!("{}: {e}", from.display()));
    let image = match &args.image {
        Some(file) => std::fs::read(file).map_err(|e| Failure::Invalid(format!("--image {}: {e}", file.display())))?,
        None => picture(),
    };
    let params = burn::module::Module::num_params(&model);
    model = model.with_precision(precision).and_then(|m| m.for_training()).map_err(|e| invalid(e.to_string()))?;
    if args.lora > 0 {
        let spec = LoraSpec { r: args.lora, alpha: 2.0 * args.lora as f64, targets: all_targets() };
        model = model.with_lora(&spec).map_err(|e| invalid(e.to_string()))?;
    }
    let t = dpo_steps_on(model, &image, args.pairs, args.steps.max(1), device).map_err(invalid)?;
    // The base's count (without LoRA's factors): what transformers reports for the folder.
    let t = silkie::train::bench::CheckpointThroughput { params, ..t };
    let training =
        if args.lora > 0 { format!("LoRA r{} on attention and MLP", args.lora) } else { "every weight".into() };
    match args.format {
        Format::Text => println!(
            "{} {precision} {} ({} parameters, {} training: {training}), batch {} pairs, {} tokens a step: {:.1} ms per step, {:.0} tokens/s; peak RSS {:.0} MB",
            args.device,
            from.display(),
            t.params,
            t.trainable,
            args.pairs,
            t.tokens,
            t.ms_per_step,
            t.tokens_per_second,
            peak_rss_mb()
        ),
        Format::Json => print_json(&serde_json::json!({
            "device": args.device, "dtype": precision.to_string(), "model": from, "gradient_checkpointing": args.gradient_checkpointing, "lora": args.lora,
            "params": t.params, "trainable": t.trainable, "batch": args.pairs, "tokens": t.tokens,
            "ms_per_step": t.ms_per_step, "tokens_per_second": t.tokens_per_second, "peak_rss_mb": peak_rss_mb(),
        })),
    }
    Ok(true)
}
