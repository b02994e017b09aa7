//! DPO training throughput of the tiny VLM at two sizes, on flex and (built with `tch`) on
//! LibTorch CPU (DESIGN §9): tokens per second of a full step and the peak memory of a
//! process that does only that — each device × size runs in a child process of its own, so
//! each peak is its own. The measurement itself is `silkie::train::bench`, which
//! `silkie bench dpo` runs too.
//!
//! Beside them, the anchor users would pick instead: the same model and step in PyTorch eager
//! (`benches/dpo_torch.py`, run with the test venv's Python), on as many threads as flex
//! has, which refuses to run unless its parameter count equals silkie's. Last, the Burn op
//! that keeps flex behind it, timed alone beside PyTorch's: softmax over attention scores.
//!
//! `cargo bench --bench dpo` (flex); with `scripts/libtorch-env` sourced,
//! `cargo bench --features tch --bench dpo` for both devices.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData, activation};
use silkie::model::device::{self, Precision};
use silkie::train::bench::{BATCH, SIZES, TOKENS, dpo_steps, peak_rss_mb};

mod support;
use support::venv_python;

// As in the silkie binary, so the figures are the ones users get.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const STEPS: usize = 10;

/// What a measuring child prints last, for its parent: `<marker> <ms per step> <params>`.
const RESULT: &str = "dpo-bench-result";

/// One device × size, in this process: a line of figures, then the machine-readable one.
fn measure(device_name: &str, size: usize) {
    let device = match device::open(Some(device_name), Precision::F32, true) {
        Ok(device) => device,
        Err(e) => return println!("{device_name}: skipped ({e})"),
    };
    let t = dpo_steps(&device, Precision::F32, size, STEPS);
    println!(
        "{device_name:8} tiny VLM {} ({} parameters, {} image patches + {TOKENS} tokens, batch {BATCH}): {:.1} ms per step, {:.0} tokens/s; peak RSS {:.0} MB",
        SIZES[size].0,
        t.params,
        t.config.patches(),
        t.ms_per_step,
        t.tokens_per_second,
        peak_rss_mb()
    );
    println!("{RESULT} {} {}", t.ms_per_step, t.params);
}

/// Runs one device × size in a child process: its figures (ms per step, parameters).
fn measure_apart(me: &Path, device: &str, size: usize) -> Option<(f64, usize)> {
    let out = Command::new(me).args(["--one", device, &size.to_string()]).output().ok()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut result = None;
    for line in stdout.lines() {
        match line.strip_prefix(RESULT) {
            Some(figures) => {
                let mut f = figures.split_whitespace();
                result = Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?));
            }
            None => println!("{line}"),
        }
    }
    if !out.status.success() {
        println!("{device} size {size}: the measuring process failed");
    }
    result
}

/// One run of the PyTorch script: its ms per step, or why there is none.
fn pytorch_step(python: &Path, size: usize, params: usize, threads: usize, together: bool) -> Result<f64, String> {
    let (_, d_model, layers) = SIZES[size];
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/dpo_torch.py");
    let mut cmd = Command::new(python);
    cmd.arg(&script).args(["--d-model", &d_model.to_string(), "--layers", &layers.to_string()]);
    cmd.args(["--params", &params.to_string(), "--threads", &threads.to_string(), "--steps", &STEPS.to_string()]);
    cmd.args(["--batch", &BATCH.to_string(), "--tokens", &TOKENS.to_string()]);
    if together {
        cmd.arg("--together");
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(line.trim()).map_err(|e| format!("{e}: {line}"))?;
    json["ms_per_step"].as_f64().ok_or_else(|| format!("no ms_per_step in {line}"))
}

/// The PyTorch anchor for one size, and flex's speed as a ratio to it.
fn compare_with_pytorch(python: &Path, size: usize, flex: (f64, usize)) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let run = |threads, together| pytorch_step(python, size, flex.1, threads, together);
    let (apart, together, one_thread) = match (run(threads, false), run(threads, true), run(1, false)) {
        (Ok(a), Ok(t), Ok(o)) => (a, t, o),
        (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => return println!("PyTorch eager: failed ({e})"),
    };
    println!(
        "PyTorch  tiny VLM {} ({} parameters), eager on {threads} threads: {apart:.1} ms per step; \
         one forward over chosen and rejected together (TRL's way) {together:.1} ms; on 1 thread {one_thread:.1} ms",
        SIZES[size].0, flex.1
    );
    println!(
        "flex / PyTorch eager, {}: {:.2}× its speed ({:.2}× TRL's concatenated forward, {:.2}× PyTorch on 1 thread)",
        SIZES[size].0,
        apart / flex.0,
        together / flex.0,
        one_thread / flex.0
    );
}

/// The attention scores of one step's forward: (chosen + rejected) × heads × sequence².
const SCORES: [usize; 4] = [2 * BATCH, 4, 16 + TOKENS, 16 + TOKENS];
const OP_RUNS: usize = 21;

/// Scores as a causal, padded attention holds them: every other one masked to −1e4 (burn's
/// and our masked fill), the rest small.
fn score(i: usize) -> f32 {
    if i.is_multiple_of(2) { (i % 17) as f32 / 17.0 - 0.5 } else { -1e4 }
}

/// The weights the softmax output is summed with, so its backward pass has work to do.
fn weight(i: usize) -> f32 {
    (i % 13) as f32 / 13.0
}

/// The same ops over the same values in PyTorch: prints `<exp> <softmax> <softmax forward and
/// backward>`, nanoseconds per element.
const TORCH_OPS: &str = "
import sys, time, warnings
warnings.filterwarnings('ignore')
import torch
torch.set_num_threads(int(sys.argv[1]))
shape = [int(s) for s in sys.argv[2:6]]
i = torch.arange(shape[0] * shape[1] * shape[2] * shape[3])
x = torch.where(i % 2 == 0, (i % 17).float() / 17 - 0.5, torch.tensor(-1e4)).reshape(shape)
w = ((i % 13).float() / 13).reshape(shape)
unmasked = x.clamp_min(-1.0)
def ns(f):
    times = []
    for _ in range(int(sys.argv[6])):
        start = time.perf_counter(); f(); times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] / x.numel() * 1e9
