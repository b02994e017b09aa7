//! What stages that call models share: model references resolved at run time, and one round
//! of calls through the memo with its accounting.

use std::collections::{BTreeMap, HashMap};

use super::{RunContext, StageError};
use crate::calls::{CallResult, CallSpec, ModelIdentity};
use crate::data::DataError;
use crate::data::report::DataReport;
use crate::dsl::{Issue, ModelDef, ModelRef, Range, did_you_mean};
use crate::providers;

/// Decoding settings a calling stage sends: `path` is where they sit (`params`, or one pool
/// entry). The ranges are those of OpenAI's chat API.
#[derive(Default)]
pub struct Decoding {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u32>,
    pub max_image_side: Option<u32>,
}

impl Decoding {
    pub fn check(&self, path: &str) -> Result<(), Issue> {
        let at = |key: &str| format!("{path}.{key}");
        Range::at_least(0.0).at_most(2.0).check_some(&at("temperature"), self.temperature)?;
        Range::above(0.0).at_most(1.0).check_some(&at("top_p"), self.top_p)?;
        Range::at_least(1.0).check_some(&at("max_tokens"), self.max_tokens.map(f64::from))?;
        // Below a few pixels an image says nothing; the check also keeps scaling from dividing by 0.
        Range::at_least(8.0).check_some(&at("max_image_side"), self.max_image_side.map(f64::from))
    }
}

/// Results of `specs` (by call key): remembered ones from the memo, the rest sent now. Adds
/// each model's calls, tokens and estimated cost to `report`.
pub fn call_models<'m>(
    ctx: &RunContext,
    models: impl IntoIterator<Item = (&'m str, &'m ModelDef)>,
    specs: &[CallSpec],
    report: &mut DataReport,
) -> Result<HashMap<String, CallResult>, StageError> {
    let models: Vec<(&str, &ModelDef)> = models.into_iter().collect();
    let progress = ctx.progress(specs.len() as u64, "calls");
    let on_progress = |done: u64, total: u64, hits: u64, failed: u64| {
        progress.update(done, total, |_| format!("{hits} from the memo, {failed} failed"));
    };
    let round = providers::Round {
        store: ctx.store,
        memo: ctx.memo,
        offline: ctx.offline,
        label: ctx.instance,
        progress: &on_progress,
    };
    let outcome = providers::call_through_memo(&round, &models, specs);
    progress.finish();
    let results = outcome?;
    account(&models, specs, &results, report);
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
        let runtime = models.iter().find(|(name, _)| name == model).map(|(_, def)| &def.runtime.calls);
        let prices = runtime.and_then(|r| r.price_input_per_million.zip(r.price_output_per_million));
        usage.cost_usd =
            prices.map(|(pin, pout)| (usage.tokens_in as f64 * pin + usage.tokens_out as f64 * pout) / 1e6);
    }
}

/// The definition of a checkpoint's model (provider `local`); its `model` — the checkpoint's
/// digest — is filled in at run time by [`checkpoint_model`].
pub fn local_def() -> ModelDef {
    ModelDef {
        provider: "local".into(),
        model: None,
        base_url: None,
        api_key_env: None,
        params: serde_json::Map::new(),
        runtime: crate::dsl::Runtime::default(),
        checkpoint_dir: None,
    }
}

/// The `local` model behind a `{ stage: … }` reference arriving under input `role`: its
/// definition and identity, both naming the checkpoint by digest (so it is in every call key).
pub fn checkpoint_model(ctx: &RunContext, role: &str) -> Result<(ModelDef, ModelIdentity), StageError> {
    let digest = ctx.input(role)?.output.digest.clone();
    Ok(local_model(ctx, digest, None))
}

/// The `local` model behind a `{ path: DIR }` reference: named by the folder's digest — the
/// one the store would give it, so an exported checkpoint is the stage's model — and loaded
/// from the folder itself.
pub fn folder_model(ctx: &RunContext, dir: &str) -> Result<(ModelDef, ModelIdentity), StageError> {
    let full = ctx.workspace.join(dir);
    let digest = ctx.stat_cache.folder_digest(&full).map_err(|e| StageError::Unreadable {
        what: "the checkpoint folder ",
        path: dir.into(),
        reason: e.reason(),
    })?;
    Ok(local_model(ctx, digest, Some(full)))
}

