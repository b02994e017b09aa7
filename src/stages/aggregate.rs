//! `aggregate`: one score per response from its aspect ratings (the paper: the plain mean).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ConfigureContext, Kind, OutputDecl, Roles, RunContext, Stage, StageError, canonical, parse_params};
use crate::data::DataError;
use crate::data::aggregate::{self, Method, Missing};
use crate::data::frame::strings;
use crate::data::rating::ASPECTS;
use crate::dsl::Issue;
use crate::store::OutputRef;

pub const KIND: Kind = Kind { name: "aggregate", version: 1, model_params: &[], stage_inputs: &[], configure };

/// `all`, or a list of aspect ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Aspects {
    All(AllWord),
    Some(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum AllWord {
    All,
}

fn all_aspects() -> Aspects {
    Aspects::All(AllWord::All)
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default = "all_aspects")]
    aspects: Aspects,
    #[serde(default)]
    weights: BTreeMap<String, f64>,
    #[serde(default)]
    method: Method,
    #[serde(default)]
    missing: Missing,
}

struct Aggregate {
    params: Params,
}

fn configure(params: &Value, _: &ConfigureContext) -> Result<Box<dyn Stage>, Issue> {
    let params: Params = parse_params(params)?;
    if let Aspects::Some(list) = &params.aspects {
        if list.is_empty() {
            return Err(Issue::new("params.aspects", "name at least one aspect, or write `all`"));
        }
        if let Some(dup) = list.iter().enumerate().find_map(|(i, a)| list[..i].contains(a).then_some(a)) {
            return Err(Issue::new("params.aspects", format!("`{dup}` is listed twice")));
        }
    }
    match params.method {
        Method::Weighted => {
            if let Aspects::Some(list) = &params.aspects
                && let Some(missing) = list.iter().find(|a| !params.weights.contains_key(*a))
            {
                return Err(Issue::new("params.weights", format!("`method: weighted` needs a weight for `{missing}`")));
            }
            if let Some((aspect, w)) = params.weights.iter().find(|(_, w)| !w.is_finite() || **w < 0.0) {
                return Err(Issue::new(
                    format!("params.weights.{aspect}"),
                    format!("weights must be finite and not negative, not {w}"),
                ));
            }
        }
        _ if !params.weights.is_empty() => {
            return Err(Issue::new("params.weights", "weights apply to `method: weighted` only"));
        }
        _ => {}
    }
    Ok(Box::new(Aggregate { params }))
}

impl Aggregate {
    /// The aspects to score on: the listed ones, or every aspect the ratings hold
    /// (the three Silkie aspects first, others by name).
    fn aspects(&self, ratings: &polars::prelude::DataFrame) -> Result<Vec<String>, StageError> {
        if let Aspects::Some(list) = &self.params.aspects {
            return Ok(list.clone());
        }
        let column = strings(ratings, "ratings", "aspect")?;
        let mut present: Vec<String> =
            column.iter().flatten().map(String::from).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        present.sort_by_key(|a| (ASPECTS.iter().position(|s| s == a).unwrap_or(ASPECTS.len()), a.clone()));
        if present.is_empty() {
            return Err(DataError::table("ratings", "holds no aspects").into());
        }
        if self.params.method == Method::Weighted
            && let Some(missing) = present.iter().find(|a| !self.params.weights.contains_key(*a))
        {
            return Err(StageError::param(
                "params.weights",
                format!("`method: weighted` needs a weight for `{missing}`, which the ratings hold"),
            ));
        }
        Ok(present)
    }
}

impl Stage for Aggregate {
    fn canonical_params(&self) -> Value {
        canonical(&self.params)
    }

    fn outputs(&self) -> Vec<OutputDecl> {
        vec![OutputDecl { name: "scores".into(), table: true }, OutputDecl { name: "report".into(), table: false }]
    }

    fn is_cheap(&self) -> bool {
        true
    }

    fn roles(&self) -> Roles {
        Roles::Named(&["responses", "ratings"])
    }

    fn run(&self, ctx: &RunContext) -> Result<BTreeMap<String, OutputRef>, StageError> {
        let responses = ctx.read_table("responses")?;
        let ratings = ctx.read_table("ratings")?;
        let options = aggregate::Options {
            aspects: self.aspects(&ratings)?,
            weights: self.params.weights.clone(),
            method: self.params.method,
            missing: self.params.missing,
        };
        let (mut scores, report) = aggregate::aggregate(&responses, &ratings, &options)?;
        Ok(BTreeMap::from([
            ("scores".to_string(), ctx.put_table(&mut scores)?),
            ("report".to_string(), ctx.put_report(&report)?),
        ]))
    }
}
