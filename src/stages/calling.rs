//! What stages that call models share: endpoints for `models:` entries and one round of
//! calls through the memo.

use std::collections::HashMap;
use std::sync::Arc;

use super::{RunContext, StageError};
use crate::calls::{self, CallResult, CallSpec, Memo};
use crate::dsl::ModelDef;
use crate::providers::{self, ImageUrls};

/// Results of `specs` (by call key): remembered ones from the memo, the rest sent now.
pub fn call_models<'m>(
    ctx: &RunContext,
    models: impl IntoIterator<Item = (&'m str, &'m ModelDef)>,
    specs: &[CallSpec],
) -> Result<HashMap<String, CallResult>, StageError> {
    let store = ctx.store.clone();
    let images = Arc::new(ImageUrls::new(move |digest| store.blob_path(digest)));
    let mut endpoints = calls::Endpoints::new();
    if !ctx.offline {
        for (name, def) in models {
            if !endpoints.contains_key(name) {
                let endpoint = providers::endpoint(name, def, images.clone()).map_err(StageError::Failed)?;
                endpoints.insert(name.to_string(), endpoint);
            }
        }
    }
    let memo = Memo::open(&ctx.store.root().join("calls.sqlite")).map_err(|e| StageError::Failed(e.to_string()))?;
    let progress = |done: u64, total: u64, hits: u64, failed: u64| {
        if done == total || done.is_multiple_of(1000) {
            tracing::info!("{}: {done}/{total} calls ({hits} from the memo, {failed} failed)", ctx.instance);
        }
    };
    let (results, stats) = calls::run_calls(specs, &endpoints, &memo, ctx.offline, &progress)
        .map_err(|e| StageError::Failed(e.to_string()))?;
    if stats.needed > 0 {
        tracing::info!(
            "{}: {} calls: {} from the memo, {} sent, {} retries",
            ctx.instance,
            stats.needed,
            stats.memo_hits,
            stats.sent,
            stats.retries
        );
    }
    Ok(results)
}
