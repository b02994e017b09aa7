//! `silkie metrics [PIPELINE…]`: every `evaluate` result of one or several pipelines (an
//! experiment and its ablations, a sweep's instances) side by side, with the relative change
//! to a baseline: each stage's own `baseline:`, or one chosen with `--baseline INSTANCE`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Serialize;

use clap::{Args, ValueEnum};

use super::plot::Bar;
use super::{Context, Failure, Outcome, assess, print_json, read_stored_table};
use silkie::eval::results::{Metric, read_results, relative_change};
use silkie::plan::State;
use silkie::store::{OutputRef, RunRecord, Store};

#[derive(Args)]
pub struct MetricsArgs {
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
pub enum MetricsFormat {
    Text,
    Json,
    Csv,
    Markdown,
}

/// One metric of one evaluate instance.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub pipeline: String,
    pub instance: String,
    pub benchmark: String,
    pub metric: String,
    pub value: f64,
    pub baseline_value: Option<f64>,
    pub relative_change: Option<f64>,
    /// `PIPELINE:INSTANCE` of the instance compared with, when there is one.
    pub baseline: Option<String>,
}

impl Row {
    /// `PIPELINE:INSTANCE`, as plots and `--baseline` name it.
    fn label(&self) -> String {
        format!("{}:{}", self.pipeline, self.instance)
    }
}

pub fn run(ctx: &Context, args: MetricsArgs) -> Outcome {
    let files: Vec<Option<&std::path::Path>> =
        if args.pipelines.is_empty() { vec![None] } else { args.pipelines.iter().map(|p| Some(p.as_path())).collect() };
    let mut rows = Vec::new();
    for file in files {
        rows.extend(collect(ctx, file, &args.sets)?);
    }
    if rows.is_empty() {
        return Err(Failure::Runtime("no fresh `evaluate` results: run the pipelines first".into()));
    }
    if let Some(baseline) = &args.baseline {
        rebase(&mut rows, baseline)?;
    }
    if !args.all {
        rows.retain(|r| !r.metric.contains('/'));
    }
    if let Some(path) = &args.plot {
        let panels = panels(&rows);
        super::plot::metric_bars(&panels, path).map_err(Failure::Runtime)?;
        eprintln!("wrote {}", path.display());
    }
    match args.format {
        MetricsFormat::Json => print_json(&rows),
        MetricsFormat::Csv => print!("{}", csv(&rows)),
        MetricsFormat::Text => print!("{}", wide(&rows, false)),
        MetricsFormat::Markdown => print!("{}", wide(&rows, true)),
    }
    Ok(true)
}

/// What a stage that scores a benchmark outputs: the `results` table every benchmark writes.
const RESULTS: &str = "results";

/// The fresh evaluate results of one pipeline; stale or never-run ones are named on stderr.
fn collect(ctx: &Context, file: Option<&std::path::Path>, sets: &[String]) -> Result<Vec<Row>, Failure> {
    let (pipeline, plan) = ctx.load(file, sets)?;
    let states = assess(ctx, &pipeline, &plan)?;
    let store = ctx.store()?;
    let mut rows = Vec::new();
    for &node in &plan.order {
        let inst = &plan.graph[node];
        if !inst.stage_impl.outputs().iter().any(|o| o.name == RESULTS && o.table) {
            continue;
        }
        let state = states.iter().find(|s| s.name == inst.name);
        let record = match state.map(|s| (&s.state, &s.key)) {
            Some((State::Fresh, Some(key))) => {
                store.complete_record(key).map_err(|e| Failure::Runtime(e.to_string()))?
            }
            _ => None,
        };
        let Some(record) = record else {
            eprintln!("note: {}: `{}` has no fresh results (run it first); left out", pipeline.label, inst.name);
            continue;
        };
        let Some(out) = record.outputs.get(RESULTS) else { continue };
        let mut found = results_rows(&store, out, &pipeline.name, &inst.name)?;
        if let Some((node, _)) = inst.inputs.get("baseline") {
            let baseline = format!("{}:{}", pipeline.name, plan.graph[*node].name);
            found.iter_mut().filter(|r| r.baseline_value.is_some()).for_each(|r| r.baseline = Some(baseline.clone()));
        }
        rows.extend(found);
    }
    Ok(rows)
}

/// The rows of one stored results table.
fn results_rows(store: &Store, out: &OutputRef, pipeline: &str, instance: &str) -> Result<Vec<Row>, Failure> {
    let df = read_stored_table(store, &format!("{instance}.{RESULTS}"), out)?;
    let metrics = read_results(&df).map_err(|e| Failure::Runtime(e.to_string()))?;
    let column = |name: &str| -> Vec<Option<f64>> {
        df.column(name).ok().and_then(|c| c.f64().ok().map(|c| c.iter().collect())).unwrap_or_default()
    };
    let (baselines, changes) = (column("baseline_value"), column("relative_change"));
    Ok(metrics
        .into_iter()
        .enumerate()
        .map(|(i, Metric { benchmark, metric, value })| Row {
            pipeline: pipeline.to_string(),
            instance: instance.to_string(),
            benchmark,
            metric,
            value,
            baseline_value: baselines.get(i).copied().flatten(),
            relative_change: changes.get(i).copied().flatten(),
            baseline: None,
        })
        .collect())
}

