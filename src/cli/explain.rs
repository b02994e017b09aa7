//! `silkie explain`: which part of a stage's key changed since its last run.

use clap::Args;
use serde_json::json;

use super::{Context, Failure, Format, Outcome, PipelineFile, assess, print_json};
use silkie::plan::{self, State};

#[derive(Args)]
pub struct ExplainArgs {
    stage: String,
    #[command(flatten)]
    file: PipelineFile,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

pub fn run(ctx: &Context, args: ExplainArgs) -> Outcome {
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
