//! Preference data on a VLFeedback-format fixture whose right answers are worked out by hand.

mod common;

use common::{Workspace, status_of};
use serde_json::{Value, json};

/// Ratings in the published layout: strings, with awkward ones among them.
fn completion(model: &str, response: &str, h: &str, vf: &str, e: Option<&str>) -> Value {
    let mut annotations = json!({
        "Helpfulness": {"Rating": h, "Rationale": "h"},
        "Visual Faithfulness": {"Rating": vf, "Rationale": "vf"},
    });
    if let Some(e) = e {
        annotations["Ethical Considerations"] = json!({"Rating": e, "Rationale": "e"});
    }
    json!({"model": model, "response": response, "annotations": annotations})
}

/// Four instructions. Means (H, VF, E):
/// - i1: a (4,4,5)=4.33, b (" 3 ",3,3)=3, c ("N/A",2,5)=unparseable, d ("4.0",4,5)=4.33
/// - i2: a (5,5,5)=5, b ("",1,1)=unparseable, c (1,1,1)=1, d (2,"7",3)=4 (7 out of range, kept)
/// - i3: a (3,3,3)=3, b (3,3,3)=3, c ("four",3,3)=unparseable, d (3,3,–)=missing ethics
/// - i4: a "Same." (5,5,5)=5, b "Same." (1,1,1)=1
fn fixture_rows() -> Vec<Value> {
    let row = |id: &str, prompt: &str, completions: Vec<Value>| {
        let models: Vec<Value> = completions.iter().map(|c| c["model"].clone()).collect();
        json!({"id": id, "prompt": prompt, "models": models, "completions": completions})
    };
    vec![
        row(
            "i1",
            "What is on the mat?",
            vec![
                completion("model-a", "The cat sits on a red mat.", "4", "4", Some("5")),
                completion("model-b", "A cat.", " 3 ", "3", Some("3")),
                completion("model-c", "A cat on a mat, maybe.", "N/A", "2", Some("5")),
                completion(
                    "model-d",
                    "There is a small grey cat sitting on a red mat in the sun.",
                    "4.0",
                    "4",
                    Some("5"),
                ),
            ],
        ),
        row(
            "i2",
            "How many dogs are there?",
            vec![
                completion("model-a", "Two dogs.", "5", "5", Some("5")),
                completion("model-b", "Dogs: 2", "", "1", Some("1")),
                completion("model-c", "Seven dogs are playing in the park today.", "1", "1", Some("1")),
                completion("model-d", "I count two.", "2", "7", Some("3")),
            ],
        ),
        row(
            "i3",
            "Is the sky visible?",
            vec![
                completion("model-a", "Yes.", "3", "3", Some("3")),
                completion("model-b", "Yes, it is.", "3", "3", Some("3")),
                completion("model-c", "The sky is visible at the top of the picture.", "four", "3", Some("3")),
                completion("model-d", "No", "3", "3", None),
            ],
        ),
        row(
            "i4",
            "Say something.",
            vec![
                completion("model-a", "Same.", "5", "5", Some("5")),
                completion("model-b", "Same.", "1", "1", Some("1")),
            ],
        ),
    ]
}

fn write_image(ws: &Workspace, id: &str, shade: u8) {
    let path = ws.path().join(format!("data/images/{id}.jpg"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(8, 8, image::Rgb([shade, 80, 160])).save(&path).unwrap();
}

const PIPELINE: &str = r#"
version: 1
vars: { data: data/vlf.jsonl }
stages:
  vlf:
    kind: load
    params: { path: "${vars.data}", format: vlfeedback, images: data/images }
  scores:
    kind: aggregate
    needs: [vlf]
  pairs:
    kind: pair
    needs: [vlf, scores]
"#;

fn fixture() -> Workspace {
    let ws = Workspace::new();
    let lines: Vec<String> = fixture_rows().iter().map(Value::to_string).collect();
    ws.write("data/vlf.jsonl", &(lines.join("\n") + "\n"));
    for (i, id) in ["i1", "i2", "i3", "i4"].iter().enumerate() {
        write_image(&ws, id, 40 * i as u8);
    }
    ws.write("pipeline.yaml", PIPELINE);
    ws
}

fn rows(ws: &Workspace, target: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["show", target, "--rows", "1000", "--format", "json"];
    args.extend_from_slice(extra);
    let out = ws.silkie(&args);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    out.json().as_array().unwrap().clone()
}

/// (instruction, chosen model, rejected model) of every pair.
fn triples(pairs: &[Value]) -> Vec<(String, String, String)> {
    pairs
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap().to_string();
            (s("instruction_id"), s("chosen_model"), s("rejected_model"))
        })
        .collect()
}

fn t(i: &str, c: &str, r: &str) -> (String, String, String) {
    (i.to_string(), format!("model-{c}"), format!("model-{r}"))
}

