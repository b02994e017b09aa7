//! The built-in tiny vision-language model: image patches, linearly embedded, followed by
//! the text tokens in one causal transformer. A few million parameters at most; sizes are
//! config. What CPU tests and the embedded default train.

use std::borrow::Cow;

use burn::module::{Module, ModuleMapper, Param};
use burn::nn::attention::generate_autoregressive_mask;
use burn::nn::transformer::{
    TransformerEncoder, TransformerEncoderAutoregressiveCache, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::device::Precision;
use super::lora::{LoraLayers, LoraSpec};
use super::policy::{
    Chat, EncodeError, Example, Generation, Policy, Sampling, Scored, TokenBatch, blank_pixels, logps_from_logits,
    pick_token, pixels, row_limit, sampler,
};
use super::tokenizer::{BOS, ByteTokenizer, EOS, PAD, VOCAB};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TinyConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub d_model: usize,
    pub layers: usize,
    pub heads: usize,
    pub d_ff: usize,
    /// Longest text (prompt + completion) in tokens.
    pub max_tokens: usize,
}

impl Default for TinyConfig {
    fn default() -> Self {
        TinyConfig { image_size: 32, patch_size: 8, d_model: 64, layers: 2, heads: 4, d_ff: 128, max_tokens: 128 }
    }
}

impl TinyConfig {
    pub fn patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    pub fn init(&self, device: &Device) -> TinyVlm {
        let patch_dim = 3 * self.patch_size * self.patch_size;
        TinyVlm {
            patch: LinearConfig::new(patch_dim, self.d_model).init(device),
            patch_norm: LayerNormConfig::new(self.d_model).init(device),
            tokens: EmbeddingConfig::new(VOCAB, self.d_model).init(device),
            positions: EmbeddingConfig::new(self.patches() + self.max_tokens, self.d_model).init(device),
            blocks: TransformerEncoderConfig::new(self.d_model, self.d_ff, self.heads, self.layers)
                .with_dropout(0.0)
                .with_norm_first(true)
                .init(device),
            norm: LayerNormConfig::new(self.d_model).init(device),
            head: LinearConfig::new(self.d_model, VOCAB).init(device),
            patch_size: self.patch_size,
            image_size: self.image_size,
            max_tokens: self.max_tokens,
            precision: Precision::F32,
            config: self.clone(),
        }
    }
}

/// The tiny model in the architecture registry: a folder [`checkpoint::save`] wrote.
///
/// [`checkpoint::save`]: super::checkpoint::save
pub struct TinyArchitecture;
pub const ARCHITECTURE: TinyArchitecture = TinyArchitecture;

impl super::Architecture for TinyArchitecture {
    fn name(&self) -> &'static str {
        "tiny (silkie's built-in VLM)"
    }

    fn holds(&self, dir: &std::path::Path) -> bool {
        std::fs::read(dir.join("config.json")).is_ok_and(|b| serde_json::from_slice::<TinyConfig>(&b).is_ok())
    }

    fn load(&self, dir: &std::path::Path, device: &Device) -> Result<super::Vlm, super::BoxedError> {
        Ok(super::checkpoint::load(dir, device).map(|(model, _)| super::Vlm::Tiny(model))?)
    }

    fn random(&self, dir: &std::path::Path, device: &Device) -> Result<super::Vlm, super::BoxedError> {
        let path = dir.join("config.json");
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let config: TinyConfig = serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(super::Vlm::Tiny(config.init(device)))
    }
}

#[derive(Module, Debug)]
pub struct TinyVlm {
    patch: Linear,
    /// Brings patch embeddings to the scale of token embeddings, so the image is heard.
    patch_norm: LayerNorm,
    tokens: Embedding,
    positions: Embedding,
    blocks: TransformerEncoder,
    norm: LayerNorm,
    head: Linear,
    patch_size: usize,
    image_size: usize,
    max_tokens: usize,
    /// Not saved: how this run computes, set by whoever loads the model.
    #[module(skip)]
    precision: Precision,
    /// The sizes it was built with, for its checkpoint's config.json.
    #[module(skip)]
    config: TinyConfig,
}

/// The tiny model's LoRA-able layers: Burn's attention projections and feed-forward pair.
const LORA_LAYERS: LoraLayers =
    LoraLayers { attention: &["query", "key", "value", "output"], mlp: &["linear_inner", "linear_outer"] };

