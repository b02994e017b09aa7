//! `config.json` of a `LlavaForConditionalGeneration` checkpoint, read the way transformers'
//! config classes read it: every value the file leaves out takes that class's default (the
//! 4.x files published on the Hub list only what differs from them), and RoPE settings come
//! from `rope_parameters` (5.x) or `rope_theta` / `rope_scaling` (4.x).

use serde::Deserialize;
use serde_json::Value;

/// What went wrong reading a config, with the key it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

fn bad(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError { key: key.to_string(), reason: reason.into() }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlavaConfig {
    pub vision: VisionConfig,
    pub text: TextConfig,
    pub image_token_id: i64,
    /// Hidden states of these vision layers (negative: from the end), concatenated.
    pub vision_feature_layers: Vec<i64>,
    /// `default` drops the CLS token, `full` keeps every position.
    pub keep_cls: bool,
    pub projector_act: Activation,
    pub projector_bias: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisionKind {
    /// `clip_vision_model`: a CLS token, a pre-encoder LayerNorm, no patch bias.
    Clip,
    /// `siglip_vision_model`: no CLS token, no pre-encoder norm, a patch bias.
    Siglip,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub kind: VisionKind,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub layers: usize,
    pub heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub channels: usize,
    pub act: Activation,
    pub layer_norm_eps: f64,
}

impl LlavaConfig {
    /// Feature rows per image, so `<image>` tokens per image: every patch, plus CLIP's CLS
    /// token when the strategy keeps it.
    pub fn image_tokens(&self) -> usize {
        let cls = usize::from(self.vision.kind == VisionKind::Clip && self.keep_cls);
        self.vision.patches() + cls
    }
}

impl VisionConfig {
    pub fn patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    Llama,
    Mistral,
    Qwen2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub kind: TextKind,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub max_positions: usize,
    pub rms_norm_eps: f64,
    pub rope: Rope,
    /// Biases on q/k/v (Qwen2 always; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// A bias on the output projection (Llama with `attention_bias`).
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub tie_word_embeddings: bool,
    /// Mistral: each position attends to at most this many.
    pub sliding_window: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub theta: f64,
    pub scaling: RopeScaling,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3's frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_positions: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: the exact, erf-based one.
    Gelu,
    /// `gelu_pytorch_tanh` / `gelu_new`: the tanh approximation.
    GeluTanh,
    /// `quick_gelu`: x·σ(1.702x).
    QuickGelu,
    Silu,
}

impl Activation {
    fn parse(key: &str, name: &str) -> Result<Activation, ConfigError> {
        match name {
            "gelu" => Ok(Activation::Gelu),
            "gelu_pytorch_tanh" | "gelu_new" => Ok(Activation::GeluTanh),
            "quick_gelu" => Ok(Activation::QuickGelu),
            "silu" | "swish" => Ok(Activation::Silu),
            other => Err(bad(
                key,
                format!("activation `{other}` is not one silkie computes (gelu, gelu_pytorch_tanh, quick_gelu, silu)"),
            )),
        }
    }
}

/// Reads a `config.json` value.
pub fn parse(config: &Value) -> Result<LlavaConfig, ConfigError> {
    let model_type = config.get("model_type").and_then(Value::as_str).unwrap_or_default();
    if model_type != "llava" {
        return Err(bad("model_type", format!("expected `llava`, found `{model_type}`")));
    }
    let top: Top = serde_json::from_value(config.clone()).map_err(|e| bad("config.json", e.to_string()))?;
    let vision = vision_config(config.get("vision_config").unwrap_or(&Value::Null))?;
    let text = text_config(config.get("text_config").unwrap_or(&Value::Null))?;
    let vision_feature_layers = match top.vision_feature_layer {
        Value::Number(n) => vec![n.as_i64().ok_or_else(|| bad("vision_feature_layer", "expected an integer"))?],
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_i64().ok_or_else(|| bad("vision_feature_layer", "expected integers")))
            .collect::<Result<_, _>>()?,
        _ => return Err(bad("vision_feature_layer", "expected an integer or a list of them")),
    };
    for &layer in &vision_feature_layers {
        let hidden_states = vision.layers as i64 + 1;
        if layer >= hidden_states || layer < -hidden_states {
            return Err(bad(
                "vision_feature_layer",
                format!("{layer} is outside the vision tower's {hidden_states} hidden states"),
            ));
        }
    }
    let keep_cls = match top.vision_feature_select_strategy.as_str() {
        "default" => false,
        "full" => true,
        other => {
            return Err(bad(
                "vision_feature_select_strategy",
                format!("expected `default` or `full`, found `{other}`"),
            ));
        }
    };
    Ok(LlavaConfig {
        vision,
        text: TextConfig { tie_word_embeddings: text.tie_word_embeddings || top.tie_word_embeddings, ..text },
        image_token_id: top.image_token_index,
        vision_feature_layers,
        keep_cls,
        projector_act: Activation::parse("projector_hidden_act", &top.projector_hidden_act)?,
        projector_bias: top.multimodal_projector_bias,
    })
}

/// LlavaConfig's own fields, with its defaults.
#[derive(Deserialize)]
struct Top {
    #[serde(default = "default_image_token", alias = "image_token_id")]
    image_token_index: i64,
    #[serde(default = "default_feature_layer")]
    vision_feature_layer: Value,
    #[serde(default = "default_strategy")]
    vision_feature_select_strategy: String,
    #[serde(default = "default_projector_act")]
    projector_hidden_act: String,
    #[serde(default = "yes")]
    multimodal_projector_bias: bool,
    #[serde(default)]
    tie_word_embeddings: bool,
}

fn default_image_token() -> i64 {
    32000
}
fn default_feature_layer() -> Value {
    Value::from(-2)
}
fn default_strategy() -> String {
    "default".into()
}
fn default_projector_act() -> String {
    "gelu".into()
}
fn yes() -> bool {
    true
}

/// A number from `section`, or `default` when the file leaves it out.
fn number(section: &Value, prefix: &str, key: &str, default: f64) -> Result<f64, ConfigError> {
    match section.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_f64().ok_or_else(|| bad(&format!("{prefix}.{key}"), format!("expected a number, found {v}"))),
    }
}

