//! Following jobs: the controller's commands, one `squeue` per poll for every job this
//! process waits on, and how a job that left the queue ended (`sacct` or `scontrol`).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::{LOG_TAIL, NO_CACHE};
use crate::stages::StageError;
use crate::store::Placement;

/// Runs a Slurm command; its standard output, or a failure naming the command and what it said.
pub(super) fn controller(program: &str, args: &[&str]) -> Result<String, StageError> {
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
pub(super) struct JobEnd {
    pub(super) state: String,
    pub(super) exit_code: String,
    pub(super) reason: String,
    pub(super) node: String,
    pub(super) submitted: String,
    pub(super) started: String,
    pub(super) ended: String,
}

impl JobEnd {
    /// From `scontrol -o show job`'s `Key=Value` fields.
    pub(super) fn from_fields(fields: &HashMap<String, String>) -> JobEnd {
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

    pub(super) fn placement(&self, id: &str) -> Placement {
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
    pub(super) fn failure(&self, id: &str, dir: &Path) -> StageError {
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
pub(super) fn timestamp(text: &str) -> Option<u64> {
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
pub(super) fn parse_sacct(text: &str, id: &str) -> Option<JobEnd> {
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
pub(super) fn parse_jobs(text: &str) -> HashMap<String, HashMap<String, String>> {
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
pub(super) struct Queue {
    pub(super) state: Mutex<Watched>,
    changed: Condvar,
}

#[derive(Default)]
pub(super) struct Watched {
    pub(super) waiting: BTreeSet<String>,
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

pub(super) fn queue() -> &'static Queue {
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
    pub(super) fn wait(&self, id: &str) -> Result<JobEnd, StageError> {
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
