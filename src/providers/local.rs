//! Provider `local`: a checkpoint — produced by a stage (`{ stage: NAME }`) or a folder
//! (`{ path: DIR }`), in a pool or as an evaluated policy — generating in-process through the policy interface. Its calls go through
//! the memo like any other provider's; the checkpoint's digest is its model name, so it is
//! part of every call key and a retrained policy is never answered from an old one's memo.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::tensor::{Device, Tensor, TensorData};

use super::ImageUrls;
use crate::calls::{CallError, CallFuture, CallResult, CallStatus, ChatRequest, Provider};
use crate::dsl::Runtime;
use crate::model::checkpoint;
use crate::model::device;
use crate::model::policy::{Policy, Sampling, blank_pixels, pixels};
use crate::model::tiny::TinyVlm;
use crate::store::Store;

pub struct Local {
    /// One model answers one request at a time: generation is CPU- (or GPU-) bound.
    model: Mutex<TinyVlm>,
    device: Device,
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
            Some(dir) => checkpoint::load(dir, &device).map_err(|e| format!("{}: {e}", dir.display())),
            None => {
                let dir = store.tmp_path("local-model");
                store.restore_dir(digest, &dir).map_err(|e| format!("checkpoint {digest}: {e}"))?;
                let loaded = checkpoint::load(&dir, &device);
                let _ = std::fs::remove_dir_all(&dir);
                loaded.map_err(|e| e.to_string())
            }
        };
        let (model, _) = loaded?;
        Ok(Local { model: Mutex::new(model.with_precision(precision).for_inference()), device, images })
    }

    fn answer(&self, request: &ChatRequest) -> Result<CallResult, CallError> {
        let start = Instant::now();
        let (prompt, image) = super::prompt_and_image(request);
        let sampling = sampling(request);
        let model = self.model.lock().map_err(|_| CallError::Fatal("the local model panicked earlier".into()))?;
        let size = model.image_size();
        let pixels = match image {
            Some(digest) => read_pixels(&self.images.blob_path(&digest), size).map_err(CallError::Fatal)?,
            None => blank_pixels(size),
        };
        let image = Tensor::<3>::from_data(TensorData::new(pixels, [3, size, size]), &self.device);
        let generation = model.generate(image, &prompt, &sampling);
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
}

impl Provider for Local {
    fn send<'a>(&'a self, request: &'a ChatRequest, _timeout: Duration) -> CallFuture<'a> {
        // Generation blocks; the runner's other models go on on the remaining workers.
        Box::pin(async move { tokio::task::block_in_place(|| self.answer(request)) })
    }
}

fn read_pixels(path: &Path, size: usize) -> Result<Vec<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    pixels(&bytes, size).map_err(|e| format!("{}: {e}", path.display()))
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
