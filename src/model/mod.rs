//! Models behind one policy interface (DESIGN §6). [`ARCHITECTURES`] lists what a checkpoint
//! folder may hold — the built-in tiny VLM, LLaVA as transformers saves it — each one module
//! behind [`Architecture`]; what loads is a [`Vlm`], which answers through [`Policy`]. Nothing
//! above this module names an architecture.

pub mod checkpoint;
pub mod device;
mod hf_weights;
pub mod llava;
pub mod logps;
pub mod lora;
pub mod master;
pub mod policy;
pub mod tiny;
pub mod tokenizer;

use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use self::llava::LlavaPolicy;
use self::policy::{Chat, EncodeError, Generation, Policy, Sampling, Scored, TokenBatch};
use self::tiny::TinyVlm;

/// One kind of model a checkpoint folder can hold.
pub trait Architecture: Sync {
    fn name(&self) -> &'static str;
    /// Whether the folder `dir` holds a checkpoint of this architecture.
    fn holds(&self, dir: &Path) -> bool;
    /// The checkpoint in `dir`, on `device`.
    fn load(&self, dir: &Path, device: &Device) -> Result<Vlm, BoxedError>;
    /// A model of the shape `dir`'s config.json gives, with random weights, to time where
    /// nothing can be downloaded; what else it needs to encode a batch (a tokenizer, say) is
    /// stood in for by files written to `dir` where missing.
    fn random(&self, dir: &Path, device: &Device) -> Result<Vlm, BoxedError>;
}

/// Every architecture silkie runs, in the order a folder is tried against them.
pub const ARCHITECTURES: &[&dyn Architecture] = &[&tiny::ARCHITECTURE, &llava::ARCHITECTURE];

/// A loaded model, whichever architecture it is.
// A model is moved a few times per run, never copied in bulk; and Burn has no `Module` for a
// `Box` that would even the variants out.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Vlm {
    Tiny(TinyVlm),
    Llava(LlavaPolicy),
}

/// Which parts of a vision-language model train beside its language model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainedParts {
    pub vision: bool,
    pub projector: bool,
}

/// Why a folder does not load as a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{dir}: not a checkpoint silkie can run (it reads {known}): {why}")]
    Unknown { dir: String, known: String, why: String },
    /// The architecture's own reason a checkpoint does not load (its error type, boxed: this
    /// layer names no architecture's errors).
    #[error("{0}")]
    Load(BoxedError),
    /// A setting the model's architecture does not take (LoRA targets it lacks, parts it
    /// does not have).
    #[error("{0}")]
    Unsupported(String),
    /// Writing a checkpoint folder failed.
    #[error("{0}")]
    Save(BoxedError),
}

pub type BoxedError = Box<dyn std::error::Error + Send + Sync>;

/// The checkpoint in `dir`, by the first architecture that holds it.
pub fn load(dir: &Path, device: &Device) -> Result<Vlm, ModelError> {
    architecture_of(dir)?.load(dir, device).map_err(ModelError::Load)
}

/// A model of the shape `dir`'s config.json gives, with random weights (see
/// [`Architecture::random`]).
pub fn random(dir: &Path, device: &Device) -> Result<Vlm, ModelError> {
    architecture_of(dir)?.random(dir, device).map_err(ModelError::Load)
}

/// The first architecture that holds `dir`, or why none does.
fn architecture_of(dir: &Path) -> Result<&'static dyn Architecture, ModelError> {
    let Some(architecture) = ARCHITECTURES.iter().find(|a| a.holds(dir)) else {
        let known: Vec<&str> = ARCHITECTURES.iter().map(|a| a.name()).collect();
        let why = match std::fs::read(dir.join("config.json")) {
            Err(e) => format!("config.json: {e}"),
            Ok(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Err(e) => format!("config.json is not JSON: {e}"),
                Ok(v) => match v.get("model_type").and_then(|t| t.as_str()) {
                    Some(t) => format!("its config.json says model_type `{t}`"),
                    None => "its config.json names no model_type".into(),
                },
            },
        };
        return Err(ModelError::Unknown { dir: dir.display().to_string(), known: known.join(", "), why });
    };
    Ok(*architecture)
}

