//! Sends the calls the memo does not have: identical calls once, per-model concurrency and
//! rate limits, jittered exponential backoff on transient failures (honouring Retry-After),
//! and every finished call committed to the memo as it completes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::Semaphore;

use super::{CallError, CallResult, ChatRequest, Memo};

pub type CallFuture<'a> = Pin<Box<dyn Future<Output = Result<CallResult, CallError>> + Send + 'a>>;

/// Anything that answers chat requests: an HTTP endpoint, an in-process model, an oracle.
pub trait Provider: Send + Sync {
    fn send<'a>(&'a self, request: &'a ChatRequest, timeout: Duration) -> CallFuture<'a>;
}

/// How hard one model may be called. Never part of any key.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_in_flight: usize,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    pub timeout: Duration,
    pub max_retries: u32,
    /// The first retry waits about this long; each next one twice as long (capped at 60 s).
    pub backoff: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_in_flight: 16,
            requests_per_minute: None,
            tokens_per_minute: None,
            timeout: Duration::from_secs(120),
            max_retries: 8,
            backoff: Duration::from_millis(500),
        }
    }
}

/// One call a stage needs.
#[derive(Debug, Clone)]
pub struct CallSpec {
    pub key: String,
    /// The `models:` entry it goes to.
    pub model: String,
    pub request: ChatRequest,
}

