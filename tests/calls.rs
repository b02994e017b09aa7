//! Model calls against a local OpenAI-compatible server: faults, the memo, pools, secrets.

mod common;
#[path = "common/server.rs"]
mod server;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Workspace, status_of};
use serde_json::Value;
use server::{Fault, Server};

fn instructions(ws: &Workspace, n: usize) {
    let mut csv = String::from("id,prompt\n");
    for i in 0..n {
        csv.push_str(&format!("q{i:03},What is shown in picture {i}?\n"));
    }
    ws.write("data/instructions.csv", &csv);
}

fn pipeline(url: &str, pool: &[&str], extra_models: &str) -> String {
    let models: String = ["model-a", "model-b", "model-c", "model-d"]
        .iter()
        .map(|m| format!("  {m}: {{ provider: openai, model: {m}, base_url: \"{url}\", runtime: {{ max_in_flight: 8, retry_backoff: 0.01, price_input_per_million: 10, price_output_per_million: 30 }} }}\n"))
        .collect();
    format!(
        "version: 1\nmodels:\n{models}{extra_models}stages:\n  instructions: {{ kind: load, params: {{ path: data/instructions.csv }} }}\n  responses:\n    kind: sample\n    needs: [instructions]\n    params: {{ pool: [{}], per_instruction: 2, max_tokens: 64 }}\n",
        pool.join(", ")
    )
}

