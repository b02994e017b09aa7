//! The Slurm executor: each instance is a job of its own, submitted with `sbatch`, that runs
//! `silkie run-instance` on the description this process wrote into the cache, and writes
//! its blobs and record there as a local run would. This process stays the driver: it holds
//! the instance's key lock, follows every job it waits on with one controller call per poll
//! (`squeue`), reads how a job ended from `scontrol show job`, and picks the record up.
//!
//! A job is named after the instance's key, so a driver that was killed and restarted adopts
//! a job still queued or running for the same key instead of submitting it again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

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

/// Runs a Slurm command; its standard output, or a failure naming the command and what it said.
fn controller(program: &str, args: &[&str]) -> Result<String, StageError> {
    let output = Command::new(program).args(args).output().map_err(|e| {
        StageError::param("runtime.executor", format!("`slurm` needs `{program}`, which cannot run here: {e}"))
    })?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr).trim().to_string();
        return Err(StageError::Internal(format!("`{program} {}` failed: {said}", args.join(" "))));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// How a job ended, as the controller tells it.
#[derive(Debug, Clone, Default)]
struct JobEnd {
    state: String,
    exit_code: String,
    reason: String,
    node: String,
    submitted: String,
    started: String,
    ended: String,
}

impl JobEnd {
    /// From `scontrol -o show job`'s `Key=Value` fields.
    fn from_fields(fields: &HashMap<String, String>) -> JobEnd {
        let field = |k: &str| fields.get(k).cloned().unwrap_or_default();
        JobEnd {
            state: field("JobState"),
            exit_code: field("ExitCode"),
            reason: field("Reason"),
            node: field("NodeList"),
            submitted: field("SubmitTime"),
            started: field("StartTime"),
            ended: field("EndTime"),
        }
    }

    fn placement(&self, id: &str) -> Placement {
        let seconds = |from: &str, to: &str| Some(timestamp(to)?.checked_sub(timestamp(from)?)? * 1000);
        Placement {
            executor: "slurm".into(),
            job_id: Some(id.to_string()),
            node: Some(self.node.clone()).filter(|n| !n.is_empty() && n != "(null)"),
            state: Some(self.state.clone()),
            queued_ms: seconds(&self.submitted, &self.started),
            run_ms: seconds(&self.started, &self.ended),
        }
    }

    /// The instance's failure: the job's state, exit code, reason and the tail of its log.
    fn failure(&self, id: &str, dir: &Path) -> StageError {
        let log = dir.join(format!("job-{id}.log"));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n");
        let state =
            if self.state == "COMPLETED" { "COMPLETED without a record".to_string() } else { self.state.clone() };
        let mut detail = format!(" (exit code {}, reason {}; log {})", self.exit_code, self.reason, log.display());
        if self.exit_code.starts_with(&format!("{NO_CACHE}:")) {
            detail.push_str(": the node cannot see the driver's cache; put it on a filesystem every node mounts");
        }
        if !tail.is_empty() {
            detail.push_str(&format!(":\n{tail}"));
        }
        StageError::Job { executor: "Slurm".into(), id: id.to_string(), state, detail }
    }
}

/// Seconds since an arbitrary epoch of Slurm's `YYYY-MM-DDTHH:MM:SS` (its local time, the
/// same for every timestamp of a job): enough for differences.
fn timestamp(text: &str) -> Option<u64> {
    let (date, time) = text.split_once('T')?;
    let d: Vec<i64> = date.split('-').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let t: Vec<u64> = time.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let [y, m, day] = d[..] else { return None };
    let [h, min, s] = t[..] else { return None };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(u64::try_from(days).ok()? * 86_400 + h * 3600 + min * 60 + s)
}

/// How a job that left the queue ended: from accounting (`sacct`) where the cluster keeps it,
/// else from the controller, which remembers finished jobs for `MinJobAge` (many small
/// clusters, the test one among them, run without slurmdbd).
fn how_it_ended(id: &str) -> Option<JobEnd> {
    static ACCOUNTING: OnceLock<bool> = OnceLock::new();
    let accounting = *ACCOUNTING.get_or_init(|| controller("sacct", &["-n", "-X", "-j", "1"]).is_ok());
    if accounting
        && let Ok(text) = controller("sacct", &["-n", "-P", "-X", "-j", id, "-o", SACCT_FIELDS])
        && let Some(end) = parse_sacct(&text, id)
    {
        return Some(end);
    }
    let text = controller("scontrol", &["-o", "show", "job", id]).ok()?;
    parse_jobs(&text).remove(id).map(|f| JobEnd::from_fields(&f))
}

