//! `silkie run-instance DESCRIPTION` (hidden): runs one stage instance from the description an
//! executor wrote into the cache — what a Slurm job executes. Not for people to call.

use std::path::PathBuf;

use clap::Args;

use super::{Failure, Outcome};

#[derive(Args)]
pub struct RunInstanceArgs {
    /// The instance's description (`instance.json` in its job folder in the cache)
    description: PathBuf,
}

pub fn run(args: RunInstanceArgs) -> Outcome {
    silkie::exec::run_described(&args.description).map_err(|e| Failure::Runtime(e.to_string()))?;
    Ok(true)
}
