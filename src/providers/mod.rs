//! Providers answer chat requests: OpenAI-compatible HTTP endpoints (what vLLM, SGLang,
//! Ollama, LiteLLM and hosted APIs speak) and `local` checkpoints generating in-process; the
//! oracle judge joins later.

mod images;
mod local;
mod openai;
mod oracle;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::calls::{self, CallResult, CallSpec, CallsError, Limits, Memo, Provider};
use crate::dsl::ModelDef;
use crate::store::Store;

pub use images::ImageUrls;
pub use local::Local;
pub use openai::OpenAi;
pub use oracle::Oracle;

/// The provider kinds `models:` entries may name.
pub const PROVIDERS: &[&str] = &["openai", "local", "oracle"];

/// What a `models:` entry is, for keys: provider kind, model name and its params — and for a
/// `local` checkpoint its precision, since bf16 answers differ from f32 ones.
pub fn identity(name: &str, def: &ModelDef) -> crate::calls::ModelIdentity {
    let mut params: std::collections::BTreeMap<String, serde_json::Value> =
        def.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    if def.provider == "local" {
        def.runtime.compute.dtype.unwrap_or_default().add_to_key(&mut params);
    }
    crate::calls::ModelIdentity {
        provider: def.provider.clone(),
        model: def.model.clone().unwrap_or_else(|| name.to_string()),
        params,
    }
}

/// How long a `local` call may take unless its `runtime.timeout` says otherwise.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Builds the provider and limits for one `models:` entry. Fails (naming the model) when
/// the entry cannot work: no base URL, or an API key variable that is not set.
/// A `local` entry's `model` is the digest of the checkpoint it loads from `store`.
pub fn endpoint(
    name: &str,
    def: &ModelDef,
    images: Arc<ImageUrls>,
    store: &crate::store::Store,
) -> Result<(Arc<dyn Provider>, Limits), CallsError> {
    let failed = |problem: String| CallsError::Endpoint { model: name.to_string(), problem };
    let r = &def.runtime.calls;
    let defaults = Limits::default();
    let limits = Limits {
        max_in_flight: r.max_in_flight.map_or(defaults.max_in_flight, |n| n as usize),
        requests_per_minute: r.requests_per_minute,
        tokens_per_minute: r.tokens_per_minute,
        // A local generation queues behind the batches before it and cannot be cut short: a
        // timeout would only send it again.
        timeout: r
            .timeout
            .map_or(if def.provider == "local" { LOCAL_TIMEOUT } else { defaults.timeout }, Duration::from_secs_f64),
        max_retries: r.max_retries.unwrap_or(defaults.max_retries),
        backoff: r.retry_backoff.map_or(defaults.backoff, Duration::from_secs_f64),
    };
    let provider: Arc<dyn Provider> = match def.provider.as_str() {
        "openai" => Arc::new(OpenAi::new(name, def, images).map_err(failed)?),
        "oracle" => Arc::new(Oracle::new(images)),
        "local" => {
            let digest = def.model.as_deref().ok_or_else(|| failed("is local and needs a checkpoint".into()))?;
            let folder = def.checkpoint_dir.as_deref();
            Arc::new(
                Local::open(digest, folder, store, &def.runtime.compute, images, limits.max_in_flight)
                    .map_err(|e| failed(format!("cannot be loaded: {e}")))?,
            )
        }
        other => {
            return Err(failed(format!(
                "names provider `{other}`, which cannot be called here (known: {})",
                PROVIDERS.join(", ")
            )));
        }
    };
    Ok((provider, limits))
}

/// A request's text (every text part, one per line) and its last image — what in-process
/// providers read.
fn prompt_and_image(request: &crate::calls::ChatRequest) -> (String, Option<String>) {
    let mut texts = Vec::new();
    let mut image = None;
    for part in request.messages.iter().flat_map(|m| &m.content) {
        match part {
            crate::calls::Part::Text { text } => texts.push(text.as_str()),
            crate::calls::Part::Image { digest } => image = Some(digest.clone()),
        }
    }
    (texts.join("\n"), image)
}

/// Where a round of calls happens: the store (its memo, images and checkpoints), whether
/// sending is allowed, a label for log lines and what to tell of progress.
pub struct Round<'a> {
    pub store: &'a Store,
    /// The call memo to answer from and add to.
    pub memo: &'a std::path::Path,
    pub offline: bool,
    pub label: &'a str,
    pub progress: calls::Progress<'a>,
}

/// Results of `specs` (by call key): remembered ones from the memo, the rest sent now to the
/// providers of `models`, built only if some call must be sent (a run answered from the memo
/// needs no API key and loads no checkpoint).
pub fn call_through_memo(
    round: &Round,
    models: &[(&str, &ModelDef)],
    specs: &[CallSpec],
) -> Result<HashMap<String, CallResult>, CallsError> {
    let store = round.store.clone();
    let images = Arc::new(ImageUrls::new(move |digest| store.read_blob(digest).map_err(|e| e.reason())));
    let make_endpoints = || -> Result<calls::Endpoints, CallsError> {
        let mut endpoints = calls::Endpoints::new();
        for &(name, def) in models {
            if !endpoints.contains_key(name) {
                endpoints.insert(name.to_string(), endpoint(name, def, images.clone(), round.store)?);
            }
        }
        Ok(endpoints)
    };
    let memo = Memo::open(round.memo)?;
    let (results, stats) = calls::run_calls(specs, &make_endpoints, &memo, round.offline, round.progress)?;
    if stats.needed > 0 {
        tracing::info!(
            "{}: {} calls: {} from the memo, {} sent, {} retries",
            round.label,
            stats.needed,
            stats.memo_hits,
            stats.sent,
            stats.retries
        );
    }
    Ok(results)
}
