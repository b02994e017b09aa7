//! `silkie run`: runs a pipeline, or some of its stages and what they need.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;

use super::{Context, Failure, Format, Outcome, PipelineFile, pick, print_json, seconds};
use silkie::exec::{self, RunOptions};
use silkie::store::InstanceStatus;

#[derive(Args)]
pub struct RunArgs {
    /// [PIPELINE.yaml] [STAGE…]: a first argument ending in .yaml/.yml is the pipeline
    args: Vec<String>,
    #[command(flatten)]
    file: PipelineFile,
    /// Rerun this stage even when fresh (repeatable)
    #[arg(long, value_name = "STAGE")]
    force: Vec<String>,
    /// Instances to run at once [default: number of cores]
    #[arg(short, long)]
    jobs: Option<usize>,
    /// Give up waiting for a lock another run holds after this many seconds
    #[arg(long, value_name = "SECONDS")]
    lock_timeout: Option<f64>,
    /// Send no model call: stages that need calls not in the memo fail, counting them per model
    #[arg(long)]
    offline: bool,
    /// Off a terminal, log each long stage's progress (calls, training steps) this often
    #[arg(long, value_name = "SECONDS", default_value_t = silkie::stages::DEFAULT_PROGRESS_INTERVAL.as_secs_f64())]
    progress_interval: f64,
    /// Where instances run whose stage names no `runtime.executor`: local, or slurm (each
    /// instance a job; load, aggregate, pair and export stay local unless their stage asks)
    #[arg(long, value_name = "EXECUTOR", default_value = "local")]
    executor: String,
    /// On Ctrl-C or SIGTERM, cancel the jobs this run waits on elsewhere (Slurm) without
    /// asking; otherwise a terminal is asked, and off one they are left for a rerun to adopt
    #[arg(long)]
    cancel_on_exit: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

pub fn run(ctx: &Context, args: RunArgs) -> Outcome {
    let mut rest = args.args.clone();
    let positional = match rest.first() {
        Some(first) if args.file.file.is_none() && (first.ends_with(".yaml") || first.ends_with(".yml")) => {
            Some(PathBuf::from(rest.remove(0)))
        }
        _ => None,
    };
    let given = pick(positional.as_ref(), &args.file)?;
    let (pipeline, plan) = ctx.load(given, &args.file.sets)?;
    let store = ctx.store()?;
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let opts = RunOptions {
        jobs,
        targets: rest,
        force: args.force,
        lock_timeout: args.lock_timeout.map(|s| seconds("--lock-timeout", s)).transpose()?,
        progress: args.format == Format::Text && std::io::stderr().is_terminal(),
        progress_interval: seconds("--progress-interval", args.progress_interval)?,
        offline: args.offline,
        executor: args.executor,
        on_interrupt: if args.cancel_on_exit { exec::OnInterrupt::Cancel } else { exec::OnInterrupt::Ask },
    };
    let record = exec::run(&plan, &store, &ctx.workspace, &pipeline, &opts).map_err(|e| match e {
        exec::ExecError::Usage(msg) => Failure::Invalid(msg),
        other => Failure::Runtime(other.to_string()),
    })?;
    if args.format == Format::Json {
        print_json(&record);
        return Ok(record.ok);
    }
    let count = |s: InstanceStatus| record.instances.iter().filter(|r| r.status == s).count();
    println!(
        "{}: ran {}, cached {}, failed {}, skipped {} in {:.2} s",
        pipeline.label,
        count(InstanceStatus::Ran),
        count(InstanceStatus::Hit),
        count(InstanceStatus::Failed),
        count(InstanceStatus::Skipped),
        record.duration_ms as f64 / 1000.0
    );
    for r in record.instances.iter().filter(|r| r.status == InstanceStatus::Failed) {
        println!("  {} failed: {}", r.name, r.error.as_deref().unwrap_or("unknown error"));
    }
    let results = super::metrics::run_summary(&store, &pipeline.name, &record);
    if !results.is_empty() {
        println!("\n{results}");
    }
    Ok(record.ok)
}
