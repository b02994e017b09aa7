//! Incremental behaviour users rely on: no-op reruns, precise invalidation, early cut-off,
//! renames, `--set` and `extends` ablations, matrix fan-out.

mod common;

use common::{Workspace, ran, status_of, statuses};
use serde_json::json;

const DATA: &str = "id,text,score\n1,a,3\n2,b,5\n3,c,1\n4,d,4\n";

/// load → normalize (command) → export, plus an independent branch.
const PIPELINE: &str = r#"
version: 1
name: demo
vars: { threshold: 3 }
stages:
  raw:
    kind: load
    params: { path: data/input.csv }
  high:
    kind: command
    needs: [raw]
    params:
      cmd: awk -F, 'NR == 1 || $3 >= ${vars.threshold}' data/input.csv > out/high.csv
      deps: [data/input.csv]
      outs: [out/high.csv]
  export:
    kind: export
    needs: [high]
    params: { path: out/high.jsonl }
  side:
    kind: export
    needs: [raw]
    params: { path: out/raw.parquet }
"#;

fn workspace() -> Workspace {
    let ws = Workspace::new();
    ws.write("data/input.csv", DATA);
    ws.write("pipeline.yaml", PIPELINE);
    ws
}

#[test]
fn second_run_executes_nothing() {
    let ws = workspace();
    let first = ws.run(&[]);
    assert_eq!(ran(&first), ["export", "high", "raw", "side"]);
    let second = ws.run(&[]);
    assert!(statuses(&second).iter().all(|(_, s)| s == "hit"), "{second}");
    assert_eq!(ws.read("out/high.jsonl").lines().count(), 3);
    let status = ws.silkie(&["status", "--format", "json"]).json();
    assert!(status.as_array().unwrap().iter().all(|s| s["state"] == "fresh"), "{status}");
}

#[test]
fn a_changed_param_reruns_that_stage_and_its_dependents_and_explain_names_it() {
    let ws = workspace();
    ws.run(&[]);
    ws.write("pipeline.yaml", &PIPELINE.replace("threshold: 3", "threshold: 4"));
    let status = ws.silkie(&["status", "--format", "json"]).json();
    let state = |name: &str| status.as_array().unwrap().iter().find(|s| s["name"] == name).unwrap()["state"].clone();
    assert_eq!(state("raw"), "fresh");
    assert_eq!(state("high"), "stale");
    assert_eq!(state("export"), "pending");

    let explain = ws.silkie(&["explain", "high", "--format", "json"]).json();
    assert_eq!(explain["name"], "high");
    let changes = explain["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{explain}");
    assert_eq!(changes[0]["path"], "params.cmd");
    assert!(changes[0]["old"].as_str().unwrap().contains(">= 3"));
    assert!(changes[0]["new"].as_str().unwrap().contains(">= 4"));

    let second = ws.run(&[]);
    assert_eq!(ran(&second), ["export", "high"]);
    assert_eq!(ws.read("out/high.jsonl").lines().count(), 2);
}

#[test]
fn explain_names_a_typed_param_with_old_and_new_value() {
    let ws = workspace();
    ws.run(&[]);
    let explain = ws.silkie(&["explain", "side", "--set", "stages.side.params.format=csv", "--format", "json"]).json();
    assert_eq!(explain["changes"], json!([{"path": "params.format", "old": "parquet", "new": "csv"}]));
    // `STAGE.params.KEY` is short for `stages.STAGE.params.KEY`.
    let text = ws.silkie(&["explain", "side", "--set", "side.params.format=csv"]);
    assert!(text.stdout.contains("params.format: \"parquet\" → \"csv\""), "{}", text.stdout);
}

#[test]
fn identical_bytes_keep_dependents_fresh() {
    let ws = workspace();
    ws.run(&[]);
    // A new command that writes the same bytes: the stage reruns, its dependent does not.
    let edited = PIPELINE.replace("> out/high.csv", "| cat > out/high.csv");
    ws.write("pipeline.yaml", &edited);
    let second = ws.run(&[]);
    assert_eq!(status_of(&second, "high"), "ran");
    assert_eq!(status_of(&second, "export"), "hit");
}

#[test]
fn a_renamed_stage_is_a_cache_hit() {
    let ws = workspace();
    ws.run(&[]);
    let renamed = PIPELINE
        .replace("  side:", "  side_copy:")
        .replace("raw:", "source:")
        .replace("needs: [raw]", "needs: [source]");
    ws.write("pipeline.yaml", &renamed);
    let second = ws.run(&[]);
    assert!(statuses(&second).iter().all(|(_, s)| s == "hit"), "{second}");
}

