//! Summed completion log-probabilities from logits, as TRL's `get_batch_logps` computes them:
//! logits at position t score the token at t+1; prompt and padding positions are masked.

use burn::tensor::{Bool, Int, Tensor, activation};

/// `logits` [batch, seq, vocab]; `labels` [batch, seq] (any value where `mask` is false);
/// `mask` [batch, seq] true on completion tokens. Returns (summed, mean) per row.
pub fn completion_logps(logits: Tensor<3>, labels: Tensor<2, Int>, mask: Tensor<2, Bool>) -> (Tensor<1>, Tensor<1>) {
    let [batch, seq, vocab] = logits.dims();
    // Position t predicts the label at t+1.
    let scores = logits.slice([0..batch, 0..seq - 1, 0..vocab]);
    let targets = labels.slice([0..batch, 1..seq]);
    let keep = mask.slice([0..batch, 1..seq]);
    let log_probs = activation::log_softmax(scores, 2);
    let picked: Tensor<2> = log_probs.gather(2, targets.unsqueeze_dim(2)).squeeze_dim(2);
    let kept = picked.mask_fill(keep.clone().bool_not(), 0.0);
    let summed: Tensor<1> = kept.sum_dim(1).squeeze_dim(1);
    let counts: Tensor<1> = keep.float().cast(summed.dtype()).sum_dim(1).squeeze_dim(1);
    let mean = summed.clone() / counts.clamp_min(1.0);
    (summed, mean)
}
