//! The language model: a Llama, Mistral or Qwen2 decoder as transformers computes it —
//! RMSNorm before attention and MLP, grouped-query attention with rotary positions, a SiLU
//! gated MLP — over input embeddings (LLaVA puts image features among them).

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::config::{RopeScaling, TextConfig};
use super::{attend, split_heads};

#[derive(Module, Debug)]
pub struct TextModel {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    #[module(skip)]
    config: TextConfig,
}

#[derive(Module, Debug)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

#[derive(Module, Debug)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    #[module(skip)]
    heads: usize,
    #[module(skip)]
    kv_heads: usize,
}

#[derive(Module, Debug)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

/// Rotary embedding tables for a run of positions: cos and sin, [1, 1, n, head_dim].
struct Rotary {
    cos: Tensor<4>,
    sin: Tensor<4>,
}

impl TextModel {
    pub fn new(config: &TextConfig, device: &Device) -> TextModel {
        let (d, hd) = (config.hidden_size, config.head_dim);
        let linear = |i, o, bias| LinearConfig::new(i, o).with_bias(bias).init(device);
        let norm = || RmsNormConfig::new(d).with_epsilon(config.rms_norm_eps).init(device);
        let layer = || DecoderLayer {
            input_layernorm: norm(),
            self_attn: Attention {
                q_proj: linear(d, config.heads * hd, config.qkv_bias),
                k_proj: linear(d, config.kv_heads * hd, config.qkv_bias),
                v_proj: linear(d, config.kv_heads * hd, config.qkv_bias),
                o_proj: linear(config.heads * hd, d, config.o_bias),
                heads: config.heads,
                kv_heads: config.kv_heads,
            },
            post_attention_layernorm: norm(),
            mlp: Mlp {
                gate_proj: linear(d, config.intermediate_size, config.mlp_bias),
                up_proj: linear(d, config.intermediate_size, config.mlp_bias),
                down_proj: linear(config.intermediate_size, d, config.mlp_bias),
            },
        };
        TextModel {
            embed_tokens: EmbeddingConfig::new(config.vocab_size, d).init(device),
            layers: (0..config.layers).map(|_| layer()).collect(),
            norm: norm(),
            config: config.clone(),
        }
    }

    /// Token embeddings, [batch, length, hidden].
    pub fn embed(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        self.embed_tokens.forward(tokens)
    }

    /// The embedding matrix, [vocab, hidden]: the output projection when tied.
    pub fn embedding_weight(&self) -> Tensor<2> {
        self.embed_tokens.weight.val()
    }

    /// The final hidden states for input embeddings [batch, length, hidden], each position
    /// seeing itself and those before it (within Mistral's sliding window).
    pub fn forward(&self, embeddings: Tensor<3>) -> Tensor<3> {
        self.forward_cached(embeddings, &mut KvCache::default())
    }

    /// The final hidden states of `embeddings` [batch, new, hidden] coming after the positions
    /// `cache` holds; their keys and values join the cache. Rows the cache says are padded on
    /// the left have their positions counted from their first real token, and no position
    /// sees their padding.
    pub fn forward_cached(&self, embeddings: Tensor<3>, cache: &mut KvCache) -> Tensor<3> {
        let [_, new, _] = embeddings.dims();
        let device = embeddings.device();
        let past = cache.length;
        let rotary = Rotary::new(&self.config, past, new, &cache.padding, &device).cast(embeddings.dtype().into());
        let mask = causal_mask(past, new, self.config.sliding_window, &cache.padding, &device);
        cache.layers.resize_with(self.layers.len(), || None);
        let mut x = embeddings;
        for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let normed = layer.input_layernorm.forward(x.clone());
            let attended = layer.self_attn.forward(normed, &rotary, mask.clone(), kv);
            x = x + attended;
            x = x.clone() + layer.mlp.forward(layer.post_attention_layernorm.forward(x));
        }
        cache.length += new;
        self.norm.forward(x)
    }
}

/// Keys and values of the positions seen so far, per layer (before repeating for grouped
/// queries): what lets generation compute only each new token.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    length: usize,
    /// Per row, how many positions at its start are padding (empty: none in any row).
    padding: Vec<usize>,
}

impl KvCache {
    /// A cache for rows left-padded by `padding` positions each.
    pub fn padded(padding: Vec<usize>) -> KvCache {
        let padding = if padding.iter().all(|&p| p == 0) { Vec::new() } else { padding };
        KvCache { padding, ..KvCache::default() }
    }

    /// Only the rows `keep` (indices, in order) from now on: finished rows of a batch stop
    /// costing compute.
    pub fn retain_rows(&mut self, keep: &[usize]) {
        if !self.padding.is_empty() {
            self.padding = keep.iter().map(|&r| self.padding[r]).collect();
        }
        let Some(device) = self.layers.iter().flatten().next().map(|(k, _)| k.device()) else { return };
        let index = Tensor::<1, Int>::from_data(
            TensorData::new(keep.iter().map(|&r| r as i64).collect::<Vec<_>>(), [keep.len()]),
            &device,
        );
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.clone().select(0, index.clone());
            *v = v.clone().select(0, index.clone());
        }
    }
}

impl Rotary {
    /// The tables in `dtype` (computed in f32, then rounded, as transformers does).
    fn cast(self, dtype: burn::tensor::FloatDType) -> Rotary {
        Rotary { cos: self.cos.cast(dtype), sin: self.sin.cast(dtype) }
    }

