//! `runtime:` — how a stage or a model runs (concurrency, rate limits, timeouts, device),
//! never what it computes, and the ranges each setting may take.

use serde::Deserialize;

use super::{Issue, Range};

/// What models compute in (`runtime.dtype`). `bf16`: forward passes run in bf16 while what
/// trains keeps f32 weights, gradients and optimiser state (a bf16 copy per pass of the tiny
/// model; a LLaVA's frozen weights in bf16 once, its trained ones as f32 masters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    #[serde(alias = "fp32", alias = "float32")]
    F32,
    #[serde(alias = "bfloat16")]
    Bf16,
}

/// Settings that change how a stage runs, never what it computes: never hashed — except
/// `dtype: bf16`, which does change the numbers (the kinds that run models add it to keys).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    pub max_in_flight: Option<u32>,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    /// Seconds.
    pub timeout: Option<f64>,
    pub max_retries: Option<u32>,
    pub device: Option<String>,
    pub dtype: Option<Precision>,
    pub threads: Option<usize>,
    /// Training recomputes activations in the backward pass rather than keeping them all
    /// (Burn's balanced checkpointing): less memory, more compute, the same numbers.
    pub gradient_checkpointing: Option<bool>,
    /// Seconds the first retry of a failed call waits (each next one twice as long).
    pub retry_backoff: Option<f64>,
    /// Dollars per million input tokens, for the cost estimate in reports.
    pub price_input_per_million: Option<f64>,
    /// Dollars per million output tokens.
    pub price_output_per_million: Option<f64>,
}

/// Seconds a call may take, a retry may first wait: finite, positive and at most a day,
/// so that turning them into durations can neither panic nor wait for ever.
const SECONDS: Range = Range::above(0.0).at_most(86_400.0);

impl Runtime {
    /// Every setting out of its range, with the range; `path` is where `runtime:` sits.
    pub fn check(&self, path: &str) -> Vec<Issue> {
        let at = |key: &str| format!("{path}.{key}");
        let checks = [
            Range::at_least(1.0).at_most(100_000.0).check_some(&at("max_in_flight"), self.max_in_flight.map(f64::from)),
            Range::at_least(1.0).check_some(&at("requests_per_minute"), self.requests_per_minute.map(f64::from)),
            Range::at_least(1.0).check_some(&at("tokens_per_minute"), self.tokens_per_minute.map(|n| n as f64)),
            SECONDS.check_some(&at("timeout"), self.timeout),
            Range::at_least(0.0).at_most(1_000.0).check_some(&at("max_retries"), self.max_retries.map(f64::from)),
            Range::at_least(1.0).at_most(4_096.0).check_some(&at("threads"), self.threads.map(|n| n as f64)),
            SECONDS.check_some(&at("retry_backoff"), self.retry_backoff),
            Range::at_least(0.0).check_some(&at("price_input_per_million"), self.price_input_per_million),
            Range::at_least(0.0).check_some(&at("price_output_per_million"), self.price_output_per_million),
        ];
        checks.into_iter().filter_map(Result::err).collect()
    }
}
