use super::queue::*;
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
    std::fs::write(&script, job_script(Path::new("/bin/false"), &missing, Path::new("/shared/cache"), "a")).unwrap();
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
    let script = job_script(Path::new("/opt/silkie"), Path::new("/c/it's/instance.json"), Path::new("/c"), "a[b=1]");
    assert!(script.contains(r"exec '/opt/silkie' run-instance '/c/it'\''s/instance.json'"), "{script}");
    assert!(script.contains("exit 97"), "{script}");
}