impl Vlm {
    /// The same model computing in `precision` from now on.
    pub fn with_precision(self, precision: device::Precision) -> Result<Vlm, ModelError> {
        match self {
            Vlm::Tiny(m) => Ok(Vlm::Tiny(m.with_precision(precision))),
            Vlm::Llava(m) if precision == device::Precision::F32 => Ok(Vlm::Llava(m)),
            // Its weights themselves in bf16, once: the frozen ones stay so in training.
            Vlm::Llava(m) => Ok(Vlm::Llava(m.in_dtype(burn::tensor::FloatDType::BF16))),
        }
    }

    /// The same model to train: what its architecture keeps frozen (LLaVA's vision tower)
    /// frozen. A LLaVA in bf16 trains with its weights in bf16 once: once it is adapted,
    /// [`master::f32_masters`] gives what trains an f32 master copy.
    pub fn for_training(self) -> Result<Vlm, ModelError> {
        match self {
            Vlm::Llava(m) => Ok(Vlm::Llava(m.for_training())),
            other => Ok(other),
        }
    }

    /// The same model with `parts` (a LLaVA's vision tower and projector) trained or frozen
    /// as they say; after [`Vlm::with_lora`], which freezes them.
    pub fn with_trained_parts(self, parts: TrainedParts) -> Result<Vlm, ModelError> {
        match self {
            Vlm::Llava(m) => Ok(Vlm::Llava(m.with_trained_parts(parts))),
            Vlm::Tiny(_) => Err(ModelError::Unsupported(
                "`train_vision` and `train_projector` apply to LLaVA checkpoints; the tiny model has no tower apart"
                    .into(),
            )),
        }
    }

    /// LoRA adapters on the layers `lora` targets, every other weight frozen.
    pub fn with_lora(self, lora: &lora::LoraSpec) -> Result<Vlm, ModelError> {
        match self {
            Vlm::Tiny(m) => m.with_lora(lora).map(Vlm::Tiny),
            Vlm::Llava(m) => m.with_lora(lora).map(Vlm::Llava),
        }
        .map_err(ModelError::Unsupported)
    }

    /// Writes the model as a checkpoint folder its architecture loads back; `adapter` when
    /// it carries adapters not merged into its weights.
    pub fn save(&self, dir: &Path, adapter: Option<&lora::LoraSpec>) -> Result<(), ModelError> {
        match self {
            Vlm::Tiny(m) => checkpoint::save(m, m.config(), adapter, dir).map_err(|e| ModelError::Save(e.into())),
            Vlm::Llava(m) => m.save(dir, adapter).map_err(|e| ModelError::Save(e.into())),
        }
    }

    /// The same model for answering only, its weights in the precision it computes in.
    pub fn for_inference(self) -> Vlm {
        match self {
            Vlm::Tiny(m) => Vlm::Tiny(m.for_inference()),
            other => other,
        }
    }
}

/// The one place that matches on the architecture: every method of [`Vlm`] is its model's.
macro_rules! each {
    ($vlm:expr, $model:ident => $body:expr) => {
        match $vlm {
            Vlm::Tiny($model) => $body,
            Vlm::Llava($model) => $body,
        }
    };
}

impl Policy for Vlm {
    fn encode(
        &self,
        rows: &[Scored<'_>],
        max_length: Option<usize>,
        device: &Device,
    ) -> Result<TokenBatch, EncodeError> {
        each!(self, m => m.encode(rows, max_length, device))
    }

    fn completion_logps(&self, batch: &TokenBatch) -> (Tensor<1>, Tensor<1>) {
        each!(self, m => m.completion_logps(batch))
    }

    fn generate(&self, chat: &Chat<'_>, sampling: &Sampling) -> Result<Generation, EncodeError> {
        each!(self, m => m.generate(chat, sampling))
    }

    fn generate_batch(&self, requests: &[(Chat<'_>, Sampling)]) -> Vec<Result<Generation, EncodeError>> {
        each!(self, m => m.generate_batch(requests))
    }
}
