//! Checkpoints of the tiny model: a directory with `config.json` (sizes and tokenizer) and
//! `model.safetensors` (weights, through burn-store) — the `checkpoint` output of training
//! stages, stored in the blob store like any directory. A checkpoint trained with LoRA and
//! not merged also holds `adapter.json` (rank, alpha, targets) and the adapters' weights;
//! loading merges them, so every reader gets a plain model.

use std::path::Path;

use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::Device;

use burn::module::Module;

use super::lora::LoraSpec;
use super::tiny::{TinyConfig, TinyVlm};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{path}: not a checkpoint of the tiny model: {message}")]
    Format { path: String, message: String },
}

/// Writes `model` and its config into `dir` (created if missing); `adapter` when the model
/// carries unmerged LoRA adapters.
pub fn save(
    model: &TinyVlm,
    config: &TinyConfig,
    adapter: Option<&LoraSpec>,
    dir: &Path,
) -> Result<(), CheckpointError> {
    let io =
        |e: &dyn std::fmt::Display| CheckpointError::Io { path: dir.display().to_string(), message: e.to_string() };
    std::fs::create_dir_all(dir).map_err(|e| io(&e))?;
    let json = serde_json::to_vec_pretty(config).map_err(|e| io(&e))?;
    std::fs::write(dir.join("config.json"), json).map_err(|e| io(&e))?;
    if let Some(adapter) = adapter {
        let json = serde_json::to_vec_pretty(adapter).map_err(|e| io(&e))?;
        std::fs::write(dir.join("adapter.json"), json).map_err(|e| io(&e))?;
    }
    let weights = dir.join("model.safetensors");
    let mut store = SafetensorsStore::from_file(&weights);
    model.save_into(&mut store).map_err(|e| io(&e))?;
    canonical_header(&weights).map_err(|e| io(&e))
}

/// Rewrites a safetensors header with sorted keys. Burn writes its metadata from a hash map,
/// so the same weights would otherwise give different bytes — and different digests — on
/// every save, which would defeat the store's early cut-off.
pub(crate) fn canonical_header(path: &Path) -> std::io::Result<()> {
    let bytes = std::fs::read(path)?;
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    let len =
        u64::from_le_bytes(bytes.get(..8).ok_or_else(|| bad("no header"))?.try_into().map_err(|_| bad("no header"))?)
            as usize;
    let header = bytes.get(8..8 + len).ok_or_else(|| bad("header past the end"))?;
    let value: serde_json::Value = serde_json::from_slice(header).map_err(|e| bad(&e.to_string()))?;
    // Tensor offsets are relative to the data, so they stand.
    let mut out = header_bytes(&value).map_err(|e| bad(&e.to_string()))?;
    out.extend_from_slice(&bytes[8 + len..]);
    std::fs::write(path, out)
}

/// A safetensors header as it is written before the data: its length (8 bytes, little endian)
/// and the JSON, keys sorted (serde_json's maps are) and padded with spaces to 8 bytes.
pub(crate) fn header_bytes(header: &serde_json::Value) -> serde_json::Result<Vec<u8>> {
    let mut json = serde_json::to_vec(header)?;
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

/// Reads a checkpoint written by [`save`] onto `device`.
pub fn load(dir: &Path, device: &Device) -> Result<(TinyVlm, TinyConfig), CheckpointError> {
    let format =
        |e: &dyn std::fmt::Display| CheckpointError::Format { path: dir.display().to_string(), message: e.to_string() };
    let bytes = std::fs::read(dir.join("config.json")).map_err(|e| format(&e))?;
    let config: TinyConfig = serde_json::from_slice(&bytes).map_err(|e| format(&e))?;
    let adapter: Option<LoraSpec> = match std::fs::read(dir.join("adapter.json")) {
        Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| format(&e))?),
        Err(_) => None,
    };
    let mut model = config.init(device);
    if let Some(adapter) = &adapter {
        model = model.with_lora(adapter).map_err(|e| format(&e))?;
    }
    let mut store = SafetensorsStore::from_file(dir.join("model.safetensors"));
    model.load_from(&mut store).map_err(|e| format(&e))?;
    if adapter.is_some() {
        // Merged, it is a plain model again: every weight trainable, as a loaded one is.
        model = model.materialize().set_require_grad(true);
    }
    Ok((model, config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Int, Tensor};

    #[test]
    fn a_saved_model_loads_with_identical_outputs() {
        let device = Device::flex();
        let config = TinyConfig::default();
        let model = config.init(&device);
        let dir = tempfile::tempdir().unwrap();
        save(&model, &config, None, dir.path()).unwrap();
        let (loaded, loaded_config) = load(dir.path(), &device).unwrap();
        assert_eq!(loaded_config, config);
        let images = Tensor::<4>::ones([1, 3, 32, 32], &device);
        let tokens = Tensor::<2, Int>::from_data([[256i64, 72, 105]], &device);
        let a: Vec<f32> = model.forward(images.clone(), tokens.clone()).into_data().try_to_vec().unwrap();
        let b: Vec<f32> = loaded.forward(images, tokens).into_data().try_to_vec().unwrap();
        assert_eq!(a, b);
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        assert!(matches!(load(dir.path(), &device), Err(CheckpointError::Format { .. })));
    }

    #[test]
    fn unmerged_adapters_load_merged_with_the_same_outputs() {
        let device = Device::flex();
        device.seed(3);
        let config = TinyConfig::default();
        let spec = LoraSpec { r: 2, alpha: 4.0, targets: vec![crate::model::lora::LoraTarget::Mlp] };
        let adapted = config.init(&device).with_lora(&spec).unwrap();
        // Adapters start as a no-op (B = 0): nudge every weight so they matter.
        let adapted = adapted.map(&mut Nudge);
        let dir = tempfile::tempdir().unwrap();
        save(&adapted, &config, Some(&spec), dir.path()).unwrap();
        let (loaded, _) = load(dir.path(), &device).unwrap();
        let images = Tensor::<4>::ones([1, 3, 32, 32], &device);
        let tokens = Tensor::<2, Int>::from_data([[256i64, 72, 105]], &device);
        let a: Vec<f32> = adapted.forward(images.clone(), tokens.clone()).into_data().try_to_vec().unwrap();
        let b: Vec<f32> = loaded.forward(images, tokens).into_data().try_to_vec().unwrap();
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "outputs differ by {worst}");
    }

    struct Nudge;

    impl burn::module::ModuleMapper for Nudge {
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<Tensor<D>>,
        ) -> burn::module::Param<Tensor<D>> {
            param.map(|t| t.add_scalar(0.01))
        }
    }
}