impl TinyVlm {
    pub fn config(&self) -> &TinyConfig {
        &self.config
    }

    /// LoRA adapters on the targeted weights, every other parameter frozen.
    pub fn with_lora(self, lora: &LoraSpec) -> Result<Self, String> {
        let paths = lora.modules(&LORA_LAYERS, "tiny")?;
        Ok(lora.attach(self, burn::module::ParamGroup::from_any_predicates(paths)))
    }

    /// The same model computing in `precision` from now on; its weights stay as they are.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// The weights a forward pass computes with: these, or their bf16 copy — the cast is part
    /// of the autodiff graph, so gradients come back to these f32 weights.
    fn computing(&self) -> Cow<'_, TinyVlm> {
        let dtype = match self.precision {
            Precision::F32 => FloatDType::F32,
            Precision::Bf16 => FloatDType::BF16,
        };
        if self.float_dtype() == dtype {
            Cow::Borrowed(self)
        } else {
            Cow::Owned(self.clone().map(&mut CastFloats(dtype)))
        }
    }

    /// The same model for answering only, its weights cast once to the precision it computes
    /// in rather than on every call. (Its gradients would no longer reach f32 weights: never
    /// train it.)
    pub fn for_inference(self) -> Self {
        self.computing().into_owned()
    }

    /// The float type the weights compute in, for inputs to match.
    fn float_dtype(&self) -> FloatDType {
        self.patch.weight.val().dtype().into()
    }

    /// Logits over the vocabulary for every text position: `images` [batch, 3, H, W] in
    /// [0, 1], `tokens` [batch, text]. The image patches come first in the sequence; the
    /// returned logits cover the text positions only ([batch, text, vocab]), always in f32.
    pub fn forward(&self, images: Tensor<4>, tokens: Tensor<2, Int>) -> Tensor<3> {
        let model = self.computing();
        let images = images.cast(model.float_dtype());
        model.forward_computing(images, tokens).cast(FloatDType::F32)
    }

    fn forward_computing(&self, images: Tensor<4>, tokens: Tensor<2, Int>) -> Tensor<3> {
        let image = self.embed_image(images);
        let [batch, n_image, _] = image.dims();
        let sequence = self.sequence(image, tokens);
        let [_, length, d] = sequence.dims();
        let mask = generate_autoregressive_mask(batch, length, &sequence.device());
        let hidden = self.blocks.forward(TransformerEncoderInput::new(sequence).mask_attn(mask));
        let text_hidden = hidden.slice([0..batch, n_image..length, 0..d]);
        self.head.forward(self.norm.forward(text_hidden))
    }

    /// Image patches, linearly embedded: [batch, patches, d_model].
    fn embed_image(&self, images: Tensor<4>) -> Tensor<3> {
        let [batch, channels, height, width] = images.dims();
        let p = self.patch_size;
        let (rows, cols) = (height / p, width / p);
        let patches = images.reshape([batch, channels, rows, p, cols, p]).permute([0, 2, 4, 1, 3, 5]).reshape([
            batch,
            rows * cols,
            channels * p * p,
        ]);
        // Pixels centred on zero: a plain background then embeds near the bias, not far off it.
        self.patch_norm.forward(self.patch.forward(patches.mul_scalar(2.0).sub_scalar(1.0)))
    }

    /// The transformer's input: image embeddings, then token embeddings, plus positions.
    fn sequence(&self, image: Tensor<3>, tokens: Tensor<2, Int>) -> Tensor<3> {
        let [batch, n_image, _] = image.dims();
        let text = self.tokens.forward(tokens);
        let [_, n_text, _] = text.dims();
        let sequence = Tensor::cat(vec![image, text], 1);
        let positions = Tensor::<1, Int>::arange(0..(n_image + n_text) as i64, &sequence.device())
            .reshape([1, n_image + n_text])
            .repeat_dim(0, batch);
        sequence + self.positions.forward(positions)
    }

    /// Logits for the token after `tokens`, through the layers' autoregressive cache: each call
    /// extends the previous call's sequence by one token, so only that position's projections
    /// are computed.
    fn next_logits(
        &self,
        image: Tensor<3>,
        tokens: &[u32],
        cache: &mut TransformerEncoderAutoregressiveCache,
    ) -> Vec<f32> {
        let device = image.device();
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, tokens.len()]), &device);
        let sequence = self.sequence(image, ids);
        let [_, length, d] = sequence.dims();
        let mask = generate_autoregressive_mask(1, length, &device);
        let hidden =
            self.blocks.forward_autoregressive_inference(TransformerEncoderInput::new(sequence).mask_attn(mask), cache);
        let last = hidden.slice([0..1, length - 1..length, 0..d]);
        self.head.forward(self.norm.forward(last)).into_data().convert::<f32>().try_to_vec().unwrap_or_default()
    }
}