fn count(section: &Value, prefix: &str, key: &str, default: usize) -> Result<usize, ConfigError> {
    let n = number(section, prefix, key, default as f64)?;
    if n < 1.0 || n.fract() != 0.0 {
        return Err(bad(&format!("{prefix}.{key}"), format!("expected a positive integer, found {n}")));
    }
    Ok(n as usize)
}

fn flag(section: &Value, key: &str, default: bool) -> bool {
    section.get(key).and_then(Value::as_bool).unwrap_or(default)
}

fn text(section: &Value, key: &str, default: &str) -> String {
    section.get(key).and_then(Value::as_str).unwrap_or(default).to_string()
}

fn vision_config(section: &Value) -> Result<VisionConfig, ConfigError> {
    let p = "vision_config";
    // No vision_config at all: LlavaConfig's own CLIP ViT-L/14-336.
    if section.is_null() {
        return vision_config(&serde_json::json!({
            "model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
            "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 336, "patch_size": 14
        }));
    }
    let model_type = text(section, "model_type", "clip_vision_model");
    let (kind, patch, act, eps) = match model_type.as_str() {
        "clip_vision_model" => (VisionKind::Clip, 32, "quick_gelu", 1e-5),
        "siglip_vision_model" => (VisionKind::Siglip, 16, "gelu_pytorch_tanh", 1e-6),
        other => {
            return Err(bad(
                "vision_config.model_type",
                format!("vision tower `{other}` is not supported (clip_vision_model, siglip_vision_model)"),
            ));
        }
    };
    let config = VisionConfig {
        kind,
        hidden_size: count(section, p, "hidden_size", 768)?,
        intermediate_size: count(section, p, "intermediate_size", 3072)?,
        layers: count(section, p, "num_hidden_layers", 12)?,
        heads: count(section, p, "num_attention_heads", 12)?,
        image_size: count(section, p, "image_size", 224)?,
        patch_size: count(section, p, "patch_size", patch)?,
        channels: count(section, p, "num_channels", 3)?,
        act: Activation::parse("vision_config.hidden_act", &text(section, "hidden_act", act))?,
        layer_norm_eps: number(section, p, "layer_norm_eps", eps)?,
    };
    if !config.hidden_size.is_multiple_of(config.heads) {
        return Err(bad("vision_config.num_attention_heads", "must divide hidden_size"));
    }
    if !config.image_size.is_multiple_of(config.patch_size) {
        return Err(bad("vision_config.patch_size", "must divide image_size"));
    }
    Ok(config)
}

/// The defaults of transformers' LlamaConfig, MistralConfig and Qwen2Config that differ.
struct TextDefaults {
    vocab: usize,
    intermediate: usize,
    kv_heads: Option<usize>,
    max_positions: usize,
}

