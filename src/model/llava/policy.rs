//! LLaVA behind the policy interface: chats encoded by the checkpoint's own processor, rows
//! as TRL's DPO collator prepares conversational vision rows (prompt = the template over the
//! prompt with the generation prompt; completion = the template over prompt and answer, minus
//! that prompt; both tokenised with no special tokens added), generation through the cache.

use std::path::Path;
use std::sync::Arc;

use burn::module::Module;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::processor::Processor;
use super::{Llava, LoadError, stop_tokens};
use crate::model::lora::{LoraLayers, LoraSpec};
use crate::model::policy::{
    Chat, EncodeError, Generation, Message, Part, Policy, Role, Sampling, Scored, TokenBatch, logps_from_logits,
    row_limit,
};

#[derive(Module, Debug)]
pub struct LlavaPolicy {
    model: Llava,
    #[module(skip)]
    processor: Arc<Processor>,
    #[module(skip)]
    stop: Vec<u32>,
    #[module(skip)]
    origin: Arc<Origin>,
}

/// What saving a trained copy needs from the checkpoint it came from (whose folder may be
/// gone by then): its small files, and how it named its tensors.
#[derive(Debug)]
struct Origin {
    files: Vec<(String, Vec<u8>)>,
    /// The module's tensor names → the checkpoint's (regex → replacement, in order).
    names_back: Vec<(String, String)>,
    /// Tensors the model never runs but the checkpoint holds (SigLIP's pooling head), as they
    /// were: written back, so a saved checkpoint has every tensor its base had.
    kept: Vec<crate::model::hf_weights::RawTensor>,
}

/// The language model's LoRA-able layers, by the checkpoint's module names.
const LORA_LAYERS: LoraLayers =
    LoraLayers { attention: &["q_proj", "k_proj", "v_proj", "o_proj"], mlp: &["gate_proj", "up_proj", "down_proj"] };

/// The files besides the weights that make a checkpoint folder whole.
const COMPANION_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "processor_config.json",
    "preprocessor_config.json",
];

impl Origin {
    fn read(dir: &Path) -> Result<Origin, LoadError> {
        let mut files = Vec::new();
        for name in COMPANION_FILES {
            match std::fs::read(dir.join(name)) {
                Ok(bytes) => files.push((name.to_string(), bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(LoadError::Read { path: dir.join(name).display().to_string(), reason: e.to_string() });
                }
            }
        }
        let (names, kept) = crate::model::hf_weights::read_tensors(dir, super::is_unused_part)?;
        let vision_model =
            if names.iter().any(|n| n.contains("vision_tower.vision_model.")) { "vision_model." } else { "" };
        let pair = |from: &str, to: String| (from.to_string(), to);
        let names_back = if names.iter().any(|n| n.starts_with("model.language_model.")) {
            vec![
                pair(r"^language_model\.", "model.language_model.".into()),
                pair(r"^vision_tower\.", format!("model.vision_tower.{vision_model}")),
                pair(r"^multi_modal_projector\.", "model.multi_modal_projector.".into()),
            ]
        } else {
            vec![
                pair(r"^language_model\.", "language_model.model.".into()),
                pair(r"^lm_head\.", "language_model.lm_head.".into()),
                pair(r"^vision_tower\.", format!("vision_tower.{vision_model}")),
            ]
        };
        Ok(Origin { files, names_back, kept })
    }
}

impl LlavaPolicy {
    pub fn load(dir: &Path, device: &Device) -> Result<LlavaPolicy, LoadError> {
        let (json, config) = super::read_config(dir)?;
        let model = Llava::load_weights(dir, &config, device)?;
        let policy = LlavaPolicy::around(model, dir, &json, Origin::read(dir)?)?;
        // A checkpoint with its adapters apart: every reader gets them merged.
        let adapter = dir.join(super::peft::ADAPTER_DIR);
        if !adapter.join("adapter_config.json").is_file() {
            return Ok(policy);
        }
        let spec = super::peft::read_spec(&adapter)?;
        let adapted = policy
            .with_lora(&spec)
            .map_err(|reason| LoadError::Read { path: adapter.display().to_string(), reason })?;
        // Merged, it is a plain model again: every weight trainable, as a loaded one is.
        let model = super::peft::load_factors(adapted.model, &adapter)?.materialize().set_require_grad(true);
        Ok(LlavaPolicy { model, ..adapted })
    }

