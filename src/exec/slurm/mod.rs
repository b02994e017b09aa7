//! The Slurm executor: each instance is a job of its own, submitted with `sbatch`, that runs
//! `silkie run-instance` on the description this process wrote into the cache, and writes
//! its blobs and record there as a local run would. This process stays the driver: it holds
//! the instance's key lock, follows every job it waits on with one controller call per poll
//! (`squeue`), reads how a job ended from `sacct` or `scontrol show job`, and picks the
//! record up.
//!
//! A job is named after the instance's key, so a driver that was killed and restarted adopts
//! a job still queued or running for the same key instead of submitting it again.

mod queue;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
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
        // Named in full: the job reads it on another node, from another working folder.
        let dir = job.ctx.store.job_dir("slurm", &d.key);
        let dir = std::path::absolute(&dir).map_err(StageError::io(&dir))?;
        std::fs::create_dir_all(&dir).map_err(StageError::io(&dir))?;
        // No two hosts write one SQLite file: a calling job answers from and adds to a copy,
        // which the driver merges back once the job has ended.
        let private_memo = job.stage.calls_models().then(|| dir.join("calls.sqlite"));
        let d = &Described { memo: private_memo.clone(), ..d.clone() };
        let id = match find_active(&job_name(&d.key, &d.cache))? {
            // Its description and memo copy are the ones it reads: left as they are.
            Some(id) => {
                tracing::info!("{}: adopting Slurm job {id}, still queued or running for this key", d.instance);
                id
            }
            None => {
                if super::interrupt::stopping() {
                    let said = "not run: the driver was interrupted".to_string();
                    return Err(StageError::Scheduler { command: "sbatch".into(), said });
                }
                if let Some(private) = &private_memo {
                    // A copy left by a job no driver merged (killed, interrupted) holds paid
                    // calls: merged before it is replaced.
                    settle_memo_copy(job.ctx.memo, private, &d.instance);
                    memo(job.ctx.memo)?.copy_to(private).map_err(CallsError::from)?;
                }
                let submitted = submit(job, d, &dir);
                if submitted.is_err()
                    && let Some(private) = &private_memo
                {
                    remove_memo_copy(private);
                }
                let id = submitted?;
                // Known to an interrupt from now on.
                queue().watch(&id);
                id
            }
        };
        tracing::info!("{}: Slurm job {id}", d.instance);
        // Given up waiting, the job may still run and write its copy: left for a rerun.
        let end = queue().wait(&id)?;
        if let Some(private) = &private_memo {
            settle_memo_copy(job.ctx.memo, private, &d.instance);
        }
        match record_of(job.ctx.store, &d.key, &end)? {
            Some(record) => {
                // The outputs a stage keeps in the workspace, where the driver's workspace is
                // not the node's (restored from the store, as on a cache hit).
                job.stage.restore(job.ctx, &record.outputs)?;
                Ok((record.outputs, end.placement(&id)))
            }
            None => Err(end.failure(&id, &dir)),
        }
    }

    fn in_flight(&self, cache: &Path, keys: &[&str]) -> BTreeMap<String, String> {
        let cache = std::fs::canonicalize(cache).unwrap_or_else(|_| cache.to_path_buf());
        let by_name: HashMap<String, &str> = keys.iter().map(|k| (job_name(k, &cache), *k)).collect();
        // One call for all: a controller that cannot be reached has nothing to say here.
        let listed = controller("squeue", &["-h", "--me", "-o", "%i|%j|%T|%N"]);
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

/// Merges a job's memo copy into `main`, if there is one, and removes it (with SQLite's
/// journal files, which a job ended by a signal leaves). A copy that does not merge stays,
/// for the next attempt: the calls in it were paid for.
fn settle_memo_copy(main: &Path, copy: &Path, instance: &str) {
    if !copy.exists() {
        return;
    }
    match memo(main).and_then(|m| Ok(m.merge_from(copy).map_err(CallsError::from)?)) {
        Ok(added) => {
            tracing::debug!("{instance}: {added} calls from the job's memo");
            remove_memo_copy(copy);
        }
        Err(e) => tracing::warn!("{instance}: the job's memo {} is not merged yet: {e}", copy.display()),
    }
}

fn remove_memo_copy(copy: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", copy.display()));
    }
}

/// The record of a job that completed. A shared filesystem may show a file another host made
/// a little late (NFS caches that it was missing): looked for again for a few seconds.
fn record_of(
    store: &crate::store::Store,
    key: &str,
    end: &queue::JobEnd,
) -> Result<Option<crate::store::StageRecord>, StageError> {
    if end.state != "COMPLETED" {
        return Ok(None);
    }
    for pause in [0, 100, 300, 1000, 3000] {
        std::thread::sleep(std::time::Duration::from_millis(pause));
        // Listing the folder makes an NFS client look again.
        let _ = std::fs::read_dir(store.root().join("records").join(key.get(..2).unwrap_or_default()));
        if let Some(record) = store.complete_record(key)? {
            return Ok(Some(record));
        }
    }
    Ok(None)
}

/// The job name for a key in a cache: a second driver of the same cache finds the job by
/// it, and a driver of another cache (whose record would land elsewhere) does not.
pub fn job_name(key: &str, cache: &Path) -> String {
    let cache = blake3::hash(cache.as_os_str().as_encoded_bytes()).to_hex();
    format!("silkie-{}-{}", &key[..key.len().min(16)], &cache[..8])
}

/// The id of this user's job of this name that has not ended (queued, running, suspended,
/// requeued, held), if any.
fn find_active(name: &str) -> Result<Option<String>, StageError> {
    let out = controller("squeue", &["-h", "--me", "-t", "all", "-n", name, "-o", "%i|%T"])?;
    let live = out.lines().filter_map(|l| l.trim().split_once('|')).find(|(_, state)| !queue::ENDED.contains(state));
    Ok(live.map(|(id, _)| id.to_string()))
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

#[cfg(test)]
mod tests;
