//! The Slurm executor: each instance is a job of its own, submitted with `sbatch`, that runs
//! `silkie run-instance` on the description this process wrote into the cache, and writes
//! its blobs and record there as a local run would. This process stays the driver: it holds
//! the instance's key lock, follows every job it waits on with one controller call per poll
//! (`squeue`), reads how a job ended from `scontrol show job`, and picks the record up.
//!
//! A job is named after the instance's key, so a driver that was killed and restarted adopts
//! a job still queued or running for the same key instead of submitting it again.

mod queue;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use queue::{controller, queue};

use super::executor::{Described, Executor, Submission};
use crate::calls::{CallsError, Memo};
use crate::stages::StageError;
use crate::store::{OutputRef, Placement};

pub struct SlurmExecutor;
pub const SLURM: SlurmExecutor = SlurmExecutor;

/// Exit code of a job that cannot read its description: the node does not see the cache.
const NO_CACHE: i32 = 97;
/// Lines of a failed job's log that its error shows.
const LOG_TAIL: usize = 20;

impl Executor for SlurmExecutor {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn keeps_cheap_local(&self) -> bool {
        true
    }

    fn run(&self, job: &Submission) -> Result<(BTreeMap<String, OutputRef>, Placement), StageError> {
        let d = job.description;
        let dir = job_dir(&d.cache, &d.key);
        std::fs::create_dir_all(&dir).map_err(StageError::io(&dir))?;
        // No two hosts write one SQLite file: a calling job answers from and adds to a copy,
        // merged back whatever becomes of the job (every paid call is kept).
        let private_memo = job.stage.calls_models().then(|| dir.join("calls.sqlite"));
        let d = &Described { memo: private_memo.clone(), ..d.clone() };
        let id = match find_active(&job_name(&d.key, &d.cache))? {
            // Its description and memo copy are the ones it reads: left as they are.
            Some(id) => {
                tracing::info!("{}: adopting Slurm job {id}, still queued or running for this key", d.instance);
                id
            }
            None => {
                if let Some(private) = &private_memo {
                    let _ = std::fs::remove_file(private);
                    memo(job.ctx.memo)?.copy_to(private).map_err(CallsError::from)?;
                }
                let submitted = submit(job, d, &dir);
                if submitted.is_err()
                    && let Some(private) = &private_memo
                {
                    let _ = std::fs::remove_file(private);
                }
                submitted?
            }
        };
        tracing::info!("{}: Slurm job {id}", d.instance);
        let end = queue().wait(&id);
        if let Some(private) = &private_memo {
            let added = memo(job.ctx.memo)?.merge_from(private).map_err(CallsError::from)?;
            tracing::debug!("{}: {added} calls from the job's memo", d.instance);
            let _ = std::fs::remove_file(private);
        }
        let end = end?;
        match job.ctx.store.complete_record(&d.key)? {
            Some(record) if end.state == "COMPLETED" => Ok((record.outputs, end.placement(&id))),
            _ => Err(end.failure(&id, &dir)),
        }
    }

    fn in_flight(&self, cache: &Path, keys: &[&str]) -> BTreeMap<String, String> {
        let cache = std::fs::canonicalize(cache).unwrap_or_else(|_| cache.to_path_buf());
        let by_name: HashMap<String, &str> = keys.iter().map(|k| (job_name(k, &cache), *k)).collect();
        // One call for all: a controller that cannot be reached has nothing to say here.
        let listed = controller("squeue", &["-h", "-t", "pending,running,configuring,completing", "-o", "%i|%j|%T|%N"]);
        let mut found = BTreeMap::new();
        for line in listed.unwrap_or_default().lines() {
            let fields: Vec<&str> = line.trim().split('|').collect();
            if let [id, name, state, node] = fields[..]
                && let Some(key) = by_name.get(name)
            {
                let at = if node.is_empty() { String::new() } else { format!(" on {node}") };
                found.insert(key.to_string(), format!("{} on Slurm (job {id}{at})", state.to_lowercase()));
            }
        }
        found
    }