#[test]
fn set_and_extends_ablations_reuse_unchanged_upstream_stages() {
    let ws = workspace();
    ws.run(&[]);
    let set = ws.run(&["--set", "vars.threshold=5"]);
    assert_eq!(ran(&set), ["export", "high"]);
    assert_eq!(status_of(&set, "raw"), "hit");
    assert_eq!(status_of(&set, "side"), "hit");

    ws.write(
        "ablation.yaml",
        "extends: pipeline.yaml\nname: ablation\nstages:\n  side:\n    params: { path: out/raw.csv }\n",
    );
    let ablation = ws.run(&["ablation.yaml"]);
    assert_eq!(ran(&ablation), ["side"]);
    assert_eq!(status_of(&ablation, "raw"), "hit");
    assert!(ws.read("out/raw.csv").starts_with("id,text,score"));
}

#[test]
fn a_deleted_output_file_is_restored_from_the_cache() {
    let ws = workspace();
    ws.run(&[]);
    std::fs::remove_file(ws.path().join("out/high.csv")).unwrap();
    std::fs::write(ws.path().join("out/high.jsonl"), "tampered").unwrap();
    let second = ws.run(&[]);
    assert!(statuses(&second).iter().all(|(_, s)| s == "hit"), "{second}");
    assert!(ws.read("out/high.csv").starts_with("id,text,score"));
    assert_eq!(ws.read("out/high.jsonl").lines().count(), 3);
}

#[test]
fn force_and_targets_limit_what_runs() {
    let ws = workspace();
    let only = ws.run(&["side"]);
    assert_eq!(ran(&only), ["raw", "side"]);
    let forced = ws.run(&["--force", "raw"]);
    assert_eq!(status_of(&forced, "raw"), "ran");
    // Same bytes again: early cut-off keeps `side` cached.
    assert_eq!(status_of(&forced, "side"), "hit");
    assert_eq!(status_of(&forced, "high"), "ran");
}

#[test]
fn matrix_stages_fan_out_downstream() {
    let ws = workspace();
    ws.write(
        "sweep.yaml",
        r#"
version: 1
stages:
  raw: { kind: load, params: { path: data/input.csv } }
  filtered:
    kind: command
    needs: [raw]
    matrix: { t: [2, 4] }
    params:
      cmd: awk -F, 'NR == 1 || $3 >= ${matrix.t}' data/input.csv > out/f${matrix.t}.csv
      deps: [data/input.csv]
      outs: ["out/f${matrix.t}.csv"]
  export:
    kind: export
    needs: [filtered]
    params: { path: "out/f${matrix.t}.jsonl" }
"#,
    );
    let record = ws.run(&["sweep.yaml"]);
    assert_eq!(ran(&record), ["export[t=2]", "export[t=4]", "filtered[t=2]", "filtered[t=4]", "raw"]);
    assert_eq!(ws.read("out/f2.jsonl").lines().count(), 3);
    assert_eq!(ws.read("out/f4.jsonl").lines().count(), 2);
    let dag = ws.silkie(&["dag", "sweep.yaml"]);
    assert!(dag.stdout.contains("export[t=4] (export)  ← filtered[t=4]"), "{}", dag.stdout);
}

#[test]
fn a_failing_stage_skips_its_dependents_and_the_rest_finish() {
    let ws = workspace();
    ws.write("pipeline.yaml", &PIPELINE.replace("awk -F,", "false && awk -F,"));
    let out = ws.silkie(&["run", "--format", "json"]);
    assert_eq!(out.code, 1);
    let record = out.json();
    assert_eq!(status_of(&record, "high"), "failed");
    assert_eq!(status_of(&record, "export"), "skipped");
    assert_eq!(status_of(&record, "side"), "ran");
    let text = ws.silkie(&["run"]);
    assert!(text.stdout.contains("high failed: `false && awk"), "{}", text.stdout);
}

#[test]
fn show_prints_rows_as_json() {
    let ws = workspace();
    ws.run(&[]);
    let rows = ws.silkie(&["show", "raw", "--rows", "2", "--format", "json"]).json();
    assert_eq!(rows, json!([{"id": 1, "text": "a", "score": 3}, {"id": 2, "text": "b", "score": 5}]));
    let export_rows = ws.silkie(&["show", "export.file", "--format", "json"]).json();
    assert_eq!(export_rows.as_array().unwrap().len(), 3);
}

#[test]
fn the_cache_location_follows_flags_and_env() {
    let ws = workspace();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = ws.command(&["run"]).env("SILKIE_CACHE", elsewhere.path()).output().unwrap();
    assert!(out.status.success());
    assert!(elsewhere.path().join("runs").read_dir().unwrap().count() == 1);
    assert!(!ws.path().join("cache").exists());
}

