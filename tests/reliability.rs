//! Crash safety, concurrent runs, gc during a run, and the stat cache.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Workspace, ran, status_of, statuses};
use silkie::store::Store;

/// Several stages of different lengths and output kinds (table, file, directory), all
/// depending on `salt`, so each salt recomputes everything.
const PIPELINE: &str = r#"
version: 1
vars: { salt: 0 }
stages:
  gen:
    kind: command
    params:
      cmd: (echo id,salt,text; seq 1 30000 | awk '{print $1",${vars.salt},row-"$1}') > out/gen.csv && sleep 0.05
      outs: [out/gen.csv]
  table:
    kind: load
    needs: [gen]
    params: { path: out/gen.csv }
  shards:
    kind: command
    needs: [gen]
    params:
      cmd: mkdir -p out/shards && split -l 5000 out/gen.csv out/shards/part- && sleep 0.05
      outs: [out/shards]
  export:
    kind: export
    needs: [table]
    params: { path: out/gen.parquet }
  summary:
    kind: command
    needs: [shards, export]
    params:
      cmd: ls out/shards | wc -l > out/summary.txt && sleep 0.05
      outs: [out/summary.txt]
"#;

fn walk_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map_or(0, |entries| entries.flatten().map(|e| if e.path().is_dir() { walk_count(&e.path()) } else { 1 }).sum())
}

fn assert_consistent(ws: &Workspace) {
    let store = Store::open(&ws.path().join("cache")).unwrap();
    let problems = store.verify().unwrap();
    assert!(problems.is_empty(), "store inconsistent: {problems:?}");
}