const SACCT_FIELDS: &str = "JobID,State,ExitCode,Reason,NodeList,Submit,Start,End";

/// `sacct -P -o SACCT_FIELDS`'s line for job `id`. Its state may carry a note
/// (`CANCELLED by 0`): the first word is the state.
fn parse_sacct(text: &str, id: &str) -> Option<JobEnd> {
    text.lines().map(|l| l.split('|').collect::<Vec<_>>()).find(|f| f.first() == Some(&id)).and_then(|f| {
        let [_, state, exit_code, reason, node, submitted, started, ended] = f[..] else { return None };
        Some(JobEnd {
            state: state.split_whitespace().next().unwrap_or_default().to_string(),
            exit_code: exit_code.into(),
            reason: reason.into(),
            node: node.into(),
            submitted: submitted.into(),
            started: started.into(),
            ended: ended.into(),
        })
    })
}

/// `scontrol -o show job` as fields per job id.
fn parse_jobs(text: &str) -> HashMap<String, HashMap<String, String>> {
    text.lines()
        .map(|line| {
            let fields: HashMap<String, String> = line
                .split_whitespace()
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            (fields.get("JobId").cloned().unwrap_or_default(), fields)
        })
        .collect()
}

/// States a job ends in.
const ENDED: &[&str] = &[
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
];

/// Every job this process waits on, followed together: whichever waiting thread finds the
/// last poll old enough polls for all of them, one `squeue` call, and wakes the others.
struct Queue {
    state: Mutex<Watched>,
    changed: Condvar,
}

#[derive(Default)]
struct Watched {
    waiting: BTreeSet<String>,
    ended: HashMap<String, JobEnd>,
    polling: bool,
    last_poll: Option<Instant>,
    /// Polls since a job last ended: the interval grows with them.
    quiet_polls: u32,
    failed_polls: u32,
}

/// The shortest and longest time between two polls.
const FIRST_INTERVAL: Duration = Duration::from_millis(250);
const LONGEST_INTERVAL: Duration = Duration::from_secs(5);
/// Polls in a row that may fail (the controller restarting) before the jobs are given up.
const FAILED_POLLS_ALLOWED: u32 = 60;

fn queue() -> &'static Queue {
    static QUEUE: OnceLock<Queue> = OnceLock::new();
    QUEUE.get_or_init(|| Queue { state: Mutex::new(Watched::default()), changed: Condvar::new() })
}

impl Watched {
    fn interval(&self) -> Duration {
        FIRST_INTERVAL.saturating_mul(1 << self.quiet_polls.min(5)).min(LONGEST_INTERVAL)
    }
}

impl Queue {
    /// Waits until job `id` has ended; how it ended.
    fn wait(&self, id: &str) -> Result<JobEnd, StageError> {
        let lock = || self.state.lock().map_err(|_| StageError::Internal("the Slurm queue's lock is poisoned".into()));
        let mut state = lock()?;
        state.waiting.insert(id.to_string());
        loop {
            if let Some(end) = state.ended.remove(id) {
                return Ok(end);
            }
            if state.failed_polls > FAILED_POLLS_ALLOWED {
                state.waiting.remove(id);
                return Err(StageError::Internal(format!(
                    "the Slurm controller did not answer {FAILED_POLLS_ALLOWED} polls in a row; job {id} may still run"
                )));
            }
            let due = state.last_poll.is_none_or(|at| at.elapsed() >= state.interval());
            if state.polling || !due {
                let wait = state.interval();
                state = self.changed.wait_timeout(state, wait).map_err(|_| StageError::Internal("poisoned".into()))?.0;
                continue;
            }
            state.polling = true;
            let ids: Vec<String> = state.waiting.iter().cloned().collect();
            drop(state);
            let polled = poll(&ids);
            state = lock()?;
            state.polling = false;
            state.last_poll = Some(Instant::now());
            match polled {
                Ok(ended) => {
                    state.failed_polls = 0;
                    state.quiet_polls = if ended.is_empty() { state.quiet_polls + 1 } else { 0 };
                    for (job, end) in ended {
                        state.waiting.remove(&job);
                        state.ended.insert(job, end);
                    }
                }
                Err(e) => {
                    tracing::warn!("polling Slurm: {e}");
                    state.failed_polls += 1;
                }
            }
            self.changed.notify_all();
        }
    }
}

