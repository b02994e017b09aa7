//! What goes wrong reading a benchmark's files or scoring its answers, naming the file, line,
//! subtask or column.

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EvalError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{path}, line {line}: {message}")]
    Line { path: String, line: usize, message: String },
    /// Scoring needs a subtask the answers lack.
    #[error("no results for subtask `{subtask}`")]
    MissingSubtask { subtask: String },
    /// A results table (`baseline`) lacks a column, or holds the wrong type in it.
    #[error("a results table needs a `{column}` column of {expected}")]
    ResultsColumn { column: &'static str, expected: &'static str },
    /// Building a table failed inside polars: a defect, not bad input.
    #[error("building a table: {0}")]
    Polars(String),
}

impl From<polars::error::PolarsError> for EvalError {
    fn from(e: polars::error::PolarsError) -> EvalError {
        EvalError::Polars(e.to_string())
    }
}
