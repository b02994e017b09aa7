//! The local executor: the instance runs on a worker thread of this process.

use std::collections::BTreeMap;

use super::executor::{Executor, Submission, run_and_record};
use crate::stages::StageError;
use crate::store::{OutputRef, Placement};

pub struct Local;
pub const LOCAL: Local = Local;

impl Executor for Local {
    fn name(&self) -> &'static str {
        "local"
    }

    fn keeps_cheap_local(&self) -> bool {
        false
    }

    fn run(&self, job: &Submission) -> Result<(BTreeMap<String, OutputRef>, Placement), StageError> {
        let d = job.description;
        let outputs = run_and_record(job.stage, job.ctx, &d.kind, &d.preimage)?;
        Ok((outputs, Placement::local()))
    }
}
