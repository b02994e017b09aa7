//! A big sweep: `validate` and the no-op rerun of pipelines of 1,000 to 10,000 stage
//! instances (a matrix stage and a stage fanning out from it), whole `silkie` processes.
//!
//! `cargo bench --bench sweep` builds in release. The cold run of each size spawns one shell
//! per instance, so it takes a while; the figures that matter are the ones after it.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// (seeds, betas): the matrix of stage `train`; stage `score` fans out from it, so a
/// pipeline has 2 × seeds × betas instances.
const SIZES: [(usize, usize); 3] = [(25, 20), (50, 40), (100, 50)];
const RERUNS: usize = 5;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("sweep bench: run it with `cargo bench --bench sweep`");
        return;
    }
    println!("| instances | validate | no-op rerun (median of {RERUNS}) | cold run |");
    println!("|---:|---:|---:|---:|");
    for (seeds, betas) in SIZES {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("pipeline.yaml"), pipeline(seeds, betas)).expect("write pipeline");
        let instances = 2 * seeds * betas;
        let validate = median(RERUNS, || silkie(dir.path(), &["validate"]).0);
        let (cold, record) = silkie(dir.path(), &["run", "--format", "json"]);
        assert_eq!(count(&record, "ran"), instances, "the cold run did not run everything");
        // Lets the outputs age past the racy-timestamp window, then settles the stat cache.
        std::thread::sleep(Duration::from_millis(1100));
        silkie(dir.path(), &["run", "--format", "json"]);
        let noop = median(RERUNS, || {
            let (t, record) = silkie(dir.path(), &["run", "--format", "json"]);
            assert_eq!(count(&record, "hit"), instances, "a no-op rerun ran something");
            t
        });
        println!("| {instances} | {} | {} | {:.1} s |", ms(validate), ms(noop), cold.as_secs_f64());
    }
}

fn pipeline(seeds: usize, betas: usize) -> String {
    let list = |n: usize, f: &dyn Fn(usize) -> String| (0..n).map(f).collect::<Vec<_>>().join(", ");
    let mut text = String::from("version: 1\nname: sweep-bench\nstages:\n");
    let _ = write!(
        text,
        "  train:\n    kind: command\n    matrix:\n      seed: [{}]\n      beta: [{}]\n    params:\n      \
         cmd: echo ${{matrix.seed}} ${{matrix.beta}} > out/train-${{matrix.seed}}-${{matrix.beta}}.txt\n      \
         outs: [\"out/train-${{matrix.seed}}-${{matrix.beta}}.txt\"]\n",
        list(seeds, &|i| i.to_string()),
        list(betas, &|i| format!("0.{:03}", i + 1)),
    );
    let _ = write!(
        text,
        "  score:\n    kind: command\n    needs: [train]\n    params:\n      \
         cmd: wc -c < out/train-${{matrix.seed}}-${{matrix.beta}}.txt > out/score-${{matrix.seed}}-${{matrix.beta}}.txt\n      \
         outs: [\"out/score-${{matrix.seed}}-${{matrix.beta}}.txt\"]\n",
    );
    text
}

fn silkie(dir: &Path, args: &[&str]) -> (Duration, serde_json::Value) {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_silkie")).current_dir(dir).args(args).output().expect("run silkie");
    let elapsed = start.elapsed();
    assert!(out.status.success(), "silkie {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    (elapsed, serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null))
}

fn count(record: &serde_json::Value, status: &str) -> usize {
    record["instances"].as_array().map_or(0, |a| a.iter().filter(|i| i["status"] == status).count())
}

fn median(runs: usize, mut time: impl FnMut() -> Duration) -> Duration {
    let mut times: Vec<Duration> = (0..runs).map(|_| time()).collect();
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}
