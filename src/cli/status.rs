//! `silkie status`: per stage instance, fresh, stale (and why), pending or never run.

use super::{Context, Format, Outcome, PositionalPipeline, assess, pick, print_json};
use silkie::plan::State;

pub fn run(ctx: &Context, args: PositionalPipeline) -> Outcome {
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
        for detail in [
            s.in_flight.as_deref().map(|f| format!("now {f}")),
            s.last_failure.as_ref().map(|f| format!("last run failed: {f}")),
        ]
        .into_iter()
        .flatten()
        {
            println!("{:width$}  {:8} {detail}", "", "");
        }
    }
    Ok(true)
}
