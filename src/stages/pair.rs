//! `pair`: preference pairs from scores. `all_pairs` with default params reproduces the
//! released recipe; the other strategies are the paper's baselines and common variants.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ConfigureContext, Kind, OutputDecl, Roles, RunContext, Stage, StageError, canonical, parse_params};
use crate::data::pairs::{self, Rejected, Split, Strategy};
use crate::dsl::Issue;
use crate::store::OutputRef;

pub const KIND: Kind = Kind { name: "pair", version: 1, model_params: &[], stage_inputs: &[], configure };

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default)]
    strategy: Strategy,
    /// `model_as_best`: whose response is chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    /// `longest_as_best` / `model_as_best`: how the rejected side is drawn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rejected: Option<Rejected>,
    #[serde(default)]
    min_margin: Option<f64>,
    #[serde(default)]
    dedupe: bool,
    #[serde(default)]
    split: Option<Split>,
    #[serde(default)]
    seed: u64,
}

struct Pair {
    params: Params,
}

fn configure(params: &Value, _: &ConfigureContext) -> Result<Box<dyn Stage>, Issue> {
    let mut params: Params = parse_params(params)?;
    let heuristic = matches!(params.strategy, Strategy::LongestAsBest | Strategy::ModelAsBest);
    match (params.strategy, &params.model) {
        (Strategy::ModelAsBest, None) => {
            return Err(Issue::new(
                "params.model",
                "`strategy: model_as_best` needs `model:`, the model whose response is chosen",
            ));
        }
        (Strategy::ModelAsBest, Some(_)) | (_, None) => {}
        (_, Some(_)) => return Err(Issue::new("params.model", "`model` applies to `strategy: model_as_best` only")),
    }
    if heuristic {
        params.rejected.get_or_insert_default();
    } else if params.rejected.is_some() {
        return Err(Issue::new("params.rejected", "`rejected` applies to `longest_as_best` and `model_as_best` only"));
    }
    if let Some(m) = params.min_margin
        && !(m.is_finite() && m >= 0.0)
    {
        return Err(Issue::new("params.min_margin", format!("expected a non-negative number, not {m}")));
    }
    if let Some(split) = params.split
        && !(split.eval > 0.0 && split.eval < 1.0)
    {
        return Err(Issue::new(
            "params.split.eval",
            format!("the eval share must lie strictly between 0 and 1, not {}", split.eval),
        ));
    }
    Ok(Box::new(Pair { params }))
}

impl Stage for Pair {
    fn canonical_params(&self) -> Value {
        canonical(&self.params)
    }

    fn outputs(&self) -> Vec<OutputDecl> {
        let mut outs = vec![OutputDecl { name: "pairs".into(), table: true }];
        if self.params.split.is_some() {
            outs.push(OutputDecl { name: "eval_pairs".into(), table: true });
        }
        outs.push(OutputDecl { name: "report".into(), table: false });
        outs
    }

    fn is_cheap(&self) -> bool {
        true
    }

    fn roles(&self) -> Roles {
        Roles::Named(&["instructions", "scores"])
    }

    fn run(&self, ctx: &RunContext) -> Result<BTreeMap<String, OutputRef>, StageError> {
        let instructions = ctx.read_table("instructions")?;
        let scores = ctx.read_table("scores")?;
        let options = pairs::Options {
            strategy: self.params.strategy,
            model: self.params.model.clone(),
            rejected: self.params.rejected.unwrap_or_default(),
            min_margin: self.params.min_margin,
            dedupe: self.params.dedupe,
            split: self.params.split,
            seed: self.params.seed,
        };
        let mut paired = pairs::make_pairs(&instructions, &scores, &options)?;
        let mut tables = vec![("pairs", &mut paired.pairs)];
        tables.extend(paired.eval_pairs.as_mut().map(|eval| ("eval_pairs", eval)));
        let mut outputs = ctx.put_tables(tables)?;
        outputs.insert("report".to_string(), ctx.put_report(&paired.report)?);
        Ok(outputs)
    }
}
