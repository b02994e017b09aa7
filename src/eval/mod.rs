//! Evaluation (DESIGN §7): benchmark scorers as pure functions over files and answers — MME
//! (`mme.rs`, the official results layout) and MMHal-Bench (`mmhal.rs`, judge ratings) — and
//! the results rows every benchmark reports in (`results.rs`), which `silkie metrics` reads;
//! `benchmark.rs` is what each benchmark is to the `evaluate` stage, and their registry.

pub mod benchmark;
mod error;
pub mod mme;
pub mod mmhal;
pub mod results;
pub mod synth;

pub use error::EvalError;
