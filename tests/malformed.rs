//! Every malformed pipeline under tests/malformed/ gets a clear error naming the file,
//! exit code 2, and never a panic. Each file's first line says what the message must hold.

mod common;

use std::path::Path;
use std::process::Command;

/// Extra command-line arguments from an optional second line `# args: …`.
fn extra_args(path: &Path) -> Vec<String> {
    let text = String::from_utf8_lossy(&std::fs::read(path).unwrap()).into_owned();
    let second = text.lines().nth(1).unwrap_or_default();
    second.strip_prefix("# args: ").map(|a| a.split_whitespace().map(String::from).collect()).unwrap_or_default()
}

fn expectation(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    let first = String::from_utf8_lossy(&bytes).lines().next().unwrap_or_default().to_string();
    first
        .strip_prefix("# expect: ")
        .unwrap_or_else(|| panic!("{}: first line must be `# expect: …`", path.display()))
        .to_string()
}

#[test]
fn every_malformed_pipeline_gets_a_clear_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/malformed");
    let cache = tempfile::tempdir().unwrap();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 30, "the corpus must hold at least 30 files, has {}", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let expected = expectation(file);
        for verb in ["validate", "run", "status"] {
            let out = Command::new(common::bin())
                .args([
                    "--workspace",
                    dir.to_str().unwrap(),
                    "--cache",
                    cache.path().to_str().unwrap(),
                    verb,
                    file.to_str().unwrap(),
                ])
                .args(extra_args(file))
                .env("NO_COLOR", "1")
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            // Only the message and help lines: the quoted source would echo the expectation.
            let message: String = stderr
                .lines()
                .map(str::trim_start)
                .filter(|l| l.starts_with('×') || l.starts_with("help:") || l.starts_with("error"))
                .collect::<Vec<_>>()
                .join("\n");
            let problems = [
                (out.status.code() != Some(2)).then(|| format!("exit code {:?}, expected 2", out.status.code())),
                (!message.contains(&expected)).then(|| format!("message lacks `{expected}`")),
                (!message.contains(&name)).then(|| "message does not name the file".to_string()),
                stderr.contains("panicked").then(|| "panicked".to_string()),
            ];
            for problem in problems.into_iter().flatten() {
                failures.push(format!("{name} ({verb}): {problem}\n{stderr}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

#[test]
fn errors_point_at_line_and_column() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/malformed");
    let out = Command::new(common::bin())
        .args(["--workspace", dir.to_str().unwrap(), "validate", "06-missing-need.yaml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("06-missing-need.yaml:5:30: stages.b.needs[0]: `raww` is not a stage of this pipeline"),
        "{stderr}"
    );
    assert!(stderr.contains("did you mean `raw`?"), "{stderr}");
}
