//! aggregate + pair (`all_pairs`) over VLFeedback's size: 80,258 instructions × 4 responses
//! × 3 aspects with random ratings (DESIGN §9: under a second together in release).
//!
//! `cargo bench --bench prefs` times the two steps in-process on the tables `load` would
//! produce, reports peak memory, and — when python3 is on PATH — times a plain Python loop
//! doing the released recipe's pairing over the same rows, written as VLFeedback JSONL.
//!
//! Then the end-to-end path as users run it — `silkie run` of load (VLFeedback JSONL) →
//! aggregate → pair → export (TRL, conversational), a whole process with a fresh cache —
//! beside `benches/prefs_polars.py`, the same job in Python polars, run with the test venv's
//! Python (scripts/libtorch-env) when polars is installed there.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use polars::prelude::*;
use silkie::data::aggregate::{self, Method, Missing};
use silkie::data::pairs::{self, Strategy};

const INSTRUCTIONS: usize = 80_258;
const PER_INSTRUCTION: usize = 4;
const RUNS: usize = 5;
const ASPECTS: [&str; 3] = ["helpfulness", "visual_faithfulness", "ethical_considerations"];
const NAMES: [&str; 3] = ["Helpfulness", "Visual Faithfulness", "Ethical Considerations"];

/// A small deterministic generator (SplitMix64): the same data on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Rating strings as the release has them: mostly digits, now and then "N/A".
fn rating(rng: &mut Rng) -> String {
    match rng.next() % 100 {
        0 => "N/A".to_string(),
        r => (1 + r % 5).to_string(),
    }
}

struct Data {
    instructions: DataFrame,
    responses: DataFrame,
    ratings: DataFrame,
    jsonl: String,
}

fn generate() -> Data {
    let mut rng = Rng(42);
    let (mut ids, mut prompts) = (Vec::new(), Vec::new());
    let (mut r_ids, mut r_models, mut r_samples, mut r_texts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut a_ids, mut a_models, mut a_samples, mut a_aspects, mut a_values) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut jsonl = String::new();
    for i in 0..INSTRUCTIONS {
        let id = format!("inst-{i:06}");
        let prompt = format!("Describe image {i} in detail.");
        let mut completions = Vec::new();
        for m in 0..PER_INSTRUCTION {
            let model = format!("model-{}", (i + m * 3) % 12);
            let text = format!("Response {m} to instruction {i}: {}", rng.next() % 1000);
            let mut annotations = serde_json::Map::new();
            for (aspect, name) in ASPECTS.iter().zip(NAMES) {
                let r = rating(&mut rng);
                a_ids.push(id.clone());
                a_models.push(model.clone());
                a_samples.push(0i64);
                a_aspects.push(aspect.to_string());
                a_values.push(r.parse::<f64>().ok());
                annotations.insert(name.to_string(), serde_json::json!({"Rating": r, "Rationale": ""}));
            }
            completions.push(serde_json::json!({"model": model, "response": text, "annotations": annotations}));
            r_ids.push(id.clone());
            r_models.push(model);
            r_samples.push(0i64);
            r_texts.push(text);
        }
        jsonl.push_str(&serde_json::json!({"id": id, "prompt": prompt, "completions": completions}).to_string());
        jsonl.push('\n');
        ids.push(id);
        prompts.push(prompt);
    }
    let col = |name: &str, v: Vec<String>| Column::new(name.into(), v);
    let instructions = DataFrame::new(INSTRUCTIONS, vec![col("id", ids), col("prompt", prompts)]).unwrap();
    let n = r_ids.len();
    let responses = DataFrame::new(
        n,
        vec![
            col("instruction_id", r_ids),
            col("model", r_models),
            Column::new("sample_index".into(), r_samples),
            col("response", r_texts),
        ],
    )
    .unwrap();
    let m = a_ids.len();
    let ratings = DataFrame::new(
        m,
        vec![
            col("instruction_id", a_ids),
            col("model", a_models),
            Column::new("sample_index".into(), a_samples),
            col("aspect", a_aspects),
            Column::new("rating".into(), a_values),
        ],
    )
    .unwrap();
    Data { instructions, responses, ratings, jsonl }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

mod support;
use support::peak_rss_mb;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("prefs bench: run it with `cargo bench --bench prefs`");
        return;
    }
    let data = generate();
    let rss_before = peak_rss_mb();
    let agg_opts = aggregate::Options {
        aspects: ASPECTS.iter().map(|s| s.to_string()).collect(),
        weights: Default::default(),
        method: Method::Mean,
        missing: Missing::DropResponse,
    };
    let pair_opts = pairs::Options {
        strategy: Strategy::AllPairs,
        model: None,
        rejected: Default::default(),
        min_margin: None,
        dedupe: false,
        split: None,
        seed: 0,
    };
    let (mut t_agg, mut t_pair) = (Vec::new(), Vec::new());
    let mut pair_count = 0;
    for _ in 0..RUNS {
        let start = Instant::now();
        let (scores, _) = aggregate::aggregate(&data.responses, &data.ratings, &agg_opts).unwrap();
        t_agg.push(start.elapsed());
        let start = Instant::now();
        let paired = pairs::make_pairs(&data.instructions, &scores, &pair_opts).unwrap();
        t_pair.push(start.elapsed());
        pair_count = paired.pairs.height();
    }
    let (agg, pair) = (median(t_agg), median(t_pair));
    println!(
        "aggregate + pair all_pairs over {INSTRUCTIONS} instructions × {PER_INSTRUCTION} responses × 3 aspects ({} ratings): \
         aggregate {:.1} ms, pair {:.1} ms, together {:.1} ms (median of {RUNS}); {pair_count} pairs; \
         peak RSS {:.0} MB ({:.0} MB with the input tables before the first step)",
        data.ratings.height(),
        agg.as_secs_f64() * 1e3,
        pair.as_secs_f64() * 1e3,
        (agg + pair).as_secs_f64() * 1e3,
        peak_rss_mb(),
        rss_before,
    );
    python_reference(&data.jsonl);
    end_to_end(&data.jsonl);
}

