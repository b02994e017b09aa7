//! LLaVA (`LlavaForConditionalGeneration` checkpoints, as transformers saves them): a CLIP or
//! SigLIP vision tower, the two-layer projector, and a Llama, Mistral or Qwen2 language model
//! whose `<image>` token positions take the projected image features.

pub mod config;
mod peft;
mod policy;
pub mod processor;
mod stand_in;
mod text;
mod vision;

use std::path::Path;

use burn::module::Module;
use burn::module::{ModuleMapper, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::{gelu, gelu_approximate, sigmoid, silu, softmax};
use burn::tensor::{Bool, Device, FloatDType, IndexingUpdateOp, Int, Tensor, TensorData};

use self::config::{Activation, LlavaConfig};
use self::text::{KvCache, TextModel};
use self::vision::VisionTower;
use super::hf_weights::{self, WeightsError};

pub use self::policy::LlavaPolicy;
use super::policy::{Sampling, pick_token, sampler};

#[derive(Module, Debug)]
pub struct Llava {
    vision_tower: VisionTower,
    multi_modal_projector: Projector,
    language_model: TextModel,
    /// None when the output projection is the embedding matrix (tied).
    lm_head: Option<Linear>,
    #[module(skip)]
    config: LlavaConfig,
}

#[derive(Module, Debug)]
struct Projector {
    linear_1: Linear,
    linear_2: Linear,
}

/// Why a LLaVA checkpoint does not load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: {source}")]
    Config { path: String, source: config::ConfigError },
    #[error(transparent)]
    Weights(#[from] WeightsError),
}

/// Inputs the model cannot read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("the tokens hold {tokens} image tokens, but {images} image(s) give {per_image} features each")]
    ImageTokens { tokens: usize, images: usize, per_image: usize },
}

/// Tensor names as the checkpoint may hold them (transformers 4.x and 5.x layouts) → the
/// module's own, applied in order.
const RENAMES: &[(&str, &str)] = &[
    (r"^model\.language_model\.", "language_model."),
    (r"^model\.vision_tower\.", "vision_tower."),
    (r"^model\.multi_modal_projector\.", "multi_modal_projector."),
    (r"^language_model\.model\.", "language_model."),
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^vision_tower\.vision_model\.", "vision_tower."),
];

/// Parts of the vision model LLaVA never runs nor keeps: SigLIP's pooling head.
const UNNEEDED: &[&str] = &["vision_tower.head."];

/// Whether a checkpoint tensor (by the checkpoint's own name, in either layout) is in a part
/// [`UNNEEDED`] names: one a saved checkpoint carries over unread.
fn is_unused_part(name: &str) -> bool {
    let Some((_, rest)) = name.split_once("vision_tower.") else { return false };
    let within = rest.strip_prefix("vision_model.").unwrap_or(rest);
    UNNEEDED.iter().filter_map(|u| u.strip_prefix("vision_tower.")).any(|part| within.starts_with(part))
}

/// LLaVA in the architecture registry: a folder whose config.json says `model_type: llava`.
pub struct LlavaArchitecture;
pub const ARCHITECTURE: LlavaArchitecture = LlavaArchitecture;

impl super::Architecture for LlavaArchitecture {
    fn name(&self) -> &'static str {
        "llava (LlavaForConditionalGeneration)"
    }

    fn holds(&self, dir: &Path) -> bool {
        std::fs::read(dir.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|c| c.get("model_type").and_then(|t| t.as_str()) == Some("llava"))
    }

    fn load(&self, dir: &Path, device: &Device) -> Result<super::Vlm, super::BoxedError> {
        Ok(LlavaPolicy::load(dir, device).map(super::Vlm::Llava)?)
    }

    fn random(&self, dir: &Path, device: &Device) -> Result<super::Vlm, super::BoxedError> {
        Ok(LlavaPolicy::random(dir, device).map(super::Vlm::Llava)?)
    }
}