fn report(ws: &Workspace, stage: &str, extra: &[&str]) -> Value {
    let mut args = vec!["show", stage, "--report", "--format", "json"];
    args.extend_from_slice(extra);
    let out = ws.silkie(&args);
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.json()
}

#[test]
fn all_pairs_reproduces_the_released_recipe() {
    let ws = fixture();
    ws.run(&[]);
    let pairs = rows(&ws, "pairs.pairs", &[]);
    assert_eq!(
        triples(&pairs),
        [
            t("i1", "a", "b"),
            t("i1", "d", "b"),
            t("i2", "a", "c"),
            t("i2", "a", "d"),
            t("i2", "d", "c"),
            t("i4", "a", "b")
        ]
    );
    let first = &pairs[0];
    assert_eq!(first["prompt"], "What is on the mat?");
    assert_eq!(first["chosen"], "The cat sits on a red mat.");
    assert_eq!(first["rejected"], "A cat.");
    assert!((first["margin"].as_f64().unwrap() - 4.0 / 3.0).abs() < 1e-12);
    assert_eq!(first["image"].as_str().unwrap().len(), 64, "the image column holds a blob digest");

    let pairs_report = report(&ws, "pairs", &[]);
    assert_eq!(pairs_report["dropped"], json!({"tie": 2, "unparseable_rating": 9, "missing_rating": 2}));
    assert_eq!(pairs_report["rows_out"], json!({"pairs": 6}));
    let load_report = report(&ws, "vlf", &[]);
    assert_eq!(load_report["notes"], json!({"unparseable_rating": 3, "missing_rating": 1, "out_of_range_rating": 1}));
    assert_eq!(load_report["rows_out"], json!({"instructions": 4, "responses": 14, "ratings": 42}));
    let text = ws.silkie(&["show", "pairs", "--report"]);
    assert!(text.stdout.contains("unparseable_rating"), "{}", text.stdout);
}

#[test]
fn ratings_parse_like_python_float_and_scores_are_plain_means() {
    let ws = fixture();
    ws.run(&[]);
    let ratings = rows(&ws, "vlf.ratings", &[]);
    let find = |i: &str, m: &str, a: &str| {
        ratings.iter().find(|r| r["instruction_id"] == i && r["model"] == m && r["aspect"] == a).unwrap().clone()
    };
    assert_eq!(find("i1", "model-b", "helpfulness")["rating"], 3.0);
    assert_eq!(find("i1", "model-d", "helpfulness")["rating"], 4.0);
    assert_eq!(find("i1", "model-c", "helpfulness")["status"], "unparseable");
    assert_eq!(find("i1", "model-c", "helpfulness")["rating_text"], "N/A");
    assert_eq!(find("i2", "model-d", "visual_faithfulness")["rating"], 7.0);
    assert_eq!(find("i3", "model-d", "ethical_considerations")["status"], "missing");
    let scores = rows(&ws, "scores", &[]);
    let score = |i: &str, m: &str| scores.iter().find(|r| r["instruction_id"] == i && r["model"] == m).unwrap().clone();
    assert_eq!(score("i1", "model-a")["score"], 13.0 / 3.0);
    assert_eq!(score("i1", "model-c")["score"], Value::Null);
    assert_eq!(score("i1", "model-c")["score_status"], "unparseable_rating");
    assert_eq!(score("i3", "model-d")["score_status"], "missing_rating");
}

#[test]
fn aggregate_methods_aspects_and_missing_policies() {
    let ws = fixture();
    ws.run(&[]);
    let score_of = |sets: &[&str], i: &str, m: &str| -> Value {
        let mut args = vec![];
        for s in sets {
            args.extend_from_slice(&["--set", s]);
        }
        ws.run(&args);
        let scores = rows(&ws, "scores", &args);
        scores.iter().find(|r| r["instruction_id"] == i && r["model"] == m).unwrap()["score"].clone()
    };
    assert_eq!(score_of(&["scores.params.method=min"], "i1", "model-a"), 4.0);
    assert_eq!(score_of(&["scores.params.missing=drop_aspect"], "i1", "model-c"), 3.5);
    assert_eq!(score_of(&["scores.params.missing=drop_aspect"], "i3", "model-d"), 3.0);
    assert_eq!(score_of(&["scores.params.aspects=[visual_faithfulness]"], "i2", "model-d"), 7.0);
    let weighted = [
        "scores.params.method=weighted",
        "scores.params.weights={helpfulness: 2, visual_faithfulness: 1, ethical_considerations: 1}",
    ];
    assert_eq!(score_of(&weighted, "i1", "model-a"), 4.25);
}

