//! The `evaluate` stage, `silkie eval` and `silkie metrics` end to end, on made-up benchmarks
//! (no MME or MMHal text is shipped): a tiny checkpoint answering questions in MME's results
//! layout, and an MMHal-style file judged by a local fake OpenAI server.

mod common;
#[path = "common/server.rs"]
mod server;

use common::{Workspace, ran, status_of};
use serde_json::{Value, json};
use server::{Fault, Server};

/// MME's own subtasks (names only: the questions here are made up).
fn subtasks() -> Vec<String> {
    silkie::eval::mme::Categories::official().subtasks().map(String::from).collect()
}

/// A made-up benchmark in MME's layout: per subtask two images (plain colours), each with a
/// yes question and a no question; images under `bench/<subtask>/`.
fn write_mme_benchmark(ws: &Workspace) {
    for (s, subtask) in subtasks().iter().enumerate() {
        let mut lines = String::new();
        for i in 0..2 {
            let name = format!("{i}.png");
            let colour = image::Rgb([(s * 17) as u8, (i * 120) as u8, 90]);
            let dir = ws.path().join("bench").join(subtask);
            std::fs::create_dir_all(&dir).unwrap();
            image::RgbImage::from_pixel(16, 16, colour).save(dir.join(&name)).unwrap();
            lines.push_str(&format!("{name}\tIs the picture mostly plain? Please answer yes or no.\tYes\n"));
            lines.push_str(&format!("{name}\tIs there a cat in the picture? Please answer yes or no.\tNo\n"));
        }
        ws.write(&format!("bench/{subtask}.txt"), &lines);
    }
}

fn pairs_csv() -> String {
    let mut csv = String::from("prompt,chosen,rejected\n");
    for i in 0..8 {
        csv.push_str(&format!("Is it plain? {i},Yes,No\n"));
    }
    csv
}

fn pipeline(lr: &str, extra: &str) -> String {
    format!(
        "version: 1
stages:
  pairs: {{ kind: load, params: {{ path: pairs.csv }} }}
  policy:
    kind: dpo
    needs: [pairs]
    params: {{ base: {{ init: tiny, image_size: 16, patch_size: 8, d_model: 32, layers: 1, heads: 2, d_ff: 64, max_tokens: 96 }}, lr: {lr}, epochs: 2, batch_size: 4, seed: 3 }}
  mme:
    kind: evaluate
    params: {{ policy: {{ stage: policy }}, benchmark: mme, data: bench, max_tokens: 4, temperature: 1.0 }}
{extra}"
    )
}

fn results(ws: &Workspace, stage: &str) -> Vec<Value> {
    let shown = ws.silkie(&["show", &format!("{stage}.results"), "--rows", "100", "--format", "json"]);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    shown.json().as_array().unwrap().clone()
}

fn metric(rows: &[Value], name: &str) -> f64 {
    rows.iter().find(|r| r["metric"] == name).unwrap_or_else(|| panic!("no {name} in {rows:?}"))["value"]
        .as_f64()
        .unwrap()
}