    fn jobs_in_flight(&self) -> Vec<String> {
        queue().state.lock().map(|s| s.waiting.iter().cloned().collect()).unwrap_or_default()
    }

    fn cancel(&self, ids: &[String]) {
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        if let Err(e) = controller("scancel", &ids) {
            eprintln!("{e}");
        }
    }
}

fn memo(path: &Path) -> Result<Memo, StageError> {
    Ok(Memo::open(path).map_err(CallsError::from)?)
}

/// The job name for a key in a cache: a second driver of the same cache finds the job by
/// it, and a driver of another cache (whose record would land elsewhere) does not.
pub fn job_name(key: &str, cache: &Path) -> String {
    let cache = blake3::hash(cache.as_os_str().as_encoded_bytes()).to_hex();
    format!("silkie-{}-{}", &key[..key.len().min(16)], &cache[..8])
}

/// The id of a job of this name still queued or running, if any.
fn find_active(name: &str) -> Result<Option<String>, StageError> {
    let out = controller("squeue", &["-h", "-t", "pending,running,configuring,completing", "-n", name, "-o", "%i"])?;
    Ok(out.lines().map(str::trim).find(|l| !l.is_empty()).map(String::from))
}

/// Writes out the instance and submits the job that runs it; the job's id.
fn submit(job: &Submission, d: &Described, dir: &Path) -> Result<String, StageError> {
    let description = dir.join("instance.json");
    let json = serde_json::to_vec_pretty(d).map_err(|e| StageError::Internal(e.to_string()))?;
    job.ctx.store.write_atomic(&description, &json)?;
    let name = job_name(&d.key, &d.cache);
    let script = dir.join("job.sh");
    let exe = std::env::current_exe().map_err(|e| StageError::Internal(format!("cannot find silkie's binary: {e}")))?;
    let text = job_script(&exe, &description, &d.cache, &d.instance);
    std::fs::write(&script, text).map_err(StageError::io(&script))?;
    let mut args = vec![
        "--parsable".to_string(),
        format!("--job-name={name}"),
        format!("--output={}", dir.join("job-%j.log").display()),
        format!("--chdir={}", d.workspace.display()),
    ];
    args.extend(d.runtime.placement.slurm.as_ref().map(|s| s.sbatch_options()).unwrap_or_default());
    args.push(script.display().to_string());
    let output = Command::new("sbatch").args(&args).output().map_err(|e| {
        StageError::param("runtime.executor", format!("`slurm` needs `sbatch`, which cannot run here: {e}"))
    })?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr).trim().replace('\n', "; ");
        return Err(StageError::param("runtime.slurm", format!("sbatch refused the job: {said}")));
    }
    // `--parsable` prints `id` or `id;cluster`.
    let printed = String::from_utf8_lossy(&output.stdout);
    let id = printed.trim().split(';').next().unwrap_or_default().to_string();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(StageError::Internal(format!("sbatch printed `{}`, not a job id", printed.trim())));
    }
    Ok(id)
}

/// The job's script: it checks that this node sees the cache, then runs the instance.
fn job_script(exe: &Path, description: &Path, cache: &Path, instance: &str) -> String {
    let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
    format!(
        "#!/bin/sh\n# silkie: instance {instance}\nif [ ! -r {desc} ]; then\n  echo \"silkie: node $(hostname) cannot \
         see the cache {cache}: it must be on a filesystem every node mounts\" >&2\n  exit {NO_CACHE}\nfi\nexec {exe} \
         run-instance {desc}\n",
        desc = quote(description),
        cache = quote(cache),
        exe = quote(exe),
    )
}

/// Where a job's files are kept (description, script, log): its key's folder in the cache.
pub fn job_dir(cache: &Path, key: &str) -> PathBuf {
    cache.join("slurm").join(key)
}

#[cfg(test)]
mod tests;
