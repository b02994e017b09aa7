//! What the benchmarks share.

use std::path::PathBuf;
use std::process::Command;

/// The peak resident memory of this process so far, in MB (the library's, which
/// `silkie bench` reports too).
#[allow(unused_imports)] // not every bench reports memory
pub use silkie::train::bench::peak_rss_mb;

/// The test venv's Python (scripts/libtorch-env: `SILKIE_TORCH_VENV`, or its default place),
/// when it can import `module`: the anchors users would run instead are measured with it.
#[allow(dead_code)] // not every bench has a Python anchor
pub fn venv_python(module: &str) -> Option<PathBuf> {
    let venv = std::env::var_os("SILKIE_TORCH_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/silkie/torch-2.9.0")))?;
    let python = venv.join("bin/python");
    let import = format!("import {module}");
    let ok = Command::new(&python).args(["-c", &import]).output().is_ok_and(|o| o.status.success());
    ok.then_some(python)
}
