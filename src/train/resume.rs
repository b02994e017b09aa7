//! Saving a run's [`TrainState`] between steps and taking it up again, so a killed training
//! stage goes on from its last save instead of from the start. The weights (with their
//! parameter ids, which key the optimiser's moments) and the optimiser go through Burn's
//! record format; the metrics so far through JSON.
//!
//! A save is a folder `step-N` written in full under a temporary name and then renamed, and
//! `latest` — replaced by rename too — names the newest complete one; a crash at any point
//! leaves the previous save intact.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::ModuleRecord;

use super::fit::{StepRecord, TrainState};
use super::optim::AdamW;
use crate::model::master::f32_masters;

#[derive(Debug, thiserror::Error)]
#[error("training state in {}: {message}", path.display())]
pub struct ResumeError {
    pub path: PathBuf,
    pub message: String,
}

fn error(path: &Path, e: impl std::fmt::Display) -> ResumeError {
    ResumeError { path: path.to_path_buf(), message: e.to_string() }
}

/// Writes `state` under `dir` and makes it the one [`load`] returns.
pub fn save<M: Module, R: StepRecord>(state: &TrainState<M, R>, dir: &Path) -> Result<(), ResumeError> {
    let step = state.metrics.len();
    let name = format!("step-{step}");
    let partial = dir.join(format!("{name}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(|e| error(dir, e))?;
    state.model.clone().into_record().save(partial.join("model.bpk")).map_err(|e| error(&partial, e))?;
    state.optimizer.save(partial.join("optimizer.bpk")).map_err(|e| error(&partial, e))?;
    let metrics = serde_json::to_vec(&state.metrics).map_err(|e| error(&partial, e))?;
    std::fs::write(partial.join("metrics.json"), metrics).map_err(|e| error(&partial, e))?;
    for file in ["model.bpk", "optimizer.bpk", "metrics.json"] {
        sync(&partial.join(file)).map_err(|e| error(&partial, e))?;
    }
    let done = dir.join(&name);
    let _ = std::fs::remove_dir_all(&done);
    std::fs::rename(&partial, &done).map_err(|e| error(dir, e))?;
    let pointer = dir.join("latest.partial");
    std::fs::write(&pointer, &name).map_err(|e| error(dir, e))?;
    sync(&pointer).map_err(|e| error(dir, e))?;
    std::fs::rename(&pointer, dir.join("latest")).map_err(|e| error(dir, e))?;
    // Older saves are no longer needed once `latest` names this one.
    for entry in std::fs::read_dir(dir).map_err(|e| error(dir, e))?.flatten() {
        let file = entry.file_name();
        let file = file.to_string_lossy();
        if file.starts_with("step-") && file != name {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

fn sync(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

/// The newest complete save under `dir`, loaded into `fresh` (a model of the same shape,
/// adapters included); `None` when there is none.
pub fn load<M: Module, R: StepRecord>(
    dir: &Path,
    fresh: M,
    optimizer: &AdamW,
) -> Result<Option<TrainState<M, R>>, ResumeError> {
    let Ok(name) = std::fs::read_to_string(dir.join("latest")) else { return Ok(None) };
    let folder = dir.join(name.trim());
    let record = ModuleRecord::load(folder.join("model.bpk")).map_err(|e| error(&folder, e))?;
    // The masters a started run made (`TrainState::start`), for the saved record to fit.
    let model = f32_masters(fresh).try_load_record(record).map_err(|e| error(&folder, e))?;
    let optimizer = optimizer.config().init().load(folder.join("optimizer.bpk")).map_err(|e| error(&folder, e))?;
    let metrics = std::fs::read(folder.join("metrics.json")).map_err(|e| error(&folder, e))?;
    let metrics: Vec<R> = serde_json::from_slice(&metrics).map_err(|e| error(&folder, e))?;
    Ok(Some(TrainState { model, optimizer, metrics }))
}