#[test]
fn kill_dash_nine_at_any_moment_never_corrupts_the_store() {
    let ws = Workspace::new();
    ws.write("pipeline.yaml", PIPELINE);
    // How long a full run takes here, to spread the kills over it.
    let start = Instant::now();
    ws.run(&["--set", "vars.salt=full"]);
    let full = start.elapsed().max(Duration::from_millis(200));
    let kills = 24;
    let records = || walk_count(&ws.path().join("cache/records"));
    let mut progress_at_kill = std::collections::BTreeSet::new();
    for i in 0..kills {
        let before = records();
        // Points spread over the run (a stride coprime to the count visits all of them).
        let at = full.mul_f64(((i * 7) % kills) as f64 / kills as f64 * 1.1);
        let mut child = ws
            .command(&["run", "--set", &format!("vars.salt={i}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert_consistent(&ws);
        progress_at_kill.insert(records() - before);
        // Resume some of the interrupted runs: the next run completes what the killed one left.
        if i % 4 == 3 {
            let resumed = ws.run(&["--set", &format!("vars.salt={i}")]);
            assert!(statuses(&resumed).iter().all(|(_, s)| s == "hit" || s == "ran"));
            assert_eq!(ws.read("out/summary.txt").trim(), "7");
        }
    }
    // The kills landed at different points: after 0, some, and all of the 5 stages.
    assert!(progress_at_kill.len() >= 3, "kills all landed at the same point: {progress_at_kill:?}");
    let last = ws.run(&["--set", "vars.salt=full"]);
    assert!(statuses(&last).iter().all(|(_, s)| s == "hit"), "{last}");
    assert_consistent(&ws);
}

#[test]
fn two_concurrent_runs_share_the_work_and_both_succeed() {
    let ws = Workspace::new();
    ws.write(
        "pipeline.yaml",
        r#"
version: 1
stages:
  slow:
    kind: command
    params: { cmd: "sleep 1 && date +%s%N > out/slow.txt", outs: [out/slow.txt] }
  after:
    kind: command
    needs: [slow]
    params: { cmd: "cat out/slow.txt > out/after.txt", outs: [out/after.txt] }
"#,
    );
    let spawn =
        || ws.command(&["run", "--format", "json"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (a, b) = (spawn(), spawn());
    let (a, b): (common::Ran, common::Ran) =
        (a.wait_with_output().unwrap().into(), b.wait_with_output().unwrap().into());
    assert_eq!((a.code, b.code), (0, 0), "{}\n{}", a.stderr, b.stderr);
    let (a, b) = (a.json(), b.json());
    // The slow stage ran exactly once; the other run waited for it and took the result.
    let runs_of_slow = [&a, &b].iter().filter(|r| status_of(r, "slow") == "ran").count();
    assert_eq!(runs_of_slow, 1, "{a}\n{b}");
    assert_eq!(a["instances"][0]["outputs"], b["instances"][0]["outputs"]);
    assert_consistent(&ws);
}

#[test]
fn gc_during_a_run_deletes_nothing_that_run_needs() {
    let ws = Workspace::new();
    ws.write("pipeline.yaml", PIPELINE);
    ws.run(&["--set", "vars.salt=old"]);
    let run = ws
        .command(&["run", "--set", "vars.salt=new", "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let gc = ws.silkie(&["gc", "--format", "json"]);
    let run: common::Ran = run.wait_with_output().unwrap().into();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(gc.code, 0, "{}", gc.stderr);
    let report = gc.json();
    // The old run's outputs went; the new run's stayed.
    assert!(report["blobs_removed"].as_u64().unwrap() > 0, "{report}");
    assert_consistent(&ws);
    let again = ws.run(&["--set", "vars.salt=new"]);
    assert!(statuses(&again).iter().all(|(_, s)| s == "hit"), "{again}");
    let old = ws.run(&["--set", "vars.salt=old"]);
    assert_eq!(ran(&old).len(), 5, "the old run's outputs were collected");
}

#[test]
fn gc_dry_run_removes_nothing() {
    let ws = Workspace::new();
    ws.write("pipeline.yaml", PIPELINE);
    ws.run(&["--set", "vars.salt=a"]);
    ws.run(&["--set", "vars.salt=b"]);
    let dry = ws.silkie(&["gc", "--dry-run", "--format", "json"]).json();
    assert!(dry["blobs_removed"].as_u64().unwrap() > 0);
    let kept = ws.run(&["--set", "vars.salt=a"]);
    assert!(statuses(&kept).iter().all(|(_, s)| s == "hit"));
    let text = ws.silkie(&["gc", "--keep-runs", "1"]);
    assert!(text.stdout.starts_with("gc: freed"), "{}", text.stdout);
}

#[test]
fn a_big_unchanged_input_is_not_reread() {
    let ws = Workspace::new();
    let big = ws.path().join("big.bin");
    let file = std::fs::File::create(&big).unwrap();
    file.set_len(1 << 30).unwrap(); // 1 GiB, sparse
    // Old enough that the racy-timestamp guard trusts the stat cache.
    file.set_modified(std::time::SystemTime::now() - Duration::from_secs(10)).unwrap();
    drop(file);
    ws.write(
        "pipeline.yaml",
        "version: 1\nstages:\n  size:\n    kind: command\n    params: { cmd: \"stat -c %s big.bin > out/size.txt\", deps: [big.bin], outs: [out/size.txt] }\n",
    );
    let first = ws.run(&[]);
    assert!(first["hashed_bytes"].as_u64().unwrap() >= 1 << 30, "{first}");
    let second = ws.run(&[]);
    assert_eq!(status_of(&second, "size"), "hit");
    // Only the small output file written a moment ago is re-hashed (racy guard), never big.bin.
    assert!(second["hashed_bytes"].as_u64().unwrap() < 1 << 20, "the no-op rerun re-read its input: {second}");
    // A touched file is re-hashed, but the same content keeps the stage cached.
    std::fs::File::options()
        .write(true)
        .open(&big)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(5))
        .unwrap();
    let third = ws.run(&[]);
    assert!(third["hashed_bytes"].as_u64().unwrap() >= 1 << 30);
    assert_eq!(status_of(&third, "size"), "hit");
}

#[test]
fn a_second_run_waits_for_the_lock_or_times_out_clearly() {
    let ws = Workspace::new();
    ws.write(
        "pipeline.yaml",
        "version: 1\nstages:\n  slow:\n    kind: command\n    params: { cmd: \"sleep 2 && echo done > out/x.txt\", outs: [out/x.txt] }\n",
    );
    let first = ws.command(&["run"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let second = ws.silkie(&["run", "--lock-timeout", "0.2"]);
    let first_out = first.wait_with_output().unwrap();
    assert!(first_out.status.success());
    assert_eq!(second.code, 1, "{}", second.stdout);
    assert!(second.stdout.contains("slow failed: gave up waiting for"), "{}", second.stdout);
    assert!(second.stdout.contains("another silkie run is"), "{}", second.stdout);
}

#[test]
fn parallel_cache_hits_restoring_the_same_file_all_succeed() {
    let ws = Workspace::new();
    ws.write(
        "pipeline.yaml",
        "version: 1\nstages:\n  a: { kind: command, params: { cmd: \"seq 1 100000 > out/a.txt\", outs: [out/a.txt] } }\n  e: { kind: command, params: { cmd: \"seq 1 1000 > out/e.txt\", outs: [out/e.txt] } }\n",
    );
    ws.run(&[]);
    for _ in 0..3 {
        std::fs::remove_file(ws.path().join("out/a.txt")).unwrap();
        let children: Vec<_> = (0..4)
            .map(|_| ws.command(&["run"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap())
            .collect();
        for child in children {
            let out: common::Ran = child.wait_with_output().unwrap().into();
            assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
        }
        assert_eq!(ws.read("out/a.txt").lines().count(), 100_000);
    }
}

#[test]
fn gc_keeps_the_outputs_of_the_latest_success_when_a_later_run_failed() {
    let ws = Workspace::new();
    ws.write(
        "pipeline.yaml",
        "version: 1\nstages:\n  a: { kind: command, params: { cmd: \"echo ok > a.txt\", outs: [a.txt] } }\n",
    );
    ws.run(&[]);
    ws.write(
        "pipeline.yaml",
        "version: 1\nstages:\n  a: { kind: command, params: { cmd: \"false\", outs: [a.txt] } }\n",
    );
    assert_eq!(ws.silkie(&["run"]).code, 1);
    ws.write(
        "pipeline.yaml",
        "version: 1\nstages:\n  a: { kind: command, params: { cmd: \"echo ok > a.txt\", outs: [a.txt] } }\n",
    );
    assert_eq!(ws.silkie(&["gc"]).code, 0);
    assert_consistent(&ws);
    let again = ws.run(&[]);
    assert_eq!(status_of(&again, "a"), "hit");
}

#[test]
fn a_corrupt_parquet_input_never_hangs_the_run() {
    let ws = Workspace::new();
    ws.write("data.csv", &(0..2000).map(|i| format!("{i},row-{i}\n")).fold("id,text\n".to_string(), |acc, l| acc + &l));
    ws.write("pipeline.yaml", "version: 1\nstages:\n  t: { kind: load, params: { path: data.csv } }\n  p: { kind: export, needs: [t], params: { path: good.parquet } }\n");
    ws.run(&[]);
    let good = std::fs::read(ws.path().join("good.parquet")).unwrap();
    ws.write("pipeline.yaml", "version: 1\nstages:\n  t: { kind: load, params: { path: bad.parquet } }\n");
    // Corrupt bytes at many places: each run must end, as a failure or a success, never hang.
    for at in (8..good.len() - 8).step_by(good.len() / 25) {
        let mut bad = good.clone();
        for b in &mut bad[at..(at + 6).min(good.len() - 8)] {
            *b ^= 0x5a;
        }
        std::fs::write(ws.path().join("bad.parquet"), &bad).unwrap();
        let mut child = ws.command(&["run"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > Duration::from_secs(60) {
                child.kill().unwrap();
                panic!("silkie hung on a parquet file corrupted at byte {at}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(matches!(status.code(), Some(0) | Some(1)), "corrupted at {at}: {status:?}");
    }
}

#[test]
fn a_killed_restore_leaves_its_output_stale_and_the_next_run_cleans_up() {
    let ws = Workspace::new();
    ws.write(
        "pipeline.yaml",
        "version: 1\nstages:\n  shards: { kind: command, params: { cmd: \"mkdir -p out/shards && seq 1 9 | split -l 3 - out/shards/part-\", outs: [out/shards] } }\n",
    );
    ws.run(&[]);
    // What a process killed in the middle of restoring `out/shards` leaves: its marker in
    // the store, a file cut short, and a temp file beside the ones it had restored.
    let store = Store::open(&ws.path().join("cache")).unwrap();
    std::mem::forget(store.restoring(&ws.path().join("out/shards")).unwrap());
    std::fs::write(ws.path().join("out/shards/part-ab"), "4\n").unwrap();
    std::fs::write(ws.path().join("out/shards/.part-ac.999999-0.silkie-tmp"), "7\n").unwrap();
    let status = ws.silkie(&["status"]);
    assert!(status.stdout.contains("a restore of `out/shards` was interrupted"), "{}", status.stdout);
    let record = ws.run(&[]);
    assert_eq!(status_of(&record, "shards"), "hit");
    assert_eq!(ws.read("out/shards/part-ab"), "4\n5\n6\n");
    assert!(!ws.path().join("out/shards/.part-ac.999999-0.silkie-tmp").exists());
    let status = ws.silkie(&["status", "--format", "json"]).json();
    assert_eq!(status[0]["state"], "fresh", "{status}");
}

#[test]
fn temp_files_of_dead_processes_are_removed_by_the_next_run() {
    let ws = Workspace::new();
    ws.write("pipeline.yaml", "version: 1\nstages:\n  a: { kind: command, params: { cmd: \"true\" } }\n");
    ws.run(&[]);
    // A run that died on a full disk leaves a partial blob under the cache's tmp/.
    let left = ws.path().join("cache/tmp/999999-0-0-blob");
    std::fs::write(&left, "partial").unwrap();
    // Another host's (a Slurm job writing into a shared cache): its pid says nothing here.
    let elsewhere = ws.path().join("cache/tmp/999999-h00000000-0-0-blob");
    std::fs::write(&elsewhere, "being written").unwrap();
    ws.run(&[]);
    assert!(!left.exists());
    assert!(elsewhere.exists(), "another host's temp file was removed");
}
