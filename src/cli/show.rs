//! `silkie show`: a stage's table output, its data report, per-model statistics, or a plot
//! of training curves.

use petgraph::Direction;
use polars::prelude::DataFrame;

use clap::{Args, ValueEnum};

use super::{
    Context, Failure, Format, Outcome, PipelineFile, assess, print_json, read_stored_table, stored_table_format,
};
use silkie::data::report::DataReport;
use silkie::data::stats;
use silkie::plan::{Plan, State};
use silkie::store::{OutputRef, StageRecord, Store};
use silkie::table;

#[derive(Args)]
pub struct ShowArgs {
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
pub enum GroupBy {
    Model,
}

pub fn run(ctx: &Context, args: ShowArgs) -> Outcome {
    let (pipeline, plan) = ctx.load(args.file.file.as_deref(), &args.file.sets)?;
    let (stage, output) = match plan.find(&args.stage).is_empty() {
        false => (args.stage.clone(), None),
        true => match args.stage.rsplit_once('.') {
            Some((s, o)) => (s.to_string(), Some(o.to_string())),
            None => (args.stage.clone(), None),
        },
    };
    let name = single_instance(&plan, &stage, &pipeline.label)?;
    let shown = Shown { ctx, plan: &plan, pipeline: &pipeline };
    let record = shown.fresh_record(&name)?;
    let store = ctx.store()?;
    if args.report {
        return print_report(&store, &name, &record, args.format);
    }
    let (out_name, out) = pick_output(&name, &record, output.as_deref())?;
    let mut df = read_stored_table(&store, &format!("{name}.{out_name}"), out)?;
    if let Some(path) = &args.plot {
        if !(0.0..1.0).contains(&args.smoothing) {
            return Err(Failure::Invalid(format!("--smoothing {}: expected a weight in [0, 1)", args.smoothing)));
        }
        super::plot::training_curves(&df, &format!("{name}.{out_name}"), args.smoothing, path)
            .map_err(|e| Failure::Invalid(format!("{name}.{out_name}: {e}")))?;
        eprintln!("wrote {}", path.display());
        return Ok(true);
    }
    if args.by == Some(GroupBy::Model) {
        let pairs = shown.downstream_pairs(&name);
        if pairs.is_none() {
            eprintln!("note: no win rates: they need exactly one fresh `pair` stage built on `{name}`");
        }
        df = stats::by_model(&df, pairs.as_ref()).map_err(|e| Failure::Runtime(e.to_string()))?;
    }
    let total = df.height();
    let mut head = df.head(Some(args.rows));
    if args.format == Format::Json {
        let rows = table::to_json_rows(&mut head).map_err(|e| Failure::Runtime(e.to_string()))?;
        print_json(&rows);
    } else {
        println!("{name}.{out_name}: {total} rows");
        println!("{head}");
    }
    Ok(true)
}

fn single_instance(plan: &Plan, stage: &str, pipeline: &str) -> Result<String, Failure> {
    let nodes = plan.find(stage);
    match nodes.as_slice() {
        [node] => Ok(plan.graph[*node].name.clone()),
        [] => {
            let help = silkie::dsl::did_you_mean(stage, plan.names()).map(|h| format!("; {h}")).unwrap_or_default();
            Err(Failure::Invalid(format!("no stage named `{stage}` in {pipeline}{help}")))
        }
        several => {
            let names: Vec<&str> = several.iter().map(|n| plan.graph[*n].name.as_str()).collect();
            Err(Failure::Invalid(format!("`{stage}` has several instances; name one: {}", names.join(", "))))
        }
    }
}

struct Shown<'a> {
    ctx: &'a Context,
    plan: &'a Plan,
    pipeline: &'a silkie::dsl::Pipeline,
}

impl Shown<'_> {
    /// The record of an instance that is fresh, or an error that says how to make it so.
    fn fresh_record(&self, name: &str) -> Result<StageRecord, Failure> {
        let states = assess(self.ctx, self.pipeline, self.plan)?;
        let state = states
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Failure::Runtime("internal: instance not assessed".into()))?;
        let store = self.ctx.store()?;
        let record = match (&state.state, &state.key) {
            (State::Fresh, Some(key)) => store.complete_record(key).map_err(|e| Failure::Runtime(e.to_string()))?,
            _ => None,
        };
        record.ok_or_else(|| {
            let why = state.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
            let word =
                serde_json::to_value(state.state).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
            Failure::Runtime(format!(
                "`{name}` has no fresh output to show (it is {word}{why}); run `silkie run {} {name}` first",
                self.pipeline.label
            ))
        })
    }

    /// The pairs of the one fresh stage fed by this instance that outputs a `pairs` table, for
    /// win rates.
    fn downstream_pairs(&self, name: &str) -> Option<DataFrame> {
        let node = *self.plan.find(name).first()?;
        let pair_nodes: Vec<_> = self
            .plan
            .graph
            .neighbors_directed(node, Direction::Outgoing)
            .filter(|n| self.plan.graph[*n].stage_impl.outputs().iter().any(|o| o.name == PAIRS && o.table))
            .collect();
        let [pair] = pair_nodes.as_slice() else { return None };
        let record = self.fresh_record(&self.plan.graph[*pair].name).ok()?;
        let store = self.ctx.store().ok()?;
        let pair_stage = &self.plan.graph[*pair].name;
        read_stored_table(&store, &format!("{pair_stage}.{PAIRS}"), record.outputs.get(PAIRS)?).ok()
    }
}

/// What a stage that pairs responses outputs: the `pairs` table.
const PAIRS: &str = "pairs";

fn print_report(store: &Store, name: &str, record: &StageRecord, format: Format) -> Outcome {
    let Some(out) = record.outputs.get("report") else {
        return Err(Failure::Invalid(format!("`{name}` writes no data report (its outputs: {})", names(record))));
    };
    let bytes = store.read_blob(&out.digest).map_err(|e| Failure::Runtime(e.to_string()))?;
    let report: DataReport =
        serde_json::from_slice(&bytes).map_err(|e| Failure::Runtime(format!("corrupt report: {e}")))?;
    if format == Format::Json {
        print_json(&report);
    } else {
        println!("{name}: data report");
        print!("{report}");
    }
    Ok(true)
}

fn names(record: &StageRecord) -> String {
    record.outputs.keys().cloned().collect::<Vec<_>>().join(", ")
}

fn pick_output<'r>(
    name: &str,
    record: &'r StageRecord,
    asked: Option<&str>,
) -> Result<(&'r str, &'r OutputRef), Failure> {
    if let Some(o) = asked {
        return record
            .outputs
            .get_key_value(o)
            .map(|(k, v)| (k.as_str(), v))
            .ok_or_else(|| Failure::Invalid(format!("`{name}` has no output `{o}`; its outputs: {}", names(record))));
    }
    let tables: Vec<(&String, &OutputRef)> =
        record.outputs.iter().filter(|(_, o)| stored_table_format(o).is_some()).collect();
    match tables.as_slice() {
        [(k, v)] => Ok((k.as_str(), v)),
        [] => Err(Failure::Invalid(format!("`{name}` has no table output to show"))),
        _ => Err(Failure::Invalid(format!(
            "`{name}` has several table outputs; name one as {name}.OUTPUT: {}",
            tables.iter().map(|t| t.0.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}