/// The tokens that end a generation: `generation_config.json`'s `eos_token_id` (one or a
/// list), else the language model's.
pub fn stop_tokens(dir: &Path, config: &serde_json::Value) -> Result<Vec<u32>, LoadError> {
    let path = dir.join("generation_config.json");
    let generation: serde_json::Value = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| LoadError::Read { path: path.display().to_string(), reason: format!("not JSON: {e}") })?,
        Err(_) => serde_json::Value::Null,
    };
    let ids = |v: Option<&serde_json::Value>| -> Vec<u32> {
        match v {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|n| n as u32).into_iter().collect(),
            Some(serde_json::Value::Array(items)) => {
                items.iter().filter_map(|n| n.as_u64()).map(|n| n as u32).collect()
            }
            _ => Vec::new(),
        }
    };
    let from_generation = ids(generation.get("eos_token_id"));
    if !from_generation.is_empty() {
        return Ok(from_generation);
    }
    Ok(ids(config.get("text_config").and_then(|t| t.get("eos_token_id"))))
}

/// `dir`'s config.json as it is written, and read as transformers' config classes read it.
pub fn read_config(dir: &Path) -> Result<(serde_json::Value, LlavaConfig), LoadError> {
    let path = dir.join("config.json");
    let shown = path.display().to_string();
    let bytes = std::fs::read(&path).map_err(|e| LoadError::Read { path: shown.clone(), reason: e.to_string() })?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| LoadError::Read { path: shown.clone(), reason: format!("not JSON: {e}") })?;
    let config = config::parse(&value).map_err(|source| LoadError::Config { path: shown, source })?;
    Ok((value, config))
}

