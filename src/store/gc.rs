//! Garbage collection: keep what the last N runs of every pipeline reach, remove the rest.
//! Scratch spaces of unfinished trainings are kept — a rerun resumes from them — unless asked.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::{InstanceStatus, LockMode, OutputKind, Result, Store, entries_of, io_err};

/// What to collect.
#[derive(Debug, Clone, Default)]
pub struct GcOptions {
    /// Runs kept per pipeline (with everything they reach).
    pub keep_runs: usize,
    pub dry_run: bool,
    /// Also remove the scratch spaces of unfinished stages (their saved training progress).
    pub scratch: bool,
    pub lock_timeout: Option<Duration>,
}

/// A kept scratch space: the key of the stage it belongs to, its size and when it last saved.
#[derive(Debug, Serialize)]
pub struct ScratchSpace {
    pub key: String,
    /// The instance that saved it, when known.
    pub instance: Option<String>,
    pub bytes: u64,
    pub modified_unix_ms: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub runs_kept: usize,
    pub runs_removed: usize,
    pub records_removed: usize,
    pub blobs_removed: usize,
    /// Scratch spaces removed: of stages that finished after all, or every one when asked.
    pub scratch_removed: usize,
    /// Scratch spaces kept: unfinished stages a rerun with the same key resumes.
    pub scratch_kept: usize,
    pub scratch_bytes_kept: u64,
    /// Folders executors kept of instances run elsewhere, removed because their key finished.
    pub jobs_removed: usize,
    /// The kept ones, oldest first, so a user can judge whether anything will resume them.
    pub scratch: Vec<ScratchSpace>,
    pub bytes_freed: u64,
}

impl Store {
    /// Takes the store lock (waiting for running `silkie run`s), then collects.
    pub fn gc(&self, options: &GcOptions) -> Result<GcReport> {
        let GcOptions { keep_runs, dry_run, .. } = *options;
        let _lock = self.lock_store(LockMode::Exclusive, options.lock_timeout)?;
        let mut report = GcReport { dry_run, ..GcReport::default() };

        let mut by_pipeline: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for run in self.runs()? {
            by_pipeline.entry(run.pipeline.clone()).or_default().push(run);
        }
        // Roots: the keys the kept runs reached, and the last key of every pipeline × instance
        // (which also covers stages that finished in a run killed before its record).
        let mut keys: HashSet<String> = self.labels()?.into_iter().map(|l| l.key).collect();
        for runs in by_pipeline.values() {
            let cut = runs.len().saturating_sub(keep_runs);
            for (i, run) in runs.iter().enumerate() {
                if i < cut {
                    report.runs_removed += 1;
                    if !dry_run {
                        self.remove_run(&run.id)?;
                    }
                    continue;
                }
                report.runs_kept += 1;
                let reached =
                    run.instances.iter().filter(|i| matches!(i.status, InstanceStatus::Hit | InstanceStatus::Ran));
                keys.extend(reached.filter_map(|i| i.key.clone()));
            }
        }

        let mut blobs = HashSet::new();
        let mut finished = HashSet::new();
        for (path, record) in self.all_records()? {
            finished.extend(record.as_ref().map(|r| r.key.clone()));
            match record.filter(|r| keys.contains(&r.key)) {
                Some(record) => {
                    for output in record.outputs.values() {
                        // A missing manifest means its files are gone already; nothing to keep.
                        blobs.extend(self.blobs_of(&output.digest, output.kind == OutputKind::Dir).unwrap_or_default());
                    }
                }
                None => {
                    report.records_removed += 1;
                    remove(&path, dry_run)?;
                }
            }
        }
        let blob_root = self.root.join("blobs");
        for fan in std::fs::read_dir(&blob_root).map_err(io_err(&blob_root))? {
            let fan = fan.map_err(io_err(&blob_root))?.path();
            for entry in std::fs::read_dir(&fan).map_err(io_err(&fan))? {
                let path = entry.map_err(io_err(&fan))?.path();
                let digest = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                if blobs.contains(&digest) {
                    continue;
                }
                report.blobs_removed += 1;
                report.bytes_freed += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                remove(&path, dry_run)?;
            }
        }
        self.collect_packs(&blobs, dry_run, &mut report)?;
        self.collect_scratch(&finished, options, &mut report)?;
        self.collect_job_folders(&finished, dry_run, &mut report)?;
        // Nothing else runs while we hold the store lock: leftovers of killed runs can go.
        for dir in ["tmp", "locks"] {
            let dir = self.root.join(dir);
            for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
                let path = entry.map_err(io_err(&dir))?.path();
                if dir.ends_with("tmp") {
                    report.bytes_freed += tree_bytes(&path);
                }
                remove(&path, dry_run)?;
            }
        }
        Ok(report)
    }
}

