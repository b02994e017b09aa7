//! The vision tower: a CLIP or SigLIP ViT as transformers' `CLIPVisionModel` /
//! `SiglipVisionModel` compute it, giving the hidden state after the embeddings and after
//! every encoder layer (LLaVA reads one or more of them, not the pooled output).

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor};

use super::config::{VisionConfig, VisionKind};
use super::{activate, attend, split_heads};

#[derive(Module, Debug)]
pub struct VisionTower {
    embeddings: Embeddings,
    /// CLIP only (transformers' spelling).
    pre_layrnorm: Option<LayerNorm>,
    encoder: Encoder,
    /// Not used for LLaVA's features, but part of the checkpoint a trained copy writes back.
    post_layernorm: LayerNorm,
    #[module(skip)]
    config: VisionConfig,
}

#[derive(Module, Debug)]
struct Embeddings {
    patch_embedding: Conv2d,
    /// CLIP's CLS token.
    class_embedding: Option<Param<Tensor<1>>>,
    position_embedding: Embedding,
}

#[derive(Module, Debug)]
struct Encoder {
    layers: Vec<EncoderLayer>,
}

#[derive(Module, Debug)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: SelfAttention,
    layer_norm2: LayerNorm,
    mlp: Mlp,
}

#[derive(Module, Debug)]
struct SelfAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    #[module(skip)]
    heads: usize,
}

#[derive(Module, Debug)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl VisionTower {
    /// A tower of `config`'s shape (its weights are loaded after).
    pub fn new(config: &VisionConfig, device: &Device) -> VisionTower {
        let d = config.hidden_size;
        let clip = config.kind == VisionKind::Clip;
        let positions = config.patches() + usize::from(clip);
        let norm = || LayerNormConfig::new(d).with_epsilon(config.layer_norm_eps).init(device);
        let linear = |i, o| LinearConfig::new(i, o).init(device);
        let layer = || EncoderLayer {
            layer_norm1: norm(),
            self_attn: SelfAttention {
                q_proj: linear(d, d),
                k_proj: linear(d, d),
                v_proj: linear(d, d),
                out_proj: linear(d, d),
                heads: config.heads,
            },
            layer_norm2: norm(),
            mlp: Mlp { fc1: linear(d, config.intermediate_size), fc2: linear(config.intermediate_size, d) },
        };
        let p = config.patch_size;
        VisionTower {
            embeddings: Embeddings {
                patch_embedding: Conv2dConfig::new([config.channels, d], [p, p])
                    .with_stride([p, p])
                    .with_bias(!clip)
                    .init(device),
                class_embedding: clip.then(|| Param::from_tensor(Tensor::zeros([d], device))),
                position_embedding: EmbeddingConfig::new(positions, d).init(device),
            },
            pre_layrnorm: clip.then(norm),
            encoder: Encoder { layers: (0..config.layers).map(|_| layer()).collect() },
            post_layernorm: norm(),
            config: config.clone(),
        }
    }

    /// Hidden states for `pixels` [images, 3, size, size]: the embeddings' and then each
    /// layer's up to layer `deepest` (the layers past it are not run), every one
    /// [images, positions, hidden].
    pub fn hidden_states(&self, pixels: Tensor<4>, deepest: usize) -> Vec<Tensor<3>> {
        let mut x = self.embed(pixels);
        let mut states = vec![x.clone()];
        for layer in self.encoder.layers.iter().take(deepest) {
            x = layer.forward(x, self.config.act);
            states.push(x.clone());
        }
        states
    }

    fn embed(&self, pixels: Tensor<4>) -> Tensor<3> {
        let patches = self.embeddings.patch_embedding.forward(pixels);
        let [images, d, rows, cols] = patches.dims();
        let mut x = patches.reshape([images, d, rows * cols]).swap_dims(1, 2);
        if let Some(cls) = &self.embeddings.class_embedding {
            let cls = cls.val().reshape([1, 1, d]).repeat_dim(0, images);
            x = Tensor::cat(vec![cls, x], 1);
        }
        let positions = x.dims()[1];
        let ids = Tensor::<1, Int>::arange(0..positions as i64, &x.device()).reshape([1, positions]);
        x = x + self.embeddings.position_embedding.forward(ids);
        match &self.pre_layrnorm {
            Some(norm) => norm.forward(x),
            None => x,
        }
    }
}

impl EncoderLayer {
    fn forward(&self, x: Tensor<3>, act: super::config::Activation) -> Tensor<3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x));
        let hidden = activate(self.mlp.fc1.forward(self.layer_norm2.forward(x.clone())), act);
        x + self.mlp.fc2.forward(hidden)
    }
}

impl SelfAttention {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, n, d] = x.dims();
        let q = split_heads(self.q_proj.forward(x.clone()), self.heads);
        let k = split_heads(self.k_proj.forward(x.clone()), self.heads);
        let v = split_heads(self.v_proj.forward(x), self.heads);
        let out = attend(q, k, v, None);
        self.out_proj.forward(out.swap_dims(1, 2).reshape([b, n, d]))
    }
}
