//! Why a stage instance failed, by what went wrong: its data, an input, a parameter, a file,
//! a model, a call, a process. The executor records the message; a caller that must tell one
//! failure from another (a missing column from an unreadable file, a workspace escape from a
//! failed command) matches the variant.

use std::path::PathBuf;

use crate::calls::CallsError;
use crate::data::DataError;
use crate::eval::EvalError;
use crate::model::ModelError;
use crate::store::StoreError;
use crate::table::TableError;
use crate::train::resume::ResumeError;

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Eval(#[from] EvalError),
    #[error(transparent)]
    Calls(#[from] CallsError),
    /// A training run's saved state that cannot be written or read back.
    #[error(transparent)]
    Resume(#[from] ResumeError),
    /// The input bound to a role is missing or not what the stage reads (`from` is
    /// `instance.output`, or the role when nothing is bound).
    #[error("{from} {problem}")]
    Input { from: String, problem: String },
    /// A parameter's value does not fit what the stage meets at run time; `key` is as written
    /// in YAML (`params.categories`, `runtime.threads`).
    #[error("`{key}`: {problem}")]
    Param { key: String, problem: String },
    /// A file or folder the stage reads (`what` says which, e.g. "the checkpoint folder ") is
    /// missing or unreadable; `reason` is said for people ("no such file").
    #[error("cannot read {what}`{path}`: {reason}")]
    Unreadable { what: &'static str, path: String, reason: String },
    /// A file the stage reads or writes.
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// A workspace path the stage may not use (outside the workspace, inside the cache, or
    /// not produced).
    #[error("`{path}` {problem}")]
    Workspace { path: String, problem: String },
    /// A process the stage started failed.
    #[error("`{command}` failed with {status}{detail}")]
    Command { command: String, status: String, detail: String },
    /// The job an executor ran the instance as ended without its record (failed, cancelled,
    /// out of time, its node lost); `detail` has its exit code, reason and log's tail.
    #[error("{executor} job {id} ended {state}{detail}")]
    Job { executor: String, id: String, state: String, detail: String },
    /// A command of the scheduler an executor drives (`squeue`, `scontrol`) failed or did not
    /// answer; `said` is its words.
    #[error("`{command}` failed: {said}")]
    Scheduler { command: String, said: String },
    /// A defect in silkie, not in the input: says what should have held.
    #[error("internal error: {0}")]
    Internal(String),
}

impl StageError {
    pub fn input(from: impl Into<String>, problem: impl Into<String>) -> StageError {
        StageError::Input { from: from.into(), problem: problem.into() }
    }

    pub fn param(key: impl Into<String>, problem: impl Into<String>) -> StageError {
        StageError::Param { key: key.into(), problem: problem.into() }
    }

    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StageError {
        let path = path.into();
        move |source| StageError::Io { path, source }
    }

    pub fn workspace(path: &str, problem: impl Into<String>) -> StageError {
        StageError::Workspace { path: path.into(), problem: problem.into() }
    }
}
