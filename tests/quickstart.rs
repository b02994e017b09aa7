//! The embedded default end to end, scaled down: `pipelines/quickstart.yaml` from an empty
//! cache (synth → sft → sample → annotate → aggregate → pair → dpo → evaluate), checking that
//! every stage wrote its outputs and that the tables agree with each other; then an ablation
//! reruns only what its change touches, and `silkie metrics` puts both side by side.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Small enough for a debug build in CI: the same pipeline, fewer scenes and steps.
const SMALL: [&str; 18] = [
    "--set",
    "stages.prompts.params.train_scenes=60",
    "--set",
    "stages.prompts.params.questions_per_scene=1",
    "--set",
    "stages.world.params.train_scenes=120",
    "--set",
    "stages.world.params.eval_scenes=20",
    "--set",
    "stages.world.params.questions_per_scene=1",
    "--set",
    "vars.early=4",
    "--set",
    "stages.sft.params.epochs=1",
    "--set",
    "stages.responses.params.per_instruction=3",
    "--set",
    "stages.responses.params.max_tokens=24",
];

struct Quickstart {
    cache: tempfile::TempDir,
}

impl Quickstart {
    fn silkie(&self, args: &[&str]) -> common::Ran {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut cmd = Command::new(common::bin());
        cmd.arg("--workspace").arg(repo).arg("--cache").arg(self.cache.path());
        cmd.env_remove("SILKIE_CACHE").env("SILKIE_LOG", "silkie=warn").args(args);
        let ran: common::Ran = cmd.output().unwrap().into();
        assert_eq!(ran.code, 0, "silkie {args:?}:\n{}\n{}", ran.stdout, ran.stderr);
        ran
    }

    fn run(&self, pipeline: &str) -> Value {
        self.run_with(pipeline, &[])
    }

    fn run_with(&self, pipeline: &str, extra: &[&str]) -> Value {
        let mut args = vec!["run", pipeline, "--format", "json"];
        args.extend(SMALL);
        args.extend(extra);
        self.silkie(&args).json()
    }

    fn table(&self, pipeline: &str, output: &str) -> Vec<Value> {
        let mut args = vec!["show", output, "-f", pipeline, "--rows", "100000", "--format", "json"];
        args.extend(SMALL);
        self.silkie(&args).json().as_array().unwrap().clone()
    }
}

/// The digest of `instance`'s `output` in a run record, and whether the instance ran.
fn output_digest(record: &Value, instance: &str, output: &str) -> (String, bool) {
    let inst = record["instances"].as_array().unwrap().iter().find(|i| i["name"] == instance).unwrap();
    (text(&inst["outputs"][output], "digest"), inst["status"] == "ran")
}

fn text(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_else(|| panic!("no `{key}` in {v}")).to_string()
}

#[test]
fn quickstart_runs_the_whole_loop_and_its_tables_agree() {
    let q = Quickstart { cache: tempfile::tempdir().unwrap() };
    let record = q.run("pipelines/quickstart.yaml");
    let statuses: HashMap<String, String> =
        record["instances"].as_array().unwrap().iter().map(|i| (text(i, "name"), text(i, "status"))).collect();
    assert_eq!(statuses.len(), 12, "{statuses:?}");
    assert!(statuses.values().all(|s| s == "ran"), "{statuses:?}");
    let p = "pipelines/quickstart.yaml";

    assert_eq!(q.table(p, "world.instructions").len(), 120, "one question per training scene");
    let prompts = q.table(p, "prompts.instructions");
    assert_eq!(prompts.len(), 60);
    let instruction_ids: BTreeSet<String> = prompts.iter().map(|r| text(r, "id")).collect();

    let responses = q.table(p, "responses.responses");
    assert_eq!(responses.len(), 60 * 3, "three answers per prompt");
    assert!(responses.iter().all(|r| instruction_ids.contains(&text(r, "instruction_id"))));
    let response_keys: BTreeSet<(String, String)> =
        responses.iter().map(|r| (text(r, "instruction_id"), text(r, "model"))).collect();

    let ratings = q.table(p, "ratings.ratings");
    assert_eq!(ratings.len(), responses.len() * 3, "three aspects per response");
    assert!(ratings.iter().all(|r| r["status"] == "ok"), "the oracle's replies all parse");
    assert!(ratings.iter().all(|r| response_keys.contains(&(text(r, "instruction_id"), text(r, "model")))));

    let scores = q.table(p, "scores.scores");
    let scored: HashMap<(String, String), f64> = scores
        .iter()
        .filter_map(|r| Some(((text(r, "instruction_id"), text(r, "model")), r["score"].as_f64()?)))
        .collect();
    let pairs = q.table(p, "pairs.pairs");
    assert!(!pairs.is_empty());
    for pair in &pairs {
        let id = text(pair, "instruction_id");
        let chosen = scored[&(id.clone(), text(pair, "chosen_model"))];
        let rejected = scored[&(id, text(pair, "rejected_model"))];
        assert!(chosen > rejected, "a pair must prefer the better-rated response: {pair}");
        assert_eq!(pair["chosen_score"].as_f64(), Some(chosen));
    }

    let training = q.table(p, "policy.training");
    assert_eq!(training.len(), 2 * pairs.len().div_ceil(16), "two epochs of batches of 16");
    for name in ["tuned-mme", "base-mme", "tuned-hal", "base-hal"] {
        let results = q.table(p, &format!("{name}.results"));
        assert!(!results.is_empty(), "{name}");
    }
    let mme = q.table(p, "tuned-mme.results");
    let perception = mme.iter().find(|r| r["metric"] == "perception").unwrap();
    assert!(perception["baseline_value"].is_number(), "the tuned result is compared with the base");

    // Nothing to do a second time.
    let again = q.run(p);
    assert!(again["instances"].as_array().unwrap().iter().all(|i| i["status"] == "hit"));

    // Training is deterministic: SFT and DPO retrained with the same seed on the same machine
    // give bit-identical checkpoints.
    let retrained = q.run_with(p, &["--force", "sft", "--force", "policy"]);
    for instance in ["sft", "policy"] {
        let (first, _) = output_digest(&record, instance, "checkpoint");
        let (second, ran) = output_digest(&retrained, instance, "checkpoint");
        assert!(ran, "{instance} was not retrained");
        assert_eq!(first, second, "retraining {instance} gave other weights");
    }

    // An ablation reruns only what its change touches: pairs and everything after them.
    let ablation = q.run("pipelines/ablations/length-as-best.yaml");
    let mut reran: Vec<String> = ablation["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["status"] == "ran")
        .map(|i| text(i, "name"))
        .collect();
    reran.sort();
    assert_eq!(reran, ["pairs", "policy", "tuned-hal", "tuned-mme"]);

    let mut args = vec!["metrics", p, "pipelines/ablations/length-as-best.yaml", "--format", "json"];
    args.extend(SMALL);
    let rows = q.silkie(&args).json();
    let pipelines: BTreeSet<String> = rows.as_array().unwrap().iter().map(|r| text(r, "pipeline")).collect();
    assert_eq!(pipelines, BTreeSet::from(["quickstart".to_string(), "length-as-best".to_string()]));
}