#[test]
fn a_checkpoint_is_evaluated_on_an_mme_layout_benchmark_and_scores_as_silkie_eval_does() {
    let ws = Workspace::new();
    write_mme_benchmark(&ws);
    ws.write("pairs.csv", &pairs_csv());
    ws.write("pipeline.yaml", &pipeline("0.001", ""));
    let record = ws.run(&[]);
    assert_eq!(status_of(&record, "mme"), "ran");
    let predictions = ws.silkie(&["show", "mme.predictions", "--rows", "100", "--format", "json"]).json();
    let predictions = predictions.as_array().unwrap();
    assert_eq!(predictions.len(), 14 * 4, "every question answered");
    // The same predictions in MME's results layout, scored by `silkie eval mme`.
    let dir = ws.path().join("results");
    std::fs::create_dir_all(&dir).unwrap();
    for subtask in subtasks() {
        let lines: String = predictions
            .iter()
            .filter(|p| p["subtask"] == subtask.as_str())
            .map(|p| {
                let truth = if p["ground_truth"] == "yes" { "Yes" } else { "No" };
                let prediction = p["prediction"].as_str().unwrap_or("").replace(['\t', '\n', '\r'], " ");
                format!(
                    "{}\t{}\t{truth}\t{prediction}\n",
                    p["image"].as_str().unwrap(),
                    p["question"].as_str().unwrap()
                )
            })
            .collect();
        std::fs::write(dir.join(format!("{subtask}.txt")), lines).unwrap();
    }
    let eval = ws.silkie(&["eval", "mme", "results", "--format", "json"]);
    assert_eq!(eval.code, 0, "{}", eval.stderr);
    let eval = eval.json();
    let rows = results(&ws, "mme");
    eprintln!("tiny checkpoint: perception {}, cognition {}", metric(&rows, "perception"), metric(&rows, "cognition"));
    assert_eq!(metric(&rows, "perception"), eval["perception"].as_f64().unwrap());
    assert_eq!(metric(&rows, "cognition"), eval["cognition"].as_f64().unwrap());
    assert_eq!(metric(&rows, "subtask/OCR"), eval["subtasks"]["OCR"]["score"].as_f64().unwrap());
    // Scoring again never generates again: every answer comes from the memo.
    let mut again = ws.command(&["run", "--force", "mme", "--format", "json"]);
    again.env("SILKIE_LOG", "silkie=info");
    let again: common::Ran = again.output().unwrap().into();
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stderr.contains("56 from the memo, 0 sent"), "{}", again.stderr);
}

