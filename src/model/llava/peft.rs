//! LoRA adapters in PEFT's layout, beside a checkpoint in `adapter/`: `adapter_config.json`
//! and `adapter_model.safetensors`, as `PeftModel.save_pretrained` writes them for a
//! `LlavaForConditionalGeneration` — so `PeftModel.from_pretrained` and vLLM's LoRA serving
//! read them, and silkie reads them back. Burn holds a factor pair as `….weight.lora.a`
//! [in, r] and `.b` [r, out] (the update is a·b on the [in, out] weight); PEFT as
//! `lora_A.weight` [r, in] and `lora_B.weight` [out, r]: the same numbers, transposed.

use std::path::Path;

use burn::store::{ModuleSnapshot, PathFilter, SafetensorsStore};
use safetensors::Dtype;
use safetensors::tensor::TensorView;

use super::{Llava, LoadError};
pub use crate::model::lora::ADAPTER_DIR;
use crate::model::lora::{LoraLayers, LoraSpec, LoraTarget};

/// Where PEFT puts the model's modules: under its wrapper, by transformers 5's in-memory names.
const PEFT_PREFIX: &str = "base_model.model.model.";

fn failed(path: &Path, reason: impl std::fmt::Display) -> LoadError {
    LoadError::Read { path: path.display().to_string(), reason: reason.to_string() }
}

/// PEFT's `target_modules` for `modules` of the language model: a pattern, since a list of
/// names would also adapt the vision tower's projections of the same names.
fn target_pattern(modules: &[&str]) -> String {
    format!(r".*language_model.*\.({})", modules.join("|"))
}

/// Writes `model`'s adapter factors into `dir` in PEFT's layout.
pub fn save(model: &Llava, lora: &LoraSpec, layers: &LoraLayers, dir: &Path) -> Result<(), LoadError> {
    std::fs::create_dir_all(dir).map_err(|e| failed(dir, e))?;
    let modules = lora.modules(layers, "llava").map_err(|e| failed(dir, e))?;
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": null,
        "base_model_name_or_path": null,
        "r": lora.r,
        "lora_alpha": lora.alpha,
        "lora_dropout": 0.0,
        "target_modules": target_pattern(&modules),
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "init_lora_weights": true,
        "modules_to_save": null,
        "inference_mode": true,
    });
    let text = serde_json::to_vec_pretty(&config).map_err(|e| failed(dir, e))?;
    std::fs::write(dir.join("adapter_config.json"), text).map_err(|e| failed(dir, e))?;
    let factors = model.collect(Some(PathFilter::new().with_predicate(|path, _| path.contains(".lora."))), None, false);
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(factors.len());
    for factor in &factors {
        let data = burn::store::bridge::to_data(factor).map_err(|e| failed(dir, format!("{}: {e:?}", factor.name)))?;
        let values: Vec<f32> =
            data.convert::<f32>().try_to_vec::<f32>().map_err(|e| failed(dir, format!("{}: {e:?}", factor.name)))?;
        let dims = factor.shape.as_slice().to_vec();
        let [rows, cols] = dims[..] else { return Err(failed(dir, format!("{}: not a matrix", factor.name))) };
        let (module, side) = if let Some(m) = factor.name.strip_suffix(".weight.lora.a") {
            (m, "A")
        } else if let Some(m) = factor.name.strip_suffix(".weight.lora.b") {
            (m, "B")
        } else {
            return Err(failed(dir, format!("{}: not a LoRA factor", factor.name)));
        };
        let transposed: Vec<u8> = (0..cols)
            .flat_map(|c| (0..rows).map(move |r| r * cols + c))
            .flat_map(|i| values[i].to_le_bytes())
            .collect();
        tensors.push((format!("{PEFT_PREFIX}{module}.lora_{side}.weight"), vec![cols, rows], transposed));
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes).map(|v| (name.clone(), v)).map_err(|e| failed(dir, e))
        })
        .collect::<Result<_, _>>()?;
    let file = dir.join("adapter_model.safetensors");
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), &file).map_err(|e| failed(&file, e))
}