fn local_model(ctx: &RunContext, digest: String, dir: Option<std::path::PathBuf>) -> (ModelDef, ModelIdentity) {
    let mut def = local_def();
    // The stage's `runtime.device` and `runtime.dtype` also place its local models, and its
    // `max_in_flight` bounds how many requests one generates as a batch.
    def.runtime.compute.device = ctx.runtime.compute.device.clone();
    def.runtime.compute.dtype = ctx.runtime.compute.dtype;
    def.runtime.calls.max_in_flight = ctx.runtime.calls.max_in_flight;
    def.checkpoint_dir = dir;
    let identity = providers::identity(&digest, &def);
    def.model = Some(digest);
    (def, identity)
}

/// A model a calling stage sends requests to, as far as configuring can tell: a `models:`
/// entry is known then; a checkpoint (a stage's or a folder) only at run time.
#[derive(Debug, Clone)]
pub enum CallTarget {
    Entry { name: String, def: Box<ModelDef>, identity: ModelIdentity },
    Checkpoint(ModelRef),
}

impl CallTarget {
    /// Looks a reference up in `models:`; `at` is where it is written, for the error.
    pub fn configure(reference: &ModelRef, models: &BTreeMap<String, ModelDef>, at: &str) -> Result<CallTarget, Issue> {
        let ModelRef::Named(name) = reference else { return Ok(CallTarget::Checkpoint(reference.clone())) };
        let Some(def) = models.get(name) else {
            return Err(Issue::new(at, format!("`{name}` is not in `models:`"))
                .with_help(did_you_mean(name, models.keys().map(String::as_str))));
        };
        Ok(CallTarget::Entry {
            name: name.clone(),
            def: Box::new(def.clone()),
            identity: providers::identity(name, def),
        })
    }

    pub fn is_local(&self) -> bool {
        matches!(self, CallTarget::Checkpoint(_))
    }

    /// What calls go to: the model's name in this round of calls, its definition and its
    /// identity (a checkpoint's is its digest).
    pub fn resolve(&self, ctx: &RunContext) -> Result<(String, ModelDef, ModelIdentity), StageError> {
        match self {
            CallTarget::Entry { name, def, identity } => Ok((name.clone(), (**def).clone(), identity.clone())),
            CallTarget::Checkpoint(reference) => {
                let (def, identity) = match reference {
                    ModelRef::Stage { stage, output } => {
                        checkpoint_model(ctx, &super::model_role(stage, output.as_deref()))?
                    }
                    ModelRef::Path(dir) => folder_model(ctx, dir)?,
                    ModelRef::Named(name) => {
                        return Err(StageError::Internal(format!("`{name}` was not looked up in `models:`")));
                    }
                };
                Ok((self.call_name(), def, identity))
            }
        }
    }

    /// The model's name in a round of calls (and in the report's per-model counts): a
    /// `models:` name, a checkpoint's input role, or the folder.
    pub fn call_name(&self) -> String {
        match self {
            CallTarget::Entry { name, .. } => name.clone(),
            CallTarget::Checkpoint(ModelRef::Stage { stage, output }) => super::model_role(stage, output.as_deref()),
            CallTarget::Checkpoint(reference) => reference.to_string(),
        }
    }
}

/// Row `row` of an `instructions` table: its id and prompt, neither of which may be empty.
pub fn instruction<'a>(
    ids: &[Option<&'a str>],
    prompts: &[Option<&'a str>],
    row: usize,
) -> Result<(&'a str, &'a str), StageError> {
    match (ids[row], prompts[row]) {
        (Some(id), Some(prompt)) => Ok((id, prompt)),
        (None, _) => Err(DataError::value("instructions", row + 1, "id", "must not be empty").into()),
        (_, None) => Err(DataError::value("instructions", row + 1, "prompt", "must not be empty").into()),
    }
}
