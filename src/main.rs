//! The `silkie` command line.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;

use silkie::dsl::{Loader, Pipeline, PipelineErrors};
use silkie::exec::{self, RunOptions};
use silkie::plan::{self, Assessment, Plan, State};
use silkie::store::{InstanceStatus, StatCache, Store};

#[derive(Parser)]
#[command(
    name = "silkie",
    version,
    about = "Preference distillation for vision-language models, as an incremental pipeline"
)]
struct Cli {
    /// Directory that relative paths in pipelines resolve against [default: the current directory]
    #[arg(long, global = true, value_name = "DIR")]
    workspace: Option<PathBuf>,
    /// Cache directory [default: <workspace>/cache]
    #[arg(long, global = true, env = "SILKIE_CACHE", value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Refuse a pipeline whose matrices expand to more stage instances than this (checked
    /// before expanding them)
    #[arg(long, global = true, env = "SILKIE_MAX_INSTANCES", value_name = "N", default_value_t = plan::DEFAULT_MAX_INSTANCES)]
    max_instances: usize,
    /// More log output (-v: debug, -vv: trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline, or some of its stages and what they need
    Run(RunArgs),
    /// Say per stage instance: fresh, stale (and why), pending or never run
    Status(PositionalPipeline),
    /// Show which part of a stage's key changed since its last run
    Explain(ExplainArgs),
    /// Print the stage graph
    Dag(cli::dag::DagArgs),
    /// Print a table output of a stage
    Show(ShowArgs),
    /// Check a pipeline without running anything
    Validate(PositionalPipeline),
    /// Remove what the last runs of every pipeline no longer reach
    Gc(cli::gc::GcArgs),
    /// Score benchmark results that exist already: MME's results layout, or MMHal-Bench answers
    Eval(EvalArgs),
    /// Every evaluate result of one or several pipelines side by side, with relative changes
    Metrics(MetricsArgs),
    /// Measure DPO training throughput on a device (what scripts/gpu-check runs)
    Bench(cli::bench::BenchArgs),
}

#[derive(Args, Clone)]
struct PipelineFile {
    /// The pipeline file [default: pipeline.yaml in the workspace]
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    file: Option<PathBuf>,
    /// Override a value: stages.NAME.params.KEY=VALUE, vars.X=VALUE, models.M.FIELD=VALUE
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

#[derive(Args)]
struct PositionalPipeline {
    /// The pipeline file (same as -f)
    pipeline: Option<PathBuf>,
    #[command(flatten)]
    file: PipelineFile,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Args)]
struct RunArgs {
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
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Args)]
struct ExplainArgs {
    stage: String,
    #[command(flatten)]
    file: PipelineFile,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Args)]