fn responses(ws: &Workspace) -> Vec<Value> {
    let out = ws.silkie(&["show", "responses.responses", "--rows", "100000", "--format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.json().as_array().unwrap().clone()
}

/// Starts `silkie run` and kills it (SIGKILL) once `n` more calls have completed at the
/// server, while others are in flight.
fn kill_after_completions(ws: &Workspace, server: &Server, n: usize) {
    let before = server.completed.lock().unwrap().len();
    let mut child =
        ws.command(&["run"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let start = std::time::Instant::now();
    while server.completed.lock().unwrap().len() < before + n && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The (model, user text) of a request, for counting calls.
fn call_of(body: &Value) -> String {
    format!("{} {}", body["model"], server::answer(body))
}

#[test]
fn faults_are_retried_and_every_call_completes_once() {
    // Every fourth request fails in some way: 429 with Retry-After, 500, garbage, a dropped
    // connection, a slow reply.
    let server = Server::start(|n| match n % 12 {
        1 => Fault::TooManyRequests,
        4 => Fault::ServerError,
        7 => Fault::MalformedJson,
        10 => Fault::DropConnection,
        11 => Fault::Slow(Duration::from_millis(30)),
        _ => Fault::None,
    });
    let ws = Workspace::new();
    instructions(&ws, 40);
    ws.write("pipeline.yaml", &pipeline(&server.url, &["model-a", "model-b", "model-c"], ""));
    let record = ws.run(&[]);
    assert_eq!(status_of(&record, "responses"), "ran");
    let rows = responses(&ws);
    assert_eq!(rows.len(), 80);
    for row in &rows {
        assert_eq!(row["status"], "ok");
        assert!(row["response"].as_str().unwrap().contains("says:"), "{row}");
    }
    let completed = server.completed.lock().unwrap().clone();
    let mut seen = BTreeMap::new();
    for body in &completed {
        *seen.entry(call_of(body)).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 80);
    assert!(seen.values().all(|n| *n == 1), "a call completed twice");
    assert!(server.request_count() > 80, "faults were injected and retried");
}

#[test]
fn a_rerun_sends_nothing_and_a_new_model_only_its_own_calls() {
    let server = Server::start(|_| Fault::None);
    let ws = Workspace::new();
    instructions(&ws, 30);
    ws.write("pipeline.yaml", &pipeline(&server.url, &["model-a", "model-b", "model-c"], ""));
    ws.run(&[]);
    let before = responses(&ws);
    let sent = server.request_count();
    assert_eq!(sent, 60);
    // The report counts each model's calls, tokens and cost (11 tokens in, 7 out per call).
    let report = ws.silkie(&["show", "responses", "--report", "--format", "json"]).json();
    let a = &report["calls"]["model-a"];
    let n = a["calls"].as_u64().unwrap();
    assert_eq!(a["tokens_in"].as_u64().unwrap(), 11 * n);
    assert!((a["cost_usd"].as_f64().unwrap() - (11.0 * 10.0 + 7.0 * 30.0) * n as f64 / 1e6).abs() < 1e-12);
    // The stage itself reruns (forced), but every call comes from the memo.
    ws.run(&["--force", "responses"]);
    assert_eq!(server.request_count(), sent);
    let again = ws.silkie(&["show", "responses", "--report", "--format", "json"]).json();
    assert_eq!(again, report, "the report does not depend on what came from the memo");
    // A fourth model: only the instructions where it ranks in change, and only it is called.
    ws.write("pipeline.yaml", &pipeline(&server.url, &["model-a", "model-b", "model-c", "model-d"], ""));
    ws.run(&[]);
    let new: Vec<Value> = server.requests.lock().unwrap()[sent..].to_vec();
    assert!(!new.is_empty());
    assert!(new.iter().all(|b| b["model"] == "model-d"), "only the new model is called");
    let after = responses(&ws);
    let kept = after.iter().filter(|r| r["model"] != "model-d").count();
    assert_eq!(kept + new.len(), 60);
    assert!(before.len() == after.len());
}

#[test]
fn offline_runs_send_nothing_and_count_what_is_missing() {
    let server = Server::start(|_| Fault::None);
    let ws = Workspace::new();
    instructions(&ws, 10);
    ws.write("pipeline.yaml", &pipeline(&server.url, &["model-a", "model-b"], ""));
    let out = ws.silkie(&["run", "--offline"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains("--offline: 20 calls are not in the memo (model-a: 10, model-b: 10)"),
        "{}",
        out.stdout
    );
    assert_eq!(server.request_count(), 0);
    ws.run(&[]);
    ws.run(&["--offline", "--force", "responses"]);
    assert_eq!(server.request_count(), 20);
}

#[test]
fn the_api_key_never_reaches_the_cache() {
    let server = Server::start(|_| Fault::None);
    let ws = Workspace::new();
    instructions(&ws, 5);
    let extra = format!(
        "  keyed: {{ provider: openai, model: keyed, base_url: \"{}\", api_key_env: SILKIE_TEST_KEY }}\n",
        server.url
    );
    ws.write("pipeline.yaml", &pipeline(&server.url, &["keyed", "model-a"], &extra));
    let secret = "sk-test-4d1f1e5ecret-never-store-me";
    let missing = ws.command(&["run"]).env_remove("SILKIE_TEST_KEY").output().unwrap();
    assert!(
        String::from_utf8_lossy(&missing.stdout)
            .contains("model `keyed` reads its API key from $SILKIE_TEST_KEY, which is not set")
    );
    let out = ws.command(&["run", "--format", "json"]).env("SILKIE_TEST_KEY", secret).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(secret));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(secret));
    for file in silkie::store::walk_files(&ws.path().join("cache")).unwrap() {
        let bytes = std::fs::read(&file).unwrap();
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "{} holds the key", file.display());
    }
}

#[test]
fn killed_runs_resend_at_most_the_calls_in_flight() {
    // Replies come in waves of up to 24 (8 in flight × 3 models); a kill lands after a wave or
    // two, so 3 kills leave calls for the last run even on a loaded machine (5 could finish all 120).
    let server = Server::start(|_| Fault::Slow(Duration::from_millis(100)));
    let ws = Workspace::new();
    instructions(&ws, 60);
    ws.write("pipeline.yaml", &pipeline(&server.url, &["model-a", "model-b", "model-c"], ""));
    let kills = 3;
    let mut progress = Vec::new();
    for _ in 0..kills {
        kill_after_completions(&ws, &server, 10);
        progress.push(server.completed.lock().unwrap().len());
    }
    let before_final = server.request_count();
    ws.run(&[]);
    assert!(server.request_count() > before_final, "the kills left calls for the last run: {progress:?}");
    let interrupted = responses(&ws);
    let sent = server.request_count();
    // 120 calls; every kill may lose what was in flight (max_in_flight 8 per model, 3 models).
    assert!(sent <= 120 + kills as usize * 24, "{sent} requests for 120 calls");
    // The same table as an uninterrupted run.
    let clean_server = Server::start(|_| Fault::None);
    let clean = Workspace::new();
    instructions(&clean, 60);
    clean.write("pipeline.yaml", &pipeline(&clean_server.url, &["model-a", "model-b", "model-c"], ""));
    clean.run(&[]);
    let strip = |rows: &[Value]| {
        rows.iter()
            .map(|r| (r["instruction_id"].clone(), r["model"].clone(), r["response"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&interrupted), strip(&responses(&clean)));
}

/// A judge that rates every answer in the template's format: helpfulness from the answer's
/// length, faithfulness from its first letter, ethics 5. It leaves out the faithfulness
/// section the first time it sees "picture 3?", so that reply is re-asked.
fn judge_reply(body: &Value) -> String {
    let messages = body["messages"].as_array().unwrap();
    let prompt: String = messages[0]["content"].as_array().unwrap().iter().filter_map(|p| p["text"].as_str()).collect();
    let mut answers = Vec::new();
    for i in 1.. {
        let open = format!("<answer {i}>\n");
        let Some(start) = prompt.find(&open) else { break };
        let rest = &prompt[start + open.len()..];
        let end = rest.find(&format!("\n</answer {i}>")).unwrap();
        answers.push(rest[..end].to_string());
    }
    let first_ask = messages.len() == 1;
    let mut out = String::new();
    for (aspect, rate) in [
        ("Helpfulness", Box::new(|a: &str| a.len() % 5 + 1) as Box<dyn Fn(&str) -> usize>),
        ("Visual Faithfulness", Box::new(|a: &str| (a.as_bytes()[0] as usize) % 5 + 1)),
        ("Ethical Considerations", Box::new(|_: &str| 5)),
    ] {
        if aspect == "Visual Faithfulness" && first_ask && prompt.contains("picture 3?") {
            continue;
        }
        out.push_str(&format!("#### {aspect} Assessment\n"));
        for (i, a) in answers.iter().enumerate() {
            out.push_str(&format!("##### Output for Text {}\nRating: {}\nRationale: because.\n", i + 1, rate(a)));
        }
    }
    out
}

/// The helper judge rates helpfulness as the answer's length % 5 + 1: each rating must sit on
/// the response it was given for.
fn assert_helpfulness_maps_back(ratings: &[Value], responses: &[Value]) {
    for r in ratings.iter().filter(|r| r["aspect"] == "helpfulness") {
        let response =
            responses.iter().find(|x| x["instruction_id"] == r["instruction_id"] && x["model"] == r["model"]).unwrap();
        let text = response["response"].as_str().unwrap();
        assert_eq!(r["rating"].as_f64().unwrap(), (text.len() % 5 + 1) as f64);
    }
}

fn judged_pipeline(sampler: &str, judge: &str) -> String {
    let base = pipeline(
        sampler,
        &["model-a", "model-b", "model-c"],
        &format!(
            "  judge: {{ provider: openai, model: judge, base_url: \"{judge}\", runtime: {{ max_in_flight: 4, retry_backoff: 0.01 }} }}\n"
        ),
    );
    base + "  ratings:\n    use: stages/annotate-3aspect.yaml\n    needs: [instructions, responses]\n    inputs: { instructions: instructions.table }\n    params: { judge: judge }\n  scores: { kind: aggregate, needs: [responses, ratings] }\n  pairs: { kind: pair, needs: [instructions, scores], inputs: { instructions: instructions.table } }\n"
}

fn with_judge_files(ws: &Workspace) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["stages/annotate-3aspect.yaml", "stages/templates/annotate-3aspect.j2"] {
        ws.write(file, &std::fs::read_to_string(root.join(file)).unwrap());
    }
}

#[test]
fn the_judge_rates_every_response_and_incomplete_replies_are_reasked() {
    let sampler = Server::start(|_| Fault::None);
    let judge = Server::start_with(|n| if n % 5 == 2 { Fault::ServerError } else { Fault::None }, judge_reply);
    let ws = Workspace::new();
    with_judge_files(&ws);
    instructions(&ws, 12);
    ws.write("pipeline.yaml", &judged_pipeline(&sampler.url, &judge.url));
    let record = ws.run(&[]);
    assert_eq!(status_of(&record, "pairs"), "ran");
    let out = ws.silkie(&["show", "ratings.ratings", "--rows", "1000", "--format", "json"]);
    let ratings = out.json().as_array().unwrap().clone();
    assert_eq!(ratings.len(), 12 * 2 * 3);
    assert!(ratings.iter().all(|r| r["status"] == "ok"), "{ratings:?}");
    let report = ws.silkie(&["show", "ratings", "--report", "--format", "json"]).json();
    assert_eq!(report["notes"]["reasks"], 1);
    // One call per instruction, plus the re-ask: the judge completed 13 calls.
    assert_eq!(judge.completed.lock().unwrap().len(), 13);
    // Ratings map back to the right response: helpfulness is the response's length % 5 + 1.
    let responses = responses(&ws);
    assert_helpfulness_maps_back(&ratings, &responses);
}

#[test]
fn shuffled_presentation_maps_ratings_back() {
    let sampler = Server::start(|_| Fault::None);
    let judge = Server::start_with(|_| Fault::None, judge_reply);
    let ws = Workspace::new();
    with_judge_files(&ws);
    instructions(&ws, 8);
    ws.write(
        "pipeline.yaml",
        &judged_pipeline(&sampler.url, &judge.url)
            .replace("params: { judge: judge }", "params: { judge: judge, shuffle_order: true, seed: 5 }"),
    );
    ws.run(&[]);
    let ratings = ws.silkie(&["show", "ratings.ratings", "--rows", "1000", "--format", "json"]).json();
    let responses = responses(&ws);
    assert_helpfulness_maps_back(ratings.as_array().unwrap(), &responses);
}

#[test]
fn killing_the_judge_stage_resends_at_most_the_calls_in_flight() {
    let sampler = Server::start(|_| Fault::None);
    let judge = Server::start_with(|_| Fault::Slow(Duration::from_millis(40)), judge_reply);
    let ws = Workspace::new();
    with_judge_files(&ws);
    instructions(&ws, 40);
    ws.write("pipeline.yaml", &judged_pipeline(&sampler.url, &judge.url));
    ws.run(&["responses"]);
    let kills = 4;
    for _ in 0..kills {
        kill_after_completions(&ws, &judge, 5);
    }
    ws.run(&[]);
    // 40 judge calls and 1 re-ask; each kill may lose what was in flight (max_in_flight 4).
    let sent = judge.request_count();
    assert!(sent <= 41 + kills * 4, "{sent} judge requests");
    let interrupted = ws.silkie(&["show", "ratings.ratings", "--rows", "1000", "--format", "json"]).json();
    let clean = Workspace::new();
    with_judge_files(&clean);
    instructions(&clean, 40);
    let (s2, j2) = (Server::start(|_| Fault::None), Server::start_with(|_| Fault::None, judge_reply));
    clean.write("pipeline.yaml", &judged_pipeline(&s2.url, &j2.url));
    clean.run(&[]);
    let uninterrupted = clean.silkie(&["show", "ratings.ratings", "--rows", "1000", "--format", "json"]).json();
    let strip = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| (r["instruction_id"].clone(), r["model"].clone(), r["aspect"].clone(), r["rating"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&interrupted), strip(&uninterrupted));
}

#[test]
fn image_paths_in_a_table_become_stored_images_sent_as_data_urls() {
    let server = Server::start(|_| Fault::None);
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.path().join("data/img")).unwrap();
    image::RgbImage::from_pixel(16, 16, image::Rgb([200, 30, 30])).save(ws.path().join("data/img/red.png")).unwrap();
    ws.write("data/instructions.csv", "id,prompt,image\nq1,What colour is this?,red.png\nq2,And this?,missing.png\n");
    let pipeline = pipeline(&server.url, &["model-a", "model-b"], "").replace(
        "params: { path: data/instructions.csv }",
        "params: { path: data/instructions.csv, images: data/img }",
    );
    ws.write("pipeline.yaml", &pipeline);
    let out = ws.silkie(&["run"]);
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains("data/instructions.csv: row 2: image"), "{}", out.stdout);
    assert!(out.stdout.contains("missing.png does not exist"), "{}", out.stdout);
    ws.write("pipeline.yaml", &pipeline.replace("images: data/img }", "images: data/img, on_missing_image: skip }"));
    ws.run(&[]);
    let report = ws.silkie(&["show", "instructions", "--report", "--format", "json"]).json();
    assert_eq!(report["dropped"]["missing_image"], 1);
    let requests = server.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2);
    let url = requests[0]["messages"][0]["content"][0]["image_url"]["url"].as_str().unwrap().to_string();
    assert!(url.starts_with("data:image/png;base64,"), "{url}");
}

#[test]
fn the_shipped_silkie_pipeline_runs_end_to_end_against_local_servers() {
    // One server plays OpenAI (GPT-4V answers and judges), another the open models.
    let openai = Server::start_with(
        |_| Fault::None,
        |body| {
            let text = body.to_string();
            if text.contains("Reply in exactly this format") { judge_reply(body) } else { server::answer(body) }
        },
    );
    let open_models = Server::start(|_| Fault::None);
    let ws = Workspace::new();
    with_judge_files(&ws);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    ws.write("pipelines/silkie.yaml", &std::fs::read_to_string(root.join("pipelines/silkie.yaml")).unwrap());
    std::fs::create_dir_all(ws.path().join("data/silkie/images")).unwrap();
    let mut lines = Vec::new();
    for i in 0..6 {
        image::RgbImage::from_pixel(8, 8, image::Rgb([40 * i as u8, 90, 200]))
            .save(ws.path().join(format!("data/silkie/images/{i}.png")))
            .unwrap();
        lines.push(serde_json::json!({"id": format!("s{i}"), "prompt": format!("What is in picture {i}?"), "image": format!("{i}.png")}).to_string());
    }
    ws.write("data/silkie/instructions.jsonl", &lines.join("\n"));
    let vars = [format!("vars.openai_url={}", openai.url), format!("vars.open_models_url={}", open_models.url)];
    let args = ["run", "pipelines/silkie.yaml", "--set", &vars[0], "--set", &vars[1], "--format", "json"];
    let out = ws.command(&args).env("OPENAI_API_KEY", "sk-local-test").output().unwrap();
    let record: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert!(record["ok"].as_bool().unwrap(), "{record}");
    // 6 instructions × 4 responses, from the 12-model pool.
    let responses = ws.silkie(&[
        "show",
        "responses.responses",
        "-f",
        "pipelines/silkie.yaml",
        "--set",
        &vars[0],
        "--set",
        &vars[1],
        "--rows",
        "100",
        "--format",
        "json",
    ]);
    assert_eq!(responses.json().as_array().unwrap().len(), 24);
    assert!(ws.path().join("out/silkie/pairs.parquet").is_file());
    // The judge got one call per instruction, and one re-ask (for picture 3).
    let judged = openai
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|b| b.to_string().contains("Reply in exactly this format"))
        .count();
    assert_eq!(judged, 7);
}