#[test]
fn score_strategies_give_the_hand_derived_pairs() {
    let ws = fixture();
    let pairs_with = |sets: &[&str]| {
        let mut args = vec![];
        for s in sets {
            args.extend_from_slice(&["--set", s]);
        }
        ws.run(&args);
        let pairs = rows(&ws, "pairs.pairs", &args);
        let report = report(&ws, "pairs", &args);
        (triples(&pairs), report["dropped"].clone())
    };
    let (pairs, dropped) = pairs_with(&["pairs.params.strategy=best_vs_worst"]);
    assert_eq!(pairs, [t("i1", "a", "b"), t("i2", "a", "c"), t("i4", "a", "b")]);
    assert_eq!(dropped, json!({"tie": 1, "unparseable_rating": 3, "missing_rating": 1}));

    let (pairs, dropped) = pairs_with(&["pairs.params.strategy=best_vs_rest"]);
    assert_eq!(pairs, [t("i1", "a", "b"), t("i2", "a", "c"), t("i2", "a", "d"), t("i4", "a", "b")]);
    assert_eq!(dropped, json!({"tie": 2, "unparseable_rating": 3, "missing_rating": 1}));

    let mut rejected_in_i2 = std::collections::BTreeSet::new();
    for seed in 0..8 {
        let (pairs, _) = pairs_with(&["pairs.params.strategy=best_vs_random", &format!("pairs.params.seed={seed}")]);
        assert_eq!(pairs[0], t("i1", "a", "b"));
        assert_eq!(pairs[1].1, "model-a");
        rejected_in_i2.insert(pairs[1].2.clone());
        let (again, _) = pairs_with(&["pairs.params.strategy=best_vs_random", &format!("pairs.params.seed={seed}")]);
        assert_eq!(again, pairs, "the same seed draws the same pairs");
    }
    assert_eq!(rejected_in_i2.len(), 2, "seeds draw either lower response: {rejected_in_i2:?}");

    let (pairs, dropped) = pairs_with(&["pairs.params.min_margin=1.5"]);
    assert_eq!(pairs, [t("i2", "a", "c"), t("i2", "d", "c"), t("i4", "a", "b")]);
    assert_eq!(dropped["below_margin"], 3);

    let (pairs, dropped) = pairs_with(&["pairs.params.dedupe=true"]);
    assert_eq!(pairs.len(), 5);
    assert_eq!(dropped["duplicate"], 1);
}

#[test]
fn heuristic_baselines_choose_the_longest_or_the_named_model() {
    let ws = fixture();
    let pairs_with = |sets: &[&str]| {
        let mut args = vec![];
        for s in sets {
            args.extend_from_slice(&["--set", s]);
        }
        ws.run(&args);
        triples(&rows(&ws, "pairs.pairs", &args))
    };
    // Longest: i1 d, i2 c, i3 c, i4 a (a tie in length goes to the first); rejected: the shortest other.
    let longest = pairs_with(&["pairs.params.strategy=longest_as_best", "pairs.params.rejected=shortest"]);
    assert_eq!(longest, [t("i1", "d", "b"), t("i2", "c", "b"), t("i3", "c", "d"), t("i4", "a", "b")]);
    // The named model's response against every other, whatever the scores say.
    let named =
        pairs_with(&["pairs.params.strategy=model_as_best", "pairs.params.model=model-b", "pairs.params.rejected=all"]);
    assert_eq!(named.len(), 3 + 3 + 3 + 1);
    assert!(named.iter().all(|(_, c, _)| c == "model-b"));
    let lowest = pairs_with(&[
        "pairs.params.strategy=model_as_best",
        "pairs.params.model=model-a",
        "pairs.params.rejected=lowest_score",
    ]);
    assert_eq!(lowest, [t("i1", "a", "b"), t("i2", "a", "c"), t("i3", "a", "b"), t("i4", "a", "b")]);
    // A model that answered nothing is a mistake in the params, not four silent drops.
    let absent =
        ws.silkie(&["run", "--set", "pairs.params.strategy=model_as_best", "--set", "pairs.params.model=gpt-4v"]);
    assert_eq!(absent.code, 1);
    assert!(
        absent.stdout.contains("`gpt-4v` answered no instruction") && absent.stdout.contains("model-b"),
        "{}",
        absent.stdout
    );
}