impl Store {
    /// An executor's folder of a finished key (its record complete) has served: its job's
    /// description, script and log. One holding a memo copy is kept: the calls in it were
    /// paid for and wait to be merged by the next run of the instance.
    fn collect_job_folders(&self, finished: &HashSet<String>, dry_run: bool, report: &mut GcReport) -> Result<()> {
        for executor in entries_of(&self.root.join("jobs"))? {
            for path in entries_of(&executor)? {
                let key = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                if finished.contains(&key) && !path.join("calls.sqlite").exists() {
                    report.jobs_removed += 1;
                    report.bytes_freed += tree_bytes(&path);
                    remove(&path, dry_run)?;
                }
            }
        }
        Ok(())
    }

    /// A scratch space is a killed stage's saved progress: worth keeping until that stage has
    /// finished (a process killed between storing its outputs and clearing its scratch leaves
    /// one behind) or the user asks for it to go.
    fn collect_scratch(&self, finished: &HashSet<String>, options: &GcOptions, report: &mut GcReport) -> Result<()> {
        for path in entries_of(&self.root.join("scratch"))? {
            let key = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let bytes = tree_bytes(&path);
            if options.scratch || finished.contains(&key) {
                report.scratch_removed += 1;
                report.bytes_freed += bytes;
                remove(&path, options.dry_run)?;
            } else {
                report.scratch_kept += 1;
                report.scratch_bytes_kept += bytes;
                let instance = std::fs::read_to_string(path.join(super::SCRATCH_OWNER)).ok();
                report.scratch.push(ScratchSpace { key, instance, bytes, modified_unix_ms: newest_change_ms(&path) });
            }
        }
        report.scratch.sort_by_key(|s| s.modified_unix_ms);
        Ok(())
    }
}

/// When anything under `path` last changed (its saves replace files), in Unix ms.
fn newest_change_ms(path: &Path) -> u64 {
    let own = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64);
    let children = std::fs::read_dir(path).into_iter().flatten().flatten().map(|e| newest_change_ms(&e.path()));
    children.fold(own, u64::max)
}

/// Bytes of the files under `path`.
fn tree_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    };
    entries.flatten().map(|e| tree_bytes(&e.path())).sum()
}

pub(super) fn remove(path: &Path, dry_run: bool) -> Result<()> {
    if dry_run {
        return Ok(());
    }
    let result = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(super::StoreError::Io { path: path.to_path_buf(), source: e })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StageRecord;

    fn store_with_scratch(keys: &[&str]) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for key in keys {
            std::fs::write(store.scratch_dir(key).unwrap().join("latest"), vec![0u8; 1000]).unwrap();
        }
        (dir, store)
    }

    fn scratch_left(store: &Store) -> Vec<String> {
        let mut keys: Vec<String> = std::fs::read_dir(store.root().join("scratch"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        keys.sort();
        keys
    }

    #[test]
    fn scratch_of_unfinished_stages_stays_unless_asked_and_of_finished_ones_goes() {
        let (_dir, store) = store_with_scratch(&["finished", "killed"]);
        // "finished" stored its outputs but was killed before clearing its scratch.
        let record = StageRecord {
            key: "finished".into(),
            kind: "dpo".into(),
            preimage: serde_json::Value::Null,
            outputs: Default::default(),
            created_unix_ms: 0,
            duration_ms: 0,
        };
        store.put_record(&record).unwrap();
        let report = store.gc(&GcOptions { keep_runs: 1, ..GcOptions::default() }).unwrap();
        assert_eq!((report.scratch_removed, report.scratch_kept, report.scratch_bytes_kept), (1, 1, 1000));
        assert_eq!(report.scratch[0].key, "killed");
        assert!(report.scratch[0].modified_unix_ms > 0);
        assert_eq!(scratch_left(&store), ["killed"]);

        let dry = GcOptions { keep_runs: 1, dry_run: true, scratch: true, lock_timeout: None };
        assert_eq!(store.gc(&dry).unwrap().scratch_removed, 1);
        assert_eq!(scratch_left(&store), ["killed"], "a dry run removed it");
        let all = store.gc(&GcOptions { dry_run: false, ..dry }).unwrap();
        assert_eq!((all.scratch_removed, all.scratch_kept), (1, 0));
        assert!(scratch_left(&store).is_empty());
    }
}