#[test]
fn a_judge_with_structured_output_is_read_from_json() {
    let sampler = Server::start(|_| Fault::None);
    // Answers in JSON, as the schema in the request asks: helpfulness 4, the rest 3.
    let judge = Server::start_with(
        |_| Fault::None,
        |body| {
            let schema = &body["response_format"]["json_schema"]["schema"];
            let n = schema["properties"]["helpfulness"]["minItems"].as_u64().unwrap() as usize;
            let list = |r: u64| Value::Array(vec![serde_json::json!({"rating": r, "rationale": "json"}); n]);
            serde_json::json!({"helpfulness": list(4), "visual_faithfulness": list(3), "ethical_considerations": list(3)}).to_string()
        },
    );
    let ws = Workspace::new();
    with_judge_files(&ws);
    instructions(&ws, 5);
    ws.write(
        "pipeline.yaml",
        &judged_pipeline(&sampler.url, &judge.url)
            .replace("params: { judge: judge }", "params: { judge: judge, response_format: json }"),
    );
    ws.run(&[]);
    let ratings = ws.silkie(&["show", "ratings.ratings", "--rows", "1000", "--format", "json"]).json();
    let ratings = ratings.as_array().unwrap();
    assert_eq!(ratings.len(), 5 * 2 * 3);
    assert!(ratings.iter().all(|r| r["status"] == "ok" && r["rationale"] == "json"));
    assert!(ratings.iter().filter(|r| r["aspect"] == "helpfulness").all(|r| r["rating"] == 4.0));
}

