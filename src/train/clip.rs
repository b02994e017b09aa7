//! Gradient clipping by the global norm of all gradients together, as PyTorch's
//! `clip_grad_norm_` does (Burn's built-in clipping works per parameter).

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

/// Scales every gradient of `module` by `max_norm / (norm + 1e-6)` when the global L2 norm
/// exceeds `max_norm`. Returns the norm before clipping (TRL logs it as `grad_norm`).
pub fn clip_global_norm<M: Module>(module: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let mut squares = SumOfSquares { grads, total: 0.0 };
    module.visit(&mut squares);
    let norm = squares.total.sqrt();
    // PyTorch: clip_coef = max_norm / (total_norm + 1e-6), applied only when below 1.
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for (rank, id) in ParamIds::of(module).0 {
            scale(grads, rank, id, coef);
        }
    }
    norm
}

struct SumOfSquares<'a> {
    grads: &'a GradientsParams,
    total: f64,
}

impl ModuleVisitor for SumOfSquares<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.get::<D>(param.id) {
            let squared: f64 = (grad.clone() * grad).sum().cast(burn::tensor::DType::F64).into_scalar();
            self.total += squared;
        }
    }
}

/// Every float parameter of a module: its id and rank, so its gradient can be taken out
/// and put back with the right type.
struct ParamIds(Vec<(usize, ParamId)>);

impl ParamIds {
    fn of<M: Module>(module: &M) -> ParamIds {
        let mut ids = ParamIds(Vec::new());
        module.visit(&mut ids);
        ids
    }
}

impl ModuleVisitor for ParamIds {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push((D, param.id));
    }
}

fn scale(grads: &mut GradientsParams, rank: usize, id: ParamId, coef: f64) {
    fn apply<const D: usize>(grads: &mut GradientsParams, id: ParamId, coef: f64) {
        if let Some(grad) = grads.remove::<D>(id) {
            grads.register::<D>(id, grad.mul_scalar(coef));
        }
    }
    match rank {
        1 => apply::<1>(grads, id, coef),
        2 => apply::<2>(grads, id, coef),
        3 => apply::<3>(grads, id, coef),
        4 => apply::<4>(grads, id, coef),
        5 => apply::<5>(grads, id, coef),
        _ => apply::<6>(grads, id, coef),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::LinearConfig;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn scales_all_gradients_by_one_global_factor() {
        let device = Device::flex();
        let linear = LinearConfig::new(2, 2).init(&device);
        let weight_id = linear.weight.id;
        let bias_id = linear.bias.as_ref().expect("a bias").id;
        let mut grads = GradientsParams::new();
        // Norm = sqrt(3² + 4² + 12²) = 13.
        grads
            .register::<2>(weight_id, Tensor::from_data(TensorData::new(vec![3.0f32, 0.0, 0.0, 4.0], [2, 2]), &device));
        grads.register::<1>(bias_id, Tensor::from_data(TensorData::new(vec![12.0f32, 0.0], [2]), &device));
        let norm = clip_global_norm(&linear, &mut grads, 1.0);
        assert!((norm - 13.0).abs() < 1e-5, "{norm}");
        let weight: Vec<f32> = grads.get::<2>(weight_id).unwrap().into_data().try_to_vec().unwrap();
        let bias: Vec<f32> = grads.get::<1>(bias_id).unwrap().into_data().try_to_vec().unwrap();
        let coef = 1.0 / (13.0 + 1e-6);
        assert!((weight[0] as f64 - 3.0 * coef).abs() < 1e-6 && (weight[3] as f64 - 4.0 * coef).abs() < 1e-6);
        assert!((bias[0] as f64 - 12.0 * coef).abs() < 1e-6);
        // Under the limit, nothing changes.
        let norm = clip_global_norm(&linear, &mut grads, 5.0);
        assert!((norm - 1.0).abs() < 1e-4);
        let again: Vec<f32> = grads.get::<1>(bias_id).unwrap().into_data().try_to_vec().unwrap();
        assert_eq!(again, bias);
    }
}
