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
/// Written flat under `runtime:`; read as the part each reader needs: model calls (`calls`)
/// and where models compute (`compute`).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(from = "Flat", into = "Flat")]
pub struct Runtime {
    pub calls: Calls,
    pub compute: Compute,
}

/// What the call runner and reports read: concurrency, rate limits, retries, prices.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Calls {
    pub max_in_flight: Option<u32>,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    /// Seconds.
    pub timeout: Option<f64>,
    pub max_retries: Option<u32>,
    /// Seconds the first retry of a failed call waits (each next one twice as long).
    pub retry_backoff: Option<f64>,
    /// Dollars per million input tokens, for the cost estimate in reports.
    pub price_input_per_million: Option<f64>,
    /// Dollars per million output tokens.
    pub price_output_per_million: Option<f64>,
}

/// Where and how models compute: what devices, training and the stage's thread pool read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Compute {
    pub device: Option<String>,
    pub dtype: Option<Precision>,
    pub threads: Option<usize>,
    /// Training recomputes activations in the backward pass rather than keeping them all
    /// (Burn's balanced checkpointing): less memory, more compute, the same numbers.
    pub gradient_checkpointing: Option<bool>,
}

/// `runtime:` as written: one map, every key known.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct Flat {
    max_in_flight: Option<u32>,
    requests_per_minute: Option<u32>,
    tokens_per_minute: Option<u64>,
    timeout: Option<f64>,
    max_retries: Option<u32>,
    device: Option<String>,
    dtype: Option<Precision>,
    threads: Option<usize>,
    gradient_checkpointing: Option<bool>,
    retry_backoff: Option<f64>,
    price_input_per_million: Option<f64>,
    price_output_per_million: Option<f64>,
}

impl From<Flat> for Runtime {
    fn from(f: Flat) -> Runtime {
        Runtime {
            calls: Calls {
                max_in_flight: f.max_in_flight,
                requests_per_minute: f.requests_per_minute,
                tokens_per_minute: f.tokens_per_minute,
                timeout: f.timeout,
                max_retries: f.max_retries,
                retry_backoff: f.retry_backoff,
                price_input_per_million: f.price_input_per_million,
                price_output_per_million: f.price_output_per_million,
            },
            compute: Compute {
                device: f.device,
                dtype: f.dtype,
                threads: f.threads,
                gradient_checkpointing: f.gradient_checkpointing,
            },
        }
    }
}

impl From<Runtime> for Flat {
    fn from(r: Runtime) -> Flat {
        let (c, m) = (r.calls, r.compute);
        Flat {
            max_in_flight: c.max_in_flight,
            requests_per_minute: c.requests_per_minute,
            tokens_per_minute: c.tokens_per_minute,
            timeout: c.timeout,
            max_retries: c.max_retries,
            device: m.device,
            dtype: m.dtype,
            threads: m.threads,
            gradient_checkpointing: m.gradient_checkpointing,
            retry_backoff: c.retry_backoff,
            price_input_per_million: c.price_input_per_million,
            price_output_per_million: c.price_output_per_million,
        }
    }
}

/// Seconds a call may take, a retry may first wait: finite, positive and at most a day,
/// so that turning them into durations can neither panic nor wait for ever.
const SECONDS: Range = Range::above(0.0).at_most(86_400.0);

impl Runtime {
    /// Every setting out of its range, with the range; `path` is where `runtime:` sits.
    pub fn check(&self, path: &str) -> Vec<Issue> {
        let at = |key: &str| format!("{path}.{key}");
        let (calls, compute) = (&self.calls, &self.compute);
        let checks = [
            Range::at_least(1.0)
                .at_most(100_000.0)
                .check_some(&at("max_in_flight"), calls.max_in_flight.map(f64::from)),
            Range::at_least(1.0).check_some(&at("requests_per_minute"), calls.requests_per_minute.map(f64::from)),
            Range::at_least(1.0).check_some(&at("tokens_per_minute"), calls.tokens_per_minute.map(|n| n as f64)),
            SECONDS.check_some(&at("timeout"), calls.timeout),
            Range::at_least(0.0).at_most(1_000.0).check_some(&at("max_retries"), calls.max_retries.map(f64::from)),
            Range::at_least(1.0).at_most(4_096.0).check_some(&at("threads"), compute.threads.map(|n| n as f64)),
            SECONDS.check_some(&at("retry_backoff"), calls.retry_backoff),
            Range::at_least(0.0).check_some(&at("price_input_per_million"), calls.price_input_per_million),
            Range::at_least(0.0).check_some(&at("price_output_per_million"), calls.price_output_per_million),
        ];
        checks.into_iter().filter_map(Result::err).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_flat_read_in_parts_and_written_back_flat() {
        let flat =
            serde_json::json!({"max_in_flight": 4, "device": "flex", "dtype": "bf16", "price_input_per_million": 2.5});
        let runtime: Runtime = serde_json::from_value(flat).unwrap();
        assert_eq!(runtime.calls.max_in_flight, Some(4));
        assert_eq!(runtime.calls.price_input_per_million, Some(2.5));
        assert_eq!(runtime.compute.device.as_deref(), Some("flex"));
        assert_eq!(runtime.compute.dtype, Some(Precision::Bf16));
        let back = serde_json::to_value(&runtime).unwrap();
        assert_eq!(back["max_in_flight"], 4);
        assert_eq!(back["dtype"], "bf16");
        assert!(back.get("calls").is_none(), "one flat map: {back}");
        let typo = serde_json::from_value::<Runtime>(serde_json::json!({"devise": "flex"})).unwrap_err();
        assert!(typo.to_string().contains("unknown field `devise`"), "{typo}");
    }
}