/// Casts every float weight of a module.
struct CastFloats(FloatDType);

impl ModuleMapper for CastFloats {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = self.0;
        param.map(|weights| weights.cast(dtype))
    }
}

impl TinyVlm {
    /// A completion of `prompt` about `image` ([3, size, size] in [0, 1]).
    pub fn generate_from(&self, image: Tensor<3>, prompt: &str, sampling: &Sampling) -> Generation {
        let mut tokens: Vec<u32> = std::iter::once(BOS).chain(ByteTokenizer.encode(prompt)).collect();
        // Keep the prompt's end, and room for at least one new token.
        let room = self.max_tokens.saturating_sub(1).max(1);
        if tokens.len() > room {
            tokens.drain(..tokens.len() - room);
        }
        let tokens_in = tokens.len();
        let model = self.computing();
        let image = model.embed_image(image.unsqueeze_dim(0).cast(model.float_dtype()));
        let mut stopped = false;
        let mut cache = model.blocks.new_autoregressive_cache();
        let mut rng = sampler(sampling);
        let mut completion = Vec::new();
        while completion.len() < sampling.max_new_tokens && tokens.len() < self.max_tokens {
            let mut logits = model.next_logits(image.clone(), &tokens, &mut cache);
            // Padding and a second BOS are never text.
            for special in [BOS, PAD] {
                logits[special as usize] = f32::NEG_INFINITY;
            }
            let next = pick_token(&logits, sampling, &mut rng);
            if next == EOS {
                stopped = true;
                break;
            }
            tokens.push(next);
            completion.push(next);
        }
        Generation { text: ByteTokenizer.decode(&completion), tokens_in, tokens_out: completion.len(), stopped }
    }

    /// A chat's last image as this model reads it; mid grey when it has none.
    fn chat_pixels(&self, chat: &Chat<'_>) -> Result<Vec<f32>, EncodeError> {
        match chat.images.last() {
            Some(bytes) => pixels(bytes, self.image_size)
                .map_err(|e| EncodeError::Image { index: chat.images.len() - 1, reason: e.to_string() }),
            None => Ok(blank_pixels(self.image_size)),
        }
    }
}

/// The tiny model reads a chat as its text parts, one per line, about its last image: it has
/// no chat template and one image slot.
impl Policy for TinyVlm {
    fn encode(
        &self,
        rows: &[Scored<'_>],
        max_length: Option<usize>,
        device: &Device,
    ) -> Result<TokenBatch, EncodeError> {
        let len = row_limit(max_length, self.max_tokens);
        let prompts: Vec<String> = rows.iter().map(|r| r.chat.plain_text()).collect();
        let examples = rows
            .iter()
            .zip(&prompts)
            .map(|(row, prompt)| {
                Ok(Example { pixels: self.chat_pixels(&row.chat)?, prompt, completion: row.completion })
            })
            .collect::<Result<Vec<_>, EncodeError>>()?;
        Ok(TokenBatch::new(examples, self.image_size, len, device))
    }

    fn completion_logps(&self, batch: &TokenBatch) -> (Tensor<1>, Tensor<1>) {
        logps_from_logits(self.forward(batch.images.clone(), batch.tokens.clone()), batch)
    }

    fn generate(&self, chat: &Chat<'_>, sampling: &Sampling) -> Result<Generation, EncodeError> {
        let device = self.patch.weight.val().device();
        let size = self.image_size;
        let image = Tensor::<3>::from_data(TensorData::new(self.chat_pixels(chat)?, [3, size, size]), &device);
        Ok(self.generate_from(image, &chat.plain_text(), sampling))
    }
}

#[cfg(test)]
mod tests;
