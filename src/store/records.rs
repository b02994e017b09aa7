//! Stage records, labels and run records.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Result, Store, io_err};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// A Parquet table.
    Table,
    /// A single file.
    File,
    /// A directory, stored as a manifest blob.
    Dir,
}

/// One output of a stage: what it is and where its bytes are.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutputRef {
    pub digest: String,
    pub kind: OutputKind,
    #[serde(default)]
    pub rows: Option<u64>,
    pub bytes: u64,
    /// For files: the format their name implies (`csv`, `parquet`, …), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// stage key → outputs, plus the canonical pre-image of the key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub key: String,
    pub kind: String,
    pub preimage: Value,
    pub outputs: BTreeMap<String, OutputRef>,
    pub created_unix_ms: u64,
    pub duration_ms: u64,
}

/// The last key a stage instance of a pipeline ran with, and its pre-image (for `explain`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Label {
    pub pipeline: String,
    pub instance: String,
    pub key: String,
    pub preimage: Value,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InstanceStatus {
    Hit,
    Ran,
    Failed,
    Skipped,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceReport {
    pub name: String,
    pub kind: String,
    pub status: InstanceStatus,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub outputs: BTreeMap<String, OutputRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Where it ran, when it ran (a cache hit ran nowhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
}

/// Where an instance ran: this process, or a job of a scheduler, with its id, node, final
/// state and how long it queued and ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    pub executor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_ms: Option<u64>,
}

impl Placement {
    pub fn local() -> Placement {
        Placement { executor: "local".into(), job_id: None, node: None, state: None, queued_ms: None, run_ms: None }
    }
}

/// One `silkie run`: what each instance did. Timings and hosts live here, never in outputs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub pipeline: String,
    pub pipeline_name: String,
    pub started_unix_ms: u64,
    pub duration_ms: u64,
    pub ok: bool,
    /// Input bytes hashed during this run (0 on a no-op rerun thanks to the stat cache).
    pub hashed_bytes: u64,
    pub hashed_files: u64,
    pub instances: Vec<InstanceReport>,
}

impl Store {
    fn record_path(&self, key: &str) -> PathBuf {
        self.root.join("records").join(key.get(..2).unwrap_or("00")).join(format!("{key}.json"))
    }

    pub fn record(&self, key: &str) -> Result<Option<StageRecord>> {
        self.read_json(&self.record_path(key))
    }

    /// A record whose every blob is present; `None` when missing or partly collected.
    pub fn complete_record(&self, key: &str) -> Result<Option<StageRecord>> {
        let complete = |o: &OutputRef| match o.kind {
            OutputKind::Dir => {
                self.read_dir_manifest(&o.digest).is_ok_and(|m| m.files.values().all(|f| self.has_blob(&f.digest)))
            }
            _ => self.has_blob(&o.digest),
        };
        Ok(self.record(key)?.filter(|r| r.outputs.values().all(complete)))
    }

    /// Writes a record. The caller has already stored every blob it names.
    pub fn put_record(&self, record: &StageRecord) -> Result<()> {
        self.write_json(&self.record_path(&record.key), record)
    }

    pub fn all_records(&self) -> Result<Vec<(PathBuf, Option<StageRecord>)>> {
        let mut out = Vec::new();
        let dir = self.root.join("records");
        for fan in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let fan = fan.map_err(io_err(&dir))?.path();
            for entry in std::fs::read_dir(&fan).map_err(io_err(&fan))? {
                let path = entry.map_err(io_err(&fan))?.path();
                let record = self.read_json(&path).ok().flatten();
                out.push((path, record));
            }
        }
        Ok(out)
    }

    fn label_path(&self, pipeline: &str, instance: &str) -> PathBuf {
        let id = blake3::hash(format!("{pipeline}\0{instance}").as_bytes()).to_hex();
        self.root.join("labels").join(format!("{}.json", &id[..32]))
    }

    pub fn label(&self, pipeline: &str, instance: &str) -> Result<Option<Label>> {
        self.read_json(&self.label_path(pipeline, instance))
    }

    pub fn put_label(&self, label: &Label) -> Result<()> {
        self.write_json(&self.label_path(&label.pipeline, &label.instance), label)
    }

    /// Every label (the last key of each pipeline × instance).
    pub fn labels(&self) -> Result<Vec<Label>> {
        let dir = self.root.join("labels");
        let mut labels = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let path = entry.map_err(io_err(&dir))?.path();
            // A label that does not parse is not a root; gc then treats its record like any other.
            if let Ok(Some(label)) = self.read_json::<Label>(&path) {
                labels.push(label);
            }
        }
        Ok(labels)
    }

    pub fn put_run(&self, run: &RunRecord) -> Result<()> {
        self.write_json(&self.root.join("runs").join(format!("{}.json", run.id)), run)
    }

    /// Every run record, oldest first.
    pub fn runs(&self) -> Result<Vec<RunRecord>> {
        let dir = self.root.join("runs");
        let mut runs = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let path = entry.map_err(io_err(&dir))?.path();
            if path.extension().is_some_and(|e| e == "json")
                && let Some(run) = self.read_json::<RunRecord>(&path)?
            {
                runs.push(run);
            }
        }
        runs.sort_by(|a, b| (a.started_unix_ms, &a.id).cmp(&(b.started_unix_ms, &b.id)));
        Ok(runs)
    }

    /// The newest run record of `pipeline`: run files are read newest first (their names
    /// start with the run's start time) until one is of that pipeline, not all of them.
    pub fn last_run(&self, pipeline: &str) -> Result<Option<RunRecord>> {
        let dir = self.root.join("runs");
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let path = entry.map_err(io_err(&dir))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let started = path.file_stem().and_then(|s| s.to_str()?.split('-').next()?.parse::<u64>().ok());
                paths.push((started.unwrap_or(0), path));
            }
        }
        paths.sort_unstable_by(|a, b| b.cmp(a));
        for (_, path) in paths {
            if let Some(run) = self.read_json::<RunRecord>(&path)?.filter(|r| r.pipeline == pipeline) {
                return Ok(Some(run));
            }
        }
        Ok(None)
    }

    pub fn remove_run(&self, id: &str) -> Result<()> {
        let path = self.root.join("runs").join(format!("{id}.json"));
        std::fs::remove_file(&path).map_err(io_err(&path))
    }
}
