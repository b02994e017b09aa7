//! Building and reading polars columns without ceremony.

use polars::prelude::*;

use super::DataError;

/// A DataFrame from equally long columns.
pub fn frame(height: usize, columns: Vec<Column>) -> PolarsResult<DataFrame> {
    DataFrame::new(height, columns)
}

/// A string column from owned or borrowed values: borrowed ones are copied straight into the
/// column's buffers, with no `String` apiece on the way (a ratings table has millions).
pub fn str_col<S: AsRef<str>>(name: &str, values: impl IntoIterator<Item = Option<S>>) -> Column {
    StringChunked::from_iter_options(name.into(), values.into_iter()).into_column()
}

pub fn i64_col(name: &str, values: Vec<Option<i64>>) -> Column {
    Column::new(name.into(), values)
}

pub fn f64_col(name: &str, values: Vec<Option<f64>>) -> Column {
    Column::new(name.into(), values)
}

/// A string column, or an error naming the table and column.
pub fn strings<'a>(df: &'a DataFrame, table: &str, name: &str) -> Result<&'a StringChunked, DataError> {
    let column = df.column(name).map_err(|_| missing(df, table, name))?;
    column.str().map_err(|_| wrong_type(table, name, "text", column.dtype()))
}

/// An integer column (any integer width), as i64.
pub fn integers(df: &DataFrame, table: &str, name: &str) -> Result<Int64Chunked, DataError> {
    let column = df.column(name).map_err(|_| missing(df, table, name))?;
    if !column.dtype().is_integer() {
        return Err(wrong_type(table, name, "integers", column.dtype()));
    }
    Ok(column.cast(&DataType::Int64)?.i64()?.clone())
}

/// A numeric column, as f64.
pub fn floats(df: &DataFrame, table: &str, name: &str) -> Result<Float64Chunked, DataError> {
    let column = df.column(name).map_err(|_| missing(df, table, name))?;
    if !column.dtype().is_primitive_numeric() && !column.dtype().is_null() {
        return Err(wrong_type(table, name, "numbers", column.dtype()));
    }
    Ok(column.cast(&DataType::Float64)?.f64()?.clone())
}

fn wrong_type(table: &str, name: &str, expected: &'static str, found: &DataType) -> DataError {
    DataError::ColumnType { table: table.into(), column: name.into(), expected, found: found.to_string() }
}

fn missing(df: &DataFrame, table: &str, name: &str) -> DataError {
    let present = df.get_column_names().iter().map(|n| n.to_string()).collect();
    DataError::MissingColumn { table: table.into(), column: name.into(), present }
}

/// An optional text column: `None` when the table does not have it.
pub fn optional_strings<'a>(
    df: &'a DataFrame,
    table: &str,
    name: &str,
) -> Result<Option<Vec<Option<&'a str>>>, DataError> {
    match df.column(name) {
        Ok(_) => Ok(Some(strings(df, table, name)?.iter().collect())),
        Err(_) => Ok(None),
    }
}

/// An optional integer column: `None` when the table does not have it.
pub fn optional_integers(df: &DataFrame, table: &str, name: &str) -> Result<Option<Vec<Option<i64>>>, DataError> {
    match df.column(name) {
        Ok(_) => Ok(Some(integers(df, table, name)?.iter().collect())),
        Err(_) => Ok(None),
    }
}

/// The row key every response-level table shares: (instruction id, model, sample index).
pub struct ResponseKeys<'a> {
    pub instruction: Vec<&'a str>,
    pub model: Vec<&'a str>,
    pub sample: Vec<i64>,
    sorted: bool,
}

impl<'a> ResponseKeys<'a> {
    /// Reads the key columns; a null anywhere is an error naming the row.
    pub fn read(df: &'a DataFrame, table: &str) -> Result<ResponseKeys<'a>, DataError> {
        let instruction = text_values(strings(df, table, "instruction_id")?, table, "instruction_id")?;
        let model = text_values(strings(df, table, "model")?, table, "model")?;
        let sample = match df.column("sample_index") {
            // Tables from outside silkie may have one sample per model and no index column.
            Err(_) => vec![0; df.height()],
            Ok(_) => {
                let ca = integers(df, table, "sample_index")?;
                match ca.null_count() {
                    0 => ca.into_no_null_iter().collect(),
                    _ => non_null(ca.iter().collect(), table, "sample_index")?,
                }
            }
        };
        let mut keys = ResponseKeys { instruction, model, sample, sorted: false };
        keys.sorted = (1..keys.len()).all(|i| keys.key(i - 1) <= keys.key(i));
        Ok(keys)
    }

    pub fn key(&self, row: usize) -> (&'a str, &'a str, i64) {
        (self.instruction[row], self.model[row], self.sample[row])
    }

    /// Whether the rows are in key order already (they are in tables silkie wrote).
    pub fn is_sorted(&self) -> bool {
        self.sorted
    }

    /// A key that two rows share, if any.
    pub fn first_duplicate(&self) -> Option<(&'a str, &'a str, i64)> {
        if self.is_sorted() {
            return (1..self.len()).find(|&i| self.key(i - 1) == self.key(i)).map(|i| self.key(i));
        }
        let mut seen = PlHashSet::with_capacity(self.len());
        (0..self.len()).map(|i| self.key(i)).find(|k| !seen.insert(*k))
    }

    pub fn len(&self) -> usize {
        self.instruction.len()
    }

    pub fn is_empty(&self) -> bool {
        self.instruction.is_empty()
    }
}

/// The values of a text column that must not hold nulls.
fn text_values<'a>(ca: &'a StringChunked, table: &str, column: &str) -> Result<Vec<&'a str>, DataError> {
    match ca.null_count() {
        0 => Ok(ca.downcast_iter().flat_map(|arr| arr.values_iter()).collect()),
        _ => non_null(ca.iter().collect(), table, column),
    }
}

fn non_null<T>(values: Vec<Option<T>>, table: &str, column: &str) -> Result<Vec<T>, DataError> {
    values
        .into_iter()
        .enumerate()
        .map(|(row, v)| v.ok_or_else(|| DataError::value(table, row + 1, column, "is empty")))
        .collect()
}