#[test]
fn the_split_is_by_prompt_and_never_leaks() {
    let ws = Workspace::new();
    let mut lines = Vec::new();
    for i in 0..300 {
        // Every prompt appears under three ids: a per-pair split would leak it.
        let prompt = format!("Question {}", i / 3);
        let completions = vec![
            completion("model-a", "long answer here", "5", "5", Some("5")),
            completion("model-b", "short", "2", "2", Some("2")),
            completion("model-c", "medium one", "3", "3", Some("3")),
        ];
        lines.push(json!({"id": format!("q{i:03}"), "prompt": prompt, "completions": completions}).to_string());
    }
    ws.write("data/vlf.jsonl", &lines.join("\n"));
    ws.write(
        "pipeline.yaml",
        "version: 1\nstages:\n  vlf: { kind: load, params: { path: data/vlf.jsonl, format: vlfeedback } }\n  scores: { kind: aggregate, needs: [vlf] }\n  pairs: { kind: pair, needs: [vlf, scores], params: { split: { eval: 0.2, seed: 3 } } }\n",
    );
    ws.run(&[]);
    let train = rows(&ws, "pairs.pairs", &[]);
    let eval = rows(&ws, "pairs.eval_pairs", &[]);
    assert_eq!(train.len() + eval.len(), 900);
    let prompts = |rows: &[Value]| {
        rows.iter().map(|r| r["prompt"].as_str().unwrap().to_string()).collect::<std::collections::BTreeSet<_>>()
    };
    assert!(prompts(&train).is_disjoint(&prompts(&eval)), "a prompt is in both train and eval");
    let share = eval.len() as f64 / 900.0;
    assert!((0.1..0.3).contains(&share), "eval share {share}");
}

#[test]
fn per_model_statistics_show_means_and_win_rates() {
    let ws = fixture();
    ws.run(&[]);
    let stats = rows(&ws, "scores", &["--by", "model"]);
    let a = stats.iter().find(|r| r["model"] == "model-a").unwrap();
    assert_eq!(a["responses"], 4);
    assert_eq!(a["scored"], 4);
    // model-a is in 5 of the 6 pairs and chosen in all of them.
    assert_eq!(a["pairs"], 4);
    assert_eq!(a["wins"], 4);
    assert_eq!(a["win_rate"], 1.0);
    let b = stats.iter().find(|r| r["model"] == "model-b").unwrap();
    assert_eq!((b["pairs"].clone(), b["wins"].clone()), (json!(3), json!(0)));
    assert_eq!(b["mean_helpfulness"], (3.0 + 3.0 + 1.0) / 3.0);
}

#[test]
fn renaming_or_extending_reuses_the_cached_load() {
    let ws = fixture();
    ws.run(&[]);
    ws.write("ablation.yaml", "extends: pipeline.yaml\nstages:\n  pairs:\n    params: { strategy: longest_as_best }\n");
    let record = ws.run(&["ablation.yaml"]);
    assert_eq!(status_of(&record, "vlf"), "hit");
    assert_eq!(status_of(&record, "scores"), "hit");
    assert_eq!(status_of(&record, "pairs"), "ran");
}

fn failing_load(ws: &Workspace, extra: &[&str]) -> String {
    let mut args = vec!["run", "--format", "json"];
    args.extend_from_slice(extra);
    let out = ws.silkie(&args);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(!out.stderr.contains("panicked"));
    let record = out.json();
    assert_eq!(status_of(&record, "vlf"), "failed");
    record["instances"].as_array().unwrap().iter().find(|i| i["name"] == "vlf").unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn malformed_vlfeedback_rows_are_named_or_counted() {
    let ws = fixture();
    let good: Vec<String> = fixture_rows().iter().map(Value::to_string).collect();
    // A truncated last line.
    let truncated = &good[3][..good[3].len() / 2];
    ws.write("data/vlf.jsonl", &format!("{}\n{}\n{}\n{truncated}\n", good[0], good[1], good[2]));
    assert!(failing_load(&ws, &[]).starts_with("data/vlf.jsonl:4: invalid JSON"));
    ws.run(&["--set", "vlf.params.on_bad_row=skip"]);
    let skipped = report(&ws, "vlf", &["--set", "vlf.params.on_bad_row=skip"]);
    assert_eq!(skipped["dropped"], json!({"bad_row": 1}));
    assert_eq!(skipped["rows_out"]["instructions"], 3);

    // A completion without annotations.
    let mut row = fixture_rows()[1].clone();
    row["completions"][2].as_object_mut().unwrap().remove("annotations");
    ws.write("data/vlf.jsonl", &format!("{}\n{row}\n", good[0]));
    let error = failing_load(&ws, &[]);
    assert!(error.contains("data/vlf.jsonl:2: `completions[2].annotations` is missing or not a map"), "{error}");

    // Non-UTF-8 bytes.
    let mut bytes = format!("{}\n", good[0]).into_bytes();
    bytes.extend_from_slice(b"{\"id\": \"x\xff\"}\n");
    std::fs::write(ws.path().join("data/vlf.jsonl"), bytes).unwrap();
    assert!(failing_load(&ws, &[]).starts_with("data/vlf.jsonl:2: not UTF-8"));

    // An empty file.
    ws.write("data/vlf.jsonl", "");
    assert_eq!(failing_load(&ws, &[]), "data/vlf.jsonl: the file holds no rows");

    // Duplicate ids.
    ws.write("data/vlf.jsonl", &format!("{}\n{}\n", good[0], good[0]));
    assert!(failing_load(&ws, &[]).contains("duplicate id `i1` (first seen at data/vlf.jsonl:1)"));
}

#[test]
fn missing_and_undecodable_images_fail_or_are_counted() {
    let ws = fixture();
    std::fs::remove_file(ws.path().join("data/images/i2.jpg")).unwrap();
    std::fs::write(ws.path().join("data/images/i3.jpg"), b"this is not a jpeg").unwrap();
    let error = failing_load(&ws, &[]);
    assert!(error.starts_with("data/vlf.jsonl:2: image"), "{error}");
    assert!(error.contains("i2.jpg does not exist"), "{error}");
    let skip = ["--set", "vlf.params.on_missing_image=skip"];
    ws.run(&skip);
    let counted = report(&ws, "vlf", &skip);
    assert_eq!(counted["dropped"], json!({"missing_image": 1, "undecodable_image": 1}));
    let instructions = rows(&ws, "vlf.instructions", &skip);
    let ids: Vec<&str> = instructions.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["i1", "i4"]);
    // The images are in the store: every instruction's digest is a blob of the `images` output.
    let digest = instructions[0]["image"].as_str().unwrap();
    let store = silkie::store::Store::open(&ws.path().join("cache")).unwrap();
    assert_eq!(store.read_blob(digest).unwrap(), std::fs::read(ws.path().join("data/images/i1.jpg")).unwrap());
}

