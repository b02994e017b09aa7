//! No-op rerun of a 50-stage pipeline whose tables hold 100k rows each (DESIGN §9).
//!
//! `cargo bench --bench noop` builds in release, runs the pipeline once cold, then times
//! whole `silkie run` processes (start-up included) that find everything cached.

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

const STAGES: usize = 50;
const ROWS: usize = 100_000;
const RERUNS: usize = 20;

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: nothing to measure then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("noop bench: run it with `cargo bench --bench noop`");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut data = String::from("id,instruction,model,score\n");
    for i in 0..ROWS {
        let _ = writeln!(data, "{i},instruction-{},model-{},{}", i / 4, i % 12, (i * 7919) % 5 + 1);
    }
    std::fs::write(dir.path().join("data.csv"), data).expect("write data");
    let mut pipeline =
        String::from("version: 1\nname: noop-bench\nstages:\n  s00:\n    kind: load\n    params: { path: data.csv }\n");
    for i in 1..STAGES {
        let _ = write!(
            pipeline,
            "  s{i:02}:\n    kind: export\n    needs: [s{:02}]\n    params: {{ path: out/s{i:02}.parquet }}\n",
            i - 1
        );
    }
    std::fs::write(dir.path().join("pipeline.yaml"), pipeline).expect("write pipeline");
    // Let the inputs age past the racy-timestamp window, as a real project's would.
    std::thread::sleep(Duration::from_millis(1100));

    let run = || {
        let start = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_silkie"))
            .current_dir(dir.path())
            .args(["run", "--format", "json"])
            .output()
            .expect("run silkie");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let record: serde_json::Value = serde_json::from_slice(&out.stdout).expect("run record");
        (start.elapsed(), record)
    };
    let (cold, record) = run();
    let ran = record["instances"].as_array().map_or(0, |a| a.iter().filter(|i| i["status"] == "ran").count());
    println!("cold run: {STAGES} stages ({ran} ran), {ROWS} rows per table: {:.2} s", cold.as_secs_f64());
    std::thread::sleep(Duration::from_millis(1100));
    run(); // settles the stat cache for the files the cold run wrote

    let mut times = Vec::new();
    for _ in 0..RERUNS {
        let (t, record) = run();
        let hits = record["instances"].as_array().map_or(0, |a| a.iter().filter(|i| i["status"] == "hit").count());
        assert_eq!(hits, STAGES, "a no-op rerun ran something: {record}");
        assert_eq!(record["hashed_bytes"], 0, "a no-op rerun re-read an input: {record}");
        times.push(t);
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mean = times.iter().map(|t| ms(*t)).sum::<f64>() / times.len() as f64;
    println!(
        "no-op rerun ({RERUNS} runs, whole process): min {:.1} ms, median {:.1} ms, mean {:.1} ms, max {:.1} ms (target < 100 ms)",
        ms(times[0]),
        ms(times[times.len() / 2]),
        mean,
        ms(times[times.len() - 1])
    );
}