/// The results of a run's evaluate instances as a table (totals only), for the end of
/// `silkie run`; empty when the run evaluated nothing.
pub fn run_summary(store: &Store, pipeline: &str, record: &RunRecord) -> String {
    let mut rows = Vec::new();
    for inst in &record.instances {
        if let Some(out) = inst.outputs.get(RESULTS)
            && let Ok(found) = results_rows(store, out, pipeline, &inst.name)
        {
            rows.extend(found.into_iter().filter(|r| !r.metric.contains('/')));
        }
    }
    if rows.is_empty() { String::new() } else { wide(&rows, false) }
}

/// Every row compared with `baseline` (an instance name, or `PIPELINE:INSTANCE`).
fn rebase(rows: &mut [Row], baseline: &str) -> Result<(), Failure> {
    // An instance name as it is first (sweep values may hold a colon), then PIPELINE:INSTANCE.
    let exact = rows.iter().any(|r| r.instance == baseline);
    let matches = |r: &Row| match (exact, baseline.split_once(':')) {
        (false, Some((pipeline, instance))) => r.pipeline == pipeline && r.instance == instance,
        _ => r.instance == baseline,
    };
    let Some(first) = rows.iter().find(|r| matches(r)).map(|r| r.pipeline.clone()) else {
        let names: BTreeSet<&str> = rows.iter().map(|r| r.instance.as_str()).collect();
        let list = names.into_iter().collect::<Vec<_>>().join(", ");
        return Err(Failure::Invalid(format!("--baseline `{baseline}` is none of the evaluate instances ({list})")));
    };
    let base: Vec<Row> = rows.iter().filter(|r| matches(r) && r.pipeline == first).cloned().collect();
    for row in rows.iter_mut() {
        let b = base.iter().find(|b| b.benchmark == row.benchmark && b.metric == row.metric);
        row.baseline_value = b.map(|b| b.value);
        row.relative_change = b.and_then(|b| relative_change(row.value, b.value));
        row.baseline = b.map(Row::label);
    }
    Ok(())
}

fn number(v: f64) -> String {
    if v.abs() >= 100.0 { format!("{v:.1}") } else { format!("{v:.3}") }
}

fn percent(change: Option<f64>) -> String {
    change.map(|c| format!(" ({:+.1}%)", c * 100.0)).unwrap_or_default()
}

/// Rows = (pipeline, instance), columns = benchmark/metric; as aligned text or markdown.
fn wide(rows: &[Row], markdown: bool) -> String {
    let mut columns: Vec<(String, String)> = Vec::new();
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in rows {
        let column = (r.benchmark.clone(), r.metric.clone());
        if !columns.contains(&column) {
            columns.push(column);
        }
        let key = (r.pipeline.clone(), r.instance.clone());
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let mut table: Vec<Vec<String>> = vec![
        ["pipeline".to_string(), "instance".to_string()]
            .into_iter()
            .chain(columns.iter().map(|(b, m)| format!("{b} {m}")))
            .collect(),
    ];
    for (pipeline, instance) in &keys {
        let mut line = vec![pipeline.clone(), instance.clone()];
        for (benchmark, metric) in &columns {
            let cell = rows
                .iter()
                .find(|r| {
                    &r.pipeline == pipeline
                        && &r.instance == instance
                        && &r.benchmark == benchmark
                        && &r.metric == metric
                })
                .map(|r| format!("{}{}", number(r.value), percent(r.relative_change)))
                .unwrap_or_else(|| "—".into());
            line.push(cell);
        }
        table.push(line);
    }
    let widths: Vec<usize> =
        (0..table[0].len()).map(|c| table.iter().map(|l| l[c].chars().count()).max().unwrap_or(0)).collect();
    let pad = |s: &str, w: usize| format!("{s}{}", " ".repeat(w.saturating_sub(s.chars().count())));
    let mut out = String::new();
    for (i, line) in table.iter().enumerate() {
        let cells: Vec<String> = line.iter().zip(&widths).map(|(s, w)| pad(s, *w)).collect();
        if markdown {
            out.push_str(&format!("| {} |\n", cells.join(" | ")));
            if i == 0 {
                let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
                out.push_str(&format!("| {} |\n", rule.join(" | ")));
            }
        } else {
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
    }
    out
}

fn csv(rows: &[Row]) -> String {
    let quote = |s: &str| {
        if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
    };
    let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    let mut out = String::from("pipeline,instance,benchmark,metric,value,baseline_value,relative_change\n");
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            quote(&r.pipeline),
            quote(&r.instance),
            quote(&r.benchmark),
            quote(&r.metric),
            r.value,
            opt(r.baseline_value),
            opt(r.relative_change)
        ));
    }
    out
}

/// One panel per metric, a bar per instance; an instance that others in the panel are
/// compared with is that panel's baseline.
fn panels(rows: &[Row]) -> Vec<(String, Vec<Bar>)> {
    let mut out: Vec<(String, Vec<Bar>)> = Vec::new();
    for r in rows {
        let title = format!("{} {}", r.benchmark, r.metric);
        let label = r.label();
        let is_baseline = rows.iter().any(|o| {
            o.benchmark == r.benchmark
                && o.metric == r.metric
                && (o.pipeline != r.pipeline || o.instance != r.instance)
                && o.baseline.as_deref() == Some(label.as_str())
        });
        let change = r.relative_change.filter(|_| !is_baseline);
        let bar = Bar { label, value: r.value, change, is_baseline };
        match out.iter_mut().find(|(t, _)| *t == title) {
            Some((_, bars)) => bars.push(bar),
            None => out.push((title, vec![bar])),
        }
    }
    out
}