/// What a run of calls did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunStats {
    pub needed: u64,
    pub memo_hits: u64,
    /// Memo hits per model.
    pub memo_hits_by_model: BTreeMap<String, u64>,
    pub sent: u64,
    pub retries: u64,
    /// Calls still failing after their retries, per model, with the last error.
    pub failed: BTreeMap<String, (u64, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum CallsError {
    #[error("--offline: {} calls are not in the memo ({})", .missing.values().sum::<u64>(), describe(.missing))]
    Offline { missing: BTreeMap<String, u64> },
    #[error("{0}")]
    Fatal(String),
    /// A model's provider cannot be set up (no API key, no checkpoint, an unknown provider).
    #[error("model `{model}` {problem}")]
    Endpoint { model: String, problem: String },
    #[error(transparent)]
    Memo(#[from] super::memo::MemoError),
    #[error("{} calls still failed after retries ({}); finished calls are remembered, so a rerun sends only these", .0.failed.values().map(|f| f.0).sum::<u64>(), .0.failed.iter().map(|(m, (n, e))| format!("{m}: {n}, last error: {e}")).collect::<Vec<_>>().join("; "))]
    Failed(RunStats),
}

fn describe(missing: &BTreeMap<String, u64>) -> String {
    missing.iter().map(|(m, n)| format!("{m}: {n}")).collect::<Vec<_>>().join(", ")
}

/// A provider and its limits, by `models:` name.
pub type Endpoints = BTreeMap<String, (Arc<dyn Provider>, Limits)>;

/// Progress: called after every finished call with (done, total, memo hits, failed).
pub type Progress<'a> = &'a (dyn Fn(u64, u64, u64, u64) + Sync);

/// Builds the endpoints, only once some call has to be sent (a run answered wholly from the
/// memo needs no API key).
pub type MakeEndpoints<'a> = &'a dyn Fn() -> Result<Endpoints, CallsError>;

/// Returns the result of every spec, by key: from the memo, or sent now and remembered.
pub fn run_calls(
    specs: &[CallSpec],
    endpoints: MakeEndpoints,
    memo: &Memo,
    offline: bool,
    progress: Progress,
) -> Result<(HashMap<String, CallResult>, RunStats), CallsError> {
    let mut stats = RunStats::default();
    let mut unique: Vec<&CallSpec> = Vec::new();
    let mut seen = HashSet::new();
    for spec in specs {
        if seen.insert(spec.key.as_str()) {
            unique.push(spec);
        }
    }
    stats.needed = unique.len() as u64;
    let mut results = memo.get_many(unique.iter().map(|s| s.key.as_str()))?;
    stats.memo_hits = results.len() as u64;
    for spec in unique.iter().filter(|s| results.contains_key(&s.key)) {
        *stats.memo_hits_by_model.entry(spec.model.clone()).or_default() += 1;
    }
    let missing: Vec<&CallSpec> = unique.into_iter().filter(|s| !results.contains_key(&s.key)).collect();
    if missing.is_empty() {
        progress(stats.needed, stats.needed, stats.memo_hits, 0);
        return Ok((results, stats));
    }
    if offline {
        let mut per_model = BTreeMap::new();
        for spec in &missing {
            *per_model.entry(spec.model.clone()).or_default() += 1;
        }
        return Err(CallsError::Offline { missing: per_model });
    }
    let endpoints = endpoints()?;
    for spec in &missing {
        if !endpoints.contains_key(&spec.model) {
            return Err(CallsError::Fatal(format!("no endpoint for model `{}`", spec.model)));
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CallsError::Fatal(format!("cannot start the async runtime: {e}")))?;
    // Finished calls go to the memo in small transactions, as they come, from one thread.
    let (tx, rx) = std::sync::mpsc::channel::<Finished>();
    let (sent, written) = std::thread::scope(|scope| {
        let writer = scope.spawn(move || write_behind(memo, rx));
        let sent = runtime.block_on(send_all(&missing, &endpoints, tx, stats.needed, stats.memo_hits, progress));
        (sent, writer.join())
    });
    written.map_err(|_| CallsError::Fatal("the memo writer stopped unexpectedly".into()))??;
    let sent = sent?;
    stats.sent = sent.sent;
    stats.retries = sent.retries;
    stats.failed = sent.failed;
    results.extend(sent.results);
    if !stats.failed.is_empty() {
        return Err(CallsError::Failed(stats));
    }
    Ok((results, stats))
}

struct Sent {
    results: HashMap<String, CallResult>,
    sent: u64,
    retries: u64,
    failed: BTreeMap<String, (u64, String)>,
}

/// Per-model state shared by that model's calls.
struct Lane {
    provider: Arc<dyn Provider>,
    limits: Limits,
    permits: Semaphore,
    pacer: tokio::sync::Mutex<Pacer>,
}

/// Request and token budgets per minute, and pauses a `Retry-After` asks for.
struct Pacer {
    next_start: Instant,
    window_start: Instant,
    tokens_in_window: u64,
}

/// What the calls of one run share: the stop flag and the counters.
struct Shared<'a> {
    fatal: AtomicBool,
    fatal_error: Mutex<Option<String>>,
    retries: AtomicU64,
    tx: Mutex<std::sync::mpsc::Sender<Finished>>,
    progress: Progress<'a>,
}

/// A finished call on its way to the memo; `committed` fires once its transaction is durable.
struct Finished {
    row: (String, String, CallResult),
    committed: tokio::sync::oneshot::Sender<()>,
}

impl Shared<'_> {
    fn stop(&self, why: String) {
        self.fatal.store(true, Ordering::SeqCst);
        self.fatal_error.lock().expect("fatal lock").get_or_insert(why);
    }
}

async fn send_all(
    missing: &[&CallSpec],
    endpoints: &Endpoints,
    tx: std::sync::mpsc::Sender<Finished>,
    total: u64,
    hits: u64,
    progress: Progress<'_>,
) -> Result<Sent, CallsError> {
    let lanes: HashMap<&str, Lane> = endpoints
        .iter()
        .map(|(name, (provider, limits))| {
            let lane = Lane {
                provider: provider.clone(),
                limits: limits.clone(),
                permits: Semaphore::new(limits.max_in_flight.max(1)),
                pacer: tokio::sync::Mutex::new(Pacer {
                    next_start: Instant::now(),
                    window_start: Instant::now(),
                    tokens_in_window: 0,
                }),
            };
            (name.as_str(), lane)
        })
        .collect();
    let shared = Shared {
        fatal: AtomicBool::new(false),
        fatal_error: Mutex::new(None),
        retries: AtomicU64::new(0),
        tx: Mutex::new(tx),
        progress,
    };
    // One stream per model, each as wide as its own max_in_flight: a slow or rate-limited
    // model never takes the slots of another.
    let mut by_model: BTreeMap<&str, Vec<&CallSpec>> = BTreeMap::new();
    for spec in missing {
        by_model.entry(spec.model.as_str()).or_default().push(spec);
    }
    let streams = by_model.into_iter().map(|(model, specs)| {
        let lane = &lanes[model];
        let shared = &shared;
        futures::stream::iter(specs)
            .map(move |spec| async move { (spec, call_once_remembered(spec, lane, shared).await) })
            .buffer_unordered(lane.limits.max_in_flight.max(1))
            .boxed()
    });
    let mut merged = futures::stream::select_all(streams);
    let mut results = HashMap::new();
    let mut failed: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let (mut sent, mut done, mut failed_count) = (0, hits, 0);
    while let Some((spec, outcome)) = merged.next().await {
        match outcome {
            Ok(result) => {
                sent += 1;
                results.insert(spec.key.clone(), result);
            }
            Err(CallError::Transient { detail, .. }) => {
                failed_count += 1;
                let entry = failed.entry(spec.model.clone()).or_insert((0, String::new()));
                entry.0 += 1;
                entry.1 = detail;
            }
            Err(CallError::Fatal(_)) => {}
        }
        done += 1;
        (shared.progress)(done, total, hits, failed_count);
    }
    if let Some(msg) = shared.fatal_error.lock().expect("fatal lock").take() {
        return Err(CallsError::Fatal(msg));
    }
    Ok(Sent { results, sent, retries: shared.retries.load(Ordering::Relaxed), failed })
}

/// One call with its retries; a finished one goes to the memo writer at once, and its slot in
/// the lane stays taken until the memo has it: a kill then loses at most `max_in_flight` paid
/// calls per model, however far the writer falls behind.
async fn call_once_remembered(spec: &CallSpec, lane: &Lane, shared: &Shared<'_>) -> Result<CallResult, CallError> {
    match call_with_retries(spec, lane, shared).await {
        Err(e) => {
            if let CallError::Fatal(msg) = &e {
                shared.stop(msg.clone());
            }
            Err(e)
        }
        Ok((result, _slot)) => {
            let (committed, on_commit) = tokio::sync::oneshot::channel();
            let finished = Finished { row: (spec.key.clone(), spec.model.clone(), result.clone()), committed };
            let queued = shared.tx.lock().expect("memo queue lock").send(finished);
            if queued.is_err() || on_commit.await.is_err() {
                // Nothing more may be sent and paid for without being remembered.
                shared.stop("the call memo cannot be written any more; stopped sending".into());
            }
            Ok(result)
        }
    }
}

/// Commits finished calls in batches of whatever has arrived, then tells each call.
fn write_behind(memo: &Memo, rx: std::sync::mpsc::Receiver<Finished>) -> Result<(), super::memo::MemoError> {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let (rows, acks): (Vec<_>, Vec<_>) = batch.into_iter().map(|f| (f.row, f.committed)).unzip();
        memo.put_many(&rows)?;
        for ack in acks {
            // A call that stopped waiting has nothing left to release.
            let _ = ack.send(());
        }
    }
    Ok(())
}