struct ShowArgs {
    /// STAGE or STAGE.OUTPUT
    stage: String,
    #[command(flatten)]
    file: PipelineFile,
    /// Rows to print
    #[arg(long, default_value_t = 10)]
    rows: usize,
    /// Print the stage's data report (rows in, rows out, drops by reason) instead
    #[arg(long, conflicts_with = "by")]
    report: bool,
    /// Per-model statistics of a scores table: mean score per aspect, and win rate in the pairs
    #[arg(long, value_enum)]
    by: Option<GroupBy>,
    /// Draw a `training` table's loss and reward curves into this PNG file
    #[arg(long, value_name = "PATH", conflicts_with_all = ["report", "by"])]
    plot: Option<std::path::PathBuf>,
    /// With --plot: weight of the moving average drawn over each raw curve, in [0, 1)
    /// (TensorBoard's smoothing; 0 draws the raw values only)
    #[arg(long, value_name = "WEIGHT", default_value_t = 0.9, requires = "plot")]
    smoothing: f64,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum GroupBy {
    Model,
}

#[derive(Args)]
struct EvalArgs {
    /// Which benchmark's rules
    #[arg(value_enum)]
    benchmark: EvalBenchmark,
    /// mme: a results directory (<subtask>.txt files); mmhal: the benchmark JSON with `model_answer`s
    path: PathBuf,
    /// mmhal: the judge, a `models:` entry of the pipeline (-f)
    #[arg(long)]
    judge: Option<String>,
    /// mmhal: the judge's prompt template instead of silkie's
    #[arg(long, value_name = "FILE")]
    template: Option<PathBuf>,
    #[command(flatten)]
    file: PipelineFile,
    /// Send no judge call: answer from the memo only
    #[arg(long)]
    offline: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum EvalBenchmark {
    Mme,
    Mmhal,
}

#[derive(Args)]
struct MetricsArgs {
    /// Pipelines whose evaluate stages to read [default: pipeline.yaml in the workspace]
    pipelines: Vec<PathBuf>,
    /// Compare every row with this evaluate instance (NAME or PIPELINE:NAME) instead of each
    /// stage's own `baseline:`
    #[arg(long, value_name = "INSTANCE")]
    baseline: Option<String>,
    /// Include per-subtask and per-type metrics
    #[arg(long)]
    all: bool,
    /// Override a value in every pipeline read (as `run --set`)
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Draw the metrics as bars into this PNG file
    #[arg(long, value_name = "PATH")]
    plot: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = MetricsFormat::Text)]
    format: MetricsFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MetricsFormat {
    Text,
    Json,
    Csv,
    Markdown,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

mod cli {
    pub mod bench;
    pub mod dag;
    pub mod eval;
    pub mod gc;
    pub mod metrics;
    pub mod plot;
    pub mod show;
}

/// Exit codes: 0 success, 1 a stage or the store failed, 2 bad input (pipeline, arguments).
enum Failure {
    Invalid(String),
    Pipeline(PipelineErrors),
    Runtime(String),
}

type Outcome = Result<bool, Failure>;

// glibc's allocator hands big freed buffers back to the OS and faults them in again on the
// next step; training steps ran ~10 % slower for it. mimalloc keeps them (polars recommends
// a non-system allocator for the same reason).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    // Unwrapped lines keep `file:line:col: key.path: message` greppable.
    let _ = miette::set_hook(Box::new(|_| Box::new(miette::MietteHandlerOpts::new().wrap_lines(false).build())));
    match dispatch(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(Failure::Pipeline(errors)) => {
            for e in errors.0 {
                eprintln!("{:?}", miette::Report::new(e));
            }
            ExitCode::from(2)
        }
        Err(Failure::Invalid(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "silkie=info",
        1 => "silkie=debug",
        _ => "silkie=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SILKIE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Where the command works: the workspace and its cache.
struct Context {
    workspace: PathBuf,
    cache: PathBuf,
    max_instances: usize,
}

impl Context {
    fn new(cli: &Cli) -> Result<Context, Failure> {
        let cwd =
            std::env::current_dir().map_err(|e| Failure::Runtime(format!("cannot read the current directory: {e}")))?;
        let workspace = cli.workspace.as_ref().map_or(cwd.clone(), |w| cwd.join(w));
        if !workspace.is_dir() {
            return Err(Failure::Invalid(format!("the workspace {} is not a directory", workspace.display())));
        }
        let cache = cli.cache.as_ref().map_or_else(|| workspace.join("cache"), |c| cwd.join(c));
        Ok(Context { workspace, cache, max_instances: cli.max_instances })
    }

    fn store(&self) -> Result<Store, Failure> {
        Store::open(&self.cache).map_err(|e| Failure::Runtime(e.to_string()))
    }

    /// A pipeline path from the command line: relative to the current directory when it
    /// exists there, else to the workspace; `pipeline.yaml` in the workspace by default.
    fn pipeline_path(&self, given: Option<&Path>) -> PathBuf {
        match given {
            None => self.workspace.join("pipeline.yaml"),
            Some(p) if p.is_absolute() => p.to_path_buf(),
            Some(p) => {
                let here = std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf());
                if here.exists() { here } else { self.workspace.join(p) }
            }
        }
    }

    fn load(&self, given: Option<&Path>, sets: &[String]) -> Result<(Pipeline, Plan), Failure> {
        let path = self.pipeline_path(given);
        let pipeline = Loader { workspace: &self.workspace }.load(&path, sets).map_err(Failure::Pipeline)?;
        let plan = plan::build(&pipeline, self.max_instances).map_err(Failure::Pipeline)?;
        Ok((pipeline, plan))
    }
}

fn pick<'a>(positional: Option<&'a PathBuf>, file: &'a PipelineFile) -> Result<Option<&'a Path>, Failure> {
    match (positional, &file.file) {
        (Some(_), Some(_)) => {
            Err(Failure::Invalid("give the pipeline either as an argument or with -f, not both".into()))
        }
        (p, f) => Ok(p.or(f.as_ref()).map(PathBuf::as_path)),
    }
}

fn dispatch(cli: Cli) -> Outcome {
    let ctx = Context::new(&cli)?;
    match cli.command {
        Command::Run(args) => cmd_run(&ctx, args),
        Command::Status(args) => cmd_status(&ctx, args),
        Command::Explain(args) => cmd_explain(&ctx, args),
        Command::Dag(args) => cli::dag::run(&ctx, args),
        Command::Show(args) => cli::show::run(&ctx, args),
        Command::Validate(args) => cmd_validate(&ctx, args),
        Command::Gc(args) => cli::gc::run(&ctx, args),
        Command::Bench(args) => cli::bench::run(args),
        Command::Eval(args) => cli::eval::run(&ctx, args),
        Command::Metrics(args) => cli::metrics::run(&ctx, args),
    }
}

fn print_json(value: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

/// A `--flag SECONDS` value as a duration.
fn seconds(flag: &str, s: f64) -> Result<Duration, Failure> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| Failure::Invalid(format!("{flag} {s}: expected a non-negative number of seconds")))
}

fn cmd_run(ctx: &Context, args: RunArgs) -> Outcome {
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
    let results = cli::metrics::run_summary(&store, &pipeline.name, &record);
    if !results.is_empty() {
        println!("\n{results}");
    }
    Ok(record.ok)
}

fn assess(ctx: &Context, pipeline: &Pipeline, plan: &Plan) -> Result<Vec<Assessment>, Failure> {
    let store = ctx.store()?;
    let stat_cache = StatCache::load(&store);
    let states = plan::assess(plan, &store, &stat_cache, &ctx.workspace, &pipeline.label);
    let _ = stat_cache.save(&store);
    Ok(states)
}

fn cmd_status(ctx: &Context, args: PositionalPipeline) -> Outcome {
    let (pipeline, plan) = ctx.load(pick(args.pipeline.as_ref(), &args.file)?, &args.file.sets)?;
    let states = assess(ctx, &pipeline, &plan)?;
    if args.format == Format::Json {
        print_json(&states);
        return Ok(true);
    }
    let width = states.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for s in &states {
        let state = match s.state {
            State::Fresh => "fresh",
            State::Stale => "stale",
            State::Pending => "pending",
            State::Never => "never run",
        };
        let reason = s.reason.as_deref().map(|r| format!("  ({r})")).unwrap_or_default();
        println!("{:width$}  {:8} {state}{reason}", s.name, s.kind);
    }
    Ok(true)
}

fn cmd_explain(ctx: &Context, args: ExplainArgs) -> Outcome {
    let (pipeline, plan) = ctx.load(args.file.file.as_deref(), &args.file.sets)?;
    let nodes = plan.find(&args.stage);
    if nodes.is_empty() {
        let help = silkie::dsl::did_you_mean(&args.stage, plan.names()).map(|h| format!("; {h}")).unwrap_or_default();
        return Err(Failure::Invalid(format!("no stage named `{}` in {}{help}", args.stage, pipeline.label)));
    }
    let store = ctx.store()?;
    let states = assess(ctx, &pipeline, &plan)?;
    let mut explained = Vec::new();
    for node in nodes {
        let name = &plan.graph[node].name;
        let Some(state) = states.iter().find(|s| s.name == *name) else { continue };
        let label = store.label(&pipeline.label, name).map_err(|e| Failure::Runtime(e.to_string()))?;
        let changes = match (&label, &state.preimage) {
            (Some(label), Some(now)) => plan::diff(&label.preimage, now),
            _ => Vec::new(),
        };
        let summary = match (state.state, &label) {
            (State::Fresh, _) => "fresh: nothing changed since its last run".to_string(),
            (State::Pending, _) => format!(
                "pending: it {}; explain that stage first",
                state.reason.as_deref().unwrap_or("waits on a stale stage")
            ),
            (_, None) => "never run in this pipeline, so there is nothing to compare with".to_string(),
            (_, Some(_)) if state.preimage.is_none() => format!("stale: {}", state.reason.as_deref().unwrap_or("")),
            (_, Some(_)) => format!("stale: {}", plan::describe(&changes)),
        };
        explained.push((name.clone(), state.state, summary, changes));
    }
    if args.format == Format::Json {
        let items: Vec<_> = explained.iter().map(|(name, state, summary, changes)| json!({"name": name, "state": state, "summary": summary, "changes": changes})).collect();
        if items.len() == 1 {
            print_json(&items[0])
        } else {
            print_json(&items)
        }
        return Ok(true);
    }
    for (name, _, summary, changes) in &explained {
        println!("{name}: {summary}");
        for c in changes {
            println!("  {}: {} → {}", c.path, c.old, c.new);
        }
    }
    Ok(true)
}

fn cmd_validate(ctx: &Context, args: PositionalPipeline) -> Outcome {
    let (pipeline, plan) = ctx.load(pick(args.pipeline.as_ref(), &args.file)?, &args.file.sets)?;
    if args.format == Format::Json {
        print_json(
            &json!({"pipeline": pipeline.label, "valid": true, "stages": pipeline.stages.len(), "instances": plan.order.len()}),
        );
    } else {
        println!("{}: valid ({} stages, {} instances)", pipeline.label, pipeline.stages.len(), plan.order.len());
    }
    Ok(true)
}
