//! The `dpo` stage end to end on a small pairs table.

mod common;

use common::{Workspace, ran, status_of};

fn pairs_csv(n: usize) -> String {
    common::counting_pairs_csv(n)
}

fn pipeline() -> String {
    common::dpo_pipeline(3, 8)
}

#[test]
fn trains_and_writes_a_checkpoint_and_trl_metrics() {
    let ws = Workspace::new();
    ws.write("pairs.csv", &pairs_csv(32));
    ws.write("pipeline.yaml", &pipeline());
    let record = ws.run(&[]);
    assert_eq!(status_of(&record, "policy"), "ran");
    let rows = policy_rows(&ws);
    assert_eq!(rows.len(), 3 * 4, "3 epochs of 4 batches");
    for key in [
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
        "lr",
        "grad_norm",
    ] {
        assert!(rows[0].get(key).is_some(), "no `{key}` in {}", rows[0]);
    }
    assert!((rows[0]["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-5, "{}", rows[0]);
    assert_eq!(rows[0]["rewards/accuracies"], 0.0);
    let last = rows.last().unwrap();
    assert!(last["loss"].as_f64().unwrap() < rows[0]["loss"].as_f64().unwrap(), "the loss did not fall");
    // The same seed trains the same weights: a rerun after a forced retrain gives the same checkpoint.
    let first = record["instances"].as_array().unwrap().iter().find(|i| i["name"] == "policy").unwrap()["outputs"]["checkpoint"]["digest"].clone();
    let again = ws.run(&["--force", "policy"]);
    let second =
        again["instances"].as_array().unwrap().iter().find(|i| i["name"] == "policy").unwrap()["outputs"]["checkpoint"]
            ["digest"]
            .clone();
    assert_eq!(first, second, "training is not reproducible");
}

#[cfg(not(feature = "tch"))]
#[test]
fn a_libtorch_device_without_the_feature_fails_clearly() {
    let ws = Workspace::new();
    ws.write("pairs.csv", &pairs_csv(4));
    ws.write("pipeline.yaml", &format!("{}    runtime: {{ device: libtorch-cuda:0 }}\n", pipeline()));
    let out = ws.silkie(&["run"]);
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains("needs silkie built with the `tch` feature"), "{}", out.stdout);
}

#[test]
fn lora_training_writes_a_merged_checkpoint_or_one_with_adapters_apart() {
    let ws = Workspace::new();
    ws.write("pairs.csv", &pairs_csv(16));
    ws.write(
        "pipeline.yaml",
        &pipeline().replace("seed: 7 }", "seed: 7, lora: { r: 4, alpha: 8, targets: [attention, mlp] } }"),
    );
    let record = ws.run(&[]);
    assert_eq!(status_of(&record, "policy"), "ran");
    let rows = policy_rows(&ws);
    assert!((rows[0]["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-5);
    let checkpoint = record["instances"].as_array().unwrap().iter().find(|i| i["name"] == "policy").unwrap()["outputs"]
        ["checkpoint"]
        .clone();
    assert_eq!(checkpoint["kind"], "dir");
    // The merged checkpoint loads as a plain tiny model.
    let store = silkie::store::Store::open(&ws.path().join("cache")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    store.restore_dir(checkpoint["digest"].as_str().unwrap(), dir.path()).unwrap();
    let (_, config) = silkie::model::checkpoint::load(dir.path(), &burn::tensor::Device::flex()).unwrap();
    assert_eq!(config.d_model, 32);
    assert!(!dir.path().join("adapter.json").exists());
    // Kept apart, the adapters travel with the base weights and load merged.
    ws.write(
        "pipeline.yaml",
        &pipeline()
            .replace("seed: 7 }", "seed: 7, lora: { r: 4, alpha: 8, targets: [attention, mlp] }, merge_lora: false }"),
    );
    let record = ws.run(&[]);
    let digest = output_digest(&record, "policy", "checkpoint");
    let dir = tempfile::tempdir().unwrap();
    store.restore_dir(&digest, dir.path()).unwrap();
    assert!(dir.path().join("adapter.json").exists());
    silkie::model::checkpoint::load(dir.path(), &burn::tensor::Device::flex()).unwrap();
}

fn output_digest(record: &serde_json::Value, instance: &str, output: &str) -> String {
    let inst = record["instances"].as_array().unwrap().iter().find(|i| i["name"] == instance).unwrap();
    inst["outputs"][output]["digest"].as_str().unwrap_or_else(|| panic!("no {instance}.{output} in {inst}")).to_string()
}

/// A run long enough to be killed part-way: 64 pairs in batches of 2, 3 epochs, a save every 4 steps.
fn long_pipeline() -> String {
    pipeline()
        .replace("epochs: 3, batch_size: 8, seed: 7 }", "epochs: 3, batch_size: 2, seed: 7, checkpoint_every: 4 }")
}

#[test]
fn a_killed_run_resumes_from_its_last_save_and_ends_with_the_same_weights() {
    let whole = Workspace::new();
    whole.write("pairs.csv", &pairs_csv(64));
    whole.write("pipeline.yaml", &long_pipeline());
    let uninterrupted = whole.run(&[]);

    let ws = Workspace::new();
    ws.write("pairs.csv", &pairs_csv(64));
    ws.write("pipeline.yaml", &long_pipeline());
    let scratch = common::kill_after_first_save(&ws);
    // gc keeps the saved progress of the unfinished stage.
    let gc = ws.silkie(&["gc", "--format", "json"]).json();
    assert_eq!(gc["scratch_kept"], 1, "{gc}");
    assert!(gc["scratch_bytes_kept"].as_u64().unwrap() > 0, "{gc}");
    assert_eq!(gc["scratch"][0]["instance"], "policy", "{gc}");
    let text = ws.silkie(&["gc", "--dry-run"]).stdout;
    assert!(text.contains("(policy):") && text.contains("gc --scratch"), "{text}");

    let mut resumed = ws.command(&["run", "--format", "json"]);
    resumed.env("SILKIE_LOG", "silkie=info");
    let resumed: common::Ran = resumed.output().unwrap().into();
    assert_eq!(resumed.code, 0, "{}\n{}", resumed.stdout, resumed.stderr);
    assert!(resumed.stderr.contains("resuming after step"), "it started over:\n{}", resumed.stderr);
    let record = resumed.json();
    assert_eq!(status_of(&record, "policy"), "ran");
    assert_eq!(
        output_digest(&record, "policy", "checkpoint"),
        output_digest(&uninterrupted, "policy", "checkpoint"),
        "the resumed run ended with other weights"
    );
    assert_eq!(
        output_digest(&record, "policy", "training"),
        output_digest(&uninterrupted, "policy", "training"),
        "the resumed run logged other metrics"
    );
    assert!(std::fs::read_dir(&scratch).unwrap().next().is_none(), "the scratch space was not cleared");
}

#[test]
fn a_stage_checkpoint_is_the_base_of_another_and_changing_it_reruns_that() {
    let ws = Workspace::new();
    ws.write("pairs.csv", &pairs_csv(16));
    let two_stages = format!(
        "{}  again:\n    kind: dpo\n    needs: [pairs]\n    params: {{ base: {{ stage: policy }}, lr: 0.001, batch_size: 8 }}\n",
        pipeline()
    );
    ws.write("pipeline.yaml", &two_stages);
    let record = ws.run(&[]);
    assert_eq!(status_of(&record, "again"), "ran");
    let training = ws.silkie(&["show", "again.training", "--format", "json"]).json();
    // The reference is the base: step 0 starts at ln 2 again, from the trained policy.
    assert!((training[0]["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-5);
    let reference = ws.silkie(&["show", "again.reference", "--rows", "100", "--format", "json"]).json();
    assert_eq!(reference.as_array().unwrap().len(), 16, "one reference row per pair");
    // Retraining the base differently makes the dependent stage stale.
    ws.write("pipeline.yaml", &two_stages.replace("lr: 0.001, epochs: 3", "lr: 0.002, epochs: 3"));
    let record = ws.run(&[]);
    assert_eq!(ran(&record), vec!["again".to_string(), "policy".to_string()]);
}

#[test]
fn training_curves_plot_to_a_png() {
    let ws = Workspace::new();
    ws.write("pairs.csv", &pairs_csv(16));
    ws.write("pipeline.yaml", &pipeline());
    ws.run(&[]);
    let out = ws.silkie(&["show", "policy.training", "--plot", "curves.png"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let png = image::open(ws.path().join("curves.png")).unwrap().to_rgb8();
    // Loss, reward margin and reward accuracy: a panel each, under the title.
    assert_eq!(png.dimensions(), (960, 60 + 3 * 300));
    let colours: std::collections::HashSet<[u8; 3]> = png.pixels().map(|p| p.0).collect();
    for smoothed_line in [[31, 119, 180], [214, 39, 40], [44, 160, 44]] {
        assert!(colours.contains(&smoothed_line), "the curve drawn in {smoothed_line:?} is missing");
    }
    // A table that is not training metrics says so.
    let out = ws.silkie(&["show", "pairs", "--plot", "pairs.png"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("no `step` column"), "{}", out.stderr);
}

/// The policy answers instructions in-process through provider `local`.
fn local_pipeline(lr: &str) -> String {
    format!(
        "{}  instructions: {{ kind: load, params: {{ path: instructions.csv }} }}
  answers:
    kind: sample
    needs: [instructions]
    params: {{ pool: [{{ stage: policy, temperature: 0 }}, {{ stage: policy, temperature: 1.0 }}], per_instruction: 2, max_tokens: 12 }}
",
        pipeline().replace("lr: 0.001", lr)
    )
}

fn calls_line(stderr: &str) -> String {
    stderr.lines().find(|l| l.contains("answers") && l.contains("calls:")).unwrap_or_default().to_string()
}

#[test]
fn a_trained_checkpoint_answers_through_the_local_provider_and_the_memo() {
    let ws = Workspace::new();
    ws.write("pairs.csv", &pairs_csv(16));
    ws.write("instructions.csv", "id,prompt\nq1,How many? 1\nq2,How many? 3\nq3,How many? 4\n");
    ws.write("pipeline.yaml", &local_pipeline("lr: 0.001"));
    let run = |args: &[&str]| {
        let mut cmd = ws.command(&[&["run", "--format", "json"], args].concat());
        cmd.env("SILKIE_LOG", "silkie=info");
        let out: common::Ran = cmd.output().unwrap().into();
        assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
        out
    };
    let first = run(&[]);
    assert!(calls_line(&first.stderr).contains("6 sent"), "{}", first.stderr);
    let responses = ws.silkie(&["show", "answers.responses", "--format", "json"]).json();
    let rows = responses.as_array().unwrap();
    assert_eq!(rows.len(), 6, "two answers per instruction");
    assert!(rows.iter().all(|r| r["status"] == "ok" && r["response"].is_string()), "{responses}");
    let labels: std::collections::BTreeSet<&str> = rows.iter().map(|r| r["model"].as_str().unwrap()).collect();
    assert_eq!(labels.len(), 2, "{labels:?}");
    // Forced again: every answer comes from the memo, none is generated twice.
    let again = run(&["--force", "answers"]);
    assert!(calls_line(&again.stderr).contains("6 from the memo, 0 sent"), "{}", again.stderr);
    assert_eq!(ws.silkie(&["show", "answers.responses", "--format", "json"]).json(), responses);
    // A retrained policy is another model: its digest is in the call keys, so it answers anew.
    ws.write("pipeline.yaml", &local_pipeline("lr: 0.002"));
    let retrained = run(&[]);
    assert!(calls_line(&retrained.stderr).contains("0 from the memo, 6 sent"), "{}", retrained.stderr);
    // The same checkpoint computing in bf16 answers other numbers: other calls too.
    ws.write("pipeline.yaml", &format!("{}    runtime: {{ dtype: bf16 }}\n", local_pipeline("lr: 0.002")));
    let mixed = run(&[]);
    assert!(calls_line(&mixed.stderr).contains("0 from the memo, 6 sent"), "{}", mixed.stderr);
}

fn policy_rows(ws: &Workspace) -> Vec<serde_json::Value> {
    ws.silkie(&["show", "policy.training", "--rows", "100", "--format", "json"]).json().as_array().unwrap().clone()
}

#[test]
fn bf16_trains_in_mixed_precision_as_a_run_of_its_own() {
    let ws = Workspace::new();
    ws.write("pairs.csv", &pairs_csv(16));
    ws.write("pipeline.yaml", &pipeline());
    let exact = ws.run(&[]);
    let exact_rows = policy_rows(&ws);
    ws.write("pipeline.yaml", &format!("{}    runtime: {{ dtype: bf16 }}\n", pipeline()));
    let mixed = ws.run(&[]);
    assert_eq!(status_of(&mixed, "policy"), "ran", "bf16 computes other numbers: not a cache hit");
    assert_eq!(status_of(&mixed, "pairs"), "hit");
    assert_ne!(output_digest(&exact, "policy", "checkpoint"), output_digest(&mixed, "policy", "checkpoint"));
    let rows = policy_rows(&ws);
    // The reference computes as the policy does, in bf16 too: at step 0 they agree exactly.
    assert!((rows[0]["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-6, "{}", rows[0]);
    assert_eq!(rows[0]["rewards/margins"], 0.0, "{}", rows[0]);
    assert_eq!(rows[0]["rewards/accuracies"], 0.0, "{}", rows[0]);
    for (m, e) in rows.iter().zip(&exact_rows) {
        let (m, e) = (m["logps/chosen"].as_f64().unwrap(), e["logps/chosen"].as_f64().unwrap());
        assert!(((m - e) / e).abs() < 0.05, "bf16 log-probs {m} drifted from f32's {e}");
    }
    assert!(rows.last().unwrap()["loss"].as_f64().unwrap() < rows[0]["loss"].as_f64().unwrap());
    // Back to f32: the first run's checkpoint, from the cache.
    ws.write("pipeline.yaml", &pipeline());
    assert_eq!(status_of(&ws.run(&[]), "policy"), "hit");
}

#[test]
fn an_unknown_dtype_is_refused_before_anything_runs() {
    let ws = Workspace::new();
    ws.write("pairs.csv", &pairs_csv(4));
    ws.write("pipeline.yaml", &format!("{}    runtime: {{ dtype: fp16 }}\n", pipeline()));
    let out = ws.silkie(&["run"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let want = "pipeline.yaml:8:16: stages.policy.runtime.dtype: unknown variant `fp16`, expected one of `f32`";
    assert!(out.stderr.contains(want), "{}", out.stderr);
    // bf16 where no checkpoint runs would change nothing: said, not ignored.
    ws.write(
        "pipeline.yaml",
        "version: 1
models:
  remote: { provider: openai, model: m, base_url: \"http://127.0.0.1:9\" }
stages:
  pairs: { kind: load, params: { path: pairs.csv } }
  answers:
    kind: sample
    inputs: { instructions: pairs.table }
    params: { pool: [remote], per_instruction: 1 }
    runtime: { dtype: bf16 }
",
    );
    let out = ws.silkie(&["run"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let want = "stages.answers.runtime.dtype: bf16 applies to the checkpoints a stage runs";
    assert!(out.stderr.contains(want), "{}", out.stderr);
}

#[test]
fn an_image_column_of_paths_loaded_without_images_is_named_with_the_fix() {
    let ws = Workspace::new();
    let mut csv = String::from("prompt,chosen,rejected,image\n");
    for i in 0..4 {
        csv.push_str(&format!("How many? {i},{i} items.,{} items.,img/{i}.png\n", i + 1));
        ws.write(&format!("img/{i}.png"), "a file that exists");
    }
    ws.write("pairs.csv", &csv);
    ws.write("pipeline.yaml", &pipeline());
    let out = ws.silkie(&["run", "--format", "json"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let error = out.json()["instances"].as_array().unwrap().iter().find(|i| i["name"] == "policy").unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains("table `pairs`, row 1: `image` is \"img/0.png\", which is not an image in the store"),
        "{error}"
    );
    assert!(error.contains("`images: FOLDER`"), "{error}");
}

#[test]
fn off_a_terminal_training_logs_progress_lines() {
    let ws = Workspace::new();
    ws.write("pairs.csv", &pairs_csv(16));
    ws.write("pipeline.yaml", &pipeline());
    // Output to a pipe, not a terminal; an interval of 0 logs after every step.
    let out: common::Ran =
        ws.command(&["run", "--progress-interval", "0"]).env("SILKIE_LOG", "silkie=info").output().unwrap().into();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().filter(|l| l.contains("policy: ") && l.contains(" steps (")).collect();
    assert_eq!(lines.len(), 3 * 2, "a line per step of 3 epochs of 2 batches:\n{}", out.stderr);
    let last = lines.last().unwrap();
    for part in ["6/6 steps (100 %)", "loss ", "margin ", "tokens/s", "elapsed ", "remaining 0:00"] {
        assert!(last.contains(part), "no `{part}` in {last}");
    }
}

/// A sampler over `pool`, answering the three counting instructions.
fn sampler(name: &str, pool: &str) -> String {
    format!(
        "  {name}:\n    kind: sample\n    needs: [instructions]\n    params: {{ pool: [{pool}], per_instruction: 1, max_tokens: 12 }}\n"
    )
}

#[test]
fn an_exported_checkpoint_folder_is_the_same_model_by_path() {
    let ws = Workspace::new();
    ws.write("pairs.csv", &pairs_csv(16));
    ws.write("instructions.csv", "id,prompt\nq1,How many? 1\nq2,How many? 3\nq3,How many? 4\n");
    let trained = format!(
        "{}  instructions: {{ kind: load, params: {{ path: instructions.csv }} }}\n{}  export: {{ kind: export, needs: [policy], params: {{ path: models/policy, format: checkpoint }} }}\n",
        pipeline(),
        sampler("by_stage", "{ stage: policy, temperature: 0 }")
    );
    ws.write("pipeline.yaml", &trained);
    let record = ws.run(&[]);
    let checkpoint = output_digest(&record, "policy", "checkpoint");
    assert_eq!(output_digest(&record, "export", "checkpoint"), checkpoint, "exported as stored");
    assert!(ws.path().join("models/policy").is_dir());

    // The folder is the model by content: its answers are the stage's, from the memo, and a
    // dpo stage based on it trains exactly as one based on the stage does.
    let by_path = format!(
        "{}  instructions: {{ kind: load, params: {{ path: instructions.csv }} }}\n{}{}  from_stage:\n    kind: dpo\n    needs: [pairs]\n    params: {{ base: {{ stage: policy }}, lr: 0.001, batch_size: 8 }}\n  from_folder:\n    kind: dpo\n    needs: [pairs]\n    params: {{ base: {{ path: models/policy }}, lr: 0.001, batch_size: 8 }}\n",
        pipeline(),
        sampler("by_stage", "{ stage: policy, temperature: 0 }"),
        sampler("by_path", "{ path: models/policy, temperature: 0 }"),
    );
    ws.write("pipeline.yaml", &by_path);
    let out = ws.command(&["run", "--format", "json"]).env("SILKIE_LOG", "silkie=info").output().unwrap();
    let out: common::Ran = out.into();
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let calls = out.stderr.lines().find(|l| l.contains("by_path") && l.contains("calls:")).unwrap_or_default();
    assert!(calls.contains("3 from the memo, 0 sent"), "{}", out.stderr);
    let answers = |stage: &str| {
        let rows = ws.silkie(&["show", &format!("{stage}.responses"), "--format", "json"]).json();
        rows.as_array().unwrap().iter().map(|r| r["response"].clone()).collect::<Vec<_>>()
    };
    assert_eq!(answers("by_path"), answers("by_stage"));
    let record = out.json();
    assert_eq!(output_digest(&record, "from_folder", "checkpoint"), output_digest(&record, "from_stage", "checkpoint"));

    // Unchanged, nothing reruns; a changed folder is another model, so what reads it reruns.
    assert!(ran(&ws.run(&[])).is_empty());
    ws.write("models/policy/NOTES.txt", "tuned on counting pairs\n");
    let record = ws.run(&[]);
    assert_eq!(ran(&record), vec!["by_path".to_string(), "from_folder".to_string()]);

    // A folder that is not there is named, and a `models:` entry is no base to train.
    ws.write("pipeline.yaml", &by_path.replace("base: { path: models/policy }", "base: { path: models/nowhere }"));
    let out = ws.silkie(&["run"]);
    assert_ne!(out.code, 0);
    assert!(out.stdout.contains("cannot read the checkpoint folder `models/nowhere`: no such file"), "{}", out.stdout);
    let tiny =
        "{ init: tiny, image_size: 16, patch_size: 8, d_model: 32, layers: 1, heads: 2, d_ff: 64, max_tokens: 32 }";
    ws.write("pipeline.yaml", &pipeline().replace(tiny, "gpt"));
    let out = ws.silkie(&["validate"]);
    assert_ne!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        text.contains("`gpt` names a `models:` entry, which its provider serves and silkie cannot train"),
        "{text}"
    );
}

#[test]
fn runtime_threads_gives_the_stage_a_pool_of_that_size() {
    // A batch's pairs are split over the pool's threads, so their number reaches the weights'
    // last bits: `runtime.threads` pins it, as RAYON_NUM_THREADS does for a whole run.
    let digest = |runtime: Option<usize>, rayon_threads: Option<usize>| {
        let ws = Workspace::new();
        ws.write("pairs.csv", &pairs_csv(16));
        let mut pipeline = pipeline();
        if let Some(n) = runtime {
            pipeline += &format!("    runtime: {{ threads: {n} }}\n");
        }
        ws.write("pipeline.yaml", &pipeline);
        let mut run = ws.command(&["run", "--format", "json"]);
        if let Some(n) = rayon_threads {
            run.env("RAYON_NUM_THREADS", n.to_string());
        }
        let out = run.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        output_digest(&serde_json::from_slice(&out.stdout).unwrap(), "policy", "checkpoint")
    };
    for n in [1, 2] {
        assert_eq!(digest(Some(n), Some(3)), digest(None, Some(n)), "threads: {n}");
    }
    assert_ne!(digest(None, Some(1)), digest(None, Some(2)), "the thread count reaches the weights");
}

#[test]
fn gradient_checkpointing_trains_the_same_weights_and_only_training_stages_take_it() {
    // Recomputing activations in the backward pass changes memory, not numbers.
    let digest = |runtime: &str| {
        let ws = Workspace::new();
        ws.write("pairs.csv", &pairs_csv(16));
        ws.write("pipeline.yaml", &format!("{}{runtime}", pipeline()));
        let out = ws.command(&["run", "--format", "json"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        output_digest(&serde_json::from_slice(&out.stdout).unwrap(), "policy", "checkpoint")
    };
    assert_eq!(digest("    runtime: { gradient_checkpointing: true }\n"), digest(""));
    let ws = Workspace::new();
    ws.write("pairs.csv", &pairs_csv(4));
    ws.write(
        "pipeline.yaml",
        "version: 1\nstages:\n  pairs: { kind: load, params: { path: pairs.csv }, runtime: { gradient_checkpointing: true } }\n",
    );
    let out = ws.silkie(&["validate"]);
    assert_ne!(out.code, 0);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains("stages.pairs.runtime.gradient_checkpointing") && text.contains("trains none"), "{text}");
}