    /// cos and sin of position × inverse frequency for the `new` columns after `past`, computed
    /// in f32 as transformers does: [1, 1, new, head_dim] when no row is padded, else
    /// [rows, 1, new, head_dim], each row's positions counted from its first real token.
    fn new(config: &TextConfig, past: usize, new: usize, padding: &[usize], device: &Device) -> Rotary {
        let inv_freq = inverse_frequencies(config);
        let half = inv_freq.len();
        let rows = padding.len().max(1);
        let mut cos = Vec::with_capacity(rows * new * half * 2);
        let mut sin = Vec::with_capacity(rows * new * half * 2);
        for row in 0..rows {
            let pad = padding.get(row).copied().unwrap_or(0);
            for column in past..past + new {
                let position = column.saturating_sub(pad);
                let angles: Vec<f32> = inv_freq.iter().map(|f| position as f32 * f).collect();
                // transformers concatenates the frequencies with themselves: [f, f].
                for _ in 0..2 {
                    cos.extend(angles.iter().map(|a| a.cos()));
                    sin.extend(angles.iter().map(|a| a.sin()));
                }
            }
        }
        let table = |v: Vec<f32>| {
            Tensor::<2>::from_data(TensorData::new(v, [rows * new, half * 2]), device).reshape([rows, 1, new, half * 2])
        };
        Rotary { cos: table(cos), sin: table(sin) }
    }
}

/// RoPE's inverse frequencies, with the checkpoint's scaling.
fn inverse_frequencies(config: &TextConfig) -> Vec<f32> {
    let dim = config.head_dim;
    let base = config.rope.theta as f32;
    let plain: Vec<f32> = (0..dim).step_by(2).map(|i| 1.0 / base.powf(i as f32 / dim as f32)).collect();
    match config.rope.scaling {
        RopeScaling::None => plain,
        RopeScaling::Linear { factor } => plain.into_iter().map(|f| f / factor as f32).collect(),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_positions } => {
            let (factor, low, high, old) =
                (factor as f32, low_freq_factor as f32, high_freq_factor as f32, original_max_positions as f32);
            let (low_wavelen, high_wavelen) = (old / low, old / high);
            plain
                .into_iter()
                .map(|f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    let scaled = if wavelen > low_wavelen { f / factor } else { f };
                    let medium = (high_wavelen..=low_wavelen).contains(&wavelen);
                    if medium {
                        let smooth = (old / wavelen - low) / (high - low);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    }
                })
                .collect()
        }
    }
}

/// True where one of `new` query positions (after `past` earlier ones) may not see a key
/// position: the future, (with a sliding window) keys a window or more behind, and a row's
/// left padding — which a padding position itself still sees, so that no query is left with
/// nothing to attend to. [1 or rows, 1, new, past + new].
fn causal_mask(past: usize, new: usize, window: Option<usize>, padding: &[usize], device: &Device) -> Tensor<4, Bool> {
    let keys = past + new;
    let rows = padding.len().max(1);
    let blocked: Vec<bool> = (0..rows)
        .flat_map(|row| {
            let pad = padding.get(row).copied().unwrap_or(0);
            (past..keys).flat_map(move |q| {
                (0..keys).map(move |k| k > q || window.is_some_and(|w| q - k.min(q) >= w) || (k < pad && k != q))
            })
        })
        .collect();
    Tensor::<2, Bool>::from_data(TensorData::new(blocked, [rows * new, keys]), device).reshape([rows, 1, new, keys])
}

impl Attention {
    /// Attention of `x`'s positions over `past`'s and their own keys, which join `past`.
    fn forward(
        &self,
        x: Tensor<3>,
        rotary: &Rotary,
        mask: Tensor<4, Bool>,
        past: &mut Option<(Tensor<4>, Tensor<4>)>,
    ) -> Tensor<3> {
        let [b, n, _] = x.dims();
        let q = rotate(split_heads(self.q_proj.forward(x.clone()), self.heads), rotary);
        let mut k = rotate(split_heads(self.k_proj.forward(x.clone()), self.kv_heads), rotary);
        let mut v = split_heads(self.v_proj.forward(x), self.kv_heads);
        if let Some((past_k, past_v)) = past.take() {
            k = Tensor::cat(vec![past_k, k], 2);
            v = Tensor::cat(vec![past_v, v], 2);
        }
        *past = Some((k.clone(), v.clone()));
        let repeat = self.heads / self.kv_heads;
        let out = attend(q, repeat_kv(k, repeat), repeat_kv(v, repeat), Some(mask));
        let [_, h, _, hd] = out.dims();
        self.o_proj.forward(out.swap_dims(1, 2).reshape([b, n, h * hd]))
    }
}

impl Mlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.down_proj.forward(silu(self.gate_proj.forward(x.clone())) * self.up_proj.forward(x))
    }
}

/// x·cos + rotate_half(x)·sin, where rotate_half([a, b]) = [−b, a]: [batch, heads, n, hd].
fn rotate(x: Tensor<4>, rotary: &Rotary) -> Tensor<4> {
    let [b, h, n, hd] = x.dims();
    let half = hd / 2;
    let first = x.clone().slice([0..b, 0..h, 0..n, 0..half]);
    let second = x.clone().slice([0..b, 0..h, 0..n, half..hd]);
    let rotated = Tensor::cat(vec![second.neg(), first], 3);
    x * rotary.cos.clone() + rotated * rotary.sin.clone()
}

/// Each key/value head repeated for the query heads that share it: [b, kv·repeat, n, hd].
fn repeat_kv(x: Tensor<4>, repeat: usize) -> Tensor<4> {
    if repeat == 1 {
        return x;
    }
    let [b, kv, n, hd] = x.dims();
    x.reshape([b, kv, 1, n, hd]).repeat_dim(2, repeat).reshape([b, kv * repeat, n, hd])
}
