//! Helpers for driving the `silkie` binary in a scratch workspace.
#![allow(dead_code)]

pub mod llava;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub struct Workspace {
    pub dir: tempfile::TempDir,
}

pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr))
    }
}

impl From<Output> for Ran {
    fn from(o: Output) -> Ran {
        Ran {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_silkie")
}

impl Workspace {
    pub fn new() -> Workspace {
        Workspace { dir: tempfile::tempdir().expect("temp dir") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.current_dir(self.path()).env_remove("SILKIE_CACHE").env("SILKIE_LOG", "silkie=warn").args(args);
        cmd
    }

    pub fn silkie(&self, args: &[&str]) -> Ran {
        self.command(args).output().expect("run silkie").into()
    }

    /// Runs and expects success; returns the run record.
    pub fn run(&self, args: &[&str]) -> Value {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--format", "json"]);
        let ran = self.silkie(&all);
        assert_eq!(ran.code, 0, "silkie {all:?} failed:\n{}\n{}", ran.stdout, ran.stderr);
        ran.json()
    }
}

/// instance name → status ("hit", "ran", …) from a run record.
pub fn statuses(record: &Value) -> Vec<(String, String)> {
    record["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap().to_string(), i["status"].as_str().unwrap().to_string()))
        .collect()
}

pub fn status_of(record: &Value, name: &str) -> String {
    statuses(record).into_iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no instance {name} in {record}")).1
}

pub fn ran(record: &Value) -> Vec<String> {
    let mut names: Vec<String> = statuses(record).into_iter().filter(|(_, s)| s == "ran").map(|(n, _)| n).collect();
    names.sort();
    names
}

/// A pairs table (CSV) with a learnable rule: the chosen answer repeats the question's number.
pub fn counting_pairs_csv(n: usize) -> String {
    let mut csv = String::from("prompt,chosen,rejected\n");
    for i in 0..n {
        csv.push_str(&format!("How many? {},{} items.,{} items.\n", i % 5, i % 5, (i + 2) % 5));
    }
    csv
}

/// A pipeline that loads `pairs.csv` and trains a small `policy` with `dpo`.
pub fn dpo_pipeline(epochs: usize, batch_size: usize) -> String {
    format!(
        "version: 1
stages:
  pairs: {{ kind: load, params: {{ path: pairs.csv }} }}
  policy:
    kind: dpo
    needs: [pairs]
    params: {{ base: {{ init: tiny, image_size: 16, patch_size: 8, d_model: 32, layers: 1, heads: 2, d_ff: 64, max_tokens: 32 }}, lr: 0.001, epochs: {epochs}, batch_size: {batch_size}, seed: 7 }}
"
    )
}

/// Starts `silkie run` in `ws` and kills it (SIGKILL: no chance to clean up) once a training
/// stage has saved its progress; fails when the run ends first. Returns the scratch folder.
pub fn kill_after_first_save(ws: &Workspace) -> PathBuf {
    let mut child = ws.command(&["run"]).stdout(std::process::Stdio::null()).spawn().unwrap();
    let scratch = ws.path().join("cache/scratch");
    let saved =
        || std::fs::read_dir(&scratch).ok().into_iter().flatten().flatten().any(|d| d.path().join("latest").is_file());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !saved() && std::time::Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
    assert!(saved(), "no save appeared in {}", scratch.display());
    child.kill().unwrap();
    child.wait().unwrap();
    scratch
}