    /// A model of the shape `dir`'s config.json gives, with random weights; the tokenizer,
    /// template and image processor files `dir` lacks are written there as stand-ins.
    pub fn random(dir: &Path, device: &Device) -> Result<LlavaPolicy, LoadError> {
        let (json, config) = super::read_config(dir)?;
        super::stand_in::write_missing(dir, &config)
            .map_err(|e| LoadError::Read { path: dir.display().to_string(), reason: e.to_string() })?;
        let origin = Origin { files: Vec::new(), names_back: Vec::new(), kept: Vec::new() };
        LlavaPolicy::around(Llava::new(&config, device), dir, &json, origin)
    }

    /// `model` with what answering and saving need from the folder `dir` its config came
    /// from (`json`): its processor, its end-of-sequence tokens and `origin`.
    fn around(model: Llava, dir: &Path, json: &serde_json::Value, origin: Origin) -> Result<LlavaPolicy, LoadError> {
        let processor = Processor::load(dir, model.config().image_tokens())
            .map_err(|e| LoadError::Read { path: e.file.clone(), reason: e.reason.clone() })?;
        let stop = stop_tokens(dir, json)?;
        Ok(LlavaPolicy { stop, model, processor: Arc::new(processor), origin: Arc::new(origin) })
    }

    /// The same model computing in `dtype` (its weights cast once).
    pub fn in_dtype(self, dtype: burn::tensor::FloatDType) -> LlavaPolicy {
        LlavaPolicy { model: self.model.in_dtype(dtype), ..self }
    }

    pub fn is_bf16(&self) -> bool {
        self.model.is_bf16()
    }

    /// The same model to train: its vision tower frozen.
    pub fn for_training(self) -> LlavaPolicy {
        LlavaPolicy { model: self.model.with_frozen_vision(), ..self }
    }

    /// The same model with its vision tower and projector trainable or frozen as `parts` says.
    pub fn with_trained_parts(self, parts: crate::model::TrainedParts) -> LlavaPolicy {
        LlavaPolicy { model: self.model.with_trained_parts(parts), ..self }
    }

    /// LoRA adapters on the language model's layers `lora` targets (attention: q/k/v/o
    /// projections; mlp: gate/up/down), every other weight frozen — the vision tower and the
    /// projector included, as the paper trains.
    pub fn with_lora(self, lora: &LoraSpec) -> Result<LlavaPolicy, String> {
        let names = lora.modules(&LORA_LAYERS, "llava")?;
        let pattern = format!(r"language_model\.layers\.\d+\.(self_attn|mlp)\.({})\.weight", names.join("|"));
        let group = burn::module::ParamGroup::from_regex(&pattern).map_err(|e| format!("LoRA targets: {e:?}"))?;
        let model = lora.attach(self.model, group);
        Ok(LlavaPolicy { model, ..self })
    }

    /// Writes the model as a Hugging Face checkpoint folder: the origin's config, tokenizer and
    /// processor files, and the weights in the type it computes in (f32, or bf16 after a bf16
    /// run, as transformers saves a model loaded in bf16) under the origin's tensor names — with the
    /// adapters merged, or with `apart` the base's weights as they were and the adapters in
    /// PEFT's layout under `adapter/` (for `PeftModel.from_pretrained` and vLLM's LoRA serving).
    pub fn save(&self, dir: &Path, apart: Option<&LoraSpec>) -> Result<(), LoadError> {
        let failed = |path: &Path, e: &dyn std::fmt::Display| LoadError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| failed(dir, &e))?;
        for (name, bytes) in &self.origin.files {
            let path = dir.join(name);
            let bytes = if name == "config.json" { config_in(bytes, self.model.saved_dtype()) } else { bytes.clone() };
            std::fs::write(&path, bytes).map_err(|e| failed(&path, &e))?;
        }
        let weights = dir.join("model.safetensors");
        self.write_weights(&weights, apart)?;
        crate::model::hf_weights::append(&weights, &self.origin.kept)?;
        if let Some(lora) = apart {
            super::peft::save(&self.model, lora, &LORA_LAYERS, &dir.join(super::peft::ADAPTER_DIR))?;
        }
        Ok(())
    }

