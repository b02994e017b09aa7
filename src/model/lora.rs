//! LoRA settings, the same for every architecture: rank, `alpha` (the scale is
//! `alpha / r`) and which layers — `attention` and `mlp` as shorthands for an architecture's
//! own projections, or module names as the checkpoint spells them (`q_proj`, `down_proj`, …).

use burn::module::{Module, Param, ParamGroup, Reparameterization, Reparameterizer};
use burn::tensor::{FloatDType, Tensor};
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

    /// `model` with adapters (rank `r`, scale `alpha / r`) on the weights `group` picks and
    /// every other parameter frozen: only the adapters train. [`Module::materialize`] merges
    /// them.
    pub fn attach<M: Module>(&self, model: M, group: ParamGroup) -> M {
        let lora = burn::module::Lora::new(self.r, self.alpha).set_param_group(group).set_dtype(FloatDType::F32);
        model.apply_reparameterization(F32Factors(lora))
    }
}

/// A LoRA adapter whose factors stay in f32 whatever the frozen weight under them is, as
/// PEFT keeps them (`autocast_adapter_dtype`): a bf16 base would otherwise give bf16 factors
/// and bf16 optimiser state, too coarse for the small updates they take. Their product is
/// cast to the base's type where it is added. Named `lora` with factors `a` [in, r] and
/// `b` [r, out], as Burn's own adapter is, so the factors' paths read the same.
#[derive(Module, Debug)]
pub struct F32Adapter {
    pub a: Param<Tensor<2>>,
    pub b: Param<Tensor<2>>,
    pub scale: f64,
}

impl Reparameterization for F32Adapter {
    const NAME: &'static str = "lora";

    fn apply<const D: usize>(&self, base: Tensor<D>) -> Tensor<D> {
        let delta = self.a.val().matmul(self.b.val()).mul_scalar(self.scale).reshape(base.shape());
        if delta.dtype() == base.dtype() {
            return base + delta;
        }
        let dtype: FloatDType = base.dtype().into();
        base + delta.cast(dtype)
    }
}

/// Burn's LoRA (its initialisation and freezing, draw for draw) with [`F32Adapter`]s.
struct F32Factors(burn::module::Lora);

impl Reparameterizer for F32Factors {
    type Reparam = F32Adapter;

    fn reparameterize<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<F32Adapter>) {
        let (base, adapter) = self.0.reparameterize(path, param);
        (base, adapter.map(|adapter| F32Adapter { a: adapter.a, b: adapter.b, scale: adapter.scale }))
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
    fn factors_are_f32_over_a_bf16_weight_and_the_weight_stays_bf16() {
        use burn::nn::LinearConfig;
        use burn::tensor::{DType, Device};
        let device = Device::flex().autodiff();
        let linear = LinearConfig::new(4, 3).with_bias(false).init(&device);
        let linear = burn::nn::Linear { weight: linear.weight.map(|w| w.cast(FloatDType::BF16).detach()), ..linear };
        let spec = LoraSpec { r: 2, alpha: 4.0, targets: all_targets() };
        let adapted = spec.attach(linear, ParamGroup::all());
        let adapter = adapted.weight.reparameterization::<F32Adapter>().expect("an adapter");
        assert_eq!((adapter.a.val().dtype(), adapter.b.val().dtype()), (DType::F32, DType::F32));
        assert_eq!(adapted.weight.val().dtype(), DType::BF16, "the layer computes in bf16");
        assert!(!adapted.weight.base().is_require_grad(), "the base is frozen");
        let y = adapted.forward(Tensor::<2>::ones([1, 4], &device).cast(FloatDType::BF16));
        let grads = y.cast(FloatDType::F32).sum().backward();
        let grad = adapter.b.val().grad(&grads).expect("b has a gradient");
        assert_eq!(grad.dtype(), DType::F32);
    }

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
