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
fn a_csv_row_with_too_few_or_too_many_fields_is_named() {
    let (_, error) = run_load("x.csv", b"id,text,score\n1,\"a, quoted\nline\",3\n2,short\n");
    assert!(error.contains("data/x.csv:4: 2 fields where the header has 3 (too few)"), "{error}");
    let (_, error) = run_load("x.csv", b"id,text\n1,a,extra\n");
    assert!(error.contains("data/x.csv:2: 3 fields where the header has 2 (too many)"), "{error}");
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

#[test]
fn load_decodes_every_image_and_caps_their_size() {
    let ws = Workspace::new();
    let img = ws.path().join("img");
    std::fs::create_dir_all(&img).unwrap();
    let noisy =
        image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, ((x ^ y) * 4) as u8]));
    noisy.save(img.join("good.png")).unwrap();
    // A corrupt middle: header and end marker intact, so only decoding every pixel shows it.
    let mut bytes = std::fs::read(img.join("good.png")).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle..middle + 64].iter_mut().for_each(|b| *b ^= 0x5a);
    std::fs::write(img.join("corrupt.png"), bytes).unwrap();
    image::RgbImage::new(2000, 1000).save(img.join("huge.png")).unwrap();
    ws.write("rows.csv", "id,image\n1,good.png\n2,corrupt.png\n3,huge.png\n");
    let pipeline = |extra: &str| {
        format!(
            "version: 1\nstages:\n  raw: {{ kind: load, params: {{ path: rows.csv, images: img, max_image_pixels: 1000000{extra} }} }}\n"
        )
    };
    ws.write("pipeline.yaml", &pipeline(""));
    let out = ws.silkie(&["run"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains("rows.csv: row 2: image") && out.stdout.contains("corrupt.png cannot be decoded"),
        "{}",
        out.stdout
    );
    ws.write("pipeline.yaml", &pipeline(", on_bad_image: skip"));
    ws.run(&[]);
    let report = ws.silkie(&["show", "raw", "--report", "--format", "json"]).json();
    assert_eq!(report["dropped"]["undecodable_image"], 1, "{report}");
    assert_eq!(report["dropped"]["oversized_image"], 1, "{report}");
    assert_eq!(report["rows_out"]["table"], 1, "{report}");
}
