//! The DPO loss family, written as TRL writes it (`DPOTrainer.dpo_loss`, reverse-KL
//! log-ratios), on Burn tensors — the same code the trainer runs, on any device.

use burn::tensor::{Tensor, activation};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// The original DPO loss; with `label_smoothing`, conservative DPO.
    #[default]
    Sigmoid,
    Hinge,
    Ipo,
    /// Robust DPO (label smoothing as the noise rate).
    Robust,
    NcaPair,
    SppoHard,
    ApoZero,
    ApoDown,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossConfig {
    pub loss: LossType,
    pub beta: f64,
    pub label_smoothing: f64,
}

/// Per-row losses and the implicit rewards TRL reports.
pub struct LossOutput {
    pub losses: Tensor<1>,
    pub chosen_rewards: Tensor<1>,
    pub rejected_rewards: Tensor<1>,
}

/// Per-row DPO losses from summed completion log-probs of policy and reference.
pub fn dpo_loss(
    policy_chosen: Tensor<1>,
    policy_rejected: Tensor<1>,
    ref_chosen: Tensor<1>,
    ref_rejected: Tensor<1>,
    cfg: &LossConfig,
) -> LossOutput {
    let beta = cfg.beta;
    let ls = cfg.label_smoothing;
    let chosen_logratios = policy_chosen - ref_chosen;
    let rejected_logratios = policy_rejected - ref_rejected;
    let logits = chosen_logratios.clone() - rejected_logratios.clone();
    let losses = match cfg.loss {
        LossType::Sigmoid => {
            activation::log_sigmoid(logits.clone().mul_scalar(beta)).mul_scalar(-(1.0 - ls))
                - activation::log_sigmoid(logits.mul_scalar(-beta)).mul_scalar(ls)
        }
        LossType::Robust => (activation::log_sigmoid(logits.clone().mul_scalar(beta)).mul_scalar(-(1.0 - ls))
            + activation::log_sigmoid(logits.mul_scalar(-beta)).mul_scalar(ls))
        .div_scalar(1.0 - 2.0 * ls),
        LossType::Hinge => activation::relu(logits.mul_scalar(-beta).add_scalar(1.0)),
        LossType::Ipo => {
            let centred = logits.sub_scalar(1.0 / (2.0 * beta));
            centred.clone() * centred
        }
        LossType::NcaPair => {
            let chosen = chosen_logratios.clone().mul_scalar(beta);
            let rejected = rejected_logratios.clone().mul_scalar(beta);
            activation::log_sigmoid(chosen.clone()).neg()
                - activation::log_sigmoid(chosen.neg()).mul_scalar(0.5)
                - activation::log_sigmoid(rejected.neg()).mul_scalar(0.5)
        }
        LossType::SppoHard => {
            let a = chosen_logratios.clone().sub_scalar(0.5 / beta);
            let b = rejected_logratios.clone().add_scalar(0.5 / beta);
            a.clone() * a + b.clone() * b
        }
        LossType::ApoZero => {
            let chosen = activation::sigmoid(chosen_logratios.clone().mul_scalar(beta)).neg().add_scalar(1.0);
            let rejected = activation::sigmoid(rejected_logratios.clone().mul_scalar(beta));
            chosen + rejected
        }
        LossType::ApoDown => {
            let chosen = activation::sigmoid(chosen_logratios.clone().mul_scalar(beta));
            let rejected = activation::sigmoid(logits.mul_scalar(beta)).neg().add_scalar(1.0);
            chosen + rejected
        }
    };
    LossOutput {
        losses,
        chosen_rewards: chosen_logratios.mul_scalar(beta),
        rejected_rewards: rejected_logratios.mul_scalar(beta),
    }
}
