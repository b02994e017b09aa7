//! Providers answer chat requests: OpenAI-compatible HTTP endpoints (what vLLM, SGLang,
//! Ollama, LiteLLM and hosted APIs speak) and `local` checkpoints generating in-process; the
//! oracle judge joins later.

mod images;
mod local;
mod openai;

use std::sync::Arc;
use std::time::Duration;

use crate::calls::{Limits, Provider};
use crate::dsl::ModelDef;

pub use images::ImageUrls;
pub use local::Local;
pub use openai::OpenAi;

/// The provider kinds `models:` entries may name.
pub const PROVIDERS: &[&str] = &["openai", "local"];

/// What a `models:` entry is, for keys: provider kind, model name and its params.
pub fn identity(name: &str, def: &ModelDef) -> crate::calls::ModelIdentity {
    crate::calls::ModelIdentity {
        provider: def.provider.clone(),
        model: def.model.clone().unwrap_or_else(|| name.to_string()),
        params: def.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

/// Builds the provider and limits for one `models:` entry. Fails (naming the model) when
/// the entry cannot work: no base URL, or an API key variable that is not set.
/// A `local` entry's `model` is the digest of the checkpoint it loads from `store`.
pub fn endpoint(
    name: &str,
    def: &ModelDef,
    images: Arc<ImageUrls>,
    store: &crate::store::Store,
) -> Result<(Arc<dyn Provider>, Limits), String> {
    let provider: Arc<dyn Provider> = match def.provider.as_str() {
        "openai" => Arc::new(OpenAi::new(name, def, images)?),
        "local" => {
            let digest =
                def.model.as_deref().ok_or_else(|| format!("model `{name}`: a local model needs a checkpoint"))?;
            Arc::new(
                Local::open(digest, store, def.runtime.device.as_deref(), images)
                    .map_err(|e| format!("model `{name}`: {e}"))?,
            )
        }
        other => {
            return Err(format!(
                "model `{name}`: provider `{other}` cannot be called here (known: {})",
                PROVIDERS.join(", ")
            ));
        }
    };
    let r = &def.runtime;
    let defaults = Limits::default();
    let limits = Limits {
        max_in_flight: r.max_in_flight.map_or(defaults.max_in_flight, |n| n as usize),
        requests_per_minute: r.requests_per_minute,
        tokens_per_minute: r.tokens_per_minute,
        timeout: r.timeout.map_or(defaults.timeout, Duration::from_secs_f64),
        max_retries: r.max_retries.unwrap_or(defaults.max_retries),
        backoff: r.retry_backoff.map_or(defaults.backoff, Duration::from_secs_f64),
    };
    Ok((provider, limits))
}
