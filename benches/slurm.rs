//! The Slurm executor's cost per instance: 50 trivial `command` instances (a matrix) run
//! through the test cluster (`scripts/slurm-cluster start`) against the same run in-process,
//! each from an empty cache, side by side.
//!
//! `cargo bench --bench slurm` prints, for both: the wall time of the run, and per instance
//! the time from being started (for Slurm: written out and submitted) until its record was
//! seen, with the part Slurm reports as queued and as running.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

const INSTANCES: usize = 50;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("slurm bench: run it with `cargo bench --bench slurm`");
        return;
    }
    let up = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/slurm-cluster")).arg("start").status();
    assert!(up.is_ok_and(|s| s.success()), "the test Slurm cluster did not start");
    let mut pipeline = String::from("version: 1\nname: slurm-bench\nstages:\n  trivial:\n    kind: command\n");
    let values: Vec<String> = (0..INSTANCES).map(|i| i.to_string()).collect();
    let _ = write!(
        pipeline,
        "    matrix: {{ n: [{}] }}\n    params: {{ cmd: \"true ${{matrix.n}}\" }}\n",
        values.join(", ")
    );
    for executor in ["local", "slurm"] {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("pipeline.yaml"), &pipeline).expect("write pipeline");
        let start = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_silkie"))
            .current_dir(dir.path())
            .args(["run", "--format", "json", "--jobs", &INSTANCES.to_string(), "--executor", executor])
            .output()
            .expect("run silkie");
        let wall = start.elapsed().as_secs_f64();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let record: Value = serde_json::from_slice(&out.stdout).expect("run record");
        let instances = record["instances"].as_array().expect("instances");
        assert_eq!(instances.iter().filter(|i| i["status"] == "ran").count(), INSTANCES);
        let mean = |field: &dyn Fn(&Value) -> Option<u64>| {
            instances.iter().filter_map(field).sum::<u64>() as f64 / instances.len() as f64 / 1000.0
        };
        let seen = mean(&|i| i["duration_ms"].as_u64());
        let queued = mean(&|i| i["placement"]["queued_ms"].as_u64());
        let ran = mean(&|i| i["placement"]["run_ms"].as_u64());
        println!(
            "{executor:>5}: {INSTANCES} instances in {wall:.2} s ({:.3} s each); per instance, started → record seen \
             {seen:.3} s (Slurm: queued {queued:.2} s, ran {ran:.2} s, at one-second resolution; the rest, the \
             driver's and the job's start-up: {:.2} s)",
            wall / INSTANCES as f64,
            seen - queued - ran
        );
    }
}
