//! The `dpo` stage end to end on a small pairs table.

mod common;

use common::{Workspace, status_of};

fn pairs_csv(n: usize) -> String {
    let mut csv = String::from("prompt,chosen,rejected\n");
    for i in 0..n {
        // A learnable rule: the chosen answer repeats the question's number.
        csv.push_str(&format!("How many? {},{} items.,{} items.\n", i % 5, i % 5, (i + 2) % 5));
    }
    csv
}

const PIPELINE: &str = "version: 1
stages:
  pairs: { kind: load, params: { path: pairs.csv } }
  policy:
    kind: dpo
    needs: [pairs]
    params: { base: { init: tiny, image_size: 16, patch_size: 8, d_model: 32, layers: 1, heads: 2, d_ff: 64, max_tokens: 32 }, lr: 0.001, epochs: 3, batch_size: 8, seed: 7 }
";

#[test]
fn trains_and_writes_a_checkpoint_and_trl_metrics() {
    let ws = Workspace::new();
    ws.write("pairs.csv", &pairs_csv(32));
    ws.write("pipeline.yaml", PIPELINE);
    let record = ws.run(&[]);
    assert_eq!(status_of(&record, "policy"), "ran");
    let training = ws.silkie(&["show", "policy.training", "--rows", "100", "--format", "json"]).json();
    let rows = training.as_array().unwrap();
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

#[test]
fn a_libtorch_device_without_the_feature_fails_clearly() {
    let ws = Workspace::new();
    ws.write("pairs.csv", &pairs_csv(4));
    ws.write("pipeline.yaml", &format!("{PIPELINE}    runtime: {{ device: libtorch-cuda:0 }}\n"));
    let out = ws.silkie(&["run"]);
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains("needs silkie built with the `tch` feature"), "{}", out.stdout);
}

#[test]
fn lora_training_writes_a_merged_checkpoint() {
    let ws = Workspace::new();
    ws.write("pairs.csv", &pairs_csv(16));
    ws.write(
        "pipeline.yaml",
        &PIPELINE.replace("seed: 7 }", "seed: 7, lora: { r: 4, alpha: 8, targets: [attention, mlp] } }"),
    );
    let record = ws.run(&[]);
    assert_eq!(status_of(&record, "policy"), "ran");
    let training = ws.silkie(&["show", "policy.training", "--rows", "100", "--format", "json"]).json();
    let rows = training.as_array().unwrap();
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
}
