//! Where an instance whose key is not in the cache runs. An [`Executor`] takes it from there
//! to a complete record in the store; [`EXECUTORS`] is the registry `runtime.executor` and
//! `--executor` name. The scheduler above names none of them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{local, slurm};
use crate::dsl::{ModelDef, Runtime};
use crate::stages::{self, ConfigureContext, Input, RunContext, Stage, StageError};
use crate::store::{OutputRef, Placement, StageRecord, StatCache, Store, now_ms};

/// Where an instance whose key is not in the cache runs.
pub trait Executor: Sync {
    fn name(&self) -> &'static str;
    /// Whether instances of cheap kinds (`Stage::is_cheap`) stay in the driver's process when
    /// only the run's `--executor` names this one, not their stage.
    fn keeps_cheap_local(&self) -> bool;
    /// Runs the instance until its record is in the store: its outputs, and where it ran.
    fn run(&self, job: &Submission) -> Result<(BTreeMap<String, OutputRef>, Placement), StageError>;
    /// Of the instances of `keys` (in the cache at `cache`), those this executor is running
    /// for some driver right now, by key: where and how far (`queued on Slurm (job 12)`).
    fn in_flight(&self, _cache: &Path, _keys: &[&str]) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
    /// The ids of the jobs this process waits on elsewhere (none for work in this process).
    fn jobs_in_flight(&self) -> Vec<String> {
        Vec::new()
    }
    /// Cancels jobs of [`Executor::jobs_in_flight`].
    fn cancel(&self, _ids: &[String]) {}
}

/// Every executor's instances in flight among `keys`, by key (see [`Executor::in_flight`]).
pub fn in_flight(cache: &Path, keys: &[&str]) -> BTreeMap<String, String> {
    EXECUTORS.iter().flat_map(|e| e.in_flight(cache, keys)).collect()
}

/// Every executor, by the name `runtime.executor` and `--executor` give.
pub static EXECUTORS: &[&dyn Executor] = &[&local::LOCAL, &slurm::SLURM];

pub fn executor(name: &str) -> Option<&'static dyn Executor> {
    EXECUTORS.iter().copied().find(|e| e.name() == name)
}

pub fn names() -> Vec<&'static str> {
    EXECUTORS.iter().map(|e| e.name()).collect()
}

/// One instance to run, in both forms an executor may want: configured in this process, and
/// described for another one.
pub struct Submission<'a> {
    pub stage: &'a dyn Stage,
    pub ctx: &'a RunContext<'a>,
    pub description: &'a Described,
}

/// An instance described completely enough for another process — a Slurm job on another
/// node — to run it as this one would: resolved params, the models they may name, the
/// bound inputs by digest, the key and its pre-image, the workspace and the cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Described {
    pub workspace: PathBuf,
    pub cache: PathBuf,
    pub pipeline: String,
    pub instance: String,
    pub kind: String,
    pub params: Value,
    pub models: BTreeMap<String, ModelDef>,
    pub runtime: Runtime,
    pub key: String,
    pub preimage: Value,
    pub inputs: BTreeMap<String, Input>,
    pub offline: bool,
    pub progress_interval_ms: u64,
    /// A private call memo to use instead of the cache's (see [`crate::calls::Memo::copy_to`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memo: Option<PathBuf>,
}

/// Runs `stage` and stores its record: the one path from a configured instance to a
/// complete record, whichever process it runs in.
pub fn run_and_record(
    stage: &dyn Stage,
    ctx: &RunContext,
    kind: &str,
    preimage: &Value,
) -> Result<BTreeMap<String, OutputRef>, StageError> {
    let start = Instant::now();
    let outputs = match ctx.runtime.compute.threads {
        // The stage's compute (flex's kernels, decoding, hashing) on a pool of its own size.
        Some(threads) => rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| StageError::param("runtime.threads", format!("cannot start {threads} threads: {e}")))?
            .install(|| stage.run(ctx))?,
        None => stage.run(ctx)?,
    };
    let record = StageRecord {
        key: ctx.key.to_string(),
        kind: kind.to_string(),
        preimage: preimage.clone(),
        outputs: outputs.clone(),
        created_unix_ms: now_ms(),
        duration_ms: start.elapsed().as_millis() as u64,
    };
    ctx.store.put_record(&record)?;
    Ok(outputs)
}

