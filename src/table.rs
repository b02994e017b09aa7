//! Tables between stages: Parquet written by polars, and the file formats users bring.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Line { path: PathBuf, line: usize, message: String },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: cannot read as {format}: {source}")]
    Read { path: PathBuf, format: TableFormat, source: PolarsError },
    #[error("{path}: cannot write as {format}: {source}")]
    Write { path: PathBuf, format: TableFormat, source: PolarsError },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableFormat {
    Parquet,
    Jsonl,
    Csv,
}

impl std::fmt::Display for TableFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TableFormat::Parquet => "parquet",
            TableFormat::Jsonl => "jsonl",
            TableFormat::Csv => "csv",
        })
    }
}

impl TableFormat {
    /// The format a file name implies (`.parquet`, `.jsonl`/`.ndjson`, `.csv`).
    pub fn from_path(path: &Path) -> Option<TableFormat> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "parquet" | "pq" => Some(TableFormat::Parquet),
            "jsonl" | "ndjson" => Some(TableFormat::Jsonl),
            "csv" => Some(TableFormat::Csv),
            _ => None,
        }
    }
}

/// Reads a table file. JSONL is checked line by line first so that an error names its line.
pub fn read(path: &Path, format: TableFormat) -> Result<DataFrame, TableError> {
    let io = |source| TableError::Io { path: path.to_path_buf(), source };
    let read_err = |source| TableError::Read { path: path.to_path_buf(), format, source };
    match format {
        TableFormat::Parquet => ParquetReader::new(File::open(path).map_err(io)?).finish().map_err(read_err),
        TableFormat::Csv => {
            check_csv_fields(path)?;
            CsvReadOptions::default()
                .with_has_header(true)
                .try_into_reader_with_file_path(Some(path.to_path_buf()))
                .and_then(|r| r.finish())
                .map_err(read_err)
        }
        TableFormat::Jsonl => {
            let rows = check_json_lines(path)?;
            if rows == 0 {
                return Err(TableError::Format { path: path.to_path_buf(), message: "the file holds no rows".into() });
            }
            JsonReader::new(File::open(path).map_err(io)?)
                .with_json_format(JsonFormat::JsonLines)
                .finish()
                .map_err(read_err)
        }
    }
}

/// Checks that the file is UTF-8 and every record has as many fields as the header, so a
/// short row is an error naming its line rather than a row padded with nulls. Quotes are
/// respected: a quoted field may hold commas, doubled quotes and line breaks.
fn check_csv_fields(path: &Path) -> Result<usize, TableError> {
    let mut header: Option<usize> = None;
    let (mut fields, mut in_quotes, mut record_line) = (1, false, 0);
    each_line(path, |line_no, line| {
        if !in_quotes {
            (fields, record_line) = (1, line_no);
        }
        for byte in line.bytes() {
            match byte {
                b'"' => in_quotes = !in_quotes,
                b',' if !in_quotes => fields += 1,
                _ => {}
            }
        }
        match header {
            _ if in_quotes => {} // the record goes on over the next line
            None => header = Some(fields),
            Some(expected) if expected != fields => {
                let what = if fields < expected { "too few" } else { "too many" };
                return Err(TableError::Line {
                    path: path.to_path_buf(),
                    line: record_line,
                    message: format!(
                        "{fields} fields where the header has {expected} ({what}); quote a field that holds a comma"
                    ),
                });
            }
            Some(_) => {}
        }
        Ok(())
    })
}

/// Validates every non-blank line as a JSON object; returns how many there are.
fn check_json_lines(path: &Path) -> Result<usize, TableError> {
    each_line(path, |line_no, line| {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(_)) => Ok(()),
            Ok(other) => Err(format!("expected a JSON object per line, found {}", crate::dsl::type_name(&other))),
            Err(e) => Err(format!("invalid JSON (column {}): {e}", e.column())),
        }
        .map_err(|message| TableError::Line { path: path.to_path_buf(), line: line_no, message })
    })
}

fn each_line(path: &Path, mut check: impl FnMut(usize, &str) -> Result<(), TableError>) -> Result<usize, TableError> {
    let file = File::open(path).map_err(|source| TableError::Io { path: path.to_path_buf(), source })?;
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let (mut line_no, mut rows) = (0, 0);
    loop {
        buf.clear();
        let n =
            reader.read_until(b'\n', &mut buf).map_err(|source| TableError::Io { path: path.to_path_buf(), source })?;
        if n == 0 {
            return Ok(rows);
        }
        line_no += 1;
        let line = std::str::from_utf8(&buf).map_err(|e| TableError::Line {
            path: path.to_path_buf(),
            line: line_no,
            message: format!("not UTF-8 (invalid byte at column {})", e.valid_up_to() + 1),
        })?;
        if line.trim().is_empty() {
            continue;
        }
        check(line_no, line.trim_end_matches(['\n', '\r']))?;
        rows += 1;
    }
}

/// Writes a table; Parquet output is byte-identical for identical content.
pub fn write(df: &mut DataFrame, path: &Path, format: TableFormat) -> Result<(), TableError> {
    let file = File::create(path).map_err(|source| TableError::Io { path: path.to_path_buf(), source })?;
    let write_err = |source| TableError::Write { path: path.to_path_buf(), format, source };
    match format {
        TableFormat::Parquet => ParquetWriter::new(file).finish(df).map(|_| ()).map_err(write_err),
        TableFormat::Csv => CsvWriter::new(file).finish(df).map_err(write_err),
        TableFormat::Jsonl => {
            JsonWriter::new(file).with_json_format(JsonFormat::JsonLines).finish(df).map_err(write_err)
        }
    }
}

/// Rows as JSON objects, for `show --format json`. Binary values (embedded images) have no
/// JSON form: columns holding them are shown as text instead.
pub fn to_json_rows(df: &mut DataFrame) -> Result<Vec<serde_json::Value>, PolarsError> {
    for name in df.get_column_names_owned() {
        let column = df.column(&name)?;
        if holds_binary(column.dtype()) {
            let text: Vec<Option<String>> = (0..column.len())
                .map(|i| column.get(i).ok().and_then(|v| (!v.is_null()).then(|| v.to_string())))
                .collect();
            df.with_column(Column::new(name.clone(), text))?;
        }
    }
    let mut buf = Vec::new();
    JsonWriter::new(&mut buf).with_json_format(JsonFormat::Json).finish(df)?;
    serde_json::from_slice(&buf).map_err(|e| PolarsError::ComputeError(e.to_string().into()))
}

/// Whether values of this type include raw bytes (no JSON form).
pub fn holds_binary(dtype: &DataType) -> bool {
    match dtype {
        DataType::Binary | DataType::BinaryOffset => true,
        DataType::List(inner) => holds_binary(inner),
        DataType::Struct(fields) => fields.iter().any(|f| holds_binary(f.dtype())),
        _ => false,
    }
}
