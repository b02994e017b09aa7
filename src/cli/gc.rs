//! `silkie gc`: removes what no pipeline's latest run needs, and says what it kept.

use clap::Args;

use super::{Context, Failure, Format, Outcome, print_json, seconds};

#[derive(Args)]
pub struct GcArgs {
    /// Say what would be removed without removing it
    #[arg(long)]
    pub dry_run: bool,
    /// Runs to keep per pipeline
    #[arg(long, default_value_t = 1)]
    pub keep_runs: usize,
    /// Also remove the saved progress of unfinished (killed) training stages
    #[arg(long)]
    pub scratch: bool,
    #[arg(long, value_name = "SECONDS")]
    pub lock_timeout: Option<f64>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

pub fn run(ctx: &Context, args: GcArgs) -> Outcome {
    let store = ctx.store()?;
    let options = silkie::store::GcOptions {
        keep_runs: args.keep_runs,
        dry_run: args.dry_run,
        scratch: args.scratch,
        lock_timeout: args.lock_timeout.map(|s| seconds("--lock-timeout", s)).transpose()?,
    };
    let report = store.gc(&options).map_err(|e| Failure::Runtime(e.to_string()))?;
    if args.format == Format::Json {
        print_json(&report);
        return Ok(true);
    }
    let verb = if args.dry_run { "would free" } else { "freed" };
    println!(
        "gc: {verb} {:.1} MB ({} blobs, {} stage records, {} old runs, {} scratch spaces, {} job folders); kept {} runs",
        report.bytes_freed as f64 / 1e6,
        report.blobs_removed,
        report.records_removed,
        report.runs_removed,
        report.scratch_removed,
        report.jobs_removed,
        report.runs_kept
    );
    if report.scratch_kept > 0 {
        println!(
            "kept the saved progress of {} unfinished stage(s), {:.1} MB, which a rerun with the same key resumes; \
             `silkie gc --scratch` removes it:",
            report.scratch_kept,
            report.scratch_bytes_kept as f64 / 1e6
        );
        let now = silkie::store::now_ms();
        for space in &report.scratch {
            let hours = now.saturating_sub(space.modified_unix_ms) as f64 / 3.6e6;
            let owner = space.instance.as_deref().unwrap_or("an unknown stage");
            println!(
                "  scratch/{} ({owner}): {:.1} MB, last saved {hours:.1} h ago",
                space.key,
                space.bytes as f64 / 1e6
            );
        }
    }
    Ok(true)
}