/// The LoRA settings of the adapters in `dir`, from their `adapter_config.json`.
pub fn read_spec(dir: &Path) -> Result<LoraSpec, LoadError> {
    let path = dir.join("adapter_config.json");
    let bytes = std::fs::read(&path).map_err(|e| failed(&path, e))?;
    let config: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| failed(&path, format!("not JSON: {e}")))?;
    let r = config.get("r").and_then(|v| v.as_u64()).ok_or_else(|| failed(&path, "no `r`"))? as usize;
    let alpha = config.get("lora_alpha").and_then(|v| v.as_f64()).ok_or_else(|| failed(&path, "no `lora_alpha`"))?;
    let names: Vec<String> = match config.get("target_modules") {
        Some(serde_json::Value::Array(names)) => names.iter().filter_map(|n| n.as_str()).map(String::from).collect(),
        Some(serde_json::Value::String(pattern)) => pattern
            .rsplit_once('(')
            .and_then(|(_, rest)| rest.strip_suffix(')'))
            .map(|names| names.split('|').map(String::from).collect())
            .ok_or_else(|| failed(&path, format!("target_modules `{pattern}` is not a pattern silkie wrote")))?,
        _ => return Err(failed(&path, "no `target_modules`")),
    };
    Ok(LoraSpec { r, alpha, targets: names.into_iter().map(LoraTarget::Module).collect() })
}

/// `model` (with adapters attached as `read_spec` says) with the factors of the adapters in
/// `dir` loaded; every factor in the file must find its place.
pub fn load_factors(mut model: Llava, dir: &Path) -> Result<Llava, LoadError> {
    let file = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&file).map_err(|e| failed(&file, e))?;
    let adapter = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| failed(&file, e))?;
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in adapter.tensors() {
        let (module, side) = name
            .strip_prefix(PEFT_PREFIX)
            .and_then(|n| {
                n.strip_suffix(".lora_A.weight")
                    .map(|m| (m, "a"))
                    .or_else(|| n.strip_suffix(".lora_B.weight").map(|m| (m, "b")))
            })
            .ok_or_else(|| failed(&file, format!("`{name}` is not a LoRA factor of a LLaVA's modules")))?;
        if view.dtype() != Dtype::F32 || view.shape().len() != 2 {
            return Err(failed(
                &file,
                format!("`{name}`: silkie reads f32 matrices, this is {:?} {:?}", view.dtype(), view.shape()),
            ));
        }
        let (rows, cols) = (view.shape()[0], view.shape()[1]);
        let values: Vec<f32> =
            view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let transposed: Vec<u8> = (0..cols)
            .flat_map(|c| (0..rows).map(move |r| r * cols + c))
            .flat_map(|i| values[i].to_le_bytes())
            .collect();
        owned.push((format!("{module}.weight.lora.{side}"), vec![cols, rows], transposed));
    }
    let count = owned.len();
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(name, shape, bytes)| TensorView::new(Dtype::F32, shape.clone(), bytes).map(|v| (name.clone(), v)))
        .collect::<Result<_, _>>()
        .map_err(|e| failed(&file, e))?;
    let burn_layout = safetensors::serialize(views, None).map_err(|e| failed(&file, e))?;
    let mut store = SafetensorsStore::from_bytes(Some(burn_layout)).allow_partial(true).validate(false);
    let result = model.load_from(&mut store).map_err(|e| failed(&file, e))?;
    if let Some(error) = result.errors.first() {
        return Err(failed(&file, error));
    }
    if !result.unused.is_empty() || result.applied.len() != count {
        let unused: Vec<&str> = result.unused.iter().map(String::as_str).take(3).collect();
        return Err(failed(
            &file,
            format!(
                "{} of {count} factors found no adapted layer, e.g. {}",
                count - result.applied.len(),
                unused.join(", ")
            ),
        ));
    }
    Ok(model)
}
