//! The `silkie` command line: parses the arguments and hands them to their command in
//! `cli/`.

mod cli;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cli::{Context, Failure, Outcome};
use silkie::plan;

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
    Run(cli::run::RunArgs),
    /// Say per stage instance: fresh, stale (and why), pending or never run
    Status(cli::PositionalPipeline),
    /// Show which part of a stage's key changed since its last run
    Explain(cli::explain::ExplainArgs),
    /// Print the stage graph
    Dag(cli::dag::DagArgs),
    /// Print a table output of a stage
    Show(cli::show::ShowArgs),
    /// Check a pipeline without running anything
    Validate(cli::PositionalPipeline),
    /// Remove what the last runs of every pipeline no longer reach
    Gc(cli::gc::GcArgs),
    /// Score benchmark results that exist already: MME's results layout, or MMHal-Bench answers
    Eval(cli::eval::EvalArgs),
    /// Every evaluate result of one or several pipelines side by side, with relative changes
    Metrics(cli::metrics::MetricsArgs),
    /// Measure DPO training throughput on a device (what scripts/gpu-check runs)
    Bench(cli::bench::BenchArgs),
    /// Run one stage instance from its description in the cache (what a Slurm job runs)
    #[command(hide = true)]
    RunInstance(cli::run_instance::RunInstanceArgs),
}

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

fn dispatch(cli: Cli) -> Outcome {
    let ctx = Context::new(cli.workspace.as_deref(), cli.cache.as_deref(), cli.max_instances)?;
    match cli.command {
        Command::Run(args) => cli::run::run(&ctx, args),
        Command::Status(args) => cli::status::run(&ctx, args),
        Command::Explain(args) => cli::explain::run(&ctx, args),
        Command::Dag(args) => cli::dag::run(&ctx, args),
        Command::Show(args) => cli::show::run(&ctx, args),
        Command::Validate(args) => cli::validate::run(&ctx, args),
        Command::Gc(args) => cli::gc::run(&ctx, args),
        Command::Bench(args) => cli::bench::run(args),
        Command::Eval(args) => cli::eval::run(&ctx, args),
        Command::Metrics(args) => cli::metrics::run(&ctx, args),
        Command::RunInstance(args) => cli::run_instance::run(args),
    }
}
