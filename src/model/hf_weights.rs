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
            // Not validated by the store: its errors come back in the result, to be said here.
            SafetensorsStore::from_file(file)
                .remap(remapper.clone())
                .allow_partial(true)
                .validate(false)
                .with_from_adapter(adapter);
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

/// Writes `module`'s parameters whose paths `keep` picks to `path` as safetensors in
/// PyTorch's layout, each name renamed by `renames` (regex → replacement, in order), the
/// header's keys sorted so the same weights always give the same bytes.
pub fn save<M: Module + ModuleSnapshot>(
    module: &M,
    path: &Path,
    renames: &[(String, String)],
    keep: fn(&str, &str) -> bool,
) -> Result<(), WeightsError> {
    let failed = |reason: String| WeightsError::Read { path: path.to_path_buf(), reason };
    let remapper =
        KeyRemapper::from_patterns(renames.to_vec()).map_err(|e| failed(format!("internal rename pattern: {e}")))?;
    let mut store = SafetensorsStore::from_file(path)
        .with_predicate(keep)
        .remap(remapper)
        .with_to_adapter(burn::store::BurnToPyTorchAdapter)
        .overwrite(true);
    module.save_into(&mut store).map_err(|e| failed(e.to_string()))?;
    crate::model::checkpoint::canonical_header(path).map_err(|e| failed(e.to_string()))
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
                "`{path}` has shape {:?} in the checkpoint, but its config makes it {:?} (in Burn's layout, where a \
                 linear weight is [in, out]): config.json and the weights disagree",
                found.as_slice(),
                expected.as_slice()
            )
        }
        other => other.to_string(),
    }
}

/// A tensor as a safetensors file holds it: its name, dtype (`"BF16"`, …), shape and bytes.
#[derive(Debug, Clone)]
pub struct RawTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub bytes: Vec<u8>,
}

/// A safetensors file's header: its length and its JSON.
fn read_header(file: &mut std::fs::File, path: &Path) -> Result<(u64, serde_json::Value), WeightsError> {
    use std::io::Read;
    let read = |reason: String| WeightsError::Read { path: path.to_path_buf(), reason };
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| read(format!("no safetensors header: {e}")))?;
    let len = u64::from_le_bytes(len);
    if len > 100_000_000 {
        return Err(read(format!("a header of {len} bytes is not a safetensors header")));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(|e| read(format!("a cut-off header: {e}")))?;
    Ok((len, serde_json::from_slice(&header).map_err(|e| read(format!("header: {e}")))?))
}

/// The names of every tensor of the checkpoint in `dir`, and the tensors among them that
/// `wanted` picks, as stored: only their bytes are read, however large the shards around them.
pub fn read_tensors(dir: &Path, wanted: impl Fn(&str) -> bool) -> Result<(Vec<String>, Vec<RawTensor>), WeightsError> {
    use std::io::{Read, Seek, SeekFrom};
    let (mut names, mut out) = (Vec::new(), Vec::new());
    for path in weight_files(dir)? {
        let read = |reason: String| WeightsError::Read { path: path.clone(), reason };
        let mut file = std::fs::File::open(&path).map_err(|e| read(e.to_string()))?;
        let (len, header) = read_header(&mut file, &path)?;
        let tensors = header.as_object().into_iter().flatten().filter(|(name, _)| *name != "__metadata__");
        for (name, entry) in tensors {
            names.push(name.clone());
            if !wanted(name) {
                continue;
            }
            let bad = || read(format!("tensor `{name}`: a malformed header entry"));
            let dtype = entry.get("dtype").and_then(|d| d.as_str()).ok_or_else(bad)?.to_string();
            let shape: Vec<u64> = entry
                .get("shape")
                .and_then(|s| s.as_array())
                .ok_or_else(bad)?
                .iter()
                .map(|n| n.as_u64().ok_or_else(bad))
                .collect::<Result<_, _>>()?;
            let offsets = entry.get("data_offsets").and_then(|o| o.as_array()).ok_or_else(bad)?;
            let (start, end) = match offsets.as_slice() {
                [a, b] => (a.as_u64().ok_or_else(bad)?, b.as_u64().ok_or_else(bad)?),
                _ => return Err(bad()),
            };
            let mut bytes = vec![0u8; end.checked_sub(start).ok_or_else(bad)? as usize];
            file.seek(SeekFrom::Start(8 + len + start)).map_err(|e| read(e.to_string()))?;
            file.read_exact(&mut bytes).map_err(|e| read(format!("tensor `{name}`: {e}")))?;
            out.push(RawTensor { name: name.clone(), dtype, shape, bytes });
        }
    }
    Ok((names, out))
}

/// Adds `tensors` to the safetensors file at `path` (written by [`save`]), its header's keys
/// kept sorted; the file's own data is copied through, never held whole in memory.
pub fn append(path: &Path, tensors: &[RawTensor]) -> Result<(), WeightsError> {
    if tensors.is_empty() {
        return Ok(());
    }
    let failed = |reason: String| WeightsError::Read { path: path.to_path_buf(), reason };
    let mut file = std::fs::File::open(path).map_err(|e| failed(e.to_string()))?;
    let (_, mut header) = read_header(&mut file, path)?;
    let end_of = |entry: &serde_json::Value| entry.get("data_offsets").and_then(|o| o.get(1)).and_then(|e| e.as_u64());
    let map = header.as_object_mut().ok_or_else(|| failed("the header is not a map".into()))?;
    let mut end = map.values().filter_map(end_of).max().unwrap_or(0);
    for tensor in tensors {
        let entry = serde_json::json!({
            "dtype": tensor.dtype, "shape": tensor.shape, "data_offsets": [end, end + tensor.bytes.len() as u64],
        });
        end += tensor.bytes.len() as u64;
        map.insert(tensor.name.clone(), entry);
    }
    let prefix = crate::model::checkpoint::header_bytes(&header).map_err(|e| failed(e.to_string()))?;
    let tmp = path.with_extension("safetensors.tmp");
    let mut write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        out.write_all(&prefix)?;
        std::io::copy(&mut file, &mut out)?;
        for tensor in tensors {
            out.write_all(&tensor.bytes)?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    };
    write().map_err(|e| failed(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| failed(e.to_string()))
}
