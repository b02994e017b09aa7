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

use std::path::Path;
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
use support::{peak_rss_mb, venv_python};

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
    end_to_end(&data.jsonl, false);
    end_to_end(&data.jsonl, true);
}

const END_TO_END_RUNS: usize = 3;

/// The side of each generated image: a photo's pixels per file would make the run I/O-bound
/// on this disk; this keeps decode, hash and copy all in the measurement.
const IMAGE_SIDE: u32 = 128;

/// load → aggregate → pair → export, without images or with each instruction's image stored
/// at `load` and written once per distinct image beside the TRL table.
fn pipeline(images: bool) -> String {
    let (load_images, export_images) = if images { (", images: img", "files") } else { ("", "none") };
    format!(
        "version: 1
vars: {{ run: 0 }}
stages:
  vlfeedback: {{ kind: load, params: {{ path: vlfeedback.jsonl, format: vlfeedback{load_images} }} }}
  scores: {{ kind: aggregate, needs: [vlfeedback], params: {{ aspects: all, method: mean, missing: drop_response }} }}
  pairs: {{ kind: pair, needs: [vlfeedback, scores], params: {{ strategy: all_pairs }} }}
  export: {{ kind: export, needs: [pairs], params: {{ path: 'out-${{vars.run}}/pairs.parquet', format: trl, images: {export_images} }} }}
"
    )
}

/// One distinct JPEG per instruction, as VLFeedback lays them out: `img/<id>.jpg`.
fn write_images(dir: &Path) -> u64 {
    use rayon::prelude::*;
    let dir = dir.join("img");
    std::fs::create_dir_all(&dir).unwrap();
    (0..INSTRUCTIONS)
        .into_par_iter()
        .map(|i| {
            let seed = i as u32;
            let image = image::RgbImage::from_fn(IMAGE_SIDE, IMAGE_SIDE, |x, y| {
                let v = (x * 7 + y * 13 + seed * 31) ^ (seed >> 3);
                image::Rgb([v as u8, (v >> 8) as u8 ^ x as u8, (seed as u8).wrapping_add(y as u8)])
            });
            let path = dir.join(format!("inst-{i:06}.jpg"));
            image.save_with_format(&path, image::ImageFormat::Jpeg).unwrap();
            std::fs::metadata(&path).unwrap().len()
        })
        .sum()
}

/// silkie's whole preference path beside the Python polars script doing the same job.
fn end_to_end(jsonl: &str, images: bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("vlfeedback.jsonl"), jsonl).unwrap();
    std::fs::write(dir.path().join("pipeline.yaml"), pipeline(images)).unwrap();
    let what = if images {
        let bytes = write_images(dir.path());
        format!("with images ({INSTRUCTIONS} distinct {IMAGE_SIDE}×{IMAGE_SIDE} JPEGs, {:.0} MB)", bytes as f64 / 1e6)
    } else {
        "without images".to_string()
    };
    // Every run writes where none did before, and nothing is deleted until the end: on a
    // filesystem without a journal, ext4 skips the inodes of files deleted in the last minutes
    // when it makes new ones, which would charge one run for its predecessor's clean-up.
    let run = std::cell::Cell::new(0);
    let next = || {
        run.set(run.get() + 1);
        run.get()
    };
    let silkie = || {
        let n = next();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_silkie"));
        cmd.current_dir(dir.path()).args(["run", "--format", "json", "--cache", &format!("cache-{n}")]);
        cmd.args(["--set", &format!("vars.run={n}")]);
        cmd
    };
    let python = venv_python(if images { "polars, PIL" } else { "polars" });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/prefs_polars.py");
    let polars = |python: &Path| {
        let out = dir.path().join(format!("polars-{}.parquet", next()));
        let mut cmd = Command::new(python);
        cmd.arg(&script).arg(dir.path().join("vlfeedback.jsonl")).arg(out);
        if images {
            cmd.arg("--images").arg(dir.path().join("img"));
        }
        cmd
    };
    // Taken in turns, silkie then Python, so that a machine slowing down or speeding up
    // during the bench moves both alike.
    // Each starts with nothing of the run before it still to be written back: silkie makes
    // its blobs durable with one filesystem sync per batch, which would otherwise also write
    // out the output the Python run before it left in memory.
    let settled = |command: &mut Command| {
        // SAFETY: sync takes no arguments and cannot fail.
        unsafe { libc::sync() };
        timed(command)
    };
    let (mut silkie_runs, mut polars_runs) = (Vec::new(), Vec::new());
    for _ in 0..END_TO_END_RUNS {
        silkie_runs.push(settled(&mut silkie()));
        if let Some(python) = &python {
            polars_runs.push(settled(&mut polars(python)));
        }
    }
    let silkie = median_run(silkie_runs);
    println!(
        "end to end {what} (load → aggregate → pair → export trl), silkie: {:.2} s, peak {:.0} MB (median of {END_TO_END_RUNS})",
        silkie.0.as_secs_f64(),
        silkie.1
    );
    if polars_runs.is_empty() {
        println!("end to end {what}, Python polars: polars (or Pillow) is not installed in the test venv, skipped");
        keep_if_asked(dir);
        return;
    }
    let polars = median_run(polars_runs);
    keep_if_asked(dir);
    let anchor = if images { "Python polars + Pillow" } else { "Python polars" };
    println!(
        "end to end {what}, {anchor}: {:.2} s, peak {:.0} MB; silkie is {:.2}× as fast and takes {:.2}× its memory",
        polars.0.as_secs_f64(),
        polars.1,
        polars.0.as_secs_f64() / silkie.0.as_secs_f64(),
        silkie.1 / polars.1
    );
}

/// With `PREFS_BENCH_KEEP` set, the end-to-end folder (input, caches, outputs) stays for a
/// profiler to rerun a step on; it is deleted otherwise.
fn keep_if_asked(dir: tempfile::TempDir) {
    if std::env::var_os("PREFS_BENCH_KEEP").is_some() {
        println!("kept {}", dir.keep().display());
    }
}

/// The run of median wall time, with its peak memory.
fn median_run(mut runs: Vec<(Duration, f64)>) -> (Duration, f64) {
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