    /// The model's own weights, merged or (with `apart`) without the adapters, into `weights`.
    fn write_weights(&self, weights: &Path, apart: Option<&LoraSpec>) -> Result<(), LoadError> {
        match apart {
            None => {
                let merged = self.model.clone().materialize();
                crate::model::hf_weights::save(&merged, weights, &self.origin.names_back, |_, _| true)?;
            }
            Some(_) => {
                crate::model::hf_weights::save(&self.model, weights, &self.origin.names_back, |path, _| {
                    !is_factor(path)
                })?;
            }
        }
        Ok(())
    }

    /// The chat's images as the vision tower reads them, [images, 3, height, width].
    fn pixels(&self, chat: &Chat<'_>, first_index: usize, out: &mut Vec<f32>) -> Result<usize, EncodeError> {
        for (i, bytes) in chat.images.iter().enumerate() {
            let image = image::load_from_memory(bytes)
                .map_err(|e| EncodeError::Image { index: first_index + i, reason: e.to_string() })?;
            out.extend(self.processor.pixels(&image).0);
        }
        Ok(chat.images.len())
    }

    fn tokens(&self, text: &str) -> Result<Vec<u32>, EncodeError> {
        self.processor.encode(text, false).map_err(EncodeError::Text)
    }

    /// The prompt and completion token ids of one row, by TRL's rule.
    fn row_tokens(&self, row: &Scored<'_>) -> Result<(Vec<u32>, Vec<u32>), EncodeError> {
        let prompt = self.processor.render(&row.chat.messages, true).map_err(EncodeError::Text)?;
        let mut whole = row.chat.messages.clone();
        whole.push(Message { role: Role::Assistant, content: vec![Part::Text(row.completion.to_string())] });
        let full = self.processor.render(&whole, false).map_err(EncodeError::Text)?;
        let completion = full.strip_prefix(&prompt).ok_or_else(|| {
            EncodeError::Text(
                "the chat template renders the prompt differently once an answer follows, so the answer cannot be told apart"
                    .into(),
            )
        })?;
        Ok((self.tokens(&prompt)?, self.tokens(completion)?))
    }

    fn device(&self) -> Device {
        self.model.device()
    }
}

