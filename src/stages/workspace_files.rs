//! Outputs that live in the workspace (a `command`'s outs, an `export`'s file): stored on
//! the way out, restored on a cache hit when the workspace copy is missing or differs.

use std::path::Path;

use super::{RunContext, StageError};
use crate::store::{OutputKind, OutputRef};
use crate::table::{self, TableFormat};

/// Stores a workspace file or directory and describes it.
pub fn capture(ctx: &RunContext, relative: &str) -> Result<OutputRef, StageError> {
    let path = ctx.workspace_path(relative)?;
    let meta = std::fs::metadata(&path)
        .map_err(|_| StageError::Failed(format!("the stage did not produce its declared output `{relative}`")))?;
    if meta.is_dir() {
        let (digest, bytes) = ctx.store.put_dir(&path)?;
        return Ok(OutputRef { digest, kind: OutputKind::Dir, rows: None, bytes, format: None });
    }
    let format = TableFormat::from_path(&path);
    let rows = match format {
        Some(f) => Some(table::read(&path, f)?.height() as u64),
        None => None,
    };
    let (digest, bytes) = ctx.store.put_file(&path)?;
    Ok(OutputRef { digest, kind: OutputKind::File, rows, bytes, format: format.map(|f| f.to_string()) })
}

/// Puts a stored output back at its workspace path unless an identical copy is there.
pub fn restore(ctx: &RunContext, relative: &str, output: &OutputRef) -> Result<(), StageError> {
    let path = ctx.workspace_path(relative)?;
    match output.kind {
        OutputKind::Dir => ctx.store.restore_dir(&output.digest, &path)?,
        _ => {
            if !same_content(ctx, &path, &output.digest) {
                tracing::info!("{}: restoring {relative} from the cache", ctx.instance);
                ctx.store.restore_file(&output.digest, &path, false)?;
            }
        }
    }
    Ok(())
}

fn same_content(ctx: &RunContext, path: &Path, digest: &str) -> bool {
    path.is_file() && ctx.stat_cache.digest(path).is_ok_and(|d| d == digest)
}

/// Removes a declared output before the stage runs, so a stale copy is never taken for
/// new, and makes sure its directory exists.
pub fn clear(ctx: &RunContext, relative: &str) -> Result<(), StageError> {
    let path = ctx.workspace_path(relative)?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| StageError::Failed(format!("cannot create the directory of `{relative}`: {e}")))?;
    }
    let result = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(StageError::Failed(format!("cannot remove the old `{relative}` before running: {e}")))
        }
        _ => Ok(()),
    }
}