/// One poll: the jobs of `ids` that have ended, with how.
fn poll(ids: &[String]) -> Result<Vec<(String, JobEnd)>, StageError> {
    let listed = controller("squeue", &["-h", "-t", "all", "-j", &ids.join(","), "-o", "%i|%T"])?;
    let states: HashMap<&str, &str> = listed.lines().filter_map(|l| l.trim().split_once('|')).collect();
    let mut ended = Vec::new();
    for id in ids {
        let state = states.get(id.as_str()).copied();
        if state.is_some_and(|s| !ENDED.contains(&s)) {
            continue;
        }
        let end = how_it_ended(id)
            .unwrap_or_else(|| JobEnd { state: state.unwrap_or("UNKNOWN").to_string(), ..JobEnd::default() });
        ended.push((id.clone(), end));
    }
    Ok(ended)
}

/// Where a job's files are kept (description, script, log): its key's folder in the cache.
pub fn job_dir(cache: &Path, key: &str) -> PathBuf {
    cache.join("slurm").join(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scontrol_lines_become_fields_and_a_failure_says_how_the_job_ended() {
        let text = "JobId=15 JobName=silkie-ab UserId=root(0) JobState=FAILED Reason=NonZeroExitCode \
                    ExitCode=3:0 RunTime=00:00:01 SubmitTime=2026-12-06T08:59:29 StartTime=2026-12-06T08:59:30 \
                    EndTime=2026-12-06T09:00:31 NodeList=vm\nJobId=16 JobState=RUNNING NodeList=vm\n";
        let jobs = parse_jobs(text);
        let end = JobEnd::from_fields(&jobs["15"]);
        assert_eq!((end.state.as_str(), end.exit_code.as_str(), end.node.as_str()), ("FAILED", "3:0", "vm"));
        let placement = end.placement("15");
        assert_eq!((placement.queued_ms, placement.run_ms), (Some(1000), Some(61_000)));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("job-15.log"), "step 1\nboom\n").unwrap();
        let message = end.failure("15", dir.path()).to_string();
        assert!(message.starts_with("Slurm job 15 ended FAILED (exit code 3:0, reason NonZeroExitCode"), "{message}");
        assert!(message.ends_with("step 1\nboom"), "{message}");
    }

    #[test]
    fn sacct_lines_say_how_a_job_ended() {
        let text = "41|CANCELLED by 0|0:15|None|n3|2026-12-06T08:59:29|2026-12-06T08:59:30|2026-12-06T09:00:30\n";
        let end = parse_sacct(text, "41").unwrap();
        assert_eq!((end.state.as_str(), end.exit_code.as_str(), end.node.as_str()), ("CANCELLED", "0:15", "n3"));
        assert_eq!(end.placement("41").run_ms, Some(60_000));
        assert!(parse_sacct(text, "4").is_none());
    }

    #[test]
    fn a_job_on_a_node_that_cannot_see_the_cache_says_so_and_exits_97() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("job.sh");
        let missing = dir.path().join("gone/instance.json");
        std::fs::write(&script, job_script(Path::new("/bin/false"), &missing, Path::new("/shared/cache"), "a"))
            .unwrap();
        let out = Command::new("sh").arg(&script).output().unwrap();
        assert_eq!(out.status.code(), Some(NO_CACHE));
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("cannot see the cache '/shared/cache'"), "{said}");
        let end = JobEnd { state: "FAILED".into(), exit_code: format!("{NO_CACHE}:0"), ..JobEnd::default() };
        let message = end.failure("7", dir.path()).to_string();
        assert!(message.contains("the node cannot see the driver's cache"), "{message}");
    }

    #[test]
    fn timestamps_count_across_midnight_and_month_ends() {
        let diff = |a, b| timestamp(b).unwrap() - timestamp(a).unwrap();
        assert_eq!(diff("2026-12-31T23:59:59", "2027-01-01T00:00:01"), 2);
        assert_eq!(diff("2028-02-28T12:00:00", "2028-03-01T12:00:00"), 2 * 86_400);
        assert_eq!(timestamp("Unknown"), None);
    }

    #[test]
    fn the_job_script_quotes_its_paths_and_names_the_cache_when_it_is_not_there() {
        let script =
            job_script(Path::new("/opt/silkie"), Path::new("/c/it's/instance.json"), Path::new("/c"), "a[b=1]");
        assert!(script.contains(r"exec '/opt/silkie' run-instance '/c/it'\''s/instance.json'"), "{script}");
        assert!(script.contains("exit 97"), "{script}");
    }
}
