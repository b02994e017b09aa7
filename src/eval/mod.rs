//! Evaluation (DESIGN §7): benchmark scorers as pure functions over files and answers — MME
//! (`mme.rs`, the official results layout) and MMHal-Bench (`mmhal.rs`, judge ratings) — and
//! the results rows every benchmark reports in (`results.rs`), which `silkie metrics` reads.

pub mod mme;
pub mod mmhal;
pub mod results;
pub mod synth;
