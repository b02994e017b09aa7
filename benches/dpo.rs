//! DPO training throughput of the tiny VLM at two sizes, on flex and (built with `tch`) on
//! LibTorch CPU (DESIGN §9): tokens per second of a full step and the peak memory of a
//! process that does only that — each device × size runs in a child process of its own, so
//! each peak is its own. The measurement itself is `silkie::train::bench`, which
//! `silkie bench dpo` runs too.
//!
//! `cargo bench --bench dpo` (flex); with `scripts/libtorch-env` sourced,
//! `cargo bench --features tch --bench dpo` for both devices.

use silkie::model::device::{self, Precision};
use silkie::train::bench::{BATCH, SIZES, TOKENS, dpo_steps, peak_rss_mb};

// As in the silkie binary, so the figures are the ones users get.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const STEPS: usize = 10;

/// One device × size: prints a line of figures.
fn measure(device_name: &str, size: usize) {
    let device = match device::open(Some(device_name), Precision::F32, true) {
        Ok(device) => device,
        Err(e) => return println!("{device_name}: skipped ({e})"),
    };
    let t = dpo_steps(&device, Precision::F32, size, STEPS);
    println!(
        "{device_name:8} tiny VLM {} ({} image patches + {TOKENS} tokens, batch {BATCH}): {:.0} ms per step, {:.0} tokens/s; peak RSS {:.0} MB",
        SIZES[size].0,
        t.config.patches(),
        t.ms_per_step,
        t.tokens_per_second,
        peak_rss_mb()
    );
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
    for size in 0..SIZES.len() {
        for device in devices {
            let status = std::process::Command::new(&me).args(["--one", device, &size.to_string()]).status();
            if !status.is_ok_and(|s| s.success()) {
                println!("{device} size {size}: the measuring process failed");
            }
        }
    }
}
