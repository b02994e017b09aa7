//! Matrix expansion: which instances a stage has (its upstream stages' matrix values,
//! combined consistently, times its own matrix), how they are named and found again, and
//! the cap on how many a pipeline may have — checked by multiplying before expanding.

use std::collections::{BTreeMap, HashMap};

use petgraph::graph::{DiGraph, NodeIndex};
use serde_json::Value;

use super::Instance;
use crate::dsl::{Issue, StageDef};

/// How many instances a pipeline may expand to unless told otherwise (`--max-instances`).
pub const DEFAULT_MAX_INSTANCES: usize = 10_000;

/// Matrix values of an instance: axis → value.
type Bindings = BTreeMap<String, Value>;

/// The instances of one stage, found by their matrix values.
pub(super) struct StageInstances {
    nodes: Vec<NodeIndex>,
    /// The axes every instance of the stage is bound on.
    axes: Vec<String>,
    by_bindings: HashMap<String, NodeIndex>,
}

impl StageInstances {
    pub(super) fn new(nodes: Vec<NodeIndex>, graph: &DiGraph<Instance, ()>) -> StageInstances {
        let axes: Vec<String> = graph[nodes[0]].bindings.keys().cloned().collect();
        let by_bindings = nodes.iter().map(|&n| (bindings_text(&graph[n].bindings, &axes), n)).collect();
        StageInstances { nodes, axes, by_bindings }
    }

    /// The instance whose matrix values are those of `bindings` (which binds at least our axes).
    pub(super) fn matching(&self, bindings: &Bindings) -> Option<NodeIndex> {
        self.by_bindings.get(&bindings_text(bindings, &self.axes)).copied()
    }
}

/// The values of `axes` in `bindings` as one string, equal exactly when the values are
/// (`1` and `"1"` differ).
fn bindings_text(bindings: &Bindings, axes: &[String]) -> String {
    let values: Vec<Option<&Value>> = axes.iter().map(|a| bindings.get(a)).collect();
    serde_json::to_string(&values).unwrap_or_default()
}

/// Why a stage's instances cannot be listed.
pub(super) enum Unbound {
    Invalid(Issue),
    /// The pipeline would pass `--max-instances`.
    TooMany(Issue),
}

/// How many instances the stages so far made, and how many the pipeline may have.
#[derive(Clone, Copy)]
pub(super) struct InstanceRoom {
    pub made: usize,
    pub max: usize,
}

impl InstanceRoom {
    /// Refuses `count` more instances (a product of axis lengths, so possibly huge) that
    /// would take the pipeline past the limit.
    fn check(&self, count: u128, path: &str, how: &str) -> Result<(), Unbound> {
        let total = count.saturating_add(self.made as u128);
        if total <= self.max as u128 {
            return Ok(());
        }
        Err(Unbound::TooMany(
            Issue::new(
                path,
                format!(
                    "this stage would expand to {count} instances ({how}), {total} in the pipeline; the limit is {}",
                    self.max
                ),
            )
            .with_help(Some(
                "raise it with `--max-instances N` (or SILKIE_MAX_INSTANCES) if you mean it, or sweep fewer values"
                    .into(),
            )),
        ))
    }
}

/// The matrix bindings of a stage's instances: those of its upstream stages (fan-out),
/// combined consistently, times its own matrix. Upstream instances are matched through an
/// index on their shared axes, so fan-out costs what it produces, not a product of scans.
pub(super) fn bindings_for(
    stage: &StageDef,
    upstream: &[&str],
    by_stage: &HashMap<&str, StageInstances>,
    graph: &DiGraph<Instance, ()>,
    room: InstanceRoom,
) -> Result<Vec<Bindings>, Unbound> {
    let base = format!("stages.{}", stage.name);
    let mut combos: Vec<Bindings> = vec![BTreeMap::new()];
    for dep in upstream {
        let Some(first) = combos.first() else { break };
        let theirs = &by_stage[dep];
        // Every combination so far binds the same axes, as does every instance of `dep`.
        let shared: Vec<String> = theirs.axes.iter().filter(|a| first.contains_key(*a)).cloned().collect();
        let mut by_shared: HashMap<String, Vec<NodeIndex>> = HashMap::new();
        for &node in &theirs.nodes {
            by_shared.entry(bindings_text(&graph[node].bindings, &shared)).or_default().push(node);
        }
        let matches: Vec<&[NodeIndex]> =
            combos.iter().map(|c| by_shared.get(&bindings_text(c, &shared)).map_or(&[][..], Vec::as_slice)).collect();
        let count: usize = matches.iter().map(|m| m.len()).sum();
        room.check(
            count as u128,
            &format!("{base}.needs"),
            &format!("one per combination of the matrix values of `{dep}` and the other stages it needs"),
        )?;
        combos = combos
            .iter()
            .zip(matches)
            .flat_map(|(combo, nodes)| {
                nodes.iter().map(move |&node| {
                    let mut merged = combo.clone();
                    merged.extend(graph[node].bindings.clone());
                    merged
                })
            })
            .collect();
    }
    for axis in stage.matrix.keys() {
        if combos.iter().any(|c| c.contains_key(axis)) {
            return Err(Unbound::Invalid(Issue::new(
                format!("{base}.matrix.{axis}"),
                format!("the matrix axis `{axis}` is already swept by a stage this one needs; rename one of them"),
            )));
        }
    }
    if !stage.matrix.is_empty() {
        let count =
            stage.matrix.values().fold(combos.len() as u128, |n, values| n.saturating_mul(values.len() as u128));
        let mut factors: Vec<String> = stage.matrix.iter().map(|(axis, v)| format!("{} {axis}", v.len())).collect();
        if combos.len() > 1 {
            factors.insert(0, format!("{} from upstream", combos.len()));
        }
        room.check(count, &format!("{base}.matrix"), &factors.join(" × "))?;
    }
    for (axis, values) in &stage.matrix {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.insert(axis.clone(), v.clone());
                    c
                })
            })
            .collect();
    }
    Ok(combos)
}

fn render(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(super) fn instance_name(stage: &str, bindings: &BTreeMap<String, Value>) -> String {
    if bindings.is_empty() {
        return stage.to_string();
    }
    let parts: Vec<String> = bindings.iter().map(|(k, v)| format!("{k}={}", render(v))).collect();
    format!("{stage}[{}]", parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_show_bindings() {
        let b = BTreeMap::from([("beta".to_string(), json!(0.1)), ("mode".to_string(), json!("fast"))]);
        assert_eq!(instance_name("policy", &b), "policy[beta=0.1,mode=fast]");
        assert_eq!(instance_name("policy", &BTreeMap::new()), "policy");
    }
}