def trained():
    leaf = x.detach().requires_grad_()
    (torch.softmax(leaf, -1) * w).sum().backward()
print(ns(lambda: torch.exp(unmasked)), ns(lambda: torch.softmax(x, -1)), ns(trained))
";

/// Median nanoseconds per element of `op` over [`SCORES`].
fn ns_per_element(op: impl Fn()) -> f64 {
    let mut times: Vec<f64> = (0..OP_RUNS)
        .map(|_| {
            let start = Instant::now();
            op();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[OP_RUNS / 2] / SCORES.iter().product::<usize>() as f64 * 1e9
}

/// The op that keeps flex's step behind PyTorch's, alone, over one step's attention scores:
/// `exp` (flex's is scalar: its SIMD library has no vector exp), softmax as inference runs it
/// (flex fuses it, around that scalar exp) and as training runs it (Burn's autodiff has no
/// softmax of its own, so it differentiates max, subtract, exp, sum and divide, a pass and a
/// tensor each). PyTorch's `exp` is timed on unmasked scores: on the −1e4 ones it leaves its
/// vector path and would flatter flex. Small enough to report upstream as it is.
fn attention_ops_alone(python: Option<&Path>) {
    let n: usize = SCORES.iter().product();
    let scores = TensorData::new((0..n).map(score).collect::<Vec<f32>>(), SCORES);
    let weights = TensorData::new((0..n).map(weight).collect::<Vec<f32>>(), SCORES);
    let plain = Tensor::<4>::from_data(scores.clone(), &Device::flex());
    let unmasked = plain.clone().clamp_min(-1.0);
    let exp = ns_per_element(|| drop(unmasked.clone().exp()));
    let softmax = ns_per_element(|| drop(activation::softmax(plain.clone(), 3)));
    let autodiff = Device::flex().autodiff();
    let (leaf, weights) = (Tensor::<4>::from_data(scores, &autodiff), Tensor::<4>::from_data(weights, &autodiff));
    let trained = ns_per_element(|| {
        let x = leaf.clone().require_grad();
        drop(activation::softmax(x, 3).mul(weights.clone()).sum().backward());
    });
    println!(
        "flex over {SCORES:?} attention scores (every other one masked), ns per element: exp {exp:.2}, \
         softmax {softmax:.2}, softmax forward and backward {trained:.2}"
    );
    let Some(python) = python else { return };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shape = SCORES.map(|s| s.to_string());
    for threads in [threads, 1] {
        let out = Command::new(python)
            .args(["-c", TORCH_OPS, &threads.to_string()])
            .args(&shape)
            .arg(OP_RUNS.to_string())
            .output();
        let figures: Vec<f64> = out
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|f| f.parse().ok()).collect())
            .unwrap_or_default();
        match figures[..] {
            [torch_exp, torch_softmax, torch_trained] => println!(
                "PyTorch on {threads} thread(s): exp {torch_exp:.2} (flex takes {:.1}× as long), softmax \
                 {torch_softmax:.2} ({:.1}×), softmax forward and backward {torch_trained:.2} ({:.1}×)",
                exp / torch_exp,
                softmax / torch_softmax,
                trained / torch_trained
            ),
            _ => println!("PyTorch ops on {threads} thread(s): failed"),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--one") {
        let size = args.get(at + 2).and_then(|s| s.parse().ok()).unwrap_or(0);
        return measure(&args[at + 1], size);
    }
    if !args.iter().any(|a| a == "--bench") {
        println!("dpo bench: run it with `cargo bench --bench dpo`");
        return;
    }
    let devices: &[&str] = if cfg!(feature = "tch") { &["flex", "libtorch"] } else { &["flex"] };
    let Ok(me) = std::env::current_exe() else { return println!("dpo bench: cannot find its own executable") };
    let python = venv_python("torch");
    if python.is_none() {
        println!("PyTorch eager: torch is not installed in the test venv (scripts/libtorch-env), skipped");
    }
    for size in 0..SIZES.len() {
        let mut flex = None;
        for &device in devices {
            let figures = measure_apart(&me, device, size);
            if device == "flex" {
                flex = figures;
            }
        }
        if let (Some(python), Some(flex)) = (&python, flex) {
            compare_with_pytorch(python, size, flex);
        }
    }
    attention_ops_alone(python.as_deref());
}
