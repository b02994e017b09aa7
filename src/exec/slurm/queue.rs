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
        return Err(StageError::Scheduler { command: format!("{program} {}", args.join(" ")), said });
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
        let text = log_end(&log);
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

/// The last 64 KiB of a job's log, enough for its last lines: a training job's log may be
/// large, and only its end is shown.
fn log_end(log: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    const END: u64 = 64 << 10;
    let Ok(mut file) = std::fs::File::open(log) else { return String::new() };
    let length = file.metadata().map_or(0, |m| m.len());
    let mut bytes = Vec::new();
    let read = file.seek(SeekFrom::Start(length.saturating_sub(END))).and_then(|_| file.read_to_end(&mut bytes));
    match read {
        Ok(_) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::new(),
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
        && ENDED.contains(&end.state.as_str())
    {
        // Accounting catches up with the controller a little later: until then, the
        // controller says.
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
pub(super) const ENDED: &[&str] = &[
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "SPECIAL_EXIT",
    "REVOKED",
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
    /// Since when polls have failed (the controller restarting, overloaded).
    unanswered_since: Option<Instant>,
    /// Each job's last state and reason, so that a change is logged once.
    last_seen: HashMap<String, String>,
}

/// The shortest and longest time between two polls.
const FIRST_INTERVAL: Duration = Duration::from_millis(250);
const LONGEST_INTERVAL: Duration = Duration::from_secs(5);
/// How long the controller may leave polls unanswered before the jobs waited on are given up
/// (left running: a rerun adopts them).
const UNANSWERED_FOR: Duration = Duration::from_secs(600);

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
    /// Follows job `id` from now on (as [`Queue::wait`] does).
    pub(super) fn watch(&self, id: &str) {
        if let Ok(mut state) = self.state.lock() {
            state.waiting.insert(id.to_string());
        }
    }

    /// Waits until job `id` has ended; how it ended.
    pub(super) fn wait(&self, id: &str) -> Result<JobEnd, StageError> {
        let poisoned = || StageError::Internal("the Slurm queue's lock is poisoned".into());
        let mut state = self.state.lock().map_err(|_| poisoned())?;
        state.waiting.insert(id.to_string());
        loop {
            if let Some(end) = state.ended.remove(id) {
                return Ok(end);
            }
            if let Some(since) = state.unanswered_since
                && since.elapsed() > UNANSWERED_FOR
            {
                state.waiting.remove(id);
                return Err(StageError::Scheduler {
                    command: "squeue".into(),
                    said: format!(
                        "no answer for {} minutes; job {id} may still run, and a rerun adopts it",
                        UNANSWERED_FOR.as_secs() / 60
                    ),
                });
            }
            let due = state.last_poll.is_none_or(|at| at.elapsed() >= state.interval());
            if state.polling || !due {
                let wait = state.interval();
                state = self.changed.wait_timeout(state, wait).map_err(|_| poisoned())?.0;
                continue;
            }
            state.polling = true;
            let ids: Vec<String> = state.waiting.iter().cloned().collect();
            drop(state);
            // A panic must not leave `polling` set: every waiter would wait for ever.
            let polled = std::panic::catch_unwind(|| poll(&ids))
                .unwrap_or_else(|_| Err(StageError::Internal("polling Slurm panicked".into())));
            state = self.state.lock().map_err(|_| poisoned())?;
            state.polling = false;
            state.last_poll = Some(Instant::now());
            match polled {
                Ok(Polled { ended, states }) => {
                    state.unanswered_since = None;
                    state.quiet_polls = if ended.is_empty() { state.quiet_polls + 1 } else { 0 };
                    for (job, now) in states {
                        if state.last_seen.get(&job) != Some(&now) {
                            tracing::info!("Slurm job {job}: {now}");
                            state.last_seen.insert(job, now);
                        }
                    }
                    for (job, end) in ended {
                        state.last_seen.remove(&job);
                        // Kept only while someone waits for it (a waiter may have given up).
                        if state.waiting.remove(&job) {
                            state.ended.insert(job, end);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("polling Slurm: {e}");
                    state.unanswered_since.get_or_insert_with(Instant::now);
                }
            }
            self.changed.notify_all();
        }
    }
}

/// What one poll found: the jobs that have ended, with how, and the state of the others.
struct Polled {
    ended: Vec<(String, JobEnd)>,
    states: Vec<(String, String)>,
}

/// One poll: this user's jobs as the controller lists them (`--me`: never one call per job,
/// and no error for a job it has forgotten), then how those of `ids` that ended, ended.
fn poll(ids: &[String]) -> Result<Polled, StageError> {
    let listed = controller("squeue", &["-h", "--me", "-t", "all", "-o", "%i|%T|%r"])?;
    let listed: HashMap<&str, (&str, &str)> = listed
        .lines()
        .filter_map(|l| {
            let mut f = l.trim().splitn(3, '|');
            Some((f.next()?, (f.next()?, f.next().unwrap_or_default())))
        })
        .collect();
    let mut polled = Polled { ended: Vec::new(), states: Vec::new() };
    for id in ids {
        let state = listed.get(id.as_str()).copied();
        match state {
            Some((now, reason)) if !ENDED.contains(&now) => {
                let why = if reason.is_empty() || reason == "None" { String::new() } else { format!(" ({reason})") };
                polled.states.push((id.clone(), format!("{}{why}", now.to_lowercase())));
            }
            _ => {
                let end = how_it_ended(id).unwrap_or_else(|| JobEnd {
                    state: state.map_or("UNKNOWN", |(now, _)| now).to_string(),
                    ..JobEnd::default()
                });
                polled.ended.push((id.clone(), end));
            }
        }
    }
    Ok(polled)
}
