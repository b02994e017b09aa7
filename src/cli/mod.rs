//! The commands, one file each with its arguments, and what they share: the workspace and
//! cache a command works in ([`Context`]), how it fails ([`Failure`], the exit codes) and how
//! it prints.

pub mod bench;
pub mod dag;
pub mod eval;
pub mod explain;
pub mod gc;
pub mod metrics;
pub mod plot;
pub mod run;
pub mod run_instance;
pub mod show;
pub mod status;
pub mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};

use silkie::dsl::{Loader, Pipeline, PipelineErrors};
use silkie::plan::{self, Assessment, Plan};
use silkie::store::{StatCache, Store};

#[derive(Args, Clone)]
pub struct PipelineFile {
    /// The pipeline file [default: pipeline.yaml in the workspace]
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    file: Option<PathBuf>,
    /// Override a value: stages.NAME.params.KEY=VALUE, vars.X=VALUE, models.M.FIELD=VALUE
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

#[derive(Args)]
pub struct PositionalPipeline {
    /// The pipeline file (same as -f)
    pipeline: Option<PathBuf>,
    #[command(flatten)]
    file: PipelineFile,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Exit codes: 0 success, 1 a stage or the store failed, 2 bad input (pipeline, arguments).
pub enum Failure {
    Invalid(String),
    Pipeline(PipelineErrors),
    Runtime(String),
}

pub type Outcome = Result<bool, Failure>;

/// Where the command works: the workspace and its cache.
pub struct Context {
    workspace: PathBuf,
    cache: PathBuf,
    max_instances: usize,
}

impl Context {
    /// The workspace and cache the global flags name (relative to the current directory).
    pub fn new(workspace: Option<&Path>, cache: Option<&Path>, max_instances: usize) -> Result<Context, Failure> {
        let cwd =
            std::env::current_dir().map_err(|e| Failure::Runtime(format!("cannot read the current directory: {e}")))?;
        let workspace = workspace.map_or(cwd.clone(), |w| cwd.join(w));
        if !workspace.is_dir() {
            return Err(Failure::Invalid(format!("the workspace {} is not a directory", workspace.display())));
        }
        let cache = cache.map_or_else(|| workspace.join("cache"), |c| cwd.join(c));
        Ok(Context { workspace, cache, max_instances })
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

pub fn pick<'a>(positional: Option<&'a PathBuf>, file: &'a PipelineFile) -> Result<Option<&'a Path>, Failure> {
    match (positional, &file.file) {
        (Some(_), Some(_)) => {
            Err(Failure::Invalid("give the pipeline either as an argument or with -f, not both".into()))
        }
        (p, f) => Ok(p.or(f.as_ref()).map(PathBuf::as_path)),
    }
}

pub fn print_json(value: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

/// A `--flag SECONDS` value as a duration.
pub fn seconds(flag: &str, s: f64) -> Result<Duration, Failure> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| Failure::Invalid(format!("{flag} {s}: expected a non-negative number of seconds")))
}

pub fn assess(ctx: &Context, pipeline: &Pipeline, plan: &Plan) -> Result<Vec<Assessment>, Failure> {
    let store = ctx.store()?;
    let stat_cache = StatCache::load(&store);
    let mut states = plan::assess(plan, &store, &stat_cache, &ctx.workspace, &pipeline.label);
    let _ = stat_cache.save(&store);
    let unfinished: Vec<&str> =
        states.iter().filter(|s| s.state != plan::State::Fresh).filter_map(|s| s.key.as_deref()).collect();
    let in_flight = silkie::exec::in_flight(store.root(), &unfinished);
    // The last run of this pipeline: how its instances that are still not fresh failed.
    let last_run = store.last_run(&pipeline.label).ok().flatten();
    for state in states.iter_mut().filter(|s| s.state != plan::State::Fresh) {
        state.in_flight = state.key.as_ref().and_then(|k| in_flight.get(k).cloned());
        state.last_failure = last_run
            .as_ref()
            .and_then(|run| run.instances.iter().find(|i| i.name == state.name))
            .filter(|i| i.status == silkie::store::InstanceStatus::Failed)
            .and_then(|i| i.error.as_deref())
            .and_then(|e| e.lines().next())
            .map(String::from);
    }
    Ok(states)
}

/// How a stored output reads as a table, if it does: by what its stage declared it to be.
pub fn stored_table_format(out: &silkie::store::OutputRef) -> Option<silkie::table::TableFormat> {
    use silkie::store::OutputKind;
    use silkie::table::TableFormat;
    match out.kind {
        OutputKind::Table => Some(TableFormat::Parquet),
        OutputKind::File => out.format.as_deref().and_then(|f| TableFormat::from_path(Path::new(&format!("x.{f}")))),
        OutputKind::Dir => None,
    }
}

/// A stored table output (`what`, as `stage.output`, for the message when it is none), read in
/// the format its record gives; the one way commands read tables out of the store.
pub fn read_stored_table(
    store: &Store,
    what: &str,
    out: &silkie::store::OutputRef,
) -> Result<polars::prelude::DataFrame, Failure> {
    let format = stored_table_format(out).ok_or_else(|| Failure::Invalid(format!("`{what}` is not a table")))?;
    silkie::table::read(&store.blob_path(&out.digest), format).map_err(|e| Failure::Runtime(e.to_string()))
}
