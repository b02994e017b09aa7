//! Provider `local`: a checkpoint — produced by a stage (`{ stage: NAME }`) or a folder
//! (`{ path: DIR }`), in a pool or as an evaluated policy — generating in-process through the policy interface. Its calls go through
//! the memo like any other provider's; the checkpoint's digest is its model name, so it is
//! part of every call key and a retrained policy is never answered from an old one's memo.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ImageUrls;
use crate::calls::{CallError, CallFuture, CallResult, CallStatus, ChatRequest, Provider};
use crate::dsl::Runtime;
use crate::model::device;
use crate::model::policy::{Chat, Message, Part, Policy, Role, Sampling};
use crate::model::{self, Vlm};
use crate::store::Store;

pub struct Local {
    /// One model answers one request at a time: generation is CPU- (or GPU-) bound.
    model: Mutex<Vlm>,
    images: Arc<ImageUrls>,
}

impl Local {
    /// Loads checkpoint `digest` onto `runtime.device` (flex when unset), to compute in
    /// `runtime.dtype`: from `folder` when the checkpoint is a folder in the workspace, else
    /// from `store`.
    pub fn open(
        digest: &str,
        folder: Option<&Path>,
        store: &Store,
        runtime: &Runtime,
        images: Arc<ImageUrls>,
    ) -> Result<Local, String> {
        let precision = runtime.dtype.unwrap_or_default();
        let device = device::open(runtime.device.as_deref(), precision, false).map_err(|e| e.to_string())?;
        let loaded = match folder {
            Some(dir) => model::load(dir, &device),
            None => {
                let dir = store.tmp_path("local-model");
                store.restore_dir(digest, &dir).map_err(|e| format!("checkpoint {digest}: {e}"))?;
                let loaded = model::load(&dir, &device);
                let _ = std::fs::remove_dir_all(&dir);
                loaded
            }
        };
        let model = loaded.and_then(|m| m.with_precision(precision)).map_err(|e| e.to_string())?;
        Ok(Local { model: Mutex::new(model.for_inference()), images })
    }

    fn answer(&self, request: &ChatRequest) -> Result<CallResult, CallError> {
        let start = Instant::now();
        let images = self.image_files(request)?;
        let chat = chat(request, &images);
        let sampling = sampling(request);
        let model = self.model.lock().map_err(|_| CallError::Fatal("the local model panicked earlier".into()))?;
        // A request the model cannot read is this request's fault, not the model's.
        let generation = model.generate(&chat, &sampling).map_err(|e| CallError::Fatal(e.to_string()))?;
        Ok(CallResult {
            status: CallStatus::Ok,
            text: Some(generation.text),
            finish_reason: Some(if generation.stopped { "stop" } else { "length" }.to_string()),
            tokens_in: Some(generation.tokens_in as u64),
            tokens_out: Some(generation.tokens_out as u64),
            latency_ms: start.elapsed().as_millis() as u64,
            detail: None,
        })
    }

    /// The request's images, each its stored file's bytes, in the order they appear.
    fn image_files(&self, request: &ChatRequest) -> Result<Vec<Vec<u8>>, CallError> {
        request
            .messages
            .iter()
            .flat_map(|m| &m.content)
            .filter_map(|p| match p {
                crate::calls::Part::Image { digest } => Some(self.images.blob_path(digest)),
                crate::calls::Part::Text { .. } => None,
            })
            .map(|path| std::fs::read(&path).map_err(|e| CallError::Fatal(format!("{}: {e}", path.display()))))
            .collect()
    }
}

/// A request as the model's chat: its messages, with `images` (the request's, in order).
fn chat<'a>(request: &ChatRequest, images: &'a [Vec<u8>]) -> Chat<'a> {
    let messages = request
        .messages
        .iter()
        .map(|m| Message {
            role: match m.role.as_str() {
                "system" => Role::System,
                "assistant" => Role::Assistant,
                _ => Role::User,
            },
            content: m
                .content
                .iter()
                .map(|p| match p {
                    crate::calls::Part::Text { text } => Part::Text(text.clone()),
                    crate::calls::Part::Image { .. } => Part::Image,
                })
                .collect(),
        })
        .collect();
    Chat { messages, images: images.iter().map(Vec::as_slice).collect() }
}

impl Provider for Local {
    fn send<'a>(&'a self, request: &'a ChatRequest, _timeout: Duration) -> CallFuture<'a> {
        // Generation blocks; the runner's other models go on on the remaining workers.
        Box::pin(async move { tokio::task::block_in_place(|| self.answer(request)) })
    }
}

/// Decoding settings from the request's params (OpenAI's names and defaults). Without a
/// `seed`, one is derived from the request, so the same request draws the same answer.
fn sampling(request: &ChatRequest) -> Sampling {
    let number = |key: &str| request.params.get(key).and_then(serde_json::Value::as_f64);
    let seed = request.params.get("seed").and_then(serde_json::Value::as_u64).unwrap_or_else(|| {
        let bytes = serde_json::to_vec(request).unwrap_or_default();
        let hash = blake3::hash(&bytes);
        u64::from_le_bytes(hash.as_bytes()[..8].try_into().unwrap_or([0; 8]))
    });
    Sampling {
        temperature: number("temperature").unwrap_or(1.0),
        top_p: number("top_p").unwrap_or(1.0),
        max_new_tokens: number("max_tokens").map_or(64, |n| n.max(1.0) as usize),
        seed,
    }
}