impl Policy for LlavaPolicy {
    fn encode(
        &self,
        rows: &[Scored<'_>],
        max_length: Option<usize>,
        device: &Device,
    ) -> Result<TokenBatch, EncodeError> {
        let limit = row_limit(max_length, self.model.config().text.max_positions);
        let mut encoded = Vec::with_capacity(rows.len());
        let (mut pixels, mut image_rows) = (Vec::new(), Vec::new());
        for (r, row) in rows.iter().enumerate() {
            let (prompt, mut completion) = self.row_tokens(row)?;
            if prompt.len() >= limit {
                return Err(EncodeError::TooLong { tokens: prompt.len(), limit });
            }
            // The answer's end is cut to fit, never the prompt and its image tokens.
            completion.truncate(limit - prompt.len());
            let added = self.pixels(&row.chat, image_rows.len(), &mut pixels)?;
            image_rows.extend(std::iter::repeat_n(r, added));
            encoded.push((prompt, completion));
        }
        let len = encoded.iter().map(|(p, c)| p.len() + c.len()).max().unwrap_or(1);
        let pad = i64::from(self.processor.pad_id());
        let (mut tokens, mut mask) = (Vec::with_capacity(rows.len() * len), Vec::with_capacity(rows.len() * len));
        let mut text_tokens = 0;
        for (prompt, completion) in &encoded {
            text_tokens += (prompt.len() + completion.len()) as u64;
            tokens.extend(prompt.iter().chain(completion).map(|&t| i64::from(t)));
            mask.extend(prompt.iter().map(|_| false).chain(completion.iter().map(|_| true)));
            let padding = len - prompt.len() - completion.len();
            tokens.extend(std::iter::repeat_n(pad, padding));
            mask.extend(std::iter::repeat_n(false, padding));
        }
        let (height, width) = self.processor.pixel_size();
        let images = Tensor::<4>::from_data(TensorData::new(pixels, [image_rows.len(), 3, height, width]), device);
        Ok(TokenBatch {
            images,
            image_rows,
            tokens: Tensor::<2, Int>::from_data(TensorData::new(tokens, [rows.len(), len]), device),
            mask: Tensor::<2, Bool>::from_data(TensorData::new(mask, [rows.len(), len]), device),
            text_tokens,
            pad,
        })
    }

    fn completion_logps(&self, batch: &TokenBatch) -> (Tensor<1>, Tensor<1>) {
        let pixels = (!batch.image_rows.is_empty()).then(|| batch.images.clone());
        let logits = self
            .model
            .forward(batch.tokens.clone(), pixels)
            .unwrap_or_else(|e| panic!("internal: a batch this model encoded does not fit it: {e}"));
        logps_from_logits(logits, batch)
    }

    fn generate(&self, chat: &Chat<'_>, sampling: &Sampling) -> Result<Generation, EncodeError> {
        let mut one = self.generate_batch(&[(chat.clone(), *sampling)]);
        one.pop().unwrap_or_else(|| Err(EncodeError::Text("internal: no generation for the one chat".into())))
    }

    fn generate_batch(&self, requests: &[(Chat<'_>, Sampling)]) -> Vec<Result<Generation, EncodeError>> {
        let mut results: Vec<Option<Result<Generation, EncodeError>>> = (0..requests.len()).map(|_| None).collect();
        let (mut prompts, mut samplings, mut rows) = (Vec::new(), Vec::new(), Vec::new());
        let (mut pixels, mut images) = (Vec::new(), 0);
        for (i, (chat, sampling)) in requests.iter().enumerate() {
            match self.prompt(chat, &mut pixels) {
                Ok((tokens, count, room)) => {
                    images += count;
                    samplings.push(Sampling { max_new_tokens: sampling.max_new_tokens.min(room), ..*sampling });
                    prompts.push(tokens);
                    rows.push(i);
                }
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        if !prompts.is_empty() {
            let (height, width) = self.processor.pixel_size();
            let pixels = (images > 0)
                .then(|| Tensor::<4>::from_data(TensorData::new(pixels, [images, 3, height, width]), &self.device()));
            match self.model.generate(&prompts, pixels, &samplings, &self.stop) {
                Ok(outs) => {
                    for ((i, prompt), (out, stopped)) in rows.iter().zip(&prompts).zip(outs) {
                        let text = self.processor.decode(&out).map_err(EncodeError::Text);
                        results[*i] = Some(text.map(|text| Generation {
                            text,
                            tokens_in: prompt.len(),
                            tokens_out: out.len(),
                            stopped,
                        }));
                    }
                }
                Err(e) => rows.iter().for_each(|&i| results[i] = Some(Err(EncodeError::Text(e.to_string())))),
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(EncodeError::Text("internal: not generated".into()))))
            .collect()
    }
}

impl LlavaPolicy {
    /// One chat's prompt tokens (the template with the generation prompt), its images' pixels
    /// appended to `pixels` (only when the whole chat encodes), their count, and how many
    /// tokens the model has room for after the prompt.
    fn prompt(&self, chat: &Chat<'_>, pixels: &mut Vec<f32>) -> Result<(Vec<u32>, usize, usize), EncodeError> {
        let prompt = self.processor.render(&chat.messages, true).map_err(EncodeError::Text)?;
        let tokens = self.tokens(&prompt)?;
        let limit = self.model.config().text.max_positions;
        if tokens.len() >= limit {
            return Err(EncodeError::TooLong { tokens: tokens.len(), limit });
        }
        let config = self.model.config();
        let slots = tokens.iter().filter(|&&t| i64::from(t) == config.image_token_id).count();
        let (images, per_image) = (chat.images.len(), config.image_tokens());
        if slots != images * per_image {
            let mismatch = super::InputError::ImageTokens { tokens: slots, images, per_image };
            return Err(EncodeError::Text(mismatch.to_string()));
        }
        let mut own = Vec::new();
        let images = self.pixels(chat, 0, &mut own)?;
        pixels.extend(own);
        let room = limit - tokens.len();
        Ok((tokens, images, room))
    }
}

/// The origin's config.json, saying which type the weights are in now.
fn config_in(bytes: &[u8], dtype: &str) -> Vec<u8> {
    let Ok(mut config) = serde_json::from_slice::<serde_json::Value>(bytes) else { return bytes.to_vec() };
    if let Some(map) = config.as_object_mut() {
        map.remove("torch_dtype");
        map.insert("dtype".into(), serde_json::Value::from(dtype));
    }
    serde_json::to_vec_pretty(&config).unwrap_or_else(|_| bytes.to_vec())
}

/// A LoRA factor's path (Burn names them `….weight.lora.a` / `.b`).
fn is_factor(path: &str) -> bool {
    path.contains(".lora.")
}
