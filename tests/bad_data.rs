//! Bad data files fail their stage with a message naming the file and line; never a panic.

mod common;

use common::{Workspace, status_of};

fn run_load(file: &str, bytes: &[u8]) -> (i32, String) {
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.path().join("data")).unwrap();
    std::fs::write(ws.path().join("data").join(file), bytes).unwrap();
    ws.write(
        "pipeline.yaml",
        &format!("version: 1\nstages:\n  raw: {{ kind: load, params: {{ path: data/{file} }} }}\n"),
    );
    let out = ws.silkie(&["run", "--format", "json"]);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    let record = out.json();
    assert_eq!(status_of(&record, "raw"), "failed");
    (out.code, record["instances"][0]["error"].as_str().unwrap().to_string())
}

#[test]
fn a_truncated_jsonl_line_is_named() {
    let (code, error) = run_load("x.jsonl", b"{\"id\": 1}\n{\"id\": 2}\n{\"id\": 3, \"text\": \"cut\n");
    assert_eq!(code, 1);
    assert!(error.contains("data/x.jsonl:3: invalid JSON"), "{error}");
}

#[test]
fn a_non_object_jsonl_line_is_named() {
    let (_, error) = run_load("x.jsonl", b"{\"id\": 1}\n[1, 2]\n");
    assert!(error.contains("data/x.jsonl:2: expected a JSON object per line, found list"), "{error}");
}

#[test]
fn non_utf8_bytes_are_named() {
    let (_, error) = run_load("x.csv", b"id,text\n1,ok\n2,\xff\xfe\n");
    assert!(error.contains("data/x.csv:3: not UTF-8"), "{error}");
}

#[test]
fn empty_files_are_errors_not_empty_tables() {
    let (_, error) = run_load("x.jsonl", b"\n\n");
    assert!(error.contains("data/x.jsonl: the file holds no rows"), "{error}");
    let (_, error) = run_load("x.csv", b"id,text\n");
    assert!(error.contains("the table has no rows"), "{error}");
}

#[test]
fn a_missing_input_file_is_named() {
    let ws = Workspace::new();
    ws.write("pipeline.yaml", "version: 1\nstages:\n  raw: { kind: load, params: { path: data/none.csv } }\n");
    let out = ws.silkie(&["run"]);
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains("raw failed: cannot read `data/none.csv`: no such file"), "{}", out.stdout);
    let status = ws.silkie(&["status"]);
    assert!(status.stdout.contains("never run  (cannot read `data/none.csv`: no such file)"), "{}", status.stdout);
}

#[test]
fn a_corrupt_parquet_file_is_named() {
    let (_, error) = run_load("x.parquet", b"PAR1 this is not parquet");
    assert!(error.contains("data/x.parquet: cannot read as parquet"), "{error}");
}
