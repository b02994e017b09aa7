//! What stages that call models share: endpoints for `models:` entries and one round of
//! calls through the memo.

use std::collections::HashMap;
use std::sync::Arc;

use super::{RunContext, StageError};
use crate::calls::{self, CallResult, CallSpec, Memo};
use crate::data::report::DataReport;
use crate::dsl::ModelDef;
use crate::providers::{self, ImageUrls};

/// Results of `specs` (by call key): remembered ones from the memo, the rest sent now. Adds
/// each model's calls, tokens and estimated cost to `report`.
pub fn call_models<'m>(
    ctx: &RunContext,
    models: impl IntoIterator<Item = (&'m str, &'m ModelDef)>,
    specs: &[CallSpec],
    report: &mut DataReport,
) -> Result<HashMap<String, CallResult>, StageError> {
    let models: Vec<(&str, &ModelDef)> = models.into_iter().collect();
    let store = ctx.store.clone();
    let images = Arc::new(ImageUrls::new(move |digest| store.blob_path(digest)));
    // Built only if some call must be sent: a run answered from the memo needs no API key.
    let make_endpoints = || -> Result<calls::Endpoints, String> {
        let mut endpoints = calls::Endpoints::new();
        for &(name, def) in &models {
            if !endpoints.contains_key(name) {
                endpoints.insert(name.to_string(), providers::endpoint(name, def, images.clone(), ctx.store)?);
            }
        }
        Ok(endpoints)
    };
    let memo = Memo::open(&ctx.store.root().join("calls.sqlite")).map_err(|e| StageError::Failed(e.to_string()))?;
    let bar = ctx.progress_bar(specs.len() as u64, "calls");
    let progress = |done: u64, total: u64, hits: u64, failed: u64| match &bar {
        Some(bar) => {
            bar.set_length(total);
            bar.set_position(done);
            bar.set_message(format!("{hits} from the memo, {failed} failed"));
        }
        None if done == total || done.is_multiple_of(1000) => {
            tracing::info!("{}: {done}/{total} calls ({hits} from the memo, {failed} failed)", ctx.instance);
        }
        None => {}
    };
    let outcome = calls::run_calls(specs, &make_endpoints, &memo, ctx.offline, &progress);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let (results, stats) = outcome.map_err(|e| StageError::Failed(e.to_string()))?;
    account(&models, specs, &results, report);
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

/// Adds each model's calls, tokens and cost to the report.
fn account(
    models: &[(&str, &ModelDef)],
    specs: &[CallSpec],
    results: &HashMap<String, CallResult>,
    report: &mut DataReport,
) {
    let mut seen = std::collections::HashSet::new();
    for spec in specs.iter().filter(|s| seen.insert(s.key.as_str())) {
        let usage = report.calls.entry(spec.model.clone()).or_default();
        usage.calls += 1;
        if let Some(result) = results.get(&spec.key) {
            usage.tokens_in += result.tokens_in.unwrap_or(0);
            usage.tokens_out += result.tokens_out.unwrap_or(0);
        }
    }
    for (model, usage) in report.calls.iter_mut() {
        let runtime = models.iter().find(|(name, _)| name == model).map(|(_, def)| &def.runtime);
        let prices = runtime.and_then(|r| r.price_input_per_million.zip(r.price_output_per_million));
        usage.cost_usd =
            prices.map(|(pin, pout)| (usage.tokens_in as f64 * pin + usage.tokens_out as f64 * pout) / 1e6);
    }
}
