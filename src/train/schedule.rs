//! Learning-rate schedules, computed exactly as Hugging Face's `transformers` does, so a run
//! here and a run there see the same learning rate at every step.

/// Warm-up steps for a warm-up ratio, as `TrainingArguments.get_warmup_steps` rounds them.
pub fn warmup_steps(ratio: f64, total_steps: u64) -> u64 {
    (total_steps as f64 * ratio).ceil() as u64
}

/// `get_cosine_schedule_with_warmup`: linear warm-up from 0, then a half cosine down to 0
/// (`num_cycles` 0.5). The learning rate at `step` is `base_lr × λ(step)`, in that order.
pub fn cosine_with_warmup(base_lr: f64, step: u64, warmup: u64, total: u64) -> f64 {
    let lambda = if step < warmup {
        step as f64 / warmup.max(1) as f64
    } else {
        let progress = (step - warmup) as f64 / total.saturating_sub(warmup).max(1) as f64;
        let num_cycles = 0.5;
        (0.5 * (1.0 + (std::f64::consts::PI * num_cycles * 2.0 * progress).cos())).max(0.0)
    };
    base_lr * lambda
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_transformers_at_every_kind_of_step() {
        // transformers' lr_lambda times the base learning rate, in Python, for 10 warm-up and
        // 100 total steps.
        for (step, want) in [
            (0, 0.0),
            (1, 1.0000000000000002e-06),
            (5, 5e-06),
            (10, 1e-05),
            (11, 9.99695413509548e-06),
            (50, 5.8682408883346535e-06),
            (99, 3.0458649045211897e-09),
            (100, 0.0),
        ] {
            assert_eq!(cosine_with_warmup(1e-5, step, 10, 100), want, "step {step}");
        }
        assert_eq!(warmup_steps(0.1, 95), 10);
    }
}
