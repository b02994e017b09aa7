//! Hostile or careless input: nothing is written or deleted outside the workspace, and
//! nothing hangs — each command runs under a deadline and must answer with a message.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Ran, Workspace};

/// Runs silkie in `ws`, failing the test if it takes longer than `limit` (then it is killed).
fn within(ws: &Workspace, args: &[&str], limit: Duration) -> Ran {
    let mut child = ws.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start silkie");
    let start = Instant::now();
    while child.try_wait().expect("wait for silkie").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("silkie {args:?} hung: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("silkie output").into()
}

fn run(ws: &Workspace, pipeline: &str) -> Ran {
    ws.write("pipeline.yaml", pipeline);
    within(ws, &["run"], Duration::from_secs(60))
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) {
    std::os::unix::fs::symlink(target, link).expect("make a symbolic link");
}

#[cfg(unix)]
#[test]
fn an_out_under_a_link_to_a_folder_outside_is_refused_and_deletes_nothing() {
    let ws = Workspace::new();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("victim.txt"), "precious").unwrap();
    symlink(outside.path(), &ws.path().join("linkdir"));
    let ran = run(
        &ws,
        "version: 1\nstages:\n  a: { kind: command, params: { cmd: \"true\", outs: [linkdir/victim.txt] } }\n",
    );
    assert_eq!(ran.code, 1, "{}{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout.contains("lies outside the workspace") && ran.stdout.contains("symbolic link"),
        "{}",
        ran.stdout
    );
    assert_eq!(std::fs::read_to_string(outside.path().join("victim.txt")).unwrap(), "precious");
}

#[cfg(unix)]
#[test]
fn a_cache_restore_never_writes_through_a_link_to_outside() {
    let ws = Workspace::new();
    let pipeline = "version: 1\nstages:\n  a: { kind: command, params: { cmd: \"mkdir -p out && echo hi > out/a.txt\", outs: [out/a.txt] } }\n  d: { kind: command, params: { cmd: \"mkdir -p dir && echo x > dir/x.txt\", outs: [dir] } }\n";
    assert_eq!(run(&ws, pipeline).code, 0);
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("precious.txt"), "keep").unwrap();
    std::fs::remove_dir_all(ws.path().join("out")).unwrap();
    std::fs::remove_dir_all(ws.path().join("dir")).unwrap();
    symlink(outside.path(), &ws.path().join("out"));
    symlink(outside.path(), &ws.path().join("dir"));
    let ran = run(&ws, pipeline);
    assert_eq!(ran.code, 1, "{}{}", ran.stdout, ran.stderr);
    assert!(ran.stdout.contains("`out/a.txt` lies outside the workspace"), "{}", ran.stdout);
    // The folder output replaced the link to outside rather than clearing what it pointed at.
    assert!(ws.path().join("dir").symlink_metadata().unwrap().is_dir());
    assert_eq!(ws.read("dir/x.txt"), "x\n");
    let left: Vec<_> = std::fs::read_dir(outside.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["precious.txt"]);
}

#[test]
fn an_export_to_an_absolute_path_is_refused_unless_it_lies_inside() {
    let ws = Workspace::new();
    ws.write("data.csv", "a,b\n1,2\n");
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("out.csv");
    let pipeline = |path: &Path| {
        format!(
            "version: 1\nstages:\n  raw: {{ kind: load, params: {{ path: data.csv }} }}\n  out: {{ kind: export, needs: [raw], params: {{ path: \"{}\" }} }}\n",
            path.display()
        )
    };
    let ran = run(&ws, &pipeline(&target));
    assert_eq!(ran.code, 1, "{}{}", ran.stdout, ran.stderr);
    assert!(ran.stdout.contains("lies outside the workspace"), "{}", ran.stdout);
    assert!(!target.exists());
    let inside = std::fs::canonicalize(ws.path()).unwrap().join("exported.csv");
    assert_eq!(run(&ws, &pipeline(&inside)).code, 0);
    assert_eq!(ws.read("exported.csv"), "a,b\n1,2\n");
}

#[cfg(unix)]
#[test]
fn devices_and_fifos_are_refused_not_read_for_ever() {
    let ws = Workspace::new();
    let ran = run(&ws, "version: 1\nstages:\n  a: { kind: command, params: { cmd: \"true\", deps: [/dev/zero] } }\n");
    assert_eq!(ran.code, 1, "{}{}", ran.stdout, ran.stderr);
    assert!(ran.stdout.contains("/dev/zero") && ran.stdout.contains("a character device"), "{}", ran.stdout);
    let ran = run(&ws, "version: 1\nstages:\n  a: { kind: load, params: { path: /dev/zero, format: csv } }\n");
    assert_eq!(ran.code, 1, "{}{}", ran.stdout, ran.stderr);
    assert!(ran.stdout.contains("a character device"), "{}", ran.stdout);

    let fifo = ws.path().join("parent.yaml");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    ws.write(
        "child.yaml",
        "version: 1\nextends: parent.yaml\nstages:\n  a: { kind: command, params: { cmd: \"true\" } }\n",
    );
    let ran = within(&ws, &["validate", "child.yaml"], Duration::from_secs(20));
    assert_eq!(ran.code, 2, "{}{}", ran.stdout, ran.stderr);
    assert!(ran.stderr.contains("child.yaml") && ran.stderr.contains("a FIFO"), "{}", ran.stderr);
    let ran = within(&ws, &["validate", "parent.yaml"], Duration::from_secs(20));
    assert_eq!(ran.code, 2, "{}{}", ran.stdout, ran.stderr);
    assert!(ran.stderr.contains("a FIFO"), "{}", ran.stderr);
}

#[test]
fn a_pipeline_starting_with_a_byte_order_mark_loads() {
    let ws = Workspace::new();
    ws.write("pipeline.yaml", "\u{feff}version: 1\nstages:\n  a: { kind: command, params: { cmd: \"true\" } }\n");
    let ran = within(&ws, &["validate"], Duration::from_secs(20));
    assert_eq!(ran.code, 0, "{}", ran.stderr);
}

#[test]
fn a_huge_command_is_not_echoed_in_full() {
    let ws = Workspace::new();
    let cmd = format!("false {}", "x".repeat(1_000_000));
    let ran = run(&ws, &format!("version: 1\nstages:\n  a: {{ kind: command, params: {{ cmd: \"{cmd}\" }} }}\n"));
    assert_eq!(ran.code, 1);
    assert!(ran.stdout.contains("more characters"), "{}", &ran.stdout[..ran.stdout.len().min(2000)]);
    assert!(ran.stdout.len() + ran.stderr.len() < 20_000, "{} bytes of output", ran.stdout.len() + ran.stderr.len());
}

#[test]
fn vars_resolve_through_vars() {
    let ws = Workspace::new();
    let ran = run(
        &ws,
        "version: 1\nvars: { a: \"${vars.b}-x\", b: \"${vars.c}\", c: deep }\nstages:\n  s: { kind: command, params: { cmd: \"echo ${vars.a} > out.txt\", outs: [out.txt] } }\n",
    );
    assert_eq!(ran.code, 0, "{}{}", ran.stdout, ran.stderr);
    assert_eq!(ws.read("out.txt"), "deep-x\n");
}
