//! Models behind one policy interface (DESIGN §6): the built-in tiny VLM now, real
//! architectures later.

pub mod checkpoint;
pub mod device;
pub mod policy;
pub mod tiny;
pub mod tokenizer;
