//! Provider `local`: a checkpoint — produced by a stage (`{ stage: NAME }`) or a folder
//! (`{ path: DIR }`), in a pool or as an evaluated policy — generating in-process through the policy interface. Its calls go through
//! the memo like any other provider's; the checkpoint's digest is its model name, so it is
//! part of every call key and a retrained policy is never answered from an old one's memo.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ImageUrls;
use crate::calls::{CallError, CallFuture, CallResult, CallStatus, ChatRequest, Provider};
use crate::dsl::Compute;
use crate::model::device;
use crate::model::policy::{Chat, Message, Part, Policy, Role, Sampling};
use crate::model::{self, Vlm};
use crate::store::Store;

pub struct Local {
    /// Requests for the model's thread, which answers those waiting together, as one batch.
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    worker: Option<std::thread::JoinHandle<()>>,
}

/// A request waiting for the model, and where its answer goes.
struct Job {
    request: ChatRequest,
    reply: tokio::sync::oneshot::Sender<Result<CallResult, CallError>>,
}

/// How long the model's thread waits for more requests to join a batch that is not full:
/// nothing beside a generation's seconds, enough for requests sent together to arrive.
const GATHER: Duration = Duration::from_millis(5);

impl Local {
    /// Loads checkpoint `digest` onto `runtime.device` (flex when unset), to compute in
    /// `runtime.dtype`: from `folder` when the checkpoint is a folder in the workspace, else
    /// from `store`. Up to `batch` requests are answered together.
    pub fn open(
        digest: &str,
        folder: Option<&Path>,
        store: &Store,
        compute: &Compute,
        images: Arc<ImageUrls>,
        batch: usize,
    ) -> Result<Local, String> {
        let precision = compute.dtype.unwrap_or_default();
        let device = device::open(compute.device.as_deref(), precision, false).map_err(|e| e.to_string())?;
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
        let model = loaded.and_then(|m| m.with_precision(precision)).map_err(|e| e.to_string())?.for_inference();
        let (jobs, waiting) = std::sync::mpsc::channel();
        let worker = std::thread::Builder::new()
            .name("local-model".into())
            .spawn(move || serve(&model, &images, &waiting, batch.max(1)))
            .map_err(|e| format!("cannot start the model's thread: {e}"))?;
        Ok(Local { jobs: Some(jobs), worker: Some(worker) })
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // Closing the queue ends the thread after the batch it is on; the model's memory is
        // free once this returns.
        self.jobs.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// The model's thread: takes what is waiting (at most `most` requests) and answers it as one
/// batch, until the queue closes.
fn serve(model: &Vlm, images: &ImageUrls, waiting: &std::sync::mpsc::Receiver<Job>, most: usize) {
    while let Ok(first) = waiting.recv() {
        let mut batch = vec![first];
        while batch.len() < most {
            match waiting.recv_timeout(GATHER) {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        tracing::debug!("local model: answering {} requests as one batch", batch.len());
        let answers = answer(model, images, batch.iter().map(|job| &job.request));
        for (job, result) in batch.into_iter().zip(answers) {
            // A caller that gave up no longer needs its answer.
            let _ = job.reply.send(result);
        }
    }
}

/// Each request's answer, those the model can read generated together.
fn answer<'r>(
    model: &Vlm,
    urls: &ImageUrls,
    requests: impl Iterator<Item = &'r ChatRequest>,
) -> Vec<Result<CallResult, CallError>> {
    let start = Instant::now();
    let requests: Vec<&ChatRequest> = requests.collect();
    let images: Vec<Result<Vec<Vec<u8>>, CallError>> = requests.iter().map(|r| image_files(urls, r)).collect();
    let readable: Vec<usize> = (0..requests.len()).filter(|&i| images[i].is_ok()).collect();
    let asks: Vec<(Chat, Sampling)> = readable
        .iter()
        .map(|&i| (chat(requests[i], images[i].as_deref().unwrap_or_default()), sampling(requests[i])))
        .collect();
    let mut generated = model.generate_batch(&asks).into_iter();
    let latency_ms = start.elapsed().as_millis() as u64;
    images
        .into_iter()
        .map(|files| {
            files?;
            // A request the model cannot read is this request's fault, not the model's.
            let generation = generated
                .next()
                .ok_or_else(|| {
                    CallError::Fatal("internal: the model answered fewer requests than it was asked".into())
                })?
                .map_err(|e| CallError::Fatal(e.to_string()))?;
            Ok(CallResult {
                status: CallStatus::Ok,
                text: Some(generation.text),
                finish_reason: Some(if generation.stopped { "stop" } else { "length" }.to_string()),
                tokens_in: Some(generation.tokens_in as u64),
                tokens_out: Some(generation.tokens_out as u64),
                latency_ms,
                detail: None,
            })
        })
        .collect()
}

/// The request's images, each its stored file's bytes, in the order they appear.
fn image_files(urls: &ImageUrls, request: &ChatRequest) -> Result<Vec<Vec<u8>>, CallError> {
    request
        .messages
        .iter()
        .flat_map(|m| &m.content)
        .filter_map(|p| match p {
            crate::calls::Part::Image { digest } => Some(urls.bytes(digest).map_err(CallError::Fatal)),
            crate::calls::Part::Text { .. } => None,
        })
        .collect()
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
        Box::pin(async move {
            let stopped = || CallError::Fatal("the local model stopped (it panicked earlier)".into());
            let (reply, answer) = tokio::sync::oneshot::channel();
            let jobs = self.jobs.as_ref().ok_or_else(stopped)?;
            jobs.send(Job { request: request.clone(), reply }).map_err(|_| stopped())?;
            answer.await.map_err(|_| stopped())?
        })
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