/// Sends one call until it succeeds, fails for good or runs out of retries. A success comes
/// back with the lane slot it was sent under, still taken.
async fn call_with_retries<'l>(
    spec: &CallSpec,
    lane: &'l Lane,
    shared: &Shared<'_>,
) -> Result<(CallResult, tokio::sync::SemaphorePermit<'l>), CallError> {
    let mut attempt = 0u32;
    loop {
        if shared.fatal.load(Ordering::SeqCst) {
            return Err(CallError::Fatal("stopped: another call failed fatally".into()));
        }
        let slot = lane.permits.acquire().await.map_err(|_| CallError::Fatal("the call lane closed".into()))?;
        pace(lane, &spec.model, &spec.request).await;
        // The provider should honour the timeout; this guards against one that does not.
        let limit = lane.limits.timeout + Duration::from_secs(5);
        let outcome = match tokio::time::timeout(limit, lane.provider.send(&spec.request, lane.limits.timeout)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(CallError::Transient {
                detail: format!("no answer within {:.0} s", limit.as_secs_f64()),
                retry_after: None,
            }),
        };
        match outcome {
            Ok(result) => return Ok((result, slot)),
            Err(CallError::Transient { detail, retry_after }) if attempt < lane.limits.max_retries => {
                drop(slot);
                attempt += 1;
                shared.retries.fetch_add(1, Ordering::Relaxed);
                let jittered = backoff(lane.limits.backoff, attempt, &spec.key);
                let wait = retry_after.map_or(jittered, |r| r + jittered.min(r.max(Duration::from_millis(100))));
                if let Some(pause) = retry_after {
                    // The server asked the whole model to wait, not just this call.
                    let mut pacer = lane.pacer.lock().await;
                    pacer.next_start = pacer.next_start.max(Instant::now() + pause);
                }
                tracing::debug!("{}: retry {attempt} in {:.2} s after: {detail}", spec.model, wait.as_secs_f64());
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Full-jitter exponential backoff: between half and all of base·2^(attempt−1), capped at
/// 60 s. The jitter comes from the call key, so it is spread across calls but reproducible.
fn backoff(base: Duration, attempt: u32, key: &str) -> Duration {
    let ceiling = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16)).min(Duration::from_secs(60));
    let hash = blake3::hash(format!("{key}:{attempt}").as_bytes());
    let fraction = u16::from_le_bytes([hash.as_bytes()[0], hash.as_bytes()[1]]) as f64 / u16::MAX as f64;
    ceiling.mul_f64(0.5 + fraction / 2.0)
}

/// Waits until the model's request and token budgets, and any pause a server asked for,
/// allow one more request.
async fn pace(lane: &Lane, model: &str, request: &ChatRequest) {
    let wait = {
        let mut pacer = lane.pacer.lock().await;
        let now = Instant::now();
        let mut start = pacer.next_start.max(now);
        if let Some(rpm) = lane.limits.requests_per_minute.filter(|r| *r > 0) {
            pacer.next_start = start + Duration::from_secs_f64(60.0 / rpm as f64);
        }
        if let Some(tpm) = lane.limits.tokens_per_minute {
            let tokens = estimate_tokens(request);
            start = start.max(pacer.window_start);
            if start.duration_since(pacer.window_start) >= Duration::from_secs(60) {
                pacer.window_start = start;
                pacer.tokens_in_window = 0;
            }
            if pacer.tokens_in_window + tokens > tpm && pacer.tokens_in_window > 0 {
                start = pacer.window_start + Duration::from_secs(60);
                pacer.window_start = start;
                pacer.tokens_in_window = 0;
            }
            pacer.tokens_in_window += tokens;
        }
        start.saturating_duration_since(now)
    };
    // A long wait is said, so a tight budget never looks like a hang.
    if wait >= Duration::from_secs(5) {
        tracing::info!("{model}: waiting {:.0} s for its per-minute request and token budget", wait.as_secs_f64());
    }
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

/// A rough token count for budgets: prompt characters / 4 plus the completion allowance.
fn estimate_tokens(request: &ChatRequest) -> u64 {
    let chars: usize = request
        .messages
        .iter()
        .flat_map(|m| &m.content)
        .map(|p| match p {
            super::Part::Text { text } => text.len(),
            super::Part::Image { .. } => 3000,
        })
        .sum();
    let completion = request.params.get("max_tokens").and_then(|v| v.as_u64()).unwrap_or(256);
    chars as u64 / 4 + completion
}
