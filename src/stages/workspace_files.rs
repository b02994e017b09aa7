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
        .map_err(|_| StageError::workspace(relative, "was not produced, though the stage declares it as an output"))?;
    if meta.is_dir() {
        let (digest, bytes) = ctx.store.put_dir(&path)?;
        return Ok(OutputRef { digest, kind: OutputKind::Dir, rows: None, bytes, format: None });
    }
    let format = TableFormat::from_path(&path);
    // Row counts are informative: a file polars cannot read is still a valid file output.
    let rows = format.and_then(|f| match table::read(&path, f) {
        Ok(df) => Some(df.height() as u64),
        Err(e) => {
            tracing::warn!(
                "{}: `{relative}` does not read as a table ({e}); it can only be used as a file",
                ctx.instance
            );
            None
        }
    });
    let (digest, bytes) = ctx.store.put_file(&path)?;
    Ok(OutputRef { digest, kind: OutputKind::File, rows, bytes, format: format.map(|f| f.to_string()) })
}

/// Puts a stored output back at its workspace path unless an identical copy is there
/// (on a cache hit: says so when it does).
pub fn restore(ctx: &RunContext, relative: &str, output: &OutputRef) -> Result<(), StageError> {
    if sync(ctx, relative, output)? {
        tracing::info!("{}: restored {relative} from the cache", ctx.instance);
    }
    Ok(())
}

/// Writes a freshly computed output to its workspace path.
pub fn place(ctx: &RunContext, relative: &str, output: &OutputRef) -> Result<(), StageError> {
    sync(ctx, relative, output).map(|_| ())
}

/// Makes the workspace copy match the stored output; says whether anything was written.
fn sync(ctx: &RunContext, relative: &str, output: &OutputRef) -> Result<bool, StageError> {
    let path = ctx.workspace_path(relative)?;
    // A restore killed halfway: whatever is there now is not to be trusted, nor kept.
    let interrupted = ctx.store.restore_interrupted(&path);
    if interrupted {
        tracing::info!("{}: an earlier restore of {relative} was interrupted; restoring it in full", ctx.instance);
        crate::store::remove_restore_leftovers(&path)?;
    }
    if !interrupted && matches_store(ctx, &path, output)? {
        return Ok(false);
    }
    let _mark = ctx.store.restoring(&path)?;
    match output.kind {
        OutputKind::Dir => ctx.store.restore_dir(&output.digest, &path)?,
        _ => ctx.store.restore_file(&output.digest, &path, false)?,
    }
    Ok(true)
}

/// Whether the workspace copy at `path` is the stored output, file for file.
fn matches_store(ctx: &RunContext, path: &Path, output: &OutputRef) -> Result<bool, StageError> {
    if output.kind != OutputKind::Dir {
        return Ok(same_content(ctx, path, &output.digest));
    }
    if !path.is_dir() {
        return Ok(false);
    }
    let manifest = ctx.store.read_dir_manifest(&output.digest)?;
    let stale = manifest.files.iter().any(|(rel, entry)| !same_content(ctx, &path.join(rel), &entry.digest));
    let extra = crate::store::walk_files(path)?.iter().any(|f| {
        let rel = f.strip_prefix(path).unwrap_or(f).to_string_lossy().replace('\\', "/");
        !manifest.files.contains_key(&rel)
    });
    Ok(!stale && !extra)
}

fn same_content(ctx: &RunContext, path: &Path, digest: &str) -> bool {
    path.is_file() && ctx.stat_cache.digest(path).is_ok_and(|d| d == digest)
}

/// Removes a declared output before the stage runs, so a stale copy is never taken for
/// new, and makes sure its directory exists.
pub fn clear(ctx: &RunContext, relative: &str) -> Result<(), StageError> {
    let path = ctx.workspace_path(relative)?;
    let cache = ctx.store.root();
    if cache.starts_with(&path) || path.starts_with(cache) {
        return Err(StageError::workspace(
            relative,
            format!("holds or lies inside the cache {}; write outputs elsewhere", cache.display()),
        ));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| StageError::workspace(relative, format!("has a folder that cannot be made: {e}")))?;
    }
    let result = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(StageError::workspace(relative, format!("cannot be removed before the stage runs: {e}")))
        }
        _ => Ok(()),
    }
}