const END_TO_END_RUNS: usize = 3;

const PIPELINE: &str = "version: 1
stages:
  vlfeedback: { kind: load, params: { path: vlfeedback.jsonl, format: vlfeedback } }
  scores: { kind: aggregate, needs: [vlfeedback], params: { aspects: all, method: mean, missing: drop_response } }
  pairs: { kind: pair, needs: [vlfeedback, scores], params: { strategy: all_pairs } }
  export: { kind: export, needs: [pairs], params: { path: out/pairs.parquet, format: trl, images: none } }
";

/// silkie's whole preference path beside the Python polars script doing the same job.
fn end_to_end(jsonl: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("vlfeedback.jsonl"), jsonl).unwrap();
    std::fs::write(dir.path().join("pipeline.yaml"), PIPELINE).unwrap();
    let cache = dir.path().join("cache");
    let silkie = median_run(|| {
        let _ = std::fs::remove_dir_all(&cache);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_silkie"));
        cmd.current_dir(dir.path()).args(["run", "--format", "json"]);
        cmd
    });
    println!(
        "end to end (load → aggregate → pair → export trl), silkie: {:.2} s, peak {:.0} MB (median of {END_TO_END_RUNS})",
        silkie.0.as_secs_f64(),
        silkie.1
    );
    let Some(python) = polars_python() else {
        println!("end to end, Python polars: polars is not installed in the test venv, skipped");
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/prefs_polars.py");
    let out = dir.path().join("polars.parquet");
    let polars = median_run(|| {
        let mut cmd = Command::new(&python);
        cmd.arg(&script).arg(dir.path().join("vlfeedback.jsonl")).arg(&out);
        cmd
    });
    println!(
        "end to end, Python polars: {:.2} s, peak {:.0} MB; silkie takes {:.2}× its time and {:.2}× its memory",
        polars.0.as_secs_f64(),
        polars.1,
        silkie.0.as_secs_f64() / polars.0.as_secs_f64(),
        silkie.1 / polars.1
    );
}

/// The test venv's Python, when it can import polars.
fn polars_python() -> Option<PathBuf> {
    let venv = std::env::var_os("SILKIE_TORCH_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/silkie/torch-2.9.0")))?;
    let python = venv.join("bin/python");
    let ok = Command::new(&python).args(["-c", "import polars"]).output().is_ok_and(|o| o.status.success());
    ok.then_some(python)
}

/// The median wall time and peak memory of runs of a command (each run a fresh one).
fn median_run(command: impl Fn() -> Command) -> (Duration, f64) {
    let mut runs: Vec<(Duration, f64)> = (0..END_TO_END_RUNS).map(|_| timed(&mut command())).collect();
    runs.sort_by_key(|run| run.0);
    runs[runs.len() / 2]
}

/// Runs a command to its end: wall time and the process's peak resident memory (MB).
#[allow(clippy::zombie_processes)] // reaped by wait4, which also reports its peak memory
fn timed(command: &mut Command) -> (Duration, f64) {
    let start = Instant::now();
    let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start the command");
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid, and wait4 reaps only the child just started.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let elapsed = start.elapsed();
    assert!(reaped > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "{command:?} failed");
    (elapsed, usage.ru_maxrss as f64 / 1024.0)
}

/// The released recipe's pairing as a plain Python loop, over the same rows.
fn python_reference(jsonl: &str) {
    let dir = std::env::temp_dir().join("silkie-prefs-bench");
    let _ = std::fs::create_dir_all(&dir);
    let data = dir.join("vlfeedback.jsonl");
    let script = dir.join("reference.py");
    std::fs::write(&data, jsonl).unwrap();
    std::fs::write(&script, PYTHON).unwrap();
    match Command::new("python3").arg(&script).arg(&data).output() {
        Ok(out) if out.status.success() => print!("python reference: {}", String::from_utf8_lossy(&out.stdout)),
        _ => println!("python reference: python3 not available, skipped"),
    }
}

const PYTHON: &str = r#"
import json, sys, time
from itertools import combinations
rows = [json.loads(line) for line in open(sys.argv[1])]
start = time.perf_counter()
pairs = 0
for row in rows:
    scores = []
    for c in row["completions"]:
        try:
            scores.append(sum(float(a["Rating"]) for a in c["annotations"].values()) / len(c["annotations"]))
        except ValueError:
            scores.append(None)
    for i, j in combinations(range(len(scores)), 2):
        if scores[i] is None or scores[j] is None or scores[i] == scores[j]:
            continue
        pairs += 1
print(f"{(time.perf_counter() - start) * 1e3:.0f} ms for the pairing loop alone (JSON parsing not counted), {pairs} pairs")
"#;