impl Llava {
    /// Loads the checkpoint in `dir` (its `config.json` and safetensors weights) onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Llava, LoadError> {
        Llava::load_weights(dir, &read_config(dir)?.1, device)
    }

    /// A model of `config`'s shape with the weights of the checkpoint in `dir`.
    fn load_weights(dir: &Path, config: &LlavaConfig, device: &Device) -> Result<Llava, LoadError> {
        let mut model = Llava::new(config, device);
        let unneeded: Vec<&str> =
            UNNEEDED.iter().copied().chain(config.text.tie_word_embeddings.then_some("lm_head.")).collect();
        hf_weights::load_into(&mut model, dir, RENAMES, &unneeded)?;
        Ok(model)
    }

    /// A model of `config`'s shape with untrained weights.
    pub fn new(config: &LlavaConfig, device: &Device) -> Llava {
        let features = config.vision.hidden_size * config.vision_feature_layers.len();
        let d = config.text.hidden_size;
        let bias = config.projector_bias;
        Llava {
            vision_tower: VisionTower::new(&config.vision, device),
            multi_modal_projector: Projector {
                linear_1: LinearConfig::new(features, d).with_bias(bias).init(device),
                linear_2: LinearConfig::new(d, d).with_bias(bias).init(device),
            },
            language_model: TextModel::new(&config.text, device),
            lm_head: (!config.text.tie_word_embeddings)
                .then(|| LinearConfig::new(d, config.text.vocab_size).with_bias(false).init(device)),
            config: config.clone(),
        }
    }

    pub fn config(&self) -> &LlavaConfig {
        &self.config
    }

    /// The same model with its vision tower frozen, as the paper trains.
    pub fn with_frozen_vision(mut self) -> Llava {
        self.vision_tower = self.vision_tower.no_grad();
        self
    }

    /// The same model with its vision tower and projector trainable or frozen as `parts` says.
    pub fn with_trained_parts(mut self, parts: crate::model::TrainedParts) -> Llava {
        self.vision_tower = self.vision_tower.set_require_grad(parts.vision);
        self.multi_modal_projector = self.multi_modal_projector.set_require_grad(parts.projector);
        self
    }

    pub fn device(&self) -> Device {
        self.language_model.embedding_weight().device()
    }

    /// The same model with every weight in `dtype`, cast once: what it computes in from now
    /// on (softmax and norms in f32 inside, as transformers' eager code does; logits in f32).
    pub fn in_dtype(self, dtype: FloatDType) -> Llava {
        self.map(&mut CastFloats(dtype))
    }

    pub fn is_bf16(&self) -> bool {
        self.float_dtype() == FloatDType::BF16
    }

    /// The type its weights are saved in, as config.json's `dtype` names it: the one the
    /// model computes in (f32 masters of trained weights are cast to it on saving).
    pub fn saved_dtype(&self) -> &'static str {
        if self.is_bf16() { "bfloat16" } else { "float32" }
    }

    /// The float type the weights are in, for inputs to match.
    fn float_dtype(&self) -> FloatDType {
        self.language_model.embedding_weight().dtype().into()
    }

    /// Projected features of `pixels` [images, 3, size, size]: [images, tokens, hidden], one
    /// row per `<image>` token the processor put in the prompt.
    pub fn image_features(&self, pixels: Tensor<4>) -> Tensor<3> {
        let hidden_states = self.config.vision.layers as i64 + 1;
        let layers: Vec<usize> = self
            .config
            .vision_feature_layers
            .iter()
            .map(|&l| if l < 0 { (hidden_states + l) as usize } else { l as usize })
            .collect();
        let deepest = layers.iter().copied().max().unwrap_or(0);
        let states = self.vision_tower.hidden_states(pixels.cast(self.float_dtype()), deepest);
        let picked: Vec<Tensor<3>> = layers
            .iter()
            .map(|&l| {
                let state = states[l].clone();
                if self.config.keep_cls {
                    return state;
                }
                let [n, positions, d] = state.dims();
                state.slice([0..n, 1..positions, 0..d])
            })
            .collect();
        let features = Tensor::cat(picked, 2);
        let projector = &self.multi_modal_projector;
        projector.linear_2.forward(activate(projector.linear_1.forward(features), self.config.projector_act))
    }

    /// Logits [batch, length, vocab] for `tokens` [batch, length] in which each image's
    /// `<image>` tokens stand, in order, for the rows of its features; `pixels` holds the
    /// images in the order they appear (none when no row has an image).
    pub fn forward(&self, tokens: Tensor<2, Int>, pixels: Option<Tensor<4>>) -> Result<Tensor<3>, InputError> {
        let mut embeddings = self.language_model.embed(tokens.clone());
        if let Some(pixels) = pixels {
            embeddings = self.place_images(embeddings, tokens, self.image_features(pixels))?;
        }
        Ok(self.logits(self.language_model.forward(embeddings)).cast(FloatDType::F32))
    }

    /// For each prompt, up to its sampling's `max_new_tokens` tokens after it (its `<image>`
    /// tokens filled by the images in `pixels`, in the prompts' order), each computed through
    /// the key/value cache for all prompts at once: left-padded to one length, a row leaving
    /// the batch when it ends at one of `stop` (not returned) or its limit. Per prompt: the
    /// tokens, and whether it stopped at `stop`.
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        pixels: Option<Tensor<4>>,
        samplings: &[Sampling],
        stop: &[u32],
    ) -> Result<Vec<(Vec<u32>, bool)>, InputError> {
        let device = self.device();
        let ids = |rows: Vec<i64>, count: usize| {
            let len = rows.len() / count.max(1);
            Tensor::<2, Int>::from_data(TensorData::new(rows, [count, len]), &device)
        };
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        // Any token but the image token: padding is never seen.
        let filler = i64::from(self.config.image_token_id == 0);
        let padding: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
        let padded: Vec<i64> = prompts
            .iter()
            .zip(&padding)
            .flat_map(|(p, &pad)| std::iter::repeat_n(filler, pad).chain(p.iter().map(|&t| i64::from(t))))
            .collect();
        let tokens = ids(padded, prompts.len());
        let mut embeddings = self.language_model.embed(tokens.clone());
        if let Some(pixels) = pixels {
            embeddings = self.place_images(embeddings, tokens, self.image_features(pixels))?;
        }
        let mut cache = KvCache::padded(padding);
        let mut rngs: Vec<_> = samplings.iter().map(sampler).collect();
        let mut outs: Vec<(Vec<u32>, bool)> = vec![(Vec::new(), false); prompts.len()];
        // The prompts still generating, in the order of the batch's rows.
        let mut active: Vec<usize> = (0..prompts.len()).filter(|&i| samplings[i].max_new_tokens > 0).collect();
        if active.len() < prompts.len() {
            cache.retain_rows(&active);
            embeddings = select_rows(embeddings, &active);
        }
        while !active.is_empty() {
            let hidden = self.language_model.forward_cached(embeddings, &mut cache);
            let [rows, n, d] = hidden.dims();
            let logits = self.logits(hidden.slice([0..rows, n - 1..n, 0..d])).cast(FloatDType::F32);
            let logits: Vec<f32> = logits.into_data().convert::<f32>().try_to_vec().unwrap_or_default();
            let vocab = logits.len() / rows;
            let (mut kept, mut next) = (Vec::new(), Vec::new());
            for (row, &i) in active.iter().enumerate() {
                let token = pick_token(&logits[row * vocab..(row + 1) * vocab], &samplings[i], &mut rngs[i]);
                let out = &mut outs[i];
                if stop.contains(&token) {
                    out.1 = true;
                    continue;
                }
                out.0.push(token);
                if out.0.len() < samplings[i].max_new_tokens {
                    kept.push(row);
                    next.push(i64::from(token));
                }
            }
            if kept.len() < active.len() {
                cache.retain_rows(&kept);
                active = kept.iter().map(|&row| active[row]).collect();
            }
            if active.is_empty() {
                break;
            }
            embeddings = self.language_model.embed(ids(next, active.len()));
        }
        Ok(outs)
    }

    /// The output projection: the head, or the embedding matrix when tied.
    fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => hidden.matmul(self.language_model.embedding_weight().transpose().unsqueeze()),
        }
    }

    /// The token embeddings with each `<image>` position's row replaced by the next image
    /// feature row, as transformers' `masked_scatter` does.
    fn place_images(
        &self,
        embeddings: Tensor<3>,
        tokens: Tensor<2, Int>,
        features: Tensor<3>,
    ) -> Result<Tensor<3>, InputError> {
        let [b, n, d] = embeddings.dims();
        let [images, per_image, _] = features.dims();
        let ids = tokens.into_data().convert::<i64>().try_into_vec::<i64>().unwrap_or_default();
        let slots: Vec<i64> =
            ids.iter().enumerate().filter(|(_, t)| **t == self.config.image_token_id).map(|(i, _)| i as i64).collect();
        if slots.len() != images * per_image {
            return Err(InputError::ImageTokens { tokens: slots.len(), images, per_image });
        }
        let rows = features.reshape([images * per_image, d]);
        let flat = embeddings.reshape([b * n, d]);
        let count = slots.len();
        let slots = Tensor::<1, Int>::from_data(TensorData::new(slots, [count]), &flat.device());
        // Added as the difference, so the placed rows stay in the autodiff graph.
        let change = rows - flat.clone().select(0, slots.clone());
        Ok(flat.select_assign(0, slots, change, IndexingUpdateOp::Add).reshape([b, n, d]))
    }
}