#[test]
fn vlfeedback_parquet_reads_like_jsonl() {
    let ws = fixture();
    // Write the fixture as Parquet through silkie itself (load JSONL as a plain table, export).
    ws.write(
        "convert.yaml",
        "version: 1\nstages:\n  raw: { kind: load, params: { path: data/vlf.jsonl } }\n  out: { kind: export, needs: [raw], params: { path: data/vlf.parquet } }\n",
    );
    ws.run(&["convert.yaml"]);
    ws.run(&["--set", "vars.data=data/vlf.parquet"]);
    let pairs = rows(&ws, "pairs.pairs", &["--set", "vars.data=data/vlf.parquet"]);
    assert_eq!(pairs.len(), 6);
    let dropped = report(&ws, "pairs", &["--set", "vars.data=data/vlf.parquet"]);
    assert_eq!(dropped["dropped"], json!({"tie": 2, "unparseable_rating": 9, "missing_rating": 2}));
}

/// The shipped VLFeedback pipelines, pointed at the fixture.
fn with_shipped_pipelines(ws: &Workspace) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in [
        "pipelines/vlfeedback.yaml",
        "pipelines/ablations/vlfeedback-longest-as-best.yaml",
        "pipelines/ablations/vlfeedback-gpt4v-as-best.yaml",
        "pipelines/ablations/vlfeedback-per-aspect.yaml",
    ] {
        ws.write(file, &std::fs::read_to_string(root.join(file)).unwrap());
    }
}

const FIXTURE_VARS: [&str; 4] = ["--set", "vars.data=data/vlf.jsonl", "--set", "vars.images=data/images"];

