//! LoRA settings, the same for every architecture: rank, `alpha` (the scale is
//! `alpha / r`) and which layers — `attention` and `mlp` as shorthands for an architecture's
//! own projections, or module names as the checkpoint spells them (`q_proj`, `down_proj`, …).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The folder, inside a checkpoint, that holds its adapters kept apart in PEFT's layout
/// (`adapter_config.json`, `adapter_model.safetensors`).
pub const ADAPTER_DIR: &str = "adapter";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f64,
    #[serde(default = "all_targets")]
    pub targets: Vec<LoraTarget>,
}

/// Which layers LoRA adapts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoraTarget {
    /// Every attention projection.
    Attention,
    /// Every MLP projection.
    Mlp,
    /// The layers of this module name.
    Module(String),
}

pub fn all_targets() -> Vec<LoraTarget> {
    vec![LoraTarget::Attention, LoraTarget::Mlp]
}

/// The module names of an architecture's LoRA-able layers.
pub struct LoraLayers {
    pub attention: &'static [&'static str],
    pub mlp: &'static [&'static str],
}

impl LoraSpec {
    /// The module names the targets pick among `layers`; a name that is not one of them is
    /// refused, naming the ones there are.
    pub fn modules(&self, layers: &LoraLayers, architecture: &str) -> Result<Vec<&'static str>, String> {
        let mut picked = Vec::new();
        for target in &self.targets {
            let names: Vec<&'static str> = match target {
                LoraTarget::Attention => layers.attention.to_vec(),
                LoraTarget::Mlp => layers.mlp.to_vec(),
                LoraTarget::Module(name) => {
                    let found = layers.attention.iter().chain(layers.mlp).find(|n| *n == name);
                    let Some(found) = found else {
                        let known: Vec<&str> = layers.attention.iter().chain(layers.mlp).copied().collect();
                        return Err(format!(
                            "LoRA target `{name}` is not a layer of this {architecture} model: name attention, mlp or one of {}",
                            known.join(", ")
                        ));
                    };
                    vec![*found]
                }
            };
            picked.extend(names.into_iter().filter(|n| !picked.contains(n)).collect::<Vec<_>>());
        }
        Ok(picked)
    }
}

impl Serialize for LoraTarget {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(match self {
            LoraTarget::Attention => "attention",
            LoraTarget::Mlp => "mlp",
            LoraTarget::Module(name) => name,
        })
    }
}

impl<'de> Deserialize<'de> for LoraTarget {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Ok(match name.as_str() {
            "attention" => LoraTarget::Attention,
            "mlp" => LoraTarget::Mlp,
            "" => return Err(serde::de::Error::custom("a LoRA target needs a name")),
            _ => LoraTarget::Module(name),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYERS: LoraLayers = LoraLayers { attention: &["q_proj", "v_proj"], mlp: &["up_proj"] };

    #[test]
    fn shorthands_and_names_pick_layers_once_and_unknown_names_are_refused() {
        let spec: LoraSpec =
            serde_json::from_str(r#"{"r": 4, "alpha": 8, "targets": ["attention", "q_proj", "up_proj"]}"#).unwrap();
        assert_eq!(spec.modules(&LAYERS, "llava").unwrap(), ["q_proj", "v_proj", "up_proj"]);
        assert_eq!(serde_json::to_value(&spec.targets).unwrap(), serde_json::json!(["attention", "q_proj", "up_proj"]));
        let typo = LoraSpec { targets: vec![LoraTarget::Module("q_prj".into())], ..spec };
        let error = typo.modules(&LAYERS, "llava").unwrap_err();
        assert!(
            error.contains("`q_prj` is not a layer of this llava model") && error.contains("q_proj, v_proj, up_proj")
        );
    }
}