#[test]
fn a_use_file_is_merged_under_the_stage_and_its_bytes_are_in_the_key() {
    let ws = workspace();
    ws.write("stages/to-csv.yaml", "kind: export\nparams: { path: out/default.csv }\n");
    ws.write(
        "uses.yaml",
        "version: 1\nmodels:\n  judge: { provider: openai, model: gpt-4v }\nstages:\n  raw: { kind: load, params: { path: data/input.csv } }\n  out:\n    use: stages/to-csv.yaml\n    needs: [raw]\n    params: { path: \"out/${models.judge.model}.csv\" }\n",
    );
    let first = ws.run(&["uses.yaml"]);
    assert_eq!(status_of(&first, "out"), "ran");
    assert!(ws.read("out/gpt-4v.csv").starts_with("id,text,score"));
    // Editing the used file (even a comment) changes the key of the stage that uses it.
    ws.write("stages/to-csv.yaml", "# reviewed\nkind: export\nparams: { path: out/default.csv }\n");
    let explain = ws.silkie(&["explain", "out", "-f", "uses.yaml", "--format", "json"]).json();
    assert_eq!(explain["changes"][0]["path"], "files.stages/to-csv.yaml");
    let second = ws.run(&["uses.yaml"]);
    assert_eq!(ran(&second), ["out"]);
}

#[test]
fn dag_prints_text_mermaid_and_dot() {
    let ws = workspace();
    let mermaid = ws.silkie(&["dag", "--format", "mermaid"]);
    assert!(mermaid.stdout.starts_with("flowchart LR"), "{}", mermaid.stdout);
    assert_eq!(mermaid.stdout.matches("-->").count(), 3);
    let dot = ws.silkie(&["dag", "--format", "dot"]);
    assert!(dot.stdout.starts_with("digraph silkie {") && dot.stdout.matches("->").count() == 3, "{}", dot.stdout);
    let version = ws.silkie(&["--version"]);
    assert!(version.stdout.starts_with("silkie "));
}

#[test]
fn a_failed_dependency_skips_a_stage_whatever_order_they_finish_in() {
    let ws = Workspace::new();
    ws.write(
        "pipeline.yaml",
        r#"
version: 1
stages:
  a: { kind: command, params: { cmd: "echo a > a.txt && false", outs: [a.txt] } }
  b: { kind: command, params: { cmd: "sleep 0.3 && echo b > b.txt", outs: [b.txt] } }
  c: { kind: command, needs: [a, b], params: { cmd: "cat a.txt b.txt > c.txt", outs: [c.txt] } }
"#,
    );
    let out = ws.silkie(&["run", "--format", "json", "--jobs", "2"]);
    assert_eq!(out.code, 1);
    let record = out.json();
    assert_eq!(status_of(&record, "a"), "failed");
    assert_eq!(status_of(&record, "b"), "ran");
    assert_eq!(status_of(&record, "c"), "skipped");
    assert!(!ws.path().join("c.txt").exists());
}

#[test]
fn swapping_the_contents_of_two_command_inputs_is_not_a_cache_hit() {
    let ws = Workspace::new();
    ws.write(
        "pipeline.yaml",
        r#"
version: 1
vars: { va: 1, vb: 2 }
stages:
  a: { kind: command, params: { cmd: "echo ${vars.va} > a.txt", outs: [a.txt] } }
  b: { kind: command, params: { cmd: "echo ${vars.vb} > b.txt", outs: [b.txt] } }
  c: { kind: command, needs: [a, b], params: { cmd: "cat $SILKIE_IN_A_A_TXT > c.txt", outs: [c.txt] } }
"#,
    );
    ws.run(&[]);
    assert_eq!(ws.read("c.txt").trim(), "1");
    let swapped = ws.run(&["--set", "vars.va=2", "--set", "vars.vb=1"]);
    assert_eq!(status_of(&swapped, "c"), "ran");
    assert_eq!(ws.read("c.txt").trim(), "2");
}

#[test]
fn shell_variables_survive_interpolation_through_the_escape() {
    let ws = Workspace::new();
    ws.write(
        "pipeline.yaml",
        "version: 1\nstages:\n  a:\n    kind: command\n    matrix: { n: [1] }\n    params: { cmd: 'X=hi; echo \"$${X}-${matrix.n}\" > a.txt', outs: [a.txt], env: { stage: prod } }\n",
    );
    ws.run(&[]);
    assert_eq!(ws.read("a.txt").trim(), "hi-1");
}