#[test]
fn the_shipped_pipeline_exports_trl_data_and_its_ablations_reuse_the_load() {
    use polars::prelude::*;
    let ws = fixture();
    with_shipped_pipelines(&ws);
    let mut args = vec!["pipelines/vlfeedback.yaml"];
    args.extend_from_slice(&FIXTURE_VARS);
    let base = ws.run(&args);
    assert!(common::statuses(&base).iter().all(|(_, s)| s == "ran"));

    let df = ParquetReader::new(std::fs::File::open(ws.path().join("out/vlfeedback/pairs.parquet")).unwrap())
        .finish()
        .unwrap();
    assert_eq!(df.height(), 6);
    let names: Vec<String> = df.get_column_names().iter().map(|n| n.to_string()).collect();
    assert_eq!(names, ["prompt", "chosen", "rejected", "images"]);
    let rows = ws.silkie(&[
        "show",
        "export.file",
        "-f",
        "pipelines/vlfeedback.yaml",
        "--format",
        "json",
        "--set",
        "vars.data=data/vlf.jsonl",
        "--set",
        "vars.images=data/images",
    ]);
    assert_eq!(rows.code, 0, "{}", rows.stderr);
    let rows = rows.json();
    let first = &rows[0];
    assert_eq!(first["prompt"][0]["role"], "user");
    assert_eq!(first["prompt"][0]["content"][0]["type"], "image");
    assert_eq!(first["prompt"][0]["content"][1]["text"], "What is on the mat?");
    assert_eq!(first["chosen"][0]["content"][0]["text"], "The cat sits on a red mat.");
    assert_eq!(first["rejected"][0]["role"], "assistant");
    let images = df.column("images").unwrap().list().unwrap().get_as_series(0).unwrap();
    let bytes = images.struct_().unwrap().field_by_name("bytes").unwrap();
    let export_report = report(
        &ws,
        "export",
        &["-f", "pipelines/vlfeedback.yaml", "--set", "vars.data=data/vlf.jsonl", "--set", "vars.images=data/images"],
    );
    assert_eq!(export_report["notes"], json!({"images_embedded": 6}));
    let embedded = bytes.binary().unwrap().get(0).unwrap().to_vec();
    assert_eq!(embedded, std::fs::read(ws.path().join("data/images/i1.jpg")).unwrap());

    for ablation in ["longest-as-best", "gpt4v-as-best"] {
        let file = format!("pipelines/ablations/vlfeedback-{ablation}.yaml");
        let mut args = vec![file.as_str(), "--set", "vars.best_model=model-a"];
        args.extend_from_slice(&FIXTURE_VARS);
        let record = ws.run(&args);
        assert_eq!(status_of(&record, "vlfeedback"), "hit", "{ablation}");
        assert_eq!(status_of(&record, "scores"), "hit", "{ablation}");
        assert_eq!(status_of(&record, "pairs"), "ran", "{ablation}");
        assert!(ws.path().join(format!("out/vlfeedback-{ablation}/pairs.parquet")).is_file());
    }
    let mut args = vec!["pipelines/ablations/vlfeedback-per-aspect.yaml"];
    args.extend_from_slice(&FIXTURE_VARS);
    let per_aspect = ws.run(&args);
    assert_eq!(status_of(&per_aspect, "vlfeedback"), "hit");
    assert_eq!(common::ran(&per_aspect).len(), 9, "three scores, pairs and exports: {per_aspect}");
    assert!(ws.path().join("out/vlfeedback-per-aspect/visual_faithfulness.parquet").is_file());
}

#[test]
fn trl_jsonl_export_writes_image_files_beside_it() {
    let ws = fixture();
    with_shipped_pipelines(&ws);
    let mut args = vec![
        "pipelines/vlfeedback.yaml",
        "--set",
        "export.params.path=out/dpo/train.jsonl",
        "--set",
        "export.params.images=files",
    ];
    args.extend_from_slice(&FIXTURE_VARS);
    ws.run(&args);
    let first: Value = serde_json::from_str(ws.read("out/dpo/train.jsonl").lines().next().unwrap()).unwrap();
    let image = first["images"][0].as_str().unwrap();
    assert!(image.starts_with("train_images/") && image.ends_with(".jpg"), "{image}");
    let on_disk = std::fs::read(ws.path().join("out/dpo").join(image)).unwrap();
    assert_eq!(on_disk, std::fs::read(ws.path().join("data/images/i1.jpg")).unwrap());
    // Removed image files come back from the cache on the next run.
    std::fs::remove_dir_all(ws.path().join("out/dpo/train_images")).unwrap();
    let again = ws.run(&args);
    assert_eq!(status_of(&again, "export"), "hit");
    assert!(ws.path().join("out/dpo").join(image).is_file());

    let mut standard = args.clone();
    standard.extend_from_slice(&["--set", "export.params.style=standard"]);
    ws.run(&standard);
    let first: Value = serde_json::from_str(ws.read("out/dpo/train.jsonl").lines().next().unwrap()).unwrap();
    assert_eq!(first["prompt"], "What is on the mat?");
    assert_eq!(first["chosen"], "The cat sits on a red mat.");
}

