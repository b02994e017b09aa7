//! The Slurm executor against a real one-node Slurm cluster, which `scripts/slurm-cluster`
//! starts (as `scripts/test` does). Without one the tests say so loudly and pass — except under
//! CI, where a cluster that does not start fails them.

mod common;
#[path = "common/server.rs"]
mod server;

use std::process::Command;
use std::sync::OnceLock;

use common::{Workspace, counting_pairs_csv, dpo_pipeline, status_of};
use serde_json::Value;

/// The tests take the cluster's two CPUs in turn: a job of one held up behind another's
/// (a time limit takes a minute and more to hit) would make their waits a matter of luck.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());
    CLUSTER.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Cancels a job when dropped: a test that fails half-way leaves no job holding a CPU.
struct CancelOnDrop(String);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("scancel").arg(&self.0).status();
    }
}

fn cluster_up() -> bool {
    static UP: OnceLock<Result<(), String>> = OnceLock::new();
    let up = UP.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/slurm-cluster");
        match Command::new(script).arg("start").output() {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
            Err(e) => Err(e.to_string()),
        }
    });
    match up {
        Ok(()) => true,
        Err(why) if std::env::var_os("CI").is_some() => panic!("the test Slurm cluster did not start: {why}"),
        Err(why) => {
            eprintln!("\n*** SKIPPED: no Slurm cluster here ({why}); run `scripts/slurm-cluster start` as root ***\n");
            false
        }
    }
}

/// Three `command` instances of a matrix, and a small `dpo` run after a `load`.
fn pipeline() -> String {
    format!(
        "{}  square:
    kind: command
    matrix: {{ n: [1, 2, 3] }}
    params:
      cmd: echo $(( ${{matrix.n}} * ${{matrix.n}} )) > out/square-${{matrix.n}}.txt
      outs: [\"out/square-${{matrix.n}}.txt\"]
      deps: [pairs.csv]
",
        dpo_pipeline(1, 4)
    )
}

/// A workspace holding `pipeline`, when there is a cluster to run it on.
fn slurm_workspace(pipeline: &str) -> Option<Workspace> {
    if !cluster_up() {
        return None;
    }
    let ws = Workspace::new();
    ws.write("pipeline.yaml", pipeline);
    Some(ws)
}

/// Text no earlier run has used: in a command, it gives the instance a key of its own,
/// whatever earlier test runs left in the controller's memory.
fn nonce() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}-{}", std::process::id(), now.as_nanos())
}

fn workspace() -> Workspace {
    let ws = Workspace::new();
    ws.write("pairs.csv", &counting_pairs_csv(8));
    ws.write("pipeline.yaml", &pipeline());
    ws
}

fn instance<'a>(record: &'a Value, name: &str) -> &'a Value {
    record["instances"].as_array().unwrap().iter().find(|i| i["name"] == name).unwrap()
}

