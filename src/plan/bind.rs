//! Input roles bound to upstream outputs (DESIGN §3): what each `needs` entry offers,
//! narrowed by `inputs:`, a kind's named roles matched by output name or as the one table
//! offered, and every reference to a stage's output checked to name one it has.

use std::collections::BTreeMap;

use petgraph::graph::{DiGraph, NodeIndex};

use super::Instance;
use crate::dsl::{Issue, StageDef, did_you_mean};
use crate::stages::{OutputDecl, Roles, Stage};

pub(super) fn check_output(path: &str, stage: &str, output: &str, outputs: &[OutputDecl]) -> Result<(), Issue> {
    if outputs.iter().any(|o| o.name == output) {
        return Ok(());
    }
    let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
    Err(Issue::new(
        path,
        format!(
            "stage `{stage}` has no output `{output}`; its outputs: {}",
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        ),
    )
    .with_help(did_you_mean(output, names)))
}

pub(super) type Bound = BTreeMap<String, (NodeIndex, String)>;

/// Binds each input role to an upstream output, as DESIGN §3 says.
pub(super) fn bind_roles(
    stage: &StageDef,
    stage_impl: &dyn Stage,
    deps: &BTreeMap<&str, NodeIndex>,
    graph: &DiGraph<Instance, ()>,
) -> Result<(Bound, Option<Vec<String>>), Issue> {
    let base = format!("stages.{}", stage.name);
    // What each `needs` entry offers: (stage, output decl), narrowed by `stage.output`.
    let mut offered: Vec<(&str, NodeIndex, OutputDecl)> = Vec::new();
    for (i, need) in stage.needs.iter().enumerate() {
        let node = deps[need.stage.as_str()];
        let outputs = graph[node].stage_impl.outputs();
        if let Some(output) = &need.output {
            check_output(&format!("{base}.needs[{i}]"), &need.stage, output, &outputs)?;
        }
        for decl in outputs {
            if need.output.as_ref().is_none_or(|o| *o == decl.name) {
                offered.push((need.stage.as_str(), node, decl));
            }
        }
    }
    let roles = match stage_impl.roles() {
        Roles::EveryNeed => {
            let order = offered.iter().map(|(s, _, decl)| format!("{s}.{}", decl.name)).collect();
            let bound =
                offered.into_iter().map(|(s, node, decl)| (format!("{s}.{}", decl.name), (node, decl.name))).collect();
            return Ok((bound, Some(order)));
        }
        Roles::Named(roles) => roles,
    };
    let mut bound = BTreeMap::new();
    for &role in roles {
        if let Some(need) = stage.inputs.get(role) {
            let node = deps[need.stage.as_str()];
            let output = need.output.clone().unwrap_or_else(|| role.to_string());
            check_output(&format!("{base}.inputs.{role}"), &need.stage, &output, &graph[node].stage_impl.outputs())?;
            bound.insert(role.to_string(), (node, output));
            continue;
        }
        let named: Vec<_> = offered.iter().filter(|(_, _, d)| d.name == role).collect();
        let tables: Vec<_> = offered.iter().filter(|(_, _, d)| d.table).collect();
        let chosen = match (named.as_slice(), tables.as_slice()) {
            ([one], _) => one,
            ([], [one]) => one,
            (several, tables) => {
                let candidates: Vec<String> = if several.is_empty() {
                    tables.iter().map(|(s, _, d)| format!("{s}.{}", d.name)).collect()
                } else {
                    several.iter().map(|(s, _, d)| format!("{s}.{}", d.name)).collect()
                };
                let why = if candidates.is_empty() {
                    "no stage in `needs` provides a table".to_string()
                } else {
                    format!("it could be any of {}", candidates.join(", "))
                };
                return Err(Issue::new(
                    format!("{base}.needs"),
                    format!("cannot tell which output feeds the input `{role}`: {why}"),
                )
                .with_help(Some(format!(
                    "name it: `inputs: {{ {role}: STAGE.OUTPUT }}`, or list the stage in `needs`"
                ))));
            }
        };
        bound.insert(role.to_string(), (chosen.1, chosen.2.name.clone()));
    }
    if let Some(extra) = stage.inputs.keys().find(|r| !roles.contains(&r.as_str())) {
        return Err(Issue::new(
            format!("{base}.inputs.{extra}"),
            format!(
                "kind `{}` has no input `{extra}`; its inputs: {}",
                stage.kind,
                if roles.is_empty() { "none".into() } else { roles.join(", ") }
            ),
        )
        .with_help(did_you_mean(extra, roles.iter().copied())));
    }
    Ok((bound, None))
}