/// One completion for [`raw_line`]: its ratings in the order they are written.
struct Answer {
    model: &'static str,
    response: &'static str,
    ratings: Vec<(&'static str, String)>,
}

fn answer(model: &'static str, response: &'static str, ratings: &[(&'static str, &str)]) -> Answer {
    Answer { model, response, ratings: ratings.iter().map(|(a, r)| (*a, r.to_string())).collect() }
}

/// One JSONL line with its annotation keys in the order given (json! would sort them).
fn raw_line(id: &str, prompt: &str, answers: &[Answer]) -> String {
    let completions: Vec<String> = answers
        .iter()
        .map(|a| {
            let annotations: Vec<String> = a
                .ratings
                .iter()
                .map(|(aspect, r)| format!("{}: {{\"Rating\": {}, \"Rationale\": \"\"}}", json!(aspect), json!(r)))
                .collect();
            format!(
                "{{\"model\": {}, \"response\": {}, \"annotations\": {{{}}}}}",
                json!(a.model),
                json!(a.response),
                annotations.join(", ")
            )
        })
        .collect();
    format!("{{\"id\": {}, \"prompt\": {}, \"completions\": [{}]}}", json!(id), json!(prompt), completions.join(", "))
}

const H: &str = "Helpfulness";
const EC: &str = "Ethical Considerations";
const VF: &str = "Visual Faithfulness";

fn run_lines(lines: &[String], sets: &[&str]) -> (Workspace, Vec<(String, String, String)>, Value) {
    let ws = Workspace::new();
    ws.write("data/vlf.jsonl", &(lines.join("\n") + "\n"));
    ws.write(
        "pipeline.yaml",
        "version: 1\nstages:\n  vlf: { kind: load, params: { path: data/vlf.jsonl, format: vlfeedback } }\n  scores: { kind: aggregate, needs: [vlf] }\n  pairs: { kind: pair, needs: [vlf, scores] }\n",
    );
    let mut args = Vec::new();
    for s in sets {
        args.extend_from_slice(&["--set", *s]);
    }
    ws.run(&args);
    let pairs = triples(&rows(&ws, "pairs.pairs", &args));
    let report = report(&ws, "pairs", &args);
    (ws, pairs, report["dropped"].clone())
}

#[test]
fn means_add_the_ratings_in_file_order_as_the_release_does() {
    // In file order 0.3 + 0.2 + 0.1 and 0.6 + 0 + 0 are both 0.6 exactly: a tie. Added in
    // aspect-id order the first would be 0.6000000000000001 and win.
    let line = raw_line(
        "q",
        "p",
        &[
            answer("model-a", "x", &[(H, "0.3"), (EC, "0.2"), (VF, "0.1")]),
            answer("model-b", "y", &[(H, "0.6"), (EC, "0"), (VF, "0")]),
        ],
    );
    let (_, pairs, dropped) = run_lines(&[line], &[]);
    assert!(pairs.is_empty(), "{pairs:?}");
    assert_eq!(dropped, json!({"tie": 1}));
}

#[test]
fn huge_and_non_ascii_ratings_count_like_python() {
    let all = |model: &'static str, r: &str| answer(model, model, &[(H, r), (EC, r), (VF, r)]);
    let answers = [all("model-a", "1e308"), all("model-b", "4"), all("model-c", "1e308"), all("model-d", "\u{664}")];
    let (_, pairs, dropped) = run_lines(&[raw_line("q", "p", &answers)], &[]);
    // Means: a = c = inf (a tie), b = d = 4 (٤ is 4, a tie); inf beats 4.
    assert_eq!(pairs, [t("q", "a", "b"), t("q", "a", "d"), t("q", "c", "b"), t("q", "c", "d")]);
    assert_eq!(dropped, json!({"tie": 2}));
}

#[test]
fn a_margin_equal_to_the_minimum_within_rounding_is_kept() {
    // 13/3 − 10/3 is 0.9999999999999996 in floating point.
    let line = raw_line(
        "q",
        "p",
        &[
            answer("model-a", "x", &[(H, "4"), (EC, "5"), (VF, "4")]),
            answer("model-b", "y", &[(H, "3"), (EC, "3"), (VF, "4")]),
        ],
    );
    let (_, pairs, _) = run_lines(&[line], &["pairs.params.min_margin=1"]);
    assert_eq!(pairs, [t("q", "a", "b")]);
}

#[test]
fn a_misspelt_aspect_fails_with_a_suggestion() {
    let ws = fixture();
    let out = ws.silkie(&["run", "--set", "scores.params.aspects=[helpfulnes]"]);
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains("no rating is for the aspect `helpfulnes`"), "{}", out.stdout);
    assert!(out.stdout.contains("did you mean `helpfulness`?"), "{}", out.stdout);
}

#[test]
fn ids_cannot_reach_outside_the_images_folder_and_truncated_jpegs_are_caught() {
    let ws = fixture();
    let mut rows = fixture_rows();
    rows[0]["id"] = json!("../secret/x");
    let lines: Vec<String> = rows.iter().map(Value::to_string).collect();
    ws.write("data/vlf.jsonl", &(lines.join("\n") + "\n"));
    let error = failing_load(&ws, &[]);
    assert!(error.contains("id `../secret/x` cannot name an image inside the images folder"), "{error}");

    let ws = fixture();
    let jpeg = ws.path().join("data/images/i2.jpg");
    // Big enough that the cut falls in the pixel data, past a header that still reads.
    image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, ((x * y) % 256) as u8]))
        .save(&jpeg)
        .unwrap();
    let bytes = std::fs::read(&jpeg).unwrap();
    std::fs::write(&jpeg, &bytes[..bytes.len() - 40]).unwrap();
    let error = failing_load(&ws, &[]);
    assert!(error.contains("i2.jpg cannot be decoded: the file is cut short"), "{error}");
}