/// `scontrol`'s fields of job `id`.
fn controller_fields(id: &str) -> String {
    let out = Command::new("scontrol").args(["-o", "show", "job", id]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn instances_run_as_jobs_with_the_keys_and_outputs_of_a_local_run_and_a_rerun_submits_nothing() {
    let _one_at_a_time = one_at_a_time();
    if !cluster_up() {
        return;
    }
    let local = workspace();
    let local_record = local.run(&[]);
    let slurm = workspace();
    let record = slurm.run(&["--executor", "slurm"]);
    let names = ["pairs", "policy", "square[n=1]", "square[n=2]", "square[n=3]"];
    for name in names {
        let (here, there) = (instance(&local_record, name), instance(&record, name));
        assert_eq!(status_of(&record, name), "ran", "{name}");
        assert_eq!(there["key"], here["key"], "{name}: another key on Slurm");
        assert_eq!(there["outputs"], here["outputs"], "{name}: other outputs on Slurm");
    }
    assert_eq!(slurm.read("out/square-3.txt").trim(), "9");
    // `load` is cheap: it stays in the driver unless its stage asks for Slurm.
    assert_eq!(instance(&record, "pairs")["placement"]["executor"], "local");
    let mut ids = Vec::new();
    for name in ["policy", "square[n=1]", "square[n=2]", "square[n=3]"] {
        let placement = &instance(&record, name)["placement"];
        assert_eq!(placement["executor"], "slurm", "{name}: {placement}");
        assert_eq!(placement["state"], "COMPLETED", "{name}: {placement}");
        let id = placement["job_id"].as_str().unwrap().to_string();
        let fields = controller_fields(&id);
        let key = instance(&record, name)["key"].as_str().unwrap();
        assert!(
            fields.contains(&format!("JobName=silkie-{}-", &key[..16])),
            "{name}: job {id} is not its job: {fields}"
        );
        assert!(fields.contains("JobState=COMPLETED"), "{fields}");
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "every instance is a job of its own: {ids:?}");

    let again = slurm.run(&["--executor", "slurm"]);
    for name in names {
        assert_eq!(status_of(&again, name), "hit", "{name}");
        assert!(instance(&again, name).get("placement").is_none(), "{name} was submitted again");
    }
    // The jobs' folders (description, script, log) have served once their keys finished.
    let jobs = || std::fs::read_dir(slurm.path().join("cache/jobs/slurm")).unwrap().count();
    assert_eq!(jobs(), 4);
    let gc = slurm.silkie(&["gc", "--format", "json"]).json();
    assert_eq!(gc["jobs_removed"], 4, "{gc}");
    assert_eq!(jobs(), 0);
}

#[test]
fn a_job_sbatch_refuses_fails_its_instance_naming_the_stage_key_and_why() {
    let _one_at_a_time = one_at_a_time();
    let Some(ws) = slurm_workspace(
        "version: 1
stages:
  nowhere:
    kind: command
    runtime: { executor: slurm, slurm: { partition: no-such-partition } }
    params: { cmd: \"true nowhere\" }
  no-tpu:
    kind: command
    runtime: { executor: slurm, slurm: { gres: \"tpu:1\" } }
    params: { cmd: \"true no-tpu\" }
  five-gpus:
    kind: command
    runtime: { executor: slurm, slurm: { gres: \"gpu:5\" } }
    params: { cmd: \"true five-gpus\" }
  fine:
    kind: command
    runtime: { executor: slurm }
    params: { cmd: \"true fine\" }
",
    ) else {
        return;
    };
    let ran = ws.silkie(&["run", "--format", "json"]);
    assert_eq!(ran.code, 1, "{}\n{}", ran.stdout, ran.stderr);
    let record = ran.json();
    let error = instance(&record, "nowhere")["error"].as_str().unwrap().to_string();
    assert!(error.contains("`runtime.slurm`: sbatch refused the job"), "{error}");
    assert!(error.contains("Invalid partition name specified"), "{error}");
    let error = instance(&record, "no-tpu")["error"].as_str().unwrap();
    assert!(error.contains("Invalid generic resource (gres) specification"), "{error}");
    let error = instance(&record, "five-gpus")["error"].as_str().unwrap();
    assert!(error.contains("Requested node configuration is not available"), "{error}");
    assert_eq!(status_of(&record, "fine"), "ran");

    ws.write("pipeline.yaml", "version: 1\nstages:\n  late:\n    kind: command\n    runtime: { executor: slurm, slurm: { time: \"-5\" } }\n    params: { cmd: \"true\" }\n");
    let bad = ws.silkie(&["run"]);
    assert_eq!(bad.code, 2, "{}\n{}", bad.stdout, bad.stderr);
    assert!(
        bad.stderr.contains("stages.late.runtime.slurm.time") && bad.stderr.contains("not a Slurm time limit"),
        "{}",
        bad.stderr
    );
}

/// What `check` finds, asked every `pause_ms` until it finds something; fails after `seconds`,
/// naming what it waited for.
fn eventually<T>(seconds: u64, pause_ms: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(std::time::Instant::now() < deadline, "waited {seconds} s for {what} in vain");
        std::thread::sleep(std::time::Duration::from_millis(pause_ms));
    }
}

/// Waits (at most three minutes: other tests' jobs may hold the cluster's two CPUs) for the
/// workspace file `rel`, which a job writes once it runs.
fn wait_for(ws: &Workspace, rel: &str) -> String {
    eventually(180, 100, &format!("a job to write {rel}"), || {
        let text = std::fs::read_to_string(ws.path().join(rel)).ok()?;
        Some(text.trim().to_string()).filter(|t| !t.is_empty())
    })
}

fn finished(child: std::process::Child) -> Value {
    let out = child.wait_with_output().unwrap();
    let ran: common::Ran = out.into();
    ran.json()
}

#[test]
fn a_cancelled_job_fails_its_instance_skips_its_dependents_and_its_siblings_finish() {
    let _one_at_a_time = one_at_a_time();
    let Some(ws) = slurm_workspace(
        "version: 1
stages:
  work:
    kind: command
    matrix: { n: [1, 2] }
    runtime: { executor: slurm }
    params:
      cmd: if [ ${matrix.n} = 1 ]; then echo $SLURM_JOB_ID > started-1; sleep 120; fi; echo ${matrix.n} > out/w-${matrix.n}.txt
      outs: [\"out/w-${matrix.n}.txt\"]
  after:
    kind: command
    needs: [work]
    runtime: { executor: slurm }
    params:
      cmd: echo after ${matrix.n} > out/a-${matrix.n}.txt
      outs: [\"out/a-${matrix.n}.txt\"]
",
    ) else {
        return;
    };
    let check = ws.silkie(&["validate"]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    let driver = ws
        .command(&["run", "--format", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let id = wait_for(&ws, "started-1");
    let _cancel = CancelOnDrop(id.clone());
    let status = ws.silkie(&["status"]).stdout;
    assert!(status.contains(&format!("now running on Slurm (job {id} on ")), "{status}");
    assert!(Command::new("scancel").arg(&id).status().unwrap().success());
    let record = finished(driver);
    let status = ws.silkie(&["status"]).stdout;
    assert!(status.contains(&format!("last run failed: Slurm job {id} ended CANCELLED")), "{status}");
    assert_eq!(status_of(&record, "work[n=1]"), "failed");
    let error = instance(&record, "work[n=1]")["error"].as_str().unwrap();
    assert!(error.starts_with(&format!("Slurm job {id} ended CANCELLED")), "{error}");
    assert_eq!(status_of(&record, "after[n=1]"), "skipped");
    assert_eq!(status_of(&record, "work[n=2]"), "ran");
    assert_eq!(status_of(&record, "after[n=2]"), "ran");
    assert_eq!(ws.read("out/a-2.txt").trim(), "after 2");
}

#[test]
fn a_job_past_its_time_limit_fails_its_instance_with_timeout() {
    let _one_at_a_time = one_at_a_time();
    let Some(ws) = slurm_workspace(
        "version: 1\nstages:\n  slow:\n    kind: command\n    runtime: { executor: slurm, slurm: { time: \"1\" } }\n    params: { cmd: \"echo started; sleep 600\" }\n",
    ) else {
        return;
    };
    let ran = ws.silkie(&["run", "--format", "json"]);
    assert_eq!(ran.code, 1, "{}\n{}", ran.stdout, ran.stderr);
    let record = ran.json();
    let error = instance(&record, "slow")["error"].as_str().unwrap();
    assert!(error.contains("ended TIMEOUT") && error.contains("reason TimeLimit"), "{error}");
    assert!(error.contains("DUE TO TIME LIMIT"), "the log's tail: {error}");
}

#[test]
fn a_driver_killed_while_its_job_runs_adopts_the_job_when_restarted() {
    let _one_at_a_time = one_at_a_time();
    let Some(ws) = slurm_workspace(&format!(
        "version: 1\nstages:\n  slow:\n    kind: command\n    runtime: {{ executor: slurm }}\n    params: {{ cmd: \"echo $SLURM_JOB_ID > started; until [ -f go ]; do sleep 0.1; done; echo done > out.txt # {}\", outs: [out.txt] }}\n",
        nonce()
    )) else {
        return;
    };
    let mut driver = ws.command(&["run"]).stdout(std::process::Stdio::null()).spawn().unwrap();
    let id = wait_for(&ws, "started");
    let _cancel = CancelOnDrop(id.clone());
    driver.kill().unwrap(); // SIGKILL: the driver cannot cancel or clean up
    driver.wait().unwrap();
    // The job runs on until the restarted driver has had time to find it.
    let restarted = ws.command(&["run", "--format", "json"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    ws.write("go", "");
    let record = finished(restarted);
    let placement = &instance(&record, "slow")["placement"];
    assert_eq!(placement["job_id"], id.as_str(), "the restarted driver did not adopt job {id}: {placement}");
    let key = instance(&record, "slow")["key"].as_str().unwrap();
    let listed = Command::new("squeue").args(["-h", "-t", "all", "-o", "%i|%j"]).output().unwrap();
    let jobs: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|l| l.split_once('|'))
        .filter(|(_, name)| name.starts_with(&format!("silkie-{}", &key[..16])))
        .map(|(id, _)| id.to_string())
        .collect();
    assert_eq!(jobs, [id], "the instance was submitted again");
    assert_eq!(ws.read("out.txt").trim(), "done");
}

#[test]
fn a_cancelled_dpo_job_resumes_on_rerun_and_ends_with_the_uninterrupted_weights() {
    let _one_at_a_time = one_at_a_time();
    if !cluster_up() {
        return;
    }
    // 256 steps, saved every 4: the job is cancelled long before its end.
    let pipeline = dpo_pipeline(8, 2).replace("seed: 7 }", "seed: 7, checkpoint_every: 4 }");
    let setup = || {
        let ws = Workspace::new();
        ws.write("pairs.csv", &counting_pairs_csv(64));
        ws.write("pipeline.yaml", &pipeline);
        ws
    };
    let whole = setup().run(&[]);
    let ws = setup();
    let mut driver = ws
        .command(&["run", "--executor", "slurm"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let scratch = ws.path().join("cache/scratch");
    let saved = || {
        std::fs::read_dir(&scratch)
            .ok()
            .into_iter()
            .flatten()
            .flatten()
            .find(|d| d.path().join("latest").is_file())
            .map(|d| d.file_name().to_string_lossy().into_owned())
    };
    let key = eventually(180, 2, &format!("a save in {}", scratch.display()), saved);
    let listed = Command::new("squeue").args(["-h", "-o", "%i|%j"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let id = listed
        .lines()
        .filter_map(|l| l.split_once('|'))
        .find(|(_, name)| name.starts_with(&format!("silkie-{}", &key[..16])))
        .map(|(id, _)| id.to_string())
        .unwrap_or_else(|| panic!("the dpo job ended before it could be cancelled: {listed}"));
    assert!(Command::new("scancel").arg(&id).status().unwrap().success());
    assert_eq!(driver.wait().unwrap().code(), Some(1), "the cancelled instance did not fail the run");

    let mut rerun = ws.command(&["run", "--executor", "slurm", "--format", "json"]);
    rerun.env("SILKIE_LOG", "silkie=info");
    let rerun: common::Ran = rerun.output().unwrap().into();
    assert_eq!(rerun.code, 0, "{}\n{}", rerun.stdout, rerun.stderr);
    let record = rerun.json();
    let placement = &instance(&record, "policy")["placement"];
    assert_ne!(placement["job_id"], id.as_str(), "{placement}");
    let rerun_job = placement["job_id"].as_str().expect("the rerun ran the instance as a job");
    let log = ws.path().join(format!("cache/jobs/slurm/{key}/job-{rerun_job}.log"));
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(log.contains("resuming after step"), "the job started over:\n{log}");
    assert_eq!(
        instance(&record, "policy")["outputs"]["checkpoint"],
        instance(&whole, "policy")["outputs"]["checkpoint"],
        "the resumed job ended with other weights"
    );
}

#[test]
fn a_calling_job_adds_to_a_copy_of_the_memo_that_the_driver_merges_so_no_call_is_paid_twice() {
    let _one_at_a_time = one_at_a_time();
    if !cluster_up() {
        return;
    }
    let server = server::Server::start(|_| server::Fault::None);
    let ws = Workspace::new();
    ws.write("instructions.csv", "id,prompt\nq1,What is shown?\nq2,How many?\nq3,Which colour?\n");
    ws.write(
        "pipeline.yaml",
        &format!(
            "version: 1
models:
  model-a: {{ provider: openai, model: model-a, base_url: \"{}\" }}
stages:
  instructions: {{ kind: load, params: {{ path: instructions.csv }} }}
  responses:
    kind: sample
    needs: [instructions]
    params: {{ pool: [model-a], per_instruction: 1, max_tokens: 16 }}
",
            server.url
        ),
    );
    let record = ws.run(&["--executor", "slurm"]);
    assert_eq!(instance(&record, "responses")["placement"]["executor"], "slurm");
    assert_eq!(server.request_count(), 3);
    let forced = ws.run(&["--force", "responses"]);
    assert_eq!(status_of(&forced, "responses"), "ran");
    assert_eq!(server.request_count(), 3, "the job's calls did not reach the cache's memo");
    ws.run(&["--executor", "slurm", "--force", "responses"]);
    assert_eq!(server.request_count(), 3, "the job's copy of the memo did not answer");
    let leftovers: Vec<_> = std::fs::read_dir(ws.path().join("cache/jobs/slurm"))
        .unwrap()
        .flatten()
        .filter(|d| d.path().join("calls.sqlite").exists())
        .collect();
    assert!(leftovers.is_empty(), "a job's memo copy was left behind");
}

/// The job's state as the controller has it, once it is `want` (waiting up to 30 s).
fn job_state_becomes(id: &str, want: &str) -> String {
    eventually(30, 200, &format!("job {id} to be {want}"), || {
        let fields = controller_fields(id);
        let state = fields.split_whitespace().find_map(|f| f.strip_prefix("JobState="))?.to_string();
        Some(state).filter(|s| s == want)
    })
}

#[test]
fn an_interrupted_driver_cancels_its_jobs_when_told_to_and_otherwise_leaves_them_for_a_rerun() {
    let _one_at_a_time = one_at_a_time();
    if !cluster_up() {
        return;
    }
    for cancel in [true, false] {
        let ws = Workspace::new();
        ws.write(
            "pipeline.yaml",
            &format!(
                "version: 1\nstages:\n  slow:\n    kind: command\n    runtime: {{ executor: slurm }}\n    params: {{ cmd: \"echo $SLURM_JOB_ID > started; sleep 120 # {}\" }}\n",
                nonce()
            ),
        );
        let args: &[&str] = if cancel { &["run", "--cancel-on-exit"] } else { &["run"] };
        let mut driver = ws
            .command(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let id = wait_for(&ws, "started");
        let _cancel = CancelOnDrop(id.clone());
        assert!(Command::new("kill").args(["-INT", &driver.id().to_string()]).status().unwrap().success());
        let status = driver.wait().unwrap();
        let mut said = String::new();
        std::io::Read::read_to_string(&mut driver.stderr.take().unwrap(), &mut said).unwrap();
        assert_eq!(status.code(), Some(130), "{said}");
        if cancel {
            assert!(said.contains(&format!("cancelled 1 slurm job(s): {id}")), "{said}");
            assert_eq!(job_state_becomes(&id, "CANCELLED"), "CANCELLED");
        } else {
            assert!(said.contains("a rerun adopts them"), "{said}");
            assert_eq!(job_state_becomes(&id, "RUNNING"), "RUNNING");
            Command::new("scancel").arg(&id).status().unwrap();
        }
    }
}
