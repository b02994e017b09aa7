//! Weights of a Hugging Face checkpoint into a Burn module: `model.safetensors`, or the shards
//! `model.safetensors.index.json` lists, in f32, f16 or bf16, through burn-store (PyTorch's
//! `[out, in]` linear weights transposed, norms' `weight`/`bias` as Burn's `gamma`/`beta`),
//! with an architecture's key renames. Every parameter must be found, and every tensor used
//! unless the architecture says it is not needed; a shape that disagrees is named.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{
    ApplyError, FloatCastAdapter, KeyRemapper, ModuleAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore,
};
use burn::tensor::DType;

/// Why a checkpoint's weights do not fit its model.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{dir}: {count} weights the model needs are not in the checkpoint, e.g. {examples}")]
    Missing { dir: PathBuf, count: usize, examples: String },
    #[error("{dir}: {count} tensors in the checkpoint belong to no part of the model, e.g. {examples}")]
    Unused { dir: PathBuf, count: usize, examples: String },
    #[error("{dir}: {detail}")]
    Shape { dir: PathBuf, detail: String },
}

/// The safetensors files of the checkpoint in `dir`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, WeightsError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let read = |reason: String| WeightsError::Read { path: index.clone(), reason };
    let bytes = std::fs::read(&index)
        .map_err(|e| read(format!("no model.safetensors, and its shard index cannot be read: {e}")))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| read(e.to_string()))?;
    let map =
        value.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| read("no `weight_map` object".into()))?;
    let files: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    if files.is_empty() {
        return Err(read("`weight_map` names no files".into()));
    }
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Loads `module`'s parameters from the checkpoint in `dir`: tensor names renamed by
/// `renames` (regex → replacement, in order) first; names starting with one of `unneeded`
/// (after renaming) may be left over.
pub fn load_into<M: Module + ModuleSnapshot>(
    module: &mut M,
    dir: &Path,
    renames: &[(&str, &str)],
    unneeded: &[&str],
) -> Result<(), WeightsError> {
    let files = weight_files(dir)?;
    let remapper = KeyRemapper::from_patterns(renames.to_vec())
        .map_err(|e| WeightsError::Read { path: dir.to_path_buf(), reason: format!("internal rename pattern: {e}") })?;
    let mut applied = BTreeSet::new();
    let mut missing = BTreeSet::new();
    let mut unused = BTreeSet::new();
    for file in &files {
        let adapter = PyTorchToBurnAdapter.chain(FloatCastAdapter::to(DType::F32));
        let mut store =
            SafetensorsStore::from_file(file).remap(remapper.clone()).allow_partial(true).with_from_adapter(adapter);
        let result = module
            .load_from(&mut store)
            .map_err(|e| WeightsError::Read { path: file.clone(), reason: e.to_string() })?;
        if let Some(error) = result.errors.first() {
            return Err(WeightsError::Shape { dir: dir.to_path_buf(), detail: describe(error) });
        }
        applied.extend(result.applied);
        missing.extend(result.missing.into_iter().map(|(path, _)| path));
        unused.extend(result.unused.into_iter().filter(|k| !unneeded.iter().any(|u| k.starts_with(u))));
    }
    let missing: Vec<String> = missing.difference(&applied).cloned().collect();
    if !missing.is_empty() {
        return Err(WeightsError::Missing {
            dir: dir.to_path_buf(),
            count: missing.len(),
            examples: examples(&missing),
        });
    }
    let unused: Vec<String> = unused.into_iter().collect();
    if !unused.is_empty() {
        return Err(WeightsError::Unused { dir: dir.to_path_buf(), count: unused.len(), examples: examples(&unused) });
    }
    Ok(())
}

fn examples(keys: &[String]) -> String {
    let shown: Vec<&str> = keys.iter().take(3).map(String::as_str).collect();
    let more = if keys.len() > 3 { format!(" and {} more", keys.len() - 3) } else { String::new() };
    format!("{}{more}", shown.join(", "))
}

fn describe(error: &ApplyError) -> String {
    match error {
        ApplyError::ShapeMismatch { path, expected, found } => {
            format!(
                "`{path}` has shape {:?} in the checkpoint, but its config makes it {:?}",
                found.as_slice(),
                expected.as_slice()
            )
        }
        other => other.to_string(),
    }
}