#[test]
fn the_split_by_prompt_keeps_a_prompt_text_on_one_side_across_images() {
    let ws = Workspace::new();
    let mut lines = Vec::new();
    for i in 0..120 {
        let completions = vec![
            completion("model-a", "long answer", "5", "5", Some("5")),
            completion("model-b", "short", "2", "2", Some("2")),
        ];
        // Four prompt texts, each over thirty different images.
        lines.push(json!({"id": format!("q{i:03}"), "prompt": format!("Describe image kind {}.", i % 4), "completions": completions}).to_string());
        write_image(&ws, &format!("q{i:03}"), i as u8);
    }
    ws.write("data/vlf.jsonl", &lines.join("\n"));
    let pipeline = |by: &str| {
        format!(
            "version: 1\nstages:\n  vlf: {{ kind: load, params: {{ path: data/vlf.jsonl, format: vlfeedback, images: data/images }} }}\n  scores: {{ kind: aggregate, needs: [vlf] }}\n  pairs: {{ kind: pair, needs: [vlf, scores], params: {{ split: {{ eval: 0.5, seed: 1, by: {by} }} }} }}\n"
        )
    };
    let prompts = |rows: &[Value]| {
        rows.iter().map(|r| r["prompt"].as_str().unwrap().to_string()).collect::<std::collections::BTreeSet<_>>()
    };
    ws.write("pipeline.yaml", &pipeline("prompt"));
    ws.run(&[]);
    let (train, eval) = (rows(&ws, "pairs.pairs", &[]), rows(&ws, "pairs.eval_pairs", &[]));
    assert!(prompts(&train).is_disjoint(&prompts(&eval)));
    assert_eq!(train.len() + eval.len(), 120);
    // By instruction (the default), the unit is prompt and image: the texts repeat across sides,
    // the (prompt, image) pairs never do.
    ws.write("pipeline.yaml", &pipeline("instruction"));
    ws.run(&[]);
    let (train, eval) = (rows(&ws, "pairs.pairs", &[]), rows(&ws, "pairs.eval_pairs", &[]));
    let units = |rows: &[Value]| {
        rows.iter()
            .map(|r| (r["prompt"].to_string(), r["image"].to_string()))
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert!(units(&train).is_disjoint(&units(&eval)));
    assert!(!prompts(&train).is_disjoint(&prompts(&eval)));
}

/// Rows of `stage` (in `pipeline`) as (prompt, chosen, rejected, image digest).
fn core_pairs(ws: &Workspace, stage: &str, pipeline: &str) -> Vec<(Value, Value, Value, Value)> {
    let mut args = vec!["show", stage, "-f", pipeline, "--rows", "100", "--format", "json"];
    args.extend_from_slice(&FIXTURE_VARS);
    let out = ws.silkie(&args);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rows = out.json();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| (r["prompt"].clone(), r["chosen"].clone(), r["rejected"].clone(), r["image"].clone()))
        .collect()
}

#[test]
fn what_export_writes_in_trls_layout_loads_back_as_the_same_pairs() {
    let ws = fixture();
    with_shipped_pipelines(&ws);
    let mut args = vec!["pipelines/vlfeedback.yaml"];
    args.extend_from_slice(&FIXTURE_VARS);
    ws.run(&args);
    let original = core_pairs(&ws, "pairs", "pipelines/vlfeedback.yaml");
    assert!(original.iter().all(|p| p.3.is_string()), "every fixture pair has an image");
    // Embedded in Parquet, conversational.
    ws.write(
        "reload.yaml",
        "version: 1\nstages:\n  again: { kind: load, params: { path: out/vlfeedback/pairs.parquet, format: trl } }\n",
    );
    ws.run(&["reload.yaml"]);
    assert_eq!(core_pairs(&ws, "again", "reload.yaml"), original);
    // Image files beside JSONL, in the standard style too: paths relative to the table's folder.
    for style in ["conversational", "standard"] {
        let mut files = args.clone();
        let style_set = format!("export.params.style={style}");
        files.extend_from_slice(&[
            "--set",
            "export.params.path=out/dpo/train.jsonl",
            "--set",
            "export.params.images=files",
            "--set",
            &style_set,
        ]);
        ws.run(&files);
        ws.write(
            "reload.yaml",
            "version: 1\nstages:\n  again: { kind: load, params: { path: out/dpo/train.jsonl, format: trl, images: out/dpo } }\n",
        );
        ws.run(&["reload.yaml"]);
        assert_eq!(core_pairs(&ws, "again", "reload.yaml"), original, "{style}");
    }
    // Paths with nothing to resolve them against are named, with the fix.
    ws.write(
        "reload.yaml",
        "version: 1\nstages:\n  again: { kind: load, params: { path: out/dpo/train.jsonl, format: trl } }\n",
    );
    let out = ws.silkie(&["run", "reload.yaml"]);
    assert!(
        out.stdout.contains("out/dpo/train.jsonl: row 1: image `train_images/") && out.stdout.contains("set `images:`"),
        "{}",
        out.stdout
    );
}
