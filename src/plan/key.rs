//! Stage keys: the canonical pre-image of an instance's key (kind, params, upstream output
//! digests by role, workspace file digests) and its BLAKE3.

use std::collections::BTreeMap;
use std::path::Path;

use petgraph::graph::{DiGraph, NodeIndex};
use serde_json::{Map, Value, json};

use super::{Instance, KEY_SCHEMA};
use crate::store::{OutputRef, StatCache};

/// Why a key cannot be computed yet.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyError {
    /// An upstream instance has no known outputs yet.
    #[error("waits on `{0}`")]
    Pending(String),
    /// A file or folder the key reads (`what` says which, e.g. "the checkpoint folder ") is
    /// missing or unreadable.
    #[error("cannot read {what}`{path}`: {reason}")]
    Unreadable { what: &'static str, path: String, reason: String },
}

impl Instance {
    /// The canonical pre-image of this instance's key, from its upstream outputs.
    pub fn preimage(
        &self,
        graph: &DiGraph<Instance, ()>,
        outputs_of: &dyn Fn(NodeIndex) -> Option<BTreeMap<String, OutputRef>>,
        workspace: &Path,
        stat_cache: &StatCache,
    ) -> Result<Value, KeyError> {
        let digest_of = |node: NodeIndex, output: &str| -> Result<String, KeyError> {
            let outputs = outputs_of(node).ok_or_else(|| KeyError::Pending(graph[node].name.clone()))?;
            outputs
                .get(output)
                .map(|o| o.digest.clone())
                .ok_or_else(|| KeyError::Pending(format!("{}.{output}", graph[node].name)))
        };
        let inputs = match &self.positional_inputs {
            Some(order) => {
                let digests = order.iter().map(|role| {
                    let (node, output) = &self.inputs[role];
                    digest_of(*node, output)
                });
                Value::Array(digests.map(|d| d.map(Value::String)).collect::<Result<_, _>>()?)
            }
            None => {
                let mut map = Map::new();
                for (role, (node, output)) in &self.inputs {
                    map.insert(role.clone(), Value::String(digest_of(*node, output)?));
                }
                Value::Object(map)
            }
        };
        let mut params = self.stage_impl.canonical_params();
        for (stage, output, node, resolved) in &self.model_refs {
            let digest = digest_of(*node, resolved)?;
            substitute_model_ref(&mut params, stage, output.as_deref(), &digest);
        }
        for dir in &self.model_dirs {
            let digest = stat_cache.folder_digest(&workspace.join(dir)).map_err(|e| KeyError::Unreadable {
                what: "the checkpoint folder ",
                path: dir.to_string(),
                reason: e.reason(),
            })?;
            add_model_dir_digest(&mut params, dir, &digest);
        }
        let mut files = Map::new();
        for path in self.stage_impl.key_files().into_iter().chain(self.use_file.clone()) {
            let full = workspace.join(&path);
            let digest = stat_cache.digest(&full).map_err(|e| KeyError::Unreadable {
                what: "",
                path: path.display().to_string(),
                reason: e.reason(),
            })?;
            files.insert(path.to_string_lossy().into_owned(), Value::String(digest));
        }
        Ok(json!({
            "schema": KEY_SCHEMA,
            "kind": self.kind.name,
            "kind_version": self.kind.version,
            "params": params,
            "inputs": inputs,
            "files": files,
        }))
    }
}

/// Puts the digest of a `{ path: DIR }` reference's folder beside it: the model is its
/// content. The path stays, since it labels what the model produced (a pool member's rows).
fn add_model_dir_digest(value: &mut Value, dir: &str, digest: &str) {
    let is_it = |map: &Map<String, Value>| map.get("path").and_then(Value::as_str) == Some(dir);
    edit_maps(value, &is_it, &mut |map| {
        map.insert("digest".into(), Value::String(digest.to_string()));
    });
}

/// Replaces a `{ stage: NAME, output: O }` reference by the digest it resolves to, so a
/// renamed stage keeps its key.
fn substitute_model_ref(value: &mut Value, stage: &str, output: Option<&str>, digest: &str) {
    let is_it = |map: &Map<String, Value>| {
        map.get("stage").and_then(Value::as_str) == Some(stage) && map.get("output").and_then(Value::as_str) == output
    };
    edit_maps(value, &is_it, &mut |map| {
        map.remove("stage");
        map.remove("output");
        map.insert("digest".into(), Value::String(digest.to_string()));
    });
}

/// Applies `edit` to every map anywhere in `value` that `picks`.
fn edit_maps(
    value: &mut Value,
    picks: &dyn Fn(&Map<String, Value>) -> bool,
    edit: &mut dyn FnMut(&mut Map<String, Value>),
) {
    match value {
        Value::Object(map) => {
            if picks(map) {
                edit(map);
            }
            map.values_mut().for_each(|v| edit_maps(v, picks, edit));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| edit_maps(v, picks, edit)),
        _ => {}
    }
}

/// BLAKE3 of the canonical encoding (sorted keys, typed values).
pub fn key_of(preimage: &Value) -> String {
    let bytes = serde_json::to_vec(preimage).expect("JSON values always serialize");
    blake3::hash(&bytes).to_hex().to_string()
}