/// The rows `keep` of a batch, in that order.
fn select_rows(x: Tensor<3>, keep: &[usize]) -> Tensor<3> {
    let index: Vec<i64> = keep.iter().map(|&r| r as i64).collect();
    let index = Tensor::<1, Int>::from_data(TensorData::new(index, [keep.len()]), &x.device());
    x.select(0, index)
}

/// Casts every float weight of a module.
struct CastFloats(FloatDType);

impl ModuleMapper for CastFloats {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = self.0;
        // A weight of its own (not a step in the f32 weight's graph), trainable as before.
        param.map(|weights| {
            let trainable = weights.is_require_grad();
            let cast = weights.cast(dtype).detach();
            if trainable { cast.require_grad() } else { cast }
        })
    }
}

/// [batch, n, heads·hd] → [batch, heads, n, hd].
fn split_heads(x: Tensor<3>, heads: usize) -> Tensor<4> {
    let [b, n, d] = x.dims();
    x.reshape([b, n, heads, d / heads]).swap_dims(1, 2)
}

/// Scaled dot-product attention over [batch, heads, n, hd]; `blocked` is true where a query
/// may not see a key.
fn attend(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, blocked: Option<Tensor<4, Bool>>) -> Tensor<4> {
    let hd = q.dims()[3];
    let dtype: FloatDType = q.dtype().into();
    let mut scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(1.0 / (hd as f64).sqrt());
    if let Some(blocked) = blocked {
        let [b, h, n, m] = scores.dims();
        scores = scores.mask_fill(blocked.expand([b, h, n, m]), f32::NEG_INFINITY);
    }
    // In f32 whatever the weights are, as transformers' eager attention does.
    softmax(scores.cast(FloatDType::F32), 3).cast(dtype).matmul(v)
}

fn activate<const D: usize>(x: Tensor<D>, act: Activation) -> Tensor<D> {
    match act {
        Activation::Gelu => gelu(x),
        Activation::GeluTanh => gelu_approximate(x),
        Activation::QuickGelu => x.clone() * sigmoid(x.mul_scalar(1.702)),
        Activation::Silu => silu(x),
    }
}