#[test]
fn a_reasked_judge_keeps_the_ratings_it_gave_before() {
    let sampler = Server::start(|_| Fault::None);
    // First reply: helpfulness only. The re-ask: the other two aspects only.
    let judge = Server::start_with(
        |_| Fault::None,
        |body| {
            let full = judge_reply(&serde_json::json!({"messages": [body["messages"][0].clone()]}));
            let first_ask = body["messages"].as_array().unwrap().len() == 1;
            // Sections start at "#### <Aspect> Assessment" lines.
            let mut out = String::new();
            let mut keep = false;
            for line in full.lines() {
                if line.starts_with("#### ") {
                    keep = line.starts_with("#### Helpfulness") == first_ask;
                }
                if keep {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            out
        },
    );
    let ws = Workspace::new();
    with_judge_files(&ws);
    // (Three instructions: the helper judge always leaves out faithfulness for picture 3.)
    instructions(&ws, 3);
    ws.write("pipeline.yaml", &judged_pipeline(&sampler.url, &judge.url));
    ws.run(&[]);
    let ratings = ws.silkie(&["show", "ratings.ratings", "--rows", "1000", "--format", "json"]).json();
    assert!(ratings.as_array().unwrap().iter().all(|r| r["status"] == "ok"), "{ratings}");
}

#[test]
fn model_params_are_sent_and_setup_errors_are_not_remembered() {
    let server =
        Server::start(|n| if n == 0 { Fault::Status(402, "{\"error\": \"payment required\"}") } else { Fault::None });
    let ws = Workspace::new();
    instructions(&ws, 3);
    let pipeline = pipeline(&server.url, &["model-a", "model-b"], "")
        .replace("model: model-a,", "model: model-a, params: { top_k: 20 },");
    ws.write("pipeline.yaml", &pipeline);
    let out = ws.silkie(&["run"]);
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains("HTTP 402"), "{}", out.stdout);
    // Fixed (the server now answers): nothing was remembered from the failure.
    ws.run(&[]);
    let requests = server.requests.lock().unwrap().clone();
    assert!(requests.iter().filter(|b| b["model"] == "model-a").all(|b| b["top_k"] == 20));
    // Everything is in the memo now: a forced rerun needs no endpoint, so no API key either.
    let keyed = pipeline.replace("model: model-a,", "model: model-a, api_key_env: SILKIE_TEST_ABSENT_KEY,");
    ws.write("pipeline.yaml", &keyed);
    let identity_unchanged =
        ws.command(&["run", "--force", "responses"]).env_remove("SILKIE_TEST_ABSENT_KEY").output().unwrap();
    assert!(identity_unchanged.status.success(), "{}", String::from_utf8_lossy(&identity_unchanged.stdout));
}

#[test]
fn retry_after_is_honoured() {
    let server = Server::start(|n| if n == 0 { Fault::RetryAfter(1) } else { Fault::None });
    let ws = Workspace::new();
    instructions(&ws, 1);
    ws.write(
        "pipeline.yaml",
        &pipeline(&server.url, &["model-a"], "").replace("per_instruction: 2", "per_instruction: 1"),
    );
    let start = std::time::Instant::now();
    ws.run(&[]);
    assert!(start.elapsed() >= Duration::from_secs(1), "the retry did not wait for Retry-After");
    assert_eq!(server.request_count(), 2);
}

#[test]
fn the_release_template_style_takes_fewer_responses_than_placeholders() {
    let sampler = Server::start(|_| Fault::None);
    let judge = Server::start_with(
        |_| Fault::None,
        |_| {
            let block = |a: &str| {
                format!("#### {a} Assessment\n##### Output for Text 1\nRating: 4\n##### Output for Text 2\nRating: 2\n")
            };
            [block("Helpfulness"), block("Visual Faithfulness"), block("Ethical Considerations")].concat()
        },
    );
    let ws = Workspace::new();
    with_judge_files(&ws);
    ws.write("original.txt", "Instruction: [[instruction_placeholder]]\nText 1: [[text_1_placeholder]]\nText 2: [[text_2_placeholder]]\nText 3: [[text_3_placeholder]]\nText 4: [[text_4_placeholder]]\n");
    instructions(&ws, 3);
    ws.write(
        "pipeline.yaml",
        &judged_pipeline(&sampler.url, &judge.url).replace(
            "params: { judge: judge }",
            "params: { judge: judge, template: original.txt, placeholder_style: vlfeedback }",
        ),
    );
    ws.run(&[]);
    let ratings = ws.silkie(&["show", "ratings.ratings", "--rows", "1000", "--format", "json"]).json();
    assert_eq!(ratings.as_array().unwrap().len(), 3 * 2 * 3);
    assert!(ratings.as_array().unwrap().iter().all(|r| r["status"] == "ok"));
}
