//! Garbage collection: keep what the last N runs of every pipeline reach, remove the rest.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::{InstanceStatus, LockMode, OutputKind, Result, Store, io_err};

#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub runs_kept: usize,
    pub runs_removed: usize,
    pub records_removed: usize,
    pub blobs_removed: usize,
    pub bytes_freed: u64,
}

impl Store {
    /// Takes the store lock (waiting for running `silkie run`s), then collects.
    pub fn gc(&self, keep_runs: usize, dry_run: bool, lock_timeout: Option<Duration>) -> Result<GcReport> {
        let _lock = self.lock_store(LockMode::Exclusive, lock_timeout)?;
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
        for (path, record) in self.all_records()? {
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
        // Nothing else runs while we hold the store lock: leftovers of killed runs can go.
        for dir in ["tmp", "locks"] {
            let dir = self.root.join(dir);
            for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
                let path = entry.map_err(io_err(&dir))?.path();
                if dir.ends_with("tmp") {
                    report.bytes_freed += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                }
                remove(&path, dry_run)?;
            }
        }
        Ok(report)
    }
}

fn remove(path: &Path, dry_run: bool) -> Result<()> {
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
