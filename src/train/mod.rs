//! Training: DPO losses and the log-probabilities they are computed from (DESIGN §6).
//! Everything here is Burn tensor code, the same on flex (CPU) and LibTorch devices.

pub mod bench;
pub mod clip;
pub mod dpo;
pub mod fit;
pub mod losses;
pub mod optim;
pub mod resume;
pub mod schedule;
pub mod sft;

#[cfg(test)]
mod tests;