#[test]
fn a_baseline_stage_adds_its_values_and_the_relative_change() {
    let ws = Workspace::new();
    write_mme_benchmark(&ws);
    ws.write("pairs.csv", &pairs_csv());
    let extra = "  base:
    kind: dpo
    needs: [pairs]
    params: { base: { init: tiny, image_size: 16, patch_size: 8, d_model: 32, layers: 1, heads: 2, d_ff: 64, max_tokens: 96 }, lr: 0.0001, epochs: 1, batch_size: 4, seed: 4 }
  mme-base:
    kind: evaluate
    params: { policy: { stage: base }, benchmark: mme, data: bench, max_tokens: 4, temperature: 1.0 }
";
    let text = pipeline("0.001", extra).replace(
        "max_tokens: 4, temperature: 1.0 }\n  base:",
        "max_tokens: 4, temperature: 1.0, baseline: mme-base }\n  base:",
    );
    ws.write("pipeline.yaml", &text);
    ws.run(&[]);
    let (tuned, base) = (results(&ws, "mme"), results(&ws, "mme-base"));
    for name in ["perception", "cognition"] {
        let row = tuned.iter().find(|r| r["metric"] == name).unwrap();
        let (v, b) = (metric(&tuned, name), metric(&base, name));
        assert_eq!(row["baseline_value"].as_f64(), Some(b));
        if b != 0.0 {
            assert_eq!(row["relative_change"].as_f64(), Some((v - b) / b));
        }
    }
    // A baseline that is not a stage is an error that points at it.
    ws.write("pipeline.yaml", &text.replace("baseline: mme-base", "baseline: mme-bsae"));
    let out = ws.silkie(&["validate"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("params.baseline") && out.stderr.contains("mme-base"), "{}", out.stderr);
}

#[test]
fn metrics_puts_two_pipelines_side_by_side_against_a_chosen_baseline() {
    let ws = Workspace::new();
    write_mme_benchmark(&ws);
    ws.write("pairs.csv", &pairs_csv());
    ws.write("a.yaml", &pipeline("0.001", ""));
    ws.write("b.yaml", "extends: a.yaml\nstages:\n  policy:\n    params: { lr: 0.003 }\n");
    ws.run(&["a.yaml"]);
    let b = ws.run(&["b.yaml"]);
    assert_eq!(ran(&b), vec!["mme".to_string(), "policy".to_string()], "only what the change touches");
    let out = ws.silkie(&["metrics", "a.yaml", "b.yaml", "--baseline", "a:mme", "--format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rows = out.json();
    let rows = rows.as_array().unwrap();
    let get = |pipeline: &str, metric: &str| {
        rows.iter().find(|r| r["pipeline"] == pipeline && r["metric"] == metric).unwrap().clone()
    };
    for name in ["perception", "cognition"] {
        let (a, b) = (get("a", name), get("b", name));
        let (va, vb) = (a["value"].as_f64().unwrap(), b["value"].as_f64().unwrap());
        assert_eq!(b["baseline_value"].as_f64(), Some(va));
        assert_eq!(a["relative_change"].as_f64(), if va != 0.0 { Some(0.0) } else { None });
        assert_eq!(b["relative_change"].as_f64(), if va != 0.0 { Some((vb - va) / va) } else { None });
    }
    assert!(rows.iter().all(|r| !r["metric"].as_str().unwrap().contains('/')), "totals only without --all");
    let text = ws.silkie(&["metrics", "a.yaml", "b.yaml", "--baseline", "a:mme", "--format", "markdown"]);
    assert!(text.stdout.starts_with("| pipeline | instance | mme perception"), "{}", text.stdout);
    let plot = ws.silkie(&["metrics", "a.yaml", "b.yaml", "--baseline", "a:mme", "--plot", "bars.png"]);
    assert_eq!(plot.code, 0, "{}", plot.stderr);
    let png = image::open(ws.path().join("bars.png")).unwrap().to_rgb8();
    // A legend row for the two instances, then a panel per total with a bar per instance.
    assert_eq!(png.height(), 44 + 2 * (70 + 2 * 34));
    let colours: std::collections::HashSet<[u8; 3]> = png.pixels().map(|p| p.0).collect();
    assert!(colours.contains(&[150, 150, 150]), "the baseline's bars are grey");
    assert!(colours.contains(&[31, 119, 180]), "the other instance has the first colour");
    let bad = ws.silkie(&["metrics", "a.yaml", "--baseline", "nope"]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("mme"), "{}", bad.stderr);
}

/// The policy says "red" about red things and "blue" about the rest; the judge rates red 5,
/// blue 1, and answers about "green" in bold (which the benchmark's rule reads as 0).
fn mmhal_server() -> Server {
    Server::start_with(
        |_| Fault::None,
        |body| {
            let text = server::request_text(body);
            if body["model"] == "policy-model" {
                return if text.contains("ball") { "It is red.".into() } else { "It is blue.".into() };
            }
            let answer = text.split("The assistant's answer:").nth(1).unwrap_or("");
            if answer.contains("red") {
                "Accurate.\nRating: 5".into()
            } else if text.contains("colour is the grass") {
                "**Rating:** 4".into()
            } else {
                "Wrong colour.\nRating: 1".into()
            }
        },
    )
}

fn mmhal_questions(ws: &Workspace, answered: bool) {
    let mut items = Vec::new();
    for (i, (kind, question)) in [
        ("attribute", "What colour is the ball?"),
        ("attribute", "What colour is the sky?"),
        ("counting", "What colour is the grass?"),
        ("relation", "What colour is the ball on the left?"),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("img{i}.png");
        image::RgbImage::from_pixel(8, 8, image::Rgb([200, 10, 10])).save(ws.path().join("hal").join(&name)).unwrap();
        let mut q = json!({
            "question_type": kind, "question_topic": "made-up", "image_id": format!("img{i}"),
            "image_src": format!("https://example.invalid/{name}"), "image_content": ["a red ball", "green grass"],
            "question": question, "gt_answer": "Red.",
        });
        if answered {
            q["model_answer"] = json!(if question.contains("ball") { "It is red." } else { "It is blue." });
        }
        items.push(q);
    }
    ws.write(
        if answered { "hal/answered.json" } else { "hal/questions.json" },
        &serde_json::to_string(&items).unwrap(),
    );
}

#[test]
fn mmhal_is_judged_through_the_memo_and_scored_by_the_benchmark_rule() {
    let server = mmhal_server();
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.path().join("hal")).unwrap();
    mmhal_questions(&ws, false);
    mmhal_questions(&ws, true);
    let models = format!(
        "models:\n  policy: {{ provider: openai, model: policy-model, base_url: \"{u}\" }}\n  judge: {{ provider: openai, model: judge-model, base_url: \"{u}\" }}\n",
        u = server.url
    );
    ws.write(
        "pipeline.yaml",
        &format!("version: 1\n{models}stages:\n  hal: {{ kind: evaluate, params: {{ policy: policy, benchmark: mmhal, data: hal/questions.json, judge: judge }} }}\n"),
    );
    ws.run(&[]);
    let rows = results(&ws, "hal");
    // Ratings: ball → red → 5 (twice), sky → blue → 1, grass → bold → 0.
    assert_eq!(metric(&rows, "score"), (5.0 + 1.0 + 0.0 + 5.0) / 4.0);
    assert_eq!(metric(&rows, "hallucination_rate"), 0.5);
    assert_eq!(metric(&rows, "type/attribute"), 3.0);
    assert_eq!(metric(&rows, "type/counting"), 0.0);
    let sent = server.request_count();
    assert_eq!(sent, 8, "4 answers and 4 judgements");
    ws.run(&["--force", "hal"]);
    assert_eq!(server.request_count(), sent, "a forced rerun is answered from the memo");
    // `silkie eval mmhal` scores answers that exist already, with the same rule.
    let out = ws.silkie(&["eval", "mmhal", "hal/answered.json", "--judge", "judge", "--format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = out.json();
    assert_eq!(summary["score"], 2.75);
    assert_eq!(summary["hallucination_rate"], 0.5);
    assert!(out.stderr.contains("question 3") && out.stderr.contains("no `rating: N`"), "{}", out.stderr);
}

#[test]
fn an_endpoint_policy_scores_by_the_official_rules() {
    // Right every time, then "yes" every time: 200 and 50 per subtask.
    let right = Server::start_with(
        |_| Fault::None,
        |body| {
            if body.to_string().contains("mostly plain") { "Yes, it is.".into() } else { "No.".into() }
        },
    );
    let yes = Server::start_with(|_| Fault::None, |_| "yes".into());
    let ws = Workspace::new();
    write_mme_benchmark(&ws);
    ws.write(
        "pipeline.yaml",
        &format!(
            "version: 1
models:
  right: {{ provider: openai, model: always-right, base_url: \"{}\" }}
  yes: {{ provider: openai, model: always-yes, base_url: \"{}\" }}
stages:
  good: {{ kind: evaluate, params: {{ policy: right, benchmark: mme, data: bench }} }}
  eager: {{ kind: evaluate, params: {{ policy: yes, benchmark: mme, data: bench, baseline: good }} }}
",
            right.url, yes.url
        ),
    );
    ws.run(&[]);
    let good = results(&ws, "good");
    assert_eq!((metric(&good, "perception"), metric(&good, "cognition")), (2000.0, 800.0));
    let eager = results(&ws, "eager");
    assert_eq!((metric(&eager, "perception"), metric(&eager, "cognition")), (500.0, 200.0));
    let row = eager.iter().find(|r| r["metric"] == "perception").unwrap();
    assert_eq!(row["relative_change"].as_f64(), Some(-0.75));
}

#[test]
fn a_synthetic_benchmark_missing_a_subtask_says_which_and_how_to_fix_it() {
    let yes = Server::start_with(|_| Fault::None, |_| "Yes.".into());
    let ws = Workspace::new();
    let pipeline = |world: &str| {
        format!(
            "version: 1
models:
  eager: {{ provider: openai, model: always-yes, base_url: \"{}\" }}
stages:
  world: {{ kind: synth, params: {{ train_scenes: 2, eval_scenes: 12, world: {world} }} }}
  bench: {{ kind: evaluate, inputs: {{ benchmark: world.mme }}, params: {{ policy: eager, benchmark: synth-mme }} }}
",
            yes.url
        )
    };
    // One colour: no colour questions and no comparisons can be asked.
    ws.write("pipeline.yaml", &pipeline("{ colours: [red] }"));
    let out = ws.silkie(&["run"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stdout.contains("no questions of subtask `color`") && out.stdout.contains("params.categories"),
        "{}",
        out.stdout
    );
    // The full world: always-yes scores 50 per subtask, by the real MME scorer.
    ws.write("pipeline.yaml", &pipeline("{}"));
    ws.run(&[]);
    let rows = results(&ws, "bench");
    assert_eq!((metric(&rows, "perception"), metric(&rows, "cognition")), (200.0, 50.0));
}
