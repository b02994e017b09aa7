//! What `silkie status` and `explain` say: each instance fresh, stale (and why), pending or
//! never run, from the store's labels and records, without running anything.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use petgraph::graph::NodeIndex;
use serde::Serialize;
use serde_json::Value;

use super::{KeyError, Plan, key_of};
use crate::store::{OutputRef, StatCache, Store};

/// One difference between two key pre-images.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Change {
    pub path: String,
    pub old: Value,
    pub new: Value,
}

/// Leaf-level differences between two pre-images (missing = null).
pub fn diff(old: &Value, new: &Value) -> Vec<Change> {
    let mut out = Vec::new();
    diff_into(old, new, "", &mut out);
    out
}

fn diff_into(old: &Value, new: &Value, path: &str, out: &mut Vec<Change>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let child = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                diff_into(a.get(k).unwrap_or(&Value::Null), b.get(k).unwrap_or(&Value::Null), &child, out);
            }
        }
        (a, b) if a != b => out.push(Change { path: path.to_string(), old: a.clone(), new: b.clone() }),
        _ => {}
    }
}

/// The state `silkie status` reports for one instance.
#[derive(Debug, Clone, Serialize)]
pub struct Assessment {
    pub name: String,
    pub kind: String,
    pub state: State,
    pub reason: Option<String>,
    /// Where it is computing now, when a driver runs it (`running on Slurm (job 12 on n1)`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<String>,
    /// How its last run failed, when it did (the first line of the error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    #[serde(skip)]
    pub key: Option<String>,
    #[serde(skip)]
    pub preimage: Option<Value>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Fresh,
    Stale,
    Pending,
    Never,
}

/// What is fresh, stale (and why), pending or never run — without running anything.
pub fn assess(
    plan: &Plan,
    store: &Store,
    stat_cache: &StatCache,
    workspace: &Path,
    pipeline_label: &str,
) -> Vec<Assessment> {
    let mut known: HashMap<NodeIndex, BTreeMap<String, OutputRef>> = HashMap::new();
    let mut out = Vec::new();
    for &node in &plan.order {
        let inst = &plan.graph[node];
        let label = store.label(pipeline_label, &inst.name).ok().flatten();
        let mut assessment = Assessment {
            name: inst.name.clone(),
            kind: inst.kind.name.to_string(),
            state: State::Never,
            reason: None,
            in_flight: None,
            last_failure: None,
            key: None,
            preimage: None,
        };
        match inst.preimage(&plan.graph, &|n| known.get(&n).cloned(), workspace, stat_cache) {
            Err(KeyError::Pending(up)) => {
                assessment.state = State::Pending;
                assessment.reason = Some(format!("waits on `{up}`, which is not fresh"));
            }
            Err(unreadable @ KeyError::Unreadable { .. }) => {
                assessment.state = if label.is_some() { State::Stale } else { State::Never };
                assessment.reason = Some(unreadable.to_string());
            }
            Ok(preimage) => {
                let key = key_of(&preimage);
                match store.complete_record(&key).ok().flatten() {
                    Some(record) => {
                        assessment.state = State::Fresh;
                        let outs = inst.stage_impl.workspace_outputs();
                        if let Some(out) = outs.iter().find(|o| store.restore_interrupted(&workspace.join(o))) {
                            assessment.state = State::Stale;
                            assessment.reason =
                                Some(format!("a restore of `{out}` was interrupted; the next run restores it in full"));
                        }
                        known.insert(node, record.outputs);
                    }
                    None => match &label {
                        None => assessment.state = State::Never,
                        Some(label) => {
                            assessment.state = State::Stale;
                            assessment.reason = Some(describe(&diff(&label.preimage, &preimage)));
                        }
                    },
                }
                assessment.key = Some(key);
                assessment.preimage = Some(preimage);
            }
        }
        out.push(assessment);
    }
    out
}

/// A one-line reason from a pre-image diff.
pub fn describe(changes: &[Change]) -> String {
    if changes.is_empty() {
        return "its outputs are no longer in the cache (gc)".to_string();
    }
    let shown: Vec<String> = changes
        .iter()
        .take(3)
        .map(|c| match c.path.split_once('.') {
            Some(("inputs", role)) => format!("input `{role}` changed"),
            Some(("files", file)) => format!("file `{file}` changed"),
            _ => format!("{}: {} → {}", c.path, short(&c.old), short(&c.new)),
        })
        .collect();
    let more = if changes.len() > 3 { format!(" (+{} more)", changes.len() - 3) } else { String::new() };
    format!("{}{more}", shown.join("; "))
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 { format!("{}…", s.chars().take(40).collect::<String>()) } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diff_reports_leaf_paths() {
        let a = json!({"params": {"beta": 0.1, "x": 1}, "inputs": {"t": "aa"}});
        let b = json!({"params": {"beta": 0.2, "x": 1}, "inputs": {"t": "bb"}});
        let d = diff(&a, &b);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].path, "inputs.t");
        assert_eq!(d[1], Change { path: "params.beta".into(), old: json!(0.1), new: json!(0.2) });
        assert_eq!(describe(&d), "input `t` changed; params.beta: 0.1 → 0.2");
    }
}
