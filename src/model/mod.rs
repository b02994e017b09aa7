//! Models behind one policy interface (DESIGN §6): the built-in tiny VLM, and LLaVA loaded
//! from Hugging Face checkpoints (not yet behind the interface: see ARCHITECTURE.md).

pub mod checkpoint;
pub mod device;
mod hf_weights;
pub mod llava;
pub mod policy;
pub mod tiny;
pub mod tokenizer;
