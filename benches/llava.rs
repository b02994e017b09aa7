//! A LoRA DPO step of a small random LLaVA (SigLIP + Qwen2, 3.5 M parameters, made by
//! transformers itself: tests/support/llava_fixture.py `--size bench`), timed by silkie on
//! flex (and, built with `tch`, on LibTorch CPU) and, beside it in the same run, by PyTorch
//! eager through transformers and peft on the same folder, batch and step
//! (`benches/llava_dpo_torch.py`): tokens per second and peak memory of each, and silkie's
//! speed as a ratio to PyTorch's. Each measurement runs in a process of its own, so each peak
//! is its own.
//!
//! `cargo bench --bench llava`; with `scripts/libtorch-env` sourced,
//! `cargo bench --features tch --bench llava` for both devices.

use std::path::Path;
use std::process::Command;

mod support;
use support::venv_python;

const STEPS: &str = "10";
const LORA: &str = "16";

fn json_line(out: std::process::Output, what: &str) -> Result<serde_json::Value, String> {
    if !out.status.success() {
        return Err(format!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    // silkie prints one pretty object; the script one line after whatever its libraries say.
    serde_json::from_str(&stdout)
        .or_else(|_| serde_json::from_str(stdout.lines().rfind(|l| l.starts_with('{')).unwrap_or_default()))
        .map_err(|e| format!("{what}: {e}: {stdout}"))
}

fn silkie(device: &str, model: &Path, picture: &Path) -> Result<serde_json::Value, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_silkie"))
        .args(["bench", "dpo", "--device", device, "--steps", STEPS, "--lora", LORA, "--format", "json", "--model"])
        .arg(model)
        .arg("--image")
        .arg(picture)
        .output()
        .map_err(|e| e.to_string())?;
    json_line(out, &format!("silkie on {device}"))
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("llava bench: run it with `cargo bench --bench llava`");
        return;
    }
    let Some(python) = venv_python("transformers, peft") else {
        println!("llava bench: no Python with transformers and peft (source scripts/libtorch-env)");
        return;
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let model = dir.path().join("llava");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/llava_fixture.py");
    let made = Command::new(&python)
        .arg(&fixture)
        .arg(&model)
        .args(["--size", "bench", "--vision", "siglip", "--text", "qwen2"])
        .output()
        .expect("python runs");
    assert!(made.status.success(), "the fixture failed: {}", String::from_utf8_lossy(&made.stderr));
    let picture = dir.path().join("picture.png");
    std::fs::write(&picture, silkie::train::bench::picture()).expect("the picture is written");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/llava_dpo_torch.py");
    let torch = Command::new(&python)
        .arg(&script)
        .arg(&model)
        .arg(&picture)
        .args(["--lora", LORA, "--steps", STEPS])
        .output()
        .map_err(|e| e.to_string())
        .and_then(|o| json_line(o, "PyTorch"));
    let show = |name: &str, r: &serde_json::Value| {
        println!(
            "{name:22} {} parameters ({} training), {} tokens a step: {:.1} ms per step, {:.0} tokens/s; peak RSS {:.0} MB",
            r["params"],
            r["trainable"],
            r["tokens"],
            r["ms_per_step"].as_f64().unwrap_or(f64::NAN),
            r["tokens_per_second"].as_f64().unwrap_or(f64::NAN),
            r["peak_rss_mb"].as_f64().unwrap_or(f64::NAN)
        )
    };
    let torch = match torch {
        Ok(t) => {
            show(&format!("PyTorch eager ({} thr.)", t["threads"]), &t);
            Some(t)
        }
        Err(e) => {
            println!("PyTorch eager: {e}");
            None
        }
    };
    let devices: &[&str] = if cfg!(feature = "tch") { &["flex", "libtorch"] } else { &["flex"] };
    for &device in devices {
        match silkie(device, &model, &picture) {
            Ok(ours) => {
                show(&format!("silkie {device}"), &ours);
                if let Some(t) = &torch {
                    let ratio = ours["tokens_per_second"].as_f64().unwrap_or(f64::NAN)
                        / t["tokens_per_second"].as_f64().unwrap_or(f64::NAN);
                    let memory = ours["peak_rss_mb"].as_f64().unwrap_or(f64::NAN)
                        / t["peak_rss_mb"].as_f64().unwrap_or(f64::NAN);
                    println!("silkie {device} / PyTorch eager: {ratio:.2}× its tokens/s, {memory:.2}× its peak memory");
                }
            }
            Err(e) => println!("silkie {device}: {e}"),
        }
    }
}
