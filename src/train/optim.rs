//! AdamW with every setting explicit. Burn's defaults differ from PyTorch's (epsilon 1e-5 vs
//! 1e-8, weight decay 1e-4 vs 0.01), so nothing is left to a default here.

use burn::optim::AdamWConfig;
use serde::{Deserialize, Serialize};

/// The optimiser's settings, with Hugging Face `TrainingArguments` defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamW {
    #[serde(default = "beta1")]
    pub beta1: f64,
    #[serde(default = "beta2")]
    pub beta2: f64,
    #[serde(default = "epsilon")]
    pub epsilon: f64,
    #[serde(default)]
    pub weight_decay: f64,
}

fn beta1() -> f64 {
    0.9
}
fn beta2() -> f64 {
    0.999
}
fn epsilon() -> f64 {
    1e-8
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW { beta1: beta1(), beta2: beta2(), epsilon: epsilon(), weight_decay: 0.0 }
    }
}

impl AdamW {
    /// Burn's AdamW with exactly these settings: decoupled weight decay applied to the weights
    /// first, then the bias-corrected update `m̂ / (√v̂ + ε)`, as `torch.optim.AdamW` does.
    pub fn config(&self) -> AdamWConfig {
        AdamWConfig::new()
            .with_beta_1(self.beta1 as f32)
            .with_beta_2(self.beta2 as f32)
            .with_epsilon(self.epsilon as f32)
            .with_weight_decay(self.weight_decay as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::LinearConfig;
    use burn::optim::GradientsParams;
    use burn::tensor::{Device, Tensor, TensorData};

    #[test]
    fn one_step_is_torch_adamw() {
        let device = Device::flex().autodiff();
        let linear = LinearConfig::new(2, 1).with_bias(false).init(&device);
        let before: Vec<f32> = linear.weight.val().into_data().try_to_vec().unwrap();
        let mut grads = GradientsParams::new();
        let g = [0.5f32, -2.0];
        grads.register::<2>(linear.weight.id, Tensor::from_data(TensorData::new(g.to_vec(), [2, 1]), &device));
        let settings = AdamW { beta1: 0.9, beta2: 0.98, epsilon: 1e-8, weight_decay: 0.05 };
        let mut optimizer = settings.config().init();
        let lr = 1e-3;
        let after: Vec<f32> = optimizer.step(lr, linear, grads).weight.val().into_data().try_to_vec().unwrap();
        // torch.optim.AdamW, step 1: p ← p·(1 − lr·wd); m̂ = g, v̂ = g²; p ← p − lr·g/(|g| + ε).
        for i in 0..2 {
            let (p, g) = (before[i] as f64, g[i] as f64);
            let want = p * (1.0 - lr * 0.05) - lr * g / (g.abs() + 1e-8);
            assert!((after[i] as f64 - want).abs() < 1e-6, "weight {i}: {} vs {want}", after[i]);
        }
    }
}