fn text_config(section: &Value) -> Result<TextConfig, ConfigError> {
    let p = "text_config";
    let model_type = text(section, "model_type", "llama");
    let (kind, d) = match model_type.as_str() {
        "llama" => {
            (TextKind::Llama, TextDefaults { vocab: 32000, intermediate: 11008, kv_heads: None, max_positions: 2048 })
        }
        "mistral" => (
            TextKind::Mistral,
            TextDefaults { vocab: 32000, intermediate: 14336, kv_heads: Some(8), max_positions: 131072 },
        ),
        "qwen2" => {
            (TextKind::Qwen2, TextDefaults { vocab: 151936, intermediate: 22016, kv_heads: None, max_positions: 32768 })
        }
        other => {
            return Err(bad(
                "text_config.model_type",
                format!("language model `{other}` is not supported (llama, mistral, qwen2)"),
            ));
        }
    };
    let hidden_size = count(section, p, "hidden_size", 4096)?;
    let heads = count(section, p, "num_attention_heads", 32)?;
    let kv_heads = count(section, p, "num_key_value_heads", d.kv_heads.unwrap_or(heads))?;
    if !heads.is_multiple_of(kv_heads) {
        return Err(bad(
            "text_config.num_key_value_heads",
            format!("{kv_heads} does not divide {heads} attention heads"),
        ));
    }
    let default_head_dim = hidden_size / heads;
    let head_dim = count(section, p, "head_dim", default_head_dim)?;
    let act = text(section, "hidden_act", "silu");
    if Activation::parse("text_config.hidden_act", &act)? != Activation::Silu {
        return Err(bad("text_config.hidden_act", format!("the language model's MLP computes silu, not `{act}`")));
    }
    let attention_bias = flag(section, "attention_bias", false);
    let sliding_window = match kind {
        TextKind::Mistral => match section.get("sliding_window") {
            Some(Value::Null) => None,
            Some(v) => {
                Some(v.as_u64().ok_or_else(|| bad("text_config.sliding_window", "expected an integer"))? as usize)
            }
            None => Some(4096),
        },
        TextKind::Qwen2 if flag(section, "use_sliding_window", false) => {
            return Err(bad("text_config.use_sliding_window", "Qwen2's sliding-window attention is not supported"));
        }
        _ => None,
    };
    Ok(TextConfig {
        kind,
        vocab_size: count(section, p, "vocab_size", d.vocab)?,
        hidden_size,
        intermediate_size: count(section, p, "intermediate_size", d.intermediate)?,
        layers: count(section, p, "num_hidden_layers", 32)?,
        heads,
        kv_heads,
        head_dim,
        max_positions: count(section, p, "max_position_embeddings", d.max_positions)?,
        rms_norm_eps: number(section, p, "rms_norm_eps", 1e-6)?,
        rope: rope(section)?,
        qkv_bias: kind == TextKind::Qwen2 || attention_bias,
        o_bias: kind != TextKind::Qwen2 && attention_bias,
        mlp_bias: kind == TextKind::Llama && flag(section, "mlp_bias", false),
        tie_word_embeddings: flag(section, "tie_word_embeddings", false),
        sliding_window,
    })
}

/// `rope_parameters` (5.x), else `rope_theta` and `rope_scaling` (4.x).
fn rope(section: &Value) -> Result<Rope, ConfigError> {
    let (params, key) = match section.get("rope_parameters").filter(|v| !v.is_null()) {
        Some(params) => (params.clone(), "text_config.rope_parameters"),
        None => {
            let mut params =
                section.get("rope_scaling").filter(|v| !v.is_null()).cloned().unwrap_or(serde_json::json!({}));
            if let (Value::Object(map), Some(theta)) = (&mut params, section.get("rope_theta")) {
                map.insert("rope_theta".into(), theta.clone());
            }
            (params, "text_config.rope_scaling")
        }
    };
    let theta = number(&params, key, "rope_theta", 10000.0)?;
    let kind = params.get("rope_type").or_else(|| params.get("type")).and_then(Value::as_str).unwrap_or("default");
    let factor = || number(&params, key, "factor", 1.0);
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: factor()? },
        "llama3" => RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: number(&params, key, "low_freq_factor", 1.0)?,
            high_freq_factor: number(&params, key, "high_freq_factor", 4.0)?,
            original_max_positions: number(&params, key, "original_max_position_embeddings", 8192.0)?,
        },
        other => return Err(bad(key, format!("RoPE type `{other}` is not supported (default, linear, llama3)"))),
    };
    Ok(Rope { theta, scaling })
}
