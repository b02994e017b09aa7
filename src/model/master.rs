//! Training a model whose weights live in bf16: what trains keeps an f32 master copy, cast to
//! bf16 where it is used (as `torch.autocast` does), so AdamW's state and its small updates
//! are f32; what is frozen stays in bf16, once, with no gradient or optimiser state. LoRA
//! factors are f32 from the start ([`super::lora::F32Adapter`]).

use burn::module::{Module, Param, Reparameterization, Reparameterizer};
use burn::tensor::{DType, FloatDType, Tensor};

/// `model` ready to train: each trainable bf16 weight becomes an f32 master cast back to bf16
/// where used; frozen weights and f32 ones are left as they are (so a second call changes
/// nothing).
pub fn f32_masters<M: Module>(model: M) -> M {
    model.apply_reparameterization(Masters)
}

/// Casts an f32 master weight to bf16, the type the model computes in, inside the autodiff
/// graph: gradients reach the master in f32.
#[derive(Module, Debug)]
pub struct CastToBf16;

impl Reparameterization for CastToBf16 {
    const NAME: &'static str = "master";

    fn apply<const D: usize>(&self, base: Tensor<D>) -> Tensor<D> {
        base.cast(FloatDType::BF16)
    }
}

struct Masters;

impl Reparameterizer for Masters {
    type Reparam = CastToBf16;

    fn reparameterize<const D: usize>(
        &mut self,
        _path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<CastToBf16>) {
        let value = param.val();
        if !value.is_require_grad() || value.dtype() != DType::BF16 {
            return (param, None);
        }
        // The same parameter (its id, so optimiser state and resumes find it), now f32.
        let master = param.map(|weights| weights.cast(FloatDType::F32).detach().require_grad());
        (master, Some(CastToBf16))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::Device;

    /// Whether any trainable weight of `model` is not f32 (what [`f32_masters`] would change).
    fn has_low_precision_trainables<M: Module>(model: &M) -> bool {
        struct Finder(bool);
        impl burn::module::ModuleVisitor for Finder {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let value = param.val();
                self.0 |= value.is_require_grad() && value.dtype() != DType::F32;
            }
        }
        let mut finder = Finder(false);
        model.visit(&mut finder);
        finder.0
    }

    #[derive(Module, Debug)]
    struct TwoLayers {
        trained: Linear,
        frozen: Linear,
    }

    #[test]
    fn trainable_bf16_weights_get_f32_masters_and_frozen_ones_stay_bf16() {
        let device = Device::flex().autodiff();
        let model = TwoLayers {
            trained: LinearConfig::new(3, 2).with_bias(false).init(&device),
            frozen: LinearConfig::new(2, 2).with_bias(false).init(&device),
        };
        let cast = |p: Param<Tensor<2>>| p.map(|w| w.cast(FloatDType::BF16).detach());
        let model = TwoLayers {
            trained: Linear { weight: cast(model.trained.weight), ..model.trained }.set_require_grad(true),
            frozen: Linear { weight: cast(model.frozen.weight), ..model.frozen }.no_grad(),
        };
        assert!(has_low_precision_trainables(&model));
        let id = model.trained.weight.id;
        let model = f32_masters(model);
        assert!(!has_low_precision_trainables(&model));
        assert_eq!(model.trained.weight.id, id, "the same parameter, for the optimiser");
        assert_eq!(model.trained.weight.base().dtype(), DType::F32);
        assert_eq!(model.trained.weight.val().dtype(), DType::BF16, "used in bf16");
        assert_eq!(model.frozen.weight.val().dtype(), DType::BF16);
        assert!(model.frozen.weight.reparameterization::<CastToBf16>().is_none());
        // Gradients come back to the f32 master.
        let x = Tensor::<2>::ones([1, 3], &device).cast(FloatDType::BF16);
        let y = model.frozen.forward(model.trained.forward(x));
        let grads = y.cast(FloatDType::F32).sum().backward();
        let grad = model.trained.weight.base().grad(&grads).expect("the master has a gradient");
        assert_eq!(grad.dtype(), DType::F32);
        assert!(model.frozen.weight.base().grad(&grads).is_none(), "no gradient for frozen weights");
        // Merged for saving, it is the weight as used.
        let merged = model.materialize();
        assert_eq!(merged.trained.weight.val().dtype(), DType::BF16);
    }
}
