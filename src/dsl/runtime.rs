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
    pub placement: Placement,
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

/// Where an instance runs: what executors read. `executor` names one (`local`, `slurm`);
/// unset, the run's `--executor` decides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Placement {
    pub executor: Option<String>,
    pub slurm: Option<Slurm>,
}

/// `runtime.slurm`: what a Slurm job of the instance asks for, each an `sbatch` option.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Slurm {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// Generic resources, as `--gres` takes them (`gpu:1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gres: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus_per_task: Option<u32>,
    /// Memory, as `--mem` takes it (`16G`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem: Option<String>,
    /// The time limit, in one of Slurm's forms (`30`, `2:00:00`, `1-12:00:00`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraint: Option<String>,
    /// Further `sbatch` options, passed as they are (`--exclusive`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<String>,
}

impl Slurm {
    /// The options `sbatch` gets for these settings, in a fixed order.
    pub fn sbatch_options(&self) -> Vec<String> {
        let named = [
            ("--partition", &self.partition),
            ("--gres", &self.gres),
            ("--mem", &self.mem),
            ("--time", &self.time),
            ("--account", &self.account),
            ("--qos", &self.qos),
            ("--constraint", &self.constraint),
        ];
        let mut options: Vec<String> =
            named.iter().filter_map(|(flag, value)| value.as_ref().map(|v| format!("{flag}={v}"))).collect();
        options.extend(self.cpus_per_task.map(|n| format!("--cpus-per-task={n}")));
        options.extend(self.extra.iter().cloned());
        options
    }
}

/// `sbatch` options silkie sets itself, or that would take a job out of its hands: with its
/// name, a restarted driver would not find the job; with its output, the log's tail; with
/// `--array`, `--hold`, `--wait` or `--clusters`, the job would not be followed.
const RESERVED_SBATCH: &[(&str, &str)] = &[
    ("--job-name", "-J"),
    ("--output", "-o"),
    ("--error", "-e"),
    ("--chdir", "-D"),
    ("--array", "-a"),
    ("--wait", "-W"),
    ("--hold", "-H"),
    ("--clusters", "-M"),
    ("--parsable", ""),
    ("--wrap", ""),
];

/// The reserved option `option` sets, if it sets one.
fn reserved_sbatch_option(option: &str) -> Option<&'static str> {
    RESERVED_SBATCH.iter().find_map(|&(long, short)| {
        let is_long = option == long || option.starts_with(&format!("{long}="));
        let is_short = !short.is_empty() && option.starts_with(short);
        (is_long || is_short).then_some(long)
    })
}

/// Whether `time` is a time limit in a form Slurm reads: minutes, minutes:seconds,
/// hours:minutes:seconds, days-hours, days-hours:minutes or days-hours:minutes:seconds
/// (sbatch itself takes some malformed ones, `-5` among them, for a limit of years).
pub fn is_slurm_time(time: &str) -> bool {
    let number = |s: &str| !s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit());
    let (days, clock) = match time.split_once('-') {
        Some((days, clock)) => (Some(days), clock),
        None => (None, time),
    };
    let parts: Vec<&str> = clock.split(':').collect();
    (1..=3).contains(&parts.len()) && days.is_none_or(number) && parts.iter().all(|p| number(p))
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    executor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slurm: Option<Slurm>,
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
            placement: Placement { executor: f.executor, slurm: f.slurm },
        }
    }
}

impl From<Runtime> for Flat {
    fn from(r: Runtime) -> Flat {
        let (c, m, p) = (r.calls, r.compute, r.placement);
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
            executor: p.executor,
            slurm: p.slurm,
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
        let mut issues: Vec<Issue> = checks.into_iter().filter_map(Result::err).collect();
        if let Some(time) = self.placement.slurm.as_ref().and_then(|s| s.time.as_deref())
            && !is_slurm_time(time)
        {
            let why = format!(
                "`{time}` is not a Slurm time limit: write minutes (`30`), hours:minutes:seconds (`2:00:00`) or \
                 days-hours:minutes:seconds (`1-12:00:00`)"
            );
            issues.push(Issue::new(at("slurm.time"), why));
        }
        let extra = self.placement.slurm.iter().flat_map(|s| s.extra.iter().enumerate());
        for (i, option) in extra {
            if let Some(long) = reserved_sbatch_option(option) {
                let why = format!("`{long}` is silkie's to set: the driver names, logs and follows each job itself");
                issues.push(Issue::new(at(&format!("slurm.extra[{i}]")), why));
            }
        }
        issues
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
        let slurm: Runtime = serde_json::from_value(
            serde_json::json!({"executor": "slurm", "slurm": {"gres": "gpu:1", "time": "1:00:00"}}),
        )
        .unwrap();
        assert_eq!(slurm.placement.executor.as_deref(), Some("slurm"));
        assert_eq!(slurm.placement.slurm.as_ref().unwrap().sbatch_options(), ["--gres=gpu:1", "--time=1:00:00"]);
        let typo = serde_json::from_value::<Runtime>(serde_json::json!({"slurm": {"partiton": "a"}})).unwrap_err();
        assert!(typo.to_string().contains("unknown field `partiton`"), "{typo}");
    }

    #[test]
    fn sbatch_options_silkie_sets_are_refused_in_extra() {
        let runtime: Runtime = serde_json::from_value(
            serde_json::json!({"slurm": {"extra": ["--exclusive", "--job-name=x", "-Jx", "--array=1-3", "--mail-type=END"]}}),
        )
        .unwrap();
        let issues = runtime.check("stages.a.runtime");
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            ["stages.a.runtime.slurm.extra[1]", "stages.a.runtime.slurm.extra[2]", "stages.a.runtime.slurm.extra[3]"]
        );
        assert!(issues[0].message.contains("`--job-name` is silkie's to set"), "{}", issues[0].message);
    }

    #[test]
    fn slurm_times_are_checked_in_every_form_slurm_reads() {
        for good in ["30", "30:00", "2:00:00", "1-12", "1-12:30", "1-12:30:00"] {
            assert!(is_slurm_time(good), "{good}");
        }
        for bad in ["", "-5", "abc", "1:2:3:4", "1-", "1-2-3", "1.5", "1-1:2:3:4"] {
            assert!(!is_slurm_time(bad), "{bad}");
        }
    }
}
