//! What goes wrong reading or building preference data, naming the table, row, column or file
//! it concerns. A caller that branches (skip a bad row, fail on an unreadable file) matches a
//! variant; the text is for the person reading the message.

use std::path::PathBuf;

use crate::table::TableError;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A table lacks a column that is read.
    #[error("table `{table}` has no column `{column}`; its columns: {}", .present.join(", "))]
    MissingColumn { table: String, column: String, present: Vec<String> },
    /// A column holds values of the wrong type.
    #[error("table `{table}`: column `{column}` must hold {expected}, it holds {found}")]
    ColumnType { table: String, column: String, expected: &'static str, found: String },
    /// One value of a table is unusable; `row` counts from 1, as people count.
    #[error("table `{table}`, row {row}: `{column}` {problem}")]
    Value { table: String, row: usize, column: String, problem: String },
    /// A run of rows that cannot be used together (a batch that does not encode).
    #[error("table `{table}`, rows {first}–{last}: {problem}")]
    Rows { table: String, first: usize, last: usize, problem: String },
    /// A table as a whole does not fit what is asked of it (no aspects, no pairs, a key twice).
    #[error("table `{table}`: {problem}")]
    Table { table: String, problem: String },
    /// An option's value does not fit the data it meets (a model that answered nothing).
    #[error("`{key}`: {problem}")]
    Option { key: &'static str, problem: String },
    /// One record of a file is unusable; `location` is `file:line` or `file: row n`.
    #[error("{location}: {problem}")]
    Record { location: String, problem: String },
    /// A file a stage reads does not hold what it should.
    #[error("{file}: {problem}")]
    File { file: String, problem: String },
    /// A judge template (`file`) that gives no prompt.
    #[error("{file}: {source}")]
    Template { file: String, source: super::judge::TemplateError },
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Read(#[from] TableError),
    /// Building a table failed inside polars: a defect, not bad input.
    #[error("building a table: {0}")]
    Polars(#[from] polars::error::PolarsError),
    /// A blob store callback failed (the store's own error, as text: data never names the
    /// store).
    #[error("storing {what}: {problem}")]
    Store { what: &'static str, problem: String },
}

impl DataError {
    pub fn value(table: &str, row: usize, column: &str, problem: impl Into<String>) -> DataError {
        DataError::Value { table: table.into(), row, column: column.into(), problem: problem.into() }
    }

    pub fn table(table: &str, problem: impl Into<String>) -> DataError {
        DataError::Table { table: table.into(), problem: problem.into() }
    }

    /// A row of a file users bring (`file: row n`), as distinct from a table between stages.
    pub fn file_row(file: &str, row: usize, problem: impl Into<String>) -> DataError {
        DataError::Record { location: format!("{file}: row {row}"), problem: problem.into() }
    }

    pub fn file(file: &str, problem: impl Into<String>) -> DataError {
        DataError::File { file: file.into(), problem: problem.into() }
    }
}
