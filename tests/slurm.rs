//! The Slurm executor against a real one-node Slurm cluster, which `scripts/slurm-cluster`
//! starts (as `scripts/test` does). Without one the tests say so loudly and pass — except under
//! CI, where a cluster that does not start fails them.

mod common;

use std::process::Command;
use std::sync::OnceLock;

use common::{Workspace, counting_pairs_csv, dpo_pipeline, status_of};
use serde_json::Value;

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
",
        dpo_pipeline(1, 4)
    )
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
            fields.contains(&format!("JobName=silkie-{}", &key[..20])),
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
}

#[test]
fn a_job_sbatch_refuses_fails_its_instance_naming_the_stage_key_and_why() {
    if !cluster_up() {
        return;
    }
    let ws = Workspace::new();
    ws.write(
        "pipeline.yaml",
        "version: 1
stages:
  nowhere:
    kind: command
    runtime: { executor: slurm, slurm: { partition: no-such-partition } }
    params: { cmd: \"true\" }
  fine:
    kind: command
    runtime: { executor: slurm }
    params: { cmd: \"true\" }
",
    );
    let ran = ws.silkie(&["run", "--format", "json"]);
    assert_eq!(ran.code, 1, "{}\n{}", ran.stdout, ran.stderr);
    let record = ran.json();
    let error = instance(&record, "nowhere")["error"].as_str().unwrap().to_string();
    assert!(error.contains("`runtime.slurm`: sbatch refused the job"), "{error}");
    assert!(error.contains("Invalid partition name specified"), "{error}");
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
