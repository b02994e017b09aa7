//! Call keys: BLAKE3 over the provider kind, the model identity, the fully rendered request
//! and the sample index — so a fifth model re-queries only itself, and a new judge template
//! re-queries only the judge.

use serde_json::json;

use super::{ChatRequest, ModelIdentity};

/// Domain tag and schema version of call keys.
pub const CALL_KEY_SCHEMA: &str = "silkie/call-key/1";

pub fn call_key(model: &ModelIdentity, request: &ChatRequest, sample_index: u32) -> String {
    let preimage = json!({
        "schema": CALL_KEY_SCHEMA,
        "model": model,
        "request": request,
        "sample_index": sample_index,
    });
    // serde_json maps are sorted: the encoding is canonical.
    let bytes = serde_json::to_vec(&preimage).expect("JSON values always serialize");
    blake3::hash(&bytes).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::{Message, Part};
    use std::collections::BTreeMap;

    fn request(text: &str, temperature: f64) -> ChatRequest {
        ChatRequest {
            messages: vec![Message {
                role: "user".into(),
                content: vec![Part::Image { digest: "ab".repeat(32) }, Part::Text { text: text.into() }],
            }],
            params: BTreeMap::from([("temperature".to_string(), json!(temperature))]),
            image_max_side: None,
        }
    }

    #[test]
    fn keys_change_with_identity_request_and_sample_only() {
        let model = ModelIdentity { provider: "openai".into(), model: "gpt-4v".into(), params: BTreeMap::new() };
        let base = call_key(&model, &request("Describe.", 0.7), 0);
        assert_eq!(base, call_key(&model, &request("Describe.", 0.7), 0));
        assert_ne!(base, call_key(&model, &request("Describe!", 0.7), 0));
        assert_ne!(base, call_key(&model, &request("Describe.", 0.8), 0));
        assert_ne!(base, call_key(&model, &request("Describe.", 0.7), 1));
        let other = ModelIdentity { model: "llava".into(), ..model };
        assert_ne!(base, call_key(&other, &request("Describe.", 0.7), 0));
    }
}