/// Runs the instance `path` describes, in this process (`silkie run-instance`, what a Slurm
/// job executes): configured from its description, run and recorded as a local run would.
pub fn run_described(path: &Path) -> Result<(), StageError> {
    let bytes = std::fs::read(path).map_err(StageError::io(path))?;
    let job: Described = serde_json::from_slice(&bytes)
        .map_err(|e| StageError::Internal(format!("{}: not an instance description: {e}", path.display())))?;
    let kind = stages::kind(&job.kind).ok_or_else(|| {
        StageError::Internal(format!("{}: no stage kind `{}` in this build", path.display(), job.kind))
    })?;
    let stage = (kind.configure)(&job.params, &ConfigureContext { models: &job.models, runtime: &job.runtime })
        .map_err(|issue| StageError::param(format!("params.{}", issue.path), issue.message))?;
    let store = Store::open(&job.cache)?;
    // As any run holds it: `silkie gc` waits until the job has written its record.
    let _store_lock = store.lock_store(crate::store::LockMode::Shared, None)?;
    let stat_cache = StatCache::load(&store);
    unchanged_since_submitted(&job, &stat_cache)?;
    let memo = job.memo.clone().unwrap_or_else(|| store.memo_path());
    let ctx = RunContext {
        workspace: &job.workspace,
        store: &store,
        memo: &memo,
        stat_cache: &stat_cache,
        instance: &job.instance,
        key: &job.key,
        inputs: &job.inputs,
        offline: job.offline,
        bars: None,
        progress_interval: std::time::Duration::from_millis(job.progress_interval_ms),
        runtime: &job.runtime,
    };
    run_and_record(stage.as_ref(), &ctx, &job.kind, &job.preimage)?;
    Ok(())
}

/// Fails unless the workspace files the key holds are as they were when the key was
/// computed: a job may start hours after it was submitted, and its record must hold what that
/// key names, not what an edit made meanwhile.
fn unchanged_since_submitted(job: &Described, stat_cache: &StatCache) -> Result<(), StageError> {
    let files = job.preimage.get("files").and_then(Value::as_object).into_iter().flatten();
    for (path, digest) in files {
        let now = stat_cache.digest(&job.workspace.join(path)).map(Some).unwrap_or(None);
        if now.as_deref() != digest.as_str() {
            let problem = "changed since the instance was submitted, so the key it was submitted under no longer \
                           holds: run again to compute it anew";
            return Err(StageError::workspace(path, problem));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_described_instance_whose_key_files_changed_since_submission_does_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let (workspace, cache) = (dir.path().join("ws"), dir.path().join("cache"));
        std::fs::create_dir_all(&workspace).unwrap();
        std::fs::write(workspace.join("data.txt"), "edited\n").unwrap();
        let described = Described {
            workspace: workspace.clone(),
            cache,
            pipeline: "p.yaml".into(),
            instance: "a".into(),
            kind: "command".into(),
            params: serde_json::json!({"cmd": "touch ran", "deps": ["data.txt"]}),
            models: BTreeMap::new(),
            runtime: Runtime::default(),
            key: "0".repeat(64),
            preimage: serde_json::json!({"files": {"data.txt": blake3::hash(b"as submitted\n").to_hex().to_string()}}),
            inputs: BTreeMap::new(),
            offline: false,
            progress_interval_ms: 1000,
            memo: None,
        };
        let path = dir.path().join("instance.json");
        std::fs::write(&path, serde_json::to_vec(&described).unwrap()).unwrap();
        let error = run_described(&path).unwrap_err().to_string();
        assert!(error.starts_with("`data.txt` changed since the instance was submitted"), "{error}");
        assert!(!workspace.join("ran").exists(), "the instance ran");
    }
}
