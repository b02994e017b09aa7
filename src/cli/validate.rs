//! `silkie validate`: checks a pipeline without running anything.

use serde_json::json;

use super::{Context, Format, Outcome, PositionalPipeline, pick, print_json};

pub fn run(ctx: &Context, args: PositionalPipeline) -> Outcome {
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
