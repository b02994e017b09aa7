//! Model calls: the request every provider receives, the key it is remembered by, the
//! crash-safe memo, and the runner that sends what the memo does not have yet (DESIGN §4).

mod key;
mod memo;
mod runner;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use key::call_key;
pub use memo::Memo;
pub use runner::{
    CallFuture, CallSpec, CallsError, Endpoints, Limits, MakeEndpoints, Progress, Provider, RunStats, run_calls,
};

/// One part of a message: text, or an image by its blob digest (providers turn the digest
/// into what they send, e.g. a base64 data URL; the key holds only the digest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    Text { text: String },
    Image { digest: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Vec<Part>,
}

/// The opening of a conversation: an optional system message, then the user's turn with
/// the image (if any) before the text.
pub fn opening(system: Option<&str>, image: Option<&str>, text: String) -> Vec<Message> {
    let mut messages = Vec::new();
    if let Some(system) = system {
        messages.push(Message { role: "system".into(), content: vec![Part::Text { text: system.to_string() }] });
    }
    let mut content = Vec::new();
    if let Some(digest) = image {
        content.push(Part::Image { digest: digest.to_string() });
    }
    content.push(Part::Text { text });
    messages.push(Message { role: "user".into(), content });
    messages
}

/// A fully rendered chat request: messages byte-exact, every sampling parameter filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    /// `temperature`, `max_tokens`, `top_p`, `seed`, … — sorted, as they enter the key.
    pub params: BTreeMap<String, Value>,
    /// Images are scaled down to this many pixels on their longer side before sending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_max_side: Option<u32>,
}

/// What a model is, for keys: provider kind, model name and its own params. Transport
/// (`base_url`, `api_key_env`, limits) is deliberately not here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelIdentity {
    pub provider: String,
    pub model: String,
    #[serde(default)]
    pub params: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    Ok,
    /// The provider declined (content filter, policy): terminal, remembered, counted.
    Refused,
    /// A request the provider will never accept as written: terminal, remembered, counted.
    Rejected,
}

impl CallStatus {
    /// Its name in tables, reports and the memo (as serde writes it).
    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Ok => "ok",
            CallStatus::Refused => "refused",
            CallStatus::Rejected => "rejected",
        }
    }
}

/// A finished call, as the memo remembers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallResult {
    pub status: CallStatus,
    pub text: Option<String>,
    pub finish_reason: Option<String>,
    pub tokens_in: Option<u64>,
    pub tokens_out: Option<u64>,
    pub latency_ms: u64,
    /// What the provider said, for refusals and rejections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Why a call did not finish.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// Worth retrying (timeouts, 429, 5xx, dropped connections, garbled replies); never memoised.
    Transient { detail: String, retry_after: Option<std::time::Duration> },
    /// The configuration is wrong (no API key, unknown model, bad URL): stop, never memoise.
    Fatal(String),
}
