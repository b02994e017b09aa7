//! silkie: the Silkie recipe (preference distillation for vision-language models) as a
//! declarative, incremental pipeline. See ARCHITECTURE.md for the map.

pub mod calls;
pub mod data;
pub mod dsl;
pub mod eval;
pub mod exec;
pub mod files;
pub mod model;
pub mod plan;
pub mod providers;
pub mod stages;
pub mod store;
pub mod table;
pub mod train;
